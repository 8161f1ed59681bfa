"""`codexproxy service install|status|uninstall`: the files it renders (the unit checked by
`systemd-analyze verify --user` where systemd is installed, the plist read back by plistlib), and
the CLI as a user runs it, with HOME pointed at a temp dir: install, status, uninstall; `--now`
with a stand-in `systemctl` that records what it is asked (and one that fails as it does
without a user manager); the unit's command run as systemd would run it serves the proxy."""

from __future__ import annotations

import configparser
import json
import os
import plistlib
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from codexproxy.service import MARKER, codexproxy_argv, launchd_plist, service_spec, systemd_unit, unit_exec_start
from tests.conftest import PYTHON, clean_env

VENV_CODEXPROXY = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "codexproxy")


def spec(program, config, cwd="/srv/codexproxy", env=(), drain=10.0):
    return service_spec(list(program), config, cwd, list(env), drain)


def unit_sections(text: str) -> configparser.ConfigParser:
    """The unit read as an ini file (repeated keys such as Environment= collected as a list)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",), comment_prefixes=("#",),
                                       dict_type=dict)
    parser.optionxform = str  # systemd keys are case-sensitive
    collected: dict[tuple[str, str], list[str]] = {}
    section = None
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            collected.setdefault((section, key), []).append(value)
    parser.read_string(text)
    parser.collected = collected  # type: ignore[attr-defined]
    return parser


def systemd_verify(unit: Path, home: Path) -> subprocess.CompletedProcess:
    runtime = home / "run"
    runtime.mkdir(mode=0o700, exist_ok=True)  # the user manager it simulates needs a runtime dir
    env = {**os.environ, "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    env.pop("XDG_CONFIG_HOME", None)
    return subprocess.run(["systemd-analyze", "verify", "--user", str(unit)], capture_output=True, text=True,
                          timeout=60, env=env)


# --- rendering ------------------------------------------------------------------------------------
def test_the_unit_runs_this_venvs_codexproxy_with_the_absolute_config(tmp_path):
    unit = systemd_unit(spec([VENV_CODEXPROXY], "/etc/codexproxy/config.yaml",
                             env=[("CODEXPROXY_SERVER__PORT", "9000")], drain=25))
    assert unit.startswith(f"# {MARKER}\n")
    ini = unit_sections(unit)
    assert set(ini.sections()) == {"Unit", "Service", "Install"}
    service = ini["Service"]
    assert service["ExecStart"] == f"{VENV_CODEXPROXY} run -c /etc/codexproxy/config.yaml"
    assert service["Restart"] == "on-failure" and service["Type"] == "simple"
    assert service["WorkingDirectory"] == "/srv/codexproxy"
    assert service["TimeoutStopSec"] == "35"  # the drain time and 10 s more
    assert ini.collected[("Service", "Environment")] == ['"PYTHONUNBUFFERED=1"', '"CODEXPROXY_SERVER__PORT=9000"']  # type: ignore[attr-defined]
    assert ini["Install"]["WantedBy"] == "default.target"


def test_paths_with_spaces_quotes_percent_and_dollar_survive_the_unit_syntax(tmp_path):
    config = str(tmp_path / 'my configs' / '100% "real" $HOME.yaml')
    argv = [VENV_CODEXPROXY, "run", "-c", config]
    unit = systemd_unit(spec([VENV_CODEXPROXY], config, cwd=str(tmp_path / "50% done")))
    assert unit_exec_start(unit) == argv
    line = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert "100%% " in line and "$$HOME" in line and '\\"real\\"' in line
    assert "WorkingDirectory=" + str(tmp_path / "50%% done") in unit


def test_the_unit_with_a_space_in_the_program_path_is_valid_for_systemd(tmp_path):
    # systemd-analyze verify (where systemd is installed: Debian's `systemd`) checks the
    # quoting of ExecStart's first word when it looks for the executable; elsewhere the
    # unit is read back as systemd splits it
    venv_bin = tmp_path / "my venv" / "bin"
    venv_bin.mkdir(parents=True)
    program = venv_bin / "codexproxy"
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    home = tmp_path / "home"
    units = home / ".config" / "systemd" / "user"
    units.mkdir(parents=True)
    unit = units / "codexproxy.service"
    config = str(tmp_path / "config dir" / "config.yaml")
    unit.write_text(systemd_unit(spec([str(program)], config, cwd=str(tmp_path),
                                      env=[("CODEXPROXY_STATE__REDIS_URL", "redis://:p%w@127.0.0.1:6379/0")])))
    assert unit_exec_start(unit.read_text()) == [str(program), "run", "-c", config]
    assert 'Environment="CODEXPROXY_STATE__REDIS_URL=redis://:p%%w@127.0.0.1:6379/0"' in unit.read_text()
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze missing (Debian: apt-get install systemd; scripts/dev test installs it as root)")
    checked = systemd_verify(unit, home)
    assert checked.returncode == 0 and checked.stderr.strip() == "", checked.stderr
    program.chmod(0o644)  # the control: systemd-analyze does look at the command
    broken = systemd_verify(unit, home)
    assert broken.returncode != 0 and "codexproxy" in broken.stderr


def test_the_plist_parses_and_restarts_only_after_a_failure(tmp_path):
    text = launchd_plist(spec([VENV_CODEXPROXY], "/Users/me/codexproxy/config.yaml", cwd="/Users/me",
                              env=[("CODEXPROXY_SERVER__PORT", "9000")]), "/Users/me/Library/Logs/codexproxy.log")
    assert MARKER in text
    plist = plistlib.loads(text.encode())
    assert plist["Label"] == "local.codexproxy"
    assert plist["ProgramArguments"] == [VENV_CODEXPROXY, "run", "-c", "/Users/me/codexproxy/config.yaml"]
    assert plist["WorkingDirectory"] == "/Users/me"
    assert plist["EnvironmentVariables"] == {"PYTHONUNBUFFERED": "1", "CODEXPROXY_SERVER__PORT": "9000"}
    assert plist["RunAtLoad"] is True and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["StandardErrorPath"] == "/Users/me/Library/Logs/codexproxy.log"


def test_without_a_console_script_beside_python_the_service_runs_python_dash_m(tmp_path):
    lone = tmp_path / "bin" / "python3"
    lone.parent.mkdir()
    lone.symlink_to(sys.executable)
    assert codexproxy_argv(str(lone)) == [str(lone), "-m", "codexproxy"]  # the venv's link, not resolved
    assert codexproxy_argv(sys.executable) == [VENV_CODEXPROXY]


# --- the CLI, as a user runs it -----------------------------------------------------------------
class User:
    """A HOME of its own, a config file, a working directory, and a PATH that finds only the
    tools put in `tools` (a stand-in systemctl, or none)."""

    def __init__(self, tmp_path: Path):
        self.home = tmp_path / "home"
        self.cwd = tmp_path / "work dir"
        self.cwd.mkdir(parents=True)
        self.tools = tmp_path / "tools"
        self.tools.mkdir()
        self.calls = tmp_path / "systemctl-calls.txt"
        (self.cwd / "config.yaml").write_text(yaml.safe_dump({
            "server": {"host": "127.0.0.1", "port": 0, "drain_timeout_s": 2},
            "storage": {"path": str(tmp_path / "data" / "codexproxy.json")}}))
        self.env = clean_env(home=self.home)
        self.env.pop("XDG_CONFIG_HOME", None)
        self.env["PATH"] = str(self.tools)  # the stand-in scripts need only sh's builtins
        self.unit = self.home / ".config" / "systemd" / "user" / "codexproxy.service"

    def run(self, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([PYTHON, "-m", "codexproxy", "service", *args, "-c", "config.yaml"], cwd=self.cwd,
                              env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=60)

    def fake_systemctl(self, works: bool = True, state: str = "active") -> None:
        """A systemctl that records its arguments; one that works answers is-active with `state`,
        one that does not answers as systemctl does where no user manager runs."""
        body = (f'case "$*" in *is-active*) echo {state}; [ {state} = active ] ;; *) exit 0 ;; esac' if works
                else 'echo "Failed to connect to bus: No medium found" >&2; exit 1')
        script = self.tools / "systemctl"
        script.write_text(f'#!/bin/sh\necho "$*" >> "{self.calls}"\n{body}\n')
        script.chmod(0o755)

    def systemctl_calls(self) -> list[str]:
        return self.calls.read_text().splitlines() if self.calls.exists() else []


@pytest.fixture
def user(tmp_path):
    return User(tmp_path)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_install_status_uninstall(user):
    installed = user.run("install")
    assert installed.returncode == 0, installed.stderr
    assert f"installed: {user.unit}" in installed.stdout
    assert "systemctl --user enable --now codexproxy.service" in installed.stdout  # what to do next, not done
    ini = unit_sections(user.unit.read_text())
    config = str(user.cwd / "config.yaml")
    assert unit_exec_start(user.unit.read_text()) == [VENV_CODEXPROXY, "run", "-c", config]
    assert ini["Service"]["WorkingDirectory"] == str(user.cwd) and ini["Service"]["Restart"] == "on-failure"
    assert ini["Service"]["TimeoutStopSec"] == "12"  # drain_timeout_s 2 + 10
    assert user.unit.stat().st_mode & 0o077 == 0
    assert not user.systemctl_calls()

    status = user.run("status")
    assert status.returncode == 0 and f"installed: {user.unit}" in status.stdout
    assert "systemctl not found" in status.stdout  # said, not guessed
    report = json.loads(user.run("status", "--json").stdout)
    assert report["installed"] is True and report["command"] == [VENV_CODEXPROXY, "run", "-c", config]
    assert report["state"] is None and "not usable" in report["note"]

    again = user.run("install")
    assert again.returncode == 0 and again.stdout.startswith("unchanged:")

    removed = user.run("uninstall")
    assert removed.returncode == 0 and f"removed: {user.unit}" in removed.stdout
    assert not user.unit.exists()
    gone = user.run("status")
    assert gone.returncode == 0 and gone.stdout.startswith("not installed")
    assert user.run("uninstall").stdout.startswith("not installed")


def test_print_shows_the_file_install_would_write_and_writes_nothing(user):
    printed = user.run("install", "--print", "--env", "CODEXPROXY_SERVER__PORT=9000")
    assert printed.returncode == 0 and printed.stdout.startswith(f"# {MARKER}")
    assert not user.unit.exists() and not (user.home / ".config").exists()
    assert user.run("install", "--env", "CODEXPROXY_SERVER__PORT=9000").returncode == 0
    assert user.unit.read_text() == printed.stdout


def test_the_units_command_serves_the_proxy(user):
    """What systemd would start: the unit's ExecStart, in its WorkingDirectory, with its Environment."""
    assert user.run("install", "--env", "CODEXPROXY_SERVER__DRAIN_TIMEOUT_S=1").returncode == 0
    text = user.unit.read_text()
    ini = unit_sections(text)
    env = dict(v.strip('"').split("=", 1) for v in ini.collected[("Service", "Environment")])  # type: ignore[attr-defined]
    assert env == {"PYTHONUNBUFFERED": "1", "CODEXPROXY_SERVER__DRAIN_TIMEOUT_S": "1"}
    process = subprocess.Popen(unit_exec_start(text), cwd=ini["Service"]["WorkingDirectory"], env={**user.env, **env},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            found.append(line)
            if "listening on" in line:
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(30), "".join(found)
        url = re.search(r"listening on (http://\S+)", "".join(found)).group(1)
        assert httpx.get(url + "/health", timeout=10).json()["status"] == "ok"
    finally:
        process.terminate()
        assert process.wait(20) == 0  # a stop is not a failure: Restart=on-failure leaves it stopped


def test_install_now_enables_and_starts_it_and_uninstall_stops_it(user):
    user.fake_systemctl(works=True)
    started = user.run("install", "--now")
    assert started.returncode == 0, started.stderr
    assert user.systemctl_calls() == ["--user daemon-reload", "--user enable codexproxy.service",
                                      "--user restart codexproxy.service"]
    assert "enabled and (re)started" in started.stdout
    status = user.run("status")
    assert "state: active (systemctl --user is-active)" in status.stdout

    wants = user.unit.parent / "default.target.wants" / "codexproxy.service"  # as `systemctl enable` leaves it
    wants.parent.mkdir()
    wants.symlink_to(user.unit)
    user.calls.unlink()
    removed = user.run("uninstall")
    assert removed.returncode == 0 and "stopped and disabled" in removed.stdout
    assert user.systemctl_calls() == ["--user is-active codexproxy.service", "--user disable --now codexproxy.service",
                                      "--user daemon-reload"]
    assert not user.unit.exists() and not wants.is_symlink()


def test_install_now_without_a_user_manager_says_so_and_keeps_the_file(user):
    user.fake_systemctl(works=False)
    result = user.run("install", "--now")
    assert result.returncode == 1
    assert "not started: systemctl --user daemon-reload: Failed to connect to bus" in result.stderr
    assert "systemctl --user enable --now codexproxy.service" in result.stderr
    assert user.unit.exists()
    status = user.run("status")
    assert "state: unknown: systemctl --user is not usable here (Failed to connect to bus: No medium found)" in status.stdout


def test_the_shells_codexproxy_variables_are_named_never_copied(user):
    result = user.run("install", env={"CODEXPROXY_ADMIN__TOKEN": "secret-admin-token-value"})
    assert "note: CODEXPROXY_ADMIN__TOKEN is set in this shell but not given to the service" in result.stdout
    assert "secret-admin-token-value" not in result.stdout + user.unit.read_text()


def test_launchd_agent_install_status_uninstall(user):
    plist_path = user.home / "Library" / "LaunchAgents" / "local.codexproxy.plist"
    installed = user.run("install", "--manager", "launchd")
    assert installed.returncode == 0, installed.stderr
    assert "it starts at your next login" in installed.stdout
    plist = plistlib.loads(plist_path.read_bytes())
    assert plist["ProgramArguments"] == [VENV_CODEXPROXY, "run", "-c", str(user.cwd / "config.yaml")]
    assert plist["WorkingDirectory"] == str(user.cwd)
    status = user.run("status", "--manager", "launchd")
    assert f"installed: {plist_path}" in status.stdout and "launchctl is not usable here" in status.stdout
    assert user.run("uninstall", "--manager", "launchd").returncode == 0
    assert not plist_path.exists()


@pytest.mark.parametrize("args,words", [
    (["install", "--env", "NOEQUALS"], ["--env", "NAME=VALUE"]),
    (["install", "--env", "1BAD=x"], ["--env", "NAME=VALUE"]),
    (["install", "--env", "A=line\nbreak"], ["--env", "control characters"]),
    (["install", "--print", "--now"], ["--print", "--now"]),
    (["install", "--manager", "upstart"], ["--manager", "invalid choice"]),
    (["status", "--bogus"], ["unrecognized arguments", "--bogus"]),
], ids=["no-equals", "bad-name", "newline", "print-and-now", "manager", "unknown-option"])
def test_bad_arguments_are_one_line_and_exit_2(user, args, words):
    line = one_line_error(user.run(*args))
    assert all(w in line for w in words), line
    assert not user.unit.exists()


def test_a_file_install_did_not_write_is_left_alone_without_force(user):
    user.unit.parent.mkdir(parents=True)
    user.unit.write_text("[Service]\nExecStart=/usr/bin/mine\n")
    line = one_line_error(user.run("install"))
    assert str(user.unit) in line and "--force" in line
    line = one_line_error(user.run("uninstall"))
    assert "--force" in line
    assert user.unit.read_text() == "[Service]\nExecStart=/usr/bin/mine\n"
    assert user.run("install", "--force").returncode == 0 and MARKER in user.unit.read_text()


def test_a_missing_config_file_is_one_line_and_exit_2(user):
    (user.cwd / "config.yaml").unlink()
    line = one_line_error(user.run("install"))
    assert "config.yaml" in line and "not found" in line


def test_status_of_a_hand_edited_unit_it_cannot_read_says_so(user):
    user.unit.parent.mkdir(parents=True)
    user.unit.write_text(f"# {MARKER}\n[Service]\nExecStart=/usr/bin/codexproxy run -c \"/open quote\n")
    status = user.run("status")
    assert status.returncode == 0 and "(cannot read the command)" in status.stdout and "Traceback" not in status.stderr
