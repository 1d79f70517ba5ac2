"""The embedded text → 360° HDR panorama model (engines.relight.hdri_model), with the shipped
weights in engines/relight/weights/hdri (asserted present, never skipped)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engines.relight import envworld, metrics, pq
from engines.relight import hdri_model as M


@pytest.fixture(scope="module")
def model() -> M.HDRIModel:
    for f in M.FILES + ("prior.safetensors",):
        assert (M.DEFAULT_DIR / f).is_file(), f"shipped HDRI weights missing: {M.DEFAULT_DIR / f}"
    size = sum(f.stat().st_size for f in M.DEFAULT_DIR.iterdir())
    assert size <= 12e6, size
    torch.set_num_threads(1)
    return M.load(M.DEFAULT_DIR)


def test_pq_autoencoder_round_trip_keeps_the_sun(model: M.HDRIModel) -> None:
    img, meta, _ = envworld.sample(900_123_457, "sun", M.NATIVE_W)
    code = torch.from_numpy(pq.encode(img.astype(np.float64)).transpose(2, 0, 1)[None]).float()
    back = model.decode_latents(model.encode_pq(code))
    assert back.shape == code.shape
    assert float((back - code).abs().mean()) < 0.03  # PQ-domain error
    env = pq.decode(back.double())[0].permute(1, 2, 0).numpy()
    true = np.array(meta["lights"][meta["dominant"]]["direction"])
    assert metrics.angle_deg(metrics.dominant_direction(env), true) < 8
    assert metrics.dynamic_range(env) > 100  # the sun stays far brighter than the sky


def test_generate_is_seeded_shaped_and_seamless(model: M.HDRIModel) -> None:
    calls: list[tuple[int, int]] = []
    a = model.generate("sunset behind me on the left", seed=3, steps=4, width=128,
                       progress=lambda i, n: calls.append((i, n)))
    b = model.generate("sunset behind me on the left", seed=3, steps=4, width=128)
    c = model.generate("sunset behind me on the left", seed=4, steps=4, width=128)
    assert a.shape == (64, 128, 3) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert calls == [(i, 4) for i in range(1, 5)]
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 10000
    big = model.generate("a red studio light to my right", seed=1, steps=4, width=256, exposure=0.5)
    assert big.shape == (128, 256, 3)
    for env in (a, big):
        assert metrics.seam_error(env) < 0.02  # wraps: the seam is no edge


def test_every_conv_wraps_in_azimuth(model: M.HDRIModel) -> None:
    """Circular padding makes the networks equivariant to azimuth turns: rolling the latents by
    whole columns rolls the decoded map by exactly as much, and the U-Net's output too when its
    coordinate channels (and the light's spot) turn along (they are what tells it where "left" is)."""
    z = torch.randn(1, model.cfg["latent_channels"], model.cfg["latent_h"], model.cfg["latent_w"],
                    generator=torch.Generator().manual_seed(0))
    k = 5
    a = model.decode_latents(torch.roll(z, k, dims=3))
    b = torch.roll(model.decode_latents(z), k * M.NATIVE_W // model.cfg["latent_w"], dims=3)
    assert torch.allclose(a, b, atol=1e-4)
    emb = model.encode_text(["sun on my left"])
    from engines.relight import light_prior as LP
    from engines.relight.sphere import from_angles

    spot = LP.layout_map([from_angles(0.3, 1.0)], model.cfg["latent_h"], model.cfg["latent_w"]) \
        if model.cfg.get("layout_channels") else None
    x = M.with_coords(z, spot)
    k = 4  # the U-Net downsamples twice: exact for multiples of 4 latent columns
    with torch.no_grad():
        u1 = model.unet(torch.roll(x, k, dims=3), 500, encoder_hidden_states=emb).sample
        u2 = torch.roll(model.unet(x, 500, encoder_hidden_states=emb).sample, k, dims=3)
    assert torch.allclose(u1, u2, atol=1e-4)
    c = M.coord_map(8, 16)
    assert torch.allclose(c[..., 0], c[..., -1] * torch.tensor([-1.0, 1.0, 1.0])[:, None], atol=1e-6)  # wraps


def test_cancel_within_one_step(model: M.HDRIModel) -> None:
    n = {"k": 0}

    def cancelled() -> bool:
        n["k"] += 1
        return n["k"] > 2

    with pytest.raises(M.GenerationCancelled):
        model.generate("noon sun overhead", steps=10, width=64, is_cancelled=cancelled)
    assert n["k"] == 3


def test_unknown_words_are_reported_and_ignored(model: M.HDRIModel) -> None:
    assert model.unknown_words("sunset behind me on the left, xyzzy flibber") == ["xyzzy", "flibber"]
    assert model.unknown_words("a warm light overhead at dusk, moonlit, golden hour, to my right") == []
    a = model.generate("sunset behind me", seed=2, steps=2, width=64)
    b = model.generate("sunset xyzzy behind me", seed=2, steps=2, width=64)
    assert np.array_equal(a, b)


def test_missing_weights_give_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        M.load(tmp_path / "nope")


def test_paraphrases_and_rotations_keep_the_light_where_the_caption_says() -> None:
    img, meta, _ = envworld.sample(7, "sun", 128)
    rolled = np.roll(img, 24, axis=1)
    m2 = M.transform_meta(meta, 2 * np.pi * 24 / 128, False)
    assert metrics.angle_deg(metrics.dominant_direction(rolled), np.array(m2["lights"][0]["direction"])) < 2
    rng = np.random.default_rng(0)
    vocab = set(M.build_vocab(200))
    for s in range(30):
        scene = envworld.sample_scene(np.random.default_rng(s))
        text = M.paraphrase(scene.meta(), rng)
        assert set(M.words(text)) <= vocab, text
