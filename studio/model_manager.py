"""Model references → local files, and a per-worker LRU of loaded models.

A reference is: ``embedded`` (the shipped world model), a registered name, a local
diffusers folder, a single ``.safetensors`` file, or a hub id found in the local
Hugging Face cache. Nothing is ever downloaded: a miss is an immediate ModelNotFound.
"""
from __future__ import annotations

import os
import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select

from engines.base import ModelNotFound, ModelSpec
from storage.db import Database
from storage.models import ModelRef

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
EMBEDDED = ("embedded", "")


def embedded_model_dir() -> Path:
    from engines.world.paths import default_model_dir

    return default_model_dir()


class ModelManager:
    def __init__(self, db: Database, cache_size: int = 2, default_ref: str = "embedded") -> None:
        self.db = db
        self.default_ref = default_ref
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.RLock()

    # -- resolution ----------------------------------------------------------------------
    def resolve(self, ref: str | None) -> ModelSpec:
        ref = (ref or self.default_ref).strip()
        if ref in EMBEDDED:
            try:
                path = embedded_model_dir()
            except ImportError:
                raise ModelNotFound("the embedded world package is missing from this install") from None
            if not (path / "model_index.json").is_file():
                raise ModelNotFound(f"the embedded model is not built at {path}; run `studio train-embedded all`")
            return ModelSpec(ref="embedded", kind="embedded", path=path)
        with self.db.session() as sess:
            row = sess.get(ModelRef, ref)
            if row is not None:
                spec = self._from_location(row.location, ref)
                return ModelSpec(ref=ref, kind=spec.kind, path=spec.path, sha256=row.sha256)
        return self._from_location(ref, ref)

    def _from_location(self, location: str, ref: str) -> ModelSpec:
        p = Path(location).expanduser()
        if p.is_dir():
            if (p / "model_index.json").is_file():
                return ModelSpec(ref=ref, kind="diffusers", path=p.resolve())
            raise ModelNotFound(f"{p} is a folder without model_index.json (not a diffusers model)")
        if p.is_file():
            if p.suffix.lower() == ".safetensors":
                return ModelSpec(ref=ref, kind="single_file", path=p.resolve())
            if p.suffix.lower() in (".ckpt", ".pt", ".bin"):
                raise ModelNotFound(f"{p.name}: pickle checkpoints can run code when loaded; "
                                    "convert it to .safetensors first")
            raise ModelNotFound(f"{p.name} is not a model file (expected .safetensors or a diffusers folder)")
        if HUB_ID.match(location) and not location.startswith((".", "/")):
            return self._from_hub_cache(location, ref)
        raise ModelNotFound(f"model {location!r} not found: not a registered name, local path, or cached hub id")

    @staticmethod
    def _from_hub_cache(repo_id: str, ref: str) -> ModelSpec:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(repo_id, local_files_only=True))
        except Exception:
            raise ModelNotFound(f"hub model {repo_id!r} is not in the local Hugging Face cache "
                                "(the Studio never downloads; copy it into the cache or use a local path)") from None
        if not (path / "model_index.json").is_file():
            raise ModelNotFound(f"cached hub model {repo_id!r} has no model_index.json")
        return ModelSpec(ref=ref, kind="hub_cache", path=path)

    # -- registry ------------------------------------------------------------------------
    def register(self, name: str, location: str) -> dict[str, Any]:
        name = name.strip()
        if not name or name in EMBEDDED or "/" in name:
            raise ValueError("model name must be non-empty, not 'embedded', and contain no '/'")
        spec = self._from_location(location, name)
        row = ModelRef(name=name, kind=spec.kind, location=str(spec.path if spec.kind != "hub_cache" else location))
        with self.db.session() as sess:
            sess.merge(row)
        return {"name": name, "kind": spec.kind, "location": row.location}

    def unregister(self, name: str) -> None:
        with self.db.session() as sess:
            row = sess.get(ModelRef, name)
            if row is not None:
                sess.delete(row)

    def list(self) -> list[dict[str, Any]]:
        with self.db.session() as sess:
            rows = sess.scalars(select(ModelRef).order_by(ModelRef.name)).all()
            return [{"name": r.name, "kind": r.kind, "location": r.location, "family": r.family} for r in rows]

    # -- loading -------------------------------------------------------------------------
    def load(self, ref: str | None, key: str, build: Callable[[ModelSpec], Any], device: str, dtype: str) -> Any:
        """Return the cached ``build(spec)`` for this model/key/device/dtype, building on a miss."""
        spec = self.resolve(ref)
        stamp = _stamp(spec.path)
        cache_key = (str(spec.path), stamp, key, device, dtype)
        with self._lock:
            if cache_key in self._cache:
                self._cache.move_to_end(cache_key)
                return self._cache[cache_key]
            obj = build(spec)
            self._cache[cache_key] = obj
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return obj

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


def _stamp(path: Path) -> float:
    """Changes when the model files change on disk, so a retrained model is reloaded."""
    try:
        if path.is_dir():
            return max((f.stat().st_mtime for f in path.rglob("*") if f.is_file()), default=0.0)
        return path.stat().st_mtime
    except OSError:
        return 0.0
