"""One typed settings object, read from the environment and passed down explicitly."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///ari-digits.sqlite3"
# Next to the default SQLite database: where serve keeps the key it generates when
# DIGITS_HASH_KEY is unset (see ari_app.hash_key).
DEFAULT_HASH_KEY_FILE = "ari-digits.hash-key"
DEFAULT_JOURNAL_PATH = "var/journal.sqlite3"
# entries.serve_id is String(128).
MAX_SERVE_ID = 128


class SettingsError(ValueError):
    """A setting is missing or malformed."""


SPEECH_DEVICES = ("cpu", "cuda", "auto")  # as faster-whisper takes them


@dataclass(frozen=True)
class Settings:
    ari_url: str = "http://127.0.0.1:8088/"
    # Further Asterisks (ARI_URL given as a comma-separated list), each with a connection of
    # its own; they share ARI_USER, ARI_PASSWORD and ARI_APP.
    more_ari_urls: tuple[str, ...] = ()
    ari_user: str = "ari-digits"
    ari_password: str = ""
    ari_app: str = "digits"
    database_url: str = DEFAULT_DATABASE_URL
    # The local journal (ari_app.journal): on the app's own disk, never on a network share.
    journal_path: str = DEFAULT_JOURNAL_PATH
    # Cap on the journal's size, so an outage cannot fill the disk: past it, new entries end
    # with status error (the calls still go back to the dialplan).
    journal_max_mb: int = 1024
    # This serve's name in the entries it stores (SERVE_ID); "" = default_serve_id(journal_path).
    serve_id: str = ""
    # Key for the HMAC of sensitive digits, so stored hashes cannot be brute-forced offline.
    hash_key: str = ""
    hash_key_file: str = DEFAULT_HASH_KEY_FILE
    log_level: str = "INFO"
    log_json: bool = False
    # Short, so that calls flow again within about a second of Asterisk answering after a
    # restart; an attempt against a stopped Asterisk costs one refused TCP connect.
    reconnect_max_delay: float = 1.0
    # Ping the event websocket this often: a stalled Asterisk (no close, no data) is noticed
    # within 1.5 times this, and handled like a dropped connection.
    ari_heartbeat: float = 5.0
    # Concurrent REST connections to Asterisk; keep it below http.conf's sessionlimit.
    ari_max_connections: int = 32
    # Spoken digits: one shared RTP port receives every entry's audio (see speech/rtp.py).
    speech: bool = True
    rtp_host: str = "127.0.0.1"
    rtp_ports: tuple[int, int] = (0, 0)  # (0, 0): any free port
    rtp_advertised_host: str = ""  # what Asterisk sends to; "" = rtp_host
    speech_model: str = ""  # a CTranslate2 Whisper directory or name; "" = bundled tiny.en
    speech_workers: int = 2
    # Each decode in a worker process with its own model, off this process's GIL.
    speech_processes: bool = False
    speech_device: str = "cpu"  # "cuda": faster-whisper on a GPU (CTranslate2 built with CUDA)
    # The HTTP server (health, readiness, metrics, text prompts' media) always runs; its
    # operators' API (/api) answers only once a token is set.
    api_host: str = "127.0.0.1"
    api_port: int = 8090
    api_token: str = ""
    # FastAGI: AGI(agi://HOST:PORT/collect?...). None: no FastAGI server.
    agi_host: str = "127.0.0.1"
    agi_port: int | None = None
    # Text prompts (prompt=tts:...): eSpeak NG voice and words per minute, the rendered audio's
    # directory ("" = $XDG_CACHE_HOME/ari-digits/prompts) and the base URL Asterisk fetches it
    # from ("" = http://API_HOST:API_PORT).
    tts_voice: str = "en-us"
    tts_rate: int = 160
    tts_cache_dir: str = ""
    media_base_url: str = ""

    @property
    def serve_name(self) -> str:
        """The owner written into this serve's entries: SERVE_ID, or its default."""
        return self.serve_id or default_serve_id(self.journal_path)

    @property
    def ari_urls(self) -> tuple[str, ...]:
        """Every Asterisk to take calls from, in ARI_URL's order."""
        return (self.ari_url, *self.more_ari_urls)

    def for_asterisk(self, url: str) -> Settings:
        """These settings seen from one Asterisk: ``url`` is the only ARI endpoint."""
        return replace(self, ari_url=url, more_ari_urls=())

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
            heartbeat = float(text("ARI_HEARTBEAT", str(defaults.ari_heartbeat)))
        except ValueError:
            raise SettingsError("ARI_HEARTBEAT must be a number of seconds") from None
        if not 0.2 <= heartbeat <= 300:
            raise SettingsError("ARI_HEARTBEAT must be between 0.2 and 300 seconds")
        try:
            connections = int(text("ARI_MAX_CONNECTIONS", str(defaults.ari_max_connections)))
        except ValueError:
            raise SettingsError("ARI_MAX_CONNECTIONS must be a whole number") from None
        if connections < 1:
            raise SettingsError("ARI_MAX_CONNECTIONS must be at least 1")
        first_url, *more_urls = parse_ari_urls(text("ARI_URL", defaults.ari_url))
        speech = text("SPEECH", "on").lower()
        if speech not in ("on", "off"):
            raise SettingsError(f"SPEECH must be on or off, got {speech!r}")
        try:
            workers = int(text("SPEECH_WORKERS", str(defaults.speech_workers)))
        except ValueError:
            raise SettingsError("SPEECH_WORKERS must be a whole number") from None
        if workers < 1:
            raise SettingsError("SPEECH_WORKERS must be at least 1")
        processes = text("SPEECH_PROCESSES", "on" if defaults.speech_processes else "off").lower()
        if processes not in ("on", "off"):
            raise SettingsError(f"SPEECH_PROCESSES must be on or off, got {processes!r}")
        device = text("SPEECH_DEVICE", defaults.speech_device).lower()
        if device not in SPEECH_DEVICES:
            raise SettingsError(f"SPEECH_DEVICE must be one of {', '.join(SPEECH_DEVICES)}")
        rtp_host = text("RTP_HOST", defaults.rtp_host)
        try:
            api_port = int(text("API_PORT", str(defaults.api_port)))
        except ValueError:
            raise SettingsError("API_PORT must be a TCP port") from None
        if not 0 <= api_port <= 65535:
            raise SettingsError(f"API_PORT must be between 0 and 65535, got {api_port}")
        try:
            tts_rate = int(text("TTS_RATE", str(defaults.tts_rate)))
        except ValueError:
            raise SettingsError("TTS_RATE must be a whole number of words per minute") from None
        if not 80 <= tts_rate <= 450:
            raise SettingsError(f"TTS_RATE must be between 80 and 450, got {tts_rate}")
        try:
            journal_max_mb = int(text("JOURNAL_MAX_MB", str(defaults.journal_max_mb)))
        except ValueError:
            raise SettingsError("JOURNAL_MAX_MB must be a whole number of megabytes") from None
        if journal_max_mb < 1:
            raise SettingsError("JOURNAL_MAX_MB must be at least 1")
        serve_id = text("SERVE_ID", "")
        if len(serve_id) > MAX_SERVE_ID:
            raise SettingsError(f"SERVE_ID must be at most {MAX_SERVE_ID} characters")
        media_url = text("MEDIA_BASE_URL", "")
        if media_url and not media_url.startswith(("http://", "https://")):
            raise SettingsError(
                f"MEDIA_BASE_URL must start with http:// or https://, got {media_url!r}"
            )
        return cls(
            tts_voice=text("TTS_VOICE", defaults.tts_voice),
            tts_rate=tts_rate,
            # "~/prompts" from a systemd unit or env file: no shell expanded it.
            tts_cache_dir=os.path.expanduser(text("TTS_CACHE_DIR", "")),
            media_base_url=media_url,
            api_host=text("API_HOST", defaults.api_host),
            api_port=api_port,
            api_token=env.get("API_TOKEN", ""),
            agi_host=text("AGI_HOST", defaults.agi_host),
            agi_port=parse_agi_port(env.get("AGI_PORT", "")),
            speech=speech == "on",
            rtp_host=rtp_host,
            rtp_ports=_port_range(text("RTP_PORTS", "0")),
            rtp_advertised_host=text("RTP_ADVERTISED_HOST", ""),
            speech_model=text("SPEECH_MODEL", ""),
            speech_workers=workers,
            speech_processes=processes == "on",
            speech_device=device,
            ari_url=first_url,
            more_ari_urls=tuple(more_urls),
            ari_user=text("ARI_USER", defaults.ari_user),
            ari_password=env.get("ARI_PASSWORD", ""),
            ari_app=text("ARI_APP", defaults.ari_app),
            database_url=text("DATABASE_URL", defaults.database_url),
            journal_path=os.path.expanduser(text("JOURNAL_PATH", defaults.journal_path)),
            journal_max_mb=journal_max_mb,
            serve_id=serve_id,
            hash_key=env.get("DIGITS_HASH_KEY", ""),
            hash_key_file=os.path.expanduser(text("DIGITS_HASH_KEY_FILE", DEFAULT_HASH_KEY_FILE)),
            log_level=text("LOG_LEVEL", defaults.log_level).upper(),
            log_json=text("LOG_FORMAT", "text").lower() == "json",
            reconnect_max_delay=reconnect,
            ari_heartbeat=heartbeat,
            ari_max_connections=connections,
        )


