"""ari_app.store.queries on SQLite and PostgreSQL: filters, keyset pagination, aggregates,
and (PostgreSQL) the plans: every list and aggregate query is served by an index."""

from __future__ import annotations

import base64
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, insert

from ari_app.store import Store
from ari_app.store.models import entries_table, entry_events_table
from ari_app.store.queries import (
    MAX_ENTRY_ID,
    Cursor,
    EntryFilter,
    InvalidCursorError,
    QueryError,
    entry_stats,
    get_entry,
    list_entries,
    parse_timestamp,
)
from tests.entries_seed import (
    SPECS,
    T0,
    Spec,
    channel_id,
    channel_name,
    clear,
    expected_median,
    newest_first,
    seed,
    store_spec,
)


@pytest.fixture
async def store(migrated_db_url: str) -> AsyncIterator[Store]:
    s = Store.from_url(migrated_db_url)
    try:
        await clear(s)  # the PostgreSQL database is shared by the module
        yield s
    finally:
        await s.close()


@pytest.fixture
async def ids(store: Store) -> list[int]:
    return await seed(store)


async def listed(store: Store, where: EntryFilter | None = None, **kw: Any) -> list[int]:
    page = await list_entries(store, where, **kw)
    return [e.id for e in page.entries]


def matching(ids: list[int], keep: Any) -> list[int]:
    """The expected listing for the specs that ``keep(index, spec)`` accepts."""
    chosen = [(i, s) for i, s in enumerate(SPECS) if keep(i, s)]
    return newest_first([ids[i] for i, _ in chosen], tuple(s for _, s in chosen))


# --------------------------------------------------------------------------- listing


async def test_list_newest_first_with_ties_by_id(store: Store, ids: list[int]) -> None:
    page = await list_entries(store)
    assert [e.id for e in page.entries] == newest_first(ids)
    assert page.next_cursor is None
    # Minute 5 holds two entries started at the same instant: the later id comes first.
    assert [e.id for e in page.entries][1:3] == [ids[6], ids[5]]
    assert all(e.events == () for e in page.entries)  # events only with get_entry
    assert all(e.started_at.tzinfo is UTC for e in page.entries)


@pytest.mark.parametrize(
    ("where", "keep"),
    [
        (EntryFilter(status="completed"), lambda i, s: s.status == "completed"),
        (EntryFilter(status="in_progress"), lambda i, s: s.status is None),
        (EntryFilter(label="phone"), lambda i, s: s.label == "phone"),
        (EntryFilter(caller_number="+15550002"), lambda i, s: s.caller == "+15550002"),
        (EntryFilter(channel=channel_id(2)), lambda i, s: i == 2),
        (EntryFilter(channel=channel_name(6)), lambda i, s: i == 6),
        (EntryFilter(transport="agi"), lambda i, s: s.transport == "agi"),
        (EntryFilter(confirmed="yes"), lambda i, s: s.confirmed == "yes"),
        (EntryFilter(confirmed="no"), lambda i, s: False),
        (EntryFilter(label="account", status="completed"), lambda i, s: i == 6),
        (EntryFilter(label="nope"), lambda i, s: False),
        # Half-open range: from inclusive, to exclusive.
        (
            EntryFilter(
                started_from=T0 + timedelta(minutes=1), started_to=T0 + timedelta(minutes=5)
            ),
            lambda i, s: 1 <= s.minute < 5,
        ),
        (EntryFilter(started_from=T0 + timedelta(minutes=5)), lambda i, s: s.minute >= 5),
        (EntryFilter(started_to=T0 + timedelta(minutes=1)), lambda i, s: s.minute < 1),
        # An aware non-UTC bound means the same instant.
        (
            EntryFilter(
                started_from=(T0 + timedelta(minutes=2)).astimezone(timezone(timedelta(hours=-7)))
            ),
            lambda i, s: s.minute >= 2,
        ),
        (
            EntryFilter(
                started_from=T0 + timedelta(minutes=1),
                started_to=T0 + timedelta(minutes=6),
                transport="ari",
                caller_number="+15550001",
            ),
            lambda i, s: 1 <= s.minute < 6 and s.transport == "ari" and s.caller == "+15550001",
        ),
    ],
)
async def test_filters(store: Store, ids: list[int], where: EntryFilter, keep: Any) -> None:
    assert await listed(store, where) == matching(ids, keep)


