"""``ari-digits``: run the service, migrate, check a setup, read results.

(The Asterisk sandbox and the demo are developer tooling: ``scripts/sandbox``, ``scripts/demo``.)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence

from ari_app.cli_results import add_results_commands, run_results_command
from ari_app.settings import Settings, SettingsError


def _fast_event_loop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (not on Windows): about 7 % less CPU an entry for
    ``serve`` on bench/ari_load.py; None is asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ari-digits",
        description="Collect keyed or spoken digits from Asterisk callers over ARI or FastAGI.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        help="run the Stasis application and the FastAGI server (settings from the environment)",
    )
    commands.add_parser("migrate", help="bring the database schema up to date")
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

    arguments = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"ari-digits: {exc}", file=sys.stderr)
        return 2

    from ari_app.server import configure_logging

    configure_logging(settings)
    if arguments.command == "serve":
        from ari_app.server import serve

        try:
            with asyncio.Runner(loop_factory=_fast_event_loop()) as runner:
                runner.run(serve(settings))
        except SettingsError as exc:  # the hash key file cannot be read or written
            print(f"ari-digits: {exc}", file=sys.stderr)
            return 2
        return 0
    if arguments.command == "migrate":
        from ari_app.store.migrate import upgrade_to_head

        upgrade_to_head(settings.database_url)
        print("database is up to date")
        return 0
    if arguments.command == "doctor":
        from ari_app.doctor import doctor as run_doctor

        return asyncio.run(run_doctor(settings, arguments.prompt))
    if arguments.command == "results":
        return asyncio.run(run_results_command(arguments, settings.database_url))
    parser.error(f"unknown command {arguments.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
