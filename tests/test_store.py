"""ari_app.store.Store on SQLite and PostgreSQL (schema created by the real migrations)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Table, delete, func, select, text

from ari_app.entry_key import is_entry_key, new_entry_key
from ari_app.store import (
    EntryAlreadyFinishedError,
    EntryNotFoundError,
    EntryOutcome,
    EntryStart,
    Store,
    StoredEntry,
    StoredEvent,
    normalize_url,
)
from ari_app.store.models import entries_table, entry_events_table
from tests import pg

T0 = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
async def store(migrated_db_url: str) -> AsyncIterator[Store]:
    s = Store.from_url(migrated_db_url)
    try:
        # The PostgreSQL database is shared by the module: start each test empty.
        async with s.engine.begin() as conn:
            await conn.execute(delete(entries_table))
        yield s
    finally:
        await s.close()


# --------------------------------------------------------------------------- helpers


def make_start(
    *,
    channel_id: str = "1700000000.1",
    label: str | None = "account",
    caller_number: str | None = "+15551234567",
    started_at: datetime = T0,
    sensitive: bool = False,
) -> EntryStart:
    return EntryStart(
        channel_id=channel_id,
        channel_name=f"PJSIP/alice-{channel_id}",
        caller_number=caller_number,
        caller_name="Alice Ünïcode",
        label=label,
        parameters={"min_digits": 4, "max_digits": 8, "confirm": True, "tags": ["a", "b"]},
        transport="ari",
        asterisk_id="00:11:22:33:44:55",
        started_at=started_at,
        sensitive=sensitive,
    )


EVENTS = (
    StoredEvent(kind="prompt", attempt=1, at_ms=0, detail="sound:enter-account"),
    StoredEvent(kind="attempt", attempt=1, at_ms=5, detail="start"),
    StoredEvent(kind="digit", attempt=1, at_ms=1200, digit="1", source="key", duration_ms=90),
    StoredEvent(kind="digit", attempt=1, at_ms=1500, digit="2", source="key", duration_ms=80),
    StoredEvent(
        kind="utterance",
        attempt=1,
        at_ms=2100,
        source="voice",
        detail="what was that",
        rejected="not_digits",
    ),
    StoredEvent(kind="utterance", attempt=1, at_ms=2300, source="voice", rejected="no_speech"),
    StoredEvent(kind="utterance", attempt=1, at_ms=2500, source="voice", detail="three four"),
    StoredEvent(kind="digit", attempt=1, at_ms=2600, digit="3", source="voice", confidence=0.93),
    StoredEvent(kind="digit", attempt=1, at_ms=2601, digit="4", source="voice", confidence=1.0),
    StoredEvent(kind="confirmation", attempt=1, at_ms=4000, digit="1", detail="yes"),
    StoredEvent(kind="note", attempt=1, at_ms=4001, detail=None),
)


def make_outcome(
    *,
    status: str = "completed",
    ended_at: datetime = T0 + timedelta(seconds=5),
    events: tuple[StoredEvent, ...] = EVENTS,
    user_input: str | None = "1234",
    input_hash: str | None = None,
) -> EntryOutcome:
    return EntryOutcome(
        status=status,
        user_input=user_input,
        input_hash=input_hash,
        terminated_by="#",
        attempts=1,
        confirmed="yes",
        error=None,
        ended_at=ended_at,
        events=events,
    )


async def count_rows(store: Store, table: Table) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())


# --------------------------------------------------------------------------- tests


async def test_round_trip(store: Store) -> None:
    # Non-UTC but aware start time: stored and returned as the same instant, in UTC.
    start = dataclasses.replace(
        make_start(started_at=T0.astimezone(timezone(timedelta(hours=2)))),
        entry_key=new_entry_key(),
    )
    entry_id = await store.start_entry(start)
    assert isinstance(entry_id, int)

    in_progress = await store.get_entry(entry_id)
    assert in_progress == StoredEntry(
        id=entry_id,
        channel_id=start.channel_id,
        channel_name=start.channel_name,
        caller_number=start.caller_number,
        caller_name=start.caller_name,
        label=start.label,
        parameters=start.parameters,
        transport="ari",
        asterisk_id=start.asterisk_id,
        started_at=T0,
        sensitive=False,
        status="in_progress",
        user_input=None,
        input_hash=None,
        terminated_by=None,
        attempts=0,
        confirmed="not_asked",
        error=None,
        ended_at=None,
        events=(),
        entry_key=start.entry_key,
    )
    assert in_progress.started_at.tzinfo is UTC

    outcome = make_outcome()
    await store.finish_entry(entry_id, outcome)

    got = await store.get_entry(entry_id)
    assert got is not None
    assert got.status == "completed"
    assert got.user_input == "1234"
    assert got.terminated_by == "#"
    assert got.attempts == 1
    assert got.confirmed == "yes"
    assert got.error is None
    assert got.ended_at == outcome.ended_at
    assert got.ended_at is not None and got.ended_at.tzinfo is UTC
    assert got.started_at == T0
    assert got.parameters == start.parameters
    assert got.events == EVENTS  # same order, every field preserved
    assert [e.confidence for e in got.events if e.confidence is not None] == [0.93, 1.0]
    assert [e.rejected for e in got.events if e.rejected] == ["not_digits", "no_speech"]


async def test_a_start_replayed_under_its_key_finds_its_row(store: Store) -> None:
    """The journal's drain may store a start twice (a crash between the database's commit
    and the journal's delete): one row, one id."""
    start = dataclasses.replace(make_start(), entry_key=new_entry_key())
    first = await store.start_entry(start)
    again = await store.start_entry(start)
    assert again == first
    assert await count_rows(store, entries_table) == 1
    other = await store.start_entry(dataclasses.replace(start, entry_key=new_entry_key()))
    assert other != first


