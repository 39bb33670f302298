"""Real SIP callers speak or key 4 digits into ``Stasis(digits,num_digits=4)``; score the rows.

Unlike ``speech_accuracy.py`` (clips straight into the recogniser), every call here takes the
production path: SIPp INVITEs chan_pjsip on the sandbox (extension 4444 of ``[from-trunk]``),
its RTP carries the caller as G.711 mu-law (and RFC 4733 key events, pt 101, as carriers send
them), Asterisk's snoop feeds ``ari-digits serve`` (SPEECH=on, a fresh SQLite in a temp dir, its
own API_PORT), and the app hands the call back to the dialplan, which hangs up (the BYE ends the
SIPp call). Then the stored entries are read over the HTTP API and scored.

Scenarios (``--scenario``, default all):

- ``spoken``: after 1.5 s of line silence (the prompt is a beep) the caller says 4 digits: human
  recordings from ``--human-dir`` (FSDD layout ``{digit}_{speaker}_{index}.wav``, 8 kHz; one
  speaker per string, 150-400 ms gaps) or espeak-ng voices; then silence until the BYE.
  Right = completed with exactly those digits; completed with others = WRONG (the worst).
- ``talk-then-keys``: a sentence with no digits, then keys 1 2 3 4 as RFC 4733 events in the
  same RTP stream. Right = completed with 1234.
- ``talk-only``: "hello? hello?", "can you repeat that", ... and nothing else. Right = not
  completed and no digit stored in any attempt.

Each call has its own pcap (written here: Ethernet/IPv4/UDP/RTP, 20 ms mu-law packets) and its
own ``sipp -m 1`` process with distinct SIP and media ports. Calls are matched to entries by
caller id: each call's From user is a unique number, which the app stores as
``caller_number``. The whole run holds ``flock /tmp/ari-digits-asterisk.lock``, since only one
``serve`` may be connected to the Stasis app ``digits``.

    .venv/bin/python bench/sip_speech.py --human-dir /path/to/fsdd --calls 10 --concurrency 2
    .venv/bin/python bench/sip_speech.py --scenario talk-only --calls 4 --keep /tmp/sip-bench
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import wave
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.sandbox import AsteriskSandbox, default_conf_dir

RATE: Final = 8000
FRAME: Final = 160  # samples in a 20 ms packet
PT_PCMU: Final = 0
PT_EVENT: Final = 101
EXTENSION: Final = "4444"  # [from-trunk] in asterisk_conf/extensions.conf
LABEL: Final = "sip-speech"
LOCK_FILE: Final = Path("/tmp/ari-digits-asterisk.lock")
SCENARIO_TEMPLATE: Final = Path(__file__).resolve().parent / "sip" / "uac_pcap.xml"
SCENARIOS: Final = ("spoken", "talk-then-keys", "talk-only")
VOICES: Final = ("en-us", "en", "en+f3", "en+m3")
WORDS: Final = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CHATTER: Final = (
    "hello? hello?",
    "can you repeat that",
    "sorry, I didn't catch that",
    "hello, is anybody there?",
    "what do you need?",
)
SENTENCES: Final = (
    "hello, yes, I have it here, just a moment",
    "okay, let me find it, hold on",
    "right, yes, I have the letter in front of me",
)
LEAD_IN_S: Final = 1.5  # line silence while the beep plays
SPEECH_DBFS: Final = -20.0  # active speech level on the line

Audio = npt.NDArray[np.float32]


def require_tools(need_espeak: bool) -> None:
    """Fail early, naming the package, rather than in the middle of a run."""
    missing = []
    if shutil.which("sipp") is None:
        missing.append("sipp (apt-get install sip-tester)")
    if need_espeak and shutil.which("espeak-ng") is None:
        missing.append("espeak-ng (apt-get install espeak-ng)")
    if missing:
        raise SystemExit("not found: " + ", ".join(missing))
    version = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout
    if "PCAP" not in version:
        raise SystemExit(f"this sipp is built without pcap play support: {version.strip()}")
    if os.geteuid() != 0:
        raise SystemExit("SIPp plays pcaps through a raw socket: run as root")


# --- audio ------------------------------------------------------------------------------------


def read_wav_8k(path: Path) -> Audio:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getframerate() != RATE:
            raise SystemExit(f"{path}: expected 16-bit PCM at 8 kHz")
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return raw.reshape(-1, w.getnchannels())[:, 0].astype(np.float32) / 32768.0


def resample(audio: Audio, rate: int) -> Audio:
    """To 8 kHz by FFT truncation (a brick-wall low-pass: no aliasing from espeak's 22 kHz)."""
    if rate == RATE:
        return audio
    padded = np.concatenate([audio, np.zeros(rate // 10, np.float32)])
    out_len = round(len(padded) * RATE / rate)
    spectrum = np.fft.rfft(padded)[: out_len // 2 + 1]
    out = np.fft.irfft(spectrum, n=out_len) * (out_len / len(padded))
    return out[: round(len(audio) * RATE / rate)].astype(np.float32)


def espeak(text: str, voice: str, wpm: int, work: Path) -> Audio:
    out = work / "espeak.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(out), text],
        check=True,
        capture_output=True,
    )
    with wave.open(str(out), "rb") as w:
        rate = w.getframerate()
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    audio = resample(raw.astype(np.float32) / 32768.0, rate)
    return trim(audio)


def trim(audio: Audio, floor_db: float = -45.0) -> Audio:
    """Cut leading and trailing near-silence, so 'end of speech' is where the voice stops."""
    frames = len(audio) // FRAME
    if frames == 0:
        return audio
    power = np.mean(audio[: frames * FRAME].reshape(frames, FRAME).astype(np.float64) ** 2, 1)
    loud = np.nonzero(power > 10 ** (floor_db / 10))[0]
    if len(loud) == 0:
        return audio
    trimmed: Audio = audio[loud[0] * FRAME : (loud[-1] + 1) * FRAME]
    return trimmed


def at_level(audio: Audio, dbfs: float = SPEECH_DBFS) -> Audio:
    """Scale the active speech (frames within 30 dB of the loudest) to ``dbfs`` RMS."""
    frames = len(audio) // FRAME
    power = np.mean(audio[: frames * FRAME].reshape(frames, FRAME).astype(np.float64) ** 2, 1)
    active = float(power[power > power.max() * 1e-3].mean())
    gain = float(np.sqrt(10 ** (dbfs / 10) / active))
    scaled: Audio = np.clip(audio * gain, -1.0, 1.0).astype(np.float32)
    return scaled


def silence(seconds: float) -> Audio:
    return np.zeros(round(seconds * RATE), np.float32)


def mulaw(audio: Audio) -> bytes:
    """G.711 mu-law (the ITU bias-and-segment encoder, vectorised)."""
    x = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(np.maximum(magnitude >> 7, 1))).astype(np.int32)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    encoded = (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)
    return bytes(encoded.tobytes())


# --- RTP and pcap -----------------------------------------------------------------------------


@dataclass
class RtpTrack:
    """One RTP stream on a 20 ms clock: audio packets, and RFC 4733 events in place of audio
    while a key is down (as carriers do), sharing SSRC, sequence numbers and timestamps."""

    rng: random.Random
    packets: list[tuple[float, bytes]] = field(default_factory=list)
    slot: int = 0

    def __post_init__(self) -> None:
        self.ssrc = self.rng.getrandbits(32)
        self.seq = self.rng.getrandbits(16)
        self.ts0 = self.rng.getrandbits(32)
        self.talkspurt = True
        self.key_end_s = 0.0

    def _packet(self, t: float, pt: int, marker: bool, timestamp: int, payload: bytes) -> None:
        header = struct.pack(
            "!BBHII",
            0x80,
            (0x80 if marker else 0) | pt,
            self.seq & 0xFFFF,
            timestamp & 0xFFFFFFFF,
            self.ssrc,
        )
        self.seq += 1
        self.packets.append((t, header + payload))

    def audio(self, audio: Audio) -> None:
        data = mulaw(audio)
        data += b"\xff" * (-len(data) % FRAME)  # mu-law silence to a whole packet
        for offset in range(0, len(data), FRAME):
            self._packet(
                self.slot * 0.02,
                PT_PCMU,
                self.talkspurt,
                self.ts0 + self.slot * FRAME,
                data[offset : offset + FRAME],
            )
            self.talkspurt = False
            self.slot += 1

    def key(self, digit: str, duration_ms: int = 100, volume: int = 10) -> None:
        """Updates every 20 ms (the first with the marker bit), then the end packet 3 times."""
        event = "0123456789*#ABCD".index(digit)
        start = self.slot
        steps = max(2, duration_ms // 20)
        for k in range(1, steps):
            payload = struct.pack("!BBH", event, volume, k * FRAME)
            self._packet(self.slot * 0.02, PT_EVENT, k == 1, self.ts0 + start * FRAME, payload)
            self.slot += 1
        end = struct.pack("!BBH", event, 0x80 | volume, steps * FRAME)
        self.key_end_s = self.slot * 0.02  # the first end packet: where the key ends
        for repeat in range(3):
            t = self.slot * 0.02 + repeat * 0.0001
            self._packet(t, PT_EVENT, False, self.ts0 + start * FRAME, end)
        self.slot += 1
        self.talkspurt = True  # audio after an event starts a new talkspurt

    @property
    def seconds(self) -> float:
        return self.slot * 0.02


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def write_pcap(path: Path, packets: Sequence[tuple[float, bytes]]) -> None:
    """libpcap file, link type Ethernet: each RTP packet in UDP 127.0.0.1:40000 -> :50000.

    SIPp keeps only the UDP part and replaces ports and addresses with the call's; every packet
    goes to the same destination port, so none is shifted off the call's media port."""
    src, dst, sport, dport = bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]), 40000, 50000
    start = time.time()
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for ident, (t, rtp) in enumerate(packets):
            udp_len = 8 + len(rtp)
            pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
            udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + rtp
            udp_sum = _checksum(pseudo + udp) or 0xFFFF
            udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ident & 0xFFFF, 0x4000, 64, 17, 0, src, dst
            )
            ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
            frame = b"\0" * 12 + b"\x08\x00" + ip + udp
            stamp = start + t
            sec = int(stamp)
            f.write(struct.pack("<IIII", sec, int((stamp - sec) * 1e6), len(frame), len(frame)))
            f.write(frame)


# --- the calls --------------------------------------------------------------------------------


@dataclass
class CallPlan:
    scenario: str
    index: int
    caller: str  # From user = the caller id number the entry stores
    source: str  # who speaks: "human george", "espeak en+f3 160", ...
    expected: str | None  # digits a right entry holds; None: no digits at all
    said: str  # what the caller says/keys, for the report
    input_end_s: float  # end of the caller's last speech or key, from the start of the pcap
    track: RtpTrack


@dataclass
class CallResult:
    plan: CallPlan
    sipp_rc: int
    sipp_note: str = ""
    entry: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        return "missing" if self.entry is None else str(self.entry["status"])

    @property
    def digits(self) -> str:
        return "" if self.entry is None else str(self.entry.get("digits") or "")

    @property
    def heard_digits(self) -> bool:
        """Any digit stored in any attempt (the entry's digits are only the last attempt's)."""
        events = self.entry.get("events", []) if self.entry else []
        return bool(self.digits) or any(e.get("kind") == "digit" for e in events)

    @property
    def verdict(self) -> str:
        """right | WRONG | not_completed (talk-only: digits stored without completing)."""
        completed = self.status == "completed"
        if self.plan.expected is None:
            if completed:
                return "WRONG"
            return "not_completed" if self.heard_digits else "right"
        if completed:
            return "right" if self.digits == self.plan.expected else "WRONG"
        return "not_completed"

    @property
    def hand_back_ms(self) -> float | None:
        """Entry end minus end of caller input, taking the entry's start as the pcap's start
        (StasisStart follows the 200 OK the ACK answers within a millisecond here)."""
        if self.entry is None or not self.entry.get("ended_at"):
            return None
        started = _time(self.entry["started_at"])
        ended = _time(self.entry["ended_at"])
        return (ended - started - self.plan.input_end_s) * 1000


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class HumanDigits:
    """FSDD recordings by speaker and digit."""

    def __init__(self, directory: Path) -> None:
        self.by_speaker: dict[str, dict[str, list[Path]]] = {}
        for path in sorted(directory.glob("*.wav")):
            parts = path.stem.split("_")
            if len(parts) != 3 or not parts[0].isdigit():
                continue
            self.by_speaker.setdefault(parts[1], {}).setdefault(parts[0], []).append(path)
        self.speakers = sorted(
            s for s, d in self.by_speaker.items() if len(d) == 10
        )  # only speakers with every digit
        if not self.speakers:
            raise SystemExit(
                f"{directory}: no speaker with recordings of all ten digits "
                "({digit}_{speaker}_{index}.wav)"
            )

    def say(self, digits: str, speaker: str, rng: random.Random) -> Audio:
        pieces: list[Audio] = []
        for i, digit in enumerate(digits):
            if i:
                pieces.append(silence(rng.uniform(0.15, 0.4)))
            pieces.append(trim(read_wav_8k(rng.choice(self.by_speaker[speaker][digit]))))
        return at_level(np.concatenate(pieces))


def plan_calls(
    scenario: str,
    count: int,
    *,
    human: HumanDigits | None,
    spoken_source: str,
    rng: random.Random,
    work: Path,
    run_id: str,
    first_index: int,
    tail_s: float,
) -> list[CallPlan]:
    plans: list[CallPlan] = []
    for n in range(count):
        index = first_index + n
        track = RtpTrack(random.Random(rng.getrandbits(64)))
        track.audio(silence(LEAD_IN_S))
        voice, wpm = VOICES[n % len(VOICES)], rng.randint(140, 180)
        expected: str | None
        if scenario == "spoken":
            expected = "".join(rng.choice("0123456789") for _ in range(4))
            use_human = human is not None and (
                spoken_source == "human" or (spoken_source == "both" and n % 2 == 0)
            )
            if use_human and human is not None:
                speaker = human.speakers[n % len(human.speakers)]
                audio, source = human.say(expected, speaker, rng), f"human {speaker}"
            else:
                words = " ".join(WORDS[int(d)] for d in expected)
                audio, source = at_level(espeak(words, voice, wpm, work)), f"espeak {voice} {wpm}"
            said = expected
            track.audio(audio)
            input_end = track.seconds
        elif scenario == "talk-then-keys":
            expected = "1234"
            sentence = SENTENCES[n % len(SENTENCES)]
            track.audio(at_level(espeak(sentence, voice, wpm, work)))
            track.audio(silence(rng.uniform(0.6, 1.2)))
            for i, key in enumerate(expected):
                if i:
                    track.audio(silence(rng.uniform(0.15, 0.3)))
                track.key(key, duration_ms=rng.choice((80, 100, 120, 160)))
            source, said = f"espeak {voice} {wpm} + RFC 4733", f'"{sentence}" + keys 1234'
            input_end = track.key_end_s
        else:
            expected = None
            lines = [CHATTER[(n + k) % len(CHATTER)] for k in range(3)]
            for k, line in enumerate(lines):
                if k:
                    track.audio(silence(rng.uniform(1.5, 3.0)))
                track.audio(at_level(espeak(line, voice, wpm, work)))
            source, said = f"espeak {voice} {wpm}", " / ".join(f'"{line}"' for line in lines)
            input_end = track.seconds
        track.audio(silence(tail_s))
        caller = f"7{run_id}{index:04d}"
        plans.append(CallPlan(scenario, index, caller, source, expected, said, input_end, track))
    return plans


# --- serve, SIPp ------------------------------------------------------------------------------


@contextlib.contextmanager
def asterisk_lock() -> Iterator[None]:
    """Only one serve may hold the Stasis app 'digits': share the lock the other tools use."""
    with LOCK_FILE.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for {LOCK_FILE} (another run uses the Stasis app) ...", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class PortPool:
    """A SIP port and a media block (SIPp binds -mp and -mp+2) per call in flight."""

    def __init__(self, slots: int) -> None:
        self.free: list[tuple[int, int]] = []
        sip, media = 15100, 16000
        while len(self.free) < slots and sip < 15900:
            if udp_free(sip) and all(udp_free(media + k) for k in range(4)):
                self.free.append((sip, media))
            sip, media = sip + 1, media + 10
        if len(self.free) < slots:
            raise SystemExit("not enough free UDP ports in 15100-15899 / 16000-23999 for SIPp")

    @contextlib.asynccontextmanager
    async def take(self) -> Any:
        ports = self.free.pop()
        try:
            yield ports
        finally:
            self.free.append(ports)


def http_json(url: str, token: str | None = None, timeout: float = 5) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (OSError, ValueError):
        return 0, None


def stasis_app_registered(sandbox: AsteriskSandbox, app: str) -> bool:
    import base64

    request = urllib.request.Request(f"{sandbox.ari_url.rstrip('/')}/ari/applications")
    credentials = f"{sandbox.ari_user}:{sandbox.ari_password}".encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
    with urllib.request.urlopen(request, timeout=5) as response:
        return any(a.get("name") == app for a in json.loads(response.read()))


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    api: str
    token: str
    log: Path


def start_serve(sandbox: AsteriskSandbox, work: Path, timeout: float) -> Serve:
    executable = Path(sys.executable).with_name("ari-digits")
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "ari_app.cli"]
    port, token = free_port(), secrets.token_hex(8)
    env = {
        **os.environ,
        "ARI_URL": sandbox.ari_url,
        "ARI_USER": sandbox.ari_user,
        "ARI_PASSWORD": sandbox.ari_password,
        "ARI_APP": "digits",
        "DATABASE_URL": f"sqlite+aiosqlite:///{work}/sip-speech.sqlite3",
        "DIGITS_HASH_KEY": "bench",
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_TOKEN": token,
        "SPEECH": "on",
        "AGI_PORT": "",
    }
    log = work / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "serve"],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    serve = Serve(process, f"http://127.0.0.1:{port}", token, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ari-digits serve exited ({process.returncode}):\n{tail(log)}")
        if http_json(f"{serve.api}/readyz")[0] == 200 and stasis_app_registered(sandbox, "digits"):
            return serve
        time.sleep(0.2)
    stop_serve(serve)
    raise SystemExit(f"ari-digits serve not ready after {timeout:.0f} s:\n{tail(log)}")


def stop_serve(serve: Serve) -> None:
    if serve.process.poll() is None:
        serve.process.send_signal(signal.SIGTERM)
        try:
            serve.process.wait(15)
        except subprocess.TimeoutExpired:
            serve.process.kill()
            serve.process.wait()


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def run_call(plan: CallPlan, work: Path, ports: PortPool, bye_timeout_s: float) -> CallResult:
    directory = work / f"{plan.scenario}-{plan.index:04d}"
    directory.mkdir()
    pcap = directory / "caller.pcap"
    write_pcap(pcap, plan.track.packets)
    xml = directory / "uac.xml"
    xml.write_text(
        SCENARIO_TEMPLATE.read_text()
        .replace("PCAP_FILE", str(pcap))
        .replace("BYE_TIMEOUT_MS", str(round(bye_timeout_s * 1000)))
    )
    async with ports.take() as (sip_port, media_port):
        command = [
            "sipp", "127.0.0.1:5060", "-sf", str(xml), "-s", EXTENSION,
            "-key", "caller", plan.caller,
            "-i", "127.0.0.1", "-p", str(sip_port), "-mi", "127.0.0.1", "-mp", str(media_port),
            "-m", "1", "-l", "1", "-nostdin",
            "-timeout", f"{round(bye_timeout_s + 20)}s", "-timeout_error",
            "-trace_err", "-error_file", str(directory / "errors.log"),
            "-trace_msg", "-message_file", str(directory / "messages.log"),
        ]  # fmt: skip
        with (directory / "sipp.out").open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                *command, cwd=directory, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
            try:
                rc = await asyncio.wait_for(process.wait(), bye_timeout_s + 40)
            except TimeoutError:
                process.kill()
                rc = await process.wait()
    note = ""
    if rc != 0:
        errors = tail(directory / "errors.log", 3) if (directory / "errors.log").exists() else ""
        note = f"sipp exit {rc}" + (f": {errors}" if errors else f" (see {directory})")
    return CallResult(plan, rc, note)


async def run_calls(
    plans: Sequence[CallPlan], work: Path, concurrency: int, bye_timeout_s: float
) -> list[CallResult]:
    ports = PortPool(concurrency)
    gate = asyncio.Semaphore(concurrency)
    done = 0

    async def one(plan: CallPlan) -> CallResult:
        nonlocal done
        async with gate:
            result = await run_call(plan, work, ports, bye_timeout_s)
        done += 1
        if sys.stdout.isatty():
            print(f"\r  {done}/{len(plans)} calls done", end="", flush=True)
        return result

    results = await asyncio.gather(*(one(plan) for plan in plans))
    if sys.stdout.isatty():
        print()
    return list(results)


def fetch_entries(serve: Serve, results: Sequence[CallResult]) -> None:
    """Match each call to its entry by caller number; read the entry's events too."""
    by_caller: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        url = f"{serve.api}/api/entries?label={LABEL}&limit=500"
        if cursor:
            url += f"&cursor={urllib.parse.quote(cursor)}"
        status, page = http_json(url, serve.token)
        if status != 200:
            raise SystemExit(f"GET {url}: HTTP {status}")
        for entry in page["entries"]:
            # Newest first: keep the first entry of a caller seen (there should be only one).
            by_caller.setdefault(str(entry.get("caller_number")), entry)
        cursor = page.get("next_cursor")
        if not cursor:
            break
    for result in results:
        entry = by_caller.get(result.plan.caller)
        if entry is not None:
            status, detail = http_json(f"{serve.api}/api/entries/{entry['id']}", serve.token)
            result.entry = detail if status == 200 else entry


def wait_entries_finished(serve: Serve, timeout: float = 10) -> None:
    """The BYE can reach SIPp before the row's final commit: wait for in_progress to drain."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, page = http_json(
            f"{serve.api}/api/entries?label={LABEL}&status=in_progress&limit=1", serve.token
        )
        if status == 200 and not page["entries"]:
            return
        time.sleep(0.2)


# --- report -----------------------------------------------------------------------------------


def transcripts(entry: dict[str, Any] | None) -> str:
    if not entry:
        return ""
    said = [
        str(e.get("detail"))
        for e in entry.get("events", [])
        if e.get("kind") == "utterance" and e.get("detail")
    ]
    return " | ".join(said)


def digit_sources(entry: dict[str, Any] | None) -> str:
    """'; heard 1:990(vvv) 2:- 3:-': each attempt's digits, k keyed / v spoken, since the stored
    digits are only the last attempt's."""
    attempts: dict[int, list[tuple[str, str]]] = {}
    for e in entry.get("events", []) if entry else []:
        attempts.setdefault(int(e.get("attempt") or 1), [])
        if e.get("kind") == "digit":
            mark = "k" if e.get("source") == "key" else "v"
            attempts[int(e.get("attempt") or 1)].append((str(e.get("digit")), mark))
    if not any(attempts.values()):
        return ""
    parts = [
        f"{n}:{''.join(d for d, _ in got)}({''.join(m for _, m in got)})" if got else f"{n}:-"
        for n, got in sorted(attempts.items())
    ]
    return "; heard " + " ".join(parts)


def report(results: Sequence[CallResult], scenarios: Sequence[str]) -> None:
    print()
    header = (
        f"{'scenario':<16} {'calls':>5} {'right':>5} {'WRONG':>5}  "
        f"{'not completed':<34} {'input end -> hand-back':>22}"
    )
    print(header)
    print("-" * len(header))
    for scenario in scenarios:
        rows = [r for r in results if r.plan.scenario == scenario]
        if not rows:
            continue
        verdicts = Counter(r.verdict for r in rows)
        statuses = Counter(r.status for r in rows if r.verdict == "not_completed")
        not_completed = f"{verdicts['not_completed']}"
        if statuses:
            not_completed += " (" + ", ".join(f"{s} {n}" for s, n in statuses.most_common()) + ")"
        # Only right completions: a wrong one may end before the caller has finished.
        hand_backs = [
            ms
            for r in rows
            if r.verdict == "right" and r.status == "completed" and (ms := r.hand_back_ms)
        ]
        median = f"{statistics.median(hand_backs):.0f} ms" if hand_backs else "-"
        print(
            f"{scenario:<16} {len(rows):>5} {verdicts['right']:>5} {verdicts['WRONG']:>5}  "
            f"{not_completed:<34} {median:>22}"
        )
    print(
        "hand-back: median over right completions, from the end of the caller's last word or\n"
        "key (its offset in the pcap; the entry's start stands for the pcap's, so about +-30 ms)\n"
        "to the entry's end"
    )
    problems = [r for r in results if r.verdict != "right"]
    if problems:
        print("\nnot right (WRONG first):")
        problems.sort(key=lambda r: (r.verdict != "WRONG", r.plan.scenario, r.plan.index))
        for r in problems:
            expected = r.plan.expected if r.plan.expected is not None else "(nothing)"
            print(
                f"  {r.verdict:<13} {r.plan.scenario:<15} caller {r.plan.caller} "
                f"entry {r.entry['id'] if r.entry else '-'}  {r.plan.source}"
            )
            print(
                f"      said {r.plan.said}; expected {expected}, got {r.digits or '-'} "
                f"({r.status}, by {(r.entry or {}).get('terminated_by') or '-'})"
                f"{digit_sources(r.entry)}"
            )
            if heard := transcripts(r.entry):
                print(f"      transcripts: {heard}")
            if r.sipp_note:
                print(f"      {r.sipp_note}")
    sipp_failures = [r for r in results if r.sipp_rc != 0 and r.verdict == "right"]
    for r in sipp_failures:
        print(f"  note: {r.plan.scenario} caller {r.plan.caller}: {r.sipp_note}")


# --- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--calls", type=int, default=10, help="calls per scenario (default 10)")
    parser.add_argument("--concurrency", type=int, default=5, help="calls at once (default 5)")
    parser.add_argument(
        "--human-dir", type=Path, help="FSDD-style {digit}_{speaker}_{index}.wav, 8 kHz"
    )
    parser.add_argument(
        "--spoken-source",
        choices=["human", "espeak", "both"],
        help="who says the digits in 'spoken' (default: human with --human-dir, else espeak)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--call-timeout",
        type=float,
        default=75,
        help="seconds after the answer before the caller gives up waiting for the BYE (the "
        "pcap's line silence lasts that long)",
    )
    parser.add_argument("--keep", type=Path, help="keep pcaps, SIPp logs and serve.log here")
    args = parser.parse_args()
    if args.calls < 1 or args.concurrency < 1:
        parser.error("--calls and --concurrency must be at least 1")
    if args.human_dir is not None and not args.human_dir.is_dir():
        parser.error(f"--human-dir {args.human_dir}: not a directory")
    spoken_source = args.spoken_source or ("human" if args.human_dir else "espeak")
    if spoken_source != "espeak" and args.human_dir is None:
        parser.error(f"--spoken-source {spoken_source} needs --human-dir")
    scenarios = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    need_espeak = scenarios != ["spoken"] or spoken_source != "human"
    require_tools(need_espeak)

    human = HumanDigits(args.human_dir) if args.human_dir else None
    sandbox = AsteriskSandbox(default_conf_dir())
    if not sandbox.is_running():
        raise SystemExit("the Asterisk sandbox is not running: scripts/sandbox start")

    with contextlib.ExitStack() as stack:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            work = args.keep.resolve()
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sip-speech-")))
        rng = random.Random(args.seed)
        run_id = f"{rng.randint(0, 999):03d}"
        plans: list[CallPlan] = []
        print(f"making {args.calls} calls' audio per scenario ({', '.join(scenarios)}) ...")
        for scenario in scenarios:
            plans += plan_calls(
                scenario,
                args.calls,
                human=human,
                spoken_source=spoken_source,
                rng=rng,
                work=work,
                run_id=run_id,
                first_index=len(plans),
                tail_s=args.call_timeout,
            )
        # Interleave scenarios so each sees the same load.
        order = sorted(plans, key=lambda p: (p.index % args.calls, p.index))

        stack.enter_context(asterisk_lock())
        if stasis_app_registered(sandbox, "digits"):
            raise SystemExit(
                "the Stasis app 'digits' is already connected (a serve outside the lock?): "
                "its calls would not reach ours"
            )
        print(f"starting ari-digits serve (SPEECH=on, SQLite in {work}) ...", flush=True)
        serve = start_serve(sandbox, work, timeout=120)
        try:
            print(
                f"{len(order)} SIP calls to {EXTENSION}@from-trunk, {args.concurrency} at once",
                flush=True,
            )
            started = time.monotonic()
            results = asyncio.run(run_calls(order, work, args.concurrency, args.call_timeout))
            elapsed = time.monotonic() - started
            wait_entries_finished(serve)
            fetch_entries(serve, results)
        finally:
            stop_serve(serve)
        print(f"calls took {elapsed:.0f} s; serve log: {serve.log if args.keep else '(temp)'}")
        results.sort(key=lambda r: r.plan.index)
        report(results, scenarios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
