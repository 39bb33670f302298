"""``ari-digits results list|show|stats``: read stored entries straight from the database.

The same filters and JSON as the HTTP API (``ari_app.http``), without the server: it opens
the database itself, so it works while ``ari-digits serve`` is down. Human tables by
default; ``--json`` writes the API's JSON (one document) for scripts.

Exit status: 0 done, 1 no such entry / database unreadable, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final, TextIO

from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from ari_app.entry_key import is_entry_key
from ari_app.http.schema import entry_json, stats_json
from ari_app.store.queries import (
    MAX_PAGE_SIZE,
    EntryFilter,
    EntryStats,
    QueryError,
    entry_stats,
    get_entry,
    list_entries,
    parse_timestamp,
)
from ari_app.store.records import CONFIRMED_VALUES, ENTRY_STATUSES, TRANSPORTS, StoredEntry
from ari_app.store.repository import Store, normalize_url

__all__ = ["add_results_commands", "format_entries_table", "render_table", "run_results_command"]

DEFAULT_LIST_LIMIT: Final = 20
PROG: Final = "ari-digits"


def _time_argument(parameter: str) -> Callable[[str], datetime]:
    def parse(text: str) -> datetime:
        try:
            return parse_timestamp(parameter, text)
        except QueryError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    parse.__name__ = "ISO 8601 date or date-time"
    return parse


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_PAGE_SIZE}")
    return value


def _entry_id(text: str) -> int | str:
    """An entry's integer id, or its key (DIGITS_ID, a UUIDv7)."""
    if is_entry_key(text.lower()):
        return text.lower()
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive whole number or an entry key")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="the API's JSON, for scripts")
    parser.add_argument(
        "--database-url", help="read this database instead of $DATABASE_URL (SQLite or PostgreSQL)"
    )


def _add_time_range(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from",
        dest="started_from",
        metavar="TIME",
        type=_time_argument("from"),
        help="entries started at or after TIME (2024-05-17, 2024-05-17T12:00:00Z; UTC "
        "unless an offset is given)",
    )
    parser.add_argument(
        "--to",
        dest="started_to",
        metavar="TIME",
        type=_time_argument("to"),
        help="entries started before TIME",
    )


def add_results_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``results`` with ``list``, ``show`` and ``stats`` to the top-level subparsers."""
    results = subparsers.add_parser(
        "results", help="read stored entries (from the database; works while serve is down)"
    )
    commands = results.add_subparsers(dest="results_command", required=True)

    listing = commands.add_parser("list", help="entries newest first, with filters")
    _add_time_range(listing)
    listing.add_argument("--status", choices=sorted(ENTRY_STATUSES))
    listing.add_argument("--label", help="exact label")
    listing.add_argument("--caller-number", help="exact caller number")
    listing.add_argument("--channel", help="channel id or channel name")
    listing.add_argument("--transport", choices=sorted(TRANSPORTS))
    listing.add_argument("--confirmed", choices=sorted(CONFIRMED_VALUES))
    listing.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIST_LIMIT,
        help=f"entries per page, 1 to {MAX_PAGE_SIZE} (default {DEFAULT_LIST_LIMIT})",
    )
    listing.add_argument("--cursor", help="continue after a previous page (printed with it)")
    _add_common(listing)

    show = commands.add_parser("show", help="one entry with its digit and confirmation events")
    show.add_argument("id", type=_entry_id, help="the entry id, or its key (DIGITS_ID)")
    _add_common(show)

    stats = commands.add_parser(
        "stats", help="counts by status and label, completion rate, time to first digit"
    )
    _add_time_range(stats)
    _add_common(stats)


def _missing_sqlite_file(url: URL) -> str | None:
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if Path(database).is_file() else database


def _fail(message: str, *, err: TextIO, code: int) -> int:
    print(f"{PROG}: {message}", file=err)
    return code


async def run_results_command(
    args: argparse.Namespace,
    database_url: str,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Run ``results list|show|stats`` parsed by :func:`add_results_commands`.

    ``args.database_url`` (``--database-url``), when given, wins over ``database_url``.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    url = getattr(args, "database_url", None) or database_url
    try:
        parsed = normalize_url(url)
    except Exception as exc:
        return _fail(str(exc), err=err, code=2)
    missing = _missing_sqlite_file(parsed)
    if missing is not None:
        # Opening it would create an empty file; say what is wrong instead.
        return _fail(
            f"no database at {missing} (set DATABASE_URL or --database-url; "
            f"'{PROG} migrate' creates one)",
            err=err,
            code=1,
        )
    store = Store.from_url(url)
    try:
        if args.results_command == "list":
            return await _list(store, args, out)
        if args.results_command == "show":
            return await _show(store, args, out, err)
        if args.results_command == "stats":
            return await _stats(store, args, out)
        return _fail(f"unknown results command {args.results_command!r}", err=err, code=2)
    except QueryError as exc:
        return _fail(f"--{exc.parameter.replace('_', '-')}: {exc.message}", err=err, code=2)
    except (SQLAlchemyError, OSError) as exc:
        safe = parsed.render_as_string(hide_password=True)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _fail(f"cannot read entries from {safe}: {reason}", err=err, code=1)
    finally:
        await store.close()


async def _list(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    where = EntryFilter(
        started_from=args.started_from,
        started_to=args.started_to,
        status=args.status,
        label=args.label,
        caller_number=args.caller_number,
        channel=args.channel,
        transport=args.transport,
        confirmed=args.confirmed,
    )
    page = await list_entries(store, where, limit=args.limit, cursor=args.cursor)
    if args.json:
        document = {
            "entries": [entry_json(entry) for entry in page.entries],
            "next_cursor": page.next_cursor,
        }
        print(json.dumps(document), file=out)
        return 0
    print(format_entries_table(page.entries), file=out)
    if page.next_cursor is not None:
        print(f"(more: add --cursor {page.next_cursor})", file=out)
    return 0


async def _show(store: Store, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    entry = (
        await store.get_entry_by_key(args.id)
        if isinstance(args.id, str)
        else await get_entry(store, args.id)
    )
    if entry is None:
        return _fail(f"no entry with id {args.id}", err=err, code=1)
    body = entry_json(entry, with_events=True)
    if args.json:
        print(json.dumps(body), file=out)
        return 0
    print(format_entry(body), file=out)
    return 0


async def _stats(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    stats = await entry_stats(store, started_from=args.started_from, started_to=args.started_to)
    if args.json:
        print(json.dumps(stats_json(stats)), file=out)
        return 0
    print(format_stats(stats), file=out)
    return 0


# --------------------------------------------------------------------------- human output


def render_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, no trailing blanks (the CLI's table look)."""
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [columns, *rows]
    )


