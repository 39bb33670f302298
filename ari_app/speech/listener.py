"""From RTP packets to what the caller said, for one entry.

packets → :class:`AudioAssembler` (order, gaps) → :class:`UtteranceSegmenter` (voice activity)
→ :class:`DigitRecognizer` (Whisper, in its executor) → words → the call session. Speech onset
is delivered at once (barge-in); each utterance is delivered when recognised, in order, and every
onset gets exactly one end (a burst too short to decode ends as nothing heard), so the session
can hold keys pressed meanwhile until the words before them are known.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

import numpy as np
import numpy.typing as npt

from ari_app.metrics import Metrics, discarded_metrics
from ari_app.ports import SpeechTarget
from ari_app.speech.recognizer import Recognition, Vocabulary
from ari_app.speech.rtp import AudioAssembler, RtpPacket
from ari_app.speech.vad import SpeechDropped, SpeechStarted, Utterance, UtteranceSegmenter
from ari_app.speech.words import confirmation_answer

log = logging.getLogger(__name__)


class Recognizer(Protocol):
    async def recognize(
        self,
        audio: npt.NDArray[np.float32],
        *,
        max_digits: int = 64,
        vocabulary: Vocabulary = "digits",
        expected_digits: int | None = None,
    ) -> Recognition: ...


class SpeechListener:
    def __init__(
        self,
        target: SpeechTarget,
        recognizer: Recognizer,
        *,
        label: str,
        max_digits: int,
        metrics: Metrics | None = None,
    ) -> None:
        self._target = target
        self._metrics = metrics if metrics is not None else discarded_metrics()
        self._recognizer = recognizer
        self._label = label
        self._max_digits = max_digits
        self._assembler = AudioAssembler()
        self._segmenter = UtteranceSegmenter()
        # Utterances are recognised one after another so their results arrive in order.
        self._utterances: asyncio.Queue[Utterance | SpeechDropped] = asyncio.Queue()
        self._worker = asyncio.create_task(self._recognise_in_order(), name=f"speech-{label}")

    def on_packet(self, packet: RtpPacket) -> None:
        """Called by the RTP receiver for each packet of this entry; never blocks."""
        for frame in self._assembler.push(packet):
            for event in self._segmenter.feed(frame.pcm):
                if isinstance(event, SpeechStarted):
                    self._target.deliver_speech_started()
                else:
                    self._utterances.put_nowait(event)  # a drop waits for the words before it

    def end_of_stream(self) -> None:
        """The caller hung up: an utterance in progress ends here and is recognised, so a
        caller who speaks and hangs up at once is still heard."""
        for utterance in self._segmenter.flush():
            self._utterances.put_nowait(utterance)

    async def _recognise_in_order(self) -> None:
        while True:
            utterance = await self._utterances.get()
            if isinstance(utterance, SpeechDropped):
                self._target.deliver_speech_ended(None)
                continue
            try:
                # Decoding is restricted to what the caller may say now: digits, or yes/no too.
                vocabulary: Vocabulary = "confirmation" if self._target.expects_answer else "digits"
                # An exact count lets the recogniser put back a digit Whisper dropped. Read now,
                # it still includes the digits of an utterance delivered but not yet handled
                # (only under a backlog); the recogniser acts only on a transcript close to it.
                missing = self._target.digits_missing
                started = time.perf_counter()
                recognition = await self._recognizer.recognize(
                    utterance.audio,
                    max_digits=self._max_digits,
                    vocabulary=vocabulary,
                    expected_digits=missing if vocabulary == "digits" and missing else None,
                )
                self._metrics.speech_decoded(vocabulary, time.perf_counter() - started)
            except Exception:
                log.exception("%s: recognition failed", self._label)
                self._target.deliver_speech_ended(None)
                continue
            if recognition.rejected is not None:
                # Kept for the audit: what Whisper heard, freely, and why it is no digit.
                self._metrics.speech_rejected(recognition.rejected)
                self._target.deliver_speech_ended(
                    recognition.heard or None, rejected=recognition.rejected
                )
                continue
            text = recognition.text.strip()
            if not text:
                self._target.deliver_speech_ended(None)
                continue
            self._target.deliver_speech_ended(
                text,
                recognition.digits,
                confirmation_answer(text),
                confidences=recognition.confidences,
            )

    async def close(self) -> None:
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
