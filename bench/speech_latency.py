"""Spoken-digit latency, concurrency and memory of the recogniser on this machine.

1. End of speech -> digits: one caller at a time, 4- and 10-digit utterances (espeak-ng through a
   telephone channel and the voice activity segmenter, as in speech_accuracy.py) handed to
   ``recognize()`` the way the speech listener does at the end of an utterance, for an entry with
   ``num_digits`` = their length; median and p95 of the time until the digits are back.
   The listener's voice-activity detector adds its own end-of-speech wait (``end_silence_ms``,
   500 ms by default) before that; it is not counted here.
2. Concurrent callers: K simulated callers each speak a stream of utterances in real time (an
   utterance lasts its duration, then 1 s of silence) and hand each one over at its end without
   waiting for the result. K keeps up when the p95 latency stays under ``--keep-up-s`` and nothing
   is left queued when the last caller stops. The largest such K is reported.
3. Memory: VmRSS and VmHWM of this process with the model loaded, before and after decoding.

    .venv/bin/python bench/speech_latency.py [--workers 2 --threads 1] [--max-k 40]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from speech_accuracy import (
    WORDS,
    Audio,
    require_tools,
    speak,
    spoken_form,
    telephone,
)
from speech_accuracy import utterances as segmented

from ari_app.speech.recognizer import SAMPLE_RATE, DigitRecognizer, RecognizerSettings


def memory() -> str:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return f"VmRSS {fields['VmRSS']:.0f} MB, VmHWM (peak) {fields['VmHWM']:.0f} MB"


def utterances(work: Path, count: int, length: int, seed: int) -> list[tuple[str, Audio]]:
    rng = random.Random(seed)
    noise_rng = np.random.default_rng(seed)
    out = []
    raw = work / "espeak.wav"
    for i in range(count):
        digits = "".join(rng.choice("0123456789") for _ in range(length))
        text = spoken_form(digits, rng) if length > 1 else WORDS[int(digits)]
        voice = ("en-us", "en", "en+f3", "en+m3")[i % 4]
        speak(text, voice, rng.randint(150, 180), raw)
        # As the listener hands it over: one utterance, cut by the segmenter.
        (utterance,) = segmented(telephone(raw, "clean", work, noise_rng))
        out.append((digits, utterance))
    return out


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


async def one_at_a_time(
    recognizer: DigitRecognizer, clips: list[tuple[str, Audio]], rounds: int
) -> None:
    for label, subset in (
        ("4 digits", [c for c in clips if len(c[0]) == 4]),
        ("10 digits", [c for c in clips if len(c[0]) == 10]),
    ):
        latencies: list[float] = []
        right = 0
        fallbacks = 0
        for _ in range(rounds):
            for digits, audio in subset:
                started = time.perf_counter()
                result = await recognizer.recognize(
                    audio, max_digits=len(digits), expected_digits=len(digits)
                )
                latencies.append((time.perf_counter() - started) * 1000)
                right += result.digits == digits
                fallbacks += result.fallback
        seconds = statistics.mean(len(a) / SAMPLE_RATE for _, a in subset)
        print(
            f"  {label:<10} n={len(latencies):<3} audio {seconds:.1f} s  "
            f"median {statistics.median(latencies):5.0f} ms  p95 {percentile(latencies, 95):5.0f} ms"
            f"  max {max(latencies):5.0f} ms  right {right}/{len(latencies)}  fallbacks {fallbacks}"
        )


async def callers(
    recognizer: DigitRecognizer,
    clips: list[tuple[str, Audio]],
    k: int,
    per_caller: int,
    gap_s: float,
) -> tuple[list[float], int, float]:
    """K callers speaking in real time; latency of each utterance from its end to its digits."""
    latencies: list[float] = []
    wrong = 0
    pending: list[asyncio.Task[None]] = []

    async def decode(digits: str, audio: Audio) -> None:
        nonlocal wrong
        ended = time.perf_counter()
        result = await recognizer.recognize(
            audio, max_digits=len(digits), expected_digits=len(digits)
        )
        latencies.append(time.perf_counter() - ended)
        wrong += result.digits != digits

    async def caller(index: int) -> None:
        rng = random.Random(index)
        await asyncio.sleep(rng.uniform(0, 2.0))  # callers do not start in lockstep
        for _ in range(per_caller):
            digits, audio = rng.choice(clips)
            await asyncio.sleep(len(audio) / SAMPLE_RATE)  # the caller is speaking
            pending.append(asyncio.create_task(decode(digits, audio)))
            await asyncio.sleep(gap_s)

    await asyncio.gather(*(caller(i) for i in range(k)))
    stopped = time.perf_counter()
    await asyncio.gather(*pending)
    drain = time.perf_counter() - stopped
    return latencies, wrong, drain


async def run(args: argparse.Namespace) -> None:
    require_tools()
    logging.getLogger("ari_app.speech.recognizer").setLevel(logging.ERROR)
    print(f"before loading: {memory()}")
    settings = RecognizerSettings(
        threads=args.threads, workers=args.workers, max_queue=args.max_queue, model=args.model
    )
    started = time.perf_counter()
    recognizer = await asyncio.to_thread(DigitRecognizer.load, settings)
    print(f"model loaded in {time.perf_counter() - started:.1f} s: {memory()}")
    print(f"settings: {settings}")
    with tempfile.TemporaryDirectory(prefix="speech-latency-") as tmp:
        clips = utterances(Path(tmp), 8, 4, seed=1) + utterances(Path(tmp), 8, 10, seed=2)
    await recognizer.recognize(clips[0][1], max_digits=4, expected_digits=4)  # warm-up

    print("\nEnd of speech -> digits, one caller at a time:")
    await one_at_a_time(recognizer, clips, args.rounds)
    print(f"  memory after decoding: {memory()}")

    print(
        f"\nConcurrent callers ({args.per_caller} utterances each, {args.gap_s:.1f} s apart, "
        f"keeping up = p95 <= {args.keep_up_s:.1f} s and no backlog):"
    )
    best = 0
    k = args.start_k
    while k <= args.max_k:
        latencies, wrong, drain = await callers(recognizer, clips, k, args.per_caller, args.gap_s)
        p50, p95 = statistics.median(latencies), percentile(latencies, 95)
        ok = p95 <= args.keep_up_s and drain <= args.keep_up_s
        print(
            f"  K={k:<3} utterances {len(latencies):<4} median {p50 * 1000:5.0f} ms  "
            f"p95 {p95 * 1000:6.0f} ms  drain {drain * 1000:6.0f} ms  wrong {wrong:<3} "
            f"{'keeps up' if ok else 'FALLS BEHIND'}"
        )
        if not ok:
            break
        best = k
        k = k + args.step_k
    stats = recognizer.stats
    print(
        f"\nlargest K that keeps up: {best}; recogniser stats: decoded {stats.decoded}, "
        f"fallbacks {stats.fallbacks}, behind real time {stats.behind_realtime}, "
        f"waited for room {stats.waited_for_room}"
    )
    print(f"memory at the end: {memory()}")
    await recognizer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="")
    parser.add_argument("--workers", type=int, default=RecognizerSettings.workers)
    parser.add_argument("--threads", type=int, default=RecognizerSettings.threads)
    parser.add_argument("--max-queue", type=int, default=RecognizerSettings.max_queue)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the 8+8 utterances")
    parser.add_argument("--start-k", type=int, default=2)
    parser.add_argument("--step-k", type=int, default=2)
    parser.add_argument("--max-k", type=int, default=40)
    parser.add_argument("--per-caller", type=int, default=4)
    parser.add_argument("--gap-s", type=float, default=1.0)
    parser.add_argument("--keep-up-s", type=float, default=2.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
