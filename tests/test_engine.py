"""The collection rules, driven through the sans-I/O engine with a virtual clock."""

from __future__ import annotations

import pytest

from ari_app.engine import (
    HELD_KEYS_MAX_WAIT_S,
    LAST_WORDS_MAX_WAIT_S,
    Confirmed,
    Digit,
    Source,
    SpeechEnded,
    SpeechStarted,
    Status,
    TerminatedBy,
    Timer,
    luhn_valid,
)
from ari_app.media import Digits, Sound
from tests.engine_driver import Driver


def test_prompt_plays_first_then_digits_complete_at_max_digits() -> None:
    d = Driver.start("num_digits=4")
    assert d.playing is not None
    assert d.playing.media == (Sound("beep"),)
    d.finish_prompt()
    d.keys("1234")
    result = d.finished
    assert result.status is Status.COMPLETED
    assert result.user_input == "1234"
    assert result.terminated_by is TerminatedBy.MAX_DIGITS
    assert result.confirmed is Confirmed.NOT_ASKED
    assert result.attempts == 1
    assert [r.digit for r in result.digits] == list("1234")
    assert all(r.source is Source.KEY and r.attempt == 1 for r in result.digits)


def test_finishes_at_once_on_the_last_digit_without_waiting_for_a_timer() -> None:
    d = Driver.start("num_digits=3", "dtmf_input_timeout=5")
    d.finish_prompt()
    d.keys("12")
    assert d.result is None
    d.keys("3", gap=0.01)
    assert d.finished.status is Status.COMPLETED
    assert d.timers == {}


def test_type_ahead_during_prompt_is_kept_and_the_first_key_stops_the_prompt() -> None:
    d = Driver.start("num_digits=3", "prompt=sound:a-long-prompt")
    first_prompt = d.playing
    assert first_prompt is not None
    d.keys("4")
    assert d.stopped == [first_prompt.playback]
    assert d.playing is None
    d.keys("56")
    assert d.finished.user_input == "456"


def test_prompt_finished_for_a_stopped_playback_is_ignored() -> None:
    d = Driver.start("num_digits=2")
    assert d.playing is not None
    stopped = d.playing.playback
    d.keys("1")
    from ari_app.engine import PromptFinished

    assert d.send(PromptFinished(stopped, d.now)) == []
    d.keys("2")
    assert d.finished.user_input == "12"


def test_stop_key_completes_with_at_least_min_digits_and_is_not_stored() -> None:
    d = Driver.start("min_digits=2", "max_digits=10")
    d.finish_prompt()
    d.keys("123#")
    result = d.finished
    assert result.status is Status.COMPLETED
    assert result.user_input == "123"
    assert result.terminated_by is TerminatedBy.STOP_KEY


def test_several_stop_keys_and_none() -> None:
    d = Driver.start("max_digits=10", "dtmf_stop_event=*#")
    d.finish_prompt()
    d.keys("12*")
    assert d.finished.user_input == "12"

    d = Driver.start("max_digits=4", "dtmf_stop_event=none")
    d.finish_prompt()
    d.keys("12#4")
    assert d.finished.user_input == "12#4"


def test_stop_key_with_no_digits_counts_as_no_input() -> None:
    d = Driver.start("max_digits=10", "max_attempts=1")
    d.finish_prompt()
    d.keys("#")
    assert d.finished.status is Status.NO_INPUT


def test_stop_key_below_min_digits_is_short() -> None:
    d = Driver.start("min_digits=4", "max_digits=10", "max_attempts=1")
    d.finish_prompt()
    d.keys("12#")
    assert d.finished.status is Status.SHORT
    assert d.finished.user_input == "12"


def test_per_digit_timer_restarts_after_each_digit_and_completes_with_min_digits() -> None:
    d = Driver.start("min_digits=2", "max_digits=10", "dtmf_input_timeout=2")
    d.finish_prompt()
    d.keys("12", gap=1.5)  # each gap is below the 2 s timeout because the timer restarts
    assert d.result is None
    d.keys("3", gap=1.9)
    assert d.result is None
    d.advance(2.0)
    result = d.finished
    assert result.status is Status.COMPLETED
    assert result.user_input == "123"
    assert result.terminated_by is TerminatedBy.TIMEOUT


