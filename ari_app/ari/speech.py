"""The caller's voice, tapped through ARI: snoop → externalMedia → our RTP receiver.

Per tap: a snoop channel hearing the caller (``spy=in``), an externalMedia channel sending
slin16 RTP to our shared receiver, and a mixing bridge joining them. A snoop does not need the
caller's channel to be in Stasis, so the FastAGI path can use the same tap. Everything is torn
down on :meth:`AriSpeechTap.close`, whatever the reason. What hears the audio is the tap's
:class:`AudioSink`: an entry's :class:`~ari_app.speech.listener.SpeechListener`, or the setup
check's tone counter (:mod:`ari_app.doctor.rtp_probe`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from ari_app.ari.client import AriClient, AriUnreachable
from ari_app.ports import ChannelGone, TransportError
from ari_app.speech.rtp import RtpPacket, RtpReceiver

log = logging.getLogger(__name__)


class AudioSink(Protocol):
    def on_packet(self, packet: RtpPacket) -> None:
        """One packet from the tap, on the event loop: must be quick."""
        ...

    def end_of_stream(self) -> None:
        """No more audio will come (the caller hung up): what was heard so far is complete."""
        ...

    async def close(self) -> None:
        """The tap is closing: nothing more arrives."""
        ...


class AriLink(Protocol):
    """The ARI connection a tap works through."""

    def client(self) -> AriClient:
        """The connection now; raises AriUnreachable while there is none."""
        ...

    def when_connected(self, step: Callable[[AriClient], Awaitable[None]], what: str) -> None:
        """Run ``step`` in the background once ARI is connected again (a bounded wait)."""
        ...


class AriSpeechTap:
    def __init__(
        self,
        ari: AriLink,
        receiver: RtpReceiver,
        sink: AudioSink,
        *,
        channel_id: str,
        advertised_host: str,
    ) -> None:
        self._ari = ari
        self._receiver = receiver
        self._sink = sink
        self._channel_id = channel_id
        self.snoop_id = f"{channel_id}-snoop"
        self.media_id = f"{channel_id}-media"
        self.bridge_id = f"{channel_id}-speech"
        # Where Asterisk sends the tapped audio to (this host as Asterisk reaches it).
        self.destination = f"{advertised_host}:{receiver.address[1]}"
        self.source: tuple[str, int] | None = None  # where it sends from, once open
        self._closed = False
        self._opening: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin opening the tap alongside the prompt; :meth:`close` waits for it."""
        self._opening = asyncio.create_task(self._open_for_entry(), name=f"tap-{self._channel_id}")

    async def _open_for_entry(self) -> None:
        try:
            await self.open()
        except (ChannelGone, TransportError) as exc:
            # The entry goes on with keys only.
            log.warning("channel %s: speech is unavailable: %s", self._channel_id, exc)

    async def open(self) -> None:
        """Snoop, externalMedia, bridge; raises ChannelGone or TransportError."""
        client = self._ari.client()
        await client.snoop(self._channel_id, self.snoop_id)
        source = await client.external_media(self.media_id, self.destination)
        # Register before bridging so the very first packets are heard.
        self._receiver.register(source, self._sink.on_packet)
        self.source = source
        await client.create_mixing_bridge(self.bridge_id, [self.snoop_id, self.media_id])

    def caller_gone(self) -> None:
        self._sink.end_of_stream()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._opening is not None:
            await self._opening
        if self.source is not None:
            # With the sink: never unregister a newer tap Asterisk gave the same port to.
            self._receiver.unregister(self.source, self._sink.on_packet)
        await self._sink.close()
        try:
            await self._tear_down(self._ari.client())
        except AriUnreachable:
            # A stalled or restarting Asterisk may keep the snoop and bridge: remove them once
            # it answers again, without holding up the entry's result.
            self._ari.when_connected(self._tear_down, f"channel {self._channel_id}: speech tap")

    async def _tear_down(self, client: AriClient) -> None:
        """Destroy the bridge and hang up both channels; what is already gone is fine.
        Raises AriUnreachable (so the whole teardown is retried once ARI is back)."""
        for teardown, name in (
            (client.destroy_bridge, self.bridge_id),
            (client.hangup_quietly, self.media_id),
            (client.hangup_quietly, self.snoop_id),
        ):
            try:
                await teardown(name)
            except AriUnreachable:
                raise
            except TransportError as exc:
                log.warning("channel %s: speech tap teardown: %s", self._channel_id, exc)