async def test_pages_walk_everything_once(store: Store, ids: list[int]) -> None:
    for limit in (1, 2, 3, 7, 8):
        seen: list[int] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await list_entries(store, limit=limit, cursor=cursor)
            pages += 1
            assert len(page.entries) <= limit
            seen += [e.id for e in page.entries]
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == newest_first(ids)
        assert pages == -(-len(ids) // limit)  # no empty trailing page


async def test_pagination_is_stable_while_entries_arrive(store: Store, ids: list[int]) -> None:
    where = EntryFilter(label="phone")
    before = await listed(store, where)
    assert before == [ids[5], ids[4], ids[0]]
    first = await list_entries(store, where, limit=1)
    assert [e.id for e in first.entries] == [ids[5]]

    # Arrivals between pages: a newer entry, one started at the very instant of the page's
    # last entry (its higher id sorts it before that entry), and one older than everything.
    newer = await store_spec(store, 20, Spec(30, "phone", "completed", "1", 100))
    same_instant = await store_spec(store, 21, Spec(5, "phone", None))
    older = await store_spec(store, 22, Spec(-60, "phone", "short", "12", 100))

    rest: list[int] = []
    cursor = first.next_cursor
    while cursor is not None:
        page = await list_entries(store, where, limit=1, cursor=cursor)
        rest += [e.id for e in page.entries]
        cursor = page.next_cursor
    # Nothing repeated, nothing skipped: later pages hold what followed the first page, and
    # the older arrival where it belongs; the newer ones are before the first page.
    assert rest == [ids[4], ids[0], older]
    assert await listed(store, where) == [newer, same_instant, ids[5], ids[4], ids[0], older]


async def test_pagination_with_filters_and_range(store: Store, ids: list[int]) -> None:
    where = EntryFilter(started_to=T0 + timedelta(minutes=6), transport="ari")
    expected = await listed(store, where, limit=500)
    walked: list[int] = []
    cursor: str | None = None
    while True:
        page = await list_entries(store, where, limit=2, cursor=cursor)
        walked += [e.id for e in page.entries]
        if (cursor := page.next_cursor) is None:
            break
    assert walked == expected == matching(ids, lambda i, s: s.minute < 6 and s.transport == "ari")


@pytest.mark.parametrize("limit", [0, -1, 501, 10**9])
async def test_limit_out_of_range(store: Store, limit: int) -> None:
    with pytest.raises(QueryError) as caught:
        await list_entries(store, limit=limit)
    assert caught.value.parameter == "limit"


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "token",
    [
        "x",
        "not a cursor!",
        "é",
        "A" * 65,
        b64(b"1:abc:5"),
        b64(b"2:1000:5"),  # unknown version
        b64(b"1:1000:0"),  # ids start at 1
        b64(f"1:1000:{2**63}".encode()),  # beyond BIGINT
        b64(b"1:9999999999999999999:1"),  # beyond datetime
        b64(b"1:1000:5") + "=",  # not the canonical token
        b64(b"1:01000:5"),  # leading zero: not canonical
        b64(b"\xff\xfe"),
    ],
)
async def test_invalid_cursor(store: Store, token: str) -> None:
    with pytest.raises(InvalidCursorError) as caught:
        await list_entries(store, cursor=token)
    assert caught.value.parameter == "cursor"
    assert isinstance(caught.value, ValueError)


@given(
    started_at=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    entry_id=st.integers(min_value=1, max_value=MAX_ENTRY_ID),
)
def test_cursor_round_trip(started_at: datetime, entry_id: int) -> None:
    cursor = Cursor(started_at=started_at, id=entry_id)
    token = cursor.encode()
    assert token.isascii() and "=" not in token and "/" not in token and "+" not in token
    assert Cursor.decode(token) == cursor