def test_per_digit_timeout_below_min_digits_is_a_short_entry() -> None:
    d = Driver.start("min_digits=4", "max_digits=8", "max_attempts=1", "dtmf_input_timeout=2")
    d.finish_prompt()
    d.keys("12")
    d.advance(2.0)
    assert d.finished.status is Status.SHORT
    assert d.finished.user_input == "12"


def test_no_input_timer_starts_when_the_prompt_ends() -> None:
    d = Driver.start("num_digits=4", "no_input_timeout=3", "max_attempts=1")
    d.advance(10)  # the prompt is still playing: no-input does not run yet
    assert d.result is None
    d.finish_prompt()
    d.advance(2.9)
    assert d.result is None
    d.advance(0.2)
    assert d.finished.status is Status.NO_INPUT
    assert d.finished.user_input == ""


def test_failed_attempt_plays_invalid_prompt_then_prompt_and_retries() -> None:
    d = Driver.start("num_digits=2", "no_input_timeout=3", "invalid_prompt=sound:bad")
    d.finish_prompt()
    d.advance(3)
    assert d.result is None
    assert d.playing is not None
    assert d.playing.media == (Sound("bad"), Sound("beep"))
    d.finish_prompt()
    d.keys("42")
    result = d.finished
    assert result.status is Status.COMPLETED
    assert result.attempts == 2
    assert result.user_input == "42"
    assert {r.attempt for r in result.digits} == {2}
    assert ("attempt", 1, "no_input") in [(s.kind, s.attempt, s.detail) for s in result.steps]


def test_gives_up_after_max_attempts_with_the_last_failure_as_status() -> None:
    d = Driver.start("num_digits=4", "max_attempts=3", "no_input_timeout=1", "dtmf_input_timeout=1")
    d.finish_prompt()
    d.advance(1)  # attempt 1: no input
    d.finish_prompt()
    d.keys("1")
    d.advance(1)  # attempt 2: short
    d.finish_prompt()
    d.keys("12")
    d.advance(1)  # attempt 3: short
    result = d.finished
    assert result.status is Status.SHORT
    assert result.attempts == 3
    assert result.user_input == "12"


def test_max_duration_limits_one_attempt() -> None:
    d = Driver.start("max_digits=30", "max_duration=5", "dtmf_input_timeout=4", "max_attempts=1")
    d.finish_prompt()
    d.keys("1234567", gap=0.7)  # 4.9 s in
    d.advance(0.2)
    assert d.finished.status is Status.COMPLETED
    assert d.finished.terminated_by is TerminatedBy.TIMEOUT


def test_validation_luhn_and_regex() -> None:
    d = Driver.start("num_digits=4", "validate=luhn", "max_attempts=1")
    d.finish_prompt()
    d.keys("1234")
    assert d.finished.status is Status.INVALID
    assert d.finished.user_input == "1234"

    d = Driver.start("num_digits=4", "validate=luhn")
    d.finish_prompt()
    d.keys("4242")
    assert d.finished.status is Status.COMPLETED

    d = Driver.start("num_digits=3", "validate=[1-5]{3}", "max_attempts=2")
    d.finish_prompt()
    d.keys("129")
    assert d.result is None  # invalid: asks again
    d.finish_prompt()
    d.keys("123")
    assert d.finished.status is Status.COMPLETED
    assert d.finished.attempts == 2


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert not luhn_valid("")
    assert not luhn_valid("12a4")


def confirm_flow(*extra: str) -> Driver:
    d = Driver.start("num_digits=3", "ask_for_confirmation=yes", "confirm_timeout=3", *extra)
    d.finish_prompt()
    d.keys("555")
    assert d.result is None
    assert d.playing is not None and d.playing.reads_digits
    return d


