from __future__ import annotations

import contextlib
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ari_app.ari.app import AriApplication, AriApplications
from ari_app.server import running_service
from ari_app.settings import Settings
from ari_app.store.migrate import upgrade_to_head
from ari_app.store.repository import Store
from devtools.sandbox import AsteriskSandbox, SandboxError
from devtools.simulate import SimulatedCallers
from tests.pg import temporary_postgres_database, temporary_postgres_database_sync

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def asterisk() -> Iterator[AsteriskSandbox]:
    """The real Asterisk 22 sandbox, started once per test run. Never skipped.

    Stopped at the end if this run started it (at first, or again after a test killed or
    restarted it): a sandbox someone else started and nobody replaced is left alone.
    """
    sandbox = AsteriskSandbox(REPO / "asterisk_conf")
    was_running = sandbox.is_running()
    try:
        sandbox.start()
    except SandboxError as exc:
        pytest.fail(f"the Asterisk sandbox is required and could not start: {exc}")
    yield sandbox
    if not was_running or sandbox.launched_here:
        sandbox.stop()


@dataclass
class Service:
    ari: AriApplications
    store: Store
    callers: SimulatedCallers
    settings: Settings

    @property
    def app(self) -> AriApplication:
        """The connection to the first Asterisk (in most tests the only one)."""
        return self.ari.apps[0]


def free_tcp_port() -> int:
    """A port nothing listens on now (the service's HTTP server needs one known in advance:
    tests scrape it, and several services may run at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def service_settings(
    asterisk: AsteriskSandbox, database_url: str, *, speech: bool = False
) -> Settings:
    """Keypad tests run without the speech path (no model to load); speech tests turn it on."""
    return Settings(
        api_port=free_tcp_port(),
        speech=speech,
        ari_url=asterisk.ari_url,
        ari_user=asterisk.ari_user,
        ari_password=asterisk.ari_password,
        database_url=database_url,
        # A journal of its own (a shared one would replay one test's entries into the next).
        journal_path=str(Path(tempfile.mkdtemp(prefix="ari-digits-journal-")) / "journal.sqlite3"),
        hash_key="test-hash-key",
        reconnect_max_delay=1.0,
    )


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: an SQLite file, or a new database on the local PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'digits.sqlite3'}"
    else:
        async with temporary_postgres_database() as url:
            yield url


@pytest.fixture(scope="module")
def migrated_pg_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated PostgreSQL database shared by one test module; its tests clear it first."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    with temporary_postgres_database_sync(f"ari_digits_{module}") as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database at head: a fresh SQLite file, or the module's PostgreSQL one.

    Synchronous on purpose: migrations and database creation run their own event loop.
    """
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'digits.sqlite3'}"
        upgrade_to_head(url)
        return url
    url = request.getfixturevalue("migrated_pg_url")
    assert isinstance(url, str)
    return url


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Service]:
    """`ari-digits serve` in-process with ``settings``, with its store and simulated callers."""
    callers = SimulatedCallers(settings.ari_url, settings.ari_user, settings.ari_password)
    async with running_service(settings, connect_timeout=10) as ari:
        store = Store.from_url(settings.database_url)
        try:
            yield Service(ari, store, callers, settings)
        finally:
            await store.close()
            await callers.close()


@pytest.fixture
async def service(asterisk: AsteriskSandbox, database_url: str) -> AsyncIterator[Service]:
    """`ari-digits serve` in-process against the sandbox, on a fresh database."""
    async with serving(service_settings(asterisk, database_url)) as service:
        yield service
