"""Receiving the caller's audio from Asterisk over RTP (externalMedia, ``slin16``).

Asterisk snoops the caller's channel and an externalMedia channel sends that audio to us: RTP over
UDP, payload type 118, 20 ms per packet, 640-byte payloads of **big-endian** int16 at 16 kHz, from a
port in 10000-10999 on 127.0.0.1. A snooped stream is continuous (silence included).

Three layers, each usable alone:

* :func:`parse_rtp` turns one datagram into an :class:`RtpPacket` or raises :class:`RtpError` whose
  ``reason`` is a short stable string (a metric label).
* :class:`RtpReceiver` owns the one UDP socket for the whole process and routes each datagram, by
  the address it came from, to the sink registered for that entry.
* :class:`AudioAssembler` (one per entry) puts packets back in order and turns them into
  contiguous 20 ms frames of little-endian int16 PCM for the voice activity detector
  (:mod:`ari_app.speech.vad`), with a running sample index.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

SLIN16_PAYLOAD_TYPE = 118
RTP_VERSION = 2
RTP_HEADER_BYTES = 12

# Every reason parse_rtp can raise; RtpReceiver.counters carries one key per reason.
RTP_ERROR_REASONS = ("short", "version", "payload_type", "csrc", "extension", "padding", "empty")

_HEADER = struct.Struct("!BBHII")
_SEQ_MOD = 1 << 16


class RtpError(ValueError):
    """A datagram that is not a usable RTP packet. ``reason`` is one of RTP_ERROR_REASONS."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RtpPacket:
    sequence: int
    timestamp: int
    ssrc: int
    payload: bytes
    marker: bool


def parse_rtp(packet: bytes, *, payload_type: int | None = SLIN16_PAYLOAD_TYPE) -> RtpPacket:
    """Parse one RTP datagram (RFC 3550 section 5.1).

    Skips the CSRC list and a header extension, strips padding. ``payload_type=None`` accepts any
    payload type. Raises :class:`RtpError` with reason ``short`` (under 12 bytes), ``version``
    (not RTP version 2), ``payload_type``, ``csrc`` (CSRC list past the end), ``extension``
    (extension past the end), ``padding`` (padding count 0 or past the payload) or ``empty`` (no
    payload left).
    """
    size = len(packet)
    if size < RTP_HEADER_BYTES:
        raise RtpError("short")
    first, second, sequence, timestamp, ssrc = _HEADER.unpack_from(packet)
    if first >> 6 != RTP_VERSION:
        raise RtpError("version")
    if payload_type is not None and second & 0x7F != payload_type:
        raise RtpError("payload_type")
    offset = RTP_HEADER_BYTES + 4 * (first & 0x0F)
    if offset > size:
        raise RtpError("csrc")
    if first & 0x10:
        if offset + 4 > size:
            raise RtpError("extension")
        words = int.from_bytes(packet[offset + 2 : offset + 4], "big")
        offset += 4 + 4 * words
        if offset > size:
            raise RtpError("extension")
    end = size
    if first & 0x20:
        padding = packet[-1]
        if padding == 0 or offset + padding > size:
            raise RtpError("padding")
        end -= padding
    if end <= offset:
        raise RtpError("empty")
    return RtpPacket(
        sequence=sequence,
        timestamp=timestamp,
        ssrc=ssrc,
        payload=bytes(packet[offset:end]),
        marker=bool(second & 0x80),
    )


def pcm16be_to_float32(payload: bytes) -> npt.NDArray[np.float32]:
    """Big-endian int16 PCM (the RTP ``slin``/``slin16`` payload) to float32 in [-1, 1)."""
    if len(payload) % 2:
        raise ValueError(f"PCM16 payload has an odd length ({len(payload)} bytes)")
    samples = np.frombuffer(payload, dtype=">i2")
    return samples.astype(np.float32) * np.float32(1.0 / 32768.0)


# --- the shared socket -------------------------------------------------------------------------

Source = tuple[str, int]
Sink = Callable[[RtpPacket], None]

UNKNOWN_SOURCE_WARN_INTERVAL_S = 60.0
_MAX_WARNED_SOURCES = 1024
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})


