"""What the session layer needs from the edges, and the errors the edges raise.

A leaf module: the transports (:mod:`ari_app.ari`, :mod:`ari_app.agi`) raise
:class:`ChannelGone` and :class:`TransportError` and implement :class:`CallPort`; the store
implements :class:`EntryStore`; none of them imports the session that uses them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from ari_app.media import MediaItem
from ari_app.params import Params
from ari_app.vocabulary import Source

if TYPE_CHECKING:
    # Types only, not a cycle: a transport importing this module should not load the store
    # package (SQLAlchemy, the metrics) with it.
    from ari_app.store.records import EntryOutcome, EntryStart


class ChannelGone(Exception):
    """The channel hung up or left our application while we were acting on it."""


class TransportError(Exception):
    """The connection to Asterisk failed while acting on a channel."""


@dataclass(frozen=True)
class CallInfo:
    """The channel an entry runs on, as its transport describes it."""

    channel_id: str
    channel_name: str
    caller_number: str | None
    caller_name: str | None
    asterisk_id: str | None
    transport: str
    needs_answer: bool


class CallPort(Protocol):
    """What a session needs from its transport, in telephony terms."""

    async def answer(self) -> None: ...

    async def play(self, playback_id: str, media: Sequence[MediaItem]) -> None: ...

    async def stop_playback(self, playback_id: str) -> None: ...

    async def set_variables(self, variables: Mapping[str, str]) -> None: ...

    async def release(self) -> None:
        """Return the channel to the dialplan."""
        ...


class EntryStore(Protocol):
    """Where an entry is recorded, under the key the session made (``start.entry_key``):
    when it starts, and when it ends. Each returns once the record is durable; in the
    service that is the local journal (:mod:`ari_app.journal`), not the central database."""

    async def record_start(self, start: EntryStart) -> None: ...

    async def record_outcome(self, entry_key: str, outcome: EntryOutcome) -> None: ...


class Attachment(Protocol):
    """Something living as long as the entry (the speech tap): closed when collection ends,
    before the channel returns to the dialplan. Neither method may raise."""

    def caller_gone(self) -> None:
        """The caller hung up: finish at once what needs no more input (speech heard so far)."""
        ...

    async def close(self) -> None: ...


class SpeechTarget(Protocol):
    @property
    def expects_answer(self) -> bool:
        """A yes/no to a read-back is expected, rather than digits."""
        ...

    @property
    def digits_missing(self) -> int | None:
        """Digits the entry still needs when their count is exact, else None."""
        ...

    def deliver_speech_started(self) -> None: ...

    def deliver_speech_ended(
        self,
        transcript: str | None,
        digits: str = "",
        answer: bool | None = None,
        *,
        confidences: tuple[float, ...] = (),
        rejected: str | None = None,
    ) -> None: ...


class SessionInbox(SpeechTarget, Protocol):
    """An entry as its transport sees it (:class:`ari_app.call.CallSession`): what it is, and
    where the transport delivers what it hears. Delivering never blocks."""

    @property
    def info(self) -> CallInfo: ...

    @property
    def params(self) -> Params | None:
        """None when the entry's parameters are invalid (it ends at once as an error)."""
        ...

    @property
    def collecting(self) -> bool:
        """The entry is still collecting (it has no result yet)."""
        ...

    def next_timer_at(self) -> float | None:
        """Loop time of the entry's earliest pending timer (a polling transport sizes its
        waits by it)."""
        ...

    def attach(self, attachment: Attachment) -> None: ...

    def deliver_digit(
        self, key: str, *, duration_ms: int | None = None, source: Source = Source.KEY
    ) -> None: ...

    def deliver_playback_finished(self, playback_id: str) -> None: ...

    def deliver_hangup(self) -> None: ...

    def deliver_connection_lost(self) -> None: ...

    async def drained(self) -> None:
        """Return once every event delivered so far has been handled."""
        ...
