"""Metrics, readiness and the open routes: the per-application registry, each observation
point (ARI and AGI calls, speech, database writes), ``/metrics``, ``/readyz`` and ``/healthz``
over HTTP, the HTTP server without a token, and a real keyed call on the Asterisk sandbox
scraped from the running service."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import prometheus_client
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ari_app.agi import AgiConfig, running_agi_server
from ari_app.ari.app import AriApplication
from ari_app.ari.client import AriUnavailable
from ari_app.http import API_DISABLED, running_http_api
from ari_app.metrics import DB_OPERATIONS, Metrics
from ari_app.server import running_service
from ari_app.settings import Settings, SettingsError
from ari_app.speech.listener import SpeechListener
from ari_app.speech.recognizer import RecognizerStats
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.records import EntryOutcome, EntryStart
from ari_app.store.repository import Store
from devtools.fake_asterisk import FakeAsterisk, environment
from devtools.memory_store import MemoryStore
from tests.conftest import Service, free_tcp_port
from tests.test_ari_adapter import DTMF, STASIS_START, with_channel
from tests.test_speech_listener import ScriptedRecognizer, Target, as_rtp, spoken_pcm16

QUICK = "prompt=sound:beep"


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    assert value is not None, f"no sample {name}{labels}"
    return value


def scraped(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A Prometheus text exposition as {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def scraped_value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


@dataclass
class Http:
    session: aiohttp.ClientSession

    async def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, str, aiohttp.ClientResponse]:
        async with self.session.get(path, headers=headers) as response:
            return response.status, await response.text(), response


@contextlib.asynccontextmanager
async def serving(store: Store, **options: Any) -> AsyncIterator[Http]:
    async with (
        running_http_api(store, host="127.0.0.1", port=0, **options) as server,
        aiohttp.ClientSession(base_url=server.url) as session,
    ):
        yield Http(session)


# --------------------------------------------------------------------------- the registry


def test_each_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.entry_started("ari")
    assert sample(first, "ari_digits_entries_started_total", transport="ari") == 1
    assert sample(second, "ari_digits_entries_started_total", transport="ari") == 0
    # Nothing lands in prometheus-client's process-wide default registry.
    default = prometheus_client.REGISTRY.get_sample_value(
        "ari_digits_entries_started_total", {"transport": "ari"}
    )
    assert default is None


def test_every_series_exists_before_the_first_call() -> None:
    body, content_type = Metrics().exposition("")
    assert content_type.startswith("text/plain; version=0.0.4")
    samples = scraped(body.decode())
    for transport in ("ari", "agi"):
        assert scraped_value(samples, "ari_digits_entries_started_total", transport=transport) == 0
        assert (
            scraped_value(
                samples, "ari_digits_entries_finished_total", transport=transport, status="hangup"
            )
            == 0
        )
        assert (
            scraped_value(
                samples, "ari_digits_time_to_first_digit_seconds_count", transport=transport
            )
            == 0
        )
    for source in ("key", "voice"):
        assert scraped_value(samples, "ari_digits_digits_total", source=source) == 0
    for operation in DB_OPERATIONS:
        assert scraped_value(samples, "ari_digits_db_write_errors_total", operation=operation) == 0
    assert scraped_value(samples, "ari_digits_ari_connected", endpoint="1") == 0
    assert scraped_value(samples, "ari_digits_ari_reconnects_total", endpoint="1") == 0


def test_recognizer_counters_are_read_at_each_scrape() -> None:
    metrics = Metrics()
    stats = RecognizerStats(
        decoded=5,
        fallbacks=1,
        queued_now=2,
        running_now=1,
        behind_realtime=3,
        refused_overloaded=0,
        failed=0,
    )
    current = [stats]
    metrics.watch_recognizer(lambda: current[0])
    assert sample(metrics, "ari_digits_speech_behind_realtime_decodes_total") == 3
    assert sample(metrics, "ari_digits_speech_queued_decodes") == 2
    current[0] = replace(
        stats, decoded=9, behind_realtime=4, failed=1, queued_now=0, refused_overloaded=2
    )
    samples = scraped(metrics.exposition("")[0].decode())
    assert scraped_value(samples, "ari_digits_speech_overloaded_refusals_total") == 2
    assert scraped_value(samples, "ari_digits_speech_decodes_total") == 9
    assert scraped_value(samples, "ari_digits_speech_behind_realtime_decodes_total") == 4
    assert scraped_value(samples, "ari_digits_speech_failed_decodes_total") == 1
    assert scraped_value(samples, "ari_digits_speech_fallback_decodes_total") == 1
    assert scraped_value(samples, "ari_digits_speech_queued_decodes") == 0
    assert scraped_value(samples, "ari_digits_speech_running_decodes") == 1


# --------------------------------------------------------------------------- observation points


class AlwaysAnsweringAri:
    """ARI REST as a healthy Asterisk answers it: every operation succeeds at once."""

    async def answer(self, channel_id: str) -> None:
        pass

    async def play(self, channel_id: str, playback_id: str, media: Any) -> None:
        pass

    async def stop_playback(self, playback_id: str) -> None:
        pass

    async def set_variables(self, channel_id: str, variables: Any) -> None:
        pass

    async def continue_in_dialplan(self, channel_id: str) -> None:
        pass


def keyed(digit: str, channel_id: str) -> dict[str, Any]:
    event = with_channel(DTMF, channel_id)
    event["digit"] = digit
    return event


async def test_an_ari_call_moves_the_call_metrics() -> None:
    metrics = Metrics()
    store = MemoryStore()
    app = AriApplication(Settings(hash_key="k", speech=False), store, metrics=metrics)
    app.client = AlwaysAnsweringAri()  # type: ignore[assignment]
    start = copy.deepcopy(STASIS_START)
    start["args"] = ["num_digits=3", "label=account", QUICK]
    app.dispatch(start)
    for digit in "415":
        app.dispatch(keyed(digit, "1795621797.0"))
    await app.wait_idle(within=5)

    _, outcome = store.by_channel("1795621797.0")
    assert outcome is not None and outcome.status == "completed"
    assert sample(metrics, "ari_digits_entries_started_total", transport="ari") == 1
    assert (
        sample(metrics, "ari_digits_entries_finished_total", transport="ari", status="completed")
        == 1
    )
    assert sample(metrics, "ari_digits_digits_total", source="key") == 3
    assert sample(metrics, "ari_digits_time_to_first_digit_seconds_count", transport="ari") == 1
    assert sample(metrics, "ari_digits_entry_duration_seconds_count", transport="ari") == 1
    # One observation per key event taken from the call's queue.
    assert sample(metrics, "ari_digits_event_handling_seconds_count", transport="ari") == 3
    assert sample(metrics, "ari_digits_entries_started_total", transport="agi") == 0


async def test_an_agi_call_moves_the_call_metrics() -> None:
    metrics = Metrics()
    async with running_agi_server(
        AgiConfig(agi_port=0), MemoryStore(), hash_key="k", poll_interval=0.02, metrics=metrics
    ) as server:
        assert server.address is not None
        caller = FakeAsterisk(*server.address)
        try:
            await caller.connect(environment(query=f"num_digits=4&{QUICK}"))
            transcript = await caller.answer_all("1234")
        finally:
            await caller.close()
        await server.wait_idle(5)
    assert transcript.variables["DIGITS_STATUS"] == "completed"
    assert sample(metrics, "ari_digits_entries_started_total", transport="agi") == 1
    assert (
        sample(metrics, "ari_digits_entries_finished_total", transport="agi", status="completed")
        == 1
    )
    assert sample(metrics, "ari_digits_digits_total", source="key") == 4
    assert sample(metrics, "ari_digits_time_to_first_digit_seconds_count", transport="agi") == 1
    assert sample(metrics, "ari_digits_event_handling_seconds_count", transport="agi") >= 4


async def test_each_decode_is_timed(tmp_path: Path) -> None:
    metrics = Metrics()
    target = Target()
    listener = SpeechListener(
        target, ScriptedRecognizer("Four, two."), label="t", max_digits=4, metrics=metrics
    )
    try:
        for packet in as_rtp(spoken_pcm16("four two", tmp_path)):
            listener.on_packet(packet)
        async with asyncio.timeout(5):
            await target.ended.wait()
    finally:
        await listener.close()
    assert sample(metrics, "ari_digits_speech_decode_seconds_count", vocabulary="digits") == 1
    # The scripted recogniser takes at least 10 ms.
    assert sample(metrics, "ari_digits_speech_decode_seconds_sum", vocabulary="digits") >= 0.01


def an_entry_start() -> EntryStart:
    return EntryStart(
        channel_id="c-1",
        channel_name="PJSIP/trunk-1",
        caller_number=None,
        caller_name=None,
        label="pin",
        parameters={},
        transport="ari",
        asterisk_id=None,
        started_at=datetime.now(UTC),
        sensitive=False,
    )


async def test_database_writes_are_timed_and_failures_counted(database_url: str) -> None:
    metrics = Metrics()
    store = Store.from_url(database_url, metrics=metrics)
    try:
        # No schema yet: the INSERT fails in the database.
        with pytest.raises(Exception, match="entries"):
            await store.start_entry(an_entry_start())
        assert sample(metrics, "ari_digits_db_write_errors_total", operation="start_entry") == 1

        await upgrade_to_head_async(database_url)
        entry_id = await store.start_entry(an_entry_start())
        await store.finish_entry(
            entry_id,
            EntryOutcome(
                status="completed",
                user_input="12",
                input_hash=None,
                terminated_by="max_digits",
                attempts=1,
                confirmed="not_asked",
                error=None,
                ended_at=datetime.now(UTC),
                events=(),
            ),
        )
        await store.mark_stale_in_progress()
    finally:
        await store.close()
    assert sample(metrics, "ari_digits_db_write_seconds_count", operation="start_entry") == 2
    assert sample(metrics, "ari_digits_db_write_seconds_count", operation="finish_entries") == 1
    assert sample(metrics, "ari_digits_db_write_seconds_count", operation="mark_stale") == 1
    assert sample(metrics, "ari_digits_db_write_errors_total", operation="start_entry") == 1
    assert sample(metrics, "ari_digits_db_write_errors_total", operation="finish_entries") == 0


class DroppableAri(AlwaysAnsweringAri):
    """An ARI connection whose event websocket stays open until the test drops it."""

    base_url = "http://127.0.0.1:8088/"
    app = "digits"

    def __init__(self) -> None:
        self.drop = asyncio.Event()

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def listen(self, on_event: Any, opened: asyncio.Event) -> None:
        opened.set()
        await self.drop.wait()

    async def keep_only_events(self, types: Any) -> bool:
        return True


async def wait_until(condition: Any, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


async def test_ari_connection_state_and_reconnects() -> None:
    metrics = Metrics()
    first, second = DroppableAri(), DroppableAri()
    clients = iter([first, second])
    connections_up: list[bool] = []  # what on_connected saw: serve tunes its collector there
    app = AriApplication(
        Settings(speech=False),
        MemoryStore(),
        client_factory=lambda settings: next(clients),  # type: ignore[arg-type, return-value]
        metrics=metrics,
        on_connected=lambda: connections_up.append(app.connected.is_set()),
    )
    runner = asyncio.create_task(app.run())
    try:
        await wait_until(app.connected.is_set)
        assert connections_up == [True]
        assert sample(metrics, "ari_digits_ari_connected", endpoint="1") == 1
        first.drop.set()
        await wait_until(lambda: not app.connected.is_set())
        assert sample(metrics, "ari_digits_ari_connected", endpoint="1") == 0
        assert sample(metrics, "ari_digits_ari_reconnects_total", endpoint="1") == 0
        await wait_until(app.connected.is_set)
        assert sample(metrics, "ari_digits_ari_connected", endpoint="1") == 1
        assert sample(metrics, "ari_digits_ari_reconnects_total", endpoint="1") == 1
        assert connections_up == [True, True]
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


class UnreachableAri(DroppableAri):
    async def connect(self) -> None:
        raise AriUnavailable("ARI at http://127.0.0.1:8088/ is not reachable: refused")


async def test_a_long_outage_is_retried_every_second_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    attempts = 0

    def factory(settings: Settings) -> Any:
        nonlocal attempts
        attempts += 1
        return UnreachableAri()

    app = AriApplication(Settings(speech=False), MemoryStore(), client_factory=factory)
    runner = asyncio.create_task(app.run())
    try:
        await wait_until(lambda: attempts >= 4, within=5)  # 0.5 s, then 1 s apart
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["ARI unavailable: ARI at http://127.0.0.1:8088/ is not reachable: refused"]


@pytest.mark.parametrize("value", ["soon", "0.1", "301"])
def test_a_bad_heartbeat_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="ARI_HEARTBEAT"):
        Settings.from_env({"ARI_HEARTBEAT": value})


# --------------------------------------------------------------------------- over HTTP


async def test_metrics_are_served_in_prometheus_text_format(tmp_path: Path) -> None:
    metrics = Metrics()
    metrics.entry_started("agi")
    store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'm.sqlite3'}")
    try:
        async with serving(store, token="t", metrics=metrics) as http:
            status, text, response = await http.get("/metrics")
            assert status == 200
            assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            samples = scraped(text)
            assert scraped_value(samples, "ari_digits_entries_started_total", transport="agi") == 1
            status, text, response = await http.get(
                "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
            )
            assert status == 200
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert text.rstrip().endswith("# EOF")
    finally:
        await store.close()


@pytest.mark.parametrize("ari_up", [True, False])
async def test_readiness_needs_ari_and_the_database(database_url: str, ari_up: bool) -> None:
    store = Store.from_url(database_url)
    try:
        async with serving(store, token="", ari_connected=lambda: [ari_up]) as http:
            status, text, response = await http.get("/readyz")
    finally:
        await store.close()
    assert response.content_type == "application/json"
    if ari_up:
        assert status == 200
        assert json.loads(text) == {
            "status": "ready",
            "checks": {"ari": "ok", "database": "ok"},
            "not_ready": [],
        }
    else:
        assert status == 503
        assert json.loads(text) == {
            "status": "not_ready",
            "checks": {"ari": "not connected", "database": "ok"},
            "not_ready": ["ari"],
        }


@pytest.mark.parametrize(
    ("states", "http_status", "ari_check"),
    [
        ([True, False, True], 200, "degraded"),
        ([False, False], 503, "not connected"),
        ([True, True], 200, "ok"),
    ],
)
async def test_readiness_with_several_asterisks_names_each(
    tmp_path: Path, states: list[bool], http_status: int, ari_check: str
) -> None:
    """Calls still flow through the Asterisks that are connected: ready while one is."""
    store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'ready.sqlite3'}")
    try:
        async with serving(store, token="", ari_connected=lambda: states) as http:
            status, text, _ = await http.get("/readyz")
    finally:
        await store.close()
    body = json.loads(text)
    assert (status, body["checks"]["ari"]) == (http_status, ari_check)
    assert body["ari_endpoints"] == {
        str(n): "ok" if up else "not connected" for n, up in enumerate(states, start=1)
    }


async def test_an_unreachable_database_is_not_ready(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on the port: the connection is refused at once.
    store = Store.from_url(f"postgresql+asyncpg://postgres@127.0.0.1:{free_tcp_port()}/none")
    try:
        async with serving(store, token="", ari_connected=lambda: [True]) as http:
            status, text, _ = await http.get("/readyz")
    finally:
        await store.close()
    assert status == 503
    assert json.loads(text) == {
        "status": "not_ready",
        "checks": {"ari": "ok", "database": "unreachable"},
        "not_ready": ["database"],
    }
    assert "the database is unreachable" in caplog.text  # the cause is logged, not served


async def test_open_routes_can_be_added(tmp_path: Path) -> None:
    async def media(request: web.Request) -> web.Response:
        return web.Response(body=b"RIFF", content_type="audio/wav")

    store = Store.from_url(f"sqlite+aiosqlite:///{tmp_path / 'm.sqlite3'}")
    try:
        async with serving(store, token="t", open_routes=[web.get("/media/{name}", media)]) as http:
            status, text, _ = await http.get("/media/abc.wav")
            assert (status, text) == (200, "RIFF")
            status, _, _ = await http.get("/api/stats")
            assert status == 401
    finally:
        await store.close()


async def test_the_service_serves_health_metrics_and_readiness_without_ari_or_token(
    tmp_path: Path,
) -> None:
    """``serve`` with no API_TOKEN and an ARI nobody answers: the HTTP server runs anyway,
    readiness says ARI is missing, the API says it is disabled; the speech model is loaded, so
    the recogniser's counters are scraped too."""
    settings = Settings(
        speech=True,
        ari_url=f"http://127.0.0.1:{free_tcp_port()}/",
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'service.sqlite3'}",
        journal_path=str(tmp_path / "journal.sqlite3"),
        api_port=free_tcp_port(),
        reconnect_max_delay=1.0,
    )
    async with (
        running_service(settings),
        aiohttp.ClientSession(base_url=f"http://127.0.0.1:{settings.api_port}") as session,
    ):
        http = Http(session)
        status, text, _ = await http.get("/healthz")
        assert (status, json.loads(text)) == (200, {"status": "ok"})
        status, text, _ = await http.get("/readyz")
        assert status == 503
        assert json.loads(text)["not_ready"] == ["ari"]
        status, text, _ = await http.get("/metrics")
        assert status == 200
        samples = scraped(text)
        assert scraped_value(samples, "ari_digits_ari_connected", endpoint="1") == 0
        assert scraped_value(samples, "ari_digits_speech_decodes_total") == 0
        assert scraped_value(samples, "ari_digits_speech_behind_realtime_decodes_total") == 0
        for path in ("/api/entries", "/api/stats", "/nope"):
            status, text, _ = await http.get(path, headers={"Authorization": "Bearer x"})
            assert (status, json.loads(text)) == (503, {"error": API_DISABLED})


