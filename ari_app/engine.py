"""The digit collection rules, as a sans-I/O state machine.

One :class:`DigitCollector` per entry. Feed it events (:class:`Start`, :class:`Digit`,
:class:`PromptFinished`, :class:`TimerFired`, :class:`Hangup`, :class:`ConnectionLost`) and carry
out the actions it returns (:class:`Play`, :class:`StopPlayback`, :class:`StartTimer`,
:class:`CancelTimer`, :class:`Finish`). It never touches a clock, a socket or a database: time
arrives with every event (seconds on any monotonic clock), so tests drive it with plain numbers.

Rules in one breath: the prompt plays and keys typed over it are kept (the first one stops it);
reaching ``max_digits`` finishes at once; a stop key finishes with at least ``min_digits``;
otherwise the per-digit timer decides. A failed attempt (no input, short, invalid) plays the
invalid prompt and asks again, up to ``max_attempts``. With confirmation the digits are read back
and 1 accepts, 2 rejects and asks again, silence repeats the question once; with
``ask_for_confirmation=auto`` only an attempt holding a spoken digit below the entry's confidence
threshold is read back. No input timer runs while the caller speaks; speech the recogniser
rejected (talk, noise) is silence to the rules: the timers it paused go on from their deadlines.
Keys pressed while an utterance is still being recognised wait for it, so the digits keep the
order the caller gave them ("four one five five", then # ends the entry with 4155).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum, StrEnum, auto

from ari_app.media import Digits, MediaItem, media_item
from ari_app.params import (
    DIGITS_PLACEHOLDER,
    DTMF_KEYS,
    ParamError,
    Params,
    compile_pattern,
    parse_params,
    split_arguments,
)
from ari_app.vocabulary import Confirmed, Source, Status

CONFIRM_KEY = "1"
REJECT_KEY = "2"


class TerminatedBy(StrEnum):
    MAX_DIGITS = "max_digits"
    STOP_KEY = "stop_key"
    TIMEOUT = "timeout"


class Timer(StrEnum):
    NO_INPUT = "no_input"
    INTER_DIGIT = "inter_digit"
    ATTEMPT = "attempt"
    CONFIRM = "confirm"
    HELD_KEYS = "held_keys"
    LAST_WORDS = "last_words"


# Keys wait at most this long for the speech before them to be recognised (a decode takes well
# under a second; an audio stream that stops mid-word must not swallow the keys).
HELD_KEYS_MAX_WAIT_S = 3.0
# After a hangup, the entry waits at most this long for what the caller said just before it.
LAST_WORDS_MAX_WAIT_S = 3.0


# --- events (inputs) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    at: float


@dataclass(frozen=True)
class Digit:
    key: str
    at: float
    source: Source = Source.KEY
    duration_ms: int | None = None
    confidence: float | None = None


@dataclass(frozen=True)
class PromptFinished:
    playback: int
    at: float


@dataclass(frozen=True)
class TimerFired:
    timer: Timer
    token: int
    at: float


@dataclass(frozen=True)
class SpeechStarted:
    """The caller started speaking: barge-in, and no input timer runs while they speak."""

    at: float


@dataclass(frozen=True)
class SpeechEnded:
    """An utterance was recognised (or discarded: ``transcript`` is None).

    ``digits`` and ``answer`` (yes/no to a read-back) are what the words mean; the adapter
    decides that, the engine only applies the rules. ``confidences`` has one value (0..1) per
    digit. ``rejected`` says why the recogniser gave nothing for speech it heard (talk without
    digits, noise): the engine treats such a turn like silence.
    """

    at: float
    transcript: str | None
    digits: str = ""
    answer: bool | None = None
    confidences: tuple[float, ...] = ()
    rejected: str | None = None


@dataclass(frozen=True)
class Hangup:
    at: float


@dataclass(frozen=True)
class ConnectionLost:
    at: float


Event = (
    Start
    | Digit
    | PromptFinished
    | TimerFired
    | SpeechStarted
    | SpeechEnded
    | Hangup
    | ConnectionLost
)


# --- actions (outputs) -------------------------------------------------------------------


@dataclass(frozen=True)
class Play:
    playback: int
    media: tuple[MediaItem, ...]
    # The media reads digits back; adapters must not log it in clear for sensitive entries.
    reads_digits: bool = False


@dataclass(frozen=True)
class StopPlayback:
    playback: int


@dataclass(frozen=True)
class StartTimer:
    """Start (or restart) a timer; its :class:`TimerFired` must carry ``token`` back."""

    timer: Timer
    seconds: float
    token: int


@dataclass(frozen=True)
class CancelTimer:
    timer: Timer


@dataclass(frozen=True)
class DigitRecord:
    digit: str
    source: Source
    attempt: int
    at_ms: int
    duration_ms: int | None
    confidence: float | None = None  # spoken digits: the recogniser's, 0..1


@dataclass(frozen=True)
class StepRecord:
    """Something that happened besides a digit: an attempt's end, a confirmation answer."""

    kind: str
    attempt: int
    at_ms: int
    detail: str
    rejected: str | None = None  # an utterance the recogniser rejected: why


