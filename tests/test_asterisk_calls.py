"""Every keypad behaviour once more, end to end on the real Asterisk 22 sandbox."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ari_app.ari.events import EVENT_TYPES_USED
from ari_app.server import running_service
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.records import EntryStart
from ari_app.store.repository import Store
from devtools.sandbox import AsteriskSandbox
from tests.asterisk_harness import stored_entry
from tests.conftest import Service, service_settings

pytestmark = pytest.mark.asterisk

QUICK = "prompt=sound:beep"


async def test_keypad_entry_completes_on_the_last_digit(service: Service) -> None:
    call = await service.callers.place_call(f"num_digits=4,label=pin,{QUICK}", "wait:0.5^dtmf:1234")
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits, result.confirmed) == ("completed", "1234", "not_asked")

    entry = await stored_entry(service.store, call.channel_id)
    assert entry.entry_key == result.entry_id
    assert entry.status == "completed"
    assert entry.user_input == "1234"
    assert entry.terminated_by == "max_digits"
    assert entry.label == "pin"
    assert entry.transport == "ari"
    assert entry.channel_name.startswith("Local/sim@caller-sim")
    digits = [e for e in entry.events if e.kind == "digit"]
    assert [(e.digit, e.source) for e in digits] == [(d, "key") for d in "1234"]
    assert all(e.duration_ms and e.duration_ms > 0 for e in digits)
    assert [e.at_ms for e in digits] == sorted(e.at_ms for e in digits)


async def test_asterisk_sends_the_app_only_the_event_types_it_reads(service: Service) -> None:
    client = service.app.client
    assert client is not None
    status, application = await client.get(f"applications/{client.app}", within=5)
    assert status == 200
    assert sorted(e["type"] for e in application["events_allowed"]) == sorted(EVENT_TYPES_USED)
    # ... and an entry still sees everything it needs.
    call = await service.callers.place_call(f"num_digits=2,{QUICK}", "wait:0.5^dtmf:12")
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "12")


async def test_stop_key_ends_the_entry(service: Service) -> None:
    call = await service.callers.place_call(f"max_digits=10,{QUICK}", "wait:0.5^dtmf:123#")
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "123")
    entry = await stored_entry(service.store, call.channel_id)
    assert entry.terminated_by == "stop_key"


async def test_per_digit_timeout_completes_with_min_digits(service: Service) -> None:
    call = await service.callers.place_call(
        f"min_digits=2,max_digits=10,dtmf_input_timeout=1,{QUICK}", "wait:0.5^dtmf:12"
    )
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "12")
    entry = await stored_entry(service.store, call.channel_id)
    assert entry.terminated_by == "timeout"


async def test_no_input_retries_then_succeeds(service: Service) -> None:
    call = await service.callers.place_call(
        f"num_digits=3,no_input_timeout=1,invalid_prompt=sound:beep,{QUICK}", "wait:2.5^dtmf:789"
    )
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "789")
    entry = await stored_entry(service.store, call.channel_id)
    assert entry.attempts == 2
    assert any(e.kind == "attempt" and e.detail == "no_input" for e in entry.events)


async def test_no_input_on_every_attempt_ends_no_input(service: Service) -> None:
    call = await service.callers.place_call(
        f"num_digits=3,no_input_timeout=0.5,max_attempts=2,invalid_prompt=sound:beep,{QUICK}",
        "wait:30",
    )
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("no_input", "")


async def test_confirmation_accepted(service: Service) -> None:
    call = await service.callers.place_call(
        f"num_digits=3,ask_for_confirmation=yes,{QUICK}", "wait:0.5^dtmf:555^wait:0.5^dtmf:1"
    )
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits, result.confirmed) == ("completed", "555", "yes")


async def test_confirmation_rejected_then_re_entered(service: Service) -> None:
    call = await service.callers.place_call(
        f"num_digits=3,ask_for_confirmation=yes,{QUICK}",
        "wait:0.5^dtmf:555^wait:0.5^dtmf:2^wait:0.5^dtmf:556^wait:0.5^dtmf:1",
    )
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits, result.confirmed) == ("completed", "556", "yes")
    entry = await stored_entry(service.store, call.channel_id)
    assert entry.attempts == 2
    assert entry.confirmed == "yes"
    answers = [e.detail for e in entry.events if e.kind == "confirmation"]
    assert answers == ["no (key)", "yes (key)"]


async def test_barge_in_stops_a_long_prompt(service: Service) -> None:
    call = await service.callers.place_call(
        "num_digits=2,prompt=sound:demo-congrats", "wait:1^dtmf:4^wait:2^dtmf:2"
    )
    prompt = f"{call.channel_id}-p1"
    deadline = time.monotonic() + 5
    while not await service.callers.playback_exists(prompt):
        assert time.monotonic() < deadline, "the prompt never started"
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)  # the first key has been pressed by now; the second has not
    assert not await service.callers.playback_exists(prompt), "the prompt is still playing"
    assert await service.callers.channel_exists(call.channel_id)
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "42")


async def test_hangup_mid_entry_stores_the_partial_digits(service: Service) -> None:
    call = await service.callers.place_call(f"num_digits=6,{QUICK}", "wait:0.5^dtmf:123^hangup")
    entry = await stored_entry(service.store, call.channel_id)
    assert entry.status == "hangup"
    assert entry.user_input == "123"
    assert entry.ended_at is not None


async def test_bad_stasis_argument_ends_with_error_and_the_call_continues(service: Service) -> None:
    call = await service.callers.place_call("num_digits=0", "wait:5")
    result = await service.callers.dialplan_result(call)
    assert result.status == "error"
    assert result.digits == ""
    entry = await stored_entry(service.store, call.channel_id)
    assert entry.status == "error"
    assert entry.error is not None and "num_digits" in entry.error
    assert entry.entry_key == result.entry_id


async def test_two_concurrent_calls_do_not_mix_digits(service: Service) -> None:
    first, second = await asyncio.gather(
        service.callers.place_call(f"num_digits=5,{QUICK}", "wait:0.5^dtmf:11111", gap_ms=120),
        service.callers.place_call(f"num_digits=5,{QUICK}", "wait:0.5^dtmf:22222", gap_ms=170),
    )
    a, b = await asyncio.gather(
        service.callers.dialplan_result(first), service.callers.dialplan_result(second)
    )
    assert (a.status, a.digits) == ("completed", "11111")
    assert (b.status, b.digits) == ("completed", "22222")
    assert a.entry_id != b.entry_id


async def test_channel_variables_are_visible_to_the_dialplan(service: Service) -> None:
    call = await service.callers.place_call(f"max_digits=4,{QUICK}", "wait:0.5^dtmf:98#")
    result = await service.callers.dialplan_result(call)
    entry = await stored_entry(service.store, call.channel_id)
    assert result.status == "completed"
    assert result.digits == "98"
    assert result.confirmed == "not_asked"
    assert result.entry_id == entry.entry_key


async def test_sensitive_digits_are_masked_in_storage_and_logs(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    call = await service.callers.place_call(
        f"num_digits=6,sensitive=yes,{QUICK}", "wait:0.5^dtmf:918273"
    )
    result = await service.callers.dialplan_result(call)
    assert result.digits == "918273"  # the dialplan needs the real digits
    entry = await stored_entry(service.store, call.channel_id)
    assert entry.user_input == "****73"
    assert entry.input_hash is not None and len(entry.input_hash) == 64
    assert all(e.digit in (None, "*") for e in entry.events)
    assert "918273" not in caplog.text


async def test_confirmation_key_interrupts_a_long_read_back(service: Service) -> None:
    # The read-back of ten digits lasts about 11 s; the caller presses 1 one second into it.
    placed = time.monotonic()
    call = await service.callers.place_call(
        "num_digits=10,ask_for_confirmation=yes,prompt=sound:beep",
        "wait:0.5^dtmf:4155550123^wait:1^dtmf:1",
    )
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits, result.confirmed) == ("completed", "4155550123", "yes")
    assert time.monotonic() - placed < 9, "the read-back was not interrupted"


async def ari_port_open(asterisk: AsteriskSandbox) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", asterisk.http_port)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    return True


async def test_asterisk_crash_interrupts_entries_and_the_app_reconnects(
    service: Service, asterisk: AsteriskSandbox
) -> None:
    call = await service.callers.place_call(f"num_digits=4,{QUICK}", "wait:0.5^dtmf:12^wait:60")
    async with asyncio.timeout(10):
        while call.channel_id not in service.app.sessions:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # two digits are in
    pid = asterisk.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)  # no hangup events: the websocket just drops
    async with asyncio.timeout(10):
        while await ari_port_open(asterisk):  # the dying process still holds its sockets
            await asyncio.sleep(0.05)
    await asyncio.to_thread(asterisk.start)

    entry = await stored_entry(service.store, call.channel_id)
    assert entry.status == "interrupted"
    assert entry.user_input == "12"

    async with asyncio.timeout(15):
        await service.app.connected.wait()
        while service.app.reconnects < 1:
            await asyncio.sleep(0.05)
    again = await service.callers.place_call(f"num_digits=2,{QUICK}", "wait:0.5^dtmf:77")
    result = await service.callers.dialplan_result(again)
    assert (result.status, result.digits) == ("completed", "77")


async def test_a_ringing_call_is_answered_then_collected(service: Service) -> None:
    call = await service.callers.place_call(
        f"num_digits=3,{QUICK}", "wait:0.5^dtmf:246", answered=False
    )
    result = await service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "246")


async def test_rows_left_in_progress_by_a_crashed_run_are_marked_interrupted(
    asterisk: AsteriskSandbox, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'crashed.sqlite3'}"
    await upgrade_to_head_async(url)
    store = Store.from_url(url)
    try:
        entry_id = await store.start_entry(
            EntryStart(
                "1.1",
                "PJSIP/trunk-1",
                "555",
                None,
                "pin",
                {},
                "ari",
                None,
                datetime.now(UTC),
                False,
            )
        )
        async with running_service(service_settings(asterisk, url), connect_timeout=10):
            entry = await store.get_entry(entry_id)
        assert entry is not None
        assert entry.status == "interrupted"
        assert entry.error == "server restarted"
    finally:
        await store.close()
