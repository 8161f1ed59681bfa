"""The real clients the tests drive, installed from npm into node_modules (package.json)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO, clean_env


def npm_binary(name: str, what: str) -> str:
    """node_modules/.bin/<name>; missing, it fails in CI (never a silent skip) and skips elsewhere."""
    local = REPO / "node_modules" / ".bin" / name
    if not local.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{what} is not installed: npm install in the repository root (scripts/dev test does)")
        pytest.skip(f"{what} not installed (npm install in the repository root)")
    return str(local)


def codex_binary() -> str:
    return npm_binary("codex", "Codex CLI")


def claude_binary() -> str:
    return npm_binary("claude", "Claude Code")


# Claude Code with nothing calling out but the proxy: no telemetry, updates, surveys.
CLAUDE_QUIET = {"DISABLE_TELEMETRY": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
                "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1", "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1"}


def claude_code(home: Path, work: Path, *args: str, base_url: str, api_key: str,
                timeout: float = 180) -> subprocess.CompletedProcess:
    """The real Claude Code as a user runs it, from `work`, with its own HOME and config dir,
    pointed at `base_url` with `api_key`; the caller's Anthropic/Claude settings and proxies
    are not inherited."""
    home.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ANTHROPIC_", "CLAUDE_")) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env.update(CLAUDE_QUIET, HOME=str(home), CLAUDE_CONFIG_DIR=str(home / ".claude"),
               ANTHROPIC_BASE_URL=base_url, ANTHROPIC_API_KEY=api_key)
    return subprocess.run([claude_binary(), *args], capture_output=True, text=True, env=env, cwd=work,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def codex_exec(workdir: Path, *args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """`codex exec` as a user runs it, from `workdir`: CODEX_HOME is workdir/codex-home (a
    config.toml a test put there is the user's), a clean environment plus `env`, no stdin."""
    home = Path(workdir) / "codex-home"
    home.mkdir(parents=True, exist_ok=True)
    cmd = [codex_binary(), "exec", "--skip-git-repo-check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir,
                          stdin=subprocess.DEVNULL, env=clean_env({"CODEX_HOME": str(home), **env}))
