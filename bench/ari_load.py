"""N keypad callers at once against the real ``ari-digits serve``, through a scripted fake ARI.

The fake is an aiohttp server on 127.0.0.1 (a free port) that plays Asterisk 22's side of ARI:
the swagger resource listing aioari loads at connect (``bench/ari_fixtures/``, trimmed from
Asterisk 22.10.1's own api-docs), the events websocket, and the REST operations ``serve`` calls
(play, stop a playback, set a variable, continue in the dialplan; anything else is counted as
unexpected). Event frames have the shapes Asterisk 22 sends: StasisStart with the channel
snapshot and args, ChannelDtmfReceived with ``digit`` and ``duration_ms``, PlaybackStarted,
PlaybackContinuing between the items of a media list, PlaybackFinished, and ChannelHangupRequest,
StasisEnd, ChannelDestroyed for a caller who hangs up (StasisEnd alone after a continue).

``serve`` runs as a subprocess of this checkout (``python -m ari_app.cli serve``) pinned to one
core (``taskset -c 0``), with ``SPEECH=off``, a fresh SQLite database and journal in a temp dir
(the database elsewhere with ``--database-dir``), started anew for each N, and given 20
unmeasured callers first (``--warmup``: first calls pay one-off costs). This process pins itself to another core. For each N, all N channels enter
Stasis at once (``num_digits=10,ask_for_confirmation=yes,label=load``), or with ``--arrival-s``
at random times over that many seconds (a Poisson process: how calls arrive at a real site;
with ``--media-ms`` near the length of Asterisk's own sounds, entries outlast the arrivals and
all N still collect at once, ``peak in Stasis`` says how many did); each caller keys
10 digits 150-400 ms apart (seeded), a quarter of them keying the first over the prompt
(barge-in), and answers the read-back with 1 once it has finished playing; 5 % hang up
mid-entry. Printed per N:

- latency from an event frame sent to the REST request it causes, received: StasisStart → the
  prompt's play, a barge-in key → the stop, the last key → the read-back's play, the confirming
  key → the first variable set and → the continue (p50, p99, max; ``all``: the first four);
- entries a second (N over the time from the first StasisStart to the last row in the database;
  the script alone takes about 5 s, so this grows with N until ``serve``'s core is saturated),
  ``serve``'s CPU ms per entry (utime + stime from /proc over that same window, start-up
  excluded), its resident memory before and after (VmRSS) and at peak (VmHWM);
- events lost (channel events the app did not handle, from its own
  ``ari_digits_event_handling_seconds_count``, plus StasisStarts that got no prompt): must be 0;
- rows correct (status, digits, confirmation and label as scripted): must be N; hand-backs ok
  (the read-back spelled the keys, and DIGITS, DIGITS_STATUS, DIGITS_CONFIRMED, DIGITS_ID set);
- REST requests per entry, as the fake received them;
- this process's own event-loop lag (a request that arrives while the fake is busy is stamped
  late by up to that much: it bounds the fake's share of every latency above) and the share of
  each pinned core that other processes used meanwhile (another job on the
  machine skews the figures; the JSON keeps it with the load average).

It writes ``bench/results/ari_load.json`` and ``.png`` (matplotlib). A benchmark, not a test:
it prints numbers and exits 0 unless the set-up itself fails.

    .venv/bin/python bench/ari_load.py                        # N = 100 500 1000 2000
    .venv/bin/python bench/ari_load.py --channels 100 500 --seed 7 --out bench/results/try
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "bench" / "ari_fixtures" / "asterisk22_api_docs.json"
DEFAULT_OUT = REPO / "bench" / "results" / "ari_load"

APP = "digits"
ASTERISK_ID = "52:54:00:12:34:56"
DIGITS_PER_ENTRY = 10
ENTRY_ARGS = ["num_digits=10", "ask_for_confirmation=yes", "label=load"]
LABEL = "load"
CONFIRM_KEY = "1"
KEY_GAP_S = (0.150, 0.400)  # human pace between keys, and before answering the read-back
KEY_DURATION_MS = (60, 180)  # what Asterisk reports as each key's length
CALLER_PATIENCE_S = 180.0  # a caller whose next step never comes gives up (counted as lost)
ROWS_PATIENCE_S = 180.0
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The reactions measured: event frame sent → REST request received.
REACTIONS = ("start→prompt", "barge-in key→stop", "last key→read-back", "confirm→variables")
HANDBACK = "confirm→continue"


# --- Asterisk 22's frames ------------------------------------------------------------------------


_second_shown: tuple[int, str] = (0, "")


def asterisk_time(at: float | None = None) -> str:
    """Asterisk's event timestamp: ``2026-11-25T15:49:58.201+0000``."""
    global _second_shown
    at = time.time() if at is None else at
    second = int(at)
    if second != _second_shown[0]:  # strftime is a fair share of this process's cost per frame
        _second_shown = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return f"{_second_shown[1]}.{int(at * 1000) % 1000:03d}+0000"


