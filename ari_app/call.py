"""One entry: the one place where a transport's port, the engine and the store meet.

The session runner (:mod:`ari_app.session`) creates a :class:`CallSession` per entry; the
transport (ARI or FastAGI) pushes what it hears into it with the ``deliver_*`` methods (never
blocking: they only enqueue). :meth:`CallSession.run` feeds the engine in order, carries out
its actions through the transport's :class:`~ari_app.ports.CallPort`, owns the timers, and
stores the row; the runner then hands the result back to the dialplan.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime

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
    SpeechEnded,
    SpeechStarted,
    Start,
    StartTimer,
    StopPlayback,
    Timer,
    TimerFired,
)
from ari_app.entry_key import new_entry_key
from ari_app.logcontext import CallLogContext
from ari_app.metrics import Metrics, discarded_metrics
from ari_app.params import Params
from ari_app.ports import Attachment, CallInfo, CallPort, ChannelGone, EntryStore, TransportError
from ari_app.store.records import EntryOutcome, EntryStart, StoredEvent
from ari_app.vocabulary import Source, Status

log = logging.getLogger(__name__)

VISIBLE_TAIL = 2
# What the dialplan reads in DIGITS_ERROR when the entry could not be recorded.
NOT_RECORDED_ERROR = "the entry could not be recorded"
# An utterance's transcript of a sensitive entry, as recorded (the store redacts it too).
REDACTED_TRANSCRIPT = "[redacted]"
# Events that come from the channel through the adapter; their handling latency is measured.
CHANNEL_EVENTS = (Digit, PromptFinished, Hangup)


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
        self.port = port
        self._store = store
        self._hash_key = hash_key
        self._collector = DigitCollector.from_arguments(arguments)
        self._arguments = arguments
        self._inbox: asyncio.Queue[Event] = asyncio.Queue()
        # Set while the session waits for its next event with nothing left to handle.
        self._drained = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._timers: dict[Timer, asyncio.TimerHandle] = {}
        self._playbacks: dict[str, int] = {}
        self._hung_up = False
        self._attachments: list[Attachment] = []
        # Made before anything is stored: the entry's key everywhere (DIGITS_ID, the journal,
        # the database's entry_key), so no step waits for the central database to number it.
        self.entry_key = new_entry_key()
        self.recorded = False  # start and outcome both recorded (durable)
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
    def collecting(self) -> bool:
        return self.result is None

    @property
    def hung_up(self) -> bool:
        """The caller hung up (or the channel left): nothing goes back to the dialplan."""
        return self._hung_up

    async def drained(self) -> None:
        """Return once every event delivered so far has been handled (or the entry is over).

        A transport that polls (FastAGI) awaits this after delivering a key, to see whether
        the key stopped the prompt, before it sends its next command.
        """
        await self._drained.wait()

    @property
    def sensitive(self) -> bool:
        params = self._collector.params
        return params is None or params.sensitive

    # --- what adapters call (never blocks) -------------------------------------------------

    def deliver_digit(
        self, key: str, *, duration_ms: int | None = None, source: Source = Source.KEY
    ) -> None:
        self._put(Digit(key, self._clock(), source, duration_ms))

    def deliver_playback_finished(self, playback_id: str) -> None:
        number = self._playbacks.get(playback_id)
        if number is not None:
            self._put(PromptFinished(number, self._clock()))

    def deliver_speech_started(self) -> None:
        self._put(SpeechStarted(self._clock()))

    def deliver_speech_ended(
        self,
        transcript: str | None,
        digits: str = "",
        answer: bool | None = None,
        *,
        confidences: tuple[float, ...] = (),
        rejected: str | None = None,
    ) -> None:
        self._put(SpeechEnded(self._clock(), transcript, digits, answer, confidences, rejected))

    def deliver_hangup(self) -> None:
        self._put(self._caller_gone())

    def deliver_connection_lost(self) -> None:
        self._put(ConnectionLost(self._clock()))

    def _put(self, event: Event) -> None:
        self._drained.clear()
        self._inbox.put_nowait(event)

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
                failure = await self._act(self.port.answer())
                if failure is not None:
                    self._put(failure)
            result = await self._collect()
        finally:
            self._drained.set()
            self._cancel_all_timers()
            for attachment in reversed(self._attachments):
                await attachment.close()
        self.result = result
        self._metrics.entry_finished(
            self.info.transport,
            result.status,
            self._loop.time() - started,
            digit_sources=[record.source for record in result.digits],
            first_digit_s=result.digits[0].at_ms / 1000 if result.digits else None,
        )
        # The start first, so that the result's log line carries the entry's key.
        started_recorded = await row
        self._log_result(result)
        self.recorded = started_recorded and await self._record_outcome(result)
        if not self.recorded and result.status is not Status.HANGUP:
            # A result that was not recorded must not reach the dialplan as a success: the
            # caller would hear an entry accepted that nobody will ever read.
            result = dataclasses.replace(result, status=Status.ERROR, error=NOT_RECORDED_ERROR)
            self.result = result
        return result

    async def _collect(self) -> Result:
        pending: list[Event] = [Start(self._clock())]
        while True:
            from_inbox = not pending
            if from_inbox and self._inbox.empty():
                self._drained.set()
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
                return await self._act(self.port.play(playback_id, action.media))
            case StopPlayback():
                return await self._act(self.port.stop_playback(self.playback_id(action.playback)))
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
            return self._caller_gone()
        except TransportError as exc:
            log.warning("channel %s: lost Asterisk while acting: %s", self.info.channel_id, exc)
            return ConnectionLost(self._clock())
        return None

    def _caller_gone(self) -> Hangup:
        if not self._hung_up:
            self._hung_up = True
            for attachment in self._attachments:
                attachment.caller_gone()
        return Hangup(self._clock())

    def _fire(self, timer: Timer, token: int) -> None:
        self._timers.pop(timer, None)
        self._put(TimerFired(timer, token, self._clock()))

    def _cancel_timer(self, timer: Timer) -> None:
        handle = self._timers.pop(timer, None)
        if handle is not None:
            handle.cancel()

    def _cancel_all_timers(self) -> None:
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()

    # --- storage and the way back ---------------------------------------------------------

    async def _start_row(self, started_at: datetime) -> bool:
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
            entry_key=self.entry_key,
        )
        try:
            await self._store.record_start(start)
        except Exception:
            log.exception("channel %s: could not store the entry's start", self.info.channel_id)
            return False
        self.log_context.entry_id = self.entry_key
        return True

    async def _record_outcome(self, result: Result) -> bool:
        try:
            await self._store.record_outcome(self.entry_key, self._outcome(result))
        except Exception:
            log.exception(
                "channel %s: could not store entry %s (status %s)",
                self.info.channel_id,
                self.entry_key,
                result.status,
            )
            return False
        return True

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
                detail=(
                    REDACTED_TRANSCRIPT
                    if sensitive and step.kind == "utterance" and step.detail is not None
                    else step.detail
                ),
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
