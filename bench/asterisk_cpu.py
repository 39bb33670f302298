"""CPU that ``serve`` spends on a keypad entry, on the real Asterisk sandbox under load.

``serve`` runs as its own process, as deployed (``SPEECH=off``, SQLite and the journal in a temp
dir, pinned to one core with ``taskset``, the same start-up as bench/ari_load.py), against the
sandbox Asterisk. This process originates simulated callers (Local channels whose other half
keys its digits with ``SendDTMF``) at ``--rate`` calls a second until ``--calls`` have been
placed; each enters ``Stasis(digits,num_digits=4,prompt=sound:beep)`` and keys 4 random digits.
Every caller's hand-back (the ``DIGITS*`` variables the dialplan saw) and every stored row are
checked against the digits keyed.

CPU an entry = ``serve``'s user + system CPU time (``/proc/<pid>/stat``) from just before the
first measured call to the moment the last row is stored, divided by the calls; its start-up
and a few warm-up calls are not counted. Asterisk and this process share the machine's other
core(s), so the figure is ``serve``'s own.

    .venv/bin/python bench/asterisk_cpu.py                     # 1000 calls, 50 a second
    .venv/bin/python bench/asterisk_cpu.py --calls 200 --rate 20
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ari_load import finished_rows, log_problems, start_serve, stop_serve, stored_rows

from devtools.sandbox import AsteriskSandbox, default_conf_dir
from devtools.simulate import Call, SimulatedCallers

ARGUMENTS = "num_digits=4,prompt=sound:beep"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime (fields 14 and 15)


async def wait_connected(callers: SimulatedCallers, within: float = 30.0) -> None:
    """Until Asterisk lists the ``digits`` app: ``serve``'s websocket is up."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        status, _ = await callers.request("GET", "/applications/digits")
        if status == 200:
            return
        await asyncio.sleep(0.2)
    raise SystemExit("serve did not connect to the sandbox's ARI")


async def rows_finished(database: Path, count: int) -> None:
    """Until ``serve`` (another process: nothing to await but its database) stored ``count``."""
    while finished_rows(database) < count:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def place(callers: SimulatedCallers, count: int, rate: float) -> list[tuple[Call, str]]:
    """``count`` callers, one every 1/``rate`` s, each keying 4 random digits."""
    placed: list[tuple[Call, str]] = []
    started = time.monotonic()
    for i in range(count):
        await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
        digits = "".join(random.choice("0123456789") for _ in range(4))
        placed.append((await callers.place_call(ARGUMENTS, f"wait:0.3^dtmf:{digits}"), digits))
    return placed


async def run(args: argparse.Namespace) -> None:
    sandbox = AsteriskSandbox(conf_dir=default_conf_dir())
    await asyncio.to_thread(sandbox.start)
    callers = SimulatedCallers(sandbox.ari_url, sandbox.ari_user, sandbox.ari_password)
    with tempfile.TemporaryDirectory(prefix="asterisk-cpu-") as tmp:
        serve = start_serve(
            sandbox.ari_url, Path(tmp), args.serve_cpu, "INFO", ari_password=sandbox.ari_password
        )
        try:
            await wait_connected(callers)
            warm = await place(callers, args.warmup, args.rate)
            for call, _ in warm:
                await callers.dialplan_result(call, within=30)
            await rows_finished(serve.database, args.warmup)
            before = cpu_seconds(serve.pid)
            began = time.monotonic()
            placed = await place(callers, args.calls, args.rate)
            results = await asyncio.gather(
                *(callers.dialplan_result(call, within=60) for call, _ in placed)
            )
            total = args.warmup + args.calls
            await rows_finished(serve.database, total)
            user, system = (
                after - then for after, then in zip(cpu_seconds(serve.pid), before, strict=True)
            )
            used = user + system
            wall = time.monotonic() - began
            rows = stored_rows(serve.database)
            warnings, errors, samples = log_problems(serve.log)
        finally:
            stop_serve(serve)
            await callers.close()
    right_back = sum(
        (r.status, r.digits) == ("completed", digits)
        for r, (_, digits) in zip(results, placed, strict=True)
    )
    right_rows = sum(
        rows.get(call.channel_id, ("",))[0:2] == ("completed", digits) for call, digits in placed
    )
    print(f"serve on core {args.serve_cpu}, real Asterisk sandbox, SQLite; commit {git_head()}")
    print(
        f"{args.calls} keypad entries (4 digits) at {args.rate:g} calls a second, in {wall:.1f} s"
    )
    print(f"handed back right: {right_back}/{args.calls}; rows right: {right_rows}/{args.calls}")
    print(
        f"serve CPU: {used:.2f} s = {1000 * used / args.calls:.2f} ms an entry "
        f"(user {1000 * user / args.calls:.2f}, system {1000 * system / args.calls:.2f})"
    )
    print(f"serve log: {warnings} warnings, {errors} errors {samples if samples else ''}")
    if right_back != args.calls or right_rows != args.calls:
        raise SystemExit("some entries were not right")


def git_head() -> str:
    head = Path(__file__).resolve().parents[1] / ".git" / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (head.parent / ref[5:]).read_text().strip()[:7]
        return ref[:7]
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=50.0, help="calls placed a second")
    parser.add_argument("--warmup", type=int, default=20, help="calls not measured")
    parser.add_argument("--serve-cpu", type=int, default=0, help="the core serve is pinned to")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    random.seed(args.seed)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