def channel_snapshot(channel_id: str, index: int) -> str:
    """The channel object Asterisk 22 puts in every channel event, JSON-encoded once."""
    return json.dumps(
        {
            "id": channel_id,
            "name": f"PJSIP/trunk-{index:08x}",
            "state": "Up",
            "protocol_id": f"load-{channel_id}@127.0.0.1",
            "caller": {"name": "Load Caller", "number": f"555{index:07d}"},
            "connected": {"name": "", "number": ""},
            "accountcode": "",
            "dialplan": {
                "context": "from-trunk",
                "exten": "100",
                "priority": 2,
                "app_name": "Stasis",
                "app_data": ",".join([APP, *ENTRY_ARGS]),
            },
            "creationtime": asterisk_time(),
            "language": "en",
        },
        separators=(",", ":"),
    )


def event_frame(kind: str, fields: dict[str, Any], channel: str | None = None) -> str:
    """One event as Asterisk writes it; ``channel`` is an already encoded snapshot (encoding it
    once per channel keeps this process cheap next to the one measured)."""
    body = json.dumps({"type": kind, "timestamp": asterisk_time(), **fields}, separators=(",", ":"))
    tail = f',"asterisk_id":"{ASTERISK_ID}","application":"{APP}"}}'
    return body[:-1] + (f',"channel":{channel}' if channel else "") + tail


# --- the scripted callers ------------------------------------------------------------------------


@dataclass(frozen=True)
class Script:
    """What one caller does: the digits, the pauses before each key and before the answer."""

    digits: str
    gaps: tuple[float, ...]  # before each key, then before the confirming key
    durations: tuple[int, ...]
    barge_in: bool  # the first key goes in while the prompt plays
    hangup_after: int | None  # hangs up after this many keys

    @property
    def expected_row(self) -> tuple[str, str, str]:
        """(status, digits, confirmed) the database must hold."""
        if self.hangup_after is not None:
            return ("hangup", self.digits[: self.hangup_after], "not_asked")
        return ("completed", self.digits, "yes")

    @property
    def handled_events(self) -> int:
        """Channel events the app handles (its event-handling metric counts them): the prompt's
        PlaybackFinished, each key, and then the hangup, or the read-back's end and the answer."""
        if self.hangup_after is not None:
            return 1 + self.hangup_after + 1
        return 1 + DIGITS_PER_ENTRY + 2


def scripts(n: int, rng: random.Random, hangup_share: float, barge_share: float) -> list[Script]:
    hangups = set(rng.sample(range(n), round(n * hangup_share)))
    barging = set(rng.sample(range(n), round(n * barge_share)))
    return [
        Script(
            digits="".join(rng.choice("0123456789") for _ in range(DIGITS_PER_ENTRY)),
            gaps=tuple(rng.uniform(*KEY_GAP_S) for _ in range(DIGITS_PER_ENTRY + 1)),
            durations=tuple(rng.randint(*KEY_DURATION_MS) for _ in range(DIGITS_PER_ENTRY + 1)),
            barge_in=index in barging,
            hangup_after=rng.randint(1, DIGITS_PER_ENTRY - 1) if index in hangups else None,
        )
        for index in range(n)
    ]


@dataclass
class FakePlayback:
    id: str
    channel: FakeChannel
    media: list[str]
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    current: int = 0
    task: asyncio.Task[None] | None = None

    def as_json(self, state: str) -> dict[str, Any]:
        playback: dict[str, Any] = {"id": self.id, "media_uri": self.media[self.current]}
        if self.current + 1 < len(self.media):
            playback["next_media_uri"] = self.media[self.current + 1]
        playback |= {"target_uri": f"channel:{self.channel.id}", "language": "en", "state": state}
        return playback


