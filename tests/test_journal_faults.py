"""Fault tests on real parts: the real ``ari-digits serve`` process, killed with SIGKILL in the
middle of a burst of FastAGI calls, then started again; a real PostgreSQL (a throw-away cluster)
stopped under concurrent callers.

The callers are scripted FastAGI peers (devtools.fake_asterisk, the bytes Asterisk 22 sends);
ARI points at a closed port (``serve`` keeps reconnecting in the background), so no Asterisk
is needed and the test needs no sandbox lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ari_app.journal import Journal
from ari_app.metrics import Metrics
from ari_app.session import Sessions
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.repository import Store
from devtools.fake_asterisk import FakeAsterisk, environment
from devtools.throwaway_pg import ThrowawayPostgres
from tests.conftest import free_tcp_port
from tests.test_journal import HANDBACK_LIMIT_S, keyed_entry

SERVE = [str(Path(sys.executable).with_name("ari-digits")), "serve"]
BURST = 40
KILL_AFTER = 15  # hand-backs seen before the kill


def serve_environment(tmp_path: Path, agi_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "ARI_URL": f"http://127.0.0.1:{free_tcp_port()}/",
        "ARI_PASSWORD": "unused",
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'central.sqlite3'}",
        "JOURNAL_PATH": str(tmp_path / "journal.sqlite3"),
        "AGI_PORT": str(agi_port),
        "API_PORT": str(free_tcp_port()),
        "SPEECH": "off",
        "DIGITS_HASH_KEY": "test",
    }


async def start_serve(env: dict[str, str], agi_port: int) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *SERVE, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(20):
        while True:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", agi_port)
                writer.close()
                return process
            assert process.returncode is None, "serve exited at start"
            await asyncio.sleep(0.1)


@contextlib.contextmanager
def killed_on_exit(process: asyncio.subprocess.Process) -> Iterator[None]:
    try:
        yield
    finally:
        if process.returncode is None:
            process.kill()


async def one_caller(agi_port: int, n: int, handed_back: dict[str, str]) -> None:
    caller = FakeAsterisk("127.0.0.1", agi_port)
    try:
        await caller.connect(
            environment(query="num_digits=4&prompt=sound:beep", channel_id=f"1795700000.{n}")
        )
        # Keys spread over the burst: some entries are mid-collection when the kill lands.
        transcript = await caller.answer_all(f"{n % 10}234", keys_after=0.05 * n, within=15)
        variables = transcript.variables
        # The kill may land between two SET VARIABLEs: only a full hand-back counts.
        if variables.get("DIGITS_STATUS") == "completed" and "DIGITS_ID" in variables:
            handed_back[variables["DIGITS_ID"]] = variables["DIGITS"]
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        pass  # serve was killed under this caller
    finally:
        with contextlib.suppress(Exception):
            await caller.close()


@pytest.mark.timeout(120)
async def test_serve_killed_mid_burst_stores_every_journaled_entry_on_restart(
    tmp_path: Path,
) -> None:
    agi_port = free_tcp_port()
    env = serve_environment(tmp_path, agi_port)
    handed_back: dict[str, str] = {}
    serve = await start_serve(env, agi_port)
    with killed_on_exit(serve):
        callers = [asyncio.create_task(one_caller(agi_port, n, handed_back)) for n in range(BURST)]
        async with asyncio.timeout(30):
            while len(handed_back) < KILL_AFTER:
                await asyncio.sleep(0.01)
        serve.send_signal(signal.SIGKILL)
        await serve.wait()
        await asyncio.gather(*callers)
    assert KILL_AFTER <= len(handed_back) < BURST, "the kill must land mid-burst"

    # Start again: the journal is replayed, then stop it cleanly.
    restarted = await start_serve(env, agi_port)
    with killed_on_exit(restarted):
        restarted.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await restarted.communicate()
        assert restarted.returncode == 0, stderr.decode()[-2000:]

    async with Store.from_url(env["DATABASE_URL"]) as store:
        entries = await store.list_entries(limit=500)
        for key, digits in handed_back.items():
            entry = await store.get_entry_by_key(key)
            assert entry is not None, f"entry {key} was handed back but not stored"
            assert (entry.status, entry.user_input) == ("completed", digits)
    keys = [entry.entry_key for entry in entries]
    assert len(keys) == len(set(keys)), "an entry was stored twice"
    # Every entry started before the kill is stored, finished or interrupted; none in progress.
    statuses = [entry.status for entry in entries]
    assert set(statuses) == {"completed", "interrupted"}, statuses
    assert len(entries) >= len(handed_back)


@pytest.fixture
def throwaway_pg() -> Iterator[ThrowawayPostgres]:
    """A PostgreSQL cluster of the test's own: the shared one is never stopped."""
    pg = ThrowawayPostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.destroy()


@pytest.mark.timeout(120)
async def test_postgresql_stopped_under_concurrent_callers_loses_nothing_and_delays_nobody(
    throwaway_pg: ThrowawayPostgres, tmp_path: Path
) -> None:
    """Real PostgreSQL, stopped (fast shutdown) while 25 callers finish their entries through
    the session runner and the journal, then started again."""
    await upgrade_to_head_async(throwaway_pg.url)
    store = Store.from_url(throwaway_pg.url)
    journal = await Journal.open(
        tmp_path / "journal.sqlite3", store, metrics=Metrics(), max_bytes=None
    )
    journal.start_draining()
    sessions = Sessions(journal, hash_key="k", metrics=Metrics())
    try:
        healthy = await asyncio.gather(
            *(keyed_entry(sessions, f"h{n}", f"{n:04}") for n in range(25))
        )
        await asyncio.to_thread(throwaway_pg.stop)
        down = await asyncio.gather(*(keyed_entry(sessions, f"d{n}", f"{n:04}") for n in range(25)))
        await asyncio.sleep(1.0)  # the drain meets the outage and backs off
        assert journal.backlog().database_failing
        assert journal.backlog().records >= 2 * len(down)
        await asyncio.to_thread(throwaway_pg.start)
        await journal.wait_drained(within=60)
    finally:
        await journal.close()
    try:
        for port, _ in healthy + down:
            assert port.variables["DIGITS_STATUS"] == "completed"
            entry = await store.get_entry_by_key(port.variables["DIGITS_ID"])
            assert entry is not None
            assert (entry.status, entry.channel_id) == ("completed", port.channel_id)
        assert len(await store.list_entries(limit=500)) == 50  # none twice
    finally:
        await store.close()
    healthy_p99 = max(seconds for _, seconds in healthy)
    down_p99 = max(seconds for _, seconds in down)
    # "Unaffected": within the healthy figure plus a margin for a loaded CI machine.
    assert down_p99 < max(HANDBACK_LIMIT_S, 3 * healthy_p99), (healthy_p99, down_p99)
