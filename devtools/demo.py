"""``scripts/demo``: the whole product on this machine in about a minute.

Starts the Asterisk sandbox, runs the Stasis application on SQLite, places four simulated
callers (a keyed 10-digit number with read-back confirmation, a short entry, a spoken number, a
hangup) and prints the rows they left in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ari_app.cli_results import format_entries_table
from ari_app.server import configure_logging, running_service
from ari_app.settings import Settings, SettingsError
from ari_app.store.repository import Store
from devtools.sandbox import AsteriskSandbox, SandboxError, default_conf_dir
from devtools.simulate import SimulatedCallers, synthesize_caller_speech

log = logging.getLogger(__name__)

DEMO_CALLS = (
    (
        "phone number, confirmed with 1",
        "num_digits=10,ask_for_confirmation=yes,label=phone,prompt=sound:vm-enter-num-to-call",
        "wait:1^dtmf:4155550123^wait:1^dtmf:1",
    ),
    (
        "account number, caller stops after 3 of 6 digits",
        "num_digits=6,label=account,max_attempts=1,dtmf_input_timeout=2,prompt=sound:beep",
        "wait:0.5^dtmf:123",
    ),
    (
        "extension, spoken: 'four, seven, one, nine'",
        "num_digits=4,label=extension,prompt=sound:beep",
        "wait:0.5^play:{spoken}",
    ),
    (
        "PIN, caller hangs up after 2 digits",
        "num_digits=4,label=pin,sensitive=yes,prompt=sound:beep",
        "wait:0.5^dtmf:98^hangup",
    ),
)


def default_demo_database() -> str:
    Path("var").mkdir(exist_ok=True)
    return f"sqlite+aiosqlite:///{Path('var/demo.sqlite3').resolve()}"


async def run_demo(settings: Settings, *, database_url: str, keep: bool) -> int:
    sandbox = AsteriskSandbox(default_conf_dir())
    try:
        await asyncio.to_thread(sandbox.start)
    except SandboxError as exc:
        log.error("%s", exc)
        return 1
    spoken = await asyncio.to_thread(
        synthesize_caller_speech,
        "four, seven, one, nine",
        sandbox.paths.chroot_dir,
        "demo-spoken-extension",
    )
    settings = replace(
        settings,
        ari_url=sandbox.ari_url,
        ari_user=sandbox.ari_user,
        ari_password=sandbox.ari_password,
        database_url=database_url,
        hash_key=settings.hash_key or "demo-only-hash-key",
        api_port=0,  # nobody queries the demo's HTTP server: never collide with a real serve
    )
    try:
        async with running_service(settings, connect_timeout=15) as app:
            callers = SimulatedCallers(sandbox.ari_url, sandbox.ari_user, sandbox.ari_password)
            try:
                # One caller at a time, so the output reads like a call log.
                for description, arguments, script in DEMO_CALLS:
                    print(f"calling: {description}\n  Stasis(digits,{arguments})", flush=True)
                    call = await callers.place_call(arguments, script.format(spoken=spoken))
                    result = await callers.dialplan_result(call, within=60)
                    shown = result.status or "(caller hung up: no dialplan after Stasis)"
                    print(f"  dialplan saw DIGITS_STATUS={shown} DIGITS={result.digits or '-'}")
                await app.wait_idle(within=10)  # the hung-up caller's row may be on its way
            finally:
                await callers.close()
        store = Store.from_url(database_url)
        try:
            entries = await store.list_entries(limit=len(DEMO_CALLS))
        finally:
            await store.close()
        print(f"\nstored rows ({database_url}):")
        print(format_entries_table(entries))
    finally:
        if not keep:
            await asyncio.to_thread(sandbox.stop)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devtools.demo [--database-url URL] [--keep-asterisk]``; settings from the
    environment, as ``ari-digits serve`` reads them."""
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="start the Asterisk sandbox and the app, place simulated calls, print rows",
    )
    parser.add_argument("--database-url", help="default: SQLite file var/demo.sqlite3")
    parser.add_argument("--keep-asterisk", action="store_true", help="leave the sandbox running")
    arguments = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    database_url = arguments.database_url or default_demo_database()
    return asyncio.run(run_demo(settings, database_url=database_url, keep=arguments.keep_asterisk))


if __name__ == "__main__":
    sys.exit(main())
