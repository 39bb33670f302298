"""Spoken digits with Whisper (CTranslate2), decoded off the event loop.

What one utterance goes through (every choice here was measured; see ``bench/speech_accuracy.py``
and ``bench/speech_latency.py`` for the numbers and the alternatives that lost):

0. **Level.** The utterance is brought to -23 dBFS (:func:`normalise_level`, gain capped at
   40 dB), so a caller at -50 dBFS and one at -10 reach Whisper alike.
1. **Window.** The audio gets ``padding_ms`` of silence on each side and is zero-padded to a
   ``window_s`` (15 s) encoder window, not Whisper's usual 30 s: the encoder's cost grows faster
   than linearly with the window (about 160 ms for 15 s against 690 ms for 30 s on one core), and
   accuracy on human speech was the same (on the synthetic strings, 30 s got 53 % exact against
   48 %: not worth four times the encoder's time). Shorter windows (10 s) make tiny.en repeat
   digits. Longer audio widens the window up to 30 s, and audio longer than that is cut at its
   quietest points.
2. **Restricted vocabulary.** Decoding may only emit single-digit numerals, digit words
   (zero..nine, oh, o, double, triple, any case) and ``, . - ? !``; every other text token goes
   into ``suppress_tokens`` (end-of-text stays allowed). This forces a digit choice where
   tiny.en would otherwise return nothing for a short word. Punctuation matters: with digit
   tokens alone, tiny.en drops digits from strings it would write as "7, 1, 0". Numerals are one
   digit per token (see ``_DIGIT_TOKENS``).
3. **Beam search** (``beam_size`` 5, 5-best, no sampling, no timestamps, no previous text, no
   prompt: a prompt listing digits makes tiny.en repeat them). When the best hypothesis has no
   digit but there is speech, the best one with digits is taken. Output length is capped from
   ``max_digits`` and the audio's duration, so a runaway repetition is bounded in time. Silence
   (no stretch above the noise floor) is not decoded at all.
   **Exact count.** When the entry still needs exactly ``expected_digits`` digits and the
   transcript has fewer, the best n-best hypothesis with exactly that many digits that only
   *adds* digits to it is taken: Whisper's commonest error on a digit string is a dropped digit,
   mostly one of a run ("five five five" written "55"), and the hypothesis that keeps it is
   usually in the 5-best (else in a second search with twice the beam, only then). Likewise a
   transcript with too many digits gives way to one that only *drops* some ("3 3" for "three").
   A digit the transcript has is never changed this way, a transcript off by more than a
   quarter of the count is left alone (see :func:`fit_count`), and in a turn with words around
   the digits (more than one word) none is added: there half the added digits were wrong.
4. **Pause check and per-segment fallback.** Whisper's errors on digit strings are mostly
   *dropped* digits, and sometimes a repetition loop. The utterance is cut at pauses
   (``min_pause_ms``; energy above both the utterance's noise floor + 6 dB and its peak - 25 dB).
   When the transcript holds fewer digits than there are spoken segments, more than
   ``max_digits``, or one digit four times in a row, each segment (cut in the middle of the
   pauses) is decoded on its own (3-best, in batches of two) and :func:`combine` merges them with the
   whole-utterance transcript: a segment the transcript left without a digit gets its own best
   hypothesis, a runaway repetition is cut to what the segments can hold, and the transcript's
   other digits stay as they are (a single segment's guess is weaker evidence than the whole).

5. **A second opinion, and the judgement.** Restricted to digits, Whisper writes digits for
   any sound: a sentence, a cough, a chime. So the same encoder output is also decoded with no
   restriction (on CTranslate2's own workers, beside the restricted decode: it adds no latency
   when a worker is free), and :func:`judge` keeps the digits only when that free transcript
   backs them: it wrote digits too; or it wrote nothing, or a single word that is a lone digit
   misheard ("Bye." for "five", "Kevin" for "seven"), and each forced digit is plausible to the
   unrestricted model (teacher-forced token probability, :meth:`_Decoder.token_probabilities`:
   about 0.001 for talk or noise forced into a digit, 0.01-0.3 for a mumbled digit). Talk
   (``not_digits``), noise (``no_speech``) and improbable digits (``unclear``) give no digits.
   In a mixed turn ("um, it's four one five five") the words around the digits are decoded
   again with those words allowed, so they stay words instead of becoming digits. Other
   candidates measured and not kept alone: the no-speech probability (0.05-0.55 on speech and
   0.6-0.9 on noise, but "Hello? Hello?" scored 0.55); a likelihood ratio between the two
   transcripts (a misheard "five" and a "yes" forced into "1" overlap). The free transcript is
   a beam search like the restricted one (``free_beam_size`` 5). A greedy one (1) reads each
   token's probability off its own step instead of aligning the text afterwards and serves a
   third more speakers, but wrote worse text in mixed turns (more wrong digits kept), so it is
   a lever, not the default. Each digit's confidence is the surer of its teacher-forced
   probability and the probability of the free transcript's word in its place
   (:func:`agreed`).

``text`` is the raw transcript (the combined segments' transcripts in the fallback case);
``digits`` is what :func:`ari_app.speech.words.words_to_digits` makes of it once judged, and
``heard`` the free transcript.

Memory: loading the model fixes glibc's mmap threshold (see :func:`_fix_mmap_threshold`) and
windows are decoded at most two at a time, so RSS does not ratchet up with each decode.

Concurrency: decodes run in a thread pool of ``workers`` threads (``threads`` CPU threads each),
or with ``processes`` in ``workers`` worker processes, each holding its own copy of the model
(about 150 MB more each): there the Python around a decode (features, search bookkeeping, the
judgement) no longer holds this process's GIL, so the event loop beside it keeps its pace
(bench/speech_latency.py measures both). At most ``max_queue`` requests wait for a worker; beyond that, :meth:`DigitRecognizer.recognize`
refuses the utterance at once (``rejected="overloaded"``): an overloaded recogniser would only
answer later and later for everyone, and a refused turn is silence to the rules (keys still
work, no digit is invented, the caller is asked again).
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import itertools
import logging
import math
import multiprocessing
import re
import sys
import threading
import time
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from ari_app.speech.models import resolve_model
from ari_app.speech.words import confirmation_answer, words_to_digits

__all__ = [
    "SAMPLE_RATE",
    "DigitRecognizer",
    "Recognition",
    "RecognizerSettings",
    "RecognizerStats",
    "Vocabulary",
]

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
_HOP = 160  # samples per mel frame (10 ms)
_MAX_FRAMES = 3000  # Whisper's 30 s window
_MAX_WINDOW_SAMPLES = _MAX_FRAMES * _HOP
# Windows decoded together. Each one in a batch holds its own encoder activations and beams'
# cross-attention: 10 segments in one batch peaked at 388 MB RSS, 4 at 302 MB, 2 at 258 MB
# (the model load alone: 244 MB).
_MAX_BATCH = 2

Vocabulary = Literal["digits", "confirmation"]
_Vocabulary = Literal["digits", "confirmation", "single_digits"]

# One digit per numeral token: with multi-digit tokens allowed, tiny.en writes a spoken "seven"
# as "10" and "one one" as "11" (synthetic strings: 40 % exact against 48 % without them).
_DIGIT_TOKENS = (
    r"[0-9]|[,.?!-]|(?i:zero|one|two|three|four|five|six|seven|eight|nine|oh|o|double|triple)"
)
_SINGLE_DIGIT_TOKENS = r"[0-9]"  # the last resort for a word heard as nothing
_CONFIRMATION_TOKENS = (
    _DIGIT_TOKENS
    + r"|(?i:yes|yeah|yep|yup|ya|no|nope|nah|not|correct|incorrect|right|wrong|okay|ok|sure"
    + r"|that|it|is|isn|'s|'t)"
)


@dataclass(frozen=True)
class RecognizerSettings:
    """How the recogniser decodes; the defaults are the measured best on 2 cores."""

    # A CTranslate2 Whisper directory, or a faster-whisper model name (needs the model hub);
    # "" or "tiny.en" = the bundled tiny.en; "base" = Whisper base from the [base] extra.
    model: str = ""
    threads: int = 1  # CPU threads per decode
    workers: int = 2  # decodes in parallel
    processes: bool = False  # each decode in a worker process (True) or a thread of this one
    max_queue: int = 16  # requests waiting for a worker; past that, utterances are refused
    compute_type: str = "int8"
    device: str = "cpu"  # or "cuda" (or "auto"), passed to faster-whisper
    beam_size: int = 5
    # The free transcript's beam (1 = greedy: its tokens' probabilities come with it, for less
    # CPU, but it kept more wrong digits in mixed turns: see the README's speech section).
    free_beam_size: int = 5
    window_s: float = 15.0  # encoder window; grows to 30 s for longer audio
    padding_ms: int = 250  # silence added before and after the utterance
    segment_fallback: bool = True  # decode pause-separated segments when the whole looks wrong
    min_pause_ms: int = 100  # a quieter stretch at least this long separates segments
    queue_warn_ms: float = 1000.0  # a wait for a worker longer than this is "behind real time"

    def __post_init__(self) -> None:
        if self.threads < 1 or self.workers < 1 or self.max_queue < 0:
            raise ValueError("threads and workers must be >= 1, max_queue >= 0")
        if self.beam_size < 1 or self.free_beam_size < 1:
            raise ValueError("beam_size and free_beam_size must be >= 1")
        if not 1.0 <= self.window_s <= 30.0:
            raise ValueError("window_s must be between 1 and 30 seconds")
        if not 0 <= self.padding_ms <= 2000 or self.min_pause_ms < 10:
            raise ValueError("padding_ms must be 0..2000 and min_pause_ms >= 10")


@dataclass(frozen=True)
class Recognition:
    """One utterance's result. ``text`` is the raw transcript, kept for the audit.

    ``rejected`` says why the utterance gave nothing (``not_digits``: words without digits;
    ``unclear``: digits too improbable to trust), and is None when it was accepted.
    ``confidences`` has one value in 0..1 per digit of ``digits``.
    """

    text: str
    audio_ms: int
    queued_ms: float
    decode_ms: float
    digits: str = ""
    segments: int = 0  # pause-separated segments found in the audio
    fallback: bool = False  # the segments were decoded separately and combined
    confidences: tuple[float, ...] = ()
    rejected: str | None = None
    heard: str = ""  # the unrestricted transcript: what the caller said, in words


@dataclass(frozen=True)
class Heard:
    """Everything one utterance's decodes found, before it is judged (see :func:`judge`)."""

    text: str = ""  # the restricted transcript: digit words, or yes/no
    digits: str = ""
    segments: int = 0
    fallback: bool = False
    free_text: str = ""  # the unrestricted transcript
    no_speech: float = 1.0  # Whisper's probability that there is no speech
    score: float = 0.0  # the best restricted hypothesis' score (mean log-probability a token)
    # The restricted transcript's tokens, each with the unrestricted model's probability.
    tokens: tuple[tuple[str, float], ...] = ()
    free_score: float = -math.inf  # the unrestricted transcript's mean log-probability a token
    # The unrestricted transcript's tokens, each with its probability (read when it has digits).
    free_tokens: tuple[tuple[str, float], ...] = ()

    @classmethod
    def joined(cls, parts: list[Heard]) -> Heard:
        """Audio too long for one window, heard in chunks."""
        text = " ".join(p.text for p in parts if p.text)
        return cls(
            text=text,
            digits=words_to_digits(text).digits,
            segments=sum(p.segments for p in parts),
            fallback=any(p.fallback for p in parts),
            free_text=" ".join(p.free_text for p in parts if p.free_text),
            no_speech=min((p.no_speech for p in parts), default=1.0),
            score=min((p.score for p in parts), default=0.0),
            tokens=tuple(t for p in parts for t in p.tokens),
            free_score=min((p.free_score for p in parts), default=-math.inf),
            free_tokens=tuple(t for p in parts for t in p.free_tokens),
        )


