"""Generate tab: text-to-image with live preview, cancel, Clockwork, reproduce, model picker."""
from __future__ import annotations

import json
from typing import Any

import gradio as gr

from studio.catalog import engine_schema, model_facts, prompt_reading, unknown_words
from studio.errors import StudioError
from studio.wiring import Services
from ui.common import asset_file, cancel_job, fmt_job_line, job_outputs, uploader
from ui.common import progress_bar as _bar
from ui.forms import build_form, collect

ENGINE = "t2i"
LAYOUT_FIELDS = ["prompt", "negative_prompt", "scheduler", "steps", "guidance_scale", "seed", "batch_size",
                 "batch_count", "clockwork", "clock_period", "layout", "init_image", "strength", "preview_every", "adapters",
                 "adapter_mode"]


def model_choices(services: Services) -> list[tuple[str, str]]:
    return [("embedded (built-in world model)", "embedded")] + [
        (f"{m['name']} ({m['kind']})", m["name"]) for m in services.models.list() + services.models.in_folders()]


GRID_PARAMS = {"guidance_scale": float, "steps": int, "seed": int, "scheduler": str, "clock_period": int,
               "strength": float, "negative_prompt": str}


def grid_values(param: str, text: str) -> list[Any]:
    """'2, 4, 7' → typed values for one grid axis (a clear error for a bad one)."""
    cast = GRID_PARAMS.get(param)
    if cast is None:
        raise ValueError(f"{param} cannot be swept")
    out = []
    for raw in [t.strip() for t in (text or "").split(",") if t.strip()][:16]:
        try:
            out.append(cast(raw))
        except ValueError:
            raise ValueError(f"{param}: {raw!r} is not a {cast.__name__}") from None
    if not out:
        raise ValueError(f"give at least one value for {param}")
    return out


