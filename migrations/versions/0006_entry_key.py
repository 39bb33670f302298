"""Every entry's own key, made before the database is reached.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 11:30:00

``entries.entry_key``: a UUIDv7 (36 characters, text form) that the session makes when the
entry starts, before anything is stored. The local journal (``ari_app.journal``) writes an
entry's start and outcome under this key, and the drain into this database is idempotent by
it: a start replayed after a crash finds its row through the unique index instead of adding
a second one. It is also what the dialplan gets as ``DIGITS_ID``, without waiting for the
central database.

Nullable without a default: rows stored before 0006 have no key (they are still found by
their integer id). Adding a nullable column and an index is a metadata change plus an index
build on PostgreSQL and SQLite alike; no batch mode (``entries``' triggers from 0004 stay).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("entries", sa.Column("entry_key", sa.String(length=36), nullable=True))
    op.create_index("ix_entries_entry_key", "entries", ["entry_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_entries_entry_key", table_name="entries")
    op.drop_column("entries", "entry_key")
