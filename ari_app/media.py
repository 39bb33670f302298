"""What an entry plays, as typed items: the engine makes them, each transport renders them once.

The dialplan writes media lists as Asterisk's media URIs (``sound:beep``, ``digits:12``,
``tts:Key your PIN``; :mod:`ari_app.params` checks them); :func:`media_item` turns one into an
item. ARI renders items as media URIs again (:mod:`ari_app.ari.app`), FastAGI as commands
(:mod:`ari_app.agi.port`). A leaf module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Text spoken by the TTS engine (ari_app/tts.py): "tts:Please key your number".
TEXT_SCHEME: Final = "tts:"
_REMOTE = ("http://", "https://")
KEYPAD: Final = frozenset("0123456789*#ABCD")
_SPOKEN_KEYS: Final = {"*": "digits/star", "#": "digits/pound"}


@dataclass(frozen=True)
class Sound:
    """A sound file Asterisk has (``sound:NAME``)."""

    name: str


@dataclass(frozen=True)
class Url:
    """A sound file Asterisk fetches over HTTP(S) (``sound:http://…``: a rendered text
    prompt, or the dialplan's own)."""

    url: str


@dataclass(frozen=True)
class Digits:
    """Keys read back one by one (``digits:…``, and the read-back of what the caller keyed:
    never logged in clear)."""

    keys: str


@dataclass(frozen=True)
class TextPrompt:
    """Text the TTS engine speaks (``tts:…``); rendered to a :class:`Url` before it plays."""

    text: str


@dataclass(frozen=True)
class Number:
    """A number said as one (``number:42``: "forty-two")."""

    value: str


@dataclass(frozen=True)
class Characters:
    """Letters and digits spelled (``characters:ab``)."""

    value: str


@dataclass(frozen=True)
class OtherMedia:
    """A media URI ARI plays as it is (``tone:``, ``recording:``); FastAGI has no equivalent."""

    uri: str


MediaItem = Sound | Url | Digits | TextPrompt | Number | Characters | OtherMedia


def media_item(uri: str) -> MediaItem:
    """One media list item as :mod:`ari_app.params` checked it."""
    if uri.startswith(TEXT_SCHEME):
        return TextPrompt(uri.removeprefix(TEXT_SCHEME))
    scheme, _, value = uri.partition(":")
    match scheme:
        case "sound":
            return Url(value) if value.startswith(_REMOTE) else Sound(value)
        case "digits":
            return Digits(value)
        case "number":
            return Number(value)
        case "characters":
            return Characters(value)
    return OtherMedia(uri)


def key_sounds(keys: str) -> list[str] | None:
    """The stock sound files that say ``keys`` one by one (``digits/4``, ``digits/star``,
    ``letters/a``), or None when they are not all keypad keys.

    Read-backs play these files rather than Asterisk's say API, on both transports: a caller's
    key stops a sound file at once, while ARI cannot interrupt ``digits:`` (the confirmation
    key, and every REST call on the channel, would wait for the whole read-back).
    """
    keys = keys.upper()
    if not keys or not all(key in KEYPAD for key in keys):
        return None
    return [
        _SPOKEN_KEYS.get(key) or (f"digits/{key}" if key.isdigit() else f"letters/{key.lower()}")
        for key in keys
    ]


def shown(item: MediaItem) -> str:
    """What a log line may say of an item (never the keys of a read-back)."""
    match item:
        case Sound(name):
            return f"sound:{name}"
        case Url(url):
            return f"sound:{url}"
        case Digits():
            return "a read-back"
        case TextPrompt(text):
            return f"{TEXT_SCHEME}{text}"
        case Number():
            return "number:…"
        case Characters():
            return "characters:…"
        case OtherMedia(uri):
            return uri
