"""One ``serve`` taking calls from several Asterisks (ARI_URL as a comma-separated list).

The real-Asterisk tests run a second sandbox beside the shared one (its own chroot, ports and
entity id) and stop it at the end. Run them under the shared lock::

    flock /tmp/ari-digits-asterisk.lock .venv/bin/pytest tests/test_multi_asterisk.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ari_app.ari import app as ari_app_module
from ari_app.ari.app import AriApplication, AriApplications
from ari_app.ari.client import AriClient, AriUnavailable, wait_until_subscribed
from ari_app.doctor import Status, run_checks
from ari_app.doctor.asterisk_ids import check_asterisk_ids
from ari_app.metrics import Metrics
from ari_app.settings import Settings, SettingsError
from ari_app.store.records import StoredEntry
from ari_app.store.repository import Store
from devtools.memory_store import MemoryStore
from devtools.sandbox import AsteriskSandbox
from devtools.simulate import Call, SimulatedCallers
from tests.conftest import REPO, free_tcp_port, service_settings, serving
from tests.test_ari_adapter import DTMF, STASIS_START, with_channel

QUICK = "prompt=sound:beep"

# --------------------------------------------------------------------------- settings


def test_ari_url_takes_one_url_or_several() -> None:
    one = Settings.from_env({"ARI_URL": "http://pbx1:8088"})
    assert one.ari_urls == ("http://pbx1:8088/",)
    several = Settings.from_env({"ARI_URL": " http://pbx1:8088/ , https://pbx2:8089/ari-x"})
    assert several.ari_urls == ("http://pbx1:8088/", "https://pbx2:8089/ari-x/")
    assert several.ari_url == "http://pbx1:8088/"
    assert several.for_asterisk("https://pbx2:8089/ari-x/").ari_urls == (
        "https://pbx2:8089/ari-x/",
    )


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://pbx1:8088/,", "ARI_URL has an empty item (a stray comma?)"),
        ("http://pbx1:8088/,,http://pbx2:8088/", "ARI_URL has an empty item"),
        ("http://pbx1:8088/,pbx2:8088", "ARI_URL must start with http:// or https://, got 'pbx2"),
        ("http://pbx1:8088,http://pbx1:8088/", "ARI_URL lists http://pbx1:8088/ twice"),
    ],
)
def test_a_bad_ari_url_list_is_named(value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        Settings.from_env({"ARI_URL": value})


# --------------------------------------------------------------------------- scripted Asterisks


class ScriptedAsterisk:
    """One Asterisk's ARI as :class:`AriApplication` uses it: events the test pushes on its
    websocket, REST calls recorded, and an off switch (connections refused)."""

    app = "digits"

    def __init__(self, url: str) -> None:
        self.base_url = url
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.down = False
        self.variables: dict[str, dict[str, str]] = {}
        self.continued: list[str] = []

    async def connect(self) -> None:
        if self.down:
            raise AriUnavailable("connection refused")

    async def close(self) -> None:
        pass

    async def listen(self, on_event: Any, opened: asyncio.Event) -> None:
        opened.set()
        while (event := await self.events.get()) is not None:  # None: the websocket drops
            on_event(event)

    async def keep_only_events(self, types: Any) -> bool:
        return True

    async def answer(self, channel_id: str) -> None:
        pass

    async def play(self, channel_id: str, playback_id: str, media: Any) -> None:
        pass

    async def stop_playback(self, playback_id: str) -> None:
        pass

    async def set_variables(self, channel_id: str, variables: Mapping[str, str]) -> None:
        self.variables[channel_id] = dict(variables)

    async def continue_in_dialplan(self, channel_id: str) -> None:
        self.continued.append(channel_id)

    async def channel_exists(self, channel_id: str) -> bool:
        return False

    def start(self, channel_id: str, asterisk_id: str, arguments: list[str]) -> None:
        event = with_channel(STASIS_START, channel_id)
        event["asterisk_id"] = asterisk_id
        event["args"] = arguments
        self.events.put_nowait(event)

    def key(self, channel_id: str, digits: str) -> None:
        for digit in digits:
            self.events.put_nowait({**with_channel(DTMF, channel_id), "digit": digit})


@contextlib.asynccontextmanager
async def scripted_fleet(
    store: MemoryStore, *asterisks: ScriptedAsterisk, metrics: Metrics | None = None
) -> AsyncIterator[AriApplications]:
    by_url = {asterisk.base_url: asterisk for asterisk in asterisks}
    settings = Settings(
        hash_key="k",
        speech=False,
        ari_url=asterisks[0].base_url,
        more_ari_urls=tuple(a.base_url for a in asterisks[1:]),
    )
    fleet = AriApplications(
        [
            AriApplication(
                settings.for_asterisk(url),
                store,
                client_factory=lambda one: by_url[one.ari_url],  # type: ignore[arg-type,return-value]
                endpoint=endpoint,
                metrics=metrics,
            )
            for endpoint, url in enumerate(settings.ari_urls, start=1)
        ]
    )
    runner = asyncio.create_task(fleet.run())
    try:
        async with asyncio.timeout(5):
            await fleet.wait_connected()
        yield fleet
    finally:
        await fleet.shutdown(grace=1)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


def outcome_by_asterisk(store: MemoryStore) -> dict[str | None, tuple[str, str]]:
    """Each entry's (status, digits) by the asterisk_id it recorded."""
    found = {}
    for key, start in store.starts.items():
        outcome = store.outcomes.get(key)
        assert outcome is not None, f"no outcome for {start.channel_id}"
        found[start.asterisk_id] = (outcome.status, outcome.user_input)
    return found


