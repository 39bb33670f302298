"""The caller's voice, tapped through ARI: snoop → externalMedia → our RTP receiver.

Per entry: a snoop channel hearing the caller (``spy=in``), an externalMedia channel sending
slin16 RTP to our shared receiver, and a mixing bridge joining them. A snoop does not need the
caller's channel to be in Stasis, so the FastAGI path can use the same tap. Everything is torn
down when the entry ends, whatever the reason.
"""

from __future__ import annotations

import asyncio
import logging

from ari_app.ari.client import AriClient
from ari_app.metrics import Metrics
from ari_app.ports import ChannelGone, SpeechTarget, TransportError
from ari_app.speech.listener import SpeechListener
from ari_app.speech.recognizer import DigitRecognizer
from ari_app.speech.rtp import RtpReceiver

log = logging.getLogger(__name__)


class AriSpeechTap:
    def __init__(
        self,
        client: AriClient,
        receiver: RtpReceiver,
        recognizer: DigitRecognizer,
        *,
        channel_id: str,
        advertised_host: str,
        max_digits: int,
        target: SpeechTarget,
        metrics: Metrics,
    ) -> None:
        self._client = client
        self._receiver = receiver
        self._channel_id = channel_id
        self._advertised_host = advertised_host
        self.snoop_id = f"{channel_id}-snoop"
        self.media_id = f"{channel_id}-media"
        self.bridge_id = f"{channel_id}-speech"
        self._source: tuple[str, int] | None = None
        self._listener = SpeechListener(
            target, recognizer, label=channel_id, max_digits=max_digits, metrics=metrics
        )
        self._closed = False
        self._opening: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin opening the tap alongside the prompt; :meth:`close` waits for it."""
        self._opening = asyncio.create_task(self._open(), name=f"tap-{self._channel_id}")

    async def _open(self) -> None:
        try:
            port = self._receiver.address[1]
            await self._client.snoop(self._channel_id, self.snoop_id)
            source = await self._client.external_media(
                self.media_id, f"{self._advertised_host}:{port}"
            )
            # Register before bridging so the very first packets are heard.
            self._receiver.register(source, self._listener.on_packet)
            self._source = source
            await self._client.create_mixing_bridge(self.bridge_id, [self.snoop_id, self.media_id])
        except (ChannelGone, TransportError) as exc:
            # The entry goes on with keys only.
            log.warning("channel %s: speech is unavailable: %s", self._channel_id, exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._opening is not None:
            await self._opening
        if self._source is not None:
            # With the sink: never unregister a newer entry Asterisk gave the same port to.
            self._receiver.unregister(self._source, self._listener.on_packet)
        await self._listener.close()
        for teardown in (
            self._client.destroy_bridge(self.bridge_id),
            self._client.hangup_quietly(self.media_id),
            self._client.hangup_quietly(self.snoop_id),
        ):
            try:
                await teardown
            except TransportError as exc:
                log.warning("channel %s: speech tap teardown: %s", self._channel_id, exc)
