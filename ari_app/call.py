"""The call task: the one place where an adapter, the engine and the store meet.

An adapter (ARI, later FastAGI) creates a :class:`CallSession` per entry, pushes what it hears
into it with the ``deliver_*`` methods (never blocking: they only enqueue) and runs
:meth:`CallSession.run` as the entry's own asyncio task. The session feeds the engine in order,
carries out its actions through the adapter's :class:`CallPort`, owns the timers, and hands the
result to the store and back to the dialplan.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from ari_app.engine import (
    Action,
    CancelTimer,
    ConnectionLost,
    Digit,
    DigitCollector,
    Event,
    Finish,
    Hangup,
    Play,
    PromptFinished,
    Result,
    Source,
    SpeechEnded,
    SpeechStarted,
    Start,
    StartTimer,
    Status,
    StopPlayback,
    Timer,
    TimerFired,
)
from ari_app.logcontext import CallLogContext
from ari_app.metrics import Metrics, discarded_metrics
from ari_app.params import Params
from ari_app.store.records import EntryOutcome, EntryStart, StoredEvent

log = logging.getLogger(__name__)

VISIBLE_TAIL = 2
# Events that come from the channel through the adapter; their handling latency is measured.
CHANNEL_EVENTS = (Digit, PromptFinished, Hangup)


class ChannelGone(Exception):
    """The channel hung up or left our application while we were acting on it."""


class TransportError(Exception):
    """The connection to Asterisk failed while acting on a channel."""


class CallPort(Protocol):
    """What a session needs from its adapter, in telephony terms."""

    async def answer(self) -> None: ...

    async def play(self, playback_id: str, media: Sequence[str]) -> None: ...

    async def stop_playback(self, playback_id: str) -> None: ...

    async def set_variables(self, variables: Mapping[str, str]) -> None: ...

    async def release(self) -> None:
        """Return the channel to the dialplan."""
        ...


class Attachment(Protocol):
    """Something living as long as the entry (the speech tap): closed when collection ends,
    before the channel returns to the dialplan. ``close`` must not raise."""

    async def close(self) -> None: ...


class EntryStore(Protocol):
    async def start_entry(self, start: EntryStart) -> int: ...

    async def finish_entry(self, entry_id: int, outcome: EntryOutcome) -> None: ...


@dataclass(frozen=True)
class CallInfo:
    channel_id: str
    channel_name: str
    caller_number: str | None
    caller_name: str | None
    asterisk_id: str | None
    transport: str
    needs_answer: bool


def mask_digits(digits: str) -> str:
    """``123456`` → ``****56``: enough for an operator to tell entries apart."""
    if len(digits) <= VISIBLE_TAIL:
        return "*" * len(digits)
    return "*" * (len(digits) - VISIBLE_TAIL) + digits[-VISIBLE_TAIL:]


def keyed_hash(digits: str, key: str) -> str:
    return hmac.new(key.encode(), digits.encode(), hashlib.sha256).hexdigest()


class CallSession:
    """One entry on one channel, run as its own task."""

    def __init__(
        self,
        info: CallInfo,
        arguments: Sequence[str] | Mapping[str, str],
        port: CallPort,
        store: EntryStore,
        *,
        hash_key: str,
        clock: Callable[[], float] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.info = info
        self._metrics = metrics if metrics is not None else discarded_metrics()
        self._port = port
        self._store = store
        self._hash_key = hash_key
        self._collector = DigitCollector.from_arguments(arguments)
        self._arguments = arguments
        self._inbox: asyncio.Queue[Event] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._timers: dict[Timer, asyncio.TimerHandle] = {}
        self._playbacks: dict[str, int] = {}
        self._hung_up = False
        self._attachments: list[Attachment] = []
        self.entry_id: int | None = None
        self.result: Result | None = None
        params = self._collector.params
        # The adapter enters it in the call's task (ari_app.logcontext).
        self.log_context = CallLogContext(
            channel_id=info.channel_id,
            transport=info.transport,
            label=params.label if params is not None else None,
        )

    @property
    def params(self) -> Params | None:
        return self._collector.params

    @property
    def expects_answer(self) -> bool:
        return self._collector.expects_answer

    @property
    def digits_missing(self) -> int | None:
        return self._collector.digits_missing

    def next_timer_at(self) -> float | None:
        """Loop time of the earliest pending timer (adapters that poll size their waits by it)."""
        return min((handle.when() for handle in self._timers.values()), default=None)

    def attach(self, attachment: Attachment) -> None:
        self._attachments.append(attachment)

    @property
    def sensitive(self) -> bool:
        params = self._collector.params
        return params is None or params.sensitive

    # --- what adapters call (never blocks) -------------------------------------------------

    def deliver_digit(
        self, key: str, *, duration_ms: int | None = None, source: Source = Source.KEY
    ) -> None:
        self._inbox.put_nowait(Digit(key, self._clock(), source, duration_ms))

    def deliver_playback_finished(self, playback_id: str) -> None:
        number = self._playbacks.get(playback_id)
        if number is not None:
            self._inbox.put_nowait(PromptFinished(number, self._clock()))

    def deliver_speech_started(self) -> None:
        self._inbox.put_nowait(SpeechStarted(self._clock()))

    def deliver_speech_ended(
        self,
        transcript: str | None,
        digits: str = "",
        answer: bool | None = None,
        *,
        confidences: tuple[float, ...] = (),
        rejected: str | None = None,
    ) -> None:
        self._inbox.put_nowait(
            SpeechEnded(self._clock(), transcript, digits, answer, confidences, rejected)
        )

    def deliver_hangup(self) -> None:
        self._hung_up = True
        self._inbox.put_nowait(Hangup(self._clock()))

    def deliver_connection_lost(self) -> None:
        self._inbox.put_nowait(ConnectionLost(self._clock()))

    def playback_id(self, number: int) -> str:
        return f"{self.info.channel_id}-p{number}"

    # --- the task ---------------------------------------------------------------------------

    async def run(self) -> Result:
        started_at = datetime.now(UTC)
        started = self._loop.time()
        self._metrics.entry_started(self.info.transport)
        row = asyncio.create_task(self._start_row(started_at))
        try:
            if self.info.needs_answer and self._collector.params is not None:
                failure = await self._act(self._port.answer())
                if failure is not None:
                    self._inbox.put_nowait(failure)
            result = await self._collect()
        finally:
            self._cancel_all_timers()
            for attachment in reversed(self._attachments):
                await attachment.close()
        self.result = result
        self._metrics.entry_finished(self.info.transport, result, self._loop.time() - started)
        # The row first, so that the result's log line carries the entry id (logcontext).
        entry_id = await row
        self.entry_id = entry_id
        self._log_result(result)
        await self._finish_row(entry_id, result)
        await self._return_to_dialplan(result)
        return result

    async def _collect(self) -> Result:
        pending: list[Event] = [Start(self._clock())]
        while True:
            from_inbox = not pending
            event = pending.pop(0) if pending else await self._inbox.get()
            actions = self._collector.handle(event)
            if from_inbox and isinstance(event, CHANNEL_EVENTS):
                self._metrics.event_handled(self.info.transport, self._clock() - event.at)
            for action in actions:
                follow_up = await self._execute(action)
                if isinstance(action, Finish):
                    return action.result
                if follow_up is not None:
                    pending.append(follow_up)

    async def _execute(self, action: Action) -> Event | None:
        """Carry out one action; a failure comes back as the event that explains it."""
        match action:
            case Play():
                playback_id = self.playback_id(action.playback)
                self._playbacks[playback_id] = action.playback
                return await self._act(self._port.play(playback_id, action.media))
            case StopPlayback():
                return await self._act(self._port.stop_playback(self.playback_id(action.playback)))
            case StartTimer():
                self._cancel_timer(action.timer)
                self._timers[action.timer] = self._loop.call_later(
                    action.seconds, self._fire, action.timer, action.token
                )
            case CancelTimer():
                self._cancel_timer(action.timer)
            case Finish():
                pass
        return None

    async def _act(self, operation: Awaitable[None]) -> Event | None:
        try:
            await operation
        except ChannelGone:
            self._hung_up = True
            return Hangup(self._clock())
        except TransportError as exc:
            log.warning("channel %s: lost Asterisk while acting: %s", self.info.channel_id, exc)
            return ConnectionLost(self._clock())
        return None

    def _fire(self, timer: Timer, token: int) -> None:
        self._timers.pop(timer, None)
        self._inbox.put_nowait(TimerFired(timer, token, self._clock()))

    def _cancel_timer(self, timer: Timer) -> None:
        handle = self._timers.pop(timer, None)
        if handle is not None:
            handle.cancel()

    def _cancel_all_timers(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    # --- storage and the way back ---------------------------------------------------------

    async def _start_row(self, started_at: datetime) -> int | None:
        params = self._collector.params
        parameters: dict[str, object] = (
            params.as_record() if params is not None else {"arguments": self._raw_arguments()}
        )
        start = EntryStart(
            channel_id=self.info.channel_id,
            channel_name=self.info.channel_name,
            caller_number=self.info.caller_number,
            caller_name=self.info.caller_name,
            label=params.label if params is not None else None,
            parameters=parameters,
            transport=self.info.transport,
            asterisk_id=self.info.asterisk_id,
            started_at=started_at,
            sensitive=self.sensitive,
        )
        try:
            entry_id = await self._store.start_entry(start)
        except Exception:
            log.exception("channel %s: could not store the entry's start", self.info.channel_id)
            return None
        self.log_context.entry_id = entry_id
        return entry_id

    async def _finish_row(self, entry_id: int | None, result: Result) -> None:
        if entry_id is None:
            return
        try:
            await self._store.finish_entry(entry_id, self._outcome(result))
        except Exception:
            log.exception(
                "channel %s: could not store entry %s (status %s)",
                self.info.channel_id,
                entry_id,
                result.status,
            )

    def _outcome(self, result: Result) -> EntryOutcome:
        sensitive = self.sensitive
        events = [
            StoredEvent(
                kind="digit",
                attempt=record.attempt,
                at_ms=record.at_ms,
                digit="*" if sensitive else record.digit,
                source=record.source.value,
                duration_ms=record.duration_ms,
                detail=None,
                confidence=record.confidence,
            )
            for record in result.digits
        ] + [
            StoredEvent(
                kind=step.kind,
                attempt=step.attempt,
                at_ms=step.at_ms,
                digit=None,
                source=None,
                duration_ms=None,
                detail=step.detail,
                rejected=step.rejected,
            )
            for step in result.steps
        ]
        events.sort(key=lambda event: event.at_ms)
        digits = result.user_input
        return EntryOutcome(
            status=result.status.value,
            user_input=mask_digits(digits) if sensitive else digits,
            input_hash=keyed_hash(digits, self._hash_key) if sensitive and digits else None,
            terminated_by=result.terminated_by.value if result.terminated_by else None,
            attempts=result.attempts,
            confirmed=result.confirmed.value,
            error=result.error,
            ended_at=datetime.now(UTC),
            events=tuple(events),
        )

    async def _return_to_dialplan(self, result: Result) -> None:
        if self._hung_up or result.status is Status.HANGUP:
            return
        variables = {
            "DIGITS": result.user_input,
            "DIGITS_STATUS": result.status.value,
            "DIGITS_CONFIRMED": result.confirmed.value,
            "DIGITS_ID": "" if self.entry_id is None else str(self.entry_id),
        }
        if result.error:
            variables["DIGITS_ERROR"] = result.error
        try:
            await self._port.set_variables(variables)
            await self._port.release()
        except ChannelGone:
            log.info("channel %s: hung up before returning to the dialplan", self.info.channel_id)
        except TransportError as exc:
            log.error("channel %s: could not return to the dialplan: %s", self.info.channel_id, exc)

    def _raw_arguments(self) -> object:
        if isinstance(self._arguments, Mapping):
            return dict(self._arguments)
        return list(self._arguments)

    def _log_result(self, result: Result) -> None:
        shown = mask_digits(result.user_input) if self.sensitive else result.user_input
        log.info(
            "channel %s: entry %s digits=%s confirmed=%s attempts=%d%s",
            self.info.channel_id,
            result.status.value,
            shown or "-",
            result.confirmed.value,
            result.attempts,
            f" error={result.error}" if result.error else "",
        )
