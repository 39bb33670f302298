"""The digit recogniser with the real model (bundled Whisper tiny.en) on speech synthesised here.

Speech comes from espeak-ng through a telephone channel made with sox (8 kHz mu-law and back to
16 kHz); both tools are required, never skipped.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import signal
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import ctranslate2
import numpy as np
import numpy.typing as npt
import pytest

from ari_app.settings import Settings, SettingsError
from ari_app.speech.recognizer import (
    SAMPLE_RATE,
    DigitRecognizer,
    Recognition,
    RecognizerSettings,
    _Decoder,
    combine,
    fit_count,
    speech_segments,
)
from ari_app.speech.words import confirmation_answer
from devtools.processes import descendants, parents

pytestmark = pytest.mark.timeout(300)

Audio = npt.NDArray[np.float32]


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is required for the speech tests: apt-get install espeak-ng sox")
    return path


def say(text: str, tmp: Path, *, voice: str = "en-us", wpm: int = 160) -> Audio:
    """``text`` spoken by espeak-ng, through a telephone channel, as float32 16 kHz.

    sox ``-R`` seeds its dither: without it every run hears a slightly different clip, and a
    borderline clip made these tests pass or fail by chance."""
    espeak, sox = _require("espeak-ng"), _require("sox")
    raw, ulaw, wide = tmp / "raw.wav", tmp / "ulaw.wav", tmp / "wide.wav"
    subprocess.run([espeak, "-v", voice, "-s", str(wpm), "-w", str(raw), text], check=True)
    subprocess.run(
        [sox, "-R", str(raw), "-r", "8000", "-c", "1", "-e", "mu-law", str(ulaw)], check=True
    )
    subprocess.run(
        [sox, "-R", str(ulaw), "-r", str(SAMPLE_RATE), "-e", "signed", "-b", "16", str(wide)],
        check=True,
    )
    with wave.open(str(wide), "rb") as w:
        assert w.getframerate() == SAMPLE_RATE
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="module", params=["threads", "processes"])
def recognizer(request: pytest.FixtureRequest) -> Iterator[DigitRecognizer]:
    """The model, loaded once for the module: decoding in threads, then in worker processes."""
    settings = RecognizerSettings(workers=2, max_queue=4, processes=request.param == "processes")
    recognizer = DigitRecognizer.load(settings)
    yield recognizer
    asyncio.run(recognizer.close())


@pytest.fixture(scope="module")
def pin(speech_dir: Path) -> Audio:
    return say("four, seven, one, nine", speech_dir)


@pytest.fixture
async def heartbeat() -> AsyncIterator[list[float]]:
    """Timestamps of a task that wakes every 10 ms: gaps show a blocked event loop."""
    beats: list[float] = []

    async def beat() -> None:
        while True:
            beats.append(time.perf_counter())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(beat())
    yield beats
    task.cancel()


def largest_gap(beats: list[float]) -> float:
    return max(b - a for a, b in itertools.pairwise(beats))


async def test_single_digit(recognizer: DigitRecognizer, speech_dir: Path) -> None:
    result = await recognizer.recognize(say("eight", speech_dir), max_digits=1)
    assert result.digits == "8", result
    assert result.text and result.heard  # the raw transcripts are kept
    assert len(result.confidences) == 1 and 0.0 < result.confidences[0] <= 1.0
    assert result.audio_ms > 200 and result.decode_ms > 0 and result.queued_ms >= 0


async def test_a_lone_digit_heard_as_a_word_is_never_another_digit(
    recognizer: DigitRecognizer, speech_dir: Path
) -> None:
    """tiny.en hears espeak-ng's "seven" as "Hammond": kept as 7 or rejected, never wrong."""
    result = await recognizer.recognize(say("seven", speech_dir), max_digits=1)
    assert result.digits in ("7", ""), result
    assert (result.rejected is None) == (result.digits == "7")


async def test_four_digit_pin(recognizer: DigitRecognizer, pin: Audio) -> None:
    result = await recognizer.recognize(pin, max_digits=4)
    assert result.digits == "4719", result


async def test_ten_digit_number_in_groups(recognizer: DigitRecognizer, speech_dir: Path) -> None:
    audio = say("six one seven, four nine two, three eight oh five", speech_dir)
    result = await recognizer.recognize(audio, max_digits=10)
    assert result.digits == "6174923805", result


