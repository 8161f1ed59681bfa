"""The App: what every hook receives as `app` — config, store, state, repositories, hooks, jobs."""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from . import runfile
from .config import Config
from .logstore import open_logs
from .plugins import PluginInfo, load_plugins
from .scheduler import Jobs
from .state import LocalState, open_state
from .store import AccountRepo, KeyRepo, Store

log = logging.getLogger("codexproxy")


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.data_dir: Path = config.storage.data_dir
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.pm, self.plugins = load_plugins(config)
        self.hook = self.pm.hook
        self.store = Store(config.storage.file)
        self.state = open_state(config, self.store)  # every plugin's cross-request state (state.py)
        self.accounts = self._repo(AccountRepo, "accounts")
        self.keys = self._repo(KeyRepo, "keys")
        self.logs = open_logs(config, self.data_dir / "logs", self.state)  # local segments, or the pool's Redis stream
        self.jobs = Jobs(self)
        self.started_at = time.time()
        self.public_url: str | None = None  # set once the proxy listens
        self.running = False  # True inside `codexproxy run`
        self.state_lock = threading.RLock()  # for plugins' in-memory state shared across threads
        self._admin_token: str | None = config.admin.token
        self._plugin_state: dict[str, Any] = {}

    def _repo(self, repo_class: Any, name: str) -> Any:
        """A repository over the state's collection, so accounts and keys live where the rest of
        the state does; on another backend than the store, `state.lock` guards its multi-step writes."""
        exclusive = None if isinstance(self.state, LocalState) else (lambda: self.state.lock(f"repo:{name}", ttl=30))
        return repo_class(self.state.collection(name), exclusive=exclusive)

    # --- admin token: configured, or generated once and kept (0600) in the data dir ----------
    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin_token"

    @property
    def admin_token(self) -> str:
        if self._admin_token:
            return self._admin_token
        path = self.admin_token_file
        try:
            token = path.read_text().strip()
        except FileNotFoundError:
            token = ""
        if not token:
            token = self._create_admin_token(path)
        self._admin_token = token
        return token

    @staticmethod
    def _create_admin_token(path: Path) -> str:
        """Written whole to a temp file, then linked into place: two processes starting at once
        (workers, the CLI and the proxy) agree on one token, and none reads a half-written file."""
        token = secrets.token_hex(32)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (token + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process got there first
        except FileExistsError:
            token = path.read_text().strip()
        finally:
            tmp.unlink(missing_ok=True)
        return token

    def check_admin_token(self, offered: str | None) -> bool:
        """Constant-time comparison with the admin token."""
        if not offered:
            return False
        return secrets.compare_digest(offered.encode(), self.admin_token.encode())

    def plugin_config(self, name: str) -> Any:
        return self.config.plugin(name)

    def plugin_state(self, name: str, factory: Any) -> Any:
        """In-memory state a plugin keeps for this process (created by `factory()` once)."""
        with self.state_lock:
            if name not in self._plugin_state:
                self._plugin_state[name] = factory()
            return self._plugin_state[name]

    def plugin_enabled(self, name: str) -> bool:
        return any(info.name == name and info.enabled for info in self.plugins)

    def plugin_infos(self) -> list[PluginInfo]:
        return self.plugins

    def running_proxy_url(self) -> str | None:
        """The URL of a `codexproxy run` serving this store right now, if any (runfile.py)."""
        return runfile.running_url(self.data_dir)

    # --- lifecycle -----------------------------------------------------------------------------
    def start_background(self) -> None:
        self.hook.codexproxy_register_jobs(app=self, jobs=self.jobs)
        self.jobs.start()

    def close(self) -> None:
        self.jobs.stop()
        self.logs.close()
        self.state.close()