def test_confirmation_reads_digits_back_and_1_confirms() -> None:
    d = confirm_flow()
    assert d.playing is not None
    assert d.playing.media == (
        Sound("you-entered"),
        Digits("555"),
        Sound("if-correct-press"),
        Digits("1"),
    )
    d.finish_prompt()
    d.keys("1")
    result = d.finished
    assert result.status is Status.COMPLETED
    assert result.confirmed is Confirmed.YES
    assert result.user_input == "555"


def test_confirmation_key_barges_into_the_read_back() -> None:
    d = confirm_flow()
    readback = d.playing
    assert readback is not None
    d.keys("1")
    assert readback.playback in d.stopped
    assert d.finished.confirmed is Confirmed.YES


def test_rejecting_starts_a_new_attempt_and_the_confirmed_digits_are_stored() -> None:
    d = confirm_flow()
    d.finish_prompt()
    d.keys("2")
    assert d.result is None
    assert d.playing is not None and not d.playing.reads_digits  # the prompt again
    d.finish_prompt()
    d.keys("556")
    d.finish_prompt()
    d.keys("1")
    result = d.finished
    assert result.status is Status.COMPLETED
    assert result.user_input == "556"
    assert result.attempts == 2
    assert result.confirmed is Confirmed.YES
    answers = [s.detail for s in result.steps if s.kind == "confirmation"]
    assert answers == ["no (key)", "yes (key)"]


def test_rejecting_on_the_last_attempt_ends_rejected() -> None:
    d = confirm_flow("max_attempts=1")
    d.finish_prompt()
    d.keys("2")
    assert d.finished.status is Status.REJECTED
    assert d.finished.confirmed is Confirmed.NO


def test_unanswered_confirmation_repeats_once_then_ends_unconfirmed() -> None:
    d = confirm_flow()
    d.finish_prompt()
    d.advance(3)
    assert d.result is None
    assert d.playing is not None and d.playing.reads_digits  # asked again
    d.finish_prompt()
    d.advance(3)
    result = d.finished
    assert result.status is Status.UNCONFIRMED
    assert result.confirmed is Confirmed.UNANSWERED
    assert result.user_input == "555"


def test_other_keys_during_confirmation_are_ignored() -> None:
    d = confirm_flow()
    d.finish_prompt()
    d.keys("9#")
    assert d.result is None
    d.keys("1")
    assert d.finished.confirmed is Confirmed.YES


def test_voice_digits_follow_the_same_rules_and_mix_with_keys() -> None:
    d = Driver.start("num_digits=4")
    d.finish_prompt()
    d.keys("12")
    d.keys("34", source=Source.VOICE)
    result = d.finished
    assert result.user_input == "1234"
    assert [r.source for r in result.digits] == [Source.KEY] * 2 + [Source.VOICE] * 2


def test_hangup_ends_with_what_was_collected() -> None:
    d = Driver.start("num_digits=6")
    d.finish_prompt()
    d.keys("123")
    d.hangup()
    result = d.finished
    assert result.status is Status.HANGUP
    assert result.user_input == "123"
    assert d.send(Digit("4", d.now)) == []  # nothing happens after the end


def test_hangup_during_prompt_stops_it_and_cancels_timers() -> None:
    d = Driver.start("num_digits=6")
    d.hangup()
    assert d.finished.status is Status.HANGUP
    assert d.timers == {}
    assert d.playing is None


def test_hangup_during_confirmation_is_unanswered() -> None:
    d = confirm_flow()
    d.hangup()
    assert d.finished.status is Status.HANGUP
    assert d.finished.confirmed is Confirmed.UNANSWERED
    assert d.finished.user_input == "555"


def test_lost_connection_ends_interrupted() -> None:
    d = Driver.start("num_digits=6")
    d.finish_prompt()
    d.keys("12")
    d.lose_connection()
    assert d.finished.status is Status.INTERRUPTED
    assert d.finished.user_input == "12"


def test_stale_timer_token_is_ignored() -> None:
    d = Driver.start("max_digits=5", "dtmf_input_timeout=2")
    d.finish_prompt()
    d.keys("1")
    _, old_token = d.timers[next(iter(d.timers))]
    d.keys("2")  # restarts the per-digit timer with a new token
    from ari_app.engine import Timer, TimerFired

    assert d.send(TimerFired(Timer.INTER_DIGIT, old_token, d.now)) == []
    assert d.result is None


