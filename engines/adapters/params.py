"""Params of the adapter engines (light module: no torch import).

``adapter-train`` takes one parameter model per method — ``LoraTrainParams``,
``ShiraTrainParams``, ``FouraTrainParams`` — joined as a discriminated union on ``method``
(``AdapterTrainParams``, the engine's ``params_model``). A field of another method is an error
naming the field (``density`` with ``method="lora"``), never silently ignored. The union's JSON
schema is flat, one property per field, so every schema reader (forms, CLI ``--set``, input-file
detection) keeps working: fields of only some methods carry ``x-methods`` and the schema names
its discriminator in ``x-discriminator``; the generated form shows such a field only while
``method`` is one of them.
"""
from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, RootModel, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from engines.base import Params, input_field

DEFAULT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]
METHODS = ("lora", "shira", "foura")
_METHOD_DOC = "adapter type: lora (low rank), shira (a sparse subset of each weight), foura (low rank in a DCT basis)"


class _AdapterTrainCommon(Params):
    """Fields every method takes."""

    model: str = Field("embedded", description="base model the adapter is trained for")
    dataset: str | None = input_field(
        "training images: a .zip (or a folder, from the CLI) of images with optional same-name .txt captions",
        kinds=("archive",), default=None)
    demo: Literal["none", "striped-style", "dotted-style", "outlined-style", "new-concept"] = Field(
        "none", description="a ready-made dataset from the embedded world instead of your own images")
    name: str = Field("", max_length=120, description="adapter name (default: method + trigger)")
    trigger: str = Field("", max_length=60, description="trigger word, substituted for {trigger} in the template")
    caption_template: str = Field("{caption}", max_length=500,
                                  description="caption for each image; {caption} = its .txt caption, {trigger}")
    targets: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS),
                               description="U-Net Linear layers to adapt (name suffixes)")
    preserve: float = Field(
        0.0, ge=0.0, le=0.75,
        description="mix-ready training: share of each batch whose caption has the trigger swapped for a made-up "
                    "word, with the base model's own prediction as target, so the adapter acts only on its "
                    "trigger and disturbs other adapters' words less when mixed (0 = off; costs one extra "
                    "forward pass on that share)")
    steps: int = Field(400, ge=1, le=100000, description="optimisation steps")
    learning_rate: float = Field(1e-3, gt=0, le=1.0, description="learning rate (AdamW)")
    batch_size: int = Field(4, ge=1, le=64, description="images per step")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="random seed")
    sample_every: int = Field(100, ge=0, le=100000, description="sample preview every N steps (0 = off)")
    sample_prompt: str = Field("", max_length=500, description="prompt for sample previews (default: first caption)")
    checkpoint_every: int = Field(50, ge=1, le=100000, description="checkpoint for resume every N steps")

    @model_validator(mode="after")
    def _check(self) -> "_AdapterTrainCommon":
        if (self.dataset is None) == (self.demo == "none"):
            raise ValueError("give exactly one of dataset (your images) or demo (a built-in dataset)")
        if "{trigger}" in self.caption_template and not self.trigger:
            raise ValueError("caption_template uses {trigger} but no trigger word is set")
        if self.preserve > 0 and not self.trigger:
            raise ValueError("preserve (mix-ready training) needs a trigger word to swap out")
        if not self.targets:
            raise ValueError("targets must name at least one layer")
        return self


def _rank() -> Any:
    return Field(8, ge=1, le=256, description="rank of the low-rank factors")


class LoraTrainParams(_AdapterTrainCommon):
    method: Literal["lora"] = Field("lora", description=_METHOD_DOC)
    rank: int = _rank()


class FouraTrainParams(_AdapterTrainCommon):
    method: Literal["foura"] = Field("foura", description=_METHOD_DOC)
    rank: int = _rank()


class ShiraTrainParams(_AdapterTrainCommon):
    method: Literal["shira"] = Field("shira", description=_METHOD_DOC)
    density: float = Field(0.02, ge=0.001, le=0.25, description="fraction of each target weight trained")
    mask_type: Literal["random", "weight", "gradient", "snip", "structured"] = Field(
        "random", description="which entries: random, weight magnitude, gradient, SNIP or structured")


