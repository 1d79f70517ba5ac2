"""Video editing benchmark (issue 15): edit quality and steadiness on world clips, teacher speed,
and memory against clip length.

    studio bench video --json [--model embedded] [--student embedded-cfg] [--one-step embedded-1step]
                              [--clips 4] [--frames 48] [--steps 10]
                              [--text-guidance 7.5] [--image-guidance 1.5] [--threads 1]
                              [--speed-frames 24] [--mem-frames 48 480] [--mem-steps 2] [--no-quality]
                              [--no-student] [--no-one-step] [--no-memory] [--no-real-size]

Quality: ``--clips`` seeded world clips (``engines.video.world.world_clip(seed, frames,
EDITABLE[seed % 4])``: colour, style, shape and background edits in turn; 64×64) are edited
frame by frame by ``engines.video.edit.FrameEditor`` — what the ``video-edit`` engine streams
through — once per frame independently (``per_frame``: consistency none) and once with
cross-frame attention to the first frame (``cross_frame``: consistency keyframes), same noise
seed for every frame. Scored on the model's own frames (before the H.264 encoder):
``edit_success`` (the world judge reads the instructed attribute as the target and every other
attribute but position as kept, per frame), ``gt_error`` (mean |edit − exact edit|) and
``flicker`` (mean |Δedit_t − Δtruth_t|), each the mean over clips. ``truth_edit_success`` is the
judge on the exact edits (the ceiling the judge allows), ``unedited`` the scores of returning
the input unchanged. ``teacher_fps``: frames per second of the 3-pass guided teacher
(``--steps`` steps, one frame at a time, ``--threads`` torch threads), per-frame mode.

CFG-distilled student (``--student``: ``embedded-cfg`` = ``engines/world/weights/ip2p_cfg``, or a
folder; ``engines.video.distill_cfg``): the same quality runs, under ``quality.cfg_distilled``,
one U-Net pass per step. Speed (``speed``): teacher and student edit the same ``--speed-frames``
frames alternately (frame by frame, interleaved, so both see the same machine load), per-frame
mode, same steps and threads; ``cfg_distilled_fps`` and the ``teacher_fps`` shown next to it are
frames per second of process CPU time (``time.process_time``: with one torch thread, what the
other jobs on a shared box take away does not count), wall fps alongside;
``distill_speedup`` = student fps / teacher fps from those CPU times. The top-level
``teacher_fps`` is the interleaved CPU-time figure when the student runs, else the wall-time fps
of the quality run.

Memory: the real ``video-edit`` engine (decode → edit → H.264 encode, consistency keyframes)
on a world clip of each length in ``--mem-frames``, each in a fresh subprocess; ``peak_mb`` is
the process's peak RSS (``VmHWM``, reset with ``/proc/self/clear_refs`` after the model is
loaded) over the run, ``growth_mb`` that peak minus the RSS right before the run. Memory does
not depend on the number of denoising steps, so the memory runs use ``--mem-steps``.

One-step student (``--one-step``: ``embedded-1step`` = ``engines/world/weights/ip2p_1step``, or a
folder; ``engines.video.distill_onestep``): the same quality runs under ``quality_one_step``
(one U-Net pass per frame: ``--steps`` does not apply to it, it always runs 1), and it joins the
interleaved speed run (teacher, CFG student, one-step student on the same frames, frame by frame,
same thread): ``one_step_fps`` (CPU time, like the others), ``one_step_speedup`` (over the
teacher) and ``one_step_vs_cfg_speedup``. A missing one-step folder leaves ``one_step_fps`` null
with the reason in ``one_step_note``.

Real size (``real_size``; ``--no-real-size`` skips it): at 64×64 the embedded U-Net's per-layer
overhead, not arithmetic, sets its speed, so a batch-3 call costs little more than a batch-1
call and ``distill_speedup`` there says little about CFG distillation itself. The paper's 3× is
on device at 512×384, where the U-Net is compute-bound. :func:`real_size_speed` times teacher
step, student step and autoencoder on a random-weight Mobile-Pix2Pix + TAESD at 512×384 with the
same threads; ``distill_speedup_real_size`` is the per-frame ratio at ``--steps`` steps.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NO_STUDENT = "--no-student: the CFG-distilled student was not run"
NO_ONE_STEP = "--no-one-step: the one-step student was not run"


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _load(model: str, threads: int) -> Any:
    import torch

    from engines.base import ModelSpec
    from engines.video.engine import embedded_spec, load_ip2p

    torch.set_num_threads(threads)
    variants = {"embedded": "teacher", "embedded-cfg": "distilled", "embedded-1step": "one-step"}
    if model in variants:
        return load_ip2p(embedded_spec(variants[model]), "cpu", "float32", variants[model])
    return load_ip2p(ModelSpec(model, "diffusers", Path(model).resolve()), "cpu", "float32")


def quality(a: argparse.Namespace, model: str) -> dict[str, Any]:
    import numpy as np

    from engines.video import metrics as VM
    from engines.video.edit import FrameEditor
    from engines.video.world import EDITABLE, world_clip
    from engines.world.models import load_judge
    from engines.world.paths import judge_dir

    loaded = _load(model, a.threads)
    judge = load_judge(judge_dir())
    clips = [world_clip(s, a.frames, EDITABLE[s % len(EDITABLE)]) for s in range(a.clips)]

    def scores(frames: np.ndarray, c: Any) -> dict[str, float]:
        return {"edit_success": VM.edit_success(VM.judge_labels(judge, frames), c.labels_before, c.labels_after,
                                                c.attribute),
                "gt_error": VM.gt_error(frames, c.after), "flicker": VM.flicker(frames, c.after)}

    def mean(rows: list[dict[str, float]]) -> dict[str, float]:
        return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}

    from engines.video.engine import pipeline_kind

    res: dict[str, Any] = {"model": model, "kind": pipeline_kind(loaded.pipe), "clips": [{"seed": s, "attribute": c.attribute, "instruction": c.instruction}
                                                     for s, c in enumerate(clips)]}
    res["truth_edit_success"] = mean([scores(c.after, c) for c in clips])["edit_success"]
    res["unedited"] = mean([scores(c.before, c) for c in clips])
    for name, mode in (("per_frame", "none"), ("cross_frame", "keyframes")):
        rows, secs, n = [], 0.0, 0
        for c in clips:
            with FrameEditor(loaded.pipe, c.instruction, text_guidance=a.text_guidance,
                             image_guidance=a.image_guidance, steps=a.steps, consistency=mode, seed=0) as ed:
                out = []
                for f in c.before:
                    t = time.perf_counter()
                    out.append(ed.edit(f))
                    secs += time.perf_counter() - t
                    n += 1
            rows.append(scores(np.stack(out), c))
        res[name] = mean(rows) | {"fps": round(n / secs, 3), "per_clip": rows}
    pf, cf = res["per_frame"], res["cross_frame"]
    res["goal_flicker_below_per_frame"] = cf["flicker"] < pf["flicker"]
    res["goal_edit_success_not_worse"] = cf["edit_success"] >= pf["edit_success"]
    return res


def speed(a: argparse.Namespace, students: dict[str, str]) -> dict[str, Any]:
    """The teacher and the students (``{"cfg_distilled": ref, "one_step": ref}``, either may be
    absent) on the same frames, alternating frame by frame (same load for all), per-frame mode, one
    frame at a time; CPU-time and wall-time fps, and U-Net calls per step and per frame."""
    from engines.video.edit import FrameEditor
    from engines.video.engine import pipeline_kind
    from engines.video.world import world_clip

    models = {"teacher": _load(a.model, a.threads)} | {k: _load(ref, a.threads) for k, ref in students.items()}
    steps = {k: 1 if pipeline_kind(m.pipe) == "one-step" else a.steps for k, m in models.items()}
    clip = world_clip(0, a.speed_frames)
    calls = {k: 0 for k in models}
    cpu = {k: 0.0 for k in models}
    wall = {k: 0.0 for k in models}
    unet_cpu = {k: 0.0 for k in models}
    started: dict[str, float] = {}

    def pre(k: str) -> Any:
        return lambda *_x: started.__setitem__(k, time.process_time())

    def post(k: str) -> Any:
        def f(*_x: Any) -> None:
            calls[k] += 1
            unet_cpu[k] += time.process_time() - started[k]
        return f

    hooks = [h for k, m in models.items() for h in (m.pipe.unet.register_forward_pre_hook(pre(k)),
                                                    m.pipe.unet.register_forward_hook(post(k)))]
    eds = {k: FrameEditor(m.pipe, clip.instruction, text_guidance=a.text_guidance, image_guidance=a.image_guidance,
                          steps=a.steps, consistency="none", seed=0) for k, m in models.items()}
    try:
        for k, ed in eds.items():  # warm-up, not timed
            ed.edit(clip.before[0])
        for k in models:
            calls[k], unet_cpu[k] = 0, 0.0
        for f in clip.before:
            for k, ed in eds.items():
                c, w = time.process_time(), time.perf_counter()
                ed.edit(f)
                cpu[k] += time.process_time() - c
                wall[k] += time.perf_counter() - w
    finally:
        for h in hooks:
            h.remove()
    n = len(clip.before)
    out: dict[str, Any] = {"frames": n, "steps": a.steps}
    for k in models:
        out[k] = {"fps_cpu": round(n / cpu[k], 3), "fps_wall": round(n / wall[k], 3), "steps": steps[k],
                  "unet_calls_per_step": round(calls[k] / (n * steps[k]), 3),
                  "unet_calls_per_frame": round(calls[k] / n, 3),
                  "unet_ms_per_step_cpu": round(1000 * unet_cpu[k] / (n * steps[k]), 2),
                  "unet_ms_per_frame_cpu": round(1000 * unet_cpu[k] / n, 2),
                  "unet_batch_per_call": 3 if k == "teacher" else 1}
    if "cfg_distilled" in models:
        out["speedup_cpu"] = round(cpu["teacher"] / cpu["cfg_distilled"], 3)
        out["speedup_wall"] = round(wall["teacher"] / wall["cfg_distilled"], 3)
        out["unet_speedup_cpu"] = round(unet_cpu["teacher"] / unet_cpu["cfg_distilled"], 3)
    if "one_step" in models:
        out["one_step_speedup_cpu"] = round(cpu["teacher"] / cpu["one_step"], 3)
        out["one_step_speedup_wall"] = round(wall["teacher"] / wall["one_step"], 3)
        if "cfg_distilled" in models:
            out["one_step_vs_cfg_speedup_cpu"] = round(cpu["cfg_distilled"] / cpu["one_step"], 3)
    return out


def real_size_speed(steps: int, threads: int, rounds: int, width: int = 512, height: int = 384) -> dict[str, Any]:
    """CFG distillation's speed where MoViE measures it: a real-size Mobile-Pix2Pix (an SD1.5
    U-Net with 8 input channels and no attention at the highest resolution, methods.md §8) and a
    TAESD-shaped tiny autoencoder, random weights (cost does not depend on weight values), at the
    paper's 512×384. The student is built from the teacher by the trainer's own
    ``student_from_teacher``. Teacher step (one call, batch 3), student step (one call, batch 1)
    and the autoencoder (encode + decode one frame) are timed in CPU time, interleaved, ``rounds``
    times each; a frame's time at ``steps`` steps is composed from those measured parts
    (``steps`` × step + autoencoder; scheduler and text encoder are negligible at this size)."""
    import torch
    from diffusers import AutoencoderTiny, UNet2DConditionModel

    from bench.clockwork import SD15_UNET
    from engines.video.cfg import scale_features
    from engines.video.distill_cfg import student_from_teacher

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = dict(SD15_UNET, in_channels=8,
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
               up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    teacher = UNet2DConditionModel(**cfg).eval()
    student = student_from_teacher(teacher).eval()
    vae = AutoencoderTiny().eval()  # TAESD's architecture: 4 latent channels, /8
    h, w = height // 8, width // 8
    x = torch.randn(1, 8, h, w)  # noisy latent ‖ image latent [1, 8, h, w]
    text = torch.randn(1, 77, 768)  # CLIP ViT-L token states [1, 77, 768]
    t = torch.tensor([500])
    frame = torch.rand(1, 3, height, width) * 2 - 1  # [1, 3, H, W] in [-1, 1]
    labels = scale_features(torch.tensor([1.5]), torch.tensor([7.5]))  # [1, 18]

    def teacher_step() -> None:  # the diffusers IP2P batch: (c_I, c_T), (c_I, ∅), (∅, ∅)
        uncond = torch.cat([x[:, :4], torch.zeros_like(x[:, 4:])], 1)
        teacher(torch.cat([x, x, uncond]), t.repeat(3), torch.cat([text, text, text])).sample

    def student_step() -> None:
        student(x, t, text, class_labels=labels).sample

    def autoencoder() -> None:
        vae.decode(vae.encode(frame).latents).sample

    parts = {"teacher_step": teacher_step, "student_step": student_step, "autoencoder": autoencoder}
    times: dict[str, list[float]] = {k: [] for k in parts}
    with torch.no_grad():
        for f in parts.values():  # warm-up, not timed
            f()
        for _ in range(rounds):
            for k, f in parts.items():
                c = time.process_time()
                f()
                times[k].append(time.process_time() - c)
    ms = {k: 1000 * sorted(v)[len(v) // 2] for k, v in times.items()}  # median over rounds
    teacher_frame = steps * ms["teacher_step"] + ms["autoencoder"]
    student_frame = steps * ms["student_step"] + ms["autoencoder"]
    return {"architecture": "Mobile-Pix2Pix (SD1.5 U-Net, 8 in-channels, no attention at 1/8) + TAESD, random weights",
            "width": width, "height": height, "latent": [h, w], "threads": threads, "rounds": rounds,
            "steps": steps, "ms_cpu_median": {k: round(v, 1) for k, v in ms.items()},
            "ms_cpu_all": {k: [round(1000 * s, 1) for s in v] for k, v in times.items()},
            "step_speedup": round(ms["teacher_step"] / ms["student_step"], 3),
            "teacher_fps": round(1000 / teacher_frame, 4), "cfg_distilled_fps": round(1000 / student_frame, 4),
            "distill_speedup": round(teacher_frame / student_frame, 3),
            # a one-step student is the same U-Net, one pass per frame
            "one_step_fps": round(1000 / (ms["student_step"] + ms["autoencoder"]), 4)}


def child(frames: int, model: str, steps: int, threads: int) -> dict[str, Any]:
    """One memory run in this (fresh) process: the video-edit engine on a ``frames``-long clip."""
    from engines.base import EngineContext
    from engines.video.engine import VideoEditEngine
    from engines.video.params import VideoEditParams
    from engines.video.world import world_clip, write_clip

    loaded = _load(model, threads)
    with tempfile.TemporaryDirectory() as td:
        clip = world_clip(0, frames)
        src = write_clip(clip.before, Path(td) / "clip.mp4", upscale=1)
        del clip
        work = Path(td) / "work"
        work.mkdir()
        ctx = EngineContext(work_dir=work, load_model=lambda ref, key, build: loaded)
        p = VideoEditParams(video=str(src), instruction="make the star yellow", model=model, steps=steps,
                            max_frames=frames, consistency="keyframes")
        import gc

        gc.collect()
        before = _rss_mb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        t = time.perf_counter()
        r = VideoEditEngine().run(p, ctx)
        secs = time.perf_counter() - t
        peak = _rss_mb("VmHWM")
    return {"frames": r.meta["frames"], "peak_mb": round(peak, 1), "growth_mb": round(peak - before, 1),
            "rss_before_mb": round(before, 1), "seconds": round(secs, 1), "steps": steps}


def memory(a: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=str(ROOT))
    out: dict[str, Any] = {}
    for n in a.mem_frames:
        cmd = [sys.executable, "-m", "bench.video", "--child", str(n), "--model", a.model, "--mem-steps",
               str(a.mem_steps), "--threads", str(a.threads)]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=7200)
        if r.returncode != 0:
            raise RuntimeError(f"memory run ({n} frames) failed: {r.stderr.strip().splitlines()[-1:]}")
        out[str(n)] = json.loads(r.stdout.strip().splitlines()[-1])
    peaks = [v["peak_mb"] for v in out.values()]
    out["peak_ratio_longest_to_shortest"] = round(peaks[-1] / peaks[0], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="studio bench video", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="accepted for symmetry; output is always JSON")
    ap.add_argument("--model", default="embedded", help="'embedded' or an InstructPix2Pix diffusers folder")
    ap.add_argument("--student", default="embedded-cfg",
                    help="the CFG-distilled student: 'embedded-cfg' (the shipped one) or a folder")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--text-guidance", type=float, default=7.5)
    ap.add_argument("--image-guidance", type=float, default=1.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed-frames", type=int, default=24, help="frames each model edits in the speed run")
    ap.add_argument("--one-step", default="embedded-1step",
                    help="the one-step student: 'embedded-1step' (the shipped one) or a folder")
    ap.add_argument("--no-student", action="store_true", help="no CFG-distilled figures")
    ap.add_argument("--no-one-step", action="store_true", help="no one-step figures")
    ap.add_argument("--mem-frames", type=int, nargs="+", default=[48, 480])
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--no-real-size", action="store_true", help="skip the real-size (512×384) CFG-distillation timing")
    ap.add_argument("--real-size-rounds", type=int, default=3)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.frames < 2 or a.clips < 1:
        ap.error("--frames must be ≥ 2 and --clips ≥ 1")
    if a.child is not None:
        print(json.dumps(child(a.child, a.model, a.mem_steps, a.threads)))
        return 0
    t0 = time.perf_counter()
    students: dict[str, str] = {}
    if not a.no_student:
        students["cfg_distilled"] = a.student
    one_note = NO_ONE_STEP if a.no_one_step else None
    if not a.no_one_step:
        from engines.base import EngineError, ModelNotFound

        try:  # a missing one-step folder is reported, not fatal
            _load(a.one_step, a.threads)
            students["one_step"] = a.one_step
        except (ModelNotFound, EngineError) as e:
            one_note = f"{type(e).__name__}: {e}"
    res: dict[str, Any] = {"bench": "video", "model": a.model, "student": None if a.no_student else a.student,
                           "one_step": students.get("one_step"),
                           "frames": a.frames, "steps": a.steps,
                           "text_guidance": a.text_guidance, "image_guidance": a.image_guidance, "threads": a.threads}
    res |= {"teacher_fps": None, "cfg_distilled_fps": None, "distill_speedup": None,
            "one_step_fps": None, "one_step_speedup": None}
    if not a.no_quality:
        qs = {"teacher": quality(a, a.model)}
        res["teacher_fps"] = qs["teacher"]["per_frame"]["fps"]
        res["quality"] = qs["teacher"]
        for k, ref in students.items():
            qs[k] = res[f"quality_{k}"] = quality(a, ref)
        if students:
            for metric in ("edit_success", "gt_error", "flicker"):
                res[metric] = {k: {"per_frame": q["per_frame"][metric], "cross_frame": q["cross_frame"][metric]}
                               for k, q in qs.items()}
    if students:
        sp = speed(a, students)
        res["speed"] = sp
        res["teacher_fps"] = sp["teacher"]["fps_cpu"]
        if "cfg_distilled" in sp:
            res |= {"cfg_distilled_fps": sp["cfg_distilled"]["fps_cpu"], "distill_speedup": sp["speedup_cpu"]}
        if "one_step" in sp:
            res |= {"one_step_fps": sp["one_step"]["fps_cpu"], "one_step_fps_wall": sp["one_step"]["fps_wall"],
                    "one_step_speedup": sp["one_step_speedup_cpu"],
                    "one_step_vs_cfg_speedup": sp.get("one_step_vs_cfg_speedup_cpu")}
    if a.no_student:
        res["distill_note"] = NO_STUDENT
    if one_note:
        res["one_step_note"] = one_note
    if not a.no_real_size:
        rs = res["real_size"] = real_size_speed(a.steps, a.threads, a.real_size_rounds)
        res["distill_speedup_real_size"] = rs["distill_speedup"]
    if not a.no_memory:
        res["memory"] = memory(a)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
