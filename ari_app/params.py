"""Parameters of one digit entry, parsed from Stasis arguments or an AGI query string.

The names follow LiveKit Agents' ``GetDtmfTask`` (``num_digits``, ``dtmf_input_timeout``,
``dtmf_stop_event``, ``ask_for_confirmation``) plus our own. Parsing never raises anything but
:class:`ParamError`, whose message is meant for the dialplan author's log.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import re2

from ari_app.media import KEYPAD, TEXT_SCHEME

DTMF_KEYS = KEYPAD
# Line breaks and other C0 controls, and DEL: never part of a parameter or an AGI argument.
CONTROL_CHARACTERS = frozenset(map(chr, range(32))) | {"\x7f"}
MAX_DIGITS_LIMIT = 64
MAX_ATTEMPTS_LIMIT = 10
MAX_TIMEOUT_SECONDS = 600.0
MAX_PATTERN_LENGTH = 200
# ask_for_confirmation=auto reads back an entry with a spoken digit less certain than this.
# Chosen on the tuning recordings and the synthetic mixed turns (bench/speech_accuracy.py's
# table f): at 0.3 it reads back about 60 % of spoken entries and catches most wrong ones.
DEFAULT_CONFIDENCE_THRESHOLD = 0.3

# Stock Asterisk core sounds (asterisk-core-sounds-en); real deployments pass their own prompt.
DEFAULT_PROMPT = ("sound:beep",)
DEFAULT_INVALID_PROMPT = ("sound:please-try-again",)
DIGITS_PLACEHOLDER = "{digits}"
DEFAULT_CONFIRM_PROMPT = (
    "sound:you-entered",
    DIGITS_PLACEHOLDER,
    "sound:if-correct-press",
    "digits:1",
)

MAX_TEXT_LENGTH = 500

# Media lists may contain commas, which Stasis() splits into separate arguments; an argument
# that does not start with "name=" continues the previous media list.
_MEDIA_PARAMS = frozenset({"prompt", "invalid_prompt", "confirm_prompt"})
_ARGUMENT = re.compile(r"^([a-z_]+)=(.*)$", re.DOTALL)
_MEDIA_URI = re.compile(r"^(sound|digits|number|characters|recording|tone):\S+$|^\{digits\}$")
# Where a media list's next item starts; any other comma-separated piece after a tts: item is
# more of its text (a prompt sentence may contain commas).
_ITEM_START = re.compile(r"^(sound|digits|number|characters|recording|tone|tts):|^\{digits\}$")
# A comma with no space after it, except inside a number ("1,000"): Stasis() drops the space
# after each comma, and without one espeak-ng reads "Hello,please" with no pause.
_TIGHT_COMMA = re.compile(r"(?<!\d),(?=\S)|,(?=[^\d\s])")
_LABEL = re.compile(r"^[\w.\-:]{1,64}$")
_TRUE = frozenset({"yes", "true", "1", "on", "y"})
_FALSE = frozenset({"no", "false", "0", "off", "n"})


class Pattern(Protocol):
    def fullmatch(self, text: str) -> object | None: ...


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Pattern:
    """A ``validate`` pattern compiled by RE2, which matches in time linear in the input: with
    Python's backtracking ``re``, ``(\\d+)+x`` takes seconds on 25 digits and stalls every call
    on the server. Raises ``re2.error`` for what RE2 cannot run (backreferences, lookaround)."""
    options = re2.Options()
    options.log_errors = False  # the error comes back as an exception; no stderr noise
    compiled: Pattern = re2.compile(pattern, options)
    return compiled


def has_control_character(text: str) -> bool:
    return not CONTROL_CHARACTERS.isdisjoint(text)


class ParamError(ValueError):
    """A parameter is unknown, malformed or out of range."""


@dataclass(frozen=True)
class Params:
    min_digits: int = 1
    max_digits: int = 32
    dtmf_input_timeout: float = 4.0
    no_input_timeout: float = 8.0
    max_duration: float = 60.0
    confirm_timeout: float = 5.0
    stop_keys: frozenset[str] = frozenset("#")
    ask_for_confirmation: bool = False
    # ask_for_confirmation=auto: read back only entries holding a spoken digit whose
    # confidence is below confidence_threshold.
    confirm_uncertain: bool = False
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD
    max_attempts: int = 3
    prompt: tuple[str, ...] = DEFAULT_PROMPT
    invalid_prompt: tuple[str, ...] = DEFAULT_INVALID_PROMPT
    confirm_prompt: tuple[str, ...] = DEFAULT_CONFIRM_PROMPT
    validate: str | None = None
    sensitive: bool = False
    label: str | None = None
    input_modes: frozenset[str] = frozenset({"dtmf", "speech"})
    # What the caller passed, normalised, for the audit record.
    given: Mapping[str, str] = field(default_factory=dict)

    @property
    def accepts_speech(self) -> bool:
        return "speech" in self.input_modes

    @property
    def accepts_keys(self) -> bool:
        return "dtmf" in self.input_modes

    def as_record(self) -> dict[str, object]:
        """Parameters as stored with the entry (only plain JSON types)."""
        return {
            "min_digits": self.min_digits,
            "max_digits": self.max_digits,
            "dtmf_input_timeout": self.dtmf_input_timeout,
            "no_input_timeout": self.no_input_timeout,
            "max_duration": self.max_duration,
            "confirm_timeout": self.confirm_timeout,
            "dtmf_stop_event": "".join(sorted(self.stop_keys)) or "none",
            "ask_for_confirmation": "auto" if self.confirm_uncertain else self.ask_for_confirmation,
            "confidence_threshold": self.confidence_threshold,
            "max_attempts": self.max_attempts,
            "prompt": ",".join(self.prompt),
            "invalid_prompt": ",".join(self.invalid_prompt),
            "confirm_prompt": ",".join(self.confirm_prompt),
            "validate": self.validate,
            "sensitive": self.sensitive,
            "label": self.label,
            "input": "both" if len(self.input_modes) == 2 else next(iter(self.input_modes)),
        }


def split_arguments(arguments: Iterable[str]) -> dict[str, str]:
    """Turn Stasis-style ``name=value`` arguments into a mapping.

    >>> split_arguments(["num_digits=4", "prompt=sound:a", "sound:b"])
    {'num_digits': '4', 'prompt': 'sound:a,sound:b'}
    """
    values: dict[str, str] = {}
    previous: str | None = None
    for raw in arguments:
        argument = raw.strip()
        if not argument:
            continue
        match = _ARGUMENT.match(argument)
        if match is None:
            if previous in _MEDIA_PARAMS:
                values[previous] += "," + argument
                continue
            raise ParamError(f"argument {_shorten(argument)!r} is not of the form name=value")
        name, value = match.group(1), match.group(2).strip()
        if name in values:
            raise ParamError(f"parameter {name!r} is given twice")
        values[name] = value
        previous = name
    return values


def parse_params(values: Mapping[str, str]) -> Params:
    """Validate named parameters; raises :class:`ParamError` with a readable message."""
    unknown = sorted(set(values) - _KNOWN)
    if unknown:
        raise ParamError(f"unknown parameter {_shorten(unknown[0])!r}")
    for name, value in values.items():
        if not _is_text(value):
            raise ParamError(f"{name} is not valid Unicode text (it holds a lone surrogate)")
    get = values.get

    num_digits = _int(values, "num_digits", 1, MAX_DIGITS_LIMIT) if "num_digits" in values else None
    if num_digits is not None:
        if "min_digits" in values or "max_digits" in values:
            raise ParamError("num_digits cannot be combined with min_digits or max_digits")
        min_digits = max_digits = num_digits
    else:
        min_digits = (
            _int(values, "min_digits", 1, MAX_DIGITS_LIMIT) if "min_digits" in values else 1
        )
        max_digits = (
            _int(values, "max_digits", 1, MAX_DIGITS_LIMIT) if "max_digits" in values else 32
        )
        if min_digits > max_digits:
            raise ParamError(f"min_digits ({min_digits}) is larger than max_digits ({max_digits})")

    stop_keys = _stop_keys(get("dtmf_stop_event", "#"))
    validate = get("validate") or None
    if validate is not None and validate != "luhn":
        if len(validate) > MAX_PATTERN_LENGTH:
            raise ParamError(f"validate pattern is longer than {MAX_PATTERN_LENGTH} characters")
        try:
            compile_pattern(validate)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else "refused"
            if isinstance(reason, bytes):  # google-re2 reports RE2's message as bytes
                reason = reason.decode(errors="replace")
            raise ParamError(
                f"validate is not a regular expression RE2 can run ({reason}); backreferences "
                "and lookaround are not supported"
            ) from None

    confirmation = _confirmation(values)
    label = get("label") or None
    if label is not None and not _LABEL.match(label):
        raise ParamError("label must be 1-64 letters, digits or . - _ :")

    return Params(
        min_digits=min_digits,
        max_digits=max_digits,
        dtmf_input_timeout=_seconds(values, "dtmf_input_timeout", 4.0),
        no_input_timeout=_seconds(values, "no_input_timeout", 8.0),
        max_duration=_seconds(values, "max_duration", 60.0),
        confirm_timeout=_seconds(values, "confirm_timeout", 5.0),
        stop_keys=stop_keys,
        ask_for_confirmation=confirmation == "yes",
        confirm_uncertain=confirmation == "auto",
        confidence_threshold=_fraction(
            values, "confidence_threshold", DEFAULT_CONFIDENCE_THRESHOLD
        ),
        max_attempts=_int(values, "max_attempts", 1, MAX_ATTEMPTS_LIMIT)
        if "max_attempts" in values
        else 3,
        prompt=_media(values, "prompt", DEFAULT_PROMPT),
        invalid_prompt=_media(values, "invalid_prompt", DEFAULT_INVALID_PROMPT),
        confirm_prompt=_media(values, "confirm_prompt", DEFAULT_CONFIRM_PROMPT),
        validate=validate,
        sensitive=_bool(values, "sensitive", False),
        label=label,
        input_modes=_input_modes(get("input", "both")),
        given=dict(values),
    )


PARAMETER_NAMES = (
    "num_digits",
    "min_digits",
    "max_digits",
    "dtmf_input_timeout",
    "no_input_timeout",
    "max_duration",
    "confirm_timeout",
    "dtmf_stop_event",
    "ask_for_confirmation",
    "confidence_threshold",
    "max_attempts",
    "prompt",
    "invalid_prompt",
    "confirm_prompt",
    "validate",
    "sensitive",
    "label",
    "input",
)
_KNOWN = frozenset(PARAMETER_NAMES)


def _is_text(value: str) -> bool:
    """Encodable as UTF-8: JSON's "\\ud800" escape decodes to a lone surrogate, which RE2, the
    text engine and the database would each fail on later."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shorten(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(values: Mapping[str, str], name: str, low: int, high: int) -> int:
    raw = values[name]
    try:
        number = int(raw)
    except ValueError:
        raise ParamError(f"{name} must be a whole number, got {_shorten(raw)!r}") from None
    if not low <= number <= high:
        raise ParamError(f"{name} must be between {low} and {high}, got {number}")
    return number


