"""FastAGI sessions against a scripted Asterisk over a real TCP socket on 127.0.0.1.

The replies are the ones recorded from the sandbox's Asterisk 22 (``200 result=0 endpos=3520``,
``200 result=-1 endpos=0`` for a missing file, ``HANGUP`` then ``511 …`` after a hangup).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from ari_app.agi import AgiConfig, AgiServer, running_agi_server
from ari_app.agi.port import agi_media, agi_quote
from ari_app.agi.server import query_arguments
from ari_app.call import CallSession
from ari_app.engine import Action, Event
from ari_app.entry_key import is_entry_key
from ari_app.media import media_item
from ari_app.settings import parse_agi_port
from ari_app.store.records import EntryOutcome, EntryStart
from devtools.fake_asterisk import DEAD, FakeAsterisk, environment
from devtools.memory_store import MemoryStore

ESC = '"0123456789\\*#ABCD"'  # the escape keys, as a regular expression
POLL = 0.02


@dataclass
class Agi:
    server: AgiServer
    store: MemoryStore
    callers: list[FakeAsterisk] = field(default_factory=list)

    async def caller(self, query: str = "", **env: Any) -> FakeAsterisk:
        assert self.server.address is not None
        caller = FakeAsterisk(*self.server.address)
        self.callers.append(caller)
        return await caller.connect(environment(query=query, **env))

    async def outcome(self, channel_id: str) -> tuple[EntryStart, EntryOutcome | None]:
        await self.server.wait_idle(5)
        return self.store.by_channel(channel_id)


@pytest.fixture
async def agi() -> AsyncIterator[Agi]:
    store = MemoryStore()
    async with running_agi_server(
        AgiConfig(agi_port=0),
        store,
        hash_key="test-hash-key",
        poll_interval=POLL,
        command_timeout=1.0,
        environment_timeout=1.0,
    ) as server:
        harness = Agi(server, store)
        try:
            yield harness
        finally:
            for caller in harness.callers:
                await caller.close()


def no_errors(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


# --- whole entries ----------------------------------------------------------------------------


async def test_keypad_entry_completes_on_the_last_digit(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await agi.caller(
        "num_digits=4&label=pin&prompt=sound:beep", channel_id="1795600000.42"
    )
    transcript = await caller.answer_all("1234", keys_after=0.1)
    assert transcript.commands[:2] == ["ANSWER", 'STREAM FILE beep "0123456789*#ABCD"']
    assert all(c == "WAIT FOR DIGIT 20" for c in transcript.commands[2:-4])
    [entry_key] = agi.store.starts
    assert transcript.commands[-4:] == [
        'SET VARIABLE DIGITS "1234"',
        'SET VARIABLE DIGITS_STATUS "completed"',
        'SET VARIABLE DIGITS_CONFIRMED "not_asked"',
        f'SET VARIABLE DIGITS_ID "{entry_key}"',
    ]
    assert is_entry_key(entry_key)
    assert transcript.closed_by_server

    start, outcome = agi.store.by_channel("1795600000.42")
    assert start.transport == "agi"
    assert start.channel_name == "PJSIP/trunk-00000001"
    assert (start.caller_number, start.caller_name) == ("5551234", "Test Caller")
    assert start.label == "pin"
    assert outcome is not None
    assert (outcome.status, outcome.user_input, outcome.terminated_by) == (
        "completed",
        "1234",
        "max_digits",
    )
    digits = [e for e in outcome.events if e.kind == "digit"]
    assert [(e.digit, e.source, e.duration_ms) for e in digits] == [
        (d, "key", None) for d in "1234"
    ]
    no_errors(caplog)


async def test_a_key_during_the_prompt_stops_it_and_is_kept(agi: Agi) -> None:
    caller = await agi.caller("num_digits=2&prompt=sound:demo-congrats%2Csound:beep")
    await caller.expect("ANSWER", "200 result=0")
    await caller.expect(f"STREAM FILE demo-congrats {ESC}", "200 result=52 endpos=8000")
    # The rest of the prompt list is dropped: the next command listens.
    await caller.expect("WAIT FOR DIGIT 20", "200 result=50")
    await caller.expect('SET VARIABLE DIGITS "42"', "200 result=1")
    await caller.expect('SET VARIABLE DIGITS_STATUS "completed"', "200 result=1")
    await caller.expect("SET VARIABLE DIGITS_CONFIRMED .*", "200 result=1")
    await caller.expect("SET VARIABLE DIGITS_ID .*", "200 result=1")
    await caller.expect_closed()


async def test_the_driver_waits_for_the_session_however_many_turns_it_takes(
    agi: Agi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No loop counting: a session that needs many more event-loop turns to act on a key (ten
    extra awaits before each action) still stops the prompt before the driver's next command,
    because the driver waits for the session's acknowledgement (``drained()``)."""
    execute = CallSession._execute

    async def slow_execute(session: CallSession, action: Action) -> Event | None:
        for _ in range(10):
            await asyncio.sleep(0)
        return await execute(session, action)

    monkeypatch.setattr(CallSession, "_execute", slow_execute)
    caller = await agi.caller("num_digits=2&prompt=sound:demo-congrats%2Csound:beep")
    await caller.expect("ANSWER", "200 result=0")
    await caller.expect(f"STREAM FILE demo-congrats {ESC}", "200 result=52 endpos=8000")
    # Not "STREAM FILE demo-congrats … 8000": the key stopped the prompt.
    await caller.expect("WAIT FOR DIGIT .*", "200 result=50")
    await caller.expect('SET VARIABLE DIGITS "42"', "200 result=1")
    await caller.expect('SET VARIABLE DIGITS_STATUS "completed"', "200 result=1")
    await caller.expect("SET VARIABLE DIGITS_CONFIRMED .*", "200 result=1")
    await caller.expect("SET VARIABLE DIGITS_ID .*", "200 result=1")
    await caller.expect_closed()


