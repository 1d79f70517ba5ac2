"""Engine registry: names map to ``module:Class`` import paths, imported lazily.

Adding an engine touches its own package plus one line here. Extra engines (plugins,
test engines) come from ``STUDIO_EXTRA_ENGINES="name=module:Class,..."``.
"""
from __future__ import annotations

import importlib
import os
from functools import lru_cache

from engines.base import Engine

BUILTIN: dict[str, str] = {
    "splat-render": "engines.splat.engine:SplatRender",
    "splat-planes": "engines.splat.engine:SplatPlanes",
    "splat-reconstruct": "engines.splat.engine:SplatReconstruct",
    "t2i": "engines.t2i.engine:T2IEngine",
    "adapter-train": "engines.adapters.engine:AdapterTrainEngine",
    "video-edit": "engines.video.engine:VideoEditEngine",
    "personalize": "engines.personalize.engine:PersonalizeEngine",
    "hdri": "engines.relight.engine:HDRIEngine",
    "relight": "engines.relight.engine:RelightEngine",
}


def _table() -> dict[str, str]:
    table = dict(BUILTIN)
    for item in filter(None, (s.strip() for s in os.environ.get("STUDIO_EXTRA_ENGINES", "").split(","))):
        name, _, target = item.partition("=")
        if not target:
            raise ValueError(f"STUDIO_EXTRA_ENGINES entry {item!r} is not name=module:Class")
        table[name.strip()] = target.strip()
    return table


def names() -> list[str]:
    return sorted(_table())


class UnknownEngine(KeyError):
    def __str__(self) -> str:
        return f"unknown engine {self.args[0]!r}; known: {', '.join(names())}"


@lru_cache(maxsize=None)
def _load(target: str) -> type[Engine]:
    module, _, cls = target.partition(":")
    engine_cls = getattr(importlib.import_module(module), cls)
    if not (isinstance(engine_cls, type) and issubclass(engine_cls, Engine)):
        raise TypeError(f"{target} is not an Engine subclass")
    return engine_cls


def get(name: str) -> type[Engine]:
    table = _table()
    if name not in table:
        raise UnknownEngine(name)
    return _load(table[name])
