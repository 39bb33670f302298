"""The one in-memory :class:`~ari_app.ports.EntryStore` for tests and benchmarks."""

from __future__ import annotations

from ari_app.store.records import EntryOutcome, EntryStart


class MemoryStore:
    """Entries by key, as the session recorded them."""

    def __init__(self) -> None:
        self.starts: dict[str, EntryStart] = {}
        self.outcomes: dict[str, EntryOutcome] = {}

    async def record_start(self, start: EntryStart) -> None:
        if start.entry_key is None:
            raise ValueError("the session makes every entry's key")
        self.starts[start.entry_key] = start

    async def record_outcome(self, entry_key: str, outcome: EntryOutcome) -> None:
        self.outcomes[entry_key] = outcome

    def by_channel(self, channel_id: str) -> tuple[EntryStart, EntryOutcome | None]:
        for entry_key, start in self.starts.items():
            if start.channel_id == channel_id:
                return start, self.outcomes.get(entry_key)
        raise KeyError(channel_id)
