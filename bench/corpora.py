"""Corpora for the speech benchmark, built at run time, heard the way a phone line delivers them.

Nothing is shipped: speech is synthesised with espeak-ng, everything else (coughs, clicks, tones,
hold music, line noise) with numpy, and human recordings are read from a folder given as an
argument. Every clip goes through :func:`telephone_line`, the one line model: 8 kHz, 300-3400 Hz,
an *active speech level* chosen per clip (quiet talkers and hot lines, not only loud tuning
speakers), optional line noise, G.711 mu-law, and back to 16 kHz float32 as Asterisk hands a
caller's audio to the recogniser.

* :func:`nondigit_corpus` - audio holding no digit at all (talk, noises, tones, music, babble,
  line noise); a correct recogniser returns ``""`` for every clip.
* :func:`mixed_corpus` - filler and digits in one turn ("um, it's four one five five");
  :func:`human_mixed_corpus` the same with the digits said by human speakers.
* :func:`human_sources` + :func:`level_sweep` - raw human recordings (FSDD layout) and one line
  copy of each per level, to see where recognition falls off as the caller gets quieter.

Levels are dBFS RMS with full scale = 1.0, i.e. a full-scale square wave is 0 dBFS and a
full-scale sine -3 dBFS; that is ITU-T G.191's dBov, so ITU's nominal speech level is -26 dBFS.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import subprocess
import sys
import wave
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ari_app.speech.recognizer import SAMPLE_RATE

Audio = npt.NDArray[np.float32]
Signal = npt.NDArray[np.float64]

LINE_RATE = 8000  # the telephone channel (G.711)
FRAME_S = 0.02  # level-measurement frames, the segmenter's 20 ms
ACTIVE_FULL_DB = 20.0  # frames within this of the loudest count fully towards the level
ACTIVE_FLOOR_DB = 30.0  # ... and those further under it than this not at all
BAND_HZ = (300.0, 3400.0)

# Realistic default line noise for the "with line noise" rows. ITU-T G.712 allows a digital
# exchange -65 dBm0p of idle-channel noise, about -71 dBFS here (0 dBm0 is -6.2 dBFS for mu-law);
# analogue loops, DECT/mobile handsets and cheap ATAs add a few dB, so a quiet but real line sits
# near -65 dBFS RMS: 39 dB under a nominal (-26 dBFS) talker, 20 dB under a -45 dBFS one.
LINE_NOISE_DBFS = -65.0
NOISY_LINE_DBFS = -50.0  # a bad line: audible hiss, 5-35 dB under the talker
LEVELS_DBFS = (-15.0, -25.0, -35.0, -45.0)  # hot to quiet talkers
NOISE_CHOICES: tuple[float | None, ...] = (None, LINE_NOISE_DBFS, NOISY_LINE_DBFS)
LINE_NOISE_ALONE_DBFS = (-60.0, -50.0, -40.0, -35.0)
KINDS = ("single", "string", "nondigit", "mixed")

# Wanted espeak-ng voices; those this espeak-ng lacks are left out (see available_voices()).
VOICES = (
    "en-us",
    "en",
    "en+f3",
    "en+m3",
    "en-gb-x-rp",
    "en+f4",
    "en-us+klatt",
    "en-gb-scotland",
    "en-029",
    "en-us-nyc",
    "en+f2",
    "en+m7",
)
WPM = (130, 200)
PITCH = (25, 75)  # espeak-ng -p, 50 is the voice's own
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# What callers say instead of digits. None holds a digit word, a homophone or "oh" as a whole
# word (corpora_check asserts it, and that words_to_digits reads no digit in any of them).
SPEECH: dict[str, tuple[str, ...]] = {
    "speech: filler": (
        "um",
        "uh, hold on",
        "um, hold on, let me find it",
        "hmm",
        "wait a second",
        "er, just a moment",
        "uh, let me see",
        "hmm, where is it",
        "um, okay, hang on",
        "ah, give me a sec",
    ),
    "speech: question": (
        "hello?",
        "hello? hello?",
        "can you repeat that",
        "sorry, what was that?",
        "are you there?",
        "what did you say?",
        "could you say that again?",
        "is this the right place?",
        "who am I speaking with?",
        "can you hear me?",
    ),
    "speech: refusal": (
        "I don't have it",
        "I don't know",
        "I need a minute, let me check",
        "I can't find it right now",
        "I'd rather not say",
        "I don't remember it",
        "I left it at home",
        "not sure, sorry",
    ),
    "speech: yes/no": (
        "yes",
        "no",
        "okay",
        "sure",
        "yeah, that's right",
        "nope",
        "correct",
        "no, that's wrong",
    ),
    "speech: name": (
        "John Smith",
        "Maria Garcia",
        "Robert Johnson",
        "Emily Chen",
        "Ahmed Khan",
        "Sarah Miller",
        "David Brown",
        "Priya Patel",
        "Michael Anderson",
        "Lucy Wilson",
    ),
    "speech: address": (
        "Main Street",
        "Oak Avenue, Springfield",
        "Elm Road, apartment B",
        "Maple Drive, Portland",
        "Sunset Boulevard",
        "Church Lane, Oxford",
        "Park Place, near the station",
        "Lincoln Avenue, Chicago, Illinois",
    ),
    "speech: operator": (
        "operator",
        "agent please",
        "representative",
        "I want a real person",
        "let me speak with a human",
        "customer service",
        "main menu",
        "transfer me please",
    ),
}
NONDIGIT_SENTENCES: tuple[str, ...] = tuple(s for group in SPEECH.values() for s in group)

# Filler around the digits in one turn; {d} is the spoken number.
FILLER_FIRST = (
    "um, it's {d}",
    "uh, my number is {d}",
    "let me see... {d}",
    "okay, it's {d}",
    "hold on. {d}",
    "hmm, {d}",
    "uh, yeah, it's {d}",
    "right, so it's {d}",
    "um, I think it's {d}",
    "sure, it is {d}",
    "the number is {d}",
    "um, hang on... okay, {d}",
)
FILLER_AFTER = (
    "{d}, I think",
    "{d}, I believe",
    "{d}, that's it",
    "{d}, yeah",
    "{d}... I think that's right",
)


@dataclass(frozen=True)
class Clip:
    """One benchmark clip as the recogniser receives it: float32 mono 16 kHz in [-1, 1).

    ``digits`` is what a correct recogniser returns ("" for audio with no digits); ``kind`` is
    one of :data:`KINDS`; ``text`` is what was said (synthetic speech), ``level_dbfs`` and
    ``noise_dbfs`` the line settings it went through (None = as recorded / digital silence)."""

    name: str
    digits: str
    audio: Audio
    condition: str
    kind: str
    text: str = ""
    level_dbfs: float | None = None
    noise_dbfs: float | None = None


@dataclass(frozen=True)
class Source:
    """Raw audio before the line, at its own ``rate`` and level, so a line can set the level.
    Float samples in [-1, 1], any rate (FSDD is 8 kHz, espeak-ng 22.05 kHz)."""

    name: str
    digits: str
    audio: Signal | Audio
    rate: int
    kind: str
    text: str = ""


# --- audio helpers ---------------------------------------------------------------------------


def read_wav(path: Path) -> tuple[Audio, int]:
    """A 16-bit PCM WAV file as float32 samples and its rate (mono, or the first channel)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: not 16-bit PCM")
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        raw = raw.reshape(-1, w.getnchannels())[:, 0]
        return (raw.astype(np.float32) / 32768.0), w.getframerate()


