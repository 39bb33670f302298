"""What the recogniser keeps of an utterance (``judge`` and its helpers), as rules, no model.

The cases are shaped like real ones from the benchmark: what Whisper wrote restricted to digits
(``text``, ``tokens`` with the unrestricted model's probability of each) and freely
(``free_text``).
"""

from __future__ import annotations

import numpy as np
import pytest

from ari_app.speech.recognizer import (
    LEVEL_TARGET_DBFS,
    MIN_FORCED_CONFIDENCE,
    Heard,
    active_level_dbfs,
    agreed,
    digit_confidences,
    framing_words,
    free_digit_pattern,
    free_digit_support,
    judge,
    normalise_level,
    spoken_words,
)
from ari_app.speech.words import words_to_digits


def heard(
    text: str,
    tokens: list[tuple[str, float]],
    free_text: str,
    *,
    no_speech: float = 0.1,
    free_score: float = -0.3,
) -> Heard:
    return Heard(
        text=text,
        digits=words_to_digits(text).digits,
        segments=1,
        free_text=free_text,
        no_speech=no_speech,
        free_score=free_score,
        tokens=tuple(tokens),
    )


def test_digits_both_decodes_wrote_are_kept_and_sure() -> None:
    h = heard(
        "4, 1, 5, 5.",
        [(" 4", 0.04), (",", 0.5), (" 1", 0.1), (" 5", 0.8), (" 5", 0.9)],
        "Um, it's 4155.",
    )
    digits, confidences, rejected = judge(h, "digits")
    assert (digits, rejected) == ("4155", None)
    # Where the free transcript backs a digit and its tokens were not read, its mean token
    # probability (e^-0.3) stands for each of its words.
    assert confidences == (0.741, 0.741, 0.8, 0.9)


@pytest.mark.parametrize(
    "free_text",
    ["Hello? Hello?", "I don't have it.", "Can you repeat that?", "John Smith.", "Thank you."],
)
def test_talk_forced_into_digits_gives_none(free_text: str) -> None:
    h = heard("1.", [(" 1", 0.0004), (".", 0.6)], free_text)
    assert judge(h, "digits") == ("", (), "not_digits")


def test_a_lone_digit_heard_as_a_word_is_kept_when_the_digit_is_plausible() -> None:
    five = heard("Five.", [(" Five", 0.05), (".", 0.6)], "Bye.")
    assert judge(five, "digits") == ("5", (0.05,), None)
    yes = heard("1.", [(" 1", MIN_FORCED_CONFIDENCE / 2), (".", 0.6)], "Yes.")
    assert judge(yes, "digits") == ("", (), "not_digits")


def test_words_forced_into_several_digits_give_none() -> None:
    h = heard("9-3", [(" 9", 0.03), ("-", 0.0), ("3", 0.78)], "Main Street.")
    assert judge(h, "digits") == ("", (), "not_digits")


def test_a_lone_digit_among_words_is_talk() -> None:
    h = heard("3 2 1", [(" 3", 0.0), (" 2", 0.05), (" 1", 0.78)], "So let's walk one night.")
    assert judge(h, "digits") == ("", (), "not_digits")


def test_noise_is_no_speech_and_an_improbable_forced_digit_is_unclear() -> None:
    assert judge(Heard(), "digits") == ("", (), "no_speech")
    cough = heard("1", [(" 1", 0.0001)], "")
    assert judge(cough, "digits") == ("", (), "unclear")
    hum = heard("8.", [(" 8", 0.3), (".", 0.5)], "", no_speech=0.9)  # Whisper: no speech
    assert judge(hum, "digits") == ("", (), "unclear")


def test_a_digit_neither_decode_backs_rejects_the_utterance() -> None:
    babble = heard("1 8 8 8", [(" 1", 0.4), (" 8", 0.4), (" 8", 0.0), (" 8", 0.0)], "1, 8.")
    assert judge(babble, "digits") == ("", (), "unclear")


def test_a_spoken_answer_counts_only_when_the_free_transcript_agrees() -> None:
    assert judge(heard("Yes.", [], "Yes."), "confirmation") == ("", (), None)
    assert judge(heard("Yes.", [], "Thank you."), "confirmation") == ("", (), "unclear")
    assert judge(heard("5 5 5", [], "Five five five."), "confirmation") == ("", (), None)


