"""Turn a speech-recognition transcript into digits, or into a yes/no answer.

Pure functions, standard library only. The rules below are the product's contract; every one of
them has a case in ``tests/test_speech_words.py``.

Reading the transcript
======================
Case does not matter. The text is cut into *tokens*: runs of ASCII digits (numerals) and words
(letters, with inner apostrophes kept: ``it's``, ``that's``; curly apostrophes count as ``'``).
Everything else is a separator and is dropped silently: spaces and ``, . - ( ) / ! ? : ; + # *``
and any other punctuation or symbol. So ``"Five, five, five."``, ``"555-1234."``,
``"(415) 555-0123"``, ``"5.5.5"``, ``"5,5,5"`` and ``"#5"`` all read as their digits, and
``"twenty-one"`` reads as ``twenty one``. A token that mixes digits and letters splits between
them (``"4th"`` is ``4`` then ``th``).

``words_to_digits``
===================
The result is :class:`SpokenDigits`: ``digits`` (only ``0``-``9``, in the order spoken) and
``ignored``, the tokens (lowercased) that were neither digits nor filler, kept for the audit.
An unknown word never stops the parse: ``"five banana five"`` is ``55`` with ``banana`` ignored.

1. **Numerals.** Every ASCII digit in the text counts, in order: ``"555 1234"`` is ``5551234``.
2. **Digit words.** ``zero``, ``nought``/``naught``, ``nil`` = 0; ``one`` ... ``nine`` = 1-9;
   ``niner`` = 9. These always count.
3. **"oh" and "o"** are 0 when at least one neighbouring token is a digit (a numeral, a digit
   word, a teen or tens word, a ``double``/``triple`` with something to repeat, or another
   such "oh"): ``"five five five oh one"``, ``"oh two oh seven"``, ``"nineteen oh five"``.
   Anywhere else "oh" is an interjection (filler) and "o" a letter (ignored): ``"Oh, okay"``.
   The price: ``"Oh, five five five"`` reads as ``0555``.
4. **Homophones.** ``to``/``too`` = 2, ``for`` = 4, ``won`` = 1, ``ate`` = 8, but only when the
   homophone (or an unbroken run of them) sits *between* two digits: the token right before and
   the token right after are each a numeral, a digit word, a resolved "oh" or a
   ``double``/``triple`` with something to repeat. ``"five five five for one two"`` has a 4;
   ``"send it to 555 1234"`` and ``"555 1234 for my account"`` have no 2 and no 4. Teen and tens
   words are not enough on either side, so the time-like ``"ten to five"`` stays ``105``.
   Why both sides: "to" and "for" are among the commonest English words and callers wrap their
   numbers in them ("it's for you to call..."); Whisper writes a spoken digit as a digit or a
   digit word almost always, and a homophone mainly in the middle of a spoken digit run.
   Unused, ``to``/``too``/``for`` are filler and ``won``/``ate`` are ignored.
5. **Repeats.** ``double`` / ``triple`` (or ``treble``) / ``quadruple`` followed *directly* by a
   digit repeat it 2 / 3 / 4 times: ``"double five"`` = ``55``, ``"triple 7"`` = ``777``,
   ``"double oh"`` = ``00`` (an "oh" or a homophone right after a repeat word is always a digit:
   ``"double to"`` = ``22``). Before a numeral only its first digit repeats
   (``"double 51"`` = ``551``). A repeat word followed by anything else is ignored and the next
   word is read normally.
6. **Teens and tens** are their two digits: ``"fifteen"`` = ``15``, ``"twenty"`` = ``20``;
   a tens word followed by a digit word 1-9 makes one number: ``"forty two"`` =
   ``"forty-two"`` = ``42``. Groups simply follow each other: ``"nineteen eighty four"`` =
   ``1984``, ``"twenty oh five"`` = ``2005``.
7. **Hundred.** A number 1-99 (digit word, teen, tens, tens+digit, or a numeral of one or two
   digits without a leading zero) followed by ``hundred`` is multiplied by 100:
   ``"five hundred"`` = ``500``, ``"nineteen hundred"`` = ``1900``, and ``"one eight hundred"``
   = ``1800`` (the ``one`` stands alone). The last two digits are filled by ``and`` + 1-99
   (``"two hundred and five"`` = ``205``) or directly by a teen or tens word
   (``"three hundred forty two"`` = ``342``), but NOT by a bare digit word:
   ``"eight hundred five five five"`` = ``800555``, because callers say toll-free numbers that
   way, while ``"two oh five"`` is how they say 205.
8. **Thousand.** The same number, or a hundred-expression, followed by ``thousand`` is
   multiplied by 1000 (``"two thousand"`` = ``2000``); the last three digits are filled by an
   optional ``and`` + 1-99, "oh" + a digit word, or a hundred-expression
   (``"two thousand five"`` = ``"two thousand oh five"`` = ``2005``,
   ``"two thousand twenty four"`` = ``2024``, ``"two thousand five hundred"`` = ``2500``).
9. **Filler** is dropped silently: hesitations (um, uh, er, erm, ah, hmm, ...), framing words
   (my, the, number, is, it, it's, that's, this, phone, pin, code, card, account, digits, i,
   i'm, here, like, well, so, dash), and/please/okay/ok/yes/yeah, and unused "oh"/"to"/"too"/
   "for" (rules 3-4).
10. **Everything else is ignored** (recorded, not a digit): letters, ``hundred`` or ``thousand``
    without a number before them, ``a hundred``'s ``a``, an unused repeat word, ``no``,
    ``sorry``, ``star``, ``pound``, non-ASCII digits, ...

``confirmation_answer``
=======================
``True`` for yes, ``False`` for no, ``None`` for neither or unclear (ask again).

* Yes words: yes, yeah, yea, yep, yup, yah, aye, correct, right, alright, affirmative, sure, ok,
  okay, confirm(ed), exactly, absolutely, definitely, indeed, perfect, uh-huh/mm-hmm/mhm.
* No words: no, nope, nah, nay, wrong, incorrect, negative.
* Keys: ``one``/``1`` is yes and ``two``/``2`` is no (key 1 confirms, key 2 rejects), but only
  when it is the transcript's only digit, so a caller who repeats the number
  (``"yes, five five five one two"``) is not read as saying both.
* A negator (not, isn't, wasn't, don't, ain't, never, ...) up to three words before a yes word
  turns it into a *negated yes*, and a negated yes wins over everything: ``"not correct"``,
  ``"that's not right"``, ``"yeah that's not right"`` are ``False``.
* A negator with no yes/no word in the three words after it is a no (``"that's not it"``).
* Yes and no words together without a negated yes are ``None`` (``"yes no"``,
  ``"no, that's right"``).
* Doubt is ``None``: maybe, perhaps, unsure, dunno, possibly, a negated ``sure``/``certain``/
  ``know`` (``"I'm not sure"``, ``"I don't know"``), and a negated no word (``"not wrong"``).
* ``"no problem"`` / ``"no worries"`` say neither. An empty transcript is ``None``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum, auto

__all__ = ["SpokenDigits", "confirmation_answer", "words_to_digits"]


@dataclass(frozen=True)
class SpokenDigits:
    """The digits read from a transcript and the tokens that were neither digits nor filler."""

    digits: str
    ignored: tuple[str, ...]


# Numerals, or words (letters and non-ASCII digits) with inner apostrophes.
_TOKEN_RE = re.compile(r"[0-9]+|[^\W0-9_]+(?:'[^\W0-9_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u02bc": "'"})


def _tokens(transcript: str) -> list[str]:
    return _TOKEN_RE.findall(transcript.translate(_APOSTROPHES).lower())


_DIGIT_WORDS: dict[str, int] = {
    "zero": 0,
    "nought": 0,
    "naught": 0,
    "nil": 0,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "niner": 9,
}
_OH_WORDS = frozenset({"oh", "o"})
_HOMOPHONES: dict[str, int] = {"to": 2, "too": 2, "for": 4, "won": 1, "ate": 8}
_TEENS: dict[str, int] = {
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "thirteen": 13,
    "fourteen": 14,
    "fifteen": 15,
    "sixteen": 16,
    "seventeen": 17,
    "eighteen": 18,
    "nineteen": 19,
}
_TENS: dict[str, int] = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fourty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_REPEATS: dict[str, int] = {"double": 2, "triple": 3, "treble": 3, "quadruple": 4}
_FILLER = frozenset(
    {
        # hesitations
        "um",
        "umm",
        "uhm",
        "uh",
        "uhh",
        "er",
        "erm",
        "err",
        "ah",
        "ahh",
        "eh",
        "hmm",
        "hm",
        "mm",
        "mmm",
        "mhm",
        "huh",
        # framing
        "my",
        "our",
        "the",
        "number",
        "numbers",
        "is",
        "it",
        "it's",
        "its",
        "that",
        "that's",
        "this",
        "phone",
        "pin",
        "code",
        "card",
        "account",
        "digits",
        "i",
        "i'm",
        "here",
        "like",
        "well",
        "so",
        "dash",
        # politeness and assent
        "please",
        "okay",
        "ok",
        "yes",
        "yeah",
    }
)
# Unused "oh"/homophones: these are ordinary function words (filler); the rest are ignored.
_FILLER_WHEN_UNUSED = frozenset({"oh", "to", "too", "for"})


class _Kind(Enum):
    NUMERAL = auto()
    DIGIT = auto()  # a digit word: always a digit
    OH = auto()  # "oh"/"o": a digit next to a digit (rule 3)
    HOMOPHONE = auto()  # "to", "for", ...: a digit between digits (rule 4)
    RESOLVED = auto()  # an "oh" or a homophone that turned out to be a digit
    TEEN = auto()
    TENS = auto()
    REPEAT = auto()
    HUNDRED = auto()
    THOUSAND = auto()
    AND = auto()
    FILLER = auto()
    OTHER = auto()


@dataclass
class _Token:
    text: str
    kind: _Kind
    value: int = 0


def _classify(text: str) -> _Token:
    if text.isascii() and text.isdigit():
        return _Token(text, _Kind.NUMERAL)
    if text in _DIGIT_WORDS:
        return _Token(text, _Kind.DIGIT, _DIGIT_WORDS[text])
    if text in _OH_WORDS:
        return _Token(text, _Kind.OH, 0)
    if text in _HOMOPHONES:
        return _Token(text, _Kind.HOMOPHONE, _HOMOPHONES[text])
    if text in _TEENS:
        return _Token(text, _Kind.TEEN, _TEENS[text])
    if text in _TENS:
        return _Token(text, _Kind.TENS, _TENS[text])
    if text in _REPEATS:
        return _Token(text, _Kind.REPEAT, _REPEATS[text])
    if text == "hundred":
        return _Token(text, _Kind.HUNDRED)
    if text == "thousand":
        return _Token(text, _Kind.THOUSAND)
    if text == "and":
        return _Token(text, _Kind.AND)
    if text in _FILLER:
        return _Token(text, _Kind.FILLER)
    return _Token(text, _Kind.OTHER)


def _kind_at(tokens: list[_Token], i: int) -> _Kind | None:
    return tokens[i].kind if 0 <= i < len(tokens) else None


def _repeats_something(tokens: list[_Token], i: int) -> bool:
    """A repeat word at ``i`` with a digit right after it."""
    return _kind_at(tokens, i) is _Kind.REPEAT and _kind_at(tokens, i + 1) in (
        _Kind.NUMERAL,
        _Kind.DIGIT,
        _Kind.RESOLVED,
    )


def _is_digit_for_homophone(tokens: list[_Token], i: int) -> bool:
    kind = _kind_at(tokens, i)
    return kind in (_Kind.NUMERAL, _Kind.DIGIT, _Kind.RESOLVED) or _repeats_something(tokens, i)


def _is_digit_for_oh(tokens: list[_Token], i: int) -> bool:
    return _kind_at(tokens, i) in (_Kind.TEEN, _Kind.TENS) or _is_digit_for_homophone(tokens, i)


def _resolve_weak_digits(tokens: list[_Token]) -> None:
    """Decide which "oh"s and homophones are digits (rules 3-5), in place."""
    for i, token in enumerate(tokens):
        if token.kind is _Kind.REPEAT and _kind_at(tokens, i + 1) in (_Kind.OH, _Kind.HOMOPHONE):
            tokens[i + 1].kind = _Kind.RESOLVED
    changed = True
    while changed:  # a run of "oh"s next to a digit: "oh oh seven"
        changed = False
        for i, token in enumerate(tokens):
            if token.kind is _Kind.OH and (
                _is_digit_for_oh(tokens, i - 1) or _is_digit_for_oh(tokens, i + 1)
            ):
                token.kind = _Kind.RESOLVED
                changed = True
    i = 0
    while i < len(tokens):
        if tokens[i].kind is not _Kind.HOMOPHONE:
            i += 1
            continue
        end = i
        while _kind_at(tokens, end + 1) is _Kind.HOMOPHONE:
            end += 1
        if _is_digit_for_homophone(tokens, i - 1) and _is_digit_for_homophone(tokens, end + 1):
            for token in tokens[i : end + 1]:
                token.kind = _Kind.RESOLVED
        i = end + 1
    for token in tokens:
        if token.kind in (_Kind.OH, _Kind.HOMOPHONE):
            token.kind = _Kind.FILLER if token.text in _FILLER_WHEN_UNUSED else _Kind.OTHER


def _words_1_to_99(tokens: list[_Token], i: int) -> tuple[int, int] | None:
    """A number 1-99 said in words starting at ``i``: (value, index after it)."""
    kind = _kind_at(tokens, i)
    if kind is _Kind.DIGIT and tokens[i].value >= 1:
        return tokens[i].value, i + 1
    if kind is _Kind.TEEN:
        return tokens[i].value, i + 1
    if kind is _Kind.TENS:
        if _kind_at(tokens, i + 1) is _Kind.DIGIT and tokens[i + 1].value >= 1:
            return tokens[i].value + tokens[i + 1].value, i + 2
        return tokens[i].value, i + 1
    return None


def _head_1_to_99(tokens: list[_Token], i: int) -> tuple[int, int] | None:
    """Like :func:`_words_1_to_99`, also allowing a numeral 1-99 ("5 hundred")."""
    token = tokens[i]
    if token.kind is _Kind.NUMERAL:
        if len(token.text) <= 2 and not token.text.startswith("0"):
            return int(token.text), i + 1
        return None
    return _words_1_to_99(tokens, i)


def _tail(tokens: list[_Token], i: int, *, bare_digit: bool) -> tuple[int, int] | None:
    """The 1-99 that fills a hundred's last digits: after "and", or a teen/tens word."""
    after_and = _kind_at(tokens, i) is _Kind.AND
    start = i + 1 if after_and else i
    small = _words_1_to_99(tokens, start)
    if small is None:
        return None
    if not after_and and not bare_digit and tokens[start].kind is _Kind.DIGIT:
        return None
    return small


