"""RTP parsing, the shared receiver socket and per-entry reassembly (ari_app.speech.rtp)."""

from __future__ import annotations

import asyncio
import logging
import random
import struct

import numpy as np
import pytest

from ari_app.speech.rtp import (
    RTP_ERROR_REASONS,
    AudioAssembler,
    RtpError,
    RtpPacket,
    RtpReceiver,
    parse_rtp,
    pcm16be_to_float32,
)

PAYLOAD = bytes(range(256)) * 2 + bytes(128)  # 640 bytes, like one slin16 packet


def rtp(
    seq: int = 1,
    *,
    ts: int = 0,
    ssrc: int = 0x1234ABCD,
    payload: bytes = PAYLOAD,
    pt: int = 118,
    marker: bool = False,
    csrc: tuple[int, ...] = (),
    extension: bytes | None = None,
    padding: int = 0,
    version: int = 2,
) -> bytes:
    first = (version << 6) | (0x20 if padding else 0) | (0x10 if extension is not None else 0)
    first |= len(csrc)
    header = struct.pack("!BBHII", first, (0x80 if marker else 0) | pt, seq, ts, ssrc)
    header += b"".join(struct.pack("!I", c) for c in csrc)
    if extension is not None:
        assert len(extension) % 4 == 0
        header += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    tail = (bytes(padding - 1) + bytes([padding])) if padding else b""
    return header + payload + tail


def reason_of(data: bytes) -> str:
    with pytest.raises(RtpError) as caught:
        parse_rtp(data)
    return caught.value.reason


# --- parse_rtp -----------------------------------------------------------------------------------


def test_parse_plain_packet() -> None:
    packet = parse_rtp(rtp(4242, ts=99_000, ssrc=7, marker=True))
    assert packet == RtpPacket(
        sequence=4242, timestamp=99_000, ssrc=7, payload=PAYLOAD, marker=True
    )


def test_parse_skips_csrcs_extension_and_padding() -> None:
    data = rtp(5, csrc=(1, 2, 3), extension=b"\x10\x20\x30\x40" * 2, padding=4, payload=b"\x01\x02")
    packet = parse_rtp(data)
    assert packet.payload == b"\x01\x02"
    assert packet.sequence == 5
    assert parse_rtp(rtp(6, csrc=tuple(range(15)))).payload == PAYLOAD
    assert parse_rtp(rtp(7, extension=b"")).payload == PAYLOAD
    assert parse_rtp(rtp(8, padding=1)).payload == PAYLOAD


def test_parse_payload_type_filter() -> None:
    assert reason_of(rtp(pt=0)) == "payload_type"
    assert reason_of(rtp(pt=10)) == "payload_type"
    assert parse_rtp(rtp(pt=10), payload_type=10).payload == PAYLOAD
    assert parse_rtp(rtp(pt=96), payload_type=None).payload == PAYLOAD


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "short"),
        (rtp()[:11], "short"),
        (rtp(version=0), "version"),
        (rtp(version=1), "version"),
        (rtp(version=3), "version"),
        (rtp(pt=119), "payload_type"),
        (rtp(csrc=(1, 2, 3), payload=b"")[:20], "csrc"),
        (rtp(extension=b"", payload=b"")[:14], "extension"),
        (rtp(extension=b"\x00" * 8, payload=b"")[:20], "extension"),
        (rtp(payload=b""), "empty"),
        (rtp(payload=b"", padding=4), "empty"),
        (rtp(payload=b"\x01\x02", padding=2)[:-1] + b"\x00", "padding"),
        (rtp(payload=b"\x01\x02", padding=2)[:-1] + b"\x09", "padding"),
    ],
)
def test_parse_rejects_malformed(data: bytes, reason: str) -> None:
    assert reason in RTP_ERROR_REASONS
    assert reason_of(data) == reason


def test_parse_random_junk_only_raises_rtp_error() -> None:
    rng = random.Random(1234)
    seen: set[str] = set()
    accepted = 0
    for i in range(20_000):
        if i % 2:
            data = rng.randbytes(rng.randrange(0, 80))
        else:  # a valid packet with a few bytes corrupted or cut short: nearer the edge cases
            buf = bytearray(rtp(rng.randrange(65536), csrc=(1,) * rng.randrange(3)))
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(min(len(buf), 24))] = rng.randrange(256)
            data = bytes(buf[: rng.randrange(len(buf) + 1)])
        try:
            packet = parse_rtp(data, payload_type=None)
        except RtpError as exc:
            assert exc.reason in RTP_ERROR_REASONS
            seen.add(exc.reason)
        else:
            accepted += 1
            assert 0 < len(packet.payload) <= len(data) - 12
    assert accepted > 0
    assert {"short", "version", "padding", "extension", "csrc"} <= seen


