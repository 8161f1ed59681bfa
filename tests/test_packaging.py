"""The wheel works outside the checkout: plugins/ and templates/ ship inside it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import sysconfig
import time

import httpx
import pytest

from tests.conftest import REPO, clean_env

pytestmark = pytest.mark.slow


def test_wheel_installs_and_runs_outside_the_repo(tmp_path, fake):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
                   check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("codexproxy-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # Dependencies come from this environment (a .pth line, no editable finder), the package
    # itself only from the wheel: so the test proves what the wheel contains.
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)], check=True, capture_output=True, timeout=300)
    where = subprocess.run([str(py), "-c", "import codexproxy, codexproxy_plugins, codexproxy_templates; print(codexproxy.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert str(site) in where and str(REPO) not in where
    env = clean_env({"CODEXPROXY_STORAGE__PATH": str(tmp_path / "data" / "db.json"),
                     "CODEXPROXY_UPSTREAM__BASE_URL": fake.codex_base, "HOME": str(tmp_path)})
    proc = subprocess.Popen([str(venv / "bin" / "codexproxy"), "run", "--port", "0"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.time() + 30
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            m = re.search(r"listening on (http://\S+)", line)
            url = m.group(1) if m else None
        assert url, "codexproxy from the wheel did not start"
        assert httpx.get(url + "/health").json()["status"] == "ok"
        plugins = subprocess.run([str(venv / "bin" / "codexproxy"), "plugins", "--json"], cwd=tmp_path, env=env,
                                 capture_output=True, text=True, check=True).stdout
        assert '"adapter"' in plugins and '"routing"' in plugins
        shipped = subprocess.run([str(py), "-c", "import importlib.resources as r; print(sorted(p.name for p in r.files('codexproxy_templates').iterdir()))"],
                                 capture_output=True, text=True, cwd=tmp_path, check=True).stdout
        for template in (REPO / "templates").glob("*.html"):
            assert template.name in shipped
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
