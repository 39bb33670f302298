"""SERVE_ID: the name a serve writes into its entries, so that its restart marks only its own
rows left in progress (the store's side: tests/test_store.py, tests/test_migrations.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ari_app.settings import MAX_SERVE_ID, Settings, SettingsError


def test_serve_id_is_taken_as_given() -> None:
    settings = Settings.from_env({"SERVE_ID": " app-1 "})
    assert settings.serve_name == "app-1"


def test_the_default_names_the_host_and_tells_serves_on_it_apart_by_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each serve has a journal of its own, so its path tells serves on one host apart; the
    same configuration gets the same name at every restart, whatever the working directory."""
    monkeypatch.chdir(tmp_path)
    first = Settings.from_env({"JOURNAL_PATH": "a/journal.sqlite3"})
    again = Settings.from_env({"JOURNAL_PATH": str(tmp_path / "a" / "journal.sqlite3")})
    other = Settings.from_env({"JOURNAL_PATH": "b/journal.sqlite3"})
    assert first.serve_id == ""
    assert first.serve_name == again.serve_name != other.serve_name
    assert first.serve_name.startswith(socket.gethostname() + ":")
    assert len(first.serve_name) <= MAX_SERVE_ID


def test_a_serve_id_longer_than_its_column_is_refused() -> None:
    with pytest.raises(SettingsError, match="SERVE_ID must be at most 128 characters"):
        Settings.from_env({"SERVE_ID": "x" * (MAX_SERVE_ID + 1)})
