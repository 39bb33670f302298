"""The long-running service: storage ready first, then the Stasis application."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from ari_app.ari.app import AriApplication
from ari_app.settings import Settings
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
    try:
        stale = await store.mark_stale_in_progress(before=datetime.now(UTC))
        if stale:
            log.warning(
                "marked %d entries left in progress by a previous run as interrupted", stale
            )
        app = AriApplication(settings, store)
        runner = asyncio.create_task(app.run(), name="ari-application")
        try:
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
        await store.close()


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
