"""Cached per-day aggregates of frozen days, so that stats over weeks and months stay fast.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 19:00:00

``entry_daily_stats``: one row per UTC day whose aggregates ``entry_stats``
(``ari_app.store.queries``) has computed: entries by (status, label) and a histogram of
``first_digit_ms`` (see ``ari_app.store.daily_stats``). A range is answered from the cached
whole days plus a scan of the rest (the partial days at its edges, today, days not frozen).
Without it, stats scanned every entry of the range: 111 ms for 30 days and 337 ms for all
time on 1,000,000 entries in PostgreSQL; with it, 9 ms and 13 ms once the days are cached
(the first query over a range computes its uncached days: 510 ms for all time). The
triggers and the index add about 0.03 ms to ``start_entry`` and 0.07 ms to ``finish_entry``.

Why caching is safe: only *frozen* days are stored, days that ended more than an hour ago
and hold no ``in_progress`` entry. The application never writes such a day again: entries
start at the present, and the store only ever updates ``in_progress`` rows (finishing an
entry, marking stale ones interrupted).

What else changes a past day (a retention purge, a manual DELETE or UPDATE, an import of
old entries) is covered by triggers: any INSERT, UPDATE or DELETE of ``entries`` rows (and,
on PostgreSQL, a TRUNCATE) deletes the cached rows of the days those rows are on, and the
next query recomputes them.

Such a write that commits while a query is computing the very same day finds no cached row
to delete yet. So a query stores its new days in the transaction that read their entries,
and stores nothing if they may have changed since: on SQLite, the write fails if anything
committed since the query's snapshot (SQLITE_BUSY_SNAPSHOT); on PostgreSQL, the query runs
SERIALIZABLE, and its reads of ``entries`` with the trigger's DELETE on this table form a
read/write dependency cycle that fails one of the two transactions, provided the other
write runs SERIALIZABLE too. PostgreSQL does not track READ COMMITTED transactions (the
default, psql's included): such a write of old entries that commits while a query computes
its day can still leave that day stale. Run bulk edits of old entries in
``BEGIN ISOLATION LEVEL SERIALIZABLE`` (retry on a serialization failure), or empty the
cache after them (it refills on demand); a stale day whose median the entries contradict is
found and forgotten by the next query over it, stale counts are not:

    DELETE FROM entry_daily_stats;    -- or ari_app.store.daily_stats.forget_daily_stats()

On SQLite, a later migration that rebuilds ``entries`` (batch mode: copy and rename) drops
its triggers, and must create them again.

``(first_digit_ms, started_at)``: the cached histogram locates the bucket holding the
median time to first digit; this index then reads the exact values of that bucket in the
range, so the median stays exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# PostgreSQL: statement-level triggers with transition tables, so that a bulk DELETE of a
# million old rows runs one DELETE on the cache, not one per row.
_PG_FUNCTION = """
CREATE FUNCTION entries_forget_daily_stats() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM entry_daily_stats;
        RETURN NULL;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        DELETE FROM entry_daily_stats WHERE day IN (
            SELECT CAST(timezone('UTC', started_at) AS date) FROM new_rows);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM entry_daily_stats WHERE day IN (
            SELECT CAST(timezone('UTC', started_at) AS date) FROM old_rows);
    END IF;
    RETURN NULL;
END
$$
"""
_PG_TRIGGERS = {
    "entries_insert_forgets_daily_stats": "AFTER INSERT ON entries"
    " REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT",
    "entries_update_forgets_daily_stats": "AFTER UPDATE ON entries"
    " REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT",
    "entries_delete_forgets_daily_stats": "AFTER DELETE ON entries"
    " REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT",
    "entries_truncate_forgets_daily_stats": "AFTER TRUNCATE ON entries FOR EACH STATEMENT",
}
# SQLite has row-level triggers only. started_at is stored as UTC text
# ("YYYY-MM-DD HH:MM:SS.ffffff"), day as "YYYY-MM-DD": date() maps one to the other.
_SQLITE_TRIGGERS = {
    "entries_insert_forgets_daily_stats": "AFTER INSERT ON entries BEGIN"
    " DELETE FROM entry_daily_stats WHERE day = date(NEW.started_at); END",
    "entries_update_forgets_daily_stats": "AFTER UPDATE ON entries BEGIN"
    " DELETE FROM entry_daily_stats"
    " WHERE day IN (date(OLD.started_at), date(NEW.started_at)); END",
    "entries_delete_forgets_daily_stats": "AFTER DELETE ON entries BEGIN"
    " DELETE FROM entry_daily_stats WHERE day = date(OLD.started_at); END",
}


def upgrade() -> None:
    op.create_table(
        "entry_daily_stats",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.Column("first_digit_buckets", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("day", name="pk_entry_daily_stats"),
    )
    op.create_index(
        "ix_entries_first_digit_ms_started_at", "entries", ["first_digit_ms", "started_at"]
    )
    if op.get_context().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        for name, when in _PG_TRIGGERS.items():
            op.execute(
                f"CREATE TRIGGER {name} {when} EXECUTE FUNCTION entries_forget_daily_stats()"
            )
    else:
        for name, body in _SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {body}")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        for name in _PG_TRIGGERS:
            op.execute(f"DROP TRIGGER {name} ON entries")
        op.execute("DROP FUNCTION entries_forget_daily_stats()")
    else:
        for name in _SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_index("ix_entries_first_digit_ms_started_at", table_name="entries")
    op.drop_table("entry_daily_stats")
