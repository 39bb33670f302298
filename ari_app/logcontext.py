"""Call context on log records: which entry, channel, transport and label a line is about.

Each call's task enters a :class:`CallLogContext` (:func:`enter_call`); every record logged from
that task, and from tasks it starts afterwards, carries it through :class:`CallContextFilter`
(installed on the service's log handler): as fields in JSON mode, as a short prefix in text
mode. The context object is shared, not copied, by those tasks, so the entry id the row task
learns after the INSERT shows up on every later line of the call.

None of these fields ever holds digits: the entry id is the row's number, the channel id and
name are Asterisk's, the label is the dialplan's name for the field (``pin``, ``phone``).
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

__all__ = ["CONTEXT_FIELDS", "CallContextFilter", "CallLogContext", "current_call", "enter_call"]

# The record attributes the filter sets (JSON field names too).
CONTEXT_FIELDS: Final = ("entry_id", "channel_id", "transport", "label")


@dataclass
class CallLogContext:
    """Mutable on purpose: ``entry_id`` (the entry's key, ``DIGITS_ID``) is filled in once
    the entry's start is recorded."""

    channel_id: str
    transport: str
    label: str | None = None
    entry_id: str | None = None

    def prefix(self) -> str:
        """``[entry 01a2...-7... ari 1732540000.7 pin] `` (parts not known yet are left out)."""
        parts = [f"entry {self.entry_id}"] if self.entry_id is not None else []
        parts += [self.transport, self.channel_id]
        if self.label:
            parts.append(self.label)
        return f"[{' '.join(parts)}] "


# Context variables are per task (each asyncio task runs in a copy of its creator's context),
# which is exactly the scope of a call.
_current_call: ContextVar[CallLogContext | None] = ContextVar("ari_digits_call", default=None)


def enter_call(context: CallLogContext) -> None:
    """Attach ``context`` to the current task (and the tasks it creates from now on)."""
    _current_call.set(context)


def current_call() -> CallLogContext | None:
    return _current_call.get()


class CallContextFilter(logging.Filter):
    """Adds the call context to every record: the :data:`CONTEXT_FIELDS` attributes (None
    outside a call) and ``call_prefix`` (empty outside a call) for text formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current_call.get()
        record.entry_id = context.entry_id if context else None
        record.channel_id = context.channel_id if context else None
        record.transport = context.transport if context else None
        record.label = context.label if context else None
        record.call_prefix = context.prefix() if context else ""
        return True