async def test_each_asterisk_runs_its_own_entries_even_with_the_same_channel_id() -> None:
    """Two Asterisks started in the same second hand out the same channel ids."""
    store = MemoryStore()
    first = ScriptedAsterisk("http://pbx1:8088/")
    second = ScriptedAsterisk("http://pbx2:8088/")
    async with scripted_fleet(store, first, second) as fleet:
        first.start("1795621797.0", "02:00:00:00:00:01", ["num_digits=3", QUICK])
        second.start("1795621797.0", "02:00:00:00:00:02", ["num_digits=3", QUICK])
        first.key("1795621797.0", "123")
        second.key("1795621797.0", "789")
        await fleet.wait_idle(within=5)
    assert first.variables["1795621797.0"]["DIGITS"] == "123"
    assert second.variables["1795621797.0"]["DIGITS"] == "789"
    assert first.continued == second.continued == ["1795621797.0"]
    assert outcome_by_asterisk(store) == {
        "02:00:00:00:00:01": ("completed", "123"),
        "02:00:00:00:00:02": ("completed", "789"),
    }


async def test_an_asterisk_going_down_leaves_the_others_calls_alone() -> None:
    store = MemoryStore()
    first = ScriptedAsterisk("http://pbx1:8088/")
    second = ScriptedAsterisk("http://pbx2:8088/")
    async with scripted_fleet(store, first, second) as fleet:
        first.start("a", "02:00:00:00:00:01", ["num_digits=4", QUICK])
        second.start("b", "02:00:00:00:00:02", ["num_digits=4", QUICK])
        first.key("a", "12")
        second.key("b", "56")
        async with asyncio.timeout(5):
            while len(store.starts) < 2:
                await asyncio.sleep(0.01)
        second.down = True
        second.events.put_nowait(None)  # its websocket drops; reconnecting is refused
        async with asyncio.timeout(5):
            while fleet.connected() != [True, False]:
                await asyncio.sleep(0.01)
        first.key("a", "34")
        async with asyncio.timeout(5):
            while "a" not in first.continued:
                await asyncio.sleep(0.01)
        assert first.variables["a"]["DIGITS"] == "1234"
        assert fleet.apps[1].sessions.keys() == {"b"}, "b waits for its Asterisk"
    # Shutdown ends what the stopped Asterisk still had, as interrupted.
    assert outcome_by_asterisk(store) == {
        "02:00:00:00:00:01": ("completed", "1234"),
        "02:00:00:00:00:02": ("interrupted", "56"),
    }
    assert second.continued == []


