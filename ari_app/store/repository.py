"""Async persistence of entries and their events (SQLite or PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Self

from sqlalchemy import (
    ColumnElement,
    and_,
    bindparam,
    event,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, RowMapping, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from ari_app.entry_key import new_entry_key
from ari_app.metrics import Metrics

from .models import entries_table, entry_events_table
from .records import (
    CONFIRMED_VALUES,
    FINAL_STATUSES,
    STALE_ERROR,
    STATUS_IN_PROGRESS,
    STATUS_INTERRUPTED,
    TRANSPORTS,
    EntryOutcome,
    EntryStart,
    StoredEntry,
    StoredEvent,
)

__all__ = [
    "EntryAlreadyFinishedError",
    "EntryNotFoundError",
    "SnapshotWriteConflictError",
    "Store",
    "from_db_datetime",
    "normalize_url",
]

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS: Final = 10_000
# What the store writes instead of the real value in events of sensitive entries.
REDACTED_DIGIT: Final = "*"
REDACTED_DETAIL: Final = "[redacted]"
# entry_events.rejected is String(32).
MAX_REJECTED_LENGTH: Final = 32

_E = entries_table.c
_V = entry_events_table.c
_ENTRY_COLUMNS: Final = (
    _E.id,
    _E.channel_id,
    _E.channel_name,
    _E.caller_number,
    _E.caller_name,
    _E.label,
    _E.parameters,
    _E.transport,
    _E.asterisk_id,
    _E.started_at,
    _E.sensitive,
    _E.status,
    _E.user_input,
    _E.input_hash,
    _E.terminated_by,
    _E.attempts,
    _E.confirmed,
    _E.error,
    _E.ended_at,
    _E.entry_key,
)
_EVENT_COLUMNS: Final = (
    _V.seq,
    _V.kind,
    _V.attempt,
    _V.at_ms,
    _V.digit,
    _V.source,
    _V.duration_ms,
    _V.detail,
    _V.confidence,
    _V.rejected,
)


class EntryNotFoundError(LookupError):
    """``finish_entry`` was given an id that does not exist."""


class EntryAlreadyFinishedError(RuntimeError):
    """``finish_entry`` was called for an entry that is no longer ``in_progress``."""


class SnapshotWriteConflictError(RuntimeError):
    """A write in a :meth:`Store.read_snapshot` was not committed: the database may have
    changed since the snapshot (see :meth:`Store.write_in_snapshot`)."""


def normalize_url(url: str | URL) -> URL:
    """Return ``url`` with an async driver: ``sqlite://`` -> ``sqlite+aiosqlite://``,
    ``postgresql://`` / ``postgres://`` (or a sync PG driver) -> ``postgresql+asyncpg://``.
    """
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite":
        if driver != "aiosqlite":
            parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif backend in ("postgresql", "postgres"):
        if driver != "asyncpg":
            parsed = parsed.set(drivername="postgresql+asyncpg")
    else:
        raise ValueError(
            f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: "
            "use sqlite[+aiosqlite]:///path or postgresql[+asyncpg]://..."
        )
    return parsed


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # busy_timeout first so the WAL switch itself waits instead of failing if another
        # connection/process holds the database.
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL: readers never block the writer and vice versa. FULL: each commit is fsynced
        # before it returns. The journal deletes its records once the store's commit returns,
        # so with NORMAL (whose last commits a power cut may roll back) an outcome could be
        # gone from both after one. The drain commits a few times a second: the fsyncs cost
        # little.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        # SQLite ignores FOREIGN KEY (and so ON DELETE CASCADE) unless enabled per connection.
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def create_engine_for_url(url: str | URL) -> AsyncEngine:
    """Create the async engine the Store uses (driver upgrade, pool, SQLite pragmas)."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        # SQLAlchemy picks AsyncAdaptedQueuePool (5 + 10 overflow) for a file database and
        # StaticPool for :memory:; its defaults are right here, because writes are
        # serialised by Store's lock and only reads run concurrently.
        engine = create_async_engine(parsed)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    else:
        engine = create_async_engine(
            parsed,
            pool_size=10,
            max_overflow=10,
            pool_timeout=30,
            # Survive PostgreSQL restarts / idle connections dropped by the network.
            pool_pre_ping=True,
            pool_recycle=1800,
        )
    return engine


