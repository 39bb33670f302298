"""Last key to stored row, for N concurrent simulated keypad callers on the real Asterisk sandbox.

For each N, N callers are originated at once; each keys 4 random digits (``num_digits=4``, so the
entry completes on the last key). We measure, per call, from the moment Asterisk timestamps the
last ``ChannelDtmfReceived`` (the key's end, ms precision, this host's clock) to the moment the
entry's final row is committed, and check every stored row against the digits that were keyed.

    .venv/bin/python bench/keypad_latency.py                 # SQLite, N = 10 50 100
    .venv/bin/python bench/keypad_latency.py --database-url postgresql+asyncpg://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ari_app.ari.app import AriApplication
from ari_app.journal import Journal
from ari_app.metrics import Metrics
from ari_app.settings import Settings
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.records import EntryOutcome, EntryStart
from ari_app.store.repository import Store, create_engine_for_url
from devtools.sandbox import AsteriskSandbox, default_conf_dir
from devtools.simulate import SimulatedCallers


class TimedStore(Store):
    """The real database store, noting when each entry's final row was committed."""

    committed_at: dict[int, float]
    all_committed: asyncio.Event
    expected: int

    async def finish_entry(self, entry_id: int, outcome: EntryOutcome) -> None:
        await super().finish_entry(entry_id, outcome)
        self.committed_at[entry_id] = time.time()
        if len(self.committed_at) >= self.expected:
            self.all_committed.set()


class TimedJournal:
    """The journal, as ``serve`` uses it, noting when each outcome was durable on disk."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.durable_at: dict[str, float] = {}

    async def record_start(self, start: EntryStart) -> None:
        await self.journal.record_start(start)

    async def record_outcome(self, entry_key: str, outcome: EntryOutcome) -> None:
        await self.journal.record_outcome(entry_key, outcome)
        self.durable_at[entry_key] = time.time()


class TimedApplication(AriApplication):
    """Notes Asterisk's timestamp of each channel's latest key."""

    last_key_at: dict[str, float]
    last_key_received_at: dict[str, float]

    def dispatch(self, raw: dict[str, Any]) -> None:
        if raw.get("type") == "ChannelDtmfReceived":
            stamp = datetime.strptime(raw["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
            self.last_key_at[raw["channel"]["id"]] = stamp.timestamp()
            self.last_key_received_at[raw["channel"]["id"]] = time.time()
        super().dispatch(raw)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def run_round(
    sandbox: AsteriskSandbox, database_url: str, journal_path: Path, calls: int
) -> tuple[list[float], list[float], list[float], int]:
    """(last key → journal commit, last key → database row, event delivery, rows correct)."""
    await upgrade_to_head_async(database_url)
    store = TimedStore(create_engine_for_url(database_url))
    store.committed_at, store.all_committed, store.expected = {}, asyncio.Event(), calls
    journal = await Journal.open(journal_path, store, metrics=Metrics(), max_bytes=None)
    journal.start_draining()
    timed = TimedJournal(journal)
    settings = Settings(
        ari_url=sandbox.ari_url,
        ari_user=sandbox.ari_user,
        ari_password=sandbox.ari_password,
        database_url=database_url,
        hash_key="bench",
    )
    app = TimedApplication(settings, timed)
    app.last_key_at = {}
    app.last_key_received_at = {}
    runner = asyncio.create_task(app.run())
    callers = SimulatedCallers(sandbox.ari_url, sandbox.ari_user, sandbox.ari_password)
    try:
        async with asyncio.timeout(15):
            await app.connected.wait()
        keyed = ["".join(random.choices("0123456789", k=4)) for _ in range(calls)]
        placed = await asyncio.gather(
            *(
                callers.place_call(
                    f"num_digits=4,prompt=sound:beep,label=bench{i}", f"wait:1^dtmf:{d}"
                )
                for i, d in enumerate(keyed)
            )
        )
        # Wait on the store rather than polling Asterisk, so the harness stays off the CPU.
        async with asyncio.timeout(120):
            await store.all_committed.wait()
        await app.wait_idle(within=30)
        results = [await callers.dialplan_result(call) for call in placed]
        durable: list[float] = []
        stored: list[float] = []
        delivery: list[float] = []
        correct = 0
        for call, digits, result in zip(placed, keyed, results, strict=True):
            entry = await store.get_entry_by_key(result.entry_id)
            if entry and entry.status == "completed" and entry.user_input == digits:
                correct += 1
            key_at = app.last_key_at.get(call.channel_id)
            received = app.last_key_received_at.get(call.channel_id)
            on_disk = timed.durable_at.get(result.entry_id)
            committed = store.committed_at.get(entry.id) if entry else None
            if key_at and received and on_disk and committed:
                durable.append((on_disk - key_at) * 1000)
                stored.append((committed - key_at) * 1000)
                delivery.append((received - key_at) * 1000)
        return durable, stored, delivery, correct
    finally:
        await callers.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await journal.close()
        await store.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--database-url", help="default: a fresh SQLite file per round")
    arguments = parser.parse_args()

    sandbox = AsteriskSandbox(default_conf_dir())
    await asyncio.to_thread(sandbox.start)
    print(
        f"Asterisk {sandbox.asterisk_version}; from the last key (Asterisk's timestamp) to the "
        "entry's outcome committed in the local journal (durable: the call goes back then), "
        "and to its row in the database (the journal's drain)"
    )
    print(
        f"{'calls':>5}  {'rows ok':>9}  {'journal median / p99 ms':>23}  "
        f"{'database median / p99 ms':>24}  {'event delivery median ms':>24}"
    )
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for n in arguments.calls:
                url = arguments.database_url or f"sqlite+aiosqlite:///{scratch}/bench-{n}.sqlite3"
                journal_path = Path(scratch) / f"journal-{n}.sqlite3"
                durable, stored, delivery, correct = await run_round(sandbox, url, journal_path, n)
                print(
                    f"{n:>5}  {correct:>4}/{n:<4}  "
                    f"{statistics.median(durable):>11.1f} / {percentile(durable, 0.99):>7.1f}  "
                    f"{statistics.median(stored):>12.1f} / {percentile(stored, 0.99):>7.1f}  "
                    f"{statistics.median(delivery):>24.1f}",
                    flush=True,
                )
    finally:
        await asyncio.to_thread(sandbox.stop)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
