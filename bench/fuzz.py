"""Fuzz every outside input at the counts of issue #11 (CI runs the same fuzzers smaller, in
tests/test_fuzz.py and tests/test_engine_properties.py). Prints each fuzzer's cases, crashes
and how many cases left a logged error; exits 1 on any crash.

    .venv/bin/python bench/fuzz.py                 # 10^4 ARI events, 10^5 RTP datagrams,
                                                   # 10^3 FastAGI sessions, 10^5 argument sets
    .venv/bin/python bench/fuzz.py --scale 0.1 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from devtools.fuzzing import (
    FuzzReport,
    fuzz_ari_events,
    fuzz_fastagi,
    fuzz_rtp,
    fuzz_stasis_arguments,
)

FULL_COUNTS = {"ari": 10_000, "rtp": 100_000, "fastagi": 1_000, "arguments": 100_000}


async def run(scale: float, seed: int) -> list[tuple[FuzzReport, float]]:
    counts = {name: max(1, round(count * scale)) for name, count in FULL_COUNTS.items()}
    results = []
    for name, fuzz in (
        ("arguments", lambda n: asyncio.to_thread(fuzz_stasis_arguments, n, seed)),
        ("ari", lambda n: fuzz_ari_events(n, seed)),
        ("rtp", lambda n: fuzz_rtp(n, seed)),
        ("fastagi", lambda n: fuzz_fastagi(n, seed, concurrency=50)),
    ):
        started = time.perf_counter()
        report = await fuzz(counts[name])
        elapsed = time.perf_counter() - started
        print(f"{report.line()}  {elapsed:.1f} s", flush=True)
        for example in report.examples:
            print(f"    crash: {example}")
        results.append((report, elapsed))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full counts")
    parser.add_argument("--seed", type=int, default=11)
    arguments = parser.parse_args()
    # The product's warnings are what the fuzzers count; printing each would drown the report.
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger().addHandler(logging.NullHandler())
    results = asyncio.run(run(arguments.scale, arguments.seed))
    crashes = sum(report.crashes for report, _ in results)
    print(
        f"fuzz: {sum(r.cases for r, _ in results)} cases, {crashes} crashes (seed {arguments.seed})"
    )
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
