"""Aggregates of whole UTC days, cached once the day is frozen (table ``entry_daily_stats``).

``queries.entry_stats`` over a long range used to scan every entry in it (337 ms for all
time on 1,000,000 entries in PostgreSQL). But a day's aggregates stop changing once the day
is *frozen*: it ended at least :data:`FROZEN_AFTER` ago and holds no ``in_progress`` entry.
Entries start at the present and the store only ever updates ``in_progress`` rows, so the
application never writes such a day again. Its aggregates are computed by the first query
that covers the whole day and stored; later queries read them and scan only the rest of
their range (the partial days at its edges, the last hour, days with entries in progress).

Anything else that writes a past day (a purge, a manual edit, an import) fires triggers
that delete the day's cached row (migration 0004). Such a write that commits while a query
computes that very day finds no row to delete yet; so the query stores its new days in the
transaction that read them, and stores nothing if the database may have changed since
(:func:`save_daily_stats`; on PostgreSQL only writes that run SERIALIZABLE are seen, see
migration 0004). :func:`forget_daily_stats` empties the cache.

Stored per day: entries by (status, label), and entries with a first digit by bucket of
``first_digit_ms``: ``first_digit_ms / FIRST_DIGIT_BUCKET_MS`` in integer division, which
truncates towards zero on both databases (:func:`first_digit_bucket`). The buckets only
locate the median; ``queries.entry_stats`` then reads the exact values of that bucket, so
the median is exact whatever mix of cached and scanned days answers a query.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Date,
    Select,
    cast,
    delete,
    func,
    literal_column,
    select,
    type_coerce,
    union_all,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Executable

from .models import entries_table, entry_daily_stats_table
from .records import STATUS_IN_PROGRESS
from .repository import SnapshotWriteConflictError, Store, from_db_datetime

__all__ = [
    "FIRST_DIGIT_BUCKET_MS",
    "FROZEN_AFTER",
    "Aggregates",
    "StaleDailyStatsError",
    "aggregate_range",
    "first_digit_bucket",
    "first_digit_bucket_values",
    "forget_daily_stats",
    "save_daily_stats",
    "started_within",
]

# A day is cached only once it ended this long ago: longer than any delay between taking
# an entry's start time and committing it, and than clock skew between app hosts.
FROZEN_AFTER: Final = timedelta(hours=1)
# Bucket width: the median query reads one or two buckets' values in the range through
# ix_entries_first_digit_ms_started_at; each day stores about spread/width buckets.
# 50 ms balances the two for first digits spread over a few seconds.
FIRST_DIGIT_BUCKET_MS: Final = 50

_E = entries_table.c
_D = entry_daily_stats_table.c
_DAY: Final = timedelta(days=1)

log = logging.getLogger(__name__)

StatusLabel = tuple[str, str | None]
Interval = tuple[datetime | None, datetime | None]


class StaleDailyStatsError(RuntimeError):
    """The cached aggregates disagree with the entries (see migration 0004);
    ``queries.entry_stats`` forgets the range's days and computes it again."""

    def __init__(self) -> None:
        super().__init__(
            "entry_daily_stats disagrees with the entries (old entries changed while a stats "
            "query computed their day?)"
        )


@dataclass
class Aggregates:
    """Entries by (status, label), and entries with a first digit by bucket."""

    by_status_label: Counter[StatusLabel] = field(default_factory=Counter)
    first_digit_buckets: Counter[int] = field(default_factory=Counter)

    def add(self, other: Aggregates) -> None:
        self.by_status_label.update(other.by_status_label)
        self.first_digit_buckets.update(other.first_digit_buckets)