@dataclass(frozen=True)
class FreeTranscript:
    """What Whisper wrote with no vocabulary restriction."""

    text: str
    score: float  # mean log-probability a token
    no_speech: float  # Whisper's probability that there is no speech
    # Each token with its probability (a greedy search's own; empty after a beam search).
    tokens: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class RecognizerStats:
    decoded: int  # utterances recognised
    fallbacks: int  # of which needed the per-segment fallback
    queued_now: int  # requests waiting for a worker
    running_now: int  # decodes in progress
    behind_realtime: int  # decodes slower than the audio, or that waited too long for a worker
    refused_overloaded: int  # requests refused because the queue was full
    failed: int  # decodes that raised


class _Decoder:
    """The model and everything derived from it; thread-safe (CTranslate2 runs one decode per
    worker replica, the feature extractor is stateless)."""

    def __init__(self, settings: RecognizerSettings) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        _fix_mmap_threshold()
        model = resolve_model(settings.model)
        try:
            whisper = WhisperModel(
                model,
                device=settings.device,
                compute_type=settings.compute_type,
                cpu_threads=settings.threads,
                num_workers=settings.workers,
            )
        except Exception as exc:
            raise RuntimeError(f"could not load the Whisper model {model!r}: {exc}") from exc
        self.model = whisper.model
        self.features = whisper.feature_extractor
        if self.features.sampling_rate != SAMPLE_RATE or self.features.hop_length != _HOP:
            raise RuntimeError("unexpected Whisper feature extractor (not 16 kHz, 10 ms hop)")
        self.tokenizer = Tokenizer(
            whisper.hf_tokenizer, whisper.model.is_multilingual, task="transcribe", language="en"
        )
        vocab_size = whisper.hf_tokenizer.get_vocab_size()
        eot = self.tokenizer.eot
        self.prompt = [*self.tokenizer.sot_sequence, self.tokenizer.no_timestamps]
        self.max_length: int = whisper.max_length
        self.suppress: dict[str, list[int]] = {
            "digits": self._suppress(_DIGIT_TOKENS, vocab_size),
            "confirmation": self._suppress(_CONFIRMATION_TOKENS, vocab_size),
            "single_digits": self._suppress(_SINGLE_DIGIT_TOKENS, vocab_size),
            # Free decoding: any text, but never timestamps nor other special tokens.
            "free": [
                *(i for i in range(eot + 1, vocab_size) if i != self.tokenizer.no_timestamps),
                -1,
            ],
        }
        self.settings = settings

    def _suppress(self, allowed: str, vocab_size: int) -> list[int]:
        """Every text token that does not match ``allowed`` (a leading space is fine), and the
        special tokens other than end-of-text."""
        pattern = re.compile(rf" ?(?:{allowed})")
        eot = self.tokenizer.eot
        banned = [i for i in range(eot) if not pattern.fullmatch(self.tokenizer.decode([i]))]
        banned += [i for i in range(eot + 1, vocab_size) if i != self.tokenizer.no_timestamps]
        return [*banned, -1]

    def mel(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Padded log-mel features in a window of at least ``window_s``."""
        pad = np.zeros(int(SAMPLE_RATE * self.settings.padding_ms / 1000), np.float32)
        padded = np.concatenate([pad, audio, pad])
        frames = max(int(self.settings.window_s * 100), math.ceil(len(padded) / _HOP))
        frames = min(_MAX_FRAMES, frames + frames % 2)
        mel = self.features(padded, padding=max(0, frames * _HOP - len(padded) + _HOP))
        return np.ascontiguousarray(mel[:, :frames], dtype=np.float32)

    def encode(self, mel: npt.NDArray[np.float32]) -> Any:
        """The encoder's output for one window (a StorageView), to decode several times."""
        import ctranslate2

        return self.model.encode(ctranslate2.StorageView.from_array(mel[None]))

    def generate(
        self,
        mels: list[npt.NDArray[np.float32]],
        *,
        vocabulary: _Vocabulary,
        max_new_tokens: int,
        hypotheses: int,
        beam_size: int | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Beam-search each window (batches of at most ``_MAX_BATCH`` windows of one size);
        n-best (text, score) lists. ``beam_size`` defaults to the setting's."""
        import ctranslate2

        results: list[list[tuple[str, float]]] = [[] for _ in mels]
        by_size: dict[int, list[int]] = {}
        for index, mel in enumerate(mels):
            by_size.setdefault(mel.shape[1], []).append(index)
        batches = [
            same[i : i + _MAX_BATCH]
            for same in by_size.values()
            for i in range(0, len(same), _MAX_BATCH)
        ]
        for indices in batches:
            batch = ctranslate2.StorageView.from_array(np.stack([mels[i] for i in indices]))
            found = self.search(
                batch,
                len(indices),
                vocabulary=vocabulary,
                max_new_tokens=max_new_tokens,
                hypotheses=hypotheses,
                beam_size=beam_size,
            )
            for index, nbest in zip(indices, found, strict=True):
                results[index] = nbest
        return results

    def search(
        self,
        features: Any,
        count: int,
        *,
        vocabulary: _Vocabulary,
        max_new_tokens: int,
        hypotheses: int,
        beam_size: int | None = None,
        suppress: list[int] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Beam search over ``count`` windows: mels, or one window's :meth:`encode` output.
        ``suppress`` replaces the vocabulary's banned tokens (see :meth:`allowing`)."""
        max_length = min(self.max_length, len(self.prompt) + max(1, max_new_tokens))
        beam = beam_size or self.settings.beam_size
        out = self.model.generate(
            features,
            [self.prompt] * count,
            beam_size=beam,
            num_hypotheses=min(hypotheses, beam),
            max_length=max_length,
            return_scores=True,
            suppress_tokens=self.suppress[vocabulary] if suppress is None else suppress,
            suppress_blank=True,
        )
        eot = self.tokenizer.eot
        return [
            [
                (self.tokenizer.decode([t for t in ids if t < eot]), float(score))
                for ids, score in zip(result.sequences_ids, result.scores, strict=True)
            ]
            for result in out
        ]

    def allowing(self, vocabulary: _Vocabulary, text: str) -> list[int]:
        """The vocabulary's banned tokens, less those of ``text``: in a turn like "um, it's
        four one five five", the words heard freely may stay words instead of becoming digits."""
        heard = set(self.tokenizer.encode(" " + text.strip())) | set(self.tokenizer.encode(text))
        return [t for t in self.suppress[vocabulary] if t not in heard]

    def start_free_transcript(self, encoded: Any, max_new_tokens: int) -> Any:
        """Start decoding what Whisper hears with no vocabulary restriction (the second opinion
        that tells talk, noise and digits apart) on CTranslate2's own workers, so it runs
        beside the restricted decode; :meth:`free_transcript` waits for it."""
        greedy = self.settings.free_beam_size == 1
        return self.model.generate(
            encoded,
            [self.prompt],
            asynchronous=True,
            beam_size=self.settings.free_beam_size,
            max_length=min(self.max_length, len(self.prompt) + max_new_tokens),
            return_scores=True,
            return_logits_vocab=greedy,  # each step's log-probabilities: only a greedy search's
            return_no_speech_prob=True,
            suppress_tokens=self.suppress["free"],
            suppress_blank=True,
        )

    def free_transcript(self, started: Any) -> FreeTranscript:
        """The unrestricted transcript (see :class:`FreeTranscript`)."""
        (pending,) = started
        result = pending.result()
        eot = self.tokenizer.eot
        ids = [t for t in result.sequences_ids[0] if t < eot]
        tokens: tuple[tuple[str, float], ...] = ()
        if result.logits:  # a greedy search: each step's log-probabilities, in step order
            steps = result.logits[0]
            tokens = tuple(
                (self.tokenizer.decode([token]), math.exp(_log_probability(steps[i], token)))
                for i, token in enumerate(ids)
            )
        return FreeTranscript(
            self.tokenizer.decode(ids).strip(),
            float(result.scores[0]),
            float(result.no_speech_prob),
            tokens,
        )

    def token_probabilities(self, encoded: Any, text: str, frames: int) -> list[tuple[str, float]]:
        """Each token of ``text`` with the probability the unrestricted model gives it, read by
        teacher forcing: a digit forced out of a cough or a word scores near zero."""
        tokens = self.tokenizer.encode(" " + text.strip())
        if not tokens:
            return []
        (result,) = self.model.align(encoded, self.prompt, [tokens], frames)
        probs = list(result.text_token_probs)
        return [(self.tokenizer.decode([t]), float(p)) for t, p in zip(tokens, probs, strict=False)]


def _log_probability(step: Any, token: int) -> float:
    """One token's log-probability from a step's vector over the vocabulary (normalised here:
    whether CTranslate2 hands back logits or log-probabilities, the result is the same)."""
    values = np.asarray(step, dtype=np.float64)
    return float(values[token] - np.logaddexp.reduce(values))


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_MMAP_THRESHOLD = 8 * 1024 * 1024


def _fix_mmap_threshold() -> None:
    """Keep the process's RSS flat across decodes (glibc only; elsewhere nothing changes).

    glibc serves big allocations with mmap, but raises that threshold (up to 32 MB) each time
    such a block is freed, so CTranslate2's per-decode buffers (1-14 MB for a 15 s window: the
    attention scores are the largest) soon come from the heap, which fragments and is not given
    back: RSS grew to 310 MB over six two-window decodes. With the threshold fixed at 8 MB the
    largest buffers stay mmapped and are really freed: 232 MB after the same decodes, no slower.
    glibc's initial 128 KB kept it at 157 MB but doubled the decode time (page faults on every
    buffer). The same as MALLOC_MMAP_THRESHOLD_=8388608 in the environment.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)


# --- pauses --------------------------------------------------------------------------------


def speech_segments(audio: npt.NDArray[np.float32], min_pause_ms: int) -> list[tuple[int, int]]:
    """Stretches of speech (sample ranges) separated by pauses of at least ``min_pause_ms``.

    A 20 ms frame (10 ms hop) is speech when its energy is above both the noise floor (10th
    percentile) + 6 dB and the peak (99th percentile) - 25 dB. Stretches shorter than 80 ms are
    dropped (clicks).
    """
    hop, win = SAMPLE_RATE // 100, SAMPLE_RATE // 50
    count = (len(audio) - win) // hop + 1
    if count <= 0:
        return []
    frames = np.lib.stride_tricks.sliding_window_view(audio, win)[::hop][:count]
    energy = 10.0 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-10)
    floor, peak = np.percentile(energy, 10), np.percentile(energy, 99)
    voiced = energy > max(floor + 6.0, peak - 25.0, -70.0)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
    runs = [[int(a), int(b)] for a, b in zip(edges[::2], edges[1::2], strict=True)]
    merged: list[list[int]] = []
    min_gap = max(1, min_pause_ms // 10)
    for run in runs:
        if merged and run[0] - merged[-1][1] < min_gap:
            merged[-1][1] = run[1]
        else:
            merged.append(run)
    return [(a * hop, min(len(audio), b * hop + win)) for a, b in merged if b - a >= 8]


def _cut_at_pauses(length: int, segments: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Ranges covering the audio, cut in the middle of each pause between segments."""
    cuts = [0] + [(a[1] + b[0]) // 2 for a, b in itertools.pairwise(segments)]
    cuts.append(length)
    return list(itertools.pairwise(cuts))


def _chunks(audio: npt.NDArray[np.float32], longest: int) -> list[npt.NDArray[np.float32]]:
    """Audio longer than ``longest`` samples, cut at the quietest 100 ms in each chunk's last
    third."""
    out = []
    start = 0
    step = SAMPLE_RATE // 10
    while len(audio) - start > longest:
        low = start + (2 * longest) // 3
        window = audio[low : start + longest]
        blocks = len(window) // step
        energies = [float(np.mean(window[i * step : (i + 1) * step] ** 2)) for i in range(blocks)]
        cut = low + (int(np.argmin(energies)) * step + step // 2 if blocks else len(window))
        out.append(audio[start:cut])
        start = cut
    out.append(audio[start:])
    return out


# --- level --------------------------------------------------------------------------------

LEVEL_TARGET_DBFS = -23.0  # the speech level Whisper decodes at (its training audio's)
LEVEL_MAX_GAIN_DB = 40.0  # -63 dBFS speech is lifted to -23; quieter stays quieter
LEVEL_MAX_PEAK = 0.95


def active_level_dbfs(audio: npt.NDArray[np.float32]) -> float:
    """Speech level: the mean power of the 20 ms frames within 30 dB of the loudest one (so the
    pauses do not count), in dBFS; -inf for digital silence."""
    frame = SAMPLE_RATE // 50
    count = len(audio) // frame
    if count == 0:
        return -math.inf
    power = np.mean(audio[: count * frame].reshape(count, frame).astype(np.float64) ** 2, axis=1)
    loudest = float(power.max())
    if loudest <= 0.0:
        return -math.inf
    return 10.0 * math.log10(float(power[power >= loudest * 1e-3].mean()))


def normalise_level(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The utterance at ``LEVEL_TARGET_DBFS`` (AGC): a caller at -50 dBFS and one at -10 reach
    Whisper alike. The gain is capped (``LEVEL_MAX_GAIN_DB``) and never clips a peak."""
    level = active_level_dbfs(audio)
    if level == -math.inf:
        return audio
    gain = 10.0 ** (min(LEVEL_MAX_GAIN_DB, LEVEL_TARGET_DBFS - level) / 20.0)
    peak = float(np.max(np.abs(audio)))
    gain = min(gain, LEVEL_MAX_PEAK / peak)
    return (audio * np.float32(gain)).astype(np.float32)


# --- judging what was heard ------------------------------------------------------------------

# Words that carry no meaning of their own in a digit turn: hesitations, and the words Whisper
# writes for a digit it heard unclearly ("for", "to", "oh").
_HESITATIONS = frozenset(
    {"um", "umm", "uh", "uhh", "uhm", "er", "erm", "ah", "ahh", "eh", "hm", "hmm", "mm", "mmm"}
    | {"mhm", "huh"}
)
_DIGIT_SOUNDING = frozenset(
    {"oh", "o", "to", "too", "for", "won", "ate", "double", "triple"}
    # What Whisper writes for a digit word it heard unclearly in a run ("four one time time").
    | {"a", "or", "do", "time", "times", "fine", "heaven", "free", "tree"}
)
_NEUTRAL_WORDS = _HESITATIONS | _DIGIT_SOUNDING
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|\d+")  # a word (inner apostrophe kept) or a numeral


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.replace("\N{RIGHT SINGLE QUOTATION MARK}", "'"))


def spoken_words(text: str) -> list[str]:
    """The words of an unrestricted transcript that are neither digits nor hesitations."""
    words = [token.lower() for token in _tokens(text)]
    return [w for w in words if w not in _NEUTRAL_WORDS and not words_to_digits(w).digits]


def framing_words(text: str) -> str:
    """The words around a transcript's digits: before the first and after the last digit
    ("um, it's" ... "I think"). A word between digits is more likely a digit misheard
    ("4 1 time, time, 0 1" for "four one five five, oh one"), so it is not one of them."""
    tokens = _tokens(text)
    digit_like = [
        i
        for i, token in enumerate(tokens)
        if words_to_digits(token).digits or token.lower() in _DIGIT_SOUNDING
    ]
    if not digit_like:
        return " ".join(tokens)
    return " ".join(tokens[: digit_like[0]] + tokens[digit_like[-1] + 1 :])


def digit_confidences(tokens: tuple[tuple[str, float], ...], digits: str) -> tuple[float, ...]:
    """One confidence per digit: the lowest unrestricted probability among the tokens that
    made it (``double`` and ``five`` both count for "55"; punctuation does not)."""
    confidences: list[float] = []
    text = ""
    pending: list[float] = []
    for token, probability in tokens:
        text += token
        if token.strip(" ,.?!-"):
            pending.append(probability)
        made = len(words_to_digits(text).digits) - len(confidences)
        if made > 0 and pending:
            confidences += [min(pending)] * made
            pending = []
    if len(confidences) != len(digits):  # the transcript's text and its tokens disagree
        low = min(confidences, default=0.0)
        confidences = (confidences + [low] * len(digits))[: len(digits)]
    return tuple(round(c, 3) for c in confidences)


def _pattern_words(text: str) -> list[tuple[str, int, int]]:
    """Each word of ``text`` that backs digits: (its digits or ``?``, start, end)."""
    words = []
    for match in _TOKEN.finditer(text.replace("\N{RIGHT SINGLE QUOTATION MARK}", "'")):
        digits = words_to_digits(match.group()).digits
        if digits or match.group().lower() in _DIGIT_SOUNDING:
            words.append((digits or "?", match.start(), match.end()))
    return words


def free_digit_pattern(text: str) -> str:
    """The digits of a free transcript, one ``?`` for each word that sounds like a digit
    Whisper misheard ("For one time, time" is ``?1??``): what the free decode backs."""
    return "".join(digits for digits, _, _ in _pattern_words(text))


def free_digit_support(text: str, tokens: tuple[tuple[str, float], ...]) -> tuple[float, ...]:
    """One probability per character of :func:`free_digit_pattern`: the lowest probability
    among the free transcript's tokens that wrote its word. Empty when the tokens do not spell
    ``text`` (they were not read)."""
    spelled = "".join(token for token, _ in tokens)
    if not tokens or spelled.strip() != text.strip():
        return ()
    offset = len(spelled) - len(spelled.lstrip()) - (len(text) - len(text.lstrip()))
    spans, at = [], 0
    for token, probability in tokens:
        spans.append((at - offset, at - offset + len(token), probability))
        at += len(token)
    support: list[float] = []
    for digits, start, end in _pattern_words(text):
        inside = [q for a, b, q in spans if a < end and b > start]
        support += [min(inside, default=0.0)] * len(digits)
    return tuple(support)


def _backed_positions(digits: str, pattern: str) -> dict[int, int]:
    """Positions of ``digits`` in a longest in-order match with ``pattern`` (``?`` matches any
    digit), each with the position of ``pattern`` that backs it."""
    rows, cols = len(digits), len(pattern)
    best = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(rows - 1, -1, -1):
        for j in range(cols - 1, -1, -1):
            same = digits[i] == pattern[j] or pattern[j] == "?"
            best[i][j] = max(best[i + 1][j], best[i][j + 1], best[i + 1][j + 1] + 1 if same else 0)
    backed: dict[int, int] = {}
    i, j = 0, 0
    while i < rows and j < cols:
        if (digits[i] == pattern[j] or pattern[j] == "?") and best[i][j] == best[i + 1][j + 1] + 1:
            backed[i] = j
            i, j = i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    return backed


def agreed(
    confidences: tuple[float, ...], digits: str, pattern: str, support: tuple[float, ...]
) -> tuple[float, ...]:
    """A digit the free transcript backs (see :func:`free_digit_pattern`), in the same place of
    the run, is as sure as the surer of the two decodes: the forced digit's own probability, or
    the probability of the free transcript's word in its place (``support``, one per
    character of ``pattern``). A digit only the restricted decode wrote keeps its own."""
    backed = _backed_positions(digits, pattern)
    return tuple(
        round(max(c, support[backed[i]]), 3) if i in backed else c
        for i, c in enumerate(confidences)
    )


def _support(heard: Heard, pattern: str) -> tuple[float, ...]:
    """Each pattern character's probability; the transcript's mean token probability for all
    of them when its tokens were not read."""
    support = free_digit_support(heard.free_text, heard.free_tokens)
    if len(support) == len(pattern):
        return support
    mean = math.exp(heard.free_score) if math.isfinite(heard.free_score) else 0.0
    return (mean,) * len(pattern)


# Tuned on the tuning recordings and the bench's corpora (see bench/speech_accuracy.py).
MAX_WORDS_FOR_A_DIGIT = 1  # a free transcript with more words than this is talk
MIN_FORCED_CONFIDENCE = 0.005  # a digit Whisper did not write freely must reach this
MIN_DIGIT_CONFIDENCE = 0.002  # any digit the free transcript does not back must reach this
MAX_NO_SPEECH = 0.5  # ... in audio Whisper thinks holds speech


def judge(heard: Heard, vocabulary: Vocabulary) -> tuple[str, tuple[float, ...], str | None]:
    """Accept or reject what was heard: (digits, their confidences, rejection reason or None).

    Restricted to digits, Whisper writes digits for any sound; the unrestricted transcript says
    what the sound was. Digits are kept when Whisper, free to write anything, also wrote digits
    (the restricted transcript is kept then: it gets digits right more often). When it wrote
    none, or one among other words ("which one?" is talk), it may still have misheard a lone
    digit as a word ("Bye." for "five", "Kevin" for "seven"): the forced digit is kept if the
    free transcript has at most MAX_WORDS_FOR_A_DIGIT word, there are no more forced digits
    than words that could be digits, and each forced digit is plausible to the unrestricted
    model: talk, a cough or a tone forced into a digit scores about 0.001, a mumbled digit
    0.01-0.3. Measured on the bench's non-digit corpus (tuning seed, and a second draw) and
    the tuning recordings: see bench/speech_accuracy.py's rejection table.
    """
    if vocabulary != "digits":
        # A yes or no forced out of a cough would confirm digits the caller never checked.
        answer = confirmation_answer(heard.text)
        if answer is not None and confirmation_answer(heard.free_text) != answer:
            return "", (), "unclear"
        return "", (), None
    confidences = digit_confidences(heard.tokens, heard.digits)
    talk = spoken_words(heard.free_text)
    free = words_to_digits(heard.free_text)
    # A lone digit among words may be talk ("which one?", "the third floor"): judged below.
    if len(free.digits) > 1 or (free.digits and not free.ignored):
        if not heard.digits:
            return "", (), "unclear"
        pattern = free_digit_pattern(heard.free_text)
        confidences = agreed(confidences, heard.digits, pattern, _support(heard, pattern))
        if min(confidences) < MIN_DIGIT_CONFIDENCE:
            return "", (), "unclear"  # a digit neither decode backs: babble, a runaway loop
        return heard.digits, confidences, None
    reason = "not_digits" if talk else "no_speech"
    if not heard.digits or len(talk) > MAX_WORDS_FOR_A_DIGIT:
        return "", (), reason
    pattern = free_digit_pattern(heard.free_text)
    if (talk or pattern) and len(heard.digits) > len(pattern) + len(talk):
        return "", (), reason  # more digits than sounds that could be digits: "Sure." as "4 4"
    if any(c.isdigit() for c in pattern):  # "For one time, time": a digit run misheard
        confidences = agreed(confidences, heard.digits, pattern, _support(heard, pattern))
    if min(confidences) < MIN_FORCED_CONFIDENCE or heard.no_speech > MAX_NO_SPEECH:
        return "", (), reason if talk else "unclear"
    return heard.digits, confidences, None


# --- combining hypotheses ------------------------------------------------------------------


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions cost 1 each."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def _segment_digits(text: str) -> str:
    digits = words_to_digits(text).digits
    if not digits and re.fullmatch(r"\W*(?:oh|o)\W*", text, re.IGNORECASE):
        return "0"  # a lone "oh" between pauses, in a digit string
    return digits


def combine(
    whole: str, segments: list[list[tuple[str, str, float]]], capacity: list[int]
) -> list[tuple[int, str]]:
    """Pick, for each pause-separated segment, one of its hypotheses or a stretch of ``whole``,
    so that together they stay closest to ``whole``.

    ``segments`` holds each segment's n-best list of (digits, text, score), best first;
    ``capacity`` the most digits a segment can hold (from its duration; a hypothesis with more
    is only used when the segment has no other). A segment's own
    hypothesis costs its edit distance to the stretch of ``whole`` it replaces, plus the score it
    gives up against the segment's best; a segment whose best hypothesis has digits may not pick
    an empty one. Keeping 1..capacity digits of ``whole`` as they are costs ``_KEEP``. So the
    combination fills a segment that the whole-utterance transcript left without a digit, and
    drops a runaway repetition, but does not overrule the whole transcript's digits with a single
    segment's guess. Returns, per segment, (hypothesis index or -1 for "kept", digits).
    """
    options: list[list[tuple[int, str, float]]] = []
    for nbest, room in zip(segments, capacity, strict=True):
        best_score = nbest[0][2]
        keep = [(i, h[0], best_score - h[2]) for i, h in enumerate(nbest)]
        if nbest[0][0]:
            keep = [k for k in keep if k[1]]
        keep = [k for k in keep if len(k[1]) <= room] or keep
        unique: dict[str, tuple[int, str, float]] = {}
        for option in keep:
            unique.setdefault(option[1], option)
        options.append(list(unique.values()))
    length = len(whole)

    @functools.cache
    def best(segment: int, position: int) -> tuple[float, tuple[tuple[int, str], ...]]:
        if segment == len(options):
            return float(length - position), ()
        found: tuple[float, tuple[tuple[int, str], ...]] = (math.inf, ())
        for index, digits, loss in options[segment]:
            for end in range(position, length + 1):
                rest_cost, rest = best(segment + 1, end)
                cost = edit_distance(digits, whole[position:end]) + loss + rest_cost
                if cost < found[0]:
                    found = (cost, ((index, digits), *rest))
        for end in range(position + 1, min(length, position + capacity[segment]) + 1):
            rest_cost, rest = best(segment + 1, end)
            if _KEEP + rest_cost < found[0]:
                found = (_KEEP + rest_cost, ((-1, whole[position:end]), *rest))
        return found

    return list(best(0, 0)[1])


_KEEP = 0.75  # the cost of keeping the whole transcript's digits for a segment (0 < _KEEP < 1)


def fit_count(
    text: str, digits: str, nbest: list[tuple[str, float]], expected: int
) -> tuple[str, str]:
    """The best hypothesis with exactly ``expected`` digits that only adds digits to ``digits``
    (when it is short) or only drops some (when it is long); else the transcript as it is.

    Only for a transcript off by at most a quarter of ``expected`` (at least 1): one further off
    is a caller saying the number in several utterances ("four one five" of ten digits), whose
    n-best may hold a runaway repetition of the right length.
    """
    if not _near_miss(len(digits), expected):
        return text, digits
    for candidate, _ in nbest:
        found = words_to_digits(candidate).digits
        if len(found) != expected:
            continue
        longer, shorter = (found, digits) if len(digits) < expected else (digits, found)
        if _contains_in_order(longer, shorter):
            return candidate.strip(), found
    return text, digits


def _near_miss(count: int, expected: int) -> bool:
    return 0 < abs(count - expected) <= max(1, expected // 4)


def _contains_in_order(longer: str, shorter: str) -> bool:
    rest = iter(longer)
    return all(digit in rest for digit in shorter)


def _looks_wrong(digits: str, spans: list[tuple[int, int]], max_digits: int) -> bool:
    """Signs of Whisper's usual failures on a digit string, judged against the pauses."""
    if len(digits) < len(spans) or len(digits) > max_digits:
        return True  # a dropped digit (or too many)
    return re.search(r"(\d)\1\1\1", digits) is not None  # a digit 4 times: a repetition loop


# --- the recogniser ------------------------------------------------------------------------


class DigitRecognizer:
    """Whisper restricted to digits, decoding in a bounded pool of threads or processes."""

    def __init__(self, decoder: _Decoder | None, settings: RecognizerSettings) -> None:
        """``decoder``: the model, in this process; None with ``settings.processes`` (each
        worker process loads its own)."""
        self._decoder = decoder
        self.settings = settings
        self._executor: Executor
        if decoder is None:
            self._executor = self._worker_processes()
        else:
            self._executor = ThreadPoolExecutor(
                max_workers=settings.workers, thread_name_prefix="whisper"
            )
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("decoded", "fallbacks", "queued", "running", "behind", "refused", "failed"), 0
        )
        self._admission: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @classmethod
    def load(cls, settings: RecognizerSettings | None = None) -> DigitRecognizer:
        """Load the model once (blocking, a second or so: call it in a thread). With
        ``settings.processes``, start the worker processes and wait until each has loaded it."""
        settings = settings or RecognizerSettings()
        if not settings.processes:
            return cls(_Decoder(settings), settings)
        resolve_model(settings.model)  # a missing model fails here, with its own message
        recognizer = cls(None, settings)
        try:
            # One task per worker while the others are busy with theirs: every process starts.
            ready = [recognizer._executor.submit(time.sleep, 0.2) for _ in range(settings.workers)]
            for started in ready:
                started.result()
        except BrokenProcessPool:
            recognizer._executor.shutdown(wait=True)
            raise RuntimeError(
                f"a speech worker process could not load the Whisper model {settings.model!r} "
                "(its error is on stderr)"
            ) from None
        return recognizer

    @property
    def stats(self) -> RecognizerStats:
        with self._lock:
            c = dict(self._counts)
        if self.settings.processes:
            # A worker process does not say when it starts a decode: of the requests in
            # flight, as many as there are workers are taken to be running.
            c["running"] = min(c["queued"], self.settings.workers)
            c["queued"] -= c["running"]
        return RecognizerStats(
            decoded=c["decoded"],
            fallbacks=c["fallbacks"],
            queued_now=c["queued"],
            running_now=c["running"],
            behind_realtime=c["behind"],
            refused_overloaded=c["refused"],
            failed=c["failed"],
        )

    async def recognize(
        self,
        audio: npt.NDArray[np.floating[Any]],
        *,
        max_digits: int = 64,
        vocabulary: Vocabulary = "digits",
        expected_digits: int | None = None,
    ) -> Recognition:
        """Recognise one utterance (float mono 16 kHz, -1..1) without blocking the event loop.

        ``expected_digits``: how many digits the entry still needs, when that count is exact
        (``num_digits``); a hint against dropped digits, never a requirement. Raises
        :class:`ValueError` for audio that is not a finite 1-D float array; an empty array
        gives an empty result. Refuses the utterance (``rejected="overloaded"``, at once) when
        ``max_queue`` requests are already waiting.
        """
        samples = _check_audio(audio)
        if self._closed:
            raise RuntimeError("the recognizer is closed")
        admission = self._admission_for(asyncio.get_running_loop())
        submitted = time.perf_counter()
        if admission.locked():
            self._count("refused")
            log.warning(
                "speech: %d utterances already wait for a decoder; this one is refused",
                self.settings.max_queue,
            )
            return Recognition(
                text="",
                audio_ms=len(samples) * 1000 // SAMPLE_RATE,
                queued_ms=0.0,
                decode_ms=0.0,
                rejected="overloaded",
            )
        await admission.acquire()
        self._count("queued")
        job = (samples, max_digits, vocabulary, expected_digits, submitted)
        executor = self._executor
        try:
            if self._decoder is None:
                future = asyncio.get_running_loop().run_in_executor(
                    executor, _recognize_in_worker_process, *job
                )
                future.add_done_callback(self._count_worker_result)
            else:
                future = asyncio.get_running_loop().run_in_executor(executor, self._run, *job)
        except BaseException as exc:
            self._count("queued", -1)
            admission.release()
            if isinstance(exc, BrokenProcessPool):
                self._count("failed")
                self._replace_broken(executor)
            raise
        future.add_done_callback(lambda done: _release(done, admission))
        # A cancelled caller does not cancel the decode: its slot frees when the decode ends.
        try:
            return await asyncio.shield(future)
        except BrokenProcessPool:
            self._replace_broken(executor)
            raise

    def recognize_blocking(
        self,
        audio: npt.NDArray[np.floating[Any]],
        *,
        max_digits: int = 64,
        vocabulary: Vocabulary = "digits",
        expected_digits: int | None = None,
    ) -> Recognition:
        """The same as :meth:`recognize`, waiting in the calling thread (benchmarks, scripts)."""
        samples = _check_audio(audio)
        self._count("queued")
        job = (samples, max_digits, vocabulary, expected_digits, time.perf_counter())
        if self._decoder is None:
            future = self._executor.submit(_recognize_in_worker_process, *job)
            wait([future])  # then counted, before the caller can read the stats
            self._count_worker_result(future)
            return future.result()
        return self._run(*job)

    def transcribe_blocking(
        self, audio: npt.NDArray[np.floating[Any]], *, max_digits: int = 64
    ) -> str:
        """The raw transcript of one utterance, in the calling thread."""
        return self.recognize_blocking(audio, max_digits=max_digits).text

    async def close(self) -> None:
        """Finish the decodes in progress and stop the workers."""
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True)

    # --- internals ---

    def _admission_for(self, loop: asyncio.AbstractEventLoop) -> asyncio.Semaphore:
        if self._admission is None or self._loop is not loop:
            self._loop = loop
            self._admission = asyncio.Semaphore(self.settings.workers + self.settings.max_queue)
        return self._admission

    def _count(self, name: str, delta: int = 1) -> None:
        with self._lock:
            self._counts[name] += delta

    def _run(
        self,
        audio: npt.NDArray[np.float32],
        max_digits: int,
        vocabulary: Vocabulary,
        expected_digits: int | None,
        submitted: float,
    ) -> Recognition:
        """One decode in a worker thread of this process, counted."""
        with self._lock:
            self._counts["queued"] -= 1
            self._counts["running"] += 1
        try:
            result = self._recognized(audio, max_digits, vocabulary, expected_digits, submitted)
        except Exception:
            self._count("failed")
            raise
        finally:
            self._count("running", -1)
        self._count_result(result)
        return result

    def _count_worker_result(self, done: Future[Recognition] | asyncio.Future[Recognition]) -> None:
        """A worker process's decode, counted when it comes back."""
        self._count("queued", -1)
        if done.cancelled() or done.exception() is not None:
            self._count("failed")
        else:
            self._count_result(done.result())

    def _count_result(self, result: Recognition) -> None:
        with self._lock:
            self._counts["decoded"] += 1
            self._counts["fallbacks"] += result.fallback
        slow = result.decode_ms > max(result.audio_ms, 1)
        if slow or result.queued_ms > self.settings.queue_warn_ms:
            self._count("behind")
            log.warning(
                "speech: behind real time: %d ms of audio waited %.0f ms and decoded in %.0f ms",
                result.audio_ms,
                result.queued_ms,
                result.decode_ms,
            )

    def _worker_processes(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            self.settings.workers,
            # Not fork: this process runs threads (the event loop's, CTranslate2's).
            mp_context=multiprocessing.get_context("forkserver"),
            initializer=_load_in_worker_process,
            initargs=(replace(self.settings, processes=False),),
        )

    def _replace_broken(self, broken: Executor) -> None:
        """A worker process died (killed, out of memory): the pool refuses all work from then
        on, so a new one takes its place; the utterances it held have failed."""
        if self._executor is broken and not self._closed:
            log.error("speech: a worker process died; starting new ones")
            self._executor = self._worker_processes()
            broken.shutdown(wait=False)

    @property
    def _model_here(self) -> _Decoder:
        if self._decoder is None:
            raise RuntimeError("this recognizer decodes in its worker processes")
        return self._decoder

    def _recognized(
        self,
        audio: npt.NDArray[np.float32],
        max_digits: int,
        vocabulary: Vocabulary,
        expected_digits: int | None,
        submitted: float,
    ) -> Recognition:
        """Decode and judge one utterance, here and now (any worker: thread or process)."""
        started = time.perf_counter()
        heard = self._decode(audio, max(1, max_digits), vocabulary, expected_digits)
        digits, confidences, rejected = judge(heard, vocabulary)
        return Recognition(
            text=heard.text,
            audio_ms=round(len(audio) * 1000 / SAMPLE_RATE),
            # perf_counter is the system's monotonic clock: it spans processes.
            queued_ms=(started - submitted) * 1000,
            decode_ms=(time.perf_counter() - started) * 1000,
            digits=digits,
            segments=heard.segments,
            fallback=heard.fallback,
            confidences=confidences,
            rejected=rejected,
            heard=heard.free_text,
        )

    def _decode(
        self,
        audio: npt.NDArray[np.float32],
        max_digits: int,
        vocabulary: Vocabulary,
        expected_digits: int | None,
    ) -> Heard:
        if len(audio) == 0:
            return Heard()
        longest = _MAX_WINDOW_SAMPLES - 2 * int(SAMPLE_RATE * self.settings.padding_ms / 1000)
        if len(audio) > longest:
            parts = [
                self._decode(chunk, max_digits, vocabulary, None)
                for chunk in _chunks(audio, longest)
            ]
            return Heard.joined(parts)
        audio = normalise_level(audio)
        spans = speech_segments(audio, self.settings.min_pause_ms)
        if not spans:
            return Heard()  # silence (or a click): nothing to decode
        decoder = self._model_here
        seconds = len(audio) / SAMPLE_RATE
        # No one says more than ~5 digits a second; 2 tokens a digit ("5," / " five").
        budget = min(max_digits, math.ceil(5 * seconds) + 2)
        mel = decoder.mel(audio)
        encoded = decoder.encode(mel)
        started = decoder.start_free_transcript(encoded, 3 * budget + 16)
        (nbest,) = decoder.search(
            encoded,
            1,
            vocabulary=vocabulary,
            max_new_tokens=3 * budget + 8,  # up to 3 tokens a digit: " 4", ",", and a space
            hypotheses=5,
        )
        free = decoder.free_transcript(started)
        free_text = free.text
        talk = spoken_words(free_text) if vocabulary == "digits" else []
        mixed = bool(talk) and bool(words_to_digits(free_text).digits)
        if talk and not mixed and len(talk) > MAX_WORDS_FOR_A_DIGIT:
            # Talk without digits ("I don't have it here"): judged not_digits.
            return Heard(
                segments=len(spans),
                free_text=free_text,
                free_score=free.score,
                no_speech=free.no_speech,
            )
        suppress = None
        if mixed:
            # Decoded again with the words around the digits allowed, so they stay words.
            suppress = decoder.allowing(vocabulary, framing_words(free_text))
            (nbest,) = decoder.search(
                encoded,
                1,
                vocabulary=vocabulary,
                max_new_tokens=3 * budget + 16,
                hypotheses=5,
                suppress=suppress,
            )
        # There is speech: take the best hypothesis with 1..max_digits digits; when none has,
        # a decode that may only write single digits, at most max_digits of them.
        fits = [t for t, _ in nbest if 1 <= len(words_to_digits(t).digits) <= max_digits]
        if vocabulary != "digits":
            fits = [nbest[0][0]]  # "yes" has no digit and is the answer
        text = (fits[0] if fits else nbest[0][0]).strip()
        digits = words_to_digits(text).digits
        if not fits and not mixed:
            (strict,) = decoder.search(
                encoded,
                1,
                vocabulary="single_digits",
                max_new_tokens=min(budget, max_digits) + 1,
                hypotheses=1,
            )
            if words_to_digits(strict[0][0]).digits:
                text = strict[0][0].strip()
                digits = words_to_digits(text).digits
        # Digits are added only where some were said without a pause between them (a run may
        # have merged): a transcript with a digit for each pause-separated stretch of speech
        # dropped none, and the digits still missing come in another utterance. Not in a turn
        # with a phrase around the digits ("that's it", "the number is"): there the added digit
        # was as often wrong as right (4 of 8 on the mixed corpus), and a short entry is a
        # retry, a wrong one is not. A lone word next to them ("7 2 2 bye", "Text 3, 0, 1") is
        # more likely the missing digit misheard.
        may_add = not mixed or len(framing_words(free_text).split()) <= 1
        if (
            vocabulary == "digits"
            and expected_digits is not None
            and (len(digits) > expected_digits or (may_add and len(digits) > len(spans)))
        ):
            text, digits = fit_count(text, digits, nbest, expected_digits)
            if _near_miss(len(digits), expected_digits):  # a wider search, only then
                (wider,) = decoder.search(
                    encoded,
                    1,
                    vocabulary=vocabulary,
                    max_new_tokens=3 * budget + 8,
                    hypotheses=2 * self.settings.beam_size,
                    beam_size=2 * self.settings.beam_size,
                    suppress=suppress,
                )
                text, digits = fit_count(text, digits, wider, expected_digits)
        fallback = False
        if (
            vocabulary == "digits"
            and not mixed  # a segment of talk would be forced into a digit
            and self.settings.segment_fallback
            and len(spans) <= max_digits + 4  # more is not a digit string: noise, or talk
            and _looks_wrong(digits, spans, max_digits)
        ):
            combined = self._per_segment(audio, spans, digits, max_digits, expected_digits)
            if combined is not None:
                text, digits, fallback = combined, words_to_digits(combined).digits, True
        frames = min(
            mel.shape[1], math.ceil(len(audio) / _HOP) + 2 * self.settings.padding_ms // 10
        )
        pattern = free_digit_pattern(free_text) if vocabulary == "digits" else ""
        # Each digit's confidence comes from the free transcript where it wrote the digit, and
        # from the forced digit's own probability elsewhere: each alignment only when needed.
        read_free = any(c.isdigit() for c in pattern) and not free.tokens
        read_forced = bool(text) and pattern != digits
        return Heard(
            text=text,
            digits=digits,
            segments=len(spans),
            fallback=fallback,
            free_text=free_text,
            no_speech=free.no_speech,
            score=nbest[0][1],
            tokens=tuple(decoder.token_probabilities(encoded, text, frames)) if read_forced else (),
            free_score=free.score,
            free_tokens=(
                tuple(decoder.token_probabilities(encoded, free_text, frames))
                if read_free
                else free.tokens
            ),
        )

    def _per_segment(
        self,
        audio: npt.NDArray[np.float32],
        spans: list[tuple[int, int]],
        digits: str,
        max_digits: int,
        expected_digits: int | None,
    ) -> str | None:
        """The pause-separated segments decoded one by one and merged with the whole
        transcript's ``digits`` (see :func:`combine`); None when that made it worse."""
        decoder = self._model_here
        pieces = _cut_at_pauses(len(audio), spans)
        longest_piece = max(b - a for a, b in pieces) / SAMPLE_RATE
        per_segment = decoder.generate(
            [decoder.mel(audio[a:b]) for a, b in pieces],
            vocabulary="digits",
            max_new_tokens=3 * min(max_digits, math.ceil(5 * longest_piece) + 2) + 8,
            hypotheses=3,
        )
        options = [[(_segment_digits(t), t.strip(), sc) for t, sc in nb] for nb in per_segment]
        capacity = [max(1, round(3 * (b - a) / SAMPLE_RATE)) for a, b in spans]  # 3 digits/s
        chosen = combine(digits, options, capacity)
        texts = [options[i][k][1] if k >= 0 else kept for i, (k, kept) in enumerate(chosen)]
        combined = " ".join(t for t in texts if t)
        combined_digits = words_to_digits(combined).digits
        if len(combined_digits) > max_digits >= len(digits) or (
            len(digits) == expected_digits != len(combined_digits)
        ):
            return None
        return combined


# The recogniser of a worker process (``processes``): loaded once, when the process starts.
_worker_recognizer: DigitRecognizer | None = None


def _load_in_worker_process(settings: RecognizerSettings) -> None:
    global _worker_recognizer
    _worker_recognizer = DigitRecognizer.load(settings)


def _recognize_in_worker_process(
    audio: npt.NDArray[np.float32],
    max_digits: int,
    vocabulary: Vocabulary,
    expected_digits: int | None,
    submitted: float,
) -> Recognition:
    if _worker_recognizer is None:
        raise RuntimeError("this speech worker process has no model")
    return _worker_recognizer._recognized(audio, max_digits, vocabulary, expected_digits, submitted)


def _release(done: asyncio.Future[Recognition], admission: asyncio.Semaphore) -> None:
    admission.release()
    if not done.cancelled():
        done.exception()  # retrieved: a cancelled caller's failure is logged by _run's counters


def _check_audio(audio: object) -> npt.NDArray[np.float32]:
    if not isinstance(audio, np.ndarray):
        raise ValueError(f"audio must be a numpy array, not {type(audio).__name__}")
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(
            f"audio must be float samples in -1..1 (float32), not {audio.dtype}; "
            "convert int16 PCM with pcm.astype(np.float32) / 32768"
        )
    if audio.ndim == 2 and 1 in audio.shape:
        audio = audio.reshape(-1)
    if audio.ndim != 1:
        raise ValueError(f"audio must be mono (1-D), got shape {audio.shape}")
    samples = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise ValueError("audio contains NaN or infinite samples")
    return samples
