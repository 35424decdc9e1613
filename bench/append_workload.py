"""The append benchmark's workload and load generator: a seeded corpus of
Claude-Code-shaped transcript entries, the closed-loop / paced session
drivers, the three ways of appending (``SessiondSessionStore``, raw
``AsyncClient``, direct asyncpg) and the spawned client processes.

Importable on its own, so that spawned client processes unpickle these
classes and functions from a real module rather than from ``__main__``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import time
import traceback
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from typing import Any

import asyncpg

from .common import sleep_until

PROJECT_KEY = "-home-user-project"
CWD = "/home/user/project"
TENANT = "bench"


# --- the workload ----------------------------------------------------------------

_VOCABULARY = (
    "the of and to in is that for it with as on be this are by file function return "
    "value error test import from class def self async await const let var if else "
    "for while try except raise None True False print config server client session "
    "store append load transcript entry batch json key path string list dict int "
    "PostgreSQL index query insert update select where order limit commit rollback "
    "tool_use tool_result assistant user message content text input output result "
    "src/app.py tests/test_app.py README.md package.json Cargo.toml main.rs lib.rs "
    "npm pytest cargo build run check lint format git diff status commit push branch "
    "0 1 2 3 42 100 404 500 1024 2048 {} [] () => -> :: == != <= >= && || += ; : , ."
)


def _dumps(entry: dict[str, Any]) -> str:
    # Exactly what SessiondSessionStore.append sends, so stored rows can be
    # compared byte for byte with the corpus.
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Corpus:
    """A seeded conversation cut into batches. ``entries[i]`` are the SDK
    dicts of batch ``i``, ``texts[i]`` their JSON, ``uuids[i]`` their uuids."""

    entries: list[list[dict[str, Any]]]
    texts: list[list[str]]
    uuids: list[list[str]]

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def mean_batch(self) -> float:
        return sum(len(b) for b in self.entries) / len(self.entries)

    @property
    def mean_entry_bytes(self) -> float:
        n = sum(len(b) for b in self.texts)
        return sum(len(t.encode()) for b in self.texts for t in b) / n


def build_corpus(
    seed: int,
    n_batches: int,
    batch_entries: tuple[int, int] = (10, 50),
    entry_bytes: tuple[int, int] = (1024, 4096),
) -> Corpus:
    """``n_batches`` batches of ``batch_entries`` entries (uniform) shaped
    like Claude Code transcript lines (user prompt, assistant text +
    tool_use, user tool_result, chained by ``parentUuid``), each
    ``entry_bytes`` of JSON (uniform; the envelope alone is ~450–650 B),
    deterministic for a seed."""
    rng = random.Random(seed)

    def uid() -> str:
        return str(uuidlib.UUID(int=rng.getrandbits(128), version=4))

    blob = " ".join(rng.choices(_VOCABULARY.split(), k=400_000))
    session_id = uid()
    when = datetime(2025, 11, 3, 9, 30, tzinfo=UTC)
    parent: str | None = None
    tool_id = ""
    entries: list[list[dict[str, Any]]] = []
    texts: list[list[str]] = []
    uuids: list[list[str]] = []
    k = 0
    for _ in range(n_batches):
        batch: list[dict[str, Any]] = []
        for _ in range(rng.randint(*batch_entries)):
            when += timedelta(milliseconds=rng.randint(50, 4000))
            entry_uuid = uid()
            message: dict[str, Any]
            if k % 24 == 0:
                kind, message = "user", {"role": "user", "content": [{"type": "text", "text": ""}]}
            elif k % 2 == 1:
                tool_id = "toolu_" + uid().replace("-", "")[:24]
                kind = "assistant"
                message = {
                    "id": "msg_" + uid().replace("-", "")[:24],
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5-20250929",
                    "content": [
                        {"type": "text", "text": ""},
                        {
                            "type": "tool_use",
                            "id": tool_id,
                            "name": rng.choice(["Read", "Edit", "Bash", "Grep"]),
                            "input": {"file_path": f"{CWD}/src/app.py"},
                        },
                    ],
                    "stop_reason": "tool_use",
                    "usage": {
                        "input_tokens": rng.randint(100, 9000),
                        "output_tokens": rng.randint(10, 900),
                    },
                }
            else:
                kind = "user"
                message = {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": ""}],
                }
            entry: dict[str, Any] = {
                "parentUuid": parent,
                "isSidechain": False,
                "userType": "external",
                "cwd": CWD,
                "sessionId": session_id,
                "version": "2.1.30",
                "gitBranch": "main",
                "type": kind,
                "message": message,
                "uuid": entry_uuid,
                "timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            }
            # Fill the first content block up to a size uniform in 1–4 KB
            # (the blob is ASCII without characters JSON escapes).
            target = rng.randint(*entry_bytes)
            block = message["content"][0]
            field_name = "content" if block["type"] == "tool_result" else "text"
            fill = max(0, target - len(_dumps(entry).encode()))
            start = rng.randrange(0, len(blob) - fill)
            block[field_name] = blob[start : start + fill]
            batch.append(entry)
            parent = entry_uuid
            k += 1
        entries.append(batch)
        texts.append([_dumps(e) for e in batch])
        uuids.append([e["uuid"] for e in batch])
    return Corpus(entries=entries, texts=texts, uuids=uuids)


# --- driving the load ---------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Monotonic-clock times (shared by all processes of the machine):
    sessions run from ``start`` to ``end``; only completions from
    ``measure_from`` on are measured. ``interval`` > 0 paces each session
    to one batch per interval; 0 means back to back."""

    start: float
    measure_from: float
    end: float
    interval: float

    @classmethod
    def after(cls, delay: float, warmup: float, seconds: float, interval: float) -> Plan:
        start = time.monotonic() + delay
        return cls(start, start + warmup, start + warmup + seconds, interval)


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, measured batches
    window_entries: int = 0
    window_batches: int = 0
    acked_entries: int = 0  # every acknowledged entry, warm-up and tail included
    batches_done: dict[int, int] = field(default_factory=dict)  # slot → batches

    def merge(self, other: Stats) -> None:
        self.latencies += other.latencies
        self.window_entries += other.window_entries
        self.window_batches += other.window_batches
        self.acked_entries += other.acked_entries
        self.batches_done.update(other.batches_done)