async def test_a_key_the_entry_ignores_resumes_the_file_where_it_stopped(agi: Agi) -> None:
    caller = await agi.caller("num_digits=1&ask_for_confirmation=yes&prompt=sound:beep")
    await caller.expect("ANSWER", "200 result=0")
    await caller.expect(f"STREAM FILE beep {ESC}", "200 result=55 endpos=100")  # 7, barge-in
    # The read-back: 5 is no answer to it, so the file goes on from sample 4000.
    await caller.expect(f"STREAM FILE you-entered {ESC}", "200 result=53 endpos=4000")
    await caller.expect(f"STREAM FILE you-entered {ESC} 4000", "200 result=0 endpos=7840")
    await caller.expect(f"STREAM FILE digits/7 {ESC}", "200 result=49 endpos=300")  # 1: yes
    await caller.expect('SET VARIABLE DIGITS "7"', "200 result=1")
    await caller.expect('SET VARIABLE DIGITS_STATUS "completed"', "200 result=1")
    await caller.expect('SET VARIABLE DIGITS_CONFIRMED "yes"', "200 result=1")
    await caller.expect("SET VARIABLE DIGITS_ID .*", "200 result=1")
    await caller.expect_closed()


async def test_the_read_back_plays_digit_files(agi: Agi) -> None:
    caller = await agi.caller(
        "num_digits=3&ask_for_confirmation=yes&confirm_timeout=0.2&prompt=sound:beep"
    )
    transcript = await caller.answer_all("5*5")
    # No key after the entry: the read-back plays through, is repeated once, then gives up.
    read_back = [
        f'STREAM FILE {name} "0123456789*#ABCD"'
        for name in (
            "you-entered",
            "digits/5",
            "digits/star",
            "digits/5",
            "if-correct-press",
            "digits/1",
        )
    ]
    streams = [c for c in transcript.commands if c.startswith("STREAM FILE")]
    assert streams[1:] == read_back + read_back
    assert transcript.variables["DIGITS_STATUS"] == "unconfirmed"
    assert transcript.variables["DIGITS_CONFIRMED"] == "unanswered"


async def test_stop_key_ends_the_entry(agi: Agi) -> None:
    caller = await agi.caller("max_digits=10&prompt=sound:beep", channel_id="c-stop")
    transcript = await caller.answer_all("12#")
    assert (transcript.variables["DIGITS_STATUS"], transcript.variables["DIGITS"]) == (
        "completed",
        "12",
    )
    _, outcome = await agi.outcome("c-stop")
    assert outcome is not None and outcome.terminated_by == "stop_key"