async def test_a_batch_of_starts_is_stored_once_each_in_its_order(store: Store) -> None:
    starts = [
        dataclasses.replace(make_start(channel_id=f"c{i}"), entry_key=new_entry_key())
        for i in range(5)
    ]
    replayed = await store.start_entry(starts[2])  # stored before, by an earlier drain
    ids = await store.start_entries(starts)
    assert ids[2] == replayed and len(set(ids)) == 5
    assert await count_rows(store, entries_table) == 5
    for start, entry_id in zip(starts, ids, strict=True):
        entry = await store.get_entry(entry_id)
        assert entry is not None and entry.channel_id == start.channel_id
    assert await store.start_entries(starts) == ids


async def test_entries_are_found_and_finished_by_their_key(store: Store) -> None:
    key = new_entry_key()
    await store.record_start(dataclasses.replace(make_start(), entry_key=key))
    await store.record_outcome(key, make_outcome())
    entry = await store.get_entry_by_key(key)
    assert entry is not None
    assert (entry.entry_key, entry.status, entry.events) == (key, "completed", EVENTS)
    assert await store.get_entry_by_key(new_entry_key()) is None
    with pytest.raises(EntryNotFoundError):
        await store.record_outcome(new_entry_key(), make_outcome())


async def test_a_start_without_a_key_gets_one(store: Store) -> None:
    entry_id = await store.start_entry(make_start())
    entry = await store.get_entry(entry_id)
    assert entry is not None and entry.entry_key is not None
    assert is_entry_key(entry.entry_key)


async def test_get_missing_entry_returns_none(store: Store) -> None:
    assert await store.get_entry(987654321) is None


async def test_finish_without_events(store: Store) -> None:
    entry_id = await store.start_entry(make_start())
    await store.finish_entry(entry_id, make_outcome(status="no_input", events=(), user_input=None))
    got = await store.get_entry(entry_id)
    assert got is not None
    assert got.status == "no_input"
    assert got.events == ()


