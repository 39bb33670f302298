"""A session's channel over FastAGI: the :class:`~ari_app.ports.CallPort`, and the task driving it.

AGI runs one command at a time and Asterisk reports nothing between commands, so this port is
an active driver rather than an event listener: one task per connection owns the AGI channel.
The session's ``answer()`` and ``set_variables()`` are queued to it; ``play()`` only records
the media list; the driver then loops:

- while a list is playing: ``STREAM FILE <file> "0123456789*#ABCD"`` item by item. A key ends
  the file: it goes to the session, and if the session stopped the list (barge-in, the key is
  kept) the rest is dropped; if the session ignored the key the file resumes where it stopped
  (``endpos``), as an ARI playback would have gone on. At the end of the list the session hears
  that the playback finished.
- otherwise, while the entry collects: ``WAIT FOR DIGIT <ms>``, lasting until just after the
  session's next timer is due (so what the timer decides, a new prompt or the end, starts at
  once), and at most ``poll_interval``.

Polls are as long as that because Asterisk drops a key that arrives between two commands (its
idle loop reads and frees frames): fewer, longer polls leave fewer such moments. Commands cannot
be pipelined to close them: Asterisk reads the socket through a buffered ``FILE``, and a second
command read along with the first waits there until more bytes come.

``stop_playback`` marks the list stopped: the file being streamed cannot be interrupted by
anything but a key (FastAGI reads no command while it plays), so a stop that a timer decides
takes effect at the end of that file. ``release`` ends the driver; closing the connection then
returns the channel to the dialplan.

A hangup shows as ``HANGUP``, a ``511`` reply, EOF, or ``result=-1`` confirmed by ``CHANNEL
STATUS`` (``-1`` alone also means a missing sound file): the session hears ``deliver_hangup``
and stores its partial digits. A silent or garbled peer ends the entry as interrupted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ari_app.agi.fastagi import AgiChannelGone, AgiReply, AgiRequest
from ari_app.media import (
    Characters,
    Digits,
    MediaItem,
    Number,
    Sound,
    Url,
    key_sounds,
    shown,
)
from ari_app.params import CONTROL_CHARACTERS, DTMF_KEYS
from ari_app.ports import ChannelGone, SessionInbox, TransportError
from ari_app.tts import TextPrompts

log = logging.getLogger(__name__)

ESCAPE_KEYS = "0123456789*#ABCD"
POLL_INTERVAL = 1.0  # the longest WAIT FOR DIGIT
COMMAND_TIMEOUT = 10.0
PLAYBACK_TIMEOUT = 300.0
MIN_POLL_MS = 10
TIMER_MARGIN_MS = 3  # a poll ends this long after the session's timer is due

_SAFE_FILE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./\-]{0,199}$")
# Remote media (rendered text prompts): STREAM FILE fetches it through res_http_media_cache.
# One AGI argument: URL characters only, no space, quote or backslash.
_REMOTE_FILE = re.compile(r"^https?://[A-Za-z0-9._~:/?#@!$&'()*+,;=%\[\]-]{1,500}$")
_NUMBER = re.compile(r"^-?\d{1,15}$")
_CHARACTERS = re.compile(r"^[A-Za-z0-9]{1,64}$")


@dataclass(frozen=True)
class AgiMedia:
    """One AGI command playing one media item; ``shown`` is what a log line may say of it."""

    command: str
    resumable: bool
    shown: str


def agi_media(media: Sequence[MediaItem], *, label: str = "-") -> list[AgiMedia]:
    """Typed media items as AGI commands (escape keys and offset are added when played).

    A sound file or URL → ``STREAM FILE`` (Asterisk fetches a URL through
    ``res_http_media_cache``); a read-back → its keys' sound files (interruptible, like the ARI
    path's); a number → ``SAY NUMBER``; characters → ``SAY ALPHA``. What AGI cannot play
    (``tone:``, ``recording:``, text not rendered, a value that would break the command) is
    skipped, with a log line that never shows a read-back's keys.
    """
    items: list[AgiMedia] = []
    for item in media:
        match item:
            case Sound(name) if _SAFE_FILE.match(name):
                items.append(AgiMedia(f"STREAM FILE {name}", True, shown(item)))
            case Url(url) if _REMOTE_FILE.match(url):
                items.append(AgiMedia(f"STREAM FILE {url}", True, shown(item)))
            case Digits(keys) if sounds := key_sounds(keys):
                items += [AgiMedia(f"STREAM FILE {s}", True, "a read-back digit") for s in sounds]
            case Number(value) if _NUMBER.match(value):
                items.append(AgiMedia(f"SAY NUMBER {value}", False, shown(item)))
            case Characters(value) if _CHARACTERS.match(value):
                items.append(AgiMedia(f"SAY ALPHA {value}", False, shown(item)))
            case _:
                log.warning(
                    "channel %s: media %r cannot be played over AGI; skipped",
                    label,
                    shown(item)[:80],
                )
    return items


def agi_quote(value: str) -> str:
    """A value as one quoted AGI argument: no line breaks, quotes and backslashes escaped."""
    flat = "".join(" " if c in CONTROL_CHARACTERS else c for c in value)
    return '"' + flat.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class _Playlist:
    playback_id: str
    items: list[AgiMedia]
    index: int = 0
    offset: int = 0  # where to resume the current file (samples), after an ignored key
    stopped: bool = False


class AgiCallPort:
    """The :class:`~ari_app.ports.CallPort` of one FastAGI connection; run :meth:`drive`."""

    def __init__(
        self,
        request: AgiRequest,
        *,
        label: str,
        poll_interval: float = POLL_INTERVAL,
        command_timeout: float = COMMAND_TIMEOUT,
        playback_timeout: float = PLAYBACK_TIMEOUT,
        prompts: TextPrompts | None = None,
    ) -> None:
        self._request = request
        self._prompts = prompts
        self._label = label
        self._poll_ms = max(1, round(poll_interval * 1000))
        self._command_timeout = command_timeout
        self._playback_timeout = playback_timeout
        self._playlist: _Playlist | None = None
        self._listening = False
        self._released = False
        self._wake = asyncio.Event()
        self._calls: deque[tuple[str, asyncio.Future[AgiReply]]] = deque()
        self._ended: ChannelGone | TransportError | None = None

    # --- CallPort ---------------------------------------------------------------------------

    async def answer(self) -> None:
        reply = await self._call("ANSWER")
        if reply.result is not None and reply.result < 0:
            status = await self._call("CHANNEL STATUS")  # 511 on a dead channel raises
            if self._request.hung_up or (status.result is not None and status.result < 0):
                raise AgiChannelGone("the channel hung up before it was answered")
            raise TransportError("ANSWER failed")

    async def play(self, playback_id: str, media: Sequence[MediaItem]) -> None:
        if self._prompts is not None:
            media = await self._prompts.playable(media, label=self._label)
        self._playlist = _Playlist(playback_id, agi_media(media, label=self._label))
        self._listening = True
        self._wake.set()

    async def stop_playback(self, playback_id: str) -> None:
        playlist = self._playlist
        if playlist is not None and playlist.playback_id == playback_id:
            playlist.stopped = True
            self._playlist = None
            self._wake.set()

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        for name, value in variables.items():
            reply = await self._call(f"SET VARIABLE {name} {agi_quote(value)}")
            if reply.result != 1:
                log.warning(
                    "channel %s: SET VARIABLE %s answered %r", self._label, name, reply.line
                )

    async def release(self) -> None:
        self._released = True
        self._wake.set()

    async def _call(self, command: str) -> AgiReply:
        """Have the driver run ``command`` between its own, and wait for the reply."""
        if self._ended is not None:
            raise self._ended
        future: asyncio.Future[AgiReply] = asyncio.get_running_loop().create_future()
        self._calls.append((command, future))
        self._wake.set()
        return await future

    # --- the driver -------------------------------------------------------------------------

    async def drive(self, session: SessionInbox) -> None:
        """Play, listen and report to ``session`` until released; never raises."""
        try:
            await self._drive(session)
        except ChannelGone as exc:
            self._end(exc)
            log.info("channel %s: hung up (%s)", self._label, exc)
            session.deliver_hangup()
        except TransportError as exc:
            self._end(exc)
            log.warning("channel %s: lost the FastAGI connection: %s", self._label, exc)
            session.deliver_connection_lost()
        finally:
            self._end(AgiChannelGone("the AGI session has ended"))

    def _end(self, reason: ChannelGone | TransportError) -> None:
        if self._ended is None:
            self._ended = reason
        while self._calls:
            _, future = self._calls.popleft()
            if not future.done():
                future.set_exception(self._ended)

    async def _drive(self, session: SessionInbox) -> None:
        while True:
            playlist = self._playlist
            if self._calls:
                await self._run_call()
            elif playlist is not None and not playlist.stopped:
                if playlist.index < len(playlist.items):
                    await self._play_item(session, playlist)
                else:
                    self._playlist = None
                    session.deliver_playback_finished(playlist.playback_id)
                    await session.drained()
            elif self._released:
                return
            elif self._listening and session.collecting:
                await self._poll(session)
            else:
                self._wake.clear()
                await self._wake.wait()

    async def _run_call(self) -> None:
        command, future = self._calls.popleft()
        if future.done():
            return
        try:
            reply = await self._request.command(command, within=self._command_timeout)
        except (ChannelGone, TransportError) as exc:
            future.set_exception(exc)
            raise
        future.set_result(reply)

    async def _play_item(self, session: SessionInbox, playlist: _Playlist) -> None:
        item = playlist.items[playlist.index]
        command = f'{item.command} "{ESCAPE_KEYS}"'
        if item.resumable and playlist.offset:
            command += f" {playlist.offset}"
        reply = await self._request.command(command, within=self._playback_timeout)
        self._raise_if_hung_up()
        result = reply.result
        if result is None or result == 0:
            self._next_item(playlist)
            return
        if result < 0:
            await self._check_alive()  # a hangup raises; otherwise the file could not play
            log.warning("channel %s: could not play %s (missing sound?)", self._label, item.shown)
            self._next_item(playlist)
            return
        key = _key(result)
        if key is None:
            log.warning("channel %s: %s answered %r", self._label, item.command[:12], reply.line)
            self._next_item(playlist)
            return
        session.deliver_digit(key)
        await session.drained()
        if self._playlist is playlist and not playlist.stopped:
            # The session ignored the key: go on from where the key stopped the file.
            if item.resumable and reply.endpos:
                playlist.offset = reply.endpos
            else:
                self._next_item(playlist)

    @staticmethod
    def _next_item(playlist: _Playlist) -> None:
        playlist.index += 1
        playlist.offset = 0

    async def _poll(self, session: SessionInbox) -> None:
        poll_ms = self._poll_length_ms(session)
        reply = await self._request.command(
            f"WAIT FOR DIGIT {poll_ms}", within=poll_ms / 1000 + self._command_timeout
        )
        self._raise_if_hung_up()
        result = reply.result
        if result is not None and result < 0:
            await self._check_alive()
            log.warning("channel %s: WAIT FOR DIGIT failed on a live channel", self._label)
            await asyncio.sleep(MIN_POLL_MS / 1000)
            return
        key = _key(result) if result else None
        if key is not None:
            session.deliver_digit(key)
        await session.drained()  # the key, or the timer that ended the poll, takes effect

    def _poll_length_ms(self, session: SessionInbox) -> int:
        """Until just after the session's next timer is due, within the bounds."""
        longest = self._poll_ms
        due = session.next_timer_at()
        if due is not None:
            until = (due - asyncio.get_running_loop().time()) * 1000 + TIMER_MARGIN_MS
            longest = min(longest, math.ceil(until))
        return max(MIN_POLL_MS, longest)

    async def _check_alive(self) -> None:
        """``result=-1`` means a hangup or a failure: ask the channel which."""
        reply = await self._request.command("CHANNEL STATUS", within=self._command_timeout)
        self._raise_if_hung_up()  # (511 on a dead channel has raised already)
        if reply.result is not None and reply.result < 0:
            raise AgiChannelGone("CHANNEL STATUS found no channel")

    def _raise_if_hung_up(self) -> None:
        if self._request.hung_up:
            raise AgiChannelGone("Asterisk reported HANGUP")


def _key(result: int) -> str | None:
    key = chr(result) if 0 < result < 128 else ""
    return key if key in DTMF_KEYS else None
