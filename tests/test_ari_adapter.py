"""The ARI adapter without Asterisk: event parsing, routing, and the aioari quirks it wraps."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from ari_app.ari import app as ari_app_module
from ari_app.ari.app import AriApplication, AriCallPort, ari_media
from ari_app.ari.client import AriClient, AriUnreachable, ChannelNotReady, basic_authorization
from ari_app.ari.events import (
    EVENT_TYPES_USED,
    ApplicationReplaced,
    ChannelLeft,
    DtmfReceived,
    MalformedEvent,
    PlaybackFinished,
    StasisStarted,
    parse_event,
)
from ari_app.media import MediaItem, media_item
from ari_app.ports import CallPort, ChannelGone, TransportError
from ari_app.settings import Settings
from ari_app.store.records import EntryStart
from devtools.memory_store import MemoryStore
from tests.conftest import free_tcp_port

# Recorded from Asterisk 22.10.1 (the sandbox), trimmed to the fields that matter.
STASIS_START: dict[str, Any] = {
    "type": "StasisStart",
    "timestamp": "2026-11-25T15:49:58.201+0000",
    "args": ["num_digits=4", "label=pin"],
    "channel": {
        "id": "1795621797.0",
        "name": "Local/sim@caller-sim-00000000;1",
        "state": "Up",
        "protocol_id": "",
        "caller": {"name": "", "number": ""},
        "connected": {"name": "", "number": ""},
        "accountcode": "",
        "dialplan": {"context": "digits-test", "exten": "collect", "priority": 2},
        "creationtime": "2026-11-25T15:49:57.690+0000",
        "language": "en",
    },
    "asterisk_id": "52:54:00:12:34:56",
    "application": "digits",
}
DTMF: dict[str, Any] = {
    "type": "ChannelDtmfReceived",
    "timestamp": "2026-11-25T15:49:59.912+0000",
    "digit": "7",
    "duration_ms": 100,
    "channel": STASIS_START["channel"],
    "asterisk_id": "52:54:00:12:34:56",
    "application": "digits",
}
PLAYBACK_FINISHED: dict[str, Any] = {
    "type": "PlaybackFinished",
    "playback": {
        "id": "1795621797.0-p1",
        "media_uri": "sound:beep",
        "target_uri": "channel:1795621797.0",
        "language": "en",
        "state": "done",
    },
    "application": "digits",
}


def with_channel(event: dict[str, Any], channel_id: str, name: str | None = None) -> dict[str, Any]:
    event = copy.deepcopy(event)
    event["channel"]["id"] = channel_id
    if name:
        event["channel"]["name"] = name
    return event


def test_stasis_start_dict_becomes_a_typed_event() -> None:
    event = parse_event(STASIS_START)
    assert isinstance(event, StasisStarted)
    assert event.args == ("num_digits=4", "label=pin")
    assert event.channel.id == "1795621797.0"
    assert event.channel.state == "Up"
    assert event.channel.caller_number is None  # Asterisk sends "" for unknown
    assert event.asterisk_id == "52:54:00:12:34:56"


def test_dtmf_playback_and_leaving_events() -> None:
    assert parse_event(DTMF) == DtmfReceived("1795621797.0", "7", 100)
    assert parse_event(PLAYBACK_FINISHED) == PlaybackFinished("1795621797.0", "1795621797.0-p1")
    for kind in ("ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"):
        raw = {"type": kind, "channel": STASIS_START["channel"]}
        assert parse_event(raw) == ChannelLeft("1795621797.0", kind)
    assert parse_event({"type": "ChannelVarset", "variable": "X"}) is None


def test_application_replaced_is_an_event() -> None:
    raw = {"type": "ApplicationReplaced", "application": "digits", "asterisk_id": "52:54:00"}
    assert parse_event(raw) == ApplicationReplaced("digits")
    assert parse_event({"type": "ApplicationReplaced"}) == ApplicationReplaced("")


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "StasisStart"},
        {"type": "StasisStart", "channel": "nope"},
        {"type": "StasisStart", "channel": {"id": 5, "name": "x"}},
        {**STASIS_START, "args": "num_digits=4"},
        {**STASIS_START, "args": [1, 2]},
        {**DTMF, "digit": "12"},
        {**DTMF, "digit": None},
        {"type": "PlaybackFinished", "playback": {"id": "x"}},
        {"type": "StasisEnd", "channel": {"name": "no id"}},
    ],
)
def test_malformed_events_are_rejected(raw: dict[str, Any]) -> None:
    with pytest.raises(MalformedEvent):
        parse_event(raw)


def test_digits_media_is_spelled_as_interruptible_sound_files() -> None:
    media = [media_item(uri) for uri in ("sound:you-entered", "digits:1*#", "number:5")]
    assert ari_media(media) == [
        "sound:you-entered",
        "sound:digits/1",
        "sound:digits/star",
        "sound:digits/pound",
        "number:5",
    ]


# --- routing, with a scripted port and store -------------------------------------------------


class ScriptedPort:
    """Records what the session asked of the channel; ``play`` can be held to simulate a slow
    Asterisk."""

    def __init__(self, hold_play: asyncio.Event | None = None, fail_with: Exception | None = None):
        self.calls: list[tuple[str, object]] = []
        self.hold_play = hold_play
        self.fail_with = fail_with

    async def answer(self) -> None:
        self.calls.append(("answer", None))

    async def play(self, playback_id: str, media: Sequence[MediaItem]) -> None:
        self.calls.append(("play", playback_id))
        if self.hold_play is not None:
            await self.hold_play.wait()
        if self.fail_with is not None:
            raise self.fail_with

    async def stop_playback(self, playback_id: str) -> None:
        self.calls.append(("stop", playback_id))

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        self.calls.append(("set", dict(variables)))

    async def release(self) -> None:
        self.calls.append(("release", None))


class RoutingApp(AriApplication):
    """The real dispatcher with ports handed out per channel by the test."""

    def __init__(self, store: MemoryStore, ports: dict[str, ScriptedPort]) -> None:
        super().__init__(Settings(hash_key="k"), store)
        self.ports = ports

    def port(self, channel_id: str) -> CallPort:
        return self.ports[channel_id]


async def test_a_slow_channel_never_delays_another_and_events_stay_in_order() -> None:
    held = asyncio.Event()
    store = MemoryStore()
    ports = {"slow": ScriptedPort(hold_play=held), "fast": ScriptedPort()}
    app = RoutingApp(store, ports)
    # Everything arrives at once, as if read off the websocket in one burst.
    app.dispatch(with_channel(STASIS_START, "slow"))
    app.dispatch(with_channel(STASIS_START, "fast"))
    for digit in "4321":
        app.dispatch(with_channel({**DTMF, "digit": digit}, "slow"))
    for digit in "1234":
        app.dispatch(with_channel({**DTMF, "digit": digit}, "fast"))
    await asyncio.sleep(0.05)
    # The fast channel finished while the slow one is still stuck in its first REST call.
    assert "fast" not in app.sessions
    assert "slow" in app.sessions
    assert [o.user_input for o in store.outcomes.values()] == ["1234"]
    held.set()
    await app.wait_idle(within=1)
    assert sorted(o.user_input for o in store.outcomes.values()) == ["1234", "4321"]


async def test_malformed_event_is_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    app = RoutingApp(MemoryStore(), {})
    app.dispatch({"type": "StasisStart", "channel": {"id": 3}})
    assert "dropped a malformed ARI event" in caplog.text
    assert app.sessions == {}


async def test_own_snoop_and_media_channels_are_not_collected() -> None:
    app = AriApplication(Settings(), MemoryStore())
    app.dispatch(with_channel(STASIS_START, "s1", name="Snoop/1795621797.0-00000001"))
    app.dispatch(with_channel(STASIS_START, "m1", name="UnicastRTP/127.0.0.1:40000-0x1"))
    assert app.sessions == {}


async def test_channel_gone_while_playing_ends_as_hangup_without_returning() -> None:
    store = MemoryStore()
    port = ScriptedPort(fail_with=ChannelGone("404"))
    app = RoutingApp(store, {"c": port})
    app.dispatch(with_channel(STASIS_START, "c"))
    await app.wait_idle(within=1)
    assert store.by_channel("c")[1].status == "hangup"
    assert not any(name in ("set", "release") for name, _ in port.calls)


async def test_transport_error_ends_as_interrupted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    store = MemoryStore()
    app = RoutingApp(store, {"c": ScriptedPort(fail_with=TransportError("connection reset"))})
    app.dispatch(with_channel(STASIS_START, "c"))
    await app.wait_idle(within=1)
    assert store.by_channel("c")[1].status == "interrupted"
    assert "lost Asterisk" in caplog.text


async def test_a_failing_store_still_returns_the_call_to_the_dialplan_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An entry that could not be recorded must not reach the dialplan as a success."""

    class BrokenStore(MemoryStore):
        async def record_start(self, start: EntryStart) -> None:
            raise OSError("disk full")

    port = ScriptedPort()
    app = RoutingApp(BrokenStore(), {"c": port})
    app.dispatch(with_channel(STASIS_START, "c"))
    for digit in "1234":
        app.dispatch(with_channel({**DTMF, "digit": digit}, "c"))
    await app.wait_idle(within=1)
    variables = next(value for name, value in port.calls if name == "set")
    assert variables == {
        "DIGITS": "1234",
        "DIGITS_STATUS": "error",
        "DIGITS_CONFIRMED": "not_asked",
        "DIGITS_ID": "",
        "DIGITS_ERROR": "the entry could not be recorded",
    }
    assert port.calls[-1] == ("release", None)
    assert "could not store the entry's start" in caplog.text


