"""The per-entry speech pipeline (RTP → VAD → recogniser → words → session), with a scripted
recogniser so it runs without a model."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ari_app.metrics import Metrics
from ari_app.speech.listener import SpeechListener
from ari_app.speech.recognizer import Recognition, Vocabulary
from ari_app.speech.rtp import RtpPacket
from ari_app.speech.words import words_to_digits


def spoken_pcm16(text: str, folder: Path) -> bytes:
    """``text`` spoken by espeak-ng, as 16 kHz 16-bit mono PCM (little-endian)."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required (apt-get install {tool})")
    raw, resampled = folder / "raw.wav", folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
    subprocess.run(
        ["sox", "-R", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(resampled)],
        check=True,
        capture_output=True,
    )
    with wave.open(str(resampled)) as reader:
        return reader.readframes(reader.getnframes())


def as_rtp(
    pcm_le: bytes, *, silence_before: float = 0.5, silence_after: float = 1.0
) -> list[RtpPacket]:
    """Little-endian PCM as Asterisk's slin16 RTP: big-endian, 640-byte payloads."""
    samples = np.frombuffer(pcm_le, dtype="<i2")
    audio = np.concatenate(
        [
            np.zeros(int(16000 * silence_before), "<i2"),
            samples,
            np.zeros(int(16000 * silence_after), "<i2"),
        ]
    )
    audio = audio[: len(audio) // 320 * 320].astype(">i2")
    return [
        RtpPacket(sequence=i, timestamp=i * 320, ssrc=7, payload=chunk.tobytes(), marker=False)
        for i, chunk in enumerate(audio.reshape(-1, 320))
    ]


class ScriptedRecognizer:
    """Answers each utterance with the next script line: a transcript, or ``reject:WHY:HEARD``
    for an utterance the recogniser rejects."""

    def __init__(self, *texts: str, seconds: float = 0.01) -> None:
        self.texts = list(texts)
        self.seconds = seconds  # each decode's time
        self.heard: list[tuple[int, str, int | None]] = []

    async def recognize(
        self,
        audio: Any,
        *,
        max_digits: int = 64,
        vocabulary: Vocabulary = "digits",
        expected_digits: int | None = None,
    ) -> Recognition:
        self.heard.append((len(audio), vocabulary, expected_digits))
        await asyncio.sleep(self.seconds)
        text = self.texts.pop(0)
        if text.startswith("reject:"):
            _, why, heard = text.split(":", 2)
            return Recognition(
                text="1", audio_ms=0, queued_ms=0.0, decode_ms=1.0, rejected=why, heard=heard
            )
        digits = words_to_digits(text).digits
        return Recognition(
            text=text,
            audio_ms=len(audio) // 16,
            queued_ms=0.0,
            decode_ms=10.0,
            digits=digits,
            confidences=(0.75,) * len(digits),
        )


class Target:
    expects_answer = False
    digits_missing: int | None = None

    def __init__(self) -> None:
        self.events: list[tuple[str, ...]] = []
        self.confidences: list[tuple[float, ...]] = []
        self.rejected: list[str | None] = []
        self.ended = asyncio.Event()

    def deliver_speech_started(self) -> None:
        self.events.append(("started",))

    def deliver_speech_ended(
        self,
        transcript: str | None,
        digits: str = "",
        answer: bool | None = None,
        *,
        confidences: tuple[float, ...] = (),
        rejected: str | None = None,
    ) -> None:
        self.events.append(("ended", transcript or "", digits, str(answer)))
        self.confidences.append(confidences)
        self.rejected.append(rejected)
        self.ended.set()


async def test_an_utterance_reaches_the_session_as_digits(tmp_path: Path) -> None:
    target = Target()
    target.digits_missing = 3
    recognizer = ScriptedRecognizer("Five, five, five.")
    listener = SpeechListener(target, recognizer, label="t", max_digits=10)
    try:
        for packet in as_rtp(spoken_pcm16("five five five", tmp_path)):
            listener.on_packet(packet)
        async with asyncio.timeout(2):
            await target.ended.wait()
    finally:
        await listener.close()
    assert target.events == [("started",), ("ended", "Five, five, five.", "555", "None")]
    assert target.confidences == [(0.75, 0.75, 0.75)] and target.rejected == [None]
    assert recognizer.heard[0][0] > 16000 * 0.5  # the whole utterance
    assert recognizer.heard[0][1:] == ("digits", 3)  # what the entry still needs


async def test_words_cut_off_by_a_hangup_are_still_recognised(tmp_path: Path) -> None:
    target = Target()
    recognizer = ScriptedRecognizer("One, two.")
    listener = SpeechListener(target, recognizer, label="t", max_digits=10)
    try:
        for packet in as_rtp(spoken_pcm16("one two", tmp_path), silence_after=0.1):
            listener.on_packet(packet)
        await asyncio.sleep(0.05)
        assert target.events == [("started",)]  # the utterance has not ended: no silence yet
        listener.end_of_stream()  # the caller hung up
        async with asyncio.timeout(2):
            await target.ended.wait()
    finally:
        await listener.close()
    assert target.events == [("started",), ("ended", "One, two.", "12", "None")]


async def test_silence_reaches_nothing_and_yes_is_an_answer(tmp_path: Path) -> None:
    target = Target()
    target.expects_answer = True
    recognizer = ScriptedRecognizer("Yes.")
    listener = SpeechListener(target, recognizer, label="t", max_digits=4)
    try:
        packets = as_rtp(spoken_pcm16("yes", tmp_path), silence_before=2.0)
        for packet in packets[:90]:  # 1.8 s of silence first
            listener.on_packet(packet)
        await asyncio.sleep(0.05)
        assert target.events == []
        for packet in packets[90:]:
            listener.on_packet(packet)
        async with asyncio.timeout(2):
            await target.ended.wait()
    finally:
        await listener.close()
    assert target.events[-1] == ("ended", "Yes.", "", "True")
    assert recognizer.heard[0][1:] == ("confirmation", None)  # it may say yes or no now


async def test_a_rejected_utterance_reaches_the_session_as_no_digits_with_its_reason(
    tmp_path: Path,
) -> None:
    target = Target()
    metrics = Metrics()
    recognizer = ScriptedRecognizer("reject:not_digits:Hello? Hello?")
    listener = SpeechListener(target, recognizer, label="t", max_digits=4, metrics=metrics)
    try:
        for packet in as_rtp(spoken_pcm16("hello hello", tmp_path)):
            listener.on_packet(packet)
        async with asyncio.timeout(2):
            await target.ended.wait()
    finally:
        await listener.close()
    assert target.events == [("started",), ("ended", "Hello? Hello?", "", "None")]
    assert target.rejected == ["not_digits"]
    scraped = metrics.exposition("text/plain")[0].decode()
    assert 'ari_digits_speech_rejected_total{reason="not_digits"} 1.0' in scraped


async def test_a_burst_too_short_to_decode_ends_after_the_words_before_it(tmp_path: Path) -> None:
    target = Target()
    recognizer = ScriptedRecognizer("Five, five, five.", seconds=0.3)
    listener = SpeechListener(target, recognizer, label="t", max_digits=10)
    words = spoken_pcm16("five five five", tmp_path)
    vowel = np.frombuffer(spoken_pcm16("ah", tmp_path), dtype="<i2")
    onset = int(np.argmax(np.abs(vowel) > 500))
    burst = vowel[onset : onset + 16 * 130].tobytes()  # 130 ms: speech, too short for a word
    try:
        for packet in as_rtp(words, silence_after=0.6) + as_rtp(burst, silence_before=0.0):
            listener.on_packet(packet)
        async with asyncio.timeout(2):
            while len([e for e in target.events if e[0] == "ended"]) < 2:
                await asyncio.sleep(0.01)
    finally:
        await listener.close()
    # Every onset has its end, in order: the session holds keys until both are known.
    assert target.events == [
        ("started",),
        ("started",),
        ("ended", "Five, five, five.", "555", "None"),
        ("ended", "", "", "None"),
    ]
    assert len(recognizer.heard) == 1
