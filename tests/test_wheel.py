"""The wheel is the product: built from this checkout, installed into a fresh virtual
environment, and run from another directory, the way ``docker/app.Dockerfile`` runs it.

The fresh environments get this project only from the wheel (or from the Dockerfile's own
``pip install``). Its dependencies come from the test environment, through a directory of links
to its site-packages without this project's own entries, so that no test downloads anything:
``pip`` runs with ``--no-index`` and finds every dependency already installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.sandbox import AsteriskSandbox
from tests.conftest import free_tcp_port
from tests.test_deployment import compose, dockerfile_instructions

REPO = Path(__file__).resolve().parents[1]
PROJECT = "ari_digits"
# Building and installing take a few seconds each on a loaded machine.
pytestmark = pytest.mark.timeout(240)


def run(command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dependencies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test environment's installed packages, minus this project (its editable install)."""
    view = tmp_path_factory.mktemp("dependencies")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name.lower()
        if name.startswith((PROJECT, f"_{PROJECT}", "__editable__")) or name.endswith(".pth"):
            continue
        (view / entry.name).symlink_to(entry)
    return view


def fresh_venv(where: Path, dependencies: Path) -> Path:
    """A new virtual environment that sees ``dependencies``; returns its bin directory."""
    run([sys.executable, "-m", "venv", str(where)])
    python = where / "bin" / "python"
    purelib = run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(f"{dependencies}\n")
    return where / "bin"


def offline_environment(bin_dir: Path) -> dict[str, str]:
    """The fresh environment first on PATH; pip offline, building with what is installed."""
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "VIRTUAL_ENV": str(bin_dir.parent),
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",  # pip's negative option: "0" turns isolation off
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-index",
            "--no-build-isolation",
            "--wheel-dir",
            str(out),
            str(REPO),
        ]
    )
    [built] = out.glob(f"{PROJECT}-*.whl")
    return built


def test_the_wheel_holds_the_product_and_its_migrations_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        code = {name: archive.read(name).decode() for name in names if name.endswith(".py")}
    assert {name.split("/")[0] for name in names} == {"ari_app", f"{PROJECT}-0.1.0.dist-info"}
    assert "ari_app/migrations/env.py" in names
    shipped = {name.rpartition("/")[2] for name in names if "/migrations/versions/" in name}
    assert shipped == {path.name for path in (REPO / "migrations" / "versions").glob("*.py")}
    for name, text in code.items():
        for word in ("chroot", "debootstrap"):
            assert word not in text.lower(), f"{name} mentions {word}"


def test_the_installed_wheel_migrates_from_another_directory(
    wheel: Path, dependencies: Path, tmp_path: Path
) -> None:
    bin_dir = fresh_venv(tmp_path / "venv", dependencies)
    env = offline_environment(bin_dir)
    run([str(bin_dir / "pip"), "install", "--no-deps", str(wheel)], env=env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        [str(bin_dir / "python"), "-c", "import ari_app; print(ari_app.__file__)"],
        cwd=elsewhere,
        env=env,
    ).stdout
    assert where.startswith(str(tmp_path / "venv")), "ari_app must come from the wheel"
    database = tmp_path / "digits.sqlite3"
    migrated = run(
        [str(bin_dir / "ari-digits"), "migrate"],
        cwd=elsewhere,
        env={**env, "DATABASE_URL": f"sqlite+aiosqlite:///{database}"},
    )
    assert "database is up to date" in migrated.stdout
    assert database.stat().st_size > 0
    no_devtools = subprocess.run(
        [str(bin_dir / "python"), "-c", "import devtools"], cwd=elsewhere, env=env, check=False
    )
    assert no_devtools.returncode != 0, "developer tooling must not be installed"


def app_image_steps() -> tuple[str, list[tuple[str, str]], list[str], list[str]]:
    """``docker/app.Dockerfile`` as steps: its WORKDIR, its COPY (source, destination) pairs,
    its RUN commands but the system packages' (apt-get: the host has them, see
    scripts/bootstrap and test_deployment) and its CMD."""
    workdir = ""
    copies: list[tuple[str, str]] = []
    commands: list[str] = []
    cmd: list[str] = []
    for instruction, arguments in dockerfile_instructions("app.Dockerfile"):
        match instruction:
            case "WORKDIR":
                workdir = arguments
            case "COPY":
                *sources, destination = arguments.split()
                copies += [(source, destination) for source in sources]
            case "RUN" if not arguments.startswith("apt-get"):
                commands.append(arguments)
            case "CMD":
                cmd = json.loads(arguments)
    assert workdir and copies and commands and cmd
    return workdir, copies, commands, cmd


@pytest.fixture
def app_image(
    tmp_path: Path, dependencies: Path
) -> Iterator[tuple[Path, list[str], dict[str, str]]]:
    """The image's install steps, outside Docker: its WORKDIR (under tmp_path), its CMD, and
    the environment the CMD runs with (the fresh venv first on PATH)."""
    workdir_name, copies, commands, cmd = app_image_steps()
    workdir = tmp_path / workdir_name.lstrip("/")
    workdir.mkdir(parents=True)
    for source, destination in copies:
        target = workdir / destination
        if (REPO / source).is_dir():
            shutil.copytree(REPO / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target = target / source if destination.endswith("/") else target
            shutil.copy2(REPO / source, target)
    bin_dir = fresh_venv(tmp_path / "venv", dependencies)
    env = offline_environment(bin_dir)
    for command in commands:
        run(["bash", "-c", command], cwd=workdir, env=env)
    yield workdir, cmd, env


@pytest.mark.asterisk
def test_the_app_image_install_serves_until_ready(
    app_image: tuple[Path, list[str], dict[str, str]],
    asterisk: AsteriskSandbox,
    tmp_path: Path,
) -> None:
    workdir, cmd, env = app_image
    api_port = free_tcp_port()
    environment = {
        **env,
        **compose()["services"]["app"]["environment"],
        # The compose stack's services are the sandbox and a local database here.
        "ARI_URL": asterisk.ari_url,
        "ARI_USER": asterisk.ari_user,
        "ARI_PASSWORD": asterisk.ari_password,
        "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'digits.sqlite3'}",
        "API_PORT": str(api_port),
        "AGI_PORT": "0",
    }
    server = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        status = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/readyz", timeout=3) as r:
                    status = r.status
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        assert status == 200, "serve never became ready"
    finally:
        server.terminate()
        try:
            output, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            output, _ = server.communicate()
    assert server.returncode == 0, output
    assert "Traceback" not in output, output
