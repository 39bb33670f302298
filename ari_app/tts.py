"""Text prompts: ``prompt=tts:Please key your number`` spoken by a local TTS engine.

The engine (:class:`TtsEngine`; :class:`EspeakNg` by default) turns text into a WAV file at
whatever rate it likes; :class:`PromptCache` converts that once to what Asterisk plays natively
(8 kHz mono 16-bit ``.wav``) and keeps it under the SHA-256 of engine, voice, rate and text, so
the same prompt is rendered once however many calls ask for it at the same moment.

Asterisk gets the audio over HTTP: :class:`TextPrompts` turns each ``tts:`` item of a media list
into ``sound:<MEDIA_BASE_URL>/media/<hash>.wav``, which ``res_http_media_cache`` downloads (and
keeps: the route says the content never changes) for ARI playbacks and for AGI ``STREAM FILE``
alike. The route is :func:`ari_app.http.media.media_routes`. The digit collector
(``ari_app/engine.py``) stays sans-I/O: the adapters render (see below) and play.

A prompt that cannot be rendered never fails the call: the error is logged and the caller hears
:data:`FALLBACK_MEDIA` (a beep) instead of that item. The failure is remembered for
:data:`FAILURE_MEMORY` seconds, so a broken engine (a bad ``TTS_VOICE``) is not run, and logged,
again for every prompt of every call.

A cold cache must not hold a call up: the adapters :meth:`TextPrompts.prepare` an entry's text
prompts when it starts, so they render while the call is answered, and :meth:`TextPrompts.playable`
waits at most :data:`PLAY_WAIT` seconds for a render before it plays the fallback instead (the
render goes on, for the next prompt and the next call).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ari_app.media import TEXT_SCHEME, MediaItem, Sound, TextPrompt, Url
from ari_app.params import Params
from ari_app.settings import Settings

log = logging.getLogger(__name__)

SAMPLE_RATE = 8000  # Asterisk's .wav format is 8 kHz 16-bit mono, whatever the channel's codec
MEDIA_EXTENSION = "wav"
FALLBACK_MEDIA = Sound("beep")
RENDER_TIMEOUT = 20.0
# How long a call waits for a render at play time: the call task handles nothing else (hangup,
# keys, timers) meanwhile. A render started when the entry began is usually done by then.
PLAY_WAIT = 3.0
FAILURE_MEMORY = 60.0  # seconds a failed render is not retried
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")  # fullmatch it

# The resampler's windowed-sinc filter: taps on each side of a sample (at the lower rate), and
# the passband as a fraction of the lower Nyquist frequency (the rest is the transition band).
_HALF_TAPS = 16
_PASSBAND = 0.9
_BLOCK = 8192  # output samples computed at once: bounds memory for long prompts


class TtsError(Exception):
    """The engine could not render a text, or its output is not usable audio."""


class RecentlyFailed(TtsError):
    """The text's render failed less than :data:`FAILURE_MEMORY` seconds ago (already logged)."""


class TtsEngine(Protocol):
    """A text-to-speech engine. ``identity`` names everything that changes the audio (engine,
    voice, rate): it is part of the cache key."""

    @property
    def identity(self) -> str: ...

    async def synthesize(self, text: str) -> bytes:
        """The spoken text as a 16-bit PCM WAV file (any rate, any channel count).

        Must not block the event loop; raises :class:`TtsError`."""
        ...