async def test_no_input_plays_the_invalid_prompt_and_asks_again(agi: Agi) -> None:
    caller = await agi.caller(
        "num_digits=3&no_input_timeout=0.2&invalid_prompt=sound:please-try-again&prompt=sound:beep",
        channel_id="c-retry",
    )
    transcript = await caller.answer_all("789", keys_after=0.5)
    streams = [c.split()[2] for c in transcript.commands if c.startswith("STREAM FILE")]
    assert streams[:3] == ["beep", "please-try-again", "beep"]
    assert transcript.variables["DIGITS"] == "789"
    _, outcome = await agi.outcome("c-retry")
    assert outcome is not None and outcome.attempts >= 2
    assert any(e.kind == "attempt" and e.detail == "no_input" for e in outcome.events)


async def test_media_lists_may_continue_in_further_agi_arguments(agi: Agi) -> None:
    caller = await agi.caller("num_digits=1", arguments=["prompt=sound:a", "sound:b", "label=x"])
    await caller.expect("ANSWER", "200 result=0")
    await caller.expect(f"STREAM FILE a {ESC}", "200 result=0 endpos=10")
    await caller.expect(f"STREAM FILE b {ESC}", "200 result=0 endpos=10")
    await caller.expect("WAIT FOR DIGIT 20", "200 result=51")
    await caller.expect('SET VARIABLE DIGITS "3"', "200 result=1")


