"""Safe defaults: a generated hash key when DIGITS_HASH_KEY is unset, and the doctor's
security checks (hash key, sample ARI password, TLS beyond loopback, API token)."""

from __future__ import annotations

import logging
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from ari_app import cli
from ari_app.doctor.report import Status
from ari_app.doctor.security import (
    SAMPLE_API_TOKEN,
    SAMPLE_ARI_PASSWORD,
    SAMPLE_HASH_KEY,
    check_api_token,
    check_api_transport,
    check_ari_password,
    check_ari_transport,
    check_hash_key,
    check_security,
    is_loopback,
)
from ari_app.hash_key import with_hash_key
from ari_app.settings import Settings, SettingsError


def test_an_unset_key_is_generated_once_with_mode_0600(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    path = tmp_path / "var" / "hash.key"
    settings = Settings(hash_key_file=str(path))

    first = with_hash_key(settings)

    assert len(first.hash_key) == 64  # 256 random bits, hex
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"generated a random key for sensitive entries' hashes in {path}" in caplog.text
    assert first.hash_key not in caplog.text, "the key itself is never logged"
    caplog.clear()
    again = with_hash_key(settings)  # the next start reuses it: stored hashes stay comparable
    assert again.hash_key == first.hash_key
    assert f"hashed with the key in {path}" in caplog.text
    assert first.hash_key not in caplog.text


def test_a_configured_key_wins_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "hash.key"
    settings = Settings(hash_key="from-env", hash_key_file=str(path))
    assert with_hash_key(settings).hash_key == "from-env"
    assert not path.exists()


def test_an_empty_key_file_is_refused_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "hash.key"
    path.write_text("\n")
    with pytest.raises(SettingsError, match="is empty"):
        with_hash_key(Settings(hash_key_file=str(path)))
    assert path.read_text() == "\n"


def test_a_key_file_others_can_read_is_used_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "hash.key"
    path.write_text("k" * 64 + "\n")
    path.chmod(0o644)
    assert with_hash_key(Settings(hash_key_file=str(path))).hash_key == "k" * 64
    assert "readable by other users" in caplog.text


def test_serve_stops_with_a_clear_message_when_no_key_can_be_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.delenv("DIGITS_HASH_KEY", raising=False)
    monkeypatch.setenv("DIGITS_HASH_KEY_FILE", str(blocker / "hash.key"))  # under a file
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert cli.main(["serve"]) == 2
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    assert "no key could be written to" in capsys.readouterr().err


def test_the_doctor_reports_the_hash_key(tmp_path: Path) -> None:
    path = tmp_path / "hash.key"
    settings = Settings(hash_key_file=str(path))
    absent = check_hash_key(settings)
    assert absent.status is Status.PASS and "generates a random key" in absent.detail
    assert not path.exists(), "the doctor only looks"
    with_hash_key(settings)
    assert check_hash_key(settings).status is Status.PASS
    path.chmod(0o640)
    loose = check_hash_key(settings)
    assert loose.status is Status.WARN and loose.fix == f"chmod 600 {path}"
    path.write_text("")
    assert check_hash_key(settings).status is Status.FAIL
    assert "DIGITS_HASH_KEY" in check_hash_key(replace(settings, hash_key="x")).detail
    placeholder = check_hash_key(replace(settings, hash_key=SAMPLE_HASH_KEY))
    assert placeholder.status is Status.WARN


def test_the_doctor_warns_on_the_sample_or_an_empty_ari_password() -> None:
    assert check_ari_password(Settings(ari_password=SAMPLE_ARI_PASSWORD)).status is Status.WARN
    assert check_ari_password(Settings(ari_password="")).status is Status.WARN
    assert check_ari_password(Settings(ari_password="a-real-one")).status is Status.PASS


@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("http://127.0.0.1:8088/", Status.PASS),
        ("http://localhost:8088/", Status.PASS),
        ("http://[::1]:8088/", Status.PASS),
        ("http://10.0.0.5:8088/", Status.WARN),
        ("http://asterisk.example:8088/", Status.WARN),
        ("https://asterisk.example:8089/", Status.PASS),
    ],
)
def test_the_doctor_warns_on_ari_beyond_loopback_without_tls(url: str, status: Status) -> None:
    assert check_ari_transport(Settings(ari_url=url)).status is status


@pytest.mark.parametrize(
    ("host", "status"),
    [("127.0.0.1", Status.PASS), ("::1", Status.PASS), ("0.0.0.0", Status.WARN), ("", Status.WARN)],
)
def test_the_doctor_warns_on_the_api_beyond_loopback(host: str, status: Status) -> None:
    assert check_api_transport(Settings(api_host=host)).status is status


def test_the_doctor_warns_on_an_api_without_a_token_or_with_a_short_one() -> None:
    assert check_api_token(Settings(api_token="")).status is Status.WARN
    assert check_api_token(Settings(api_token="s3cret")).status is Status.WARN
    assert check_api_token(Settings(api_token=SAMPLE_API_TOKEN)).status is Status.WARN
    assert check_api_token(Settings(api_token="x" * 32)).status is Status.PASS


async def test_all_security_checks_pass_on_a_safe_setup(tmp_path: Path) -> None:
    settings = Settings(
        ari_url="https://pbx.example:8089/",
        ari_password="not-the-sample",
        api_host="127.0.0.1",
        api_token="t" * 40,
        hash_key="configured",
        hash_key_file=str(tmp_path / "unused"),
    )
    results = await check_security(settings)
    assert [(r.name, r.status) for r in results] == [
        (name, Status.PASS)
        for name in ("hash-key", "ari-password", "ari-transport", "api-transport", "api-token")
    ]


def test_loopback_means_this_machine_only() -> None:
    assert is_loopback("127.0.0.2") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("")
