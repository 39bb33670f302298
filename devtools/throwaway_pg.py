"""A PostgreSQL cluster of one's own, to stop and start for fault tests and benches.

The machine's shared cluster (127.0.0.1:5432) must never be stopped: other tests and people use
it. This one lives in a temporary directory, listens on a free port of 127.0.0.1 (its socket in
the same directory), trusts local connections, and is removed by :meth:`destroy`. When run as
root the server runs as ``postgres`` (``initdb`` refuses root), through ``runuser``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Final

PG_BIN: Final = Path(os.environ.get("ARI_DIGITS_PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVER_USER: Final = "postgres"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThrowawayPostgres:
    """``initdb`` at construction; :meth:`start`, :meth:`stop`, :meth:`destroy` (blocking)."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="ari-digits-pg-"))
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.root, SERVER_USER)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *arguments: str) -> None:
        command = [str(PG_BIN / tool), *arguments]
        if self._as_root:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Fast shutdown: connections are cut, as in an outage."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