@given(st.text(max_size=80))
def test_cursor_decode_never_fails_otherwise(token: str) -> None:
    try:
        cursor = Cursor.decode(token)
    except InvalidCursorError:
        return
    assert cursor.encode() == token


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"status": "done"}, "status"),
        ({"transport": "sip"}, "transport"),
        ({"confirmed": "maybe"}, "confirmed"),
        ({"label": ""}, "label"),
        ({"label": "a\x00b"}, "label"),
        ({"channel": "x" * 256}, "channel"),
        ({"caller_number": "\udc80"}, "caller_number"),
        ({"started_from": datetime(2024, 1, 1)}, "from"),  # naive
        ({"started_from": T0, "started_to": T0 - timedelta(seconds=1)}, "to"),
    ],
)
def test_invalid_filters(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(QueryError) as caught:
        EntryFilter(**kwargs)
    assert caught.value.parameter == parameter


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-05-17", datetime(2024, 5, 17, tzinfo=UTC)),
        ("2024-05-17T12:30:00Z", datetime(2024, 5, 17, 12, 30, tzinfo=UTC)),
        ("2024-05-17T12:30:00", datetime(2024, 5, 17, 12, 30, tzinfo=UTC)),
        ("2024-05-17 12:30", datetime(2024, 5, 17, 12, 30, tzinfo=UTC)),
        ("2024-05-17T14:30:00+02:00", datetime(2024, 5, 17, 12, 30, tzinfo=UTC)),
        ("2024-05-17T14:30:00 02:00", datetime(2024, 5, 17, 12, 30, tzinfo=UTC)),  # '+' lost
        ("2024-05-17T12:30:00.250-01:00", datetime(2024, 5, 17, 13, 30, 0, 250000, tzinfo=UTC)),
        ("9999-12-31T23:00:00-05:00", datetime.max.replace(tzinfo=UTC)),  # clamped
        ("0001-01-01T00:30:00+01:00", datetime.min.replace(tzinfo=UTC)),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    assert parse_timestamp("from", text) == expected


@pytest.mark.parametrize(
    "text", ["", " ", "yesterday", "2024-13-01", "2024-05-17T25:00", "17/05/2024"]
)
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse_timestamp("to", text)
    assert caught.value.parameter == "to"


async def test_extreme_bounds_reach_the_database(store: Store, ids: list[int]) -> None:
    everything = EntryFilter(
        started_from=datetime.min.replace(tzinfo=UTC), started_to=datetime.max.replace(tzinfo=UTC)
    )
    assert await listed(store, everything) == newest_first(ids)
    stats = await entry_stats(
        store, started_from=everything.started_from, started_to=everything.started_to
    )
    assert stats.total == len(ids)


# --------------------------------------------------------------------------- one entry


async def test_get_entry(store: Store, ids: list[int]) -> None:
    entry = await get_entry(store, ids[0])
    assert entry is not None
    assert entry.user_input == "4155550123"
    assert [e.kind for e in entry.events] == ["prompt", *["digit"] * 10, "confirmation"]
    sensitive = await get_entry(store, ids[2])
    assert sensitive is not None and sensitive.user_input == "**21"
    assert {e.digit for e in sensitive.events if e.kind == "digit"} == {"*"}
    for missing in (0, -1, max(ids) + 1000, MAX_ENTRY_ID, MAX_ENTRY_ID + 1, 10**30):
        assert await get_entry(store, missing) is None


# --------------------------------------------------------------------------- aggregates


async def test_stats_over_everything(store: Store, ids: list[int]) -> None:
    stats = await entry_stats(store)
    assert stats.total == 8
    assert stats.by_status["completed"] == 2
    assert stats.by_status["in_progress"] == 1
    assert stats.by_status["rejected"] == 0  # every status is present
    assert sum(stats.by_status.values()) == 8
    assert stats.by_label == [("phone", 3), ("account", 2), (None, 1), ("pin", 1), ("zip", 1)]
    assert stats.finished == 7
    assert stats.completed == 2
    assert stats.completion_rate == pytest.approx(2 / 7)
    assert stats.entries_with_digits == 5
    assert stats.median_first_digit_ms == 1200.0 == expected_median(SPECS)


async def test_stats_over_a_range(store: Store, ids: list[int]) -> None:
    # Minutes 1..5: first digits 800, 2000, 500, 3000 -> even count, median 1400.
    stats = await entry_stats(
        store, started_from=T0 + timedelta(minutes=1), started_to=T0 + timedelta(minutes=6)
    )
    assert stats.total == 6
    assert stats.entries_with_digits == 4
    assert stats.median_first_digit_ms == 1400.0
    assert stats.finished == 5
    assert stats.completion_rate == pytest.approx(1 / 5)
    assert stats.started_from == T0 + timedelta(minutes=1)


async def test_stats_of_nothing(store: Store, ids: list[int]) -> None:
    stats = await entry_stats(store, started_from=T0 + timedelta(days=1))
    assert stats.total == stats.finished == stats.completed == stats.entries_with_digits == 0
    assert stats.completion_rate is None
    assert stats.median_first_digit_ms is None
    assert stats.by_label == []
    assert set(stats.by_status.values()) == {0}
    only_in_progress = await entry_stats(
        store, started_from=T0 + timedelta(minutes=4), started_to=T0 + timedelta(minutes=5)
    )
    assert only_in_progress.total == 1 and only_in_progress.completion_rate is None


async def test_stats_rejects_reversed_range(store: Store) -> None:
    with pytest.raises(QueryError) as caught:
        await entry_stats(store, started_from=T0, started_to=T0 - timedelta(days=1))
    assert caught.value.parameter == "to"
    with pytest.raises(QueryError):
        await entry_stats(store, started_from=datetime(2024, 1, 1))  # naive


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    firsts=st.lists(st.one_of(st.none(), st.integers(0, 10**6)), min_size=0, max_size=9),
)
async def test_median_matches_python(store: Store, firsts: list[int | None]) -> None:
    await clear(store)
    specs = tuple(
        Spec(i, "x", "completed", None if f is None else "12", f) for i, f in enumerate(firsts)
    )
    await seed(store, specs)
    stats = await entry_stats(store)
    assert stats.median_first_digit_ms == expected_median(specs)
    assert stats.entries_with_digits == sum(f is not None for f in firsts)


