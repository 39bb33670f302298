"""``rtp-probe``: the speech path works end to end, with a simulated caller.

The probe puts the app's own speech tap (:class:`~ari_app.ari.speech.AriSpeechTap`: snoop
``spy=in`` → externalMedia slin16 → mixing bridge) on a simulated caller: an externalMedia
channel that we feed with a 1 kHz tone over RTP. The tap sends what the snoop hears to an
:class:`~ari_app.speech.rtp.RtpReceiver` on ``RTP_HOST``, exactly as a call would, and a
:class:`ToneCounter` listens instead of the recogniser. It needs no dialplan and no module the
app does not need itself, so it runs against a production Asterisk too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp
import numpy as np

from ari_app.ari.client import AriClient, AriUnavailable, wait_until_subscribed
from ari_app.ari.speech import AriSpeechTap
from ari_app.doctor.lookups import lookup
from ari_app.doctor.report import CheckResult, Status
from ari_app.ports import ChannelGone, TransportError
from ari_app.settings import Settings
from ari_app.speech.rtp import RtpPacket, RtpReceiver, listen_for_rtp, pcm16be_to_float32

log = logging.getLogger(__name__)

PROBE_WAIT_SECONDS = 3.0
PROBE_SETUP_TIMEOUT_SECONDS = 10.0
TEARDOWN_WAIT_SECONDS = 2.0
# 200 ms of audible tone is proof enough; waiting for it rather than a fixed time keeps it quick.
PROBE_PACKETS_NEEDED = 10
PROBE_TONE_HZ = 1000
PROBE_TONE_AMPLITUDE = 8192  # -12 dBFS: far above any rounding, far below clipping
# What we call audible on arrival: -40 dBFS, room for resampling and mixing to lower the level.
PROBE_AUDIBLE_PEAK = 0.01
# Asterisk drops inbound slin16 on externalMedia (payload type 118), so the simulated caller
# sends slin (8 kHz, payload type 10): 20 ms is 160 samples.
CALLER_FORMAT = "slin"
CALLER_PAYLOAD_TYPE = 10
CALLER_SAMPLES_PER_PACKET = 160
CALLER_SAMPLE_RATE = 8000
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


class ToneCounter:
    """The probe's sink: counts packets from the announced source and how loud they were."""

    def __init__(self) -> None:
        self.packets = 0
        self.audible = 0
        self.peak = 0.0
        self.payload_bytes = 0
        self.enough = asyncio.Event()

    def end_of_stream(self) -> None:
        """The probe counts packets as they come; the end changes nothing."""

    async def close(self) -> None:
        """Nothing to let go of (the tap's :class:`~ari_app.ari.speech.AudioSink`)."""

    def on_packet(self, packet: RtpPacket) -> None:
        self.packets += 1
        self.payload_bytes = len(packet.payload)
        peak = float(np.abs(pcm16be_to_float32(packet.payload)).max())
        self.peak = max(self.peak, peak)
        if peak >= PROBE_AUDIBLE_PEAK:
            self.audible += 1
            if self.audible >= PROBE_PACKETS_NEEDED:
                self.enough.set()


def tone_packets(ssrc: int) -> Callable[[int], bytes]:
    """RTP packet ``n`` of a continuous tone (slin, 20 ms each)."""
    samples = np.arange(CALLER_SAMPLES_PER_PACKET)
    # 1 kHz at 8 kHz: a whole number of cycles per packet, so every payload is the same.
    wave = PROBE_TONE_AMPLITUDE * np.sin(2 * math.pi * PROBE_TONE_HZ * samples / CALLER_SAMPLE_RATE)
    payload = wave.astype(">i2").tobytes()

    def packet(n: int) -> bytes:
        header = bytes([0x80, CALLER_PAYLOAD_TYPE]) + (n & 0xFFFF).to_bytes(2, "big")
        timestamp = (n * CALLER_SAMPLES_PER_PACKET) & 0xFFFFFFFF
        return header + timestamp.to_bytes(4, "big") + ssrc.to_bytes(4, "big") + payload

    return packet