async def test_an_exact_count_puts_back_a_digit_of_a_run(
    recognizer: DigitRecognizer, speech_dir: Path
) -> None:
    audio = say("four one five, five five five, zero one two three", speech_dir, wpm=130)
    result = await recognizer.recognize(audio, max_digits=10, expected_digits=10)
    assert result.digits == "4155550123", result


@pytest.mark.parametrize(("spoken", "answer"), [("yes, that's right", True), ("no", False)])
async def test_confirmation_vocabulary_hears_yes_and_no(
    recognizer: DigitRecognizer, speech_dir: Path, spoken: str, answer: bool
) -> None:
    audio = say(spoken, speech_dir)
    result = await recognizer.recognize(audio, vocabulary="confirmation")
    assert confirmation_answer(result.text) is answer, result
    # The digit vocabulary cannot write "yes" or "no": that is why the confirmation one exists.
    digits_only = recognizer.transcribe_blocking(audio)
    assert not re.search(r"\b(yes|yeah|no|right|wrong)\b", digits_only, re.IGNORECASE)


def test_transcribe_blocking_matches(recognizer: DigitRecognizer, pin: Audio) -> None:
    text = recognizer.transcribe_blocking(pin, max_digits=4)
    assert recognizer.recognize_blocking(pin, max_digits=4).text == text
    assert text.strip()


async def test_recognize_does_not_block_the_loop(
    recognizer: DigitRecognizer, pin: Audio, heartbeat: list[float]
) -> None:
    await asyncio.sleep(0.05)
    result = await recognizer.recognize(pin, max_digits=4)
    await asyncio.sleep(0.05)
    assert result.decode_ms > 50  # the decode took a while...
    assert largest_gap(heartbeat) < 0.1  # ...and the loop kept ticking through it


async def test_a_burst_past_the_queue_is_refused_not_answered_late(
    recognizer: DigitRecognizer, pin: Audio, heartbeat: list[float]
) -> None:
    # workers=2 and max_queue=4: 6 of the 20 enter, 14 are refused at once.
    before = recognizer.stats
    results = await asyncio.gather(*(recognizer.recognize(pin, max_digits=4) for _ in range(20)))
    after = recognizer.stats
    answered = [r for r in results if r.rejected is None]
    refused = [r for r in results if r.rejected == "overloaded"]
    assert [r.digits for r in answered] == ["4719"] * 6
    assert len(refused) == 14 and not any(r.digits for r in refused)
    assert after.decoded - before.decoded == 6
    assert after.refused_overloaded - before.refused_overloaded == 14
    assert after.queued_now == 0 and after.running_now == 0
    assert max(r.queued_ms for r in answered) > min(r.queued_ms for r in answered)
    assert largest_gap(heartbeat) < 0.2
    # Once the burst has passed, utterances are recognised again.
    assert (await recognizer.recognize(pin, max_digits=4)).digits == "4719"


async def test_cancelled_caller_does_not_break_the_queue(
    recognizer: DigitRecognizer, pin: Audio
) -> None:
    task = asyncio.create_task(recognizer.recognize(pin, max_digits=4))
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    result = await recognizer.recognize(pin, max_digits=4)
    assert result.digits == "4719"


async def test_empty_audio_gives_an_empty_result(recognizer: DigitRecognizer) -> None:
    result = await recognizer.recognize(np.zeros(0, np.float32))
    assert result == Recognition(
        text="",
        audio_ms=0,
        queued_ms=result.queued_ms,
        decode_ms=result.decode_ms,
        rejected="no_speech",
    )


