"""``ari-digits results list|show|stats`` (ari_app.cli_results) on a seeded SQLite and
PostgreSQL database, with no server running."""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ari_app.cli_results import add_results_commands, run_results_command
from ari_app.entry_key import new_entry_key
from ari_app.store import Store
from tests.entries_seed import (
    REJECTED_REASON,
    REJECTED_TRANSCRIPT,
    SPECS,
    VOICE_CONFIDENCES,
    channel_name,
    clear,
    newest_first,
    seed,
)
from tests.test_http_api import check_schema


@pytest.fixture
async def ids(migrated_db_url: str) -> AsyncIterator[list[int]]:
    async with Store.from_url(migrated_db_url) as store:
        await clear(store)
        yield await seed(store)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="ari-digits")
    add_results_commands(top.add_subparsers(dest="command", required=True))
    return top


async def run(url: str, *argv: str) -> tuple[int, str, str]:
    args = parser().parse_args(["results", *argv])
    out, err = io.StringIO(), io.StringIO()
    code = await run_results_command(args, url, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def listed_ids(table: str) -> list[int]:
    return [int(line.split()[0]) for line in table.splitlines()[1:] if line[:1].isdigit()]


async def test_list_table(migrated_db_url: str, ids: list[int]) -> None:
    code, out, err = await run(migrated_db_url, "list", "--label", "phone")
    assert (code, err) == (0, "")
    w = max(len("id"), *(len(str(i)) for i in ids))  # PostgreSQL ids keep growing
    assert out == (
        f"{'id':<{w}}  started (UTC)        label  status       digits      confirmed   tries  by\n"
        f"{ids[5]:<{w}}  2024-05-17 12:05:00  phone  unconfirmed  5551234     unanswered  1      max_digits\n"
        f"{ids[4]:<{w}}  2024-05-17 12:04:00  phone  in_progress  -           not_asked   0      -\n"
        f"{ids[0]:<{w}}  2024-05-17 12:00:00  phone  completed    4155550123  yes         1      max_digits\n"
    )


async def test_list_everything_newest_first_then_pages(
    migrated_db_url: str, ids: list[int]
) -> None:
    code, out, _ = await run(migrated_db_url, "list")
    assert code == 0
    assert listed_ids(out) == newest_first(ids)
    assert "**21" in out and "4321" not in out  # the sensitive PIN
    assert "(more" not in out

    code, out, _ = await run(migrated_db_url, "list", "--limit", "3")
    assert listed_ids(out) == newest_first(ids)[:3]
    *_, more = out.strip().splitlines()
    assert more.startswith("(more: add --cursor ")
    cursor = more.removeprefix("(more: add --cursor ").rstrip(")")
    code, out, _ = await run(migrated_db_url, "list", "--limit", "3", "--cursor", cursor)
    assert code == 0
    assert listed_ids(out) == newest_first(ids)[3:6]


@pytest.mark.parametrize(
    ("argv", "keep"),
    [
        (["--status", "completed"], lambda i, s: s.status == "completed"),
        (["--caller-number", "+15550002"], lambda i, s: s.caller == "+15550002"),
        (["--channel", channel_name(3)], lambda i, s: i == 3),
        (["--transport", "agi"], lambda i, s: s.transport == "agi"),
        (["--confirmed", "yes"], lambda i, s: s.confirmed == "yes"),
        (
            ["--from", "2024-05-17T12:02:00Z", "--to", "2024-05-17 12:05"],
            lambda i, s: 2 <= s.minute < 5,
        ),
        (["--from", "2024-05-17T14:05:00+02:00"], lambda i, s: s.minute >= 5),
    ],
)
async def test_list_json_with_filters(
    migrated_db_url: str, ids: list[int], argv: list[str], keep: Any
) -> None:
    code, out, _ = await run(migrated_db_url, "list", "--json", *argv)
    assert code == 0
    document = json.loads(out)
    check_schema("EntryPage", document)  # the API's JSON
    chosen = [(i, s) for i, s in enumerate(SPECS) if keep(i, s)]
    assert [e["id"] for e in document["entries"]] == newest_first(
        [ids[i] for i, _ in chosen], tuple(s for _, s in chosen)
    )


async def test_list_empty(migrated_db_url: str, ids: list[int]) -> None:
    code, out, _ = await run(migrated_db_url, "list", "--label", "nothing")
    assert code == 0
    assert out.splitlines()[-1] == "(no entries)"


async def test_show(migrated_db_url: str, ids: list[int]) -> None:
    code, out, err = await run(migrated_db_url, "show", str(ids[0]))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"id           {ids[0]}"
    assert "started      2024-05-17T12:00:00Z" in lines
    assert "digits       4155550123" in lines
    assert "channel      PJSIP/trunk-00000000" in lines
    assert 'parameters   {"label": "phone", "num_digits": 4}' in lines
    events = lines[lines.index("events:") + 1 :]
    assert events[0].split() == [
        "seq",
        "at",
        "(ms)",
        "try",
        "kind",
        "digit",
        "source",
        "conf",
        "duration",
        "(ms)",
        "rejected",
        "detail",
    ]
    assert events[2].split() == ["1", "1200", "1", "digit", "4", "key", "-", "90", "-", "-"]
    assert len(events) == 1 + 12

    code, out, _ = await run(migrated_db_url, "show", str(ids[2]), "--json")
    assert code == 0
    body = json.loads(out)
    check_schema("EntryDetail", body)
    assert body["digits"] == "**21"
    assert "input_hash" not in out and "4321" not in out
    # Spoken and sensitive: transcripts redacted, confidences and the rejection kept.
    assert [e["confidence"] for e in body["events"] if e["kind"] == "digit"] == list(
        VOICE_CONFIDENCES
    )
    assert [(e["detail"], e["rejected"]) for e in body["events"] if e["kind"] == "utterance"] == [
        ("[redacted]", REJECTED_REASON),
        ("[redacted]", None),
    ]

    code, out, _ = await run(migrated_db_url, "show", str(ids[4]))  # in progress: nothing yet
    assert code == 0
    assert "ended        -" in out
    assert out.splitlines()[-2:] == ["events:", "(no events)"]


async def test_show_spoken_entry(migrated_db_url: str, ids: list[int]) -> None:
    code, out, err = await run(migrated_db_url, "show", str(ids[6]))  # "999", spoken
    assert (code, err) == (0, "")
    lines = out.splitlines()
    events = lines[lines.index("events:") + 1 :]
    header = events[0]
    assert header.split()[7:] == ["conf", "duration", "(ms)", "rejected", "detail"]
    # Columns line up under their headings; the transcript (with spaces) is last.
    rejected_at, detail_at = header.index("rejected"), header.index("detail")
    assert events[2][rejected_at:detail_at].rstrip() == REJECTED_REASON
    assert events[2][detail_at:] == REJECTED_TRANSCRIPT
    assert events[3][rejected_at:detail_at].rstrip() == "-"
    assert events[3][detail_at:] == "nine nine nine"
    assert [line.split()[:7] for line in events[4:7]] == [
        ["3", "3000", "1", "digit", "9", "voice", "0.97"],
        ["4", "3000", "1", "digit", "9", "voice", "0.88"],
        ["5", "3000", "1", "digit", "9", "voice", "0.64"],
    ]

    code, out, _ = await run(migrated_db_url, "show", str(ids[6]), "--json")
    assert code == 0
    body = json.loads(out)
    check_schema("EntryDetail", body)
    assert [(e["kind"], e["confidence"], e["rejected"]) for e in body["events"]] == [
        ("prompt", None, None),
        ("utterance", None, REJECTED_REASON),
        ("utterance", None, None),
        *[("digit", c, None) for c in VOICE_CONFIDENCES[:3]],
        ("confirmation", None, None),
    ]


async def test_show_by_key(migrated_db_url: str, ids: list[int]) -> None:
    async with Store.from_url(migrated_db_url) as store:
        entry = await store.get_entry(ids[0])
    assert entry is not None and entry.entry_key is not None
    by_key = await run(migrated_db_url, "show", entry.entry_key.upper())
    assert by_key == await run(migrated_db_url, "show", str(ids[0]))
    assert by_key[0] == 0
    missing = new_entry_key()
    code, _, err = await run(migrated_db_url, "show", missing)
    assert (code, err) == (1, f"ari-digits: no entry with id {missing}\n")


async def test_show_missing(migrated_db_url: str, ids: list[int]) -> None:
    code, out, err = await run(migrated_db_url, "show", str(max(ids) + 100))
    assert (code, out) == (1, "")
    assert err == f"ari-digits: no entry with id {max(ids) + 100}\n"


async def test_stats(migrated_db_url: str, ids: list[int]) -> None:
    code, out, _ = await run(migrated_db_url, "stats")
    assert code == 0
    assert out.splitlines()[:6] == [
        "all entries (UTC)",
        "total                       8",
        "finished                    7",
        "completed                   2",
        "completion rate             28.6% (completed / finished)",
        "median time to first digit  1.20 s (over 5 entries with digits)",
    ]
    assert "in_progress  1" in out and "rejected" not in out  # zero counts are left out
    assert "phone    3" in out and "-        1" in out

    code, out, _ = await run(
        migrated_db_url,
        "stats",
        "--from",
        "2024-05-17T12:01:00Z",
        "--to",
        "2024-05-17T12:06:00Z",
        "--json",
    )
    assert code == 0
    body = json.loads(out)
    check_schema("Stats", body)
    assert body["total"] == 6 and body["median_first_digit_ms"] == 1400.0
    assert body["from"] == "2024-05-17T12:01:00Z"


@pytest.mark.parametrize(
    "argv",
    [
        ["list", "--status", "done"],
        ["list", "--limit", "0"],
        ["list", "--limit", "501"],
        ["list", "--from", "yesterday"],
        ["show", "abc"],
        ["show", "0"],
        ["stats", "--to", "2024-13-01"],
    ],
)
def test_bad_arguments_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        parser().parse_args(["results", *argv])
    assert caught.value.code == 2
    assert "ari-digits results" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["list", "--cursor", "garbage"],
            "ari-digits: --cursor: not a cursor returned by a previous page\n",
        ),
        (
            ["list", "--from", "2024-05-18", "--to", "2024-05-17"],
            "ari-digits: --to: must not be earlier than from\n",
        ),
        (
            ["stats", "--from", "2024-05-18", "--to", "2024-05-17"],
            "ari-digits: --to: must not be earlier than from\n",
        ),
        (["list", "--label", "a\x00b"], "ari-digits: --label: must not contain NUL characters\n"),
    ],
)
async def test_bad_values_exit_2(
    migrated_db_url: str, ids: list[int], argv: list[str], message: str
) -> None:
    code, out, err = await run(migrated_db_url, *argv)
    assert (code, out, err) == (2, "", message)