@dataclass(frozen=True)
class EspeakNg:
    """eSpeak NG as a subprocess (Debian: ``apt-get install espeak-ng``); text on stdin, so no
    text can be mistaken for an option."""

    voice: str = "en-us"
    words_per_minute: int = 160
    executable: str = "espeak-ng"
    timeout: float = RENDER_TIMEOUT

    @property
    def identity(self) -> str:
        return f"espeak-ng voice={self.voice} rate={self.words_per_minute}"

    async def synthesize(self, text: str) -> bytes:
        argv = [
            self.executable,
            "-v",
            self.voice,
            "-s",
            str(self.words_per_minute),
            "--stdout",
            "--stdin",
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise TtsError(f"cannot run {self.executable}: {exc}") from None
        try:
            async with asyncio.timeout(self.timeout):
                audio, errors = await process.communicate(text.encode())
        except BaseException as exc:
            # Timed out, or cancelled (the service exits): the process must not outlive the
            # render, and waiting for it reaps it and closes its pipes.
            with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                process.kill()
            await process.wait()
            if isinstance(exc, TimeoutError):
                raise TtsError(f"{self.executable} took longer than {self.timeout:g} s") from None
            raise
        if process.returncode != 0:
            message = errors.decode("utf-8", "replace").strip() or "no message"
            raise TtsError(f"{self.executable} exited with status {process.returncode}: {message}")
        return audio


def telephone_wav(audio: bytes) -> bytes:
    """Any 16-bit PCM WAV as Asterisk's native ``.wav``: 8 kHz, mono, 16-bit."""
    try:
        with wave.open(io.BytesIO(audio)) as source:
            channels, width, rate = (
                source.getnchannels(),
                source.getsampwidth(),
                source.getframerate(),
            )
            # Streamed WAVs (espeak-ng --stdout) announce a huge length: read what is there.
            frames = source.readframes(source.getnframes())
    except (wave.Error, EOFError) as exc:
        raise TtsError(f"the engine's output is not a WAV file: {exc}") from None
    if width != 2 or channels < 1 or rate < 1:
        raise TtsError(f"the engine's output is not 16-bit PCM ({width * 8}-bit, {rate} Hz)")
    usable = len(frames) - len(frames) % (2 * channels)
    samples = np.frombuffer(frames[:usable], dtype="<i2").astype(np.float64)
    mono = samples.reshape(-1, channels).mean(axis=1)
    if mono.size == 0:
        raise TtsError("the engine produced no audio")
    converted = np.clip(np.round(resample(mono, rate, SAMPLE_RATE)), -32768, 32767)
    out = io.BytesIO()
    with wave.open(out, "wb") as target:
        target.setnchannels(1)
        target.setsampwidth(2)
        target.setframerate(SAMPLE_RATE)
        target.writeframes(converted.astype("<i2").tobytes())
    return out.getvalue()


def resample(samples: npt.NDArray[np.float64], rate: int, new_rate: int) -> npt.NDArray[np.float64]:
    """Band-limited resampling (Hann-windowed sinc), so speech above 4 kHz does not fold back
    into the telephone band as noise."""
    if rate == new_rate:
        return samples
    step = rate / new_rate  # input samples per output sample
    cutoff = _PASSBAND * min(1.0, 1 / step)  # in cycles per input sample, times 2
    reach = int(np.ceil(_HALF_TAPS / min(1.0, 1 / step)))
    offsets = np.arange(-reach + 1, reach + 1)
    padded = np.concatenate([np.zeros(reach), samples, np.zeros(reach + 1)])
    count = int(len(samples) / step)
    out = np.empty(count)
    for start in range(0, count, _BLOCK):
        positions = np.arange(start, min(count, start + _BLOCK)) * step
        base = np.floor(positions).astype(np.int64)
        taps = base[:, None] + offsets[None, :]  # input indices around each output sample
        distance = positions[:, None] - taps
        window = 0.5 + 0.5 * np.cos(np.pi * np.clip(distance / reach, -1.0, 1.0))
        weights = cutoff * np.sinc(cutoff * distance) * window
        out[start : start + len(positions)] = (padded[taps + reach] * weights).sum(axis=1)
    return out


@dataclass(frozen=True)
class _Failure:
    until: float  # on the cache's clock
    reason: str


class PromptCache:
    """Rendered prompts in ``directory``, named by content hash; each text rendered once.

    A render in progress is shared by everyone asking for the same text; a caller who goes
    away (a hangup cancels its task) does not cancel it for the others. A failed render is
    logged once and remembered for ``failure_memory`` seconds (on ``clock``), during which
    requests for that text fail at once with :class:`RecentlyFailed`; then it is tried again.
    """

    def __init__(
        self,
        engine: TtsEngine,
        directory: Path,
        *,
        failure_memory: float = FAILURE_MEMORY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.directory = directory
        self.failure_memory = failure_memory
        self._clock = clock
        self._renders: dict[str, asyncio.Task[None]] = {}
        self._failures: dict[str, _Failure] = {}

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.engine.identity}\n{text}".encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.{MEDIA_EXTENSION}"

    def start(self, text: str) -> tuple[str, asyncio.Task[None]]:
        """``text``'s cache key and its render, started unless one is in progress; the task
        belongs to the cache (await it shielded). Raises :class:`RecentlyFailed`."""
        key = self.key(text)
        failure = self._failures.get(key)
        if failure is not None:
            if self._clock() < failure.until:
                raise RecentlyFailed(failure.reason)
            del self._failures[key]
        render = self._renders.get(key)
        if render is None:
            render = asyncio.create_task(self._load(key, text), name=f"tts-{key[:12]}")
            self._renders[key] = render
            render.add_done_callback(functools.partial(self._forget, key, text))
        return key, render

    async def render(self, text: str) -> str:
        """The cache key of ``text``'s audio, rendering it first if needed."""
        key, render = self.start(text)
        await asyncio.shield(render)
        return key

    async def close(self) -> None:
        """Cancel the renders in progress and wait for them (their engine processes end)."""
        renders = list(self._renders.values())
        for render in renders:
            render.cancel()
        await asyncio.gather(*renders, return_exceptions=True)

    async def _load(self, key: str, text: str) -> None:
        """Find the file (from earlier, or another process), or render it. Looked up on every
        request rather than remembered, so a cache directory pruned meanwhile is refilled."""
        if not await asyncio.to_thread(self.path(key).is_file):
            audio = await self.engine.synthesize(text)
            await asyncio.to_thread(self._store, key, audio)

    def _forget(self, key: str, text: str, render: asyncio.Task[None]) -> None:
        del self._renders[key]
        if render.cancelled():
            return
        # Retrieved here, as a render started ahead of play may have no waiter at all.
        error = render.exception()
        if error is None:
            return
        now = self._clock()
        self._failures = {k: f for k, f in self._failures.items() if f.until > now}
        reason = f"{self.engine.identity} could not render the text prompt {text[:80]!r}: {error}"
        self._failures[key] = _Failure(now + self.failure_memory, reason)
        log.error(
            "%s; %s plays instead, and it is not tried again for %g s",
            reason,
            FALLBACK_MEDIA,
            self.failure_memory,
        )

    def _store(self, key: str, audio: bytes) -> None:
        data = telephone_wav(audio)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Write then rename: the HTTP route never serves a half-written file.
        descriptor, partial = tempfile.mkstemp(dir=self.directory, suffix=".partial")
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
            os.chmod(partial, 0o644)
            os.replace(partial, self.path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise


class TextPrompts:
    """Turns the ``tts:`` items of a media list into media Asterisk can fetch over HTTP."""

    def __init__(
        self, cache: PromptCache, media_base_url: str, *, play_wait: float = PLAY_WAIT
    ) -> None:
        self.cache = cache
        self.media_base_url = media_base_url.rstrip("/")
        self.play_wait = play_wait

    def url(self, key: str) -> str:
        return f"{self.media_base_url}/media/{key}.{MEDIA_EXTENSION}"

    def prepare(self, params: Params | None) -> None:
        """Start rendering an entry's text prompts in the background (``None``: its
        parameters are invalid, nothing is played). A failure is logged by the cache."""
        if params is None:
            return
        for item in (*params.prompt, *params.invalid_prompt, *params.confirm_prompt):
            if item.startswith(TEXT_SCHEME):
                with contextlib.suppress(RecentlyFailed):  # playable() falls back
                    self.cache.start(item.removeprefix(TEXT_SCHEME))

    async def close(self) -> None:
        """Stop the renders in progress (the service exits)."""
        await self.cache.close()

    async def playable(self, media: Sequence[MediaItem], *, label: str) -> list[MediaItem]:
        """``media`` with every text item rendered and replaced by its :class:`Url`; an item
        that cannot be rendered, or not within ``play_wait`` seconds, becomes
        :data:`FALLBACK_MEDIA` (logged)."""
        texts = sorted({item.text for item in media if isinstance(item, TextPrompt)})
        if not texts:
            return list(media)
        if len(texts) == 1:  # the usual case: no gather to set up
            played = [await self._playable_text(texts[0], label)]
        else:
            played = await asyncio.gather(*(self._playable_text(text, label) for text in texts))
        rendered = dict(zip(texts, played, strict=True))
        return [rendered[item.text] if isinstance(item, TextPrompt) else item for item in media]

    async def _playable_text(self, text: str, label: str) -> MediaItem:
        try:
            key, render = self.cache.start(text)
        except RecentlyFailed:
            return FALLBACK_MEDIA  # logged when it failed
        if not render.done():  # a cached prompt is done: no wait (and its timer) to set up
            # asyncio.wait neither cancels the shared render nor raises its error.
            await asyncio.wait({render}, timeout=self.play_wait)
        if not render.done():
            log.warning(
                "channel %s: the text prompt %r is still rendering after %g s; playing %s instead",
                label,
                (TEXT_SCHEME + text)[:80],
                self.play_wait,
                f"sound:{FALLBACK_MEDIA.name}",
            )
            return FALLBACK_MEDIA
        if render.cancelled() or render.exception() is not None:
            return FALLBACK_MEDIA  # the cache logged why
        return Url(self.url(key))


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ari-digits/prompts`` (``~/.cache/ari-digits/prompts``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ari-digits" / "prompts"


def media_base_url(settings: Settings, listening_port: int | None = None) -> str:
    """``MEDIA_BASE_URL``, else the HTTP server's own address (a wildcard bind as loopback;
    ``listening_port``: the port it got when ``API_PORT`` is 0)."""
    if settings.media_base_url:
        return settings.media_base_url.rstrip("/")
    host = settings.api_host if settings.api_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    port = settings.api_port if listening_port is None else listening_port
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def text_prompts(settings: Settings) -> TextPrompts:
    """eSpeak NG with the configured voice and rate, cached in ``TTS_CACHE_DIR``."""
    engine = EspeakNg(voice=settings.tts_voice, words_per_minute=settings.tts_rate)
    if shutil.which(engine.executable) is None:
        log.warning(
            "%s is not installed: tts: prompts will play %s (apt-get install espeak-ng)",
            engine.executable,
            FALLBACK_MEDIA,
        )
    directory = Path(settings.tts_cache_dir) if settings.tts_cache_dir else default_cache_dir()
    return TextPrompts(PromptCache(engine, directory), media_base_url(settings))
