"""The FastAGI entry point: ``AGI(agi://127.0.0.1:4573/collect?num_digits=4&label=pin)``.

Each connection to ``/collect`` is one entry: the query string (and any further ``AGI()``
arguments, Stasis-style) are the entry's parameters with the same names, validation and errors
as ``Stasis(digits,…)``; the same session runner (:mod:`ari_app.session`) runs the same engine,
stores the same row (transport ``agi``) and, before the AGI ends, sets the same ``DIGITS*``
variables, so the dialplan continues exactly as after ``Stasis()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import unquote

from ari_app.agi.fastagi import (
    ENVIRONMENT_TIMEOUT,
    MAX_ENVIRONMENT_BYTES,
    AgiApplication,
    AgiRequest,
)
from ari_app.agi.port import (
    COMMAND_TIMEOUT,
    PLAYBACK_TIMEOUT,
    POLL_INTERVAL,
    AgiCallPort,
    agi_quote,
)
from ari_app.metrics import Metrics
from ari_app.params import has_control_character
from ari_app.ports import CallInfo, EntryStore, SessionInbox
from ari_app.session import SHUTDOWN_GRACE, Sessions, handback_variables
from ari_app.tts import TextPrompts
from ari_app.vocabulary import Status

log = logging.getLogger(__name__)

SCRIPT = "collect"
DEFAULT_PORT = 4573
MAX_CONNECTIONS = 1000
MAX_CHANNEL_ID = 128  # the entries.channel_id column

SessionHook = Callable[[SessionInbox], None]


class AgiSettings(Protocol):
    """What the FastAGI server needs from the service's settings (``ari_app.settings``)."""

    @property
    def agi_host(self) -> str: ...

    @property
    def agi_port(self) -> int | None:
        """``None``: no FastAGI server; ``0``: any free port (tests)."""
        ...


@dataclass(frozen=True)
class AgiConfig:
    """A stand-alone :class:`AgiSettings` (tests, benchmarks)."""

    agi_host: str = "127.0.0.1"
    agi_port: int | None = DEFAULT_PORT


def query_arguments(query: str) -> list[str]:
    """``num_digits=4&prompt=sound:a%2Csound:b`` → ``["num_digits=4", "prompt=sound:a,sound:b"]``.

    Percent-escapes are decoded (``+`` stays ``+``: a ``validate`` pattern needs it). A field
    without ``=`` is kept as it is, so it continues a media list exactly like a bare Stasis
    argument, or is reported as not ``name=value``.
    """
    arguments: list[str] = []
    for item in query.split("&"):
        if not item:
            continue
        name, equals, value = item.partition("=")
        arguments.append(f"{unquote(name)}={unquote(value)}" if equals else unquote(item))
    return arguments


def _caller_field(value: str | None, limit: int) -> str | None:
    """Caller ID as stored: Asterisk says ``unknown`` for none; the columns are bounded."""
    if value is None:
        return None
    value = value.strip()
    return None if value in ("", "unknown") else value[:limit]


