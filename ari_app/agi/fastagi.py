"""panoramisk's FastAGI server, with its defects wrapped once, here.

panoramisk 1.4 gives us a route table (:class:`panoramisk.fast_agi.Application`) and a request
object (:class:`panoramisk.fast_agi.Request`). Three of its behaviours are wrong and are replaced:

1. **A bare connect-and-close freezes the event loop.** ``Application.handler`` reads the AGI
   environment with ``while b'\\n\\n' not in buffer: buffer += await reader.read(100)``. At EOF
   ``read()`` returns ``b''`` at once without suspending, so one health check or port scan makes
   the handler spin forever and nothing else on the loop ever runs again.
   :meth:`AgiApplication.handler` reads the environment line by line with a size limit, a
   deadline and EOF detection, and refuses anything else (an HTTP probe, an oversized or
   malformed block, no ``agi_network_script``, an unknown script) with one log line.
2. **Plain-function routes fail on Python 3.11.** ``Application.add_route`` wraps non-coroutine
   endpoints with ``asyncio.coroutine``, which Python 3.11 removed (``AttributeError``).
   :meth:`AgiApplication.add_route` wraps them itself.
3. **``HANGUP`` is read as a command's reply.** Asterisk writes ``HANGUP`` on its own when the
   channel hangs up (unless ``AGISIGHUP=no``), between or right after command replies.
   ``Request.send_command`` reads whatever line comes next as the reply, so the real reply
   stays in the buffer and every later command gets the reply of the one before.
   :meth:`AgiRequest.command` notes ``HANGUP`` lines and keeps reading for the real reply; it
   also bounds every wait, turns EOF and 511 into :class:`AgiChannelGone`, reads multi-line
   ``520`` usage errors whole, and refuses to send a command containing a line break.

Besides, panoramisk matches routes against ``agi_network_script`` including the query string
(``collect?num_digits=4``), so no route with parameters could ever match: routes are matched on
the path alone here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from panoramisk import fast_agi
from panoramisk.utils import parse_agi_result

from ari_app.ports import ChannelGone, TransportError

log = logging.getLogger(__name__)

MAX_ENVIRONMENT_BYTES = 16 * 1024  # Asterisk sends under 1 KiB, plus AGI() arguments
MAX_ENVIRONMENT_LINES = 200  # about 25 variables and up to 128 agi_arg_N
ENVIRONMENT_TIMEOUT = 5.0
COMMAND_TIMEOUT = 10.0
CLOSE_TIMEOUT = 1.0

_ENV_LINE = re.compile(r"^(agi_[a-z0-9_]{1,40}): ?(.*)$")
_REPLY = re.compile(r"^(\d{3})([ -])(.*)$")
_RESULT = re.compile(r"result=(-?\d*)")
_DATA = re.compile(r"\((.*)\)")
_ENDPOS = re.compile(r"endpos=(\d+)")


class AgiChannelGone(ChannelGone):
    """The channel hung up (``HANGUP``, ``511``) or Asterisk closed the connection."""


class AgiTransportError(TransportError):
    """The AGI peer went silent or broke the protocol; the connection is no longer usable."""


class BadEnvironment(ValueError):
    """An AGI environment block that cannot be trusted."""


@dataclass(frozen=True)
class AgiReply:
    """One command's reply: ``200 result=52 endpos=4160`` → code 200, result 52, endpos 4160."""

    code: int
    result: int | None
    data: str | None
    endpos: int | None
    line: str


def parse_reply(line: str) -> AgiReply:
    match = _REPLY.match(line)
    if match is None:
        raise AgiTransportError(f"not an AGI reply: {_shorten(line)!r}")
    code, rest = int(match.group(1)), match.group(3)
    result = _RESULT.match(rest)
    data = _DATA.search(rest)
    endpos = _ENDPOS.search(rest)
    return AgiReply(
        code=code,
        result=int(result.group(1)) if result and result.group(1) else None,
        data=data.group(1) if data else None,
        endpos=int(endpos.group(1)) if endpos else None,
        line=line,
    )