async def test_a_lone_surrogate_is_stored_as_a_replacement_character(store: Store) -> None:
    # JSON's "\ud800" escape decodes to a str neither database takes: one such event must not
    # fail the write, nor stall the journal's drain behind it at every retry.
    odd = "x\ud800y"
    start = dataclasses.replace(make_start(label=odd), channel_name=odd, caller_name=odd)
    entry_id = await store.start_entry(start)
    events = (StoredEvent(kind="utterance", attempt=1, at_ms=10, source="voice", detail=odd),)
    await store.finish_entry(entry_id, make_outcome(events=events, user_input=None))
    got = await store.get_entry(entry_id)
    assert got is not None
    assert (got.label, got.channel_name, got.caller_name) == ("x\ufffdy",) * 3
    assert got.events[0].detail == "x\ufffdy"


async def test_unlisted_event_kind_is_stored_not_rejected(store: Store) -> None:
    # The engine records e.g. a "stop_key" step; an event kind must never cost the outcome.
    events = (
        StoredEvent(kind="digit", attempt=1, at_ms=10, digit="5", source="key"),
        StoredEvent(kind="stop_key", attempt=1, at_ms=20, detail="#"),
        StoredEvent(kind="some_future_kind_of_32_chars_xx", attempt=2, at_ms=30),
    )
    entry_id = await store.start_entry(make_start())
    await store.finish_entry(entry_id, make_outcome(events=events, user_input="5"))
    got = await store.get_entry(entry_id)
    assert got is not None and got.events == events


async def test_finish_twice_or_missing_is_rejected_and_writes_nothing(store: Store) -> None:
    entry_id = await store.start_entry(make_start())
    await store.finish_entry(entry_id, make_outcome())
    with pytest.raises(EntryAlreadyFinishedError):
        await store.finish_entry(entry_id, make_outcome(status="error", user_input="x"))
    with pytest.raises(EntryNotFoundError):
        await store.finish_entry(entry_id + 1000, make_outcome())
    got = await store.get_entry(entry_id)
    assert got is not None
    assert (got.status, got.user_input, got.events) == ("completed", "1234", EVENTS)
    assert await count_rows(store, entry_events_table) == len(EVENTS)


async def test_invalid_values_are_rejected(store: Store) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.start_entry(make_start(started_at=T0.replace(tzinfo=None)))
    bad_transport = make_start()
    object.__setattr__(bad_transport, "transport", "sip")
    with pytest.raises(ValueError, match="transport"):
        await store.start_entry(bad_transport)
    entry_id = await store.start_entry(make_start())
    with pytest.raises(ValueError, match="status"):
        await store.finish_entry(entry_id, make_outcome(status="in_progress"))
    with pytest.raises(ValueError, match="status"):
        await store.finish_entry(entry_id, make_outcome(status="done"))
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.finish_entry(entry_id, make_outcome(ended_at=T0.replace(tzinfo=None)))
    voice = StoredEvent(kind="digit", attempt=1, at_ms=10, digit="5", source="voice")
    for confidence in (-0.01, 1.5, float("nan")):
        bad = (voice, dataclasses.replace(voice, confidence=confidence))
        with pytest.raises(ValueError, match=r"event 1: confidence must be in 0\.\.1"):
            await store.finish_entry(entry_id, make_outcome(events=bad))
    for reason in ("", "x" * 33):
        bad = (StoredEvent(kind="utterance", attempt=1, at_ms=10, rejected=reason),)
        with pytest.raises(ValueError, match="event 0: rejected must be 1 to 32 characters"):
            await store.finish_entry(entry_id, make_outcome(events=bad))
    got = await store.get_entry(entry_id)
    assert got is not None and got.status == "in_progress"
    # The bounds themselves are accepted.
    edges = (
        dataclasses.replace(voice, confidence=0.0),
        dataclasses.replace(voice, confidence=1.0),
        StoredEvent(kind="utterance", attempt=1, at_ms=20, rejected="x" * 32),
    )
    await store.finish_entry(entry_id, make_outcome(events=edges, user_input="55"))
    got = await store.get_entry(entry_id)
    assert got is not None and got.events == edges


