"""Model references → local files, and a per-worker, byte-budgeted LRU of loaded models.

A reference is: ``embedded`` (the shipped world model), a registered name, a local
diffusers folder, a single ``.safetensors`` file, or a hub id found in the local
Hugging Face cache. Nothing is ever downloaded: a miss is an immediate ModelNotFound.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select

from engines.base import ModelNotFound, ModelSpec
from storage.db import Database
from storage.models import ModelRef

log = logging.getLogger("studio.models")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
EMBEDDED = ("embedded", "")


def embedded_model_dir() -> Path:
    from engines.world.paths import default_model_dir

    return default_model_dir()


WEB_MISS = ("model {ref!r} is not available: use 'embedded', a registered model name "
            "(`studio models register NAME PATH` on the server), or a model folder in the models directory")


@dataclass
class _Entry:
    obj: Any
    stamp: tuple[Any, ...]  # what the model files looked like when loaded


class ModelManager:
    """Resolves references and caches what engines build from them.

    The cache is an LRU charged in bytes (``budget_bytes``; 0 = sized to the machine: 40 % of
    RAM for CPU models, 80 % of the GPU for CUDA ones). Each entry is re-measured at every
    load, so adapters a pipeline picked up count too. Building happens outside the global
    lock (one lock per key), so a slow load never blocks hits on other models.
    """

    def __init__(self, db: Database, budget_bytes: int = 0, default_ref: str = "embedded",
                 roots: tuple[Path, ...] = ()) -> None:
        self.db = db
        self.roots = tuple(Path(r).resolve() for r in roots)  # folders a web client may name models in
        self.default_ref = default_ref
        self.budget_bytes = budget_bytes
        self._cache: OrderedDict[tuple[Any, ...], _Entry] = OrderedDict()
        self._building: dict[tuple[Any, ...], threading.Lock] = {}
        self._lock = threading.RLock()
        self.evictions = 0

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
        try:  # local_files_only: never a network call (HF_HUB_OFFLINE is set once by studio.wiring)
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
        """Return the cached ``build(spec)`` for this model/key/device/dtype, building on a miss
        (or when the model's files changed on disk)."""
        spec = self.resolve(ref)
        stamp = _stamp(spec.path)
        ck = (str(spec.path), key, device, dtype)
        with self._lock:
            entry = self._cache.get(ck)
            if entry is not None and entry.stamp == stamp:
                self._cache.move_to_end(ck)
                self._evict(device, keep=ck)  # entries grow (adapters): re-check the budget
                return entry.obj
            if entry is not None:  # retrained or replaced on disk: drop the stale copy
                del self._cache[ck]
            key_lock = self._building.setdefault(ck, threading.Lock())
        with key_lock:  # one build per key; other models stay served meanwhile
            with self._lock:
                entry = self._cache.get(ck)
                if entry is not None and entry.stamp == stamp:
                    self._cache.move_to_end(ck)
                    return entry.obj
                self._evict(device, incoming=_disk_bytes(spec.path))
            obj = build(spec)
            with self._lock:
                self._cache[ck] = _Entry(obj, stamp)
                self._evict(device, keep=ck)
            return obj

    def budget_for(self, device: str) -> int:
        if self.budget_bytes > 0:
            return self.budget_bytes
        if device.startswith("cuda"):
            try:
                import torch

                return int(torch.cuda.get_device_properties(torch.device(device)).total_memory * 0.8)
            except Exception:  # noqa: BLE001 - no CUDA: fall through to RAM
                pass
        return int(physical_memory() * 0.4)

    def cached_bytes(self) -> int:
        with self._lock:
            return sum(entry_bytes(e.obj) for e in self._cache.values())

    def _evict(self, device: str, keep: tuple[Any, ...] | None = None, incoming: int = 0) -> None:
        """Drop least-recently-used entries until the cache (plus ``incoming``) fits the budget;
        ``keep`` (the entry just built) always stays."""
        budget = self.budget_for(device)
        sizes = {k: entry_bytes(e.obj) for k, e in self._cache.items()}
        used = sum(sizes.values()) + incoming
        for k in list(self._cache):
            if used <= budget:
                break
            if k == keep:
                continue
            used -= sizes[k]
            del self._cache[k]
            self.evictions += 1
            log.info("model cache: evicted %s (%d MB) to stay within %d MB", k[0], sizes[k] >> 20, budget >> 20)
        if len(self._cache) and keep is not None and used > budget:
            log.warning("model cache: %s alone (%d MB) exceeds the %d MB budget", keep[0], used >> 20, budget >> 20)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


def entry_bytes(obj: Any) -> int:
    """Memory an entry holds: its own ``nbytes()`` if it has one, else its torch modules."""
    if hasattr(obj, "nbytes") and callable(obj.nbytes):
        return int(obj.nbytes())
    from engines.pipelines import module_bytes

    return module_bytes(obj) or module_bytes(getattr(obj, "__dict__", {}))


def physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".gguf", ".pt", ".ckpt", ".txt", ".model")


def _model_files(path: Path) -> list[os.stat_result]:
    """Stats of a model's weight/config files: the file itself, or a diffusers folder's top
    level and its component folders (two levels, never a recursive walk)."""
    if not path.is_dir():
        return [path.stat()]
    out = []
    with os.scandir(path) as top:
        for e in top:
            if e.is_file() and e.name.endswith(WEIGHT_SUFFIXES):
                out.append(e.stat())
            elif e.is_dir() and not e.name.startswith("."):
                with os.scandir(e.path) as sub:
                    out.extend(f.stat() for f in sub if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    return out


def _disk_bytes(path: Path) -> int:
    try:
        return sum(st.st_size for st in _model_files(path) if st.st_size > 1 << 16)
    except OSError:
        return 0


def _stamp(path: Path) -> tuple[Any, ...]:
    """Changes when the model's files change on disk (size or mtime of any weight/config
    file), so a retrained model is reloaded; costs a few dozen stats, not a folder walk."""
    try:
        return tuple(sorted((st.st_size, st.st_mtime_ns, st.st_ino) for st in _model_files(path)))
    except OSError:
        return ()
