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


WEB_MISS = ("model {ref!r} is not available: use 'embedded', a registered model name "
            "(`studio models register NAME PATH` on the server), or a model folder in the models directory")


class ModelManager:
    def __init__(self, db: Database, cache_size: int = 2, default_ref: str = "embedded",
                 roots: tuple[Path, ...] = ()) -> None:
        self.db = db
        self.roots = tuple(Path(r).resolve() for r in roots)  # folders a web client may name models in
        self.default_ref = default_ref
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.RLock()

    # -- resolution ----------------------------------------------------------------------
    def resolve(self, ref: str | None, *, allow_paths: bool = True) -> ModelSpec:
        """``allow_paths=False`` (web clients): no path outside the models directory is ever
        looked at, and every miss gives the same answer, so a client learns nothing about the disk."""
        ref = (ref or self.default_ref).strip()
        if not allow_paths:
            return self._resolve_web(ref)
        try:
            return self._resolve(ref)
        except OSError as e:  # e.g. a name longer than the file system allows
            raise ModelNotFound(f"model {ref[:80]!r} not found ({e.strerror or e})") from None

    def _resolve_web(self, ref: str) -> ModelSpec:
        miss = ModelNotFound(WEB_MISS.format(ref=ref[:80]))
        if len(ref) > 255 or "\x00" in ref:
            raise miss
        if ref in EMBEDDED:
            return self._resolve(ref)
        with self.db.session() as sess:
            registered = sess.get(ModelRef, ref) is not None
        try:
            if registered:
                return self._resolve(ref)
            if HUB_ID.match(ref) and ".." not in ref:  # never as a relative path
                return self._from_hub_cache(ref, ref)
        except (ModelNotFound, OSError):
            raise miss from None
        inside = self.in_roots(ref)
        if inside is None:
            raise miss
        try:
            return self._from_location(str(inside), ref)
        except (ModelNotFound, OSError):
            raise miss from None

    def in_folders(self) -> list[dict[str, Any]]:
        """Models found in the models directories (one level deep): usable by name from the web."""
        out = []
        for root in self.roots:
            try:
                entries = sorted(root.iterdir())[:500]
            except OSError:
                continue
            for p in entries:
                if (p.is_dir() and (p / "model_index.json").is_file()) or p.suffix.lower() == ".safetensors":
                    out.append({"name": p.name, "kind": "diffusers" if p.is_dir() else "single_file",
                                "location": f"models/{p.name}", "family": ""})
        return out

    def in_roots(self, location: str) -> Path | None:
        """``location`` (absolute, or relative to a models directory) if it lies inside one."""
        for root in self.roots:
            try:
                p = (root / location).resolve()
            except (OSError, ValueError):
                return None
            if p != root and root in p.parents:
                return p
        return None

    def _resolve(self, ref: str) -> ModelSpec:
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
        if not Path(ref).expanduser().is_absolute():  # a name inside the models directory wins over the cwd
            inside = self.in_roots(ref)
            if inside is not None and inside.exists():
                return self._from_location(str(inside), ref)
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
    def register(self, name: str, location: str, *, allow_paths: bool = True) -> dict[str, Any]:
        """``allow_paths=False`` (from the web UI): only a location inside the models directory."""
        name = name.strip()
        if not name or name in EMBEDDED or "/" in name or len(name) > 128:
            raise ValueError("model name must be 1-128 characters, not 'embedded', and contain no '/'")
        if not allow_paths:
            inside = self.in_roots(location.strip())
            if inside is None:
                raise ValueError(WEB_MISS.format(ref=location[:80]))
            try:
                spec = self._from_location(str(inside), name)
            except (ModelNotFound, OSError):
                raise ValueError(WEB_MISS.format(ref=location[:80])) from None
        else:
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
