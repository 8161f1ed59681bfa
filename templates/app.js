// codexproxy status page: optional niceties. Everything works without this script.
(function () {
  "use strict";
  const pad = (n) => String(n).padStart(2, "0");
  function span(seconds) {
    const s = Math.abs(Math.round(seconds));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h" + pad(m) + "m";
    return m ? m + "m" : s + "s";
  }
  // Epoch seconds -> the browser's local time (the server renders UTC as the fallback).
  function localTimes() {
    const now = Date.now() / 1000;
    document.querySelectorAll("time[data-epoch]").forEach((el) => {
      const epoch = Number(el.dataset.epoch);
      const t = new Date(epoch * 1000);
      let text = t.getFullYear() + "-" + pad(t.getMonth() + 1) + "-" + pad(t.getDate()) + " " + pad(t.getHours()) + ":" + pad(t.getMinutes());
      if (el.dataset.seconds) text += ":" + pad(t.getSeconds());
      if (el.dataset.rel) text += epoch >= now ? " (in " + span(epoch - now) + ")" : " (" + span(now - epoch) + " ago)";
      el.textContent = text;
      el.title = t.toString();
    });
    const tz = document.getElementById("tz");
    if (tz) tz.textContent = "local time (" + (Intl.DateTimeFormat().resolvedOptions().timeZone || "browser") + ")";
  }
  // Ask before destructive forms.
  document.addEventListener("submit", (ev) => {
    const message = ev.target.dataset && ev.target.dataset.confirm;
    if (message && !window.confirm(message)) ev.preventDefault();
  });
  // Copy buttons.
  document.addEventListener("click", (ev) => {
    const id = ev.target.dataset && ev.target.dataset.copy;
    if (!id) return;
    const field = document.getElementById(id);
    field.select();
    (navigator.clipboard ? navigator.clipboard.writeText(field.value) : Promise.reject()).then(
      () => { ev.target.textContent = "Copied"; }, () => { document.execCommand("copy"); ev.target.textContent = "Copied"; });
  });
  // Auto-refresh, remembered per browser; paused while the user types or has an editor open.
  let dirty = false;
  document.addEventListener("input", () => { dirty = true; });
  function autoRefresh() {
    const box = document.getElementById("auto-refresh");
    const period = Number(document.body.dataset.refresh || 0);
    if (!box || !period) return;
    box.checked = localStorage.getItem("codexproxy.autorefresh") === "1";
    box.addEventListener("change", () => localStorage.setItem("codexproxy.autorefresh", box.checked ? "1" : "0"));
    setInterval(() => {
      const busy = dirty || document.querySelector("details[open]") || (document.activeElement && document.activeElement.matches("input, select, textarea"));
      if (box.checked && !busy && !document.hidden) window.location.reload();
    }, period * 1000);
  }
  document.addEventListener("DOMContentLoaded", () => { localTimes(); autoRefresh(); });
})();
