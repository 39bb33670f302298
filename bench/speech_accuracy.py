"""Spoken-digit accuracy of the recogniser, on telephone-quality speech.

1. A synthetic corpus made at run time (nothing is shipped): espeak-ng voices en-us, en, en+f3 and
   en+m3 at 140-190 words a minute say single digits and 4-10 digit strings the way people read
   numbers ("five five five, one two three four", sometimes "oh" for zero). Each clip goes
   through a telephone channel: sox to 8 kHz, optional noise (white or pink, 20 and 10 dB SNR
   against the speech's active level), G.711 mu-law, back to 16 kHz.
2. With ``--human-dir`` (Free Spoken Digit Dataset layout, ``{digit}_{speaker}_{index}.wav``,
   8 kHz): every single-digit file, and ~80 strings of 4-10 digits, each one speaker's recordings
   joined by 100-400 ms silences (fixed seed).

Each clip takes the call's path: half a second of line audio before it and a second after (the
same noise, or digital silence for the human files), 20 ms frames through the voice activity
segmenter (``ari_app.speech.vad``), each utterance to the recogniser, the digits joined. The entry
asks for exactly the clip's digit count (``num_digits``), so the recogniser gets the count still
missing, as a call gives it; ``--no-count-hint`` leaves it out (``max_digits`` only), ``--direct``
decodes the clip as it is, without the segmenter.

Exact = the whole string right; digit accuracy = 1 - edit distance / length, over all digits.

    .venv/bin/python bench/speech_accuracy.py                       # synthetic only
    .venv/bin/python bench/speech_accuracy.py --human-dir /path/to/fsdd [--limit 300]
    .venv/bin/python bench/speech_accuracy.py --no-fallback --window 30 --beam 3   # levers
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ari_app.speech.recognizer import (
    SAMPLE_RATE,
    DigitRecognizer,
    Recognition,
    RecognizerSettings,
    edit_distance,
)
from ari_app.speech.vad import Utterance, UtteranceSegmenter

VOICES = ("en-us", "en", "en+f3", "en+m3")
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NOISES = ("clean", "white 20 dB", "pink 20 dB", "white 10 dB", "pink 10 dB")

Audio = npt.NDArray[np.float32]


def require_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(
            f"{' and '.join(missing)} not found: apt-get install espeak-ng sox "
            "(the synthetic corpus is made with them)"
        )


# --- audio helpers ---------------------------------------------------------------------------


def read_wav(path: Path) -> tuple[npt.NDArray[np.float32], int]:
    """A 16-bit PCM WAV file as float32 samples and its rate (mono, or the first channel)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: not 16-bit PCM")
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        raw = raw.reshape(-1, w.getnchannels())[:, 0]
        return (raw.astype(np.float32) / 32768.0), w.getframerate()


def _lowpass(cutoff: float, taps: int = 95) -> npt.NDArray[np.float64]:
    n = np.arange(taps) - (taps - 1) / 2
    h = np.sinc(2 * cutoff * n) * np.kaiser(taps, 8.0)
    return h / h.sum()


_UP2 = _lowpass(0.23)  # 8 kHz -> 16 kHz: pass below 3.7 kHz, reject images above 4 kHz


def upsample_8k(audio: npt.NDArray[np.float32]) -> Audio:
    """8 kHz to 16 kHz (zero-stuffing and a windowed-sinc low-pass)."""
    stuffed = np.zeros(2 * len(audio), np.float64)
    stuffed[::2] = audio
    return (2.0 * np.convolve(stuffed, _UP2, mode="same")).astype(np.float32)


def load_16k(path: Path) -> Audio:
    audio, rate = read_wav(path)
    if rate == SAMPLE_RATE:
        return audio
    if rate == 8000:
        return upsample_8k(audio)
    raise ValueError(f"{path}: {rate} Hz (expected 8 or 16 kHz)")


def active_power(audio: npt.NDArray[np.float32], rate: int) -> float:
    """Mean power of the frames within 30 dB of the loudest (speech, not the silences)."""
    frame = rate // 50
    count = len(audio) // frame
    power = np.mean(audio[: count * frame].reshape(count, frame).astype(np.float64) ** 2, axis=1)
    loud = power[power > power.max() * 1e-3]
    return float(loud.mean())


