"""``database``: DATABASE_URL answers and is migrated to head; the doctor changes nothing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, pool
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

from ari_app.doctor.report import CheckResult, Status
from ari_app.store.migrate import alembic_config
from ari_app.store.repository import normalize_url

DATABASE_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Migrations:
    heads: tuple[str, ...]
    known: frozenset[str]


def _read_migrations(url: str) -> Migrations:
    """Blocking: reads the migration scripts (run in a thread)."""
    scripts = ScriptDirectory.from_config(alembic_config(url))
    return Migrations(
        heads=tuple(scripts.get_heads()),
        known=frozenset(s.revision for s in scripts.walk_revisions()),
    )


def _current_revisions(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())


def _missing_sqlite_file(url: URL) -> Path | None:
    """Connecting would create a missing SQLite file: the doctor must change nothing."""
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    path = Path(database)
    return None if path.exists() else path


async def check_database(database_url: str) -> CheckResult:
    name = "database"
    try:
        url = normalize_url(database_url)
    except ValueError as exc:
        return CheckResult(name, Status.FAIL, str(exc), "set DATABASE_URL")
    shown = url.render_as_string(hide_password=True)
    try:
        migrations = await asyncio.to_thread(_read_migrations, database_url)
        missing_file = await asyncio.to_thread(_missing_sqlite_file, url)
    except RuntimeError as exc:  # no migrations/ next to the package
        return CheckResult(name, Status.FAIL, str(exc))
    if missing_file is not None:
        return CheckResult(
            name,
            Status.FAIL,
            f"no SQLite database at {missing_file} (DATABASE_URL={shown})",
            "run ari-digits migrate to create it, or fix DATABASE_URL",
        )
    connect_args = (
        {"timeout": DATABASE_TIMEOUT_SECONDS} if url.get_backend_name() != "sqlite" else {}
    )
    engine = create_async_engine(url, poolclass=pool.NullPool, connect_args=connect_args)
    try:
        async with asyncio.timeout(DATABASE_TIMEOUT_SECONDS), engine.connect() as connection:
            current = await connection.run_sync(_current_revisions)
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return CheckResult(
            name,
            Status.FAIL,
            f"cannot connect to DATABASE_URL={shown}: {reason}",
            "check DATABASE_URL and that the database server runs",
        )
    finally:
        await engine.dispose()
    head = ", ".join(migrations.heads)
    if set(current) == set(migrations.heads):
        return CheckResult(name, Status.PASS, f"{shown} is migrated to head ({head})")
    if not current:
        return CheckResult(
            name,
            Status.FAIL,
            f"{shown} is not migrated (no schema revision; head is {head})",
            "run ari-digits migrate (serve also migrates when it starts)",
        )
    unknown = [r for r in current if r not in migrations.known]
    if unknown:
        return CheckResult(
            name,
            Status.FAIL,
            f"{shown} is at revision {', '.join(unknown)}, which this ari-digits does not know "
            f"(head {head})",
            "run the ari-digits version that migrated it, or a newer one",
        )
    return CheckResult(
        name,
        Status.FAIL,
        f"{shown} is at revision {', '.join(current)}, head is {head}",
        "run ari-digits migrate (serve also migrates when it starts)",
    )
