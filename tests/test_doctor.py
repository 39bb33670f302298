"""``ari-digits doctor``: passes on the real sandbox, names the broken item on a broken setup.

Tests that change the sandbox (a module unloaded, a sound file moved away) put it back in a
``finally``. Run them under the shared lock, like every test that uses the sandbox::

    flock /tmp/ari-digits-asterisk.lock .venv/bin/pytest tests/test_doctor.py
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp import web
from alembic import command
from alembic.script import ScriptDirectory

from ari_app import cli
from ari_app.doctor import CheckResult, Status, exit_status, lookups, run_checks, summary
from ari_app.doctor.database import check_database
from ari_app.doctor.modules import CORE_MODULES, ModuleRequirement, check_modules, required_modules
from ari_app.doctor.sounds import parse_prompts, prompt_sounds
from ari_app.doctor.text_engine import check_text_engine
from ari_app.params import parse_params
from ari_app.settings import Settings
from ari_app.store.migrate import alembic_config, upgrade_to_head, upgrade_to_head_async
from devtools.sandbox import AsteriskSandbox
from devtools.simulate import SimulatedCallers
from tests.conftest import Service, free_tcp_port, service_settings

# Where the sandbox's "en" sounds live (en and en_US are links to it).
SANDBOX_SOUNDS = "usr/share/asterisk/sounds/en_US_f_Allison"
DEFAULT_SOUNDS = {
    "beep",
    "please-try-again",
    "you-entered",
    "if-correct-press",
    *(f"digits/{n}" for n in range(10)),
    "digits/star",
    "digits/pound",
}
ARI_CHECKS = ("modules", "stasis-app", "sounds", "rtp-probe")
SECURITY_CHECKS = ("hash-key", "ari-password", "ari-transport", "api-transport", "api-token")


def migration_head_and_previous() -> tuple[str, str]:
    scripts = ScriptDirectory.from_config(alembic_config("sqlite:///unused.sqlite3"))
    head = scripts.get_current_head()
    assert head is not None
    previous = scripts.get_revision(head).down_revision
    assert isinstance(previous, str), "the tests expect a linear history of 2+ revisions"
    return head, previous


def by_name(results: Sequence[CheckResult]) -> dict[str, CheckResult]:
    named = {result.name: result for result in results}
    assert len(named) == len(results), "check names must be unique"
    return named


def not_passed(results: Sequence[CheckResult]) -> dict[str, Status]:
    """Setup checks that did not pass (the security checks have tests of their own: the
    sandbox's sample password and the tests' token-less API make them warn)."""
    return {
        r.name: r.status
        for r in results
        if r.status is not Status.PASS and r.name not in SECURITY_CHECKS
    }


def doctor_settings(asterisk: AsteriskSandbox, database_url: str) -> Settings:
    """The tests' service settings with speech on, so the RTP probe runs."""
    return service_settings(asterisk, database_url, speech=True)


async def ari_objects(settings: Settings) -> dict[str, set[str]]:
    """Channels, bridges and Stasis apps as ARI lists them: what the doctor must not leave."""
    callers = SimulatedCallers(settings.ari_url, settings.ari_user, settings.ari_password)
    try:
        objects = {}
        for path, key in (("channels", "id"), ("bridges", "id"), ("applications", "name")):
            status, body = await callers.request("GET", f"/{path}")
            assert status == 200, (path, status)
            objects[path] = {str(item[key]) for item in body}
        return objects
    finally:
        await callers.close()


