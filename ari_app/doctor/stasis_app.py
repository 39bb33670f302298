"""``stasis-app``: is the service's Stasis app registered (is ``ari-digits serve`` connected)?

Only a WARN when it is not: see :mod:`ari_app.doctor`.
"""

from __future__ import annotations

from collections.abc import Iterable

from ari_app.ari.client import AriClient
from ari_app.doctor.lookups import LOOKUP_ERRORS, lookup, lookup_failed, named_entries
from ari_app.doctor.report import CheckResult, Status


def check_stasis_app(applications: Iterable[str], app: str) -> CheckResult:
    name = "stasis-app"
    if app in applications:
        return CheckResult(
            name, Status.PASS, f"Stasis app {app!r} is registered: ari-digits serve is connected"
        )
    return CheckResult(
        name,
        Status.WARN,
        f"Stasis app {app!r} is not registered: ari-digits serve is not connected to this "
        "Asterisk, and Stasis() calls fail until it is",
        f"start ari-digits serve with this ARI_URL and ARI_APP={app}, the name the dialplan's "
        "Stasis() uses",
    )


async def fetch_stasis_app(client: AriClient, app: str) -> CheckResult:
    name, request = "stasis-app", "GET /applications"
    try:
        status, body = await lookup(client, "applications")
        if status == 200:
            applications = named_entries(body, "applications")
            return check_stasis_app((str(a["name"]) for a in applications), app)
    except LOOKUP_ERRORS as exc:
        return lookup_failed(name, request, exc)
    return CheckResult(
        name,
        Status.FAIL,
        f"cannot list Stasis apps: {request} answered HTTP {status}",
        "load res_ari_applications.so",
    )