def write_wav(path: Path, audio: npt.NDArray[np.floating], rate: int = SAMPLE_RATE) -> None:
    """16-bit mono WAV, to listen to a clip."""
    pcm = np.clip(np.round(np.asarray(audio, np.float64) * 32768), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def _lowpass(cutoff: float, taps: int = 95) -> Signal:
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * cutoff * n) * np.kaiser(taps, 8.0)
    return np.asarray(h / h.sum(), np.float64)


_UP2 = _lowpass(0.23)  # 8 kHz -> 16 kHz: pass below 3.7 kHz, reject images above 4 kHz


def upsample_8k(audio: npt.NDArray[np.floating]) -> Audio:
    """8 kHz to 16 kHz (zero-stuffing and a windowed-sinc low-pass), as Asterisk's resampler."""
    stuffed = np.zeros(2 * len(audio), np.float64)
    stuffed[::2] = audio
    return (2.0 * np.convolve(stuffed, _UP2, mode="same")).astype(np.float32)


def _frame_powers(audio: npt.NDArray[np.floating], rate: int) -> Signal:
    """Mean power of each 20 ms frame; the last one zero-padded (so padding a clip with silence,
    as the line does, leaves the frames and the level as they were)."""
    frame = round(rate * FRAME_S)
    count = -(-len(audio) // frame)
    x = np.zeros(count * frame, np.float64)
    x[: len(audio)] = audio
    return np.asarray(np.mean(x.reshape(count, frame) ** 2, axis=1), np.float64)


def active_level_dbfs(audio: npt.NDArray[np.floating], rate: int) -> float:
    """The active level :func:`telephone_line` sets, in dBFS RMS (full scale 1.0 = 0 dBFS).

    A rough ITU-T P.56 on 20 ms frames: the mean power of the frames within 20 dB of the
    loudest, those 20-30 dB under it weighted down linearly (in dB) to nothing, quieter ones
    left out. Pauses, lead-in, digital silence and line noise 30 dB under the loudest frame
    (about 22-25 dB under the talker's level) do not count, so a quiet talker with long pauses
    reads the same as one without; the soft edge keeps a frame near it from moving a short
    clip's level by a step (P.56's hard threshold moves a 0.3 s digit by up to 2 dB).
    Scale-invariant: multiplying the audio by g adds exactly 20 log10 g. -inf for silence."""
    power = _frame_powers(audio, rate)
    if power.size == 0 or power.max() <= 0.0:
        return -math.inf
    with np.errstate(divide="ignore"):
        below = 10 * np.log10(power / power.max())  # dB under the loudest frame, <= 0
    weight = np.clip((below + ACTIVE_FLOOR_DB) / (ACTIVE_FLOOR_DB - ACTIVE_FULL_DB), 0.0, 1.0)
    return float(10 * np.log10(np.sum(weight * power) / np.sum(weight)))


def _band_weights(freqs: Signal) -> Signal:
    """300-3400 Hz flat, raised-cosine skirts 200-300 and 3400-3600 Hz (short ringing)."""
    lo = np.clip((freqs - (BAND_HZ[0] - 100.0)) / 100.0, 0.0, 1.0)
    hi = np.clip((BAND_HZ[1] + 200.0 - freqs) / 200.0, 0.0, 1.0)
    return np.asarray((0.5 - 0.5 * np.cos(np.pi * lo)) * (0.5 - 0.5 * np.cos(np.pi * hi)))


@functools.cache
def _smooth_length(minimum: int) -> int:
    """The least 2^a 3^b 5^c >= minimum (a fast FFT size; the loops run a few dozen times)."""
    best = 1 << max(0, minimum - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            n = p35
            while n < minimum:
                n *= 2
            best = min(best, n)
            p35 *= 3
        p5 *= 5
    return best


def to_line_band(audio: npt.NDArray[np.floating], rate: int) -> Signal:
    """Any rate to 8 kHz, 300-3400 Hz, in one FFT: the exact rational ratio keeps the length
    ``round(len * 8000 / rate)``; zero padding keeps the ends from wrapping round."""
    if len(audio) == 0:
        return np.zeros(0, np.float64)
    g = math.gcd(rate, LINE_RATE)
    up, down = LINE_RATE // g, rate // g
    pad_blocks = math.ceil(0.05 * rate / down)
    k = _smooth_length(math.ceil(len(audio) / down) + 2 * pad_blocks)
    n, n_out = down * k, up * k
    x = np.zeros(n, np.float64)
    x[pad_blocks * down : pad_blocks * down + len(audio)] = audio
    spectrum = np.fft.rfft(x)
    bins = n_out // 2 + 1
    out = np.zeros(bins, np.complex128)
    keep = min(bins, len(spectrum))
    out[:keep] = spectrum[:keep]
    out *= _band_weights(np.asarray(np.fft.rfftfreq(n_out, 1.0 / LINE_RATE), np.float64))
    y = np.fft.irfft(out, n_out) * (n_out / n)
    start = pad_blocks * up
    return np.asarray(y[start : start + round(len(audio) * up / down)], np.float64)


def line_noise(length: int, rng: np.random.Generator, *, hum: bool = True) -> Signal:
    """Telephone-band hiss at unit RMS (8 kHz): pink (1/f) from 300 to 3400 Hz, plus the mains'
    odd harmonics that get through the band (50 or 60 Hz x 5, 7, 9), 12 dB under the hiss."""
    if length == 0:
        return np.zeros(0, np.float64)
    n = _smooth_length(length)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.asarray(np.fft.rfftfreq(n, 1.0 / LINE_RATE), np.float64)
    spectrum *= _band_weights(freqs) / np.sqrt(np.maximum(freqs, 1.0))
    hiss = np.fft.irfft(spectrum, n)[:length]
    hiss /= np.sqrt(np.mean(hiss**2))
    if hum:
        mains = 50.0 if rng.random() < 0.5 else 60.0
        t = np.arange(length) / LINE_RATE
        hums = sum(
            np.sin(2 * np.pi * mains * h * t + rng.uniform(0, 2 * np.pi)) / h for h in (5, 7, 9)
        )
        hums = np.asarray(hums, np.float64)
        hiss += hums / np.sqrt(np.mean(hums**2)) * 10 ** (-12 / 20)
    return np.asarray(hiss / np.sqrt(np.mean(hiss**2)), np.float64)


# G.711 mu-law (the classic Sun g711.c on 16-bit samples, vectorised).
_BIAS = 0x84
_CLIP = 32635


def mulaw_encode(audio: npt.NDArray[np.floating]) -> npt.NDArray[np.uint8]:
    """Float samples (full scale 1.0) to G.711 mu-law bytes."""
    pcm = np.clip(np.round(np.asarray(audio, np.float64) * 32768), -32768, 32767).astype(np.int32)
    sign = np.where(pcm < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(pcm), _CLIP) + _BIAS
    segment = np.frexp(magnitude)[1] - 8  # bit length - 8: 0..7
    mantissa = (magnitude >> (segment + 3)) & 0x0F
    return np.asarray(~(sign | (segment << 4) | mantissa) & 0xFF, np.uint8)


def mulaw_decode(codes: npt.NDArray[np.uint8]) -> Audio:
    """G.711 mu-law bytes to float samples (full scale 1.0)."""
    u = ~codes.astype(np.int32) & 0xFF
    segment = (u >> 4) & 0x07
    magnitude = ((((u & 0x0F) << 3) + _BIAS) << segment) - _BIAS
    return (np.where(u & 0x80, -magnitude, magnitude) / 32768.0).astype(np.float32)


_TOP = np.float32(32767 / 32768)  # the largest 16-bit sample: clips end in [-1, 1)


def telephone_line(
    audio: npt.NDArray[np.floating],
    rate: int,
    *,
    level_dbfs: float | None,
    noise_dbfs: float | None,
    rng: np.random.Generator,
    lead_s: float = 0.5,
    tail_s: float = 1.0,
) -> Audio:
    """Any source audio as an Asterisk channel delivers it to the recogniser.

    To 8 kHz and 300-3400 Hz (:func:`to_line_band`); scaled so its active level
    (:func:`active_level_dbfs`) after the codec is ``level_dbfs`` (None = as it is); ``lead_s``
    of line before and ``tail_s`` after, the caller's pause as the call's segmenter sees it; noise
    (:func:`line_noise`) at ``noise_dbfs`` RMS over the whole clip, or None for digital silence
    (what Asterisk sends while nothing is on the line); G.711 mu-law, which saturates at full
    scale as a hot line does; 8 kHz -> 16 kHz. Returns float32 at 16 kHz in [-1, 1)."""
    speech = to_line_band(audio, rate)
    if level_dbfs is not None:
        current = active_level_dbfs(speech, LINE_RATE)
        if not math.isfinite(current):
            raise ValueError("cannot set the level of silence")
        speech *= 10 ** ((level_dbfs - current) / 20)
        if np.abs(speech).max() < _CLIP / 32768:
            # mu-law zeroes and coarsens the weakest frames, which moves a short, bursty, quiet
            # clip's level by a few tenths of a dB: set the level the line delivers (unless it
            # clips: that loss is the line's, not made up by turning the talker up further).
            delivered = active_level_dbfs(mulaw_decode(mulaw_encode(speech)), LINE_RATE)
            speech *= 10 ** ((level_dbfs - delivered) / 20)
    lead, tail = round(lead_s * LINE_RATE), round(tail_s * LINE_RATE)
    line = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    if noise_dbfs is not None:
        line += line_noise(len(line), rng) * 10 ** (noise_dbfs / 20)
    narrow = mulaw_decode(mulaw_encode(line))
    return np.clip(upsample_8k(narrow), -1.0, _TOP).astype(np.float32)


# --- espeak-ng -------------------------------------------------------------------------------


@functools.cache
def available_voices(wanted: tuple[str, ...] = VOICES) -> tuple[str, ...]:
    """The wanted voices this espeak-ng has (an unknown "+variant" falls back silently to the
    plain voice, so variants are checked against ``--voices=variant``)."""
    listing = subprocess.run(
        ["espeak-ng", "--voices=variant"], check=True, capture_output=True, text=True
    ).stdout
    variants = {m.lower() for m in re.findall(r"!v/(\S+)", listing)}
    found = []
    for voice in wanted:
        base, _, variant = voice.partition("+")
        if variant and variant.lower() not in variants:
            continue
        probe = subprocess.run(["espeak-ng", "-v", base, "-q", "x"], capture_output=True)
        if probe.returncode == 0:
            found.append(voice)
    if not found:
        raise RuntimeError("espeak-ng has none of the wanted English voices")
    return tuple(found)


@dataclass(frozen=True)
class _Say:
    text: str
    voice: str
    wpm: int
    pitch: int

    def path(self, work: Path) -> Path:
        key = f"{self.voice}|{self.wpm}|{self.pitch}|{self.text}".encode()
        return work / "espeak" / f"{hashlib.sha1(key).hexdigest()[:16]}.wav"


def _random_say(text: str, rng: np.random.Generator, voices: Sequence[str]) -> _Say:
    return _Say(
        text,
        voices[int(rng.integers(len(voices)))],
        int(rng.integers(WPM[0], WPM[1] + 1)),
        int(rng.integers(PITCH[0], PITCH[1] + 1)),
    )


def _render(work: Path, says: Iterable[_Say]) -> dict[_Say, tuple[Audio, int]]:
    """espeak-ng renders, cached as WAV files under ``work/espeak`` and made in parallel."""
    unique = list(dict.fromkeys(says))
    (work / "espeak").mkdir(parents=True, exist_ok=True)

    def make(say: _Say) -> None:
        path = say.path(work)
        if not path.exists():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            subprocess.run(
                [
                    *("espeak-ng", "-v", say.voice, "-s", str(say.wpm), "-p", str(say.pitch)),
                    *("-w", str(tmp), say.text),
                ],
                check=True,
                capture_output=True,
            )
            tmp.replace(path)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(make, unique))
    return {say: read_wav(say.path(work)) for say in unique}


def spoken_form(digits: str, rng: np.random.Generator) -> str:
    """How a person reads a number: groups of 3-4 separated by commas, "oh" now and then."""
    groups: list[str] = []
    rest = digits
    while rest:
        size = 4 if len(rest) in (4, 8) or len(rest) > 7 else 3
        size = len(rest) if len(rest) <= 4 else size
        groups.append(rest[:size])
        rest = rest[size:]
    words = [
        " ".join("oh" if d == "0" and rng.random() < 0.25 else WORDS[int(d)] for d in group)
        for group in groups
    ]
    return ", ".join(words)


# --- synthetic non-speech (all at 8 kHz, unit-ish amplitude; the line sets the level) --------


def _t(seconds: float) -> Signal:
    return np.arange(round(seconds * LINE_RATE)) / LINE_RATE


def _shaped(length: int, rng: np.random.Generator, weights: Callable[[Signal], Signal]) -> Signal:
    """White noise with the given magnitude response, unit RMS."""
    n = _smooth_length(max(length, 1))
    freqs = np.asarray(np.fft.rfftfreq(n, 1 / LINE_RATE), np.float64)
    spectrum = np.fft.rfft(rng.standard_normal(n)) * weights(freqs)
    x = np.fft.irfft(spectrum, n)[:length]
    return np.asarray(x / (np.sqrt(np.mean(x**2)) or 1.0), np.float64)


def _bumps(centres: Sequence[float], widths: Sequence[float]) -> Callable[[Signal], Signal]:
    """Formant-like spectral peaks over a faint floor."""

    def weights(f: Signal) -> Signal:
        peaks = sum(np.exp(-0.5 * ((f - c) / w) ** 2) for c, w in zip(centres, widths, strict=True))
        return np.asarray(0.05 + np.asarray(peaks, np.float64), np.float64)

    return weights


def _place(events: Sequence[tuple[float, Signal]], seconds: float) -> Signal:
    """Events (start s, samples) added into one buffer long enough for all of them."""
    end = max([seconds] + [start + len(x) / LINE_RATE for start, x in events])
    out = np.zeros(round(end * LINE_RATE) + 1)
    for start, x in events:
        i = round(start * LINE_RATE)
        out[i : i + len(x)] += x
    return out


def _burst(
    seconds: float, attack_s: float, rng: np.random.Generator, weights: Callable[[Signal], Signal]
) -> Signal:
    """Shaped noise with a linear attack and an exponential decay to -60 dB at the end."""
    t = _t(seconds)
    tau = max(seconds - attack_s, 1e-3) / 6.9
    env = np.where(t < attack_s, t / attack_s, np.exp(-(t - attack_s) / tau))
    return _shaped(len(t), rng, weights) * env


def cough(rng: np.random.Generator) -> Signal:
    """1-3 coughs: an explosive attack, formant-coloured noise, 150-600 ms each."""
    events = []
    at = 0.0
    for _ in range(int(rng.integers(1, 4))):
        seconds = rng.uniform(0.15, 0.6)
        colour = _bumps(
            [rng.uniform(350, 900), rng.uniform(1100, 2000), rng.uniform(2300, 3200)],
            [rng.uniform(120, 350), rng.uniform(200, 450), rng.uniform(250, 500)],
        )
        strength = rng.uniform(0.5, 1.0)
        events.append((at, strength * _burst(seconds, rng.uniform(0.005, 0.02), rng, colour)))
        at += seconds + rng.uniform(0.08, 0.35)
    return _place(events, at)


def breath(rng: np.random.Generator) -> Signal:
    """Breathing into the handset: soft-attack airy noise, 150-600 ms, in- and out-breaths."""
    events = []
    at = 0.0
    for _ in range(int(rng.integers(1, 4))):
        seconds = rng.uniform(0.15, 0.6)
        colour = _bumps([rng.uniform(900, 1800), rng.uniform(2200, 3300)], [600, 700])
        events.append((at, _burst(seconds, seconds * rng.uniform(0.3, 0.6), rng, colour)))
        at += seconds + rng.uniform(0.1, 0.5)
    return _place(events, at)


def _ring(freq: float, tau_s: float, seconds: float, phase: float = 0.0) -> Signal:
    t = _t(seconds)
    return np.asarray(np.sin(2 * np.pi * freq * t + phase) * np.exp(-t / tau_s), np.float64)


def clicks(rng: np.random.Generator) -> Signal:
    """Handset clicks (short decaying rings) and pops (a step that settles), 1-5 of them."""
    events = []
    seconds = rng.uniform(0.4, 2.0)
    for _ in range(int(rng.integers(1, 6))):
        if rng.random() < 0.7:
            x = _ring(rng.uniform(800, 3000), rng.uniform(0.0005, 0.003), 0.02)
        else:  # pop: a jump that decays away (the band turns it into a thump)
            x = np.exp(-_t(0.03) / rng.uniform(0.002, 0.01))
        events.append((rng.uniform(0, seconds), x * rng.choice([-1.0, 1.0]) * rng.uniform(0.3, 1)))
    return _place(events, seconds)


def lip_smacks(rng: np.random.Generator) -> Signal:
    """Lip smacks and tongue clicks: 10-40 ms bright bursts, 1-4 over up to a second."""
    events = []
    seconds = rng.uniform(0.3, 1.0)
    for _ in range(int(rng.integers(1, 5))):
        colour = _bumps([rng.uniform(1500, 3000)], [rng.uniform(300, 800)])
        burst = _burst(rng.uniform(0.01, 0.04), 0.002, rng, colour)
        events.append((rng.uniform(0, seconds), burst * rng.uniform(0.4, 1.0)))
    return _place(events, seconds)


def static_crackle(rng: np.random.Generator) -> Signal:
    """A crackling line: random impulses (Poisson, 20-200 a second, log-normal sizes) and
    gated bursts of hiss, 0.5-2.5 s."""
    seconds = rng.uniform(0.5, 2.5)
    length = round(seconds * LINE_RATE)
    impulses = np.zeros(length)
    count = int(rng.poisson(rng.uniform(20, 200) * seconds))
    impulses[rng.integers(0, length, count)] = rng.lognormal(0, 0.5, count) * rng.choice(
        [-1.0, 1.0], count
    )
    crackle = np.convolve(impulses, _ring(rng.uniform(1000, 3000), 0.0015, 0.008), "same")
    gate = np.repeat(rng.random(length // 160 + 1) < 0.25, 160)[:length]
    hiss = _shaped(length, rng, lambda f: np.ones_like(f)) * gate * rng.uniform(0.05, 0.3)
    return np.asarray(crackle + hiss, np.float64)


def _fade(x: Signal, seconds: float = 0.01) -> Signal:
    n = min(round(seconds * LINE_RATE), len(x) // 2)
    ramp = np.ones(len(x))
    ramp[:n] = np.linspace(0, 1, n)
    ramp[len(ramp) - n :] = np.linspace(1, 0, n)
    return x * ramp


def sine_tone(rng: np.random.Generator) -> Signal:
    """A single tone, 300-2000 Hz, 0.3-2 s (a beep, a meter, a fax-like whine)."""
    t = _t(rng.uniform(0.3, 2.0))
    return _fade(np.sin(2 * np.pi * rng.uniform(300, 2000) * t))


def dial_tone(rng: np.random.Generator) -> Signal:
    """Precise dial tone, 350 + 440 Hz, 1.5-4 s (another phone off hook in the room)."""
    t = _t(rng.uniform(1.5, 4.0))
    return _fade(np.sin(2 * np.pi * 350 * t) + np.sin(2 * np.pi * 440 * t))


def busy_tone(rng: np.random.Generator) -> Signal:
    """Busy cadence: North American 480+620 Hz 0.5/0.5 s, British 400 Hz 0.375/0.375 s or
    European 425 Hz 0.5/0.5 s, 2-4 cycles."""
    freqs, on = [((480.0, 620.0), 0.5), ((400.0,), 0.375), ((425.0,), 0.5)][int(rng.integers(3))]
    t = _t(on * 2 * int(rng.integers(2, 5)))
    tone = sum(np.sin(2 * np.pi * f * t) for f in freqs)
    gate = (np.floor(t / on) % 2 == 0).astype(np.float64)
    return _fade(np.asarray(tone, np.float64) * gate, 0.005)


def _bell(freq: float, seconds: float, tau_s: float, partials: Sequence[float]) -> Signal:
    t = _t(seconds)
    x = sum(np.sin(2 * np.pi * freq * p * t) / (i + 1) for i, p in enumerate(partials))
    attack = np.minimum(t / 0.003, 1.0)
    return np.asarray(x, np.float64) * attack * np.exp(-t / tau_s)


def chime(rng: np.random.Generator) -> Signal:
    """A 3-note chime (an announcement, a phone app), notes of a major or minor triad."""
    root = rng.uniform(400, 900)
    steps = [(0, 4, 7), (7, 4, 0), (0, 3, 7), (0, 7, 12)][int(rng.integers(4))]
    gap = rng.uniform(0.2, 0.4)
    notes = [
        (i * gap, _bell(root * 2 ** (s / 12), 0.9, 0.25, (1.0, 2.0, 3.0)))
        for i, s in enumerate(steps)
    ]
    return _place(notes, 0.0)


def doorbell(rng: np.random.Generator) -> Signal:
    """Ding-dong: two bell notes a major third apart (down), inharmonic partials, long decay."""
    high = rng.uniform(600, 900)
    partials = (1.0, 2.0, 2.76, 5.4)
    tau = rng.uniform(0.3, 0.6)
    ding = _bell(high, 1.2, tau, partials)
    dong = _bell(high * 2 ** (-4 / 12), 1.6, tau * 1.3, partials)
    return _place([(0.0, ding), (rng.uniform(0.4, 0.7), dong)], 0.0)


_PROGRESSIONS = ((0, 7, 9, 5), (0, 5, 7, 0), (9, 5, 0, 7), (0, 9, 5, 7))  # I-V-vi-IV etc.


def _pluck(freq: float, seconds: float, harmonics: int, tau_s: float) -> Signal:
    t = _t(seconds)
    x = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, harmonics + 1))
    return np.asarray(x, np.float64) * np.minimum(t / 0.005, 1.0) * np.exp(-t / tau_s)


def hold_music(rng: np.random.Generator) -> Signal:
    """Hold music: a chord progression (pads with harmonics), an arpeggio on eighth notes, a
    bass line, kick/snare/hat on the beat; 90-130 bpm, 3-6 s."""
    beat = 60.0 / rng.uniform(90, 130)
    key = 220.0 * 2 ** (int(rng.integers(12)) / 12)
    chords = max(2, round(rng.uniform(3.0, 6.0) / (2 * beat)))  # a chord every two beats
    progression = _PROGRESSIONS[int(rng.integers(len(_PROGRESSIONS)))]
    events: list[tuple[float, Signal]] = []
    for bar in range(chords):
        root = progression[bar % 4]
        start = bar * 2 * beat
        minor = root in (9, 2, 4)
        chord = [key * 2 ** ((root + s) / 12) for s in (0, 3 if minor else 4, 7)]
        for f in chord:  # pad
            events.append((start, 0.25 * _pluck(f, 2 * beat, 6, 2 * beat)))
        events.append((start, 0.5 * _pluck(chord[0] / 2, 2 * beat, 8, beat)))  # bass
        for i in range(4):  # arpeggio, eighths an octave up
            note = chord[[0, 1, 2, 1][i]] * 2
            events.append((start + i * beat / 2, 0.3 * _pluck(note, beat / 2, 3, beat / 6)))
        for b in range(2):  # drums
            at = start + b * beat
            if (bar * 2 + b) % 2 == 0:
                t = _t(0.15)
                kick = np.sin(2 * np.pi * (60 + 90 * np.exp(-t / 0.03)) * t) * np.exp(-t / 0.05)
                events.append((at, 0.8 * kick))
            else:
                snare = _burst(0.12, 0.002, rng, _bumps([1800], [900])) * 0.3
                events.append((at, snare + 0.3 * _ring(200, 0.03, 0.12)))
            for h in range(2):
                hat = _burst(0.03, 0.001, rng, _bumps([3300], [300])) * 0.1
                events.append((at + h * beat / 2, hat))
    return _place(events, chords * 2 * beat)


def _room(x: Signal, rng: np.random.Generator) -> Signal:
    """A distant source in a room: a decaying-noise reverb tail (RT60 0.3-0.7 s), dull top."""
    rt60 = rng.uniform(0.3, 0.7)
    t = _t(rt60)
    ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    ir[0] = 3.0
    n = _smooth_length(len(x) + len(ir))
    dull = np.exp(-np.fft.rfftfreq(n, 1 / LINE_RATE) / 2500.0)
    wet = np.fft.irfft(np.fft.rfft(x, n) * np.fft.rfft(ir, n) * dull, n)[: len(x) + len(ir)]
    return np.asarray(wet, np.float64)


def _unit(x: Signal) -> Signal:
    """Scaled to an active level of 0 dBFS, so mixes set their balance in dB."""
    return np.asarray(x * 10 ** (-active_level_dbfs(x, LINE_RATE) / 20), np.float64)


def _mix(parts: Sequence[tuple[float, float, Signal]]) -> Signal:
    """(offset s, gain dB, 8 kHz signal) mixed, each at active level gain dB."""
    return _place([(at, _unit(x) * 10 ** (gain / 20)) for at, gain, x in parts], 0.0)


# --- the corpora -----------------------------------------------------------------------------


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def _level_noise(i: int) -> tuple[float, float | None]:
    """The i-th clip's line: levels and noise choices cycle together, so any 12 clips in a row
    have every level with every noise choice (4 and 3 are coprime)."""
    return LEVELS_DBFS[i % len(LEVELS_DBFS)], NOISE_CHOICES[i % len(NOISE_CHOICES)]


def _line_label(level: float | None, noise: float | None) -> str:
    level_part = "as-is" if level is None else f"{level:g}dBFS"
    return f"{level_part} {'quiet-line' if noise is None else f'noise{noise:g}'}"


NONSPEECH: dict[str, Callable[[np.random.Generator], Signal]] = {
    "noise: cough": cough,
    "noise: breath": breath,
    "noise: click": clicks,
    "noise: lip smack": lip_smacks,
    "noise: static": static_crackle,
    "tone: sine": sine_tone,
    "tone: dial": dial_tone,
    "tone: busy": busy_tone,
    "tone: chime": chime,
    "tone: doorbell": doorbell,
    "music: hold": hold_music,
}
BABBLE = ("babble: crowd", "babble: tv")
NONDIGIT_CATEGORIES = (*SPEECH, *NONSPEECH, *BABBLE, "noise: line")


def nondigit_corpus(work: Path, rng_seed: int = 11, *, per_category: int = 20) -> list[Clip]:
    """Audio with no digit in it, ``per_category`` clips of each of NONDIGIT_CATEGORIES (21),
    the category in ``condition``: espeak-ng talk (fillers, questions, refusals, yes/no, names,
    addresses without numbers, operator requests), coughs, breaths, clicks, lip smacks, static,
    tones (not DTMF), hold music, babble and a TV in the room, and line noise alone. Clip i of
    a category goes through :func:`telephone_line` at LEVELS_DBFS[i % 4] with NOISE_CHOICES
    [i % 3] (none, LINE_NOISE_DBFS, NOISY_LINE_DBFS): every 12 clips hold every pairing. Line
    noise alone runs through LINE_NOISE_ALONE_DBFS. espeak-ng renders are cached in ``work``.
    A correct recogniser returns "" for all of them."""
    rng = np.random.default_rng(rng_seed)
    voices = available_voices()
    clips: list[Clip] = []

    # Plan every espeak-ng render first, so they are made in one parallel batch.
    talk = [
        (category, i, _random_say(group[i % len(group)], rng, voices))
        for category, group in SPEECH.items()
        for i in range(per_category)
    ]
    crowd = [
        [
            [_random_say(_pick(rng, NONDIGIT_SENTENCES), rng, voices) for _ in range(2)]
            for _ in range(int(rng.integers(3, 7)))
        ]
        for _ in range(per_category)
    ]
    tv = [
        [_random_say(_pick(rng, NONDIGIT_SENTENCES), rng, voices) for _ in range(3)]
        for _ in range(per_category)
    ]
    renders = _render(
        work,
        [say for _, _, say in talk]
        + [say for clip in crowd for voice in clip for say in voice]
        + [say for clip in tv for say in clip],
    )

    def narrow(say: _Say) -> Signal:
        audio, rate = renders[say]
        return to_line_band(audio, rate)

    def add(
        category: str, i: int, name: str, audio: npt.NDArray[np.floating], rate: int, text: str = ""
    ) -> None:
        level, noise = _level_noise(i)
        clips.append(
            Clip(
                f"{_slug(category)}/{i:02d} {name} {_line_label(level, noise)}",
                "",
                telephone_line(audio, rate, level_dbfs=level, noise_dbfs=noise, rng=rng),
                category,
                "nondigit",
                text,
                level,
                noise,
            )
        )

    for category, i, say in talk:
        audio, rate = renders[say]
        add(category, i, f"{say.voice}@{say.wpm}p{say.pitch}", audio, rate, say.text)

    for category, make in NONSPEECH.items():
        for i in range(per_category):
            add(category, i, make.__name__, make(rng), LINE_RATE)

    for i, voices_says in enumerate(crowd):
        parts = []
        for says in voices_says:
            speech = np.concatenate(
                [np.concatenate([narrow(s), np.zeros(int(rng.integers(800, 3200)))]) for s in says]
            )
            parts.append((rng.uniform(0, 0.8), rng.uniform(-8, 0), speech))
        text = " | ".join(" ".join(s.text for s in says) for says in voices_says)
        add("babble: crowd", i, f"{len(parts)}-voices", _mix(parts), LINE_RATE, text)

    for i, says in enumerate(tv):
        speech = np.concatenate([np.concatenate([narrow(s), np.zeros(2400)]) for s in says])
        bed = hold_music(rng)
        bed = np.tile(bed, math.ceil(len(speech) / len(bed)))[: len(speech)]
        mixed = _mix([(0.0, 0.0, speech), (0.0, rng.uniform(-16, -8), bed)])
        text = " ".join(s.text for s in says)
        add("babble: tv", i, says[0].voice, _room(mixed, rng), LINE_RATE, text)

    for i in range(per_category):
        noise = LINE_NOISE_ALONE_DBFS[i % len(LINE_NOISE_ALONE_DBFS)]
        silence = np.zeros(round(rng.uniform(0.5, 3.0) * LINE_RATE))
        clips.append(
            Clip(
                f"noise-line/{i:02d} {_line_label(None, noise)}",
                "",
                telephone_line(silence, LINE_RATE, level_dbfs=None, noise_dbfs=noise, rng=rng),
                "noise: line",
                "nondigit",
                "",
                None,
                noise,
            )
        )
    return clips


def _pick(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


def _random_digits(rng: np.random.Generator, low: int = 4, high: int = 10) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(low, high + 1))))