# append(slot, lap, batch index) → entries the server confirmed
AppendFn = Callable[[int, int, int], Awaitable[int]]


def session_id(tag: str, slot: int, lap: int) -> str:
    return f"{tag}-{slot:03d}-{lap}"


def start_index(slot: int, sessions: int, n_batches: int) -> int:
    return slot * n_batches // sessions


async def drive(
    slots: Sequence[int], sessions: int, n_batches: int, append: AppendFn, plan: Plan
) -> Stats:
    """Run one coroutine per slot. Slot ``s`` walks the corpus from its own
    offset; after a full lap it continues as a new session (uuids are unique
    per transcript, so nothing is ever a duplicate)."""
    stats = Stats()

    async def one(slot: int) -> None:
        first = start_index(slot, sessions, n_batches)
        done = 0
        next_at = plan.start + (slot / sessions) * plan.interval
        await sleep_until(plan.start)
        while True:
            if plan.interval:
                await sleep_until(next_at)
                next_at += plan.interval
            t0 = time.monotonic()
            if t0 >= plan.end:
                break
            count = await append(slot, done // n_batches, (first + done) % n_batches)
            t1 = time.monotonic()
            done += 1
            stats.acked_entries += count
            if plan.measure_from <= t1 <= plan.end:
                stats.latencies.append(t1 - t0)
                stats.window_entries += count
                stats.window_batches += 1
        stats.batches_done[slot] = done

    await asyncio.gather(*(one(s) for s in slots))
    return stats


def store_append(
    target: str, token: str, tag: str, corpus: Corpus, slots: Sequence[int]
) -> tuple[AppendFn, Callable[[], Awaitable[None]]]:
    """Appends through ``SessiondSessionStore`` (one store per session, as
    every sandbox has its own), and a closer."""
    from sessiond.client import SessiondSessionStore

    stores = {s: SessiondSessionStore(target, token=token, timeout=60.0) for s in slots}

    async def append(slot: int, lap: int, index: int) -> int:
        batch = corpus.entries[index]
        key = {"project_key": PROJECT_KEY, "session_id": session_id(tag, slot, lap)}
        await stores[slot].append(key, batch)  # type: ignore[arg-type]
        return len(batch)

    async def close() -> None:
        for store in stores.values():
            await store.close()

    return append, close


def raw_append(
    target: str, token: str, tag: str, corpus: Corpus, slots: Sequence[int]
) -> tuple[AppendFn, Callable[[], Awaitable[None]]]:
    """Appends through ``AsyncClient.append_entries`` with pre-serialized
    JSON (skips the store's per-entry ``json.dumps``)."""
    from sessiond.api.v1 import transcripts_pb2
    from sessiond.client import AsyncClient

    client = AsyncClient(target, token=token, timeout=60.0)

    async def append(slot: int, lap: int, index: int) -> int:
        key = transcripts_pb2.SessionKey(
            project_key=PROJECT_KEY, session_id=session_id(tag, slot, lap)
        )
        resp = await client.append_entries(key, corpus.texts[index])
        if resp.duplicates:
            raise AssertionError(f"{resp.duplicates} duplicates reported")
        return int(resp.appended)

    return append, client.close


_NOW_MS = "floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint"

# The minimum the schema needs: the key-row upsert (lock, seq allocation,
# mtime) and the entries from unnest, one statement, one round trip.
_DIRECT = f"""
WITH k AS (
    INSERT INTO transcript_keys AS t
        (tenant_id, project_key, session_id, subpath, next_seq, mtime_ms)
    VALUES ($1, $2, $3, '', $4, {_NOW_MS})
    ON CONFLICT (tenant_id, project_key, session_id, subpath) DO UPDATE
        SET next_seq = t.next_seq + EXCLUDED.next_seq,
            mtime_ms = GREATEST(t.mtime_ms + 1, EXCLUDED.mtime_ms)
    RETURNING t.key_id, t.next_seq - $4 AS base
)
INSERT INTO transcript_entries (tenant_id, key_id, seq, uuid, entry)
SELECT $1, k.key_id, k.base + u.ord, u.uuid, u.entry
FROM k, unnest($5::text[], $6::text[]) WITH ORDINALITY AS u(uuid, entry, ord)
ON CONFLICT (key_id, uuid) WHERE uuid IS NOT NULL DO NOTHING
"""

_DIRECT_RETURNING = _DIRECT + " RETURNING seq"

_SUMMARY_READ = (
    "SELECT mtime_ms, data FROM transcript_summaries"
    " WHERE tenant_id = $1 AND project_key = $2 AND session_id = $3"
)
_SUMMARY_WRITE = """
INSERT INTO transcript_summaries (tenant_id, project_key, session_id, mtime_ms, data)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (tenant_id, project_key, session_id) DO UPDATE
    SET mtime_ms = EXCLUDED.mtime_ms, data = EXCLUDED.data
"""
_SUMMARY = json.dumps(
    {"is_sidechain": False, "created_at": 1762162200000, "cwd": CWD, "git_branch": "main"}
    | {"first_prompt": "x" * 200, "first_prompt_locked": True}
)


def direct_append(
    pool: asyncpg.Pool, tag: str, corpus: Corpus, *, sessiond_shape: bool
) -> AppendFn:
    async def one_statement(slot: int, lap: int, index: int) -> int:
        sid = session_id(tag, slot, lap)
        texts = corpus.texts[index]
        async with pool.acquire() as conn:
            status: str = await conn.execute(
                _DIRECT, TENANT, PROJECT_KEY, sid, len(texts), corpus.uuids[index], texts
            )
        inserted = int(status.rsplit(" ", 1)[1])
        if inserted != len(texts):
            raise AssertionError(f"{sid}: inserted {inserted} of {len(texts)}")
        return inserted

    async def transaction(slot: int, lap: int, index: int) -> int:
        sid = session_id(tag, slot, lap)
        texts = corpus.texts[index]
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                _DIRECT_RETURNING, TENANT, PROJECT_KEY, sid, len(texts), corpus.uuids[index], texts
            )
            await conn.fetchrow(_SUMMARY_READ, TENANT, PROJECT_KEY, sid)
            await conn.execute(_SUMMARY_WRITE, TENANT, PROJECT_KEY, sid, 0, _SUMMARY)
        return len(rows)

    return transaction if sessiond_shape else one_statement