def test_digit_timing_is_recorded_in_ms_since_start() -> None:
    d = Driver.start("num_digits=2")
    d.advance(1.0)
    d.finish_prompt()
    d.keys("12", gap=0.5)
    assert [r.at_ms for r in d.finished.digits] == [1500, 2000]
    assert [r.duration_ms for r in d.finished.digits] == [120, 120]


def test_invalid_keys_are_ignored() -> None:
    d = Driver.start("num_digits=2")
    d.send(Digit("x", d.now))
    d.send(Digit("12", d.now))
    d.keys("12")
    assert d.finished.user_input == "12"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["colour=blue"], "unknown parameter 'colour'"),
        (["num_digits=0"], "num_digits must be between 1 and 64"),
        (["max_digits=10000"], "max_digits must be between 1 and 64"),
        (["validate=[0-9"], "validate is not a regular expression RE2 can run"),
        (["dtmf_input_timeout=-1"], "dtmf_input_timeout must be more than 0"),
        (["num_digits=four"], "num_digits must be a whole number"),
        (["min_digits=5", "max_digits=4"], "min_digits (5) is larger than max_digits (4)"),
        (["ask_for_confirmation=maybe"], "ask_for_confirmation must be yes, no or auto"),
        (["confidence_threshold=1.5"], "confidence_threshold must be a number from 0 to 1"),
        (["confidence_threshold=nan"], "confidence_threshold must be a number from 0 to 1"),
        (["dtmf_stop_event=x"], "dtmf_stop_event must be keys"),
        (["just-text"], "is not of the form name=value"),
        (["num_digits=4", "num_digits=5"], "given twice"),
        (["prompt=http://evil"], "is not a media URI"),
        (["input=telepathy"], "input must be dtmf, speech or both"),
        (["no_input_timeout=nan"], "no_input_timeout must be more than 0"),
    ],
)
def test_bad_parameters_end_the_entry_with_error_and_never_raise(
    arguments: list[str], message: str
) -> None:
    d = Driver.start(*arguments)
    result = d.finished
    assert result.status is Status.ERROR
    assert result.error is not None and message in result.error
    assert result.attempts == 0
    assert d.played == []


def test_media_lists_split_by_stasis_commas_are_rejoined() -> None:
    d = Driver.start("num_digits=1", "prompt=sound:hello", "sound:world", "label=x")
    assert d.playing is not None
    assert d.playing.media == (Sound("hello"), Sound("world"))
    params = d.collector.params
    assert params is not None and params.label == "x"


def test_confirm_prompt_without_placeholder_appends_the_digits() -> None:
    d = confirm_flow("confirm_prompt=sound:you-entered")
    assert d.playing is not None
    assert d.playing.media == (Sound("you-entered"), Digits("555"))


# --- spoken digits ----------------------------------------------------------------------------


def speak(
    d: Driver,
    digits: str = "",
    *,
    after: float = 0.5,
    transcript: str | None = None,
    answer: bool | None = None,
    lasting: float = 1.0,
    confidences: tuple[float, ...] = (),
    rejected: str | None = None,
) -> None:
    """The caller talks for ``lasting`` seconds; recognition reports ``digits`` (or rejects
    the utterance, giving why)."""
    d.advance(after)
    d.send(SpeechStarted(d.now))
    d.advance(lasting)
    text = transcript if transcript is not None else " ".join(digits)
    d.send(SpeechEnded(d.now, text, digits, answer, confidences or (0.9,) * len(digits), rejected))


def test_speech_barges_into_the_prompt_and_spoken_digits_complete_the_entry() -> None:
    d = Driver.start("num_digits=4")
    prompt = d.playing
    assert prompt is not None
    speak(d, "4321")
    assert prompt.playback in d.stopped
    result = d.finished
    assert result.status is Status.COMPLETED
    assert result.user_input == "4321"
    assert {r.source for r in result.digits} == {Source.VOICE}
    assert ("utterance", "4 3 2 1") in [(s.kind, s.detail) for s in result.steps]