async def test_bad_arguments_set_the_error_variables() -> None:
    store = MemoryStore()
    port = ScriptedPort()
    app = RoutingApp(store, {"c": port})
    app.dispatch({**with_channel(STASIS_START, "c"), "args": ["max_digits=10000"]})
    await app.wait_idle(within=1)
    variables = next(value for name, value in port.calls if name == "set")
    assert isinstance(variables, dict)
    assert variables["DIGITS_STATUS"] == "error"
    assert "max_digits must be between 1 and 64" in variables["DIGITS_ERROR"]
    assert store.by_channel("c")[1].status == "error"
    assert store.by_channel("c")[0].parameters == {"arguments": ["max_digits=10000"]}


class ReconnectingClient:
    """Continuing the channel fails ``failures`` times with ``error`` (default: ARI dropped)."""

    def __init__(self, failures: int, error: TransportError | None = None) -> None:
        self.failures = failures
        self.error = error or AriUnreachable("connection reset")
        self.released: list[str] = []

    async def continue_in_dialplan(self, channel_id: str) -> None:
        if self.failures:
            self.failures -= 1
            raise self.error
        self.released.append(channel_id)


async def test_handing_back_waits_for_the_reconnect(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ari_app_module, "HANDBACK_RETRY_PAUSE", 0.0)
    app = AriApplication(Settings(), MemoryStore())
    client = ReconnectingClient(failures=1)
    app.client = client  # type: ignore[assignment]
    release = asyncio.create_task(AriCallPort(app, "c").release())
    await asyncio.sleep(0.05)
    assert not release.done(), "it must wait for the connection, not give up"
    assert "waiting for the connection" in caplog.text
    app.connected.set()  # the reconnect loop got through
    await asyncio.wait_for(release, 1)
    assert client.released == ["c"]