async def test_sensitive_entry_events_are_redacted(store: Store) -> None:
    entry_id = await store.start_entry(make_start(sensitive=True))
    await store.finish_entry(entry_id, make_outcome(user_input="**34", input_hash="ab" * 32))
    got = await store.get_entry(entry_id)
    assert got is not None
    assert got.sensitive is True
    assert (got.user_input, got.input_hash) == ("**34", "ab" * 32)
    assert [e.kind for e in got.events] == [e.kind for e in EVENTS]
    assert {e.digit for e in got.events} == {None, "*"}
    utterances = [e for e in got.events if e.kind == "utterance"]
    # Transcripts are redacted; an utterance without one (no speech) stays without.
    assert [e.detail for e in utterances] == ["[redacted]", None, "[redacted]"]
    prompt = got.events[0]
    assert prompt.detail == "sound:enter-account"
    # Confidences and rejection reasons say nothing about the digits: kept as given.
    assert [(e.confidence, e.rejected) for e in got.events] == [
        (e.confidence, e.rejected) for e in EVENTS
    ]
    assert [e.rejected for e in utterances] == ["not_digits", "no_speech", None]
    assert [e.confidence for e in got.events if e.source == "voice" and e.kind == "digit"] == [
        0.93,
        1.0,
    ]


async def test_list_entries_filters_and_ordering(store: Store) -> None:
    ids: dict[str, int] = {}
    specs = [
        ("a", "account", "completed", 0),
        ("b", "pin", "no_input", 1),
        ("c", "account", "rejected", 2),
        ("d", None, "completed", 3),
        ("e", "account", "completed", 4),
    ]
    for name, label, status, minute in specs:
        entry_id = await store.start_entry(
            make_start(channel_id=name, label=label, started_at=T0 + timedelta(minutes=minute))
        )
        await store.finish_entry(entry_id, make_outcome(status=status))
        ids[name] = entry_id
    # Same start time as "e": ties are broken by id, newest first.
    ids["f"] = await store.start_entry(
        make_start(
            channel_id="f", label="pin", caller_number=None, started_at=T0 + timedelta(minutes=4)
        )
    )

    def names(entries: list[StoredEntry]) -> list[str]:
        return [e.channel_id for e in entries]

    everything = await store.list_entries()
    assert names(everything) == ["f", "e", "d", "c", "b", "a"]
    assert all(e.events == () for e in everything)
    assert everything[0].status == "in_progress"
    full_e = await store.get_entry(ids["e"])
    assert full_e is not None and full_e.events == EVENTS
    assert everything[1] == dataclasses.replace(full_e, events=())

    assert names(await store.list_entries(limit=2)) == ["f", "e"]
    assert names(await store.list_entries(status="completed")) == ["e", "d", "a"]
    assert names(await store.list_entries(label="account")) == ["e", "c", "a"]
    assert names(await store.list_entries(label="account", status="completed", limit=1)) == ["e"]
    assert names(await store.list_entries(status="in_progress")) == ["f"]
    assert names(await store.list_entries(caller_number="+15551234567", label="pin")) == ["b"]
    assert await store.list_entries(status="error") == []
    with pytest.raises(ValueError):
        await store.list_entries(limit=0)


async def test_mark_stale_in_progress(store: Store) -> None:
    old1 = await store.start_entry(make_start(channel_id="old1", started_at=T0))
    old2 = await store.start_entry(
        make_start(channel_id="old2", started_at=T0 + timedelta(minutes=1))
    )
    done = await store.start_entry(make_start(channel_id="done", started_at=T0))
    await store.finish_entry(done, make_outcome())
    new = await store.start_entry(make_start(channel_id="new", started_at=T0 + timedelta(hours=1)))

    before_call = datetime.now(UTC)
    cutoff = (T0 + timedelta(minutes=30)).astimezone(timezone(timedelta(hours=-5)))
    assert await store.mark_stale_in_progress(before=cutoff) == 2

    for entry_id in (old1, old2):
        got = await store.get_entry(entry_id)
        assert got is not None
        assert got.status == "interrupted"
        assert got.error == "server restarted"
        assert got.ended_at is not None and got.ended_at >= before_call - timedelta(seconds=1)
    still_running = await store.get_entry(new)
    assert still_running is not None and still_running.status == "in_progress"
    completed = await store.get_entry(done)
    assert completed is not None and completed.status == "completed" and completed.error is None

    assert await store.mark_stale_in_progress() == 1
    assert await store.mark_stale_in_progress() == 0
    assert [e.status for e in await store.list_entries(status="in_progress")] == []