def format_entries_table(entries: Sequence[StoredEntry]) -> str:
    """The entries table (the same look as ``ari_app.cli.format_table``)."""
    columns = ("id", "started (UTC)", "label", "status", "digits", "confirmed", "tries", "by")
    rows = [
        (
            str(entry.id),
            entry.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            entry.label or "-",
            entry.status,
            _shown_digits(entry),
            entry.confirmed,
            str(entry.attempts),
            entry.terminated_by or "-",
        )
        for entry in entries
    ]
    table = render_table(columns, rows)
    return table if rows else table + "\n(no entries)"


def _shown_digits(entry: StoredEntry) -> str:
    digits = entry_json(entry)["digits"]  # masked for sensitive entries
    return str(digits) if digits else "-"


def _text(value: object) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _confidence(value: object) -> str:
    """A voice digit's confidence, 0..1, to two places (``0.93``); ``-`` when none."""
    return f"{value:.2f}" if isinstance(value, float | int) else "-"


ENTRY_FIELDS: Final = (
    ("id", "id"),
    ("started", "started_at"),
    ("ended", "ended_at"),
    ("status", "status"),
    ("label", "label"),
    ("digits", "digits"),
    ("sensitive", "sensitive"),
    ("confirmed", "confirmed"),
    ("tries", "attempts"),
    ("ended by", "terminated_by"),
    ("caller", "caller_number"),
    ("caller name", "caller_name"),
    ("channel", "channel_name"),
    ("channel id", "channel_id"),
    ("transport", "transport"),
    ("asterisk", "asterisk_id"),
    ("error", "error"),
    ("parameters", "parameters"),
)


def format_entry(body: dict[str, object]) -> str:
    """One entry (the API's JSON for it) as name/value lines, then its events table."""
    fields = render_table(
        ("field", "value"), [(name, _text(body[key])) for name, key in ENTRY_FIELDS]
    ).split("\n", 1)[1]
    events = body.get("events")
    assert isinstance(events, list)
    columns = (
        "seq",
        "at (ms)",
        "try",
        "kind",
        "digit",
        "source",
        "conf",
        "duration (ms)",
        "rejected",
        "detail",
    )
    rows = [
        (
            str(ev["seq"]),
            str(ev["at_ms"]),
            str(ev["attempt"]),
            str(ev["kind"]),
            _text(ev["digit"]),
            _text(ev["source"]),
            _confidence(ev["confidence"]),
            _text(ev["duration_ms"]),
            _text(ev["rejected"]),
            _text(ev["detail"]),
        )
        for ev in events
    ]
    table = render_table(columns, rows) if rows else "(no events)"
    return f"{fields}\n\nevents:\n{table}"


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def format_stats(stats: EntryStats) -> str:
    if stats.started_from is None and stats.started_to is None:
        span = "all entries"
    else:
        span = f"entries started from {_when(stats.started_from)} to {_when(stats.started_to)}"
    rate = "-" if stats.completion_rate is None else f"{stats.completion_rate:.1%}"
    median = (
        "-"
        if stats.median_first_digit_ms is None
        else f"{stats.median_first_digit_ms / 1000:.2f} s"
        f" (over {stats.entries_with_digits} entries with digits)"
    )
    summary = render_table(
        ("", ""),
        [
            ("total", str(stats.total)),
            ("finished", str(stats.finished)),
            ("completed", str(stats.completed)),
            ("completion rate", f"{rate} (completed / finished)"),
            ("median time to first digit", median),
        ],
    ).split("\n", 1)[1]
    statuses = render_table(
        ("status", "count"),
        [(status, str(n)) for status, n in stats.by_status.items() if n],
    )
    labels = render_table(
        ("label", "count"), [(label or "-", str(n)) for label, n in stats.by_label]
    )
    return f"{span} (UTC)\n{summary}\n\n{statuses}\n\n{labels}"