async def test_a_missing_sound_is_skipped_with_a_log_line(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await agi.caller("num_digits=1&prompt=sound:no-such-file%2Csound:beep")
    await caller.expect("ANSWER", "200 result=0")
    await caller.expect(f"STREAM FILE no-such-file {ESC}", "200 result=-1 endpos=0")
    await caller.expect("CHANNEL STATUS", "200 result=6")  # alive: the file was the problem
    await caller.expect(f"STREAM FILE beep {ESC}", "200 result=0 endpos=3520")
    await caller.expect("WAIT FOR DIGIT 20", "200 result=57")
    await caller.expect('SET VARIABLE DIGITS "9"', "200 result=1")
    assert "could not play sound:no-such-file" in caplog.text


async def test_a_poll_lasts_until_the_next_timer_and_no_longer() -> None:
    """Long polls leave Asterisk few moments between commands (where it drops keys), yet what
    a timer decides still starts at once."""
    async with running_agi_server(
        AgiConfig(agi_port=0), MemoryStore(), hash_key="k", poll_interval=5.0
    ) as server:
        assert server.address is not None
        caller = await FakeAsterisk(*server.address).connect(
            environment(query="num_digits=2&no_input_timeout=0.3&max_attempts=1")
        )
        try:
            await caller.expect("ANSWER", "200 result=0")
            await caller.expect(f"STREAM FILE beep {ESC}", "200 result=0 endpos=3520")
            poll = await caller.expect(r"WAIT FOR DIGIT \d+")
            waited = int(poll.split()[3])
            assert 250 <= waited <= 310, poll  # the no-input timer's 300 ms, not 5 s
            await asyncio.sleep(waited / 1000)
            await caller.send("200 result=0")
            started = time.monotonic()
            await caller.expect('SET VARIABLE DIGITS ""', "200 result=1")
            assert time.monotonic() - started < 0.1
            await caller.expect('SET VARIABLE DIGITS_STATUS "no_input"', "200 result=1")
        finally:
            await caller.close()


# --- hangups: status hangup with the partial digits, never an exception ------------------------


async def test_hangup_mid_entry_stores_the_partial_digits(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await agi.caller("num_digits=6&prompt=sound:beep", channel_id="c-hangup")
    transcript = await caller.answer_all("123", hangup_after_keys=True)
    assert not transcript.variables  # a hung-up channel has no dialplan to return to
    assert transcript.closed_by_server
    _, outcome = await agi.outcome("c-hangup")
    assert outcome is not None
    assert (outcome.status, outcome.user_input) == ("hangup", "123")
    assert not agi.server.sessions
    no_errors(caplog)


async def test_hangup_notice_before_a_reply_is_not_taken_for_the_reply(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    """Asterisk writes HANGUP on its own, then answers the pending command with 511."""
    caller = await agi.caller("num_digits=4&prompt=sound:beep", channel_id="c-notice")
    await caller.expect("ANSWER", "200 result=0")
    await caller.expect(f"STREAM FILE beep {ESC}", "200 result=49 endpos=100")
    await caller.expect("WAIT FOR DIGIT 20", "HANGUP", DEAD)
    await caller.expect_closed()
    _, outcome = await agi.outcome("c-notice")
    assert outcome is not None
    assert (outcome.status, outcome.user_input) == ("hangup", "1")
    no_errors(caplog)


async def test_hangup_during_a_prompt(agi: Agi, caplog: pytest.LogCaptureFixture) -> None:
    caller = await agi.caller("num_digits=4&prompt=sound:demo-congrats", channel_id="c-prompt")
    await caller.expect("ANSWER", "200 result=0")
    await caller.expect(f"STREAM FILE demo-congrats {ESC}", "200 result=-1 endpos=1200", "HANGUP")
    await caller.expect("CHANNEL STATUS", DEAD)  # -1: a hangup or a missing file? a hangup
    await caller.expect_closed()
    _, outcome = await agi.outcome("c-prompt")
    assert outcome is not None and outcome.status == "hangup"
    no_errors(caplog)


async def test_asterisk_closing_the_connection_is_a_hangup(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await agi.caller("num_digits=4&prompt=sound:beep", channel_id="c-eof")
    await caller.expect("ANSWER", "200 result=0")
    await caller.expect(f"STREAM FILE beep {ESC}", "200 result=0 endpos=3520")
    await caller.expect("WAIT FOR DIGIT 20", "200 result=50")
    await caller.close()
    _, outcome = await agi.outcome("c-eof")
    assert outcome is not None
    assert (outcome.status, outcome.user_input) == ("hangup", "2")
    no_errors(caplog)


# --- parameters ---------------------------------------------------------------------------------


async def test_bad_parameters_end_with_error_and_the_dialplan_continues(agi: Agi) -> None:
    caller = await agi.caller("num_digits=0", channel_id="c-bad")
    transcript = await caller.answer_all()
    assert "ANSWER" not in transcript.commands
    assert transcript.variables["DIGITS_STATUS"] == "error"
    assert transcript.variables["DIGITS_ERROR"] == "num_digits must be between 1 and 64, got 0"
    assert transcript.variables["DIGITS_ID"] == next(iter(agi.store.starts))
    assert transcript.closed_by_server  # AGI() returns: the dialplan goes on
    start, outcome = await agi.outcome("c-bad")
    assert outcome is not None and outcome.status == "error"
    assert start.parameters == {"arguments": ["num_digits=0"]}


async def test_sensitive_digits_never_reach_the_log(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    caller = await agi.caller("num_digits=6&sensitive=yes&ask_for_confirmation=yes")
    transcript = await caller.answer_all("9182731")
    assert transcript.variables["DIGITS"] == "918273"
    assert "918273" not in caplog.text
    assert "digits/9" not in caplog.text


async def test_input_speech_without_the_speech_path_is_logged(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await agi.caller("num_digits=1&input=speech&no_input_timeout=0.1&max_attempts=1")
    transcript = await caller.answer_all("1")
    assert transcript.variables["DIGITS_STATUS"] == "no_input"
    assert "input=speech over FastAGI without the speech path" in caplog.text


# --- lifecycle ----------------------------------------------------------------------------------


async def test_shutdown_interrupts_entries_and_returns_them_to_the_dialplan() -> None:
    store = MemoryStore()
    async with running_agi_server(
        AgiConfig(agi_port=0), store, hash_key="k", poll_interval=POLL
    ) as server:
        assert server.address is not None
        caller = await FakeAsterisk(*server.address).connect(
            environment(query="num_digits=4&prompt=sound:beep", channel_id="c-down")
        )
        answering = asyncio.create_task(caller.answer_all("12", within=10))
        while not store.starts or len([1 for _ in server.sessions]) == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
    transcript = await answering
    assert transcript.variables["DIGITS_STATUS"] == "interrupted"
    assert transcript.variables["DIGITS"] == "12"
    assert transcript.closed_by_server
    _, outcome = store.by_channel("c-down")
    assert outcome is not None and outcome.status == "interrupted"


async def test_the_session_hook_sees_every_session() -> None:
    seen: list[CallSession] = []
    async with running_agi_server(
        AgiConfig(agi_port=0), MemoryStore(), hash_key="k", on_session=seen.append
    ) as server:
        assert server.address is not None
        caller = await FakeAsterisk(*server.address).connect(
            environment(query="num_digits=1", channel_id="c-hook")
        )
        await caller.answer_all("5")
    assert [s.info.channel_id for s in seen] == ["c-hook"]
    assert seen[0].info.transport == "agi"


async def test_the_server_is_off_without_a_port() -> None:
    @dataclass(frozen=True)
    class Settings:
        agi_host: str = "127.0.0.1"
        agi_port: int | None = None

    async with running_agi_server(Settings(), MemoryStore(), hash_key="k") as server:
        assert server.address is None


# --- pure helpers -------------------------------------------------------------------------------


def test_query_arguments_decode_like_stasis_arguments() -> None:
    assert query_arguments("num_digits=4&label=pin") == ["num_digits=4", "label=pin"]
    assert query_arguments("prompt=sound:a%2Csound:b&&x") == ["prompt=sound:a,sound:b", "x"]
    assert query_arguments("validate=^4[0-9]+$") == ["validate=^4[0-9]+$"]  # + stays +
    assert query_arguments("label=a%0Ab") == ["label=a\nb"]
    assert query_arguments("") == []


def test_agi_port_setting() -> None:
    assert parse_agi_port("") is None
    assert parse_agi_port("off") is None
    assert parse_agi_port("4573") == 4573
    assert parse_agi_port("0") == 0
    with pytest.raises(ValueError, match="AGI_PORT"):
        parse_agi_port("agi")
    with pytest.raises(ValueError, match="between"):
        parse_agi_port("70000")


def test_media_uris_map_to_agi_commands(caplog: pytest.LogCaptureFixture) -> None:
    uris = [
        "sound:beep",
        "digits:1*#A",
        "number:42",
        "characters:ab",
        "tone:ring",
        "recording:greeting",
        'sound:a"b',
    ]
    items = agi_media([media_item(uri) for uri in uris], label="c1")
    assert [(i.command, i.resumable) for i in items] == [
        ("STREAM FILE beep", True),
        ("STREAM FILE digits/1", True),
        ("STREAM FILE digits/star", True),
        ("STREAM FILE digits/pound", True),
        ("STREAM FILE letters/a", True),
        ("SAY NUMBER 42", False),
        ("SAY ALPHA ab", False),
    ]
    skipped = [
        r.getMessage() for r in caplog.records if "cannot be played over AGI" in r.getMessage()
    ]
    assert len(skipped) == 3
    assert all("digits:1" not in message for message in skipped)


def test_agi_quote_keeps_values_on_one_argument() -> None:
    assert agi_quote("1234") == '"1234"'
    assert agi_quote('say "hi"\\') == '"say \\"hi\\"\\\\"'
    assert agi_quote("a\nb\rc") == '"a b c"'


async def test_caller_id_is_stored_within_the_columns(agi: Agi) -> None:
    caller = await agi.caller(
        "num_digits=1",
        channel_id="c-long",
        caller_number="9" * 200,
        caller_name="x" * 400,
        channel="PJSIP/" + "y" * 400,
    )
    await caller.answer_all("1")
    start, _ = await agi.outcome("c-long")
    assert start.caller_number == "9" * 80
    assert start.caller_name is not None and len(start.caller_name) == 255
    assert len(start.channel_name) == 255
    unknown = await agi.caller("num_digits=1", channel_id="c-unknown", caller_number="unknown")
    await unknown.answer_all("1")
    start, _ = await agi.outcome("c-unknown")
    assert start.caller_number is None
