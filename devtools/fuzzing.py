"""Fuzzers for every input the server takes from outside, shared by the CI tests (small seeded
counts, ``tests/test_fuzz.py``) and ``bench/fuzz.py`` (the full counts of issue #11).

Each runs generated input through the real code path and returns a :class:`FuzzReport`:

- ``stasis_arguments``: Stasis argument lists and AGI query strings through ``split_arguments``,
  ``parse_params`` and ``DigitCollector.from_arguments``; every case either parses or ends as an
  ``error`` entry with a message.
- ``ari_events``: ARI event dicts (missing fields, wrong types, unknown channels, reordered,
  duplicated), a fifth as websocket text (some cut short or too deeply nested) through the
  client's decoding, then through :meth:`AriApplication.dispatch` and the session runner, with
  a no-op port.
- ``rtp``: junk and valid datagrams over real UDP on 127.0.0.1, from the registered source and
  from others, through :class:`RtpReceiver` into an :class:`AudioAssembler`.
- ``fastagi``: garbage sessions (random bytes, truncated environments, bad fields, garbage
  replies to commands) against the real FastAGI server on 127.0.0.1.

A crash is an exception that escapes into the harness, or any log record carrying a traceback
(the product logs unexpected exceptions with ``log.exception``), or an exception the event loop
saw in a task nobody awaited. ``logged`` counts cases that left a WARNING or ERROR line: bad
input must be visible in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ari_app.agi import AgiConfig, running_agi_server
from ari_app.agi.server import query_arguments
from ari_app.ari.app import AriApplication
from ari_app.ari.client import decode_event
from ari_app.ari.events import MalformedEvent, parse_event
from ari_app.engine import DigitCollector, Finish, Start
from ari_app.media import MediaItem
from ari_app.params import PARAMETER_NAMES
from ari_app.ports import CallPort
from ari_app.settings import Settings
from ari_app.speech.rtp import RTP_ERROR_REASONS, AudioAssembler, RtpPacket, RtpReceiver
from ari_app.vocabulary import Status
from devtools.fake_asterisk import environment
from devtools.memory_store import MemoryStore

MAX_EXAMPLES = 5


@dataclass
class FuzzReport:
    name: str
    cases: int = 0
    crashes: int = 0
    logged: int = 0  # cases that left a WARNING or ERROR line
    detail: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)  # the first crashes, described

    def crash(self, description: str) -> None:
        self.crashes += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(description[:500])

    def count(self, key: str, n: int = 1) -> None:
        self.detail[key] = self.detail.get(key, 0) + n

    def line(self) -> str:
        details = ", ".join(f"{key} {value}" for key, value in sorted(self.detail.items()))
        return (
            f"{self.name:<17} {self.cases:>7} cases  {self.crashes} crashes  "
            f"{self.logged} with a logged error  ({details})"
        )


class LogWatch(logging.Handler):
    """Counts WARNING+ records, and collects the ones with a traceback (crashes)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.warnings = 0
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.warnings += 1
        if record.exc_info is not None and record.exc_info[0] is not None:
            self.tracebacks.append(f"{record.name}: {record.getMessage()} ({record.exc_info[1]!r})")

    def take(self) -> tuple[int, list[str]]:
        """Counts since the last call."""
        warnings, tracebacks = self.warnings, self.tracebacks
        self.warnings, self.tracebacks = 0, []
        return warnings, tracebacks


@contextlib.contextmanager
def watching_logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    root = logging.getLogger()
    root.addHandler(watch)
    try:
        yield watch
    finally:
        root.removeHandler(watch)