def _sender_host(announced: str, settings: Settings) -> str:
    """Where to send to a channel that announced a wildcard address: the host of ARI_URL."""
    if announced in WILDCARD_HOSTS:
        return urllib.parse.urlsplit(settings.ari_url).hostname or "127.0.0.1"
    return announced


@dataclass(frozen=True)
class ProbeIds:
    app: str
    caller: str

    @classmethod
    def fresh(cls, app: str) -> ProbeIds:
        """Names of our own: never the service's app (a second websocket would take it over).
        The tap names its snoop, externalMedia and bridge after the caller."""
        token = uuid.uuid4().hex[:12]
        return cls(app=f"{app}-doctor-{token}", caller=f"ari-digits-doctor-{token}-caller")


async def probe_rtp(settings: Settings) -> CheckResult:
    """The speech tap of a simulated caller; PASS once its tone arrives on RTP_HOST."""
    name = "rtp-probe"
    try:
        receiver = await listen_for_rtp(settings.rtp_host, settings.rtp_ports)
        note = ""
    except OSError:
        # A running serve holds RTP_PORTS: the route to this host is what is being probed.
        try:
            receiver = await RtpReceiver.listen(settings.rtp_host, 0)
        except OSError as exc:
            return CheckResult(
                name,
                Status.FAIL,
                f"cannot bind UDP on RTP_HOST={settings.rtp_host}: {exc.strerror or exc}",
                "set RTP_HOST to an address of this host",
            )
        note = " (RTP_PORTS busy: probed on a free port)"
    try:
        async with _tapped_caller(settings, receiver) as tap:
            started = time.monotonic()
            await _send_tone_until(tap, tap.counter.enough)
            elapsed = time.monotonic() - started
    except TimeoutError:  # before OSError, of which it is a subclass
        return CheckResult(
            name,
            Status.FAIL,
            f"setting the probe up took over {PROBE_SETUP_TIMEOUT_SECONDS:.0f} s",
            "see Asterisk's log",
        )
    except (AriUnavailable, ChannelGone, TransportError, aiohttp.ClientError, OSError) as exc:
        return CheckResult(
            name, Status.FAIL, f"could not set the probe up: {exc}", "see Asterisk's log"
        )
    finally:
        receiver.close()
    counter = tap.counter
    where = f"from Asterisk {tap.source[0]}:{tap.source[1]} to {tap.destination}{note}"
    if counter.enough.is_set():
        return CheckResult(
            name,
            Status.PASS,
            f"a simulated caller's tone arrived: {counter.packets} RTP packets "
            f"({counter.payload_bytes} bytes, peak {_dbfs(counter.peak)}) {where} "
            f"in {elapsed:.2f} s",
        )
    return _probe_failure(counter, receiver.counters, where, settings)


@dataclass(frozen=True)
class Tap:
    """A simulated caller's audio, tapped: where to send its tone, where the tap sends it."""

    caller: asyncio.DatagramTransport
    caller_target: tuple[str, int]
    source: tuple[str, int]  # where Asterisk sends the tapped audio from
    destination: str  # where it sends it to
    counter: ToneCounter


class _ProbeAri:
    """The probe's own connection, for its tap: nothing to wait for after the probe."""

    def __init__(self, client: AriClient) -> None:
        self._client = client

    def client(self) -> AriClient:
        return self._client

    def when_connected(self, step: Callable[[AriClient], Awaitable[None]], what: str) -> None:
        log.warning("%s: ARI is gone; the probe's tap may be left on Asterisk", what)


