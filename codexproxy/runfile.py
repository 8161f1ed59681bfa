"""`<data dir>/run.json`: where the running proxy is (pid and URL), so that CLI commands find it.

Written by whoever owns the listening port (the proxy, or the workers' supervisor), removed by
it when it stops; a file left by a killed process names a pid that is gone.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any


def write(data_dir: Path, url: str, **extra: Any) -> None:
    path = data_dir / "run.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"pid": os.getpid(), "url": url, "started_at": time.time(), **extra}))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def remove(data_dir: Path) -> None:
    """Only our own: a file another process has written since is left alone."""
    path = data_dir / "run.json"
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def running_url(data_dir: Path) -> str | None:
    """The URL of the proxy serving this data dir right now, if any."""
    try:
        info = json.loads((data_dir / "run.json").read_text())
        os.kill(int(info["pid"]), 0)
        return str(info["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
