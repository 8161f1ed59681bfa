"""`codexproxy service install|status|uninstall`: run the proxy as a service of the user's session.

Linux: a systemd user unit, `~/.config/systemd/user/codexproxy.service` (`$XDG_CONFIG_HOME` if
set). macOS: a launchd agent, `~/Library/LaunchAgents/local.codexproxy.plist`. Either runs this
installation's `codexproxy run -c <the config, absolute>` in the directory install was run from
(so relative paths in the config, and a `.env` read without a config, mean what they mean when
you run it there), restarts it when it fails but not when it is stopped, and gives it
`server.drain_timeout_s` + 10 s to finish its streams when it is stopped.

Nothing is started unless asked: `install` writes the file, `install --now` also enables and
(re)starts it with the service manager (`systemctl --user`, `launchctl`) and says plainly when
that manager cannot be reached. Environment variables reach the service only through `--env`
(or `codexproxy.env` beside the config): the shell's CODEXPROXY_* variables are named, never
copied, since they may hold secrets.

The renderers (`service_spec`, `systemd_unit`, `launchd_plist`) are pure; the commands around
them do the file and service-manager I/O.
"""

from __future__ import annotations

import argparse
import json
import os
import plistlib
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from .cli import CLIError, CommandRegistry

MARKER = "written by `codexproxy service install`; `codexproxy service uninstall` removes it"
UNIT_NAME = "codexproxy.service"
LAUNCHD_LABEL = "local.codexproxy"
RESTART_DELAY_S = 5  # between a failure and the restart: a broken config must not spin the CPU
STOP_GRACE_S = 10    # on top of server.drain_timeout_s, before the manager kills the process
TOOL_TIMEOUT_S = 30
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
SYSTEMD_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@+=:,./-]+\Z")
MANAGERS = ("systemd", "launchd")


# --- what the service runs (pure) ----------------------------------------------------------------
@dataclass(frozen=True)
class ServiceSpec:
    argv: tuple[str, ...]
    working_directory: str
    environment: tuple[tuple[str, str], ...]
    stop_timeout_s: int


