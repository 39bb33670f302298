"""Operators' read queries on 1,000,000 stored entries in PostgreSQL: latency and plans.

Creates a fresh database on the local PostgreSQL, migrates it (the real Alembic migrations,
so the real indexes), bulk-loads N entries over the 100 days up to now (10,000 a day) with
their events (a prompt, then 4 digit events for entries that got digits) through COPY, runs
VACUUM ANALYZE, then times every query the API and the CLI run, through the real
``ari_app.store.queries`` functions (SQLAlchemy + asyncpg, rows decoded): the median of
``--runs`` runs after one warm-up. Each list query is timed on the first page and on a deep
page (a cursor half-way down the filtered result). Stats are timed cold (the cache of frozen
days emptied first: the query computes and stores every whole day of its range) and then
warm; their ranges start at the present time of day, so the partial days at both edges are
always scanned. It then prints ``EXPLAIN (ANALYZE, BUFFERS)`` of each (warm) statement, as
sent to the server, and drops the database.

Entries started in the last two minutes are in progress, as on a live system; older ones
all have a final status (the server marks the ones a restart left in progress interrupted).

    .venv/bin/python bench/query_latency.py                    # 1,000,000 entries
    .venv/bin/python bench/query_latency.py --entries 100000 --runs 5 --no-plans
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ari_app.store.daily_stats import forget_daily_stats
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.models import entries_table
from ari_app.store.queries import (
    Cursor,
    EntryFilter,
    entry_stats,
    get_entry,
    list_entries,
)
from ari_app.store.repository import Store

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DAYS = 100
# Calls that started this recently are still going on.
IN_PROGRESS_WITHIN = timedelta(minutes=2)
TARGET_MS = 50.0

STATUSES = [
    ("completed", 70.0),
    ("no_input", 8.0),
    ("short", 5.0),
    ("invalid", 3.0),
    ("rejected", 2.0),
    ("unconfirmed", 3.0),
    ("hangup", 7.0),
    ("interrupted", 1.0),
    ("error", 0.5),
]
LABELS: list[tuple[str | None, float]] = [
    ("phone", 40.0),
    ("account", 25.0),
    ("pin", 20.0),
    ("zip", 10.0),
    (None, 5.0),
]
TRANSPORTS = [("ari", 90.0), ("agi", 10.0)]
CONFIRMED = [("yes", 50.0), ("not_asked", 40.0), ("no", 5.0), ("unanswered", 5.0)]
CALLERS = 50_000


def entry_rows(n: int, end: datetime, rng: random.Random) -> Iterator[tuple[Any, ...]]:
    """(entry row, event rows) in started_at order (ids follow), like a real insert stream."""
    span_us = DAYS * 86_400 * 1_000_000
    start = end - timedelta(days=DAYS)
    offsets = sorted(rng.randrange(span_us) for _ in range(n))
    statuses = rng.choices([s for s, _ in STATUSES], [w for _, w in STATUSES], k=n)
    labels = rng.choices([s for s, _ in LABELS], [w for _, w in LABELS], k=n)
    transports = rng.choices([s for s, _ in TRANSPORTS], [w for _, w in TRANSPORTS], k=n)
    confirmed = rng.choices([s for s, _ in CONFIRMED], [w for _, w in CONFIRMED], k=n)
    for i in range(n):
        entry_id = i + 1
        started_at = start + timedelta(microseconds=offsets[i])
        status = "in_progress" if started_at >= end - IN_PROGRESS_WITHIN else statuses[i]
        has_digits = status not in ("no_input", "error")
        first_ms = rng.randint(300, 6000)
        ended_at = None if status == "in_progress" else started_at + timedelta(seconds=8)
        sensitive = labels[i] == "pin"
        digits = "".join(rng.choices("0123456789", k=4)) if has_digits else None
        if sensitive and digits:
            digits = "**" + digits[-2:]
        yield (
            (
                entry_id,
                f"1761955200.{entry_id}",
                f"PJSIP/trunk-{entry_id:08x}",
                f"+1555{rng.randrange(CALLERS):07d}",
                None,
                labels[i],
                '{"num_digits": 4}',
                transports[i],
                None,
                started_at,
                sensitive,
                status,
                digits,
                None,
                "max_digits" if has_digits else None,
                1,
                confirmed[i],
                "bad argument" if status == "error" else None,
                ended_at,
                first_ms if has_digits else None,
            ),
            first_ms if has_digits else None,
        )


ENTRY_COLUMNS = [
    "id",
    "channel_id",
    "channel_name",
    "caller_number",
    "caller_name",
    "label",
    "parameters",
    "transport",
    "asterisk_id",
    "started_at",
    "sensitive",
    "status",
    "user_input",
    "input_hash",
    "terminated_by",
    "attempts",
    "confirmed",
    "error",
    "ended_at",
    "first_digit_ms",
]
EVENT_COLUMNS = ["entry_id", "seq", "kind", "attempt", "at_ms", "digit", "source"]


async def seed(dsn: str, n: int, end: datetime, seed_value: int) -> None:
    rng = random.Random(seed_value)
    conn = await asyncpg.connect(dsn)
    try:
        batch = 100_000
        entries: list[tuple[Any, ...]] = []
        events: list[tuple[Any, ...]] = []
        loaded = 0
        for row, first_ms in entry_rows(n, end, rng):
            entries.append(row)
            entry_id = row[0]
            events.append((entry_id, 0, "prompt", 1, 0, None, None))
            if first_ms is not None:
                digits = row[12] or "****"
                for k in range(4):
                    digit = digits[k] if k < len(digits) else "*"
                    events.append((entry_id, k + 1, "digit", 1, first_ms + 400 * k, digit, "key"))
            if len(entries) >= batch:
                await _copy(conn, entries, events)
                loaded += len(entries)
                entries, events = [], []
                print(f"  seeded {loaded:,} entries", file=sys.stderr, flush=True)
        if entries:
            await _copy(conn, entries, events)
        await conn.execute("SELECT setval('entries_id_seq', (SELECT max(id) FROM entries))")
        print("  VACUUM ANALYZE", file=sys.stderr, flush=True)
        await conn.execute("VACUUM ANALYZE entries")
        await conn.execute("VACUUM ANALYZE entry_events")
    finally:
        await conn.close()


async def _copy(
    conn: asyncpg.Connection, entries: list[tuple[Any, ...]], events: list[tuple[Any, ...]]
) -> None:
    async with conn.transaction():
        await conn.copy_records_to_table("entries", records=entries, columns=ENTRY_COLUMNS)
        await conn.copy_records_to_table("entry_events", records=events, columns=EVENT_COLUMNS)


class StatementLog:
    """The SQL (with its parameters) that the store's engine sends, for EXPLAIN."""

    def __init__(self, store: Store) -> None:
        self.statements: list[tuple[str, Any]] = []
        self.recording = False
        event.listen(store.engine.sync_engine, "before_cursor_execute", self._seen)

    def _seen(self, conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        if self.recording:
            self.statements.append((statement, parameters))


async def time_query(fn: Callable[[], Awaitable[object]], runs: int) -> float:
    await fn()  # warm-up (plan cache, shared buffers)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


async def deep_cursor(store: Store, where: EntryFilter) -> str | None:
    """A cursor half-way down the filtered, ordered result (setup only, not timed)."""
    async with store.engine.connect() as conn:
        total = (
            await conn.execute(
                select(func.count()).select_from(entries_table).where(*where.conditions())
            )
        ).scalar_one()
        if total < 2:
            return None
        row = (
            await conn.execute(
                select(entries_table.c.started_at, entries_table.c.id)
                .where(*where.conditions())
                .order_by(entries_table.c.started_at.desc(), entries_table.c.id.desc())
                .offset(total // 2)
                .limit(1)
            )
        ).one()
    return Cursor(started_at=row.started_at, id=row.id).encode()


async def run(args: argparse.Namespace) -> int:
    admin = make_url(args.admin_url)
    name = f"ari_digits_bench_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin_dsn = admin.render_as_string(hide_password=False)
    bench_url = admin.set(drivername="postgresql+asyncpg", database=name)
    bench_dsn = admin.set(database=name).render_as_string(hide_password=False)
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        url = bench_url.render_as_string(hide_password=False)
        await upgrade_to_head_async(url)
        t0 = time.perf_counter()
        print(f"seeding {args.entries:,} entries into {name}", file=sys.stderr, flush=True)
        end = datetime.now(UTC).replace(microsecond=0)
        await seed(bench_dsn, args.entries, end, args.seed)
        print(f"  seeded in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        async with Store.from_url(url) as store:
            return await measure(store, end, args)
    finally:
        if args.keep:
            print(f"kept database {name}", file=sys.stderr)
        else:
            conn = await asyncpg.connect(admin_dsn)
            try:
                await conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    name,
                )
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            finally:
                await conn.close()


async def measure(store: Store, end: datetime, args: argparse.Namespace) -> int:
    async with store.engine.connect() as conn:
        sample = (
            await conn.execute(
                select(
                    entries_table.c.caller_number,
                    entries_table.c.channel_id,
                    entries_table.c.channel_name,
                ).where(entries_table.c.id == args.entries // 3)
            )
        ).one()
    week = end - timedelta(days=7)
    filters: list[tuple[str, EntryFilter]] = [
        ("no filter", EntryFilter()),
        (
            "from/to: one day, 50 days ago",
            EntryFilter(started_from=end - timedelta(days=50), started_to=end - timedelta(days=49)),
        ),
        ("status=completed", EntryFilter(status="completed")),
        ("status=error (rare)", EntryFilter(status="error")),
        ("label=pin", EntryFilter(label="pin")),
        ("caller_number", EntryFilter(caller_number=sample.caller_number)),
        ("channel=<id>", EntryFilter(channel=sample.channel_id)),
        ("channel=<name>", EntryFilter(channel=sample.channel_name)),
        ("transport=agi", EntryFilter(transport="agi")),
        ("confirmed=no", EntryFilter(confirmed="no")),
        (
            "label+status+week",
            EntryFilter(label="phone", status="hangup", started_from=week, started_to=end),
        ),
    ]
    log = StatementLog(store)
    results: list[tuple[str, float, list[tuple[str, Any]]]] = []

    async def timed(title: str, fn: Callable[[], Awaitable[object]]) -> None:
        ms = await time_query(fn, args.runs)
        log.statements.clear()
        log.recording = True
        await fn()
        log.recording = False
        results.append((title, ms, list(log.statements)))
        flag = "" if ms < TARGET_MS else f"   <-- over {TARGET_MS:.0f} ms"
        print(f"{title:<46} {ms:8.2f} ms{flag}", flush=True)

    print(f"\nmedian of {args.runs} runs, {args.entries:,} entries, limit {args.limit}\n")
    for title, where in filters:
        await timed(
            f"list {title}, first page", lambda w=where: list_entries(store, w, limit=args.limit)
        )
        cursor = await deep_cursor(store, where)
        if cursor is not None:
            await timed(
                f"list {title}, deep page",
                lambda w=where, c=cursor: list_entries(store, w, limit=args.limit, cursor=c),
            )
    await timed("get entry (with events)", lambda: get_entry(store, args.entries // 2))
    cold: list[tuple[str, float]] = []
    for days in (1, 7, 30, None):
        since = None if days is None else end - timedelta(days=days)
        title = "stats all time" if days is None else f"stats {days} day{'s' * (days > 1)}"
        await forget_daily_stats(store)
        t0 = time.perf_counter()
        await entry_stats(store, started_from=since)
        cold.append((title, (time.perf_counter() - t0) * 1000))
        print(f"{title + ', cold (fills the cache)':<46} {cold[-1][1]:8.2f} ms", flush=True)
        await timed(f"{title}, warm", lambda s=since: entry_stats(store, started_from=s))

    over = [title for title, ms, _ in results if ms >= TARGET_MS]
    print(f"\n{len(results) - len(over)}/{len(results)} queries under {TARGET_MS:.0f} ms")
    print(
        "cold stats (once per day and range: whole frozen days computed and stored): "
        + ", ".join(f"{title} {ms:.0f} ms" for title, ms in cold)
    )
    if not args.no_plans:
        async with store.engine.connect() as conn:
            for title, _, statements in results:
                for statement, parameters in statements:
                    if not statement.lstrip().upper().startswith("SELECT"):
                        continue  # BEGIN, SET, SHOW
                    print(f"\n=== {title}\n{statement}\n-- parameters: {parameters}")
                    plan = await conn.exec_driver_sql(
                        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + statement, parameters
                    )
                    for (line,) in plan:
                        print("   ", line)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=21, help="timed runs per query (median)")
    parser.add_argument("--limit", type=int, default=50, help="page size")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--admin-url", default=os.environ.get("ARI_DIGITS_TEST_PG_URL") or DEFAULT_ADMIN_URL
    )
    parser.add_argument("--no-plans", action="store_true", help="skip the EXPLAIN output")
    parser.add_argument("--keep", action="store_true", help="keep the database (prints its name)")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