def noise(kind: str, length: int, rng: np.random.Generator) -> npt.NDArray[np.float64]:
    white = rng.standard_normal(length)
    if kind == "white":
        return white
    # Pink: 1/f power, shaped in the frequency domain.
    spectrum = np.fft.rfft(white)
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    pink = np.fft.irfft(spectrum / np.sqrt(f), n=length)
    return pink / pink.std()


def telephone(
    wav_22k: Path, condition: str, work: Path, rng: np.random.Generator
) -> npt.NDArray[np.float32]:
    """An espeak-ng clip through a telephone channel, back at 16 kHz float, with the line's
    audio (its noise) for 0.5 s before and 1 s after the speech."""
    narrow = work / "narrow.wav"
    subprocess.run(
        ["sox", str(wav_22k), "-r", "8000", "-c", "1", "-b", "16", str(narrow), "pad", "0.5", "1"],
        check=True,
    )
    audio, rate = read_wav(narrow)
    if condition != "clean":
        kind, snr, _ = condition.split()
        n = noise(kind, len(audio), rng)
        scale = np.sqrt(active_power(audio, rate) / 10 ** (float(snr) / 10))
        audio = np.clip(audio + scale * n, -1.0, 1.0).astype(np.float32)
    noisy = work / "noisy.wav"
    with wave.open(str(noisy), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((audio * 32767).astype("<i2").tobytes())
    ulaw = work / "ulaw.wav"
    wide = work / "wide.wav"
    subprocess.run(["sox", str(noisy), "-e", "mu-law", str(ulaw)], check=True)
    subprocess.run(
        ["sox", str(ulaw), "-r", str(SAMPLE_RATE), "-e", "signed", "-b", "16", str(wide)],
        check=True,
    )
    return read_wav(wide)[0]


# --- the synthetic corpus --------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    name: str
    digits: str
    audio: Audio
    condition: str


def spoken_form(digits: str, rng: random.Random) -> str:
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


def speak(text: str, voice: str, wpm: int, out: Path) -> None:
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(out), text],
        check=True,
        capture_output=True,
    )


def synthetic_corpus(
    work: Path,
    *,
    singles_per_voice: int,
    strings_per_voice: int,
    conditions: Sequence[str] = NOISES,
    seed: int = 7,
) -> list[Clip]:
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed)
    scripts: list[tuple[str, str, str, int]] = []  # name, digits, voice, wpm
    for voice in VOICES:
        for i in range(singles_per_voice):
            digit = str(i % 10)
            scripts.append((f"{voice}/single{i}", digit, voice, rng.randint(140, 190)))
        for i in range(strings_per_voice):
            length = rng.randint(4, 10)
            digits = "".join(rng.choice("0123456789") for _ in range(length))
            scripts.append((f"{voice}/string{i}", digits, voice, rng.randint(140, 190)))
    clips: list[Clip] = []
    raw = work / "espeak.wav"
    for name, digits, voice, wpm in scripts:
        text = WORDS[int(digits)] if len(digits) == 1 else spoken_form(digits, rng)
        speak(text, voice, wpm, raw)
        for condition in conditions:
            audio = telephone(raw, condition, work, noise_rng)
            clips.append(Clip(f"{name}@{wpm}", digits, audio, condition))
    return clips


# --- human recordings ------------------------------------------------------------------------


