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
from ari_app.settings import Settings
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.records import EntryOutcome, EntryStart
from ari_app.store.repository import Store
from devtools.sandbox import AsteriskSandbox, default_conf_dir
from devtools.simulate import SimulatedCallers


class TimedStore:
    """The real store, noting when each entry's final row was committed."""

    def __init__(self, store: Store, expected: int) -> None:
        self.store = store
        self.committed_at: dict[str, float] = {}
        self.expected = expected
        self.all_committed = asyncio.Event()

    async def record_start(self, start: EntryStart) -> None:
        await self.store.record_start(start)

    async def record_outcome(self, entry_key: str, outcome: EntryOutcome) -> None:
        await self.store.record_outcome(entry_key, outcome)
        self.committed_at[entry_key] = time.time()
        if len(self.committed_at) >= self.expected:
            self.all_committed.set()


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
    sandbox: AsteriskSandbox, database_url: str, calls: int
) -> tuple[list[float], list[float], int]:
    await upgrade_to_head_async(database_url)
    store = TimedStore(Store.from_url(database_url), calls)
    settings = Settings(
        ari_url=sandbox.ari_url,
        ari_user=sandbox.ari_user,
        ari_password=sandbox.ari_password,
        database_url=database_url,
        hash_key="bench",
    )
    app = TimedApplication(settings, store)
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
        latencies: list[float] = []
        delivery: list[float] = []
        correct = 0
        for call, digits, result in zip(placed, keyed, results, strict=True):
            entry = await store.store.get_entry_by_key(result.entry_id)
            if entry and entry.status == "completed" and entry.user_input == digits:
                correct += 1
            key_at = app.last_key_at.get(call.channel_id)
            committed = store.committed_at.get(result.entry_id)
            received = app.last_key_received_at.get(call.channel_id)
            if key_at is not None and committed is not None and received is not None:
                latencies.append((committed - key_at) * 1000)
                delivery.append((received - key_at) * 1000)
        return latencies, delivery, correct
    finally:
        await callers.close()
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await store.store.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--database-url", help="default: a fresh SQLite file per round")
    arguments = parser.parse_args()

    sandbox = AsteriskSandbox(default_conf_dir())
    await asyncio.to_thread(sandbox.start)
    print(f"Asterisk {sandbox.asterisk_version}; last key (Asterisk timestamp) -> row committed")
    print(
        f"{'calls':>5}  {'rows ok':>9}  {'median ms':>9}  {'p99 ms':>7}  {'max ms':>7}"
        f"  {'event delivery median ms':>24}"
    )
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for n in arguments.calls:
                url = arguments.database_url or f"sqlite+aiosqlite:///{scratch}/bench-{n}.sqlite3"
                latencies, delivery, correct = await run_round(sandbox, url, n)
                print(
                    f"{n:>5}  {correct:>4}/{n:<4}  {statistics.median(latencies):>9.1f}  "
                    f"{percentile(latencies, 0.99):>7.1f}  {max(latencies):>7.1f}"
                    f"  {statistics.median(delivery):>24.1f}",
                    flush=True,
                )
    finally:
        await asyncio.to_thread(sandbox.stop)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