async def serve_ids(store: Store) -> dict[str, str | None]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(select(entries_table.c.channel_id, entries_table.c.serve_id))
        return {channel_id: serve_id for channel_id, serve_id in rows.all()}


async def test_a_restart_marks_only_its_own_and_unowned_rows(
    store: Store, migrated_db_url: str
) -> None:
    """Two serves on one database: serve A restarting must not mark serve B's calls in
    progress, whose outcomes then arrive as usual; A's own rows, and rows without an owner
    (stored before migration 0007), are marked."""
    async with (
        Store.from_url(migrated_db_url, serve_id="host-a:1") as serve_a,
        Store.from_url(migrated_db_url, serve_id="host-b:1") as serve_b,
    ):
        a_left = await serve_a.start_entry(make_start(channel_id="a-left"))
        [b_live, b_other] = await serve_b.start_entries(
            [make_start(channel_id="b-live"), make_start(channel_id="b-other")]
        )
        unowned = await store.start_entry(make_start(channel_id="unowned"))
        assert await serve_ids(store) == {
            "a-left": "host-a:1",
            "b-live": "host-b:1",
            "b-other": "host-b:1",
            "unowned": None,
        }

        assert await serve_a.mark_stale_in_progress(before=datetime.now(UTC)) == 2
        statuses = {e.channel_id: e.status for e in await store.list_entries()}
        assert statuses == {
            "a-left": "interrupted",
            "unowned": "interrupted",
            "b-live": "in_progress",
            "b-other": "in_progress",
        }
        await serve_b.finish_entry(b_live, make_outcome())
        finished = await store.get_entry(b_live)
        assert finished is not None and finished.status == "completed"
        assert finished.events == EVENTS
        # B's restart marks its own row left, and nothing of A's twice.
        assert await serve_b.mark_stale_in_progress() == 1
        other = await store.get_entry(b_other)
        assert other is not None and other.status == "interrupted"
        for entry_id in (a_left, unowned):
            marked = await store.get_entry(entry_id)
            assert marked is not None and marked.error == "server restarted"


async def test_an_outcome_after_a_restart_mark_replaces_it(store: Store) -> None:
    """A row marked "server restarted" whose real outcome arrives anyway (a serve still running
    wrote it without an owner, before migration 0007): stored, not refused. Once it is, the
    row is finished like any other."""
    entry_id = await store.start_entry(make_start())
    assert await store.mark_stale_in_progress() == 1

    await store.finish_entry(entry_id, make_outcome())
    got = await store.get_entry(entry_id)
    assert got is not None
    assert (got.status, got.error, got.user_input) == ("completed", None, "1234")
    assert got.events == EVENTS
    with pytest.raises(EntryAlreadyFinishedError):
        await store.finish_entry(entry_id, make_outcome(status="error"))


async def test_an_interrupted_outcome_that_is_no_restart_mark_stays_final(store: Store) -> None:
    """Only the restart's own mark gives way: a call that really ended interrupted (its
    connection lost, the serve stopping) is final."""
    entry_id = await store.start_entry(make_start())
    await store.finish_entry(entry_id, make_outcome(status="interrupted", events=()))
    with pytest.raises(EntryAlreadyFinishedError):
        await store.finish_entry(entry_id, make_outcome())
    got = await store.get_entry(entry_id)
    assert got is not None and got.status == "interrupted" and got.events == ()


async def test_deleting_entry_cascades_to_events(store: Store) -> None:
    entry_id = await store.start_entry(make_start())
    await store.finish_entry(entry_id, make_outcome())
    assert await count_rows(store, entry_events_table) == len(EVENTS)
    async with store.engine.begin() as conn:
        await conn.execute(delete(entries_table).where(entries_table.c.id == entry_id))
    assert await count_rows(store, entry_events_table) == 0


