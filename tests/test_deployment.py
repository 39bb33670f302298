"""docker-compose.yml and the Dockerfiles: Docker cannot run here, so check what they say.

`scripts/test` runs ``docker-compose config`` (the file is valid); these tests check that the
images mirror the sandbox the rest of the suite runs against and that start-up is ordered by
health, not by luck. ``tests/test_wheel.py`` runs the app image's install steps themselves.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from devtools.sandbox import PACKAGES, SUITE

REPO = Path(__file__).resolve().parents[1]


def compose() -> dict[str, Any]:
    document = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(document, dict)
    return document


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = (REPO / "docker" / name).read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [
        (first.upper(), rest.strip())
        for first, _, rest in (line.strip().partition(" ") for line in joined.splitlines())
        if first
    ]


def apt_installed(name: str) -> set[str]:
    packages: set[str] = set()
    for instruction, arguments in dockerfile_instructions(name):
        if instruction != "RUN":
            continue
        for command in re.split(r"&&|;", arguments):
            words = shlex.split(command)
            if words[:2] == ["apt-get", "install"]:
                packages |= {word for word in words[2:] if not word.startswith("-")}
    return packages


def test_asterisk_image_is_the_sandbox() -> None:
    """Same Debian suite, same packages, and asterisk_conf/ as the whole /etc/asterisk."""
    instructions = dockerfile_instructions("asterisk.Dockerfile")
    assert ("FROM", f"debian:{SUITE}-slim") in instructions
    assert set(PACKAGES) <= apt_installed("asterisk.Dockerfile")
    asterisk = compose()["services"]["asterisk"]
    assert "./asterisk_conf:/etc/asterisk:ro" in asterisk["volumes"]


def test_app_image_has_what_the_app_runs() -> None:
    """The package itself, its migrations (run at start-up) and the TTS engine's binary."""
    instructions = dockerfile_instructions("app.Dockerfile")
    copied = {
        source
        for instruction, arguments in instructions
        if instruction == "COPY"
        for source in arguments.split()[:-1]  # the last word is the destination
    }
    assert {"ari_app", "migrations", "alembic.ini", "pyproject.toml"} <= copied
    assert "espeak-ng" in apt_installed("app.Dockerfile")
    assert ("CMD", '["ari-digits", "serve"]') in instructions


def test_every_service_has_a_healthcheck_and_the_app_waits_for_both() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "asterisk", "app"}
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["app"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "asterisk": {"condition": "service_healthy"},
    }
    # The app is healthy when it is ready: ARI connected and the database answering.
    assert "/readyz" in " ".join(services["app"]["healthcheck"]["test"])


def test_app_settings_point_at_the_composed_services() -> None:
    services = compose()["services"]
    environment = services["app"]["environment"]
    published = services["postgres"]["ports"][0]  # "127.0.0.1:5433:5432"
    host_port = published.split(":")[1]
    assert f"@127.0.0.1:{host_port}/" in environment["DATABASE_URL"]
    postgres = services["postgres"]["environment"]
    assert environment["DATABASE_URL"].startswith(
        f"postgresql+asyncpg://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}@"
    )
    ari_conf = (REPO / "asterisk_conf" / "ari.conf").read_text()
    assert f"password = {environment['ARI_PASSWORD']}" in ari_conf
    assert f"[{environment['ARI_USER']}]" in ari_conf
