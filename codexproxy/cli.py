"""The `codexproxy` command: the parser, `main`, and what every command's code shares (CLIError,
argument types, `emit`, `table`). Errors are one line on stderr and exit code 2.

No command is defined here: the core's own (commands.py) and each plugin's come through
`codexproxy_cli_commands`, so the parser is built after the config (which says which plugins
are on) is read.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from typing import Any, Callable

from . import __version__
from .app import App
from .config import ConfigError, load_config
from .exchange import GatewayError

EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing failure: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse prints usage + message by default
        raise CLIError(f"{self.prog}: {message}")


# --- argument types ------------------------------------------------------------------------------
# argparse turns the ArgumentTypeError into "argument --port: ..." (one line, exit 2).

def whole_number(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number (got {text[:40]!r})") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high} (got {value})")
        return value
    parse.__name__ = "whole number"
    return parse


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds (got {text[:40]!r})") from None
    if not 0 < value <= 86400:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 86400 (got {text[:40]!r})")
    return value


def short_text(max_len: int = 200) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if len(text) > max_len:
            raise argparse.ArgumentTypeError(f"at most {max_len} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in text):
            raise argparse.ArgumentTypeError("control characters are not allowed")
        return text
    parse.__name__ = "text"
    return parse


PORT = whole_number(0, 65535)


class SecretRedactingFilter(logging.Filter):
    """Defence in depth: no log line carries a bearer token, JWT or platform key."""

    PATTERNS = [
        (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1***"),
        (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "***jwt***"),
        (re.compile(r"cpk-[A-Za-z0-9_-]{6,}"), "cpk-***"),
        (re.compile(r"(?i)(refresh_token[\"'=: ]+)[A-Za-z0-9._-]{8,}"), r"\1***"),
    ]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for pattern, repl in self.PATTERNS:
            message = pattern.sub(repl, message)
        record.msg, record.args = message, None
        return True


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(SecretRedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("mitmproxy", "httpx", "httpcore", "hpack", "passlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def emit(args: argparse.Namespace, data: Any, text: Callable[[], str]) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False) if getattr(args, "json", False) else text())


def fmt_time(ts: float | None) -> str:
    if not ts:
        return "-"
    delta = ts - time.time()
    local = time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
    if abs(delta) < 7 * 86400:
        sign = "in " if delta >= 0 else ""
        mins = int(abs(delta) // 60)
        span = f"{mins // 60}h{mins % 60:02d}m" if mins >= 60 else f"{mins}m"
        return f"{local} ({sign}{span}{'' if delta >= 0 else ' ago'})"
    return local


def table(rows: list[list[str]], header: list[str]) -> str:
    if not rows:
        return "(none)"
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


class CommandRegistry:
    """What `codexproxy_cli_commands` receives."""

    def __init__(self, sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
        self.sub = sub
        self.common = common
        self.groups: dict[str, argparse._SubParsersAction] = {}

    def group(self, name: str, help: str = "") -> argparse._SubParsersAction:
        if name not in self.groups:
            parser = self.sub.add_parser(name, help=help, parents=[self.common])
            parser.set_defaults(func=lambda app, args, p=parser: (p.print_help(), 0)[1])
            self.groups[name] = parser.add_subparsers(dest=f"{name}_cmd", metavar="COMMAND", parser_class=OneLineParser)
        return self.groups[name]

    def command(self, group: str | None, name: str, help: str = "") -> argparse.ArgumentParser:
        target = self.sub if group is None else self.group(group)
        return target.add_parser(name, help=help, description=help, parents=[self.common])


def build_parser(registry_hook: Callable[[CommandRegistry], None] | None = None) -> tuple[OneLineParser, argparse.ArgumentParser]:
    """The parser with every command `registry_hook` adds: the core's own (commands.py, through
    the "core" plugin) and each enabled plugin's, all through `codexproxy_cli_commands`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", metavar="FILE", help="config.yaml (optional: defaults and CODEXPROXY_* env are enough)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser = OneLineParser(prog="codexproxy", description="Local gateway for Codex/ChatGPT account pools.", parents=[common])
    parser.add_argument("--version", action="version", version=f"codexproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    if registry_hook:
        registry_hook(CommandRegistry(sub, common))
    return parser, common


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        common = argparse.ArgumentParser(add_help=False)
        common.add_argument("-c", "--config")
        common.add_argument("-v", "--verbose", action="store_true")
        early, _ = common.parse_known_args(argv)
        setup_logging(early.verbose)
        config = load_config(early.config)
        app = App(config)
        parser, _ = build_parser(lambda reg: app.hook.codexproxy_cli_commands(cli=reg))
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        return int(args.func(app, args) or 0)
    except (CLIError, ConfigError) as exc:
        print(str(exc).splitlines()[0] if str(exc) else "error", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:  # what a request would be answered with, e.g. the shared state (Redis) unreachable
        print(exc.message.splitlines()[0] if exc.message else "error", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