def parse_environment(raw: bytes) -> dict[str, str]:
    """Parse the block Asterisk sends first (``agi_name: value`` lines, then an empty line).

    A line that is not ``agi_name: value`` continues the previous value after a newline: that
    is how a channel variable with a line break in it (in ``AGI(agi://…?${QUERY})``) arrives,
    and keeping it lets parameter validation report it like any other bad value.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadEnvironment(f"the AGI environment is not UTF-8 ({exc.reason})") from None
    if not text.strip():
        return {}
    lines = [line.rstrip("\r") for line in text.rstrip("\n").split("\n")]
    if len(lines) > MAX_ENVIRONMENT_LINES:
        raise BadEnvironment(f"the AGI environment has over {MAX_ENVIRONMENT_LINES} lines")
    headers: dict[str, str] = {}
    last: str | None = None
    for number, line in enumerate(lines, 1):
        match = _ENV_LINE.match(line)
        if match is None:
            if last is None:
                raise BadEnvironment(
                    f"line {number} of the AGI environment is not 'agi_name: value': "
                    f"{_shorten(line)!r}"
                )
            headers[last] += "\n" + line
            continue
        name, value = match.group(1), match.group(2)
        if name in headers:
            raise BadEnvironment(f"{name} appears twice in the AGI environment")
        headers[name] = value
        last = name
    return headers


def describe_peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)


def _verb(command: str) -> str:
    """``SAY DIGITS 1234 "#"`` → ``SAY DIGITS``: the arguments may carry a caller's digits."""
    words = []
    for word in command.split()[:3]:
        if not (word.isalpha() and word.isupper()):
            break
        words.append(word)
    return " ".join(words) or "a command"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AgiRequest(fast_agi.Request):  # type: ignore[misc]
    """One FastAGI connection: the environment Asterisk sent, and its command channel.

    :meth:`command` sends one command and reads its reply; one task must own the channel.
    Never send a command before the previous reply has come: Asterisk reads the socket through
    a buffered ``FILE``, so a second command read along with the first waits unseen until more
    bytes arrive. After a timeout or a protocol error the connection is *broken*: every later
    command fails at once with :class:`AgiTransportError`.
    """

    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def __init__(
        self,
        app: AgiApplication,
        headers: dict[str, str],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        script: str,
        query: str,
        peer: str,
    ) -> None:
        super().__init__(app, headers, reader, writer, encoding="utf-8")
        self.script = script
        self.query = query
        self.peer = peer
        self.hung_up = False  # Asterisk said HANGUP: the channel is gone, the socket is not
        self.broken: str | None = None
        self.closed = False

    @property
    def arguments(self) -> list[str]:
        """The extra ``AGI(url,arg1,arg2…)`` arguments, in order."""
        numbered: list[tuple[int, str]] = []
        for name, value in self.headers.items():
            if name.startswith("agi_arg_") and name[8:].isdigit():
                numbered.append((int(name[8:]), value))
        return [value for _, value in sorted(numbered)]

    async def command(self, command: str, *, within: float = COMMAND_TIMEOUT) -> AgiReply:
        """Send one command and return its reply (fix 3: ``HANGUP`` lines are not replies)."""
        verb = self.send(command)
        return await self.reply(verb, within=within)

    def send(self, command: str) -> str:
        """Queue one command; returns its verb (``WAIT FOR DIGIT``) for :meth:`reply`."""
        if "\n" in command or "\r" in command:
            raise ValueError("an AGI command must be a single line")
        if self.broken is not None:
            raise AgiTransportError(self.broken)
        if self.closed or self.writer.is_closing():
            self.closed = True
            raise AgiChannelGone("the AGI connection is closed")
        self.writer.write(command.encode("utf-8") + b"\n")
        return _verb(command)

    async def reply(self, verb: str, *, within: float = COMMAND_TIMEOUT) -> AgiReply:
        """The reply to the oldest command sent and not yet answered.

        ``511`` (a command refused on a dead channel) raises :class:`AgiChannelGone`, as does
        EOF; a timeout or a line that is no reply breaks the connection.
        """
        if self.broken is not None:
            raise AgiTransportError(self.broken)
        try:
            async with asyncio.timeout(within):
                await self.writer.drain()
                reply = await self._read_reply()
        except TimeoutError:
            self.broken = f"no reply to {verb} within {within:g} s"
            raise AgiTransportError(self.broken) from None
        except AgiTransportError as exc:
            self.broken = str(exc)
            raise
        except (ConnectionError, OSError) as exc:
            self.closed = True
            raise AgiChannelGone(f"the AGI connection failed: {exc}") from None
        if reply.code == 511:
            self.hung_up = True
            raise AgiChannelGone(f"{verb}: the channel has hung up")
        return reply

    async def _read_reply(self) -> AgiReply:
        while True:
            line = await self._read_line()
            if line == "HANGUP":
                # Asterisk's own notice, not a reply: note it and keep reading.
                self.hung_up = True
                continue
            reply = parse_reply(line)
            if reply.code == 100:  # "100 result=0 Trying..." precedes the real reply
                continue
            if reply.code == 520 and line[3] == "-":
                # A usage error spans lines up to "520 End of proper usage."
                while not (await self._read_line()).startswith("520 "):
                    pass
            return reply

    async def _read_line(self) -> str:
        try:
            raw = await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            self.closed = True
            raise AgiChannelGone("Asterisk closed the AGI connection") from None
        except asyncio.LimitOverrunError:
            raise AgiTransportError("an AGI reply line is too long") from None
        return raw[:-1].decode("utf-8", errors="replace").rstrip("\r")

    async def send_command(self, command: str) -> dict[str, Any]:
        """panoramisk's interface, kept for compatibility: the fixed reader, its dict result."""
        reply = await self.command(command)
        result: dict[str, Any] = parse_agi_result(reply.line)
        return result

    async def close(self) -> None:
        if self.closed and self.writer.is_closing():
            return
        self.closed = True
        self.writer.close()
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.writer.wait_closed()
        except (TimeoutError, ConnectionError, OSError):
            self.writer.transport.abort()


