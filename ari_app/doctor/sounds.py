"""``sounds``: the sound files the prompts play exist on Asterisk; ``prompt``: the
``--prompt`` media lists are ones an entry accepts.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from ari_app.ari.app import ari_media
from ari_app.ari.client import AriClient
from ari_app.doctor.lookups import LOOKUP_ERRORS, lookup, lookup_failed
from ari_app.doctor.report import CheckResult, Status
from ari_app.media import TEXT_SCHEME, Digits, TextPrompt, media_item
from ari_app.params import (
    DEFAULT_CONFIRM_PROMPT,
    DEFAULT_INVALID_PROMPT,
    DEFAULT_PROMPT,
    DIGITS_PLACEHOLDER,
    ParamError,
    parse_media,
)

# Every key a caller can enter; a read-back of the digits plays each as a digits/N sound file.
READ_BACK_KEYS = "0123456789*#"


def has_text(prompts: Iterable[Sequence[str]]) -> bool:
    return any(item.startswith(TEXT_SCHEME) for media in prompts for item in media)


def parse_prompts(raw_prompts: Iterable[str]) -> tuple[list[tuple[str, ...]], list[CheckResult]]:
    """``--prompt`` media lists parsed as an entry's ``prompt=`` is, and a FAIL for each one
    that an entry would refuse."""
    parsed: list[tuple[str, ...]] = []
    failures: list[CheckResult] = []
    for raw in raw_prompts:
        try:
            parsed.append(parse_media(raw))
        except ParamError as exc:
            shown = raw if len(raw) <= 60 else raw[:57] + "..."
            failures.append(
                CheckResult(
                    "prompt",
                    Status.FAIL,
                    f"--prompt {shown!r} is not a media list an entry accepts: {exc}",
                    "fix the prompt (as the dialplan passes it) and check again",
                )
            )
    return parsed, failures


def prompt_sounds(extra_prompts: Iterable[Sequence[str]] = ()) -> list[str]:
    """Sound files the default prompts play, plus those of ``extra_prompts`` (parsed media
    lists: :func:`parse_prompts`).

    Read-backs (``{digits}``) are spelled as the keys' sound files (:func:`ari_media`), so
    every key's file is needed.
    """
    media = [
        Digits(READ_BACK_KEYS) if item == DIGITS_PLACEHOLDER else media_item(item)
        for prompt in (
            DEFAULT_PROMPT,
            DEFAULT_INVALID_PROMPT,
            DEFAULT_CONFIRM_PROMPT,
            *extra_prompts,
        )
        for item in prompt
    ]
    sounds: list[str] = []
    # Text prompts are rendered to URLs at play time: no sound file to look up.
    for item in ari_media([item for item in media if not isinstance(item, TextPrompt)]):
        scheme, _, value = item.partition(":")
        # Remote media (sound:http://...) is fetched at play time; nothing to look up here.
        if scheme == "sound" and "://" not in value and value not in sounds:
            sounds.append(value)
    return sounds


async def check_sounds(client: AriClient, sounds: Sequence[str]) -> CheckResult:
    name = "sounds"
    errors: dict[str, Exception] = {}

    async def look_up(sound: str) -> tuple[str, int, Any]:
        try:
            status, body = await lookup(client, "sounds/" + urllib.parse.quote(sound, safe=""))
        except LOOKUP_ERRORS as exc:
            # Not raised: gather would return at once and leave the other lookups running.
            errors[sound] = exc
            return sound, 0, None
        return sound, status, body

    answers = await asyncio.gather(*(look_up(sound) for sound in sounds))
    if errors:
        sound, error = next(iter(errors.items()))
        return lookup_failed(name, f"GET /sounds/{sound}", error)
    missing = [s for s, status, body in answers if status == 404 and _says(body, "Sound not found")]
    broken = [(s, status) for s, status, body in answers if status != 200 and s not in missing]
    if broken:
        sound, status = broken[0]
        return CheckResult(
            name,
            Status.FAIL,
            f"cannot look sounds up: GET /sounds/{sound} answered HTTP {status}",
            "load res_ari_sounds.so",
        )
    if missing:
        return CheckResult(
            name,
            Status.FAIL,
            f"{len(missing)} of {len(sounds)} prompt sounds missing: {', '.join(missing)}",
            "install Asterisk's core sounds (Debian: asterisk-core-sounds-en-gsm) or put the "
            "files in Asterisk's sounds directory",
        )
    return CheckResult(
        name, Status.PASS, f"all {len(sounds)} prompt sounds present: {_abridge(sounds)}"
    )


def _says(body: Any, message: str) -> bool:
    return isinstance(body, dict) and body.get("message") == message


def _abridge(sounds: Sequence[str]) -> str:
    """``digits/0 ... digits/9`` shown as one ``digits/0-9,star,pound`` group."""
    digits = [s.removeprefix("digits/") for s in sounds if s.startswith("digits/")]
    others = [s for s in sounds if not s.startswith("digits/")]
    numbers = sorted(d for d in digits if d.isdigit())
    named = [d for d in digits if not d.isdigit()]
    group = [f"{numbers[0]}-{numbers[-1]}"] if len(numbers) > 2 else numbers
    return ", ".join([*others, *([f"digits/{','.join(group + named)}"] if digits else [])])
