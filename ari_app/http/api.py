"""The service's HTTP server (aiohttp): the operators' API, metrics, health and readiness.

Routes (see :func:`ari_app.http.schema.openapi_document` for the full contract):

- ``GET /api/entries``: filters ``from``, ``to``, ``status``, ``label``, ``caller_number``,
  ``channel``, ``transport``, ``confirmed``; ``limit`` (1-500, default 50) and ``cursor``.
- ``GET /api/entries/{id}``: one entry with its events, by id or by key (``DIGITS_ID``).
- ``GET /api/stats``: aggregates over ``[from, to)``.
- Open routes (no token): ``GET /healthz`` (the process answers), ``GET /readyz`` (200 when
  ARI is connected, to one Asterisk at least, and the database answers ``SELECT 1``;
  otherwise 503 naming what is not ready), ``GET /metrics`` (Prometheus text format) and ``GET /openapi.json``; more with
  ``make_api_app(open_routes=...)`` (:func:`add_open_routes`).

The server runs whether or not a token is configured, so that health, readiness and metrics
are always there. Every other path, unknown ones included, needs
``Authorization: Bearer <token>`` (compared in constant time); without it, 401. With no token
configured (``API_TOKEN`` empty) those paths answer **503** ``{"error": "the operators' API is
disabled: ..."}``: no credentials could help (so not 401), and the operator turns it on by
setting ``API_TOKEN`` and restarting. Bad input is a 400 naming the parameter; every error is a
JSON object ``{"error": ..., "parameter": ...}``; an unexpected failure is a logged 500 that
says nothing about its cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from multidict import MultiMapping

from ari_app.entry_key import is_entry_key
from ari_app.journal import JournalBacklog
from ari_app.metrics import Metrics
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
    "API_DISABLED",
    "METRICS",
    "STORE",
    "ApiConfig",
    "ApiServer",
    "add_open_routes",
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
# A readiness probe must answer within its own timeout (often 1 s in Kubernetes); a database
# that takes longer than this to run SELECT 1 is not ready.
READINESS_DB_TIMEOUT_S: Final = 1.0
API_DISABLED: Final = (
    "the operators' API is disabled: set API_TOKEN on the server (and restart it) to enable it"
)
_DIGITS: Final = re.compile(r"[0-9]{1,20}")
_BEARER: Final = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ApiConfig:
    """What the server needs besides the store and the metrics."""

    token: str  # empty: the /api routes are disabled
    # Each Asterisk's connection state, in ARI_URL's order; None: this server runs no ARI
    # application, so readiness is the database alone.
    ari_connected: Callable[[], Sequence[bool]] | None = None
    # The local journal's backlog; None: no journal (the database alone answers readiness).
    journal_backlog: Callable[[], JournalBacklog] | None = None


STORE: Final = web.AppKey("store", Store)
API_CONFIG: Final = web.AppKey("api_config", ApiConfig)
METRICS: Final = web.AppKey("metrics", Metrics)
# Canonical paths of the routes served without the token (filled by add_open_routes).
OPEN_PATHS: Final = web.AppKey("open_paths", set[str])


def add_open_routes(app: web.Application, routes: Iterable[web.RouteDef]) -> None:
    """Serve ``routes`` (``web.get("/media/{name}", handler)``, ...) without the token."""
    for route in routes:
        for registered in route.register(app.router):
            if registered.resource is not None:  # always set for a route added by path
                app[OPEN_PATHS].add(registered.resource.canonical)


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
    """Every route but the open ones needs the bearer token; so does every unknown path (fail
    closed: a 404 says nothing without it). Without a configured token, none of them is
    served."""
    config = request.app[API_CONFIG]
    resource = request.match_info.route.resource
    if resource is None or resource.canonical not in request.app[OPEN_PATHS]:
        if not config.token:
            return error_response(503, API_DISABLED)
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
    store = request.app[STORE]
    if is_entry_key(raw):
        entry = await store.get_entry_by_key(raw)
    elif _DIGITS.fullmatch(raw):
        entry_id = int(raw)
        entry = await get_entry(store, entry_id) if entry_id <= MAX_ENTRY_ID else None
    else:
        raise QueryError(
            "id", f"must be a positive integer or an entry key (DIGITS_ID); got {raw[:64]!r}"
        )
    if entry is None:
        return error_response(404, f"no entry with id {raw}", parameter="id")
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


async def _database_state(store: Store) -> str:
    try:
        async with asyncio.timeout(READINESS_DB_TIMEOUT_S):
            await store.ping()
    except TimeoutError:
        log.warning("readiness: the database did not answer within %.1f s", READINESS_DB_TIMEOUT_S)
        return "no answer"
    except Exception as exc:
        # The cause stays in the log: the route is open, and it may name hosts or users.
        log.warning("readiness: the database is unreachable: %s", exc)
        return "unreachable"
    return "ok"


async def handle_ready(request: web.Request) -> web.Response:
    config = request.app[API_CONFIG]
    checks: dict[str, str] = {}
    body: dict[str, object] = {}
    if config.ari_connected is not None:
        states = config.ari_connected()
        # Calls still flow through the Asterisks that are connected: ready, saying so.
        up = sum(states)
        checks["ari"] = "ok" if up == len(states) else "degraded" if up else "not connected"
        if len(states) > 1:
            body["ari_endpoints"] = {
                str(endpoint): "ok" if connected else "not connected"
                for endpoint, connected in enumerate(states, start=1)
            }
    checks["database"] = await _database_state(request.app[STORE])
    if config.journal_backlog is not None:
        backlog = config.journal_backlog()
        # The journal absorbs a database outage: entries are still taken and kept, so the
        # service stays ready, saying so. A journal that cannot write is not ready.
        if checks["database"] != "ok" and not backlog.journal_failing:
            checks["database"] = "degraded"
        checks["journal"] = "failing" if backlog.journal_failing else "ok"
        body["journal"] = {
            "backlog": backlog.records,
            "oldest_unsent_s": (
                None if backlog.oldest_age_s is None else round(backlog.oldest_age_s, 3)
            ),
        }
    not_ready = sorted(name for name, state in checks.items() if state not in ("ok", "degraded"))
    return web.json_response(
        {
            "status": "not_ready" if not_ready else "ready",
            "checks": checks,
            "not_ready": not_ready,
            **body,
        },
        status=503 if not_ready else 200,
    )


async def handle_metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].exposition(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})


def make_api_app(
    store: Store,
    *,
    token: str,
    metrics: Metrics | None = None,
    ari_connected: Callable[[], Sequence[bool]] | None = None,
    journal_backlog: Callable[[], JournalBacklog] | None = None,
    open_routes: Iterable[web.RouteDef] = (),
) -> web.Application:
    """The HTTP server as an aiohttp application over ``store`` (which the caller opens and
    closes, after the application has stopped). ``token`` empty: /api disabled (503).
    ``metrics``: what ``/metrics`` exposes (none: an instance of its own, all zero).
    ``ari_connected``: for ``/readyz``; None when no ARI application runs beside it.
    ``journal_backlog``: for ``/readyz``: the database may be down while the journal holds.
    ``open_routes``: further routes served without the token."""
    app = web.Application(middlewares=[json_errors, bearer_auth])
    app[STORE] = store
    app[API_CONFIG] = ApiConfig(
        token=token, ari_connected=ari_connected, journal_backlog=journal_backlog
    )
    app[METRICS] = metrics if metrics is not None else Metrics()
    app[OPEN_PATHS] = set()
    app.router.add_get("/api/entries", handle_list)
    app.router.add_get("/api/entries/{id}", handle_entry)
    app.router.add_get("/api/stats", handle_stats)
    add_open_routes(
        app,
        [
            web.get("/openapi.json", handle_openapi),
            web.get("/healthz", handle_health),
            web.get("/readyz", handle_ready),
            web.get("/metrics", handle_metrics),
            *open_routes,
        ],
    )
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
    store: Store,
    *,
    host: str,
    port: int,
    token: str,
    metrics: Metrics | None = None,
    ari_connected: Callable[[], Sequence[bool]] | None = None,
    journal_backlog: Callable[[], JournalBacklog] | None = None,
    open_routes: Iterable[web.RouteDef] = (),
) -> AsyncIterator[ApiServer]:
    """Serve :func:`make_api_app` on ``host:port`` (port 0: any free port) until the context
    exits.

    On exit the listening socket closes, requests in flight get up to 5 seconds to finish,
    then the application is cleaned up; close ``store`` only after that.
    """
    app = make_api_app(
        store,
        token=token,
        metrics=metrics,
        ari_connected=ari_connected,
        journal_backlog=journal_backlog,
        open_routes=open_routes,
    )
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
