"""Simulated callers on an Asterisk configured with ``asterisk_conf/extensions.conf``.

A simulated call is a Local channel: its ``;1`` half runs ``digits-test,collect`` (Stasis with
``DIGITS_ARGS``, then copies the ``DIGITS*`` channel variables into the global ``RESULT_<id>``),
its ``;2`` half runs ``caller-sim,sim``, which plays ``SIM_SCRIPT``: steps separated by ``^``,
each ``wait:SECONDS``, ``dtmf:KEYS``, ``play:SOUND``, ``record:NAME:SECONDS`` (what the caller
hears, read back with :func:`caller_recording`) or ``hangup``. Used by the demo, the tests and
the benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import shutil
import subprocess
import tempfile
import time
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

_ids = itertools.count(1)


@dataclass(frozen=True)
class Call:
    test_id: str
    channel_id: str


@dataclass(frozen=True)
class DialplanResult:
    status: str
    digits: str
    confirmed: str
    entry_id: str


class SimulatedCallers:
    def __init__(self, ari_url: str, user: str, password: str) -> None:
        self._base = ari_url.rstrip("/") + "/ari"
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        # Stay well below Asterisk's HTTP sessionlimit, which the application shares.
        self._http = aiohttp.ClientSession(
            headers={"Authorization": f"Basic {token}"},
            connector=aiohttp.TCPConnector(limit=16),
        )

    async def close(self) -> None:
        await self._http.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with self._http.request(method, self._base + path, **kwargs) as response:
            body = await response.json() if response.content_type == "application/json" else None
            return response.status, body

    async def place_call(
        self, arguments: str, script: str, *, gap_ms: int | None = None, answered: bool = True
    ) -> Call:
        """Originate a caller; ``answered=False`` makes the app's side arrive in state Ring.

        The returned channel id is the one that enters Stasis only for answered calls.
        """
        test_id = f"t{time.monotonic_ns()}x{next(_ids)}"
        variables = {"TEST_ID": test_id, "DIGITS_ARGS": arguments, "SIM_SCRIPT": script}
        if gap_ms is not None:
            variables["SIM_GAP_MS"] = str(gap_ms)
        status, body = await self.request(
            "POST",
            "/channels",
            params={
                "endpoint": "Local/sim@caller-sim/n" if answered else "Local/ring@digits-test/n",
                "context": "digits-test" if answered else "caller-sim",
                "extension": "collect" if answered else "sim",
                "priority": "1",
                "formats": "slin16",
            },
            json={"variables": variables},
        )
        if status != 200:
            raise RuntimeError(f"originate failed: {status} {body}")
        return Call(test_id, str(body["id"]))

    async def place_agi_call(
        self,
        agi_port: int,
        query: str,
        script: str,
        *,
        agi_script: str = "collect",
        gap_ms: int | None = None,
    ) -> Call:
        """Originate a caller whose ``;1`` half runs ``agi-test,collect``:
        ``AGI(agi://127.0.0.1:<agi_port>/<agi_script>?<query>)``, then records the ``DIGITS*``
        variables in ``RESULT_<id>`` (read with :meth:`dialplan_result`) and ``AGISTATUS`` in
        ``AGISTATUS_<id>`` (:meth:`global_variable`). The channel id is the AGI's
        ``agi_uniqueid``.
        """
        test_id = f"t{time.monotonic_ns()}x{next(_ids)}"
        variables = {
            "TEST_ID": test_id,
            "AGI_TEST_PORT": str(agi_port),
            "AGI_SCRIPT": agi_script,
            "AGI_QUERY": query,
            "SIM_SCRIPT": script,
        }
        if gap_ms is not None:
            variables["SIM_GAP_MS"] = str(gap_ms)
        status, body = await self.request(
            "POST",
            "/channels",
            params={
                "endpoint": "Local/sim@caller-sim/n",
                "context": "agi-test",
                "extension": "collect",
                "priority": "1",
                "formats": "slin16",
            },
            json={"variables": variables},
        )
        if status != 200:
            raise RuntimeError(f"originate failed: {status} {body}")
        return Call(test_id, str(body["id"]))

    async def global_variable(self, name: str) -> str | None:
        """A dialplan global's value (None when unset or empty)."""
        status, body = await self.request("GET", "/asterisk/variable", params={"variable": name})
        if status == 200 and body and body.get("value"):
            return str(body["value"])
        return None

    async def dialplan_result(self, call: Call, within: float = 20.0) -> DialplanResult:
        """What the dialplan saw in DIGITS* after the app continued the channel."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            status, body = await self.request(
                "GET", "/asterisk/variable", params={"variable": f"RESULT_{call.test_id}"}
            )
            if status == 200 and body and body.get("value"):
                status_, digits, confirmed, entry_id = str(body["value"]).split("|")
                return DialplanResult(status_, digits, confirmed, entry_id)
            await asyncio.sleep(0.05)
        raise TimeoutError(f"no dialplan result for {call} within {within} s")

    async def channel_exists(self, channel_id: str) -> bool:
        status, _ = await self.request("GET", f"/channels/{channel_id}")
        return status == 200

    async def playback_exists(self, playback_id: str) -> bool:
        status, _ = await self.request("GET", f"/playbacks/{playback_id}")
        return status == 200

    async def leftover_channels(self) -> list[str]:
        status, body = await self.request("GET", "/channels")
        if status != 200:
            raise RuntimeError(f"GET /channels answered {status}")
        return [str(channel["name"]) for channel in body]


CALLER_SOUNDS = "var/lib/asterisk/sounds/ari-digits-callers"
CALLER_RECORDINGS = "var/spool/asterisk/ari-digits-sim"  # extensions.conf's record: step


def caller_recording(chroot: Path, name: str) -> Path:
    """Where ``record:NAME:SECONDS`` leaves what the simulated caller heard (8 kHz WAV)."""
    return chroot / CALLER_RECORDINGS / f"{name}.wav"


def synthesize_caller_speech(
    text: str,
    chroot: Path,
    name: str,
    *,
    voice: str = "en-us",
    words_per_minute: int = 150,
    level_dbfs: float | None = None,
) -> str:
    """Speak ``text`` with espeak-ng into the sandbox at telephone quality (8 kHz mu-law).

    ``level_dbfs``: the caller's speech level (RMS over the frames within 30 dB of the loudest,
    so pauses do not count); None keeps espeak-ng's own (about -20 dBFS). Real lines carry
    callers from about -10 to -50 dBFS. Returns the path a simulated caller plays it from
    (``play:<path>`` in ``SIM_SCRIPT``).
    """
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"{tool} is needed to synthesise callers' speech (apt-get install {tool})"
            )
    folder = chroot / CALLER_SOUNDS
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        spoken = Path(scratch) / "spoken.wav"
        narrow = Path(scratch) / "narrow.wav"
        mulaw = Path(scratch) / "line.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(words_per_minute), "-w", str(spoken), text],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            ["sox", "-R", str(spoken), "-r", "8000", "-c", "1", "-b", "16", str(narrow)],
            check=True,
            capture_output=True,
        )
        if level_dbfs is not None:
            _set_level(narrow, level_dbfs)
        # Through a telephone line: 8 kHz mu-law, then the 16-bit PCM WAV Asterisk plays.
        # sox -R seeds the dither, so the same text is the same caller in every run.
        subprocess.run(
            ["sox", "-R", str(narrow), "-e", "mu-law", str(mulaw)], check=True, capture_output=True
        )
        subprocess.run(
            [
                "sox",
                "-R",
                str(mulaw),
                "-e",
                "signed-integer",
                "-b",
                "16",
                str(folder / f"{name}.wav"),
            ],
            check=True,
            capture_output=True,
        )
    return f"/{CALLER_SOUNDS}/{name}"


def _set_level(path: Path, dbfs: float) -> None:
    """Scale a 16-bit mono WAV file in place so its active speech level is ``dbfs``."""
    with wave.open(str(path), "rb") as reader:
        params = reader.getparams()
        samples = np.frombuffer(reader.readframes(params.nframes), dtype="<i2")
    x = samples.astype(np.float64) / 32768.0
    frame = params.framerate // 50
    powers = np.mean(x[: len(x) // frame * frame].reshape(-1, frame) ** 2, axis=1)
    active = float(powers[powers >= powers.max() * 1e-3].mean())
    scaled = x * 10.0 ** (dbfs / 20.0) / np.sqrt(active)
    pcm = np.clip(np.round(scaled * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as writer:
        writer.setparams(params)
        writer.writeframes(pcm.tobytes())
