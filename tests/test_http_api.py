"""The operators' HTTP API, served for real (``running_http_api`` on 127.0.0.1, port 0) over
SQLite and PostgreSQL: auth, filters, pagination, errors, the OpenAPI document, and a
schemathesis run against that document."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import jsonschema
import pytest
from openapi_spec_validator import validate as validate_openapi
from yarl import URL

from ari_app.entry_key import new_entry_key
from ari_app.http import api as http_api
from ari_app.http import make_api_app, openapi_document, running_http_api
from ari_app.http.api import API_DISABLED, LIST_PARAMETERS, STATS_PARAMETERS, ApiServer
from ari_app.store import Store
from ari_app.store.migrate import upgrade_to_head
from ari_app.store.queries import Cursor
from tests import pg
from tests.entries_seed import (
    REJECTED_REASON,
    REJECTED_TRANSCRIPT,
    SPECS,
    T0,
    VOICE_CONFIDENCES,
    Spec,
    channel_id,
    channel_name,
    clear,
    newest_first,
    seed,
    store_spec,
)

TOKEN = "s3cret-Token_with.chars~"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BACKENDS = ["sqlite", "postgresql"]
DOC = openapi_document()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    with pg.temporary_postgres_database_sync("ari_digits_http") as url:
        upgrade_to_head(url)
        yield url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'http.sqlite3'}"
        upgrade_to_head(url)
        return url
    url = request.getfixturevalue("pg_url")
    assert isinstance(url, str)
    return url


@dataclass
class Api:
    server: ApiServer
    session: aiohttp.ClientSession
    store: Store
    ids: list[int]

    async def get(
        self, path: str, params: Any = None, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, aiohttp.ClientResponse]:
        """GET ``path`` (a str, or a yarl.URL sent as already encoded) with the token."""
        target: str | URL = path
        if isinstance(path, str) and "%" in path:
            target = URL(self.server.url + path, encoded=True)
        async with self.session.get(
            target, params=params, headers=AUTH if headers is None else headers
        ) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None, response


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[Api]:
    store = Store.from_url(db_url)
    try:
        await clear(store)
        ids = await seed(store)
        async with (
            running_http_api(store, host="127.0.0.1", port=0, token=TOKEN) as server,
            aiohttp.ClientSession(base_url=server.url) as session,
        ):
            yield Api(server, session, store, ids)
    finally:
        await store.close()


def check_schema(name: str, body: Any) -> None:
    """``body`` is valid against components/schemas/``name`` of the served document."""
    root = {"$ref": f"#/components/schemas/{name}", "components": DOC["components"]}
    jsonschema.Draft202012Validator(
        root, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    ).validate(body)


def expected_ids(ids: list[int], keep: Any) -> list[int]:
    chosen = [(i, s) for i, s in enumerate(SPECS) if keep(i, s)]
    return newest_first([ids[i] for i, _ in chosen], tuple(s for _, s in chosen))


# --------------------------------------------------------------------------- open routes


async def test_health_readiness_metrics_and_openapi_need_no_token(api: Api) -> None:
    status, body, _ = await api.get("/healthz", headers={})
    assert (status, body) == (200, {"status": "ok"})
    check_schema("Health", body)
    # No ARI application beside this server: ready is the database answering.
    status, body, _ = await api.get("/readyz", headers={})
    assert (status, body) == (
        200,
        {"status": "ready", "checks": {"database": "ok"}, "not_ready": []},
    )
    check_schema("Readiness", body)
    async with api.session.get("/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert "ari_digits_entries_started_total" in await response.text()
    status, body, response = await api.get("/openapi.json", headers={})
    assert status == 200
    assert response.content_type == "application/json"
    assert body == DOC


def test_openapi_document_is_valid_and_complete() -> None:
    validate_openapi(DOC)  # OpenAPI 3.1 (JSON Schema 2020-12) structural validation
    app = make_api_app(Store.from_url("sqlite+aiosqlite:///:memory:"), token="t")
    served = {
        (route.resource.canonical, route.method.lower())
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {(path, method) for path, ops in DOC["paths"].items() for method in ops}
    assert served == documented
    parameters = {p["name"] for p in DOC["paths"]["/api/entries"]["get"]["parameters"]}
    assert parameters == LIST_PARAMETERS
    parameters = {p["name"] for p in DOC["paths"]["/api/stats"]["get"]["parameters"]}
    assert parameters == STATS_PARAMETERS
    # Every /api operation needs the token, the other two explicitly do not.
    assert DOC["security"] == [{"bearer": []}]
    for path, ops in DOC["paths"].items():
        assert ("security" in ops["get"]) is (not path.startswith("/api/")), path
        if path.startswith("/api/"):
            assert {"400", "401", "503"} <= set(ops["get"]["responses"])


async def test_without_a_token_the_api_is_disabled(db_url: str) -> None:
    """API_TOKEN empty: the server still runs (health, readiness, metrics), and every other
    path says the API is disabled, whatever credentials are sent."""
    store = Store.from_url(db_url)
    try:
        async with (
            running_http_api(store, host="127.0.0.1", port=0, token="") as server,
            aiohttp.ClientSession(base_url=server.url) as session,
        ):
            for path in ("/api/entries", "/api/entries/1", "/api/stats", "/nope"):
                for headers in ({}, AUTH, {"Authorization": "Bearer "}):
                    async with session.get(path, headers=headers) as response:
                        body = await response.json()
                        assert response.status == 503, path
                        assert "WWW-Authenticate" not in response.headers
                    assert body == {"error": API_DISABLED}
                    assert "API_TOKEN" in body["error"]
                    check_schema("Error", body)
            for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
                async with session.get(path) as response:
                    assert response.status == 200, path
    finally:
        await store.close()


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN} extra"},
    ],
)
@pytest.mark.parametrize(
    "path", ["/api/entries", "/api/entries/1", "/api/stats", "/api/nope", "/api", "/nope"]
)
async def test_api_routes_need_the_token(api: Api, headers: dict[str, str], path: str) -> None:
    status, body, response = await api.get(path, headers=headers)
    assert status == 401
    assert body["error"].startswith("missing or invalid bearer token")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    check_schema("Error", body)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_the_token_opens_the_api(api: Api, scheme: str) -> None:
    status, body, _ = await api.get("/api/stats", headers={"Authorization": f"{scheme} {TOKEN}"})
    assert status == 200
    status, body, _ = await api.get("/api/nope")
    assert status == 404 and "error" in body


# --------------------------------------------------------------------------- listing


@pytest.mark.parametrize(
    ("params", "keep"),
    [
        ({}, lambda i, s: True),
        ({"status": "completed"}, lambda i, s: s.status == "completed"),
        ({"status": "in_progress"}, lambda i, s: s.status is None),
        ({"label": "phone"}, lambda i, s: s.label == "phone"),
        ({"caller_number": "+15550002"}, lambda i, s: s.caller == "+15550002"),
        ({"channel": channel_id(3)}, lambda i, s: i == 3),
        ({"channel": channel_name(7)}, lambda i, s: i == 7),
        ({"transport": "agi"}, lambda i, s: s.transport == "agi"),
        ({"confirmed": "unanswered"}, lambda i, s: s.confirmed == "unanswered"),
        (
            {"from": "2024-05-17T12:01:00Z", "to": "2024-05-17T12:05:00Z"},
            lambda i, s: 1 <= s.minute < 5,
        ),
        ({"from": "2024-05-17T14:05:00+02:00"}, lambda i, s: s.minute >= 5),
        ({"to": "2024-05-17"}, lambda i, s: False),
        ({"from": "2024-05-17", "label": "account", "confirmed": "yes"}, lambda i, s: i == 6),
    ],
)
async def test_list_filters(api: Api, params: dict[str, str], keep: Any) -> None:
    status, body, response = await api.get("/api/entries", params)
    assert status == 200, body
    assert response.content_type == "application/json"
    check_schema("EntryPage", body)
    assert [e["id"] for e in body["entries"]] == expected_ids(api.ids, keep)
    assert body["next_cursor"] is None


async def test_offset_kept_when_the_plus_became_a_space(api: Api) -> None:
    # An unencoded "+02:00" in a query string arrives as " 02:00".
    status, body, _ = await api.get("/api/entries?from=2024-05-17T14:05:00+02:00")
    assert status == 200, body
    assert [e["id"] for e in body["entries"]] == expected_ids(api.ids, lambda i, s: s.minute >= 5)


async def test_entry_json(api: Api) -> None:
    status, body, _ = await api.get("/api/entries", {"channel": channel_id(0)})
    assert status == 200
    [entry] = body["entries"]
    stored = await api.store.get_entry(api.ids[0])
    assert stored is not None and stored.entry_key is not None
    assert entry == {
        "id": api.ids[0],
        "entry_key": stored.entry_key,
        "started_at": "2024-05-17T12:00:00Z",
        "ended_at": "2024-05-17T12:00:09Z",
        "status": "completed",
        "label": "phone",
        "digits": "4155550123",
        "sensitive": False,
        "confirmed": "yes",
        "attempts": 1,
        "terminated_by": "max_digits",
        "caller_number": "+15550001",
        "caller_name": "Caller Ünïcode",
        "channel_id": channel_id(0),
        "channel_name": channel_name(0),
        "transport": "ari",
        "asterisk_id": "00:11:22:33:44:55",
        "error": None,
        "parameters": {"num_digits": 4, "label": "phone"},
    }


async def test_pages_and_arrivals(api: Api) -> None:
    status, first, _ = await api.get("/api/entries", {"limit": "3"})
    assert status == 200
    assert len(first["entries"]) == 3 and first["next_cursor"]
    newer = await store_spec(api.store, 30, Spec(40, "phone", "completed", "12", 10))
    older = await store_spec(api.store, 31, Spec(-40, "pin", None))
    seen = [e["id"] for e in first["entries"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        status, page, _ = await api.get("/api/entries", {"limit": "3", "cursor": cursor})
        assert status == 200, page
        check_schema("EntryPage", page)
        seen += [e["id"] for e in page["entries"]]
        cursor = page["next_cursor"]
    assert seen == [*newest_first(api.ids), older]
    assert newer not in seen
    status, body, _ = await api.get("/api/entries", {"limit": "500"})
    assert [e["id"] for e in body["entries"]] == [newer, *seen]


async def test_default_and_maximum_limit(api: Api) -> None:
    await seed(api.store, tuple(Spec(100 + i % 50, "bulk", "completed") for i in range(60)))
    status, body, _ = await api.get("/api/entries")
    assert status == 200
    assert len(body["entries"]) == 50 and body["next_cursor"]
    status, body, _ = await api.get("/api/entries", {"limit": "500"})
    assert status == 200
    assert len(body["entries"]) == 68 and body["next_cursor"] is None


# --------------------------------------------------------------------------- one entry


async def test_entry_with_events(api: Api) -> None:
    status, body, _ = await api.get(f"/api/entries/{api.ids[0]}")
    assert status == 200
    check_schema("EntryDetail", body)
    kinds = [e["kind"] for e in body["events"]]
    assert kinds == ["prompt", *["digit"] * 10, "confirmation"]
    assert [e["seq"] for e in body["events"]] == list(range(12))
    assert "".join(e["digit"] for e in body["events"] if e["kind"] == "digit") == "4155550123"
    assert body["events"][1] == {
        "seq": 1,
        "kind": "digit",
        "attempt": 1,
        "at_ms": 1200,
        "digit": "4",
        "source": "key",
        "duration_ms": 90,
        "detail": None,
        "confidence": None,
        "rejected": None,
    }
    assert body["events"][-1]["digit"] == "1"


async def test_spoken_entry_events_carry_confidence_and_rejection(api: Api) -> None:
    status, body, _ = await api.get(f"/api/entries/{api.ids[6]}")  # "999", spoken
    assert status == 200
    check_schema("EntryDetail", body)
    events = body["events"]
    assert [e["kind"] for e in events] == [
        "prompt",
        "utterance",
        "utterance",
        *["digit"] * 3,
        "confirmation",
    ]
    assert events[1] == {
        "seq": 1,
        "kind": "utterance",
        "attempt": 1,
        "at_ms": 1500,
        "digit": None,
        "source": "voice",
        "duration_ms": None,
        "detail": REJECTED_TRANSCRIPT,
        "confidence": None,
        "rejected": REJECTED_REASON,
    }
    assert (events[2]["detail"], events[2]["rejected"]) == ("nine nine nine", None)
    digits = events[3:6]
    assert [(e["digit"], e["source"]) for e in digits] == [("9", "voice")] * 3
    assert [e["confidence"] for e in digits] == list(VOICE_CONFIDENCES[:3])
    # Keys, prompts and confirmations have neither.
    for event in (events[0], events[-1]):
        assert (event["confidence"], event["rejected"]) == (None, None)


async def test_sensitive_entries_never_show_clear_digits(api: Api) -> None:
    status, detail, response = await api.get(f"/api/entries/{api.ids[2]}")
    raw = await response.text()
    assert status == 200
    assert detail["sensitive"] is True
    assert detail["digits"] == "**21"
    assert {e["digit"] for e in detail["events"] if e["kind"] == "digit"} == {"*"}
    assert "4321" not in raw and "432" not in raw
    # Spoken: the transcripts are redacted, the confidences and the rejection reason kept.
    utterances = [e for e in detail["events"] if e["kind"] == "utterance"]
    assert [(e["detail"], e["rejected"]) for e in utterances] == [
        ("[redacted]", REJECTED_REASON),
        ("[redacted]", None),
    ]
    assert "four" not in raw and REJECTED_TRANSCRIPT not in raw
    confidences = [e["confidence"] for e in detail["events"] if e["kind"] == "digit"]
    assert confidences == list(VOICE_CONFIDENCES)
    status, listing, response = await api.get("/api/entries", {"label": "pin"})
    assert [e["digits"] for e in listing["entries"]] == ["**21"]
    # The keyed hash stays in the database.
    for text in (raw, await response.text()):
        assert "input_hash" not in text and "abab" not in text


async def test_in_progress_entry(api: Api) -> None:
    status, body, _ = await api.get(f"/api/entries/{api.ids[4]}")
    assert status == 200
    check_schema("EntryDetail", body)
    assert body["status"] == "in_progress"
    assert body["ended_at"] is None and body["digits"] is None and body["events"] == []


async def test_an_entry_is_found_by_its_key_as_well(api: Api) -> None:
    """DIGITS_ID is the entry's key: what the dialplan got finds the entry."""
    entry = await api.store.get_entry(api.ids[0])
    assert entry is not None and entry.entry_key is not None
    status, by_key, _ = await api.get(f"/api/entries/{entry.entry_key}")
    assert status == 200
    check_schema("EntryDetail", by_key)
    _, by_id, _ = await api.get(f"/api/entries/{api.ids[0]}")
    assert by_key == by_id
    assert by_key["entry_key"] == entry.entry_key
    status, body, _ = await api.get(f"/api/entries/{new_entry_key()}")
    assert (status, body["parameter"]) == (404, "id")
    status, body, _ = await api.get("/api/entries/not-a-key")
    assert (status, body["parameter"]) == (400, "id")


