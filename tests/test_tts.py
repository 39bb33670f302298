"""Text prompts without Asterisk: parsing, rendering, the cache, the media route, failures."""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import stat
import wave
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from ari_app.agi.port import agi_media
from ari_app.agi.server import AgiConfig, query_arguments, running_agi_server
from ari_app.ari.app import AriApplication
from ari_app.engine import Digit, DigitCollector, Finish, Play, Start, Status
from ari_app.http.api import running_http_api
from ari_app.http.media import media_routes
from ari_app.media import Digits, MediaItem, Sound, TextPrompt, Url
from ari_app.params import MAX_TEXT_LENGTH, ParamError, Params, parse_params, split_arguments
from ari_app.settings import Settings, SettingsError
from ari_app.store.repository import Store
from ari_app.tts import (
    FALLBACK_MEDIA,
    SAMPLE_RATE,
    EspeakNg,
    PromptCache,
    RecentlyFailed,
    TextPrompts,
    TtsError,
    media_base_url,
    resample,
    telephone_wav,
)
from devtools.fake_asterisk import FakeAsterisk, environment
from devtools.memory_store import MemoryStore

# --- the prompt syntax ------------------------------------------------------------------


def prompts_of(arguments: list[str]) -> dict[str, tuple[str, ...]]:
    params = parse_params(split_arguments(arguments))
    return {
        "prompt": params.prompt,
        "invalid_prompt": params.invalid_prompt,
        "confirm_prompt": params.confirm_prompt,
    }


def test_text_runs_to_the_next_media_item_across_stasis_commas() -> None:
    # What Stasis(digits,prompt=tts:Hello, please key your number,sound:beep) passes on.
    prompts = prompts_of(["prompt=tts:Hello", " please key   your number", "sound:beep"])
    assert prompts["prompt"] == ("tts:Hello, please key your number", "sound:beep")


def test_commas_in_numbers_stay_and_other_commas_are_followed_by_a_space() -> None:
    arguments = query_arguments("prompt=tts:Up%20to%201%2C000%2Cthen%20pound%2C1%20or%202")
    assert prompts_of(arguments)["prompt"] == ("tts:Up to 1,000, then pound, 1 or 2",)


def test_every_prompt_parameter_takes_text() -> None:
    prompts = prompts_of(
        [
            "prompt=tts:Key your PIN",
            "invalid_prompt=tts:Sorry",
            "that was not right",
            "confirm_prompt=tts:You entered",
            "{digits}",
            "tts:press 1 if this is right",
            "digits:1",
        ]
    )
    assert prompts == {
        "prompt": ("tts:Key your PIN",),
        "invalid_prompt": ("tts:Sorry, that was not right",),
        "confirm_prompt": (
            "tts:You entered",
            "{digits}",
            "tts:press 1 if this is right",
            "digits:1",
        ),
    }


def test_text_over_agi_is_percent_encoded() -> None:
    arguments = query_arguments("num_digits=4&prompt=tts:Key%20your%20PIN%2C%20then%20pound")
    assert prompts_of(arguments)["prompt"] == ("tts:Key your PIN, then pound",)


def test_the_read_back_with_text_is_text_then_the_digits() -> None:
    collector = DigitCollector.from_arguments(
        ["num_digits=2", "ask_for_confirmation=yes", "confirm_prompt=tts:You entered", "{digits}"]
    )
    collector.handle(Start(0.0))
    actions = collector.handle(Digit("4", 1.0)) + collector.handle(Digit("2", 1.1))
    plays = [a for a in actions if isinstance(a, Play)]
    assert plays[-1].media == (TextPrompt("You entered"), Digits("42"))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["prompt=tts:"], "without text"),
        (["prompt=tts:   "], "without text"),
        ([f"prompt=tts:{'a' * (MAX_TEXT_LENGTH + 1)}"], "longer than"),
        (["prompt=tts:bell \x07 here"], "control character"),
        (["confirm_prompt=tts:You entered {digits}"], "must be an item of its own"),
        (["confirm_prompt=tts:You entered", "{digits}", "press 1"], "is not a media URI"),
    ],
)
def test_bad_text_is_a_parameter_error(arguments: list[str], message: str) -> None:
    with pytest.raises(ParamError, match=message):
        parse_params(split_arguments(arguments))


