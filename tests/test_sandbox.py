"""The Asterisk sandbox starts a real Asterisk 22 with the modules ari-digits relies on.

Needs root (chroot) and, the first time, network access to a Debian mirror: the build takes
about a minute, later starts take well under a second (the chroot is cached as a tarball).
Run with ``pytest -m asterisk tests/test_sandbox.py``.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.sandbox import AsteriskSandbox, default_conf_dir

pytestmark = [
    pytest.mark.asterisk,
    # A first build (debootstrap + apt) takes about a minute, more on a slow mirror.
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="the Asterisk sandbox needs root (chroot)"),
]

REQUIRED_MODULES = ("res_ari", "res_stasis", "res_stasis_snoop", "chan_rtp", "res_agi")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[AsteriskSandbox]:
    box = AsteriskSandbox(default_conf_dir())
    was_running = box.is_running()
    box.start(timeout=60)
    try:
        yield box
    finally:
        if not was_running:  # leave a sandbox someone else started alone
            box.stop()


def ari_get(box: AsteriskSandbox, path: str) -> Any:
    token = base64.b64encode(f"{box.ari_user}:{box.ari_password}".encode()).decode()
    request = urllib.request.Request(
        box.ari_url + "ari/" + path, headers={"Authorization": f"Basic {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def test_credentials_come_from_the_sample_ari_conf() -> None:
    box = AsteriskSandbox(default_conf_dir())
    assert (box.ari_user, box.ari_password) == ("ari-digits", "ari-digits-secret")
    assert box.ari_url == "http://127.0.0.1:8088/"
    assert Path(box.paths.chroot_dir).name == "root"


def test_asterisk_info_reports_version_22(sandbox: AsteriskSandbox) -> None:
    info = ari_get(sandbox, "asterisk/info")
    version = info["system"]["version"]
    assert version.startswith("22."), version


def test_required_modules_are_running(sandbox: AsteriskSandbox) -> None:
    modules = {
        module["name"].removesuffix(".so"): module
        for module in ari_get(sandbox, "asterisk/modules")
    }
    for name in REQUIRED_MODULES:
        assert name in modules, f"{name} is not loaded"
        assert modules[name]["status"] == "Running", modules[name]


def test_start_twice_is_a_no_op(sandbox: AsteriskSandbox) -> None:
    pid = sandbox.pid()
    sandbox.start()
    assert sandbox.pid() == pid
    assert "Asterisk 22." in sandbox.cli("core show version")