# --------------------------------------------------------------------------- real Asterisk


@pytest.mark.asterisk
async def test_a_real_keyed_call_shows_in_the_scraped_metrics(service: Service) -> None:
    base = f"http://127.0.0.1:{service.settings.api_port}"
    async with aiohttp.ClientSession(base_url=base) as session:
        http = Http(session)
        status, text, _ = await http.get("/readyz")
        assert status == 200, text
        assert json.loads(text)["checks"] == {"ari": "ok", "database": "ok", "journal": "ok"}
        assert json.loads(text)["journal"] == {"backlog": 0, "oldest_unsent_s": None}
        before = scraped((await http.get("/metrics"))[1])
        assert scraped_value(before, "ari_digits_ari_connected", endpoint="1") == 1

        call = await service.callers.place_call(
            f"num_digits=4,label=pin,{QUICK}", "wait:0.5^dtmf:2468"
        )
        result = await service.callers.dialplan_result(call)
        assert (result.status, result.digits) == ("completed", "2468")
        await service.app.wait_idle(within=5)
        # The hand-back waited for the local journal only: the database's writes follow.
        async with asyncio.timeout(10):
            while True:
                after = scraped((await http.get("/metrics"))[1])
                replayed = "ari_digits_journal_replayed_entries_total"
                if scraped_value(after, replayed) > scraped_value(before, replayed):
                    break
                await asyncio.sleep(0.05)

    def moved(name: str, **labels: str) -> float:
        return scraped_value(after, name, **labels) - scraped_value(before, name, **labels)

    assert moved("ari_digits_entries_started_total", transport="ari") == 1
    assert moved("ari_digits_entries_finished_total", transport="ari", status="completed") == 1
    assert moved("ari_digits_digits_total", source="key") == 4
    assert moved("ari_digits_time_to_first_digit_seconds_count", transport="ari") == 1
    # The caller waits 0.5 s before the first key.
    assert moved("ari_digits_time_to_first_digit_seconds_sum", transport="ari") >= 0.5
    assert moved("ari_digits_event_handling_seconds_count", transport="ari") >= 4
    assert moved("ari_digits_db_write_seconds_count", operation="start_entry") == 1
    assert moved("ari_digits_db_write_seconds_count", operation="finish_entries") == 1