def test_bad_text_ends_the_entry_with_an_error() -> None:
    collector = DigitCollector.from_arguments(["prompt=tts:"])
    finish = [a for a in collector.handle(Start(0.0)) if isinstance(a, Finish)]
    assert finish and finish[0].result.status is Status.ERROR


# --- audio conversion -------------------------------------------------------------------


def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1, width: int = 2) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setnchannels(channels)
        target.setsampwidth(width)
        target.setframerate(rate)
        target.writeframes(samples.astype("<i2" if width == 2 else "u1").tobytes())
    return out.getvalue()


def tone(frequency: float, rate: int, seconds: float, amplitude: float = 10000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amplitude * np.sin(2 * math.pi * frequency * t)


def read_wav(data: bytes) -> tuple[int, int, int, np.ndarray]:
    with wave.open(io.BytesIO(data)) as source:
        frames = source.readframes(source.getnframes())
        return (
            source.getframerate(),
            source.getnchannels(),
            source.getsampwidth(),
            np.frombuffer(frames, "<i2").astype(np.float64),
        )


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples**2)))


def test_resampling_keeps_the_telephone_band_and_removes_what_would_fold_back() -> None:
    speech_band = resample(tone(1000, 22050, 1.0), 22050, SAMPLE_RATE)
    above_nyquist = resample(tone(6000, 22050, 1.0), 22050, SAMPLE_RATE)
    assert len(speech_band) == SAMPLE_RATE
    middle = slice(200, -200)  # away from the edges' zero padding
    assert rms(speech_band[middle]) == pytest.approx(10000 / math.sqrt(2), rel=0.02)
    assert rms(above_nyquist[middle]) < 0.01 * rms(speech_band[middle])


def test_any_16_bit_wav_becomes_8_khz_mono() -> None:
    stereo = np.repeat(tone(440, 16000, 0.5), 2)  # interleaved L R L R
    rate, channels, width, samples = read_wav(telephone_wav(wav_bytes(stereo, 16000, 2)))
    assert (rate, channels, width) == (8000, 1, 2)
    assert len(samples) == 4000
    assert rms(samples[100:-100]) == pytest.approx(10000 / math.sqrt(2), rel=0.02)


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (b"not a wav", "not a WAV"),
        (wav_bytes(np.full(800, 128), 8000, width=1), "not 16-bit"),
        (wav_bytes(np.zeros(0), 8000), "no audio"),
    ],
)
def test_unusable_engine_output_is_a_tts_error(audio: bytes, message: str) -> None:
    with pytest.raises(TtsError, match=message):
        telephone_wav(audio)


# --- the cache --------------------------------------------------------------------------


class FakeEngine:
    """Half a second of tone at 22.05 kHz per text; counts renders; can be held or fail."""

    def __init__(self, identity: str = "fake voice=a") -> None:
        self._identity = identity
        self.rendered: list[str] = []
        self.cancelled: list[str] = []
        self.release = asyncio.Event()
        self.release.set()
        self.failures = 0

    @property
    def identity(self) -> str:
        return self._identity

    async def synthesize(self, text: str) -> bytes:
        self.rendered.append(text)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(text)
            raise
        if self.failures:
            self.failures -= 1
            raise TtsError("the fake engine failed")
        return wav_bytes(tone(500, 22050, 0.5), 22050)


async def test_a_text_is_rendered_once_to_an_8_khz_wav_named_by_its_hash(tmp_path: Path) -> None:
    engine = FakeEngine()
    cache = PromptCache(engine, tmp_path / "prompts")
    key = await cache.render("Key your PIN")
    assert await cache.render("Key your PIN") == key
    assert engine.rendered == ["Key your PIN"]
    rate, channels, _, samples = read_wav(cache.path(key).read_bytes())
    assert (rate, channels, len(samples)) == (8000, 1, 4000)
    assert stat.S_IMODE(cache.path(key).stat().st_mode) == 0o644
    assert [p.name for p in (tmp_path / "prompts").iterdir()] == [f"{key}.wav"]


