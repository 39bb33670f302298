"""Transcript → digits and transcript → yes/no: the rules in ari_app/speech/words.py."""

from __future__ import annotations

import dataclasses

import pytest

from ari_app.speech.words import SpokenDigits, confirmation_answer, words_to_digits

# (transcript, digits, ignored); ignored=None means "not checked here".
DIGIT_CASES: list[tuple[str, str, tuple[str, ...] | None]] = [
    # --- numerals and separators (rule 1)
    ("555", "555", ()),
    ("5551234", "5551234", ()),
    ("555-1234.", "5551234", ()),
    ("5-5-5", "555", ()),
    ("5 5 5", "555", ()),
    ("5, 5, 5.", "555", ()),
    ("5.5.5", "555", ()),
    ("(415) 555-0123", "4155550123", ()),
    ("+1 415/555-0123!", "14155550123", ()),
    ("#5", "5", ()),
    ("1234 5678 9012 3456", "1234567890123456", ()),
    ("4111-1111-1111-1111", "4111111111111111", ()),
    ("It's 555-1234.", "5551234", ()),
    ("My number is 555 1234.", "5551234", ()),
    ("1, 2, 3, 4?", "1234", ()),
    ("5;5:5", "555", ()),
    # --- digit words (rule 2), case and punctuation
    ("Five, five, five.", "555", ()),
    ("FIVE FIVE FIVE ONE TWO THREE FOUR", "5551234", ()),
    ("one two three four", "1234", ()),
    ("Zero. Zero. Seven.", "007", ()),
    ("nought nought seven", "007", ()),
    ("naught nil niner", "009", ()),
    ("six seven eight nine", "6789", ()),
    ("my pin is four three two one", "4321", ()),
    ("Um, my number is, uh, five five five, one two three four.", "5551234", ()),
    ("It is five five five, erm, one two one two, please.", "5551212", ()),
    ("Okay, so the number is nine eight seven six.", "9876", ()),
    ("Yes, it's one two three.", "123", ()),
    ("The card number is 4111 1111 1111 1111.", "4111111111111111", ()),
    # --- mixed words and numerals
    ("five 5 five", "555", ()),
    ("my number is 555 one two three four", "5551234", ()),
    ("four one five, 555, oh one two three", "4155550123", ()),
    # --- "oh" / "o" (rule 3)
    ("five five five oh one two three", "5550123", ()),
    ("Oh two oh seven nine four six", "0207946", ()),
    ("oh oh seven", "007", ()),
    ("5 O 5", "505", ()),
    ("nineteen oh five", "1905", ()),
    ("Oh, okay.", "", ()),
    ("Oh, my number is 555.", "555", ()),
    ("o", "", ("o",)),
    ("oh double five", "055", ()),
    # --- homophones (rule 4)
    ("five five five for one two", "555412", ()),
    ("one to three", "123", ()),
    ("two too two", "222", ()),
    ("555 to 1234", "55521234", ()),
    ("send it to 555 1234", "5551234", ("send",)),
    ("555 1234 for my account", "5551234", ()),
    ("for five five five", "555", ()),
    ("it's for you to call five five five", "555", ("you", "call")),
    ("one won one", "111", ()),
    ("I won five dollars", "5", ("won", "dollars")),
    ("seven ate nine", "789", ()),
    ("five to to five", "5225", ()),
    ("ten to five", "105", ()),
    ("five, um, to five", "55", ()),
    # --- repeats (rule 5)
    ("double five", "55", ()),
    ("triple seven", "777", ()),
    ("double 5", "55", ()),
    ("triple 7", "777", ()),
    ("double oh seven", "007", ()),
    ("double to", "22", ()),
    ("treble nine", "999", ()),
    ("quadruple one", "1111", ()),
    ("double 51", "551", ()),
    ("four one five double five five triple oh one", "4155550001", ()),
    ("double check that", "", ("double", "check")),
    ("double, five", "55", ()),
    ("double um five", "5", ("double",)),
    # --- teens and tens (rule 6)
    ("fifteen", "15", ()),
    ("twenty", "20", ()),
    ("forty two", "42", ()),
    ("twenty-one", "21", ()),
    ("Forty-two.", "42", ()),
    ("nineteen eighty four", "1984", ()),
    ("five five five twenty one twelve", "5552112", ()),
    ("twenty oh five", "2005", ()),
    ("twenty twenty", "2020", ()),
    ("ninety nine", "99", ()),
    ("sixty six six", "666", ()),
    ("twenty zero", "200", ()),
    # --- hundred (rule 7)
    ("five hundred", "500", ()),
    ("two hundred and five", "205", ()),
    ("three hundred forty two", "342", ()),
    ("one eight hundred five five five one two one two", "18005551212", ()),
    ("eight hundred five five five", "800555", ()),
    ("nineteen hundred", "1900", ()),
    ("twenty five hundred", "2500", ()),
    ("one hundred and twenty three", "123", ()),
    ("5 hundred", "500", ()),
    ("hundred", "", ("hundred",)),
    ("a hundred", "", ("a", "hundred")),
    ("zero hundred", "0", ("hundred",)),
    ("oh nine hundred", "0900", ()),
    # --- thousand (rule 8)
    ("two thousand", "2000", ()),
    ("two thousand five", "2005", ()),
    ("two thousand and five", "2005", ()),
    ("two thousand twenty four", "2024", ()),
    ("two thousand five hundred", "2500", ()),
    ("two thousand oh five", "2005", ()),
    ("one thousand one hundred", "1100", ()),
    ("hundred and five", "5", ("hundred",)),
    ("thousand", "", ("thousand",)),
    ("five hundred thousand", "500000", ()),
    # --- non-digits (rule 10)
    ("", "", ()),
    ("   ", "", ()),
    ("...", "", ()),
    ("Thank you.", "", ("thank", "you")),
    ("a b c", "", ("a", "b", "c")),
    ("five banana five", "55", ("banana",)),
    ("five five, no sorry, six", "556", ("no", "sorry")),
    ("star five pound", "5", ("star", "pound")),
    ("4th floor", "4", ("th", "floor")),
    ("I\u2019m at five five five", "555", ("at",)),
    ("O'Brien five", "5", ("o'brien",)),
    ("\u0665\u0665 five", "5", ("\u0665\u0665",)),
]


