"""The API's JSON: how entries, events and aggregates are written, and the OpenAPI document.

Shared by the HTTP API and ``ari-digits results --json``, so scripts see one shape.

Sensitive entries: the store keeps their digits masked (last 2 visible) and their events
redacted; the masking is applied again here, idempotently, so that clear digits cannot leave
through this module even if a row was written unmasked. ``input_hash`` (the keyed hash of a
sensitive entry's real digits) is never written: with the key it verifies a guess, so it
stays in the database.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any, Final

from ari_app.store.queries import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, MAX_TEXT_FILTER, EntryStats
from ari_app.store.records import (
    CONFIRMED_VALUES,
    ENTRY_STATUSES,
    TRANSPORTS,
    StoredEntry,
    StoredEvent,
)
from ari_app.store.repository import REDACTED_DETAIL, REDACTED_DIGIT

__all__ = [
    "API_VERSION",
    "entry_json",
    "event_json",
    "isoformat",
    "mask_digits",
    "openapi_document",
    "stats_json",
]

API_VERSION: Final = "1.0.0"
VISIBLE_TAIL: Final = 2


def isoformat(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``: ``2024-05-17T12:30:45.123456Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _optional_time(value: datetime | None) -> str | None:
    return None if value is None else isoformat(value)


def mask_digits(digits: str) -> str:
    """``123456`` -> ``****56`` (idempotent: masked input comes back unchanged)."""
    if len(digits) <= VISIBLE_TAIL:
        return "*" * len(digits)
    return "*" * (len(digits) - VISIBLE_TAIL) + digits[-VISIBLE_TAIL:]


def event_json(seq: int, event: StoredEvent, *, sensitive: bool) -> dict[str, object]:
    digit, detail = event.digit, event.detail
    if sensitive:
        if digit is not None:
            digit = REDACTED_DIGIT
        if event.kind == "utterance" and detail is not None:
            detail = REDACTED_DETAIL
    return {
        "seq": seq,
        "kind": event.kind,
        "attempt": event.attempt,
        "at_ms": event.at_ms,
        "digit": digit,
        "source": event.source,
        "duration_ms": event.duration_ms,
        "detail": detail,
        "confidence": event.confidence,
        "rejected": event.rejected,
    }


def entry_json(entry: StoredEntry, *, with_events: bool = False) -> dict[str, object]:
    digits = entry.user_input
    if entry.sensitive and digits is not None:
        digits = mask_digits(digits)
    body: dict[str, object] = {
        "id": entry.id,
        "entry_key": entry.entry_key,
        "started_at": isoformat(entry.started_at),
        "ended_at": _optional_time(entry.ended_at),
        "status": entry.status,
        "label": entry.label,
        "digits": digits,
        "sensitive": entry.sensitive,
        "confirmed": entry.confirmed,
        "attempts": entry.attempts,
        "terminated_by": entry.terminated_by,
        "caller_number": entry.caller_number,
        "caller_name": entry.caller_name,
        "channel_id": entry.channel_id,
        "channel_name": entry.channel_name,
        "transport": entry.transport,
        "asterisk_id": entry.asterisk_id,
        "error": entry.error,
        "parameters": entry.parameters,
    }
    if with_events:
        body["events"] = [
            event_json(seq, ev, sensitive=entry.sensitive) for seq, ev in enumerate(entry.events)
        ]
    return body


def stats_json(stats: EntryStats) -> dict[str, object]:
    return {
        "from": _optional_time(stats.started_from),
        "to": _optional_time(stats.started_to),
        "total": stats.total,
        "finished": stats.finished,
        "completed": stats.completed,
        "completion_rate": stats.completion_rate,
        "by_status": stats.by_status,
        "by_label": [{"label": label, "count": count} for label, count in stats.by_label],
        "entries_with_digits": stats.entries_with_digits,
        "median_first_digit_ms": stats.median_first_digit_ms,
    }


# --------------------------------------------------------------------------- OpenAPI 3.1

_NULLABLE_STRING: Final = {"type": ["string", "null"]}
_TIME: Final = {"type": "string", "format": "date-time"}
_NULLABLE_TIME: Final = {"type": ["string", "null"], "format": "date-time"}

_EVENT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "description": "One step of an entry, in order. Digits of sensitive entries are '*'.",
    "additionalProperties": False,
    "required": [
        "seq",
        "kind",
        "attempt",
        "at_ms",
        "digit",
        "source",
        "duration_ms",
        "detail",
        "confidence",
        "rejected",
    ],
    "properties": {
        "seq": {"type": "integer", "minimum": 0, "description": "0, 1, 2, ... within the entry"},
        "kind": {
            "type": "string",
            "description": "digit, prompt, confirmation, attempt, utterance, note, stop_key, ...",
        },
        "attempt": {"type": "integer"},
        "at_ms": {"type": "integer", "description": "milliseconds since the entry started"},
        "digit": _NULLABLE_STRING,
        "source": {"type": ["string", "null"], "description": "key or voice"},
        "duration_ms": {"type": ["integer", "null"]},
        "detail": _NULLABLE_STRING,
        "confidence": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": 1,
            "description": "the recogniser's confidence in a voice digit; null for keys and "
            "other kinds",
        },
        "rejected": {
            "type": ["string", "null"],
            "description": "why the recogniser rejected an utterance (not_digits, unclear, "
            "no_speech); null when it was accepted and on other kinds",
        },
    },
}

_ENTRY_PROPERTIES: Final[dict[str, Any]] = {
    "id": {"type": "integer", "minimum": 1},
    "entry_key": {
        "type": ["string", "null"],
        "format": "uuid",
        "description": "the UUIDv7 the dialplan got as DIGITS_ID; null on entries stored "
        "before the journal existed",
    },
    "started_at": {**_TIME, "description": "UTC"},
    "ended_at": {**_NULLABLE_TIME, "description": "UTC; null while in progress"},
    "status": {"type": "string", "enum": sorted(ENTRY_STATUSES)},
    "label": _NULLABLE_STRING,
    "digits": {
        "type": ["string", "null"],
        "description": "the digits entered; masked (last 2 visible) for sensitive entries",
    },
    "sensitive": {"type": "boolean"},
    "confirmed": {"type": "string", "enum": sorted(CONFIRMED_VALUES)},
    "attempts": {"type": "integer", "minimum": 0},
    "terminated_by": _NULLABLE_STRING,
    "caller_number": _NULLABLE_STRING,
    "caller_name": _NULLABLE_STRING,
    "channel_id": {"type": "string"},
    "channel_name": {"type": "string"},
    "transport": {"type": "string", "enum": sorted(TRANSPORTS)},
    "asterisk_id": _NULLABLE_STRING,
    "error": _NULLABLE_STRING,
    "parameters": {"type": "object", "description": "the Stasis()/AGI arguments as given"},
}

_ERROR_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {"type": "string", "description": "what is wrong, for a person"},
        "parameter": {"type": "string", "description": "the query or path parameter at fault"},
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_response(description: str, schema: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


_TEXT_FILTER: Final = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_FILTER}
_TIME_PARAMETERS: Final = [
    _query(
        "from",
        "Entries started at or after this instant (inclusive). RFC 3339 date-time; the server "
        "also accepts a date alone (midnight UTC) and a date-time without offset (UTC).",
        _TIME,
    ),
    _query(
        "to",
        "Entries started before this instant (exclusive); same forms as `from`, not earlier "
        "than it.",
        _TIME,
    ),
]
_FILTER_PARAMETERS: Final = [
    *_TIME_PARAMETERS,
    _query(
        "status",
        "Only entries with this status.",
        {"type": "string", "enum": sorted(ENTRY_STATUSES)},
    ),
    _query("label", "Only entries with this label (exact match).", _TEXT_FILTER),
    _query("caller_number", "Only entries from this caller number (exact match).", _TEXT_FILTER),
    _query("channel", "Only entries whose channel id or channel name is this.", _TEXT_FILTER),
    _query(
        "transport",
        "Only entries that came over this transport.",
        {"type": "string", "enum": sorted(TRANSPORTS)},
    ),
    _query(
        "confirmed",
        "Only entries with this confirmation answer.",
        {"type": "string", "enum": sorted(CONFIRMED_VALUES)},
    ),
]
_ERRORS: Final = {
    "400": _json_response("A parameter is invalid; `parameter` names it.", "Error"),
    "401": {
        **_json_response("Missing or wrong bearer token.", "Error"),
        "headers": {
            "WWW-Authenticate": {
                "description": "Bearer",
                "schema": {"type": "string"},
            }
        },
    },
    "503": _json_response(
        "The server has no API_TOKEN configured: the operators' API is disabled.", "Error"
    ),
}


def _build_openapi() -> dict[str, Any]:
    entry = {
        "type": "object",
        "additionalProperties": False,
        "required": sorted(_ENTRY_PROPERTIES),
        "properties": _ENTRY_PROPERTIES,
    }
    entry_detail = {
        "type": "object",
        "additionalProperties": False,
        "required": sorted([*_ENTRY_PROPERTIES, "events"]),
        "properties": {
            **_ENTRY_PROPERTIES,
            "events": {"type": "array", "items": _ref("Event")},
        },
    }
    count = {"type": "integer", "minimum": 0}
    stats = {
        "type": "object",
        "additionalProperties": False,
        "required": [
            "from",
            "to",
            "total",
            "finished",
            "completed",
            "completion_rate",
            "by_status",
            "by_label",
            "entries_with_digits",
            "median_first_digit_ms",
        ],
        "properties": {
            "from": {**_NULLABLE_TIME, "description": "the range's start as applied; null: none"},
            "to": {**_NULLABLE_TIME, "description": "the range's end as applied; null: none"},
            "total": {**count, "description": "entries started in the range"},
            "finished": {**count, "description": "entries not in_progress"},
            "completed": count,
            "completion_rate": {
                "type": ["number", "null"],
                "minimum": 0,
                "maximum": 1,
                "description": "completed / finished; null when nothing finished",
            },
            "by_status": {
                "type": "object",
                "description": "entries by status; every status is present (0 if none)",
                "required": sorted(ENTRY_STATUSES),
                "additionalProperties": count,
            },
            "by_label": {
                "type": "array",
                "description": "entries by label, most frequent first (label null: none)",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["label", "count"],
                    "properties": {"label": _NULLABLE_STRING, "count": count},
                },
            },
            "entries_with_digits": {**count, "description": "entries with a digit event"},
            "median_first_digit_ms": {
                "type": ["number", "null"],
                "description": "median over entries of the first digit event's at_ms (time "
                "from the entry's start); null when no entry has a digit",
            },
        },
    }
    entry_id = {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "the entry id, or its key (DIGITS_ID, a UUIDv7)",
        "schema": {
            "oneOf": [
                {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                {"type": "string", "format": "uuid"},
            ]
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ari-digits operators' API",
            "version": API_VERSION,
            "description": "Read the digit entries collected from Asterisk callers. Every "
            "/api route needs `Authorization: Bearer <API_TOKEN>`, and answers 503 while the "
            "server has no API_TOKEN. Health, readiness, metrics and this document are open. "
            "Times are UTC, ISO 8601.",
        },
        "paths": {
            "/api/entries": {
                "get": {
                    "operationId": "listEntries",
                    "summary": "Entries, newest first, with filters and cursor pagination",
                    "description": "Ordered by (started_at, id) descending. Pass the "
                    "`next_cursor` of a page as `cursor` (with the same filters) for the "
                    "next one; entries stored meanwhile never shift a later page.",
                    "parameters": [
                        *_FILTER_PARAMETERS,
                        _query(
                            "limit",
                            "Page size.",
                            {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": MAX_PAGE_SIZE,
                                "default": DEFAULT_PAGE_SIZE,
                            },
                        ),
                        _query(
                            "cursor",
                            "The `next_cursor` of the previous page (opaque).",
                            {"type": "string", "minLength": 1},
                        ),
                    ],
                    "responses": {
                        "200": _json_response("A page of entries (without events).", "EntryPage"),
                        **_ERRORS,
                    },
                }
            },
            "/api/entries/{id}": {
                "get": {
                    "operationId": "getEntry",
                    "summary": "One entry with its per-digit and confirmation events",
                    "parameters": [entry_id],
                    "responses": {
                        "200": _json_response("The entry and its events.", "EntryDetail"),
                        **_ERRORS,
                        "404": _json_response("No entry with this id.", "Error"),
                    },
                }
            },
            "/api/stats": {
                "get": {
                    "operationId": "getStats",
                    "summary": "Counts by status and label, completion rate, time to first "
                    "digit, over entries started in [from, to)",
                    "parameters": _TIME_PARAMETERS,
                    "responses": {"200": _json_response("The aggregates.", "Stats"), **_ERRORS},
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "getOpenApi",
                    "summary": "This document (no token needed)",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "OpenAPI 3.1",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "getHealth",
                    "summary": "The process is alive (no token needed)",
                    "security": [],
                    "responses": {"200": _json_response("Alive.", "Health")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "getReadiness",
                    "summary": "Ready to take calls: ARI connected (at least one Asterisk) and "
                    "entries recorded (the "
                    "journal writable; a database outage it absorbs is `degraded`, still ready) "
                    "(no token needed)",
                    "security": [],
                    "responses": {
                        "200": _json_response("Ready.", "Readiness"),
                        "503": _json_response(
                            "Not ready; `not_ready` names the failing checks.", "Readiness"
                        ),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "getMetrics",
                    "summary": "Prometheus metrics (no token needed)",
                    "description": "Prometheus text format (version 0.0.4) unless the `Accept` "
                    "header asks for a newer text format or OpenMetrics.",
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "The metrics, `ari_digits_*`.",
                            "content": {
                                "text/plain": {"schema": {"type": "string"}},
                                "application/openmetrics-text": {"schema": {"type": "string"}},
                            },
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Entry": entry,
                "EntryDetail": entry_detail,
                "Event": _EVENT_SCHEMA,
                "EntryPage": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["entries", "next_cursor"],
                    "properties": {
                        "entries": {"type": "array", "items": _ref("Entry")},
                        "next_cursor": {
                            "type": ["string", "null"],
                            "description": "pass as `cursor` for the next page; null on the last",
                        },
                    },
                },
                "Stats": stats,
                "Error": _ERROR_SCHEMA,
                "Health": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["status"],
                    "properties": {"status": {"const": "ok"}},
                },
                "Readiness": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["status", "checks", "not_ready"],
                    "properties": {
                        "status": {"type": "string", "enum": ["ready", "not_ready"]},
                        "checks": {
                            "type": "object",
                            "description": "each check's state: `ok`, or why not (`ari`: "
                            "`not connected`, or `degraded` while some of several Asterisks "
                            "are; `database`: `unreachable`, `no answer`, or "
                            "`degraded` while the journal absorbs it; `journal`: `failing`); "
                            "`ari` and `journal` are absent where the server runs no ARI "
                            "application and no journal",
                            "required": ["database"],
                            "additionalProperties": {"type": "string"},
                        },
                        "not_ready": {
                            "type": "array",
                            "description": "the checks that are neither `ok` nor `degraded`, "
                            "sorted",
                            "items": {"type": "string"},
                        },
                        "ari_endpoints": {
                            "type": "object",
                            "description": "only where ARI_URL lists several Asterisks: each "
                            "one's state (`ok` or `not connected`) by its position in ARI_URL",
                            "additionalProperties": {
                                "type": "string",
                                "enum": ["ok", "not connected"],
                            },
                        },
                        "journal": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["backlog", "oldest_unsent_s"],
                            "description": "what the local journal holds that the database "
                            "does not have yet",
                            "properties": {
                                "backlog": {"type": "integer", "minimum": 0},
                                "oldest_unsent_s": {"type": ["number", "null"], "minimum": 0},
                            },
                        },
                    },
                },
            },
        },
        "security": [{"bearer": []}],
    }


_OPENAPI: Final = _build_openapi()


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document describing the API (a fresh copy)."""
    return copy.deepcopy(_OPENAPI)