def _hundreds(tokens: list[_Token], value: int, i: int) -> tuple[int, int]:
    """``value`` was followed by "hundred" at ``i``: multiply, add any tail (rule 7)."""
    value *= 100
    tail = _tail(tokens, i + 1, bare_digit=False)
    return (value + tail[0], tail[1]) if tail else (value, i + 1)


def _thousand_tail(tokens: list[_Token], i: int) -> tuple[int, int] | None:
    oh_digit = (
        _kind_at(tokens, i) is _Kind.RESOLVED
        and tokens[i].text in _OH_WORDS
        and _kind_at(tokens, i + 1) is _Kind.DIGIT
        and tokens[i + 1].value >= 1
    )
    if oh_digit:
        return tokens[i + 1].value, i + 2  # "two thousand oh five"
    small = _tail(tokens, i, bare_digit=True)
    if small is None:
        return None
    value, end = small
    if _kind_at(tokens, end) is _Kind.HUNDRED:
        return _hundreds(tokens, value, end)
    return small


def _cardinal(tokens: list[_Token], i: int) -> tuple[int, int] | None:
    """A hundred/thousand expression starting at ``i`` (rules 7-8): (value, index after it)."""
    head = _head_1_to_99(tokens, i)
    if head is None:
        return None
    value, end = head
    if _kind_at(tokens, end) not in (_Kind.HUNDRED, _Kind.THOUSAND):
        return None
    if _kind_at(tokens, end) is _Kind.HUNDRED:
        value, end = _hundreds(tokens, value, end)
    if _kind_at(tokens, end) is _Kind.THOUSAND:
        value *= 1000
        end += 1
        tail = _thousand_tail(tokens, end)
        if tail:
            value, end = value + tail[0], tail[1]
    return value, end


