"""Safe defaults: ``hash-key``, ``ari-password``, ``ari-transport``, ``api-transport`` and
``api-token``. Pure functions of the settings (and the key file), so they run without ARI.

They WARN rather than FAIL: each is a legitimate choice somewhere (a lab, TLS ended by a proxy
in front), but the operator must know what is exposed.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from ari_app.doctor.report import CheckResult, Status, on_asterisk
from ari_app.hash_key import is_private
from ari_app.settings import Settings

# asterisk_conf/ari.conf and docker-compose.yml ship with this password.
SAMPLE_ARI_PASSWORD = "ari-digits-secret"
# docker-compose.yml's placeholder: as public as no key at all.
SAMPLE_HASH_KEY = "change-me-to-a-long-random-secret"
SAMPLE_API_TOKEN = "change-me-to-a-long-random-token"
# Shorter API tokens fall to guessing over the network.
MIN_TOKEN_LENGTH = 16


async def check_security(settings: Settings) -> list[CheckResult]:
    return [
        await asyncio.to_thread(check_hash_key, settings),
        check_ari_password(settings),
        *_each_asterisk(check_ari_transport, settings),
        check_api_transport(settings),
        check_api_token(settings),
    ]


def _each_asterisk(
    check: Callable[[Settings], CheckResult], settings: Settings
) -> list[CheckResult]:
    """``check`` on every ARI endpoint; named by position when there are several."""
    if not settings.more_ari_urls:
        return [check(settings)]
    return [
        on_asterisk(check(settings.for_asterisk(url)), endpoint)
        for endpoint, url in enumerate(settings.ari_urls, start=1)
    ]


def is_loopback(host: str) -> bool:
    """Only this machine can reach ``host``; "" and the wildcard addresses are every interface."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_hash_key(settings: Settings) -> CheckResult:
    name = "hash-key"
    if settings.hash_key == SAMPLE_HASH_KEY:
        return CheckResult(
            name,
            Status.WARN,
            "DIGITS_HASH_KEY is docker-compose.yml's placeholder",
            "set a long random secret (e.g. openssl rand -hex 32)",
        )
    if settings.hash_key:
        return CheckResult(name, Status.PASS, "sensitive entries are hashed with DIGITS_HASH_KEY")
    path = Path(settings.hash_key_file)
    if not path.exists():
        return CheckResult(
            name,
            Status.PASS,
            f"DIGITS_HASH_KEY is not set: serve generates a random key into {path} on first start",
        )
    try:
        key = path.read_text(encoding="ascii").strip()
        private = is_private(path)
    except (OSError, UnicodeDecodeError) as exc:
        return CheckResult(
            name, Status.FAIL, f"cannot read the hash key file {path}: {exc}", "restore it"
        )
    if not key:
        return CheckResult(
            name, Status.FAIL, f"the hash key file {path} is empty", "restore it from a backup"
        )
    if not private:
        return CheckResult(
            name,
            Status.WARN,
            f"the hash key file {path} is readable by other users",
            f"chmod 600 {path}",
        )
    return CheckResult(name, Status.PASS, f"sensitive entries are hashed with the key in {path}")


def check_ari_password(settings: Settings) -> CheckResult:
    name = "ari-password"
    if settings.ari_password == SAMPLE_ARI_PASSWORD:
        return CheckResult(
            name,
            Status.WARN,
            "ARI_PASSWORD is the sample password shipped in asterisk_conf/ari.conf",
            "choose a new one in ari.conf and ARI_PASSWORD",
        )
    if not settings.ari_password:
        return CheckResult(name, Status.WARN, "ARI_PASSWORD is empty", "set the ari.conf password")
    return CheckResult(name, Status.PASS, "not the sample password")


def check_ari_transport(settings: Settings) -> CheckResult:
    name = "ari-transport"
    url = urlsplit(settings.ari_url)
    host = url.hostname or ""
    if url.scheme == "https":
        return CheckResult(name, Status.PASS, f"TLS to {host}")
    if is_loopback(host):
        return CheckResult(name, Status.PASS, f"{host} is this machine (no TLS needed)")
    return CheckResult(
        name,
        Status.WARN,
        f"ARI at {host} over plain HTTP: its password and callers' keys cross the network in clear",
        "use https:// (http.conf tlsenable) or run ari-digits on the Asterisk host",
    )


def check_api_transport(settings: Settings) -> CheckResult:
    name = "api-transport"
    if is_loopback(settings.api_host):
        return CheckResult(name, Status.PASS, f"HTTP bound to {settings.api_host} only")
    return CheckResult(
        name,
        Status.WARN,
        f"HTTP bound to {settings.api_host or 'every interface'} without TLS: the API token and "
        "results cross the network in clear",
        "bind API_HOST=127.0.0.1 behind a TLS reverse proxy",
    )


def check_api_token(settings: Settings) -> CheckResult:
    name = "api-token"
    if not settings.api_token:
        return CheckResult(
            name,
            Status.WARN,
            "API_TOKEN is not set: the operators' API (/api) is off",
            "set API_TOKEN to a long random secret to use it",
        )
    if settings.api_token == SAMPLE_API_TOKEN:
        return CheckResult(
            name,
            Status.WARN,
            "API_TOKEN is docker-compose.yml's placeholder",
            "use a long random secret (e.g. openssl rand -hex 32)",
        )
    if len(settings.api_token) < MIN_TOKEN_LENGTH:
        return CheckResult(
            name,
            Status.WARN,
            f"API_TOKEN is shorter than {MIN_TOKEN_LENGTH} characters",
            "use a long random secret (e.g. openssl rand -hex 32)",
        )
    return CheckResult(name, Status.PASS, "the operators' API needs a token")
