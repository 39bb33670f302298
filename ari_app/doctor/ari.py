"""``ari``: ARI answers at ARI_URL and accepts ARI_USER's credentials."""

from __future__ import annotations

import aiohttp

from ari_app.ari.client import AriClient
from ari_app.doctor.lookups import HTTP_TIMEOUT_SECONDS, lookup, reason
from ari_app.doctor.report import CheckResult, Status
from ari_app.settings import Settings


async def check_ari(client: AriClient, settings: Settings) -> CheckResult:
    name = "ari"
    where = f"ARI at {settings.ari_url}"
    try:
        status, body = await lookup(client, "asterisk/info")
    except aiohttp.ClientConnectorError as exc:
        return CheckResult(
            name,
            Status.FAIL,
            f"nothing answers at ARI_URL={settings.ari_url} ({reason(exc.os_error)})",
            "check ARI_URL, that Asterisk runs, and http.conf: enabled = yes, bindaddr and "
            "bindport matching ARI_URL",
        )
    except TimeoutError:
        return CheckResult(
            name,
            Status.FAIL,
            f"{where} did not answer within {HTTP_TIMEOUT_SECONDS:.0f} s",
            "check ARI_URL and that nothing (firewall, proxy) holds the connection",
        )
    except aiohttp.ClientError as exc:
        return CheckResult(name, Status.FAIL, f"{where} failed: {exc}", "check ARI_URL")
    if status == 401:
        empty = " (ARI_PASSWORD is empty)" if not settings.ari_password else ""
        return CheckResult(
            name,
            Status.FAIL,
            f"{where} refused the credentials of ARI_USER={settings.ari_user!r}{empty}",
            "set ARI_USER and ARI_PASSWORD to a [user] section of ari.conf (type = user)",
        )
    if status == 404:
        return CheckResult(
            name,
            Status.FAIL,
            f"the HTTP server at ARI_URL={settings.ari_url} has no ARI (404)",
            "load res_ari.so, set enabled = yes in ari.conf, and include http.conf's prefix "
            "in ARI_URL",
        )
    if status != 200 or not isinstance(body, dict):
        return CheckResult(
            name, Status.FAIL, f"{where} answered HTTP {status}", "see Asterisk's log"
        )
    version = body.get("system", {}).get("version", "unknown version")
    return CheckResult(
        name,
        Status.PASS,
        f"{where} accepts ARI_USER={settings.ari_user!r} (Asterisk {version})",
    )