def words_to_digits(transcript: str) -> SpokenDigits:
    """The digits a caller spoke, by the rules in this module's docstring."""
    tokens = [_classify(text) for text in _tokens(transcript)]
    _resolve_weak_digits(tokens)
    digits: list[str] = []
    ignored: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        kind = token.kind
        if kind in (_Kind.NUMERAL, _Kind.DIGIT, _Kind.TEEN, _Kind.TENS):
            cardinal = _cardinal(tokens, i)
            if cardinal is not None:
                digits.append(str(cardinal[0]))
                i = cardinal[1]
            elif kind is _Kind.NUMERAL:
                digits.append(token.text)
                i += 1
            elif kind is _Kind.TENS:
                value, i = _words_1_to_99(tokens, i) or (token.value, i + 1)
                digits.append(str(value))
            else:
                digits.append(str(token.value))
                i += 1
            continue
        if kind is _Kind.RESOLVED:
            digits.append(str(token.value))
        elif kind is _Kind.REPEAT and _repeats_something(tokens, i):
            target = tokens[i + 1]
            text = target.text if target.kind is _Kind.NUMERAL else str(target.value)
            digits.append(text[0] * token.value + text[1:])
            i += 1
        elif kind not in (_Kind.FILLER, _Kind.AND):
            ignored.append(token.text)
        i += 1
    return SpokenDigits("".join(digits), tuple(ignored))