async def test_silence_gives_no_digits(recognizer: DigitRecognizer) -> None:
    result = await recognizer.recognize(np.zeros(SAMPLE_RATE, np.float32))
    assert result.digits == ""


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.array([0.0, np.nan, 0.1], np.float32), "NaN"),
        (np.array([0.0, np.inf], np.float32), "NaN or infinite"),
        (np.zeros(1600, np.int16), "float"),
        (np.zeros((2, 1600), np.float32), "mono"),
        ([0.0, 0.1], "numpy array"),
    ],
)
async def test_bad_input_is_a_clear_error(
    recognizer: DigitRecognizer, audio: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await recognizer.recognize(audio)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        recognizer.transcribe_blocking(audio)  # type: ignore[arg-type]


async def test_column_vector_and_float64_are_accepted(
    recognizer: DigitRecognizer, pin: Audio
) -> None:
    result = await recognizer.recognize(pin.astype(np.float64).reshape(-1, 1), max_digits=4)
    assert result.digits == "4719"


async def test_closed_recognizer_refuses_work(pin: Audio) -> None:
    recognizer = DigitRecognizer.load(RecognizerSettings(workers=1))
    await recognizer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await recognizer.recognize(pin)


@pytest.mark.parametrize("free_beam_size", [1, 5])
def test_the_free_transcripts_token_probabilities_match_an_alignment(
    pin: Audio, free_beam_size: int
) -> None:
    """The greedy free transcript reads its tokens' probabilities off its own search; they must
    agree with aligning the same text (after a beam search that alignment is what gives them)."""
    decoder = _Decoder(RecognizerSettings(workers=1, free_beam_size=free_beam_size))
    mel = decoder.mel(pin)
    encoded = decoder.encode(mel)
    free = decoder.free_transcript(decoder.start_free_transcript(encoded, 24))
    assert free.text and 0.0 <= free.no_speech < 0.5 and free.score < 0.0, free
    if free_beam_size > 1:
        assert free.tokens == ()
        return
    assert "".join(token for token, _ in free.tokens).strip() == free.text
    aligned = decoder.token_probabilities(encoded, free.text, mel.shape[1])
    assert [token for token, _ in aligned] == [token for token, _ in free.tokens]
    # Not equal: the search renormalises over the tokens it may write, and the alignment
    # reads a slightly different window; a token read off the wrong step would be far off.
    gaps = [abs(own - forced) for (_, own), (_, forced) in zip(free.tokens, aligned, strict=True)]
    assert all(0.0 < own <= 1.0 for _, own in free.tokens)
    assert max(gaps) < 0.15 and sum(gaps) / len(gaps) < 0.06, (free.tokens, aligned)


@pytest.mark.parametrize("processes", [False, True])
def test_bad_model_path_is_a_clear_error(tmp_path: Path, processes: bool) -> None:
    with pytest.raises(RuntimeError, match="could not load the Whisper model"):
        DigitRecognizer.load(
            RecognizerSettings(model=str(tmp_path / "missing"), processes=processes)
        )


async def test_a_worker_process_that_dies_is_replaced(
    pin: Audio, caplog: pytest.LogCaptureFixture
) -> None:
    before = descendants()
    recognizer = DigitRecognizer.load(RecognizerSettings(workers=2, processes=True))
    try:
        assert (await recognizer.recognize(pin, max_digits=4)).digits == "4719"
        # The workers are the fork server's children; the fork server is this process's.
        parent_of = parents()
        workers = [pid for pid in descendants() - before if parent_of.get(pid) != os.getpid()]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)  # as the kernel's OOM killer would
        outcomes = await asyncio.gather(
            *(recognizer.recognize(pin, max_digits=4) for _ in range(2)), return_exceptions=True
        )
        # What the dead pool held fails (the listener logs it; the turn is silence) ...
        assert all(isinstance(o, BrokenProcessPool) or o.digits == "4719" for o in outcomes)
        assert "a worker process died" in caplog.text
        # ... and new utterances go to new workers.
        assert (await recognizer.recognize(pin, max_digits=4)).digits == "4719"
        assert recognizer.stats.failed >= 1
    finally:
        await recognizer.close()


async def test_worker_processes_decode_and_stop_on_close(pin: Audio) -> None:
    before = descendants()
    recognizer = DigitRecognizer.load(RecognizerSettings(workers=2, processes=True))
    started = descendants() - before
    assert len(started) >= 2  # two workers (and the fork server, the first time)
    results = await asyncio.gather(*(recognizer.recognize(pin, max_digits=4) for _ in range(3)))
    assert [r.digits for r in results] == ["4719"] * 3
    assert recognizer.stats.decoded == 3 and recognizer.stats.failed == 0
    await recognizer.close()
    assert len(started & descendants()) == len(started) - 2  # the workers are gone
    with pytest.raises(RuntimeError, match="closed"):
        await recognizer.recognize(pin)


