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


def codex_exec(workdir: Path, *args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    """`codex exec` as a user runs it, from `workdir`: CODEX_HOME is workdir/codex-home (a
    config.toml a test put there is the user's), a clean environment plus `env`, no stdin."""
    home = Path(workdir) / "codex-home"
    home.mkdir(parents=True, exist_ok=True)
    cmd = [codex_binary(), "exec", "--skip-git-repo-check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=workdir,
                          stdin=subprocess.DEVNULL, env=clean_env({"CODEX_HOME": str(home), **env}))