async def ari_objects_settle(settings: Settings, expected: dict[str, set[str]]) -> None:
    """The doctor leaves nothing behind. Asterisk drops a Stasis app only after its websocket
    has closed, a moment after the probe returned (up to about 4 s on this 2-core machine
    while the whole suite runs): allowed 5 s."""
    deadline = asyncio.get_running_loop().time() + 5.0
    while (objects := await ari_objects(settings)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            assert objects == expected
        await asyncio.sleep(0.05)


@pytest.fixture
async def migrated_sqlite(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'doctor.sqlite3'}"
    await upgrade_to_head_async(url)
    return url


# --- on the real sandbox -------------------------------------------------------------------------


@pytest.mark.asterisk
@pytest.mark.postgres
async def test_everything_passes_while_serve_runs(service: Service) -> None:
    settings = replace(service.settings, speech=True)
    before = await ari_objects(settings)

    results = await run_checks(settings)

    assert not_passed(results) == {}
    assert exit_status(results) == 0
    names = [r.name for r in results]
    assert names[0] == "ari"
    assert names[-9:] == ["sounds", "rtp-probe", "database", "journal", *SECURITY_CHECKS]
    assert {f"module {r.label}" for r in required_modules(settings)} <= set(names)
    named = by_name(results)
    assert "'digits' is registered" in named["stasis-app"].detail
    assert "tone arrived" in named["rtp-probe"].detail
    assert "640 bytes" in named["rtp-probe"].detail  # slin16: 20 ms at 16 kHz
    assert named["sounds"].detail == (
        "all 16 prompt sounds present: beep, please-try-again, you-entered, if-correct-press, "
        "digits/0-9,star,pound"
    )
    assert "migrated to head" in named["database"].detail
    await ari_objects_settle(settings, before)


@pytest.mark.asterisk
async def test_without_serve_the_stasis_app_only_warns(
    asterisk: AsteriskSandbox, migrated_sqlite: str
) -> None:
    results = await run_checks(doctor_settings(asterisk, migrated_sqlite))

    assert not_passed(results) == {"stasis-app": Status.WARN}
    assert "ari-digits serve is not connected" in by_name(results)["stasis-app"].detail
    assert exit_status(results) == 0


@pytest.mark.asterisk
async def test_wrong_password_fails_on_the_credentials(
    asterisk: AsteriskSandbox, migrated_sqlite: str
) -> None:
    settings = replace(doctor_settings(asterisk, migrated_sqlite), ari_password="wrong")

    results = await run_checks(settings)

    ari = by_name(results)["ari"]
    assert ari.status is Status.FAIL
    assert "refused the credentials of ARI_USER='ari-digits'" in ari.detail
    assert "ARI_PASSWORD" in ari.fix
    # What needs ARI is skipped, so the one cause stands out; the database is still checked.
    assert not_passed(results) == {"ari": Status.FAIL} | dict.fromkeys(ARI_CHECKS, Status.SKIP)
    assert exit_status(results) == 1

    unset = by_name(await run_checks(replace(settings, ari_password="")))["ari"]
    assert unset.detail.endswith("(ARI_PASSWORD is empty)")


@pytest.mark.asterisk
async def test_an_http_server_without_ari_is_named(
    asterisk: AsteriskSandbox, migrated_sqlite: str
) -> None:
    # Asterisk's HTTP server answers, but ARI is not under this prefix.
    url = asterisk.ari_url + "elsewhere/"
    settings = replace(doctor_settings(asterisk, migrated_sqlite), ari_url=url)

    ari = by_name(await run_checks(settings))["ari"]

    assert ari.status is Status.FAIL
    assert ari.detail == f"the HTTP server at ARI_URL={url} has no ARI (404)"
    assert "res_ari.so" in ari.fix


async def test_nothing_listening_names_ari_url(migrated_sqlite: str) -> None:
    url = f"http://127.0.0.1:{free_tcp_port()}/"
    settings = Settings(ari_url=url, ari_password="x", database_url=migrated_sqlite)

    results = await run_checks(settings)

    ari = by_name(results)["ari"]
    assert ari.status is Status.FAIL
    assert ari.detail == f"nothing answers at ARI_URL={url} (connection refused)"
    assert "http.conf" in ari.fix
    assert exit_status(results) == 1


@pytest.mark.asterisk
async def test_an_unloaded_module_is_named(asterisk: AsteriskSandbox, migrated_sqlite: str) -> None:
    settings = doctor_settings(asterisk, migrated_sqlite)
    await asyncio.to_thread(asterisk.cli, "module unload chan_rtp.so")
    try:
        results = await run_checks(settings)
    finally:
        await asyncio.to_thread(asterisk.cli, "module load chan_rtp.so")

    named = by_name(results)
    assert not_passed(results) == {
        "module chan_rtp": Status.FAIL,
        "stasis-app": Status.WARN,
        "rtp-probe": Status.SKIP,
    }
    assert "not loaded, needed for speech" in named["module chan_rtp"].detail
    # With autoload = no its dependency must be listed too, and first.
    assert "'load => res_rtp_multicast.so' then 'load => chan_rtp.so'" in (
        named["module chan_rtp"].fix
    )
    assert named["rtp-probe"].detail == "needs chan_rtp"
    assert exit_status(results) == 1
    # Put back: the next run passes again.
    assert by_name(await run_checks(settings))["module chan_rtp"].status is Status.PASS


@pytest.mark.asterisk
async def test_missing_sound_files_are_named(
    asterisk: AsteriskSandbox, migrated_sqlite: str, tmp_path: Path
) -> None:
    sound = asterisk.paths.chroot_dir / SANDBOX_SOUNDS / "you-entered.gsm"
    aside = tmp_path / sound.name
    await asyncio.to_thread(sound.rename, aside)  # raises if the file is not where we expect
    try:
        results = await run_checks(
            doctor_settings(asterisk, migrated_sqlite),
            extra_prompts=["sound:vm-enter-num-to-call,sound:no-such-prompt"],
        )
    finally:
        await asyncio.to_thread(aside.rename, sound)

    sounds = by_name(results)["sounds"]
    assert sounds.status is Status.FAIL
    assert sounds.detail == "2 of 18 prompt sounds missing: you-entered, no-such-prompt"
    assert "asterisk-core-sounds" in sounds.fix
    assert not_passed(results) == {"sounds": Status.FAIL, "stasis-app": Status.WARN}


@pytest.mark.asterisk
async def test_an_unreachable_advertised_host_fails_the_probe_and_leaves_nothing(
    asterisk: AsteriskSandbox, migrated_sqlite: str
) -> None:
    # Asterisk sends to 127.0.0.2, which the receiver bound on 127.0.0.1 never hears.
    settings = replace(doctor_settings(asterisk, migrated_sqlite), rtp_advertised_host="127.0.0.2")
    before = await ari_objects(settings)

    results = await run_checks(settings)

    probe = by_name(results)["rtp-probe"]
    assert probe.status is Status.FAIL
    assert probe.detail.startswith("no RTP within 3 s")
    assert "RTP_ADVERTISED_HOST=127.0.0.2" in probe.fix
    await ari_objects_settle(settings, before)


@pytest.mark.asterisk
async def test_the_probe_works_around_rtp_ports_held_by_a_running_serve(
    asterisk: AsteriskSandbox, migrated_sqlite: str
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as serve_socket:
        serve_socket.bind(("127.0.0.1", 0))
        port = serve_socket.getsockname()[1]
        settings = replace(doctor_settings(asterisk, migrated_sqlite), rtp_ports=(port, port))

        probe = by_name(await run_checks(settings))["rtp-probe"]

    assert probe.status is Status.PASS
    assert "to 127.0.0.1:" in probe.detail and f"127.0.0.1:{port} " not in probe.detail
    assert "(RTP_PORTS busy: probed on a free port)" in probe.detail


@pytest.mark.asterisk
async def test_an_rtp_host_not_of_this_machine_fails_the_probe(
    asterisk: AsteriskSandbox, migrated_sqlite: str
) -> None:
    # 192.0.2.0/24 is TEST-NET-1: never an address of this host.
    settings = replace(doctor_settings(asterisk, migrated_sqlite), rtp_host="192.0.2.1")

    probe = by_name(await run_checks(settings))["rtp-probe"]

    assert probe.status is Status.FAIL
    assert probe.detail.startswith("cannot bind UDP on RTP_HOST=192.0.2.1")
    assert "RTP_HOST" in probe.fix


@pytest.mark.asterisk
@pytest.mark.postgres
async def test_an_unmigrated_database_is_named(
    asterisk: AsteriskSandbox, database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        # An empty database; a missing file is a case of its own (see below).
        await asyncio.to_thread(Path(database_url.split("///", 1)[1]).touch)

    results = await run_checks(doctor_settings(asterisk, database_url))

    database = by_name(results)["database"]
    assert database.status is Status.FAIL
    head, _ = migration_head_and_previous()
    assert f"is not migrated (no schema revision; head is {head})" in database.detail
    assert "ari-digits migrate" in database.fix
    assert not_passed(results) == {"database": Status.FAIL, "stasis-app": Status.WARN}


# --- the database check alone --------------------------------------------------------------------


@pytest.mark.postgres
async def test_database_check_follows_the_migrations(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        path = Path(database_url.split("///", 1)[1])
        missing = await check_database(database_url)
        assert missing.status is Status.FAIL
        assert missing.detail.startswith(f"no SQLite database at {path}")
        assert not await asyncio.to_thread(path.exists), "the doctor must not create it"
    else:
        empty = await check_database(database_url)
        assert empty.status is Status.FAIL and "is not migrated" in empty.detail

    head, previous = migration_head_and_previous()
    await asyncio.to_thread(command.upgrade, alembic_config(database_url), previous)
    behind = await check_database(database_url)
    assert behind.status is Status.FAIL
    assert f"is at revision {previous}, head is {head}" in behind.detail

    await upgrade_to_head_async(database_url)
    assert (await check_database(database_url)).status is Status.PASS


async def test_database_check_names_an_unreachable_server() -> None:
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{free_tcp_port()}/ari_digits"

    result = await check_database(url)

    assert result.status is Status.FAIL
    assert result.detail.startswith(f"cannot connect to DATABASE_URL={url}")


async def test_database_check_rejects_an_unsupported_url() -> None:
    result = await check_database("mysql://root@127.0.0.1/ari_digits")

    assert result.status is Status.FAIL
    assert "unsupported database URL" in result.detail


# --- pure parts ----------------------------------------------------------------------------------


def test_a_line_per_check_and_a_summary() -> None:
    results = [
        CheckResult("ari", Status.PASS, "ARI answers"),
        CheckResult("stasis-app", Status.WARN, "not registered", "start serve"),
        CheckResult("rtp-probe", Status.SKIP, "SPEECH=off"),
        CheckResult("database", Status.FAIL, "not migrated", "run ari-digits migrate"),
    ]

    assert [r.line() for r in results] == [
        "PASS  ari" + " " * 34 + "ARI answers",
        "WARN  stasis-app" + " " * 27 + "not registered -> start serve",
        "SKIP  rtp-probe" + " " * 28 + "SPEECH=off",
        "FAIL  database" + " " * 29 + "not migrated -> run ari-digits migrate",
    ]
    assert summary(results) == "doctor: 1 pass, 1 warn, 1 skip, 1 fail"


def test_only_a_fail_fails_the_exit_status() -> None:
    passing = [
        CheckResult("ari", Status.PASS, ""),
        CheckResult("stasis-app", Status.WARN, ""),
        CheckResult("rtp-probe", Status.SKIP, ""),
    ]
    assert exit_status(passing) == 0
    assert exit_status([*passing, CheckResult("database", Status.FAIL, "")]) == 1


def test_prompt_sounds_follow_the_default_prompts_and_extra_ones() -> None:
    assert set(prompt_sounds()) == DEFAULT_SOUNDS
    prompts, refused = parse_prompts(
        ["sound:custom/welcome,digits:12,tone:ring", "sound:http://h/x.wav"]
    )
    assert refused == []
    extra = prompt_sounds(prompts)
    assert set(extra) == DEFAULT_SOUNDS | {"custom/welcome"}  # remote media is not looked up
    assert len(extra) == len(set(extra))


def test_prompts_are_parsed_as_an_entry_parses_them() -> None:
    # Text runs to the next media item, commas included; {digits} is the read-back.
    raw = "tts:Hello,please key 1,000 or more,sound:custom/then,{digits}"
    prompts, refused = parse_prompts([raw])
    assert refused == []
    assert prompts == [parse_params({"prompt": raw}).prompt]
    assert prompts == [("tts:Hello, please key 1,000 or more", "sound:custom/then", "{digits}")]
    sounds = set(prompt_sounds(prompts))
    assert "custom/then" in sounds
    assert {"digits/0", "digits/9", "digits/star", "digits/pound"} <= sounds


def test_a_prompt_an_entry_would_refuse_fails() -> None:
    prompts, refused = parse_prompts(["sound:ok", "beep,sound:x", "tts:"])
    assert prompts == [("sound:ok",)]
    assert [(r.name, r.status) for r in refused] == [("prompt", Status.FAIL)] * 2
    assert "'beep' is not a media URI" in refused[0].detail
    assert "without text" in refused[1].detail


def test_required_modules_follow_the_settings() -> None:
    def labels(settings: Settings) -> set[str]:
        return {r.label for r in required_modules(settings)}

    keypad_only = labels(Settings(speech=False))
    assert {"res_stasis", "app_stasis", "res_stasis_playback", "res_ari_playbacks"} <= keypad_only
    assert "chan_rtp" not in keypad_only and "res_agi" not in keypad_only
    assert {"res_stasis_snoop", "chan_rtp", "bridge_simple|bridge_softmix"} <= labels(Settings())
    assert "res_agi" in labels(Settings(agi_port=4573))
    assert "res_http_media_cache" not in labels(Settings())
    text_prompt = {
        r.label for r in required_modules(Settings(), [("sound:beep", "tts:Please key your PIN")])
    }
    assert "res_http_media_cache" in text_prompt


def test_either_bridge_module_will_do_and_a_stopped_one_is_named() -> None:
    requirements = [
        ModuleRequirement(("bridge_simple", "bridge_softmix"), "mixing"),
        ModuleRequirement(("res_stasis",), "Stasis"),
    ]

    results = check_modules(
        {"bridge_softmix": "Running", "res_stasis": "Not Running"}, requirements
    )

    assert [(r.name, r.status) for r in results] == [
        ("module bridge_simple|bridge_softmix", Status.PASS),
        ("module res_stasis", Status.FAIL),
    ]
    assert results[1].detail == "res_stasis Not Running, needed for Stasis"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI configures the root logger for the process; put the test runner's back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_the_cli_prints_a_line_per_check_and_exits_1_on_a_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'cli.sqlite3'}"
    upgrade_to_head(database)
    monkeypatch.setenv("ARI_URL", f"http://127.0.0.1:{free_tcp_port()}/")
    monkeypatch.setenv("DATABASE_URL", database)
    monkeypatch.setenv("DIGITS_HASH_KEY_FILE", str(tmp_path / "hash.key"))
    monkeypatch.setenv("JOURNAL_PATH", str(tmp_path / "journal.sqlite3"))
    for name in ("ARI_PASSWORD", "DIGITS_HASH_KEY", "API_HOST", "API_TOKEN"):
        monkeypatch.delenv(name, raising=False)

    status = cli.main(["doctor", "--prompt", "sound:custom/welcome"])

    lines = capsys.readouterr().out.splitlines()
    assert status == 1
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["FAIL", "ari"],
        *(["SKIP", name] for name in ARI_CHECKS),
        ["PASS", "database"],
        ["PASS", "journal"],
        ["PASS", "hash-key"],
        ["WARN", "ari-password"],  # ARI_PASSWORD is unset
        ["PASS", "ari-transport"],
        ["PASS", "api-transport"],
        ["WARN", "api-token"],
    ]
    assert lines[-1] == "doctor: 5 pass, 2 warn, 4 skip, 1 fail"


# --- text prompts --------------------------------------------------------------------------------


async def test_the_text_engine_check_renders_with_the_configured_voice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    passed = await check_text_engine(Settings(tts_voice="en-us"))
    assert passed.status is Status.PASS, passed
    bad_voice = await check_text_engine(Settings(tts_voice="nosuchvoice"))
    assert bad_voice.status is Status.FAIL
    assert "voice=nosuchvoice" in bad_voice.detail and "TTS_VOICE" in bad_voice.fix
    monkeypatch.setenv("PATH", str(tmp_path))
    missing = await check_text_engine(Settings())
    assert missing.status is Status.FAIL
    assert "espeak-ng is not installed" in missing.detail


async def test_the_text_engine_is_checked_only_for_a_text_prompt(migrated_sqlite: str) -> None:
    settings = Settings(
        ari_url=f"http://127.0.0.1:{free_tcp_port()}/", database_url=migrated_sqlite
    )
    assert "tts-engine" not in by_name(await run_checks(settings, extra_prompts=["sound:x"]))
    results = by_name(await run_checks(settings, extra_prompts=["sound:x,tts:Key your PIN"]))
    assert results["tts-engine"].status is Status.PASS


# --- a fake ARI that breaks after the first check ------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _json(body: object) -> web.StreamResponse:
    return web.json_response(body)


async def _info(_request: web.Request) -> web.StreamResponse:
    return await _json({"system": {"version": "fake"}})


async def _modules(_request: web.Request) -> web.StreamResponse:
    running = [{"name": f"{n}.so", "status": "Running"} for r in CORE_MODULES for n in r.names]
    return await _json(running)


async def _applications(_request: web.Request) -> web.StreamResponse:
    return await _json([{"name": "digits"}])


async def _sound(_request: web.Request) -> web.StreamResponse:
    return await _json({"id": "beep"})


async def _not_json(_request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html>proxy error</html>", content_type="application/json")


async def _nameless(_request: web.Request) -> web.StreamResponse:
    return await _json([{"status": "Running"}])


async def _hang_up(request: web.Request) -> web.StreamResponse:
    assert request.transport is not None
    request.transport.close()
    await asyncio.sleep(1)
    return web.Response()


async def _too_slow(_request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(5)
    return web.Response()


@pytest.fixture
async def fake_ari() -> AsyncIterator[Callable[[dict[str, Handler]], Awaitable[str]]]:
    """Starts an ARI that answers ``asterisk/info`` and whatever else it is given."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        handlers = {
            "asterisk/info": _info,
            "asterisk/modules": _modules,
            "applications": _applications,
            "sounds/{sound}": _sound,
            **routes,
        }
        for path, handler in handlers.items():
            app.router.add_get(f"/ari/{path}", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)  # cancels the hanging handlers
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("route", "handler", "check", "message"),
    [
        ("asterisk/modules", _not_json, "modules", "GET /asterisk/modules failed: unexpected"),
        ("asterisk/modules", _nameless, "modules", "an entry without a name among the modules"),
        ("applications", _nameless, "stasis-app", "without a name among the applications"),
        ("applications", _hang_up, "stasis-app", "GET /applications failed: ServerDisconnected"),
        ("sounds/{sound}", _too_slow, "sounds", "GET /sounds/beep failed: no answer within"),
        ("sounds/{sound}", _not_json, "sounds", "failed: unexpected answer"),
    ],
)
async def test_a_broken_lookup_after_ari_passed_fails_that_check_only(
    fake_ari: Callable[[dict[str, Handler]], Awaitable[str]],
    migrated_sqlite: str,
    monkeypatch: pytest.MonkeyPatch,
    route: str,
    handler: Handler,
    check: str,
    message: str,
) -> None:
    monkeypatch.setattr(lookups, "HTTP_TIMEOUT_SECONDS", 0.5)
    url = await fake_ari({route: handler})
    settings = Settings(ari_url=url, database_url=migrated_sqlite, speech=False)

    results = by_name(await run_checks(settings))

    assert results["ari"].status is Status.PASS
    failed = {name: r for name, r in results.items() if r.status is Status.FAIL}
    assert set(failed) == {check}  # the other lookups still ran, and passed
    assert {"stasis-app", "sounds"} <= set(results)
    assert message in failed[check].detail
    assert results["database"].status is Status.PASS