def mixed_script(rng: np.random.Generator, *, filler_after: bool) -> tuple[str, str]:
    """(text, digits): a random 4-10 digit number read in groups, wrapped in filler."""
    digits = _random_digits(rng)
    template = _pick(rng, FILLER_AFTER if filler_after else FILLER_FIRST)
    return template.format(d=spoken_form(digits, rng)), digits


def mixed_corpus(work: Path, rng_seed: int = 12, *, count: int = 100) -> list[Clip]:
    """Filler and digits in one turn ("uh, my number is five five five, one two three four"),
    ``count`` clips in random espeak-ng voices, speeds and pitches; one in five with the filler
    after the digits ("four one five five, I think"; condition "mixed: filler after", else
    "mixed: filler first"). Lines as in :func:`nondigit_corpus`. ``digits`` is exactly the
    digits spoken, ``text`` what was said."""
    rng = np.random.default_rng(rng_seed)
    voices = available_voices()
    plan = []
    for i in range(count):
        after = i % 5 == 4
        text, digits = mixed_script(rng, filler_after=after)
        plan.append((i, after, digits, _random_say(text, rng, voices)))
    renders = _render(work, [say for *_, say in plan])
    return [
        _mixed_clip(
            f"mixed/{i:03d} {say.voice}@{say.wpm}p{say.pitch}",
            i,
            digits,
            *renders[say],
            after=after,
            text=say.text,
            rng=rng,
        )
        for i, after, digits, say in plan
    ]


