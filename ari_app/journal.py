"""The local journal: every entry's start and outcome, durable on the app's own disk before
the channel goes back to the dialplan, then drained into the central database.

Why: the central database may be slow, restarting or unreachable, and a caller who has keyed
an answer must neither wait for it nor lose the answer. :class:`Journal` is the sessions'
:class:`~ari_app.ports.EntryStore`: ``record_start`` and ``record_outcome`` return once the
record is committed to an embedded SQLite database (milliseconds). A drain task then writes
the records, oldest first, into the :class:`~ari_app.store.repository.Store`, retrying with
capped exponential backoff while the database fails, and deletes each record only once the
database holds it. What is left when the process stops is replayed on the next start.

- **Group commit.** One writer thread owns the SQLite connection: it takes every job queued
  since its last commit and runs them in one transaction (again with a savepoint each when one
  fails, so that the failure is that job's alone), so fifty calls finishing together cost one
  fsync, not fifty. The event loop never touches SQLite.
- **Durability.** WAL with ``synchronous=FULL``: each commit fsyncs the WAL before the caller
  is told it is stored, so a record survives a power cut as well as a crash. (``NORMAL`` in
  WAL mode survives a crash but may lose the last commits on power loss, which here would be
  answers a caller heard accepted; group commit keeps the extra fsync cheap.) A record is
  deleted once the database's commit returns, so an SQLite database commits with ``FULL``
  too, and PostgreSQL's default ``synchronous_commit=on`` is what it relies on there.
- **Idempotence.** Records carry the entry's key (a UUIDv7 made by the session); the store's
  ``start_entries`` finds an existing row by key, and an outcome already stored is skipped, so a
  replay after a crash between the database's commit and the journal's delete stores nothing
  twice.
- **Interrupted entries.** On open, an entry whose start is in the journal without an
  outcome (the process died mid-entry) gets an ``interrupted`` outcome ("server restarted"),
  as the store's ``mark_stale_in_progress`` does for rows started in the database.
- **Sensitive digits.** The journal holds exactly what the database will: the session's
  outcome is already masked and hashed, and its utterance transcripts redacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from ari_app.metrics import Metrics
from ari_app.store.records import (
    STALE_ERROR,
    STATUS_INTERRUPTED,
    EntryOutcome,
    EntryStart,
    StoredEvent,
)
from ari_app.store.repository import EntryAlreadyFinishedError, Store

__all__ = ["Journal", "JournalBacklog", "JournalError"]

log = logging.getLogger(__name__)

KIND_START: Final = "start"
KIND_OUTCOME: Final = "outcome"
# Records drained per round: enough for the store to group-commit a burst of outcomes.
DRAIN_BATCH: Final = 200
# After a record wakes the drain, it waits this long for more before writing to the database:
# at 50 calls a second a transaction then carries several records instead of one each (the
# hand-back never waits for the drain; the database row comes this much later).
DRAIN_GATHER_S: Final = 0.2
KEPT_DECODED: Final = 10_000  # records kept as objects for the drain (see Journal._appended)
RETRY_FIRST_S: Final = 0.2
RETRY_MAX_S: Final = 5.0
# On shutdown, how long the drain may still write before what is left waits for the next start.
CLOSE_DRAIN_S: Final = 5.0
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    entry_key TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('start', 'outcome')),
    body TEXT NOT NULL,
    written_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS records_entry_key ON records (entry_key, kind);
"""

T = TypeVar("T")


class JournalError(RuntimeError):
    """The journal could not be opened or written (disk full, read-only, corrupt)."""


@dataclass(frozen=True)
class JournalBacklog:
    """What the journal holds that the central database does not have yet."""

    records: int
    oldest_age_s: float | None  # None: nothing waiting
    database_failing: bool  # the drain's last write to the database failed
    journal_failing: bool  # the journal's last write failed (the disk)


