"""Tiny, randomly initialised SDXL models for tests, the demo and benchmarks.

Same architecture and key layout as SDXL 1.0 base (3 U-Net levels with 1/2/10 transformer
layers, CLIP ViT-L-shaped encoder with 12 layers, OpenCLIP bigG-shaped encoder with 32
layers, 4-level VAE), small widths. The two encoders keep the real vocabulary (49,408) and
77 positions, differ in width (diffusers tells them apart by width), and encoder 2 has a
projection_dim different from its hidden size, so key-sniffing tools still see SDXL.

A randomly initialised VAE encodes images to latents of std ~0.3, which the SDXL scaling
factor (kept: 0.13025) brings to ~0.04, far below the unit noise a diffusion model learns
to remove. `build_tiny_sdxl` therefore scales the encoder's output (the mean and log-variance
of the moments convolution) by a power of two and the decoder's input convolution by its
inverse, so scaled latents of ordinary images have about unit std like a real SDXL VAE's, and
decode(encode(x)) is what it was (a power of two keeps both exact).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from tagtune.models.clip_vocab import sdxl_tokenizers
from tagtune.models.components import VAE_SCALING_FACTOR, SDXLComponents
from tagtune.models.shapes import shape_image

TE1_WIDTH = 32
TE2_WIDTH = 48
TE2_PROJECTION = 40
TIME_EMBED_DIM = 8

SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [16, 32, 48],
    "layers_per_block": 2,
    "transformer_layers_per_block": [1, 2, 10],
    "attention_head_dim": [1, 2, 3],
    "cross_attention_dim": TE1_WIDTH + TE2_WIDTH,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_EMBED_DIM,
    "projection_class_embeddings_input_dim": 6 * TIME_EMBED_DIM + TE2_PROJECTION,
    "use_linear_projection": True,
    "norm_num_groups": 16,
}

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 16, 32, 32],  # widths change where SDXL's do: same nin_shortcut keys
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": VAE_SCALING_FACTOR,
    "force_upcast": True,
}

TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "vocab_size": 49408,
    "max_position_embeddings": 77,
    "hidden_size": TE1_WIDTH,
    "intermediate_size": 4 * TE1_WIDTH,
    "num_hidden_layers": 12,
    "num_attention_heads": 4,
    "hidden_act": "quick_gelu",
    "projection_dim": TE1_WIDTH,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
}

TEXT_ENCODER_2_CONFIG: dict[str, Any] = {
    **TEXT_ENCODER_CONFIG,
    "hidden_size": TE2_WIDTH,
    "intermediate_size": 4 * TE2_WIDTH,
    "num_hidden_layers": 32,
    "num_attention_heads": 4,
    "hidden_act": "gelu",
    "projection_dim": TE2_PROJECTION,
}


def build_tiny_sdxl(seed: int = 0, tokenizers: tuple[Any, Any] | None = None) -> SDXLComponents:
    """A tiny SDXL model with weights drawn from `seed` (same seed, same bytes).

    Tokenizers default to the real CLIP vocabulary (see `tagtune.models.clip_vocab`).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    devnull = torch.random.fork_rng(devices=[])
    with devnull:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**VAE_CONFIG)
        torch.manual_seed(seed + 2)
        te1 = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG))
        torch.manual_seed(seed + 3)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_ENCODER_2_CONFIG))
    for m in (unet, vae, te1, te2):
        m.eval()
    scale_vae_latents(vae, unit_std_factor(vae))
    tok1, tok2 = tokenizers if tokenizers is not None else sdxl_tokenizers()
    return SDXLComponents(
        unet=unet,
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tok1,
        tokenizer_2=tok2,
        scheduler_config=dict(SCHEDULER_CONFIG),
        source=f"tiny-sdxl(seed={seed})",
    )


def calibration_images(n: int = 8, size: int = 64) -> torch.Tensor:
    """Ordinary-looking pixels [n, 3, size, size] in [-1, 1]: the synthetic coloured shapes."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = [np.asarray(shape_image(rng, (size, size))[0]) for _ in range(n)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def scaled_latent_std(vae: Any, pixels: torch.Tensor) -> float:
    """Std of the SCALED latents (latent mean x scaling factor) the VAE gives for `pixels`."""
    return float((vae.encode(pixels).latent_dist.mean * VAE_SCALING_FACTOR).std())


def unit_std_factor(vae: Any) -> float:
    """The power of two that brings the VAE's scaled latents of ordinary images nearest unit std."""
    return 2.0 ** round(-math.log2(scaled_latent_std(vae, calibration_images())))


@torch.no_grad()
def scale_vae_latents(vae: Any, factor: float) -> None:
    """Multiply what the encoder outputs by `factor` and divide what the decoder reads by it.

    The encoder's moments convolution (quant_conv) gives mean and log-variance: the mean rows
    are scaled, log(factor^2) is added to the log-variance bias, so the whole latent
    distribution scales. The decoder's post_quant_conv weights are divided by `factor`, so
    decode(encode(x)) is unchanged.
    """
    latent = vae.config.latent_channels
    quant, post = vae.quant_conv, vae.post_quant_conv
    quant.weight[:latent] *= factor
    quant.bias[:latent] *= factor
    quant.bias[latent:] += 2.0 * math.log(factor)
    post.weight /= factor
