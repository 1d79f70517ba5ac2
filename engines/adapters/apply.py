"""Putting an adapter mix on a loaded pipeline: the one home of adapter application.

Per pipeline, :class:`AdapterState` keeps what is worth keeping between jobs — LoRAs loaded
into diffusers/peft, parsed SHiRA/FouRA adapters, the fused switcher — inside a byte
budget, evicting (and for LoRA, unloading from the pipeline) the least recently used
adapters that the current job does not ask for.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from engines.base import EngineError

DEFAULT_BUDGET = 1 << 30  # 1 GiB of adapters per pipeline unless the worker says otherwise


@dataclass
class AdapterState:
    """Adapters held by one cached pipeline, within ``budget`` bytes, least recently used first out."""

    budget: int = DEFAULT_BUDGET
    loras: OrderedDict[str, int] = field(default_factory=OrderedDict)  # peft adapter name -> bytes
    sparse: OrderedDict[str, tuple[Any, int]] = field(default_factory=OrderedDict)  # key -> (adapter, bytes)
    switcher: Any = None  # FusedSwitcher, kept so a SHiRA switch is one scatter
    evicted: int = 0  # adapters dropped so far (for tests and benches)
    last_use: dict[str, int] = field(default_factory=dict)  # lora name or sparse key -> use counter
    uses: int = 0

    def touch(self, key: str) -> None:
        self.uses += 1
        self.last_use[key] = self.uses

    def nbytes(self) -> int:
        return sum(self.loras.values()) + sum(b for _, b in self.sparse.values()) + \
            (self.switcher.nbytes() if self.switcher is not None else 0)

    def evict(self, pipe: Any, keep: set[str]) -> None:
        """Drop least-recently-used adapters (of any kind) not in ``keep`` until within budget;
        an evicted LoRA is also deleted from the pipeline's peft layers."""
        while self.nbytes() > self.budget:
            held = [k for k in (*self.loras, *self.sparse) if k not in keep]
            if not held:
                return  # everything left is in use by this job
            victim = min(held, key=lambda k: self.last_use.get(k, 0))
            if victim in self.sparse:
                del self.sparse[victim]
            else:
                pipe.delete_adapters([victim])
                del self.loras[victim]
            self.last_use.pop(victim, None)
            self.evicted += 1


@dataclass(frozen=True)
class AdapterUse:
    """One adapter of a mix, resolved to a local file."""

    path: Path
    weight: float
    label: str = ""
    ref: str = ""  # what the user named (asset id), recorded in provenance


def state_of(loaded: Any, budget: int | None = None) -> AdapterState:
    """The pipeline's adapter state, created on first use."""
    if loaded.adapters is None:
        loaded.adapters = AdapterState(budget=budget or DEFAULT_BUDGET)
    elif budget:
        loaded.adapters.budget = budget
    return loaded.adapters


def _key(path: Path) -> str:
    """Identity of an adapter file: path, size and mtime (a rewritten file is a new adapter)."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


def apply_adapters(loaded: Any, uses: Iterable[AdapterUse], mode: str = "fused",
                   budget: int | None = None) -> tuple[list[dict[str, Any]], float, Callable[[], None]]:
    """Put the job's adapter mix on the cached pipeline; returns (info, switch ms, undo).

    LoRA goes through diffusers/peft (``load_lora_weights`` once per file, ``set_adapters``,
    ``fuse_lora`` in fused mode, undone after the job). SHiRA and frozen-gate FouRA are
    edits of the base Linear weights by the exact switcher, which stays applied until the
    next job changes the mix, so switching between SHiRA adapters costs one scatter. Because
    they edit the Linear under a LoRA wrapper directly, LoRA and SHiRA can share layers
    (peft itself refuses to nest SHiRA inside LoRA).
    """
    from engines.adapters.lora_io import detect_format, read_header
    from engines.adapters.shira import FusedSwitcher, ShiraAdapter, adapter_nbytes

    state = state_of(loaded, budget)
    pipe = loaded.pipe
    t0 = time.perf_counter()
    loras: list[tuple[str, float]] = []
    sparse: list[tuple[Any, float]] = []
    info: list[dict[str, Any]] = []
    keep: set[str] = set()
    for use in uses:
        path = Path(use.path)
        try:
            keys, meta = read_header(path)
            fmt = detect_format(keys, meta)
            key = _key(path)
        except (ValueError, OSError) as e:
            raise EngineError(f"adapter {use.ref or path.name}: {e}") from None
        label = use.label or file_label(meta) or path.stem[:10]
        keep.add(key)
        try:
            if fmt in ("kohya", "diffusers", "peft"):
                name = f"a{key}"
                keep.add(name)
                if name not in state.loras:
                    pipe.load_lora_weights(str(path), adapter_name=name)
                    state.loras[name] = _lora_bytes(pipe, name)
                state.touch(name)
                loras.append((name, use.weight))
                method = "lora"
            else:
                if key not in state.sparse:
                    if fmt == "studio-shira":
                        adapter = ShiraAdapter.load(path, pipe.unet)
                    else:
                        from engines.adapters.foura import load_fused_factors
                        from engines.adapters.shira import LowRankDelta

                        adapter = LowRankDelta(load_fused_factors(path, pipe.unet))
                    state.sparse[key] = (adapter, adapter_nbytes(adapter))
                state.touch(key)
                sparse.append((state.sparse[key][0], use.weight))
                method = "shira" if fmt == "studio-shira" else "foura"
        except (ValueError, KeyError, RuntimeError) as e:
            raise EngineError(f"adapter {label} does not fit this model: {str(e).splitlines()[0]}") from None
        info.append({"adapter": use.ref or str(path), "name": label, "method": method, "weight": use.weight})
    if sparse or state.switcher is not None:
        if state.switcher is None:
            state.switcher = FusedSwitcher(pipe.unet)
        if sparse or state.switcher.active:
            state.switcher.apply(sparse)
    fused = False
    if loras:
        pipe.enable_lora()
        pipe.set_adapters([n for n, _ in loras], adapter_weights=[w for _, w in loras])
        if mode == "fused":
            pipe.fuse_lora(components=["unet", "text_encoder"], lora_scale=1.0, adapter_names=[n for n, _ in loras])
            fused = True
    elif state.loras:
        pipe.disable_lora()
    switch_ms = (time.perf_counter() - t0) * 1000

    def undo() -> None:
        if fused:
            pipe.unfuse_lora(components=["unet", "text_encoder"])
        if loras:
            pipe.disable_lora()
        state.evict(pipe, keep)

    return info, switch_ms, undo


def _lora_bytes(pipe: Any, name: str) -> int:
    """Bytes of the LoRA weights peft created for adapter ``name`` in the pipeline."""
    total = 0
    for comp in ("unet", "text_encoder", "text_encoder_2"):
        mod = getattr(pipe, comp, None)
        if mod is None:
            continue
        for pname, prm in mod.named_parameters():
            if f".{name}." in pname or pname.endswith(f".{name}"):
                total += prm.nbytes
    return total


def file_label(meta: dict[str, str]) -> str:
    """An adapter's own name from its safetensors metadata, if it carries one."""
    for raw in (meta.get("studio"), meta.get("name")):
        try:
            v = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            v = raw
        if isinstance(v, dict) and v.get("name"):
            return str(v["name"])
        if isinstance(v, str) and v:
            return v
    return ""

