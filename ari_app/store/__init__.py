"""Persistence of collected entries (SQLite or PostgreSQL, via async SQLAlchemy)."""

from .records import (
    CONFIRMED_VALUES,
    ENTRY_STATUSES,
    EVENT_KINDS,
    EVENT_SOURCES,
    FINAL_STATUSES,
    STALE_ERROR,
    TRANSPORTS,
    EntryOutcome,
    EntryStart,
    StoredEntry,
    StoredEvent,
)
from .repository import EntryAlreadyFinishedError, EntryNotFoundError, Store, normalize_url

__all__ = [
    "CONFIRMED_VALUES",
    "ENTRY_STATUSES",
    "EVENT_KINDS",
    "EVENT_SOURCES",
    "FINAL_STATUSES",
    "STALE_ERROR",
    "TRANSPORTS",
    "EntryAlreadyFinishedError",
    "EntryNotFoundError",
    "EntryOutcome",
    "EntryStart",
    "Store",
    "StoredEntry",
    "StoredEvent",
    "normalize_url",
]