class ContestedAsterisk(ScriptedAsterisk):
    """A scripted Asterisk on which another websocket takes the app name over (as a second
    serve with the same ARI_APP does), and holds it until the test releases it."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.connects = 0
        self.held_elsewhere = False
        self.asked_whether_held = 0

    async def connect(self) -> None:
        await super().connect()
        self.connects += 1

    async def app_is_registered(self) -> bool:
        self.asked_whether_held += 1
        return self.held_elsewhere

    def take_app_over(self) -> None:
        self.held_elsewhere = True
        self.events.put_nowait({"type": "ApplicationReplaced", "application": self.app})


async def until(condition: Any, within: float = 5) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


async def test_a_taken_over_app_is_loud_hands_its_calls_back_and_waits_for_the_name(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ari_app_module, "REPLACED_RECHECK_S", 0.02)
    store = MemoryStore()
    metrics = Metrics()
    pbx = ContestedAsterisk("http://pbx1:8088/")
    async with scripted_fleet(store, pbx, metrics=metrics) as fleet:
        pbx.start("a", "02:00:00:00:00:01", ["num_digits=4", QUICK])
        pbx.key("a", "12")
        await until(lambda: len(store.starts) == 1)

        pbx.take_app_over()
        # The entry cannot go on (its channel's events go elsewhere now): it goes back to the
        # dialplan as interrupted, through REST, which still works.
        await until(lambda: "a" in pbx.continued)
        assert pbx.variables["a"]["DIGITS_STATUS"] == "interrupted"
        assert fleet.connected() == [False]
        assert metrics.registry.get_sample_value("ari_digits_ari_connected", {"endpoint": "1"}) == 0
        replaced = metrics.registry.get_sample_value(
            "ari_digits_ari_app_replaced_total", {"endpoint": "1"}
        )
        assert replaced == 1
        [loud] = [r for r in caplog.records if "was taken over" in r.getMessage()]
        assert loud.levelname == "ERROR"
        assert "Stasis app 'digits' on the Asterisk at http://pbx1:8088/" in loud.getMessage()

        # No taking the name back while the other holds it: two serves would steal each
        # other's calls in turn.
        await until(lambda: pbx.asked_whether_held >= 5)
        assert pbx.connects == 1 and fleet.connected() == [False]

        pbx.held_elsewhere = False  # the other serve stops
        async with asyncio.timeout(5):
            await fleet.wait_connected()
        assert pbx.connects == 2
        pbx.start("b", "02:00:00:00:00:01", ["num_digits=2", QUICK])
        pbx.key("b", "34")
        await until(lambda: "b" in pbx.continued)
    assert {
        start.channel_id: outcome.status
        for start, outcome in (store.by_channel(channel) for channel in ("a", "b"))
        if outcome is not None
    } == {"a": "interrupted", "b": "completed"}


def test_asterisks_sharing_an_entity_id_are_named() -> None:
    shared = check_asterisk_ids({1: "02:00:00:00:00:01", 2: "52:54:00:aa", 3: "52:54:00:aa"})
    assert shared.status is Status.WARN
    assert shared.detail.startswith("Asterisks 2 and 3 report 52:54:00:aa")
    assert check_asterisk_ids({1: "a", 2: "b"}).status is Status.PASS
    assert check_asterisk_ids({1: "a", 2: None}).status is Status.SKIP


# --------------------------------------------------------------------------- two real Asterisks


SECOND_STATE_DIR = Path("/var/tmp/ari-digits-sandbox-second")
SECOND_ENTITY_ID = "02:00:00:00:00:02"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def second_asterisk(asterisk: AsteriskSandbox) -> Iterator[AsteriskSandbox]:
    """A second sandbox beside the shared one: a chroot of its own (the shared one's processes
    are found by their root, so this one never looks like it), other ports, its own entity id.
    Stopped at the end; its chroot stays for the next run."""
    sandbox = AsteriskSandbox(
        REPO / "asterisk_conf",
        state_dir=SECOND_STATE_DIR,
        http_port=free_tcp_port(),
        sip_port=free_udp_port(),
        rtp_ports=(11000, 11999),
        entity_id=SECOND_ENTITY_ID,
    )
    sandbox.stop()  # one a crashed run left
    sandbox.start(timeout=60)
    try:
        yield sandbox
    finally:
        sandbox.stop()


async def asterisk_id(sandbox: AsteriskSandbox) -> str:
    callers = SimulatedCallers(sandbox.ari_url, sandbox.ari_user, sandbox.ari_password)
    try:
        status, body = await callers.request("GET", "/asterisk/info")
    finally:
        await callers.close()
    assert status == 200
    entity_id = body["system"]["entity_id"]
    assert isinstance(entity_id, str)
    return entity_id


async def stored_by_key(store: Store, entry_key: str, within: float = 20.0) -> StoredEntry:
    async with asyncio.timeout(within):
        while True:
            entry = await store.get_entry_by_key(entry_key)
            if entry is not None and entry.status != "in_progress":
                return entry
            await asyncio.sleep(0.05)


async def readiness(port: int) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/readyz") as response,
    ):
        return response.status, json.loads(await response.text())


@pytest.mark.asterisk
async def test_one_serve_takes_calls_from_two_asterisks(
    asterisk: AsteriskSandbox, second_asterisk: AsteriskSandbox, tmp_path: Path
) -> None:
    first_id, second_id = await asterisk_id(asterisk), await asterisk_id(second_asterisk)
    assert first_id != second_id == SECOND_ENTITY_ID
    settings = replace(
        service_settings(asterisk, f"sqlite+aiosqlite:///{tmp_path / 'digits.sqlite3'}"),
        more_ari_urls=(second_asterisk.ari_url,),
    )
    other = SimulatedCallers(
        second_asterisk.ari_url, second_asterisk.ari_user, second_asterisk.ari_password
    )
    try:
        async with serving(settings) as service:
            assert service.ari.connected() == [True, True]
            # Callers on both at once, each keying different digits.
            calls: list[tuple[SimulatedCallers, Call, str, str]] = []
            for digits in ("1357", "2468"):
                for callers, entity_id in ((service.callers, first_id), (other, second_id)):
                    call = await callers.place_call(
                        f"num_digits=4,{QUICK}", f"wait:0.5^dtmf:{digits}"
                    )
                    calls.append((callers, call, digits, entity_id))
            for callers, call, digits, entity_id in calls:
                result = await callers.dialplan_result(call)
                assert (result.status, result.digits) == ("completed", digits)
                entry = await stored_by_key(service.store, result.entry_id)
                assert (entry.user_input, entry.asterisk_id) == (digits, entity_id)
                assert entry.channel_id == call.channel_id

            # The second Asterisk stops mid-entry (core stop now: it hangs its channels up),
            # the first's calls go on, and serve stays ready, naming the one that is down.
            stranded = await other.place_call(f"num_digits=4,{QUICK}", "wait:0.5^dtmf:99^wait:60")
            going_on = await service.callers.place_call(
                f"num_digits=4,{QUICK}", "wait:0.5^dtmf:12^wait:2^dtmf:34"
            )
            async with asyncio.timeout(10):  # until the stranded caller's two keys are in
                while True:
                    session = service.ari.apps[1].sessions.get(stranded.channel_id)
                    if session is not None and session.digits_missing == 2:
                        break
                    await asyncio.sleep(0.02)
            await asyncio.to_thread(second_asterisk.stop)
            result = await service.callers.dialplan_result(going_on)
            assert (result.status, result.digits) == ("completed", "1234")
            entry = await stored_by_key(service.store, result.entry_id)
            assert entry.asterisk_id == first_id
            async with asyncio.timeout(20):
                while True:
                    stranded_entries = [
                        e
                        for e in await service.store.list_entries(limit=50)
                        if e.channel_id == stranded.channel_id and e.asterisk_id == second_id
                    ]
                    if stranded_entries and stranded_entries[0].status != "in_progress":
                        break
                    await asyncio.sleep(0.1)
            assert (stranded_entries[0].status, stranded_entries[0].user_input) == ("hangup", "99")
            assert service.ari.connected() == [True, False]
            status, body = await readiness(settings.api_port)
            assert (status, body["checks"]["ari"]) == (200, "degraded")
            assert body["ari_endpoints"] == {"1": "ok", "2": "not connected"}
            again = await service.callers.place_call(f"num_digits=2,{QUICK}", "wait:0.5^dtmf:77")
            result = await service.callers.dialplan_result(again)
            assert (result.status, result.digits) == ("completed", "77")
    finally:
        await other.close()
        await asyncio.to_thread(second_asterisk.start, 60)  # for the module's next test


@pytest.mark.asterisk
async def test_doctor_checks_each_asterisk(
    asterisk: AsteriskSandbox, second_asterisk: AsteriskSandbox, tmp_path: Path
) -> None:
    settings = replace(
        service_settings(asterisk, f"sqlite+aiosqlite:///{tmp_path / 'doctor.sqlite3'}"),
        more_ari_urls=(second_asterisk.ari_url, f"http://127.0.0.1:{free_tcp_port()}/"),
    )
    results = {r.name: r for r in await run_checks(settings)}
    for endpoint, sandbox in ((1, asterisk), (2, second_asterisk)):
        assert results[f"[{endpoint}] ari"].status is Status.PASS
        assert sandbox.ari_url in results[f"[{endpoint}] ari"].detail
        assert results[f"[{endpoint}] module res_ari_events"].status is Status.PASS
        assert results[f"[{endpoint}] ari-transport"].status is Status.PASS
    assert results["[3] ari"].status is Status.FAIL
    assert results["[3] stasis-app"].status is Status.SKIP
    ids = results["asterisk-ids"]
    assert (ids.status, ids.detail) == (Status.PASS, "2 Asterisks, each with its own entity id")
    assert "ari" not in results


@pytest.mark.asterisk
async def test_a_second_websocket_taking_the_app_over_on_a_real_asterisk(
    asterisk: AsteriskSandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What a second serve with the same ARI_APP does to the first, on Asterisk 22: the first
    says so, hands its call in progress back, stays down while the rival holds the name (the
    rival gets the calls, even after the first closes its websocket), and takes calls again
    once the rival has gone."""
    monkeypatch.setattr(ari_app_module, "REPLACED_RECHECK_S", 0.5)
    settings = service_settings(asterisk, f"sqlite+aiosqlite:///{tmp_path / 'digits.sqlite3'}")
    rival = AriClient(asterisk.ari_url, asterisk.ari_user, asterisk.ari_password, settings.ari_app)
    rival_events: list[dict[str, Any]] = []
    rival_listening: asyncio.Task[None] | None = None
    async with serving(settings) as service:
        try:
            stranded = await service.callers.place_call(
                f"num_digits=4,{QUICK}", "wait:0.5^dtmf:12^wait:30"
            )
            await until(
                lambda: (
                    (session := service.app.sessions.get(stranded.channel_id)) is not None
                    and session.digits_missing == 2
                ),
                within=10,
            )

            await rival.connect()
            opened = asyncio.Event()
            rival_listening = asyncio.create_task(rival.listen(rival_events.append, opened))
            await wait_until_subscribed(rival_listening, opened)

            result = await service.callers.dialplan_result(stranded)
            assert (result.status, result.digits) == ("interrupted", "12")
            entry = await stored_by_key(service.store, result.entry_id)
            assert entry.status == "interrupted"
            assert service.ari.connected() == [False]
            status, body = await readiness(settings.api_port)
            assert (status, body["not_ready"]) == (503, ["ari"])
            [loud] = [r for r in caplog.records if "was taken over" in r.getMessage()]
            assert loud.levelname == "ERROR" and asterisk.ari_url in loud.getMessage()

            # The first serve has closed its websocket: the name stays the rival's, and so do
            # new calls.
            await until(lambda: service.app.client is None)
            rivals_call = await service.callers.place_call(f"num_digits=2,{QUICK}", "wait:10")
            await until(
                lambda: any(
                    event["type"] == "StasisStart"
                    and event["channel"]["id"] == rivals_call.channel_id
                    for event in rival_events
                ),
                within=10,
            )
            assert rivals_call.channel_id not in service.app.sessions
            await rival.hangup_quietly(rivals_call.channel_id)
            await asyncio.sleep(1.5)  # three checks: the name is still taken
            assert service.ari.connected() == [False]
        finally:
            if rival_listening is not None:
                rival_listening.cancel()
                await asyncio.gather(rival_listening, return_exceptions=True)
            await rival.close()

        async with asyncio.timeout(10):
            await service.ari.wait_connected()
        call = await service.callers.place_call(f"num_digits=2,{QUICK}", "wait:0.5^dtmf:56")
        result = await service.callers.dialplan_result(call)
        assert (result.status, result.digits) == ("completed", "56")