def _fraction(values: Mapping[str, str], name: str, default: float) -> float:
    if name not in values:
        return default
    raw = values[name]
    try:
        number = float(raw)
    except ValueError:
        raise ParamError(f"{name} must be a number from 0 to 1, got {_shorten(raw)!r}") from None
    if not 0.0 <= number <= 1.0:  # NaN fails this too
        raise ParamError(f"{name} must be a number from 0 to 1, got {_shorten(raw)!r}")
    return number


def _confirmation(values: Mapping[str, str]) -> str:
    """``yes``, ``no`` or ``auto`` (read back only uncertain spoken digits)."""
    raw = values.get("ask_for_confirmation", "no").strip().lower()
    if raw == "auto":
        return "auto"
    if raw in _TRUE:
        return "yes"
    if raw in _FALSE:
        return "no"
    raise ParamError(
        f"ask_for_confirmation must be yes, no or auto, got {_shorten(values['ask_for_confirmation'])!r}"
    )


def _seconds(values: Mapping[str, str], name: str, default: float) -> float:
    if name not in values:
        return default
    raw = values[name]
    try:
        seconds = float(raw)
    except ValueError:
        raise ParamError(f"{name} must be a number of seconds, got {_shorten(raw)!r}") from None
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT_SECONDS:
        raise ParamError(f"{name} must be more than 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds")
    return seconds


