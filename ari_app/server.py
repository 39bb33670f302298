"""The long-running service: storage ready first, then the Stasis application."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from ari_app.agi import running_agi_server
from ari_app.ari.app import AriApplication, SpeechResources
from ari_app.http import running_http_api
from ari_app.settings import Settings
from ari_app.speech.recognizer import DigitRecognizer, RecognizerSettings
from ari_app.speech.rtp import RtpReceiver
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.repository import Store

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def running_service(
    settings: Settings, *, connect_timeout: float | None = None
) -> AsyncIterator[AriApplication]:
    """Migrate, recover stale rows, run the ARI application; stop cleanly on exit.

    With ``connect_timeout`` the context waits until ARI is connected (tests, the demo).
    """
    await upgrade_to_head_async(settings.database_url)
    store = Store.from_url(settings.database_url)
    speech: SpeechResources | None = None
    try:
        stale = await store.mark_stale_in_progress(before=datetime.now(UTC))
        if stale:
            log.warning(
                "marked %d entries left in progress by a previous run as interrupted", stale
            )
        if settings.speech:
            speech = await open_speech(settings)
        app = AriApplication(settings, store, speech=speech)
        runner = asyncio.create_task(app.run(), name="ari-application")
        try:
            async with contextlib.AsyncExitStack() as services:
                if settings.api_token:
                    api = await services.enter_async_context(
                        running_http_api(
                            store,
                            host=settings.api_host,
                            port=settings.api_port,
                            token=settings.api_token,
                        )
                    )
                    log.info("operators' API on %s", api.url)
                else:
                    log.info("operators' API is off (set API_TOKEN to start it)")
                await services.enter_async_context(
                    running_agi_server(
                        settings, store, hash_key=settings.hash_key, on_session=app.tap_speech
                    )
                )
                if connect_timeout is not None:
                    async with asyncio.timeout(connect_timeout):
                        await app.connected.wait()
                yield app
        finally:
            await app.shutdown()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    finally:
        if speech is not None:
            speech.receiver.close()
            await speech.recognizer.close()
        await store.close()


async def open_speech(settings: Settings) -> SpeechResources:
    """Bind the shared RTP port and load the model once (in a thread: it takes a while)."""
    receiver = await listen_for_rtp(settings.rtp_host, settings.rtp_ports)
    try:
        recognizer = await asyncio.to_thread(
            DigitRecognizer.load,
            RecognizerSettings(model=settings.speech_model, workers=settings.speech_workers),
        )
    except BaseException:
        receiver.close()
        raise
    advertised = settings.rtp_advertised_host or settings.rtp_host
    log.info(
        "speech: RTP on %s:%d (Asterisk sends to %s), model %s",
        *receiver.address,
        advertised,
        settings.speech_model or "tiny.en (bundled)",
    )
    return SpeechResources(receiver, recognizer, advertised)


async def listen_for_rtp(host: str, ports: tuple[int, int]) -> RtpReceiver:
    first, last = ports
    last_error: OSError | None = None
    for port in range(first, last + 1):
        try:
            return await RtpReceiver.listen(host, port)
        except OSError as exc:
            last_error = exc
    raise OSError(f"no free UDP port for RTP on {host} in {first}-{last}: {last_error}")


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_service(settings):
        log.info("ari-digits is running; database %s", _safe_url(settings.database_url))
        await stop.wait()
        log.info("stopping")


def _safe_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler()
    if settings.log_json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level)