def test_spoken_words_leave_out_digits_hesitations_and_digit_sounds() -> None:
    assert spoken_words("Um, for one time, I think.") == ["i", "think"]
    assert spoken_words("Hello? Hello?") == ["hello", "hello"]


def test_framing_words_are_those_around_the_digits() -> None:
    assert framing_words("Um, it's four one five five.") == "Um it's"
    assert framing_words("838 936 188. That's it.") == "That's it"
    assert framing_words("4 1 time, time, 0 1 2 3") == ""  # "time" is a digit misheard
    assert framing_words("Hello there") == "Hello there"


def test_digit_confidences_follow_the_tokens_that_made_each_digit() -> None:
    tokens = ((" double", 0.5), (" five", 0.2), (",", 0.9), (" one", 0.7))
    assert digit_confidences(tokens, "551") == (0.2, 0.2, 0.7)
    assert digit_confidences(((" 41", 0.3),), "41") == (0.3, 0.3)
    assert digit_confidences((), "7") == (0.0,)  # no tokens: nothing backs it


def test_agreement_raises_only_the_digits_both_decodes_wrote() -> None:
    assert agreed((0.1, 0.1, 0.1), "123", "13", (0.8, 0.6)) == (0.8, 0.1, 0.6)
    assert agreed((0.1,), "1", "", ()) == (0.1,)
    assert agreed((0.9,), "1", "1", (0.3,)) == (0.9,)  # the surer of the two
    # A word that sounds like a digit backs whatever digit stands in its place.
    assert agreed((0.1, 0.1, 0.1), "451", "?5?", (0.8, 0.7, 0.2)) == (0.8, 0.7, 0.2)


def test_free_support_is_the_probability_of_the_word_in_each_place() -> None:
    tokens = ((" For", 0.3), (" 1", 0.9), (",", 0.5), (" t", 0.6), ("ime", 0.2), (" 41", 0.7))
    assert free_digit_support("For 1, time 41", tokens) == (0.3, 0.9, 0.2, 0.7, 0.7)
    assert free_digit_support("Something else", tokens) == ()  # tokens of another text
    assert free_digit_support("For 1", ()) == ()


def test_the_free_digit_pattern_holds_digits_and_digit_sounds() -> None:
    assert free_digit_pattern("For one time, time, zero, one.") == "?1??01"
    assert free_digit_pattern("Hello there.") == ""


def test_a_string_whose_fives_were_heard_as_time_is_kept() -> None:
    h = heard(
        "4 1 5 5",
        [(" 4", 0.3), (" 1", 0.5), (" 5", 0.0005), (" 5", 0.0005)],
        "For one time, time.",
    )
    assert judge(h, "digits")[0::2] == ("4155", None)


def test_words_heard_as_more_digits_than_they_could_be_give_none() -> None:
    h = heard("4 4", [(" 4", 0.3), (" 4", 0.3)], "Sure.")
    assert judge(h, "digits") == ("", (), "not_digits")
    four_seven_one_nine = heard(
        "4, 7, 1, 9.",
        [(" 4", 0.3), (",", 0.5), (" 7", 0.2), (",", 0.5), (" 1", 0.6), (" 9", 0.05)],
        "for heaven, one dying.",
    )
    assert judge(four_seven_one_nine, "digits")[0] == "4719"


def test_level_normalisation_brings_quiet_and_loud_callers_to_one_level() -> None:
    rng = np.random.default_rng(0)
    speech = (rng.standard_normal(16000) * np.sin(np.linspace(0, 20, 16000))).astype(np.float32)
    for dbfs in (-50.0, -30.0, -10.0):
        x = speech * np.float32(10 ** (dbfs / 20) / np.sqrt(np.mean(speech**2)))
        assert abs(active_level_dbfs(normalise_level(x)) - LEVEL_TARGET_DBFS) < 0.5
    too_quiet = speech * np.float32(1e-4)  # -80 dBFS: lifted by the 40 dB cap, no more
    assert active_level_dbfs(normalise_level(too_quiet)) < LEVEL_TARGET_DBFS - 10
    silence = np.zeros(1600, np.float32)
    assert normalise_level(silence) is silence
