"""SQLAlchemy table definitions for the entry store.

Kept in step with ``migrations/versions``; ``tests/test_migrations.py`` runs
``alembic check`` against these models on SQLite and PostgreSQL to catch drift.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Final, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable, explicit constraint names on every backend (SQLite and PostgreSQL would
# otherwise pick different names, which breaks later migrations that drop or alter them).
NAMING_CONVENTION: Final[dict[str, str]] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# 64-bit ids on PostgreSQL (BIGSERIAL); on SQLite only "INTEGER PRIMARY KEY" is an alias
# of the 64-bit rowid and auto-increments, so use INTEGER there.
BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Entry(Base):
    """One digit collection on one call."""

    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    channel_id: Mapped[str] = mapped_column(String(128))
    channel_name: Mapped[str] = mapped_column(String(255))
    caller_number: Mapped[str | None] = mapped_column(String(80))
    caller_name: Mapped[str | None] = mapped_column(String(255))
    label: Mapped[str | None] = mapped_column(String(128))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    transport: Mapped[str] = mapped_column(String(8))
    asterisk_id: Mapped[str | None] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    sensitive: Mapped[bool] = mapped_column(Boolean, server_default=false())
    # One of ari_app.store.records.ENTRY_STATUSES (validated by the Store, not the DB,
    # so adding a status needs no migration).
    status: Mapped[str] = mapped_column(String(16))
    user_input: Mapped[str | None] = mapped_column(Text)
    input_hash: Mapped[str | None] = mapped_column(String(128))
    terminated_by: Mapped[str | None] = mapped_column(String(32))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    confirmed: Mapped[str] = mapped_column(String(16), server_default="not_asked")
    error: Mapped[str | None] = mapped_column(Text)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # From the entry's start to its first digit (key or voice); None without digits.
    # Copied from the events when the entry finishes, so aggregates need no join (0003).
    first_digit_ms: Mapped[int | None] = mapped_column(BigInteger)
    # UUIDv7 made by the session before anything is stored: DIGITS_ID, and what makes a
    # replay from the journal idempotent (0006). NULL on rows stored before 0006.
    entry_key: Mapped[str | None] = mapped_column(String(36))
    # The serve that started the entry (SERVE_ID): at start a serve marks only its own rows
    # left in progress as interrupted, not those of others sharing the database (0007).
    # NULL on rows stored before 0007.
    serve_id: Mapped[str | None] = mapped_column(String(128))

    events: Mapped[list[EntryEvent]] = relationship(
        back_populates="entry",
        order_by="EntryEvent.seq",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    __table_args__ = (
        # (started_at, status, label, first_digit_ms): time ranges newest first, and the
        # aggregates of the days a stats query scans (counts by status and label, histogram
        # of first_digit_ms) from the index alone (migrations 0002, 0003). The median's
        # exact values come from ix_entries_first_digit_ms_started_at below.
        Index(
            "ix_entries_started_at_status_label_first_digit_ms",
            "started_at",
            "status",
            "label",
            "first_digit_ms",
        ),
        Index("ix_entries_channel_name", "channel_name"),
        Index("ix_entries_transport_started_at", "transport", "started_at"),
        Index("ix_entries_confirmed_started_at", "confirmed", "started_at"),
        Index("ix_entries_status_started_at", "status", "started_at"),
        Index("ix_entries_label_started_at", "label", "started_at"),
        Index("ix_entries_caller_number_started_at", "caller_number", "started_at"),
        Index("ix_entries_channel_id", "channel_id"),
        # The exact median time to first digit: the values of one histogram bucket in a
        # range (migration 0004, ari_app.store.daily_stats).
        Index("ix_entries_first_digit_ms_started_at", "first_digit_ms", "started_at"),
        Index("ix_entries_entry_key", "entry_key", unique=True),
    )


class EntryEvent(Base):
    """One step of an entry, ordered by ``seq`` (0, 1, 2, ... within the entry).

    The primary key (entry_id, seq) doubles as the index used to load an entry's events
    in order.
    """

    __tablename__ = "entry_events"

    entry_id: Mapped[int] = mapped_column(
        BigIntId,
        ForeignKey("entries.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer)
    at_ms: Mapped[int] = mapped_column(BigInteger)
    digit: Mapped[str | None] = mapped_column(String(8))
    source: Mapped[str | None] = mapped_column(String(8))
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)
    # Voice digits: the recogniser's confidence, 0..1. Rejected utterances: why (0005).
    confidence: Mapped[float | None] = mapped_column(Float)
    rejected: Mapped[str | None] = mapped_column(String(32))

    entry: Mapped[Entry] = relationship(back_populates="events")


class EntryDailyStats(Base):
    """Aggregates of one frozen UTC day of entries, cached by ``ari_app.store.daily_stats``.

    Only days that can no longer change are stored; triggers on ``entries`` delete a day's
    row when one of its entries is inserted, updated or deleted anyway (migration 0004).
    """

    __tablename__ = "entry_daily_stats"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    # [[status, label, entries], ...]: one item per (status, label) present that day.
    counts: Mapped[list[Any]] = mapped_column(JSON)
    # [[bucket, entries], ...]: entries with a first digit, by first_digit_ms bucket.
    first_digit_buckets: Mapped[list[Any]] = mapped_column(JSON)


entries_table: Final = cast(Table, Entry.__table__)
entry_events_table: Final = cast(Table, EntryEvent.__table__)
entry_daily_stats_table: Final = cast(Table, EntryDailyStats.__table__)
