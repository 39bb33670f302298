"""A real Asterisk 22 for tests and local development, in a Debian sid chroot.

Debian 12 (bookworm) has no ``asterisk`` package; Debian sid has Asterisk 22. This module
builds a minimal sid chroot with ``debootstrap``, installs Asterisk into it, caches the
result as a zstd tarball, and runs Asterisk from it bound to 127.0.0.1 only, with the
configuration from a directory of ``*.conf`` files (the repository's ``asterisk_conf/``).

It needs root (``chroot``, ``mount``) and network access to a Debian mirror for the first
build only. Standard library only, so it runs before the project's dependencies exist::

    scripts/sandbox build     # debootstrap + apt, or restore the cached tarball
    scripts/sandbox start     # configure, start, wait for ARI
    scripts/sandbox cli "core show channels"
    scripts/sandbox stop

(``scripts/sandbox`` is ``python -m devtools.sandbox`` from the checkout.)

Environment: ``ARI_DIGITS_CACHE_DIR`` (default ``~/.cache/ari-digits``) holds the tarball;
``ARI_DIGITS_SANDBOX_DIR`` (default ``/var/tmp/ari-digits-sandbox``) holds the unpacked
chroot, logs and pid file; ``ARI_DIGITS_DEBIAN_MIRROR`` overrides the mirror, which is
otherwise read from the host's apt sources.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "AsteriskSandbox",
    "SandboxError",
    "SandboxPaths",
    "default_cache_dir",
    "default_conf_dir",
    "default_state_dir",
    "main",
]

TARBALL_NAME = "asterisk-sid-chroot.tar.zst"
CACHE_INFO_NAME = "asterisk-sid-chroot.json"
BUILD_MARKER = ".ari-digits-build.json"
SUITE = "sid"
PACKAGES = ("asterisk", "asterisk-core-sounds-en-gsm")
ARI_USER_SECTION = "ari-digits"

# A clean environment for everything run inside the chroot: nothing from the host leaks in.
_CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "TERM": "dumb",
}

# Pitfall 1: the mirror can serve an expired sid Release file.
_APT_CONF = """\
// Written by devtools.sandbox.
Acquire::Check-Valid-Until "false";
Acquire::Check-Date "false";
APT::Install-Recommends "false";
APT::Install-Suggests "false";
Acquire::Languages "none";
"""

# Keep documentation, manual pages and translations out of the chroot (smaller tarball).
_DPKG_EXCLUDES = """\
# Written by devtools.sandbox.
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
path-exclude=/usr/share/lintian/*
"""

# Pitfall 2: maintainer scripts must not start daemons inside the chroot.
_POLICY_RC_D = (
    "#!/bin/sh\n# Written by devtools.sandbox: never start services in this chroot.\nexit 101\n"
)

# Pitfall 6: Asterisk logs ERRORs at boot when these core configuration files are missing.
# Each is written only when the configuration directory does not provide its own.
_STUB_CONFIGS: dict[str, str] = {
    "acl.conf": "; Stub: no named ACLs.\n",
    "ccss.conf": "; Stub: call completion supplementary services off.\n[general]\n",
    "cdr.conf": "; Stub: no call detail records in the sandbox.\n[general]\nenable = no\n",
    "cel.conf": "; Stub: no channel event logging in the sandbox.\n[general]\nenable = no\n",
    "features.conf": "; Stub: default call features.\n[general]\n",
    "indications.conf": (
        "; Stub: US call progress tones only.\n"
        "[general]\ncountry = us\n\n"
        "[us]\ndescription = United States / North America\n"
        "ringcadence = 2000,4000\n"
        "dial = 350+440\n"
        "busy = 480+620/500,0/500\n"
        "ring = 440+480/2000,0/4000\n"
        "congestion = 480+620/250,0/250\n"
        "callwaiting = 440/300,0/10000\n"
        "dialrecall = !350+440/100,!0/100,!350+440/100,!0/100,!350+440/100,!0/100,350+440\n"
        "record = 1400/500,0/15000\n"
        "info = !950/330,!1400/330,!1800/330,0\n"
    ),
    "manager.conf": "; Stub: the AMI is off in the sandbox.\n[general]\nenabled = no\n",
    "pjproject.conf": "; Stub: default pjproject settings.\n[startup]\ntype = startup\n",
    "stasis.conf": (
        "; Stub: default Stasis message bus thread pool.\n"
        "[threadpool]\ninitial_size = 5\nidle_timeout_sec = 20\nmax_size = 50\n"
    ),
    "udptl.conf": "; Stub: T.38 UDPTL defaults.\n[general]\n",
    "websocket_client.conf": "; Stub: no outbound websocket clients.\n",
}


class SandboxError(RuntimeError):
    """The sandbox could not be built, configured, started, queried or stopped."""


@dataclass(frozen=True)
class SandboxPaths:
    """Where the sandbox keeps its files."""

    cache_dir: Path
    """Survives rebuilds: the chroot tarball and its JSON description."""
    state_dir: Path
    """The unpacked chroot, logs, pid file and lock."""

    @property
    def tarball(self) -> Path:
        return self.cache_dir / TARBALL_NAME

    @property
    def cache_info(self) -> Path:
        return self.cache_dir / CACHE_INFO_NAME

    @property
    def chroot_dir(self) -> Path:
        return self.state_dir / "root"

    @property
    def log_file(self) -> Path:
        """Asterisk's console output (truncated at each start)."""
        return self.state_dir / "asterisk.log"

    @property
    def build_log(self) -> Path:
        """Output of debootstrap, apt and tar."""
        return self.state_dir / "build.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "asterisk.pid"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / ".lock"


def default_cache_dir() -> Path:
    env = os.environ.get("ARI_DIGITS_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "ari-digits"


def default_state_dir() -> Path:
    env = os.environ.get("ARI_DIGITS_SANDBOX_DIR")
    return Path(env) if env else Path("/var/tmp/ari-digits-sandbox")


def default_conf_dir() -> Path:
    """The repository's ``asterisk_conf/`` (next to the ``devtools`` package)."""
    return Path(__file__).resolve().parent.parent / "asterisk_conf"


def _tool_env() -> dict[str, str]:
    """The clean chroot environment plus the host's proxy settings (for apt and debootstrap)."""
    proxies = {
        key: value
        for key, value in os.environ.items()
        if key.lower() in ("http_proxy", "https_proxy", "ftp_proxy", "no_proxy")
    }
    return {**_CHROOT_ENV, **proxies}


def _say(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)


def parse_asterisk_conf(text: str) -> dict[str, dict[str, str]]:
    """Parse the subset of Asterisk's config syntax we need: sections and ``key = value``.

    Comments start with ``;`` (``\\;`` is a literal semicolon); ``=>`` works like ``=``;
    a repeated section name merges; template markers like ``[name](!)`` are ignored.
    """
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for raw in text.splitlines():
        line = re.sub(r"(?<!\\);.*", "", raw).replace("\\;", ";").strip()
        if not line or line.startswith("#"):
            continue
        header = re.match(r"^\[([^\]]+)\]", line)
        if header:
            current = sections.setdefault(header.group(1).strip(), {})
            continue
        if current is None or "=" not in line:
            continue
        key, _, value = line.partition("=")
        current[key.strip()] = value.removeprefix(">").strip()
    return sections


def host_debian_mirror() -> str:
    """The main Debian archive URL the host's apt already uses."""
    override = os.environ.get("ARI_DIGITS_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    entries: list[tuple[str, list[str]]] = []  # (uri, suites)
    sources_d = Path("/etc/apt/sources.list.d")
    deb822_files = sorted(sources_d.glob("*.sources")) if sources_d.is_dir() else []
    for path in deb822_files:
        with contextlib.suppress(OSError):
            entries.extend(_parse_deb822_sources(path.read_text()))
    one_line_files = [Path("/etc/apt/sources.list")]
    if sources_d.is_dir():
        one_line_files += sorted(sources_d.glob("*.list"))
    for path in one_line_files:
        with contextlib.suppress(OSError):
            entries.extend(_parse_one_line_sources(path.read_text()))
    usable = [
        (uri, suites)
        for uri, suites in entries
        if uri.split(":", 1)[0] in ("http", "https", "ftp", "file") and "security" not in uri
    ]
    # Prefer the entry carrying a plain release suite (not -updates, -backports, ...).
    for uri, suites in usable:
        if any("-" not in suite and "/" not in suite for suite in suites):
            return uri.rstrip("/")
    if usable:
        return usable[0][0].rstrip("/")
    raise SandboxError(
        "cannot build the Asterisk sandbox: no Debian mirror found in /etc/apt/sources.list "
        "or /etc/apt/sources.list.d/ (set ARI_DIGITS_DEBIAN_MIRROR)"
    )


def _parse_deb822_sources(text: str) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        last = ""
        for line in paragraph.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line[0] in " \t" and last:
                fields[last] += " " + line.strip()
                continue
            key, _, value = line.partition(":")
            last = key.strip().lower()
            fields[last] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in fields.get("types", "").split():
            continue
        suites = fields.get("suites", "").split()
        found.extend((uri, suites) for uri in fields.get("uris", "").split())
    return found


def _parse_one_line_sources(text: str) -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for raw in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", " ", raw.split("#", 1)[0]).split()
        if len(line) >= 3 and line[0] == "deb":
            found.append((line[1], [line[2]]))
    return found


def _set_option(text: str, before: str, value: str, source: Path) -> str:
    """Replace the number after the ``before`` pattern at the start of every line it begins."""
    pattern = re.compile(rf"^(\s*{before})\d+", re.MULTILINE)
    if not pattern.search(text):
        raise SandboxError(f"{source} has no setting matching {before!r} to set to {value}")
    return pattern.sub(lambda match: f"{match.group(1)}{value}", text)


def _with_entity_id(text: str, entity_id: str, source: Path) -> str:
    """asterisk.conf with ``entityid`` set in ``[options]`` (ARI's ``asterisk_id``)."""
    if not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", entity_id):
        raise SandboxError(f"entity id {entity_id!r} is not like 02:00:00:00:00:02")
    text = re.sub(r"^\s*entityid\s*=.*\n?", "", text, flags=re.MULTILINE)
    section = re.compile(r"^\[options\][^\n]*\n", re.MULTILINE)
    if not section.search(text):
        raise SandboxError(f"{source} has no [options] section for entityid")
    return section.sub(lambda match: f"{match.group(0)}entityid = {entity_id}\n", text, count=1)


class AsteriskSandbox:
    """Build, configure, start and stop a real Asterisk in a Debian sid chroot.

    All methods are safe to call from several processes: they serialise on a lock file in
    the state directory. ``start`` on a running sandbox is a no-op.
    """

    def __init__(
        self,
        conf_dir: Path,
        *,
        state_dir: Path | None = None,
        cache_dir: Path | None = None,
        http_port: int = 8088,
        sip_port: int | None = None,
        rtp_ports: tuple[int, int] | None = None,
        entity_id: str | None = None,
    ) -> None:
        """``sip_port``, ``rtp_ports`` and ``entity_id`` (None: as ``conf_dir`` has them) let a
        second sandbox, in a ``state_dir`` of its own, run beside the first: its own SIP port,
        RTP range and ``asterisk_id`` (``entityid`` in asterisk.conf)."""
        self.conf_dir = Path(conf_dir).resolve()
        self.paths = SandboxPaths(
            cache_dir=(cache_dir or default_cache_dir()).resolve(),
            state_dir=(state_dir or default_state_dir()).resolve(),
        )
        self.http_port = http_port
        self.sip_port = sip_port
        self.rtp_ports = rtp_ports
        self.entity_id = entity_id
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._credentials: tuple[str, str] | None = None

    # ------------------------------------------------------------------ properties

    @property
    def ari_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/"

    @property
    def ari_user(self) -> str:
        return self._ari_credentials()[0]

    @property
    def ari_password(self) -> str:
        return self._ari_credentials()[1]

    @property
    def asterisk_version(self) -> str | None:
        """The Debian version of the installed ``asterisk`` package, once built."""
        info = self._read_json(self.paths.chroot_dir / BUILD_MARKER)
        value = info.get("asterisk_version") if info else None
        return value if isinstance(value, str) else None

    def _ari_credentials(self) -> tuple[str, str]:
        if self._credentials is None:
            path = self.conf_dir / "ari.conf"
            try:
                sections = parse_asterisk_conf(path.read_text())
            except OSError as exc:
                raise SandboxError(f"cannot read the ARI user from {path}: {exc}") from exc
            users = [name for name, body in sections.items() if body.get("type") == "user"]
            name = ARI_USER_SECTION if ARI_USER_SECTION in users else next(iter(users), "")
            if not name or "password" not in sections[name]:
                raise SandboxError(f"no ARI user with a password ([{ARI_USER_SECTION}]) in {path}")
            if sections[name].get("password_format", "plain") != "plain":
                raise SandboxError(f"the ARI user [{name}] in {path} needs password_format=plain")
            self._credentials = (name, sections[name]["password"])
        return self._credentials

    # ------------------------------------------------------------------ build

    def is_built(self) -> bool:
        return (self.paths.chroot_dir / BUILD_MARKER).is_file()

    def build(self, *, fresh: bool = False) -> None:
        """Make the chroot exist: restore the cached tarball, else debootstrap and install.

        Idempotent. ``fresh=True`` ignores (and then replaces) the cached tarball.
        """
        with self._locked():
            if self.is_built() and not fresh:
                return
            if self.is_running():
                raise SandboxError("cannot rebuild the Asterisk sandbox while it runs: stop it")
            self.paths.state_dir.mkdir(parents=True, exist_ok=True)
            self._remove_tree(self.paths.chroot_dir)
            if not fresh and self.paths.tarball.is_file():
                try:
                    self._restore_tarball()
                    return
                except SandboxError as exc:
                    _say(f"{exc}; building from scratch instead")
            self._build_from_scratch()

    def _restore_tarball(self) -> None:
        self._ensure_host_tools(("zstd",))
        partial = self.paths.state_dir / "root.partial"
        self._remove_tree(partial)
        partial.mkdir(parents=True)
        self._step(
            f"restoring the chroot from {self.paths.tarball}",
            [
                "tar",
                "--zstd",
                "--numeric-owner",
                "-xpf",
                str(self.paths.tarball),
                "-C",
                str(partial),
            ],
            what="cannot restore the Asterisk sandbox: tar failed",
        )
        if not (partial / BUILD_MARKER).is_file():
            self._remove_tree(partial)
            raise SandboxError(f"the cached tarball {self.paths.tarball} is not a sandbox chroot")
        partial.rename(self.paths.chroot_dir)

    def _build_from_scratch(self) -> None:
        self._ensure_host_tools(("debootstrap", "zstd"))
        mirror = host_debian_mirror()
        root = self.paths.state_dir / "root.partial"
        self._remove_tree(root)
        self.paths.build_log.write_text("")
        fail = "cannot build the Asterisk sandbox"
        try:
            self._step(
                f"debootstrap {SUITE} from {mirror} (about 30 s)",
                ["debootstrap", "--variant=minbase", SUITE, str(root), mirror],
                what=f"{fail}: debootstrap failed",
            )
            self._unmount_under(root)  # debootstrap mounts /proc and /sys itself
            self._write(root / "etc/apt/apt.conf.d/99ari-digits", _APT_CONF)
            self._write(root / "etc/dpkg/dpkg.cfg.d/99ari-digits-nodoc", _DPKG_EXCLUDES)
            self._write(root / "usr/sbin/policy-rc.d", _POLICY_RC_D, mode=0o755)
            self._prune_docs(root)
            proc = root / "proc"
            proc.mkdir(exist_ok=True)
            self._run(["mount", "-t", "proc", "proc", str(proc)], what=f"{fail}: mount /proc")
            try:
                self._step(
                    "apt-get update in the chroot",
                    ["chroot", str(root), "apt-get", "-q", "update"],
                    what=f"{fail}: apt-get update in the chroot failed",
                )
                self._step(
                    f"installing {' '.join(PACKAGES)} (about 15 s)",
                    [
                        "chroot",
                        str(root),
                        "apt-get",
                        "-q",
                        "-y",
                        "--no-install-recommends",
                        "install",
                        *PACKAGES,
                    ],
                    what=f"{fail}: apt-get install {' '.join(PACKAGES)} failed in Debian {SUITE} "
                    "(sid moves: the package may be broken there today)",
                )
                self._run(["chroot", str(root), "apt-get", "clean"], what=f"{fail}: apt-get clean")
                version = self._run(
                    ["chroot", str(root), "dpkg-query", "-W", "-f=${Version}", "asterisk"],
                    what=f"{fail}: dpkg-query asterisk",
                ).strip()
            finally:
                self._unmount_under(root)
            self._prune_docs(root)
            info: dict[str, object] = {
                "asterisk_version": version,
                "suite": SUITE,
                "mirror": mirror,
                "packages": list(PACKAGES),
                "build_date": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            self._write(root / BUILD_MARKER, json.dumps(info, indent=2) + "\n")
            root.rename(self.paths.chroot_dir)
        except BaseException:
            self._remove_tree(root)
            raise
        _say(f"built Asterisk {version}")
        self._write_tarball(info)

    def _write_tarball(self, info: dict[str, object]) -> None:
        self.paths.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.paths.tarball.with_name(self.paths.tarball.name + ".tmp")
        try:
            self._step(
                f"caching the chroot in {self.paths.tarball}",
                [
                    "tar",
                    "--one-file-system",
                    "--numeric-owner",
                    "-I",
                    "zstd -T0 -q",
                    "-cpf",
                    str(tmp),
                    "-C",
                    str(self.paths.chroot_dir),
                    ".",
                ],
                what="cannot cache the Asterisk sandbox: tar failed",
            )
            tmp.replace(self.paths.tarball)
        finally:
            tmp.unlink(missing_ok=True)
        self._write(self.paths.cache_info, json.dumps(info, indent=2) + "\n")

    @staticmethod
    def _prune_docs(root: Path) -> None:
        for sub in ("usr/share/man", "usr/share/info", "usr/share/lintian"):
            target = root / sub
            if target.is_dir() and not target.is_symlink():
                for child in target.iterdir():
                    AsteriskSandbox._remove_tree(child)
        locale = root / "usr/share/locale"
        if locale.is_dir():
            for child in locale.iterdir():
                if child.name != "locale.alias":
                    AsteriskSandbox._remove_tree(child)
        doc = root / "usr/share/doc"
        if doc.is_dir():
            for package in doc.iterdir():
                if package.is_dir() and not package.is_symlink():
                    for child in package.iterdir():
                        if child.name != "copyright":
                            AsteriskSandbox._remove_tree(child)

    def _ensure_host_tools(self, tools: Sequence[str]) -> None:
        missing = [tool for tool in tools if shutil.which(tool) is None]
        if not missing:
            return
        if os.geteuid() != 0:
            raise SandboxError(
                f"cannot build the Asterisk sandbox: {', '.join(missing)} missing and not root "
                "to install them (apt-get install debootstrap zstd)"
            )
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        what = (
            f"cannot build the Asterisk sandbox: installing {' '.join(missing)} on the host failed"
        )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        self._step("apt-get update on the host", ["apt-get", "-q", "update"], what=what, env=env)
        self._step(
            f"installing {' '.join(missing)} on the host",
            ["apt-get", "-q", "install", "-y", *missing],
            what=what,
            env=env,
        )

    # ------------------------------------------------------------------ configure

    def configure(self) -> None:
        """Replace the chroot's /etc/asterisk with ``conf_dir/*.conf`` plus missing stubs."""
        with self._locked():
            if not self.is_built():
                raise SandboxError(
                    "cannot configure the Asterisk sandbox: not built yet (run build)"
                )
            sources = sorted(self.conf_dir.glob("*.conf"))
            if not sources:
                raise SandboxError(
                    f"cannot configure the Asterisk sandbox: no *.conf in {self.conf_dir}"
                )
            self._ari_credentials()  # fail early on a bad ari.conf
            etc = self.paths.chroot_dir / "etc/asterisk"
            self._remove_tree(etc)
            etc.mkdir(parents=True)
            for source in sources:
                text = source.read_text()
                if source.name == "http.conf":
                    text = self._with_http_port(text)
                elif source.name == "pjsip.conf" and self.sip_port is not None:
                    text = _set_option(text, r"bind\s*=>?\s*[^:\s;]+:", str(self.sip_port), source)
                elif source.name == "rtp.conf" and self.rtp_ports is not None:
                    first, last = self.rtp_ports
                    text = _set_option(text, r"rtpstart\s*=>?\s*", str(first), source)
                    text = _set_option(text, r"rtpend\s*=>?\s*", str(last), source)
                elif source.name == "asterisk.conf" and self.entity_id is not None:
                    text = _with_entity_id(text, self.entity_id, source)
                self._write(etc / source.name, text)
            for name, text in _STUB_CONFIGS.items():
                if not (etc / name).exists():
                    self._write(etc / name, text)

    def _with_http_port(self, text: str) -> str:
        pattern = re.compile(r"^(\s*bindport\s*=>?\s*)\d+", re.MULTILINE)
        if pattern.search(text):
            return pattern.sub(lambda m: f"{m.group(1)}{self.http_port}", text)
        if self.http_port != 8088:
            raise SandboxError(
                f"http.conf in {self.conf_dir} has no bindport to set to {self.http_port}"
            )
        return text

    # ------------------------------------------------------------------ run

    def start(self, timeout: float = 30) -> None:
        """Build and configure if needed, start Asterisk and wait until ARI answers.

        ``timeout`` bounds the wait for Asterisk after it is launched, not a first build.
        A no-op when it already runs; cleans up after a crashed previous run. The
        configuration is copied in again on every real start.
        """
        with self._locked():
            if self.is_running():
                return
            self._cleanup_stale()
            self.build()
            self.configure()
            self._check_port_free()
            root = self.paths.chroot_dir
            (root / "run/asterisk").mkdir(parents=True, exist_ok=True)  # pitfall 4
            for sub in ("var/log/asterisk", "var/lib/asterisk", "var/spool/asterisk"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            _say(f"starting Asterisk on {self.ari_url} (log {self.paths.log_file})")
            started = time.monotonic()
            with self.paths.log_file.open("wb") as log:
                try:
                    self._proc = subprocess.Popen(
                        ["setsid", "chroot", str(root), "/usr/sbin/asterisk", "-f", "-n"],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=_CHROOT_ENV,
                        close_fds=True,
                    )
                except OSError as exc:
                    raise SandboxError(f"cannot start Asterisk: {exc}") from exc
            self.paths.pid_file.write_text(f"{self._proc.pid}\n")
            try:
                self._wait_ready(started + timeout)
            except BaseException:
                self._stop_locked(quiet=True)
                raise
            _say(f"Asterisk is ready ({time.monotonic() - started:.1f} s)")

    def _wait_ready(self, deadline: float) -> None:
        booted = False
        last = "no answer yet"
        while True:
            proc = self._proc
            if proc is not None and proc.poll() is not None:
                raise SandboxError(
                    f"cannot start Asterisk: it exited with status {proc.returncode} "
                    f"(see {self.paths.log_file}):\n{self._log_tail()}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxError(
                    f"cannot start Asterisk: not ready after the timeout ({last}; "
                    f"see {self.paths.log_file}):\n{self._log_tail()}"
                )
            if not booted:
                ok, out = self._remote(
                    "core waitfullybooted", timeout=max(0.5, min(remaining, 10.0))
                )
                booted = ok
                last = "core waitfullybooted: " + (out.strip() or "failed")
            if booted:
                status, body = self._ari_get(
                    "ari/asterisk/info", timeout=max(0.5, min(remaining, 2.0))
                )
                if status == 200:
                    return
                last = f"GET /ari/asterisk/info: {status or body}"
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop Asterisk: ``core stop now``, then TERM, then KILL. A no-op when stopped."""
        with self._locked():
            self._stop_locked(quiet=False)

    def restart(self, timeout: float = 30) -> None:
        """Stop, reconfigure and start (needed after a modules.conf change)."""
        with self._locked():
            self._stop_locked(quiet=False)
            self.start(timeout=timeout)

    def reload(self) -> str:
        """Copy the configuration in again and ``core reload`` the running Asterisk."""
        with self._locked():
            if not self.is_running():
                raise SandboxError("cannot reload Asterisk: it is not running")
            self.configure()
            return self.cli("core reload")

    def _stop_locked(self, *, quiet: bool) -> None:
        pids = self._server_pids()
        if pids:
            if not quiet:
                _say(f"stopping Asterisk (pid {', '.join(map(str, pids))})")
            self._remote("core stop now", timeout=10)
            if not self._wait_gone(pids, 5):
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                if not self._wait_gone(pids, 5):
                    for pid in pids:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(pid, signal.SIGKILL)  # setsid made it a group leader
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    if not self._wait_gone(pids, 5):
                        raise SandboxError(f"cannot stop Asterisk: pid {pids} survives SIGKILL")
        self._cleanup_stale()

    def _wait_gone(self, pids: Sequence[int], seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            if self._proc is not None:
                self._proc.poll()  # reap our own child so it does not linger as a zombie
            alive = [pid for pid in pids if pid in self._server_pids()]
            if not alive:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _cleanup_stale(self) -> None:
        if self._proc is not None:
            # The server is gone, or dying: a killed Asterisk stays a zombie for a moment, and
            # an unreaped child is a ResourceWarning once a new start replaces it.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=5)
            self._proc = None
        self.paths.pid_file.unlink(missing_ok=True)
        run = self.paths.chroot_dir / "run/asterisk"
        for name in ("asterisk.ctl", "asterisk.pid"):
            (run / name).unlink(missing_ok=True)

    def is_running(self) -> bool:
        """Whether an Asterisk server process runs inside this sandbox's chroot."""
        if self._proc is not None:
            self._proc.poll()
        return bool(self._server_pids())

    @property
    def launched_here(self) -> bool:
        """Whether the running Asterisk is this object's child (started by this process)."""
        return self._proc is not None and self._proc.poll() is None

    def pid(self) -> int | None:
        pids = self._server_pids()
        return pids[0] if pids else None

    def _server_pids(self) -> list[int]:
        """Asterisk server processes (not ``asterisk -r`` clients) whose root is our chroot."""
        root = str(self.paths.chroot_dir)
        found: list[int] = []
        for pid in sorted(int(entry) for entry in os.listdir("/proc") if entry.isdigit()):
            proc = Path(f"/proc/{pid}")
            try:
                if os.readlink(proc / "root") != root:
                    continue
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
                continue
            if not argv or not argv[0].endswith(b"asterisk"):
                continue
            if any(arg.startswith((b"-r", b"-R", b"-x")) for arg in argv[1:]):
                continue
            found.append(pid)
        return found

    def _check_port_free(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", self.http_port)) == 0:
                raise SandboxError(
                    f"cannot start Asterisk: something else already listens on 127.0.0.1:"
                    f"{self.http_port} (another Asterisk? use another http_port)"
                )

    # ------------------------------------------------------------------ query

    def cli(self, command: str) -> str:
        """Run ``asterisk -rx COMMAND`` inside the chroot and return its output."""
        if not self.is_running():
            raise SandboxError(f"cannot run {command!r}: Asterisk is not running")
        ok, out = self._remote(command, timeout=30)
        if not ok:
            raise SandboxError(f"asterisk -rx {command!r} failed: {out.strip()}")
        return out

    def _remote(self, command: str, *, timeout: float) -> tuple[bool, str]:
        try:
            result = subprocess.run(
                ["chroot", str(self.paths.chroot_dir), "/usr/sbin/asterisk", "-rx", command],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                env=_CHROOT_ENV,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False, f"timed out after {timeout:.1f} s"
        out = (result.stdout + result.stderr).decode("utf-8", "replace")
        return result.returncode == 0, out

    def _ari_get(self, path: str, *, timeout: float) -> tuple[int, str]:
        token = base64.b64encode(f"{self.ari_user}:{self.ari_password}".encode()).decode()
        request = urllib.request.Request(
            self.ari_url + path, headers={"Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(response.status), response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            return exc.code, str(exc)
        except (OSError, ValueError) as exc:
            return 0, str(exc)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.paths.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    # ------------------------------------------------------------------ helpers

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """A process-wide lock on the state directory, re-entrant within this object."""
        if self._lock_depth == 0:
            self.paths.state_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.paths.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
            self._lock_fd = fd
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0 and self._lock_fd is not None:
                os.close(self._lock_fd)  # closing releases the flock
                self._lock_fd = None

    def _step(
        self, label: str, argv: Sequence[str], *, what: str, env: dict[str, str] | None = None
    ) -> None:
        """Run one visible build step (one line on stderr), output into the build log."""
        started = time.monotonic()
        _say(f"{label} ...")
        self._run(argv, what=what, env=env)
        _say(f"  done in {time.monotonic() - started:.1f} s")

    def _run(
        self,
        argv: Sequence[str],
        *,
        what: str,
        env: dict[str, str] | None = None,
        timeout: float = 1800,
    ) -> str:
        """Run a command, append its output to the build log, return its stdout."""
        self.paths.state_dir.mkdir(parents=True, exist_ok=True)
        with self.paths.build_log.open("a") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            try:
                result = subprocess.run(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=env if env is not None else _tool_env(),
                    timeout=timeout,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                log.write(f"{exc}\n")
                raise SandboxError(f"{what}: {exc} (see {self.paths.build_log})") from exc
            out = result.stdout.decode("utf-8", "replace")
            log.write(out)
            if result.returncode != 0:
                log.write(f"[exit status {result.returncode}]\n")
                raise SandboxError(
                    f"{what} (exit status {result.returncode}, see {self.paths.build_log})"
                )
        return out

    @staticmethod
    def _unmount_under(root: Path) -> None:
        """Unmount everything mounted at or below ``root``, deepest first (pitfall 3)."""
        prefix = str(root.resolve())
        mounts: list[str] = []
        with contextlib.suppress(OSError), open("/proc/self/mounts") as table:
            for line in table:
                fields = line.split()
                if len(fields) < 2:
                    continue
                point = fields[1].encode().decode("unicode_escape")
                if point == prefix or point.startswith(prefix + "/"):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            result = subprocess.run(["umount", point], capture_output=True, check=False)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)

    @staticmethod
    def _remove_tree(path: Path) -> None:
        """``rm -rf --one-file-system`` after unmounting: never follows a forgotten mount."""
        if not path.exists() and not path.is_symlink():
            return
        if path.is_dir() and not path.is_symlink():
            AsteriskSandbox._unmount_under(path)
        result = subprocess.run(
            ["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, check=False
        )
        if result.returncode != 0:
            raise SandboxError(
                f"cannot remove {path}: {result.stderr.decode('utf-8', 'replace').strip()}"
            )

    @staticmethod
    def _write(path: Path, text: str, *, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)

    @staticmethod
    def _read_json(path: Path) -> dict[str, object] | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def status(self) -> dict[str, object]:
        """A summary for humans and scripts."""
        return {
            "running": self.is_running(),
            "pid": self.pid(),
            "built": self.is_built(),
            "asterisk_version": self.asterisk_version,
            "ari_url": self.ari_url,
            "conf_dir": str(self.conf_dir),
            "chroot_dir": str(self.paths.chroot_dir),
            "log_file": str(self.paths.log_file),
            "tarball": str(self.paths.tarball) if self.paths.tarball.is_file() else None,
        }


def _port_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    try:
        return int(first), int(last)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port range like 11000-11999: {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """``python -m devtools.sandbox build|start|stop|restart|reload|status|cli "<command>"``.

    Exit status: 0 on success, 1 on an error, 3 for ``status`` when Asterisk is stopped.
    """
    parser = argparse.ArgumentParser(
        prog="scripts/sandbox", description="A real Asterisk 22 in a Debian sid chroot."
    )
    parser.add_argument(
        "--conf-dir",
        type=Path,
        default=default_conf_dir(),
        help="directory of *.conf files (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="chroot, logs and pid file (default: $ARI_DIGITS_SANDBOX_DIR or "
        "/var/tmp/ari-digits-sandbox)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="tarball cache (default: $ARI_DIGITS_CACHE_DIR or ~/.cache/ari-digits)",
    )
    parser.add_argument("--http-port", type=int, default=8088)
    parser.add_argument(
        "--sip-port", type=int, default=None, help="pjsip.conf's UDP port (default: as configured)"
    )
    parser.add_argument(
        "--rtp-ports",
        type=_port_range,
        default=None,
        metavar="FIRST-LAST",
        help="rtp.conf's port range (default: as configured)",
    )
    parser.add_argument(
        "--entity-id",
        default=None,
        metavar="XX:XX:XX:XX:XX:XX",
        help="asterisk.conf's entityid: what ARI events carry as asterisk_id",
    )
    parser.add_argument("--timeout", type=float, default=30, help="seconds to wait for ARI")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the chroot (or restore it from the cache)")
    build.add_argument("--fresh", action="store_true", help="ignore the cached tarball")
    commands.add_parser("start", help="configure and start Asterisk, wait for ARI")
    commands.add_parser("stop", help="stop Asterisk")
    commands.add_parser("restart", help="stop, reconfigure and start Asterisk")
    commands.add_parser("reload", help="copy the configuration in again and core reload")
    commands.add_parser("status", help="print a JSON status; exit 3 when stopped")
    cli = commands.add_parser("cli", help="run an Asterisk CLI command")
    cli.add_argument("cli_command", metavar="COMMAND")
    args = parser.parse_args(argv)

    sandbox = AsteriskSandbox(
        args.conf_dir,
        state_dir=args.state_dir,
        cache_dir=args.cache_dir,
        http_port=args.http_port,
        sip_port=args.sip_port,
        rtp_ports=args.rtp_ports,
        entity_id=args.entity_id,
    )
    try:
        if args.command == "build":
            sandbox.build(fresh=args.fresh)
            _say(f"built: Asterisk {sandbox.asterisk_version} in {sandbox.paths.chroot_dir}")
        elif args.command == "start":
            if sandbox.is_running():
                _say(f"already running on {sandbox.ari_url}")
            sandbox.start(timeout=args.timeout)
        elif args.command == "stop":
            sandbox.stop()
        elif args.command == "restart":
            sandbox.restart(timeout=args.timeout)
        elif args.command == "reload":
            sandbox.reload()
        elif args.command == "status":
            info = sandbox.status()
            print(json.dumps(info, indent=2))
            return 0 if info["running"] else 3
        elif args.command == "cli":
            sys.stdout.write(sandbox.cli(args.cli_command))
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