@pytest.mark.parametrize(
    "entry_id", ["0", "999999", "00", str(2**63 - 1), str(2**63), "99999999999999999999"]
)
async def test_missing_entry_is_404(api: Api, entry_id: str) -> None:
    status, body, _ = await api.get(f"/api/entries/{entry_id}")
    assert status == 404
    assert body["parameter"] == "id"
    check_schema("Error", body)


# --------------------------------------------------------------------------- stats


async def test_stats(api: Api) -> None:
    status, body, _ = await api.get("/api/stats")
    assert status == 200
    check_schema("Stats", body)
    assert body["total"] == 8 and body["finished"] == 7 and body["completed"] == 2
    assert body["completion_rate"] == pytest.approx(2 / 7)
    assert body["median_first_digit_ms"] == 1200.0
    assert body["entries_with_digits"] == 5
    assert body["by_status"]["completed"] == 2 and body["by_status"]["rejected"] == 0
    assert body["by_label"][0] == {"label": "phone", "count": 3}
    assert {"label": None, "count": 1} in body["by_label"]
    assert body["from"] is None and body["to"] is None

    status, body, _ = await api.get(
        "/api/stats", {"from": "2024-05-17T12:01:00Z", "to": "2024-05-17T14:06:00+02:00"}
    )
    assert status == 200
    assert body["from"] == "2024-05-17T12:01:00Z" and body["to"] == "2024-05-17T12:06:00Z"
    assert body["total"] == 6 and body["median_first_digit_ms"] == 1400.0

    status, body, _ = await api.get("/api/stats", {"from": "2030-01-01"})
    assert body["total"] == 0
    assert body["completion_rate"] is None and body["median_first_digit_ms"] is None
    check_schema("Stats", body)


