"""Spoken-digit latency, concurrency and memory of the recogniser on this machine, one model a run.

Same utterances, settings and method for every ``--model``, so two runs compare the models:

1. End of speech -> digits: one caller at a time. 4- and 10-digit numbers read by espeak-ng
   voices ("five five five, one two three four"), through bench/corpora.py's telephone line at a
   normal (-20 dBFS) and a quiet (-45 dBFS) level with line noise at corpora.LINE_NOISE_DBFS, cut
   by the call's voice activity segmenter (one utterance each), are handed to ``recognize()`` the
   way the speech listener does at the end of an utterance, for an entry with ``num_digits`` =
   their length; median and p95 of the time until the digits are back. The segmenter's own
   end-of-speech wait (``end_silence_ms``, 500 ms) comes before that and is not counted.
2. Simultaneous callers in real time: K simulated callers each speak a stream of those
   utterances (an utterance lasts its duration, then ``--gap-s`` of silence) and hand each one
   over at its end without waiting for the result. K keeps up when the p95 latency stays under
   ``--keep-up-s`` and nothing is left queued ``--keep-up-s`` after the last caller stops. K
   doubles from ``--start-k`` until it falls behind, then the largest K that keeps up is found
   between the last two (bisection); that K is reported.
   While they speak, a probe task measures the event loop's lag (how late a 5 ms sleep wakes
   up): what the decodes cost the rest of the server (RTP, keys, hand-backs) on the same loop.
3. Memory: VmRSS of this process before and after loading the model and after decoding, and the
   peak (VmHWM) at the end; with ``--processes`` also the worker processes' VmRSS.

``--processes`` decodes in worker processes (SPEECH_PROCESSES=on) instead of threads.

    .venv/bin/python bench/speech_latency.py [--model base] [--json out.json]
    .venv/bin/python bench/speech_latency.py --processes             # worker processes
    .venv/bin/python bench/speech_latency.py --quick                 # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from corpora import (
    LINE_NOISE_DBFS,
    PITCH,
    WPM,
    _render,
    _Say,
    available_voices,
    spoken_form,
    telephone_line,
)
from speech_accuracy import MODELS, Audio, require_tools, utterances
from speech_tables import (
    Column,
    Table,
    machine,
    machine_line,
    median,
    pct,
    percentile,
    write_json,
)

from ari_app.speech.recognizer import SAMPLE_RATE, DigitRecognizer, RecognizerSettings
from devtools.processes import descendants

LEVELS = (-20.0, -45.0)  # a normal and a quiet caller
LENGTHS = (4, 10)


@dataclass(frozen=True)
class Spoken:
    digits: str
    level_dbfs: float
    audio: Audio  # one utterance, as the segmenter delivers it


def memory_mb(pid: int | str = "self") -> dict[str, float]:
    fields = {}
    for entry in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = entry.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    root = None if pid == "self" else int(pid)
    fields["workers_rss"] = sum(memory_mb(child)["VmRSS"] for child in descendants(root))
    return fields


def memory_text(fields: dict[str, float]) -> str:
    workers = f", worker processes {fields['workers_rss']:.0f} MB" if fields["workers_rss"] else ""
    return f"VmRSS {fields['VmRSS']:.0f} MB, VmHWM (peak so far) {fields['VmHWM']:.0f} MB{workers}"


def spoken_utterances(work: Path, per_length: int, seed: int = 1) -> list[Spoken]:
    """``per_length`` numbers of each of LENGTHS, each at every LEVELS level; only numbers the
    segmenter delivers as one utterance at every level are kept (the same ones for every model)."""
    rng = np.random.default_rng(seed)
    voices = available_voices()
    out: list[Spoken] = []
    line_rng = np.random.default_rng(seed + 1)
    for length in LENGTHS:
        kept = 0
        for attempt in range(4 * per_length):
            if kept == per_length:
                break
            digits = "".join(str(d) for d in rng.integers(0, 10, length))
            say = _Say(
                spoken_form(digits, rng),
                voices[attempt % len(voices)],
                int(rng.integers(WPM[0], WPM[1] + 1)),
                int(rng.integers(PITCH[0], PITCH[1] + 1)),
            )
            audio, rate = _render(work, [say])[say]
            pieces = [
                utterances(
                    telephone_line(
                        audio, rate, level_dbfs=level, noise_dbfs=LINE_NOISE_DBFS, rng=line_rng
                    )
                )
                for level in LEVELS
            ]
            if all(len(p) == 1 for p in pieces):
                out += [Spoken(digits, lv, p[0]) for lv, p in zip(LEVELS, pieces, strict=True)]
                kept += 1
    return out


async def one_at_a_time(
    recognizer: DigitRecognizer, spoken: Sequence[Spoken], rounds: int
) -> Table:
    table = Table(
        "end_of_speech",
        "1. END OF SPEECH -> DIGITS, one caller at a time (recognize() of one segmented utterance, "
        f"entry num_digits = its length; line noise {LINE_NOISE_DBFS:g} dBFS; the segmenter's "
        "500 ms end-of-speech wait not included)",
        [
            Column("n", "n", "d"),
            Column("audio_s", "audio s", ".1f"),
            Column("median_ms", "median ms", ".0f"),
            Column("p95_ms", "p95 ms", ".0f"),
            Column("max_ms", "max ms", ".0f"),
            Column("right_pct", "right %", ".0f"),
            Column("fallbacks", "fallbacks", "d"),
        ],
        label_header="utterance",
    )
    for length in LENGTHS:
        for level in LEVELS:
            subset = [s for s in spoken if len(s.digits) == length and s.level_dbfs == level]
            if not subset:
                continue
            latencies: list[float] = []
            right = fallbacks = 0
            for _ in range(rounds):
                for s in subset:
                    started = time.perf_counter()
                    result = await recognizer.recognize(
                        s.audio, max_digits=length, expected_digits=length
                    )
                    latencies.append((time.perf_counter() - started) * 1000)
                    right += result.digits == s.digits
                    fallbacks += result.fallback
            table.add(
                f"{length} digits @ {level:g} dBFS",
                n=len(latencies),
                audio_s=float(np.mean([len(s.audio) / SAMPLE_RATE for s in subset])),
                median_ms=median(latencies),
                p95_ms=percentile(latencies, 95),
                max_ms=max(latencies),
                right_pct=pct(right, len(latencies)),
                fallbacks=fallbacks,
            )
    return table


@dataclass(frozen=True)
class Load:
    k: int
    latencies: list[float]  # seconds
    wrong: int
    drain_s: float
    loop_lag: list[float]  # seconds a 5 ms sleep woke up late, sampled while they spoke


async def loop_lag_probe(stop: asyncio.Event, lags: list[float], interval: float = 0.005) -> None:
    while not stop.is_set():
        asked = time.perf_counter()
        await asyncio.sleep(interval)
        lags.append(time.perf_counter() - asked - interval)


async def callers(
    recognizer: DigitRecognizer, spoken: Sequence[Spoken], k: int, per_caller: int, gap_s: float
) -> Load:
    """K callers speaking in real time; latency of each utterance from its end to its digits."""
    latencies: list[float] = []
    wrong = 0
    pending: list[asyncio.Task[None]] = []

    async def decode(s: Spoken) -> None:
        nonlocal wrong
        ended = time.perf_counter()
        n = len(s.digits)
        result = await recognizer.recognize(s.audio, max_digits=n, expected_digits=n)
        latencies.append(time.perf_counter() - ended)
        wrong += result.digits != s.digits

    async def caller(index: int) -> None:
        rng = random.Random(index)
        await asyncio.sleep(rng.uniform(0, 2.0))  # callers do not start in lockstep
        for _ in range(per_caller):
            s = rng.choice(spoken)
            await asyncio.sleep(len(s.audio) / SAMPLE_RATE)  # the caller is speaking
            pending.append(asyncio.create_task(decode(s)))
            await asyncio.sleep(gap_s)

    stop, lags = asyncio.Event(), list[float]()
    probe = asyncio.create_task(loop_lag_probe(stop, lags))
    await asyncio.gather(*(caller(i) for i in range(k)))
    stopped = time.perf_counter()
    await asyncio.gather(*pending)
    stop.set()
    await probe
    return Load(k, latencies, wrong, time.perf_counter() - stopped, lags)


async def concurrency(
    recognizer: DigitRecognizer, spoken: Sequence[Spoken], args: argparse.Namespace
) -> tuple[Table, int]:
    table = Table(
        "callers",
        f"2. SIMULTANEOUS CALLERS in real time ({args.per_caller} utterances each, "
        f"{args.gap_s:g} s apart, 4 and 10 digits at both levels; keeps up = p95 <= "
        f"{args.keep_up_s:g} s and the backlog drained within {args.keep_up_s:g} s)",
        [
            Column("utterances", "utts", "d"),
            Column("median_ms", "median ms", ".0f"),
            Column("p95_ms", "p95 ms", ".0f"),
            Column("drain_ms", "drain ms", ".0f"),
            Column("wrong", "wrong", "d"),
            Column("loop_lag_p99_ms", "loop lag p99 ms", ".1f"),
            Column("loop_lag_max_ms", "loop lag max ms", ".1f"),
            Column("verdict", "verdict", ""),
        ],
        label_header="K",
    )
    tried: dict[int, bool] = {}

    async def probe(k: int) -> bool:
        load = await callers(recognizer, spoken, k, args.per_caller, args.gap_s)
        p95 = percentile(load.latencies, 95) or 0.0
        ok = bool(p95 <= args.keep_up_s and load.drain_s <= args.keep_up_s)
        table.add(
            f"K={k}",
            k=k,
            utterances=len(load.latencies),
            median_ms=(median(load.latencies) or 0.0) * 1000,
            p95_ms=p95 * 1000,
            drain_ms=load.drain_s * 1000,
            wrong=load.wrong,
            loop_lag_p99_ms=(percentile(load.loop_lag, 99) or 0.0) * 1000,
            loop_lag_max_ms=max(load.loop_lag, default=0.0) * 1000,
            verdict="keeps up" if ok else "FALLS BEHIND",
            keeps_up=ok,
        )
        print(f"  K={k}: p95 {p95 * 1000:.0f} ms, {'keeps up' if ok else 'falls behind'}")
        tried[k] = ok
        return ok

    best, k = 0, args.start_k
    while k <= args.max_k and await probe(k):  # doubling...
        best, k = k, 2 * k
    high = min(k, args.max_k + 1)  # ... then bisect between the last that kept up and the first not
    while high - best > 1:
        middle = (best + high) // 2
        if await probe(middle):
            best = middle
        else:
            high = middle
    if best == args.max_k:
        table.notes.append(f"--max-k {args.max_k} reached: the machine may keep up with more")
    table.rows.sort(key=lambda row: int(str(row["label"])[2:]))
    table.notes.append(f"largest K that keeps up: {best}")
    return table, best


async def run(args: argparse.Namespace) -> None:
    require_tools()
    logging.getLogger("ari_app.speech.recognizer").setLevel(logging.ERROR)
    host = machine()
    settings = RecognizerSettings(
        model=args.model,
        threads=args.threads,
        workers=args.workers,
        max_queue=args.max_queue,
        processes=args.processes,
        free_beam_size=args.free_beam,
    )
    print(f"SPEECH LATENCY - model {args.model!r}{' (QUICK smoke run)' if args.quick else ''}")
    print(machine_line(host))
    shared = " (a VM: vCPUs, shared with other jobs)" if host["virtual_machine"] else ""
    print(
        f"cores: '{host['cpu_count']} cores' means os.cpu_count() = {host['cpu_count']}, the CPUs "
        f"the OS shows{shared}; the recogniser runs {settings.workers} decode(s) at once x "
        f"{settings.threads} thread(s) each, in {'worker processes' if settings.processes else 'threads'}"
    )
    print(f"settings: {settings}")
    memory: dict[str, float] = {"before_load_rss_mb": memory_mb()["VmRSS"]}
    started = time.perf_counter()
    recognizer = await asyncio.to_thread(DigitRecognizer.load, settings)
    load_s = time.perf_counter() - started
    after_load = memory_mb()
    memory["after_load_rss_mb"] = after_load["VmRSS"]
    print(f"model loaded in {load_s:.1f} s: {memory_text(after_load)}")
    with tempfile.TemporaryDirectory(prefix="speech-latency-") as tmp:
        spoken = spoken_utterances(args.work or Path(tmp), args.per_length)
    counts = {n: sum(len(s.digits) == n for s in spoken) // len(LEVELS) for n in LENGTHS}
    print(
        "utterances: "
        + ", ".join(f"{c} numbers of {n} digits" for n, c in counts.items())
        + f", each at {' and '.join(f'{lv:g}' for lv in LEVELS)} dBFS",
        flush=True,
    )
    await recognizer.recognize(spoken[0].audio, max_digits=4, expected_digits=4)  # warm-up

    tables = [await one_at_a_time(recognizer, spoken, args.rounds)]
    after_decoding = memory_mb()
    memory["after_decoding_rss_mb"] = after_decoding["VmRSS"]
    tables[0].notes.append(f"memory after decoding: {memory_text(after_decoding)}")
    print(f"\n{tables[0].render()}\n", flush=True)

    table, best = await concurrency(recognizer, spoken, args)
    tables.append(table)
    print(f"\n{table.render()}")
    stats = recognizer.stats
    await recognizer.close()
    end = memory_mb()
    memory["end_rss_mb"] = end["VmRSS"]
    memory["workers_after_decoding_rss_mb"] = after_decoding["workers_rss"]
    memory["peak_hwm_mb"] = end["VmHWM"]
    mem = Table(
        "memory",
        "3. MEMORY of this process and its worker processes (MB)",
        [
            Column("rss_mb", "VmRSS", ".0f"),
            Column("hwm_mb", "VmHWM (peak)", ".0f"),
            Column("workers_rss_mb", "worker processes VmRSS", ".0f"),
        ],
        label_header="when",
    )
    mem.add("before loading", rss_mb=memory["before_load_rss_mb"])
    mem.add(
        "after loading",
        rss_mb=memory["after_load_rss_mb"],
        hwm_mb=after_load["VmHWM"],
        workers_rss_mb=after_load["workers_rss"],
    )
    mem.add(
        "after table 1",
        rss_mb=memory["after_decoding_rss_mb"],
        hwm_mb=after_decoding["VmHWM"],
        workers_rss_mb=after_decoding["workers_rss"],
    )
    mem.add("at the end", rss_mb=memory["end_rss_mb"], hwm_mb=memory["peak_hwm_mb"])
    tables.append(mem)
    print(f"\n{mem.render()}")
    elapsed = time.perf_counter() - started
    print(
        f"\nlargest K that keeps up: {best}; recogniser: decoded {stats.decoded}, fallbacks "
        f"{stats.fallbacks}, behind real time {stats.behind_realtime}, refused (overloaded) "
        f"{stats.refused_overloaded}; total {elapsed:.0f} s"
    )
    if args.json:
        meta: dict[str, Any] = {
            "bench": "speech_latency",
            "model": args.model,
            "quick": args.quick,
            "settings": dataclasses.asdict(settings),
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "machine": host,
            "load_s": load_s,
            "largest_k": best,
            "memory": memory,
            "elapsed_s": round(elapsed, 1),
        }
        write_json(args.json, meta, tables)
        print(f"wrote {args.json}")


# (default, --quick)
SIZES: dict[str, tuple[int, int]] = {
    "per_length": (8, 2),
    "rounds": (2, 1),
    "per_caller": (4, 2),
    "max_k": (64, 2),
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", default="tiny.en", help=f"{'|'.join(MODELS)} (or a CT2 dir)")
    parser.add_argument("--json", type=Path, help="write every table's numbers here")
    parser.add_argument("--quick", action="store_true", help="few utterances, K up to 2")
    parser.add_argument("--work", type=Path, help="espeak-ng render cache (default: a temp dir)")
    parser.add_argument("--workers", type=int, default=RecognizerSettings.workers)
    parser.add_argument("--threads", type=int, default=RecognizerSettings.threads)
    parser.add_argument("--max-queue", type=int, default=RecognizerSettings.max_queue)
    parser.add_argument("--processes", action="store_true", help="decode in worker processes")
    parser.add_argument(
        "--free-beam",
        type=int,
        default=RecognizerSettings.free_beam_size,
        help="the free transcript's beam (1 = greedy)",
    )
    parser.add_argument("--start-k", type=int, default=1)
    parser.add_argument("--gap-s", type=float, default=1.0)
    parser.add_argument("--keep-up-s", type=float, default=2.0)
    for key, (full, quick) in SIZES.items():
        parser.add_argument(
            f"--{key.replace('_', '-')}", type=int, help=f"default {full}, quick {quick}"
        )
    args = parser.parse_args(argv)
    for key, (full, quick) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
