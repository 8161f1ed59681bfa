"""The TinyDB store: the file behind the embedded state's collections (accounts, keys, and the
plugins' documents, see state.py), shared by the proxy and the CLI.

- Atomic: every write is temp file + fsync + rename + fsync of the directory, so `kill -9`
  leaves the old or the new file, never half of one; the temp files a killed writer leaves
  behind are removed by the next process that opens the store.
- Shared between processes: every read-modify-write holds an exclusive `flock` on a lock file
  beside the store and starts from the file as it is on disk (re-read when its stat changed),
  so the CLI and a running proxy never lose each other's writes.
- Reads never wait for a writer's fsync (hooks on the event loop read accounts and keys): they
  answer from the last snapshot, and see the write once it is complete.
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
import time
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

    def peek_generation(self) -> int:
        """The generation without waiting: one stat, and a reload only when no writer holds
        the lock (a write in progress updates the cache itself when its fsync is done), so the
        event loop never waits behind an fsync."""
        if self._stat() == self._stamp and self._cache is not None:
            return self.generation
        # Only the first load waits: until then there is no snapshot to answer from.
        if not self._lock.acquire(blocking=self._cache is None):
            return self.generation
        try:
            self._sync()
            return self.generation
        finally:
            self._lock.release()

    def table_docs(self, name: str) -> dict[str, Any]:
        """A copy of one table's documents by TinyDB doc id, without waiting for a writer: the
        cache is replaced whole on every write and reload, never changed in place, so the one
        read here is a consistent snapshot (at worst the one before a write in progress)."""
        self.peek_generation()
        return json.loads(json.dumps((self._cache or {}).get(name) or {}))

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

    def acquire_named_lock(self, name: str, wait: float | None = None) -> "NamedLock | None":
        """A lock for one long operation (LocalState's named locks: a token refresh, a job),
        exclusive across threads and processes without holding up the rest of the store.
        Blocks when `wait` is None (0 = one try); None if not taken. The holder calls
        `release()`, from any thread; a killed process's lock goes with it."""
        path = self.path.with_name(f"{self.path.name}.{hashlib.sha1(name.encode()).hexdigest()[:16]}.lock")
        thread_lock = _NAMED_THREAD_LOCKS.get(str(path))
        deadline = None if wait is None else time.monotonic() + wait
        if not thread_lock.acquire(timeout=-1 if deadline is None else max(0.0, wait or 0.0)):
            return None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if deadline is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                delay = 0.005
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise
                        time.sleep(min(delay, left))
                        delay = min(delay * 2, 0.05)
        except BlockingIOError:
            os.close(fd)
            thread_lock.release()
            return None
        except BaseException:
            os.close(fd)
            thread_lock.release()
            raise
        return NamedLock(fd, thread_lock)

    def table(self, name: str) -> Table:
        # A fresh Table per use: TinyDB tables cache ids and query results, which another
        # process's writes would make stale.
        return Table(self.storage, name, cache_size=0)

    @property
    def generation(self) -> int:
        """Changes whenever the file may have changed; never waits for a writer."""
        return self.storage.peek_generation()


class NamedLock:
    """A held named lock: an flock'ed file descriptor plus this process's thread lock."""

    def __init__(self, fd: int, thread_lock: threading.Lock) -> None:
        self._fd: int | None = fd
        self._thread_lock = thread_lock
        self._guard = threading.Lock()

    def release(self) -> None:
        with self._guard:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        self._thread_lock.release()


class _NamedLocks:
    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())


_NAMED_THREAD_LOCKS = _NamedLocks()


EXPIRES_FIELD = "_expires_at"  # a document's expiry (epoch seconds), for collections with a TTL


def _matches(doc: dict[str, Any], fields: dict[str, Any]) -> bool:
    return all(doc.get(k) == v for k, v in fields.items())


