"""The suite's own imports resolve, those inside test functions too: pytest collects a module by
importing its top level only, so a name moved away from a helper module (claude_binary, once)
failed only when that one test ran, in CI."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_from_import_of_the_suite_names_something_that_exists():
    missing = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or not (node.module or "").startswith(("tests", "codexproxy")):
                continue
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name != "*" and not hasattr(module, alias.name):
                    try:
                        importlib.import_module(f"{node.module}.{alias.name}")
                    except ImportError:
                        missing.append(f"{path.name}:{node.lineno}: from {node.module} import {alias.name}")
    assert not missing, "\n".join(missing)
