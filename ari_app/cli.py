"""``ari-digits``: run the service, migrate, manage the sandbox, run the demo, read results."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from ari_app.cli_results import add_results_commands, run_results_command
from ari_app.settings import Settings, SettingsError


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
    doctor = commands.add_parser(
        "doctor", help="check Asterisk, the RTP path and the database; exit 1 on any FAIL"
    )
    doctor.add_argument(
        "--prompt",
        action="append",
        default=[],
        metavar="MEDIA",
        help="a media list the dialplan passes (prompt=...): its sound files are checked too",
    )
    add_results_commands(commands)

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
    if arguments.command == "doctor":
        from ari_app.doctor import doctor as run_doctor

        return asyncio.run(run_doctor(settings, arguments.prompt))
    if arguments.command == "results":
        return asyncio.run(run_results_command(arguments, settings.database_url))
    parser.error(f"unknown command {arguments.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