class TinyDBCollection:
    """A `state.Collection` over one table of the store file: every write is one atomic
    read-modify-write of the file under `transaction()` (so it may block on an fsync: call it
    from a worker thread, not the event loop). A document with a TTL carries its expiry in
    `EXPIRES_FIELD`; readers skip it once expired and the next write to the table drops it."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name

    def generation(self) -> int:
        """Changes whenever the collection may have changed; cheap and never blocks."""
        return self.store.generation

    @staticmethod
    def _live(doc: dict[str, Any], at: float) -> bool:
        expires = doc.get(EXPIRES_FIELD)
        return expires is None or expires > at

    @staticmethod
    def _public(doc: dict[str, Any]) -> dict[str, Any]:
        doc = dict(doc)
        doc.pop(EXPIRES_FIELD, None)
        return doc

    def all(self) -> list[dict[str, Any]]:
        at = time.time()
        return [self._public(d) for d in self.store.storage.table_docs(self.name).values() if self._live(d, at)]

    def get(self, doc_id: str) -> dict[str, Any] | None:
        return next((d for d in self.all() if d.get("id") == doc_id), None)

    def find(self, **fields: Any) -> list[dict[str, Any]]:
        return [d for d in self.all() if _matches(d, fields)]

    def _modify(self, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Run `change(table)` on the table as it is on disk and write the file back once
        (expired documents are dropped on the way)."""
        with self.store.transaction():
            data = self.store.storage.read() or {}
            table = data.setdefault(self.name, {})
            result = change(table)
            at = time.time()
            for key in [k for k, d in table.items() if not self._live(d, at)]:
                del table[key]
            self.store.storage.write(data)
            return result

    @staticmethod
    def _key_of(table: dict[str, Any], doc_id: str) -> str | None:
        return next((k for k, d in table.items() if d.get("id") == doc_id), None)

    def put(self, doc: dict[str, Any], ttl: float | None = None) -> dict[str, Any]:
        doc = json.loads(json.dumps(doc))
        doc.setdefault("id", secrets.token_hex(12))
        doc.pop(EXPIRES_FIELD, None)
        if ttl is not None:
            doc[EXPIRES_FIELD] = time.time() + ttl

        def change(table: dict[str, Any]) -> None:
            key = self._key_of(table, doc["id"])
            if key is None:
                key = str(max((int(k) for k in table if k.isdigit()), default=0) + 1)
            table[key] = doc

        self._modify(change)
        return self._public(doc)

    def update(self, doc_id: str, change: Callable[[dict[str, Any]], Any]) -> dict[str, Any] | None:
        def apply(table: dict[str, Any]) -> dict[str, Any] | None:
            key = self._key_of(table, doc_id)
            if key is None or not self._live(table[key], time.time()):
                return None
            doc = self._public(table[key])
            returned = change(doc)
            if isinstance(returned, dict):
                doc = returned
            doc = json.loads(json.dumps(doc))
            doc["id"] = doc_id
            if EXPIRES_FIELD in table[key]:
                doc[EXPIRES_FIELD] = table[key][EXPIRES_FIELD]
            table[key] = doc
            return self._public(doc)

        return self._modify(apply)

    def remove(self, doc_id: str) -> bool:
        return self.remove_where(id=doc_id) > 0

    def remove_where(self, **fields: Any) -> int:
        def apply(table: dict[str, Any]) -> int:
            at = time.time()
            gone = [k for k, d in table.items() if self._live(d, at) and _matches(d, fields)]
            for key in gone:
                del table[key]
            return len(gone)

        return self._modify(apply)


class Repo:
    """Typed records over one collection (a TinyDB table of the store, or any `state.Collection`,
    e.g. Redis), with a parse cache keyed on the collection's generation (the hot path reads
    accounts on every request, on the event loop: the check never blocks)."""

    table_name = ""
    model: type[Record] = Record

    def __init__(self, source: "Store | Any", exclusive: Callable[[], contextlib.AbstractContextManager[Any]] | None = None) -> None:
        """`source`: a Store (its `table_name` table) or a Collection. `exclusive()` guards
        multi-step writes (`upsert_by_chatgpt_id`); a Store's transaction by default."""
        self.collection = TinyDBCollection(source, self.table_name) if isinstance(source, Store) else source
        if exclusive is None:
            store = getattr(self.collection, "store", None)
            exclusive = store.transaction if isinstance(store, Store) else contextlib.nullcontext
        self.exclusive = exclusive
        self._cache_gen: Any = None
        self._cache: list[Any] = []

    def _generation(self) -> Any:
        generation = getattr(self.collection, "generation", None)
        return generation() if callable(generation) else None

    def all(self) -> list[Any]:
        gen = self._generation()
        if gen is None or gen != self._cache_gen:
            self._cache = [self.model.model_validate(d) for d in self.collection.all()]
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
        self.collection.put(record.model_dump(mode="json"))
        return record

    def update(self, record_id: str, change: Callable[[Any], None] | None = None, **fields: Any) -> Any | None:
        """Apply `change(record)` and/or set `fields` on the stored record, atomically."""
        updated: list[Any] = []

        def apply(doc: dict[str, Any]) -> dict[str, Any]:
            record = self.model.model_validate(doc)
            if change is not None:
                change(record)
            for key, value in fields.items():
                setattr(record, key, value)
            if hasattr(record, "updated_at"):
                record.updated_at = now()
            updated[:] = [record]
            return record.model_dump(mode="json")

        if self.collection.update(record_id, apply) is None:
            return None
        return updated[0]

    def remove(self, record_id: str) -> bool:
        return self.collection.remove(record_id)


class AccountRepo(Repo):
    table_name = "accounts"
    model = Account

    def ordered(self) -> list[Account]:
        return sorted(self.all(), key=lambda a: (a.sort, a.created_at))

    def upsert_by_chatgpt_id(self, account: Account) -> tuple[Account, bool]:
        """Add the account, or refresh the tokens of the one with the same ChatGPT account
        and user (re-importing the same auth.json must not duplicate it)."""
        with self.exclusive():
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

    def __init__(self, source: "Store | Any", exclusive: Callable[[], contextlib.AbstractContextManager[Any]] | None = None) -> None:
        super().__init__(source, exclusive)
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
        gen = self._generation()
        if gen is None or gen != self._by_hash_gen:
            self._by_hash = {k.key_hash: k for k in self.all()}
            self._by_hash_gen = gen
        digest = self.hash(secret)
        key = self._by_hash.get(digest)
        # The dict lookup finds the candidate; compare_digest keeps the final check constant-time.
        if key is not None and secrets.compare_digest(key.key_hash, digest):
            return key
        return None
