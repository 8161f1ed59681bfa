"""`./scripts/dev demo`: a newcomer sees the gateway work in a minute with no ChatGPT account
(a local stand-in upstream, demo accounts, a key), and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import httpx

from tests.conftest import REPO, clean_env, wait_for


def test_the_demo_serves_a_chat_completion_and_cleans_up():
    proc = subprocess.Popen([str(REPO / "scripts" / "dev"), "demo", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=clean_env(), start_new_session=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(line.rstrip() for line in proc.stdout), daemon=True).start()
    try:
        url = wait_for(lambda: next((m.group(1) for line in list(lines) if (m := re.search(r"listening on (http://\S+)", line))), None),
                       timeout=60, what="the demo proxy to listen")
        key = next(m.group(1) for line in list(lines) if (m := re.search(r"platform key (\S+)", line)))
        data_dir = next(m.group(1) for line in list(lines) if (m := re.search(r"data in (\S+)", line)))
        r = httpx.post(url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, timeout=30,
                       json={"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Hello"
        assert len(httpx.get(url + "/health", timeout=10).json()) and httpx.get(url + "/health", timeout=10).json()["accounts"] == 2
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        code = proc.wait(30)
    assert code in (0, 130), "\n".join(lines)
    assert not Path(data_dir).exists()  # the stand-in's store and auth files are gone
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
