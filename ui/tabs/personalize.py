"""Personalize tab: drop photos → a verdict per photo → subject/class words, method, hollow
slider with the expected memory → train with progress, loss curve and samples → use the adapter
in Generate (it is in the adapter library as soon as the job completes)."""
from __future__ import annotations

import json

from pathlib import Path
from typing import Any

import gradio as gr

from studio.catalog import engine_schema
from studio.errors import StudioError
from studio.wiring import Services
from ui.common import asset_file, cancel_job, fmt_job_line, progress_bar

ENGINE = "personalize"
CHECK_PRIORITY = 10  # a photo check is seconds of work: ahead of queued generations
# Share of an SD1.5 U-Net's weights kept in memory while training (engines.personalize.hollow.kept_fraction
# on the SD1.5 config); the measured peak ratios are in docs/benchmarks.md ("Personalization").
KEPT_SD15 = {0: 1.0, 1: 0.626, 2: 0.162, 3: 0.037}
SD15_UNET_GB_FP16 = 1.72


def memory_note(hollow: int) -> str:
    k = int(hollow or 0)
    share = KEPT_SD15.get(k, 1.0)
    if k == 0:
        return ("**Plain training**: the whole U-Net is trained through (SD1.5: ~1.7 GB of fp16 weights plus every "
                "activation kept for the backward pass).")
    return (f"**Hollow {k}**: the mid block and the {k} innermost down/up block{'s' * (k > 1)} are pre-computed to "
            f"disk, then removed: {share:.0%} of an SD1.5 U-Net's weights stay in memory "
            f"(~{share * SD15_UNET_GB_FP16:.2f} GB fp16) and only the outer blocks keep activations. "
            "Pre-compute costs about one inference pass per step.")


def _upload(services: Services, files: list[Any]) -> tuple[list[tuple[str, str]], str | None, list[list[str]]]:
    """Store each dropped file as an asset; a rejected file gets its reason (nothing stored)."""
    ids, zip_id, rows = [], None, []
    for f in files or []:
        path = f if isinstance(f, str) else getattr(f, "name", None) or f.get("path")
        name = Path(path).name
        try:
            with open(path, "rb") as fh:
                a = services.assets.upload(fh, name)
        except StudioError as e:
            rows.append([name, f"skipped: {e}"])
            continue
        if a.kind == "archive":
            zip_id = a.id
        elif a.kind == "image":
            ids.append((a.id, name))
        else:
            rows.append([name, f"skipped: a {a.kind}, not a photo"])
    return ids, zip_id, rows