def test_pcm16be_to_float32() -> None:
    payload = struct.pack(">5h", 0, 1, -1, 32767, -32768)
    samples = pcm16be_to_float32(payload)
    assert samples.dtype == np.float32
    np.testing.assert_array_equal(
        samples, np.array([0, 1, -1, 32767, -32768], dtype=np.float32) / 32768
    )
    assert pcm16be_to_float32(b"").shape == (0,)
    with pytest.raises(ValueError):
        pcm16be_to_float32(b"\x00\x01\x02")


# --- AudioAssembler ------------------------------------------------------------------------------


def packet(seq: int, value: int = 1, *, ssrc: int = 1, samples: int = 320) -> RtpPacket:
    """A packet whose samples all equal ``value`` (big-endian on the wire)."""
    payload = struct.pack(f">{samples}h", *([value] * samples))
    return RtpPacket(sequence=seq % 65536, timestamp=0, ssrc=ssrc, payload=payload, marker=False)


def values(frames: list) -> list[int]:  # type: ignore[type-arg]
    """The value of each frame (frames are little-endian int16, all samples equal)."""
    out = []
    for frame in frames:
        pcm = np.frombuffer(frame.pcm, dtype="<i2")
        assert len(pcm) == 320 and (pcm == pcm[0]).all()
        out.append(int(pcm[0]))
    return out


def push_all(assembler: AudioAssembler, packets: list[RtpPacket]) -> list:  # type: ignore[type-arg]
    return [frame for p in packets for frame in assembler.push(p)]


def test_assembler_in_order_little_endian_and_sample_index() -> None:
    assembler = AudioAssembler()
    frames = push_all(assembler, [packet(10, 258), packet(11, -2), packet(12, 3)])
    assert frames[0].pcm[:2] == b"\x02\x01"  # 258 = 0x0102, little-endian
    assert values(frames) == [258, -2, 3]
    assert [f.sample_index for f in frames] == [0, 320, 640]
    assert not any(f.concealed for f in frames)
    assert assembler.sample_index == 960


def test_assembler_conceals_small_gaps_with_silence() -> None:
    assembler = AudioAssembler(max_gap_packets=10)
    frames = push_all(assembler, [packet(1, 5), packet(4, 6), packet(15, 7)])
    # 2 and 3 lost: two frames of silence; 5..14 lost (10 packets, the limit): ten more.
    assert values(frames) == [5, 0, 0, 6] + [0] * 10 + [7]
    assert [f.sample_index for f in frames] == [320 * i for i in range(15)]
    assert [f.concealed for f in frames] == [False, True, True, False] + [True] * 10 + [False]
    assert assembler.counters["concealed_packets"] == 12


def test_assembler_resyncs_on_big_gap_without_inserting() -> None:
    assembler = AudioAssembler(max_gap_packets=10)
    frames = push_all(assembler, [packet(1, 5), packet(13, 6), packet(14, 7)])
    assert values(frames) == [5, 6, 7]
    assert [f.sample_index for f in frames] == [0, 320, 640]
    assert assembler.counters["resync"] == 1
    assert assembler.counters["concealed_packets"] == 0


def test_assembler_drops_duplicates_and_late_packets() -> None:
    assembler = AudioAssembler()
    frames = push_all(
        assembler,
        [packet(1, 1), packet(2, 2), packet(2, 2), packet(4, 4), packet(3, 3), packet(1, 1)],
    )
    assert values(frames) == [1, 2, 0, 4]  # 3 arrived after its silence was sent: dropped
    assert assembler.counters["duplicate"] == 2
    assert assembler.counters["late"] == 1