def first_digit_bucket(first_digit_ms: int) -> int:
    """The bucket of a value, as the databases compute it (truncating division)."""
    if first_digit_ms >= 0:
        return first_digit_ms // FIRST_DIGIT_BUCKET_MS
    return -(-first_digit_ms // FIRST_DIGIT_BUCKET_MS)


def first_digit_bucket_values(bucket: int) -> range:
    """Every ``first_digit_ms`` in ``bucket`` (bucket 0 spans both signs)."""
    width = FIRST_DIGIT_BUCKET_MS
    low = bucket * width if bucket > 0 else bucket * width - width + 1
    high = bucket * width + width - 1 if bucket >= 0 else bucket * width
    return range(low, high + 1)


def _bucket_column() -> ColumnElement[int]:
    # A literal, not a bound parameter: PostgreSQL must see the same expression in the
    # select list and in GROUP BY.
    width = literal_column(str(FIRST_DIGIT_BUCKET_MS), BigInteger)
    return _E.first_digit_ms.op("/", return_type=BigInteger)(width)


def _day_column(dialect: str) -> ColumnElement[date]:
    """The UTC day of ``started_at``."""
    if dialect == "postgresql":
        return cast(func.timezone(literal_column("'UTC'"), _E.started_at), Date)
    # SQLite stores started_at as UTC text; date() keeps its "YYYY-MM-DD".
    return type_coerce(func.date(_E.started_at), Date)


def started_within(start: datetime | None, end: datetime | None) -> list[ColumnElement[bool]]:
    """The conditions for ``start <= started_at < end`` (None: unbounded)."""
    found: list[ColumnElement[bool]] = []
    if start is not None:
        found.append(_E.started_at >= start)
    if end is not None:
        found.append(_E.started_at < end)
    return found


def _midnight(at: datetime) -> datetime:
    return datetime.combine(at.date(), time(), tzinfo=UTC)


def _start_of(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _union(selects: Sequence[Select[*tuple[Any, ...]]]) -> Executable:
    return selects[0] if len(selects) == 1 else union_all(*selects)


async def _scan(conn: AsyncConnection, intervals: list[Interval]) -> dict[date, Aggregates]:
    """Aggregates of the entries in ``intervals``, by UTC day."""
    if not intervals:  # cached days cover the whole range
        return {}
    day = _day_column(conn.dialect.name).label("day")
    bucket = _bucket_column().label("bucket")
    counts = _union(
        [
            select(day, _E.status, _E.label, func.count())
            .where(*started_within(start, end))
            .group_by(day, _E.status, _E.label)
            for start, end in intervals
        ]
    )
    buckets = _union(
        [
            select(day, bucket, func.count())
            .where(*started_within(start, end), _E.first_digit_ms.is_not(None))
            .group_by(day, bucket)
            for start, end in intervals
        ]
    )
    days: dict[date, Aggregates] = {}
    for on, status, label, n in await conn.execute(counts):
        days.setdefault(on, Aggregates()).by_status_label[(status, label)] += int(n)
    for on, first_digit, n in await conn.execute(buckets):
        days.setdefault(on, Aggregates()).first_digit_buckets[int(first_digit)] += int(n)
    return days


def _outside(days: list[date], start: datetime | None, end: datetime | None) -> list[Interval]:
    """[start, end) without the (sorted, whole) ``days`` inside it."""
    intervals: list[Interval] = []
    for day in days:
        if start is None or start < _start_of(day):
            intervals.append((start, _start_of(day)))
        start = _start_of(day) + _DAY
    if start is None or end is None or start < end:
        intervals.append((start, end))
    return intervals


async def aggregate_range(
    conn: AsyncConnection, started_from: datetime | None, started_to: datetime | None, now: datetime
) -> tuple[Aggregates, dict[date, Aggregates]]:
    """The aggregates of the entries started in [started_from, started_to), from the cached
    days and a scan of the rest; and the frozen days that were not cached yet, to store with
    :func:`save_daily_stats` in the same snapshot (``Store.read_snapshot``) once the caller
    has read all it needs: a failed write ends the transaction."""
    first_at, last_at = (
        await conn.execute(
            select(func.min(_E.started_at), func.max(_E.started_at)).where(
                *started_within(started_from, started_to)
            )
        )
    ).one()
    if first_at is None:
        return Aggregates(), {}
    # The whole days of the range that hold entries and can be frozen: [first_day, end_day).
    first_day = _midnight(from_db_datetime(first_at))
    if started_from is not None and first_day < started_from:
        first_day += _DAY
    end_day = min(_midnight(now - FROZEN_AFTER), _midnight(from_db_datetime(last_at)) + _DAY)
    if started_to is not None:
        end_day = min(end_day, _midnight(started_to))

    totals = Aggregates()
    if first_day >= end_day:
        for scanned in (await _scan(conn, [(started_from, started_to)])).values():
            totals.add(scanned)
        return totals, {}

    day = _day_column(conn.dialect.name)
    in_progress = (
        select(day)
        .distinct()
        .where(_E.status == STATUS_IN_PROGRESS, *started_within(first_day, end_day))
    )
    busy = set((await conn.execute(in_progress)).scalars())
    stored = select(_D.day, _D.counts, _D.first_digit_buckets).where(
        _D.day >= first_day.date(), _D.day < end_day.date()
    )
    cached = {
        row.day: Aggregates(
            Counter({(status, label): n for status, label, n in row.counts}),
            Counter({bucket: n for bucket, n in row.first_digit_buckets}),
        )
        for row in await conn.execute(stored)
        if row.day not in busy  # a stale row (see migration 0004): the entries win
    }
    scanned_days = await _scan(conn, _outside(sorted(cached), started_from, started_to))

    fresh: dict[date, Aggregates] = {}
    on = first_day
    while on < end_day:
        if on.date() not in cached and on.date() not in busy:
            # A frozen day without entries is stored too, so that it is not scanned again.
            fresh[on.date()] = scanned_days.get(on.date(), Aggregates())
        on += _DAY
    for aggregates in [*cached.values(), *scanned_days.values()]:
        totals.add(aggregates)
    return totals, fresh


async def save_daily_stats(
    store: Store, snapshot: AsyncConnection, days: Mapping[date, Aggregates]
) -> None:
    """Cache the aggregates of frozen ``days``, computed in ``snapshot``, and commit it.

    Only if no entry changed since the snapshot: a purge or edit that committed meanwhile
    found no cached row for its triggers to delete, and the days may hold its old rows.
    ``Store.write_in_snapshot`` refuses the write then (and sometimes when another write
    merely overlapped); the days stay uncached and a later query computes them again. A
    day another query stored first is left as it is (same data). A database that refuses
    the write (read-only) only costs speed."""
    rows = [
        {
            "day": day,
            "counts": [[status, label, n] for (status, label), n in agg.by_status_label.items()],
            "first_digit_buckets": [[bucket, n] for bucket, n in agg.first_digit_buckets.items()],
        }
        for day, agg in days.items()
    ]
    insert = postgresql.insert if store.engine.dialect.name == "postgresql" else sqlite.insert
    stmt = insert(entry_daily_stats_table).on_conflict_do_nothing(index_elements=[_D.day])
    try:
        async with store.write_in_snapshot(snapshot, "cache_daily_stats"):
            await snapshot.execute(stmt, rows)
    except SnapshotWriteConflictError as exc:
        log.info(
            "did not cache the stats of %d frozen days (entries may have changed since): %s",
            len(rows),
            exc,
        )
    except DBAPIError as exc:
        log.warning("could not cache the stats of %d frozen days: %s", len(rows), exc)


async def forget_daily_stats(
    store: Store, started_from: datetime | None = None, started_to: datetime | None = None
) -> int:
    """Drop the cached days that overlap [started_from, started_to) (None: unbounded;
    by default the whole cache, ``DELETE FROM entry_daily_stats``); return how many there
    were. Queries compute and store the days again as they need them."""
    stmt = delete(entry_daily_stats_table)
    if started_from is not None:
        stmt = stmt.where(_D.day >= started_from.date())
    if started_to is not None:
        # The day holding started_to overlaps the range unless started_to is its midnight.
        if started_to == _midnight(started_to):
            stmt = stmt.where(_D.day < started_to.date())
        else:
            stmt = stmt.where(_D.day <= started_to.date())
    async with store.write_transaction("forget_daily_stats") as conn:
        result = await conn.execute(stmt)
    return int(result.rowcount)