# --------------------------------------------------------------------------- errors


def cursor_for(days: int) -> str:
    return Cursor(started_at=T0 + timedelta(days=days), id=1).encode()


@pytest.mark.parametrize(
    ("path", "parameter"),
    [
        ("/api/entries?from=yesterday", "from"),
        ("/api/entries?to=2024-13-01", "to"),
        ("/api/entries?from=", "from"),
        ("/api/entries?from=2024-05-18&to=2024-05-17", "to"),
        ("/api/entries?status=done", "status"),
        ("/api/entries?status=completed&status=short", "status"),
        ("/api/entries?transport=sip", "transport"),
        ("/api/entries?confirmed=maybe", "confirmed"),
        ("/api/entries?label=a%00b", "label"),
        ("/api/entries?label=" + "x" * 300, "label"),
        ("/api/entries?limit=0", "limit"),
        ("/api/entries?limit=501", "limit"),
        ("/api/entries?limit=-1", "limit"),
        ("/api/entries?limit=ten", "limit"),
        ("/api/entries?limit=1e2", "limit"),
        ("/api/entries?limit=99999999999999999999999", "limit"),
        ("/api/entries?cursor=garbage", "cursor"),
        ("/api/entries?cursor=" + cursor_for(1)[:-1], "cursor"),
        ("/api/entries?lable=phone", "lable"),
        ("/api/entries/abc", "id"),
        ("/api/entries/-1", "id"),
        ("/api/entries/1.5", "id"),
        ("/api/entries/%D9%A5", "id"),  # an Arabic-Indic five: int() would take it
        ("/api/entries/1?verbose=1", "verbose"),
        ("/api/stats?from=soon", "from"),
        ("/api/stats?from=2024-05-18&to=2024-05-17", "to"),
        ("/api/stats?status=completed", "status"),
    ],
)
async def test_bad_input_is_400(api: Api, path: str, parameter: str) -> None:
    status, body, response = await api.get(path)
    assert status == 400, body
    assert response.content_type == "application/json"
    assert body["parameter"] == parameter
    assert body["error"]
    check_schema("Error", body)