def test_no_input_timer_does_not_run_while_the_caller_speaks() -> None:
    d = Driver.start("min_digits=2", "max_digits=10", "no_input_timeout=3", "dtmf_input_timeout=2")
    d.finish_prompt()
    speak(d, "5551234", after=1.0, lasting=6.0)  # a long utterance, longer than no_input_timeout
    assert d.result is None
    d.advance(2.0)
    assert d.finished.status is Status.COMPLETED
    assert d.finished.user_input == "5551234"
    assert d.finished.terminated_by is TerminatedBy.TIMEOUT


def test_a_discarded_utterance_is_silence_to_the_no_input_timer() -> None:
    d = Driver.start("num_digits=4", "no_input_timeout=3", "max_attempts=1")
    d.finish_prompt()
    d.advance(1)
    d.send(SpeechStarted(d.now))
    d.advance(1)
    assert d.result is None  # paused while the caller speaks
    d.send(SpeechEnded(d.now, None))
    d.advance(0.9)
    assert d.result is None
    d.advance(0.2)  # 3 s after the prompt ended, as if nobody had spoken
    assert d.finished.status is Status.NO_INPUT


def test_rejected_talk_lets_the_no_input_timer_run_on() -> None:
    d = Driver.start("num_digits=4", "no_input_timeout=8", "max_attempts=1")
    d.finish_prompt()
    speak(d, after=2.0, lasting=3.0, transcript="Hello? Hello?", rejected="not_digits")
    assert d.result is None
    d.advance(2.9)  # 7.9 s after the prompt
    assert d.result is None
    d.advance(0.2)
    result = d.finished
    assert result.status is Status.NO_INPUT
    assert result.user_input == "" and result.digits == ()
    (utterance,) = [s for s in result.steps if s.kind == "utterance"]
    assert (utterance.detail, utterance.rejected) == ("Hello? Hello?", "not_digits")


def test_rejected_talk_past_the_deadline_ends_the_attempt_when_it_is_judged() -> None:
    d = Driver.start("num_digits=4", "no_input_timeout=3", "max_attempts=2")
    d.finish_prompt()
    speak(d, after=2.0, lasting=4.0, transcript="um hold on", rejected="not_digits")
    assert d.timers[Timer.NO_INPUT][0] == d.now  # what was left of it: nothing
    d.advance(0.0)
    assert d.playing is not None
    assert d.playing.media == (Sound("please-try-again"), Sound("beep"))


def test_a_caller_who_only_talks_gets_the_retry_prompt_then_no_input() -> None:
    d = Driver.start("num_digits=4", "no_input_timeout=5", "max_attempts=2")
    d.finish_prompt()
    speak(d, after=1.0, transcript="hello?", rejected="not_digits")
    d.advance(3.1)
    assert d.playing is not None and d.playing.media[0] == Sound("please-try-again")
    d.finish_prompt()
    speak(d, after=1.0, transcript="hello? hello?", rejected="not_digits")
    d.advance(3.1)
    result = d.finished
    assert result.status is Status.NO_INPUT
    assert result.attempts == 2 and result.digits == ()


def test_rejected_talk_between_keys_lets_the_inter_digit_timer_run_on() -> None:
    d = Driver.start("min_digits=2", "max_digits=6", "dtmf_input_timeout=4")
    d.finish_prompt()
    d.keys("12")
    speak(d, after=1.0, lasting=1.5, transcript="a cough", rejected="no_speech")
    d.advance(1.4)  # 3.9 s after the last key
    assert d.result is None
    d.advance(0.2)
    assert d.finished.status is Status.COMPLETED
    assert d.finished.user_input == "12"
    assert d.finished.terminated_by is TerminatedBy.TIMEOUT


def test_rejected_talk_during_the_prompt_starts_the_no_input_timer() -> None:
    d = Driver.start("num_digits=4", "no_input_timeout=5", "max_attempts=1")
    prompt = d.playing
    assert prompt is not None
    speak(d, after=0.5, transcript="hello?", rejected="not_digits")
    assert prompt.playback in d.stopped  # speech onset barged in
    d.advance(4.9)
    assert d.result is None
    d.advance(0.2)
    assert d.finished.status is Status.NO_INPUT