async def test_speech_device_cuda_reaches_faster_whisper(pin: Audio) -> None:
    """SPEECH_DEVICE=cuda decodes on the GPU where CTranslate2 sees one; elsewhere (as on the
    project's CI machine) loading fails with a clear error instead of falling back unseen."""
    settings = RecognizerSettings(workers=1, device="cuda")
    if ctranslate2.get_cuda_device_count() == 0:
        with pytest.raises(RuntimeError, match=r"could not load the Whisper model.*CUDA"):
            DigitRecognizer.load(settings)
        return
    recognizer = DigitRecognizer.load(settings)
    try:
        assert (await recognizer.recognize(pin, max_digits=4)).digits == "4719"
    finally:
        await recognizer.close()


@pytest.mark.parametrize("value", ["gpu", "cuda:0", "tpu"])
def test_a_bad_speech_device_is_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="SPEECH_DEVICE"):
        Settings.from_env({"SPEECH_DEVICE": value})
    assert Settings.from_env({"SPEECH_DEVICE": "CUDA"}).speech_device == "cuda"


def test_speech_processes_is_on_or_off() -> None:
    assert Settings.from_env({}).speech_processes is False
    assert Settings.from_env({"SPEECH_PROCESSES": "ON"}).speech_processes is True
    with pytest.raises(SettingsError, match="SPEECH_PROCESSES must be on or off"):
        Settings.from_env({"SPEECH_PROCESSES": "2"})


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RecognizerSettings(workers=0)
    with pytest.raises(ValueError):
        RecognizerSettings(window_s=60)
    with pytest.raises(ValueError):
        RecognizerSettings(free_beam_size=0)


def test_pauses_split_segments() -> None:
    rng = np.random.default_rng(1)
    tone = (0.3 * np.sin(np.arange(SAMPLE_RATE // 2) * 2 * np.pi * 300 / SAMPLE_RATE)).astype(
        np.float32
    )
    gap = (0.001 * rng.standard_normal(SAMPLE_RATE // 4)).astype(np.float32)
    audio = np.concatenate([gap, tone, gap, tone, gap[:800], tone, gap])
    spans = speech_segments(audio, min_pause_ms=100)
    assert len(spans) == 2  # the 50 ms gap does not split


def test_combine_fills_a_dropped_digit_and_keeps_the_rest() -> None:
    def nbest(*digits: str) -> list[tuple[str, str, float]]:
        return [(d, d, -0.1 * i) for i, d in enumerate(digits)]

    # Whole transcript "63" for three segments that heard 6, 5 (or 3), 3: the 5 was dropped.
    chosen = combine("63", [nbest("6"), nbest("5", "3"), nbest("3")], [2, 2, 2])
    assert "".join(d for _, d in chosen) == "653"
    # A segment's lone guess does not overrule the whole transcript's two digits there.
    chosen = combine("8609", [nbest("8"), nbest("6"), nbest("0")], [1, 1, 2])
    assert "".join(d for _, d in chosen) == "8609"
    # A runaway repetition is cut down to what the segments can hold.
    chosen = combine("4877777777", [nbest("4"), nbest("8"), nbest("7")], [1, 1, 1])
    assert "".join(d for _, d in chosen) == "487"


@pytest.mark.parametrize(
    ("digits", "expected", "chosen"),
    [
        ("415550123", 10, "4155550123"),  # the first one that only adds a digit
        ("4155", 5, "4155"),  # none adds exactly one: the transcript stays
        ("33", 1, "3"),  # too many: one that only drops digits
        ("4155550123", 10, "4155550123"),  # the right count is never replaced
        ("415", 10, "415"),  # a first group of ten digits: more may follow in another utterance
        ("41", 4, "41"),  # 2 of 4 digits: off by more than a quarter (at least 1)
    ],
)
def test_fit_count_only_adds_or_drops_digits(digits: str, expected: int, chosen: str) -> None:
    hypotheses = ["41", "4155550124", "4155550123", "3", "515", "4155555555", "4111"]
    nbest = [(d, -0.1 * i) for i, d in enumerate(hypotheses)]
    assert fit_count(digits, digits, nbest, expected) == (chosen, chosen)
