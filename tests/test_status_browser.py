"""The status page in a real headless Chromium: log in with the admin token, see an account's
usage bars in local time, create a key and read its one-time secret, disable it, search the
logs; the charts of the dashboard, accounts and keys pages over a week of requests, drawn with
no script and no CSP complaint, their tables readable with images off. Screenshots go to
test-artifacts/. The browser gets a HOME of its own (nothing written to the real ~/.config)."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from codexproxy.app import App
from codexproxy.config import load_config
from codexproxy.logstore import LogStore
from codexproxy_plugins.accounts import usage as account_usage
from tests.adminkit import result, set_usage
from tests.conftest import REPO, RESPONSES_BODY

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = REPO / "test-artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="needs Debian chromium and chromium-driver"),
]


def start_chromium(tmp_path: Path, *extra: str) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}",
                "--window-size=1440,1000", "--force-device-scale-factor=1", "--lang=en-US", *extra):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # CSP violations land in the console
    # Chromium writes ~/.config/chromium and ~/.cache even with --user-data-dir: give it a HOME of its own.
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
    return webdriver.Chrome(service=Service(CHROMEDRIVER, env=env), options=options)


@pytest.fixture
def browser(tmp_path):
    driver = start_chromium(tmp_path)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 10):
    return WebDriverWait(driver, timeout).until(condition)


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1440, max(900, min(int(height) + 40, 2400)))
    path = ARTIFACTS / name
    assert driver.save_screenshot(str(path))
    driver.set_window_size(1440, 1000)
    return path


def test_status_page_in_chromium(make_proxy, fake, browser):
    proxy = make_proxy(accounts=2)
    set_usage(proxy, fake, 0, primary=62.0, secondary=18.0, primary_reset_in=2 * 3600 + 13 * 60)
    set_usage(proxy, fake, 1, primary=91.0, secondary=47.0)
    for _ in range(3):
        assert httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers=proxy.auth).status_code == 200
    httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": "Bearer cpk-not-a-key"})
    driver = browser

    # Log in through the form with the admin token.
    driver.get(proxy.url + "/status/accounts")
    wait(driver, EC.presence_of_element_located((By.NAME, "token")))
    assert "/status/login" in driver.current_url
    screenshot(driver, "status-login.png")
    field = driver.find_element(By.NAME, "token")
    field.send_keys("wrong-token")
    field.submit()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, ".flash.error")))
    assert "Wrong admin token" in driver.find_element(By.CSS_SELECTOR, ".flash.error").text
    field = driver.find_element(By.NAME, "token")
    field.send_keys(proxy.admin_token)
    field.submit()
    wait(driver, EC.url_contains("/status/accounts"))
    cookie = driver.get_cookie("codexproxy_session")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert driver.execute_script("return document.cookie") == ""  # HttpOnly: no script can read it

    # The accounts with their usage bars, reset times in local time.
    page = driver.find_element(By.TAG_NAME, "main").text
    assert proxy.fake_accounts[0].email in page and proxy.fake_accounts[1].email in page
    bars = driver.find_elements(By.CSS_SELECTOR, "progress.bar")
    values = sorted(float(b.get_attribute("value")) for b in bars)
    assert values == [18.0, 47.0, 62.0, 91.0]
    assert "bad" in driver.find_element(By.CSS_SELECTOR, "progress.bar[value='91.0']").get_attribute("class")
    times = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "time[data-rel]")]
    assert times and all("UTC" not in t for t in times) and any("(in 2h1" in t for t in times), times
    assert "local time" in driver.find_element(By.ID, "tz").text
    screenshot(driver, "status-accounts.png")

    # Dashboard.
    driver.find_element(By.LINK_TEXT, "Dashboard").click()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, ".stat-value")))
    assert "Pool usage" in driver.page_source
    screenshot(driver, "status.png")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    screenshot(driver, "status-dark.png")
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})

    # Create a key through the form and read the one-time secret.
    driver.find_element(By.LINK_TEXT, "Keys").click()
    form = wait(driver, EC.presence_of_element_located((By.ID, "create-key")))
    form.find_element(By.NAME, "name").send_keys("browser-key")
    form.find_element(By.NAME, "rpm").send_keys("30")
    form.find_element(By.NAME, "expires").send_keys("30d")
    form.find_element(By.CSS_SELECTOR, "button.primary").click()
    secret_field = wait(driver, EC.presence_of_element_located((By.ID, "new-key")))
    secret = secret_field.get_attribute("value")
    assert secret.startswith("cpk-")
    screenshot(driver, "status-key-created.png")
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {secret}"})
    assert r.status_code == 200

    # Disable it from the keys table.
    driver.find_element(By.LINK_TEXT, "Done: back to the keys").click()
    key_id = next(k["id"] for k in result(proxy, "keys.list") if k["name"] == "browser-key")
    row = wait(driver, EC.presence_of_element_located((By.ID, key_id)))
    assert secret not in driver.page_source
    row.find_element(By.XPATH, ".//button[normalize-space()='Disable']").click()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, ".flash.ok")))
    assert "Disabled key browser-key." in driver.find_element(By.CSS_SELECTOR, ".flash.ok").text
    assert "disabled" in driver.find_element(By.ID, key_id).text
    assert next(k for k in result(proxy, "keys.list") if k["id"] == key_id)["enabled"] is False
    r = httpx.post(proxy.url + "/v1/responses", json=RESPONSES_BODY, headers={"authorization": f"Bearer {secret}"})
    assert r.status_code == 403
    screenshot(driver, "status-keys.png")

    # Search the logs.
    driver.find_element(By.LINK_TEXT, "Logs").click()
    search = wait(driver, EC.presence_of_element_located((By.NAME, "q")))
    search.send_keys("status:4xx")
    search.submit()
    wait(driver, EC.url_contains("q=status"))
    rows = driver.find_elements(By.CSS_SELECTOR, "table.logs tbody tr")
    assert len(rows) == 2  # the unknown key (401) and the disabled one (403)
    assert all(r.find_element(By.CSS_SELECTOR, ".code").text in ("401", "403") for r in rows)
    driver.find_element(By.NAME, "q").clear()
    driver.find_element(By.NAME, "q").send_keys("key:=test")
    driver.find_element(By.NAME, "q").submit()
    wait(driver, EC.url_contains("key%3A%3Dtest"))
    assert len(driver.find_elements(By.CSS_SELECTOR, "table.logs tbody tr")) == 3
    driver.get(proxy.url + "/status/logs")
    screenshot(driver, "status-logs.png")

    # Plugins and settings (secrets masked).
    driver.find_element(By.LINK_TEXT, "Plugins").click()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "table.table")))
    assert "select_account" in driver.page_source
    screenshot(driver, "status-plugins.png")
    driver.find_element(By.LINK_TEXT, "Settings").click()
    wait(driver, EC.presence_of_element_located((By.CSS_SELECTOR, "dl.facts")))
    assert proxy.admin_token not in driver.page_source
    screenshot(driver, "status-settings.png")

    # Log out: the pages need a login again.
    driver.find_element(By.XPATH, "//button[normalize-space()='Log out']").click()
    wait(driver, EC.presence_of_element_located((By.NAME, "token")))
    driver.get(proxy.url + "/status/keys")
    assert "/status/login" in driver.current_url


def fill_a_week(proxy) -> None:
    """A plausible week for the pictures, written before the proxy starts (it counts the log
    files once at start, then only its own appends): requests by day and hour, some failed,
    failovers and cooldowns, two keys, and usage snapshots with resets."""
    app = App(load_config(proxy.config_path))
    try:
        accounts = app.accounts.ordered()
        laptop = app.keys.find("test")
        ci, _ = app.keys.create("ci", rpm=20, daily_tokens=400_000)
        app.keys.update(laptop.id, rpm=30, daily_tokens=250_000)
        logs = LogStore(proxy.data_dir / "logs")
        rng = random.Random(16)
        now = time.time()
        t = now - 7 * 86400
        while t < now:
            hour = time.localtime(t).tm_hour
            t += rng.expovariate((40 if 9 <= hour < 19 else 6) / 3600)
            if t >= now:
                break
            one, other = rng.sample(accounts, 2)
            failing = rng.random() < 0.06
            attempts = [{"account": other.id, "status": 429, "reason": rng.choice(["usage_limit", "rate_limited", "server_error"])}] \
                if failing else []
            status = 502 if rng.random() < 0.03 else 200
            key = laptop if rng.random() < 0.7 else ci
            logs.append({"id": f"w{t:.3f}", "time": t, "key_id": key.id, "key_name": key.name, "account_id": one.id,
                         "account": one.email, "status": status, "method": "POST", "path": "/v1/responses",
                         "input_tokens": rng.randint(800, 9000) if status == 200 else None,
                         "output_tokens": rng.randint(50, 1500) if status == 200 else None,
                         "attempts": attempts + [{"account": one.id, "status": status, "reason": "server_error" if status >= 500 else None}]})
        for n, account in enumerate(accounts):
            used5, used7, reset5 = 0.0, 5.0 + 10 * n, now - 7 * 86400 + 5 * 3600
            for k in range(7 * 24 // 2):
                at = now - 7 * 86400 + k * 2 * 3600 + 600 * n
                if at >= reset5:
                    used5, reset5 = 0.0, at + 5 * 3600
                used5 = min(100.0, used5 + rng.uniform(2, 30) * (1 + n))
                used7 = min(100.0, used7 + rng.uniform(0, 1.2))
                account_usage.save_snapshot(app, account.id, {
                    "time": at, "primary": {"used_percent": round(used5, 1), "window_minutes": 300, "reset_at": reset5},
                    "secondary": {"used_percent": round(used7, 1), "window_minutes": 10080, "reset_at": now + 2 * 86400}})
    finally:
        app.close()


def csp_complaints(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"] or e["level"] == "SEVERE"]


def test_status_charts_in_chromium(make_proxy, fake, tmp_path):
    proxy = make_proxy(accounts=3, start=False)
    fill_a_week(proxy)
    proxy.start()
    driver = start_chromium(tmp_path)
    try:
        driver.get(proxy.url + "/status/login")
        field = wait(driver, EC.presence_of_element_located((By.NAME, "token")))
        field.send_keys(proxy.admin_token)
        field.submit()
        wait(driver, EC.presence_of_element_located((By.ID, "activity")))
        for window in ("24h", "7d"):
            driver.get(f"{proxy.url}/status?window={window}")
            charts = wait(driver, EC.presence_of_all_elements_located((By.CSS_SELECTOR, "#activity svg.chart")))
            assert len(charts) == 4 and all(c.size["width"] > 300 and c.size["height"] > 80 for c in charts)
            assert len(driver.find_elements(By.CSS_SELECTOR, f"#chart-requests-{window} rect.bar")) > 0
            # The numbers behind a chart: one click on "Numbers", no script.
            driver.find_element(By.CSS_SELECTOR, f"#chart-requests-{window} details summary").click()
            rows = driver.find_elements(By.CSS_SELECTOR, f"#chart-requests-{window} table tbody tr")
            assert len(rows) == (24 if window == "24h" else 7) and rows[-1].is_displayed()
            screenshot(driver, f"status-charts-{window}.png")
            assert csp_complaints(driver) == []
        driver.get(proxy.url + "/status/accounts")
        wait(driver, EC.presence_of_element_located((By.ID, "chart-headroom")))
        assert len(driver.find_elements(By.CSS_SELECTOR, "#history svg.chart path.line")) >= 2 * 3 + 2  # 5h and 7d per account, pool
        assert driver.find_elements(By.CSS_SELECTOR, "#history line.marker.c-5h")  # the 5h resets
        assert len(driver.find_elements(By.CSS_SELECTOR, "table#share tbody tr")) == 3
        screenshot(driver, "status-accounts-charts.png")
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
        screenshot(driver, "status-accounts-charts-dark.png")
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
        driver.get(proxy.url + "/status/keys")
        limits = wait(driver, EC.presence_of_all_elements_located((By.CSS_SELECTOR, "#history line.limit")))
        assert len(limits) == 4  # both keys have a daily-token and an rpm limit
        screenshot(driver, "status-keys-charts.png")
        assert csp_complaints(driver) == []
    finally:
        driver.quit()

    # Images and scripts off: every chart still has its title and its table of numbers.
    driver = start_chromium(tmp_path / "plain", "--blink-settings=imagesEnabled=false,scriptEnabled=false")
    try:
        driver.get(proxy.url + "/status/login")
        field = wait(driver, EC.presence_of_element_located((By.NAME, "token")))
        field.send_keys(proxy.admin_token)
        field.submit()
        wait(driver, EC.presence_of_element_located((By.ID, "activity")))
        for figure in driver.find_elements(By.CSS_SELECTOR, "figure.chart"):
            assert figure.find_element(By.TAG_NAME, "figcaption").text
            figure.find_element(By.TAG_NAME, "summary").click()
            assert figure.find_elements(By.CSS_SELECTOR, "table tbody tr")
        screenshot(driver, "status-charts-no-images.png")
    finally:
        driver.quit()