def _mixed_clip(
    name: str,
    i: int,
    digits: str,
    audio: npt.NDArray[np.floating],
    rate: int,
    *,
    after: bool,
    text: str,
    rng: np.random.Generator,
) -> Clip:
    """The i-th mixed turn through its line (:func:`_level_noise`)."""
    level, noise = _level_noise(i)
    return Clip(
        f"{name} {_line_label(level, noise)}",
        digits,
        telephone_line(audio, rate, level_dbfs=level, noise_dbfs=noise, rng=rng),
        "mixed: filler after" if after else "mixed: filler first",
        "mixed",
        text,
        level,
        noise,
    )


def level_sweep(
    sources: Sequence[Source],
    levels: Sequence[float] = (-10, -20, -30, -40, -50),
    noise_dbfs: float | None = None,
    rng_seed: int = 13,
) -> list[Clip]:
    """One :func:`telephone_line` copy of every raw source per level (source order, then
    level), condition "-30 dBFS" or "-30 dBFS + line noise -65" (None = digital silence between
    words). Sources are raw (:class:`Source`, any rate): the line sets their level."""
    rng = np.random.default_rng(rng_seed)
    clips = []
    for source in sources:
        for level in levels:
            condition = f"{level:g} dBFS" + (
                "" if noise_dbfs is None else f" + line noise {noise_dbfs:g}"
            )
            audio = telephone_line(
                source.audio, source.rate, level_dbfs=level, noise_dbfs=noise_dbfs, rng=rng
            )
            clips.append(
                Clip(
                    f"{source.name}@{level:g}",
                    source.digits,
                    audio,
                    condition,
                    source.kind,
                    source.text,
                    float(level),
                    noise_dbfs,
                )
            )
    return clips


