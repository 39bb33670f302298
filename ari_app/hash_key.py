"""The key of sensitive entries' HMAC: ``DIGITS_HASH_KEY``, or one generated on first start.

Why generate rather than refuse sensitive entries: with an empty key a 4-digit PIN's stored hash
falls to 10^4 guesses, yet refusing would break every ``sensitive=yes`` dialplan until an
operator acts. A random 256-bit key, written once with mode 0600 and reused on every start,
protects the hashes with no setup; ``DIGITS_HASH_KEY`` still wins, and is what several
instances sharing one database need (each would otherwise generate its own key).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import stat
from pathlib import Path

from ari_app.settings import Settings, SettingsError

log = logging.getLogger(__name__)

KEY_BYTES = 32


def read_key_file(path: Path) -> str:
    """The key in ``path``; raises :class:`SettingsError` for an empty or unreadable file (never
    replaced silently: the hashes already stored were made with it)."""
    try:
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read the hash key file {path}: {exc}") from None
    if not key:
        raise SettingsError(
            f"the hash key file {path} is empty: restore it, or set DIGITS_HASH_KEY"
        )
    return key


def is_private(path: Path) -> bool:
    """Readable by its owner only (no group or other permission bits)."""
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def create_key_file(path: Path) -> str:
    """Write a new random key to ``path`` (which must not exist), mode 0600."""
    key = secrets.token_hex(KEY_BYTES)
    # O_EXCL: two instances starting at once cannot overwrite each other's key.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(key + "\n")
    return key


def with_hash_key(settings: Settings) -> Settings:
    """``settings`` with a usable ``hash_key``: the configured one, the key file's, or a new one
    written to the key file. Logs which (never the key). Blocking file I/O: run it in a thread."""
    if settings.hash_key:
        return settings
    path = Path(settings.hash_key_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # FileExistsError too: a file where the directory should be
        raise SettingsError(
            f"DIGITS_HASH_KEY is not set and no key could be written to {path}: {exc}"
        ) from None
    try:
        key = create_key_file(path)
    except FileExistsError:
        key = read_key_file(path)
        if not is_private(path):
            log.warning("the hash key file %s is readable by other users; chmod 600 it", path)
        log.info("sensitive entries are hashed with the key in %s", path)
    except OSError as exc:
        raise SettingsError(
            f"DIGITS_HASH_KEY is not set and no key could be written to {path}: {exc}"
        ) from None
    else:
        log.warning(
            "DIGITS_HASH_KEY is not set: generated a random key for sensitive entries' hashes "
            "in %s (mode 0600); keep it with the database's backups",
            path,
        )
    return dataclasses.replace(settings, hash_key=key)
