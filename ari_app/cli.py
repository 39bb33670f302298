"""``ari-digits``: run the service, migrate, manage the sandbox, run the demo, read results."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from ari_app.settings import Settings, SettingsError
from ari_app.store.records import StoredEntry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ari-digits", description="Collect keyed digits from Asterisk callers over ARI."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the Stasis application (settings from the environment)")
    commands.add_parser("migrate", help="bring the database schema up to date")
    demo = commands.add_parser(
        "demo", help="start the Asterisk sandbox and the app, place simulated calls, print rows"
    )
    demo.add_argument("--database-url", help="default: SQLite file var/demo.sqlite3")
    demo.add_argument("--keep-asterisk", action="store_true", help="leave the sandbox running")
    commands.add_parser("sandbox", help="the Asterisk sandbox (see: ari-digits sandbox --help)")
    results = commands.add_parser("results", help="read stored entries")
    results_commands = results.add_subparsers(dest="results_command", required=True)
    listing = results_commands.add_parser("list", help="newest entries first")
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--status")
    listing.add_argument("--label")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    arguments, rest = parser.parse_known_args(argv)
    if arguments.command == "sandbox":
        from ari_app.sandbox import main as sandbox_main

        return sandbox_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"ari-digits: {exc}", file=sys.stderr)
        return 2

    from ari_app.server import configure_logging

    configure_logging(settings)
    if arguments.command == "serve":
        from ari_app.server import serve

        asyncio.run(serve(settings))
        return 0
    if arguments.command == "migrate":
        from ari_app.store.migrate import upgrade_to_head

        upgrade_to_head(settings.database_url)
        print("database is up to date")
        return 0
    if arguments.command == "demo":
        from ari_app.demo import default_demo_database, run_demo

        database_url = arguments.database_url or default_demo_database()
        return asyncio.run(
            run_demo(settings, database_url=database_url, keep=arguments.keep_asterisk)
        )
    if arguments.command == "results":
        return asyncio.run(
            print_results(
                settings.database_url,
                limit=arguments.limit,
                status=arguments.status,
                label=arguments.label,
                as_json=arguments.json,
            )
        )
    parser.error(f"unknown command {arguments.command}")
    return 2


async def print_results(
    database_url: str, *, limit: int, status: str | None, label: str | None, as_json: bool
) -> int:
    from ari_app.store.repository import Store

    store = Store.from_url(database_url)
    try:
        entries = await store.list_entries(limit=limit, status=status, label=label)
    finally:
        await store.close()
    if as_json:
        for entry in entries:
            print(json.dumps(entry_summary(entry)))
    else:
        print(format_table(entries))
    return 0


def entry_summary(entry: StoredEntry) -> dict[str, object]:
    return {
        "id": entry.id,
        "started_at": entry.started_at.isoformat(),
        "channel": entry.channel_name,
        "caller": entry.caller_number,
        "label": entry.label,
        "status": entry.status,
        "digits": entry.user_input,
        "confirmed": entry.confirmed,
        "attempts": entry.attempts,
        "terminated_by": entry.terminated_by,
        "transport": entry.transport,
        "error": entry.error,
    }


def format_table(entries: Sequence[StoredEntry]) -> str:
    columns = ("id", "started (UTC)", "label", "status", "digits", "confirmed", "tries", "by")
    rows = [
        (
            str(entry.id),
            entry.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            entry.label or "-",
            entry.status,
            entry.user_input or "-",
            entry.confirmed,
            str(entry.attempts),
            entry.terminated_by or "-",
        )
        for entry in entries
    ]
    widths = [max(len(row[i]) for row in [columns, *rows]) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [columns, *rows]
    ]
    if not rows:
        lines.append("(no entries)")
    return "\n".join(line.rstrip() for line in lines)


if __name__ == "__main__":
    sys.exit(main())