def _fsdd_buckets(directory: Path) -> dict[tuple[str, str], list[Path]]:
    """An FSDD-layout folder's takes by (speaker, digit), in natural order."""
    buckets: dict[tuple[str, str], list[Path]] = {}
    for path in sorted(directory.glob("*.wav"), key=_fsdd_key):
        digit, _, rest = path.stem.partition("_")
        speaker = rest.split("_")[0]
        if len(digit) == 1 and digit.isdigit() and speaker:
            buckets.setdefault((speaker, digit), []).append(path)
    if not buckets:
        raise ValueError(f"{directory}: no {{digit}}_{{speaker}}_{{index}}.wav files")
    return buckets


def _complete_speakers(buckets: dict[tuple[str, str], list[Path]]) -> list[str]:
    """Speakers with takes of all ten digits."""
    return sorted({s for s, _ in buckets if all((s, d) in buckets for d in "0123456789")})


@functools.cache
def _load_take(path: Path) -> tuple[Audio, int]:
    return read_wav(path)


def _speaker_string(
    buckets: dict[tuple[str, str], list[Path]],
    speaker: str,
    digits: str,
    rng: np.random.Generator,
) -> tuple[Audio, int]:
    """``digits`` in ``speaker``'s random takes, joined by 100-400 ms of digital silence."""
    parts: list[Audio] = []
    rate = 0
    for j, digit in enumerate(digits):
        paths = buckets[(speaker, digit)]
        audio, take_rate = _load_take(paths[int(rng.integers(len(paths)))])
        if rate and take_rate != rate:
            raise ValueError(f"{paths[0].parent}: {speaker}'s files have mixed rates")
        rate = take_rate
        if j:
            parts.append(np.zeros(round(rate * rng.uniform(0.1, 0.4)), np.float32))
        parts.append(audio)
    return np.concatenate(parts), rate


