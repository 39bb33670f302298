"""Structured logs: every line a call's task logs carries the call (entry id, channel id,
transport, label) as JSON fields or a text prefix, over ARI and FastAGI, on real Asterisk too;
and sensitive digits never appear in clear, in the new fields or anywhere else."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from ari_app.agi import AgiConfig, running_agi_server
from ari_app.ari.app import AriApplication
from ari_app.logcontext import CallContextFilter, CallLogContext, current_call, enter_call
from ari_app.server import JsonFormatter, configure_logging
from ari_app.settings import Settings
from devtools.fake_asterisk import FakeAsterisk, environment
from devtools.memory_store import MemoryStore
from tests.conftest import Service
from tests.test_ari_adapter import STASIS_START
from tests.test_metrics import AlwaysAnsweringAri, keyed

SECRET = "918273"
QUICK = "prompt=sound:beep"
log = logging.getLogger("tests.test_logging")


@contextlib.contextmanager
def logging_to_buffer(mode: str) -> Iterator[io.StringIO]:
    """The service's own log set-up (``configure_logging``, ``mode`` json or text) at DEBUG,
    written to a buffer; the test run's handlers come back afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging(Settings(log_json=mode == "json", log_level="DEBUG"))
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    buffer = io.StringIO()
    handler.setStream(buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


@pytest.fixture(params=["json", "text"])
def service_log(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    with logging_to_buffer(request.param) as buffer:
        yield request.param, buffer


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("t", logging.INFO, __file__, 1, message, None, None)


# --------------------------------------------------------------------------- the filter


def test_a_record_outside_a_call_has_no_context() -> None:
    entry = record("idle")
    assert CallContextFilter().filter(entry)
    assert (entry.entry_id, entry.channel_id, entry.transport, entry.label) == (None,) * 4
    assert entry.call_prefix == ""
    assert set(json.loads(JsonFormatter().format(entry))) == {"time", "level", "logger", "message"}


def test_a_record_in_a_call_carries_it_and_the_entry_id_once_known() -> None:
    context = CallLogContext(channel_id="1795600000.7", transport="agi", label="pin")

    def in_the_call() -> tuple[logging.LogRecord, logging.LogRecord]:
        enter_call(context)
        before = record("started")
        CallContextFilter().filter(before)
        context.entry_id = 12  # the row task stored the entry meanwhile
        after = record("stored")
        CallContextFilter().filter(after)
        return before, after

    before, after = contextvars.copy_context().run(in_the_call)
    assert current_call() is None  # entered in the copy only
    assert before.call_prefix == "[agi 1795600000.7 pin] "
    assert after.call_prefix == "[entry 12 agi 1795600000.7 pin] "
    assert json.loads(JsonFormatter().format(after)) | {"time": "-"} == {
        "time": "-",
        "level": "INFO",
        "logger": "t",
        "message": "stored",
        "entry_id": 12,
        "channel_id": "1795600000.7",
        "transport": "agi",
        "label": "pin",
    }


# --------------------------------------------------------------------------- whole calls


async def test_an_ari_call_logs_with_its_context(
    service_log: tuple[str, io.StringIO],
) -> None:
    mode, buffer = service_log
    store = MemoryStore()
    app = AriApplication(Settings(hash_key="k", speech=False), store)
    app.client = AlwaysAnsweringAri()  # type: ignore[assignment]
    start = copy.deepcopy(STASIS_START)
    start["args"] = ["num_digits=6", "label=pin", "sensitive=yes", QUICK]
    channel_id = start["channel"]["id"]
    app.dispatch(start)
    for digit in SECRET:
        app.dispatch(keyed(digit, channel_id))
    # dispatch runs in the websocket reader: the call's context must not leak into it.
    log.info("after dispatch")
    await app.wait_idle(within=5)

    [entry_key] = store.starts
    output = buffer.getvalue()
    assert SECRET not in output
    result_line = next(line for line in output.splitlines() if "entry completed" in line)
    assert "digits=****73" in result_line
    after_dispatch = next(line for line in output.splitlines() if "after dispatch" in line)
    if mode == "json":
        fields = json.loads(result_line)
        assert (fields["entry_id"], fields["channel_id"], fields["transport"], fields["label"]) == (
            entry_key,
            channel_id,
            "ari",
            "pin",
        )
        assert "channel_id" not in json.loads(after_dispatch)
    else:
        assert (
            f": [entry {entry_key} ari {channel_id} pin] channel {channel_id}: entry completed"
            in (result_line)
        )
        assert "tests.test_logging: after dispatch" in after_dispatch


async def test_an_agi_call_logs_with_its_context(service_log: tuple[str, io.StringIO]) -> None:
    mode, buffer = service_log
    store = MemoryStore()
    async with running_agi_server(
        AgiConfig(agi_port=0), store, hash_key="k", poll_interval=0.02
    ) as server:
        assert server.address is not None
        caller = FakeAsterisk(*server.address)
        try:
            await caller.connect(
                environment(
                    query=f"num_digits=6&sensitive=yes&ask_for_confirmation=yes&label=pin&{QUICK}",
                    channel_id="1795600000.99",
                )
            )
            transcript = await caller.answer_all(SECRET + "1")
        finally:
            await caller.close()
        await server.wait_idle(5)
    assert transcript.variables["DIGITS"] == SECRET  # the dialplan gets them; the log must not
    [entry_key] = store.starts
    assert transcript.variables["DIGITS_ID"] == entry_key

    output = buffer.getvalue()
    assert SECRET not in output
    assert "digits/9" not in output  # nor the read-back's sound files
    if mode == "json":
        call_lines = [f for f in json_lines(buffer) if f.get("channel_id") == "1795600000.99"]
        assert any("entry completed" in f["message"] for f in call_lines)
        assert {(f["transport"], f["label"]) for f in call_lines} == {("agi", "pin")}
        assert {f.get("entry_id") for f in call_lines} <= {None, entry_key}
    else:
        assert (
            f"[entry {entry_key} agi 1795600000.99 pin] channel 1795600000.99: entry completed"
            in output
        )


@pytest.mark.asterisk
async def test_a_real_sensitive_call_logs_json_with_its_context_and_no_digits(
    service: Service,
) -> None:
    with logging_to_buffer("json") as buffer:
        call = await service.callers.place_call(
            f"num_digits=6,sensitive=yes,label=pin,{QUICK}", f"wait:0.5^dtmf:{SECRET}"
        )
        result = await service.callers.dialplan_result(call)
        assert (result.status, result.digits) == ("completed", SECRET)
        await service.app.wait_idle(within=5)

    assert SECRET not in buffer.getvalue()
    call_lines = [f for f in json_lines(buffer) if f.get("channel_id") == call.channel_id]
    [finished] = [f for f in call_lines if "entry completed" in f["message"]]
    assert finished["entry_id"] == result.entry_id
    assert (finished["transport"], finished["label"]) == ("ari", "pin")
    assert "digits=****73" in finished["message"]
