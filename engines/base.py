"""The engine contract: typed params in, artifacts out, through a narrow context.

Engines are pure compute. They receive everything they may touch through
:class:`EngineContext` (device, scratch dir, progress, cancel check, model loader,
input resolver) and return :class:`EngineResult`. They never import ``studio``,
``ui`` or ``storage``; the Studio's job runner owns the database and the asset store.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Params", "InputFile", "ProgressEvent", "EngineContext", "Artifact", "EngineResult",
    "Engine", "Cancelled", "EngineError", "ModelSpec", "ModelNotFound", "input_field",
]


class Cancelled(Exception):
    """Raised inside an engine when the job was cancelled; the runner marks it canceled."""


class EngineError(Exception):
    """A user-facing failure (bad input file, impossible combination). One-line message."""

    error_type: str = "engine_error"


class ModelNotFound(EngineError):
    """A model reference resolved to nothing local. Never triggers a download."""

    error_type = "model_not_found"


class Params(BaseModel):
    """Base for engine params: strict field set, immutable, JSON-schema producing.

    Field ``description`` becomes the help text in the UI and API schema; ``ge``/``le``
    become slider ranges. Unknown keys are rejected so a typo is an error, not a no-op.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


INPUT_FILE_MARK = "studio-input"


def input_field(description: str, *, kinds: tuple[str, ...] = (), default: Any = ..., **kw: Any) -> Any:
    """A param that names an input file: an asset id (API/UI) or a local path (CLI).

    The Studio ingests local paths as assets before the job is stored, so a job only ever
    references assets; engines turn the id into a path with ``ctx.resolve_input``.
    ``kinds`` lists accepted asset kinds (e.g. ``("image",)``, ``("splat",)``).
    """
    extra = {"format": INPUT_FILE_MARK, "x-asset-kinds": list(kinds)}
    return Field(default, description=description, json_schema_extra=extra, **kw)


InputFile = str  # annotation alias for readability; pair with ``input_field(...)``


@dataclass(frozen=True)
class ProgressEvent:
    step: int
    total: int
    message: str = ""
    preview: Path | None = None  # a small PNG in ctx.work_dir, shown live in the UI

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, max(0.0, self.step / self.total))


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model reference: what it is and where its files are."""

    ref: str  # what the user asked for ("embedded", a name, a path, a hub id)
    kind: Literal["embedded", "diffusers", "single_file", "hub_cache"]
    path: Path
    sha256: str | None = None  # content hash where cheap to know (single files), else None


@dataclass
class EngineContext:
    """What an engine may use. Built by the Studio per job; built by tests directly."""

    work_dir: Path
    device: str = "cpu"
    dtype: str = "float32"
    report: Callable[[ProgressEvent], None] = lambda ev: None
    is_cancelled: Callable[[], bool] = lambda: False
    # load_model(ref, key, build) -> object: resolves ``ref`` to a ModelSpec, then returns the
    # worker-cached result of ``build(spec)`` for (spec, key, device, dtype).
    load_model: Callable[[str, str, Callable[[ModelSpec], Any]], Any] | None = None
    # resolve_model(ref) -> ModelSpec without loading or caching anything (training engines
    # build a private copy of the model and must not occupy the worker's model cache).
    resolve_model: Callable[[str], ModelSpec] | None = None
    resolve_input: Callable[[str], Path] = Path
    # Survives crashes and retries of the same params (checkpoints for resume); removed by the
    # Studio when the job completes. None when the caller offers no persistence.
    state_dir: Path | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def check_cancelled(self) -> None:
        if self.is_cancelled():
            raise Cancelled()

    def progress(self, step: int, total: int, message: str = "", preview: Path | None = None) -> None:
        self.report(ProgressEvent(step, total, message, preview))

    def model(self, ref: str, key: str, build: Callable[[ModelSpec], Any]) -> Any:
        if self.load_model is None:
            raise EngineError("this context has no model loader")
        return self.load_model(ref, key, build)

    def model_spec(self, ref: str) -> ModelSpec:
        if self.resolve_model is None:
            raise EngineError("this context cannot resolve models")
        return self.resolve_model(ref)


@dataclass(frozen=True)
class Artifact:
    path: Path  # a file inside ctx.work_dir; the Studio moves it into the asset store
    kind: str  # image | video | splat | adapter | json | mesh | model | archive
    mime: str
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. generation params, labels


@dataclass
class EngineResult:
    artifacts: list[Artifact]
    meta: dict[str, Any] = field(default_factory=dict)


class Engine(ABC):
    """One engine: a name, a params model and ``run``.

    ``idempotent`` engines are re-enqueued automatically after a worker crash (their
    output depends only on params). Engines hold no models at class level; they load
    through ``ctx.model`` so the worker's LRU cache owns lifetimes.
    """

    name: ClassVar[str]
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    params_model: ClassVar[type[Params]]
    idempotent: ClassVar[bool] = True
    model_params: ClassVar[tuple[str, ...]] = ()  # params naming a model: resolved at submit time

    @abstractmethod
    def run(self, params: Params, ctx: EngineContext) -> EngineResult:  # pragma: no cover
        ...


class Throttle:
    """Call-rate limiter for progress writes: ``ready()`` is true at most ``per_s`` times a second."""

    def __init__(self, per_s: float) -> None:
        self.min_gap = 1.0 / per_s
        self.last = float("-inf")

    def ready(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self.last >= self.min_gap:
            self.last = now
            return True
        return False
