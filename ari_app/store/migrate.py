"""Run the Alembic migrations programmatically (no alembic.ini, any working directory).

The migration scripts' source is ``migrations/`` at the repository root; the wheel ships it
inside the package as ``ari_app/migrations`` (``sources`` in pyproject.toml). Both are
found relative to this file, so ``ari-digits migrate`` works from any directory, whether the
package is installed from a wheel or runs from the checkout (an editable install).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, pool
from sqlalchemy.ext.asyncio import create_async_engine

from .repository import normalize_url

__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "migrations_dir",
    "upgrade_to_head",
    "upgrade_to_head_async",
]

_PACKAGE = Path(__file__).resolve().parents[1]  # ari_app/
_PACKAGED = _PACKAGE / "migrations"  # installed from the wheel
_CHECKOUT = _PACKAGE.parent / "migrations"  # the repository's top-level source
MIGRATIONS_DIR = _PACKAGED if (_PACKAGED / "env.py").is_file() else _CHECKOUT


def migrations_dir() -> Path:
    """The Alembic script directory; raises RuntimeError if it is missing."""
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise RuntimeError(
            f"Alembic migrations not found at {MIGRATIONS_DIR}: the installed package is "
            "incomplete (a wheel ships them as ari_app/migrations; a checkout has migrations/)."
        )
    return MIGRATIONS_DIR


def alembic_config(url: str) -> Config:
    """An Alembic Config for ``url`` using the project's migration scripts.

    ``url`` may be sync-style (``sqlite:///...``, ``postgresql://...``); it is upgraded to
    the async driver. ``config.attributes["connection"]`` may be set to a sync
    ``Connection`` to run the migrations on it (see ``upgrade_to_head_async``).
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    # Explicit separator: avoids Alembic's legacy-splitting deprecation warning.
    cfg.set_main_option("path_separator", "os")
    rendered = normalize_url(url).render_as_string(hide_password=False)
    # Config values go through ConfigParser interpolation: escape "%" (e.g. in passwords).
    cfg.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    return cfg


def upgrade_to_head(url: str) -> None:
    """Upgrade the database at ``url`` to the latest revision (blocking).

    Must not be called from a running event loop; use ``upgrade_to_head_async`` there.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "upgrade_to_head() cannot run inside an event loop; "
            "await upgrade_to_head_async() instead"
        )
    command.upgrade(alembic_config(url), "head")


def _upgrade_on_connection(connection: Connection, cfg: Config) -> None:
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


async def upgrade_to_head_async(url: str) -> None:
    """Upgrade the database at ``url`` to the latest revision, from async code."""
    cfg = alembic_config(url)
    engine = create_async_engine(normalize_url(url), poolclass=pool.NullPool)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_upgrade_on_connection, cfg)
    finally:
        await engine.dispose()
