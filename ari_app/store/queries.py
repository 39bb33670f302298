"""Read-side queries for operators: filtered, paginated listing and aggregates.

Used by the HTTP API (``ari_app.http``) and the ``ari-digits results`` CLI; both read the
same tables the call tasks write, through the :class:`~ari_app.store.Store`'s engine.

- Listing is newest first, ordered by ``(started_at, id)`` descending, with keyset
  pagination: the cursor encodes the last row's ``(started_at, id)`` and the next page is
  everything strictly older. Pages stay stable while rows are inserted (new rows land before
  the first page, never inside a page already handed out), and a deep page costs the same as
  the first one.
- Time ranges are half-open, ``started_from <= started_at < started_to``, in UTC.
- Aggregates: counts by status and by label, completion rate (``completed`` over finished
  entries, i.e. every status but ``in_progress``) and the median time from the start of an
  entry to its first digit (``entry_events`` of kind ``digit``, smallest ``at_ms``; stored
  as ``entries.first_digit_ms``). Whole past days are cached (``ari_app.store.daily_stats``).

Bad input raises :class:`QueryError` (a ValueError) naming the offending parameter, so an
interface can report it (HTTP 400, CLI usage error).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from .daily_stats import (
    Aggregates,
    StaleDailyStatsError,
    aggregate_range,
    first_digit_bucket,
    first_digit_bucket_values,
    forget_daily_stats,
    save_daily_stats,
    started_within,
)
from .models import entries_table
from .records import (
    CONFIRMED_VALUES,
    ENTRY_STATUSES,
    STATUS_IN_PROGRESS,
    TRANSPORTS,
    StoredEntry,
)
from .repository import Store

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_ENTRY_ID",
    "MAX_PAGE_SIZE",
    "Cursor",
    "EntryFilter",
    "EntryPage",
    "EntryStats",
    "InvalidCursorError",
    "QueryError",
    "entry_stats",
    "get_entry",
    "list_entries",
    "parse_timestamp",
]

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
# Ids are BIGINT on PostgreSQL (64-bit rowid on SQLite): anything larger cannot exist.
MAX_ENTRY_ID: Final = 2**63 - 1
# Longest accepted text filter value; longer than any column, so it could never match.
MAX_TEXT_FILTER: Final = 255

_E = entries_table.c
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR_VERSION: Final = "1"
_CURSOR_SHAPE: Final = re.compile(r"1:(-?\d{1,19}):(\d{1,19})")
# A "+HH:MM" offset whose "+" a query string decoded as a space: "...T12:00:00 02:00".
_SPACE_OFFSET: Final = re.compile(r"(?<=\d) (?=\d\d(:?\d\d)?$)")

log = logging.getLogger(__name__)

SERIALIZATION_ATTEMPTS: Final = 3


class QueryError(ValueError):
    """Bad input to a read query; ``parameter`` names the offending input."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


class InvalidCursorError(QueryError):
    """A pagination cursor that this module did not produce (or that was altered)."""

    def __init__(self, message: str = "not a cursor returned by a previous page") -> None:
        super().__init__("cursor", message)


def parse_timestamp(parameter: str, text: str) -> datetime:
    """Parse an ISO 8601 date or date-time into an aware UTC datetime.

    ``2024-05-17`` is midnight UTC; a date-time without an offset is taken as UTC;
    ``Z`` and ``+02:00`` offsets are honoured (also when a query string turned the ``+``
    into a space). Raises QueryError naming ``parameter``.
    """
    raw = text.strip()
    if not raw:
        raise QueryError(parameter, "empty; expected an ISO 8601 date or date-time")
    candidate = _SPACE_OFFSET.sub("+", raw) if "T" in raw or raw.count(" ") > 1 else raw
    try:
        value = datetime.fromisoformat(candidate)
    except ValueError:
        raise QueryError(
            parameter,
            f"{text!r} is not an ISO 8601 date or date-time (e.g. 2024-05-17 or "
            "2024-05-17T12:30:00Z)",
        ) from None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return _to_utc(value)