# --- client processes ---------------------------------------------------------


@dataclass(frozen=True)
class ClientSpec:
    target: str
    token: str
    tag: str
    slots: tuple[int, ...]
    sessions: int
    seed: int
    corpus_batches: int
    batch_entries: tuple[int, int]
    entry_bytes: tuple[int, int]
    client: str  # "store" | "raw"


def _client_main(conn: Connection, spec: ClientSpec) -> None:
    """Entry point of a spawned client process: build the corpus, report
    ready, receive the plan, drive, send back the stats."""
    try:
        asyncio.run(_client_async(conn, spec))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


async def _client_async(conn: Connection, spec: ClientSpec) -> None:
    corpus = build_corpus(spec.seed, spec.corpus_batches, spec.batch_entries, spec.entry_bytes)
    factory = store_append if spec.client == "store" else raw_append
    append, close = factory(spec.target, spec.token, spec.tag, corpus, spec.slots)
    conn.send(("ready", os.getpid()))
    plan: Plan = await asyncio.to_thread(conn.recv)
    try:
        stats = await drive(spec.slots, spec.sessions, len(corpus), append, plan)
    finally:
        await close()
    conn.send(("stats", stats))


async def drive_in_processes(
    specs: Sequence[ClientSpec],
    make_plan: Callable[[], Plan],
    on_plan: Callable[[Plan, list[int]], Awaitable[dict[str, Any]]],
) -> tuple[Stats, dict[str, Any]]:
    """Run each spec in a spawned process (spawn, not fork: grpc must not be
    forked), start them together on one plan, merge their stats.
    ``on_plan(plan, pids)`` runs in this process alongside (the probes)."""
    ctx = mp.get_context("spawn")
    links: list[tuple[Connection, Any]] = []
    for spec in specs:
        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=_client_main, args=(child_end, spec), daemon=True)
        proc.start()
        child_end.close()
        links.append((parent_end, proc))
    try:
        for conn, _ in links:
            kind, value = await asyncio.to_thread(conn.recv)
            if kind != "ready":
                raise RuntimeError(f"client process failed:\n{value}")
        plan = make_plan()
        for conn, _ in links:
            conn.send(plan)

        async def collect() -> Stats:
            stats = Stats()
            for conn, _ in links:
                kind, value = await asyncio.to_thread(conn.recv)
                if kind != "stats":
                    raise RuntimeError(f"client process failed:\n{value}")
                stats.merge(value)
            return stats

        stats, observed = await asyncio.gather(collect(), on_plan(plan, [p.pid for _, p in links]))
        for _, proc in links:
            await asyncio.to_thread(proc.join, 10)
        return stats, observed
    finally:
        for conn, proc in links:
            conn.close()
            if proc.is_alive():
                proc.kill()  # by PID: our own child
                proc.join(5)
