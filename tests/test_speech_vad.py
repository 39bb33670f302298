"""Utterance segmentation (ari_app.speech.vad) on generated audio.

Speech comes from espeak-ng, resampled to 16 kHz by sox, at test time. Both are required: a machine
without them fails these tests (it does not skip them).
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import wave
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import webrtcvad

from ari_app.speech.vad import (
    DTMF_COLUMN_HZ,
    DTMF_ROW_HZ,
    FLOOR_WINDOW_MS,
    SpeechDropped,
    SpeechStarted,
    Utterance,
    UtteranceSegmenter,
)

RATE = 16000
FRAME = 320
PAD = 300
Int16 = npt.NDArray[np.int16]
Synth = Callable[[str], Int16]
NO_AUDIO = np.zeros(0, dtype=np.float32)  # Utterance equality ignores the audio


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """``synth(text)``: espeak-ng speech as 16 kHz int16. Fails the calling test without tools."""
    directory = tmp_path_factory.mktemp("espeak")

    @functools.cache
    def make(text: str) -> Int16:
        missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
        if missing:
            pytest.fail(
                f"{' and '.join(missing)} not found on PATH: the speech segmentation tests need "
                "espeak-ng and sox to synthesise speech (Debian: apt-get install espeak-ng sox)"
            )
        name = "_".join(text.split())
        raw, resampled = directory / f"{name}.raw.wav", directory / f"{name}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
        subprocess.run(
            ["sox", "-D", str(raw), "-r", str(RATE), "-c", "1", "-b", "16", str(resampled)],
            check=True,
        )
        return read_wav(resampled)

    return make


def read_wav(path: Path) -> Int16:
    with wave.open(str(path)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (RATE, 1, 2)
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").copy()


def noise(ms: int, level: float = 20.0, seed: int = 0) -> npt.NDArray[np.float64]:
    """White noise, standard deviation ``level`` (20 is about -64 dBFS: a quiet line)."""
    return np.random.default_rng(seed).normal(0.0, level, ms * RATE // 1000)


def pcm(*parts: npt.NDArray[np.float64] | Int16) -> Int16:
    x = np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def with_noise(speech: Int16, seed: int = 1) -> npt.NDArray[np.float64]:
    return (
        speech.astype(np.float64) + noise(len(speech) * 1000 // RATE + 1, seed=seed)[: len(speech)]
    )


def frames(x: Int16) -> Iterator[bytes]:
    for i in range(0, len(x) - FRAME + 1, FRAME):
        yield x[i : i + FRAME].astype("<i2").tobytes()


def segment(
    x: Int16, segmenter: UtteranceSegmenter | None = None
) -> list[SpeechStarted | Utterance]:
    seg = segmenter or UtteranceSegmenter()
    events: list[SpeechStarted | Utterance] = []
    for frame in frames(x):
        events.extend(seg.feed(frame))
    events.extend(seg.flush())
    return events


def speech_bounds_ms(speech: Int16, offset_ms: int) -> tuple[float, float]:
    """Where the synthetic speech really is: first and last sample above -40 dBFS."""
    loud = np.flatnonzero(np.abs(speech) > 330)
    return offset_ms + loud[0] * 1000 / RATE, offset_ms + loud[-1] * 1000 / RATE


def dtmf(key_rows: int, key_cols: int, ms: int, level: float = 6000.0) -> npt.NDArray[np.float64]:
    t = np.arange(ms * RATE // 1000) / RATE
    low, high = DTMF_ROW_HZ[key_rows], DTMF_COLUMN_HZ[key_cols]
    return level * (np.sin(2 * np.pi * low * t) + 0.8 * np.sin(2 * np.pi * high * t + 1.0))


# --- nothing to hear -----------------------------------------------------------------------------


def test_silence_only_returns_nothing() -> None:
    assert segment(pcm(np.zeros(10 * RATE))) == []
    assert segment(pcm(noise(10_000))) == []


@pytest.mark.parametrize("level", [30.0, 100.0, 330.0, 1000.0])  # -61, -50, -40, -30 dBFS
def test_line_noise_returns_nothing(level: float) -> None:
    for seed in range(3):
        assert segment(pcm(noise(5_000, level, seed))) == []


@pytest.mark.parametrize("level", [30.0, 100.0, 330.0])
def test_noise_right_after_digital_silence_passes_for_speech_only_until_the_floor_is_learnt(
    level: float,
) -> None:
    """Digital silence says nothing of the line's noise: the floor is learnt in FLOOR_WINDOW_MS,
    and until then noise may pass for one utterance (the recogniser then rejects it)."""
    for seed in range(3):
        events = segment(pcm(np.zeros(RATE), noise(6_000, level, seed)))
        utterances = [e for e in events if isinstance(e, Utterance)]
        assert len(utterances) <= 1
        assert all(u.end_ms <= 1000 + FLOOR_WINDOW_MS for u in utterances)


def test_a_click_is_not_speech() -> None:
    click = noise(1000)
    click[8000:8040] += 20000.0  # 2.5 ms: webrtcvad alone calls 4 frames speech
    assert segment(pcm(noise(1000), click, noise(1000))) == []
    silent = np.zeros(RATE)
    silent[8000:8040] = 20000.0
    assert segment(pcm(silent)) == []


# --- quiet callers, noisy lines ---------------------------------------------------------------


def at_level(speech: Int16, dbfs: float) -> npt.NDArray[np.float64]:
    """The speech scaled so its active level (frames within 30 dB of the loudest) is ``dbfs``."""
    x = speech.astype(np.float64)
    frames_power = np.mean(x[: len(x) // FRAME * FRAME].reshape(-1, FRAME) ** 2, axis=1)
    active = frames_power[frames_power >= frames_power.max() * 1e-3].mean()
    return x * (32768.0 * 10 ** (dbfs / 20) / np.sqrt(active))


@pytest.mark.parametrize("dbfs", [-10.0, -30.0, -40.0, -50.0])
def test_a_caller_from_minus_10_to_minus_50_dbfs_on_a_silent_line_is_heard(
    synth: Synth, dbfs: float
) -> None:
    """The old absolute gate (-55 dBFS per frame) and webrtcvad's deafness below about -48 dBFS
    after silence lost a -50 dBFS caller; the floor and the AGC keep them."""
    for word in ("six", "eight", "five"):
        speech = synth(word)
        events = segment(pcm(np.zeros(RATE), at_level(speech, dbfs), np.zeros(RATE)))
        assert [type(e) for e in events] == [SpeechStarted, Utterance], (word, dbfs)


@pytest.mark.parametrize("dbfs", [-30.0, -40.0, -50.0])
def test_a_quiet_caller_over_line_noise_is_heard(synth: Synth, dbfs: float) -> None:
    speech = synth("six")
    hiss = noise(3000, 18.0)  # -65 dBFS
    x = hiss.copy()
    x[RATE : RATE + len(speech)] += at_level(speech, dbfs)
    assert [type(e) for e in segment(pcm(x))] == [SpeechStarted, Utterance]


def test_the_decision_follows_the_line_noise_floor(synth: Synth) -> None:
    """On a loud line (-35 dBFS hiss) speech 10 dB above the hiss is heard, the hiss is not."""
    speech = synth("nine")
    hiss = noise(4000, 580.0)  # -35 dBFS
    assert segment(pcm(hiss)) == []
    x = hiss.copy()
    x[2 * RATE : 2 * RATE + len(speech)] += at_level(speech, -25.0)
    assert [type(e) for e in segment(pcm(x))] == [SpeechStarted, Utterance]


def test_a_quiet_onset_is_in_the_utterance(synth: Synth) -> None:
    """The pre-roll is long enough for the soft start of a quiet "six" (its /s/)."""
    speech = synth("six")
    quiet = at_level(speech, -50.0)
    events = segment(pcm(np.zeros(RATE), quiet, np.zeros(RATE)))
    utterance = events[1]
    assert isinstance(utterance, Utterance)
    first = 1000 + np.flatnonzero(np.abs(quiet) >= 2.0)[0] * 1000 / RATE  # the first sound
    assert utterance.start_ms - PAD <= first


# --- speech --------------------------------------------------------------------------------------


def test_five_five_five_is_one_utterance(synth: Synth) -> None:
    speech = synth("five five five")
    x = pcm(noise(1000), with_noise(speech), noise(1000, seed=2))
    events = segment(x)
    assert [type(e) for e in events] == [SpeechStarted, Utterance]
    started, utterance = events
    assert isinstance(started, SpeechStarted) and isinstance(utterance, Utterance)
    first, last = speech_bounds_ms(speech, 1000)
    assert started.at_ms == utterance.start_ms
    assert first - 40 <= utterance.start_ms <= first + 100
    assert last - 60 <= utterance.end_ms <= last + 150
    audio = utterance.audio
    assert audio.dtype == np.float32
    assert len(audio) == (utterance.end_ms - utterance.start_ms + 2 * PAD) * RATE // 1000
    # Real pre-roll and trailing context: exactly the input around the voiced span.
    begin = (utterance.start_ms - PAD) * RATE // 1000
    np.testing.assert_array_equal(audio, x[begin : begin + len(audio)].astype(np.float32) / 32768)


def test_speech_at_the_start_of_the_stream_is_zero_padded(synth: Synth) -> None:
    speech = synth("five")
    x = pcm(noise(60), with_noise(speech), noise(1000))
    events = segment(x)
    assert [type(e) for e in events] == [SpeechStarted, Utterance]
    utterance = events[1]
    assert isinstance(utterance, Utterance)
    assert utterance.start_ms < PAD
    missing = (PAD - utterance.start_ms) * RATE // 1000
    assert not utterance.audio[:missing].any()
    real = utterance.audio[missing:]
    np.testing.assert_array_equal(real, x[: len(real)].astype(np.float32) / 32768)


def test_two_words_a_second_apart_are_two_utterances(synth: Synth) -> None:
    five, nine = synth("five"), synth("nine")
    x = pcm(
        noise(500), with_noise(five), noise(1000, seed=3), with_noise(nine, 4), noise(800, seed=5)
    )
    events = segment(x)
    assert [type(e) for e in events] == [SpeechStarted, Utterance, SpeechStarted, Utterance]
    first, second = events[1], events[3]
    assert isinstance(first, Utterance) and isinstance(second, Utterance)
    five_at = speech_bounds_ms(five, 500)
    nine_at = speech_bounds_ms(nine, 500 + len(five) * 1000 // RATE + 1000)
    assert abs(first.start_ms - five_at[0]) <= 100 and abs(first.end_ms - five_at[1]) <= 150
    assert abs(second.start_ms - nine_at[0]) <= 100 and abs(second.end_ms - nine_at[1]) <= 150


def test_speech_started_fires_within_start_ms(synth: Synth) -> None:
    speech = synth("five")
    x = pcm(noise(1000), with_noise(speech), noise(1000))
    segmenter = UtteranceSegmenter()
    fired_after_frames = None
    for i, frame in enumerate(frames(x)):
        if any(isinstance(e, SpeechStarted) for e in segmenter.feed(frame)):
            fired_after_frames = i + 1
            break
    assert fired_after_frames is not None
    onset = speech_bounds_ms(speech, 1000)[0]
    assert fired_after_frames * 20 - onset <= 120 + 100  # start_ms, and the onset's first frames


# --- DTMF ----------------------------------------------------------------------------------------


def test_webrtcvad_alone_calls_dtmf_speech() -> None:
    """Why the segmenter checks for DTMF: webrtcvad says a key tone is speech."""
    vad = webrtcvad.Vad(2)
    tone = pcm(dtmf(1, 1, 1000))
    decisions = [vad.is_speech(f, RATE) for f in frames(tone)]
    assert sum(decisions) > 0.9 * len(decisions)


@pytest.mark.parametrize("level", [6000.0, 1500.0, 400.0])
def test_dtmf_tones_alone_are_not_speech(level: float) -> None:
    for row in range(4):
        for col in range(4):
            x = pcm(noise(500), dtmf(row, col, 1000, level) + noise(1000, seed=row), noise(700))
            segmenter = UtteranceSegmenter()
            assert segment(x, segmenter) == [], (row, col, level)
            assert segmenter.counters["dtmf_frames"] > 0 or level < 1000


def test_key_presses_on_a_noisy_line_are_not_speech() -> None:
    """Line noise at about -47 dBFS passes the level gate, so webrtcvad's hangover after a tone
    (about 5 frames, 6 when the tone ends mid-frame) is what the DTMF hold-off must absorb."""
    for key in range(16):
        for offset_ms in (0, 3, 7, 11):
            for tone_ms in (100, 150, 300):
                x = pcm(
                    noise(500 + offset_ms, 150, seed=key),
                    dtmf(key // 4, key % 4, tone_ms) + noise(tone_ms, 150, seed=key + 1),
                    noise(800, 150, seed=key + 2),
                )
                assert segment(x) == [], (key, offset_ms, tone_ms)


@pytest.mark.parametrize("line_noise", [20.0, 150.0])
def test_rapid_key_presses_are_not_speech(line_noise: float) -> None:
    parts: list[npt.NDArray[np.float64]] = [noise(300, line_noise)]
    for i in range(12):  # 90 ms tones, 70 ms apart: webrtcvad hears one long sound
        parts += [
            dtmf(i % 4, (i * 3) % 4, 90) + noise(90, line_noise, seed=i),
            noise(70, line_noise, seed=100 + i),
        ]
    assert segment(pcm(*parts, noise(1000, line_noise))) == []


def test_speech_right_after_a_key_tone_is_still_heard(synth: Synth) -> None:
    speech = synth("five")
    x = pcm(noise(1000), dtmf(2, 0, 250), with_noise(speech), noise(1000))
    events = segment(x)
    assert [type(e) for e in events] == [SpeechStarted, Utterance]
    utterance = events[1]
    assert isinstance(utterance, Utterance)
    onset, end = speech_bounds_ms(speech, 1250)
    assert utterance.start_ms - PAD <= onset  # its beginning is in the audio
    assert abs(utterance.end_ms - end) <= 150


# --- the state machine, with scripted voice decisions ---------------------------------------------


class Scripted(UtteranceSegmenter):
    """Voice decisions from a script; frame ``i`` holds the value ``i + 1`` in every sample."""

    def __init__(self, script: str, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.script = script
        self.decisions = iter(script)

    def _classify(self, frame: bytes, samples: Int16) -> bool:
        return next(self.decisions) == "1"

    def run(self) -> list[SpeechStarted | Utterance]:
        events: list[SpeechStarted | Utterance] = []
        for i in range(len(self.script)):
            events += self.feed(np.full(FRAME, i + 1, dtype="<i2").tobytes())
        return events


def frame_values(audio: npt.NDArray[np.float32]) -> list[int]:
    values = np.round(audio * 32768).astype(int).reshape(-1, FRAME)
    assert (values == values[:, :1]).all()
    return [int(v) for v in values[:, 0]]


def test_hysteresis_start_and_end() -> None:
    assert Scripted("0" * 20 + "11111" + "0" * 40).run() == []  # 100 ms of voice: not enough
    # Onset at frame 20 (400 ms); short gaps inside; last voiced frame 45 (ends at 920 ms).
    voice = "0" * 20 + "111111" + "1101" * 5
    events = Scripted(voice + "0" * 24).run()
    assert events == [SpeechStarted(at_ms=400)]  # 480 ms unvoiced: not over yet
    events = Scripted(voice + "0" * 25).run()
    assert events == [SpeechStarted(at_ms=400), Utterance(NO_AUDIO, start_ms=400, end_ms=920)]
    utterance = events[1]
    assert isinstance(utterance, Utterance)
    audio = np.round(utterance.audio * 32768).astype(int)
    assert len(audio) == (920 - 400 + 2 * PAD) * RATE // 1000
    # 300 ms of pre-roll: frames 5..19 (values 6..20), then the onset.
    assert audio[0] == 6 and audio[PAD * 16 - 1] == 20 and audio[PAD * 16] == 21
    # 300 ms of trailing context: frames 46..60 (values 47..61).
    assert audio[-1] == 61 and audio[-321] == 60 and audio[-PAD * 16] == 47


def test_short_bursts_are_dropped_and_counted() -> None:
    segmenter = Scripted("0" * 10 + "1111111" + "0" * 30)  # 140 ms < min_utterance_ms
    assert segmenter.run() == [SpeechStarted(at_ms=200), SpeechDropped(at_ms=200)]
    assert segmenter.counters["dropped_short"] == 1


def test_long_speech_is_cut_at_max_and_goes_on() -> None:
    segmenter = Scripted("1" * 1000, pad_ms=200, max_utterance_ms=15000)
    events = segmenter.run()
    assert events[:3] == [
        SpeechStarted(at_ms=0),
        Utterance(NO_AUDIO, start_ms=0, end_ms=15000),
        SpeechStarted(at_ms=15000),
    ]
    assert len(events) == 3
    cut = events[1]
    assert isinstance(cut, Utterance)
    values = frame_values(cut.audio)
    assert values == [0] * 10 + list(range(1, 751)) + [0] * 10  # zeros: no context either side
    tail = segmenter.flush()
    assert tail == [Utterance(NO_AUDIO, start_ms=15000, end_ms=20000)]
    assert frame_values(tail[0].audio) == list(range(741, 1001)) + [0] * 10  # overlap: pre-roll
    assert segmenter.counters["cut_long"] == 1
    assert segmenter.flush() == []


def test_flush_when_idle_and_frame_size_check() -> None:
    segmenter = UtteranceSegmenter()
    assert segmenter.flush() == []
    with pytest.raises(ValueError):
        segmenter.feed(bytes(320))
    assert UtteranceSegmenter(sample_rate=8000).frame_bytes == 320
    with pytest.raises(ValueError):
        UtteranceSegmenter(sample_rate=22050)
