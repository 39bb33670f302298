"""The local journal (ari_app.journal): nothing lost, nobody waits.

Entries run through the real session runner (:class:`ari_app.session.Sessions`) and the real
store on SQLite, with the journal in between; the database is made slow or down by a switch
in front of the store. The hand-back is timed from the last key to the channel's release.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from ari_app import journal as journal_module
from ari_app.doctor.journal import check_journal
from ari_app.doctor.report import Status as DoctorStatus
from ari_app.entry_key import is_entry_key, new_entry_key
from ari_app.http import running_http_api
from ari_app.journal import Journal, JournalError
from ari_app.media import MediaItem
from ari_app.metrics import Metrics
from ari_app.ports import CallInfo
from ari_app.session import Sessions
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.models import entries_table
from ari_app.store.records import EntryOutcome, EntryStart
from ari_app.store.repository import Store
from tests.test_http_api import check_schema
from tests.test_metrics import scraped, scraped_value

# What a healthy local journal commit costs is milliseconds; a database statement here takes
# a second, so anything that waited for the database would take at least two.
HANDBACK_LIMIT_S = 0.5
SLOW_STATEMENT_S = 1.0


class SwitchedStore(Store):
    """The real store behind a switch: each statement delayed, or the database down."""

    delay_s = 0.0
    down = False

    async def _reach(self) -> None:
        if self.down:
            raise ConnectionRefusedError("the database is down (test switch)")
        await asyncio.sleep(self.delay_s)

    async def start_entries(self, starts: Sequence[EntryStart]) -> list[int]:
        await self._reach()
        return await super().start_entries(starts)

    async def entry_id_for_key(self, entry_key: str) -> int | None:
        await self._reach()
        return await super().entry_id_for_key(entry_key)

    async def finish_entry(self, entry_id: int, outcome: EntryOutcome) -> None:
        await self._reach()
        await super().finish_entry(entry_id, outcome)


class HandBackPort:
    """A channel that notes when it went back to the dialplan, and with what."""

    def __init__(self, channel_id: str = "") -> None:
        self.channel_id = channel_id
        self.variables: dict[str, str] = {}
        self.released = asyncio.Event()
        self.released_at = 0.0

    async def answer(self) -> None:
        pass

    async def play(self, playback_id: str, media: Sequence[MediaItem]) -> None:
        pass

    async def stop_playback(self, playback_id: str) -> None:
        pass

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        self.variables = dict(variables)

    async def release(self) -> None:
        self.released_at = asyncio.get_running_loop().time()
        self.released.set()


async def keyed_entry(
    sessions: Sessions, channel_id: str, digits: str
) -> tuple[HandBackPort, float]:
    """One caller keying ``digits`` into num_digits=len(digits): the port and the seconds from
    the last key to the hand-back."""
    info = CallInfo(channel_id, f"PJSIP/{channel_id}", "5551234", None, None, "ari", False)
    port = HandBackPort(channel_id)
    session = sessions.open(channel_id, info, [f"num_digits={len(digits)}", "label=pin"], port)
    sessions.start(channel_id, session, lambda _inbox: None)
    await asyncio.sleep(0.01)
    for digit in digits:
        session.deliver_digit(digit)
    last_key_at = asyncio.get_running_loop().time()
    async with asyncio.timeout(5):
        await port.released.wait()
    return port, port.released_at - last_key_at


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SwitchedStore]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'central.sqlite3'}"
    await upgrade_to_head_async(url)
    store = SwitchedStore.from_url(url)
    try:
        yield store
    finally:
        await store.close()


async def open_journal(
    path: Path, store: Store, metrics: Metrics | None = None, *, max_bytes: int | None = None
) -> Journal:
    journal = await Journal.open(
        path, store, metrics=metrics or Metrics(), max_bytes=max_bytes or 64 * 1024 * 1024
    )
    await journal.replay()
    journal.start_draining()
    return journal


async def count_entries(store: Store) -> int:
    async with store.engine.connect() as conn:
        return int(
            (await conn.execute(select(func.count()).select_from(entries_table))).scalar_one()
        )


async def test_a_slow_database_does_not_delay_the_hand_back(
    store: SwitchedStore, tmp_path: Path
) -> None:
    journal = await open_journal(tmp_path / "journal.sqlite3", store)
    store.delay_s = SLOW_STATEMENT_S
    sessions = Sessions(journal, hash_key="k", metrics=Metrics())
    try:
        results = await asyncio.gather(*(keyed_entry(sessions, f"c{i}", "1234") for i in range(3)))
        for port, handback_s in results:
            assert port.variables["DIGITS_STATUS"] == "completed"
            assert handback_s < HANDBACK_LIMIT_S
        await journal.wait_drained(within=30)
        for port, _ in results:
            entry = await store.get_entry_by_key(port.variables["DIGITS_ID"])
            assert entry is not None
            assert (entry.status, entry.user_input) == ("completed", "1234")
    finally:
        await journal.close()


async def test_without_the_journal_the_caller_waits_for_the_database(
    store: SwitchedStore,
) -> None:
    """The control for the test above: the same entry straight into the slow store."""
    store.delay_s = SLOW_STATEMENT_S
    sessions = Sessions(store, hash_key="k", metrics=Metrics())
    port, handback_s = await keyed_entry(sessions, "c1", "1234")
    assert port.variables["DIGITS_STATUS"] == "completed"
    assert handback_s >= SLOW_STATEMENT_S


# 5 kept: a backlog past what the journal keeps as objects is decoded from its records.
@pytest.mark.parametrize("kept_decoded", [journal_module.KEPT_DECODED, 5])
async def test_a_database_outage_loses_nothing_and_delays_nobody(
    store: SwitchedStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    kept_decoded: int,
) -> None:
    monkeypatch.setattr(journal_module, "KEPT_DECODED", kept_decoded)
    metrics = Metrics()
    journal = await open_journal(tmp_path / "journal.sqlite3", store, metrics)
    sessions = Sessions(journal, hash_key="k", metrics=Metrics())
    try:
        store.down = True
        during = await asyncio.gather(
            *(keyed_entry(sessions, f"c{i}", f"{i:04}") for i in range(20))
        )
        assert all(port.variables["DIGITS_STATUS"] == "completed" for port, _ in during)
        assert max(handback_s for _, handback_s in during) < HANDBACK_LIMIT_S
        await asyncio.sleep(0.5)  # the drain tries, fails, backs off
        backlog = journal.backlog()
        assert backlog.records == 40  # a start and an outcome per entry
        assert backlog.database_failing and not backlog.journal_failing
        assert backlog.oldest_age_s is not None and backlog.oldest_age_s > 0
        assert "journal: the database failed" in caplog.text
        assert await count_entries(store) == 0

        store.down = False
        await journal.wait_drained(within=30)
        assert await count_entries(store) == 20  # every one, none twice
        for i, (port, _) in enumerate(during):
            entry = await store.get_entry_by_key(port.variables["DIGITS_ID"])
            assert entry is not None
            assert (entry.status, entry.user_input, entry.channel_id) == (
                "completed",
                f"{i:04}",
                f"c{i}",
            )
        assert not journal.backlog().database_failing
        samples = scraped(metrics.exposition("")[0].decode())
        assert scraped_value(samples, "ari_digits_journal_records") == 0
        assert scraped_value(samples, "ari_digits_journal_replayed_entries_total") == 20
        assert scraped_value(samples, "ari_digits_journal_database_failures_total") >= 1
    finally:
        await journal.close()


async def test_readyz_stays_ready_and_shows_the_backlog_during_an_outage(
    store: SwitchedStore, tmp_path: Path
) -> None:
    journal = await open_journal(tmp_path / "journal.sqlite3", store)
    sessions = Sessions(journal, hash_key="k", metrics=Metrics())
    try:
        store.down = True
        await keyed_entry(sessions, "c1", "1234")
        # The probe pings the database through the same store, so the switch applies to it.
        store.ping = _refuse  # type: ignore[method-assign]
        async with (
            running_http_api(
                store, host="127.0.0.1", port=0, token="", journal_backlog=journal.backlog
            ) as server,
            aiohttp.ClientSession() as http,
            http.get(f"{server.url}/readyz") as response,
        ):
            body = await response.json()
            assert response.status == 200
        assert body["status"] == "ready"
        assert body["checks"] == {"database": "degraded", "journal": "ok"}
        assert body["not_ready"] == []
        assert body["journal"]["backlog"] == 2
        assert body["journal"]["oldest_unsent_s"] >= 0
        check_schema("Readiness", body)
        store.down = False
        await journal.wait_drained(within=30)
    finally:
        await journal.close()


async def _refuse() -> None:
    raise ConnectionRefusedError("down")


async def test_a_restart_replays_the_journal_and_interrupts_unfinished_entries(
    store: SwitchedStore, tmp_path: Path
) -> None:
    path = tmp_path / "journal.sqlite3"
    store.down = True
    journal = await Journal.open(path, store, metrics=Metrics(), max_bytes=None)
    sessions = Sessions(journal, hash_key="k", metrics=Metrics())
    finished, _ = await keyed_entry(sessions, "done", "4321")
    # An entry still collecting when the process dies: its start is journaled, nothing else.
    info = CallInfo("cut", "PJSIP/cut", None, None, None, "ari", False)
    cut = sessions.open("cut", info, ["num_digits=4"], HandBackPort())
    sessions.start("cut", cut, lambda _inbox: None)
    await asyncio.sleep(0.05)
    # The process "dies": the writer stops, nothing else runs (no drain, no outcome).
    await asyncio.to_thread(journal._writer.stop)
    for task in sessions.tasks:
        task.cancel()
    await asyncio.gather(*sessions.tasks, return_exceptions=True)

    store.down = False
    # The drain of the earlier run had stored the finished entry but died before deleting its
    # records: the replay must not store it twice.
    start = dataclasses.replace(
        EntryStart(
            "done", "PJSIP/done", None, None, None, {}, "ari", None, datetime.now(UTC), True
        ),
        entry_key=finished.variables["DIGITS_ID"],
    )
    await store.start_entry(start)

    reopened = await Journal.open(path, store, metrics=Metrics(), max_bytes=None)
    try:
        assert await reopened.replay() == 4
        assert reopened.backlog().records == 0
        assert await count_entries(store) == 2
        done = await store.get_entry_by_key(finished.variables["DIGITS_ID"])
        assert done is not None
        assert (done.status, done.user_input) == ("completed", "4321")
        interrupted = await store.get_entry_by_key(cut.entry_key)
        assert interrupted is not None
        assert (interrupted.status, interrupted.error) == ("interrupted", "server restarted")
    finally:
        await reopened.close()


async def test_sensitive_digits_never_reach_the_journal_in_clear(
    store: SwitchedStore, tmp_path: Path
) -> None:
    path = tmp_path / "journal.sqlite3"
    store.down = True
    journal = await open_journal(path, store)
    sessions = Sessions(journal, hash_key="k", metrics=Metrics())
    info = CallInfo("s", "PJSIP/s", None, None, None, "ari", False)
    port = HandBackPort()
    session = sessions.open("s", info, ["num_digits=6", "sensitive=yes"], port)
    sessions.start("s", session, lambda _inbox: None)
    await asyncio.sleep(0.01)
    for digit in "918273":
        session.deliver_digit(digit)
    async with asyncio.timeout(5):
        await port.released.wait()
    assert port.variables["DIGITS"] == "918273"  # the dialplan gets them; the disk must not
    await journal.close()
    files = await asyncio.to_thread(lambda: sorted(tmp_path.glob("journal.sqlite3*")))
    raw = b"".join([await asyncio.to_thread(p.read_bytes) for p in files])
    assert b"918273" not in raw
    assert b"****73" in raw


async def test_a_full_journal_sends_the_call_back_with_status_error(
    store: SwitchedStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "journal.sqlite3"
    await (await Journal.open(path, store, metrics=Metrics(), max_bytes=None)).close()
    metrics = Metrics()
    # Capped at what the empty journal already takes: the first records fill it.
    journal = await open_journal(path, store, metrics, max_bytes=path.stat().st_size)
    store.down = True  # nothing drains: the journal fills
    filler = EntryStart(
        "f", "PJSIP/f", None, None, None, {"pad": "x" * 200}, "ari", None, datetime.now(UTC), False
    )
    with pytest.raises(JournalError, match="full"):
        for n in range(1000):
            await journal.record_start(dataclasses.replace(filler, entry_key=f"filler-{n}"))
    sessions = Sessions(journal, hash_key="k", metrics=Metrics())
    try:
        port, handback_s = await keyed_entry(sessions, "c1", "1234")
        assert port.variables["DIGITS_STATUS"] == "error"
        assert port.variables["DIGITS_ERROR"] == "the entry could not be recorded"
        assert port.variables["DIGITS_ID"] == ""
        assert handback_s < HANDBACK_LIMIT_S
        assert "database or disk is full" in caplog.text
        assert journal.backlog().journal_failing
        samples = scraped(metrics.exposition("")[0].decode())
        assert scraped_value(samples, "ari_digits_journal_write_failures_total") >= 2
    finally:
        await journal.close()


async def test_a_journal_that_cannot_be_opened_is_a_clear_error(
    store: SwitchedStore, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(JournalError, match=f"cannot open the journal at {blocker}/journal"):
        await Journal.open(blocker / "journal.sqlite3", store, metrics=Metrics(), max_bytes=None)


def test_the_journal_is_wal_with_full_sync(tmp_path: Path) -> None:
    """What the durability promise rests on (see ari_app.journal)."""

    async def run() -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'central.sqlite3'}"
        await upgrade_to_head_async(url)
        async with Store.from_url(url) as store:
            await (
                await Journal.open(tmp_path / "j.sqlite3", store, metrics=Metrics(), max_bytes=None)
            ).close()

    asyncio.run(run())
    connection = sqlite3.connect(tmp_path / "j.sqlite3")
    try:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        connection.close()


async def test_doctor_shows_the_journal_state(store: SwitchedStore, tmp_path: Path) -> None:
    path = tmp_path / "var" / "journal.sqlite3"
    fresh = await check_journal(str(path))
    assert (fresh.status, fresh.detail) == (
        DoctorStatus.PASS,
        f"{path} not created yet (serve creates it)",
    )

    store.down = True
    journal = await open_journal(path, store)
    sessions = Sessions(journal, hash_key="k", metrics=Metrics())
    await keyed_entry(sessions, "c1", "1234")
    await journal.close()
    waiting = await check_journal(str(path))
    assert waiting.status is DoctorStatus.WARN
    assert f"{path}: 2 records not yet in the database" in waiting.detail

    store.down = False
    await (await open_journal(path, store)).close()
    empty = await check_journal(str(path))
    assert (empty.status, empty.detail) == (
        DoctorStatus.PASS,
        f"{path}: empty, nothing waits for the database",
    )

    not_a_journal = tmp_path / "other.sqlite3"
    not_a_journal.write_bytes(b"not a database at all" * 100)
    assert (await check_journal(str(not_a_journal))).status is DoctorStatus.FAIL
    under_a_file = await check_journal(str(not_a_journal / "journal.sqlite3"))
    assert under_a_file.status is DoctorStatus.FAIL
    assert "cannot create the journal" in under_a_file.detail


def test_entry_keys_are_uuid7_in_creation_order() -> None:
    keys = [new_entry_key() for _ in range(1000)]
    assert len(set(keys)) == 1000
    assert all(uuid.UUID(key).version == 7 and is_entry_key(key) for key in keys)
    # The first 48 bits are the time in milliseconds: later keys never sort before earlier ones.
    assert [key[:13] for key in keys] == sorted(key[:13] for key in keys)
    assert not is_entry_key("12") and not is_entry_key(str(uuid.uuid4()))


async def test_doctor_reads_a_journal_given_by_a_relative_path(
    store: SwitchedStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default JOURNAL_PATH (var/journal.sqlite3) is relative to serve's directory.
    monkeypatch.chdir(tmp_path)
    await (await open_journal(Path("var/journal.sqlite3"), store)).close()
    result = await check_journal("var/journal.sqlite3")
    assert (result.status, result.detail) == (
        DoctorStatus.PASS,
        "var/journal.sqlite3: empty, nothing waits for the database",
    )


async def test_a_job_that_fails_in_a_batch_fails_alone(tmp_path: Path) -> None:
    writer = journal_module._SqliteWriter(tmp_path / "journal.sqlite3", max_bytes=None)
    await asyncio.to_thread(writer.start)
    try:
        busy = asyncio.ensure_future(writer.run(lambda connection: time.sleep(0.2)))
        await asyncio.sleep(0.05)  # the writer is in that job: the next ones queue as one batch
        results = await asyncio.gather(
            writer.run(journal_module._append("a", "start", "{}")),
            writer.run(journal_module._append("b", "bogus", "{}")),  # the kind CHECK refuses it
            writer.run(journal_module._append("c", "outcome", "{}")),
            return_exceptions=True,
        )
        await busy
        assert results[0] is None and results[2] is None
        assert isinstance(results[1], sqlite3.IntegrityError)
        kept = await writer.run(journal_module._oldest(10))
        assert [(r.entry_key, r.kind) for r in kept] == [("a", "start"), ("c", "outcome")]
    finally:
        await asyncio.to_thread(writer.stop)
