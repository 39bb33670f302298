"""How sure the recogniser was of a spoken digit, and why it rejected an utterance.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:00:00

``entry_events.confidence``: the recogniser's confidence in a digit event whose source is
``voice``, from 0 to 1; NULL for keys and every other kind. Without it an operator reading
an entry could not tell a digit heard clearly from one guessed through noise, nor see which
digits to check first.

``entry_events.rejected``: on an ``utterance`` event the recogniser rejected, a short reason
(``not_digits``, ``unclear``, ``no_speech``); NULL when the
utterance was accepted and on every other kind. Before it, an utterance that yielded no digits
was stored as its transcript alone and one the recogniser discarded not at all, so an operator
could not tell speech that held no digits from noise, or from a recogniser that was down.

Neither value is sensitive: both are kept for sensitive entries, whose digits and transcripts
are redacted as before.

Both columns are nullable without a default, so existing rows need no backfill (they were
stored before confidences were known) and adding them is a metadata-only change on
PostgreSQL and SQLite alike: no table rewrite, no batch mode (``entries``, whose triggers a
batch rebuild would drop (0004), is not touched).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("entry_events", sa.Column("confidence", sa.Float(), nullable=True))
    op.add_column("entry_events", sa.Column("rejected", sa.String(length=32), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN: SQLite has it since 3.35 (as 0003's downgrade relies on).
    op.drop_column("entry_events", "rejected")
    op.drop_column("entry_events", "confidence")