_YES = frozenset(
    {
        "yes",
        "yeah",
        "yea",
        "yep",
        "yup",
        "yah",
        "aye",
        "correct",
        "right",
        "alright",
        "affirmative",
        "sure",
        "ok",
        "okay",
        "confirm",
        "confirmed",
        "exactly",
        "absolutely",
        "definitely",
        "indeed",
        "perfect",
        "mhm",
    }
)
_NO = frozenset({"no", "nope", "nah", "nay", "wrong", "incorrect", "negative"})
_NEGATORS = frozenset(
    {
        "not",
        "isn't",
        "isnt",
        "aren't",
        "wasn't",
        "weren't",
        "don't",
        "dont",
        "doesn't",
        "didn't",
        "ain't",
        "never",
    }
)
_DOUBT = frozenset({"maybe", "perhaps", "unsure", "dunno", "possibly"})
_DOUBT_WHEN_NEGATED = frozenset({"sure", "certain", "know"})
_NOT_A_NO = frozenset({"problem", "problems", "worries"})  # "no problem", "no worries"
_AGREEMENT_SOUNDS = re.compile(r"\b(?:uh[- ]huh|mm[- ]hmm?)\b", re.IGNORECASE)
_NEGATION_REACH = 3


def _key_digit(words: list[str]) -> str | None:
    """The one digit in the answer, if it holds exactly one digit word or one-digit numeral."""
    found = [w for w in words if w in _DIGIT_WORDS or (w.isascii() and w.isdigit())]
    if len(found) != 1:
        return None
    word = found[0]
    return str(_DIGIT_WORDS[word]) if word in _DIGIT_WORDS else word