@dataclass(frozen=True)
class Result:
    status: Status
    user_input: str
    terminated_by: TerminatedBy | None
    attempts: int
    confirmed: Confirmed
    digits: tuple[DigitRecord, ...]
    steps: tuple[StepRecord, ...]
    error: str | None = None


@dataclass(frozen=True)
class Finish:
    result: Result


Action = Play | StopPlayback | StartTimer | CancelTimer | Finish


_INPUT_TIMERS = (Timer.NO_INPUT, Timer.INTER_DIGIT, Timer.ATTEMPT)


class Phase(Enum):
    IDLE = auto()
    PROMPTING = auto()
    COLLECTING = auto()
    READING_BACK = auto()
    AWAITING_ANSWER = auto()
    HUNG_UP = auto()  # the caller left while their last words were being recognised
    DONE = auto()


class DigitCollector:
    """Collects one entry. Not thread-safe; one instance per entry."""

    def __init__(self, params: Params | ParamError) -> None:
        self._params = params
        self._phase = Phase.IDLE
        self._started_at = 0.0
        self._attempt = 0
        self._entered: list[str] = []
        self._digits: list[DigitRecord] = []
        self._steps: list[StepRecord] = []
        self._playback = 0
        self._playing: int | None = None
        self._timer_tokens: dict[Timer, int] = {}
        self._deadlines: dict[Timer, float] = {}
        # Input timers stopped while the caller speaks: they go on if the speech is rejected.
        self._paused: dict[Timer, float] = {}
        self._next_token = 0
        self._terminated_by: TerminatedBy | None = None
        self._readbacks = 0
        # Utterances begun (SpeechStarted) and not yet recognised (SpeechEnded): the adapter
        # delivers exactly one SpeechEnded for each SpeechStarted.
        self._utterances_pending = 0
        self._held_keys: list[Digit] = []  # keys that wait for those utterances' digits
        self._held_attempt = 0
        self.result: Result | None = None

    @classmethod
    def from_arguments(cls, arguments: Sequence[str] | Mapping[str, str]) -> DigitCollector:
        """Build from Stasis arguments or a query mapping; bad ones end the entry with ``error``."""
        try:
            values = (
                dict(arguments) if isinstance(arguments, Mapping) else split_arguments(arguments)
            )
            return cls(parse_params(values))
        except ParamError as exc:
            return cls(exc)

    @property
    def params(self) -> Params | None:
        return self._params if isinstance(self._params, Params) else None

    @property
    def expects_answer(self) -> bool:
        """The read-back is playing or awaiting its yes/no."""
        return self._phase in (Phase.READING_BACK, Phase.AWAITING_ANSWER)

    @property
    def digits_missing(self) -> int | None:
        """Digits the attempt still needs when the count is exact (``num_digits``), else None."""
        params = self.params
        if params is None or params.min_digits != params.max_digits:
            return None
        return max(0, params.max_digits - len(self._entered))

    @property
    def done(self) -> bool:
        return self._phase is Phase.DONE

    def handle(self, event: Event) -> list[Action]:
        if self._phase is Phase.DONE:
            return []
        match event:
            case Start():
                return self._on_start(event)
            case Digit():
                return self._on_digit(event)
            case PromptFinished():
                return self._on_prompt_finished(event)
            case TimerFired():
                return self._on_timer(event)
            case SpeechStarted():
                return self._on_speech_started(event)
            case SpeechEnded():
                return self._on_speech_ended(event)
            case Hangup():
                return self._on_hangup(event)
            case ConnectionLost() if self._phase is Phase.HUNG_UP:
                return self._finish_hung_up(event.at)
            case ConnectionLost():
                return self._finish(Status.INTERRUPTED, event.at, self._interrupted_confirmation())

    # --- event handlers ------------------------------------------------------------------

    def _on_start(self, event: Start) -> list[Action]:
        if self._phase is not Phase.IDLE:
            return []
        self._started_at = event.at
        if isinstance(self._params, ParamError):
            return self._finish(Status.ERROR, event.at, Confirmed.NOT_ASKED, str(self._params))
        return self._begin_attempt(event.at, self._params.prompt)

    def _on_digit(self, event: Digit) -> list[Action]:
        params = self._require_params()
        key = event.key.upper()
        if len(key) != 1 or key not in DTMF_KEYS:
            return []
        if self._phase in (Phase.READING_BACK, Phase.AWAITING_ANSWER):
            return self._on_confirmation_key(key, event)  # keys 1/2 answer whatever `input` says
        if not (params.accepts_speech if event.source is Source.VOICE else params.accepts_keys):
            return []
        if self._phase not in (Phase.PROMPTING, Phase.COLLECTING):
            return []
        if event.source is Source.KEY and self._utterances_pending:
            self._held_keys.append(event)
            self._held_attempt = self._attempt
            if Timer.HELD_KEYS in self._timer_tokens:
                return []
            return [self._start_timer(Timer.HELD_KEYS, HELD_KEYS_MAX_WAIT_S, event.at)]

        actions: list[Action] = []
        if self._phase is Phase.PROMPTING:
            actions += self._stop_playing()  # barge-in: the key is kept (type-ahead)
            self._phase = Phase.COLLECTING
        actions += self._cancel_timers(Timer.NO_INPUT)

        if key in params.stop_keys:
            self._record_step("stop_key", event.at, key)
            if not self._entered:
                return actions + self._fail(Status.NO_INPUT, event.at)
            if len(self._entered) < params.min_digits:
                return actions + self._fail(Status.SHORT, event.at)
            return actions + self._complete(TerminatedBy.STOP_KEY, event.at)

        self._enter(event)
        self._paused.clear()  # a digit supersedes the timers speech had paused
        if len(self._entered) >= params.max_digits:
            return actions + self._complete(TerminatedBy.MAX_DIGITS, event.at)
        actions.append(self._start_timer(Timer.INTER_DIGIT, params.dtmf_input_timeout, event.at))
        return actions

    def _on_prompt_finished(self, event: PromptFinished) -> list[Action]:
        params = self._require_params()
        if event.playback != self._playing:
            return []  # a playback we already stopped or replaced
        self._playing = None
        if self._phase is Phase.PROMPTING:
            self._phase = Phase.COLLECTING
            return [self._start_timer(Timer.NO_INPUT, params.no_input_timeout, event.at)]
        if self._phase is Phase.READING_BACK:
            self._phase = Phase.AWAITING_ANSWER
            return [self._start_timer(Timer.CONFIRM, params.confirm_timeout, event.at)]
        return []

    def _on_timer(self, event: TimerFired) -> list[Action]:
        params = self._require_params()
        if self._timer_tokens.get(event.timer) != event.token:
            return []  # cancelled or restarted after it fired
        del self._timer_tokens[event.timer]
        self._deadlines.pop(event.timer, None)
        if event.timer is Timer.LAST_WORDS:
            return self._finish_hung_up(event.at)  # the rest was never recognised
        if event.timer is Timer.HELD_KEYS:
            # The speech before the keys was never recognised: it counts as nothing heard.
            self._utterances_pending = 0
            return self._release_held_keys(event.at)
        if event.timer is Timer.CONFIRM:
            if self._phase is not Phase.AWAITING_ANSWER:
                return []
            if self._readbacks < 2:
                self._record_step("confirmation", event.at, "repeat")
                return self._read_back(event.at)
            self._record_step("confirmation", event.at, Confirmed.UNANSWERED.value)
            return self._finish(Status.UNCONFIRMED, event.at, Confirmed.UNANSWERED)
        if self._phase not in (Phase.PROMPTING, Phase.COLLECTING):
            return []
        if not self._entered:
            return self._fail(Status.NO_INPUT, event.at)
        if len(self._entered) < params.min_digits:
            return self._fail(Status.SHORT, event.at)
        return self._complete(TerminatedBy.TIMEOUT, event.at)

    def _on_speech_started(self, event: SpeechStarted) -> list[Action]:
        params = self._require_params()
        if not params.accepts_speech or self._phase is Phase.HUNG_UP:
            return []
        self._utterances_pending += 1
        if self._utterances_pending > 1:
            return []  # still waiting for the previous utterance: its start did all this
        if self._phase is Phase.PROMPTING:
            self._phase = Phase.COLLECTING
            return self._stop_playing() + self._pause_input_timers()
        if self._phase is Phase.COLLECTING:
            return self._pause_input_timers()
        if self._phase in (Phase.READING_BACK, Phase.AWAITING_ANSWER):
            return self._stop_playing() + self._cancel_timers(Timer.CONFIRM)
        return []

    def _on_speech_ended(self, event: SpeechEnded) -> list[Action]:
        params = self._require_params()
        if not params.accepts_speech:
            return []
        was_speaking = self._utterances_pending > 0
        self._utterances_pending = max(0, self._utterances_pending - 1)
        if event.transcript is not None or event.rejected is not None:
            self._record_step("utterance", event.at, event.transcript or "", event.rejected)
        if self._phase is Phase.HUNG_UP:
            return self._on_last_words(event)
        if self._phase in (Phase.READING_BACK, Phase.AWAITING_ANSWER):
            if event.answer is not None:
                key = CONFIRM_KEY if event.answer else REJECT_KEY
                return self._on_confirmation_key(key, Digit(key, event.at, Source.VOICE))
            if was_speaking and self._phase is Phase.READING_BACK and self._playing is None:
                # The caller talked over the read-back without a yes or no: ask again.
                return self._read_back(event.at)
            if was_speaking and self._phase is Phase.AWAITING_ANSWER:
                if self._utterances_pending:
                    return []  # the next utterance may be the answer
                return [self._start_timer(Timer.CONFIRM, params.confirm_timeout, event.at)]
            return []
        if self._phase is Phase.PROMPTING and event.digits:
            self._phase = Phase.COLLECTING
            actions: list[Action] = self._stop_playing()
        elif self._phase is Phase.COLLECTING:
            actions = []
        elif self._phase is Phase.PROMPTING and not self._utterances_pending:
            return self._release_held_keys(event.at)  # typed ahead over a new attempt's prompt
        else:
            return []
        confidences = event.confidences or ()
        for index, key in enumerate(event.digits):
            confidence = confidences[index] if index < len(confidences) else None
            actions += self._on_digit(Digit(key, event.at, Source.VOICE, confidence=confidence))
            if self._phase is not Phase.COLLECTING:
                # Finished, or a new attempt began: later words and the keys held for them
                # were meant for this attempt, not for what comes next.
                self._held_keys.clear()
                return actions + self._cancel_timers(Timer.HELD_KEYS)
        if self._utterances_pending:
            # The caller spoke again before this utterance was recognised: the next one
            # decides the timers, and the keys wait for its digits too.
            return actions + self._pause_input_timers()
        paused, self._paused = self._paused, {}
        actions += self._release_held_keys(event.at)
        if self._phase is not Phase.COLLECTING:
            return actions
        if Timer.INTER_DIGIT in self._timer_tokens or Timer.NO_INPUT in self._timer_tokens:
            return actions
        if not event.digits and paused:
            # Speech that gave no digit is silence to the rules: the stopped timers go on
            # from where they were (a caller who only talks still times out).
            for timer, deadline in paused.items():
                actions.append(self._start_timer_until(timer, deadline, event.at))
        elif self._entered:
            actions.append(
                self._start_timer(Timer.INTER_DIGIT, params.dtmf_input_timeout, event.at)
            )
        elif self._playing is None:
            actions.append(self._start_timer(Timer.NO_INPUT, params.no_input_timeout, event.at))
        return actions

    def _on_hangup(self, event: Hangup) -> list[Action]:
        if self._phase is Phase.HUNG_UP:
            return []
        if not self._utterances_pending or self._phase not in (Phase.PROMPTING, Phase.COLLECTING):
            return self._finish(Status.HANGUP, event.at, self._interrupted_confirmation())
        # What the caller said just before hanging up is still being recognised. Its digits
        # belong to the entry, as keys pressed before a hangup do: wait for them, briefly.
        self._phase = Phase.HUNG_UP
        self._playing = None  # the channel is gone, and its playbacks with it
        self._paused.clear()
        actions = self._cancel_timers(*_INPUT_TIMERS, Timer.HELD_KEYS)
        return [*actions, self._start_timer(Timer.LAST_WORDS, LAST_WORDS_MAX_WAIT_S, event.at)]

    def _on_last_words(self, event: SpeechEnded) -> list[Action]:
        """An utterance recognised after the hangup: its digits are stored, no rule runs."""
        confidences: list[float | None] = [*event.confidences, *([None] * len(event.digits))]
        spoken = zip(event.digits, confidences, strict=False)
        self._enter_without_rules([Digit(k, event.at, Source.VOICE, None, c) for k, c in spoken])
        if self._utterances_pending:
            return []
        return self._finish_hung_up(event.at)

    def _finish_hung_up(self, at: float) -> list[Action]:
        """End an entry whose caller hung up: the keys they pressed meanwhile come last."""
        held, self._held_keys = self._held_keys, []
        self._enter_without_rules([replace(key, at=at) for key in held])
        return self._finish(Status.HANGUP, at, Confirmed.NOT_ASKED)

    def _enter_without_rules(self, digits: list[Digit]) -> None:
        params = self._require_params()
        for digit in digits:
            if digit.key in params.stop_keys or len(self._entered) >= params.max_digits:
                return
            self._enter(digit)

    def _enter(self, digit: Digit) -> None:
        self._entered.append(digit.key)
        self._digits.append(
            DigitRecord(
                digit.key,
                digit.source,
                self._attempt,
                self._ms(digit.at),
                digit.duration_ms,
                digit.confidence,
            )
        )

    def _release_held_keys(self, at: float) -> list[Action]:
        """The keys pressed while speech was being recognised, after its digits, as long as
        they still belong to the attempt they were pressed in. They are entered, and recorded,
        at ``at``: a spoken digit's time is when it was recognised, and the keys follow it."""
        held, self._held_keys = self._held_keys, []
        actions: list[Action] = self._cancel_timers(Timer.HELD_KEYS)
        for key in held:
            if (
                self._phase not in (Phase.PROMPTING, Phase.COLLECTING)
                or self._attempt != self._held_attempt
            ):
                break
            actions += self._on_digit(replace(key, at=at))
        return actions

    def _on_confirmation_key(self, key: str, event: Digit) -> list[Action]:
        params = self._require_params()
        if key not in (CONFIRM_KEY, REJECT_KEY):
            return []
        actions = self._stop_playing() + self._cancel_timers(Timer.CONFIRM)
        if key == CONFIRM_KEY:
            self._record_step("confirmation", event.at, f"{Confirmed.YES.value} ({event.source})")
            return actions + self._finish(Status.COMPLETED, event.at, Confirmed.YES)
        self._record_step("confirmation", event.at, f"{Confirmed.NO.value} ({event.source})")
        if self._attempt >= params.max_attempts:
            return actions + self._finish(Status.REJECTED, event.at, Confirmed.NO)
        return actions + self._begin_attempt(event.at, params.prompt)

    # --- transitions ---------------------------------------------------------------------

    def _begin_attempt(self, at: float, prompt: tuple[str, ...]) -> list[Action]:
        params = self._require_params()
        self._attempt += 1
        self._entered = []
        self._paused.clear()
        self._terminated_by = None
        self._readbacks = 0
        self._phase = Phase.PROMPTING
        self._record_step("attempt", at, "started")
        return [
            *self._cancel_timers(Timer.INTER_DIGIT, Timer.NO_INPUT, Timer.CONFIRM),
            self._start_timer(Timer.ATTEMPT, params.max_duration, at),
            self._play(tuple(media_item(uri) for uri in prompt)),
        ]

    def _complete(self, terminated_by: TerminatedBy, at: float) -> list[Action]:
        params = self._require_params()
        self._terminated_by = terminated_by
        actions = self._cancel_timers(*_INPUT_TIMERS)
        if not self._is_valid("".join(self._entered)):
            return actions + self._fail(Status.INVALID, at)
        if params.ask_for_confirmation or (params.confirm_uncertain and self._uncertain()):
            return actions + self._read_back(at)
        return actions + self._finish(Status.COMPLETED, at, Confirmed.NOT_ASKED)

    def _fail(self, status: Status, at: float) -> list[Action]:
        params = self._require_params()
        self._record_step("attempt", at, status.value)
        actions = self._stop_playing() + self._cancel_timers(*_INPUT_TIMERS)
        if self._attempt >= params.max_attempts:
            return actions + self._finish(status, at, Confirmed.NOT_ASKED)
        return actions + self._begin_attempt(at, params.invalid_prompt + params.prompt)

    def _read_back(self, at: float) -> list[Action]:
        params = self._require_params()
        self._phase = Phase.READING_BACK
        self._readbacks += 1
        digits = Digits("".join(self._entered))
        media = tuple(
            digits if uri == DIGITS_PLACEHOLDER else media_item(uri)
            for uri in params.confirm_prompt
        )
        if DIGITS_PLACEHOLDER not in params.confirm_prompt:
            media += (digits,)
        return [*self._cancel_timers(Timer.CONFIRM), self._play(media, reads_digits=True)]

    def _finish(
        self, status: Status, at: float, confirmed: Confirmed, error: str | None = None
    ) -> list[Action]:
        actions: list[Action] = []
        if self._playing is not None:
            actions += self._stop_playing()
        actions += [CancelTimer(timer) for timer in self._timer_tokens]
        self._timer_tokens.clear()
        self._deadlines.clear()
        self._paused.clear()
        self._held_keys.clear()
        self._phase = Phase.DONE
        self.result = Result(
            status=status,
            user_input="".join(self._entered),
            terminated_by=self._terminated_by,
            attempts=self._attempt,
            confirmed=confirmed,
            digits=tuple(self._digits),
            steps=tuple(self._steps),
            error=error,
        )
        return [*actions, Finish(self.result)]

    # --- helpers -------------------------------------------------------------------------

    def _require_params(self) -> Params:
        if not isinstance(self._params, Params):  # pragma: no cover - error entries end at Start
            raise RuntimeError("entry has no valid parameters")
        return self._params

    def _interrupted_confirmation(self) -> Confirmed:
        if self._phase in (Phase.READING_BACK, Phase.AWAITING_ANSWER):
            return Confirmed.UNANSWERED
        return Confirmed.NOT_ASKED

    def _play(self, media: tuple[MediaItem, ...], *, reads_digits: bool = False) -> Play:
        self._playback += 1
        self._playing = self._playback
        return Play(self._playback, media, reads_digits)

    def _stop_playing(self) -> list[Action]:
        if self._playing is None:
            return []
        playback, self._playing = self._playing, None
        return [StopPlayback(playback)]

    def _start_timer(self, timer: Timer, seconds: float, at: float) -> StartTimer:
        self._next_token += 1
        self._timer_tokens[timer] = self._next_token
        self._deadlines[timer] = at + seconds
        return StartTimer(timer, seconds, self._next_token)

    def _start_timer_until(self, timer: Timer, deadline: float, at: float) -> StartTimer:
        """Restart a paused timer for what was left of it (at once if that has passed)."""
        return self._start_timer(timer, max(0.0, deadline - at), at)

    def _cancel_timers(self, *timers: Timer) -> list[Action]:
        cancelled = [timer for timer in timers if self._timer_tokens.pop(timer, None) is not None]
        for timer in cancelled:
            self._deadlines.pop(timer, None)
        return [CancelTimer(timer) for timer in cancelled]

    def _pause_input_timers(self) -> list[Action]:
        """No input timer runs while the caller speaks; each is remembered until it is known
        whether the speech held digits."""
        for timer in (Timer.NO_INPUT, Timer.INTER_DIGIT):
            if timer in self._timer_tokens:
                self._paused[timer] = self._deadlines[timer]
        return self._cancel_timers(Timer.NO_INPUT, Timer.INTER_DIGIT)

    def _uncertain(self) -> bool:
        """This attempt holds a spoken digit below the entry's confidence threshold."""
        threshold = self._require_params().confidence_threshold
        return any(
            record.source is Source.VOICE
            and record.attempt == self._attempt
            and (record.confidence is None or record.confidence < threshold)
            for record in self._digits
        )

    def _is_valid(self, digits: str) -> bool:
        rule = self._require_params().validate
        if rule is None:
            return True
        if rule == "luhn":
            return luhn_valid(digits)
        return compile_pattern(rule).fullmatch(digits) is not None

    def _record_step(self, kind: str, at: float, detail: str, rejected: str | None = None) -> None:
        self._steps.append(StepRecord(kind, self._attempt, self._ms(at), detail, rejected))

    def _ms(self, at: float) -> int:
        return max(0, round((at - self._started_at) * 1000))


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment card numbers."""
    if not digits.isdigit() or len(digits) < 2:
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0
