"""The worker's model cache: charged in bytes, LRU, builds outside the global lock, and
notices changed weights with a few stats instead of a folder walk."""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from engines.base import ModelSpec
from storage.db import Database
from studio.model_manager import ModelManager, _stamp


class Blob:
    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n

    def nbytes(self) -> int:
        return self.n


def _model(root: Path, name: str) -> Path:
    d = root / name
    (d / "unet").mkdir(parents=True)
    (d / "model_index.json").write_text("{}")
    (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * 100)
    return d


@pytest.fixture
def mm(tmp_path: Path) -> ModelManager:
    db = Database(tmp_path / "s.db")
    db.upgrade()
    return ModelManager(db, budget_bytes=1000)


def test_evicts_least_recently_used_by_bytes(mm: ModelManager, tmp_path: Path) -> None:
    paths = [_model(tmp_path, f"m{i}") for i in range(3)]
    builds: list[str] = []

    def build(n: int):  # noqa: ANN202
        return lambda spec: builds.append(spec.path.name) or Blob(spec.path.name, n)

    mm.load(str(paths[0]), "t2i", build(400), "cpu", "float32")
    mm.load(str(paths[1]), "t2i", build(400), "cpu", "float32")
    mm.load(str(paths[0]), "t2i", build(400), "cpu", "float32")  # hit: m0 is now most recent
    mm.load(str(paths[2]), "t2i", build(400), "cpu", "float32")  # 1200 > 1000: evict m1, not m0
    assert builds == ["m0", "m1", "m2"]
    mm.load(str(paths[0]), "t2i", build(400), "cpu", "float32")
    assert builds == ["m0", "m1", "m2"] and mm.evictions == 1
    assert mm.cached_bytes() <= 1000


def test_an_entry_that_grows_pushes_others_out(mm: ModelManager, tmp_path: Path) -> None:
    a, b = _model(tmp_path, "a"), _model(tmp_path, "b")
    blob_a = mm.load(str(a), "t2i", lambda s: Blob("a", 300), "cpu", "float32")
    mm.load(str(b), "t2i", lambda s: Blob("b", 300), "cpu", "float32")
    blob_a.n = 800  # e.g. adapters loaded into the cached pipeline
    mm.load(str(a), "t2i", lambda s: Blob("a", 300), "cpu", "float32")
    mm.load(str(b), "t2i", lambda s: Blob("b", 300), "cpu", "float32")  # rebuilt: b was evicted
    assert mm.evictions >= 1 and mm.cached_bytes() <= 1000 + 300


def test_changed_weights_reload_and_the_stamp_does_not_walk(mm: ModelManager, tmp_path: Path) -> None:
    m = _model(tmp_path, "m")
    deep = m / "unet" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "junk.safetensors").write_bytes(b"1")
    s1 = _stamp(m)
    (deep / "junk.safetensors").write_bytes(b"22")  # three levels down: not part of a model
    assert _stamp(m) == s1
    n = []
    mm.load(str(m), "t2i", lambda s: n.append(1) or Blob("m", 10), "cpu", "float32")
    w = m / "unet" / "diffusion_pytorch_model.safetensors"
    w.write_bytes(b"y" * 101)
    os.utime(w, ns=(time.time_ns(), time.time_ns()))
    mm.load(str(m), "t2i", lambda s: n.append(1) or Blob("m", 10), "cpu", "float32")
    assert len(n) == 2


def test_a_slow_build_does_not_block_other_models(mm: ModelManager, tmp_path: Path) -> None:
    slow, fast = _model(tmp_path, "slow"), _model(tmp_path, "fast")
    mm.load(str(fast), "t2i", lambda s: Blob("fast", 10), "cpu", "float32")
    started, release = threading.Event(), threading.Event()

    def slow_build(spec: ModelSpec) -> Blob:
        started.set()
        assert release.wait(10)
        return Blob("slow", 10)

    t = threading.Thread(target=mm.load, args=(str(slow), "t2i", slow_build, "cpu", "float32"))
    t.start()
    assert started.wait(10)
    t0 = time.monotonic()
    got = mm.load(str(fast), "t2i", lambda s: Blob("x", 10), "cpu", "float32")  # a hit, while slow builds
    assert got.name == "fast" and time.monotonic() - t0 < 8  # a blocked hit would wait for the 10 s release
    release.set()
    t.join(10)


def test_concurrent_misses_on_one_key_build_once(mm: ModelManager, tmp_path: Path) -> None:
    m = _model(tmp_path, "m")
    calls = []

    def build(spec: ModelSpec) -> Blob:
        calls.append(1)
        time.sleep(0.2)
        return Blob("m", 10)

    ts = [threading.Thread(target=mm.load, args=(str(m), "t2i", build, "cpu", "float32")) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(10)
    assert len(calls) == 1