def default_serve_id(journal_path: str) -> str:
    """This host's name and a hash of the journal's real path: the same across restarts, and
    distinct for every serve on the host, since each has a journal of its own."""
    digest = hashlib.sha256(os.path.realpath(journal_path).encode()).hexdigest()[:8]
    return f"{socket.gethostname()[: MAX_SERVE_ID - 9]}:{digest}"


def parse_ari_urls(raw: str) -> list[str]:
    """``ARI_URL``: one URL, or several separated by commas (one per Asterisk); each ends
    with ``/`` once parsed."""
    urls: list[str] = []
    for item in raw.split(","):
        url = item.strip()
        if not url:
            raise SettingsError(f"ARI_URL has an empty item (a stray comma?): {raw!r}")
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"ARI_URL must start with http:// or https://, got {url!r}")
        url = url if url.endswith("/") else url + "/"
        if url in urls:
            # Two connections to one Asterisk would register the Stasis app twice.
            raise SettingsError(f"ARI_URL lists {url} twice: give each Asterisk once")
        urls.append(url)
    return urls


def _port_range(raw: str) -> tuple[int, int]:
    """``0`` (any free port), ``40000`` or ``40000-40099``."""
    low, _, high = raw.partition("-")
    try:
        first, last = int(low), int(high or low)
    except ValueError:
        raise SettingsError(
            f"RTP_PORTS must be a port or a range like 40000-40099, got {raw!r}"
        ) from None
    if not (0 <= first <= last <= 65535) or (first == 0 and last != 0):
        raise SettingsError(f"RTP_PORTS is not a valid port range: {raw!r}")
    return first, last


def parse_agi_port(raw: str) -> int | None:
    """``AGI_PORT``: empty or ``off`` → no FastAGI server; otherwise a TCP port (0: any free)."""
    text = raw.strip().lower()
    if text in ("", "off", "none"):
        return None
    try:
        port = int(text)
    except ValueError:
        raise SettingsError(f"AGI_PORT must be a TCP port or off, got {raw!r}") from None
    if not 0 <= port <= 65535:
        raise SettingsError(f"AGI_PORT must be between 0 and 65535, got {port}")
    return port