async def test_other_errors_are_json(api: Api) -> None:
    async with api.session.post("/api/entries", headers=AUTH) as response:
        assert response.status == 405
        assert response.headers["Allow"] == "GET,HEAD"
        assert (await response.json())["error"]
    status, body, _ = await api.get("/nope")
    assert status == 404 and body["error"]
    status, body, _ = await api.get("/healthz/", headers={})  # not the public route itself
    assert status == 401


async def test_unexpected_failure_is_an_opaque_500(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail: connection to db-host refused")

    monkeypatch.setattr(http_api, "entry_stats", broken)
    status, body, _ = await api.get("/api/stats")
    assert (status, body) == (500, {"error": "internal error"})
    assert "secret detail" in caplog.text  # logged for the operator, not sent


# --------------------------------------------------------------------------- schemathesis


@pytest.mark.timeout(300)
async def test_schemathesis_finds_no_server_errors(api: Api, tmp_path: Path) -> None:
    """Property-based requests generated from the served OpenAPI document (valid and
    invalid inputs, the coverage and fuzzing phases): no 5xx, every response (status,
    content type, body, headers) as documented, and auth enforced."""
    # Some matching data for valid generated filters to find.
    await seed(api.store, tuple(Spec(-i, "bulk", "completed", "1234", 100 + i) for i in range(20)))
    schemathesis = Path(sys.executable).with_name("schemathesis")
    process = await asyncio.create_subprocess_exec(
        str(schemathesis),
        "run",
        f"{api.server.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance,ignored_auth,"
        "negative_data_rejection",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "60",
        "--seed",
        "20241117",
        "--generation-database",
        "none",
        "--workers",
        "1",
        "--no-color",
        "--report",
        "junit",
        "--report-junit-path",
        str(tmp_path / "junit.xml"),
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    tested = {
        case.get("name")
        for case in ElementTree.parse(tmp_path / "junit.xml").getroot().iter("testcase")
    }
    # Schemathesis leaves out the document's own route; everything else was exercised.
    assert tested == {
        "GET /api/entries",
        "GET /api/entries/{id}",
        "GET /api/stats",
        "GET /healthz",
        "GET /readyz",
        "GET /metrics",
    }, text
