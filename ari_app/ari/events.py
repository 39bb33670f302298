"""ARI event dicts → typed events. Anything malformed raises :class:`MalformedEvent`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Channels the application creates for itself (speech capture) enter Stasis too; never collect
# digits on them.
OWN_CHANNEL_PREFIXES = ("Snoop/", "UnicastRTP/")


# The entries table's column sizes (ari_app.store.models): longer values would make the
# database refuse the entry's row, so the caller's answer would be lost.
MAX_CHANNEL_ID = 128
MAX_CHANNEL_NAME = 255
MAX_CALLER_NUMBER = 80
MAX_CALLER_NAME = 255
MAX_ASTERISK_ID = 64


class MalformedEvent(ValueError):
    pass


@dataclass(frozen=True)
class ChannelInfo:
    id: str
    name: str
    state: str
    caller_number: str | None
    caller_name: str | None


@dataclass(frozen=True)
class StasisStarted:
    channel: ChannelInfo
    args: tuple[str, ...]
    asterisk_id: str | None


@dataclass(frozen=True)
class DtmfReceived:
    channel_id: str
    digit: str
    duration_ms: int | None


@dataclass(frozen=True)
class PlaybackFinished:
    channel_id: str
    playback_id: str


@dataclass(frozen=True)
class ChannelLeft:
    """The caller hung up, or the channel left our application."""

    channel_id: str
    reason: str


@dataclass(frozen=True)
class ApplicationReplaced:
    """Another websocket registered this Stasis app name on the Asterisk: from now on Asterisk
    sends the app's events, and its new calls, there instead."""

    application: str


AriEvent = StasisStarted | DtmfReceived | PlaybackFinished | ChannelLeft | ApplicationReplaced

_LEAVING = frozenset({"ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"})
# Every event type parse_event reads; Asterisk is asked to send only these (see
# AriClient.keep_only_events): the rest (ChannelVarset, ChannelStateChange, PlaybackStarted,
# ChannelDialplan, ...) would cost a JSON decode each to be dropped.
EVENT_TYPES_USED = (
    "StasisStart",
    "ChannelDtmfReceived",
    "PlaybackFinished",
    *sorted(_LEAVING),
    "ApplicationReplaced",
)


def parse_event(raw: dict[str, Any]) -> AriEvent | None:
    """The typed event, or None for event types the application does not use."""
    kind = raw.get("type")
    if not isinstance(kind, str):  # an unhashable type would fail the lookups below
        raise MalformedEvent("event without a string type")
    if kind == "StasisStart":
        channel = _channel(raw)
        args = raw.get("args", [])
        if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
            raise MalformedEvent("StasisStart args is not a list of strings")
        asterisk_id = raw.get("asterisk_id")
        return StasisStarted(
            channel,
            tuple(args),
            asterisk_id[:MAX_ASTERISK_ID] if isinstance(asterisk_id, str) else None,
        )
    if kind == "ChannelDtmfReceived":
        digit = raw.get("digit")
        if not isinstance(digit, str) or len(digit) != 1:
            raise MalformedEvent("ChannelDtmfReceived without a one-character digit")
        duration = raw.get("duration_ms")
        return DtmfReceived(
            _channel(raw).id, digit, duration if isinstance(duration, int) else None
        )
    if kind == "PlaybackFinished":
        playback = raw.get("playback")
        if not isinstance(playback, dict):
            raise MalformedEvent("PlaybackFinished without a playback")
        playback_id, target = playback.get("id"), playback.get("target_uri")
        if not isinstance(playback_id, str) or not isinstance(target, str):
            raise MalformedEvent("PlaybackFinished without id or target_uri")
        scheme, _, target_id = target.partition(":")
        if scheme != "channel":
            return None
        return PlaybackFinished(target_id, playback_id)
    if kind in _LEAVING:
        return ChannelLeft(_channel(raw).id, str(kind))
    if kind == "ApplicationReplaced":
        # Acted on even without the name: the connection has stopped getting events anyway.
        application = raw.get("application")
        return ApplicationReplaced(application if isinstance(application, str) else "")
    return None


def is_own_channel(channel: ChannelInfo) -> bool:
    return channel.name.startswith(OWN_CHANNEL_PREFIXES)


def _channel(raw: dict[str, Any]) -> ChannelInfo:
    channel = raw.get("channel")
    if not isinstance(channel, dict):
        raise MalformedEvent(f"{raw.get('type')} without a channel")
    channel_id, name = channel.get("id"), channel.get("name")
    if not isinstance(channel_id, str) or not channel_id or not isinstance(name, str):
        raise MalformedEvent(f"{raw.get('type')} channel without id or name")
    if len(channel_id) > MAX_CHANNEL_ID:
        raise MalformedEvent(f"{raw.get('type')} channel id longer than {MAX_CHANNEL_ID}")
    caller = channel.get("caller")
    number = caller.get("number") if isinstance(caller, dict) else None
    caller_name = caller.get("name") if isinstance(caller, dict) else None
    state = channel.get("state")
    return ChannelInfo(
        id=channel_id,
        name=name[:MAX_CHANNEL_NAME],
        state=state if isinstance(state, str) else "",
        caller_number=number[:MAX_CALLER_NUMBER] if isinstance(number, str) and number else None,
        caller_name=(
            caller_name[:MAX_CALLER_NAME] if isinstance(caller_name, str) and caller_name else None
        ),
    )
