"""The TinyDB store: accounts, keys and small state, shared by the proxy and the CLI.

- Atomic: every write is temp file + fsync + rename + fsync of the directory, so `kill -9`
  leaves the old or the new file, never half of one; the temp files a killed writer leaves
  behind are removed by the next process that opens the store.
- Shared between processes: every read-modify-write holds an exclusive `flock` on a lock file
  beside the store and starts from the file as it is on disk (re-read when its stat changed),
  so the CLI and a running proxy never lose each other's writes.
- Request logs do not live here (TinyDB rewrites the whole file per write): see logstore.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import secrets
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

from .models import Account, PlatformKey, Record, now

T = TypeVar("T", bound=Record)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a directory; the rename is as durable as they allow
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def remove_stale_temp_files(path: Path) -> list[Path]:
    """Delete the temp copies (`.<store>.<pid>.<thread>.tmp`) that a writer killed mid-write
    (kill -9, power cut) left beside the store: each is a full copy with every token in it.
    Only files of processes that are gone: a live writer's temp file is about to be renamed."""
    removed = []
    prefix = f".{path.name}."
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.*.tmp"):
        pid_text = candidate.name[len(prefix):].split(".", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        try:
            candidate.unlink()
            removed.append(candidate)
        except FileNotFoundError:
            pass
    return removed


class AtomicJSONStorage(Storage):
    """TinyDB storage that re-reads the file only when it changed on disk and replaces it
    atomically on write."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._cache: dict[str, Any] | None = None
        self._stamp: tuple[int, int, int] | None = None
        self._lock = threading.RLock()  # the proxy's loop, job and worker threads share this
        self.generation = 0  # bumps whenever the content may have changed

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def sync(self) -> None:
        """Reload the cache if the file changed on disk (one stat when it did not)."""
        with self._lock:
            self._sync()

    def _sync(self) -> None:
        stamp = self._stat()
        if stamp is None:
            if self._cache is not None:
                self._cache, self._stamp = None, None
                self.generation += 1
            return
        if stamp != self._stamp or self._cache is None:
            with open(self.path, "rb") as fh:
                raw = fh.read()
            self._cache = json.loads(raw) if raw.strip() else {}
            self._stamp = stamp
            self.generation += 1

    def read(self) -> dict[str, Any] | None:
        with self._lock:
            self._sync()
            if self._cache is None:
                return None
            # TinyDB mutates what read() returns before writing it back: hand out a copy.
            return json.loads(json.dumps(self._cache))

    def write(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._write(data)

    def _write(self, data: dict[str, Any]) -> None:
        payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)  # the rename itself survives a power cut only once its directory is synced
        self._cache = json.loads(payload)
        self._stamp = self._stat()
        self.generation += 1

    def close(self) -> None:
        pass


class Store:
    """The JSON store. Use `transaction()` around read-modify-write sequences."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.storage = AtomicJSONStorage(self.path)
        self.db = TinyDB(storage=lambda: self.storage)  # type: ignore[arg-type]
        self._thread_lock = threading.RLock()
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_depth = 0
        self._lock_fd: int | None = None
        remove_stale_temp_files(self.path)
        if not self.path.exists():
            with self.transaction():
                if not self.path.exists():
                    self.storage.write({})
        os.chmod(self.path, 0o600)

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Store"]:
        """Exclusive across threads and processes; re-entrant within a thread."""
        with self._thread_lock:
            if self._lock_depth == 0:
                self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
                    os.close(self._lock_fd)
                    self._lock_fd = None

    @contextlib.contextmanager
    def named_lock(self, name: str) -> Iterator[None]:
        """A lock for one long operation (e.g. refreshing one account's token), exclusive
        across threads and processes, without holding up the rest of the store."""
        path = self.path.with_name(f"{self.path.name}.{hashlib.sha1(name.encode()).hexdigest()[:16]}.lock")
        with _NAMED_THREAD_LOCKS.get(str(path)):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def table(self, name: str) -> Table:
        # A fresh Table per use: TinyDB tables cache ids and query results, which another
        # process's writes would make stale.
        return Table(self.storage, name, cache_size=0)

    @property
    def generation(self) -> int:
        self.storage.sync()
        return self.storage.generation

    # --- small key/value state (generated admin token, model cache, pending logins...) ---
    def get_state(self, key: str, default: Any = None) -> Any:
        docs = self.table("state").search(lambda d: d.get("key") == key)
        return docs[0]["value"] if docs else default

    def set_state(self, key: str, value: Any) -> None:
        with self.transaction():
            table = self.table("state")
            table.remove(lambda d: d.get("key") == key)
            table.insert({"key": key, "value": value})

    def pop_state(self, key: str, default: Any = None) -> Any:
        with self.transaction():
            value = self.get_state(key, default)
            self.table("state").remove(lambda d: d.get("key") == key)
            return value


class _NamedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())


