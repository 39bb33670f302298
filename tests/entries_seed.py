"""Stored entries for the read-side tests (queries, HTTP API, ``results`` CLI).

Entries are written through the real :class:`Store` (``start_entry`` + ``finish_entry``), the
way the call tasks write them, so the tests read exactly what production stores. Not a
conftest: each test module defines its own database fixtures on top of these helpers.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import delete

from ari_app.store import EntryOutcome, EntryStart, Store, StoredEvent
from ari_app.store.models import entries_table

T0: Final = datetime(2024, 5, 17, 12, 0, 0, tzinfo=UTC)
DIGIT_GAP_MS: Final = 300


@dataclass(frozen=True)
class Spec:
    """One entry to store. ``status`` None: left in progress."""

    minute: int  # started at T0 + minute
    label: str | None
    status: str | None
    digits: str | None = None
    first_ms: int | None = None  # first digit event's at_ms (None: no digit events)
    caller: str | None = "+15550001"
    transport: str = "ari"
    confirmed: str = "not_asked"
    sensitive: bool = False
    second: int = 0
    voice: bool = False  # digits spoken (after a rejected utterance), not keyed

    @property
    def started_at(self) -> datetime:
        return T0 + timedelta(minutes=self.minute, seconds=self.second)


# 8 entries; minute 5 holds two entries started at the same instant (ordering by id breaks
# the tie). Digit entries' first digits: 500, 800, 1200, 2000, 3000 ms -> median 1200.
# Entries 2 (sensitive) and 6 were spoken: see events_for.
SPECS: Final = (
    Spec(0, "phone", "completed", "4155550123", 1200, confirmed="yes"),
    Spec(1, "account", "short", "123", 800, caller="+15550002", transport="agi"),
    Spec(2, "pin", "hangup", "4321", 2000, caller="+15550003", sensitive=True, voice=True),
    Spec(3, None, "no_input", None, None, caller=None),
    Spec(4, "phone", None),  # still in progress
    Spec(5, "phone", "unconfirmed", "5551234", 500, confirmed="unanswered"),
    Spec(5, "account", "completed", "999", 3000, caller="+15550002", confirmed="yes", voice=True),
    Spec(7, "zip", "error", None, None, caller="+15550004", transport="agi"),
)


def channel_id(index: int) -> str:
    return f"1716000000.{index}"


def channel_name(index: int) -> str:
    return f"PJSIP/trunk-{index:08x}"


def mask(digits: str) -> str:
    """What call.py stores for a sensitive entry: the last 2 digits visible."""
    return "*" * (len(digits) - 2) + digits[-2:] if len(digits) > 2 else "*" * len(digits)


# Spoken entries: what the caller said first, which held no digits.
REJECTED_TRANSCRIPT: Final = "hello there"
REJECTED_REASON: Final = "not_digits"
# The confidence of a spoken entry's k-th digit: VOICE_CONFIDENCES[k % 4].
VOICE_CONFIDENCES: Final = (0.97, 0.88, 0.64, 0.91)
WORDS: Final = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def events_for(spec: Spec) -> tuple[StoredEvent, ...]:
    events = [StoredEvent(kind="prompt", attempt=1, at_ms=0, detail="sound:beep")]
    if spec.voice and spec.digits and spec.first_ms is not None:
        # A rejected utterance, then one accepted whose digits all arrive at its end.
        events.append(
            StoredEvent(
                kind="utterance",
                attempt=1,
                at_ms=spec.first_ms // 2,
                source="voice",
                detail=REJECTED_TRANSCRIPT,
                rejected=REJECTED_REASON,
            )
        )
        events.append(
            StoredEvent(
                kind="utterance",
                attempt=1,
                at_ms=spec.first_ms,
                source="voice",
                detail=" ".join(WORDS[int(d)] for d in spec.digits),
            )
        )
        events += [
            StoredEvent(
                kind="digit",
                attempt=1,
                at_ms=spec.first_ms,
                digit=digit,
                source="voice",
                confidence=VOICE_CONFIDENCES[k % len(VOICE_CONFIDENCES)],
            )
            for k, digit in enumerate(spec.digits)
        ]
    elif spec.digits and spec.first_ms is not None:
        for k, digit in enumerate(spec.digits):
            events.append(
                StoredEvent(
                    kind="digit",
                    attempt=1,
                    at_ms=spec.first_ms + DIGIT_GAP_MS * k,
                    digit=digit,
                    source="key",
                    duration_ms=90,
                )
            )
    if spec.confirmed in ("yes", "no"):
        last = events[-1].at_ms
        answer = "1" if spec.confirmed == "yes" else "2"
        events.append(
            StoredEvent(kind="confirmation", attempt=1, at_ms=last + 900, digit=answer, detail="x")
        )
    return tuple(events)


async def store_spec(store: Store, index: int, spec: Spec) -> int:
    entry_id = await store.start_entry(
        EntryStart(
            channel_id=channel_id(index),
            channel_name=channel_name(index),
            caller_number=spec.caller,
            caller_name=None if spec.caller is None else "Caller Ünïcode",
            label=spec.label,
            parameters={"num_digits": 4, "label": spec.label},
            transport=spec.transport,
            asterisk_id="00:11:22:33:44:55",
            started_at=spec.started_at,
            sensitive=spec.sensitive,
        )
    )
    if spec.status is not None:
        digits = spec.digits
        await store.finish_entry(
            entry_id,
            EntryOutcome(
                status=spec.status,
                user_input=mask(digits) if spec.sensitive and digits else digits,
                input_hash="ab" * 32 if spec.sensitive else None,
                terminated_by="max_digits" if digits else None,
                attempts=1,
                confirmed=spec.confirmed,
                error="bad argument" if spec.status == "error" else None,
                ended_at=spec.started_at + timedelta(seconds=9),
                events=events_for(spec),
            ),
        )
    return entry_id


async def seed(store: Store, specs: tuple[Spec, ...] = SPECS) -> list[int]:
    """Store ``specs`` in order; return their ids (ids increase in that order)."""
    return [await store_spec(store, i, spec) for i, spec in enumerate(specs)]


async def clear(store: Store) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(delete(entries_table))  # events go with them (ON DELETE CASCADE)


def newest_first(ids: list[int], specs: tuple[Spec, ...] = SPECS) -> list[int]:
    """The expected listing order: started_at descending, then id descending."""
    pairs = sorted(zip(specs, ids, strict=True), key=lambda p: (p[0].started_at, p[1]))
    return [entry_id for _, entry_id in reversed(pairs)]


def expected_median(specs: tuple[Spec, ...]) -> float | None:
    values = [s.first_ms for s in specs if s.digits and s.first_ms is not None]
    return float(statistics.median(values)) if values else None