def test_assembler_sequence_wraparound() -> None:
    assembler = AudioAssembler()
    frames = push_all(assembler, [packet(65534, 1), packet(65535, 2), packet(0, 3), packet(1, 4)])
    assert values(frames) == [1, 2, 3, 4]
    frames = push_all(assembler, [packet(65535 + 65536, 9), packet(4, 5)])  # old one, then a gap
    assert values(frames) == [0, 0, 5]
    assert assembler.counters["duplicate"] == 1
    assert assembler.counters["concealed_packets"] == 2
    wrapped = AudioAssembler()
    assert values(push_all(wrapped, [packet(65534, 1), packet(1, 2)])) == [1, 0, 0, 2]


def test_assembler_restarted_stream() -> None:
    assembler = AudioAssembler()
    push_all(assembler, [packet(100, 1), packet(101, 2)])
    # A lone wild sequence number is dropped; a second one that follows it resyncs.
    assert push_all(assembler, [packet(40_000, 3)]) == []
    assert values(push_all(assembler, [packet(102, 4)])) == [4]
    assert push_all(assembler, [packet(30_000, 5)]) == []
    assert values(push_all(assembler, [packet(30_001, 6), packet(30_002, 7)])) == [6, 7]
    assert assembler.counters["jump"] == 2
    assert assembler.counters["resync"] == 1
    # A new SSRC resyncs at once.
    assert values(push_all(assembler, [packet(7, 8, ssrc=2), packet(8, 9, ssrc=2)])) == [8, 9]
    assert assembler.counters["ssrc_change"] == 1


def test_assembler_rechunks_other_packet_sizes() -> None:
    assembler = AudioAssembler()
    frames = push_all(assembler, [packet(i, i, samples=160) for i in range(1, 5)])
    assert [f.sample_index for f in frames] == [0, 320]
    first = np.frombuffer(frames[0].pcm, dtype="<i2")
    assert (first[:160] == 1).all() and (first[160:] == 2).all()
    # A lost 160-sample packet becomes 160 samples of silence.
    frames = push_all(assembler, [packet(6, 6, samples=160), packet(7, 7, samples=160)])
    pcm = np.frombuffer(frames[0].pcm, dtype="<i2")
    assert (pcm[:160] == 0).all() and (pcm[160:] == 6).all()
    odd = RtpPacket(sequence=8, timestamp=0, ssrc=1, payload=b"\x00\x01\x02", marker=False)
    assert assembler.push(odd) == []
    assert assembler.counters["odd_payload"] == 1


# --- RtpReceiver without a socket ----------------------------------------------------------------

ASTERISK_A = ("127.0.0.1", 10_002)
ASTERISK_B = ("127.0.0.1", 10_004)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_receiver_routes_by_source_and_counts_drops() -> None:
    receiver = RtpReceiver()
    got_a: list[RtpPacket] = []
    got_b: list[RtpPacket] = []
    receiver.register(ASTERISK_A, got_a.append)
    receiver.register(ASTERISK_B, got_b.append)
    receiver.datagram_received(rtp(1), ASTERISK_A)
    receiver.datagram_received(rtp(2), ASTERISK_B)
    receiver.datagram_received(rtp(3), ("::ffff:127.0.0.1", 10_002, 0, 0))  # IPv4-mapped
    receiver.datagram_received(b"junk", ASTERISK_A)
    receiver.datagram_received(rtp(4, pt=0), ASTERISK_A)
    receiver.datagram_received(rtp(5), ("127.0.0.1", 10_006))
    assert [p.sequence for p in got_a] == [1, 3]
    assert [p.sequence for p in got_b] == [2]
    assert receiver.counters["accepted"] == 3
    assert receiver.counters["short"] == 1
    assert receiver.counters["payload_type"] == 1
    assert receiver.counters["unknown_source"] == 1
    assert set(RTP_ERROR_REASONS) <= set(receiver.counters)
    receiver.unregister(ASTERISK_A)
    receiver.unregister(ASTERISK_A)  # idempotent
    receiver.datagram_received(rtp(6), ASTERISK_A)
    assert len(got_a) == 2
    assert receiver.counters["unknown_source"] == 2


def test_receiver_reregistration_and_guarded_unregister() -> None:
    receiver = RtpReceiver()
    old: list[RtpPacket] = []
    new: list[RtpPacket] = []
    receiver.register(ASTERISK_A, old.append)
    receiver.register(ASTERISK_A, new.append)  # Asterisk reused the port for a new entry
    receiver.unregister(ASTERISK_A, old.append)  # the old entry cleans up late: no effect
    receiver.datagram_received(rtp(1), ASTERISK_A)
    assert (len(old), len(new)) == (0, 1)
    receiver.unregister(ASTERISK_A, new.append)
    receiver.datagram_received(rtp(2), ASTERISK_A)
    assert len(new) == 1


