"""Text prompts on the real Asterisk 22 sandbox: what the caller hears.

The simulated caller records what it hears (``record:NAME:SECONDS`` in ``extensions.conf``)
while the app plays ``prompt=tts:...``; the recording, read from the chroot, must contain the
rendered prompt: about as long, and not silence. Asterisk fetches the audio from the app over
HTTP (``res_http_media_cache``), for a Stasis playback and for AGI ``STREAM FILE`` alike.
"""

from __future__ import annotations

import asyncio
import time
import wave
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from aiohttp import web

from ari_app.agi import AgiConfig, running_agi_server
from ari_app.http.media import media_routes
from ari_app.server import running_service
from ari_app.store.migrate import upgrade_to_head_async
from ari_app.store.repository import Store
from ari_app.tts import EspeakNg, PromptCache, TextPrompts
from devtools.sandbox import AsteriskSandbox
from devtools.simulate import SimulatedCallers, caller_recording
from tests.asterisk_harness import ensure_agi_dialplan
from tests.conftest import service_settings

pytestmark = pytest.mark.asterisk

PROMPT = "Please key your ten digit phone number"
LISTEN_SECONDS = 6  # longer than the prompt (about 2.7 s), shorter than no_input_timeout
ENTRY = f"num_digits=4,no_input_timeout=20,prompt=tts:{PROMPT}"
SILENCE_RMS = 100.0  # Asterisk's silence is digital zero; speech is in the thousands
FRAME_SECONDS = 0.02


def ensure_text_prompt_support(asterisk: AsteriskSandbox) -> None:
    """A sandbox started before the media cache modules and the ``record:`` step existed is
    restarted once with the current configuration (modules load only at start)."""
    modules = asterisk.cli("module show like res_http_media_cache")
    dialplan = asterisk.cli("dialplan show sim@caller-sim")
    if "res_http_media_cache.so" not in modules or "Record(" not in dialplan:
        asterisk.restart()


@pytest.fixture
async def callers(asterisk: AsteriskSandbox) -> AsyncIterator[SimulatedCallers]:
    await asyncio.to_thread(ensure_text_prompt_support, asterisk)
    callers = SimulatedCallers(asterisk.ari_url, asterisk.ari_user, asterisk.ari_password)
    try:
        yield callers
    finally:
        await callers.close()


def speech_in(path: Path) -> tuple[float, float]:
    """(seconds from the first to the last non-silent 20 ms frame, RMS over that span)."""
    with wave.open(str(path)) as source:
        rate = source.getframerate()
        samples = np.frombuffer(source.readframes(source.getnframes()), "<i2")
    frame = int(rate * FRAME_SECONDS)
    frames = samples[: len(samples) // frame * frame].astype(np.float64).reshape(-1, frame)
    levels = np.sqrt((frames**2).mean(axis=1))
    loud = np.flatnonzero(levels > SILENCE_RMS)
    assert loud.size, f"{path} is silent"
    span = frames[loud[0] : loud[-1] + 1]
    return len(span) * FRAME_SECONDS, float(np.sqrt((span**2).mean()))


async def heard_recording(asterisk: AsteriskSandbox, name: str) -> Path:
    """The caller's recording, once Record() has closed it."""
    path = caller_recording(asterisk.paths.chroot_dir, name)
    deadline = time.monotonic() + LISTEN_SECONDS + 10
    while not await asyncio.to_thread(path.is_file):
        assert time.monotonic() < deadline, f"the caller recorded nothing at {path}"
        await asyncio.sleep(0.1)
    return path


def assert_heard(heard: Path, rendered: Path) -> None:
    heard_seconds, heard_rms = speech_in(heard)
    rendered_seconds, rendered_rms = speech_in(rendered)
    print(
        f"rendered {rendered_seconds:.2f} s (RMS {rendered_rms:.0f}), "
        f"heard {heard_seconds:.2f} s (RMS {heard_rms:.0f})"
    )
    assert abs(heard_seconds - rendered_seconds) < 0.25
    assert heard_rms > 0.5 * rendered_rms


async def test_the_caller_hears_a_text_prompt_over_ari(
    asterisk: AsteriskSandbox, callers: SimulatedCallers, tmp_path: Path
) -> None:
    settings = replace(
        service_settings(asterisk, f"sqlite+aiosqlite:///{tmp_path / 'digits.sqlite3'}"),
        tts_cache_dir=str(tmp_path / "prompts"),
    )
    name = f"tts-ari-{time.monotonic_ns()}"
    async with running_service(settings, connect_timeout=10) as app:
        call = await callers.place_call(ENTRY, f"record:{name}:{LISTEN_SECONDS}^dtmf:1234")
        result = await callers.dialplan_result(call, within=LISTEN_SECONDS + 15)
    assert (result.status, result.digits) == ("completed", "1234")
    cache = app.prompts.cache
    key = cache.key(PROMPT)
    assert_heard(await heard_recording(asterisk, name), cache.path(key))
    # Asterisk got it from our HTTP route, and keeps it.
    assert f"/media/{key}.wav" in await asyncio.to_thread(asterisk.cli, "media cache show all")


async def test_the_caller_hears_a_text_prompt_over_agi(
    asterisk: AsteriskSandbox, callers: SimulatedCallers, tmp_path: Path
) -> None:
    await asyncio.to_thread(ensure_agi_dialplan, asterisk)
    cache = PromptCache(EspeakNg(), tmp_path / "prompts")
    media = web.Application()
    media.add_routes(media_routes(cache.directory))
    runner = web.AppRunner(media)
    await runner.setup()
    database = f"sqlite+aiosqlite:///{tmp_path / 'digits.sqlite3'}"
    await upgrade_to_head_async(database)
    store = Store.from_url(database)
    name = f"tts-agi-{time.monotonic_ns()}"
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        prompts = TextPrompts(cache, f"http://{host}:{port}")
        async with running_agi_server(
            AgiConfig(agi_port=0), store, hash_key="k", prompts=prompts
        ) as agi:
            assert agi.address is not None
            query = ENTRY.replace(",", "&").replace(PROMPT, quote(PROMPT))
            call = await callers.place_agi_call(
                agi.address[1], query, f"record:{name}:{LISTEN_SECONDS}^dtmf:1234"
            )
            result = await callers.dialplan_result(call, within=LISTEN_SECONDS + 15)
    finally:
        await store.close()
        await runner.cleanup()
    assert (result.status, result.digits) == ("completed", "1234")
    assert_heard(await heard_recording(asterisk, name), cache.path(cache.key(PROMPT)))


async def test_a_prompt_that_cannot_be_rendered_still_collects_the_digits(
    asterisk: AsteriskSandbox, callers: SimulatedCallers, tmp_path: Path
) -> None:
    settings = replace(
        service_settings(asterisk, f"sqlite+aiosqlite:///{tmp_path / 'digits.sqlite3'}"),
        tts_cache_dir=str(tmp_path / "prompts"),
        tts_voice="nosuchvoice",
    )
    name = f"tts-broken-{time.monotonic_ns()}"
    async with running_service(settings, connect_timeout=10):
        call = await callers.place_call(ENTRY, f"record:{name}:2^dtmf:1234")
        result = await callers.dialplan_result(call, within=20)
    assert (result.status, result.digits) == ("completed", "1234")
    heard_seconds, _ = speech_in(await heard_recording(asterisk, name))
    assert heard_seconds < 1.0  # the fallback beep, not a prompt