def build_tab(services: Services, bridge: Any = None, tabs: Any = None) -> None:
    if engine_schema(ENGINE) is None:
        return
    with gr.Tab("Personalize", id="personalize"):
        gr.Markdown("Teach a model **your subject** from 3–30 photos: it learns a rare *subject word* (e.g. `sks`) "
                    "for it, so prompts like *a photo of sks toy on a beach* show it in new places. The result is "
                    "an adapter in your library. No photos at hand? Tick **demo subject** (a creature the embedded "
                    "model has never seen).")
        with gr.Row():
            files = gr.File(label="Photos (3–30 images, or one .zip)", file_count="multiple",
                            file_types=["image", ".zip"], elem_id="pz-photos")
            with gr.Column():
                demo = gr.Checkbox(False, label="Use the demo subject instead", elem_id="pz-demo")
                check_btn = gr.Button("Check photos", elem_id="pz-check")
                check_info = gr.Markdown(elem_id="pz-check-info")
        with gr.Row():
            verdicts = gr.Dataframe(headers=["photo", "verdict"], value=[], interactive=False, wrap=True,
                                    label="A verdict per photo", elem_id="pz-verdicts")
            sheet = gr.Image(label="used (green) · skipped (red)", type="filepath", interactive=False, height=220,
                             elem_classes=["studio-crisp"])
        with gr.Row():
            model = gr.Textbox("embedded", label="Base model", elem_id="pz-model")
            subject = gr.Textbox("sks", label="Subject word", info="a rare word that will mean your subject",
                                 elem_id="pz-subject")
            klass = gr.Textbox("toy", label="Class word", info="what it is: person, dog, toy, creature…",
                               elem_id="pz-class")
            method = gr.Radio(["lora", "shira"], value="lora", label="Method", elem_id="pz-method")
        with gr.Row():
            hollow = gr.Slider(0, 3, 1, step=1, label="Hollow (0 = plain training)", elem_id="pz-hollow")
            mem = gr.Markdown(memory_note(1), elem_id="pz-memory")
        with gr.Row():
            steps = gr.Slider(10, 2000, 200, step=10, label="Steps", elem_id="pz-steps")
            lr = gr.Number(None, label="Learning rate (empty: 1e-3, hollowed LoRA 3e-3)", elem_id="pz-lr")
            rank = gr.Slider(1, 64, 4, step=1, label="LoRA rank", elem_id="pz-rank")
            prior = gr.Checkbox(False, label="Prior preservation (class images by the base model)", elem_id="pz-prior")
            samples = gr.Slider(0, 500, 50, step=10, label="Sample preview every N steps", elem_id="pz-samples")
        with gr.Row():
            start = gr.Button("Start training", variant="primary", elem_id="pz-start")
            stop = gr.Button("Cancel", variant="stop", elem_id="pz-cancel")
            use = gr.Button("Use in Generate", elem_id="pz-use")
        job_state = gr.State(None)
        check_state = gr.State(None)  # written by the check button only
        check_shown = gr.State(None)  # written by the check timer only
        status = gr.Markdown("No job yet.", elem_id="pz-status")
        bar = gr.HTML(progress_bar(0), elem_id="pz-progress")
        with gr.Row():
            preview = gr.Image(label="Sample preview (the subject in a new context)", type="filepath",
                               interactive=False, height=220, elem_id="pz-preview", elem_classes=["studio-crisp"])
            out = gr.Gallery(label="Samples, loss curve, photo checks", columns=2, height=420, object_fit="contain",
                             elem_id="pz-out", elem_classes=["studio-crisp"])

        hollow.change(memory_note, inputs=hollow, outputs=mem)

        def source_params(fs: list[Any], use_demo: bool) -> tuple[dict[str, Any], list[list[str]]]:
            if use_demo:
                return {"demo": True}, []
            ids, zip_id, rows = _upload(services, fs)
            if not ids and not zip_id:
                raise gr.Error("drop 3 or more photos (or a .zip), or tick the demo subject"
                               + (f" — {'; '.join(r[0] + ': ' + r[1] for r in rows)}" if rows else ""))
            src: dict[str, Any] = {"photos": [{"image": i, "name": n} for i, n in ids]}
            if zip_id:
                src["photos_zip"] = zip_id
            return src, rows

        def check(fs: list[Any], use_demo: bool, m: str) -> tuple[Any, ...]:
            src, rows = source_params(fs, use_demo)
            try:
                job = services.jobs.submit(ENGINE, src | {"model": m or "embedded", "check_only": True},
                                           priority=CHECK_PRIORITY, origin="ui")
            except StudioError as e:
                raise gr.Error(str(e)) from None
            # the files refused at upload keep their verdict next to the check job's (state: job id + rows)
            pending = {"job": job.id, "refused": rows}
            return (pending, rows, "checking…") if rows else (pending, gr.update(), "checking…")

        check_btn.click(check, inputs=[files, demo, model], outputs=[check_state, verdicts, check_info])

        def poll_check(pending: dict[str, Any] | None, shown: str | None) -> tuple[Any, ...]:
            """The check job's verdicts once it finishes. Only the button writes ``check_state`` and
            only this timer writes ``check_shown`` (the check on screen): a tick that read the state
            before a click stored a new check can then never wipe that check out."""
            if not pending or pending["job"] == shown:
                return gr.update(), gr.update(), gr.update(), gr.update()
            refused = pending.get("refused") or []
            try:
                j = services.jobs.get(pending["job"])
            except StudioError:
                return gr.update(), gr.update(), gr.update(), pending["job"]
            if j.status in ("queued", "running"):
                return gr.update(), gr.update(), f"checking… ({j.status})", gr.update()
            if j.status != "completed":
                return gr.update(), gr.update(), fmt_job_line(j), pending["job"]
            meta = j.result_meta
            rows = [[p["name"], ("✔ " if p["ok"] else "✘ ") + p["message"]] for p in meta.get("photos", [])]
            img = next((asset_file(services, a) for a in j.assets if a.kind == "image"), None)
            note = f"{meta.get('summary', '')}" + (f", {len(refused)} refused at upload" if refused else "") + " — " + (
                "ready to train." if meta.get("enough") else "**at least 3 good photos are needed.**")
            return rows + refused, img, note, pending["job"]

        gr.Timer(1.0).tick(poll_check, inputs=[check_state, check_shown],
                           outputs=[verdicts, sheet, check_info, check_shown],
                           show_progress="hidden")

        def begin(fs: list[Any], use_demo: bool, m: str, sw: str, cw: str, md: str, k: float, n: float, rate: float,
                  r: float, pp: bool, every: float) -> tuple[Any, str]:
            src, _ = source_params(fs, use_demo)
            params = src | {"model": m or "embedded", "subject_word": (sw or "sks").strip(),
                            "class_word": (cw or "toy").strip(), "method": md, "hollow": int(k), "steps": int(n),
                            "learning_rate": float(rate) if rate else None, "rank": int(r),
                            "prior_preservation": "on" if pp else "off", "samples_every": int(every)}
            try:
                job = services.jobs.submit(ENGINE, params, origin="ui")
            except StudioError as e:
                raise gr.Error(str(e)) from None
            return job.id, fmt_job_line(job)

        start.click(begin, inputs=[files, demo, model, subject, klass, method, hollow, steps, lr, rank, prior, samples],
                    outputs=[job_state, status], trigger_mode="once")
        stop.click(lambda jid: cancel_job(services, jid), inputs=job_state, outputs=status)

        def poll(jid: str | None) -> tuple[Any, ...]:
            if not jid:
                return "No job yet.", progress_bar(0), None, []
            try:
                j = services.jobs.get(jid)
            except StudioError as e:
                return str(e), progress_bar(0), None, []
            pv = services.jobs.preview_path(jid)
            images = [(asset_file(services, a), a.meta.get("prompt") or a.meta.get("title") or a.filename)
                      for a in j.assets if a.kind == "image"]
            line = fmt_job_line(j)
            adapter = next((a for a in j.assets if a.kind == "adapter"), None)
            if j.status == "completed" and adapter is not None:
                line += (f"<br>Adapter **{adapter.meta.get('name')}** is in the library. Prompt with "
                         f"*{j.result_meta.get('adapter', '')}*: e.g. “{adapter.meta.get('subject_word', '')} "
                         f"{adapter.meta.get('class_word', '')} …” — **Use in Generate** opens it there.")
            return (line, progress_bar(j.progress * 100),
                    str(pv) if pv and pv.is_file() and j.status == "running" else None, images)

        gr.Timer(1.0).tick(poll, inputs=job_state, outputs=[status, bar, preview, out], show_progress="hidden")

        if bridge is not None and tabs is not None:
            def send(jid: str | None) -> tuple[Any, Any, str]:
                if not jid:
                    raise gr.Error("train an adapter first")
                j = services.jobs.get(jid)
                grid = next((a for a in j.assets if a.kind == "image" and isinstance(a.meta.get("params"), dict)), None)
                adapter = next((a for a in j.assets if a.kind == "adapter"), None)
                if j.status != "completed" or grid is None or adapter is None:
                    raise gr.Error("the training job has not finished yet")
                return (json.dumps({"asset": grid.id, "adapters": [{"adapter": adapter.id, "weight": 1.0}]}),
                        gr.Tabs(selected="generate"),
                        f"Prompt, model and **{adapter.meta.get('name')}** loaded in Generate.")

            use.click(send, inputs=job_state, outputs=[bridge, tabs, status])
