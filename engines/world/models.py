"""Model builders for the embedded world (sized for a 2-core CPU).

The text-to-image stack uses the exact diffusers/transformers classes of Stable Diffusion so
the Studio's SD code paths serve it unchanged; only the sizes are tiny. Builders return fresh
modules: nothing is held in module globals.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from engines.world import generator as g

LATENT_CHANNELS = 8  # 4× downsample, 8 channels: 16×16×8 latents (the notes' advice)
TEXT_DIM = 128


def build_vae():  # noqa: ANN201
    """AutoencoderKL with 3 levels (64 -> 16 px, 4×) and no mid attention, so it is purely
    convolutional and can be trained on crops. Channels (16, 32, 64): flat-colour scenes need
    little width, and the full-resolution level dominates the cost."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64), layers_per_block=1, latent_channels=LATENT_CHANNELS,
        norm_num_groups=8, sample_size=g.SIZE, mid_block_add_attention=False,
    )


def build_text_encoder(vocab_size: int, bos: int, eos: int, pad: int, max_len: int):  # noqa: ANN201
    """A 3-layer CLIP text transformer. ``eos_token_id`` must be the tokenizer's EOS so the
    pooled output is read at the right position (transformers' legacy path assumes id 2)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=TEXT_DIM, intermediate_size=256, projection_dim=TEXT_DIM,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=max_len,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, hidden_act="quick_gelu",
    )
    return CLIPTextModel(cfg)


def build_unet(sample_size: int = 16):  # noqa: ANN201
    """Channels (32, 64, 128) at 16/8/4 px (latent), one resnet per level; cross-attention
    only at 8×8, 4×4 and the mid block (attention at 16×16 costs most and adds little for a
    3×3 layout)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128), layers_per_block=1, cross_attention_dim=TEXT_DIM,
        attention_head_dim=4, norm_num_groups=8,
        # Pooled text (attention pooling over the CLIP states) added to the time embedding:
        # a global path for colour/shape/background/style into every resnet, cheap and fast to
        # learn; cross-attention is left to do the layout. Uses only encoder_hidden_states, so
        # StableDiffusionPipeline calls it unchanged.
        addition_embed_type="text", addition_embed_type_num_heads=4,
    )


def scheduler_configs() -> tuple[dict, dict]:
    """(training DDPM config, shipped DPM++ config). v-prediction makes the network output
    image content at high noise, where layout and colour are decided (SD2 uses it too)."""
    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  prediction_type="v_prediction", steps_offset=1)
    dpm = dict(common, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="leading")
    return common, dpm


class Judge(nn.Module):
    """WorldEval's reader: a small CNN with one head per attribute of the primary object.

    Keeps an 8×8 spatial map before the classifier (no global pooling) so position is read
    directly. Input (B, 3, 64, 64) in [0, 1]; output dict attr -> logits (B, n_classes).
    """

    HEADS = ("shape", "color", "position", "background", "style", "size")

    def __init__(self) -> None:
        super().__init__()

        def block(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                                 nn.Conv2d(o, o, 3, stride=2, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

        self.features = nn.Sequential(block(3, 16), block(16, 32), block(32, 64))  # (B, 64, 8, 8)
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * 64, 256), nn.ReLU(inplace=True))
        self.heads = nn.ModuleDict({h: nn.Linear(256, len(g.ATTRIBUTES[h])) for h in self.HEADS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.fc(self.features(x * 2 - 1))
        return {h: m(f) for h, m in self.heads.items()}


def load_judge(judge_dir: Path, device: str = "cpu") -> Judge:
    from safetensors.torch import load_file

    j = Judge()
    j.load_state_dict(load_file(str(Path(judge_dir) / "judge.safetensors")))
    return j.to(device).eval()


@torch.no_grad()
@torch.no_grad()
def judge_probs(judge: Judge, images: torch.Tensor, head: str, batch: int = 256) -> torch.Tensor:
    """images (N, 3, 64, 64) in [0, 1] -> (N, K) probabilities over ``g.ATTRIBUTES[head]``."""
    return torch.cat([judge(images[i:i + batch])[head].softmax(1) for i in range(0, len(images), batch)])


def judge_predict(judge: Judge, images: torch.Tensor, batch: int = 256) -> dict[str, list[str]]:
    """images (N, 3, 64, 64) float in [0, 1] -> attr -> predicted label names."""
    out: dict[str, list[str]] = {h: [] for h in Judge.HEADS}
    for i in range(0, len(images), batch):
        logits = judge(images[i:i + batch])
        for h in Judge.HEADS:
            out[h] += [g.ATTRIBUTES[h][k] for k in logits[h].argmax(1).tolist()]
    return out
