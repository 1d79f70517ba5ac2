"""Schema-driven forms with a discriminator: the adapter-train form shows rank for LoRA/FouRA and
density/mask for SHiRA, switches on a method change, and never sends a hidden field."""
from __future__ import annotations

import gradio as gr

from engines.adapters.params import AdapterTrainParams
from ui.forms import build_form, collect


def _form(preset: dict | None = None) -> tuple[gr.Blocks, dict]:
    schema = AdapterTrainParams.model_json_schema()
    with gr.Blocks() as demo:
        comps = build_form(schema, elem_prefix="t-", preset=preset)
    return demo, comps


def _toggle(demo: gr.Blocks, comps: dict):  # noqa: ANN202
    """The handler wired to the method control's change event, and its outputs."""
    method_id = comps["method"]._id
    for fn in demo.fns.values():
        if any(getattr(t[0], "_id", t[0]) == method_id for t in fn.targets) and fn.inputs == [comps["method"]]:
            return fn.fn, fn.outputs
    raise AssertionError("no change handler on the method control")


def test_form_shows_only_the_fields_of_the_chosen_method() -> None:
    demo, comps = _form()
    assert comps["rank"].visible and not comps["density"].visible and not comps["mask_type"].visible
    assert comps["steps"].visible and comps["method"].value == "lora"
    _, sh = _form({"method": "shira"})
    assert not sh["rank"].visible and sh["density"].visible and sh["mask_type"].visible

    fn, outputs = _toggle(demo, comps)
    by_name = {id(c): n for n, c in comps.items()}
    names = [by_name[id(o)] for o in outputs]
    assert sorted(names) == ["density", "mask_type", "rank"]
    for method, shown in (("shira", {"density", "mask_type"}), ("foura", {"rank"}), ("lora", {"rank"})):
        ups = fn(method)
        assert {n for n, u in zip(names, ups) if u["visible"]} == shown, method


def test_collect_sends_only_the_fields_of_the_chosen_method() -> None:
    schema = AdapterTrainParams.model_json_schema()
    _, comps = _form({"demo": "striped-style"})
    values = {c: c.value for c in comps.values()}
    values[comps["density"]] = 0.1
    values[comps["rank"]] = 4
    lora = collect(schema, comps, values, upload=lambda p: p)
    assert lora["rank"] == 4 and "density" not in lora and "mask_type" not in lora
    AdapterTrainParams.model_validate(lora)  # the server accepts what the form sends
    values[comps["method"]] = "shira"
    shira = collect(schema, comps, values, upload=lambda p: p)
    assert shira["density"] == 0.1 and "rank" not in shira and shira["method"] == "shira"
    assert AdapterTrainParams.model_validate(shira).root.density == 0.1


def test_forms_without_a_discriminator_are_unchanged() -> None:
    from engines.t2i.params import T2IParams

    schema = T2IParams.model_json_schema()
    with gr.Blocks():
        comps = build_form(schema)
    assert all(c.visible for c in comps.values())