async def test_the_key_covers_engine_voice_rate_and_text(tmp_path: Path) -> None:
    keys = {
        PromptCache(FakeEngine("fake voice=a"), tmp_path).key("Hello"),
        PromptCache(FakeEngine("fake voice=b"), tmp_path).key("Hello"),
        PromptCache(FakeEngine("fake voice=a"), tmp_path).key("Hello."),
        PromptCache(EspeakNg(words_per_minute=160), tmp_path).key("Hello"),
        PromptCache(EspeakNg(words_per_minute=161), tmp_path).key("Hello"),
        PromptCache(EspeakNg(voice="en-gb"), tmp_path).key("Hello"),
    }
    assert len(keys) == 6


async def test_a_rendered_file_survives_a_restart(tmp_path: Path) -> None:
    key = await PromptCache(FakeEngine(), tmp_path).render("Key your PIN")
    engine = FakeEngine()
    assert await PromptCache(engine, tmp_path).render("Key your PIN") == key
    assert engine.rendered == []


async def test_a_pruned_cache_is_refilled(tmp_path: Path) -> None:
    engine = FakeEngine()
    cache = PromptCache(engine, tmp_path)
    key = await cache.render("Key your PIN")
    await asyncio.to_thread(cache.path(key).unlink)
    assert await cache.render("Key your PIN") == key
    assert await asyncio.to_thread(cache.path(key).is_file)
    assert engine.rendered == ["Key your PIN", "Key your PIN"]