@dataclass(frozen=True)
class _Record:
    seq: int
    entry_key: str
    kind: str
    body: str


# --- records as JSON --------------------------------------------------------------------


def _fields(record: EntryStart | EntryOutcome | StoredEvent) -> dict[str, Any]:
    """A record's fields, one level deep: ``dataclasses.asdict`` deep-copies every value on
    the way, which showed in the profile of a busy server."""
    return {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}


def _start_json(start: EntryStart) -> str:
    fields = _fields(start)
    fields["started_at"] = start.started_at.isoformat()
    return json.dumps(fields)


def _start_from_json(body: str) -> EntryStart:
    fields = json.loads(body)
    fields["started_at"] = datetime.fromisoformat(fields["started_at"])
    return EntryStart(**fields)


def _outcome_json(outcome: EntryOutcome) -> str:
    fields = _fields(outcome)
    fields["ended_at"] = outcome.ended_at.isoformat()
    fields["events"] = [_fields(event) for event in outcome.events]
    return json.dumps(fields)


def _outcome_from_json(body: str) -> EntryOutcome:
    fields = json.loads(body)
    fields["ended_at"] = datetime.fromisoformat(fields["ended_at"])
    fields["events"] = tuple(StoredEvent(**event) for event in fields["events"])
    return EntryOutcome(**fields)


def _interrupted_outcome() -> EntryOutcome:
    return EntryOutcome(
        status=STATUS_INTERRUPTED,
        user_input=None,
        input_hash=None,
        terminated_by=None,
        attempts=0,
        confirmed="not_asked",
        error=STALE_ERROR,
        ended_at=datetime.now(UTC),
    )


# --- the writer thread ------------------------------------------------------------------


@dataclass
class _Job(Generic[T]):
    work: Callable[[sqlite3.Connection], T]
    done: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.done():  # the awaiting task was cancelled meanwhile
        return
    if error is None:
        done.set_result(result)
    else:
        done.set_exception(error)


