"""panoramisk's FastAGI defects, each wrapped once in ``ari_app/agi/fastagi.py``, and hostile input.

Each defect has a test that fails without its fix, and a test showing that panoramisk itself
still has it (when one of those fails, panoramisk was fixed and the wrapper can go).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from panoramisk import fast_agi  # type: ignore[import-untyped]

from ari_app.agi import AgiConfig, AgiServer, running_agi_server
from ari_app.agi.fastagi import (
    AgiApplication,
    AgiChannelGone,
    AgiRequest,
    AgiTransportError,
    BadEnvironment,
    parse_environment,
    parse_reply,
)
from devtools.fake_asterisk import DEAD, FakeAsterisk, Transcript, environment
from devtools.memory_store import MemoryStore

ESC = '"0123456789\\*#ABCD"'


@dataclass
class Agi:
    server: AgiServer
    store: MemoryStore
    callers: list[FakeAsterisk] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        assert self.server.address is not None
        return self.server.address

    async def connect(self, env: bytes | None = None) -> FakeAsterisk:
        caller = FakeAsterisk(*self.address)
        self.callers.append(caller)
        return await caller.connect(env)

    async def keypad_session(self, keys: str = "1234") -> Transcript:
        """A well-behaved caller: proof that the server still serves everyone else."""
        caller = await self.connect(environment(query=f"num_digits={len(keys)}"))
        transcript = await caller.answer_all(keys)
        assert transcript.variables["DIGITS_STATUS"] == "completed"
        assert transcript.variables["DIGITS"] == keys
        return transcript


@pytest.fixture
async def agi() -> AsyncIterator[Agi]:
    store = MemoryStore()
    async with running_agi_server(
        AgiConfig(agi_port=0),
        store,
        hash_key="k",
        poll_interval=0.02,
        command_timeout=0.5,
        environment_timeout=0.5,
    ) as server:
        harness = Agi(server, store)
        try:
            yield harness
        finally:
            for caller in harness.callers:
                await caller.close()


@pytest.fixture
async def standalone() -> AsyncIterator[tuple[AgiApplication, tuple[str, int]]]:
    """An :class:`AgiApplication` with no routes, served on a free port."""
    app = AgiApplication(environment_timeout=1.0)
    server = await asyncio.start_server(app.handler, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        yield app, (host, port)
    finally:
        server.close()
        await server.wait_closed()


# --- defect 1: a bare connect-and-close froze the whole event loop ----------------------------


class ServerThread(threading.Thread):
    """The FastAGI server on its own event loop, with a heartbeat task on that loop.

    If the loop freezes, the test (on another loop) still runs and sees the heartbeat stop.
    """

    def __init__(self) -> None:
        super().__init__(daemon=True, name="agi-server-under-test")
        self.ready = threading.Event()
        self.ticks: list[float] = []
        self.server: AgiServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with running_agi_server(
            AgiConfig(agi_port=0), MemoryStore(), hash_key="k", poll_interval=0.02
        ) as server:
            self.server = server
            heartbeat = asyncio.create_task(self._heartbeat())
            self.ready.set()
            await self._stopping.wait()
            heartbeat.cancel()

    async def _heartbeat(self) -> None:
        while True:
            self.ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    def longest_gap(self, since: float) -> float:
        ticks = [t for t in self.ticks if t >= since] + [time.monotonic()]
        return max(b - a for a, b in itertools.pairwise(ticks))

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(timeout=5)


@pytest.fixture
def server_thread() -> Iterator[ServerThread]:
    thread = ServerThread()
    thread.start()
    assert thread.ready.wait(10), "the server thread did not start"
    assert thread.error is None, thread.error
    try:
        yield thread
    finally:
        thread.stop()


async def probe(host: str, port: int, kind: int) -> None:
    """A health check or port scan: connect and close, maybe after a few bytes, maybe reset."""
    _reader, writer = await asyncio.open_connection(host, port)
    if kind == 1:
        writer.write(b"agi_network: yes\n")  # starts like Asterisk, then leaves
        await writer.drain()
    if kind == 2:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.close()
    await writer.wait_closed()


async def test_100_bare_connects_do_not_stop_the_loop_serving_a_session(
    server_thread: ServerThread,
) -> None:
    assert server_thread.server is not None and server_thread.server.address is not None
    host, port = server_thread.server.address
    began = time.monotonic()
    caller = await FakeAsterisk(host, port).connect(environment(query="num_digits=4"))
    # A slow Asterisk keeps the session going while the probes arrive.
    session = asyncio.create_task(caller.answer_all("1234", keys_after=0.3, pause=0.01, within=5))
    await asyncio.sleep(0.05)
    probes = 0
    try:
        async with asyncio.timeout(10):  # a frozen server would leave connects hanging
            while probes < 100 or not session.done():
                await asyncio.gather(*(probe(host, port, (probes + i) % 3) for i in range(10)))
                probes += 10
            transcript = await session
    except TimeoutError:
        session.cancel()
        gap = server_thread.longest_gap(began)
        pytest.fail(f"the server stopped serving after {probes} probes (loop stalled {gap:.1f} s)")
    finally:
        await caller.close()
    assert transcript.variables["DIGITS_STATUS"] == "completed"
    assert transcript.variables["DIGITS"] == "1234"
    gap = server_thread.longest_gap(began)
    assert gap < 0.5, f"the server's event loop stalled for {gap:.2f} s"
    server = server_thread.server
    deadline = time.monotonic() + 2
    while server.probes + server.refused < probes and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert server.probes + server.refused == probes


def test_upstream_panoramisk_still_spins_on_a_bare_connect() -> None:
    """panoramisk's own handler, in a child process: one bare connect stops its heartbeat."""
    child = textwrap.dedent(
        """
        import asyncio, sys
        from panoramisk import fast_agi

        async def heartbeat():
            while True:
                print("tick", flush=True)
                await asyncio.sleep(0.05)

        async def main():
            app = fast_agi.Application(loop=asyncio.get_running_loop())
            server = await asyncio.start_server(app.handler, "127.0.0.1", 0)
            print(server.sockets[0].getsockname()[1], flush=True)
            await heartbeat()

        asyncio.run(main())
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert process.stdout is not None
    try:
        port = int(process.stdout.readline())
        assert process.stdout.readline().strip() == "tick"
        with socket.create_connection(("127.0.0.1", port)):
            pass  # connect and close
        time.sleep(1.5)  # a live loop prints about 30 ticks meanwhile
    finally:
        process.kill()
        process.wait()
        ticks = process.stdout.read().split()
        process.stdout.close()
    assert len(ticks) <= 3, "panoramisk no longer spins on EOF: the wrapper for it can go"


# --- defect 2: plain-function routes used asyncio.coroutine, gone in Python 3.11 ---------------


async def test_plain_function_routes_work(
    standalone: tuple[AgiApplication, tuple[str, int]],
) -> None:
    app, address = standalone
    seen: list[str] = []

    def plain(request: AgiRequest) -> None:
        seen.append(request.headers["agi_uniqueid"])

    async def later(request: AgiRequest) -> None:
        await request.command("NOOP")

    def returns_a_coroutine(request: AgiRequest) -> Any:
        return later(request)

    app.add_route("plain", plain)
    app.add_route("deferred", returns_a_coroutine)

    caller = await FakeAsterisk(*address).connect(environment(script="plain", channel_id="p1"))
    await caller.expect_closed()
    assert seen == ["p1"]
    caller = await FakeAsterisk(*address).connect(environment(script="deferred"))
    await caller.expect("NOOP", "200 result=0")
    await caller.expect_closed()


async def test_upstream_panoramisk_still_fails_on_plain_function_routes() -> None:
    app = fast_agi.Application(loop=asyncio.get_running_loop())
    with pytest.raises(AttributeError, match="coroutine"):
        app.add_route("plain", lambda request: None)


# --- defect 3: HANGUP arriving where a reply is expected was read as the reply -----------------


async def test_hangup_notice_is_not_read_as_a_reply(
    standalone: tuple[AgiApplication, tuple[str, int]],
) -> None:
    app, address = standalone
    replies: list[object] = []

    async def route(request: AgiRequest) -> None:
        replies.append(await request.command("NOOP"))
        replies.append(request.hung_up)
        try:
            await request.command("CHANNEL STATUS")
        except AgiChannelGone as exc:
            replies.append(exc)

    app.add_route("r", route)
    caller = await FakeAsterisk(*address).connect(environment(script="r"))
    await caller.expect("NOOP", "HANGUP", "200 result=0")
    await caller.expect("CHANNEL STATUS", DEAD)
    await caller.expect_closed()
    noop, hung_up, gone = replies
    assert noop == parse_reply("200 result=0")
    assert hung_up is True
    assert isinstance(gone, AgiChannelGone)


class _Writer:
    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass


async def test_upstream_panoramisk_still_reads_hangup_as_the_reply() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(f"HANGUP\n200 result=0\n{DEAD}\n".encode())
    request = fast_agi.Request(None, {}, reader, _Writer())
    first = await request.send_command("NOOP")
    second = await request.send_command("CHANNEL STATUS")
    assert first["error"] == "AGIResultHangup"
    # The dead channel's status comes back as NOOP's stale "200 result=0": out of step.
    assert second["status_code"] == 200


# --- hostile input: one clear log line, no effect on anyone else --------------------------------


async def test_an_oversized_environment_is_refused(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    many_lines = await agi.connect(b"".join(b"agi_x%d: %s\n" % (i, b"y" * 90) for i in range(400)))
    one_line = await agi.connect(b"agi_network: " + b"y" * 40000 + b"\n")
    await agi.keypad_session()
    await many_lines.expect_closed()
    await one_line.expect_closed()
    assert "AGI environment larger than 16384 bytes; closed" in caplog.text
    assert "AGI environment line longer than 16384 bytes; closed" in caplog.text
    assert len(agi.store.starts) == 1


async def test_a_request_without_agi_network_script_is_refused(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await agi.connect(environment(omit=["agi_network_script"]))
    await caller.expect_closed()
    await agi.keypad_session()
    assert "no agi_network_script in the AGI environment" in caplog.text
    assert len(agi.store.starts) == 1


async def test_an_unknown_script_tells_the_dialplan_and_stores_nothing(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await agi.connect(environment(script="nosuch", query="num_digits=4"))
    transcript = await caller.answer_all()
    assert transcript.variables["DIGITS_STATUS"] == "error"
    assert "unknown FastAGI script 'nosuch'" in transcript.variables["DIGITS_ERROR"]
    assert "unknown script 'nosuch'" in caplog.text
    assert not agi.store.starts
    await agi.keypad_session()


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("num_digits=4\nlabel=x", "num_digits must be a whole number, got '4\\nlabel=x'"),
        ("num_digits=4&label=a%0Ab", "label must be 1-64 letters, digits or . - _ :"),
        ("num_digits=4&colour=blue", "unknown parameter 'colour'"),
        ("num_digits=4&num_digits=5", "parameter 'num_digits' is given twice"),
    ],
)
async def test_bad_query_strings_end_with_error(
    agi: Agi, caplog: pytest.LogCaptureFixture, query: str, error: str
) -> None:
    caller = await agi.connect(environment(query=query, channel_id="c-query"))
    transcript = await caller.answer_all()
    assert transcript.variables["DIGITS_STATUS"] == "error"
    assert transcript.variables["DIGITS_ERROR"] == error
    _, outcome = agi.store.by_channel("c-query")
    assert outcome is not None and outcome.error == error
    if "\n" in query or "%0A" in query:
        assert "contain a line break or control character" in caplog.text
    await agi.keypad_session()


async def test_an_http_probe_is_refused_at_once(agi: Agi, caplog: pytest.LogCaptureFixture) -> None:
    caller = await agi.connect(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    started = time.monotonic()
    await caller.expect_closed()
    assert time.monotonic() - started < 0.4
    assert "not an AGI environment" in caplog.text


async def test_a_silent_connection_is_closed_after_the_environment_timeout(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await agi.connect()
    await agi.keypad_session()
    await caller.expect_closed(within=3)
    assert "no complete AGI environment within 0.5 s; closed" in caplog.text


async def test_a_peer_that_stops_talking_mid_session_is_timed_out(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await agi.connect(environment(query="num_digits=4", channel_id="c-silent"))
    await caller.expect("ANSWER", "200 result=0")
    await caller.expect(f"STREAM FILE beep {ESC}", "200 result=49 endpos=100")
    await caller.expect("WAIT FOR DIGIT 20")  # and never answer
    await agi.keypad_session()  # meanwhile, everyone else is served
    await caller.expect_closed(within=3)
    await agi.server.wait_idle(3)
    _, outcome = agi.store.by_channel("c-silent")
    assert outcome is not None
    assert (outcome.status, outcome.user_input) == ("interrupted", "1")
    assert "no reply to WAIT FOR DIGIT within 0.52 s" in caplog.text
    assert not agi.server.sessions


async def test_a_garbled_reply_interrupts_the_entry(
    agi: Agi, caplog: pytest.LogCaptureFixture
) -> None:
    caller = await agi.connect(environment(query="num_digits=4", channel_id="c-garbled"))
    await caller.expect("ANSWER", "hello there")
    await caller.expect_closed()
    await agi.server.wait_idle(3)
    _, outcome = agi.store.by_channel("c-garbled")
    assert outcome is not None and outcome.status == "interrupted"
    assert "not an AGI reply: 'hello there'" in caplog.text
    await agi.keypad_session()


async def test_connections_over_the_limit_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    async with running_agi_server(
        AgiConfig(agi_port=0), MemoryStore(), hash_key="k", max_connections=2
    ) as server:
        assert server.address is not None
        idle = [await FakeAsterisk(*server.address).connect() for _ in range(2)]
        await asyncio.sleep(0.05)
        extra = await FakeAsterisk(*server.address).connect()
        await extra.expect_closed(within=2)
        assert server.refused == 1
        assert "2 connections already open; refused one more" in caplog.text
        for caller in [*idle, extra]:
            await caller.close()


# --- parsing ----------------------------------------------------------------------------------


def test_environment_parsing() -> None:
    headers = parse_environment(environment(query="a=1", arguments=["x", "y"]))
    assert headers["agi_network_script"] == "collect?a=1"
    assert (headers["agi_arg_1"], headers["agi_arg_2"]) == ("x", "y")
    assert headers["agi_accountcode"] == ""
    # A line break inside a value continues it (a channel variable with a newline).
    assert parse_environment(b"agi_network_script: c?a=1\nb=2\nagi_channel: X\n") == {
        "agi_network_script": "c?a=1\nb=2",
        "agi_channel": "X",
    }
    assert parse_environment(b"agi_channel: X\r\n") == {"agi_channel": "X"}
    with pytest.raises(BadEnvironment, match="not 'agi_name: value'"):
        parse_environment(b"hello\n")
    with pytest.raises(BadEnvironment, match="twice"):
        parse_environment(b"agi_channel: X\nagi_channel: Y\n")
    with pytest.raises(BadEnvironment, match="UTF-8"):
        parse_environment(b"agi_channel: \xff\n")


def test_reply_parsing() -> None:
    assert parse_reply("200 result=52 endpos=4160") == parse_reply("200 result=52 endpos=4160")
    reply = parse_reply("200 result=52 endpos=4160")
    assert (reply.code, reply.result, reply.endpos, reply.data) == (200, 52, 4160, None)
    reply = parse_reply("200 result=1 (12 34)")
    assert (reply.result, reply.data) == (1, "12 34")
    assert parse_reply("200 result=-1 endpos=0").result == -1
    assert parse_reply("510 Invalid or unknown command").code == 510
    with pytest.raises(AgiTransportError):
        parse_reply("HANGUP")


async def test_a_usage_error_is_read_whole(
    standalone: tuple[AgiApplication, tuple[str, int]],
) -> None:
    app, address = standalone
    replies: list[int] = []

    async def route(request: AgiRequest) -> None:
        replies.append((await request.command("STREAM FILE")).code)
        replies.append((await request.command("NOOP")).code)

    app.add_route("u", route)
    caller = await FakeAsterisk(*address).connect(environment(script="u"))
    await caller.expect(
        "STREAM FILE",
        "520-Invalid command syntax.  Proper usage follows:",
        "Send the given file, allowing playback to be interrupted by the given digits.",
        "520 End of proper usage.",
    )
    await caller.expect("NOOP", "200 result=0")
    await caller.expect_closed()
    assert replies == [520, 200]


async def test_commands_are_single_lines(
    standalone: tuple[AgiApplication, tuple[str, int]],
) -> None:
    app, address = standalone
    errors: list[Exception] = []

    async def route(request: AgiRequest) -> None:
        try:
            await request.command("SET VARIABLE X 1\nHANGUP")
        except ValueError as exc:
            errors.append(exc)

    app.add_route("s", route)
    caller = await FakeAsterisk(*address).connect(environment(script="s"))
    await caller.expect_closed()
    assert len(errors) == 1


def test_logging_is_quiet_for_probes(caplog: pytest.LogCaptureFixture) -> None:
    """Health checks every few seconds must not flood the log at INFO."""
    caplog.set_level(logging.INFO)

    async def main() -> None:
        async with running_agi_server(AgiConfig(agi_port=0), MemoryStore(), hash_key="k") as s:
            assert s.address is not None
            await probe(*s.address, kind=0)
            await asyncio.sleep(0.05)
            assert s.probes == 1

    asyncio.run(main())
    assert "health check" not in caplog.text