def human_sources(
    directory: Path, *, singles_limit: int | None, strings: int, seed: int
) -> list[Source]:
    """Raw human recordings from an FSDD-layout folder (``{digit}_{speaker}_{index}.wav``):
    single digits (all, or ``singles_limit`` spread evenly over every speaker x digit and over
    each one's takes), then ``strings`` strings of 4-10 random digits, each from one speaker's
    takes joined by 100-400 ms of digital silence (speakers in turn; only speakers with all ten
    digits). Audio stays as recorded (rate and level) for :func:`level_sweep`."""
    buckets = _fsdd_buckets(directory)
    keys = sorted(buckets)
    total = sum(len(paths) for paths in buckets.values())
    limit = total if singles_limit is None else min(singles_limit, total)
    # Rounds of one take per speaker x digit, as far as the limit goes.
    rounds = sorted((r, key) for key in keys for r in range(len(buckets[key])))
    quota = Counter(key for _, key in rounds[:limit])

    sources = []
    for key in keys:
        paths = buckets[key]
        picks = np.linspace(0, len(paths) - 1, quota[key]).round().astype(int)
        for j in picks:
            audio, rate = _load_take(paths[j])
            sources.append(Source(paths[j].stem, key[1], audio, rate, "single"))

    rng = np.random.default_rng(seed)
    speakers = _complete_speakers(buckets)
    for i in range(strings if speakers else 0):
        speaker = speakers[i % len(speakers)]
        digits = _random_digits(rng)
        audio, rate = _speaker_string(buckets, speaker, digits, rng)
        sources.append(Source(f"{speaker}:{digits}", digits, audio, rate, "string"))
    return sources