def on_a_quiet_line(audio: Audio) -> Audio:
    """0.5 s of digital silence before, 1 s after (what Asterisk sends while no one talks)."""
    return np.concatenate(
        [np.zeros(SAMPLE_RATE // 2, np.float32), audio, np.zeros(SAMPLE_RATE, np.float32)]
    )


def human_singles(directory: Path, limit: int | None) -> list[Clip]:
    files = sorted(directory.glob("*.wav"))
    if limit and limit < len(files):
        files = files[:: max(1, len(files) // limit)][:limit]
    clips = []
    for path in files:
        digit, speaker = path.stem.split("_")[:2]
        audio = on_a_quiet_line(load_16k(path))
        clips.append(Clip(path.stem, digit, audio, f"human single ({speaker})"))
    return clips


def human_strings(directory: Path, count: int = 80, seed: int = 1234) -> list[Clip]:
    """Strings of 4-10 digits, each from one speaker's recordings, with 100-400 ms silences."""
    rng = random.Random(seed)
    by_speaker: dict[str, dict[str, list[Path]]] = {}
    for path in sorted(directory.glob("*.wav")):
        digit, speaker = path.stem.split("_")[:2]
        by_speaker.setdefault(speaker, {}).setdefault(digit, []).append(path)
    speakers = sorted(s for s, d in by_speaker.items() if len(d) == 10)
    cache: dict[Path, Audio] = {}
    clips = []
    for i in range(count):
        speaker = speakers[i % len(speakers)]
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(4, 10)))
        parts: list[Audio] = []
        for j, digit in enumerate(digits):
            if j:
                parts.append(np.zeros(int(SAMPLE_RATE * rng.uniform(0.1, 0.4)), np.float32))
            path = rng.choice(by_speaker[speaker][digit])
            if path not in cache:
                cache[path] = load_16k(path)
            parts.append(cache[path])
        clips.append(
            Clip(
                f"{speaker}:{digits}",
                digits,
                on_a_quiet_line(np.concatenate(parts)),
                f"human string ({speaker})",
            )
        )
    return clips


# --- scoring ---------------------------------------------------------------------------------


@dataclass
class Tally:
    clips: int = 0
    exact: int = 0
    digits: int = 0
    digit_errors: int = 0
    fallbacks: int = 0
    decode_ms: list[float] = dataclasses.field(default_factory=list)
    misses: list[str] = dataclasses.field(default_factory=list)

    def add(self, truth: str, got: str, fallback: bool, decode_ms: float, name: str) -> None:
        self.clips += 1
        self.exact += got == truth
        self.digits += len(truth)
        self.digit_errors += min(len(truth), edit_distance(got, truth))
        self.fallbacks += fallback
        self.decode_ms.append(decode_ms)
        if got != truth:
            self.misses.append(f"{name}: {truth} -> {got or '(nothing)'}")

    def row(self, label: str) -> str:
        return (
            f"{label:<30} {self.clips:>5} {100 * self.exact / self.clips:>7.1f}% "
            f"{100 * (1 - self.digit_errors / self.digits):>7.1f}% {self.fallbacks:>6} "
            f"{statistics.median(self.decode_ms):>8.0f} {max(self.decode_ms):>8.0f}"
        )


HEADER = f"{'condition':<30} {'clips':>5} {'exact':>8} {'digits':>8} {'fallbk':>6} {'med ms':>8} {'max ms':>8}"


@dataclass(frozen=True)
class Entry:
    """What the simulated entry asks the recogniser: ``max_digits``, and with ``count_hint``
    the exact count still missing (an entry with ``num_digits``)."""

    max_digits: int
    count_hint: bool
    through_vad: bool


def utterances(audio: Audio) -> list[Audio]:
    """The clip as the call's voice activity segmenter cuts it (20 ms frames of int16)."""
    segmenter = UtteranceSegmenter(sample_rate=SAMPLE_RATE)
    pcm = (np.clip(audio, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
    step = segmenter.frame_bytes
    events = [
        e for i in range(0, len(pcm) - step + 1, step) for e in segmenter.feed(pcm[i : i + step])
    ]
    events += segmenter.flush()
    return [e.audio for e in events if isinstance(e, Utterance)]


def recognise(recognizer: DigitRecognizer, clip: Clip, entry: Entry) -> tuple[str, bool, float]:
    """The digits the entry receives, whether any decode fell back to segments, decode ms."""
    pieces = utterances(clip.audio) if entry.through_vad else [clip.audio]
    digits, fallback, decode_ms = "", False, 0.0
    for audio in pieces:
        missing = len(clip.digits) - len(digits)
        if missing <= 0:
            break  # the entry is complete
        result: Recognition = recognizer.recognize_blocking(
            audio,
            max_digits=entry.max_digits,
            expected_digits=missing if entry.count_hint else None,
        )
        digits += result.digits[:missing]  # the engine finishes at num_digits
        fallback |= result.fallback
        decode_ms += result.decode_ms
    return digits, fallback, decode_ms


def evaluate(
    recognizer: DigitRecognizer, clips: Iterable[Clip], key: str, entry: Entry
) -> dict[str, Tally]:
    tallies: dict[str, Tally] = {}
    for clip in clips:
        digits, fallback, decode_ms = recognise(recognizer, clip, entry)
        kind = "single" if len(clip.digits) == 1 else "string"
        label = clip.condition if key == "condition" else f"{kind}: {clip.condition}"
        for name in (label, f"{kind}: ALL" if key != "condition" else "ALL"):
            tallies.setdefault(name, Tally()).add(
                clip.digits, digits, fallback, decode_ms, clip.name
            )
    return tallies


def report(title: str, tallies: dict[str, Tally], show_misses: int) -> None:
    print(f"\n{title}\n{HEADER}")
    for label in sorted(tallies, key=lambda k: ("ALL" in k, k)):
        print(tallies[label].row(label))
    if show_misses:
        for label in sorted(tallies):
            if "ALL" in label:
                for miss in tallies[label].misses[:show_misses]:
                    print(f"    miss {miss}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--human-dir", type=Path, help="FSDD-style 8 kHz recordings")
    parser.add_argument("--limit", type=int, help="at most this many human single-digit files")
    parser.add_argument("--strings", type=int, default=80, help="human strings to build")
    parser.add_argument("--singles-per-voice", type=int, default=10)
    parser.add_argument("--strings-per-voice", type=int, default=10)
    parser.add_argument("--no-synthetic", action="store_true")
    parser.add_argument("--misses", type=int, default=15, help="misses to print per table")
    parser.add_argument("--model", default="", help="model directory or name ('' = tiny.en)")
    parser.add_argument("--beam", type=int, default=RecognizerSettings.beam_size)
    parser.add_argument("--window", type=float, default=RecognizerSettings.window_s)
    parser.add_argument("--padding-ms", type=int, default=RecognizerSettings.padding_ms)
    parser.add_argument("--compute-type", default=RecognizerSettings.compute_type)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-digits", type=int, default=10, help="the entry's max_digits")
    parser.add_argument("--no-fallback", action="store_true", help="whole-utterance decode only")
    parser.add_argument(
        "--no-count-hint", action="store_true", help="the entry has max_digits only"
    )
    parser.add_argument("--direct", action="store_true", help="no voice activity segmenter")
    args = parser.parse_args()
    entry = Entry(args.max_digits, not args.no_count_hint, not args.direct)

    settings = RecognizerSettings(
        model=args.model,
        threads=args.threads,
        workers=1,
        beam_size=args.beam,
        window_s=args.window,
        padding_ms=args.padding_ms,
        compute_type=args.compute_type,
        segment_fallback=not args.no_fallback,
    )
    logging.getLogger("ari_app.speech.recognizer").setLevel(logging.ERROR)  # no slow-decode noise
    print(f"settings: {settings}")
    started = time.perf_counter()
    recognizer = DigitRecognizer.load(settings)
    print(f"model loaded in {time.perf_counter() - started:.1f} s")

    if not args.no_synthetic:
        require_tools()
        with tempfile.TemporaryDirectory(prefix="speech-accuracy-") as tmp:
            started = time.perf_counter()
            clips = synthetic_corpus(
                Path(tmp),
                singles_per_voice=args.singles_per_voice,
                strings_per_voice=args.strings_per_voice,
            )
            print(f"synthetic corpus: {len(clips)} clips in {time.perf_counter() - started:.0f} s")
        tallies = evaluate(recognizer, clips, "kind", entry)
        report("SYNTHETIC (espeak-ng, telephone channel)", tallies, args.misses)

    if args.human_dir:
        singles = human_singles(args.human_dir, args.limit)
        report(
            "HUMAN single digits",
            evaluate(recognizer, singles, "condition", entry),
            args.misses,
        )
        strings = human_strings(args.human_dir, args.strings)
        report(
            "HUMAN strings (4-10 digits)",
            evaluate(recognizer, strings, "condition", entry),
            args.misses,
        )
    stats = recognizer.stats
    print(f"\ndecoded {stats.decoded}, per-segment fallbacks {stats.fallbacks}")


if __name__ == "__main__":
    main()