@contextlib.contextmanager
def loop_errors(report: FuzzReport) -> Iterator[None]:
    """Exceptions the event loop reports (a task's, never awaited) are crashes too."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        report.crash(f"event loop: {context.get('message')} {context.get('exception')!r}")

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


def _settle(report: FuzzReport, watch: LogWatch, what: str) -> None:
    warnings, tracebacks = watch.take()
    if warnings:
        report.logged += 1
    for traceback in tracebacks:
        report.crash(f"{what}: {traceback}")


# --- values ------------------------------------------------------------------------------------

_GOOD_VALUES = [
    "1", "4", "64", "0.5", "3", "yes", "no", "auto", "none", "#", "*#", "luhn", "dtmf", "both",
    "speech", "sound:beep", "tts:Key your PIN, please", "digits:12", "{digits}", r"\d{4}", "pin",
    "sound:a,sound:b", "tts:Hello,{digits},tts:bye",
]  # fmt: skip
_BAD_VALUES = [
    "", "0", "-1", "65", "1e309", "nan", "inf", "-inf", "1_000", "0x10", " 4 ", "4.0", "१२",
    "yes\n", "\x00", "\x7f", "tts:", "tts:" + "a" * 600, "sound:", "http://evil", "{digits}x",
    r"(\d+)+x", r"(\d)\1", r"(?=1)\d+", "[0-9", "(" * 300, r"\d{1000}{1000}", "a" * 5000,
    "sound:a,,,", ",", "=", "==", "label=x", "ü" * 70, "\ud800", "🙂",
]  # fmt: skip


def random_text(rng: random.Random, limit: int = 40) -> str:
    alphabet = rng.choice(
        [
            "0123456789",
            "abc=,&%#*\\()[]{}+?|^$.",
            "".join(map(chr, range(0, 128))),
            "é😀\u202e\ud800",
        ]
    )
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(limit)))


def random_argument(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.1:
        return random_text(rng)  # not name=value, or a media list's continuation
    name = rng.choice(PARAMETER_NAMES) if roll < 0.9 else random_text(rng, 12)
    value = rng.choice(_GOOD_VALUES if rng.random() < 0.5 else _BAD_VALUES)
    if rng.random() < 0.1:
        value = random_text(rng)
    return f"{name}={value}"


def random_arguments(rng: random.Random) -> list[str]:
    arguments = [random_argument(rng) for _ in range(rng.randrange(6))]
    if arguments and rng.random() < 0.1:
        arguments.append(rng.choice(arguments))  # a parameter given twice
    return arguments


# --- Stasis arguments --------------------------------------------------------------------------


def fuzz_stasis_arguments(count: int, seed: int) -> FuzzReport:
    """Every case parses, or its entry ends at once as ``error`` with a message."""
    rng = random.Random(seed)
    report = FuzzReport("stasis-arguments")
    for _ in range(count):
        form = rng.random()
        arguments: Sequence[str] | Mapping[str, str]
        if form < 0.7:
            arguments = random_arguments(rng)
        elif form < 0.85:  # FastAGI: a query string, percent-escapes and all
            arguments = query_arguments("&".join(random_arguments(rng)) + random_text(rng, 8))
        else:
            arguments = {rng.choice(PARAMETER_NAMES): rng.choice(_BAD_VALUES + _GOOD_VALUES)}
        report.cases += 1
        try:
            collector = DigitCollector.from_arguments(arguments)
            actions = collector.handle(Start(0.0))
        except Exception as exc:
            report.crash(f"{arguments!r}: {exc!r}")
            continue
        if collector.params is not None:
            report.count("parsed")
            continue
        finish = next((a for a in actions if isinstance(a, Finish)), None)
        if finish is None or finish.result.status is not Status.ERROR or not finish.result.error:
            report.crash(f"{arguments!r}: refused without an error entry ({actions!r})")
        else:
            report.count("error")
            report.logged += 1  # the message goes to the entry, the log and DIGITS_ERROR
    return report


# --- ARI events --------------------------------------------------------------------------------


class NullPort:
    """A channel that does everything at once; playbacks end only on PlaybackFinished."""

    def __init__(self, playbacks: list[tuple[str, str]], channel_id: str) -> None:
        self._playbacks = playbacks
        self._channel_id = channel_id

    async def answer(self) -> None:
        pass

    async def play(self, playback_id: str, media: Sequence[MediaItem]) -> None:
        self._playbacks.append((self._channel_id, playback_id))

    async def stop_playback(self, playback_id: str) -> None:
        pass

    async def set_variables(self, variables: Mapping[str, str]) -> None:
        pass

    async def release(self) -> None:
        pass


class FuzzedAriApp(AriApplication):
    def __init__(self, store: MemoryStore) -> None:
        super().__init__(Settings(speech=False, hash_key="fuzz"), store)
        self.playbacks: list[tuple[str, str]] = []

    def port(self, channel_id: str) -> CallPort:
        return NullPort(self.playbacks, channel_id)


def _channel(rng: random.Random, channel_id: str) -> dict[str, Any]:
    return {
        "id": channel_id,
        "name": f"PJSIP/trunk-{channel_id}",
        "state": rng.choice(["Up", "Ring"]),
        "caller": {"name": "", "number": "5551234"},
    }


_WRONG = [None, 0, -1, 1.5, True, "", "x", [], [1], {}, {"id": 5}, "\x00" * 3, "9" * 300]


def _mutate(rng: random.Random, event: dict[str, Any]) -> dict[str, Any]:
    """Drop a field or give it a wrong type, at the top or inside the channel."""
    event = {**event}
    target = event
    if "channel" in event and isinstance(event["channel"], dict) and rng.random() < 0.5:
        target = event["channel"] = {**event["channel"]}
    if not target:
        return event
    key = rng.choice(sorted(target))
    if rng.random() < 0.4:
        del target[key]
    else:
        target[key] = rng.choice(_WRONG)
    return event


def ari_event_stream(rng: random.Random, count: int, channels: int = 8) -> Iterator[dict[str, Any]]:
    ids = [f"fuzz-{rng.randrange(10**9)}.{n}" for n in range(channels)]
    unknown = ["unknown.1", "", "x" * 200]
    recent: list[dict[str, Any]] = []
    for _ in range(count):
        channel_id = rng.choice(ids) if rng.random() < 0.85 else rng.choice(unknown)
        kind = rng.choices(
            ["StasisStart", "ChannelDtmfReceived", "PlaybackFinished", "leave", "other"],
            weights=[2, 10, 4, 1, 1],
        )[0]
        event: dict[str, Any]
        if kind == "StasisStart":
            event = {
                "type": "StasisStart",
                "args": random_arguments(rng) if rng.random() < 0.3 else ["num_digits=3"],
                "channel": _channel(rng, channel_id),
                "asterisk_id": "52:54:00:12:34:56",
            }
        elif kind == "ChannelDtmfReceived":
            event = {
                "type": kind,
                "digit": rng.choice("0123456789*#ABCD") if rng.random() < 0.9 else "x",
                "duration_ms": rng.choice([100, 0, -5, None]),
                "channel": _channel(rng, channel_id),
            }
        elif kind == "PlaybackFinished":  # fuzz_ari_events names real playbacks mostly
            event = {"type": kind, "playback": {"id": "p", "target_uri": f"channel:{channel_id}"}}
        elif kind == "leave":
            leaving = ["ChannelHangupRequest", "StasisEnd", "ChannelDestroyed"]
            event = {"type": rng.choice(leaving), "channel": _channel(rng, channel_id)}
        else:
            event = {"type": rng.choice(["ChannelVarset", "BridgeCreated", ""]), "x": 1}
        roll = rng.random()
        if roll < 0.25:
            event = _mutate(rng, event)
        elif roll < 0.3:
            event["type"] = rng.choice(_WRONG)
        if recent and rng.random() < 0.05:  # duplicated
            yield rng.choice(recent)
        if rng.random() < 0.1 and recent:  # reordered: an older event comes late
            recent.append(event)
            event = recent.pop(rng.randrange(len(recent)))
        recent = [*recent[-20:], event]
        yield event


def websocket_text(rng: random.Random, event: dict[str, Any]) -> str:
    """``event`` as JSON text, or broken: cut short, too deeply nested, not an object."""
    text = json.dumps(event)
    roll = rng.random()
    if roll < 0.6:
        return text
    if roll < 0.75:
        return text[: rng.randrange(len(text))]
    if roll < 0.85:
        depth = rng.choice([10, 1000, 100_000])
        return '{"type": "StasisStart", "args": ' + "[" * depth + "]" * depth + "}"
    return rng.choice(['"StasisStart"', "[]", "null", "1e999", '{"type": 1}', "\ud800"])


async def fuzz_ari_events(count: int, seed: int) -> FuzzReport:
    rng = random.Random(seed)
    report = FuzzReport("ari-events")
    store = MemoryStore()
    app = FuzzedAriApp(store)
    with watching_logs() as watch, loop_errors(report):
        sent = 0
        for generated in ari_event_stream(rng, count):
            # A fifth arrive as websocket text, through the client's decoding (some broken).
            if rng.random() < 0.2:
                try:
                    decoded = decode_event(websocket_text(rng, generated))
                except Exception as exc:
                    report.cases += 1
                    report.crash(f"decode_event: {exc!r}")
                    continue
                if decoded is None:
                    report.cases += 1
                    report.count("undecodable")
                    _settle(report, watch, "websocket text")
                    continue
                generated = decoded
            event = generated
            # Real playback ids, so that PlaybackFinished moves entries on.
            if event.get("type") == "PlaybackFinished" and app.playbacks and rng.random() < 0.8:
                channel_id, playback_id = rng.choice(app.playbacks)
                event = {
                    "type": "PlaybackFinished",
                    "playback": {"id": playback_id, "target_uri": f"channel:{channel_id}"},
                }
            report.cases += 1
            try:
                parse_event(event)
                malformed = False
            except MalformedEvent:
                malformed = True
                report.count("malformed")
            except Exception as exc:
                report.crash(f"parse_event({event!r}): {exc!r}")
                continue
            before = watch.warnings
            try:
                app.dispatch(event)
            except Exception as exc:
                report.crash(f"{event!r}: {exc!r}")
            if malformed and watch.warnings == before:
                report.crash(f"a malformed event was dropped without a logged error: {event!r}")
            sent += 1
            if sent % 20 == 0:
                await asyncio.sleep(0)  # let the sessions run, as the websocket reader would
            _settle(report, watch, repr(event)[:200])
        for channel_id in list(app.sessions):  # every caller hangs up at last
            app.dispatch({"type": "StasisEnd", "channel": _channel(rng, channel_id)})
        await app.wait_idle(within=10)
        _settle(report, watch, "end")
    report.count("entries", len(store.starts))
    unfinished = set(store.starts) - set(store.outcomes)
    if unfinished:
        report.crash(f"{len(unfinished)} entries never finished")
    return report


# --- RTP ---------------------------------------------------------------------------------------


def rtp_datagram(rng: random.Random, sequence: int) -> bytes:
    roll = rng.random()
    if roll < 0.3:  # a good slin16 packet
        header = struct.pack("!BBHII", 0x80, 118, sequence & 0xFFFF, sequence * 320, 1234)
        return header + bytes(rng.randrange(256) for _ in range(640))
    if roll < 0.6:  # a header with random flags, sizes and payload type
        first = rng.randrange(256)
        second = rng.choice([118, rng.randrange(256)])
        header = struct.pack("!BBHII", first, second, rng.randrange(65536), 0, rng.randrange(3))
        return header + rng.randbytes(rng.randrange(0, 80))
    return rng.randbytes(rng.randrange(0, 1500))


async def fuzz_rtp(count: int, seed: int) -> FuzzReport:
    """Datagrams from the registered source and from others, over real UDP on loopback."""
    rng = random.Random(seed)
    report = FuzzReport("rtp-datagrams")
    receiver = await RtpReceiver.listen("127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    assembler = AudioAssembler()
    frames = 0

    def sink(packet: RtpPacket) -> None:
        nonlocal frames
        frames += len(assembler.push(packet))

    senders: list[asyncio.DatagramTransport] = []
    try:
        for _ in range(4):
            transport, _protocol = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), remote_addr=receiver.address
            )
            senders.append(transport)
        right = senders[0].get_extra_info("sockname")
        receiver.register((str(right[0]), int(right[1])), sink)
        with watching_logs() as watch, loop_errors(report):
            for sequence in range(count):
                sender = senders[0] if rng.random() < 0.7 else rng.choice(senders[1:])
                sender.sendto(rtp_datagram(rng, sequence))
                report.cases += 1
                if sequence % 64 == 63:  # let the receiver drain; loopback drops nothing then
                    await asyncio.sleep(0.001)
            await asyncio.sleep(0.2)
            warnings, tracebacks = watch.take()
            report.logged = warnings
            for traceback in tracebacks:
                report.crash(traceback)
    finally:
        for transport in senders:
            transport.close()
        receiver.close()
    for key in ("accepted", "unknown_source", "sink_error"):
        report.count(key, receiver.counters[key])
    report.count("malformed", sum(receiver.counters[key] for key in RTP_ERROR_REASONS))
    report.count("received", sum(receiver.counters.values()) - receiver.counters["socket_error"])
    report.count("frames", frames)
    if receiver.counters["sink_error"]:
        report.crash(f"the assembler raised {receiver.counters['sink_error']} times")
    return report


# --- FastAGI -----------------------------------------------------------------------------------


def _garbage_reply(rng: random.Random) -> bytes:
    return rng.choice(
        [
            rng.randbytes(rng.randrange(1, 64)) + b"\n",
            b"200 result=\n",
            b"200 result=abc\n",
            b"510 Invalid or unknown command\n",
            b"520-Invalid command syntax.  Proper usage follows:\n",
            b"200 result=-1\n",
            b"200 result=49 (timeout) endpos=x\n",
            b"HANGUP\n",
            b"\xff\xfe\n",
            b"",
        ]
    )


def agi_session(rng: random.Random) -> tuple[str, bytes, bool]:
    """(kind, first bytes, whether to answer commands with garbage afterwards)."""
    query = "&".join(random_arguments(rng)) if rng.random() < 0.3 else "num_digits=2"
    # A socket carries bytes: lone surrogates cannot be sent (not-utf8 sends raw bad bytes).
    env = environment(query=query.encode("utf-8", "replace").decode())
    kind = rng.choice(["random", "truncated", "bad-field", "bad-replies", "not-utf8", "huge"])
    if kind == "random":
        return kind, rng.randbytes(rng.randrange(1, 600)), False
    if kind == "truncated":
        return kind, env[: rng.randrange(1, len(env))], False
    if kind == "bad-field":
        lines = env.split(b"\n")
        index = rng.randrange(len(lines) - 2)
        lines[index] = rng.choice(
            [b"", b"agi_uniqueid:", b"agi_network_script: nope", b"garbage", lines[index] * 2]
        )
        return kind, b"\n".join(lines), False
    if kind == "not-utf8":
        return kind, env.replace(b"PJSIP", b"PJ\xffSIP"), False
    if kind == "huge":
        return kind, b"agi_x: " + b"y" * 70000 + b"\n\n", False
    return kind, env, True


async def _play_agi_session(
    rng: random.Random, address: tuple[str, int], first: bytes, garbage: bool
) -> None:
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(first)
        await writer.drain()
        if garbage:
            for _ in range(rng.randrange(1, 12)):
                async with asyncio.timeout(2):
                    line = await reader.readline()
                if not line:
                    break
                writer.write(_garbage_reply(rng))
                await writer.drain()
        else:
            writer.write_eof()
        async with asyncio.timeout(2):
            while await reader.read(4096):
                pass
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def fuzz_fastagi(count: int, seed: int, concurrency: int = 20) -> FuzzReport:
    rng = random.Random(seed)
    report = FuzzReport("fastagi-sessions")
    store = MemoryStore()
    async with running_agi_server(
        AgiConfig("127.0.0.1", 0),
        store,
        hash_key="fuzz",
        command_timeout=1.0,
        playback_timeout=1.0,
        environment_timeout=1.0,
        poll_interval=0.01,
    ) as server:
        address = server.address
        assert address is not None
        with watching_logs() as watch, loop_errors(report):
            for start in range(0, count, concurrency):
                batch = [agi_session(rng) for _ in range(min(concurrency, count - start))]
                for kind, _first, _garbage in batch:
                    report.count(kind)
                outcomes = await asyncio.gather(
                    *(_play_agi_session(rng, address, first, g) for _k, first, g in batch),
                    return_exceptions=True,
                )
                for outcome in outcomes:
                    if isinstance(outcome, BaseException):
                        report.crash(f"the fake peer failed: {outcome!r}")
                report.cases += len(batch)
                await server.wait_idle(within=10)
                warnings, tracebacks = watch.take()
                report.logged += min(warnings, len(batch))
                for traceback in tracebacks:
                    report.crash(traceback)
        report.count("entries", len(store.starts))
        unfinished = set(store.starts) - set(store.outcomes)
        if unfinished:
            report.crash(f"{len(unfinished)} entries never finished")
    return report