def test_spoken_digits_keep_their_confidence() -> None:
    d = Driver.start("num_digits=3")
    d.finish_prompt()
    d.keys("1")
    speak(d, "23", confidences=(0.8, 0.4))
    assert [(r.digit, r.confidence) for r in d.finished.digits] == [
        ("1", None),
        ("2", 0.8),
        ("3", 0.4),
    ]


def test_auto_confirmation_reads_back_only_an_uncertain_spoken_entry() -> None:
    sure = Driver.start("num_digits=3", "ask_for_confirmation=auto")
    sure.finish_prompt()
    speak(sure, "555", confidences=(0.9, 0.8, 0.7))
    assert sure.finished.status is Status.COMPLETED
    assert sure.finished.confirmed is Confirmed.NOT_ASKED

    keys = Driver.start("num_digits=3", "ask_for_confirmation=auto")
    keys.finish_prompt()
    keys.keys("555")
    assert keys.finished.confirmed is Confirmed.NOT_ASKED

    unsure = Driver.start("num_digits=3", "ask_for_confirmation=auto")
    unsure.finish_prompt()
    unsure.keys("5")
    speak(unsure, "55", confidences=(0.9, 0.2))
    assert unsure.result is None
    assert unsure.playing is not None and unsure.playing.reads_digits
    unsure.finish_prompt()
    unsure.keys("1")
    assert unsure.finished.confirmed is Confirmed.YES


def test_auto_confirmation_threshold_is_a_parameter() -> None:
    d = Driver.start("num_digits=2", "ask_for_confirmation=auto", "confidence_threshold=0.95")
    d.finish_prompt()
    speak(d, "55", confidences=(0.9, 0.99))
    assert d.playing is not None and d.playing.reads_digits


def test_keys_and_voice_mix_in_one_entry() -> None:
    d = Driver.start("num_digits=6")
    d.finish_prompt()
    d.keys("12")
    speak(d, "3456")
    result = d.finished
    assert result.user_input == "123456"
    assert [r.source for r in result.digits] == [Source.KEY] * 2 + [Source.VOICE] * 4


def test_keys_pressed_while_speech_is_recognised_come_after_its_digits() -> None:
    d = Driver.start("num_digits=6")
    d.finish_prompt()
    d.advance(0.5)
    d.send(SpeechStarted(d.now))
    d.advance(1.5)  # "four one five" ends; the recogniser is still at work
    d.keys("55", gap=0.2)
    assert d.collector.digits_missing == 6  # the keys wait for the spoken digits
    d.advance(0.3)
    d.send(SpeechEnded(d.now, "four one five", "415", None, (0.9, 0.9, 0.9)))
    assert d.collector.digits_missing == 1
    d.keys("0")
    result = d.finished
    assert result.user_input == "415550"
    assert [r.source for r in result.digits] == [Source.VOICE] * 3 + [Source.KEY] * 3
    times = [r.at_ms for r in result.digits]
    assert times == sorted(times)  # the held keys are recorded when they were entered


def test_a_stop_key_after_spoken_digits_waits_for_them() -> None:
    d = Driver.start("min_digits=1", "max_digits=10")
    d.finish_prompt()
    d.send(SpeechStarted(d.now))
    d.advance(1.0)
    d.keys("#")  # "one two three four" then pound, before the words are recognised
    assert d.result is None
    d.advance(0.4)
    d.send(SpeechEnded(d.now, "1 2 3 4", "1234", None, (0.9,) * 4))
    result = d.finished
    assert (result.status, result.user_input) == (Status.COMPLETED, "1234")
    assert result.terminated_by is TerminatedBy.STOP_KEY


