"""Cheap live previews: latents → RGB without running the VAE decoder.

SD-family latents map to RGB almost linearly. Rather than hard-coding factors per model
family, a least-squares linear map is fitted once per VAE (when the model loads) from a
few decoded random latents, so any latent layout gets a preview.
"""
from __future__ import annotations

from typing import Any

def fit_factors(vae: Any, channels: int, device: str = "cpu") -> Any:
    """Fit a [C+1, 3] linear map (with bias) latent→RGB by decoding random latents once."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        z = torch.randn(4, channels, 8, 8, generator=g).to(device, dtype=vae.dtype)  # [4, C, 8, 8]
        img = vae.decode(z / vae.config.scaling_factor).sample.float().cpu()  # [4, 3, 8f, 8f]
        small = F.adaptive_avg_pool2d(img, (8, 8))  # [4, 3, 8, 8]
    x = z.float().cpu().permute(0, 2, 3, 1).reshape(-1, channels)  # [256, C]
    x = torch.cat([x, torch.ones(len(x), 1)], 1)  # [256, C+1]
    y = small.permute(0, 2, 3, 1).reshape(-1, 3)  # [256, 3]
    return torch.linalg.lstsq(x, y).solution  # [C+1, 3]


def latents_to_image(latents: Any, factors: Any):  # noqa: ANN201
    """latents: [C, h, w] (scaled, as the pipeline holds them) → PIL preview, upscaled ×4."""
    import torch
    from PIL import Image

    z = latents.float().cpu().permute(1, 2, 0)  # [h, w, C]
    z = torch.cat([z, torch.ones(*z.shape[:2], 1)], -1)  # [h, w, C+1]
    rgb = z @ factors  # [h, w, 3] in about [-1, 1]
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).byte().numpy()
    im = Image.fromarray(arr)
    return im.resize((im.width * 4, im.height * 4), Image.NEAREST)


def load_taesd(pipe: Any, device: str) -> Any:
    """TAESD (a tiny VAE decoder) when it is in the local Hugging Face cache; None otherwise.
    Never downloads."""
    if pipe.vae.config.latent_channels != 4:
        return None
    repo = "madebyollin/taesdxl" if type(pipe).__name__.startswith("StableDiffusionXL") else "madebyollin/taesd"
    try:
        from diffusers import AutoencoderTiny

        return AutoencoderTiny.from_pretrained(repo, local_files_only=True).to(device, pipe.vae.dtype).eval()
    except Exception:  # not cached (the usual case offline)
        return None


def taesd_image(taesd: Any, latents: Any, scaling_factor: float):  # noqa: ANN201
    """latents: [C, h, w] (pipeline-scaled) → PIL image decoded by TAESD."""
    import torch
    from PIL import Image

    with torch.no_grad():
        img = taesd.decode(latents[None].to(taesd.dtype) / scaling_factor * taesd.config.scaling_factor).sample[0]
    arr = ((img.float().clamp(-1, 1) + 1) * 127.5).permute(1, 2, 0).byte().cpu().numpy()
    return Image.fromarray(arr)
