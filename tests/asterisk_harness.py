"""Test helpers on top of :mod:`devtools.simulate`."""

from __future__ import annotations

import asyncio
import time

from ari_app.store.records import StoredEntry
from ari_app.store.repository import Store
from devtools.sandbox import AsteriskSandbox


async def stored_entry(store: Store, channel_id: str, within: float = 20.0) -> StoredEntry:
    """The finished entry of a channel, once it is stored."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for entry in await store.list_entries(limit=200):
            if entry.channel_id == channel_id and entry.status != "in_progress":
                full = await store.get_entry(entry.id)
                assert full is not None
                return full
        await asyncio.sleep(0.05)
    raise AssertionError(f"no finished entry for channel {channel_id} within {within} s")


def ensure_agi_dialplan(asterisk: AsteriskSandbox) -> None:
    """A sandbox started before ``agi-test`` existed gets the dialplan reloaded once."""
    if "'collect' =>" not in asterisk.cli("dialplan show collect@agi-test"):
        asterisk.reload()
