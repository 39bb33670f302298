"""``ari-digits doctor``: is this Asterisk, this host and this database ready for ari-digits?

Each check is a small coroutine (or a pure function over what ARI answered) returning
:class:`CheckResult`; :func:`run_checks` runs them in order and the command prints one line per
check as it completes. Checks that need ARI are skipped, not failed, when ARI itself is
unreachable, so the one real cause stands out. Exit status: 1 when any check FAILs; WARN and SKIP
keep it 0.

Why the Stasis app check only WARNs: Asterisk lists an application only while a websocket holds
it, so it is absent whenever ``ari-digits serve`` is not running, which is the normal state when
an operator checks a setup before starting the service. The doctor never registers the service's
own app name: a second websocket for a name replaces the first, which would steal the running
service's calls. The RTP probe registers a throw-away app of its own instead, and that proves the
event websocket can register applications.

The RTP probe rebuilds the speech tap of :mod:`ari_app.ari.speech` around a simulated caller:
an externalMedia channel that we feed with a 1 kHz tone over RTP plays the caller, a snoop
(``spy=in``) hears it, and an externalMedia channel (``slin16``) in a mixing bridge with the snoop
sends that audio to an :class:`~ari_app.speech.rtp.RtpReceiver` on ``RTP_HOST``, exactly as a call
would. It needs no dialplan and no module the app does not need itself, so it runs against a
production Asterisk too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
import logging
import math
import shutil
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, pool
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from ari_app.ari.app import ari_media
from ari_app.ari.client import AriClient, AriUnavailable, wait_until_subscribed
from ari_app.media import TEXT_SCHEME, Digits, TextPrompt, media_item
from ari_app.params import (
    DEFAULT_CONFIRM_PROMPT,
    DEFAULT_INVALID_PROMPT,
    DEFAULT_PROMPT,
    DIGITS_PLACEHOLDER,
    ParamError,
    parse_media,
)
from ari_app.ports import ChannelGone, TransportError
from ari_app.server import listen_for_rtp
from ari_app.settings import Settings
from ari_app.speech.rtp import RtpPacket, RtpReceiver, pcm16be_to_float32
from ari_app.store.migrate import alembic_config
from ari_app.store.repository import normalize_url
from ari_app.tts import EspeakNg, TtsError, telephone_wav

HTTP_TIMEOUT_SECONDS = 5.0
DATABASE_TIMEOUT_SECONDS = 10.0
PROBE_WAIT_SECONDS = 3.0
PROBE_SETUP_TIMEOUT_SECONDS = 10.0
TEARDOWN_WAIT_SECONDS = 2.0
# 200 ms of audible tone is proof enough; waiting for it rather than a fixed time keeps it quick.
PROBE_PACKETS_NEEDED = 10
PROBE_TONE_HZ = 1000
PROBE_TONE_AMPLITUDE = 8192  # -12 dBFS: far above any rounding, far below clipping
# What we call audible on arrival: -40 dBFS, room for resampling and mixing to lower the level.
PROBE_AUDIBLE_PEAK = 0.01
# Asterisk drops inbound slin16 on externalMedia (payload type 118), so the simulated caller
# sends slin (8 kHz, payload type 10): 20 ms is 160 samples.
CALLER_FORMAT = "slin"
CALLER_PAYLOAD_TYPE = 10
CALLER_SAMPLES_PER_PACKET = 160
CALLER_SAMPLE_RATE = 8000
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
# Every key a caller can enter; a read-back of the digits plays each as a digits/N sound file.
READ_BACK_KEYS = "0123456789*#"


class Status(enum.StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    SKIP = "SKIP"
    FAIL = "FAIL"


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status.value:<4}  {self.name:<36} {self.detail}"
        return f"{text} -> {self.fix}" if self.fix else text


def summary(results: Sequence[CheckResult]) -> str:
    """The last line: how many checks ended in each status."""
    counts = {status: sum(r.status is status for r in results) for status in Status}
    return "doctor: " + ", ".join(f"{counts[s]} {s.value.lower()}" for s in Status if counts[s])


def exit_status(results: Iterable[CheckResult]) -> int:
    return 1 if any(r.status is Status.FAIL for r in results) else 0


# --- what ari-digits needs from Asterisk --------------------------------------------------------


@dataclass(frozen=True)
class ModuleRequirement:
    """One module (or any one of ``names``, for alternatives) and why the app needs it."""

    names: tuple[str, ...]
    why: str
    also_load: str = ""  # dependencies autoload=no does not pull in, for the fix line

    @property
    def label(self) -> str:
        return "|".join(self.names)

    def met_by(self, loaded: Mapping[str, str]) -> bool:
        return any(loaded.get(name) == "Running" for name in self.names)


CORE_MODULES = (
    ModuleRequirement(
        ("res_ari_events",), "the event websocket that registers the Stasis app and delivers calls"
    ),
    ModuleRequirement(("res_stasis",), "Stasis, the core of every ARI application"),
    ModuleRequirement(("app_stasis",), "the dialplan's Stasis() that hands callers to the app"),
    ModuleRequirement(
        ("res_ari_channels",),
        "answering, prompts, DIGITS* variables, returning callers to the dialplan",
    ),
    ModuleRequirement(("res_stasis_answer",), "answering callers who reach Stasis() unanswered"),
    ModuleRequirement(("res_stasis_playback",), "playing prompts and read-backs"),
    ModuleRequirement(("res_ari_playbacks",), "stopping a prompt when the caller barges in"),
)
SPEECH_MODULES = (
    ModuleRequirement(("res_stasis_snoop",), "speech: the spy=in snoop that hears the caller"),
    ModuleRequirement(
        ("chan_rtp",),
        "speech: the externalMedia channel that sends the audio to RTP_HOST",
        also_load="res_rtp_multicast.so",
    ),
    ModuleRequirement(("res_rtp_asterisk",), "speech: the RTP stack chan_rtp sends with"),
    ModuleRequirement(("res_ari_bridges",), "speech: the bridge joining snoop and externalMedia"),
    ModuleRequirement(
        ("bridge_simple", "bridge_softmix"), "speech: mixing in that bridge, either module will do"
    ),
    ModuleRequirement(
        ("codec_resample",), "speech: 8 kHz caller audio to the slin16 externalMedia sends"
    ),
)
AGI_MODULES = (
    ModuleRequirement(
        ("res_agi",),
        "FastAGI, on as AGI_PORT is set: the dialplan's AGI()",
        also_load="res_speech.so",
    ),
)


TEXT_PROMPT_MODULES = (
    ModuleRequirement(
        ("res_http_media_cache",),
        "text prompts (tts:): Asterisk fetches the rendered audio from MEDIA_BASE_URL",
        also_load="res_curl.so",
    ),
)


def required_modules(
    settings: Settings, prompts: Iterable[Sequence[str]] = ()
) -> list[ModuleRequirement]:
    """The modules this configuration uses: speech and FastAGI only when they are on, the
    remote-media ones only when a prompt (a parsed media list) has text."""
    modules = list(CORE_MODULES)
    if settings.speech:
        modules += SPEECH_MODULES
    if settings.agi_port is not None:
        modules += AGI_MODULES
    if has_text(prompts):
        modules += TEXT_PROMPT_MODULES
    return modules


def has_text(prompts: Iterable[Sequence[str]]) -> bool:
    return any(item.startswith(TEXT_SCHEME) for media in prompts for item in media)


def parse_prompts(raw_prompts: Iterable[str]) -> tuple[list[tuple[str, ...]], list[CheckResult]]:
    """``--prompt`` media lists parsed as an entry's ``prompt=`` is, and a FAIL for each one
    that an entry would refuse."""
    parsed: list[tuple[str, ...]] = []
    failures: list[CheckResult] = []
    for raw in raw_prompts:
        try:
            parsed.append(parse_media(raw))
        except ParamError as exc:
            shown = raw if len(raw) <= 60 else raw[:57] + "..."
            failures.append(
                CheckResult(
                    "prompt",
                    Status.FAIL,
                    f"--prompt {shown!r} is not a media list an entry accepts: {exc}",
                    "fix the prompt (as the dialplan passes it) and check again",
                )
            )
    return parsed, failures


def check_modules(
    loaded: Mapping[str, str], requirements: Sequence[ModuleRequirement]
) -> list[CheckResult]:
    """``loaded``: module name (without ``.so``) to its status, as ``GET /asterisk/modules``."""
    results = []
    for requirement in requirements:
        name = f"module {requirement.label}"
        if requirement.met_by(loaded):
            results.append(CheckResult(name, Status.PASS, f"running ({requirement.why})"))
            continue
        states = [f"{n} {loaded[n]}" for n in requirement.names if n in loaded]
        load = [f"'load => {requirement.names[0]}.so'"]
        if requirement.also_load:
            # autoload = no loads no dependencies: the module would fail without it.
            load.insert(0, f"'load => {requirement.also_load}'")
        results.append(
            CheckResult(
                name,
                Status.FAIL,
                f"{', '.join(states) or 'not loaded'}, needed for {requirement.why}",
                f"add {' then '.join(load)} to modules.conf, or 'module load' on the Asterisk CLI",
            )
        )
    return results


def check_stasis_app(applications: Iterable[str], app: str) -> CheckResult:
    name = "stasis-app"
    if app in applications:
        return CheckResult(
            name, Status.PASS, f"Stasis app {app!r} is registered: ari-digits serve is connected"
        )
    return CheckResult(
        name,
        Status.WARN,
        f"Stasis app {app!r} is not registered: ari-digits serve is not connected to this "
        "Asterisk, and Stasis() calls fail until it is",
        f"start ari-digits serve with this ARI_URL and ARI_APP={app}, the name the dialplan's "
        "Stasis() uses",
    )


def prompt_sounds(extra_prompts: Iterable[Sequence[str]] = ()) -> list[str]:
    """Sound files the default prompts play, plus those of ``extra_prompts`` (parsed media
    lists: :func:`parse_prompts`).

    Read-backs (``{digits}``) are spelled as the keys' sound files (:func:`ari_media`), so
    every key's file is needed.
    """
    media = [
        Digits(READ_BACK_KEYS) if item == DIGITS_PLACEHOLDER else media_item(item)
        for prompt in (
            DEFAULT_PROMPT,
            DEFAULT_INVALID_PROMPT,
            DEFAULT_CONFIRM_PROMPT,
            *extra_prompts,
        )
        for item in prompt
    ]
    sounds: list[str] = []
    # Text prompts are rendered to URLs at play time: no sound file to look up.
    for item in ari_media([item for item in media if not isinstance(item, TextPrompt)]):
        scheme, _, value = item.partition(":")
        # Remote media (sound:http://...) is fetched at play time; nothing to look up here.
        if scheme == "sound" and "://" not in value and value not in sounds:
            sounds.append(value)
    return sounds


# --- talking to ARI ------------------------------------------------------------------------------


class AriRest:
    """Plain REST requests for what the app's client does not do: read-only lookups and the
    probe's simulated caller. Returns the status and the JSON body (None when there is none)."""

    def __init__(self, settings: Settings) -> None:
        self.base = settings.ari_url + "ari/"
        token = base64.b64encode(f"{settings.ari_user}:{settings.ari_password}".encode()).decode()
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Basic {token}"},
            timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS),
            connector=aiohttp.TCPConnector(limit=8),
        )

    async def close(self) -> None:
        await self._session.close()

    async def request(
        self, method: str, path: str, params: Mapping[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self._session.request(method, self.base + path, params=params) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body


async def check_ari(rest: AriRest, settings: Settings) -> CheckResult:
    name = "ari"
    where = f"ARI at {settings.ari_url}"
    try:
        status, body = await rest.request("GET", "asterisk/info")
    except aiohttp.ClientConnectorError as exc:
        return CheckResult(
            name,
            Status.FAIL,
            f"nothing answers at ARI_URL={settings.ari_url} ({_reason(exc.os_error)})",
            "check ARI_URL, that Asterisk runs, and http.conf: enabled = yes, bindaddr and "
            "bindport matching ARI_URL",
        )
    except TimeoutError:
        return CheckResult(
            name,
            Status.FAIL,
            f"{where} did not answer within {HTTP_TIMEOUT_SECONDS:.0f} s",
            "check ARI_URL and that nothing (firewall, proxy) holds the connection",
        )
    except aiohttp.ClientError as exc:
        return CheckResult(name, Status.FAIL, f"{where} failed: {exc}", "check ARI_URL")
    if status == 401:
        empty = " (ARI_PASSWORD is empty)" if not settings.ari_password else ""
        return CheckResult(
            name,
            Status.FAIL,
            f"{where} refused the credentials of ARI_USER={settings.ari_user!r}{empty}",
            "set ARI_USER and ARI_PASSWORD to a [user] section of ari.conf (type = user)",
        )
    if status == 404:
        return CheckResult(
            name,
            Status.FAIL,
            f"the HTTP server at ARI_URL={settings.ari_url} has no ARI (404)",
            "load res_ari.so, set enabled = yes in ari.conf, and include http.conf's prefix "
            "in ARI_URL",
        )
    if status != 200 or not isinstance(body, dict):
        return CheckResult(
            name, Status.FAIL, f"{where} answered HTTP {status}", "see Asterisk's log"
        )
    version = body.get("system", {}).get("version", "unknown version")
    return CheckResult(
        name,
        Status.PASS,
        f"{where} accepts ARI_USER={settings.ari_user!r} (Asterisk {version})",
    )


def _reason(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return error.strerror or str(error)


def _lookup_failed(name: str, request: str, exc: Exception) -> CheckResult:
    """A lookup that got no usable answer, after ``ari`` passed: a FAIL naming the request."""
    if isinstance(exc, TimeoutError):
        reason = f"no answer within {HTTP_TIMEOUT_SECONDS:g} s"
    elif isinstance(exc, aiohttp.ClientError):
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:  # ValueError: not JSON, or not the JSON ARI sends
        reason = f"unexpected answer: {exc}"
    return CheckResult(
        name,
        Status.FAIL,
        f"{request} failed: {reason}",
        "see Asterisk's log; check that nothing (proxy, firewall) between here and ARI_URL "
        "breaks or rewrites the answers",
    )


def _named_entries(body: Any, what: str) -> list[Mapping[str, Any]]:
    """A listing's JSON answer: a list of objects with a ``name``; ValueError otherwise."""
    if not isinstance(body, list):
        raise ValueError(f"not a list of {what}")
    for entry in body:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"an entry without a name among the {what}: {str(entry)[:60]}")
    return body


# What a lookup can raise once ARI has answered check_ari: ARI (or a proxy) went away or
# answered garbage; json.JSONDecodeError is a ValueError.
LOOKUP_ERRORS = (TimeoutError, aiohttp.ClientError, ValueError)


async def fetch_modules(rest: AriRest) -> dict[str, str] | CheckResult:
    name, request = "modules", "GET /asterisk/modules"
    try:
        status, body = await rest.request("GET", "asterisk/modules")
        if status == 200:
            modules = _named_entries(body, "modules")
            return {str(m["name"]).removesuffix(".so"): str(m.get("status", "")) for m in modules}
    except LOOKUP_ERRORS as exc:
        return _lookup_failed(name, request, exc)
    return CheckResult(
        name,
        Status.FAIL,
        f"cannot list Asterisk's modules: {request} answered HTTP {status}",
        "load res_ari_asterisk.so",
    )


async def fetch_stasis_app(rest: AriRest, app: str) -> CheckResult:
    name, request = "stasis-app", "GET /applications"
    try:
        status, body = await rest.request("GET", "applications")
        if status == 200:
            applications = _named_entries(body, "applications")
            return check_stasis_app((str(a["name"]) for a in applications), app)
    except LOOKUP_ERRORS as exc:
        return _lookup_failed(name, request, exc)
    return CheckResult(
        name,
        Status.FAIL,
        f"cannot list Stasis apps: {request} answered HTTP {status}",
        "load res_ari_applications.so",
    )


async def check_sounds(rest: AriRest, sounds: Sequence[str]) -> CheckResult:
    name = "sounds"
    errors: dict[str, Exception] = {}

    async def look_up(sound: str) -> tuple[str, int, Any]:
        try:
            status, body = await rest.request("GET", "sounds/" + urllib.parse.quote(sound, safe=""))
        except LOOKUP_ERRORS as exc:
            # Not raised: gather would return at once and leave the other lookups running.
            errors[sound] = exc
            return sound, 0, None
        return sound, status, body

    answers = await asyncio.gather(*(look_up(sound) for sound in sounds))
    if errors:
        sound, error = next(iter(errors.items()))
        return _lookup_failed(name, f"GET /sounds/{sound}", error)
    missing = [s for s, status, body in answers if status == 404 and _says(body, "Sound not found")]
    broken = [(s, status) for s, status, body in answers if status != 200 and s not in missing]
    if broken:
        sound, status = broken[0]
        return CheckResult(
            name,
            Status.FAIL,
            f"cannot look sounds up: GET /sounds/{sound} answered HTTP {status}",
            "load res_ari_sounds.so",
        )
    if missing:
        return CheckResult(
            name,
            Status.FAIL,
            f"{len(missing)} of {len(sounds)} prompt sounds missing: {', '.join(missing)}",
            "install Asterisk's core sounds (Debian: asterisk-core-sounds-en-gsm) or put the "
            "files in Asterisk's sounds directory",
        )
    return CheckResult(
        name, Status.PASS, f"all {len(sounds)} prompt sounds present: {_abridge(sounds)}"
    )


def _says(body: Any, message: str) -> bool:
    return isinstance(body, dict) and body.get("message") == message


def _abridge(sounds: Sequence[str]) -> str:
    """``digits/0 ... digits/9`` shown as one ``digits/0-9,star,pound`` group."""
    digits = [s.removeprefix("digits/") for s in sounds if s.startswith("digits/")]
    others = [s for s in sounds if not s.startswith("digits/")]
    numbers = sorted(d for d in digits if d.isdigit())
    named = [d for d in digits if not d.isdigit()]
    group = [f"{numbers[0]}-{numbers[-1]}"] if len(numbers) > 2 else numbers
    return ", ".join([*others, *([f"digits/{','.join(group + named)}"] if digits else [])])


# --- the RTP probe -------------------------------------------------------------------------------


class ToneCounter:
    """The probe's sink: counts packets from the announced source and how loud they were."""

    def __init__(self) -> None:
        self.packets = 0
        self.audible = 0
        self.peak = 0.0
        self.payload_bytes = 0
        self.enough = asyncio.Event()

    def __call__(self, packet: RtpPacket) -> None:
        self.packets += 1
        self.payload_bytes = len(packet.payload)
        peak = float(np.abs(pcm16be_to_float32(packet.payload)).max())
        self.peak = max(self.peak, peak)
        if peak >= PROBE_AUDIBLE_PEAK:
            self.audible += 1
            if self.audible >= PROBE_PACKETS_NEEDED:
                self.enough.set()


def tone_packets(ssrc: int) -> Callable[[int], bytes]:
    """RTP packet ``n`` of a continuous tone (slin, 20 ms each)."""
    samples = np.arange(CALLER_SAMPLES_PER_PACKET)
    # 1 kHz at 8 kHz: a whole number of cycles per packet, so every payload is the same.
    wave = PROBE_TONE_AMPLITUDE * np.sin(2 * math.pi * PROBE_TONE_HZ * samples / CALLER_SAMPLE_RATE)
    payload = wave.astype(">i2").tobytes()

    def packet(n: int) -> bytes:
        header = bytes([0x80, CALLER_PAYLOAD_TYPE]) + (n & 0xFFFF).to_bytes(2, "big")
        timestamp = (n * CALLER_SAMPLES_PER_PACKET) & 0xFFFFFFFF
        return header + timestamp.to_bytes(4, "big") + ssrc.to_bytes(4, "big") + payload

    return packet


def _sender_host(announced: str, settings: Settings) -> str:
    """Where to send to a channel that announced a wildcard address: the host of ARI_URL."""
    if announced in WILDCARD_HOSTS:
        return urllib.parse.urlsplit(settings.ari_url).hostname or "127.0.0.1"
    return announced


@dataclass(frozen=True)
class ProbeIds:
    app: str
    caller: str
    snoop: str
    media: str
    bridge: str

    @classmethod
    def fresh(cls, app: str) -> ProbeIds:
        """Names of our own: never the service's app (a second websocket would take it over)."""
        token = uuid.uuid4().hex[:12]
        prefix = f"ari-digits-doctor-{token}"
        return cls(
            app=f"{app}-doctor-{token}",
            caller=f"{prefix}-caller",
            snoop=f"{prefix}-snoop",
            media=f"{prefix}-media",
            bridge=f"{prefix}-bridge",
        )


async def probe_rtp(settings: Settings, rest: AriRest) -> CheckResult:
    """The speech tap of a simulated caller; PASS once its tone arrives on RTP_HOST."""
    name = "rtp-probe"
    try:
        receiver = await listen_for_rtp(settings.rtp_host, settings.rtp_ports)
        note = ""
    except OSError:
        # A running serve holds RTP_PORTS: the route to this host is what is being probed.
        try:
            receiver = await RtpReceiver.listen(settings.rtp_host, 0)
        except OSError as exc:
            return CheckResult(
                name,
                Status.FAIL,
                f"cannot bind UDP on RTP_HOST={settings.rtp_host}: {exc.strerror or exc}",
                "set RTP_HOST to an address of this host",
            )
        note = " (RTP_PORTS busy: probed on a free port)"
    try:
        async with _tapped_caller(settings, rest, receiver) as tap:
            started = time.monotonic()
            await _send_tone_until(tap, tap.counter.enough)
            elapsed = time.monotonic() - started
    except TimeoutError:  # before OSError, of which it is a subclass
        return CheckResult(
            name,
            Status.FAIL,
            f"setting the probe up took over {PROBE_SETUP_TIMEOUT_SECONDS:.0f} s",
            "see Asterisk's log",
        )
    except (
        AriUnavailable,
        ChannelGone,
        TransportError,
        ProbeError,
        aiohttp.ClientError,
        OSError,
    ) as exc:
        return CheckResult(
            name, Status.FAIL, f"could not set the probe up: {exc}", "see Asterisk's log"
        )
    finally:
        receiver.close()
    counter = tap.counter
    where = f"from Asterisk {tap.source[0]}:{tap.source[1]} to {tap.destination}{note}"
    if counter.enough.is_set():
        return CheckResult(
            name,
            Status.PASS,
            f"a simulated caller's tone arrived: {counter.packets} RTP packets "
            f"({counter.payload_bytes} bytes, peak {_dbfs(counter.peak)}) {where} "
            f"in {elapsed:.2f} s",
        )
    return _probe_failure(counter, receiver.counters, where, settings)


@dataclass(frozen=True)
class Tap:
    """A simulated caller's audio, tapped: where to send its tone, where the tap sends it."""

    caller: asyncio.DatagramTransport
    caller_target: tuple[str, int]
    source: tuple[str, int]  # where Asterisk sends the tapped audio from
    destination: str  # where it sends it to
    counter: ToneCounter


@contextlib.asynccontextmanager
async def _tapped_caller(
    settings: Settings, rest: AriRest, receiver: RtpReceiver
) -> AsyncIterator[Tap]:
    """The app's speech tap (snoop, externalMedia slin16, mixing bridge) on a simulated caller:
    an externalMedia channel fed over RTP. Everything is torn down on exit, whatever happened."""
    ids = ProbeIds.fresh(settings.ari_app)
    client = AriClient(
        settings.ari_url, settings.ari_user, settings.ari_password, ids.app, max_connections=4
    )
    advertised = settings.rtp_advertised_host or settings.rtp_host
    caller: asyncio.DatagramTransport | None = None
    listening: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(PROBE_SETUP_TIMEOUT_SECONDS):
            await client.connect()
            opened = asyncio.Event()
            listening = asyncio.create_task(client.listen(lambda _event: None, opened))
            await wait_until_subscribed(listening, opened)
            caller, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=(settings.rtp_host, 0)
            )
            caller_port = caller.get_extra_info("sockname")[1]
            caller_target = await _create_caller(rest, settings, ids, f"{advertised}:{caller_port}")
            await client.snoop(ids.caller, ids.snoop)
            destination = f"{advertised}:{receiver.address[1]}"
            source = await client.external_media(ids.media, destination)
            counter = ToneCounter()
            receiver.register(source, counter)
            await client.create_mixing_bridge(ids.bridge, [ids.snoop, ids.media])
        yield Tap(caller, caller_target, source, destination, counter)
    finally:
        await _tear_down(client, ids)
        await _wait_gone(
            rest,
            [
                f"bridges/{ids.bridge}",
                *(f"channels/{i}" for i in (ids.media, ids.snoop, ids.caller)),
            ],
        )
        if listening is not None:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
        await client.close()
        if caller is not None:
            caller.close()
        # Asterisk drops an app once its websocket is gone and it holds no channel.
        await _wait_gone(rest, [f"applications/{ids.app}"])


class ProbeError(Exception):
    """Asterisk did not give the probe what it asked for."""


async def _create_caller(
    rest: AriRest, settings: Settings, ids: ProbeIds, caller_address: str
) -> tuple[str, int]:
    """An externalMedia channel playing the caller: we send it RTP, the snoop hears it."""
    status, body = await rest.request(
        "POST",
        "channels/externalMedia",
        {
            "channelId": ids.caller,
            "app": ids.app,
            "external_host": caller_address,
            "format": CALLER_FORMAT,
            "encapsulation": "rtp",
            "transport": "udp",
            "connection_type": "client",
            "direction": "both",
        },
    )
    variables = body.get("channelvars", {}) if isinstance(body, dict) else {}
    if status != 200 or "UNICASTRTP_LOCAL_PORT" not in variables:
        raise ProbeError(f"externalMedia for the simulated caller: HTTP {status} {body}")
    host = _sender_host(str(variables.get("UNICASTRTP_LOCAL_ADDRESS", "")), settings)
    return host, int(variables["UNICASTRTP_LOCAL_PORT"])


async def _send_tone_until(tap: Tap, enough: asyncio.Event) -> None:
    """Send the caller's 20 ms packets in real time until ``enough`` is set or time is up."""
    packet = tone_packets(ssrc=uuid.uuid4().int & 0xFFFFFFFF)
    interval = CALLER_SAMPLES_PER_PACKET / CALLER_SAMPLE_RATE
    for n in range(int(PROBE_WAIT_SECONDS / interval)):
        tap.caller.sendto(packet(n), tap.caller_target)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await enough.wait()
        if enough.is_set():
            return


async def _tear_down(client: AriClient, ids: ProbeIds) -> None:
    """Leave nothing behind, whatever state the probe reached."""
    for teardown in (
        client.destroy_bridge(ids.bridge),
        client.hangup_quietly(ids.media),
        client.hangup_quietly(ids.snoop),
        client.hangup_quietly(ids.caller),
    ):
        # Not connected (the probe failed early) or Asterisk went away: nothing to clean.
        with contextlib.suppress(TransportError):
            await teardown


async def _wait_gone(rest: AriRest, paths: Sequence[str]) -> None:
    """Asterisk hangs up and unregisters asynchronously: wait, briefly, until each path answers
    404, so that the doctor leaves Asterisk as it found it when it returns."""
    deadline = time.monotonic() + TEARDOWN_WAIT_SECONDS
    for path in paths:
        while time.monotonic() < deadline:
            try:
                status, _ = await rest.request("GET", path)
            except (aiohttp.ClientError, TimeoutError):
                return  # Asterisk is gone: nothing of ours is left in it either
            if status == 404:
                break
            await asyncio.sleep(0.05)


def _probe_failure(
    counter: ToneCounter, counters: Mapping[str, int], where: str, settings: Settings
) -> CheckResult:
    name = "rtp-probe"
    if counter.packets:
        return CheckResult(
            name,
            Status.FAIL,
            f"{counter.packets} RTP packets {where} but only {counter.audible} carried the tone "
            f"(peak {_dbfs(counter.peak)})",
            "check that codec_resample is loaded and the snoop hears the caller",
        )
    if counters["unknown_source"]:
        return CheckResult(
            name,
            Status.FAIL,
            f"{counters['unknown_source']} RTP packets came from another address than the one "
            f"Asterisk announced ({where.removeprefix('from ')})",
            "a NAT between Asterisk and this host rewrites the source; run ari-digits where "
            "Asterisk's address is seen unchanged",
        )
    if counters["payload_type"]:
        return CheckResult(
            name,
            Status.FAIL,
            f"{counters['payload_type']} RTP packets were not slin16 (payload type 118) {where}",
            "see Asterisk's log for the externalMedia channel's format",
        )
    advertised = settings.rtp_advertised_host or settings.rtp_host
    return CheckResult(
        name,
        Status.FAIL,
        f"no RTP within {PROBE_WAIT_SECONDS:.0f} s {where}",
        f"Asterisk must reach this host at RTP_ADVERTISED_HOST={advertised}: set it to this "
        "host's address as Asterisk sees it, RTP_HOST to an address it listens on, and allow "
        "UDP from Asterisk's rtp.conf port range",
    )


def _dbfs(peak: float) -> str:
    return f"{20 * math.log10(peak):.0f} dBFS" if peak > 0 else "silence"


# --- the database --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Migrations:
    heads: tuple[str, ...]
    known: frozenset[str]


def _read_migrations(url: str) -> Migrations:
    """Blocking: reads the migration scripts (run in a thread)."""
    scripts = ScriptDirectory.from_config(alembic_config(url))
    return Migrations(
        heads=tuple(scripts.get_heads()),
        known=frozenset(s.revision for s in scripts.walk_revisions()),
    )


def _current_revisions(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


def _missing_sqlite_file(url: URL) -> Path | None:
    """Connecting would create a missing SQLite file: the doctor must change nothing."""
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    path = Path(database)
    return None if path.exists() else path


async def check_database(database_url: str) -> CheckResult:
    name = "database"
    try:
        url = normalize_url(database_url)
    except ValueError as exc:
        return CheckResult(name, Status.FAIL, str(exc), "set DATABASE_URL")
    shown = url.render_as_string(hide_password=True)
    try:
        migrations = await asyncio.to_thread(_read_migrations, database_url)
        missing_file = await asyncio.to_thread(_missing_sqlite_file, url)
    except RuntimeError as exc:  # no migrations/ next to the package
        return CheckResult(name, Status.FAIL, str(exc))
    if missing_file is not None:
        return CheckResult(
            name,
            Status.FAIL,
            f"no SQLite database at {missing_file} (DATABASE_URL={shown})",
            "run ari-digits migrate to create it, or fix DATABASE_URL",
        )
    connect_args = (
        {"timeout": DATABASE_TIMEOUT_SECONDS} if url.get_backend_name() != "sqlite" else {}
    )
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS), engine.connect() as connection:
            current = await connection.run_sync(_current_revisions)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return CheckResult(
            name,
            Status.FAIL,
            f"cannot connect to DATABASE_URL={shown}: {reason}",
            "check DATABASE_URL and that the database server runs",
        )
    finally:
        await engine.dispose()
    head = ", ".join(migrations.heads)
    if set(current) == set(migrations.heads):
        return CheckResult(name, Status.PASS, f"{shown} is migrated to head ({head})")
    if not current:
        return CheckResult(
            name,
            Status.FAIL,
            f"{shown} is not migrated (no schema revision; head is {head})",
            "run ari-digits migrate (serve also migrates when it starts)",
        )
    unknown = [r for r in current if r not in migrations.known]
    if unknown:
        return CheckResult(
            name,
            Status.FAIL,
            f"{shown} is at revision {', '.join(unknown)}, which this ari-digits does not know "
            f"(head {head})",
            "run the ari-digits version that migrated it, or a newer one",
        )
    return CheckResult(
        name,
        Status.FAIL,
        f"{shown} is at revision {', '.join(current)}, head is {head}",
        "run ari-digits migrate (serve also migrates when it starts)",
    )


# --- text prompts --------------------------------------------------------------------------------


async def check_text_engine(settings: Settings) -> CheckResult:
    """Render a short text as ``serve`` would: catches a missing espeak-ng and a bad voice,
    which would otherwise only show as beeps (and logged errors) during calls."""
    name = "tts-engine"
    engine = EspeakNg(voice=settings.tts_voice, words_per_minute=settings.tts_rate)
    if await asyncio.to_thread(shutil.which, engine.executable) is None:
        return CheckResult(
            name,
            Status.FAIL,
            f"{engine.executable} is not installed: tts: prompts would play a beep",
            "install it (Debian: apt-get install espeak-ng)",
        )
    try:
        audio = await engine.synthesize("Please key your number")
        await asyncio.to_thread(telephone_wav, audio)
    except TtsError as exc:
        return CheckResult(
            name,
            Status.FAIL,
            f"{engine.identity} cannot render a prompt: {exc}",
            "set TTS_VOICE to a voice espeak-ng --voices lists",
        )
    return CheckResult(name, Status.PASS, f"{engine.identity} renders text prompts")


# --- all together --------------------------------------------------------------------------------


async def run_checks(
    settings: Settings,
    *,
    extra_prompts: Sequence[str] = (),
    on_result: Callable[[CheckResult], None] = lambda _result: None,
) -> list[CheckResult]:
    """Every check in order; ``on_result`` sees each result as soon as it is known.
    ``extra_prompts``: media lists as the dialplan passes them (``--prompt``)."""
    results: list[CheckResult] = []

    def report(result: CheckResult) -> None:
        results.append(result)
        on_result(result)

    prompts, refused = parse_prompts(extra_prompts)
    for result in refused:
        report(result)
    rest = AriRest(settings)
    try:
        ari = await check_ari(rest, settings)
        report(ari)
        if ari.status is Status.PASS:
            async for result in _ari_checks(rest, settings, prompts):
                report(result)
        else:
            for name in ("modules", "stasis-app", "sounds", "rtp-probe"):
                report(CheckResult(name, Status.SKIP, "needs ARI"))
    finally:
        await rest.close()
    report(await check_database(settings.database_url))
    if has_text(prompts):
        report(await check_text_engine(settings))
    return results


async def _ari_checks(
    rest: AriRest, settings: Settings, extra_prompts: Sequence[Sequence[str]]
) -> AsyncIterator[CheckResult]:
    loaded = await fetch_modules(rest)
    if isinstance(loaded, CheckResult):
        yield loaded
        loaded = {}
    else:
        for result in check_modules(loaded, required_modules(settings, extra_prompts)):
            yield result
    yield await fetch_stasis_app(rest, settings.ari_app)
    yield await check_sounds(rest, prompt_sounds(extra_prompts))
    if not settings.speech:
        yield CheckResult("rtp-probe", Status.SKIP, "SPEECH=off: no audio is tapped")
        return
    absent = [r.label for r in SPEECH_MODULES if not r.met_by(loaded)]
    if absent:
        yield CheckResult("rtp-probe", Status.SKIP, f"needs {', '.join(absent)}")
        return
    yield await probe_rtp(settings, rest)


async def doctor(settings: Settings, extra_prompts: Sequence[str] = ()) -> int:
    """The ``doctor`` command: print each check as it completes; the exit status."""
    # Alembic's migration context logs at INFO when it reads the revision: noise in a report.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    results = await run_checks(
        settings, extra_prompts=extra_prompts, on_result=lambda r: print(r.line(), flush=True)
    )
    print(summary(results))
    return exit_status(results)