@contextlib.asynccontextmanager
async def _tapped_caller(settings: Settings, receiver: RtpReceiver) -> AsyncIterator[Tap]:
    """The app's speech tap on a simulated caller: an externalMedia channel fed over RTP.
    Everything is torn down on exit, whatever happened."""
    ids = ProbeIds.fresh(settings.ari_app)
    client = AriClient(
        settings.ari_url, settings.ari_user, settings.ari_password, ids.app, max_connections=4
    )
    advertised = settings.rtp_advertised_host or settings.rtp_host
    counter = ToneCounter()
    tap = AriSpeechTap(
        _ProbeAri(client), receiver, counter, channel_id=ids.caller, advertised_host=advertised
    )
    caller: asyncio.DatagramTransport | None = None
    listening: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(PROBE_SETUP_TIMEOUT_SECONDS):
            await client.connect()
            opened = asyncio.Event()
            listening = asyncio.create_task(client.listen(lambda _event: None, opened))
            await wait_until_subscribed(listening, opened)
            caller, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(settings.rtp_host, 0)
            )
            caller_port = caller.get_extra_info("sockname")[1]
            # We send the caller's audio to this channel, and the snoop hears it.
            host, port = await client.external_media(
                ids.caller, f"{advertised}:{caller_port}", audio_format=CALLER_FORMAT
            )
            await tap.open()
        assert tap.source is not None  # open() returned
        yield Tap(
            caller, (_sender_host(host, settings), port), tap.source, tap.destination, counter
        )
    finally:
        await tap.close()
        with contextlib.suppress(TransportError):  # not connected: nothing was created
            await client.hangup_quietly(ids.caller)
        await _wait_gone(
            client,
            [
                f"bridges/{tap.bridge_id}",
                *(f"channels/{i}" for i in (tap.media_id, tap.snoop_id, ids.caller)),
            ],
        )
        if listening is not None:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
        await client.close()
        if caller is not None:
            caller.close()
        # Asterisk drops an app once its websocket is gone and it holds no channel.
        await _wait_gone(client, [f"applications/{ids.app}"])
        await client.close()


async def _send_tone_until(tap: Tap, enough: asyncio.Event) -> None:
    """Send the caller's 20 ms packets in real time until ``enough`` is set or time is up."""
    packet = tone_packets(ssrc=uuid.uuid4().int & 0xFFFFFFFF)
    interval = CALLER_SAMPLES_PER_PACKET / CALLER_SAMPLE_RATE
    for n in range(int(PROBE_WAIT_SECONDS / interval)):
        tap.caller.sendto(packet(n), tap.caller_target)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await enough.wait()
        if enough.is_set():
            return


async def _wait_gone(client: AriClient, paths: Sequence[str]) -> None:
    """Asterisk hangs up and unregisters asynchronously: wait, briefly, until each path answers
    404, so that the doctor leaves Asterisk as it found it when it returns."""
    deadline = time.monotonic() + TEARDOWN_WAIT_SECONDS
    for path in paths:
        while time.monotonic() < deadline:
            try:
                status, _ = await lookup(client, path)
            except (aiohttp.ClientError, TimeoutError):
                return  # Asterisk is gone: nothing of ours is left in it either
            if status == 404:
                break
            await asyncio.sleep(0.05)


def _probe_failure(
    counter: ToneCounter, counters: Mapping[str, int], where: str, settings: Settings
) -> CheckResult:
    name = "rtp-probe"
    if counter.packets:
        return CheckResult(
            name,
            Status.FAIL,
            f"{counter.packets} RTP packets {where} but only {counter.audible} carried the tone "
            f"(peak {_dbfs(counter.peak)})",
            "check that codec_resample is loaded and the snoop hears the caller",
        )
    if counters["unknown_source"]:
        return CheckResult(
            name,
            Status.FAIL,
            f"{counters['unknown_source']} RTP packets came from another address than the one "
            f"Asterisk announced ({where.removeprefix('from ')})",
            "a NAT between Asterisk and this host rewrites the source; run ari-digits where "
            "Asterisk's address is seen unchanged",
        )
    if counters["payload_type"]:
        return CheckResult(
            name,
            Status.FAIL,
            f"{counters['payload_type']} RTP packets were not slin16 (payload type 118) {where}",
            "see Asterisk's log for the externalMedia channel's format",
        )
    advertised = settings.rtp_advertised_host or settings.rtp_host
    return CheckResult(
        name,
        Status.FAIL,
        f"no RTP within {PROBE_WAIT_SECONDS:.0f} s {where}",
        f"Asterisk must reach this host at RTP_ADVERTISED_HOST={advertised}: set it to this "
        "host's address as Asterisk sees it, RTP_HOST to an address it listens on, and allow "
        "UDP from Asterisk's rtp.conf port range",
    )


def _dbfs(peak: float) -> str:
    return f"{20 * math.log10(peak):.0f} dBFS" if peak > 0 else "silence"
