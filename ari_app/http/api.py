"""The operators' HTTP API (aiohttp): entries, one entry, aggregates, OpenAPI, health.

Routes (see :func:`ari_app.http.schema.openapi_document` for the full contract):

- ``GET /api/entries``: filters ``from``, ``to``, ``status``, ``label``, ``caller_number``,
  ``channel``, ``transport``, ``confirmed``; ``limit`` (1-500, default 50) and ``cursor``.
- ``GET /api/entries/{id}``: one entry with its events.
- ``GET /api/stats``: aggregates over ``[from, to)``.
- ``GET /openapi.json`` and ``GET /healthz``: open (no token).

Every route but those two needs ``Authorization: Bearer <token>`` (compared in constant
time), unknown paths included; otherwise 401. Bad input is a 400 naming the parameter; every error is a JSON object
``{"error": ..., "parameter": ...}``; an unexpected failure is a logged 500 that says nothing
about its cause.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from multidict import MultiMapping

from ari_app.store.queries import (
    DEFAULT_PAGE_SIZE,
    MAX_ENTRY_ID,
    MAX_PAGE_SIZE,
    EntryFilter,
    QueryError,
    entry_stats,
    get_entry,
    list_entries,
    parse_timestamp,
)
from ari_app.store.repository import Store

from .schema import entry_json, openapi_document, stats_json

__all__ = [
    "API_CONFIG",
    "PUBLIC_PATHS",
    "STORE",
    "ApiConfig",
    "ApiServer",
    "make_api_app",
    "running_http_api",
]

log = logging.getLogger(__name__)

FILTER_PARAMETERS: Final = (
    "from",
    "to",
    "status",
    "label",
    "caller_number",
    "channel",
    "transport",
    "confirmed",
)
LIST_PARAMETERS: Final = frozenset({*FILTER_PARAMETERS, "limit", "cursor"})
STATS_PARAMETERS: Final = frozenset({"from", "to"})
SHUTDOWN_TIMEOUT_S: Final = 5.0
_DIGITS: Final = re.compile(r"[0-9]{1,20}")
_BEARER: Final = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


PUBLIC_PATHS: Final = frozenset({"/healthz", "/openapi.json"})


@dataclass(frozen=True)
class ApiConfig:
    """What the API needs besides the store."""

    token: str
    # Routes served without the token; every other path, unknown ones included, needs it.
    public_paths: frozenset[str] = PUBLIC_PATHS


STORE: Final = web.AppKey("store", Store)
API_CONFIG: Final = web.AppKey("api_config", ApiConfig)


def error_response(
    status: int,
    message: str,
    *,
    parameter: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    body: dict[str, str] = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return web.json_response(body, status=status, headers=headers)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a JSON error; bad input a 400, never a 500."""
    try:
        return await handler(request)
    except QueryError as exc:
        return error_response(400, exc.message, parameter=exc.parameter)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, exc.reason, headers=headers)
    except Exception:
        log.exception("HTTP API: %s %s failed", request.method, request.path)
        return error_response(500, "internal error")


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but the public ones (``/healthz``, ``/openapi.json``) needs the bearer
    token; so does every unknown path (fail closed: a 404 says nothing without it)."""
    config = request.app[API_CONFIG]
    resource = request.match_info.route.resource
    if resource is None or resource.canonical not in config.public_paths:
        expected = config.token.encode()
        match = _BEARER.fullmatch(request.headers.get("Authorization", ""))
        given = match.group(1).encode("utf-8", "surrogateescape") if match else b""
        # Constant time: compare_digest's run time depends on the length of its second
        # argument (what the client sent), never on where the token differs.
        if not (match and hmac.compare_digest(expected, given)):
            return error_response(
                401,
                "missing or invalid bearer token (Authorization: Bearer <API_TOKEN>)",
                headers={"WWW-Authenticate": 'Bearer realm="ari-digits"'},
            )
    return await handler(request)


def _check_known(query: MultiMapping[str], allowed: Iterable[str]) -> None:
    allowed = frozenset(allowed)
    for name in query:
        if name not in allowed:
            raise QueryError(
                name[:64], f"unknown query parameter; known: {', '.join(sorted(allowed))}"
            )


def _single(query: MultiMapping[str], name: str) -> str | None:
    values = query.getall(name, [])
    if not values:
        return None
    if len(values) > 1:
        raise QueryError(name, "given more than once")
    value = values[0]
    if value == "":
        raise QueryError(name, "empty value")
    return value


def parse_filter(query: MultiMapping[str]) -> EntryFilter:
    started_from = _single(query, "from")
    started_to = _single(query, "to")
    return EntryFilter(
        started_from=None if started_from is None else parse_timestamp("from", started_from),
        started_to=None if started_to is None else parse_timestamp("to", started_to),
        status=_single(query, "status"),
        label=_single(query, "label"),
        caller_number=_single(query, "caller_number"),
        channel=_single(query, "channel"),
        transport=_single(query, "transport"),
        confirmed=_single(query, "confirmed"),
    )


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_PAGE_SIZE
    value = int(raw) if _DIGITS.fullmatch(raw) else 0
    if not 1 <= value <= MAX_PAGE_SIZE:
        raise QueryError("limit", f"must be an integer from 1 to {MAX_PAGE_SIZE}; got {raw!r}")
    return value


async def handle_list(request: web.Request) -> web.Response:
    query = request.query
    _check_known(query, LIST_PARAMETERS)
    where = parse_filter(query)
    limit = parse_limit(_single(query, "limit"))
    page = await list_entries(
        request.app[STORE], where, limit=limit, cursor=_single(query, "cursor")
    )
    return web.json_response(
        {"entries": [entry_json(e) for e in page.entries], "next_cursor": page.next_cursor}
    )


async def handle_entry(request: web.Request) -> web.Response:
    _check_known(request.query, ())
    raw = request.match_info["id"]
    if not _DIGITS.fullmatch(raw):
        raise QueryError("id", f"must be a positive integer; got {raw[:64]!r}")
    entry_id = int(raw)
    entry = await get_entry(request.app[STORE], entry_id) if entry_id <= MAX_ENTRY_ID else None
    if entry is None:
        return error_response(404, f"no entry with id {entry_id}", parameter="id")
    return web.json_response(entry_json(entry, with_events=True))


async def handle_stats(request: web.Request) -> web.Response:
    query = request.query
    _check_known(query, STATS_PARAMETERS)
    started_from = _single(query, "from")
    started_to = _single(query, "to")
    stats = await entry_stats(
        request.app[STORE],
        started_from=None if started_from is None else parse_timestamp("from", started_from),
        started_to=None if started_to is None else parse_timestamp("to", started_to),
    )
    return web.json_response(stats_json(stats))


async def handle_openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def handle_health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_api_app(store: Store, *, token: str) -> web.Application:
    """The API as an aiohttp application over ``store`` (which the caller opens and closes,
    after the application has stopped). ``token`` must not be empty."""
    if not token:
        raise ValueError("the API needs a non-empty bearer token")
    app = web.Application(middlewares=[json_errors, bearer_auth])
    app[STORE] = store
    app[API_CONFIG] = ApiConfig(token=token)
    app.router.add_get("/api/entries", handle_list)
    app.router.add_get("/api/entries/{id}", handle_entry)
    app.router.add_get("/api/stats", handle_stats)
    app.router.add_get("/openapi.json", handle_openapi)
    app.router.add_get("/healthz", handle_health)
    return app


@dataclass(frozen=True)
class ApiServer:
    """A running API: its runner and where it listens (the real port when 0 was asked)."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@contextlib.asynccontextmanager
async def running_http_api(
    store: Store, *, host: str, port: int, token: str
) -> AsyncIterator[ApiServer]:
    """Serve the API on ``host:port`` (port 0: any free port) until the context exits.

    On exit the listening socket closes, requests in flight get up to 5 seconds to finish,
    then the application is cleaned up; close ``store`` only after that.
    """
    app = make_api_app(store, token=token)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0]
        log.info("HTTP API listening on %s:%d", bound[0], bound[1])
        yield ApiServer(runner=runner, host=str(bound[0]), port=int(bound[1]))
    finally:
        await runner.cleanup()
