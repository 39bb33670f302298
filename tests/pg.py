"""Throw-away PostgreSQL databases for tests.

Not a conftest: test modules define their own fixtures on top of these helpers.

The server is ``postgresql://postgres@127.0.0.1:5432/postgres`` unless the environment
variable ``ARI_DIGITS_TEST_PG_URL`` names another (maintenance) database URL. If the
server cannot be reached the test fails with a clear message; it is never skipped.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import asyncpg
import pytest
from sqlalchemy.engine import URL, make_url

ENV_VAR = "ARI_DIGITS_TEST_PG_URL"
DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 10.0


def admin_url() -> URL:
    return make_url(os.environ.get(ENV_VAR) or DEFAULT_ADMIN_URL)


def _asyncpg_dsn(url: URL) -> str:
    # asyncpg wants a libpq-style DSN without the SQLAlchemy "+driver" part.
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def _admin_connect(url: URL) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(_asyncpg_dsn(url), timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is required for this test but "
            f"{url.render_as_string(hide_password=True)} is unreachable "
            f"({type(exc).__name__}: {exc}). Start PostgreSQL or set {ENV_VAR} to a "
            "reachable maintenance database URL (the role needs CREATEDB).",
            pytrace=False,
        )


async def create_database(name: str) -> str:
    """Create database ``name``; return its ``postgresql+asyncpg://`` URL."""
    url = admin_url()
    conn = await _admin_connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return url.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )


async def drop_database(name: str) -> None:
    """Terminate the connections to ``name`` and drop it (if it exists)."""
    url = admin_url()
    conn = await _admin_connect(url)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


def unique_database_name(prefix: str = "ari_digits_test") -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:12]}"


@asynccontextmanager
async def temporary_postgres_database(prefix: str = "ari_digits_test") -> AsyncIterator[str]:
    """Create a uniquely named database, yield its asyncpg URL, drop it afterwards."""
    name = unique_database_name(prefix)
    url = await create_database(name)
    try:
        yield url
    finally:
        await drop_database(name)


@contextmanager
def temporary_postgres_database_sync(prefix: str = "ari_digits_test") -> Iterator[str]:
    """Blocking variant, for synchronous (e.g. module-scoped) fixtures.

    Must not be used while an event loop is running in this thread.
    """
    name = unique_database_name(prefix)
    url = asyncio.run(create_database(name))
    try:
        yield url
    finally:
        asyncio.run(drop_database(name))