Route = Callable[[AgiRequest], Awaitable[None]]
UnknownRoute = Callable[[AgiRequest], Awaitable[None]]


class AgiApplication(fast_agi.Application):  # type: ignore[misc]
    """panoramisk's route table with a safe connection handler."""

    _route: Mapping[str, Route]

    def __init__(
        self,
        *,
        max_environment_bytes: int = MAX_ENVIRONMENT_BYTES,
        environment_timeout: float = ENVIRONMENT_TIMEOUT,
        unknown_route: UnknownRoute | None = None,
    ) -> None:
        super().__init__(default_encoding="utf-8", loop=asyncio.get_running_loop())
        self.max_environment_bytes = max_environment_bytes
        self.environment_timeout = environment_timeout
        self.unknown_route = unknown_route
        self.probes = 0  # connections closed before sending anything
        self.refused = 0  # connections with an unusable environment

    def add_route(self, path: str, endpoint: Callable[[AgiRequest], object]) -> None:
        """Fix 2: accept plain functions (panoramisk uses ``asyncio.coroutine``, gone in 3.11)."""
        if asyncio.iscoroutinefunction(endpoint):
            super().add_route(path, endpoint)
            return
        plain = endpoint

        async def route(request: AgiRequest) -> None:
            outcome = plain(request)
            if asyncio.iscoroutine(outcome) or isinstance(outcome, asyncio.Future):
                await outcome

        route.__name__ = getattr(plain, "__name__", "route")
        super().add_route(path, route)

    async def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Fix 1: read the environment safely; one connection never affects another."""
        peer = describe_peer(writer)
        request: AgiRequest | None = None
        try:
            headers = await self._read_environment(reader, peer)
            if headers is None:
                return
            script_line = headers.get("agi_network_script")
            if script_line is None:
                self.refused += 1
                log.warning(
                    "FastAGI %s: no agi_network_script in the AGI environment "
                    "(not an agi:// request from Asterisk?); closed",
                    peer,
                )
                return
            script, _, query = script_line.partition("?")
            request = AgiRequest(
                self, headers, reader, writer, script=script.strip("/"), query=query, peer=peer
            )
            route = self._route.get(request.script)
            if route is None:
                self.refused += 1
                log.warning(
                    "FastAGI %s: unknown script %r for channel %s (known: %s)",
                    peer,
                    _shorten(request.script),
                    headers.get("agi_channel", "?"),
                    ", ".join(sorted(self._route)) or "none",
                )
                if self.unknown_route is not None:
                    await self.unknown_route(request)
                return
            await route(request)
        except Exception:
            log.exception("FastAGI %s: the request failed", peer)
        finally:
            if request is not None:
                await request.close()
            else:
                writer.close()
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await writer.wait_closed()

    async def _read_environment(
        self, reader: asyncio.StreamReader, peer: str
    ) -> dict[str, str] | None:
        """The ``agi_name: value`` lines up to the empty one, or None (logged) if unusable."""
        lines: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.environment_timeout):
                while True:
                    line = await reader.readuntil(b"\n")
                    size += len(line)
                    if size > self.max_environment_bytes:
                        return self._refuse(
                            peer, f"AGI environment larger than {self.max_environment_bytes} bytes"
                        )
                    if line == b"\n":
                        break
                    if not lines and not line.startswith(b"agi_"):
                        # An HTTP health check, a TLS hello, a stray client: fail fast.
                        return self._refuse(
                            peer, f"not an AGI environment (it starts {_shorten(repr(line), 40)})"
                        )
                    lines.append(line)
        except asyncio.IncompleteReadError as exc:
            if not lines and not exc.partial:
                self.probes += 1
                log.debug("FastAGI %s: closed without a request (health check or port scan)", peer)
                return None
            return self._refuse(
                peer, f"closed after {size + len(exc.partial)} bytes, inside its AGI environment"
            )
        except asyncio.LimitOverrunError:
            return self._refuse(
                peer, f"AGI environment line longer than {self.max_environment_bytes} bytes"
            )
        except TimeoutError:
            return self._refuse(
                peer, f"no complete AGI environment within {self.environment_timeout:g} s"
            )
        except (ConnectionError, OSError) as exc:
            self.probes += 1
            log.debug("FastAGI %s: connection failed before a request: %s", peer, exc)
            return None
        try:
            return parse_environment(b"".join(lines))
        except BadEnvironment as exc:
            return self._refuse(peer, str(exc))

    def _refuse(self, peer: str, why: str) -> dict[str, str] | None:
        """Count and log a refused connection; returns None for the caller to return."""
        self.refused += 1
        log.warning("FastAGI %s: %s; closed", peer, why)
        return None
