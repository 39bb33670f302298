"""How many FastAGI sessions per second the server accepts and completes.

The server runs in this process with the real store (SQLite by default). A child process plays
Asterisk (a lean protocol answering like Asterisk 22, keys at once) so the load generator does
not share the server's event loop and costs as little as possible. Scenarios, each at several concurrencies:

- ``entry``: a whole keypad entry per connection: environment, ``ANSWER``, the prompt (the first
  key barges in), three ``WAIT FOR DIGIT`` answered with keys, four ``SET VARIABLE``, close;
  the row is stored and every variable checked.
- ``error``: an entry with a bad parameter (no ``ANSWER``; stored, variables set, closed).
- ``probe``: bare connect-and-close (health checks), which froze panoramisk's own handler.

With ``--asterisk``, N real calls are also originated at once on the sandbox through
``agi-test`` (each keys 4 digits) and timed from the originate to the last stored row.

    .venv/bin/python bench/agi_throughput.py
    .venv/bin/python bench/agi_throughput.py --database-url postgresql+asyncpg://postgres@127.0.0.1/bench
    .venv/bin/python bench/agi_throughput.py --memory --asterisk
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ari_app.agi import AgiConfig, AgiServer, running_agi_server
from ari_app.ports import EntryStore
from devtools.fake_asterisk import FakeAsterisk, environment
from devtools.memory_store import MemoryStore

# --- the load generator (child process) ----------------------------------------------------------


class LeanAsterisk(asyncio.Protocol):
    """Asterisk's side of one session, as cheap as it gets, so the server is what is measured."""

    def __init__(self, env: bytes, keys: str, done: asyncio.Future[dict[str, str]]) -> None:
        self.env = env
        self.keys = [f"200 result={ord(k)}".encode() for k in keys]
        self.done = done
        self.buffer = b""
        self.variables: dict[str, str] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.env)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buffer += data
        replies = []
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            if line.startswith(b"SET VARIABLE"):
                _, _, name, value = line.split(b" ", 3)
                self.variables[name.decode()] = value.decode().strip('"')
                replies.append(b"200 result=1\n")
            elif line.startswith((b"STREAM FILE", b"WAIT FOR DIGIT")):
                if self.keys:
                    replies.append(self.keys.pop(0) + b" endpos=800\n")
                elif line.startswith(b"STREAM FILE"):
                    replies.append(b"200 result=0 endpos=3520\n")
                else:
                    replies.append(b"200 result=0\n")
            elif line.startswith(b"CHANNEL STATUS"):
                replies.append(b"200 result=6\n")
            else:
                replies.append(b"200 result=0\n")
        if replies:
            self.transport.write(b"".join(replies))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(self.variables)


async def one_session(host: str, port: int, mode: str) -> float:
    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    if mode == "probe":
        caller = FakeAsterisk(host, port)
        await caller.connect()
        await caller.close()
        return time.perf_counter() - started
    keys = "".join(random.choice("0123456789") for _ in range(4))
    query = "num_digits=4&prompt=sound:beep" if mode == "entry" else "num_digits=0"
    done: asyncio.Future[dict[str, str]] = loop.create_future()
    env = environment(query=query)
    transport, _ = await loop.create_connection(
        lambda: LeanAsterisk(env, keys if mode == "entry" else "", done), host, port
    )
    try:
        async with asyncio.timeout(30):
            variables = await done
    finally:
        transport.close()
    expected = ("completed", keys) if mode == "entry" else ("error", "")
    got = (variables.get("DIGITS_STATUS"), variables.get("DIGITS"))
    if got != expected:
        raise RuntimeError(f"session ended with {got}, expected {expected}")
    return time.perf_counter() - started


async def generate(host: str, port: int, mode: str, concurrency: int, total: int) -> dict[str, Any]:
    durations: list[float] = []
    failures = 0
    remaining = total

    async def worker() -> None:
        nonlocal remaining, failures
        while remaining > 0:
            remaining -= 1
            try:
                durations.append(await one_session(host, port, mode))
            except Exception as exc:
                failures += 1
                print(f"session failed: {exc}", file=sys.stderr)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    durations.sort()
    return {
        "ok": len(durations),
        "failed": failures,
        "elapsed": elapsed,
        "median_ms": statistics.median(durations) * 1000 if durations else None,
        "p99_ms": durations[min(len(durations) - 1, int(len(durations) * 0.99))] * 1000
        if durations
        else None,
    }