async def test_database_url_option_and_missing_database(
    tmp_path: Path, migrated_db_url: str, ids: list[int]
) -> None:
    missing = tmp_path / "nowhere.sqlite3"
    code, out, err = await run(f"sqlite:///{missing}", "list")
    assert code == 1 and out == ""
    assert err.startswith(f"ari-digits: no database at {missing}")
    assert not missing.exists()  # not created by looking
    # --database-url wins over the configured URL.
    code, out, _ = await run(
        f"sqlite:///{missing}", "list", "--json", "--database-url", migrated_db_url
    )
    assert code == 0 and len(json.loads(out)["entries"]) == len(ids)


async def test_unmigrated_database_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    code, out, err = await run(f"sqlite+aiosqlite:///{empty}", "stats")
    assert code == 1 and out == ""
    assert err.startswith(f"ari-digits: cannot read entries from sqlite+aiosqlite:///{empty}: ")
    assert "no such table" in err


async def test_postgres_password_is_not_printed(migrated_pg_url: str) -> None:
    url = migrated_pg_url.replace("postgres@", "postgres:hunter2@").replace(
        "/ari_digits_cli", "/ari_digits_cli_missing"
    )
    code, out, err = await run(url, "list")
    assert (code, out) == (1, "")
    assert "hunter2" not in err and "***" in err