def _aware_utc(name: str, value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def from_db_datetime(value: datetime) -> datetime:
    """A timestamp read from the database, as an aware UTC datetime."""
    # SQLite has no time zone storage: values were written as UTC and come back naive.
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _is_write_conflict(exc: DBAPIError) -> bool:
    """SQLITE_BUSY with its extended codes (SQLITE_BUSY_SNAPSHOT = 517), or PostgreSQL's
    serialization_failure."""
    sqlite_code = getattr(exc.orig, "sqlite_errorcode", None)
    if sqlite_code is not None:
        return bool(sqlite_code & 0xFF == sqlite3.SQLITE_BUSY)
    return getattr(exc.orig, "sqlstate", None) == "40001"


def _check_choice(name: str, value: str | None, allowed: Iterable[str]) -> None:
    allowed_set = frozenset(allowed)
    if value not in allowed_set:
        raise ValueError(f"{name} must be one of {sorted(allowed_set)}, got {value!r}")


def _entry_from_row(row: RowMapping, events: tuple[StoredEvent, ...] = ()) -> StoredEntry:
    ended_at = row[_E.ended_at]
    return StoredEntry(
        id=int(row[_E.id]),
        channel_id=row[_E.channel_id],
        channel_name=row[_E.channel_name],
        caller_number=row[_E.caller_number],
        caller_name=row[_E.caller_name],
        label=row[_E.label],
        parameters=dict(row[_E.parameters] or {}),
        transport=row[_E.transport],
        asterisk_id=row[_E.asterisk_id],
        started_at=from_db_datetime(row[_E.started_at]),
        sensitive=bool(row[_E.sensitive]),
        status=row[_E.status],
        user_input=row[_E.user_input],
        input_hash=row[_E.input_hash],
        terminated_by=row[_E.terminated_by],
        attempts=int(row[_E.attempts]),
        confirmed=row[_E.confirmed],
        error=row[_E.error],
        ended_at=None if ended_at is None else from_db_datetime(ended_at),
        events=events,
        entry_key=row[_E.entry_key],
    )


def _event_from_row(row: RowMapping) -> StoredEvent:
    return StoredEvent(
        kind=row[_V.kind],
        attempt=int(row[_V.attempt]),
        at_ms=int(row[_V.at_ms]),
        digit=row[_V.digit],
        source=row[_V.source],
        duration_ms=row[_V.duration_ms],
        detail=row[_V.detail],
        confidence=row[_V.confidence],
        rejected=row[_V.rejected],
    )


def _event_rows(
    entry_id: int, events: Sequence[StoredEvent], *, sensitive: bool
) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for seq, ev in enumerate(events):
        digit = ev.digit
        detail = ev.detail
        if sensitive:
            # Defence in depth: the caller masks user_input, but per-digit events (and a
            # speech transcript) would otherwise store the full sensitive number. The
            # confidence and the rejection reason say nothing about the digits: kept.
            if digit is not None:
                digit = REDACTED_DIGIT
            if ev.kind == "utterance" and detail is not None:
                detail = REDACTED_DETAIL
        rows.append(
            {
                "entry_id": entry_id,
                "seq": seq,
                "kind": ev.kind,
                "attempt": ev.attempt,
                "at_ms": ev.at_ms,
                "digit": digit,
                "source": ev.source,
                "duration_ms": ev.duration_ms,
                "detail": _storable(detail),
                "confidence": ev.confidence,
                "rejected": _storable(ev.rejected),
            }
        )
    return rows


def _check_events(events: Sequence[StoredEvent]) -> None:
    for seq, ev in enumerate(events):
        # "not 0 <= x <= 1" also rejects NaN.
        if ev.confidence is not None and not 0.0 <= ev.confidence <= 1.0:
            raise ValueError(f"event {seq}: confidence must be in 0..1, got {ev.confidence!r}")
        if ev.rejected is not None and not 1 <= len(ev.rejected) <= MAX_REJECTED_LENGTH:
            raise ValueError(
                f"event {seq}: rejected must be 1 to {MAX_REJECTED_LENGTH} characters, "
                f"got {ev.rejected!r}"
            )


_PendingFinish = tuple[int, EntryOutcome, "asyncio.Future[None]"]
MAX_FINISH_BATCH: Final = 200

# A row a restart marked interrupted ("server restarted": the store's sweep, or the journal for
# an entry it holds no outcome of) that an outcome still reaches was not lost after all (say,
# rows written without an owner, before migration 0007, by a serve still running): the real
# outcome replaces the mark instead of being refused. Sessions never end with this error.
_MARKED_BY_RESTART: Final = and_(_E.status == STATUS_INTERRUPTED, _E.error == STALE_ERROR)


def _marked_by_restart(status: str, error: str | None) -> bool:
    return status == STATUS_INTERRUPTED and error == STALE_ERROR


_FINISH_STATEMENT: Final = (
    update(entries_table)
    .where(
        _E.id == bindparam("b_id"),
        or_(_E.status == STATUS_IN_PROGRESS, _MARKED_BY_RESTART),
    )
    .values(
        status=bindparam("b_status"),
        user_input=bindparam("b_user_input"),
        input_hash=bindparam("b_input_hash"),
        terminated_by=bindparam("b_terminated_by"),
        attempts=bindparam("b_attempts"),
        confirmed=bindparam("b_confirmed"),
        error=bindparam("b_error"),
        ended_at=bindparam("b_ended_at"),
        first_digit_ms=bindparam("b_first_digit_ms"),
    )
)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _storable(text: str | None) -> str | None:
    """``text`` as both databases take it: a lone surrogate (JSON's ``"\\ud800"`` escape can
    make one; UTF-8 cannot) becomes U+FFFD, instead of failing the write at every retry."""
    return None if text is None else _LONE_SURROGATE.sub("\ufffd", text)


def _outcome_row(entry_id: int, outcome: EntryOutcome) -> dict[str, object]:
    return {
        "b_id": entry_id,
        "b_status": outcome.status,
        "b_user_input": _storable(outcome.user_input),
        "b_input_hash": outcome.input_hash,
        "b_terminated_by": outcome.terminated_by,
        "b_attempts": outcome.attempts,
        "b_confirmed": outcome.confirmed,
        "b_error": _storable(outcome.error),
        "b_ended_at": _aware_utc("ended_at", outcome.ended_at),
        "b_first_digit_ms": min(
            (event.at_ms for event in outcome.events if event.kind == "digit"), default=None
        ),
    }


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


class Store:
    """Entry persistence over an async SQLAlchemy engine.

    Create with :meth:`from_url`; the schema must already exist (see
    ``ari_app.store.migrate.upgrade_to_head``). Call :meth:`close` (or use
    ``async with``) to dispose of the connection pool. A Store must be used from a single
    event loop.
    """

    def __init__(
        self, engine: AsyncEngine, *, metrics: Metrics | None = None, serve_id: str | None = None
    ) -> None:
        self._engine = engine
        # The serve this store writes for (SERVE_ID): the owner of the entries it starts, and
        # whose entries left in progress mark_stale_in_progress marks. None: no owner (tools).
        self.serve_id = serve_id
        self._metrics = metrics if metrics is not None else Metrics()
        self._is_sqlite = engine.dialect.name == "sqlite"
        # SQLite allows a single writer per database file. With many calls finishing at
        # once, concurrent write transactions from our own pool would queue inside SQLite
        # on busy_timeout, and a long queue ends in "database is locked". Serialising
        # writes in-process makes them wait on this lock instead (cheap, fair, no timeout)
        # and leaves busy_timeout only for other processes (migrations, CLI tools). The
        # lock is taken *before* a pooled connection is checked out, so queued writers do
        # not starve readers of connections. PostgreSQL has row-level locking: no lock.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self._is_sqlite else None
        self._pending_finishes: list[_PendingFinish] = []
        self._flusher: asyncio.Task[None] | None = None

    @classmethod
    def from_url(
        cls, url: str, *, metrics: Metrics | None = None, serve_id: str | None = None
    ) -> Store:
        """``sqlite+aiosqlite:///path`` or ``postgresql+asyncpg://...``; plain
        ``sqlite:///path`` / ``postgresql://...`` are upgraded to the async drivers."""
        return cls(create_engine_for_url(url), metrics=metrics, serve_id=serve_id)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @contextlib.asynccontextmanager
    async def write_transaction(self, operation: str) -> AsyncIterator[AsyncConnection]:
        """Every write goes through here (or :meth:`write_in_snapshot`): timed (without
        the wait for the SQLite lock) and counted as a database error when it fails, under
        ``operation`` (see ``ari_app.metrics.DB_OPERATIONS``)."""
        async with self._write_lock or contextlib.nullcontext():
            with self._metrics.db_write(operation):
                async with self._engine.begin() as conn:
                    yield conn

    @contextlib.asynccontextmanager
    async def read_snapshot(self) -> AsyncIterator[AsyncConnection]:
        """A connection whose statements all read one snapshot, and that
        :meth:`write_in_snapshot` can then write in; rolled back unless that commits.
        SERIALIZABLE on PostgreSQL (REPEATABLE READ would not fail a write whose reads a
        concurrent transaction changed); a deferred ``BEGIN`` on SQLite, since pysqlite
        begins a transaction only before a write and each SELECT would read the latest
        commit."""
        async with self._engine.connect() as conn:
            if self._is_sqlite:
                await conn.exec_driver_sql("BEGIN")
            else:
                await conn.execution_options(isolation_level="SERIALIZABLE")
            yield conn

    @contextlib.asynccontextmanager
    async def write_in_snapshot(self, conn: AsyncConnection, operation: str) -> AsyncIterator[None]:
        """Write in ``conn`` (from :meth:`read_snapshot`) and commit, as one of the store's
        writes (timed and counted under ``operation``, like :meth:`write_transaction`).

        Raises SnapshotWriteConflictError, and writes nothing, when what the snapshot read
        may have changed since: on SQLite, when anything committed since the snapshot
        (SQLITE_BUSY_SNAPSHOT) or another connection is writing (SQLITE_BUSY: SQLite does
        not wait to upgrade a read transaction); on PostgreSQL, when a concurrent
        SERIALIZABLE transaction wrote what it read (a READ COMMITTED one goes unseen).

        On SQLite the write lock is taken only if it is free at once. Waiting for it here
        would hold a pooled connection while queued writers, which take the lock before a
        connection, may need one; and whoever holds the lock commits after this snapshot,
        so the write would fail anyway. The lock is held for the write only, not the reads.
        A conflict is timed but not counted as a database error: it is the expected outcome
        of writing optimistically, not a fault.
        """
        if self._write_lock is not None:
            try:
                # Fails only where acquire() would wait (locked, or handed to a waiter).
                async with asyncio.timeout(0):
                    await self._write_lock.acquire()
            except TimeoutError:
                raise SnapshotWriteConflictError("another write is in progress") from None
        conflict: DBAPIError | None = None
        try:
            with self._metrics.db_write(operation):
                try:
                    yield
                    await conn.commit()
                except DBAPIError as exc:
                    if not _is_write_conflict(exc):
                        raise
                    conflict = exc
        finally:
            if self._write_lock is not None:
                self._write_lock.release()
        if conflict is not None:
            raise SnapshotWriteConflictError(str(conflict.orig)) from conflict

    async def start_entry(self, start: EntryStart) -> int:
        """Insert a new ``in_progress`` entry and return its id.

        Idempotent by ``start.entry_key``: a start already stored under that key (a replay
        from the journal after a crash) returns the existing row's id and writes nothing.
        Without a key the store makes one."""
        (entry_id,) = await self.start_entries([start])
        return entry_id

    async def start_entries(self, starts: Sequence[EntryStart]) -> list[int]:
        """:meth:`start_entry` for many, in one transaction (the journal's drain sends the
        starts of a burst together); the ids in the order of ``starts``."""
        rows = []
        for start in starts:
            _check_choice("transport", start.transport, TRANSPORTS)
            rows.append(
                {
                    "entry_key": start.entry_key or new_entry_key(),
                    "channel_id": _storable(start.channel_id),
                    "channel_name": _storable(start.channel_name),
                    "caller_number": _storable(start.caller_number),
                    "caller_name": _storable(start.caller_name),
                    "label": _storable(start.label),
                    "parameters": start.parameters,
                    "transport": start.transport,
                    "asterisk_id": _storable(start.asterisk_id),
                    "started_at": _aware_utc("started_at", start.started_at),
                    "sensitive": start.sensitive,
                    "status": STATUS_IN_PROGRESS,
                    "attempts": 0,
                    "confirmed": "not_asked",
                    "serve_id": self.serve_id,
                }
            )
        keys = [row["entry_key"] for row in rows]
        async with self.write_transaction("start_entry") as conn:
            # The journal's drain is the only writer by key, one batch at a time, so a
            # look-up before the insert cannot race; the unique index still guards it.
            found = await conn.execute(select(_E.entry_key, _E.id).where(_E.entry_key.in_(keys)))
            ids: dict[object, int] = {key: int(entry_id) for key, entry_id in found.all()}
            new = [row for row in rows if row["entry_key"] not in ids]
            if new:
                inserted = await conn.execute(
                    insert(entries_table).returning(_E.entry_key, _E.id), new
                )
                ids.update((key, int(entry_id)) for key, entry_id in inserted.all())
        return [ids[key] for key in keys]

    async def entry_id_for_key(self, entry_key: str) -> int | None:
        """The integer id of the entry stored under ``entry_key``, or None."""
        async with self._engine.connect() as conn:
            entry_id = await conn.scalar(select(_E.id).where(_E.entry_key == entry_key))
        return None if entry_id is None else int(entry_id)

    # The session's EntryStore protocol (ari_app.ports), straight to the database: the
    # caller waits for the central database (the journal, ari_app.journal, does not).

    async def record_start(self, start: EntryStart) -> None:
        await self.start_entry(start)

    async def record_outcome(self, entry_key: str, outcome: EntryOutcome) -> None:
        entry_id = await self.entry_id_for_key(entry_key)
        if entry_id is None:
            raise EntryNotFoundError(f"no entry with key {entry_key}")
        await self.finish_entry(entry_id, outcome)

    async def finish_entry(self, entry_id: int, outcome: EntryOutcome) -> None:
        """Record the outcome and events of an ``in_progress`` entry, in one transaction.

        Concurrent calls are group-committed: when many calls end at once (a burst after a
        shared prompt, a trunk dropping), one transaction with three statements stores them all
        instead of three round trips and a commit each; a lone call still commits at once.

        For sensitive entries the store also redacts event digits (and utterance
        transcripts); ``outcome.user_input`` must already be masked by the caller.

        Raises ValueError for an unknown status/confirmed value, a naive ended_at, an event
        confidence outside 0..1 or a rejection reason empty or over 32 characters,
        EntryNotFoundError if there is no such entry and EntryAlreadyFinishedError
        if it is finished already; nothing is written in either case. An entry a restart
        marked ``interrupted`` ("server restarted") is not finished: its real outcome replaces
        the mark.
        """
        _check_choice("status", outcome.status, FINAL_STATUSES)
        _check_choice("confirmed", outcome.confirmed, CONFIRMED_VALUES)
        if outcome.attempts < 0:
            raise ValueError(f"attempts must be >= 0, got {outcome.attempts}")
        _aware_utc("ended_at", outcome.ended_at)
        _check_events(outcome.events)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending_finishes.append((entry_id, outcome, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_finishes())
        await done

    async def _flush_finishes(self) -> None:
        while self._pending_finishes:
            batch = self._pending_finishes[:MAX_FINISH_BATCH]
            del self._pending_finishes[:MAX_FINISH_BATCH]
            try:
                await self._finish_batch(batch)
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][2], exc)
                    continue
                # One bad outcome must not cost the others: store them one by one.
                for item in batch:
                    try:
                        await self._finish_batch([item])
                    except Exception as exc:
                        _settle(item[2], exc)

    async def _finish_batch(self, batch: list[_PendingFinish]) -> None:
        ids = [entry_id for entry_id, _, _ in batch]
        current = select(_E.id, _E.status, _E.error, _E.sensitive).where(_E.id.in_(ids))
        if not self._is_sqlite:
            current = current.with_for_update()  # SQLite writers are serialised by our lock
        async with self.write_transaction("finish_entries") as conn:
            found = {row.id: row for row in (await conn.execute(current)).all()}
            updates: list[dict[str, object]] = []
            events: list[dict[str, object]] = []
            accepted: list[asyncio.Future[None]] = []
            seen: set[int] = set()
            revived: list[int] = []
            for entry_id, outcome, done in batch:
                row = found.get(entry_id)
                if row is None:
                    _settle(done, EntryNotFoundError(f"no entry with id {entry_id}"))
                    continue
                marked = _marked_by_restart(row.status, row.error)
                if (row.status != STATUS_IN_PROGRESS and not marked) or entry_id in seen:
                    status = row.status if entry_id not in seen else "being finished"
                    _settle(
                        done,
                        EntryAlreadyFinishedError(
                            f"entry {entry_id} is {status!r}, not {STATUS_IN_PROGRESS!r}"
                        ),
                    )
                    continue
                if marked and not _marked_by_restart(outcome.status, outcome.error):
                    revived.append(entry_id)
                seen.add(entry_id)
                updates.append(_outcome_row(entry_id, outcome))
                events += _event_rows(entry_id, outcome.events, sensitive=bool(row.sensitive))
                accepted.append(done)
            if revived:
                # Neither mark writes events: the outcome's go in as on an in_progress row.
                log.warning(
                    "entries %s were marked interrupted by a restart; their outcomes arrived "
                    "since and replace the mark",
                    ", ".join(map(str, revived)),
                )
            if updates:
                await conn.execute(_FINISH_STATEMENT, updates)
            if events:
                await conn.execute(insert(entry_events_table), events)
        for done in accepted:
            _settle(done, None)

    async def mark_stale_in_progress(self, *, before: datetime | None = None) -> int:
        """Mark this serve's ``in_progress`` entries (started before ``before``; default: all)
        as ``interrupted`` with error "server restarted". Returns how many were marked.

        This serve's: owned by :attr:`serve_id`, or by no one (stored before migration 0007, or
        by a store without a serve id). Other serves sharing the database may have calls in
        progress: their rows are theirs to mark when they restart. Should a marked entry's
        outcome arrive after all, it replaces the mark (see :meth:`finish_entry`)."""
        owner: ColumnElement[bool] = _E.serve_id.is_(None)
        if self.serve_id is not None:
            owner = or_(_E.serve_id == self.serve_id, owner)
        stmt = (
            update(entries_table)
            .where(_E.status == STATUS_IN_PROGRESS, owner)
            .values(
                status=STATUS_INTERRUPTED,
                ended_at=datetime.now(UTC),
                error=STALE_ERROR,
            )
        )
        if before is not None:
            stmt = stmt.where(_E.started_at < _aware_utc("before", before))
        async with self.write_transaction("mark_stale") as conn:
            result = await conn.execute(stmt)
        return int(result.rowcount)

    async def get_entry(self, entry_id: int) -> StoredEntry | None:
        """The entry with its events in order, or None."""
        # One statement (entry LEFT JOIN events) so entry and events come from the same
        # snapshot, even while finish_entry runs concurrently.
        stmt = (
            select(*_ENTRY_COLUMNS, *_EVENT_COLUMNS)
            .select_from(entries_table.outerjoin(entry_events_table))
            .where(_E.id == entry_id)
            .order_by(_V.seq)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        if not rows:
            return None
        events = tuple(_event_from_row(r) for r in rows if r[_V.seq] is not None)
        return _entry_from_row(rows[0], events)

    async def get_entry_by_key(self, entry_key: str) -> StoredEntry | None:
        """The entry stored under ``entry_key`` (``DIGITS_ID``) with its events, or None."""
        entry_id = await self.entry_id_for_key(entry_key)
        return None if entry_id is None else await self.get_entry(entry_id)

    async def list_entries(
        self,
        *,
        limit: int = 50,
        status: str | None = None,
        label: str | None = None,
        caller_number: str | None = None,
    ) -> list[StoredEntry]:
        """Entries newest first (by started_at, then id), without their events."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        conditions: list[ColumnElement[bool]] = []
        if status is not None:
            conditions.append(_E.status == status)
        if label is not None:
            conditions.append(_E.label == label)
        if caller_number is not None:
            conditions.append(_E.caller_number == caller_number)
        return await self.newest_entries(conditions, limit)

    async def newest_entries(
        self, conditions: Sequence[ColumnElement[bool]], limit: int
    ) -> list[StoredEntry]:
        """Up to ``limit`` entries matching every condition, newest first (by started_at, then
        id), without their events: the one listing query (``queries.list_entries`` pages it)."""
        stmt = (
            select(*_ENTRY_COLUMNS)
            .where(*conditions)
            .order_by(_E.started_at.desc(), _E.id.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).mappings().all()
        return [_entry_from_row(r) for r in rows]

    async def ping(self) -> None:
        """Raise if the database cannot be reached."""
        async with self._engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        """Dispose of the connection pool. Safe to call more than once."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._engine.dispose()