def client_main(argv: list[str]) -> None:
    host, port, mode, concurrency, total = argv
    result = asyncio.run(generate(host, int(port), mode, int(concurrency), int(total)))
    print(json.dumps(result))


# --- the server side ------------------------------------------------------------------------------


async def run_load(server: AgiServer, mode: str, concurrency: int, total: int) -> dict[str, Any]:
    assert server.address is not None
    host, port = server.address
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client",
        host,
        str(port),
        mode,
        str(concurrency),
        str(total),
        stdout=subprocess.PIPE,
    )
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the load generator failed ({child.returncode})")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def open_store(args: argparse.Namespace, scratch: Path) -> tuple[EntryStore, Any]:
    if args.memory:
        return MemoryStore(), None
    from ari_app.store.migrate import upgrade_to_head_async
    from ari_app.store.repository import Store

    url = args.database_url or f"sqlite+aiosqlite:///{scratch / 'bench.sqlite3'}"
    await upgrade_to_head_async(url)
    store = Store.from_url(url)
    return store, store


async def asterisk_burst(server: AgiServer, store: Any, calls: int) -> str:
    """N real calls at once through the sandbox's agi-test context."""
    from devtools.sandbox import AsteriskSandbox, default_conf_dir
    from devtools.simulate import SimulatedCallers

    assert server.address is not None
    sandbox = AsteriskSandbox(default_conf_dir())
    await asyncio.to_thread(sandbox.start)
    callers = SimulatedCallers(sandbox.ari_url, sandbox.ari_user, sandbox.ari_password)
    try:
        keyed = ["".join(random.choice("0123456789") for _ in range(4)) for _ in range(calls)]
        started = time.perf_counter()
        placed = await asyncio.gather(
            *(
                callers.place_agi_call(
                    server.address[1], "num_digits=4&prompt=sound:beep", f"wait:0.5^dtmf:{k}"
                )
                for k in keyed
            )
        )
        results = await asyncio.gather(
            *(callers.dialplan_result(call, within=60) for call in placed)
        )
        await server.wait_idle(30)
        elapsed = time.perf_counter() - started
        correct = sum(
            1
            for keys, result in zip(keyed, results, strict=True)
            if (result.status, result.digits) == ("completed", keys)
        )
        return f"| {calls} | {correct}/{calls} | {elapsed:.2f} s |"
    finally:
        await callers.close()


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        store, closable = await open_store(args, Path(scratch))
        try:
            async with running_agi_server(
                AgiConfig(agi_port=0), store, hash_key="bench", poll_interval=args.poll
            ) as server:
                print(f"store: {'memory' if args.memory else args.database_url or 'SQLite file'}")
                print(
                    "| scenario | concurrency | sessions | failed | sessions/s | median | p99 "
                    "| server CPU per session |"
                )
                print("|---|---|---|---|---|---|---|---|")
                for mode in args.modes:
                    for concurrency in args.concurrency:
                        total = args.total if mode != "probe" else args.total * 5
                        cpu = time.process_time()
                        result = await run_load(server, mode, concurrency, total)
                        await server.wait_idle(30)
                        cpu = time.process_time() - cpu
                        rate = result["ok"] / result["elapsed"]
                        print(
                            f"| {mode} | {concurrency} | {result['ok']} | {result['failed']} "
                            f"| {rate:.0f} | {result['median_ms']:.1f} ms "
                            f"| {result['p99_ms']:.1f} ms | {cpu / max(1, result['ok']) * 1000:.2f} ms |",
                            flush=True,
                        )
                if args.asterisk:
                    print("\nreal Asterisk, calls originated at once (originate → all rows stored)")
                    print("| calls | correct | wall time |")
                    print("|---|---|---|")
                    for calls in args.asterisk_calls:
                        print(await asterisk_burst(server, store, calls), flush=True)
        finally:
            if closable is not None:
                await closable.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default="")
    parser.add_argument("--memory", action="store_true", help="no database (server alone)")
    parser.add_argument("--modes", nargs="+", default=["entry", "error", "probe"])
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 10, 50, 100])
    parser.add_argument("--total", type=int, default=1000, help="sessions per measurement")
    parser.add_argument("--poll", type=float, default=1.0, help="longest WAIT FOR DIGIT, seconds")
    parser.add_argument("--asterisk", action="store_true", help="also time real sandbox calls")
    parser.add_argument("--asterisk-calls", nargs="+", type=int, default=[10, 50, 100])
    asyncio.run(main(parser.parse_args()))
