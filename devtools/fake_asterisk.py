"""A scripted FastAGI peer that plays Asterisk's side over a real TCP socket (tests, bench).

:class:`FakeAsterisk` connects to a FastAGI server, sends an AGI environment like Asterisk 22's
and then either follows a script (:meth:`FakeAsterisk.expect`: the next command must match, the
given lines are the reply) or answers by itself (:meth:`FakeAsterisk.answer_all`: a caller who
keys ``keys`` one per ``WAIT FOR DIGIT``/``STREAM FILE``). Replies are the ones recorded from the
sandbox's Asterisk 22 (``200 result=0 endpos=3520``, ``511 Command Not Permitted…``, ``HANGUP``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

DEAD = "511 Command Not Permitted on a dead channel or intercept routine"

_ids = itertools.count(1)
_SET_VARIABLE = re.compile(r'^SET VARIABLE (\w+) "((?:[^"\\]|\\.)*)"$')


def environment(
    *,
    script: str = "collect",
    query: str = "",
    channel_id: str | None = None,
    channel: str = "PJSIP/trunk-00000001",
    caller_number: str = "5551234",
    caller_name: str = "Test Caller",
    arguments: Iterable[str] = (),
    port: int = 4573,
    extra: Mapping[str, str] | None = None,
    omit: Iterable[str] = (),
) -> bytes:
    """The block Asterisk 22 sends first, as recorded from the sandbox."""
    uniqueid = channel_id or f"1795600000.{next(_ids)}"
    target = f"{script}?{query}" if query else script
    values = {
        "agi_network": "yes",
        "agi_network_script": target,
        "agi_request": f"agi://127.0.0.1:{port}/{target}",
        "agi_channel": channel,
        "agi_language": "en",
        "agi_type": "PJSIP",
        "agi_uniqueid": uniqueid,
        "agi_version": "22.10.1",
        "agi_callerid": caller_number,
        "agi_calleridname": caller_name,
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "100",
        "agi_rdnis": "unknown",
        "agi_context": "from-trunk",
        "agi_extension": "100",
        "agi_priority": "2",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": "140561519990464",
    }
    for index, argument in enumerate(arguments, 1):
        values[f"agi_arg_{index}"] = argument
    values.update(extra or {})
    for name in omit:
        values.pop(name, None)
    return "".join(f"{name}: {value}\n" for name, value in values.items()).encode() + b"\n"


@dataclass
class Transcript:
    """What the server did, as :meth:`FakeAsterisk.answer_all` saw it."""

    commands: list[str] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    closed_by_server: bool = False


class FakeAsterisk:
    """Asterisk's end of one FastAGI connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self, env: bytes | None = None) -> FakeAsterisk:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        if env is not None:
            await self.send_raw(env)
        return self

    async def send_raw(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, *lines: str) -> None:
        await self.send_raw("".join(line + "\n" for line in lines).encode())

    async def command(self, within: float = 5.0) -> str | None:
        """The next command line, or None when the server closed the connection."""
        assert self.reader is not None
        async with asyncio.timeout(within):
            line = await self.reader.readline()
        if not line:
            await self.close()
            return None
        return line.decode().rstrip("\n")

    async def expect(self, pattern: str, *reply: str, within: float = 5.0) -> str:
        """The next command must fully match ``pattern``; answer it with ``reply`` lines."""
        line = await self.command(within)
        if line is None:
            raise AssertionError(f"expected {pattern!r}, the server closed the connection")
        if re.fullmatch(pattern, line) is None:
            raise AssertionError(f"expected {pattern!r}, got {line!r}")
        if reply:
            await self.send(*reply)
        return line

    async def expect_closed(self, within: float = 5.0) -> None:
        line = await self.command(within)
        if line is not None:
            raise AssertionError(f"expected the server to close, got {line!r}")

    async def answer_all(
        self,
        keys: str = "",
        *,
        keys_after: float = 0.0,
        hangup_after_keys: bool = False,
        pause: float = 0.0,
        within: float = 10.0,
    ) -> Transcript:
        """Answer every command until the server closes the connection.

        The caller keys ``keys`` (from ``keys_after`` seconds on), one per ``WAIT FOR DIGIT``
        or prompt command; a prompt without a key plays to its end at once, a ``WAIT FOR
        DIGIT`` without a key lasts its timeout. With ``hangup_after_keys`` the caller then
        hangs up: ``result=-1``, ``HANGUP``, and ``511`` for what needs a live channel.
        ``pause`` delays every reply (a slow Asterisk).
        """
        transcript = Transcript()
        pending = list(keys)
        dead = False
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with asyncio.timeout(within):
            while True:
                line = await self.command(within)
                if line is None:
                    transcript.closed_by_server = True
                    return transcript
                transcript.commands.append(line)
                if pause:
                    await asyncio.sleep(pause)
                if dead and not line.startswith(("SET VARIABLE", "GET VARIABLE", "NOOP")):
                    await self.send(DEAD)
                    continue
                key_ready = bool(pending) and loop.time() - started >= keys_after
                if line.startswith("SET VARIABLE"):
                    match = _SET_VARIABLE.match(line)
                    if match:
                        value = re.sub(r"\\(.)", r"\1", match.group(2))
                        transcript.variables[match.group(1)] = value
                    await self.send("200 result=1")
                elif line.startswith(("WAIT FOR DIGIT", "STREAM FILE", "SAY ")):
                    stream = line.startswith("STREAM FILE")
                    if key_ready:
                        key = pending.pop(0)
                        await self.send(
                            f"200 result={ord(key)}" + (" endpos=800" if stream else "")
                        )
                    elif hangup_after_keys and not pending:
                        dead = True
                        await self.send("200 result=-1" + (" endpos=0" if stream else ""), "HANGUP")
                    elif stream:
                        await self.send("200 result=0 endpos=3520")
                    elif line.startswith("WAIT FOR DIGIT"):
                        await asyncio.sleep(int(line.split()[3]) / 1000)
                        await self.send("200 result=0")
                    else:
                        await self.send("200 result=0")
                elif line.startswith("CHANNEL STATUS"):
                    await self.send("200 result=6")
                else:
                    await self.send("200 result=0")

    async def close(self) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()
