"""The real clients the tests drive, installed from npm into node_modules (package.json)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import REPO


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