def _canonical_host(host: str) -> str:
    """``::ffff:127.0.0.1`` and ``127.0.0.1`` are the same sender; names stay as given."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


class RtpReceiver(asyncio.DatagramProtocol):
    """One UDP socket receiving every entry's RTP, routed by the sender's address.

    Why one shared socket rather than a port per entry: one port means one firewall rule and one
    ``external_host`` setting; no port range to size, no port exhaustion under load and no race
    between closing an entry's socket and binding the next one. Demultiplexing is free because
    Asterisk announces, in the externalMedia channel's variables ``UNICASTRTP_LOCAL_ADDRESS`` and
    ``UNICASTRTP_LOCAL_PORT``, the address it sends that entry's RTP from: :meth:`register` that
    address with the entry's sink. The sender's port is unique per externalMedia channel (Asterisk
    binds one RTP port per channel), so ``(address, port)`` identifies the entry. An announced
    wildcard host (``0.0.0.0`` or ``::``) matches that port from any host.

    Datagrams from an unregistered source are counted (``unknown_source``) and dropped, with at
    most one warning per source per minute. Malformed packets are counted under their
    :class:`RtpError` reason, with at most one warning per source per minute too. A sink that
    raises is counted (``sink_error``) and logged once per source; the receiver keeps going.
    Nothing raises out of :meth:`datagram_received`.

    Sinks run on the event loop for every packet (50 per second per entry): they must be quick
    (an :class:`AudioAssembler` plus the VAD is, at a few tens of microseconds per packet).
    """

    def __init__(
        self,
        *,
        payload_type: int | None = SLIN16_PAYLOAD_TYPE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._payload_type = payload_type
        self._clock = clock
        self._transport: asyncio.DatagramTransport | None = None
        self._sinks: dict[Source, Sink] = {}
        self._wildcard_sinks: dict[int, Sink] = {}
        self._warned_at: dict[Source, float] = {}
        self._malformed_warned_at: dict[Source, float] = {}
        self._failed_sinks: set[Source] = set()
        self.counters: dict[str, int] = dict.fromkeys(
            ("accepted", "unknown_source", "sink_error", "socket_error", *RTP_ERROR_REASONS), 0
        )

    @classmethod
    async def listen(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        payload_type: int | None = SLIN16_PAYLOAD_TYPE,
        receive_buffer_bytes: int = 4 * 1024 * 1024,
    ) -> RtpReceiver:
        """Bind the socket (``port=0``: an ephemeral port; see :attr:`address`).

        The kernel receive buffer is raised towards ``receive_buffer_bytes`` (capped by
        ``net.core.rmem_max``) so that a busy event loop does not drop audio.
        """
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(payload_type=payload_type), local_addr=(host, port)
        )
        protocol._grow_receive_buffer(receive_buffer_bytes)
        return protocol

    def _grow_receive_buffer(self, size: int) -> None:
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is None:
            return
        try:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < size:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        except OSError as exc:  # pragma: no cover - depends on the platform
            log.debug("could not raise the RTP receive buffer: %s", exc)

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``: what to give Asterisk as ``external_host``."""
        if self._transport is None:
            raise RuntimeError("the RTP receiver is not listening")
        sockname = self._transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    def register(self, source: tuple[str, int], sink: Callable[[RtpPacket], None]) -> None:
        """Route datagrams from ``source`` (the announced UNICASTRTP_LOCAL_ADDRESS/PORT) to sink.

        A new registration for a source replaces the old one (Asterisk may reuse a port freed by a
        finished entry before that entry unregistered).
        """
        host, port = _canonical_host(source[0]), int(source[1])
        if host in _WILDCARD_HOSTS:
            previous = self._wildcard_sinks.get(port)
            self._wildcard_sinks[port] = sink
        else:
            previous = self._sinks.get((host, port))
            self._sinks[(host, port)] = sink
        if previous is not None and previous != sink:
            log.warning("RTP source %s:%d re-registered; the previous sink is replaced", host, port)
        self._failed_sinks.discard((host, port))
        self._warned_at.pop((host, port), None)

    def unregister(
        self, source: tuple[str, int], sink: Callable[[RtpPacket], None] | None = None
    ) -> None:
        """Stop routing ``source``. With ``sink``, only if that sink is still the registered one
        (so a late unregister cannot remove the entry that took the port over). Idempotent."""
        host, port = _canonical_host(source[0]), int(source[1])
        if host in _WILDCARD_HOSTS:
            current = self._wildcard_sinks.get(port)
            if current is not None and (sink is None or current == sink):
                del self._wildcard_sinks[port]
        else:
            current = self._sinks.get((host, port))
            if current is not None and (sink is None or current == sink):
                del self._sinks[(host, port)]
        self._failed_sinks.discard((host, port))

    def close(self) -> None:
        """Close the socket and forget every registration."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._sinks.clear()
        self._wildcard_sinks.clear()

    # asyncio.DatagramProtocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def error_received(self, exc: Exception) -> None:
        self.counters["socket_error"] += 1
        log.debug("RTP socket error: %s", exc)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            self._route(data, addr)
        except Exception:  # pragma: no cover - defensive: a receiver bug must not kill the socket
            log.exception("RTP receiver failed on a datagram from %s", addr)

    def _route(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source: Source = (str(addr[0]), int(addr[1]))
        sink = self._sinks.get(source)
        if sink is None:
            source = (_canonical_host(source[0]), source[1])
            sink = self._sinks.get(source)
            if sink is None:
                sink = self._wildcard_sinks.get(source[1])
            if sink is None:
                self.counters["unknown_source"] += 1
                self._warn_unknown(source)
                return
        try:
            packet = parse_rtp(data, payload_type=self._payload_type)
        except RtpError as exc:
            self.counters[exc.reason] = self.counters.get(exc.reason, 0) + 1
            if self._may_warn(self._malformed_warned_at, source):
                log.warning(
                    "dropping malformed RTP from %s:%d (%s; %d malformed datagrams so far)",
                    source[0],
                    source[1],
                    exc.reason,
                    sum(self.counters[reason] for reason in RTP_ERROR_REASONS),
                )
            return
        self.counters["accepted"] += 1
        try:
            sink(packet)
        except Exception:
            self.counters["sink_error"] += 1
            if source not in self._failed_sinks:
                self._failed_sinks.add(source)
                log.exception(
                    "RTP sink for %s:%d raised; later errors are only counted", source[0], source[1]
                )

    def _may_warn(self, warned_at: dict[Source, float], source: Source) -> bool:
        """At most one warning per source per interval, for at most _MAX_WARNED_SOURCES."""
        now = self._clock()
        last = warned_at.get(source)
        if last is not None and now - last < UNKNOWN_SOURCE_WARN_INTERVAL_S:
            return False
        if len(warned_at) >= _MAX_WARNED_SOURCES:
            cutoff = now - UNKNOWN_SOURCE_WARN_INTERVAL_S
            for stale in [s for s, t in warned_at.items() if t <= cutoff]:
                del warned_at[stale]
            if len(warned_at) >= _MAX_WARNED_SOURCES:
                return False  # a flood of distinct senders: stay quiet, the counter still counts
        warned_at[source] = now
        return True

    def _warn_unknown(self, source: Source) -> None:
        if not self._may_warn(self._warned_at, source):
            return
        log.warning(
            "dropping RTP from unregistered source %s:%d (%d such datagrams so far)",
            source[0],
            source[1],
            self.counters["unknown_source"],
        )


# --- per-entry reassembly ----------------------------------------------------------------------

FRAME_MS = 20


@dataclass(frozen=True, slots=True)
class AudioFrame:
    """20 ms of audio: ``pcm`` is little-endian int16 mono (640 bytes at 16 kHz).

    ``sample_index`` is the index of the frame's first sample in the assembled stream (silence
    inserted for lost packets included, time lost in a resync not). ``concealed`` is true when the
    frame holds inserted silence (exact when payloads are whole frames, as with Asterisk).
    """

    pcm: bytes
    sample_index: int
    concealed: bool = False


class AudioAssembler:
    """One entry's RTP packets, in arrival order, to contiguous 20 ms PCM frames.

    Output frames are **little-endian int16** (native on every platform we run on), the format
    webrtcvad reads and :class:`ari_app.speech.vad.UtteranceSegmenter` takes. Payloads of any even
    size are re-chunked into ``frame_samples``-sample frames (320 = 20 ms at 16 kHz).

    Sequence policy, modelled on RFC 3550 appendix A.1 (16-bit sequence numbers, wraparound
    handled by modular arithmetic):

    * the next expected packet: emitted;
    * a forward gap of up to ``max_gap_packets`` (default 10 = 200 ms): the missing packets are
      replaced by silence so that timing stays true, then the packet is emitted;
    * a larger forward gap, below ``max_dropout_packets``: an outage; resync on this packet
      without inserting anything (seconds of inserted silence would only delay the VAD);
    * a packet at most ``max_misorder_packets`` behind: a duplicate (recently received) or late
      (already replaced by silence, or reordered): dropped and counted;
    * any other jump (a restarted stream): the packet is dropped, and if the next packet follows
      it the stream resyncs there; an SSRC change resyncs at once.

    ``counters``: ``packets``, ``frames``, ``concealed_packets``, ``duplicate``, ``late``,
    ``resync``, ``jump``, ``ssrc_change``, ``odd_payload``.
    """

    def __init__(
        self,
        *,
        frame_samples: int = 320,
        max_gap_packets: int = 10,
        max_dropout_packets: int = 3000,
        max_misorder_packets: int = 100,
    ) -> None:
        if frame_samples <= 0 or max_gap_packets < 0:
            raise ValueError("frame_samples must be positive and max_gap_packets not negative")
        if not max_gap_packets < max_dropout_packets < _SEQ_MOD - max_misorder_packets:
            raise ValueError("need max_gap_packets < max_dropout_packets < 65536 - misorder")
        self._frame_bytes = 2 * frame_samples
        self._max_gap = max_gap_packets
        self._max_dropout = max_dropout_packets
        self._max_misorder = max_misorder_packets
        self._expected: int | None = None
        self._ssrc: int | None = None
        self._probation_seq: int | None = None
        self._recent: deque[int] = deque(maxlen=max_misorder_packets)
        self._recent_set: set[int] = set()
        self._pending = bytearray()
        self._pending_concealed = False
        self._sample_index = 0
        self._packet_samples = frame_samples
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "packets",
                "frames",
                "concealed_packets",
                "duplicate",
                "late",
                "resync",
                "jump",
                "ssrc_change",
                "odd_payload",
            ),
            0,
        )

    @property
    def sample_index(self) -> int:
        """Samples emitted so far: the index the next frame starts at."""
        return self._sample_index

    def push(self, packet: RtpPacket) -> list[AudioFrame]:
        """Take one packet; return the frames it completes (often one, possibly none)."""
        self.counters["packets"] += 1
        payload = packet.payload
        if len(payload) % 2:
            self.counters["odd_payload"] += 1
            return []
        seq = packet.sequence
        frames: list[AudioFrame] = []
        if self._expected is None:
            self._start(packet)
        elif packet.ssrc != self._ssrc:
            self.counters["ssrc_change"] += 1
            self._start(packet)
        else:
            ahead = (seq - self._expected) % _SEQ_MOD
            behind = (self._expected - seq) % _SEQ_MOD
            if ahead == 0:
                pass
            elif ahead <= self._max_gap:
                self.counters["concealed_packets"] += ahead
                frames = self._append(bytes(2 * self._packet_samples * ahead), concealed=True)
            elif ahead < self._max_dropout:
                self.counters["resync"] += 1
                self._forget_recent()
            elif behind <= self._max_misorder:
                self.counters["duplicate" if seq in self._recent_set else "late"] += 1
                return []
            elif seq == self._probation_seq:
                self.counters["resync"] += 1
                self._forget_recent()
            else:
                self.counters["jump"] += 1
                self._probation_seq = (seq + 1) % _SEQ_MOD
                return []
        self._probation_seq = None
        self._expected = (seq + 1) % _SEQ_MOD
        self._remember(seq)
        self._packet_samples = len(payload) // 2 or self._packet_samples
        swapped = np.frombuffer(payload, dtype=">i2").astype("<i2").tobytes()
        return frames + self._append(swapped, concealed=False)

    def _start(self, packet: RtpPacket) -> None:
        self._ssrc = packet.ssrc
        self._forget_recent()

    def _forget_recent(self) -> None:
        self._recent.clear()
        self._recent_set.clear()

    def _remember(self, seq: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(seq)
        self._recent_set.add(seq)

    def _append(self, pcm: bytes, *, concealed: bool) -> list[AudioFrame]:
        size = self._frame_bytes
        if not self._pending and len(pcm) == size:  # the usual case: one packet, one frame
            return [self._emit(pcm, concealed)]
        self._pending += pcm
        self._pending_concealed = self._pending_concealed or concealed
        frames: list[AudioFrame] = []
        while len(self._pending) >= size:
            frames.append(self._emit(bytes(self._pending[:size]), self._pending_concealed))
            del self._pending[:size]
            self._pending_concealed = concealed and bool(self._pending)
        return frames

    def _emit(self, pcm: bytes, concealed: bool) -> AudioFrame:
        frame = AudioFrame(pcm=pcm, sample_index=self._sample_index, concealed=concealed)
        self._sample_index += len(pcm) // 2
        self.counters["frames"] += 1
        return frame


async def listen_for_rtp(host: str, ports: tuple[int, int]) -> RtpReceiver:
    """The shared receiver on the first free port of ``ports`` (``(0, 0)``: any port)."""
    first, last = ports
    last_error: OSError | None = None
    for port in range(first, last + 1):
        try:
            return await RtpReceiver.listen(host, port)
        except OSError as exc:
            last_error = exc
    raise OSError(f"no free UDP port for RTP on {host} in {first}-{last}: {last_error}")