async def test_concurrent_requests_for_one_text_render_it_once(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.release.clear()
    cache = PromptCache(engine, tmp_path)
    waiters = [asyncio.create_task(cache.render("Key your PIN")) for _ in range(20)]
    other = asyncio.create_task(cache.render("Another text"))
    await asyncio.sleep(0.05)
    # Either order: each render first looks for the file in a worker thread.
    assert sorted(engine.rendered) == ["Another text", "Key your PIN"]
    engine.release.set()
    keys = await asyncio.gather(*waiters)
    assert len(set(keys)) == 1
    assert await other != keys[0]
    assert sorted(engine.rendered) == ["Another text", "Key your PIN"]


async def test_a_caller_hanging_up_does_not_cancel_the_render_for_others(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.release.clear()
    cache = PromptCache(engine, tmp_path)
    leaving = asyncio.create_task(cache.render("Key your PIN"))
    staying = asyncio.create_task(cache.render("Key your PIN"))
    await asyncio.sleep(0.01)
    leaving.cancel()
    await asyncio.sleep(0.01)
    engine.release.set()
    key = await staying
    assert cache.path(key).is_file()
    assert leaving.cancelled()
    assert engine.rendered == ["Key your PIN"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_failed_render_is_remembered_for_a_while_then_retried(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.failures = 1
    clock = FakeClock()
    cache = PromptCache(engine, tmp_path, failure_memory=60.0, clock=clock)
    with pytest.raises(TtsError, match="fake engine failed"):
        await cache.render("Key your PIN")
    assert await asyncio.to_thread(os.listdir, tmp_path) == []  # nothing half-written is left
    clock.now += 59.0
    with pytest.raises(RecentlyFailed, match="fake engine failed"):
        await cache.render("Key your PIN")
    assert engine.rendered == ["Key your PIN"]  # not run again meanwhile
    assert await cache.render("Another text")  # other texts are unaffected
    clock.now += 1.0
    key = await cache.render("Key your PIN")
    assert cache.path(key).is_file()
    assert engine.rendered == ["Key your PIN", "Another text", "Key your PIN"]


async def test_closing_cancels_the_renders_in_progress(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.release.clear()
    prompts = TextPrompts(PromptCache(engine, tmp_path), "http://h:1")
    prompts.prepare(parse_params({"prompt": "tts:Key your PIN"}))
    await asyncio.sleep(0.01)
    assert engine.rendered == ["Key your PIN"]
    await prompts.close()
    assert engine.cancelled == ["Key your PIN"]
    assert await asyncio.to_thread(os.listdir, tmp_path) == []


# --- media lists for the adapters -------------------------------------------------------


async def test_text_items_become_media_urls_and_the_rest_stays(tmp_path: Path) -> None:
    prompts = TextPrompts(PromptCache(FakeEngine(), tmp_path), "http://10.0.0.5:8090")
    media = [Sound("beep"), TextPrompt("Key your PIN"), Digits("12"), TextPrompt("Key your PIN")]
    key = prompts.cache.key("Key your PIN")
    url = Url(f"http://10.0.0.5:8090/media/{key}.wav")
    assert await prompts.playable(media, label="ch-1") == [Sound("beep"), url, Digits("12"), url]


async def test_media_without_text_renders_nothing(tmp_path: Path) -> None:
    engine = FakeEngine()
    prompts = TextPrompts(PromptCache(engine, tmp_path), "http://h:1")
    assert await prompts.playable([Sound("beep"), Digits("12")], label="ch-1") == [
        Sound("beep"),
        Digits("12"),
    ]
    assert engine.rendered == []


async def test_a_failed_render_plays_the_fallback_and_says_why_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine()
    engine.failures = 1
    prompts = TextPrompts(PromptCache(engine, tmp_path), "http://h:1")
    with caplog.at_level(logging.WARNING, logger="ari_app.tts"):
        media = await prompts.playable([TextPrompt("Key your PIN"), Sound("vm-then")], label="ch-7")
        again = await prompts.playable([TextPrompt("Key your PIN")], label="ch-8")
    assert media == [FALLBACK_MEDIA, Sound("vm-then")]
    assert again == [FALLBACK_MEDIA]
    assert engine.rendered == ["Key your PIN"]
    [record] = caplog.records  # not one per prompt of every call
    assert record.levelno == logging.ERROR
    assert "Key your PIN" in record.getMessage()
    assert "fake engine failed" in record.getMessage()
    assert "fake voice=a" in record.getMessage()


async def test_prepared_prompts_render_before_they_are_played(tmp_path: Path) -> None:
    engine = FakeEngine()
    engine.release.clear()
    prompts = TextPrompts(PromptCache(engine, tmp_path), "http://h:1", play_wait=0.05)
    params = parse_params(
        {"prompt": "tts:Key your PIN", "confirm_prompt": "tts:You entered,{digits}"}
    )
    prompts.prepare(params)
    prompts.prepare(None)  # invalid parameters: nothing to render
    await asyncio.sleep(0.01)
    assert sorted(engine.rendered) == ["Key your PIN", "You entered"]
    engine.release.set()
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    [played] = await prompts.playable([TextPrompt("Key your PIN")], label="ch-1")
    assert loop.time() - started < 0.04  # found done, not waited for
    assert played == Url(f"http://h:1/media/{prompts.cache.key('Key your PIN')}.wav")
    assert len(engine.rendered) == 2


async def test_a_slow_render_plays_the_fallback_after_play_wait_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = FakeEngine()
    engine.release.clear()
    prompts = TextPrompts(PromptCache(engine, tmp_path), "http://h:1", play_wait=0.1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with caplog.at_level(logging.WARNING, logger="ari_app.tts"):
        media = await prompts.playable([TextPrompt("Key your PIN"), Sound("beep")], label="ch-3")
    assert 0.1 <= loop.time() - started < 1.0
    assert media == [FALLBACK_MEDIA, Sound("beep")]
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "ch-3" in record.getMessage() and "still rendering" in record.getMessage()
    engine.release.set()  # the render went on: the next prompt plays the text
    [played] = await prompts.playable([TextPrompt("Key your PIN")], label="ch-3")
    assert isinstance(played, Url) and played.url.startswith("http://h:1/media/")
    assert engine.rendered == ["Key your PIN"]


class RecordingPrompts(TextPrompts):
    """Text prompts that note when an adapter prepares and plays them."""

    def __init__(self, directory: Path) -> None:
        super().__init__(PromptCache(FakeEngine(), directory), "http://h:1")
        self.steps: list[tuple[str, tuple[str | MediaItem, ...]]] = []

    def prepare(self, params: Params | None) -> None:
        self.steps.append(("prepare", params.prompt if params is not None else ()))
        super().prepare(params)

    async def playable(self, media: Sequence[MediaItem], *, label: str) -> list[MediaItem]:
        self.steps.append(("play", tuple(media)))
        return await super().playable(media, label=label)


async def test_the_ari_adapter_prepares_an_entry_s_prompts_before_playing(tmp_path: Path) -> None:
    prompts = RecordingPrompts(tmp_path)
    app = AriApplication(Settings(), MemoryStore(), prompts=prompts)
    app.link.patience = 0.1  # not connected: the entry ends at once, as interrupted
    app.dispatch(
        {
            "type": "StasisStart",
            "args": ["num_digits=4", "prompt=tts:Key your PIN"],
            "channel": {"id": "c-1", "name": "PJSIP/1-0001", "state": "Up"},
        }
    )
    await app.wait_idle(within=5)
    assert prompts.steps[:2] == [
        ("prepare", ("tts:Key your PIN",)),
        ("play", (TextPrompt("Key your PIN"),)),
    ]


async def test_the_agi_adapter_prepares_an_entry_s_prompts_before_playing(tmp_path: Path) -> None:
    prompts = RecordingPrompts(tmp_path)
    async with running_agi_server(
        AgiConfig(agi_port=0), MemoryStore(), hash_key="k", poll_interval=0.02, prompts=prompts
    ) as server:
        assert server.address is not None
        caller = await FakeAsterisk(*server.address).connect(
            environment(query="num_digits=4&prompt=tts:Key%20your%20PIN")
        )
        try:
            transcript = await caller.answer_all("1234")
        finally:
            await caller.close()
    assert transcript.variables["DIGITS"] == "1234"
    assert prompts.steps[:2] == [
        ("prepare", ("tts:Key your PIN",)),
        ("play", (TextPrompt("Key your PIN"),)),
    ]


def test_agi_streams_remote_media_and_refuses_what_would_break_the_command() -> None:
    url = "http://127.0.0.1:8090/media/" + "a" * 64 + ".wav"
    items = agi_media([Url(url), Url('http://h/a b"c.wav'), TextPrompt("not rendered")])
    assert [item.command for item in items] == [f"STREAM FILE {url}"]
    assert items[0].resumable


# --- eSpeak NG --------------------------------------------------------------------------


async def test_espeak_ng_speaks_text_that_looks_like_an_option(tmp_path: Path) -> None:
    audio = await EspeakNg().synthesize("--help me key my number")
    rate, _, _, samples = read_wav(telephone_wav(audio))
    assert rate == SAMPLE_RATE
    assert len(samples) / rate > 1.0  # words, not a usage message
    assert rms(samples) > 300


async def test_espeak_ng_errors_are_tts_errors(tmp_path: Path) -> None:
    with pytest.raises(TtsError, match="voice does not exist"):
        await EspeakNg(voice="nosuchvoice").synthesize("Hello")
    with pytest.raises(TtsError, match="cannot run"):
        await EspeakNg(executable=str(tmp_path / "missing")).synthesize("Hello")
    slow = tmp_path / "slow-engine"
    slow.write_text("#!/bin/sh\nexec sleep 10\n")
    slow.chmod(0o755)
    with pytest.raises(TtsError, match=r"took longer than 0\.2 s"):
        await EspeakNg(executable=str(slow), timeout=0.2).synthesize("Hello")


async def test_a_cancelled_render_kills_and_reaps_espeak_ng(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    slow = tmp_path / "slow-engine"
    slow.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 30\n")
    slow.chmod(0o755)
    render = asyncio.create_task(EspeakNg(executable=str(slow)).synthesize("Hello"))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if pid_file.exists() and pid_file.read_text().strip():
            break
    pid = int(pid_file.read_text())
    render.cancel()
    with pytest.raises(asyncio.CancelledError):
        await render
    with pytest.raises(ProcessLookupError):  # killed, and reaped: not even a zombie is left
        os.kill(pid, 0)


# --- the HTTP route ---------------------------------------------------------------------


@pytest.fixture
async def media_server(tmp_path: Path) -> AsyncIterator[tuple[str, PromptCache]]:
    """The service's HTTP server (token set) with the media route, over a cache directory."""
    cache = PromptCache(FakeEngine(), tmp_path / "prompts")
    (tmp_path / "secret.wav").write_bytes(b"not for you")
    store = Store.from_url("sqlite+aiosqlite:///:memory:")
    try:
        async with running_http_api(
            store,
            host="127.0.0.1",
            port=0,
            token="t0ken",
            open_routes=media_routes(cache.directory),
        ) as server:
            yield server.url, cache
    finally:
        await store.close()


async def test_the_media_route_serves_a_rendered_prompt_without_a_token(
    media_server: tuple[str, PromptCache],
) -> None:
    url, cache = media_server
    key = await cache.render("Key your PIN")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/media/{key}.wav") as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "audio/wav"
            assert "immutable" in response.headers["Cache-Control"]
            assert await response.read() == cache.path(key).read_bytes()
            etag = response.headers["ETag"]
        async with http.get(f"{url}/media/{key}.wav", headers={"If-None-Match": etag}) as again:
            assert again.status == 304


@pytest.mark.parametrize(
    "path",
    [
        "/media/" + "0" * 64 + ".wav",  # a valid name, never rendered
        "/media/{key}.gsm",
        "/media/{key}",
        "/media/{key}.wav.wav",
        "/media/" + "A" * 64 + ".wav",
        "/media/..%2Fsecret.wav",
        "/media/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/media/%2E%2E%2Fsecret.wav",
        "/media/{key}%00.wav",
    ],
)
async def test_the_media_route_serves_nothing_else(
    media_server: tuple[str, PromptCache], path: str
) -> None:
    url, cache = media_server
    key = await cache.render("Key your PIN")
    async with (
        aiohttp.ClientSession() as http,
        http.get(url + path.replace("{key}", key)) as response,
    ):
        assert response.status == 404
        assert (await response.json())["error"]


async def test_paths_outside_the_media_route_still_need_the_token(
    media_server: tuple[str, PromptCache],
) -> None:
    url, _ = media_server
    async with aiohttp.ClientSession() as http, http.get(f"{url}/media/a/b.wav") as response:
        assert response.status == 401


# --- settings ---------------------------------------------------------------------------


def test_tts_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "TTS_VOICE": "en-gb",
            "TTS_RATE": "140",
            "TTS_CACHE_DIR": "/srv/prompts",
            "MEDIA_BASE_URL": "http://10.0.0.5:8090/",
        }
    )
    assert (settings.tts_voice, settings.tts_rate, settings.tts_cache_dir) == (
        "en-gb",
        140,
        "/srv/prompts",
    )
    assert media_base_url(settings) == "http://10.0.0.5:8090"


def test_the_tts_cache_dir_expands_the_home_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/asterisk")
    settings = Settings.from_env({"TTS_CACHE_DIR": "~/prompts"})
    assert settings.tts_cache_dir == "/home/asterisk/prompts"
    assert Settings.from_env({}).tts_cache_dir == ""  # the XDG default


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TTS_RATE": "fast"}, "TTS_RATE must be a whole number"),
        ({"TTS_RATE": "1000"}, "between 80 and 450"),
        ({"MEDIA_BASE_URL": "10.0.0.5:8090"}, "MEDIA_BASE_URL must start with http"),
    ],
)
def test_bad_tts_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("host", "port", "listening", "expected"),
    [
        ("127.0.0.1", 8090, None, "http://127.0.0.1:8090"),
        ("0.0.0.0", 8090, None, "http://127.0.0.1:8090"),
        ("::1", 8090, None, "http://[::1]:8090"),
        ("10.1.2.3", 0, 41234, "http://10.1.2.3:41234"),
    ],
)
def test_the_media_base_url_defaults_to_the_http_server(
    host: str, port: int, listening: int | None, expected: str
) -> None:
    settings = Settings(api_host=host, api_port=port)
    assert media_base_url(settings, listening_port=listening) == expected
