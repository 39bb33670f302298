"""Entry keys: UUIDv7, made by the session before anything is stored.

A UUIDv7 starts with the Unix time in milliseconds, so keys sort by creation time (index
locality on the central database) and need no coordination: the dialplan gets one as
``DIGITS_ID`` at once, whether or not the central database answers. Python 3.11's ``uuid``
has no ``uuid7`` (3.14 adds it), hence the few lines below (RFC 9562, section 5.7).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from typing import Final

ENTRY_KEY_PATTERN: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
)


def new_entry_key() -> str:
    """A new UUIDv7 in its canonical text form (36 lower-case characters)."""
    millis = time.time_ns() // 1_000_000
    value = (millis & 0xFFFF_FFFF_FFFF) << 80 | int.from_bytes(os.urandom(10), "big")
    value &= ~(0xF << 76) & ~(0x3 << 62)  # clear the version and variant bits
    value |= 0x7 << 76 | 0x2 << 62  # version 7, variant 10
    return str(uuid.UUID(int=value))


def is_entry_key(text: str) -> bool:
    return ENTRY_KEY_PATTERN.fullmatch(text) is not None
