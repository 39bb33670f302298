"""This machine's processes as /proc shows them: who started whom (benches and tests that
look at worker processes: multiprocessing's fork server and the workers it forks)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def parents() -> dict[int, int]:
    """Every process's parent, by process id."""
    parent_of: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):  # it exited meanwhile
            # The command name may hold spaces and parentheses: fields follow the last ")".
            parent_of[int(stat.parent.name)] = int(stat.read_text().rpartition(")")[2].split()[1])
    return parent_of


def descendants(pid: int | None = None) -> set[int]:
    """The processes ``pid`` (default: this one) started, theirs, and so on."""
    parent_of = parents()
    found: set[int] = set()
    frontier = {os.getpid() if pid is None else pid}
    while frontier:
        frontier = {child for child, parent in parent_of.items() if parent in frontier}
        found |= frontier
    return found
