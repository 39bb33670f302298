"""Property tests of the engine (hypothesis): whatever the caller, the clock and the adapter do,
an entry ends in exactly one Finish, and its digits come only from digit events.

The virtual-clock driver fires timers only as the engine's StartTimer actions set them (in
deadline order, with their tokens), so the firings are the ones an adapter would deliver; stale
firings (a cancelled or restarted timer's old token, which a real timer task can still deliver)
are generated on purpose. Speech follows the adapter's contract: each SpeechStarted gets exactly
one SpeechEnded, later, though other events (keys, prompts, timers) may come in between; an
utterance may still be pending when the caller hangs up.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ari_app.engine import (
    Digit,
    Finish,
    SpeechEnded,
    SpeechStarted,
    Timer,
    TimerFired,
)
from ari_app.vocabulary import Source, Status
from tests.engine_driver import Driver

ARGUMENT_SETS = [
    ("num_digits=3",),
    ("min_digits=2", "max_digits=6", "dtmf_stop_event=#"),
    ("num_digits=4", "ask_for_confirmation=yes", "max_attempts=2"),
    ("min_digits=1", "max_digits=5", "ask_for_confirmation=auto", "confidence_threshold=0.9"),
    ("num_digits=2", "input=speech", "max_attempts=3"),
    ("num_digits=3", "input=dtmf", "dtmf_stop_event=none", "max_duration=5"),
    ("num_digits=4", "validate=luhn", "max_attempts=2", "dtmf_input_timeout=1"),
    ("max_digits=8", "validate=[1-5]+", "no_input_timeout=2", "confirm_timeout=1"),
]

KEYS = "0123456789*#AB"


@dataclass(frozen=True)
class Key:
    key: str


@dataclass(frozen=True)
class SpeechStart:
    pass


@dataclass(frozen=True)
class SpeechEnd:
    digits: str
    answer: bool | None
    confidence: float
    rejected: bool


@dataclass(frozen=True)
class FinishPrompt:
    pass


@dataclass(frozen=True)
class StaleTimer:
    timer: Timer
    token: int


@dataclass(frozen=True)
class Leave:
    connection_lost: bool


Step = Key | SpeechStart | SpeechEnd | FinishPrompt | StaleTimer | Leave

steps = st.one_of(
    st.builds(Key, st.sampled_from(KEYS)),
    st.just(SpeechStart()),
    st.builds(
        SpeechEnd,
        st.text("0123456789", max_size=6),
        st.sampled_from([None, True, False]),
        st.floats(0, 1),
        st.booleans(),
    ),
    st.just(FinishPrompt()),
    st.builds(StaleTimer, st.sampled_from(list(Timer)), st.integers(-1, 40)),
    st.builds(Leave, st.booleans()),
)
gaps = st.sampled_from([0.0, 0.05, 0.3, 1.0, 2.5, 3.5, 9.0])


def run(
    arguments: tuple[str, ...], script: list[tuple[Step, float]]
) -> tuple[Driver, Counter[str]]:
    """Play ``script`` (each step after its gap, firing due timers); returns the driver and the
    digits the caller offered (keys and recognised speech)."""
    d = Driver.start(*arguments)
    offered: Counter[str] = Counter()
    pending = 0  # utterances started and not yet ended
    for step, gap in script:
        d.advance(gap)
        match step:
            case Key(key):
                offered[key] += 1
                d.send(Digit(key, d.now, Source.KEY, 120))
            case SpeechStart():
                pending += 1
                d.send(SpeechStarted(d.now))
            case SpeechEnd(digits, answer, confidence, rejected) if pending:
                pending -= 1
                offered.update(digits)
                d.send(
                    SpeechEnded(
                        d.now,
                        None if rejected else f"words {digits}",
                        "" if rejected else digits,
                        None if rejected else answer,
                        () if rejected else (confidence,) * len(digits),
                        "no digits" if rejected else None,
                    )
                )
            case FinishPrompt() if d.playing is not None:
                d.finish_prompt()
            case StaleTimer(timer, token) if (timer, token) not in {
                (name, live) for name, (_, live) in d.timers.items()
            }:
                d.send(TimerFired(timer, token, d.now))
            case Leave(connection_lost):
                if connection_lost:
                    d.lose_connection()
                else:
                    d.hangup()
            case _:
                pass
    for _ in range(pending):  # the adapter ends every utterance it started
        d.send(SpeechEnded(d.now, None, rejected="hung up"))
    return d, offered


def finishes(d: Driver) -> int:
    return sum(isinstance(action, Finish) for action in d.actions)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(ARGUMENT_SETS), st.lists(st.tuples(steps, gaps), max_size=40))
def test_any_sequence_ends_in_exactly_one_finish_with_offered_digits_only(
    arguments: tuple[str, ...], script: list[tuple[Step, float]]
) -> None:
    d, offered = run(arguments, script)
    d.hangup()  # the final hangup: whatever was going on, the entry ends now at the latest
    assert finishes(d) == 1, d.actions
    result = d.finished
    assert not Counter(result.user_input) - offered, (result.user_input, offered)
    if result.status is Status.COMPLETED:
        assert result.user_input


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ARGUMENT_SETS), st.lists(st.tuples(steps, gaps), max_size=25))
def test_an_entry_left_alone_ends_by_itself(
    arguments: tuple[str, ...], script: list[tuple[Step, float]]
) -> None:
    """No hangup needed: once the caller stops, prompts end and timers fire until it finishes
    (every attempt is bounded by max_duration, read-backs by confirm_timeout)."""
    d, _ = run(arguments, [(step, gap) for step, gap in script if not isinstance(step, Leave)])
    for _ in range(40):
        if d.result is not None:
            break
        if d.playing is not None:
            d.finish_prompt()
        d.advance(61.0)
    assert d.result is not None, "the entry never ended without a hangup"
    d.hangup()
    assert finishes(d) == 1
