"""A PostgreSQL outage under concurrent callers: results stored, lost, duplicated, and the
hand-back latency while the database is healthy and while it is down.

The service's own parts (the ARI application, the session runner, the journal, the store) run
against the real Asterisk sandbox and a PostgreSQL cluster of the bench's own
(devtools.throwaway_pg: the machine's shared cluster is never stopped). ``--callers``
simulated callers (Local channels, devtools.simulate) call back to back, each keying 4 digits
into ``num_digits=4``. After ``--healthy-s`` seconds the database is slow for ``--slow-s``
seconds (the store waits 1 s before each statement: a stand-in for a slow server, made in the
client), then PostgreSQL is stopped (fast shutdown) for ``--outage-s`` seconds, then started again; the callers stop, and the bench waits for the
journal to drain and counts:

- handed back: entries that went back to the dialplan with ``DIGITS_STATUS=completed``;
- stored: those found in PostgreSQL under their ``DIGITS_ID`` with the digits keyed;
- lost: handed back but not stored (must be 0); duplicated: rows beyond one per entry (must be 0);
- hand-back latency: from Asterisk's timestamp of the last key to the channel's release, p50 and
  p99, for entries whose last key fell while the database was healthy, slow, and down.

Needs the sandbox lock when others share the machine:

    flock /tmp/ari-digits-asterisk.lock .venv/bin/python bench/outage.py --outage-s 60 --callers 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from ari_app.ari.app import AriApplication
from ari_app.journal import Journal
from ari_app.metrics import Metrics
from ari_app.ports import CallPort
from ari_app.settings import Settings
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.models import entries_table
from ari_app.store.records import EntryOutcome, EntryStart
from ari_app.store.repository import Store, create_engine_for_url
from devtools.sandbox import AsteriskSandbox, default_conf_dir
from devtools.simulate import SimulatedCallers
from devtools.throwaway_pg import ThrowawayPostgres

SLOW_STATEMENT_S = 1.0


@dataclass
class HandBack:
    variables: dict[str, str]
    released_at: float  # time.time()


class ReleaseTimingPort:
    """The application's own port, noting what went back to the dialplan and when."""

    def __init__(self, inner: CallPort, on_release: Callable[[HandBack], None]) -> None:
        self._inner = inner
        self._on_release = on_release
        self._variables: dict[str, str] = {}

    async def answer(self) -> None:
        await self._inner.answer()

    async def play(self, playback_id: str, media: Any) -> None:
        await self._inner.play(playback_id, media)

    async def stop_playback(self, playback_id: str) -> None:
        await self._inner.stop_playback(playback_id)

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        self._variables = dict(variables)
        await self._inner.set_variables(variables)

    async def release(self) -> None:
        await self._inner.release()
        self._on_release(HandBack(self._variables, time.time()))


class SlowableStore(Store):
    """The real store; while ``delay_s`` is set, each statement waits that long first."""

    delay_s = 0.0

    async def start_entries(self, starts: Sequence[EntryStart]) -> list[int]:
        await asyncio.sleep(self.delay_s)
        return await super().start_entries(starts)

    async def entry_id_for_key(self, entry_key: str) -> int | None:
        await asyncio.sleep(self.delay_s)
        return await super().entry_id_for_key(entry_key)

    async def finish_entry(self, entry_id: int, outcome: EntryOutcome) -> None:
        await asyncio.sleep(self.delay_s)
        await super().finish_entry(entry_id, outcome)


class TimedApplication(AriApplication):
    """Notes Asterisk's timestamp of each channel's last key, and each hand-back."""

    last_key_at: dict[str, float]
    handed_back: dict[str, asyncio.Future[HandBack]]

    def dispatch(self, raw: dict[str, Any]) -> None:
        if raw.get("type") == "ChannelDtmfReceived":
            stamp = datetime.strptime(raw["timestamp"], "%Y-%m-%dT%H:%M:%S.%f%z")
            self.last_key_at[raw["channel"]["id"]] = stamp.timestamp()
        super().dispatch(raw)

    def port(self, channel_id: str) -> CallPort:
        done = self.handed_back.setdefault(channel_id, asyncio.get_running_loop().create_future())

        def note(hand_back: HandBack) -> None:
            if not done.done():
                done.set_result(hand_back)

        return ReleaseTimingPort(super().port(channel_id), note)


@dataclass
class Outcome:
    channel_id: str
    digits: str
    hand_back: HandBack | None


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def caller_loop(
    app: TimedApplication, callers: SimulatedCallers, stop: asyncio.Event, out: list[Outcome]
) -> None:
    while not stop.is_set():
        digits = "".join(random.choices("0123456789", k=4))
        try:
            call = await callers.place_call(
                "num_digits=4,prompt=sound:beep", f"wait:0.3^dtmf:{digits}"
            )
        except Exception as exc:  # the sandbox refused: note it and go on
            print(f"originate failed: {exc}", file=sys.stderr)
            await asyncio.sleep(0.5)
            continue
        done = app.handed_back.setdefault(
            call.channel_id, asyncio.get_running_loop().create_future()
        )
        try:
            async with asyncio.timeout(20):
                hand_back: HandBack | None = await done
        except TimeoutError:
            hand_back = None
        out.append(Outcome(call.channel_id, digits, hand_back))