def has_control_chars(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def codexproxy_argv(python: str | None = None) -> list[str]:
    """This installation's codexproxy: the console script beside the running Python (a venv's
    bin/, not resolved, so the venv stays the venv), else `python -m codexproxy`."""
    python = os.path.abspath(python or sys.executable)
    script = os.path.join(os.path.dirname(python), "codexproxy")
    if os.path.isfile(script) and os.access(script, os.X_OK):
        return [script]
    return [python, "-m", "codexproxy"]


def service_spec(program: list[str], config_file: str | None, working_directory: str,
                 environment: list[tuple[str, str]], drain_timeout_s: float) -> ServiceSpec:
    argv = [*program, "run", *(["-c", config_file] if config_file else [])]
    env = [("PYTHONUNBUFFERED", "1"), *[(k, v) for k, v in environment if k != "PYTHONUNBUFFERED"]]
    return ServiceSpec(tuple(argv), working_directory, tuple(env), int(drain_timeout_s + 0.999) + STOP_GRACE_S)


def _systemd_specifiers(text: str) -> str:
    return text.replace("%", "%%")  # every value below is subject to %-specifier expansion


def _systemd_exec_word(word: str) -> str:
    if SYSTEMD_PLAIN_WORD.fullmatch(word):  # no space, quote, backslash, % or $: as it is
        return word
    # C-style escapes inside double quotes; ExecStart also expands %-specifiers and $VAR
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _systemd_assignment(name: str, value: str) -> str:
    text = _systemd_specifiers(f"{name}={value}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_unit(spec: ServiceSpec) -> str:
    exec_start = " ".join(_systemd_exec_word(w) for w in spec.argv)
    env = "".join(f"Environment={_systemd_assignment(k, v)}\n" for k, v in spec.environment)
    return f"""# {MARKER}
[Unit]
Description=codexproxy: local gateway for Codex/ChatGPT account pools

[Service]
Type=simple
ExecStart={exec_start}
WorkingDirectory={_systemd_specifiers(spec.working_directory)}
{env}Restart=on-failure
RestartSec={RESTART_DELAY_S}
TimeoutStopSec={spec.stop_timeout_s}

[Install]
WantedBy=default.target
"""


def launchd_plist(spec: ServiceSpec, log_file: str) -> str:
    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": list(spec.argv),
        "WorkingDirectory": spec.working_directory,
        "EnvironmentVariables": dict(spec.environment),
        "RunAtLoad": True,                         # at login, once loaded
        "KeepAlive": {"SuccessfulExit": False},    # restarted after a failure, not after a stop
        "ThrottleInterval": RESTART_DELAY_S,
        "ExitTimeOut": spec.stop_timeout_s,
        "StandardOutPath": log_file,
        "StandardErrorPath": log_file,
    }
    text = plistlib.dumps(plist, sort_keys=False).decode()
    head, _, rest = text.partition("\n")  # the XML declaration must stay first
    return f"{head}\n<!-- {MARKER} -->\n{rest}"


def unit_exec_start(text: str) -> list[str] | None:
    """The command of an installed unit (for status): its ExecStart= split as systemd splits it
    (close enough for display: quotes and backslashes; specifiers shown undoubled)."""
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            try:
                words = shlex.split(line[len("ExecStart="):])
            except ValueError:  # a hand-edited line with an open quote: status says it cannot read it
                return None
            return [w.replace("%%", "%").replace("$$", "$") for w in words]
    return None


# --- the service managers ------------------------------------------------------------------------
def run_tool(argv: list[str]) -> tuple[bool | None, str]:
    """(True/False: the tool ran and succeeded/failed, None: it is not installed; its output's
    first line, for one-line reports)."""
    if shutil.which(argv[0]) is None:
        return None, f"{argv[0]} not found"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return False, f"{' '.join(argv)} did not answer within {TOOL_TIMEOUT_S} s"
    except OSError as exc:
        return False, f"{argv[0]}: {exc.strerror}"
    lines = [ln.strip() for ln in (done.stdout + "\n" + done.stderr).splitlines() if ln.strip()]
    return done.returncode == 0, lines[0] if lines else f"exit code {done.returncode}"


class Systemd:
    name = "systemd"
    kind = "systemd user unit"

    def path(self, home: Path, environ: dict[str, str]) -> Path:
        config_home = environ.get("XDG_CONFIG_HOME", "")
        base = Path(config_home) if os.path.isabs(config_home) else home / ".config"
        return base / "systemd" / "user" / UNIT_NAME

    def render(self, spec: ServiceSpec, home: Path) -> str:
        return systemd_unit(spec)

    def command_of(self, text: str) -> list[str] | None:
        return unit_exec_start(text)

    def start_hint(self, path: Path) -> str:
        return (f"start it now and at every login: systemctl --user enable --now {UNIT_NAME}\n"
                "(to keep it running while you are logged out: loginctl enable-linger $USER)")

    def start(self, path: Path) -> tuple[bool, str]:
        for argv in (["systemctl", "--user", "daemon-reload"], ["systemctl", "--user", "enable", UNIT_NAME],
                     ["systemctl", "--user", "restart", UNIT_NAME]):
            ok, out = run_tool(argv)
            if not ok:
                return False, f"{' '.join(argv)}: {out}"
        return True, f"enabled and (re)started: systemctl --user status {UNIT_NAME} shows it"

    def state(self) -> tuple[str | None, str]:
        """(is-active's answer, or None when systemctl --user cannot be used; a note)."""
        ok, out = run_tool(["systemctl", "--user", "is-active", UNIT_NAME])
        if ok is not None and re.fullmatch(r"[a-z-]+", out):  # active, inactive, failed, activating...
            return out, "systemctl --user is-active"
        return None, f"systemctl --user is not usable here ({out})"

    def stop_and_remove(self, path: Path) -> list[str]:
        notes = []
        state, note = self.state()
        if state is not None:
            ok, out = run_tool(["systemctl", "--user", "disable", "--now", UNIT_NAME])
            notes.append("stopped and disabled" if ok else f"systemctl --user disable --now: {out}")
        else:
            notes.append(f"{note}: if it is running, it runs until the user manager stops it")
        path.unlink()
        wants = path.parent / "default.target.wants" / UNIT_NAME  # what `enable` made; disable removes it
        if wants.is_symlink():
            wants.unlink()
        if state is not None:
            run_tool(["systemctl", "--user", "daemon-reload"])
        return notes


class Launchd:
    name = "launchd"
    kind = "launchd agent"

    def path(self, home: Path, environ: dict[str, str]) -> Path:
        return home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"

    def render(self, spec: ServiceSpec, home: Path) -> str:
        return launchd_plist(spec, str(home / "Library" / "Logs" / "codexproxy.log"))

    def command_of(self, text: str) -> list[str] | None:
        try:
            return list(plistlib.loads(text.encode()).get("ProgramArguments") or [])
        except Exception:  # a damaged file: status says it cannot read the command
            return None

    def domain(self) -> str:
        return f"gui/{os.getuid()}"

    def start_hint(self, path: Path) -> str:
        return f"it starts at your next login; to start it now: launchctl bootstrap {self.domain()} {path}"

    def start(self, path: Path) -> tuple[bool, str]:
        run_tool(["launchctl", "bootout", f"{self.domain()}/{LAUNCHD_LABEL}"])  # a loaded older copy, if any
        ok, out = run_tool(["launchctl", "bootstrap", self.domain(), str(path)])
        return bool(ok), "loaded and started" if ok else f"launchctl bootstrap: {out}"

    def state(self) -> tuple[str | None, str]:
        ok, out = run_tool(["launchctl", "print", f"{self.domain()}/{LAUNCHD_LABEL}"])
        if ok is None:
            return None, f"launchctl is not usable here ({out})"
        return ("loaded" if ok else "not loaded"), "launchctl print"

    def stop_and_remove(self, path: Path) -> list[str]:
        ok, out = run_tool(["launchctl", "bootout", f"{self.domain()}/{LAUNCHD_LABEL}"])
        notes = ["stopped and unloaded" if ok else f"launchctl bootout: {out}"]
        path.unlink()
        return notes


def manager_for(choice: str | None, platform: str = sys.platform) -> Systemd | Launchd:
    if choice == "launchd" or (choice is None and platform == "darwin"):
        return Launchd()
    if choice == "systemd" or (choice is None and platform.startswith("linux")):
        return Systemd()
    raise CLIError(f"service: no service manager supported on {platform} (systemd on Linux, launchd on macOS; see --manager)")


# --- the commands --------------------------------------------------------------------------------
def env_assignment(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not ENV_NAME.match(name):
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE with a variable name (got {text[:40]!r})")
    if has_control_chars(value):
        raise argparse.ArgumentTypeError(f"{name}: control characters (a newline...) are not allowed in the value")
    return name, value


def installed_file(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CLIError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None


def spec_from(app, args: argparse.Namespace) -> ServiceSpec:
    config_file = os.path.abspath(app.config.source) if app.config.source else None
    cwd = os.getcwd()
    program = codexproxy_argv()
    for what, text in (("the config path", config_file or ""), ("the current directory", cwd), ("the program path", program[0])):
        if has_control_chars(text):
            raise CLIError(f"service install: {what} contains control characters: {text[:80]!r}")
    return service_spec(program, config_file, cwd, args.env, app.config.server.drain_timeout_s)


def cmd_install(app, args: argparse.Namespace) -> int:
    if args.print_only and args.now:
        raise CLIError("service install: --print shows the file without writing it; it cannot be combined with --now")
    manager = manager_for(args.manager)
    home = Path.home()
    spec = spec_from(app, args)
    text = manager.render(spec, home)
    if args.print_only:
        print(text, end="")
        return 0
    path = manager.path(home, dict(os.environ))
    old = installed_file(path)
    if old is not None and MARKER not in old and not args.force:
        raise CLIError(f"service install: {path} exists and was not written by codexproxy; move it away or pass --force")
    if old != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # --env values may be secrets
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    verb = "installed" if old is None else ("unchanged" if old == text else "updated")
    print(f"{verb}: {path} ({manager.kind})")
    print(f"  runs: {shlex.join(spec.argv)}")
    print(f"  in:   {spec.working_directory}")
    unseen = sorted(k for k in os.environ if k.startswith("CODEXPROXY_") and k not in dict(args.env))
    if unseen:
        print(f"note: {', '.join(unseen)} {'is' if len(unseen) == 1 else 'are'} set in this shell but not given to the service; "
              "pass --env NAME=VALUE or put it in codexproxy.env beside the config")
    if not args.now:
        print(manager.start_hint(path))
        return 0
    ok, message = manager.start(path)
    if not ok:
        print(f"not started: {message}\nthe file is installed; {manager.start_hint(path)}", file=sys.stderr)
        return 1
    print(message)
    return 0


def cmd_status(app, args: argparse.Namespace) -> int:
    manager = manager_for(args.manager)
    path = manager.path(Path.home(), dict(os.environ))
    text = installed_file(path)
    report: dict = {"manager": manager.name, "path": str(path), "installed": text is not None,
                    "command": None, "state": None, "note": None}
    if text is not None:
        report["command"] = manager.command_of(text)
        report["state"], report["note"] = manager.state()

    def lines() -> str:
        if text is None:
            return f"not installed ({manager.kind}: no {path})"
        out = [f"installed: {path} ({manager.kind})",
               f"  runs: {shlex.join(report['command']) if report['command'] else '(cannot read the command)'}"]
        out.append(f"  state: {report['state']} ({report['note']})" if report["state"] else f"  state: unknown: {report['note']}")
        return "\n".join(out)

    print(json.dumps(report, indent=2) if args.json else lines())
    return 0


def cmd_uninstall(app, args: argparse.Namespace) -> int:
    manager = manager_for(args.manager)
    path = manager.path(Path.home(), dict(os.environ))
    text = installed_file(path)
    if text is None:
        print(f"not installed: no {path}")
        return 0
    if MARKER not in text and not args.force:
        raise CLIError(f"service uninstall: {path} was not written by codexproxy; remove it yourself or pass --force")
    notes = manager.stop_and_remove(path)
    print(f"removed: {path}")
    for note in notes:
        print(f"  {note}")
    return 0


def register(cli: CommandRegistry) -> None:
    cli.group("service", "run codexproxy at login: a systemd user unit (Linux) or a launchd agent (macOS)")
    manager_help = "systemd or launchd (default: systemd on Linux, launchd on macOS)"
    p = cli.command("service", "install", "write the unit (or plist) that runs `codexproxy run -c <this config>`; starts nothing without --now")
    p.add_argument("--now", action="store_true", help="also enable and (re)start it now (systemctl --user / launchctl)")
    p.add_argument("--print", dest="print_only", action="store_true", help="print the file instead of writing it")
    p.add_argument("--env", action="append", default=[], type=env_assignment, metavar="NAME=VALUE",
                   help="an environment variable for the service (repeatable)")
    p.add_argument("--manager", choices=MANAGERS, help=manager_help)
    p.add_argument("--force", action="store_true", help="replace a file at that path that codexproxy did not write")
    p.set_defaults(func=cmd_install)
    p = cli.command("service", "status", "whether the service is installed, what it runs, and its state")
    p.add_argument("--manager", choices=MANAGERS, help=manager_help)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)
    p = cli.command("service", "uninstall", "stop and disable the service (when the manager is reachable) and remove its file")
    p.add_argument("--manager", choices=MANAGERS, help=manager_help)
    p.add_argument("--force", action="store_true", help="remove the file even if codexproxy did not write it")
    p.set_defaults(func=cmd_uninstall)