async def test_handing_back_gives_up_after_its_patience(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ari_app_module, "HANDBACK_RETRY_PAUSE", 0.0)
    app = AriApplication(Settings(), MemoryStore())
    app.link.patience = 0.05
    app.client = ReconnectingClient(failures=1000)  # type: ignore[assignment]
    with pytest.raises(TransportError):
        await asyncio.wait_for(AriCallPort(app, "c").release(), 1)


async def test_an_error_ari_answered_with_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ari_app_module, "HANDBACK_RETRY_PAUSE", 0.0)
    app = AriApplication(Settings(), MemoryStore())
    client = ReconnectingClient(failures=1, error=TransportError("continue: HTTP 500"))
    app.client = client  # type: ignore[assignment]
    with pytest.raises(TransportError, match="HTTP 500"):
        await asyncio.wait_for(AriCallPort(app, "c").release(), 1)
    assert client.failures == 0 and client.released == []


async def test_shutdown_cancels_calls_still_running_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    held = asyncio.Event()  # never set: Asterisk never answers the first play
    app = RoutingApp(MemoryStore(), {"stuck": ScriptedPort(hold_play=held)})
    app.dispatch(with_channel(STASIS_START, "stuck"))
    await asyncio.sleep(0.01)
    [task] = app.runner.tasks
    await app.shutdown(grace=0.05)
    assert task.cancelled()
    assert "cancelling 1 call tasks" in caplog.text