async def test_many_concurrent_callers(store: Store) -> None:
    n = 100

    async def caller(i: int) -> int:
        entry_id = await store.start_entry(
            make_start(channel_id=f"chan-{i}", started_at=T0 + timedelta(milliseconds=i))
        )
        await asyncio.sleep(0)  # let the other callers interleave
        await store.finish_entry(entry_id, make_outcome(user_input=f"{i:04d}", status="completed"))
        return entry_id

    ids = await asyncio.gather(*(caller(i) for i in range(n)))
    assert len(set(ids)) == n
    entries = await store.list_entries(limit=n + 10)
    assert len(entries) == n
    assert {e.status for e in entries} == {"completed"}
    assert [e.channel_id for e in entries] == [f"chan-{i}" for i in reversed(range(n))]
    assert await count_rows(store, entry_events_table) == n * len(EVENTS)
    # Concurrent readers while writers are busy.
    got = await asyncio.gather(*(store.get_entry(i) for i in ids[:20]))
    assert all(g is not None and g.events == EVENTS for g in got)


async def test_ping(store: Store) -> None:
    await store.ping()


async def test_store_as_async_context_manager(migrated_db_url: str) -> None:
    async with Store.from_url(migrated_db_url) as s:
        await s.ping()


async def test_sqlite_connection_pragmas_and_plain_url(tmp_path: Path) -> None:
    path = tmp_path / "plain.sqlite3"
    plain_url = f"sqlite:///{path}"  # sync-style URL, upgraded to aiosqlite
    async with Store.from_url(plain_url) as s:
        assert s.engine.dialect.driver == "aiosqlite"
        async with s.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar_one() == "wal"
            # FULL (2): the journal forgets a record once this commit returns.
            assert (await conn.execute(text("PRAGMA synchronous"))).scalar_one() == 2
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar_one() == 1
            assert (await conn.execute(text("PRAGMA busy_timeout"))).scalar_one() >= 1000


async def test_plain_postgres_url_uses_asyncpg(migrated_pg_url: str) -> None:
    plain = migrated_pg_url.replace("postgresql+asyncpg://", "postgresql://")
    assert plain.startswith("postgresql://")
    async with Store.from_url(plain) as s:
        assert s.engine.dialect.driver == "asyncpg"
        await s.ping()


def test_normalize_url() -> None:
    def norm(u: str) -> str:
        return normalize_url(u).render_as_string(hide_password=False)

    assert norm("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert norm("sqlite+pysqlite:////abs/x.db") == "sqlite+aiosqlite:////abs/x.db"
    assert norm("sqlite+aiosqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert norm("postgresql://u:p%40ss@h:5433/db") == "postgresql+asyncpg://u:p%40ss@h:5433/db"
    assert norm("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert norm("postgresql+psycopg2://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert norm("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    with pytest.raises(ValueError, match="unsupported"):
        normalize_url("mysql://u@h/db")


def test_unreachable_postgres_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(pg.ENV_VAR, "postgresql://postgres@127.0.0.1:1/postgres")
    with pytest.raises(pytest.fail.Exception, match="unreachable"):
        asyncio.run(pg.create_database(pg.unique_database_name()))


async def test_concurrent_finishes_are_group_committed_and_one_bad_one_costs_nothing(
    store: Store,
) -> None:
    ids = [await store.start_entry(make_start(channel_id=f"c{i}")) for i in range(20)]
    results = await asyncio.gather(
        *(store.finish_entry(i, make_outcome()) for i in ids),
        store.finish_entry(10_000_000, make_outcome()),  # no such entry
        store.finish_entry(ids[0], make_outcome(status="hangup")),  # second finish of one entry
        return_exceptions=True,
    )
    assert results[:20] == [None] * 20
    assert isinstance(results[20], EntryNotFoundError)
    assert isinstance(results[21], EntryAlreadyFinishedError)
    for entry_id in ids:
        entry = await store.get_entry(entry_id)
        assert entry is not None
        assert entry.status == "completed"
        assert len(entry.events) == len(make_outcome().events)
