"""One typed settings object, read from the environment and passed down explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///ari-digits.sqlite3"


class SettingsError(ValueError):
    """A setting is missing or malformed."""


@dataclass(frozen=True)
class Settings:
    ari_url: str = "http://127.0.0.1:8088/"
    ari_user: str = "ari-digits"
    ari_password: str = ""
    ari_app: str = "digits"
    database_url: str = DEFAULT_DATABASE_URL
    # Key for the HMAC of sensitive digits, so stored hashes cannot be brute-forced offline.
    hash_key: str = ""
    log_level: str = "INFO"
    log_json: bool = False
    reconnect_max_delay: float = 10.0
    # Concurrent REST connections to Asterisk; keep it below http.conf's sessionlimit.
    ari_max_connections: int = 32

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def text(name: str, default: str) -> str:
            return env.get(name, default).strip() or default

        try:
            reconnect = float(text("ARI_RECONNECT_MAX_DELAY", str(defaults.reconnect_max_delay)))
        except ValueError:
            raise SettingsError("ARI_RECONNECT_MAX_DELAY must be a number of seconds") from None
        try:
            connections = int(text("ARI_MAX_CONNECTIONS", str(defaults.ari_max_connections)))
        except ValueError:
            raise SettingsError("ARI_MAX_CONNECTIONS must be a whole number") from None
        if connections < 1:
            raise SettingsError("ARI_MAX_CONNECTIONS must be at least 1")
        url = text("ARI_URL", defaults.ari_url)
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"ARI_URL must start with http:// or https://, got {url!r}")
        return cls(
            ari_url=url if url.endswith("/") else url + "/",
            ari_user=text("ARI_USER", defaults.ari_user),
            ari_password=env.get("ARI_PASSWORD", ""),
            ari_app=text("ARI_APP", defaults.ari_app),
            database_url=text("DATABASE_URL", defaults.database_url),
            hash_key=env.get("DIGITS_HASH_KEY", ""),
            log_level=text("LOG_LEVEL", defaults.log_level).upper(),
            log_json=text("LOG_FORMAT", "text").lower() == "json",
            reconnect_max_delay=reconnect,
            ari_max_connections=connections,
        )
