"""Single-file checkpoints load offline with the shipped configs (issue 11 §4).

A tiny SD pipeline with CLIP's real tokenizer (the shipped one) is converted to the original LDM
key layout (what A1111/Civitai files use), loaded by ``load_single_file`` in a subprocess with
``HF_HUB_OFFLINE=1``, an empty HF cache and sockets disabled, and must generate the same image as
the diffusers folder it came from. The shipped full-size configs are checked by building each model
on the meta device and counting parameters against the published architectures.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- diffusers -> LDM keys
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}


def unet_to_ldm(sd: dict, cfg: dict) -> dict:
    """diffusers UNet2DConditionModel state dict -> ``model.diffusion_model.*`` (LDM) keys."""
    L = cfg["layers_per_block"]
    n_up = len(cfg["up_block_types"])
    out = {}

    def put(dst: str, src: str) -> None:
        out["model.diffusion_model." + dst] = sd[src]

    def resnet(dst: str, src: str) -> None:
        for k in [k for k in sd if k.startswith(src + ".")]:
            part, rest = k[len(src) + 1:].split(".", 1)
            put(f"{dst}.{_RESNET[part]}.{rest}", k)

    def block(dst: str, src: str) -> None:
        for k in [k for k in sd if k.startswith(src + ".")]:
            put(dst + k[len(src):], k)

    for a, b in (("time_embedding.linear_1", "time_embed.0"), ("time_embedding.linear_2", "time_embed.2"),
                 ("add_embedding.linear_1", "label_emb.0.0"), ("add_embedding.linear_2", "label_emb.0.2"),
                 ("conv_in", "input_blocks.0.0"), ("conv_norm_out", "out.0"), ("conv_out", "out.2")):
        for p in ("weight", "bias"):
            if f"{a}.{p}" in sd:
                put(f"{b}.{p}", f"{a}.{p}")
    for i in range(len(cfg["down_block_types"])):
        for j in range(L):
            n = 1 + i * (L + 1) + j
            resnet(f"input_blocks.{n}.0", f"down_blocks.{i}.resnets.{j}")
            block(f"input_blocks.{n}.1", f"down_blocks.{i}.attentions.{j}")
        block(f"input_blocks.{1 + i * (L + 1) + L}.0.op", f"down_blocks.{i}.downsamplers.0.conv")
    resnet("middle_block.0", "mid_block.resnets.0")
    block("middle_block.1", "mid_block.attentions.0")
    resnet("middle_block.2", "mid_block.resnets.1")
    for i in range(n_up):
        has_attn = f"up_blocks.{i}.attentions.0.proj_in.weight" in sd
        for j in range(L + 1):
            n = i * (L + 1) + j
            resnet(f"output_blocks.{n}.0", f"up_blocks.{i}.resnets.{j}")
            block(f"output_blocks.{n}.1", f"up_blocks.{i}.attentions.{j}")
        block(f"output_blocks.{i * (L + 1) + L}.{2 if has_attn else 1}.conv", f"up_blocks.{i}.upsamplers.0.conv")
    assert len(out) == len(sd), sorted(set(sd) - {k.split("model.diffusion_model.")[1] for k in out})[:5]
    return out


def vae_to_ldm(sd: dict, n_blocks: int) -> dict:
    """diffusers AutoencoderKL -> ``first_stage_model.*`` (attention projections become 1x1 convs)."""
    out = {}
    attn = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for k, v in sd.items():
        nk = k
        for side in ("encoder", "decoder"):
            nk = nk.replace(f"{side}.conv_norm_out", f"{side}.norm_out")
            nk = nk.replace(f"{side}.mid_block.resnets.0", f"{side}.mid.block_1")
            nk = nk.replace(f"{side}.mid_block.resnets.1", f"{side}.mid.block_2")
            if f"{side}.mid_block.attentions.0." in nk:
                rest = nk.split(f"{side}.mid_block.attentions.0.")[1]
                for a, b in attn.items():
                    if rest.startswith(a + "."):
                        nk = f"{side}.mid.attn_1.{b}.{rest[len(a) + 1:]}"
                        if b != "norm" and v.ndim == 2:
                            v = v[:, :, None, None]
        if nk.startswith("encoder.down_blocks."):
            _, _, i, kind, rest = nk.split(".", 4)
            nk = f"encoder.down.{i}." + (f"block.{rest}" if kind == "resnets" else "downsample." + rest.split(".", 1)[1])
        if nk.startswith("decoder.up_blocks."):
            _, _, i, kind, rest = nk.split(".", 4)
            nk = f"decoder.up.{n_blocks - 1 - int(i)}." + (f"block.{rest}" if kind == "resnets" else
                                                           "upsample." + rest.split(".", 1)[1])
        nk = nk.replace("conv_shortcut", "nin_shortcut")
        out["first_stage_model." + nk] = v
    return out


def to_ldm(pipe) -> dict:  # noqa: ANN001
    sd = {}
    sd.update(unet_to_ldm(pipe.unet.state_dict(), dict(pipe.unet.config)))
    sd.update(vae_to_ldm(pipe.vae.state_dict(), len(pipe.vae.config.block_out_channels)))
    # original files name CLIP-L's weights as in transformers 4: text_model.embeddings..., text_model.encoder...
    sd.update({"cond_stage_model.transformer." + (k if k.startswith("text_model.") else "text_model." + k): v
               for k, v in pipe.text_encoder.state_dict().items()})
    return {k: v.contiguous() for k, v in sd.items()}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(reference diffusers folder, LDM single file, config folder = shipped sd15 + tiny model configs)."""
    import shutil

    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from engines.pipelines.single_file import materialize
    from tests.tiny_sd import make_tiny_sd

    root = tmp_path_factory.mktemp("single")
    tiny = StableDiffusionPipeline.from_pretrained(make_tiny_sd(root / "tiny"))
    cfg = materialize("sd15", root / "config")
    tok = CLIPTokenizer.from_pretrained(cfg / "tokenizer")
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu"))
    ref = StableDiffusionPipeline(vae=tiny.vae, text_encoder=te, tokenizer=tok, unet=tiny.unet,
                                  scheduler=tiny.scheduler, safety_checker=None, feature_extractor=None,
                                  requires_safety_checker=False)
    ref.save_pretrained(root / "ref", safe_serialization=True)
    for comp in ("unet", "vae", "text_encoder"):  # tiny architecture; model_index/scheduler/tokenizer shipped
        shutil.copy(root / "ref" / comp / "config.json", cfg / comp / "config.json")
    ckpt = root / "tiny-v1-5.safetensors"
    save_file(to_ldm(ref), str(ckpt))
    return root / "ref", ckpt, cfg


