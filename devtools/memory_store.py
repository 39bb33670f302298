"""The one in-memory :class:`~ari_app.ports.EntryStore` for tests and benchmarks."""

from __future__ import annotations

import itertools

from ari_app.store.records import EntryOutcome, EntryStart


class MemoryStore:
    """Entries by id, as the session wrote them."""

    def __init__(self) -> None:
        self.starts: dict[int, EntryStart] = {}
        self.outcomes: dict[int, EntryOutcome] = {}
        self._ids = itertools.count(1)

    async def start_entry(self, start: EntryStart) -> int:
        entry_id = next(self._ids)
        self.starts[entry_id] = start
        return entry_id

    async def finish_entry(self, entry_id: int, outcome: EntryOutcome) -> None:
        self.outcomes[entry_id] = outcome

    def by_channel(self, channel_id: str) -> tuple[EntryStart, EntryOutcome | None]:
        for entry_id, start in self.starts.items():
            if start.channel_id == channel_id:
                return start, self.outcomes.get(entry_id)
        raise KeyError(channel_id)