# --------------------------------------------------------------------------- plans (PostgreSQL)


async def bulk_seed(store: Store, n: int) -> None:
    """n entries over 10 days plus 5 events each, in one executemany per table."""
    rng = random.Random(7)
    start = T0 - timedelta(days=10)
    entries = []
    events = []
    for i in range(1, n + 1):
        entries.append(
            {
                "id": i,
                "channel_id": f"c.{i}",
                "channel_name": f"PJSIP/t-{i:06d}",
                "caller_number": f"+1555{rng.randrange(2000):04d}",
                "caller_name": None,
                "label": rng.choice(["phone", "account", "pin", "zip"]),
                "parameters": {},
                "transport": "ari",
                "asterisk_id": None,
                "started_at": start + timedelta(seconds=i * 864_000 / n),
                "sensitive": False,
                "status": rng.choices(["completed", "short", "hangup", "error"], [90, 5, 4, 1])[0],
                "user_input": "1234",
                "input_hash": None,
                "terminated_by": None,
                "attempts": 1,
                "confirmed": rng.choices(["yes", "not_asked", "no"], [60, 39, 1])[0],
                "error": None,
                "ended_at": None,
                "first_digit_ms": 800,
            }
        )
        events.append({"entry_id": i, "seq": 0, "kind": "prompt", "attempt": 1, "at_ms": 0})
        events += [
            {"entry_id": i, "seq": k, "kind": "digit", "attempt": 1, "at_ms": 500 + 300 * k}
            for k in range(1, 5)
        ]
    async with store.engine.begin() as conn:
        await conn.execute(insert(entries_table), entries)
        await conn.execute(insert(entry_events_table), events)
    # What autovacuum does in production: statistics, and the visibility map that lets
    # index-only scans skip the table.
    async with store.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.exec_driver_sql("VACUUM ANALYZE entries")
        await conn.exec_driver_sql("VACUUM ANALYZE entry_events")


async def test_postgres_plans_use_indexes(migrated_pg_url: str) -> None:
    """On 20,000 analysed entries, each list query reads the index made for its filter and
    the status/label counts read only an index, never the entries table; the plans are
    printed (pytest -s shows them)."""
    async with Store.from_url(migrated_pg_url) as store:
        await clear(store)
        await bulk_seed(store, 20_000)
        sent: list[tuple[str, Any]] = []

        def seen(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                sent.append((statement, parameters))

        event.listen(store.engine.sync_engine, "before_cursor_execute", seen)
        mid = T0 - timedelta(days=5)
        deep = Cursor(started_at=mid, id=10_000).encode()
        cases: list[tuple[str, Any, str]] = [
            ("newest", lambda: list_entries(store), "ix_entries_started_at_status_label"),
            (
                "deep page",
                lambda: list_entries(store, cursor=deep),
                "ix_entries_started_at_status_label",
            ),
            (
                "one day",
                lambda: list_entries(
                    store, EntryFilter(started_from=mid, started_to=mid + timedelta(days=1))
                ),
                "ix_entries_started_at_status_label",
            ),
            (
                "status",
                lambda: list_entries(store, EntryFilter(status="error")),
                "ix_entries_status_started_at",
            ),
            (
                "label",
                lambda: list_entries(store, EntryFilter(label="pin"), cursor=deep),
                "ix_entries_label_started_at|ix_entries_started_at_status_label",
            ),
            (
                "caller",
                lambda: list_entries(store, EntryFilter(caller_number="+15550007")),
                "ix_entries_caller_number_started_at",
            ),
            (
                "channel",
                lambda: list_entries(store, EntryFilter(channel="PJSIP/t-000077")),
                "ix_entries_channel_name",
            ),
            (
                "transport",
                lambda: list_entries(store, EntryFilter(transport="agi")),
                "ix_entries_transport_started_at",
            ),
            (
                "confirmed",
                lambda: list_entries(store, EntryFilter(confirmed="unanswered")),
                "ix_entries_confirmed_started_at",
            ),
            (
                "stats one day",
                lambda: entry_stats(store, started_from=mid, started_to=mid + timedelta(days=1)),
                "Index Only Scan using ix_entries_started_at_status_label_first_digit_ms",
            ),
        ]
        async with store.engine.connect() as conn:
            for title, run, index in cases:
                sent.clear()
                await run()
                assert sent, title
                for statement, parameters in sent:  # stats: the counts, then the median
                    plan = "\n".join(
                        row[0]
                        for row in await conn.exec_driver_sql("EXPLAIN " + statement, parameters)
                    )
                    print(f"--- {title}\n{plan}")
                    assert any(name in plan for name in index.split("|")), (
                        f"{title}: {index}\n{plan}"
                    )
                    assert "Seq Scan on entries" not in plan, f"{title}\n{plan}"
        await clear(store)