_OFFLINE_GEN = r"""
import json, socket, sys
def _no_net(*a, **k):
    raise OSError("network is unplugged in this test")
socket.socket.connect = _no_net
socket.create_connection = _no_net
sys.path.insert(0, sys.argv[1])
import torch
from pathlib import Path
from diffusers import StableDiffusionPipeline
from engines.pipelines.single_file import load_single_file
mode, src, cfg = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
if mode == "single":
    pipe = load_single_file(src, torch.float32, family="sd15", config_dir=Path(cfg) if cfg != "-" else None)
else:  # the reference folder, with the shipped scheduler so both sample identically
    from diffusers import PNDMScheduler
    pipe = StableDiffusionPipeline.from_pretrained(src, local_files_only=True)
    pipe.scheduler = PNDMScheduler.from_pretrained(Path(cfg) / "scheduler", local_files_only=True)
pipe.set_progress_bar_config(disable=True)
img = pipe("a red square", num_inference_steps=3, height=64, width=64, output_type="np",
           generator=torch.Generator().manual_seed(7)).images[0]
ids = pipe.tokenizer("a photo of a cat").input_ids
print(json.dumps({"cls": type(pipe).__name__, "sched": type(pipe.scheduler).__name__, "ids": ids,
                  "img": img.round(5).tolist()}))
"""