def _bool(values: Mapping[str, str], name: str, default: bool) -> bool:
    if name not in values:
        return default
    raw = values[name].lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ParamError(f"{name} must be yes or no, got {_shorten(values[name])!r}")


def _stop_keys(raw: str) -> frozenset[str]:
    if raw.lower() == "none" or raw == "":
        return frozenset()
    keys = frozenset(raw.upper())
    if not keys <= DTMF_KEYS:
        raise ParamError(
            f"dtmf_stop_event must be keys from 0-9*#A-D or none, got {_shorten(raw)!r}"
        )
    return keys


def _input_modes(raw: str) -> frozenset[str]:
    modes = {"dtmf": {"dtmf"}, "speech": {"speech"}, "both": {"dtmf", "speech"}}
    if raw.lower() not in modes:
        raise ParamError(f"input must be dtmf, speech or both, got {_shorten(raw)!r}")
    return frozenset(modes[raw.lower()])


def _media(values: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if name not in values:
        return default
    return parse_media(values[name], name)


def parse_media(raw: str, name: str = "prompt") -> tuple[str, ...]:
    """A comma-separated media list as the entry plays it (``tts:`` text may hold commas);
    raises :class:`ParamError` naming parameter ``name``."""
    items: list[str] = []
    for piece in raw.split(","):
        if items and items[-1].startswith(TEXT_SCHEME) and not _ITEM_START.match(piece.strip()):
            items[-1] += "," + piece  # as written: "1,000" stays a number
        elif piece.strip():
            items.append(piece.strip())
    if not items:
        raise ParamError(f"{name} is empty")
    return tuple(_media_item(name, item) for item in items)


def _media_item(name: str, item: str) -> str:
    """One media list item, checked; text comes back with a space after each comma (but in
    numbers) and its whitespace collapsed."""
    if item.startswith(TEXT_SCHEME):
        text = " ".join(_TIGHT_COMMA.sub(", ", item.removeprefix(TEXT_SCHEME)).split())
        if not text:
            raise ParamError(f"{name} has a tts: item without text")
        if len(text) > MAX_TEXT_LENGTH:
            raise ParamError(f"{name} text is longer than {MAX_TEXT_LENGTH} characters")
        if has_control_character(text):
            raise ParamError(f"{name} text contains a control character")
        if DIGITS_PLACEHOLDER in text:
            raise ParamError(
                f"{name}: {DIGITS_PLACEHOLDER} must be an item of its own, "
                f"as in tts:You entered,{DIGITS_PLACEHOLDER},tts:Press 1 if this is right"
            )
        return TEXT_SCHEME + text
    if not _MEDIA_URI.match(item):
        raise ParamError(
            f"{name} item {_shorten(item)!r} is not a media URI such as sound:beep, digits:12 "
            "or tts:text"
        )
    return item