@pytest.mark.parametrize(("transcript", "digits", "ignored"), DIGIT_CASES)
def test_words_to_digits(transcript: str, digits: str, ignored: tuple[str, ...] | None) -> None:
    spoken = words_to_digits(transcript)
    assert spoken.digits == digits
    if ignored is not None:
        assert spoken.ignored == ignored


def test_the_table_is_big_enough() -> None:
    assert len(DIGIT_CASES) >= 60
    assert len(CONFIRMATION_CASES) >= 20


def test_result_only_holds_ascii_digits() -> None:
    for transcript, _, _ in DIGIT_CASES:
        digits = words_to_digits(transcript).digits
        assert all(c in "0123456789" for c in digits), transcript


def test_spoken_digits_is_frozen() -> None:
    spoken = words_to_digits("five")
    assert spoken == SpokenDigits("5", ())
    with pytest.raises(dataclasses.FrozenInstanceError):
        spoken.digits = "6"  # type: ignore[misc]


CONFIRMATION_CASES: list[tuple[str, bool | None]] = [
    # yes
    ("Yes.", True),
    ("yeah", True),
    ("Yep!", True),
    ("yup", True),
    ("Correct.", True),
    ("That's right.", True),
    ("That is correct.", True),
    ("Right.", True),
    ("Affirmative.", True),
    ("Sure.", True),
    ("Okay.", True),
    ("ok", True),
    ("Uh-huh.", True),
    ("Yes, that's correct.", True),
    ("Yes please.", True),
    ("One.", True),
    ("1", True),
    ("Press 1.", True),
    ("Yes, 555 1234.", True),
    ("yes, five five five one two", True),
    # no
    ("No.", False),
    ("Nope.", False),
    ("nah", False),
    ("Wrong.", False),
    ("Incorrect.", False),
    ("That's wrong.", False),
    ("Not right.", False),
    ("Not correct.", False),
    ("That's not right.", False),
    ("That is not correct.", False),
    ("No, that's wrong.", False),
    ("No no no.", False),
    ("Yeah, that's not right.", False),
    ("That isn't correct.", False),
    ("Not quite right.", False),
    ("That's not it.", False),
    ("Two.", False),
    ("2", False),
    ("No, it's five five five.", False),
    # neither
    ("", None),
    ("   ", None),
    ("Yes no.", None),
    ("No, that's right.", None),
    ("Hmm.", None),
    ("Five five five.", None),
    ("One two.", None),
    ("1 2", None),
    ("12", None),
    ("I'm not sure.", None),
    ("I don't know.", None),
    ("Maybe.", None),
    ("That's not wrong.", None),
    ("No problem.", None),
    ("Me too.", None),
    ("Yes, two.", None),
]


@pytest.mark.parametrize(("transcript", "answer"), CONFIRMATION_CASES)
def test_confirmation_answer(transcript: str, answer: bool | None) -> None:
    assert confirmation_answer(transcript) is answer