def test_keys_held_for_rejected_speech_are_entered_when_it_is_judged() -> None:
    d = Driver.start("num_digits=4")
    d.finish_prompt()
    d.send(SpeechStarted(d.now))
    d.advance(1.0)
    d.keys("1234")
    assert d.result is None
    d.send(SpeechEnded(d.now, "hello, it's me", rejected="not_digits"))
    assert d.finished.user_input == "1234"
    assert [r.source for r in d.finished.digits] == [Source.KEY] * 4


def test_keys_held_for_speech_that_completes_the_entry_are_dropped() -> None:
    d = Driver.start("num_digits=2", "ask_for_confirmation=yes")
    d.finish_prompt()
    d.send(SpeechStarted(d.now))
    d.advance(1.0)
    d.keys("1")  # not an answer to a read-back that has not begun
    d.send(SpeechEnded(d.now, "four two", "42", None, (0.9, 0.9)))
    assert d.playing is not None and d.playing.reads_digits
    d.finish_prompt()
    assert d.result is None
    d.keys("1")
    assert (d.finished.status, d.finished.user_input) == (Status.COMPLETED, "42")


def test_keys_wait_for_speech_that_is_never_recognised_only_a_bounded_time() -> None:
    d = Driver.start("num_digits=3", "dtmf_input_timeout=5")
    d.finish_prompt()
    d.send(SpeechStarted(d.now))  # the audio then stops mid-word: no SpeechEnded comes
    d.advance(0.5)
    d.keys("12", gap=0.2)
    d.advance(HELD_KEYS_MAX_WAIT_S - 0.3)
    assert d.collector.digits_missing == 3
    d.advance(0.2)
    assert d.collector.digits_missing == 1
    d.keys("3")
    assert d.finished.user_input == "123"


def test_words_said_just_before_a_hangup_are_stored_with_it() -> None:
    d = Driver.start("num_digits=6", "ask_for_confirmation=yes")
    d.finish_prompt()
    d.send(SpeechStarted(d.now))
    d.advance(1.5)
    d.keys("9")  # held for the words before it
    d.hangup()  # "one two", 9, and gone, while the words are still being recognised
    assert d.result is None and d.playing is None
    assert set(d.timers) == {Timer.LAST_WORDS}
    d.advance(0.4)
    assert d.send(SpeechStarted(d.now)) == []  # nothing new is heard from a gone caller
    d.send(SpeechEnded(d.now, "one two", "12", None, (0.8, 0.6)))
    result = d.finished
    assert (result.status, result.user_input) == (Status.HANGUP, "129")
    assert result.confirmed is Confirmed.NOT_ASKED  # digits no rule has run on are not read back
    assert [(r.source, r.confidence) for r in result.digits] == [
        (Source.VOICE, 0.8),
        (Source.VOICE, 0.6),
        (Source.KEY, None),
    ]
    assert [step.detail for step in result.steps if step.kind == "utterance"] == ["one two"]


def test_a_hangup_waits_for_last_words_only_a_bounded_time() -> None:
    d = Driver.start("num_digits=3")
    d.finish_prompt()
    d.keys("1")
    d.send(SpeechStarted(d.now))  # and no SpeechEnded ever comes
    d.hangup()
    d.advance(LAST_WORDS_MAX_WAIT_S - 0.1)
    assert d.result is None
    d.advance(0.2)
    assert (d.finished.status, d.finished.user_input) == (Status.HANGUP, "1")


def test_last_words_beyond_the_entry_s_length_are_cut() -> None:
    d = Driver.start("max_digits=4")
    d.finish_prompt()
    d.send(SpeechStarted(d.now))
    d.hangup()
    d.send(SpeechEnded(d.now, "1 2 3 4 5 6", "123456", None, (0.9,) * 6))
    assert (d.finished.status, d.finished.user_input) == (Status.HANGUP, "1234")


def test_a_hangup_with_no_speech_pending_ends_at_once() -> None:
    d = Driver.start("num_digits=3")
    d.finish_prompt()
    d.send(SpeechStarted(d.now))
    d.send(SpeechEnded(d.now, "one", "1", None, (0.9,)))
    d.hangup()
    assert (d.finished.status, d.finished.user_input) == (Status.HANGUP, "1")