_NAMED_THREAD_LOCKS = _NamedLocks()


class Repo:
    """Typed records of one table, with a parse cache keyed on the store's generation
    (the hot path reads accounts on every request)."""

    table_name = ""
    model: type[Record] = Record

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache_gen = -1
        self._cache: list[Any] = []

    def all(self) -> list[Any]:
        gen = self.store.generation
        if gen != self._cache_gen:
            self._cache = [self.model.model_validate(dict(d)) for d in self.store.table(self.table_name).all()]
            self._cache_gen = gen
        return list(self._cache)

    def get(self, record_id: str) -> Any | None:
        for record in self.all():
            if record.id == record_id:
                return record
        return None

    def find(self, ref: str) -> Any | None:
        """By id, or by a unique id prefix, email or name (what users type in the CLI)."""
        records = self.all()
        for record in records:
            if record.id == ref:
                return record
        matches = [r for r in records if r.id.startswith(ref) or ref in (getattr(r, "email", None), getattr(r, "name", None))]
        return matches[0] if len(matches) == 1 else None

    def add(self, record: Any) -> Any:
        with self.store.transaction():
            self.store.table(self.table_name).insert(record.model_dump(mode="json"))
        return record

    def update(self, record_id: str, change: Callable[[Any], None] | None = None, **fields: Any) -> Any | None:
        """Apply `change(record)` and/or set `fields` on the stored record, atomically."""
        with self.store.transaction():
            table = self.store.table(self.table_name)
            docs = table.search(lambda d: d.get("id") == record_id)
            if not docs:
                return None
            record = self.model.model_validate(dict(docs[0]))
            if change is not None:
                change(record)
            for key, value in fields.items():
                setattr(record, key, value)
            if hasattr(record, "updated_at"):
                record.updated_at = now()
            table.update(record.model_dump(mode="json"), doc_ids=[docs[0].doc_id])
            return record

    def remove(self, record_id: str) -> bool:
        with self.store.transaction():
            return bool(self.store.table(self.table_name).remove(lambda d: d.get("id") == record_id))


class AccountRepo(Repo):
    table_name = "accounts"
    model = Account

    def ordered(self) -> list[Account]:
        return sorted(self.all(), key=lambda a: (a.sort, a.created_at))

    def upsert_by_chatgpt_id(self, account: Account) -> tuple[Account, bool]:
        """Add the account, or refresh the tokens of the one with the same ChatGPT account
        and user (re-importing the same auth.json must not duplicate it)."""
        with self.store.transaction():
            for existing in self.all():
                same = existing.chatgpt_account_id and existing.chatgpt_account_id == account.chatgpt_account_id
                if same and (existing.user_id == account.user_id or not account.user_id):
                    fields = {k: getattr(account, k) for k in ("access_token", "refresh_token", "id_token", "token_expires_at", "email", "plan")
                              if getattr(account, k) is not None}
                    if existing.status == "reauth_required":
                        fields.update(status="active", status_reason=None, status_until=None, refresh_failures=0)
                    return self.update(existing.id, **fields), False
            return self.add(account), True


class KeyRepo(Repo):
    table_name = "keys"
    model = PlatformKey

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self._by_hash: dict[str, PlatformKey] = {}
        self._by_hash_gen = -1

    @staticmethod
    def hash(secret: str) -> str:
        return hashlib.sha256(secret.encode()).hexdigest()

    def create(self, name: str, **fields: Any) -> tuple[PlatformKey, str]:
        """A new key; the secret is returned here once and only its hash is stored."""
        secret = "cpk-" + secrets.token_urlsafe(32)
        key = PlatformKey(name=name, key_hash=self.hash(secret), prefix=secret[:10], **fields)
        self.add(key)
        return key, secret

    def verify(self, secret: str) -> PlatformKey | None:
        gen = self.store.generation
        if gen != self._by_hash_gen:
            self._by_hash = {k.key_hash: k for k in self.all()}
            self._by_hash_gen = gen
        digest = self.hash(secret)
        key = self._by_hash.get(digest)
        # The dict lookup finds the candidate; compare_digest keeps the final check constant-time.
        if key is not None and secrets.compare_digest(key.key_hash, digest):
            return key
        return None
