"""Params JSON schema → Gradio components, and component values → params dict.

Fields are mapped by name, never by position, so the UI cannot drift from the params
models: adding a field to an engine's params adds a control here automatically.

A schema that names a discriminator (``x-discriminator``, e.g. adapter-train's ``method``)
marks the fields of only some of its values with ``x-methods``: such a field is shown only
while the discriminator holds one of them, and is not sent otherwise.
"""
from __future__ import annotations

import json
from typing import Any

import gradio as gr

INPUT_FILE_MARK = "studio-input"


def _resolve(prop: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in prop:
        return defs.get(prop["$ref"].split("/")[-1], {}) | {k: v for k, v in prop.items() if k != "$ref"}
    if "anyOf" in prop:  # Optional[X]: use the non-null branch
        non_null = [p for p in prop["anyOf"] if p.get("type") != "null"]
        if len(non_null) == 1:
            return _resolve(non_null[0], defs) | {k: v for k, v in prop.items() if k != "anyOf"}
    return prop


def _nullable(prop: dict[str, Any]) -> bool:
    return any(p.get("type") == "null" for p in prop.get("anyOf", []))


def is_file_field(prop: dict[str, Any]) -> bool:
    return prop.get("format") == INPUT_FILE_MARK or any(
        p.get("format") == INPUT_FILE_MARK for p in prop.get("anyOf", []))


def build_form(schema: dict[str, Any], elem_prefix: str = "", render: bool = True,
               only: list[str] | None = None, preset: dict[str, Any] | None = None) -> dict[str, gr.components.Component]:
    """Create one component per property, labelled and ranged from the schema.

    ``render=False`` creates them unplaced so a tab can lay them out itself; ``only``
    restricts to some fields; ``preset`` shows other starting values than the schema's
    defaults (they are sent even when left unchanged)."""
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    comps: dict[str, gr.components.Component] = {}
    for name, raw in schema.get("properties", {}).items():
        if only is not None and name not in only:
            continue
        prop = _resolve(raw, defs)
        label = (prop.get("title") or name.replace("_", " ").title()) + (" *" if name in required else "")
        info = prop.get("description")
        default = (preset or {}).get(name, prop.get("default"))
        elem_id = f"{elem_prefix}{name}"
        kind = prop.get("type")
        if is_file_field(raw):
            comps[name] = gr.File(label=label, elem_id=elem_id, interactive=True, render=render)
        elif "enum" in prop:
            comps[name] = gr.Dropdown(choices=list(prop["enum"]), value=default, label=label, info=info, elem_id=elem_id, interactive=True, render=render)
        elif kind == "boolean":
            comps[name] = gr.Checkbox(value=bool(default), label=label, info=info, elem_id=elem_id, interactive=True, render=render)
        elif kind in ("integer", "number") and _nullable(raw):
            comps[name] = gr.Textbox(value="" if default is None else str(default), label=label,
                                     info=(info or "") + " (leave empty for none)", elem_id=elem_id, interactive=True, render=render)
        elif kind in ("integer", "number"):
            lo = prop.get("minimum", prop.get("exclusiveMinimum"))
            hi = prop.get("maximum", prop.get("exclusiveMaximum"))
            step = 1 if kind == "integer" else prop.get("multipleOf", 0.01)
            if lo is not None and hi is not None and hi - lo <= 1000:
                comps[name] = gr.Slider(lo, hi, value=default if default is not None else lo, step=step,
                                        label=label, info=info, elem_id=elem_id, interactive=True, render=render)
            else:
                comps[name] = gr.Number(value=default, label=label, info=info, precision=0 if kind == "integer" else None,
                                        elem_id=elem_id, interactive=True, render=render)
        elif kind in ("array", "object"):
            comps[name] = gr.Code(value=json.dumps(default if default is not None else ([] if kind == "array" else {})),
                                  language="json", label=f"{label} (JSON)", elem_id=elem_id, interactive=True, render=render)
        else:
            multiline = "prompt" in name
            comps[name] = gr.Textbox(value=default if default is not None else "", label=label, info=info,
                                     lines=3 if multiline else 1, elem_id=elem_id, interactive=True, render=render)
    _wire_discriminator(schema, comps, preset)
    return comps


def applies(schema: dict[str, Any], name: str, choice: Any) -> bool:
    """Whether field ``name`` belongs to the discriminator value ``choice`` (always, for common fields)."""
    methods = schema.get("properties", {}).get(name, {}).get("x-methods")
    return methods is None or choice in methods


def _discriminator_value(schema: dict[str, Any], comps: dict[str, Any], values: dict[Any, Any] | None,
                         preset: dict[str, Any] | None = None) -> Any:
    disc = schema.get("x-discriminator")
    if disc is None:
        return None
    if values is not None and disc in comps and comps[disc] in values:
        return values[comps[disc]]
    return (preset or {}).get(disc, schema["properties"].get(disc, {}).get("default"))


def _wire_discriminator(schema: dict[str, Any], comps: dict[str, Any], preset: dict[str, Any] | None) -> None:
    """Show the fields of the chosen discriminator value only: initial visibility from the preset or
    default, then updated whenever the discriminator control changes."""
    disc = schema.get("x-discriminator")
    dependent = [n for n in comps if "x-methods" in schema["properties"].get(n, {})]
    if not dependent:
        return
    choice = _discriminator_value(schema, comps, None, preset)
    for n in dependent:
        comps[n].visible = applies(schema, n, choice)
    if disc not in comps:
        return

    def toggle(value: Any) -> list[Any]:
        return [gr.update(visible=applies(schema, n, value)) for n in dependent]

    comps[disc].change(toggle, inputs=comps[disc], outputs=[comps[n] for n in dependent], show_progress="hidden",
                       queue=False)


def collect(schema: dict[str, Any], comps: dict[str, Any], values: dict[Any, Any], upload) -> dict[str, Any]:  # noqa: ANN001
    """Turn component values into a params dict; file fields are uploaded as assets via ``upload``."""
    defs = schema.get("$defs", {})
    params: dict[str, Any] = {}
    choice = _discriminator_value(schema, comps, values)
    for name, comp in comps.items():
        if not applies(schema, name, choice):
            continue  # a hidden field of another method: not sent (the server would refuse it)
        raw = schema["properties"][name]
        prop = _resolve(raw, defs)
        v = values.get(comp)
        if is_file_field(raw):
            if v:
                path = v if isinstance(v, str) else getattr(v, "name", None) or v.get("path")
                params[name] = upload(path)
            continue
        if prop.get("type") in ("integer", "number") and isinstance(v, str):
            v = v.strip()
            if not v:
                continue
            try:
                v = int(v) if prop["type"] == "integer" else float(v)
            except ValueError:
                raise ValueError(f"{name}: {v!r} is not a number") from None
        if prop.get("type") in ("array", "object"):
            v = json.loads(v) if isinstance(v, str) and v.strip() else v
        if prop.get("type") == "integer" and isinstance(v, float) and v.is_integer():
            v = int(v)
        if v is None or (v == "" and prop.get("type") != "string"):
            continue
        if _unchanged(comp, v, prop):
            continue  # the server's default applies (a shown default may be a placeholder, e.g. "[]")
        params[name] = v
    return params


def _unchanged(comp: Any, v: Any, prop: dict[str, Any]) -> bool:
    """True when the user left a control as the form showed it and the schema has no plain default
    to show (e.g. a list made by a factory, shown as "[]"): then the server's own default applies.
    A shown default or a preset is sent as is."""
    if "default" in prop:
        return False
    shown = getattr(comp, "value", None)
    if prop.get("type") in ("array", "object") and isinstance(shown, str):
        try:
            shown = json.loads(shown) if shown.strip() else None
        except ValueError:
            return False
    if prop.get("type") in ("integer", "number") and isinstance(shown, str):
        try:
            shown = float(shown) if shown.strip() else None
        except ValueError:
            return False
    if isinstance(v, (int, float)) and isinstance(shown, (int, float)) and not isinstance(v, bool):
        return float(v) == float(shown)
    return v == shown
