"""Indexes for the operators' queries (HTTP API, ``ari-digits results``).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 00:00:00

- ``channel_name``: the ``channel`` filter matches the channel id *or* name; without it
  the OR is a sequential scan (about 100 ms on 1,000,000 entries).
- ``(transport, started_at)`` and ``(confirmed, started_at)``: listing newest first with
  a rare or absent value (``transport=agi`` on an ARI-only system) otherwise scans the whole
  time index (about 250 ms on 1,000,000 entries).
- ``(started_at, status, label)`` replaces ``(started_at)``: it serves everything the old
  one did (time ranges, newest first) and lets the aggregates count by status and label
  over a time range from the index alone (index-only scan).

See bench/query_latency.py for the numbers and plans.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_entries_channel_name", "entries", ["channel_name"])
    op.create_index("ix_entries_transport_started_at", "entries", ["transport", "started_at"])
    op.create_index("ix_entries_confirmed_started_at", "entries", ["confirmed", "started_at"])
    op.create_index(
        "ix_entries_started_at_status_label", "entries", ["started_at", "status", "label"]
    )
    op.drop_index("ix_entries_started_at", table_name="entries")


def downgrade() -> None:
    op.create_index("ix_entries_started_at", "entries", ["started_at"])
    op.drop_index("ix_entries_started_at_status_label", table_name="entries")
    op.drop_index("ix_entries_confirmed_started_at", table_name="entries")
    op.drop_index("ix_entries_transport_started_at", table_name="entries")
    op.drop_index("ix_entries_channel_name", table_name="entries")
