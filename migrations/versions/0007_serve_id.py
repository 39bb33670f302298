"""Which ``serve`` owns each entry.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-10 09:00:00

``entries.serve_id``: the name of the ``serve`` that started the entry (``SERVE_ID``; by
default the host name and a hash of its journal's path, stable across restarts). Several
``serve``s may share one database, and a ``serve`` that starts marks the entries *its own*
previous run left ``in_progress`` as ``interrupted``: before 0007 it marked every such row,
so another ``serve``'s calls still in progress were marked too and their outcomes refused.

Nullable without a default: rows stored before 0007 have no owner, and any ``serve`` that
starts treats them as left by a previous run (as before). No index: the sweep runs once per
start and narrows on ``ix_entries_status_started_at`` first (few rows are in progress), and
an index would cost every entry's insert. A metadata change on PostgreSQL and SQLite alike;
no batch mode (``entries``' triggers from 0004 stay).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("entries", sa.Column("serve_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column("entries", "serve_id")