def _run_offline(tmp_path: Path, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home"),
           "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _OFFLINE_GEN, str(ROOT), *args], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_ldm_single_file_loads_offline_and_matches_the_folder(tiny_ckpt: tuple[Path, Path, Path],
                                                             tmp_path: Path) -> None:
    import numpy as np

    ref_dir, ckpt, cfg = tiny_ckpt
    single = _run_offline(tmp_path, "single", str(ckpt), str(cfg))
    folder = _run_offline(tmp_path, "folder", str(ref_dir), str(cfg))
    assert single["cls"] == "StableDiffusionPipeline"
    assert single["sched"] == "PNDMScheduler"  # the shipped sd15 scheduler config, not the tiny model's
    assert single["ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]  # CLIP ViT-L/14's own token ids
    a, b = np.array(single["img"]), np.array(folder["img"])
    assert a.shape == (64, 64, 3) and a.std() > 0.01
    np.testing.assert_allclose(a, b, atol=1e-4)  # same weights, scheduler, prompt and seed


def test_ldm_round_trip_keeps_every_weight(tiny_ckpt: tuple[Path, Path, Path]) -> None:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from engines.pipelines.single_file import detect_family, load_single_file

    ref_dir, ckpt, cfg = tiny_ckpt
    assert detect_family(ckpt) == "sd15"
    single = load_single_file(ckpt, torch.float32, config_dir=cfg)
    folder = StableDiffusionPipeline.from_pretrained(ref_dir, local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(single, name).state_dict(), getattr(folder, name).state_dict()
        assert set(a) == set(b), name
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{name}.{k}")
    assert type(single.scheduler) is PNDMScheduler


@pytest.mark.parametrize("family,n", [
    ("sd15", {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}),
    ("sd2", {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}),
    ("sd2-base", {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840}),
    ("sdxl", {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
              "text_encoder_2": 694_659_840}),
])
def test_shipped_configs_build_the_published_architectures(family: str, n: dict, tmp_path: Path) -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from engines.pipelines.single_file import materialize

    d = materialize(family, tmp_path / family)
    index = json.loads((d / "model_index.json").read_text())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    with init_empty_weights():
        got = {"unet": count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(d / "unet"))),
               "vae": count(AutoencoderKL.from_config(AutoencoderKL.load_config(d / "vae"))),
               "text_encoder": count(CLIPTextModel(CLIPTextConfig.from_pretrained(d / "text_encoder")))}
        if "text_encoder_2" in n:
            got["text_encoder_2"] = count(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(
                d / "text_encoder_2")))
    assert got == n
    for tok_dir in sorted(d.glob("tokenizer*")):
        tok = CLIPTokenizer.from_pretrained(tok_dir)
        assert len(tok) == 49408 and tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
        assert tok_dir.name in index
    sched = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == ("v_prediction" if family == "sd2" else "epsilon")


def test_detect_family_from_keys(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from engines.pipelines.single_file import detect_family

    z = torch.zeros(1)
    k_attn = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    cases = {
        "v1.safetensors": ({k_attn: torch.zeros(320, 768), "cond_stage_model.transformer.x": z}, "sd15"),
        "v2.safetensors": ({k_attn: torch.zeros(320, 1024), "cond_stage_model.model.x": z}, "sd2"),
        "v2-512-base.safetensors": ({k_attn: torch.zeros(320, 1024)}, "sd2-base"),
        "xl.safetensors": ({"conditioner.embedders.1.model.x": z, "conditioner.embedders.0.transformer.x": z}, "sdxl"),
    }
    for name, (sd, fam) in cases.items():
        save_file({k: v.clone() for k, v in sd.items()}, str(tmp_path / name))
        assert detect_family(tmp_path / name) == fam, name
    save_file({"foo": z}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a Stable Diffusion"):
        detect_family(tmp_path / "other.safetensors")
