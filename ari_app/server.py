"""The long-running service: storage ready first, then the Stasis application."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import signal
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Final

from ari_app.agi import running_agi_server
from ari_app.ari.app import AriApplication, AriApplications, SpeechResources
from ari_app.hash_key import with_hash_key
from ari_app.http import running_http_api
from ari_app.http.media import media_routes
from ari_app.journal import Journal
from ari_app.logcontext import CONTEXT_FIELDS, CallContextFilter
from ari_app.metrics import Metrics
from ari_app.settings import Settings
from ari_app.speech.recognizer import DigitRecognizer, RecognizerSettings
from ari_app.speech.rtp import listen_for_rtp
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.repository import Store
from ari_app.tts import media_base_url, text_prompts

log = logging.getLogger(__name__)

# Collections of the middle generation between two full ones (Python's default: 10).
FULL_COLLECTION_AFTER: Final = 100


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings,
    *,
    connect_timeout: float | None = None,
    on_ari_connected: Callable[[], None] | None = None,
) -> AsyncIterator[AriApplications]:
    """Migrate, replay the journal, recover stale rows, run the ARI application (a connection
    to each Asterisk in ``settings.ari_urls``); stop cleanly on exit.

    With ``connect_timeout`` the context waits until every Asterisk is connected (tests, the
    demo). ``on_ari_connected`` runs after each (re)connection to an Asterisk.
    """
    await upgrade_to_head_async(settings.database_url)
    metrics = Metrics(ari_endpoints=len(settings.ari_urls))
    store = Store.from_url(settings.database_url, metrics=metrics, serve_id=settings.serve_name)
    speech: SpeechResources | None = None
    journal: Journal | None = None
    try:
        journal = await Journal.open(
            settings.journal_path,
            store,
            metrics=metrics,
            max_bytes=settings.journal_max_mb * 1024 * 1024,
        )
        # What a previous run journaled goes in before stale rows are marked: a row still
        # in progress whose outcome waits in the journal is not stale.
        replayed = await journal.replay()
        if replayed:
            log.warning("journal: replayed %d records a previous run left", replayed)
        journal.start_draining()
        # Only this serve's own rows: other serves sharing the database may be mid-call.
        stale = await store.mark_stale_in_progress(before=datetime.now(UTC))
        if stale:
            log.warning(
                "marked %d entries a previous run of serve %r left in progress as interrupted",
                stale,
                store.serve_id,
            )
        if settings.speech:
            speech = await open_speech(settings)
            recognizer = speech.recognizer
            metrics.watch_recognizer(lambda: recognizer.stats)
        prompts = text_prompts(settings)
        # Sessions record into the journal: the hand-back never waits for the database.
        ari = AriApplications(
            [
                AriApplication(
                    settings.for_asterisk(url),
                    journal,
                    speech=speech,
                    metrics=metrics,
                    prompts=prompts,
                    endpoint=endpoint,
                    on_connected=on_ari_connected,
                )
                for endpoint, url in enumerate(settings.ari_urls, start=1)
            ]
        )
        async with contextlib.AsyncExitStack() as services:
            services.push_async_callback(prompts.close)  # runs last: renders outlive calls
            http = await services.enter_async_context(
                running_http_api(
                    store,
                    host=settings.api_host,
                    port=settings.api_port,
                    token=settings.api_token,
                    metrics=metrics,
                    ari_connected=ari.connected,
                    journal_backlog=journal.backlog,
                    open_routes=media_routes(prompts.cache.directory),
                )
            )
            prompts.media_base_url = media_base_url(settings, listening_port=http.port)
            if settings.api_token:
                log.info("HTTP on %s: operators' API, /metrics, /healthz, /readyz", http.url)
            else:
                log.warning(
                    "HTTP on %s: /metrics, /healthz, /readyz; the operators' API (/api) is "
                    "disabled until API_TOKEN is set",
                    http.url,
                )
            await services.enter_async_context(
                running_agi_server(
                    settings,
                    journal,
                    hash_key=settings.hash_key,
                    on_session=ari.tap_speech,
                    metrics=metrics,
                    prompts=prompts,
                )
            )
            # ARI last: the first call must find the media URL (text prompts) already known.
            # On exit it stops first, so its calls' rows are stored before anything closes.
            runner = asyncio.create_task(ari.run(), name="ari-application")
            services.push_async_callback(_stop_application, ari, runner)
            if connect_timeout is not None:
                async with asyncio.timeout(connect_timeout):
                    await ari.wait_connected()
            yield ari
    finally:
        if speech is not None:
            speech.receiver.close()
            await speech.recognizer.close()
        if journal is not None:
            await journal.close()
        await store.close()


async def _stop_application(ari: AriApplications, runner: asyncio.Task[None]) -> None:
    await ari.shutdown()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner


async def open_speech(settings: Settings) -> SpeechResources:
    """Bind the shared RTP port and load the model once (in a thread: it takes a while)."""
    receiver = await listen_for_rtp(settings.rtp_host, settings.rtp_ports)
    try:
        recognizer = await asyncio.to_thread(
            DigitRecognizer.load,
            RecognizerSettings(
                model=settings.speech_model,
                workers=settings.speech_workers,
                processes=settings.speech_processes,
                device=settings.speech_device,
            ),
        )
    except BaseException:
        receiver.close()
        raise
    advertised = settings.rtp_advertised_host or settings.rtp_host
    log.info(
        "speech: RTP on %s:%d (Asterisk sends to %s), model %s on %s",
        *receiver.address,
        advertised,
        settings.speech_model or "tiny.en (bundled)",
        settings.speech_device,
    )
    return SpeechResources(receiver, recognizer, advertised)


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM."""
    settings = await asyncio.to_thread(with_hash_key, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_service(settings, on_ari_connected=tune_garbage_collection):
        log.info(
            "ari-digits is running as serve %r; database %s",
            settings.serve_name,
            _safe_url(settings.database_url),
        )
        await stop.wait()
        log.info("stopping")


def tune_garbage_collection() -> None:
    """Freeze what start-up keeps, and make full collections rarer.

    ``serve`` calls it once each connection to an Asterisk is up. Start-up has then made what
    it keeps for good (modules, SQLAlchemy's caches, the connection's swagger model), about
    100,000 objects, and every full collection would scan them again: on bench/ari_load.py at
    2,000 channels, each paused the event loop for 60-110 ms, five times a run. Frozen (moved
    to the permanent generation) they are skipped, and a full collection comes after every
    100th collection of the middle generation instead of every 10th: none in a run. The p99
    from event to request went from 42-152 ms to 4-6 ms, and the CPU an entry of a burst of
    2,000 callers from 3.2-3.6 to 2.5-2.8 ms (the calls' own objects still take 25-80 ms when
    a full collection comes). Unfreezing first collects garbage an earlier freeze kept (a dropped
    connection's swagger model): a frozen object that becomes garbage in a cycle waits at most
    until the next (re)connection.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)


def _safe_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


class JsonFormatter(logging.Formatter):
    """One JSON object per line; a call's lines carry its context (``entry_id``,
    ``channel_id``, ``transport``, ``label``: see :mod:`ari_app.logcontext`)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                payload[field] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(call_prefix)s%(message)s"


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    # On the handler, not a logger: a logger's filters miss records propagated from below.
    handler.addFilter(CallContextFilter())
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
