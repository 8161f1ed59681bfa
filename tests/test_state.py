"""The state interface (`app.state`): one conformance suite every backend must pass, plus what
only the embedded backend promises (its collections are tables of the store file, its locks
exclude other processes on the same store)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from codexproxy.scheduler import Jobs
from codexproxy.state import LocalState, open_state
from codexproxy.store import EXPIRES_FIELD, AccountRepo, Store
from codexproxy.models import Account
from tests.redis_server import redis_server, redis_url  # noqa: F401 (fixtures of the redis param)

SHORT = 0.3  # a TTL that runs out within a test
AFTER = 0.5  # long enough for SHORT to have run out on a loaded machine


@pytest.fixture(params=["local", "redis"])
def state_backend(request, tmp_path: Path):
    """A fresh, empty State of each backend."""
    if request.param == "local":
        state = LocalState(Store(tmp_path / "store.json"))
    else:  # a real redis-server (tests/redis_server.py), emptied for this test
        from codexproxy.state_redis import RedisState

        state = RedisState.from_url(request.getfixturevalue("redis_url"))
    yield state
    state.close()


# --- values -------------------------------------------------------------------------------------
def test_get_set_delete(state_backend):
    s = state_backend
    assert s.get("t:a") is None and s.get("t:a", 7) == 7
    s.set("t:a", {"n": [1, 2]})
    assert s.get("t:a") == {"n": [1, 2]}
    s.set("t:a", "replaced")
    assert s.get("t:a") == "replaced"
    s.delete("t:a")
    s.delete("t:never")
    assert s.get("t:a", "gone") == "gone"


def test_values_are_copies(state_backend):
    s = state_backend
    value = {"list": [1]}
    s.set("t:copy", value)
    value["list"].append(2)
    got = s.get("t:copy")
    got["list"].append(3)
    assert s.get("t:copy") == {"list": [1]}


def test_value_ttl_expires(state_backend):
    s = state_backend
    s.set("t:short", 1, ttl=SHORT)
    s.set("t:long", 2)
    assert s.get("t:short") == 1
    time.sleep(AFTER)
    assert s.get("t:short") is None and s.get("t:long") == 2
    assert s.keys("t:") == ["t:long"]


def test_add_only_when_absent(state_backend):
    s = state_backend
    assert s.add("t:once", "first", ttl=SHORT) is True
    assert s.add("t:once", "second") is False
    assert s.get("t:once") == "first"
    time.sleep(AFTER)
    assert s.add("t:once", "third") is True
    assert s.get("t:once") == "third"


def test_add_under_threads_has_one_winner(state_backend):
    s = state_backend
    wins: list[bool] = []
    threads = [threading.Thread(target=lambda: wins.append(s.add("t:claim", 1))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_pop_is_get_and_delete_once(state_backend):
    s = state_backend
    s.set("t:link", {"who": "x"}, ttl=60)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(s.pop("t:link"))) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count({"who": "x"}) == 1 and results.count(None) == 15
    assert s.pop("t:link", "none") == "none"


def test_keys_by_prefix(state_backend):
    s = state_backend
    s.set("a:1", 1)
    s.set("a:2", 2, ttl=60)
    s.incr("a:3")
    s.set("b:1", 1)
    assert sorted(s.keys("a:")) == ["a:1", "a:2", "a:3"]
    assert s.keys("c:") == []


# --- counters -----------------------------------------------------------------------------------
def test_incr_counts_from_zero(state_backend):
    s = state_backend
    assert s.incr("t:n") == 1
    assert s.incr("t:n", 2.5) == 3.5
    assert s.get("t:n") == 3.5
    assert s.incr("t:other", -1) == -1


def test_incr_ttl_set_at_creation(state_backend):
    s = state_backend
    s.incr("t:n", ttl=SHORT)
    s.incr("t:n", ttl=60)  # an existing counter keeps the expiry it was created with
    time.sleep(AFTER)
    assert s.get("t:n") is None
    assert s.incr("t:n") == 1


def test_incr_is_atomic_under_threads(state_backend):
    s = state_backend

    def bump() -> None:
        for _ in range(200):
            s.incr("t:race")

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert s.get("t:race") == 1600


# --- windows ------------------------------------------------------------------------------------
def test_window_sums_only_the_period(state_backend):
    s = state_backend
    assert s.window_sum("t:w", 60) == 0
    assert s.window_add("t:w", 2, SHORT) == 2
    assert s.window_add("t:w", 3, SHORT) == 5
    assert s.window_sum("t:w", SHORT) == 5
    time.sleep(AFTER)
    assert s.window_sum("t:w", SHORT) == 0
    assert s.window_add("t:w", 4, SHORT) == 4
    assert s.window_sum("t:other", SHORT) == 0


def test_window_longer_period_sees_older_amounts(state_backend):
    s = state_backend
    s.window_add("t:w", 1, 60)
    time.sleep(AFTER)
    s.window_add("t:w", 10, 60)
    assert s.window_sum("t:w", SHORT) == 10
    assert s.window_sum("t:w", 60) == 11


# --- leases -------------------------------------------------------------------------------------
def test_lease_release_counts(state_backend):
    s = state_backend
    assert s.leases("t:acct") == 0
    a = s.lease("t:acct", 60)
    b = s.lease("t:acct", 60)
    assert a != b and s.leases("t:acct") == 2
    s.release("t:acct", a)
    s.release("t:acct", a)  # twice is harmless
    assert s.leases("t:acct") == 1
    s.release("t:acct", b)
    assert s.leases("t:acct") == 0
    s.release("t:none", "no-such-token")


def test_lease_expires_when_its_holder_never_releases(state_backend):
    s = state_backend
    s.lease("t:acct", SHORT)  # a holder that died
    kept = s.lease("t:acct", 60)
    assert s.leases("t:acct") == 2
    time.sleep(AFTER)
    assert s.leases("t:acct") == 1
    s.release("t:acct", kept)
    assert s.leases("t:acct") == 0


def test_a_lease_with_a_limit_is_taken_only_under_it_even_under_threads(state_backend):
    s = state_backend
    s.lease("t:acct", 60)  # held already (another process's request)
    tokens: list[str | None] = []
    threads = [threading.Thread(target=lambda: tokens.append(s.lease("t:acct", 60, limit=4))) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = [t for t in tokens if t is not None]
    assert len(taken) == 3 and s.leases("t:acct") == 4  # the cap counts every holder, atomically
    assert s.lease("t:acct", 60, limit=4) is None
    s.release("t:acct", taken[0])
    again = s.lease("t:acct", 60, limit=4)
    assert again is not None and s.leases("t:acct") == 4
    s.lease("t:short", SHORT, limit=1)
    assert s.lease("t:short", 60, limit=1) is None
    time.sleep(AFTER)
    assert s.lease("t:short", 60, limit=1) is not None  # an expired hold does not count


def test_later_writes_are_the_same_writes(state_backend):
    """`state.later`: set, delete, incr, lease and release without waiting; after `flush` (the
    embedded state needs none) they read back as the synchronous calls would."""
    s = state_backend
    token = s.later.lease("t:acct", 60)
    s.later.lease("t:acct", 60)
    s.later.set("t:v", {"a": 1}, ttl=60)
    s.later.set("t:gone", 1)
    s.later.delete("t:gone")
    s.later.incr("t:n", 3, ttl=60)
    s.later.incr("t:n", 0.5)
    assert s.later.flush(5)
    assert s.leases("t:acct") == 2 and s.get("t:v") == {"a": 1} and s.get("t:gone") is None and s.get("t:n") == 3.5
    s.later.release("t:acct", token)
    s.later.set("t:short", 1, ttl=SHORT)
    assert s.later.flush(5)
    assert s.leases("t:acct") == 1
    time.sleep(AFTER)
    assert s.get("t:short") is None


# --- locks --------------------------------------------------------------------------------------
def test_try_lock_excludes_until_unlock(state_backend):
    s = state_backend
    token = s.try_lock("t:job", 60)
    assert token
    assert s.try_lock("t:job", 60) is None
    s.unlock("t:job", "not-the-token")
    assert s.try_lock("t:job", 60) is None
    s.unlock("t:job", token)
    again = s.try_lock("t:job", 60)
    assert again
    s.unlock("t:job", again)


def test_lock_ttl_expires_and_old_holder_cannot_unlock_the_new_one(state_backend):
    s = state_backend
    old = s.try_lock("t:job", SHORT)
    assert old
    time.sleep(AFTER)
    new = s.try_lock("t:job", 60)
    assert new and new != old
    s.unlock("t:job", old)  # the overrun holder comes back: it must not free the new holder's lock
    assert s.try_lock("t:job", 60) is None
    s.unlock("t:job", new)


def test_lock_context_waits_then_gives_up(state_backend):
    s = state_backend
    token = s.try_lock("t:refresh", 60)
    started = time.monotonic()
    with s.lock("t:refresh", ttl=60, wait=0.3) as held:
        assert held is False
    assert 0.25 <= time.monotonic() - started < 5
    s.unlock("t:refresh", token)
    with s.lock("t:refresh", ttl=60, wait=1) as held:
        assert held is True
        assert s.try_lock("t:refresh", 60) is None
    assert s.try_lock("t:refresh", 60) is not None


def test_lock_is_single_flight_under_threads(state_backend):
    s = state_backend
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        with s.lock("t:single", ttl=30, wait=30) as held:
            assert held
            with guard:
                inside += 1
                most = max(most, inside)
            time.sleep(0.01)
            with guard:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1


# --- collections --------------------------------------------------------------------------------
def test_collection_crud(state_backend):
    c = state_backend.collection("t_docs")
    assert c.all() == [] and c.get("x") is None
    stored = c.put({"id": "x", "kind": "a", "n": 1})
    assert stored == {"id": "x", "kind": "a", "n": 1}
    generated = c.put({"kind": "b", "n": 2})
    assert isinstance(generated["id"], str) and generated["id"]
    c.put({"id": "z", "kind": "a", "n": 3})
    assert c.get("x") == {"id": "x", "kind": "a", "n": 1}
    assert sorted(d["id"] for d in c.find(kind="a")) == ["x", "z"]
    assert c.find(kind="a", n=3) == [{"id": "z", "kind": "a", "n": 3}]
    assert len(c.all()) == 3
    c.put({"id": "x", "kind": "c"})  # replace, not merge
    assert c.get("x") == {"id": "x", "kind": "c"}
    assert c.remove("x") is True and c.remove("x") is False
    assert c.remove_where(kind="a") == 1
    assert [d["id"] for d in c.all()] == [generated["id"]]
    assert state_backend.collection("t_other").all() == []


def test_collection_update(state_backend):
    c = state_backend.collection("t_docs")
    assert c.update("missing", lambda d: d.update(n=1)) is None
    c.put({"id": "x", "n": 1, "drop": True})

    def change(doc: dict) -> None:
        doc["n"] += 1
        del doc["drop"]

    assert c.update("x", change) == {"id": "x", "n": 2}
    assert c.update("x", lambda d: {"n": 10}) == {"id": "x", "n": 10}  # a returned dict replaces it; the id stays
    assert c.get("x") == {"id": "x", "n": 10}


def test_collection_update_is_atomic_under_threads(state_backend):
    c = state_backend.collection("t_docs")
    c.put({"id": "x", "n": 0})

    def bump() -> None:
        for _ in range(10):
            c.update("x", lambda d: d.update(n=d["n"] + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.get("x")["n"] == 40


def test_collection_ttl(state_backend):
    c = state_backend.collection("t_docs")
    c.put({"id": "short", "kind": "a"}, ttl=SHORT)
    c.put({"id": "long", "kind": "a"}, ttl=60)
    c.put({"id": "forever", "kind": "a"})
    assert sorted(d["id"] for d in c.find(kind="a")) == ["forever", "long", "short"]
    c.update("short", lambda d: d.update(seen=True))  # an update keeps the TTL
    time.sleep(AFTER)
    assert c.get("short") is None and c.update("short", lambda d: None) is None
    assert sorted(d["id"] for d in c.all()) == ["forever", "long"]
    assert c.remove_where(kind="a") == 2


# --- what the core builds on it ------------------------------------------------------------------
def test_a_job_runs_once_per_pool(state_backend):
    """Two proxies on one state: a job running on one is skipped on the other, and a scheduled
    turn one of them took is not run again by the other in the same interval."""
    first, second = Jobs(SimpleNamespace(state=state_backend)), Jobs(SimpleNamespace(state=state_backend))
    started, finish = threading.Event(), threading.Event()

    def poll(app) -> str:
        started.set()
        finish.wait(10)
        return "polled"

    for jobs in (first, second):
        jobs.every(60, "poll", poll)
    running = threading.Thread(target=first.run, args=("poll",))
    running.start()
    assert started.wait(10)
    assert second.run("poll") is None and "poll" not in second.last_run
    finish.set()
    running.join(10)
    assert first.last_run["poll"]["ok"] is True
    assert second.run("poll") == "polled"  # asked for by hand: runs whenever nobody else is running it
    assert first.run_due("poll") == "polled"
    assert second.run_due("poll") is None and first.run_due("poll") is None


# --- the embedded backend only ------------------------------------------------------------------
def test_local_collections_are_files_beside_the_store_and_expired_docs_are_cleaned(tmp_path: Path):
    store = Store(tmp_path / "store.json")
    state = LocalState(store)
    docs = state.collection("t_docs")
    docs.put({"id": "gone"}, ttl=SHORT)
    docs.put({"id": "kept"})
    # Its own file: writing it never rewrites the store (accounts, keys), nor the other way round.
    side = Store(tmp_path / "store.t_docs.json")
    assert {d["id"] for d in side.table("t_docs").all()} == {"gone", "kept"}
    assert "t_docs" not in (store.storage.read() or {})
    assert any(EXPIRES_FIELD in d for d in side.table("t_docs").all())
    time.sleep(AFTER)
    docs.put({"id": "other"})
    assert {d["id"] for d in Store(tmp_path / "store.t_docs.json").table("t_docs").all()} == {"kept", "other"}
    # a second process on the same file sees the documents, and lists the collection
    again = LocalState(Store(tmp_path / "store.json"))
    assert {d["id"] for d in again.collection("t_docs").all()} == {"kept", "other"}
    assert again.collection_names() == ["t_docs"]


# --- blobs -------------------------------------------------------------------------------------
def test_blobs_get_set_delete_ttl_and_entries_soonest_first(state_backend):
    blobs = state_backend.blobs("t_blobs")
    assert blobs.get("a") is None
    blobs.set("a", "é" * 1000, ttl=60)  # sizes in bytes: 2,000
    blobs.set("short", "x", ttl=SHORT)
    blobs.set("b", "bb", ttl=30)
    assert blobs.get("a") == "é" * 1000 and blobs.get("b") == "bb"
    assert [(k, size) for k, size, _ in blobs.entries()] == [("short", 1), ("b", 2), ("a", 2000)]
    assert all(abs(exp - time.time() - ttl) < 5 for (_, _, exp), ttl in zip(blobs.entries()[1:], (30, 60)))
    time.sleep(AFTER)
    assert blobs.get("short") is None and [k for k, _, _ in blobs.entries()] == ["b", "a"]
    blobs.set("b", "replaced", ttl=90)
    blobs.delete("a")
    blobs.delete("never")
    assert blobs.get("a") is None and [(k, size) for k, size, _ in blobs.entries()] == [("b", 8)]
    assert state_backend.blobs("t_other").get("b") is None  # each name its own set
    assert state_backend.get("b") is None and state_backend.keys("") == []  # not the state's values


def test_local_blobs_are_an_sqlite_file_beside_the_store_that_outlives_the_process(tmp_path: Path):
    state = LocalState(Store(tmp_path / "store.json"))
    state.blobs("t_blobs").set("kept", "a long history", ttl=60)
    state.blobs("t_blobs").set("gone", "x", ttl=SHORT)
    path = tmp_path / "store.t_blobs.sqlite3"
    assert path.stat().st_mode & 0o777 == 0o600
    # killed, not closed: what was written is there for the next process
    child = subprocess.run([sys.executable, "-c", "import os, sys; sys.path[:0] = [os.getcwd()]\n"
                            "from codexproxy.state import LocalState\nfrom codexproxy.store import Store\n"
                            f"LocalState(Store({str(tmp_path / 'store.json')!r})).blobs('t_blobs').set('child', 'y', ttl=60)\n"
                            "os._exit(0)"], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    state.close()
    time.sleep(AFTER)
    again = LocalState(Store(tmp_path / "store.json"))
    assert again.blobs("t_blobs").get("kept") == "a long history" and again.blobs("t_blobs").get("child") == "y"
    assert [k for k, _, _ in again.blobs("t_blobs").entries()] == ["kept", "child"]
    with pytest.raises(ValueError, match="blobs name"):
        again.blobs("../escape")
    again.close()
    assert [p.name for p in tmp_path.iterdir() if "t_blobs" in p.name] == ["store.t_blobs.sqlite3"]  # -wal folded in at close


def test_local_collection_names_must_be_safe_file_names(tmp_path: Path):
    with pytest.raises(ValueError, match="collection name"):
        LocalState(Store(tmp_path / "store.json")).collection("../escape")


def test_local_repository_over_a_collection_keeps_its_api(tmp_path: Path):
    store = Store(tmp_path / "store.json")
    state = LocalState(store)
    repo = AccountRepo(state.collection("accounts"))
    account = repo.add(Account(email="a@example.com", access_token="t"))
    assert AccountRepo(store).get(account.id).email == "a@example.com"  # same table as before
    updated = repo.update(account.id, lambda a: setattr(a, "plan", "pro"), email="b@example.com")
    assert updated.plan == "pro" and repo.get(account.id).email == "b@example.com"
    assert repo.find("b@example.com").id == account.id
    assert repo.remove(account.id) and repo.all() == []


def test_local_reads_do_not_wait_behind_a_write_in_progress(tmp_path: Path):
    """Hooks on the event loop read accounts and keys: while a writer holds the store across its
    fsync they get the last snapshot at once, and the new content once the write is over."""
    store = Store(tmp_path / "store.json")
    repo = AccountRepo(store)
    repo.add(Account(email="first@example.com", access_token="t"))
    assert len(repo.all()) == 1
    AccountRepo(Store(tmp_path / "store.json")).add(Account(email="second@example.com", access_token="t"))  # the CLI
    holding, finish = threading.Event(), threading.Event()

    def writer_in_fsync() -> None:
        with store.storage._lock:
            holding.set()
            finish.wait(10)

    writer = threading.Thread(target=writer_in_fsync)
    writer.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        assert [a.email for a in repo.all()] == ["first@example.com"]
        assert time.monotonic() - started < 0.5
    finally:
        finish.set()
        writer.join(10)
    assert sorted(a.email for a in repo.all()) == ["first@example.com", "second@example.com"]


def test_local_lock_excludes_another_process(tmp_path: Path):
    """The CLI (`jobs run`) and the proxy share the store: a lock one holds, the other cannot take."""
    store_path = tmp_path / "store.json"
    state = LocalState(Store(store_path))
    script = textwrap.dedent("""
        import sys
        from codexproxy.state import LocalState
        from codexproxy.store import Store
        state = LocalState(Store(sys.argv[1]))
        token = state.try_lock("job:x", 60)
        print("got" if token else "busy", flush=True)
        if token:
            state.unlock("job:x", token)
    """)

    def other_process() -> str:
        return subprocess.run([sys.executable, "-c", script, str(store_path)], capture_output=True, text=True,
                              timeout=60, check=True).stdout.strip()

    token = state.try_lock("job:x", 60)
    assert token and other_process() == "busy"
    state.unlock("job:x", token)
    assert other_process() == "got"
    token = state.try_lock("job:x", 60)
    state.close()  # closing the app gives its locks back
    assert other_process() == "got"


def test_open_state_picks_the_backend(tmp_path: Path):
    store = Store(tmp_path / "store.json")

    class Config:
        pass

    assert isinstance(open_state(Config(), store), LocalState)