@dataclass
class FakeChannel:
    id: str
    snapshot: str
    script: Script
    in_stasis: bool = True
    sent: dict[str, float] = field(default_factory=dict)  # reaction → when its event went out
    arrived: dict[str, float] = field(default_factory=dict)  # reaction → when its request came
    playbacks: list[FakePlayback] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    waiting: dict[str, asyncio.Future[None]] = field(default_factory=dict)
    step: str = "start"  # where the caller is; where it stopped, if it gave up
    barged: asyncio.Event = field(default_factory=asyncio.Event)  # keyed over the prompt
    readback_digits: str | None = None

    def arrive(self, reaction: str, at: float) -> None:
        if reaction in self.arrived:
            return
        self.arrived[reaction] = at
        waiter = self.waiting.pop(reaction, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def reaction(self, name: str) -> None:
        if name not in self.arrived:
            waiter = self.waiting.setdefault(name, asyncio.get_running_loop().create_future())
            await waiter


def readback_keys(media: Sequence[str]) -> str:
    """The digits a read-back spells (``sound:digits/4`` …) between its two fixed sounds."""
    keys = []
    for uri in media:
        name = uri.removeprefix("sound:")
        if name == "if-correct-press":
            break
        if name.startswith("digits/"):
            keys.append(name.removeprefix("digits/"))
    return "".join(keys)


# --- the fake ARI --------------------------------------------------------------------------------


class FakeAri:
    """Asterisk's ARI, as far as ``serve`` uses it, for scripted channels."""

    def __init__(self, media_s: float) -> None:
        self.media_s = media_s
        self.docs: dict[str, Any] = json.loads(FIXTURE.read_text())
        self.channels: dict[str, FakeChannel] = {}
        self.playbacks: dict[str, FakePlayback] = {}
        self.socket: web.WebSocketResponse | None = None
        self.connected = asyncio.Event()
        self.frames_sent = 0
        self.frames_filtered = 0  # not sent: outside the app's event filter, as Asterisk does
        self.allowed_events: set[str] | None = None  # None: no filter set, every type goes
        self.requests = 0  # REST requests, the swagger loads at connect excluded
        self.in_stasis = 0  # callers between their StasisStart and their script's end
        self.peak_in_stasis = 0
        self.unexpected: list[str] = []
        self.lag: list[float] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- the server --

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/ari/api-docs/resources.json", self._resources)
        app.router.add_get("/ari/api-docs/{name}.json", self._declaration)
        app.router.add_get("/ari/events", self._events)
        app.router.add_post("/ari/channels/{channel}/play", self._play)
        app.router.add_delete("/ari/playbacks/{playback}", self._stop)
        app.router.add_post("/ari/channels/{channel}/variable", self._set_variable)
        app.router.add_post("/ari/channels/{channel}/variables", self._set_variables)
        app.router.add_post("/ari/channels/{channel}/continue", self._continue)
        app.router.add_get("/ari/channels/{channel}", self._get_channel)
        app.router.add_put("/ari/applications/{app}/eventFilter", self._event_filter)
        app.router.add_route("*", "/{tail:.*}", self._other)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/"

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    def reset(self) -> None:
        """Forget the channels and counters (a new batch on the same connection)."""
        self.channels.clear()
        self.playbacks.clear()
        self.frames_sent = 0
        self.frames_filtered = 0
        self.requests = 0
        self.peak_in_stasis = 0
        self.unexpected.clear()
        self.lag.clear()

    def add_channels(self, plans: Sequence[Script], prefix: str) -> list[FakeChannel]:
        added = []
        for index, script in enumerate(plans):
            channel_id = f"{prefix}.{index}"
            added.append(FakeChannel(channel_id, channel_snapshot(channel_id, index), script))
            self.channels[channel_id] = added[-1]
        return added

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def send(self, frame: str) -> float:
        """Write one event frame; returns when it was handed to the socket."""
        if self.socket is None:
            raise ConnectionError("serve is not connected to the events websocket")
        at = time.perf_counter()
        kind = frame[len('{"type":"') : frame.index('"', len('{"type":"'))]  # see event_frame
        if self.allowed_events is not None and kind not in self.allowed_events:
            self.frames_filtered += 1
            return at
        await self.socket.send_str(frame)
        self.frames_sent += 1
        return at

    async def watch_lag(self) -> None:
        """This loop's own lateness: what the fake adds to every latency it measures."""
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            self.lag.append(time.perf_counter() - before - 0.005)

    # -- swagger: Asterisk answers with basePath set to the address it was asked on --

    def _rebased(self, document: dict[str, Any]) -> web.Response:
        return web.json_response({**document, "basePath": self.url + "ari"})

    async def _resources(self, request: web.Request) -> web.Response:
        return self._rebased(self.docs["resources"])

    async def _declaration(self, request: web.Request) -> web.Response:
        document = self.docs["declarations"].get(request.match_info["name"])
        if document is None:
            return web.json_response({"message": "Not found"}, status=404)
        return self._rebased(document)

    # -- the events websocket --

    async def _events(self, request: web.Request) -> web.WebSocketResponse:
        # Asterisk's websocket server negotiates no compression.
        socket = web.WebSocketResponse(compress=False, autoping=True)
        await socket.prepare(request)
        if request.query.get("app") != APP:
            await socket.close()
            return socket
        self.socket = socket
        self.connected.set()
        async for _ in socket:  # serve sends nothing but pings (answered by aiohttp)
            pass
        if self.socket is socket:
            self.socket = None
        return socket

    # -- REST --

    def _channel(self, request: web.Request) -> FakeChannel | None:
        channel = self.channels.get(request.match_info["channel"])
        return channel if channel is not None and channel.in_stasis else None

    async def _play(self, request: web.Request) -> web.Response:
        at = time.perf_counter()
        self.requests += 1
        channel = self._channel(request)
        if channel is None:
            self.unexpected.append(f"play on a channel not in Stasis: {request.path}")
            return web.json_response({"message": "Channel not found"}, status=404)
        media = request.query.get("media", "").split(",")
        playback = FakePlayback(request.query.get("playbackId", ""), channel, media)
        channel.playbacks.append(playback)
        if len(channel.playbacks) == 1:
            channel.arrive("start→prompt", at)
        elif len(channel.playbacks) == 2:
            channel.readback_digits = readback_keys(media)
            channel.arrive("last key→read-back", at)
        else:
            self.unexpected.append(f"play #{len(channel.playbacks)} on {channel.id}: {media[:3]}")
        self.playbacks[playback.id] = playback
        playback.task = asyncio.create_task(self._run_playback(playback))
        self._tasks.add(playback.task)
        playback.task.add_done_callback(self._tasks.discard)
        return web.json_response(playback.as_json("queued"), status=201)

    async def _run_playback(self, playback: FakePlayback) -> None:
        await self.send(event_frame("PlaybackStarted", {"playback": playback.as_json("playing")}))
        playback.started.set()
        for index in range(1, len(playback.media)):
            await asyncio.sleep(self.media_s)
            playback.current = index
            await self.send(
                event_frame("PlaybackContinuing", {"playback": playback.as_json("continuing")})
            )
        await asyncio.sleep(self.media_s)
        channel = playback.channel
        if channel.script.barge_in and playback is channel.playbacks[0]:
            # The script says the caller keys over the prompt: when this process runs late,
            # the prompt must not end first (serve would rightly not stop it).
            await channel.barged.wait()
        await self._finish(playback)

    async def _finish(self, playback: FakePlayback) -> None:
        self.playbacks.pop(playback.id, None)
        await self.send(event_frame("PlaybackFinished", {"playback": playback.as_json("done")}))
        playback.finished.set()

    async def _stop(self, request: web.Request) -> web.Response:
        at = time.perf_counter()
        self.requests += 1
        playback_id = request.match_info["playback"]
        channel_id = playback_id.rsplit("-p", 1)[0]
        channel = self.channels.get(channel_id)
        if channel is not None and channel.script.barge_in and len(channel.playbacks) == 1:
            channel.arrive("barge-in key→stop", at)
        else:
            self.unexpected.append(f"stop of {playback_id}")
        playback = self.playbacks.get(playback_id)
        if playback is None:  # it had already finished: Asterisk answers 404
            return web.json_response({"message": "Playback not found"}, status=404)
        if playback.task is not None:
            playback.task.cancel()
        self._spawn(self._finish(playback))
        return web.Response(status=204)

    async def _set_variable(self, request: web.Request) -> web.Response:
        at = time.perf_counter()
        self.requests += 1
        channel = self._channel(request)
        if channel is None:
            self.unexpected.append(f"variable on a channel not in Stasis: {request.path}")
            return web.json_response({"message": "Channel not found"}, status=404)
        channel.variables[request.query.get("variable", "")] = request.query.get("value", "")
        channel.arrive("confirm→variables", at)
        return web.Response(status=204)

    async def _set_variables(self, request: web.Request) -> web.Response:
        at = time.perf_counter()
        self.requests += 1
        channel = self._channel(request)
        if channel is None:
            self.unexpected.append(f"variables on a channel not in Stasis: {request.path}")
            return web.json_response({"message": "Channel not found"}, status=404)
        body = await request.json()
        channel.variables.update({str(k): str(v) for k, v in body["variables"].items()})
        channel.arrive("confirm→variables", at)
        return web.Response(status=204)

    async def _continue(self, request: web.Request) -> web.Response:
        at = time.perf_counter()
        self.requests += 1
        channel = self._channel(request)
        if channel is None:
            self.unexpected.append(f"continue on a channel not in Stasis: {request.path}")
            return web.json_response({"message": "Channel not found"}, status=404)
        channel.in_stasis = False
        channel.arrive(HANDBACK, at)
        # Asterisk ends the channel's Stasis after the continue.
        self._spawn(self.send(event_frame("StasisEnd", {}, channel.snapshot)))
        return web.Response(status=204)

    async def _get_channel(self, request: web.Request) -> web.Response:
        self.requests += 1
        channel = self._channel(request)
        if channel is None:
            return web.json_response({"message": "Channel not found"}, status=404)
        return web.Response(text=channel.snapshot, content_type="application/json")

    async def _event_filter(self, request: web.Request) -> web.Response:
        """ARI's ``applications/{app}/eventFilter``: the body is the filter itself."""
        body = await request.json()
        allowed = [item["type"] for item in body.get("allowed", [])]
        self.allowed_events = set(allowed) or None  # an empty list allows everything
        return web.json_response({"name": request.match_info["app"], "events_allowed": allowed})

    async def _other(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.unexpected.append(f"{request.method} {request.path}")
        return web.json_response({"message": "not implemented by the fake"}, status=501)

    # -- one caller --

    async def caller(self, channel: FakeChannel, arrives_after: float = 0.0) -> None:
        """Run one channel's script, its StasisStart ``arrives_after`` seconds from now; on a
        step that never comes, stop there (``step`` says)."""
        await asyncio.sleep(arrives_after)
        self.in_stasis += 1
        self.peak_in_stasis = max(self.peak_in_stasis, self.in_stasis)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CALLER_PATIENCE_S):
                    await self._script(channel)
                    channel.step = "done"
        finally:
            self.in_stasis -= 1

    async def _key(self, channel: FakeChannel, index: int, key: str) -> float:
        fields = {"digit": key, "duration_ms": channel.script.durations[index]}
        return await self.send(event_frame("ChannelDtmfReceived", fields, channel.snapshot))

    async def _script(self, channel: FakeChannel) -> None:
        script = channel.script
        channel.sent["start→prompt"] = await self.send(
            event_frame("StasisStart", {"args": ENTRY_ARGS}, channel.snapshot)
        )
        channel.step = "prompt"
        await channel.reaction("start→prompt")
        prompt = channel.playbacks[0]
        first = 0
        if script.barge_in:
            await prompt.started.wait()
            await asyncio.sleep(self.media_s / 2)
            channel.sent["barge-in key→stop"] = await self._key(channel, 0, script.digits[0])
            channel.barged.set()
            first = 1
        else:
            await prompt.finished.wait()
        channel.step = "keys"
        for index in range(first, DIGITS_PER_ENTRY):
            await asyncio.sleep(script.gaps[index])
            if script.hangup_after == index:
                channel.in_stasis = False
                for kind, fields in (
                    ("ChannelHangupRequest", {"cause": 16}),
                    ("StasisEnd", {}),
                    ("ChannelDestroyed", {"cause": 16, "cause_txt": "Normal Clearing"}),
                ):
                    await self.send(event_frame(kind, fields, channel.snapshot))
                return
            sent = await self._key(channel, index, script.digits[index])
            if index == DIGITS_PER_ENTRY - 1:
                channel.sent["last key→read-back"] = sent
        channel.step = "read-back"
        await channel.reaction("last key→read-back")
        await channel.playbacks[1].finished.wait()
        await asyncio.sleep(script.gaps[DIGITS_PER_ENTRY])
        sent = await self._key(channel, DIGITS_PER_ENTRY, CONFIRM_KEY)
        channel.sent["confirm→variables"] = channel.sent[HANDBACK] = sent
        channel.step = "hand-back"
        await channel.reaction(HANDBACK)


# --- serve, as a process -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def process_cpu_s(pid: int) -> float:
    """utime + stime of every thread of the process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_status(pid: int) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM", "nonvoluntary_ctxt_switches"):
            values[name] = int(value.split()[0])
    return values


def runqueue_wait_s(pid: int) -> float:
    """How long the process's threads waited for a CPU (schedstat), in seconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def cpu_busy_s(cpu: int) -> float:
    """Time the core spent on anything but idling, from /proc/stat, in seconds."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(value) for value in line.split()[1:]]
            return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK  # less idle and iowait
    return 0.0


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


@contextlib.contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    if cpu is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    database: Path
    api_port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def start_serve(
    fake_url: str,
    work: Path,
    cpu: int,
    log_level: str,
    *,
    ari_password: str = "bench",
    database_dir: Path | None = None,
) -> Serve:
    """``serve`` with its journal in ``work``, and its SQLite database there too unless
    ``database_dir`` says where."""
    database = (database_dir or work) / "entries.sqlite3"
    api_port = free_port()
    ours = {
        "ARI_URL": fake_url,
        "ARI_USER": "ari-digits",
        "ARI_PASSWORD": ari_password,
        "ARI_APP": APP,
        "DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "JOURNAL_PATH": str(work / "journal.sqlite3"),
        "DIGITS_HASH_KEY": "bench-hash-key",
        "API_HOST": "127.0.0.1",
        "API_PORT": str(api_port),
        "API_TOKEN": "bench-" + os.urandom(16).hex(),  # else serve warns that /api is off
        "SPEECH": "off",
        "LOG_LEVEL": log_level,
        "TTS_CACHE_DIR": str(work / "prompts"),
    }
    # Nothing of the caller's environment may change what is measured (AGI_PORT, API_TOKEN …).
    settings = {"AGI_", "API_", "ARI_", "DATABASE_", "DIGITS_", "JOURNAL_", "LOG_", "RTP_"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(settings))}
    env |= ours | {"PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}
    log = work / "serve.log"
    # The code of this checkout, whatever the venv's editable install points at.
    command = ["taskset", "-c", str(cpu), sys.executable, "-m", "ari_app.cli", "serve"]
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
        )
    return Serve(process, database, api_port, log)


def stop_serve(serve: Serve) -> None:
    if serve.process.poll() is None:
        serve.process.send_signal(signal.SIGTERM)
        try:
            serve.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serve.process.kill()
            serve.process.wait()


def finished_rows(database: Path) -> int:
    # Read-only: the database is in WAL mode, so this never blocks serve's writes.
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM entries WHERE status != 'in_progress'"
        ).fetchone()
        return int(count)


def stored_rows(database: Path) -> dict[str, tuple[str, str, str, str]]:
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT channel_id, status, coalesce(user_input, ''), confirmed, coalesce(label, '')"
            " FROM entries"
        ).fetchall()
    return {row[0]: (row[1], row[2], row[3], row[4]) for row in rows}


async def handled_events(api_port: int) -> int:
    """``serve``'s own count of channel events handled (its event-handling histogram)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{api_port}/metrics") as response,
    ):
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("ari_digits_event_handling_seconds_count") and 'transport="ari"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def log_problems(log: Path) -> tuple[int, int, list[str]]:
    warnings = errors = 0
    samples: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        level = " ERROR " if " ERROR " in line else " WARNING " if " WARNING " in line else None
        if level is None:
            continue
        if level == " ERROR ":
            errors += 1
        else:
            warnings += 1
        if len(samples) < 5:
            samples.append(line[:300])
    return warnings, errors, samples


