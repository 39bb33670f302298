"""What the ARI checks share: plain lookups through the product's ARI client
(:meth:`~ari_app.ari.client.AriClient.get`) and how a failed one is reported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from ari_app.ari.client import AriClient
from ari_app.doctor.report import CheckResult, Status

HTTP_TIMEOUT_SECONDS = 5.0


async def lookup(client: AriClient, path: str) -> tuple[int, Any]:
    """``GET /ari/<path>``: the status and the JSON body, within HTTP_TIMEOUT_SECONDS."""
    return await client.get(path, within=HTTP_TIMEOUT_SECONDS)


def reason(error: OSError) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return error.strerror or str(error)


def lookup_failed(name: str, request: str, exc: Exception) -> CheckResult:
    """A lookup that got no usable answer, after ``ari`` passed: a FAIL naming the request."""
    if isinstance(exc, TimeoutError):
        reason = f"no answer within {HTTP_TIMEOUT_SECONDS:g} s"
    elif isinstance(exc, aiohttp.ClientError):
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    else:  # ValueError: not JSON, or not the JSON ARI sends
        reason = f"unexpected answer: {exc}"
    return CheckResult(
        name,
        Status.FAIL,
        f"{request} failed: {reason}",
        "see Asterisk's log; check that nothing (proxy, firewall) between here and ARI_URL "
        "breaks or rewrites the answers",
    )


def named_entries(body: Any, what: str) -> list[Mapping[str, Any]]:
    """A listing's JSON answer: a list of objects with a ``name``; ValueError otherwise."""
    if not isinstance(body, list):
        raise ValueError(f"not a list of {what}")
    for entry in body:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise ValueError(f"an entry without a name among the {what}: {str(entry)[:60]}")
    return body


# What a lookup can raise once ARI has answered check_ari: ARI (or a proxy) went away or
# answered garbage; json.JSONDecodeError is a ValueError.
LOOKUP_ERRORS = (TimeoutError, aiohttp.ClientError, ValueError)