METHOD_PARAMS: dict[str, type[_AdapterTrainCommon]] = {
    "lora": LoraTrainParams, "shira": ShiraTrainParams, "foura": FouraTrainParams}
AnyAdapterTrainParams = Annotated[Union[LoraTrainParams, ShiraTrainParams, FouraTrainParams],
                                  Field(discriminator="method")]
# form/schema order: the method right after the name, its own fields right after the targets
_ORDER = ("model", "dataset", "demo", "name", "method", "trigger", "caption_template", "targets",
          "rank", "density", "mask_type")


class AdapterTrainParams(RootModel[AnyAdapterTrainParams]):
    """``adapter-train`` params: the per-method model chosen by ``method`` (default ``lora``),
    in ``.root``. Build with ``AdapterTrainParams.model_validate({...})`` (or one of the per-method
    models directly)."""

    model_config = {"frozen": True}
    discriminator: ClassVar[str] = "method"

    @model_validator(mode="before")
    @classmethod
    def _default_method(cls, data: Any) -> Any:
        if isinstance(data, dict) and "method" not in data:
            return {**data, "method": "lora"}
        return data

    @classmethod
    def model_validate(cls, obj: Any, **kw: Any) -> "AdapterTrainParams":  # type: ignore[override]
        """As pydantic's, with errors located at the field (not under the union's tag) and a field
        of another method reported as such."""
        if isinstance(obj, tuple(METHOD_PARAMS.values())):
            obj = obj.model_dump()
        try:
            return super().model_validate(obj, **kw)
        except ValidationError as e:
            method = obj.get("method", "lora") if isinstance(obj, dict) else None
            raise _readable(e, method) from None

    @classmethod
    def model_json_schema(cls, *args: Any, **kw: Any) -> dict[str, Any]:  # type: ignore[override]
        """One flat object schema: every field once, ``x-methods`` on fields of only some methods."""
        props: dict[str, dict[str, Any]] = {}
        owners: dict[str, list[str]] = {}
        defs: dict[str, Any] = {}
        required: set[str] | None = None
        for m, model in METHOD_PARAMS.items():
            s = model.model_json_schema(*args, **kw)
            defs |= s.get("$defs", {})
            req = set(s.get("required", []))
            required = req if required is None else required & req
            for name, prop in s["properties"].items():
                props.setdefault(name, prop)
                owners.setdefault(name, []).append(m)
        props["method"] = {"default": "lora", "description": _METHOD_DOC, "enum": list(METHODS), "title": "Method",
                           "type": "string"}
        for name, ms in owners.items():
            if len(ms) < len(METHOD_PARAMS):
                props[name] = props[name] | {"x-methods": ms}
        order = [n for n in _ORDER if n in props] + [n for n in props if n not in _ORDER]
        schema: dict[str, Any] = {"title": "AdapterTrainParams", "type": "object", "additionalProperties": False,
                                  "properties": {n: props[n] for n in order}, "x-discriminator": "method"}
        if required:
            schema["required"] = sorted(required)
        if defs:
            schema["$defs"] = defs
        return schema


def method_fields(method: str) -> set[str]:
    return set(METHOD_PARAMS[method].model_fields)


def _readable(e: ValidationError, method: Any) -> ValidationError:
    known = method if method in METHOD_PARAMS else None
    errs = []
    for err in e.errors():
        loc = tuple(err["loc"])
        if loc and loc[0] in METHOD_PARAMS:  # the union's tag
            loc = loc[1:]
        etype: Any = err["type"]
        ctx = err.get("ctx")
        if etype == "union_tag_invalid":
            loc = ("method",)
        if etype == "extra_forbidden" and known and len(loc) == 1:
            others = [m for m in METHODS if loc[0] in METHOD_PARAMS[m].model_fields]
            if others:
                etype = PydanticCustomError(
                    "not_for_method", "{field} does not apply to method '{method}' (only to {others})",
                    {"field": str(loc[0]), "method": known, "others": ", ".join(others)})
                ctx = None
        if isinstance(etype, str):
            etype = PydanticCustomError(etype, "{msg}", {"msg": err["msg"]})
            ctx = None
        line: dict[str, Any] = {"type": etype, "loc": loc, "input": err.get("input")}
        if ctx:
            line["ctx"] = ctx
        errs.append(line)
    return ValidationError.from_exception_data("AdapterTrainParams", errs)
