"""``journal``: the local journal (JOURNAL_PATH) can be written, and what it holds that the
database does not have yet; the doctor changes nothing in it.

PASS: empty, or not created yet with a writable directory (``serve`` creates it). WARN:
records wait for the database (the backlog and the age of the oldest: ``serve`` writes them
when the database answers, at the latest on its next start). FAIL: the directory or the file
cannot be written, or the file is not a journal.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

from ari_app.doctor.report import CheckResult, Status

NAME = "journal"


def _writable_directory(path: Path) -> Path | None:
    """The nearest existing directory of ``path`` when it cannot be written in, else None."""
    directory = path.parent
    while not directory.exists():
        directory = directory.parent
    return None if os.access(directory, os.W_OK | os.X_OK) else directory


def _inspect(path: Path) -> CheckResult:
    """Blocking: opens the journal read-only (run in a thread)."""
    if not path.exists():
        blocked = _writable_directory(path)
        if blocked is not None:
            return CheckResult(
                NAME,
                Status.FAIL,
                f"cannot create the journal at {path}: {blocked} is not writable",
                fix="set JOURNAL_PATH to a file on a local, writable disk",
            )
        return CheckResult(NAME, Status.PASS, f"{path} not created yet (serve creates it)")
    if not os.access(path, os.R_OK | os.W_OK):
        return CheckResult(
            NAME,
            Status.FAIL,
            f"{path} cannot be written",
            fix="give the service's user read and write access to it",
        )
    try:
        # Read-only, so the doctor never creates or changes a journal (a URI needs a full path).
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            records, oldest = connection.execute(
                "SELECT count(*), min(written_at) FROM records"
            ).fetchone()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        return CheckResult(
            NAME,
            Status.FAIL,
            f"{path} is not a readable journal: {exc}",
            fix="move the file aside (after saving it) so that serve starts a new one",
        )
    if not records:
        return CheckResult(NAME, Status.PASS, f"{path}: empty, nothing waits for the database")
    age = max(0.0, time.time() - float(oldest))
    return CheckResult(
        NAME,
        Status.WARN,
        f"{path}: {records} records not yet in the database, the oldest {age:.0f} s old",
        fix="serve writes them once the database answers (at the latest on its next start)",
    )


async def check_journal(journal_path: str) -> CheckResult:
    return await asyncio.to_thread(_inspect, Path(journal_path))