def test_receiver_wildcard_announced_host_matches_port() -> None:
    receiver = RtpReceiver()
    got: list[RtpPacket] = []
    receiver.register(("0.0.0.0", 10_010), got.append)
    receiver.datagram_received(rtp(1), ("127.0.0.1", 10_010))
    receiver.datagram_received(rtp(2), ("127.0.0.1", 10_012))
    assert [p.sequence for p in got] == [1]
    receiver.unregister(("0.0.0.0", 10_010))
    receiver.datagram_received(rtp(3), ("127.0.0.1", 10_010))
    assert len(got) == 1


def test_receiver_warns_about_unknown_sources_at_most_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    receiver = RtpReceiver(clock=clock)
    caplog.set_level(logging.WARNING, logger="ari_app.speech.rtp")
    for i in range(500):
        receiver.datagram_received(rtp(i), ASTERISK_A)
        clock.now += 0.02
    receiver.datagram_received(rtp(1), ASTERISK_B)
    assert receiver.counters["unknown_source"] == 501
    assert len(caplog.records) == 2  # one per source
    clock.now += 60
    receiver.datagram_received(rtp(1), ASTERISK_A)
    assert len(caplog.records) == 3
    assert "10002" in caplog.records[-1].getMessage()


def test_receiver_survives_a_raising_sink(caplog: pytest.LogCaptureFixture) -> None:
    receiver = RtpReceiver()
    good: list[RtpPacket] = []

    def broken(packet: RtpPacket) -> None:
        raise RuntimeError("sink bug")

    receiver.register(ASTERISK_A, broken)
    receiver.register(ASTERISK_B, good.append)
    caplog.set_level(logging.ERROR, logger="ari_app.speech.rtp")
    for i in range(50):
        receiver.datagram_received(rtp(i), ASTERISK_A)
        receiver.datagram_received(rtp(i), ASTERISK_B)
    assert len(good) == 50
    assert receiver.counters["sink_error"] == 50
    assert receiver.counters["accepted"] == 100
    assert len(caplog.records) == 1  # logged once, with the traceback
    assert caplog.records[0].exc_info is not None


# --- RtpReceiver on a real socket ----------------------------------------------------------------


class Collector:
    def __init__(self, expected: int) -> None:
        self.packets: list[RtpPacket] = []
        self.expected = expected
        self.done = asyncio.Event()

    def __call__(self, packet: RtpPacket) -> None:
        self.packets.append(packet)
        if len(self.packets) >= self.expected:
            self.done.set()


async def test_receiver_routes_real_udp_datagrams_by_source_port() -> None:
    receiver = await RtpReceiver.listen("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    senders: list[asyncio.DatagramTransport] = []
    try:
        host, port = receiver.address
        assert host == "127.0.0.1" and port > 0
        for _ in range(3):
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), remote_addr=(host, port)
            )
            senders.append(transport)
        sources = [transport.get_extra_info("sockname")[:2] for transport in senders]
        first, second = Collector(20), Collector(20)
        receiver.register(sources[0], first)
        receiver.register(sources[1], second)
        for seq in range(20):
            senders[0].sendto(rtp(seq, ssrc=111))
            senders[1].sendto(rtp(seq, ssrc=222))
            senders[2].sendto(rtp(seq, ssrc=333))  # nobody registered this one
        senders[0].sendto(b"\x00" * 5)
        await asyncio.wait_for(asyncio.gather(first.done.wait(), second.done.wait()), 5)
        for _ in range(100):  # the unknown and malformed datagrams arrive in order behind these
            if receiver.counters["unknown_source"] == 20 and receiver.counters["short"] == 1:
                break
            await asyncio.sleep(0.01)
        assert {p.ssrc for p in first.packets} == {111}
        assert {p.ssrc for p in second.packets} == {222}
        assert sorted(p.sequence for p in first.packets) == list(range(20))
        assert receiver.counters["unknown_source"] == 20
        assert receiver.counters["short"] == 1
        assert receiver.counters["accepted"] == 40
    finally:
        for transport in senders:
            transport.close()
        receiver.close()
    with pytest.raises(RuntimeError):
        _ = receiver.address