# --- one run of N channels -----------------------------------------------------------------------


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)]


def summary_ms(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None}
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "p50": round(quantile(ordered, 0.50) * 1000, 2),
        "p99": round(quantile(ordered, 0.99) * 1000, 2),
        "max": round(ordered[-1] * 1000, 2),
    }


async def run_channels(fake: FakeAri, n: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(f"{args.seed}:{n}")
    fake.reset()
    fake.connected.clear()
    with (
        tempfile.TemporaryDirectory(prefix="ari-load-") as scratch,
        tempfile.TemporaryDirectory(prefix="ari-load-db-", dir=args.database_dir) as database,
    ):
        serve = start_serve(
            fake.url,
            Path(scratch),
            args.serve_cpu,
            args.log_level,
            database_dir=Path(database),
        )
        try:
            try:
                async with asyncio.timeout(60):
                    while not fake.connected.is_set():
                        if serve.process.poll() is not None:
                            raise RuntimeError("serve exited at start-up")
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(0.2):
                                await fake.connected.wait()
            except (RuntimeError, TimeoutError):
                sys.stderr.write(serve.log.read_text(errors="replace")[-4000:])
                raise
            await asyncio.sleep(args.settle)  # let start-up work (migration, replay) finish
            if args.warmup:
                # First calls pay one-off costs (connections, caches); the measure is of a
                # serve that has taken calls before.
                fake.add_channels(
                    scripts(args.warmup, rng, 0.0, 0.0), f"17955{time.strftime('%H%M%S')}"
                )
                await asyncio.gather(*(fake.caller(channel) for channel in fake.channels.values()))
                await wait_for_rows(serve.database, args.warmup)
                fake.reset()
            return await measure(fake, serve, n, rng, args)
        finally:
            stop_serve(serve)


async def wait_for_rows(database: Path, count: int) -> None:
    async with asyncio.timeout(ROWS_PATIENCE_S):
        # Polled: the journal drains into the database in the background, and says nothing.
        while True:
            if finished_rows(database) >= count:
                return
            await asyncio.sleep(0.05)


async def measure(
    fake: FakeAri, serve: Serve, n: int, rng: random.Random, args: argparse.Namespace
) -> dict[str, Any]:
    plans = scripts(n, rng, args.hangup_share, args.barge_share)
    channels = fake.add_channels(plans, f"17956{time.strftime('%H%M%S')}")
    handled_before = await handled_events(serve.api_port)
    memory_before = process_status(serve.pid)
    load_before = loadavg()
    waited_before = runqueue_wait_s(serve.pid)
    serve_cpu_before = process_cpu_s(serve.pid)
    fake_cpu_before = time.process_time()
    bench_cpu = args.bench_cpu if args.bench_cpu >= 0 else None
    cores = [core for core in (args.serve_cpu, bench_cpu) if core is not None]
    busy_before = {core: cpu_busy_s(core) for core in cores}
    lag_watch = asyncio.create_task(fake.watch_lag())
    # Arrivals: all at once, or a Poisson process over --arrival-s (uniform times, sorted).
    arrivals = sorted(rng.uniform(0, args.arrival_s) for _ in channels)
    # The fake's own full collections paused it for up to 100 ms at 2,000 channels, stamping
    # requests late: it collects nothing while it measures (its heap grows by a few MB).
    gc.collect()
    gc.disable()
    started = time.perf_counter()
    await asyncio.gather(
        *(fake.caller(c, after) for c, after in zip(channels, arrivals, strict=True))
    )
    callers_done = time.perf_counter()
    gc.enable()
    await wait_for_rows(serve.database, args.warmup + n)
    stored = time.perf_counter()
    serve_cpu = process_cpu_s(serve.pid) - serve_cpu_before
    waited = runqueue_wait_s(serve.pid) - waited_before
    fake_cpu = time.process_time() - fake_cpu_before
    busy = {core: cpu_busy_s(core) - before for core, before in busy_before.items()}
    memory_after = process_status(serve.pid)
    lag_watch.cancel()
    await asyncio.gather(lag_watch, return_exceptions=True)
    handled = await handled_events(serve.api_port) - handled_before
    stop_serve(serve)
    rows = stored_rows(serve.database)
    warnings, errors, log_samples = log_problems(serve.log)

    latency: dict[str, list[float]] = {name: [] for name in (*REACTIONS, HANDBACK)}
    for channel in channels:
        for name, sent in channel.sent.items():
            if name in channel.arrived:
                latency[name].append(channel.arrived[name] - sent)
    latency["all"] = [value for name in REACTIONS for value in latency[name]]

    expected_handled = sum(channel.script.handled_events for channel in channels)
    no_prompt = sum(1 for channel in channels if "start→prompt" not in channel.arrived)
    missing = {
        name: sum(1 for channel in channels if name in channel.sent and name not in channel.arrived)
        for name in (*REACTIONS, HANDBACK)
    }
    stuck = [f"{channel.id}: {channel.step}" for channel in channels if channel.step != "done"]
    rows_correct = sum(
        1 for channel in channels if rows.get(channel.id) == (*channel.script.expected_row, LABEL)
    )
    completed = [channel for channel in channels if channel.script.hangup_after is None]
    handbacks_correct = sum(
        1
        for channel in completed
        if channel.readback_digits == channel.script.digits
        and channel.variables.get("DIGITS") == channel.script.digits
        and channel.variables.get("DIGITS_STATUS") == "completed"
        and channel.variables.get("DIGITS_CONFIRMED") == "yes"
        and len(channel.variables.get("DIGITS_ID", "")) == 36
        and len(channel.variables) == 4
    )
    wall = stored - started
    # What else ran on each pinned core: its busy time less what this bench put there.
    others = dict(busy)
    others[args.serve_cpu] -= serve_cpu
    if bench_cpu is not None:
        others[bench_cpu] -= fake_cpu
    lag = sorted(fake.lag) or [0.0]
    requests = fake.requests
    return {
        "channels": n,
        "completed_scripted": len(completed),
        "hangups_scripted": n - len(completed),
        "barge_ins_scripted": sum(1 for channel in channels if channel.script.barge_in),
        "wall_s": round(wall, 3),
        "callers_s": round(callers_done - started, 3),
        "entries_per_s": round(n / wall, 1),
        "peak_in_stasis": fake.peak_in_stasis,
        "serve_cpu_s": round(serve_cpu, 3),
        "cpu_ms_per_entry": round(serve_cpu / n * 1000, 3),
        "serve_core_busy": round(serve_cpu / wall, 3),
        # Shares of each pinned core used by other processes (and the kernel) meanwhile.
        "other_load_serve_core": round(max(0.0, others[args.serve_cpu]) / wall, 3),
        "other_load_bench_core": (
            None if bench_cpu is None else round(max(0.0, others[bench_cpu]) / wall, 3)
        ),
        "rss_mb_before": round(memory_before["VmRSS"] / 1024, 1),
        "rss_mb_after": round(memory_after["VmRSS"] / 1024, 1),
        "hwm_mb": round(memory_after["VmHWM"] / 1024, 1),
        "serve_waited_for_cpu_s": round(waited, 3),
        "serve_involuntary_switches": memory_after["nonvoluntary_ctxt_switches"]
        - memory_before["nonvoluntary_ctxt_switches"],
        "latency_ms": {name: summary_ms(values) for name, values in latency.items()},
        "events_sent": fake.frames_sent,
        "events_filtered": fake.frames_filtered,
        "channel_events_expected": expected_handled,
        "channel_events_handled": handled,
        "stasis_starts_without_prompt": no_prompt,
        "events_lost": max(0, expected_handled - handled) + no_prompt,
        "reactions_missing": missing,
        "callers_stuck": stuck[:20],
        "callers_stuck_count": len(stuck),
        "rest_requests": requests,
        "rest_requests_per_entry": round(requests / n, 2),
        "unexpected_requests": len(fake.unexpected),
        "unexpected_samples": fake.unexpected[:10],
        "rows": sum(1 for channel in channels if channel.id in rows),
        "rows_correct": rows_correct,
        "handbacks_correct": handbacks_correct,
        "fake_lag_ms_p99": round(quantile(lag, 0.99) * 1000, 2),
        "fake_lag_ms_max": round(lag[-1] * 1000, 2),
        "fake_cpu_s": round(fake_cpu, 3),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "serve_log_warnings": warnings,
        "serve_log_errors": errors,
        "serve_log_samples": log_samples,
    }


# --- output --------------------------------------------------------------------------------------


def print_tables(results: list[dict[str, Any]]) -> None:
    print(
        "\n| N | peak in Stasis | wall s | entries/s | CPU ms/entry | serve core busy | RSS MB before → after "
        "| HWM MB | REST/entry | events lost | rows correct | hand-backs ok | fake lag p99 "
        "| other load on serve's / bench's core |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['channels']} | {r['peak_in_stasis']} | {r['wall_s']:.1f} "
            f"| {r['entries_per_s']:.0f} "
            f"| {r['cpu_ms_per_entry']:.2f} | {r['serve_core_busy']:.0%} "
            f"| {r['rss_mb_before']:.0f} → {r['rss_mb_after']:.0f} | {r['hwm_mb']:.0f} "
            f"| {r['rest_requests_per_entry']:.2f} | {r['events_lost']} "
            f"| {r['rows_correct']}/{r['channels']} "
            f"| {r['handbacks_correct']}/{r['completed_scripted']} "
            f"| {r['fake_lag_ms_p99']:.1f} ms | {r['other_load_serve_core']:.0%} / "
            f"{r['other_load_bench_core'] or 0:.0%} |"
        )
    print("\nevent frame sent → REST request received (ms)")
    print("| N | reaction | count | p50 | p99 | max |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for name, s in r["latency_ms"].items():
            if s["count"]:
                print(
                    f"| {r['channels']} | {name} | {s['count']} | {s['p50']:.1f} "
                    f"| {s['p99']:.1f} | {s['max']:.1f} |"
                )
    for r in results:
        problems = {
            "missing reactions": {k: v for k, v in r["reactions_missing"].items() if v},
            "callers stuck": r["callers_stuck"],
            "unexpected requests": r["unexpected_samples"],
            "serve log": r["serve_log_samples"],
        }
        for what, detail in problems.items():
            if detail:
                print(f"N={r['channels']}: {what}: {detail}")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["channels"] for r in results]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in (*REACTIONS, HANDBACK):
        if all(r["latency_ms"][name]["count"] for r in results):
            p99 = [r["latency_ms"][name]["p99"] for r in results]
            left.plot(ns, p99, "-o", markersize=4, label=f"{name} p99")
    left.plot(ns, [r["latency_ms"]["all"]["p50"] for r in results], "k--o", label="all p50")
    left.plot(ns, [r["latency_ms"]["all"]["max"] for r in results], "k:", label="all max")
    left.axhline(5, color="grey", linewidth=0.8, linestyle="-.", label="target: p99 5 ms")
    left.set(
        xscale="log",
        yscale="log",
        xlabel="channels collecting at once",
        ylabel="event sent → REST request (ms)",
        title="latency",
    )
    left.minorticks_off()
    left.set_xticks(ns, [str(n) for n in ns])
    left.legend(fontsize=7)
    right.bar([str(n) for n in ns], [r["cpu_ms_per_entry"] for r in results], color="tab:green")
    right.axhline(3, color="grey", linewidth=0.8, linestyle="-.", label="target 3 ms")
    right.set(xlabel="channels collecting at once", ylabel="serve CPU ms per entry", title="cost")
    right.legend(fontsize=7, loc="upper left")
    rate = right.twinx()
    rate.plot([str(n) for n in ns], [r["entries_per_s"] for r in results], "k-o")
    rate.set_ylabel("entries a second (black)")
    figure.suptitle("ari-digits serve on one core, fake ARI (bench/ari_load.py)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, check=True
            )
            .stdout.decode()
            .strip()
        )
    return "unknown"


