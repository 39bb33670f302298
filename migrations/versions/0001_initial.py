"""Initial schema: entries and entry_events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00

Written by hand to match ari_app/store/models.py; ``alembic check`` in
tests/test_migrations.py verifies there is no drift on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGSERIAL on PostgreSQL; INTEGER PRIMARY KEY (the rowid alias) on SQLite.
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "entries",
        sa.Column("id", BIG_ID, autoincrement=True, nullable=False),
        sa.Column("channel_id", sa.String(length=128), nullable=False),
        sa.Column("channel_name", sa.String(length=255), nullable=False),
        sa.Column("caller_number", sa.String(length=80), nullable=True),
        sa.Column("caller_name", sa.String(length=255), nullable=True),
        sa.Column("label", sa.String(length=128), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("transport", sa.String(length=8), nullable=False),
        sa.Column("asterisk_id", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sensitive", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("user_input", sa.Text(), nullable=True),
        sa.Column("input_hash", sa.String(length=128), nullable=True),
        sa.Column("terminated_by", sa.String(length=32), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("confirmed", sa.String(length=16), server_default="not_asked", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_entries"),
    )
    op.create_index("ix_entries_started_at", "entries", ["started_at"])
    op.create_index("ix_entries_status_started_at", "entries", ["status", "started_at"])
    op.create_index("ix_entries_label_started_at", "entries", ["label", "started_at"])
    op.create_index(
        "ix_entries_caller_number_started_at", "entries", ["caller_number", "started_at"]
    )
    op.create_index("ix_entries_channel_id", "entries", ["channel_id"])

    op.create_table(
        "entry_events",
        sa.Column("entry_id", BIG_ID, autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("digit", sa.String(length=8), nullable=True),
        sa.Column("source", sa.String(length=8), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["entries.id"],
            name="fk_entry_events_entry_id_entries",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("entry_id", "seq", name="pk_entry_events"),
    )


def downgrade() -> None:
    op.drop_table("entry_events")
    op.drop_index("ix_entries_channel_id", table_name="entries")
    op.drop_index("ix_entries_caller_number_started_at", table_name="entries")
    op.drop_index("ix_entries_label_started_at", table_name="entries")
    op.drop_index("ix_entries_status_started_at", table_name="entries")
    op.drop_index("ix_entries_started_at", table_name="entries")
    op.drop_table("entries")