def confirmation_answer(transcript: str) -> bool | None:
    """Yes (True), no (False) or neither (None), by the rules in this module's docstring."""
    words = _tokens(_AGREEMENT_SOUNDS.sub(" mhm ", transcript))
    key = _key_digit(words)
    bare_yes = bare_no = negated_yes = 0
    doubt = False
    for i, word in enumerate(words):
        negated = any(w in _NEGATORS for w in words[max(0, i - _NEGATION_REACH) : i])
        is_key = key is not None and (word == key or _DIGIT_WORDS.get(word) == int(key))
        if word in _DOUBT or (negated and word in _DOUBT_WHEN_NEGATED):
            doubt = True
        elif word in _YES or (is_key and key == "1"):
            if negated:
                negated_yes += 1
            else:
                bare_yes += 1
        elif word == "no" and i + 1 < len(words) and words[i + 1] in _NOT_A_NO:
            continue
        elif word in _NO or (is_key and key == "2"):
            if negated:
                doubt = True  # "not wrong": a double negative
            else:
                bare_no += 1
        elif word in _NEGATORS:
            after = words[i + 1 : i + 1 + _NEGATION_REACH]
            if not any(w in _YES or w in _NO or w in _DOUBT_WHEN_NEGATED for w in after):
                bare_no += 1
    if doubt:
        return None
    if negated_yes:
        return False
    if bare_yes and bare_no:
        return None
    if bare_yes:
        return True
    if bare_no:
        return False
    return None