def test_a_second_utterance_before_the_first_is_recognised_keeps_the_timers_paused() -> None:
    d = Driver.start("num_digits=8", "dtmf_input_timeout=1")
    d.finish_prompt()
    d.send(SpeechStarted(d.now))
    d.advance(1.0)
    d.send(SpeechStarted(d.now))  # the caller goes on while the first words are decoded
    d.advance(0.3)
    d.send(SpeechEnded(d.now, "4 1 5 5", "4155", None, (0.9,) * 4))
    assert Timer.INTER_DIGIT not in d.timers  # the caller is still speaking
    d.keys("9")  # waits for the second utterance
    d.advance(1.5)
    assert d.result is None
    d.send(SpeechEnded(d.now, "0 1 2", "012", None, (0.9,) * 3))
    assert d.finished.user_input == "41550129"


def test_rejected_second_utterance_resumes_the_timer_the_digits_started() -> None:
    d = Driver.start("min_digits=2", "max_digits=8", "dtmf_input_timeout=3")
    d.finish_prompt()
    d.send(SpeechStarted(d.now))
    d.advance(1.0)
    d.send(SpeechStarted(d.now))
    d.send(SpeechEnded(d.now, "4 1", "41", None, (0.9, 0.9)))
    d.advance(2.0)
    d.send(SpeechEnded(d.now, "um", rejected="not_digits"))
    d.advance(0.9)  # 2.9 s after the digits
    assert d.result is None
    d.advance(0.2)
    assert (d.finished.user_input, d.finished.terminated_by) == ("41", TerminatedBy.TIMEOUT)


def test_digits_missing_counts_down_an_exact_entry_only() -> None:
    d = Driver.start("num_digits=6")
    d.finish_prompt()
    assert d.collector.digits_missing == 6
    d.keys("12")
    speak(d, "3")
    assert d.collector.digits_missing == 3
    assert Driver.start("min_digits=2", "max_digits=6").collector.digits_missing is None


def test_words_beyond_max_digits_are_not_entered() -> None:
    d = Driver.start("num_digits=4")
    d.finish_prompt()
    speak(d, "123456")
    assert d.finished.user_input == "1234"


def test_a_spoken_yes_confirms_and_a_spoken_no_asks_again() -> None:
    d = Driver.start("num_digits=3", "ask_for_confirmation=yes")
    d.finish_prompt()
    speak(d, "555")
    d.finish_prompt()  # the read-back ends
    speak(d, transcript="no that's wrong", answer=False)
    assert d.result is None
    d.finish_prompt()  # the prompt again
    speak(d, "556")
    speak(d, transcript="yes", answer=True)  # barging into the read-back
    result = d.finished
    assert result.status is Status.COMPLETED
    assert result.user_input == "556"
    assert result.confirmed is Confirmed.YES
    assert [s.detail for s in result.steps if s.kind == "confirmation"] == [
        "no (voice)",
        "yes (voice)",
    ]


def test_talking_over_the_read_back_without_an_answer_reads_it_again() -> None:
    d = Driver.start("num_digits=3", "ask_for_confirmation=yes")
    d.finish_prompt()
    speak(d, "555")
    readback = d.playing
    assert readback is not None and readback.reads_digits
    speak(d, transcript="hmm what", answer=None)
    assert d.playing is not None and d.playing.reads_digits
    assert d.playing.playback != readback.playback


def test_input_dtmf_ignores_speech_and_input_speech_ignores_keys() -> None:
    d = Driver.start("num_digits=2", "input=dtmf")
    d.finish_prompt()
    speak(d, "99")
    d.keys("12")
    assert d.finished.user_input == "12"

    d = Driver.start("num_digits=2", "input=speech")
    d.finish_prompt()
    d.keys("12")
    speak(d, "34")
    assert d.finished.user_input == "34"


def test_keys_confirm_even_when_input_is_speech() -> None:
    d = Driver.start("num_digits=2", "input=speech", "ask_for_confirmation=yes")
    d.finish_prompt()
    speak(d, "34")
    d.keys("1")
    assert d.finished.confirmed is Confirmed.YES
