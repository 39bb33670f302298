"""Plain, storage-agnostic records exchanged with :class:`ari_app.store.Store`.

Nothing in this module imports SQLAlchemy, so the call-handling code can build and
consume these values without knowing how (or whether) they are persisted.

All datetimes are timezone-aware UTC. The store rejects naive datetimes on write and
always returns aware UTC datetimes on read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from ari_app.vocabulary import STATUS_IN_PROGRESS as STATUS_IN_PROGRESS
from ari_app.vocabulary import Confirmed, Source, Status, Transport

# Entry statuses. ``in_progress`` is only ever written by ``Store.start_entry``; every
# other status is a final outcome passed to ``Store.finish_entry``.
STATUS_INTERRUPTED: Final = Status.INTERRUPTED.value
FINAL_STATUSES: Final[frozenset[str]] = frozenset(status.value for status in Status)
ENTRY_STATUSES: Final[frozenset[str]] = FINAL_STATUSES | {STATUS_IN_PROGRESS}

TRANSPORTS: Final[frozenset[str]] = frozenset(transport.value for transport in Transport)
CONFIRMED_VALUES: Final[frozenset[str]] = frozenset(answer.value for answer in Confirmed)
# Known event kinds (documentation; the store accepts any kind up to 32 characters).
EVENT_KINDS: Final[frozenset[str]] = frozenset(
    {"digit", "prompt", "confirmation", "attempt", "utterance", "note", "stop_key"}
)
EVENT_SOURCES: Final[frozenset[str]] = frozenset(source.value for source in Source)

# ``error`` written by ``Store.mark_stale_in_progress``.
STALE_ERROR: Final = "server restarted"


@dataclass(frozen=True)
class EntryStart:
    """What is known when a digit collection starts on a channel."""

    channel_id: str
    channel_name: str
    caller_number: str | None
    caller_name: str | None
    label: str | None
    parameters: dict[str, object]  # must be JSON-serialisable
    transport: str  # "ari" or "agi"
    asterisk_id: str | None
    started_at: datetime  # tz-aware UTC
    sensitive: bool
    # The entry's UUIDv7 (ari_app.entry_key); None: the store makes one.
    entry_key: str | None = None


@dataclass(frozen=True)
class StoredEvent:
    """One step of an entry: a digit, a prompt played, a confirmation answer, ..."""

    kind: str  # see EVENT_KINDS
    attempt: int
    at_ms: int  # milliseconds since the entry started
    digit: str | None = None
    source: str | None = None  # "key" or "voice"
    duration_ms: int | None = None
    detail: str | None = None
    # The recogniser's confidence in a voice digit, 0..1; None for keys and other kinds.
    confidence: float | None = None
    # Why the recogniser rejected an utterance ("not_digits", "unclear", "no_speech");
    # None when it was accepted, and on every other kind.
    rejected: str | None = None


@dataclass(frozen=True)
class EntryOutcome:
    """How an entry ended. ``user_input`` must already be masked for sensitive entries."""

    status: str  # one of FINAL_STATUSES
    user_input: str | None
    input_hash: str | None  # keyed hash (hex) of the real input, sensitive entries only
    terminated_by: str | None
    attempts: int
    confirmed: str  # one of CONFIRMED_VALUES
    error: str | None
    ended_at: datetime  # tz-aware UTC
    events: tuple[StoredEvent, ...] = ()


@dataclass(frozen=True)
class StoredEntry:
    """An entry as read back from the store.

    ``events`` is empty for entries returned by ``Store.list_entries`` (events are only
    loaded by ``Store.get_entry``).
    """

    id: int
    channel_id: str
    channel_name: str
    caller_number: str | None
    caller_name: str | None
    label: str | None
    parameters: dict[str, object]
    transport: str
    asterisk_id: str | None
    started_at: datetime
    sensitive: bool
    status: str
    user_input: str | None
    input_hash: str | None
    terminated_by: str | None
    attempts: int
    confirmed: str
    error: str | None
    ended_at: datetime | None
    events: tuple[StoredEvent, ...] = field(default=())
    entry_key: str | None = None  # None on rows stored before migration 0006
