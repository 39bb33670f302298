"""The words every layer shares: entry statuses, confirmation answers, digit sources and
transports.

A leaf module (it imports nothing from ``ari_app``), so that the engine, the store, the
metrics and both transports can name these values without importing one another.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class Status(StrEnum):
    """How an entry ended (the ``DIGITS_STATUS`` the dialplan gets, and the stored status)."""

    COMPLETED = "completed"
    NO_INPUT = "no_input"
    SHORT = "short"
    INVALID = "invalid"
    REJECTED = "rejected"
    UNCONFIRMED = "unconfirmed"
    HANGUP = "hangup"
    INTERRUPTED = "interrupted"
    ERROR = "error"


# Only ever stored (by ``Store.start_entry``), never a result: an entry not finished yet.
STATUS_IN_PROGRESS: Final = "in_progress"


class Confirmed(StrEnum):
    YES = "yes"
    NO = "no"
    UNANSWERED = "unanswered"
    NOT_ASKED = "not_asked"


class Source(StrEnum):
    """Where a digit came from."""

    KEY = "key"
    VOICE = "voice"


class Transport(StrEnum):
    """How the channel reached us: ``Stasis()`` over ARI, or ``AGI(agi://…)``."""

    ARI = "ari"
    AGI = "agi"