def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        # 9999-12-31T23:00:00-05:00 is past datetime.max in UTC (and year 1 with a positive
        # offset before datetime.min): as a bound it means "after/before everything".
        edge = datetime.max if value.year > 1 else datetime.min
        return edge.replace(tzinfo=UTC)


def _utc(parameter: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise QueryError(parameter, "must be a timezone-aware datetime")
    return _to_utc(value)


def _check_text(parameter: str, value: str | None) -> None:
    if value is None:
        return
    if not value:
        raise QueryError(parameter, "must not be empty")
    if len(value) > MAX_TEXT_FILTER:
        raise QueryError(parameter, f"longer than {MAX_TEXT_FILTER} characters")
    if "\x00" in value:
        raise QueryError(parameter, "must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise QueryError(parameter, "is not valid Unicode text") from None


def _check_choice(parameter: str, value: str | None, allowed: frozenset[str]) -> None:
    if value is not None and value not in allowed:
        raise QueryError(parameter, f"must be one of {', '.join(sorted(allowed))}; got {value!r}")


def _check_range(started_from: datetime | None, started_to: datetime | None) -> None:
    if started_from is not None and started_to is not None and started_from > started_to:
        raise QueryError("to", "must not be earlier than from")


@dataclass(frozen=True)
class EntryFilter:
    """Which entries to list; every field is optional and they combine with AND.

    ``started_from`` is inclusive and ``started_to`` exclusive; both must be aware (they
    are normalised to UTC). ``channel`` matches the channel id or the channel name.
    """

    started_from: datetime | None = None
    started_to: datetime | None = None
    status: str | None = None
    label: str | None = None
    caller_number: str | None = None
    channel: str | None = None
    transport: str | None = None
    confirmed: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "started_from", _utc("from", self.started_from))
        object.__setattr__(self, "started_to", _utc("to", self.started_to))
        _check_range(self.started_from, self.started_to)
        _check_choice("status", self.status, ENTRY_STATUSES)
        _check_choice("transport", self.transport, TRANSPORTS)
        _check_choice("confirmed", self.confirmed, CONFIRMED_VALUES)
        _check_text("label", self.label)
        _check_text("caller_number", self.caller_number)
        _check_text("channel", self.channel)

    def conditions(self) -> list[ColumnElement[bool]]:
        """The WHERE conditions over ``entries`` (used by listing and aggregates)."""
        found = started_within(self.started_from, self.started_to)
        if self.status is not None:
            found.append(_E.status == self.status)
        if self.label is not None:
            found.append(_E.label == self.label)
        if self.caller_number is not None:
            found.append(_E.caller_number == self.caller_number)
        if self.channel is not None:
            found.append(or_(_E.channel_id == self.channel, _E.channel_name == self.channel))
        if self.transport is not None:
            found.append(_E.transport == self.transport)
        if self.confirmed is not None:
            found.append(_E.confirmed == self.confirmed)
        return found


@dataclass(frozen=True)
class Cursor:
    """Position after the last entry of a page: its ``(started_at, id)``.

    Encoded as an opaque URL-safe token (base64url, no padding) of
    ``1:<microseconds since the epoch>:<id>``; clients must treat it as opaque.
    """

    started_at: datetime
    id: int

    def encode(self) -> str:
        micros = (self.started_at - _EPOCH) // timedelta(microseconds=1)
        raw = f"{_CURSOR_VERSION}:{micros}:{self.id}".encode("ascii")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """Raises InvalidCursorError for anything :meth:`encode` did not produce."""
        if not token or len(token) > 64 or not token.isascii():
            raise InvalidCursorError()
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        except (binascii.Error, ValueError):
            raise InvalidCursorError() from None
        match = _CURSOR_SHAPE.fullmatch(raw)
        if match is None:
            raise InvalidCursorError()
        entry_id = int(match.group(2))
        if not 1 <= entry_id <= MAX_ENTRY_ID:
            raise InvalidCursorError()
        try:
            started_at = _EPOCH + timedelta(microseconds=int(match.group(1)))
        except (OverflowError, ValueError):
            raise InvalidCursorError() from None
        cursor = cls(started_at=started_at, id=entry_id)
        if cursor.encode() != token:  # one canonical token per position
            raise InvalidCursorError()
        return cursor


@dataclass(frozen=True)
class EntryPage:
    """One page of entries (without events), newest first."""

    entries: list[StoredEntry]
    next_cursor: str | None  # None on the last page


async def list_entries(
    store: Store,
    where: EntryFilter | None = None,
    *,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
) -> EntryPage:
    """A page of entries matching ``where``, newest first, starting after ``cursor``.

    Raises QueryError for a limit outside 1..MAX_PAGE_SIZE and InvalidCursorError for a
    bad cursor.
    """
    if isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE_SIZE:
        raise QueryError("limit", f"must be between 1 and {MAX_PAGE_SIZE}; got {limit!r}")
    where = where or EntryFilter()
    conditions = where.conditions()
    if cursor is not None:
        after = Cursor.decode(cursor)
        at = after.started_at
        # Spelled out (not a row-value comparison) so that PostgreSQL uses the leading
        # "started_at <= :at" as an index condition on every (x, started_at) index.
        conditions.append(_E.started_at <= at)
        conditions.append(or_(_E.started_at < at, and_(_E.started_at == at, _E.id < after.id)))
    # One more than the page: whether there is a next page.
    found = await store.newest_entries(conditions, limit + 1)
    entries = found[:limit]
    next_cursor = None
    if len(found) > limit:
        last = entries[-1]
        next_cursor = Cursor(started_at=last.started_at, id=last.id).encode()
    return EntryPage(entries=entries, next_cursor=next_cursor)


async def get_entry(store: Store, entry_id: int) -> StoredEntry | None:
    """The entry with its events (``Store.get_entry``); None if there is none, including
    for ids that cannot exist (below 1 or beyond 64 bits)."""
    if not 1 <= entry_id <= MAX_ENTRY_ID:
        return None
    return await store.get_entry(entry_id)


@dataclass(frozen=True)
class EntryStats:
    """Aggregates over the entries started in ``[started_from, started_to)``."""

    started_from: datetime | None
    started_to: datetime | None
    total: int
    by_status: dict[str, int]  # status -> count; every known status, zeros included
    by_label: list[tuple[str | None, int]]  # most frequent first; None = no label
    finished: int  # every status but in_progress
    completed: int
    completion_rate: float | None  # completed / finished; None when nothing finished
    entries_with_digits: int  # entries with at least one digit event
    median_first_digit_ms: float | None  # None when no entry has a digit


async def entry_stats(
    store: Store,
    *,
    started_from: datetime | None = None,
    started_to: datetime | None = None,
) -> EntryStats:
    """Counts by status and label, completion rate and median time to first digit.

    Whole frozen days come from ``entry_daily_stats`` and the rest of the range from the
    entries (``ari_app.store.daily_stats``); frozen days not cached yet are computed from
    the entries and stored for the next query. The median is exact: the cached histograms
    locate the bucket holding it, and its values are read from the entries. Cached days
    that contradict the entries (StaleDailyStatsError: see migration 0004) are forgotten
    and the range computed again.
    """
    started_from = _utc("from", started_from)
    started_to = _utc("to", started_to)
    _check_range(started_from, started_to)
    try:
        totals, median_ms = await _aggregates_retrying(store, started_from, started_to)
    except StaleDailyStatsError as exc:
        forgotten = await forget_daily_stats(store, started_from, started_to)
        log.warning(
            "%s: forgot the %d cached days of the range, computing it again", exc, forgotten
        )
        totals, median_ms = await _aggregates_retrying(store, started_from, started_to)

    # Every known status, zeros included (and any status a newer version wrote).
    by_status = dict.fromkeys(sorted(ENTRY_STATUSES), 0)
    labels: dict[str | None, int] = {}
    for (status, label), n in totals.by_status_label.items():
        by_status[status] = by_status.get(status, 0) + n
        labels[label] = labels.get(label, 0) + n
    total = sum(by_status.values())
    finished = total - by_status[STATUS_IN_PROGRESS]
    completed = by_status["completed"]
    return EntryStats(
        started_from=started_from,
        started_to=started_to,
        total=total,
        by_status=by_status,
        by_label=sorted(labels.items(), key=lambda item: (-item[1], item[0] or "")),
        finished=finished,
        completed=completed,
        completion_rate=completed / finished if finished else None,
        entries_with_digits=sum(totals.first_digit_buckets.values()),
        median_first_digit_ms=median_ms,
    )


async def _aggregates_retrying(
    store: Store, started_from: datetime | None, started_to: datetime | None
) -> tuple[Aggregates, float | None]:
    """:func:`_aggregates`, run again when PostgreSQL aborts its SERIALIZABLE snapshot
    (SQLSTATE 40001: possible, rarely, when several stats queries cache the same days at
    once). Nothing was written by the aborted try, so running it again is safe."""
    attempt = 1
    while True:
        try:
            return await _aggregates(store, started_from, started_to)
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != "40001" or attempt >= SERIALIZATION_ATTEMPTS:
                raise
            attempt += 1
            log.info("stats: the snapshot was aborted by a concurrent query; reading it again")


async def _aggregates(
    store: Store, started_from: datetime | None, started_to: datetime | None
) -> tuple[Aggregates, float | None]:
    """The range's aggregates and median, and its new frozen days cached, all in one
    snapshot: cached days, scanned days and the median's values agree while entries are
    written, and no day is cached from entries that changed since they were read."""
    async with store.read_snapshot() as conn:
        totals, fresh = await aggregate_range(conn, started_from, started_to, datetime.now(UTC))
        median_ms = await _median_first_digit_ms(
            conn, totals.first_digit_buckets, started_within(started_from, started_to)
        )
        if fresh:
            await save_daily_stats(store, conn, fresh)
    return totals, median_ms


async def _median_first_digit_ms(
    conn: AsyncConnection, buckets: Counter[int], in_range: list[ColumnElement[bool]]
) -> float | None:
    """The exact median of ``first_digit_ms`` in the range, given its bucket counts: the
    middle value (odd count) or the mean of the two middle values (even count)."""
    total = sum(buckets.values())
    if not total:
        return None
    middle_ranks = [(total - 1) // 2, total // 2]  # 0-based; the same rank twice when odd
    located: list[tuple[int, int]] = []  # (bucket, rank among the bucket's values)
    below = 0
    for bucket in sorted(buckets):
        n = buckets[bucket]
        located += [(bucket, rank - below) for rank in middle_ranks if below <= rank < below + n]
        below += n
    first_ms = _E.first_digit_ms
    values = sorted({ms for bucket, _ in located for ms in first_digit_bucket_values(bucket)})
    exact = [
        (int(ms), int(n))
        for ms, n in await conn.execute(
            select(first_ms, func.count())
            .where(*in_range, first_ms.in_(values))
            .group_by(first_ms)
            .order_by(first_ms)
        )
    ]
    middle = [_nth_in_bucket(exact, bucket, rank) for bucket, rank in located]
    return (middle[0] + middle[1]) / 2


def _nth_in_bucket(exact: Sequence[tuple[int, int]], bucket: int, rank: int) -> int:
    """The value of 0-based ``rank`` among the values of ``bucket``; ``exact`` holds
    (value, count) in ascending order."""
    for value, n in exact:
        if first_digit_bucket(value) != bucket:
            continue
        if rank < n:
            return value
        rank -= n
    raise StaleDailyStatsError()
