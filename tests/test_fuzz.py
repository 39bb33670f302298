"""Fuzzing every outside input, at small seeded counts (``bench/fuzz.py`` runs the full counts of
issue #11), and the crashes fuzzing found, each pinned by a regression test."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ari_app.ari.app import AriApplication
from ari_app.ari.client import decode_event
from ari_app.ari.events import (
    MAX_ASTERISK_ID,
    MAX_CALLER_NUMBER,
    MAX_CHANNEL_NAME,
    MalformedEvent,
    StasisStarted,
    parse_event,
)
from ari_app.engine import DigitCollector, Finish, Start
from ari_app.settings import Settings
from ari_app.speech.rtp import RtpPacket, RtpReceiver
from ari_app.vocabulary import Status
from devtools.fuzzing import (
    FuzzReport,
    fuzz_ari_events,
    fuzz_fastagi,
    fuzz_rtp,
    fuzz_stasis_arguments,
)
from devtools.memory_store import MemoryStore

SEED = 20261203


def assert_clean(report: FuzzReport, *, cases: int) -> None:
    assert report.cases >= cases, report.line()
    assert report.crashes == 0, "\n".join([report.line(), *report.examples])


def test_stasis_arguments_parse_or_end_as_error() -> None:
    report = fuzz_stasis_arguments(5_000, SEED)
    assert_clean(report, cases=5_000)
    assert report.detail["parsed"] > 100 and report.detail["error"] > 100, report.line()


async def test_ari_events_never_crash_routing_and_malformed_ones_are_logged() -> None:
    report = await fuzz_ari_events(2_000, SEED)
    assert_clean(report, cases=2_000)
    assert report.detail["malformed"] > 100 and report.detail["entries"] > 10, report.line()


@pytest.mark.timeout(120)
async def test_junk_rtp_from_right_and_wrong_sources() -> None:
    report = await fuzz_rtp(5_000, SEED)
    assert_clean(report, cases=5_000)
    for counter in ("accepted", "unknown_source", "malformed", "frames"):
        assert report.detail[counter] > 0, report.line()
    assert report.logged > 0


@pytest.mark.timeout(120)
async def test_garbage_fastagi_sessions_are_refused_or_end_cleanly() -> None:
    report = await fuzz_fastagi(100, SEED)
    assert_clean(report, cases=100)
    assert report.logged == report.cases, "every garbage session leaves a logged error"
    assert report.detail["entries"] > 0, report.line()


# --- crashes found by fuzzing ---------------------------------------------------------------------

CHANNEL: dict[str, Any] = {"id": "c1", "name": "PJSIP/a-1", "state": "Up", "caller": {}}


@pytest.mark.parametrize("kind", [[], {}, None, 5])
def test_an_event_type_that_is_not_a_string_is_malformed(
    kind: object, caplog: pytest.LogCaptureFixture
) -> None:
    # A list type used to raise TypeError (unhashable) out of dispatch.
    with pytest.raises(MalformedEvent):
        parse_event({"type": kind, "channel": CHANNEL})
    AriApplication(Settings(), MemoryStore()).dispatch({"type": kind})
    assert "dropped a malformed ARI event" in caplog.text


def test_channel_fields_are_cut_to_what_the_entries_table_holds() -> None:
    # Longer values made PostgreSQL refuse the entry's row: the caller's answer was lost.
    event = parse_event(
        {
            "type": "StasisStart",
            "args": [],
            "asterisk_id": "a" * 500,
            "channel": {**CHANNEL, "name": "n" * 500, "caller": {"number": "5" * 500}},
        }
    )
    assert isinstance(event, StasisStarted)
    assert len(event.channel.name) == MAX_CHANNEL_NAME
    assert event.channel.caller_number == "5" * MAX_CALLER_NUMBER
    assert event.asterisk_id == "a" * MAX_ASTERISK_ID
    with pytest.raises(MalformedEvent, match="channel id longer than 128"):
        parse_event({"type": "StasisEnd", "channel": {**CHANNEL, "id": "x" * 129}})


@pytest.mark.parametrize("argument", ["validate=\ud800", "prompt=tts:\udcff", "label=a\ud800"])
def test_a_lone_surrogate_is_a_parameter_error(argument: str) -> None:
    # JSON's "\ud800" escape decodes to one; RE2 raised UnicodeEncodeError on it.
    collector = DigitCollector.from_arguments([argument])
    finish = next(a for a in collector.handle(Start(0.0)) if isinstance(a, Finish))
    assert finish.result.status is Status.ERROR
    assert finish.result.error is not None and "lone surrogate" in finish.result.error


async def test_malformed_rtp_from_a_registered_source_is_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    packets: list[RtpPacket] = []
    receiver = RtpReceiver(clock=lambda: 0.0)
    receiver.register(("127.0.0.1", 5000), packets.append)
    for _ in range(3):
        receiver.datagram_received(b"\x00" * 20, ("127.0.0.1", 5000))
    assert receiver.counters["version"] == 3 and packets == []
    warnings = [r for r in caplog.records if "malformed RTP" in r.getMessage()]
    assert len(warnings) == 1
    assert "127.0.0.1:5000 (version" in warnings[0].getMessage()


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, "{", "[]", '{"type": 5}'])
def test_a_websocket_message_that_is_no_event_is_dropped_with_a_log_line(
    text: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Deep nesting raised RecursionError out of the reader: the connection dropped and every
    # call in progress waited for the reconnect.
    assert decode_event(text) is None
    assert "dropped an ARI message" in caplog.text