async def main(args: argparse.Namespace) -> None:
    fake = FakeAri(args.media_ms / 1000)
    await fake.start()
    results: list[dict[str, Any]] = []
    try:
        for n in args.channels:
            result = await run_channels(fake, n, args)
            results.append(result)
            print(
                f"N={n}: {result['wall_s']:.1f} s, {result['cpu_ms_per_entry']:.2f} CPU ms/entry, "
                f"all p99 {result['latency_ms']['all']['p99']} ms, "
                f"events lost {result['events_lost']}, rows correct {result['rows_correct']}/{n}",
                flush=True,
            )
    finally:
        await fake.close()
    print_tables(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "commit": git_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "serve_cpu": args.serve_cpu,
        "bench_cpu": args.bench_cpu,
        "seed": args.seed,
        "media_ms": args.media_ms,
        "arrival_s": args.arrival_s,
        "database_dir": str(args.database_dir) if args.database_dir else None,
        "temp_dir": tempfile.gettempdir(),
        "hangup_share": args.hangup_share,
        "barge_share": args.barge_share,
        "entry_args": ENTRY_ARGS,
        "log_level": args.log_level,
        "warmup": args.warmup,
    }
    json_path = args.out.with_suffix(".json")
    json_path.write_text(json.dumps({"meta": meta, "runs": results}, indent=1) + "\n")
    png_path = args.out.with_suffix(".png")
    plot(results, png_path)
    print(f"\nwrote {json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path}")
    print(f"wrote {png_path.relative_to(REPO) if png_path.is_relative_to(REPO) else png_path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", nargs="+", type=int, default=[100, 500, 1000, 2000])
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--hangup-share", type=float, default=0.05, help="callers who hang up")
    parser.add_argument("--barge-share", type=float, default=0.25, help="first key over the prompt")
    parser.add_argument("--media-ms", type=float, default=100, help="each media item's length")
    parser.add_argument(
        "--arrival-s",
        type=float,
        default=0.0,
        help="StasisStarts spread at random over this many seconds (0: all at once)",
    )
    parser.add_argument(
        "--database-dir",
        type=Path,
        help="where the SQLite database goes (default: beside the journal, in the temp dir); "
        "/dev/shm stands for a database on another machine, leaving the disk to the journal",
    )
    parser.add_argument("--serve-cpu", type=int, default=0, help="the core serve is pinned to")
    parser.add_argument("--bench-cpu", type=int, default=1, help="this process's core (-1: any)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds after serve connects")
    parser.add_argument(
        "--warmup", type=int, default=20, help="unmeasured callers first, through the same script"
    )
    parser.add_argument("--log-level", default="INFO", help="serve's LOG_LEVEL")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON and PNG path stem")
    arguments = parser.parse_args()
    bench_cpu = arguments.bench_cpu if arguments.bench_cpu >= 0 else None
    if bench_cpu is not None and bench_cpu not in os.sched_getaffinity(0):
        bench_cpu = None
    arguments.bench_cpu = -1 if bench_cpu is None else bench_cpu
    with pinned(bench_cpu):
        asyncio.run(main(arguments))