class _SqliteWriter:
    """One thread, one connection: every job queued since the last commit in one transaction."""

    def __init__(self, path: Path, *, max_bytes: int | None) -> None:
        self._path = path
        self._max_bytes = max_bytes
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._opened: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        # (records, written_at of the oldest): refreshed after each commit, read by the loop.
        self.backlog: tuple[int, float | None] = (0, None)

    def start(self) -> None:
        """Open the database in the thread; raise JournalError when it cannot be opened."""
        self._thread.start()
        error = self._opened.get()
        if error is not None:
            self._thread.join()
            raise JournalError(f"cannot open the journal at {self._path}: {error}") from error

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(work, done, loop))
        return await done

    def stop(self) -> None:
        """Finish the queued jobs, close the connection, end the thread (blocks: run it in a
        thread)."""
        self._jobs.put(None)
        self._thread.join()

    def _connect(self) -> sqlite3.Connection:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE ... COMMIT below).
        connection = sqlite3.connect(self._path, isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            if self._max_bytes is not None:
                page_size = int(connection.execute("PRAGMA page_size").fetchone()[0])
                pages = max(1, self._max_bytes // page_size)
                connection.execute(f"PRAGMA max_page_count={pages}")
            connection.executescript(_SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    def _run(self) -> None:
        try:
            connection = self._connect()
        except Exception as exc:
            self._opened.put(exc)
            return
        try:
            self._refresh_backlog(connection)
        except Exception as exc:
            connection.close()
            self._opened.put(exc)
            return
        self._opened.put(None)
        try:
            while True:
                first = self._jobs.get()
                if first is None:
                    return
                jobs = [first]
                stopping = False
                with contextlib.suppress(queue.Empty):
                    while len(jobs) < 1000:
                        job = self._jobs.get_nowait()
                        if job is None:
                            stopping = True
                            break
                        jobs.append(job)
                self._commit(connection, jobs)
                if stopping:
                    return
        finally:
            connection.close()

    def _commit(self, connection: sqlite3.Connection, jobs: Sequence[_Job[Any]]) -> None:
        outcomes: list[tuple[_Job[Any], Any, BaseException | None]]
        try:
            outcomes = self._transaction(connection, jobs, each_alone=False)
        except Exception:
            # A job failed: run the batch again, each job in a savepoint, so that one job's
            # failure (a full disk mid-batch) is its own. Only then: two more statements a job.
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            try:
                outcomes = self._transaction(connection, jobs, each_alone=True)
            except Exception as exc:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
                outcomes = [(job, None, exc) for job in jobs]
        with contextlib.suppress(sqlite3.Error):
            self._refresh_backlog(connection)
        for job, result, error in outcomes:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
                job.loop.call_soon_threadsafe(_settle, job.done, result, error)

    @staticmethod
    def _transaction(
        connection: sqlite3.Connection, jobs: Sequence[_Job[Any]], *, each_alone: bool
    ) -> list[tuple[_Job[Any], Any, BaseException | None]]:
        """Run ``jobs`` in one transaction and commit it. ``each_alone``: each job in a
        savepoint, its failure rolled back and kept as its outcome; otherwise one raises."""
        outcomes: list[tuple[_Job[Any], Any, BaseException | None]] = []
        connection.execute("BEGIN IMMEDIATE")
        for job in jobs:
            if not each_alone:
                outcomes.append((job, job.work(connection), None))
                continue
            connection.execute("SAVEPOINT job")
            try:
                result = job.work(connection)
            except Exception as exc:
                if not connection.in_transaction:
                    # SQLite rolled the whole transaction back itself (SQLITE_FULL, an I/O
                    # error): the jobs before this one are lost with it.
                    raise
                connection.execute("ROLLBACK TO job")
                outcomes.append((job, None, exc))
            else:
                outcomes.append((job, result, None))
            connection.execute("RELEASE job")
        connection.execute("COMMIT")
        return outcomes

    def _refresh_backlog(self, connection: sqlite3.Connection) -> None:
        count = int(connection.execute("SELECT count(*) FROM records").fetchone()[0])
        oldest = connection.execute(
            "SELECT written_at FROM records ORDER BY seq LIMIT 1"
        ).fetchone()
        self.backlog = (count, None if oldest is None else float(oldest[0]))


# --- jobs run in the writer thread ------------------------------------------------------


def _append(entry_key: str, kind: str, body: str) -> Callable[[sqlite3.Connection], None]:
    def work(connection: sqlite3.Connection) -> None:
        connection.execute(
            "INSERT INTO records (entry_key, kind, body, written_at) VALUES (?, ?, ?, ?)",
            (entry_key, kind, body, time.time()),
        )

    return work


def _oldest(limit: int) -> Callable[[sqlite3.Connection], list[_Record]]:
    def work(connection: sqlite3.Connection) -> list[_Record]:
        rows = connection.execute(
            "SELECT seq, entry_key, kind, body FROM records ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [_Record(*row) for row in rows]

    return work


def _delete(seqs: Sequence[int]) -> Callable[[sqlite3.Connection], None]:
    def work(connection: sqlite3.Connection) -> None:
        connection.executemany("DELETE FROM records WHERE seq = ?", [(seq,) for seq in seqs])

    return work


def _interrupt_unfinished(connection: sqlite3.Connection) -> int:
    unfinished = connection.execute(
        "SELECT entry_key FROM records AS s WHERE kind = 'start' AND NOT EXISTS"
        " (SELECT 1 FROM records AS o WHERE o.entry_key = s.entry_key AND o.kind = 'outcome')"
        " ORDER BY seq"
    ).fetchall()
    body = _outcome_json(_interrupted_outcome())
    for (entry_key,) in unfinished:
        _append(entry_key, KIND_OUTCOME, body)(connection)
    return len(unfinished)


# --- the journal ------------------------------------------------------------------------


class Journal:
    """The sessions' entry store in the service: local first, the database behind it."""

    def __init__(self, writer: _SqliteWriter, store: Store, metrics: Metrics) -> None:
        self._writer = writer
        self._store = store
        self._metrics = metrics
        self._work = asyncio.Event()
        # Set while the journal holds nothing the database lacks.
        self._empty = asyncio.Event()
        if not writer.backlog[0]:
            self._empty.set()
        self._drainer: asyncio.Task[None] | None = None
        # Integer ids of entries whose start the drain stored, until their outcome is stored.
        self._entry_ids: dict[str, int] = {}
        # The records this run appends, as objects, by (entry key, kind): the drain need not
        # decode them again (it did, for every record, and it showed in the profile of a busy
        # server). Bounded: past it (a long database outage) they are decoded from the journal.
        self._appended: dict[tuple[str, str], EntryStart | EntryOutcome] = {}
        self._database_failing = False
        self._journal_failing = False
        metrics.watch_journal(self.backlog)

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], store: Store, *, metrics: Metrics, max_bytes: int | None
    ) -> Journal:
        """Open (or create) the journal at ``path``; entries a previous run left unfinished
        become ``interrupted``. Raises JournalError when it cannot be opened."""
        writer = _SqliteWriter(Path(path), max_bytes=max_bytes)
        await asyncio.to_thread(writer.start)
        journal = cls(writer, store, metrics)
        try:
            interrupted = await writer.run(_interrupt_unfinished)
        except BaseException:
            await asyncio.to_thread(writer.stop)
            raise
        if interrupted:
            log.warning(
                "journal: %d entries a previous run left unfinished are now interrupted",
                interrupted,
            )
        return journal

    # --- EntryStore (ari_app.ports) -----------------------------------------------------

    async def record_start(self, start: EntryStart) -> None:
        if start.entry_key is None:
            raise ValueError("a journaled entry needs its key")
        await self._append(start.entry_key, KIND_START, _start_json(start), start)

    async def record_outcome(self, entry_key: str, outcome: EntryOutcome) -> None:
        await self._append(entry_key, KIND_OUTCOME, _outcome_json(outcome), outcome)

    async def _append(
        self, entry_key: str, kind: str, body: str, record: EntryStart | EntryOutcome
    ) -> None:
        if len(self._appended) < KEPT_DECODED:
            # Before the append: the drain may read the record before this coroutine resumes.
            self._appended[entry_key, kind] = record
        try:
            await self._writer.run(_append(entry_key, kind, body))
        except sqlite3.Error as exc:
            self._appended.pop((entry_key, kind), None)
            self._journal_failing = True
            self._metrics.journal_write_failed()
            raise JournalError(f"the journal could not record entry {entry_key}: {exc}") from exc
        self._journal_failing = False
        self._empty.clear()
        self._work.set()

    # --- state --------------------------------------------------------------------------

    def backlog(self) -> JournalBacklog:
        records, oldest = self._writer.backlog
        return JournalBacklog(
            records=records,
            oldest_age_s=None if oldest is None else max(0.0, time.time() - oldest),
            database_failing=self._database_failing,
            journal_failing=self._journal_failing,
        )

    # --- the drain ----------------------------------------------------------------------

    async def replay(self) -> int:
        """Write everything the journal holds into the database now, once, and return how
        many records that was (at start, before the sessions open); raises when the database
        fails."""
        written = 0
        while records := await self._writer.run(_oldest(DRAIN_BATCH)):
            await self._send(records)
            written += len(records)
        return written

    def start_draining(self) -> None:
        self._work.set()
        self._drainer = asyncio.create_task(self._drain_forever(), name="journal-drain")

    async def wait_drained(self, within: float) -> None:
        """Return once nothing is waiting for the database (tests, benches)."""
        async with asyncio.timeout(within):
            await self._empty.wait()

    async def _drain_forever(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            await self._work.wait()
            await asyncio.sleep(DRAIN_GATHER_S)
            # Cleared before reading: a record appended from here on sets it again.
            self._work.clear()
            while True:
                try:
                    records = await self._writer.run(_oldest(DRAIN_BATCH))
                    if not records:
                        break
                    await self._send(records)
                except Exception as exc:
                    self._metrics.journal_database_failed()
                    if not self._database_failing:
                        log.error(
                            "journal: the database failed (%s); %d records kept on disk, "
                            "retrying with backoff up to %.0f s",
                            exc,
                            self._writer.backlog[0],
                            RETRY_MAX_S,
                        )
                    self._database_failing = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                if self._database_failing:
                    log.warning("journal: the database answers again; replaying the backlog")
                self._database_failing = False
                delay = RETRY_FIRST_S

    async def _send(self, records: Sequence[_Record]) -> None:
        """Store ``records`` in the database, then delete them from the journal. Starts go
        first, in one transaction; the outcomes then run together so that the store group-commits
        them. On any failure nothing is deleted: the retry's writes are idempotent."""
        starts = [record for record in records if record.kind == KIND_START]
        if starts:
            ids = await self._store.start_entries([self._start_of(r) for r in starts])
            self._entry_ids.update(zip((r.entry_key for r in starts), ids, strict=True))
        outcomes = [record for record in records if record.kind == KIND_OUTCOME]
        failures = [
            result
            for result in await asyncio.gather(
                *(self._send_outcome(record) for record in outcomes), return_exceptions=True
            )
            if isinstance(result, BaseException)
        ]
        if failures:
            raise failures[0]
        await self._writer.run(_delete([record.seq for record in records]))
        for record in records:
            self._appended.pop((record.entry_key, record.kind), None)
        self._metrics.journal_replayed(len(outcomes))
        if not self._writer.backlog[0]:
            self._empty.set()

    async def _send_outcome(self, record: _Record) -> None:
        entry_id = self._entry_ids.get(record.entry_key)
        if entry_id is None:
            entry_id = await self._store.entry_id_for_key(record.entry_key)
        if entry_id is None:
            # Its start was stored and deleted from the journal, so the row is gone from the
            # database since (deleted by hand, or a restored backup): nowhere to put it.
            log.error(
                "journal: entry %s has no row in the database; its outcome is dropped",
                record.entry_key,
            )
            return
        try:
            await self._store.finish_entry(entry_id, self._outcome_of(record))
        except EntryAlreadyFinishedError:
            pass  # stored by a drain that died before deleting the record: a replay
        except ValueError as exc:
            # The store refuses it, and would at every retry: keeping it would stall the
            # drain behind it for good.
            log.error(
                "journal: entry %s: the database refuses its outcome (%s); dropped",
                record.entry_key,
                exc,
            )
        self._entry_ids.pop(record.entry_key, None)

    def _start_of(self, record: _Record) -> EntryStart:
        start = self._appended.get((record.entry_key, record.kind))
        return start if isinstance(start, EntryStart) else _start_from_json(record.body)

    def _outcome_of(self, record: _Record) -> EntryOutcome:
        outcome = self._appended.get((record.entry_key, record.kind))
        return outcome if isinstance(outcome, EntryOutcome) else _outcome_from_json(record.body)

    async def close(self) -> None:
        """Drain for up to CLOSE_DRAIN_S more (unless the database is failing), then stop; what
        is left waits on disk for the next start."""
        if self._drainer is not None:
            if not self._database_failing:  # a database that fails would only use the time up
                with contextlib.suppress(TimeoutError):
                    await self.wait_drained(CLOSE_DRAIN_S)
            self._drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drainer
        await asyncio.to_thread(self._writer.stop)
        records = self._writer.backlog[0]
        if records:
            log.warning("journal: %d records wait on disk for the database (next start)", records)