async def run(args: argparse.Namespace) -> int:
    sandbox = AsteriskSandbox(default_conf_dir())
    await asyncio.to_thread(sandbox.start)
    pg = await asyncio.to_thread(ThrowawayPostgres)
    scratch = Path(tempfile.mkdtemp(prefix="ari-digits-outage-"))
    try:
        await asyncio.to_thread(pg.start)
        await upgrade_to_head_async(pg.url)
        store = SlowableStore(create_engine_for_url(pg.url))
        metrics = Metrics()
        journal = await Journal.open(
            scratch / "journal.sqlite3", store, metrics=metrics, max_bytes=None
        )
        journal.start_draining()
        settings = Settings(
            ari_url=sandbox.ari_url,
            ari_user=sandbox.ari_user,
            ari_password=sandbox.ari_password,
            database_url=pg.url,
            hash_key="bench",
            speech=False,
        )
        app = TimedApplication(settings, journal, metrics=metrics)
        app.last_key_at = {}
        app.handed_back = {}
        runner = asyncio.create_task(app.run())
        callers = SimulatedCallers(sandbox.ari_url, sandbox.ari_user, sandbox.ari_password)
        outcomes: list[Outcome] = []
        stop = asyncio.Event()
        try:
            async with asyncio.timeout(15):
                await app.connected.wait()
            loops = [
                asyncio.create_task(caller_loop(app, callers, stop, outcomes))
                for _ in range(args.callers)
            ]
            await asyncio.sleep(args.healthy_s)
            slow_from = time.time()
            store.delay_s = SLOW_STATEMENT_S
            print(f"database slow (1 s a statement) for {args.slow_s:.0f} s", flush=True)
            await asyncio.sleep(args.slow_s)
            store.delay_s = 0.0
            outage_from = time.time()
            await asyncio.to_thread(pg.stop)
            print(f"PostgreSQL stopped for {args.outage_s:.0f} s", flush=True)
            await asyncio.sleep(args.outage_s)
            peak = journal.backlog()
            await asyncio.to_thread(pg.start)
            outage_to = time.time()
            print(
                f"PostgreSQL started again; journal backlog at the end of the outage: "
                f"{peak.records} records, oldest {peak.oldest_age_s or 0:.1f} s",
                flush=True,
            )
            await asyncio.sleep(args.after_s)
            stop.set()
            await asyncio.gather(*loops)
            await app.wait_idle(within=30)
            drain_from = time.time()
            await journal.wait_drained(within=300)
            drained_in = time.time() - drain_from
        finally:
            await callers.close()
            await app.shutdown()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
            await journal.close()

        completed = [
            o
            for o in outcomes
            if o.hand_back is not None and o.hand_back.variables.get("DIGITS_STATUS") == "completed"
        ]
        stored = lost = wrong = 0
        for outcome in completed:
            assert outcome.hand_back is not None
            entry = await store.get_entry_by_key(outcome.hand_back.variables["DIGITS_ID"])
            if entry is None:
                lost += 1
            elif entry.status == "completed" and entry.user_input == outcome.digits:
                stored += 1
            else:
                wrong += 1
        async with store.engine.connect() as conn:
            rows = (
                await conn.execute(select(func.count()).select_from(entries_table))
            ).scalar_one()
            per_channel = (
                await conn.execute(
                    select(entries_table.c.channel_id, func.count())
                    .group_by(entries_table.c.channel_id)
                    .having(func.count() > 1)
                )
            ).all()
        await store.close()
        duplicated = sum(count - 1 for _, count in per_channel)

        healthy: list[float] = []
        slow: list[float] = []
        down: list[float] = []
        for outcome in completed:
            assert outcome.hand_back is not None
            key_at = app.last_key_at.get(outcome.channel_id)
            if key_at is None:
                continue
            latency_ms = (outcome.hand_back.released_at - key_at) * 1000
            if key_at < slow_from:
                healthy.append(latency_ms)
            elif key_at < outage_from:
                slow.append(latency_ms)
            elif key_at < outage_to:
                down.append(latency_ms)
        not_completed = len(outcomes) - len(completed)
        print(
            f"\n{args.callers} concurrent callers; PostgreSQL down {args.outage_s:.0f} s "
            f"(after {args.healthy_s:.0f} s healthy and {args.slow_s:.0f} s slow)"
        )
        print(f"calls placed                {len(outcomes)}")
        print(f"handed back completed       {len(completed)}  (other outcomes: {not_completed})")
        print(f"results stored              {stored}")
        print(f"lost                        {lost}")
        print(f"stored with other digits    {wrong}")
        print(f"duplicated                  {duplicated}  (rows in the database: {rows})")
        print(f"journal drained in          {drained_in:.1f} s after the callers stopped")
        for name, values in (
            ("healthy", healthy),
            ("slow (1 s/stmt)", slow),
            ("during the outage", down),
        ):
            if values:
                print(
                    f"hand-back latency, {name:<17} p50 {statistics.median(values):6.1f} ms  "
                    f"p99 {percentile(values, 0.99):6.1f} ms  max {max(values):6.1f} ms  "
                    f"(n={len(values)})"
                )
        return 0 if lost == 0 and duplicated == 0 and wrong == 0 else 1
    finally:
        await asyncio.to_thread(pg.destroy)
        await asyncio.to_thread(sandbox.stop)
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--healthy-s", type=float, default=20.0)
    parser.add_argument("--slow-s", type=float, default=20.0)
    parser.add_argument("--after-s", type=float, default=10.0, help="calls after the restart")
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
