"""Fault tests on the real Asterisk: killed and restarted in a loop mid-entry, and stalled
(SIGSTOP) without closing the event websocket.

Each test leaves the sandbox running: the stalled Asterisk is always continued, and the killed
one is always started again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from ari_app.ari.client import basic_authorization
from devtools.sandbox import AsteriskSandbox
from tests.asterisk_harness import stored_entry
from tests.conftest import Service, service_settings, serving
from tests.test_asterisk_calls import ari_port_open

RESTARTS = 20
# Within this long of ARI answering again, serve is connected and taking calls.
RECONNECT_WITHIN_S = 2.0
HEARTBEAT_S = 1.0
WAIT_FOR_TWO_KEYS = "wait:0.5^dtmf:12^wait:60"


@pytest.fixture
async def speech_service(asterisk: AsteriskSandbox, tmp_path: Path) -> AsyncIterator[Service]:
    """serve with speech on (every entry has a snoop, an externalMedia channel and a bridge)
    and a short websocket heartbeat."""
    settings = dataclasses.replace(
        service_settings(asterisk, f"sqlite+aiosqlite:///{tmp_path / 'faults.sqlite3'}"),
        speech=True,
        ari_heartbeat=HEARTBEAT_S,
    )
    async with serving(settings) as service:
        yield service


async def wait_for_keys(service: Service, channel_id: str, missing: int) -> None:
    """Until the entry on ``channel_id`` lacks only ``missing`` digits."""
    async with asyncio.timeout(15):
        while True:
            session = service.app.sessions.get(channel_id)
            if session is not None and session.digits_missing == missing:
                return
            await asyncio.sleep(0.02)


async def ari_answering(asterisk: AsteriskSandbox) -> float:
    """Poll ARI until it answers; returns when it first did (time.monotonic)."""
    url = asterisk.ari_url.rstrip("/") + "/ari/asterisk/info"
    headers = {"Authorization": basic_authorization(asterisk.ari_user, asterisk.ari_password)}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
        while True:
            try:
                async with http.get(url, headers=headers) as response:
                    if response.status == 200:
                        return time.monotonic()
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.02)


async def kill_and_restart(asterisk: AsteriskSandbox) -> float:
    """SIGKILL Asterisk (no hangups, the websocket just drops), start it again; returns when
    ARI first answered again."""
    pid = asterisk.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        while await ari_port_open(asterisk):  # the dying process still holds its sockets
            await asyncio.sleep(0.02)
    answering = asyncio.create_task(ari_answering(asterisk))
    await asyncio.to_thread(asterisk.start)
    return await answering


def running_tasks() -> Counter[str]:
    """What the event loop runs, by coroutine (a reconnect replaces a task with a new one)."""
    return Counter(task.get_coro().__qualname__ for task in asyncio.all_tasks())


async def leftovers_on_asterisk(service: Service) -> list[str]:
    channels = await service.callers.leftover_channels()
    status, bridges = await service.callers.request("GET", "/bridges")
    assert status == 200
    return [c for c in channels if c.startswith(("Snoop/", "UnicastRTP/"))] + [
        f"bridge {bridge['id']}" for bridge in bridges
    ]


@pytest.mark.timeout(240)
async def test_asterisk_killed_and_restarted_in_a_loop_mid_entry(
    speech_service: Service, asterisk: AsteriskSandbox
) -> None:
    service = speech_service
    tasks_before = running_tasks()
    reconnect_s: list[float] = []
    for round_number in range(1, RESTARTS + 1):
        call = await service.callers.place_call(
            "num_digits=4,prompt=sound:beep,no_input_timeout=30,dtmf_input_timeout=30",
            WAIT_FOR_TWO_KEYS,
        )
        await wait_for_keys(service, call.channel_id, missing=2)
        answered_at = await kill_and_restart(asterisk)
        async with asyncio.timeout(10):
            while service.app.reconnects < round_number or not service.app.connected.is_set():
                await asyncio.sleep(0.01)
        reconnect_s.append(time.monotonic() - answered_at)
        entry = await stored_entry(service.store, call.channel_id)
        assert (entry.status, entry.user_input) == ("interrupted", "12"), round_number

    print(f"reconnected {RESTARTS} times, within {max(reconnect_s):.2f} s of ARI answering")
    assert max(reconnect_s) <= RECONNECT_WITHIN_S, reconnect_s
    call = await service.callers.place_call("num_digits=2,prompt=sound:beep", "wait:0.5^dtmf:77")
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "77")
    await service.app.wait_idle(within=10)
    assert service.app.sessions == {}
    assert await leftovers_on_asterisk(service) == []
    assert running_tasks() == tasks_before


async def test_a_stalled_asterisk_is_noticed_by_ping_and_recovered_like_a_drop(
    speech_service: Service, asterisk: AsteriskSandbox
) -> None:
    service = speech_service
    call = await service.callers.place_call(
        "num_digits=4,prompt=sound:beep,no_input_timeout=30,dtmf_input_timeout=30",
        "wait:0.5^dtmf:12^wait:6^dtmf:34",
    )
    await wait_for_keys(service, call.channel_id, missing=2)
    pid = asterisk.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the sockets stay open; nothing answers
    try:
        stalled_at = time.monotonic()
        async with asyncio.timeout(10):
            while service.app.connected.is_set():
                await asyncio.sleep(0.01)
        noticed_s = time.monotonic() - stalled_at
        await asyncio.sleep(1.0)
    finally:
        os.kill(pid, signal.SIGCONT)
    continued_at = time.monotonic()
    async with asyncio.timeout(10):
        while service.app.reconnects < 1 or not service.app.connected.is_set():
            await asyncio.sleep(0.01)
    print(
        f"stall noticed in {noticed_s:.2f} s; reconnected {time.monotonic() - continued_at:.2f} s"
    )
    # aiohttp closes the socket when a ping's pong is half a heartbeat late.
    assert noticed_s <= 1.5 * HEARTBEAT_S + 1.0
    # As after a drop: the channel is still there, so the entry goes on and completes.
    result = await service.callers.dialplan_result(call, within=30)
    assert (result.status, result.digits) == ("completed", "1234")
    await service.app.wait_idle(within=10)
    assert await leftovers_on_asterisk(service) == []
