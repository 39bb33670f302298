"""The session runner both transports share: every entry in progress, from start to hand-back.

A transport (:mod:`ari_app.ari.app`, :mod:`ari_app.agi.server`) only translates: it turns what
Asterisk says into a :class:`~ari_app.ports.CallInfo`, a :class:`~ari_app.ports.CallPort` and
``deliver_*`` calls. :class:`Sessions` does the rest, the same way for both: it opens the
:class:`~ari_app.call.CallSession`, keeps the registry of entries in progress, runs each entry
with its log context (:mod:`ari_app.logcontext`), returns the channel to the dialplan with the
``DIGITS*`` variables, and on shutdown lets entries end as interrupted (grace, then cancel).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from ari_app.call import CallSession
from ari_app.engine import Result
from ari_app.logcontext import enter_call
from ari_app.metrics import Metrics
from ari_app.ports import CallInfo, CallPort, ChannelGone, EntryStore, SessionInbox, TransportError
from ari_app.vocabulary import Confirmed, Status

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0

# Runs in the entry's log context before the entry starts (speech tap, text prompt renders).
SessionSetup = Callable[[SessionInbox], None]
# Drives a channel that reports nothing by itself (FastAGI's command loop); never raises.
SessionDriver = Callable[[SessionInbox], Coroutine[Any, Any, None]]


def handback_variables(
    status: Status,
    *,
    user_input: str = "",
    confirmed: Confirmed = Confirmed.NOT_ASKED,
    entry_key: str | None = None,
    error: str | None = None,
) -> dict[str, str]:
    """The channel variables the dialplan reads after ``Stasis()`` or ``AGI()``."""
    variables = {
        "DIGITS": user_input,
        "DIGITS_STATUS": status.value,
        "DIGITS_CONFIRMED": confirmed.value,
        "DIGITS_ID": entry_key or "",
    }
    if error:
        variables["DIGITS_ERROR"] = error
    return variables


async def hand_back(port: CallPort, variables: Mapping[str, str], *, channel_id: str) -> None:
    """Set the ``DIGITS*`` variables and return the channel to the dialplan; never raises for
    a channel that is gone or a transport that failed (logged)."""
    try:
        await port.set_variables(variables)
        await port.release()
    except ChannelGone:
        log.info("channel %s: hung up before returning to the dialplan", channel_id)
    except TransportError as exc:
        log.error("channel %s: could not return to the dialplan: %s", channel_id, exc)


class Sessions:
    """The entries in progress on one transport, each run as its own task."""

    def __init__(self, store: EntryStore, *, hash_key: str, metrics: Metrics) -> None:
        self._store = store
        self._hash_key = hash_key
        self._metrics = metrics
        self._running: dict[str, CallSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def running(self) -> Mapping[str, CallSession]:
        """Entries in progress, by the key their transport registered them under."""
        return self._running

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        return frozenset(self._tasks)

    def open(
        self,
        key: str,
        info: CallInfo,
        arguments: Sequence[str] | Mapping[str, str],
        port: CallPort,
    ) -> CallSession:
        """A new entry, registered at once (so that the events right behind it find it)."""
        session = CallSession(
            info, arguments, port, self._store, hash_key=self._hash_key, metrics=self._metrics
        )
        self._running[key] = session
        self._idle.clear()
        return session

    def start(self, key: str, session: CallSession, setup: SessionSetup) -> None:
        """Run an opened entry as a new task, in a copy of the current context (the caller's,
        e.g. the websocket reader's, must stay clear of any call)."""
        task = asyncio.create_task(
            self.run(key, session, setup),
            name=f"call-{session.info.channel_id}",
            context=contextvars.copy_context(),
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(
        self,
        key: str,
        session: CallSession,
        setup: SessionSetup,
        *,
        driver: SessionDriver | None = None,
    ) -> None:
        """Run an opened entry in the current task, which becomes the call's task: every log
        line from here on (``setup``'s and ``driver``'s tasks included) carries the call.

        ``driver``: a transport that drives its channel itself (FastAGI) runs it as a task from
        the entry's start until the channel is handed back.
        """
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        enter_call(session.log_context)
        driving: asyncio.Task[None] | None = None
        try:
            try:
                setup(session)
            except Exception:
                log.exception("channel %s: setting the entry up failed", session.info.channel_id)
            if driver is not None:
                driving = asyncio.create_task(
                    driver(session), name=f"drive-{session.info.channel_id}"
                )
            result = await session.run()
            await self._hand_back(session, result)
        except Exception:
            log.exception("channel %s: the call task failed", session.info.channel_id)
        finally:
            if driving is not None:
                driving.cancel()
                await asyncio.gather(driving, return_exceptions=True)
            if task is not None:
                self._tasks.discard(task)
            del self._running[key]
            if not self._running:
                self._idle.set()

    async def _hand_back(self, session: CallSession, result: Result) -> None:
        if session.hung_up or result.status is Status.HANGUP:
            return
        variables = handback_variables(
            result.status,
            user_input=result.user_input,
            confirmed=result.confirmed,
            entry_key=session.entry_key if session.recorded else None,
            error=result.error,
        )
        await hand_back(session.port, variables, channel_id=session.info.channel_id)

    async def wait_idle(self, within: float) -> None:
        """Wait until no entry is in progress (every result stored)."""
        async with asyncio.timeout(within):
            await self._idle.wait()

    async def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Let running entries end as interrupted and store their rows; cancel what is still
        running after ``grace`` (e.g. waiting to hand a channel back through a reconnect that
        will not come), so nothing outlives the store."""
        for session in list(self._running.values()):
            session.deliver_connection_lost()
        if not self._tasks:
            return
        _, late = await asyncio.wait(set(self._tasks), timeout=grace)
        if late:
            log.warning(
                "shutdown: cancelling %d call tasks still running after %.0f s", len(late), grace
            )
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