def compose_grid(paths: list[Any], grid: dict[str, Any]) -> Any:
    """The cells in one labelled image; small images are enlarged crisply (nearest neighbour)."""
    from PIL import Image, ImageDraw

    xs, ys = grid["xs"], grid["ys"]
    imgs = [Image.open(p).convert("RGB") if p else None for p in paths]
    w, h = next(((i.width, i.height) for i in imgs if i is not None), (64, 64))
    scale = max(1, 192 // max(w, h))
    cw, ch = w * scale, h * scale
    left, top = (110 if ys != [None] else 10), 28
    canvas = Image.new("RGB", (left + cw * len(xs), top + ch * len(ys)), "white")
    draw = ImageDraw.Draw(canvas)
    for c, xv in enumerate(xs):
        draw.text((left + c * cw + 4, 8), f"{grid['x']} = {xv}"[:30], fill="black")
    for r, yv in enumerate(ys):
        if yv is not None:
            draw.text((6, top + r * ch + ch // 2), f"{grid['y']} = {yv}"[:16], fill="black")
        for c in range(len(xs)):
            im = imgs[r * len(xs) + c]
            if im is None:
                draw.text((left + c * cw + 6, top + r * ch + ch // 2), "failed", fill="red")
            else:
                canvas.paste(im.resize((cw, ch), Image.NEAREST), (left + c * cw, top + r * ch))
    return canvas


def params_from_png(raw: bytes, services: Services) -> dict[str, Any]:
    """Generation parameters from a PNG's text chunks: the Studio's JSON chunk, else A1111's
    ``parameters`` infotext (sampler names mapped to ours; unknown ones left out)."""
    import json

    from studio.a1111 import parse_infotext, png_text, studio_scheduler

    text = png_text(raw) or {}
    if text.get("studio", "").startswith("{"):
        try:
            d = json.loads(text["studio"])
            p = d.get("params", d)
            out = {k: p.get(k) for k in ("prompt", "negative_prompt", "steps", "guidance_scale", "scheduler",
                                         "model", "width", "height", "seed")}
            return {k: v for k, v in out.items() if v is not None}
        except ValueError:
            pass
    info = text.get("parameters")
    if not info:
        return {}
    d = parse_infotext(info)

    def num(key: str, cast: Any) -> Any:
        try:
            return cast(d[key]) if key in d else None
        except (TypeError, ValueError):
            return None

    try:
        sched = studio_scheduler(d.get("Sampler"), d.get("Schedule type"))
    except StudioError:
        sched = None
    names = {m["name"] for m in services.models.list() + services.models.in_folders()} | {"embedded"}
    model = d.get("Model") if d.get("Model") in names else None
    return {k: v for k, v in {
        "prompt": d.get("Prompt") or None, "negative_prompt": d.get("Negative prompt") or None,
        "steps": num("Steps", int), "guidance_scale": num("CFG scale", float), "seed": num("Seed", int),
        "scheduler": sched, "model": model, "width": num("Size-1", int), "height": num("Size-2", int)}.items()
        if v is not None}


def facts_of(services: Services, ref: str) -> dict[str, Any]:
    """Native size, default guidance and vocabulary of a model (nothing loaded)."""
    try:
        spec = services.models.resolve(ref, allow_paths=False)
    except Exception:  # noqa: BLE001 - an unknown model: the job submit will say why
        return {"native": None, "guidance": 7.0, "vocabulary": None}
    return model_facts(spec.path)


def recent_images(services: Services, n: int = 16) -> list[tuple[str, str]]:
    out = []
    for a in services.assets.list(kind="image", limit=n * 2):
        if a.meta.get("engine") == ENGINE:
            out.append((asset_file(services, a), str(a.meta.get("prompt") or "")[:60]))
        if len(out) >= n:
            break
    return out


def values_from_bridge(services: Services, raw: str) -> tuple[dict[str, Any], str]:
    """Generate's fields from what another tab handed over: an image asset id, or JSON
    {"asset": id, "adapters": [{"adapter": id, "weight": w}, …]} (Personalize → Use in Generate).
    Returns (values, a description of the source); raises ValueError/StudioError with a reason."""
    extra = None
    if raw.startswith("{"):
        try:
            d = json.loads(raw)
            raw, extra = str(d["asset"]), d.get("adapters")
            extra = [{"adapter": str(u["adapter"]), "weight": float(u.get("weight", 1.0))}
                     for u in (extra or []) if isinstance(u, dict) and "adapter" in u][:16]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ValueError("cannot load these parameters") from None
    a = services.assets.get(raw)
    p = a.meta.get("params") if isinstance(a.meta.get("params"), dict) else None
    if p:  # the Studio's own record: exact
        values = {k: p.get(k) for k in ("prompt", "negative_prompt", "steps", "guidance_scale", "scheduler", "model",
                                        "width", "height")}
        values["seed"] = a.meta.get("seed", p.get("seed"))
        values["adapters"] = [{k: u[k] for k in ("adapter", "weight") if k in u}
                              for u in p.get("adapters") or [] if isinstance(u, dict)] or None
    else:
        values = params_from_png(services.assets.path(a.id).read_bytes()[:32 << 20], services)
    if not values:
        raise ValueError("this image carries no generation parameters")
    if extra:
        values["adapters"] = extra
    return values, f"gallery image {a.filename or a.id[:8]}"


def mix_entries(mix: str | None) -> list[dict[str, Any]]:
    """The adapter mix box's JSON as a list of entries; anything malformed is an empty mix."""
    try:
        v = json.loads(mix or "[]")
    except ValueError:
        return []
    return [e for e in v if isinstance(e, dict)] if isinstance(v, list) else []


def pick_adapters(ids: list[str] | None, mix: str | None, before: list[str] | None) -> tuple[str, list[str]]:
    """Edit the mix by what the user changed in the picker (``before`` → ``ids``): entries
    already in the mix (handed over from Personalize or the Gallery, or re-weighted by hand)
    are kept; returns the new mix JSON and the picker's value to remember."""
    ids = list(ids or [])
    removed = set(before or []) - set(ids)
    entries = [e for e in mix_entries(mix) if e.get("adapter") not in removed]
    have = {e.get("adapter") for e in entries}
    entries += [{"adapter": i, "weight": 1.0} for i in ids if i not in have]
    return json.dumps(entries), ids


def adapter_choices(services: Services) -> list[tuple[str, str]]:
    return [(f"{a.meta.get('name') or a.filename} ({a.meta.get('method', '?')})", a.id)
            for a in services.assets.list(kind="adapter", limit=200)]


def build_tab(services: Services, bridge: Any = None) -> None:
    schema = engine_schema(ENGINE)
    if schema is None:
        return
    with gr.Tab("Generate", id="generate"):
        gr.Markdown("With no model configured the Studio uses its **embedded world model**, a small SD-format "
                    "model trained offline on a procedural world: prompts like *a large red solid star in the "
                    "center on a navy background* (shapes, colours, sizes, positions, styles, backgrounds; "
                    "guidance ≈ 4). Pick or register your own SD1.x/2.x/SDXL model below.",
                    elem_id="gen-embedded-note")
        job_state = gr.State(None)      # written by submit/reproduce only
        adopted_state = gr.State(None)  # written by the timer only: the running job found after a reload
        assets_state = gr.State([])
        selected = gr.State(None)
        comps = build_form(schema, elem_prefix="gen-", render=False, only=LAYOUT_FIELDS)
        facts0 = facts_of(services, "embedded")
        with gr.Row():
            with gr.Column(scale=5):
                comps["prompt"].render()
                words_note = gr.Markdown("", elem_id="gen-words")
                with gr.Row():  # above the fold
                    go = gr.Button("Generate  (Ctrl+Enter)", variant="primary", elem_id="gen-submit", scale=3)
                    cancel = gr.Button("Interrupt", variant="stop", elem_id="gen-cancel", scale=3, visible=False)
                with gr.Accordion("Words this model knows (click to add)", open=True, elem_id="gen-vocab",
                                  visible=facts0["vocabulary"] is not None) as vocab_box:
                    chip_sets = []
                    for cat in ("shape", "colour", "size", "style", "position", "background"):
                        chips = gr.Dataset(components=[gr.Textbox(visible=False)], label=cat,
                                           samples=[[w] for w in (facts0["vocabulary"] or {}).get(cat, [])],
                                           samples_per_page=20, elem_id=f"gen-chips-{cat}")
                        chip_sets.append(chips)
                comps["negative_prompt"].render()
                with gr.Row():
                    model = gr.Dropdown(model_choices(services), value="embedded", label="Model",
                                        allow_custom_value=True, elem_id="gen-model", scale=3,
                                        info="the embedded model, a registered model, or a model in the models folder")
                    comps["scheduler"].render()
                with gr.Row():
                    # numbers, not sliders: an out-of-range value is refused with a message, never clamped
                    comps["steps"] = gr.Number(20, minimum=1, maximum=150, precision=0, label="Steps",
                                               elem_id="gen-steps", info="denoising steps (1-150)")
                    comps["guidance_scale"] = gr.Slider(0, 30, value=facts0["guidance"], step=0.5,
                                                        label="Guidance (CFG)", elem_id="gen-guidance_scale",
                                                        info="the model's own default is preset (4 for the embedded model)")
                with gr.Row():
                    native = gr.Checkbox(True, label="Model's native size", elem_id="gen-native", scale=1)
                    n0 = facts0["native"] or 512
                    width = gr.Number(n0, minimum=32, maximum=2048, step=8, precision=0, label="Width",
                                      elem_id="gen-width", scale=2, info="multiple of 8, ≤ 2048")
                    height = gr.Number(n0, minimum=32, maximum=2048, step=8, precision=0, label="Height",
                                       elem_id="gen-height", scale=2)
                with gr.Row():
                    comps["seed"].render()
                    comps["batch_size"].render()
                    comps["batch_count"].render()
                with gr.Row():
                    comps["clockwork"].render()
                    comps["clock_period"].render()
                    comps["layout"].render()
                with gr.Accordion("Adapters (LoRA, SHiRA, FouRA)", open=False):
                    adapter_pick = gr.Dropdown(adapter_choices(services), multiselect=True, label="Add from library",
                                               elem_id="gen-adapter-pick")
                    comps["adapters"].render()
                    comps["adapter_mode"].render()
                with gr.Accordion("img2img", open=False):
                    comps["init_image"].render()
                    comps["strength"].render()
                comps["preview_every"].render()
                with gr.Accordion("X/Y grid: one image per pair of parameter values", open=False):
                    with gr.Row():
                        x_param = gr.Dropdown(list(GRID_PARAMS), value="guidance_scale", label="X parameter",
                                              elem_id="gen-x-param")
                        x_values = gr.Textbox("2, 4, 7", label="X values (comma-separated)", elem_id="gen-x-values")
                    with gr.Row():
                        y_param = gr.Dropdown(["none", *GRID_PARAMS], value="steps", label="Y parameter",
                                              elem_id="gen-y-param")
                        y_values = gr.Textbox("8, 20", label="Y values", elem_id="gen-y-values")
                    grid_btn = gr.Button("Generate grid", elem_id="gen-grid-submit")
                    grid_info = gr.Markdown(elem_id="gen-grid-info")
                    grid_img = gr.Image(label="X/Y grid", type="pil", interactive=False, elem_id="gen-grid",
                                        elem_classes=["studio-crisp"])
                    grid_state = gr.State(None)  # written by the grid button only
                    grid_shown = gr.State(None)  # written by the grid timer only
                with gr.Accordion("Load parameters from a PNG (A1111, InvokeAI-style text chunks, Studio)",
                                  open=False):
                    png_in = gr.File(label="Drop a PNG", file_types=[".png"], elem_id="gen-load-png")
                    load_msg = gr.Markdown(elem_id="gen-load-msg")
                with gr.Accordion("Register a model", open=False):
                    reg_name = gr.Textbox(label="Name", elem_id="gen-reg-name")
                    reg_path = gr.Textbox(label="Diffusers folder or .safetensors file inside the models directory, or a cached hub id",
                                          elem_id="gen-reg-path")
                    reg_btn = gr.Button("Register", elem_id="gen-reg-submit")
                    reg_msg = gr.Markdown()
            with gr.Column(scale=5):
                status = gr.Markdown("Ready.", elem_id="gen-status")
                progress = gr.HTML(_bar(0), elem_id="gen-progress")
                preview = gr.Image(label="Live preview", type="filepath", interactive=False, height=256,
                                   elem_id="gen-preview")
                gallery = gr.Gallery(label="Images", columns=4, height=360, elem_id="gen-gallery",
                                     object_fit="contain", elem_classes=["studio-crisp"])
                info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="gen-info")
                with gr.Row():
                    reproduce = gr.Button("Reproduce selected", elem_id="gen-reproduce")
                    use_seed = gr.Button("Use its seed", elem_id="gen-use-seed")
                files = gr.File(label="Download originals", file_count="multiple", interactive=False)
                recent = gr.Gallery(label="Recent results", columns=8, height=140, elem_id="gen-recent",
                                    object_fit="contain", elem_classes=["studio-crisp"], allow_preview=False)
        last_done = gr.State(None)

        def on_model(ref: str | None) -> tuple[Any, ...]:
            f = facts_of(services, ref or "embedded")
            vocab = f["vocabulary"] or {}
            n = f["native"]
            return (gr.update(value=n) if n else gr.update(), gr.update(value=n) if n else gr.update(),
                    gr.update(value=f["guidance"]), gr.update(visible=f["vocabulary"] is not None),
                    *[gr.update(samples=[[w] for w in vocab.get(cat, [])]) for cat in
                      ("shape", "colour", "size", "style", "position", "background")])

        model.change(on_model, inputs=model, outputs=[width, height, comps["guidance_scale"], vocab_box, *chip_sets])

        def add_word(sample: list[str], prompt: str) -> str:
            word = (sample or [""])[0]
            return (prompt.rstrip() + " " + word).strip() if word else prompt

        for chips in chip_sets:
            chips.click(add_word, inputs=[chips, comps["prompt"]], outputs=comps["prompt"])

        def check_words(prompt: str, ref: str | None, mix: str | None = None, layout: str | None = "auto") -> str:
            f = facts_of(services, ref or "embedded")
            if not f["vocabulary"] or not prompt.strip():
                return ""
            import re

            backgrounds = [b.split(" a ", 1)[1].removesuffix(" background") for b in f["vocabulary"]["background"]]
            notes = []
            # words the mixed-in adapters were trained on (a personal subject, its class) are known too
            unknown = [w for w in unknown_words(prompt, f["vocabulary"]["words"]) if w not in adapter_words(mix)]
            reading = prompt_reading(prompt) if f.get("grammar") and layout != "off" and not mix_entries(mix) else None
            if reading is not None:  # the engine rewords the prompt: only what its reader drops is lost
                notes.append(f"Reads as: {reading[0]}.")
                unknown = [w for w in unknown if any(w in ig.split() for ig in reading[1])]
            if unknown:
                notes.append("⚠️ The embedded model does not know " + ", ".join(f"**{w}**" for w in unknown[:12])
                             + " — it will ignore " + ("it" if len(unknown) == 1 else "them") + ".")
            for m in re.finditer(r"([a-z]+(?: [a-z]+)?) background", prompt.lower()):
                words = m.group(1)
                if not any(words == b or words.endswith(" " + b) for b in backgrounds):
                    notes.append(f"⚠️ **{words.split()[-1]}** is not one of its background colours; it knows: "
                                 + ", ".join(backgrounds) + ".")
            return " ".join(notes)

        for box in (comps["prompt"], comps["adapters"], comps["layout"]):
            box.change(check_words, inputs=[comps["prompt"], model, comps["adapters"], comps["layout"]],
                       outputs=words_note, trigger_mode="always_last", show_progress="hidden")

        def adapter_words(mix: str | None) -> set[str]:
            words: set[str] = set()
            for e in mix_entries(mix):
                try:
                    meta = services.assets.get(str(e.get("adapter"))).meta
                except Exception:  # noqa: BLE001 - an unknown id is reported on submit, not here
                    continue
                for k in ("trigger", "subject_word", "class_word"):
                    words |= set(str(meta.get(k) or "").lower().split())
            return words

        def form_params(values: dict[Any, Any]) -> dict[str, Any]:
            """The t2i params the form describes (shared by Generate and the X/Y grid)."""
            params = collect(schema, comps, values, uploader(services))
            params["model"] = (values.get(model) or "embedded").strip()
            if not values.get(native):
                params["width"], params["height"] = int(values[width]), int(values[height])
            if "init_image" not in params:
                params.pop("strength", None)
            return params

        def submit(values: dict[Any, Any]) -> tuple[str, str]:
            try:
                job = services.jobs.submit(ENGINE, form_params(values), origin="ui")
            except (StudioError, ValueError) as e:
                raise gr.Error(str(e)) from None
            return job.id, fmt_job_line(job)

        fill_outputs = [comps["prompt"], comps["negative_prompt"], comps["steps"], comps["guidance_scale"],
                        comps["seed"], comps["scheduler"], model, native, width, height, load_msg, comps["adapters"]]

        def fill(values: dict[str, Any], where: str) -> tuple[Any, ...]:
            def up(key: str) -> Any:
                return gr.update(value=values[key]) if values.get(key) is not None else gr.update()

            sized = values.get("width") is not None and values.get("height") is not None
            mix = values.get("adapters")
            return (up("prompt"), up("negative_prompt"), up("steps"), up("guidance_scale"), up("seed"),
                    up("scheduler"), up("model"), gr.update(value=False) if sized else gr.update(), up("width"),
                    up("height"), f"Loaded the parameters of {where}: " + ", ".join(
                        k for k, v in values.items() if v) + ".",
                    gr.update(value=json.dumps(mix)) if mix else gr.update())

        def from_png(file: Any) -> tuple[Any, ...]:
            if not file:
                return tuple(gr.update() for _ in fill_outputs)
            path = file if isinstance(file, str) else getattr(file, "name", None) or file.get("path")
            with open(path, "rb") as f:
                raw = f.read(32 << 20)
            values = params_from_png(raw, services)
            if not values:
                raise gr.Error("this PNG carries no generation parameters")
            return fill(values, "the dropped PNG")

        png_in.upload(from_png, inputs=png_in, outputs=fill_outputs)
        if bridge is not None:
            def from_asset(raw: str) -> tuple[Any, ...]:
                if not raw:
                    return tuple(gr.update() for _ in fill_outputs)
                try:
                    values, where = values_from_bridge(services, raw)
                except (StudioError, ValueError) as e:
                    raise gr.Error(str(e)) from None
                return fill(values, where)

            bridge.change(from_asset, inputs=bridge, outputs=fill_outputs)

        def submit_grid(values: dict[Any, Any]) -> tuple[Any, str]:
            try:
                base = form_params(values)
                xs = grid_values(values[x_param], values[x_values])
                ys = grid_values(values[y_param], values[y_values]) if values[y_param] != "none" else [None]
                if len(xs) * len(ys) > 64:
                    raise ValueError(f"{len(xs) * len(ys)} cells: at most 64")
                if base.get("seed", -1) == -1:  # one seed for every cell, so only the swept values differ
                    import secrets

                    base["seed"] = secrets.randbelow(2**32)
                cells = []
                for yv in ys:
                    for xv in xs:
                        p = dict(base) | {values[x_param]: xv, "batch_size": 1, "batch_count": 1}
                        if yv is not None:
                            p[values[y_param]] = yv
                        cells.append(services.jobs.submit(ENGINE, p, origin="ui").id)
            except (StudioError, ValueError) as e:
                raise gr.Error(str(e)) from None
            grid = {"x": values[x_param], "y": values[y_param], "xs": xs, "ys": ys, "jobs": cells, "seed": base["seed"]}
            return grid, f"{len(cells)} jobs queued (seed {base['seed']})."

        grid_btn.click(submit_grid, inputs=set(comps.values()) | {model, native, width, height, x_param, x_values,
                                                                  y_param, y_values},
                       outputs=[grid_state, grid_info], trigger_mode="once")

        def poll_grid(grid: dict | None, shown: list[str] | None) -> tuple[Any, Any, Any]:
            """The grid's progress, and the composed grid once every cell finished. Only this timer
            writes ``grid_shown`` (the cells of the grid on screen) and only the button writes
            ``grid_state``, so a tick can never put an older grid back over a newer one."""
            if not grid or grid["jobs"] == shown:
                return gr.update(), gr.update(), gr.update()
            jobs = [services.jobs.get(j) for j in grid["jobs"]]
            finished = sum(j.status in ("completed", "failed", "canceled") for j in jobs)
            if finished < len(jobs):
                return (gr.update(), f"{len(jobs)} jobs queued (seed {grid.get('seed')}) · {finished}/{len(jobs)} "
                        "cells done.", gr.update())
            paths = []
            for j in jobs:
                img = next((a for a in j.assets if a.kind == "image"), None)
                paths.append(services.assets.path(img.id) if img else None)
            return compose_grid(paths, grid), f"{len(jobs)} cells done.", list(grid["jobs"])

        gr.Timer(1.0).tick(poll_grid, inputs=[grid_state, grid_shown], outputs=[grid_img, grid_info, grid_shown],
                           show_progress="hidden")

        picked = gr.State([])

        # .input: only a user's pick edits the mix (.change also fires when the section first renders)
        adapter_pick.input(pick_adapters, inputs=[adapter_pick, comps["adapters"], picked],
                           outputs=[comps["adapters"], picked])
        adapter_pick.focus(lambda: gr.update(choices=adapter_choices(services)), outputs=adapter_pick)
        model.focus(lambda: gr.update(choices=model_choices(services)), outputs=model)
        inputs = set(comps.values()) | {model, native, width, height}
        go.click(submit, inputs=inputs, outputs=[job_state, status], trigger_mode="once")

        cancel.click(lambda jid, adopted: cancel_job(services, jid or adopted), inputs=[job_state, adopted_state],
                     outputs=status)

        def poll(submitted: str | None, adopted: str | None, done_id: str | None) -> tuple[Any, ...]:
            """Every 0.5 s: the tracked job (or, after a reload, this user's running one), buttons,
            and — once it finishes — its parameters under the result and the recent strip.

            The timer never writes ``job_state``: a tick that read the old value while a click
            stored a new job would put the old one back. Adopting a job after a reload goes to a
            state only the timer writes."""
            job_id = submitted or adopted
            if not job_id:
                job_id = adopted = services.jobs.latest_active(ENGINE)
            st, pct, pv, images, fls = job_outputs(services, job_id)
            j = services.jobs.get(job_id) if job_id else None
            ids = [a.id for a in j.assets if a.kind == "image"] if j else []
            running = j is not None and j.status in ("queued", "running")
            if j is not None and j.status == "queued":
                pos = services.jobs.queue_position(j.id)
                st += f" · position {pos} in the queue" if pos else ""
            finished = j is not None and not running and done_id != j.id
            text = gr.update()
            strip = recent_images(services) if done_id is None else gr.update()  # first tick after a page load
            if done_id is None and not finished:
                done_id = j.id if j is not None and not running else ""
            if finished:
                first = next((a for a in j.assets if a.kind == "image"), None)
                text = str(first.meta.get("parameters") or "") if first else ""
                strip = recent_images(services)
            return (adopted, st, _bar(pct), pv, images, fls, ids, gr.update(visible=not running),
                    gr.update(visible=running), text, strip, j.id if finished else done_id)

        gr.Timer(0.5).tick(poll, inputs=[job_state, adopted_state, last_done],
                           outputs=[adopted_state, status, progress, preview, gallery, files, assets_state, go, cancel,
                                    info, recent, last_done], show_progress="hidden")

        def pick(evt: gr.SelectData, ids: list[str]) -> tuple[str | None, str]:
            if evt.index is None or evt.index >= len(ids):
                return None, ""
            a = services.assets.get(ids[evt.index])
            return a.id, str(a.meta.get("parameters") or a.meta)

        gallery.select(pick, inputs=assets_state, outputs=[selected, info])

        def do_reproduce(asset_id: str | None) -> tuple[Any, str]:
            if not asset_id:
                raise gr.Error("select an image first")
            try:
                job = services.jobs.reproduce(asset_id)
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return job.id, "Reproducing: " + fmt_job_line(job)

        reproduce.click(do_reproduce, inputs=selected, outputs=[job_state, status])

        def seed_of(asset_id: str | None) -> Any:
            if not asset_id:
                return gr.update()
            return services.assets.get(asset_id).meta.get("seed", -1)

        use_seed.click(seed_of, inputs=selected, outputs=comps["seed"])

        def register(name: str, path: str) -> tuple[str, Any]:
            from studio.auth import viewer

            if not viewer().is_admin:
                return "Not registered: only an admin can register models", gr.update()
            try:  # from the browser: only folders/files inside the models directory
                m = services.models.register(name, path, allow_paths=False)
            except Exception as e:  # ModelNotFound / ValueError: shown to the user
                return f"Not registered: {e}", gr.update()
            return f"Registered **{m['name']}** ({m['kind']})", gr.update(choices=model_choices(services),
                                                                            value=m["name"])

        reg_btn.click(register, inputs=[reg_name, reg_path], outputs=[reg_msg, model])