def human_mixed_corpus(
    work: Path, directory: Path, rng_seed: int = 14, *, count: int = 60
) -> list[Clip]:
    """Filler, then digits, as :func:`mixed_corpus`, but the digits said by the FSDD-layout
    folder's speakers (their takes joined as in :func:`human_sources`) and the filler by
    espeak-ng: "um, it's" in a random voice, 0.2-0.6 s of pause, then 4-10 human digits (one
    in five the other way round: the digits, then "I think"). The two are set to the same level
    (the filler within 4 dB) before the line, as one caller's turn would be. It tells a filler
    that breaks recognition apart from digits tiny.en cannot hear: espeak-ng's own digits are
    often heard as words ("five" as "time")."""
    rng = np.random.default_rng(rng_seed)
    buckets = _fsdd_buckets(directory)
    speakers = _complete_speakers(buckets)
    if not speakers:
        raise ValueError(f"{directory}: no speaker has all ten digits")
    voices = available_voices()
    plan = []
    for i in range(count):
        after = i % 5 == 4
        template = _pick(rng, FILLER_AFTER if after else FILLER_FIRST)
        filler = template.replace("{d}", "").strip(" ,.")
        digits = _random_digits(rng)
        speaker = speakers[i % len(speakers)]
        plan.append((i, after, digits, speaker, template, _random_say(filler, rng, voices)))
    renders = _render(work, [say for *_, say in plan])
    clips = []
    for i, after, digits, speaker, template, say in plan:
        said, said_rate = _speaker_string(buckets, speaker, digits, rng)
        number = _unit(to_line_band(said, said_rate))
        filler = _unit(to_line_band(*renders[say])) * 10 ** (rng.uniform(-4, 4) / 20)
        pause = np.zeros(round(LINE_RATE * rng.uniform(0.2, 0.6)))
        turn = np.concatenate([number, pause, filler] if after else [filler, pause, number])
        clips.append(
            _mixed_clip(
                f"mixed-human/{i:03d} {say.voice}+{speaker}",
                i,
                digits,
                turn,
                LINE_RATE,
                after=after,
                text=template.format(d=" ".join(digits)),
                rng=rng,
            )
        )
    return clips


def _fsdd_key(path: Path) -> tuple[str, ...]:
    """Natural order: 0_george_2 before 0_george_10."""
    return tuple(part.zfill(6) if part.isdigit() else part for part in path.stem.split("_"))
