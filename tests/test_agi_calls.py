"""The FastAGI entry point end to end on the real Asterisk 22 sandbox: the Stasis behaviours again.

A simulated call's ``;1`` half runs ``agi-test,collect`` (``asterisk_conf/extensions.conf``):
``AGI(agi://127.0.0.1:${AGI_TEST_PORT}/${AGI_SCRIPT}?${AGI_QUERY})``, then the dialplan copies
``DIGITS*`` into the global ``RESULT_<id>`` and ``AGISTATUS`` into ``AGISTATUS_<id>``, which the
test reads through ARI: proof that the dialplan went on after ``AGI()`` with our variables.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from ari_app.agi import AgiConfig, AgiServer, running_agi_server
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.repository import Store
from devtools.sandbox import AsteriskSandbox
from devtools.simulate import Call, SimulatedCallers
from tests.asterisk_harness import ensure_agi_dialplan, stored_entry

pytestmark = pytest.mark.asterisk

QUICK = "prompt=sound:beep"


@dataclass
class AgiService:
    server: AgiServer
    store: Store
    callers: SimulatedCallers

    async def call(
        self, query: str, script: str, *, agi_script: str = "collect", gap_ms: int | None = None
    ) -> Call:
        assert self.server.address is not None
        return await self.callers.place_agi_call(
            self.server.address[1], query, script, agi_script=agi_script, gap_ms=gap_ms
        )

    async def agi_status(self, call: Call, within: float = 5.0) -> str | None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = await self.callers.global_variable(f"AGISTATUS_{call.test_id}")
            if value is not None:
                return value
            await asyncio.sleep(0.05)
        return None


@pytest.fixture
async def agi_service(asterisk: AsteriskSandbox, database_url: str) -> AsyncIterator[AgiService]:
    """The FastAGI server in-process on a free port, on a fresh database."""
    await asyncio.to_thread(ensure_agi_dialplan, asterisk)
    await upgrade_to_head_async(database_url)
    store = Store.from_url(database_url)
    callers = SimulatedCallers(asterisk.ari_url, asterisk.ari_user, asterisk.ari_password)
    try:
        async with running_agi_server(
            AgiConfig(agi_port=0), store, hash_key="test-hash-key"
        ) as server:
            yield AgiService(server, store, callers)
    finally:
        await callers.close()
        await store.close()


async def test_keypad_entry_over_agi_completes_on_the_last_digit(agi_service: AgiService) -> None:
    call = await agi_service.call(f"num_digits=4&label=pin&{QUICK}", "wait:0.5^dtmf:1234")
    result = await agi_service.callers.dialplan_result(call)
    assert (result.status, result.digits, result.confirmed) == ("completed", "1234", "not_asked")
    assert await agi_service.agi_status(call) == "SUCCESS"  # the dialplan went on after AGI()

    entry = await stored_entry(agi_service.store, call.channel_id)
    assert entry.entry_key == result.entry_id
    assert entry.status == "completed"
    assert entry.user_input == "1234"
    assert entry.terminated_by == "max_digits"
    assert entry.label == "pin"
    assert entry.transport == "agi"
    assert entry.channel_name.startswith("Local/sim@caller-sim")
    digits = [e for e in entry.events if e.kind == "digit"]
    assert [(e.digit, e.source, e.duration_ms) for e in digits] == [
        (d, "key", None)
        for d in "1234"  # AGI reports no key durations
    ]


async def test_stop_key_ends_the_entry(agi_service: AgiService) -> None:
    call = await agi_service.call(f"max_digits=10&{QUICK}", "wait:0.5^dtmf:123#")
    result = await agi_service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "123")
    entry = await stored_entry(agi_service.store, call.channel_id)
    assert entry.terminated_by == "stop_key"


async def test_per_digit_timeout_completes_with_min_digits(agi_service: AgiService) -> None:
    call = await agi_service.call(
        f"min_digits=2&max_digits=10&dtmf_input_timeout=1&{QUICK}", "wait:0.5^dtmf:12"
    )
    result = await agi_service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "12")
    entry = await stored_entry(agi_service.store, call.channel_id)
    assert entry.terminated_by == "timeout"


async def test_no_input_retries_then_succeeds(agi_service: AgiService) -> None:
    call = await agi_service.call(
        f"num_digits=3&no_input_timeout=1&invalid_prompt=sound:beep&{QUICK}", "wait:2.5^dtmf:789"
    )
    result = await agi_service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "789")
    entry = await stored_entry(agi_service.store, call.channel_id)
    assert entry.attempts == 2
    assert any(e.kind == "attempt" and e.detail == "no_input" for e in entry.events)


async def test_confirmation_accepted(agi_service: AgiService) -> None:
    call = await agi_service.call(
        f"num_digits=3&ask_for_confirmation=yes&{QUICK}", "wait:0.5^dtmf:555^wait:0.5^dtmf:1"
    )
    result = await agi_service.callers.dialplan_result(call)
    assert (result.status, result.digits, result.confirmed) == ("completed", "555", "yes")


async def test_confirmation_rejected_then_re_entered(agi_service: AgiService) -> None:
    call = await agi_service.call(
        f"num_digits=3&ask_for_confirmation=yes&{QUICK}",
        "wait:0.5^dtmf:555^wait:0.5^dtmf:2^wait:0.5^dtmf:556^wait:0.5^dtmf:1",
    )
    result = await agi_service.callers.dialplan_result(call)
    assert (result.status, result.digits, result.confirmed) == ("completed", "556", "yes")
    entry = await stored_entry(agi_service.store, call.channel_id)
    assert entry.attempts == 2
    answers = [e.detail for e in entry.events if e.kind == "confirmation"]
    assert answers == ["no (key)", "yes (key)"]


async def test_barge_in_stops_a_long_prompt_and_keeps_the_key(agi_service: AgiService) -> None:
    # demo-congrats lasts 30 s; the caller keys 4 one second into it, then 2.
    placed = time.monotonic()
    call = await agi_service.call(
        "num_digits=2&prompt=sound:demo-congrats", "wait:1^dtmf:4^wait:2^dtmf:2"
    )
    result = await agi_service.callers.dialplan_result(call)
    assert (result.status, result.digits) == ("completed", "42")
    assert time.monotonic() - placed < 8, "the prompt was not interrupted"


async def test_hangup_mid_entry_stores_the_partial_digits(
    agi_service: AgiService, caplog: pytest.LogCaptureFixture
) -> None:
    call = await agi_service.call(f"num_digits=6&{QUICK}", "wait:0.5^dtmf:123^hangup")
    entry = await stored_entry(agi_service.store, call.channel_id)
    assert entry.status == "hangup"
    assert entry.user_input == "123"
    assert entry.ended_at is not None
    await agi_service.server.wait_idle(5)
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


async def test_bad_parameters_end_with_error_and_the_dialplan_continues(
    agi_service: AgiService,
) -> None:
    call = await agi_service.call("num_digits=0", "wait:5")
    result = await agi_service.callers.dialplan_result(call)
    assert result.status == "error"
    assert result.digits == ""
    assert await agi_service.agi_status(call) == "SUCCESS"
    entry = await stored_entry(agi_service.store, call.channel_id)
    assert entry.status == "error"
    assert entry.transport == "agi"
    assert entry.error is not None and "num_digits" in entry.error
    assert entry.entry_key == result.entry_id


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("num_digits=4&colour=blue", "unknown parameter 'colour'"),
        ("num_digits=4\nlabel=pin", "num_digits must be a whole number"),  # a raw line break
        ("num_digits=4&label=a%0Ab", "label must be"),
    ],
)
async def test_bad_query_strings_end_with_error(
    agi_service: AgiService, query: str, error: str
) -> None:
    call = await agi_service.call(query, "wait:5")
    result = await agi_service.callers.dialplan_result(call)
    assert result.status == "error"
    entry = await stored_entry(agi_service.store, call.channel_id)
    assert entry.error is not None and entry.error.startswith(error)


async def test_an_unknown_script_sets_error_for_the_dialplan(agi_service: AgiService) -> None:
    call = await agi_service.call("num_digits=4", "wait:5", agi_script="nosuch")
    result = await agi_service.callers.dialplan_result(call)
    assert (result.status, result.digits, result.entry_id) == ("error", "", "")
    assert await agi_service.agi_status(call) == "SUCCESS"


async def test_two_concurrent_calls_do_not_mix_digits(agi_service: AgiService) -> None:
    first, second = await asyncio.gather(
        agi_service.call(f"num_digits=5&{QUICK}", "wait:0.5^dtmf:11111", gap_ms=120),
        agi_service.call(f"num_digits=5&{QUICK}", "wait:0.5^dtmf:22222", gap_ms=170),
    )
    a, b = await asyncio.gather(
        agi_service.callers.dialplan_result(first), agi_service.callers.dialplan_result(second)
    )
    assert (a.status, a.digits) == ("completed", "11111")
    assert (b.status, b.digits) == ("completed", "22222")
    assert a.entry_id != b.entry_id


async def test_thirty_callers_at_once_lose_no_key(agi_service: AgiService) -> None:
    """Asterisk drops a key arriving between two AGI commands: polls must leave few such gaps."""
    keyed = ["".join(random.choice("0123456789") for _ in range(4)) for _ in range(30)]
    calls = await asyncio.gather(
        *(
            agi_service.call(f"num_digits=4&max_attempts=1&{QUICK}", f"wait:0.5^dtmf:{keys}")
            for keys in keyed
        )
    )
    results = await asyncio.gather(*(agi_service.callers.dialplan_result(c) for c in calls))
    assert [(r.status, r.digits) for r in results] == [("completed", k) for k in keyed]


async def test_sensitive_digits_are_masked_in_storage_and_logs(
    agi_service: AgiService, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    call = await agi_service.call(f"num_digits=6&sensitive=yes&{QUICK}", "wait:0.5^dtmf:918273")
    result = await agi_service.callers.dialplan_result(call)
    assert result.digits == "918273"  # the dialplan needs the real digits
    entry = await stored_entry(agi_service.store, call.channel_id)
    assert entry.user_input == "****73"
    assert entry.input_hash is not None and len(entry.input_hash) == 64
    assert all(e.digit in (None, "*") for e in entry.events)
    assert "918273" not in caplog.text


async def test_the_production_example_is_in_the_dialplan(asterisk: AsteriskSandbox) -> None:
    await asyncio.to_thread(ensure_agi_dialplan, asterisk)
    shown = await asyncio.to_thread(asterisk.cli, "dialplan show from-trunk-agi")
    assert "AGI(agi://127.0.0.1:4573/collect?num_digits=10&ask_for_confirmation=yes" in shown