class _RecordingAri:
    """An HTTP server standing in for ARI's REST side: records each request, answers with the
    status set for its path (204 otherwise)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.status: dict[str, int] = {}

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, dict(request.query), body))
        if request.headers.get("Authorization") != basic_authorization("u", "p"):
            return web.Response(status=401)
        status = self.status.get(request.path, 204)
        return web.Response(status=status, text="" if status == 204 else "why")


@pytest.fixture
async def recording_ari() -> AsyncIterator[tuple[_RecordingAri, str]]:
    ari = _RecordingAri()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", ari.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield ari, f"http://127.0.0.1:{port}/"
    await runner.cleanup()


def _connected_client(base_url: str, *, bulk_variables: bool = True) -> AriClient:
    """An AriClient as connect() leaves it, with the swagger operations it looks for."""
    client = AriClient(base_url, "u", "p", "digits")
    client._http_client()
    api = SimpleNamespace(setChannelVars=object()) if bulk_variables else SimpleNamespace()
    client._client = SimpleNamespace(channels=SimpleNamespace(api=api))
    return client


@pytest.mark.parametrize("bulk", [True, False], ids=["asterisk_22_10", "older_asterisk"])
async def test_the_hand_back_variables_take_one_request_where_asterisk_allows(
    recording_ari: tuple[_RecordingAri, str], bulk: bool
) -> None:
    ari, url = recording_ari
    client = _connected_client(url, bulk_variables=bulk)
    try:
        await client.set_variables("c1", {"DIGITS": "123", "DIGITS_STATUS": "completed"})
    finally:
        await client.close()
    if bulk:
        variables = {"DIGITS": "123", "DIGITS_STATUS": "completed"}
        assert ari.requests == [
            ("POST", "/ari/channels/c1/variables", {}, {"variables": variables})
        ]
    else:
        assert sorted(ari.requests, key=repr) == [
            ("POST", "/ari/channels/c1/variable", {"variable": "DIGITS", "value": "123"}, None),
            (
                "POST",
                "/ari/channels/c1/variable",
                {"variable": "DIGITS_STATUS", "value": "completed"},
                None,
            ),
        ]


async def test_the_per_entry_requests_go_where_ari_documents_them(
    recording_ari: tuple[_RecordingAri, str],
) -> None:
    ari, url = recording_ari
    client = _connected_client(url)
    channel = "pbx1-1700000000.12/3 ?&"  # a systemname prefix, and characters URLs reserve
    try:
        await client.answer(channel)
        await client.play(channel, "pb-1", ["sound:beep", "digits:12"])
        await client.stop_playback("pb-1")
        await client.continue_in_dialplan(channel)
        await client.hangup(channel)
    finally:
        await client.close()
    assert ari.requests == [
        ("POST", f"/ari/channels/{channel}/answer", {}, None),
        (
            "POST",
            f"/ari/channels/{channel}/play",
            {"media": "sound:beep,digits:12", "playbackId": "pb-1"},
            None,
        ),
        ("DELETE", "/ari/playbacks/pb-1", {}, None),
        ("POST", f"/ari/channels/{channel}/continue", {}, None),
        ("DELETE", f"/ari/channels/{channel}", {}, None),
    ]


@pytest.mark.parametrize(
    ("status", "error"),
    [(404, ChannelGone), (409, ChannelGone), (422, ChannelNotReady), (500, TransportError)],
)
async def test_an_ari_error_answer_is_the_matching_error(
    recording_ari: tuple[_RecordingAri, str], status: int, error: type[Exception]
) -> None:
    ari, url = recording_ari
    ari.status["/ari/channels/c1/answer"] = status
    ari.status["/ari/playbacks/gone"] = 404
    client = _connected_client(url)
    try:
        with pytest.raises(error, match=f"answer: .*{status}"):
            await client.answer("c1")
        await client.stop_playback("gone")  # a playback that already ended is no error
    finally:
        await client.close()


async def test_no_answer_from_ari_is_unreachable() -> None:
    client = _connected_client(f"http://127.0.0.1:{free_tcp_port()}/")  # nothing listens
    try:
        with pytest.raises(AriUnreachable, match="answer"):
            await client.answer("c1")
    finally:
        await client.close()
    with pytest.raises(AriUnreachable, match="not connected"):
        await AriClient("http://127.0.0.1:1/", "u", "p", "digits").answer("c1")


async def test_asterisk_is_asked_for_the_used_event_types_only(
    recording_ari: tuple[_RecordingAri, str],
) -> None:
    ari, url = recording_ari
    client = _connected_client(url)
    try:
        assert await client.keep_only_events(["StasisStart", "StasisEnd"])
        ari.status["/ari/applications/digits/eventFilter"] = 404  # before Asterisk 13.26 / 16.3
        assert not await client.keep_only_events(["StasisStart"])
    finally:
        await client.close()
    allowed = {"allowed": [{"type": "StasisStart"}, {"type": "StasisEnd"}]}
    assert ari.requests[0] == (
        "PUT",
        "/ari/applications/digits/eventFilter",
        {},
        allowed,
    )


@pytest.mark.parametrize(
    "kind",
    # Event types Asterisk 22 sends a Stasis app in a call like ours.
    [
        "ChannelVarset",
        "ChannelStateChange",
        "ChannelDialplan",
        "PlaybackStarted",
        "ChannelDtmfReceived",
        "PlaybackFinished",
        "StasisStart",
        "StasisEnd",
        "ChannelHangupRequest",
        "ChannelDestroyed",
        "ApplicationReplaced",
        "ChannelEnteredBridge",
        "ChannelLeftBridge",
    ],
)
def test_the_event_filter_keeps_every_event_type_that_is_read(kind: str) -> None:
    channel = {"id": "c1", "name": "PJSIP/a-1", "state": "Up"}
    event = {
        "type": kind,
        "channel": channel,
        "digit": "1",
        "args": [],
        "playback": {"id": "p", "target_uri": "channel:c1"},
        "application": "digits",
    }
    read = parse_event(event) is not None
    assert read == (kind in EVENT_TYPES_USED)
