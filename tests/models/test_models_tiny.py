"""The tiny SDXL model: a VAE whose scaled latents carry real signal, built deterministically."""

from __future__ import annotations

import copy

import numpy as np
import torch

from tagtune.models.components import VAE_SCALING_FACTOR
from tagtune.models.tiny import build_tiny_sdxl, scale_vae_latents
from tagtune.synthetic.collection import shape_image


def _pixels(seed: int, size: tuple[int, int], n: int = 6) -> torch.Tensor:
    """Coloured-shape images other than the ones the tiny VAE is calibrated on."""
    rng = np.random.default_rng(seed)
    arrays = [np.asarray(shape_image(rng, size)[0]) for _ in range(n)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def test_scaled_latents_of_ordinary_images_have_about_unit_std(tiny_sdxl):
    vae = tiny_sdxl.vae
    assert vae.config.scaling_factor == VAE_SCALING_FACTOR == 0.13025  # the real SDXL factor
    for size in ((64, 64), (128, 96)):
        x = _pixels(7, size)
        latents = vae.encode(x).latent_dist.mean * VAE_SCALING_FACTOR
        assert 0.5 <= float(latents.std()) <= 2.0, float(latents.std())
        assert latents.shape == (6, 4, size[1] // 8, size[0] // 8)
        decoded = vae.decode(latents / VAE_SCALING_FACTOR).sample
        assert decoded.shape == x.shape


@torch.no_grad()
def test_scaling_the_latents_leaves_decode_of_encode_unchanged(tiny_sdxl):
    vae = copy.deepcopy(tiny_sdxl.vae)
    x = _pixels(3, (64, 64), n=2)
    before_latents = vae.encode(x).latent_dist.mean
    before = vae.decode(before_latents).sample
    scale_vae_latents(vae, 8.0)
    after_latents = vae.encode(x).latent_dist.mean
    assert torch.allclose(after_latents, 8.0 * before_latents, rtol=1e-5, atol=1e-6)
    assert torch.allclose(vae.decode(after_latents).sample, before, rtol=1e-4, atol=1e-5)


def test_same_seed_same_bytes(tiny_sdxl):
    again = build_tiny_sdxl(0, tokenizers=(tiny_sdxl.tokenizer, tiny_sdxl.tokenizer_2))
    for name, module in tiny_sdxl.modules().items():
        a, b = module.state_dict(), again.modules()[name].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