class AgiServer:
    """Accepts FastAGI connections and runs one :class:`CallSession` per ``/collect`` request."""

    def __init__(
        self,
        store: EntryStore,
        *,
        hash_key: str,
        on_session: SessionHook | None = None,
        poll_interval: float = POLL_INTERVAL,
        command_timeout: float = COMMAND_TIMEOUT,
        playback_timeout: float = PLAYBACK_TIMEOUT,
        environment_timeout: float = ENVIRONMENT_TIMEOUT,
        max_environment_bytes: int = MAX_ENVIRONMENT_BYTES,
        max_connections: int = MAX_CONNECTIONS,
        metrics: Metrics | None = None,
        prompts: TextPrompts | None = None,
    ) -> None:
        self._prompts = prompts
        self._metrics = metrics if metrics is not None else Metrics()
        self._on_session = on_session
        self._poll_interval = poll_interval
        self._command_timeout = command_timeout
        self._playback_timeout = playback_timeout
        self._max_connections = max_connections
        self.app = AgiApplication(
            max_environment_bytes=max_environment_bytes,
            environment_timeout=environment_timeout,
            unknown_route=self._unknown_script,
        )
        self.app.add_route(SCRIPT, self._collect)
        self.address: tuple[str, int] | None = None
        self.runner = Sessions(store, hash_key=hash_key, metrics=self._metrics)
        self.connections_accepted = 0
        self.connections_refused = 0  # over max_connections
        self.entries = 0
        self._numbers = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()

    @property
    def sessions(self) -> Mapping[str, SessionInbox]:
        """Entries in progress, by connection number."""
        return self.runner.running

    @property
    def probes(self) -> int:
        """Connections closed before sending anything (health checks, port scans)."""
        return int(self.app.probes)

    @property
    def refused(self) -> int:
        """Connections refused for their environment or script, or for being too many."""
        return int(self.app.refused) + self.connections_refused

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(
            self._handle, host, port, limit=self.app.max_environment_bytes
        )
        bound = self._server.sockets[0].getsockname()
        self.address = (str(bound[0]), int(bound[1]))
        log.info("FastAGI server listening on agi://%s:%d/%s", *self.address, SCRIPT)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= self._max_connections:
            self.connections_refused += 1
            log.warning(
                "FastAGI: %d connections already open; refused one more", len(self._connections)
            )
            writer.transport.abort()
            return
        self.connections_accepted += 1
        if task is not None:
            self._connections.add(task)
        try:
            await self.app.handler(reader, writer)
        finally:
            if task is not None:
                self._connections.discard(task)

    async def _collect(self, request: AgiRequest) -> None:
        headers = request.headers
        channel_id = headers.get("agi_uniqueid", "").strip()
        if not channel_id or len(channel_id) > MAX_CHANNEL_ID:
            log.warning(
                "FastAGI %s: no usable agi_uniqueid in the AGI environment (did a line break "
                "in the AGI URL end it early?); closed",
                request.peer,
            )
            return
        info = CallInfo(
            channel_id=channel_id,
            channel_name=(headers.get("agi_channel") or "").strip()[:255] or "unknown",
            caller_number=_caller_field(headers.get("agi_callerid"), 80),
            caller_name=_caller_field(headers.get("agi_calleridname"), 255),
            asterisk_id=None,
            transport="agi",
            needs_answer=True,  # AGI does not say; ANSWER on an answered channel does nothing
        )
        arguments = query_arguments(request.query) + request.arguments
        if any(has_control_character(argument) for argument in arguments):
            log.warning(
                "channel %s: the AGI query or arguments contain a line break or control "
                "character; parameters are checked as given",
                channel_id,
            )
        port = AgiCallPort(
            request,
            label=channel_id,
            poll_interval=self._poll_interval,
            command_timeout=self._command_timeout,
            playback_timeout=self._playback_timeout,
            prompts=self._prompts,
        )
        key = str(next(self._numbers))
        session = self.runner.open(key, info, arguments, port)
        self.entries += 1
        # This connection's task becomes the call's task.
        await self.runner.run(key, session, self._set_up, driver=port.drive)

    def _set_up(self, session: SessionInbox) -> None:
        if self._prompts is not None:  # rendered while the call is answered
            self._prompts.prepare(session.params)
        params = session.params
        if params is not None and not params.accepts_keys and self._on_session is None:
            log.warning(
                "channel %s: input=speech over FastAGI without the speech path: "
                "nothing can be heard",
                session.info.channel_id,
            )
        if self._on_session is not None:
            try:
                self._on_session(session)
            except Exception:
                log.exception("channel %s: the session hook failed", session.info.channel_id)

    async def _unknown_script(self, request: AgiRequest) -> None:
        """Tell the dialplan, like a bad parameter would; nothing is stored."""
        error = f"unknown FastAGI script {request.script[:40]!r} (use agi://host:port/{SCRIPT})"
        variables = handback_variables(Status.ERROR, error=error)
        try:
            for name, value in variables.items():
                await request.command(
                    f"SET VARIABLE {name} {agi_quote(value)}", within=self._command_timeout
                )
        except Exception as exc:
            log.info("FastAGI %s: could not report the unknown script: %s", request.peer, exc)

    async def wait_idle(self, within: float) -> None:
        """Wait until no entry is in progress (every result stored)."""
        await self.runner.wait_idle(within)

    async def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop accepting; running entries end as interrupted and go back to the dialplan."""
        if self._server is not None:
            self._server.close()
        await self.runner.close(grace)
        # What is left: connections that never became entries (an environment still coming).
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


@contextlib.asynccontextmanager
async def running_agi_server(
    settings: AgiSettings,
    store: EntryStore,
    *,
    hash_key: str,
    on_session: SessionHook | None = None,
    metrics: Metrics | None = None,
    prompts: TextPrompts | None = None,
    **tuning: Any,
) -> AsyncIterator[AgiServer]:
    """Run the FastAGI server for the block; off (never listening) when ``agi_port`` is None.

    ``on_session`` sees every session before it runs (to attach the speech tap).
    ``prompts`` renders ``tts:`` prompts; without it they are skipped (logged).
    ``tuning``: :class:`AgiServer`'s keyword arguments (poll interval, timeouts, limits).
    """
    server = AgiServer(
        store,
        hash_key=hash_key,
        on_session=on_session,
        metrics=metrics,
        prompts=prompts,
        **tuning,
    )
    if settings.agi_port is None:
        log.info("FastAGI server off (AGI_PORT not set)")
        yield server
        return
    await server.start(settings.agi_host, settings.agi_port)
    try:
        yield server
    finally:
        await server.close()
