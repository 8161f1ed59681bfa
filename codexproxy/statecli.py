"""`codexproxy state migrate --to TARGET`: copy the durable state to another backend, then check it.

The source is the state the config names (`state.backend`: the TinyDB store, or Redis); the
target is a Redis URL (redis://, rediss://, unix://) or the path of a TinyDB store file, so a
pool moves to Redis and back. What moves is every collection: accounts, keys, usage snapshots
and each plugin's documents, with what is left of their TTLs. Values, counters, windows, leases
and locks do not: they are short-lived by nature (cooldowns are on the accounts themselves), and
the local backend keeps them in memory only. The store's own `state` table (the model list cache)
is not a collection and stays where it is. Every copied document is read back from the target
and compared; any difference is reported and the command exits 1.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .cli import CLIError, CommandRegistry, emit, table
from .state import LocalState
from .state_redis import RedisState, StateUnavailable
from .store import EXPIRES_FIELD, Store

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
TTL_SLACK_S = 5.0  # a copied TTL may be this much shorter than the source's (time passes while copying)


def collection_names(state: Any) -> tuple[list[str], list[str]]:
    """(the collections in `state`, the store file's tables skipped because they are not
    collections: what older versions kept there)."""
    if isinstance(state, RedisState):
        return state.collection_names(), []
    names = state.collection_names()
    skipped = [name for name, docs in (state.store.storage.read() or {}).items() if docs and name not in names]
    return names, sorted(skipped)


def documents(state: Any, name: str) -> list[tuple[dict, float | None]]:
    """Every live document of a collection with the seconds it has left (None: no TTL)."""
    if isinstance(state, RedisState):
        return state.collection(name).all_with_ttl()
    out = []
    at = time.time()
    for doc in state.collection(name).store.storage.table_docs(name).values():
        doc = dict(doc)
        expires = doc.pop(EXPIRES_FIELD, None)
        if expires is not None and expires <= at:
            continue
        out.append((doc, None if expires is None else expires - at))
    return out


def open_target(target: str) -> Any:
    if target.startswith(REDIS_SCHEMES):
        return RedisState.from_url(target)
    if "://" in target:
        raise CLIError(f"--to: expected a Redis URL (redis://, rediss://, unix://) or a store file path (got {target.split('://')[0]}://...)")
    path = Path(target).expanduser()
    if path.is_dir():
        raise CLIError(f"--to: {path} is a directory; give the store file (e.g. {path / 'codexproxy.json'})")
    return LocalState(Store(path))


def same_place(source: Any, target: Any) -> bool:
    if isinstance(source, RedisState) and isinstance(target, RedisState):
        return source.describe() == target.describe()
    if isinstance(source, LocalState) and isinstance(target, LocalState):
        return source.store.path.resolve() == target.store.path.resolve()
    return False


def differences(name: str, copied: list[tuple[dict, float | None]], found: list[tuple[dict, float | None]]) -> list[str]:
    there = {doc["id"]: (doc, ttl) for doc, ttl in found}
    problems = []
    for doc, ttl in copied:
        got = there.get(doc["id"])
        if got is None:
            problems.append(f"{name}/{doc['id']}: missing in the target")
        elif json.dumps(got[0], sort_keys=True) != json.dumps(doc, sort_keys=True):
            problems.append(f"{name}/{doc['id']}: differs in the target")
        elif (ttl is None) != (got[1] is None) or (ttl is not None and not ttl - TTL_SLACK_S <= got[1] <= ttl + TTL_SLACK_S):
            problems.append(f"{name}/{doc['id']}: its TTL differs in the target")
    return problems


def cmd_state_migrate(app, args: argparse.Namespace) -> int:
    source = app.state
    target = open_target(args.to)
    try:
        if same_place(source, target):
            raise CLIError("--to: that is where the state already is (state.backend and its store or URL)")
        names, skipped = collection_names(source)
        if not args.overwrite:
            held = [(n, len(target.collection(n).all())) for n in names]
            held = [(n, count) for n, count in held if count]
            if held:
                said = ", ".join(f"{n} ({count} document{'' if count == 1 else 's'})" for n, count in held)
                raise CLIError(f"--to: the target already holds {said}; --overwrite replaces documents with the same id")
        rows, problems = [], []
        for name in names:
            docs = documents(source, name)
            collection = target.collection(name)
            for doc, ttl in docs:
                collection.put(doc, ttl=ttl)
            found = differences(name, docs, documents(target, name))
            problems += found
            rows.append({"collection": name, "copied": len(docs), "verified": not found})
    except StateUnavailable as exc:
        raise CLIError(str(exc)) from None
    finally:
        target.close()
    data = {"to": _shown(args.to), "collections": rows, "skipped": skipped, "problems": problems}
    emit(args, data, lambda: "\n".join(
        [table([[r["collection"], str(r["copied"]), "yes" if r["verified"] else "NO"] for r in rows],
               ["COLLECTION", "COPIED", "VERIFIED"])]
        + [f"not copied: {n} (the store's own table, not a collection)" for n in skipped]
        + [f"problem: {p}" for p in problems]
        + ([f"copied to {_shown(args.to)} and verified; set state.backend and its URL or storage.path to use it"]
           if not problems else [])))
    return 1 if problems else 0


def _shown(target: str) -> str:
    from .config import redact_url

    return redact_url(target)


def register(cli: CommandRegistry) -> None:
    cli.group("state", "where the shared state lives (state.backend): move it between TinyDB and Redis")
    p = cli.command("state", "migrate", "copy every collection (accounts, keys, snapshots...) to TARGET and verify it")
    p.add_argument("--to", required=True, metavar="TARGET",
                   help="a Redis URL (redis://[:password@]host:6379/0, rediss://...) or a TinyDB store file")
    p.add_argument("--overwrite", action="store_true", help="write into a target that already holds documents")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_state_migrate)
