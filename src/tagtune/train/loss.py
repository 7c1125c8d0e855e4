"""The SDXL training forward pass and its loss: noising, min-SNR weighting, conditioning.

Noise and timesteps are drawn by the caller (see `data.sample_draws`), so this is a pure
function of its inputs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    a = alphas_cumprod.to(timesteps.device)[timesteps].float()
    return a / (1.0 - a)


def min_snr_weights(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023): min(SNR, gamma) / SNR (/ (SNR + 1) for v)."""
    s = snr(alphas_cumprod, timesteps)
    clipped = torch.clamp(s, max=gamma)
    return clipped / (s + 1.0) if prediction_type == "v_prediction" else clipped / s


def encode_captions(
    components: Any,
    captions: Sequence[str],
    max_token_length: int,
    train_encoders: bool,
    encode_fn: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL prompt embeddings and pooled embeddings; no graph when both encoders are frozen."""
    if encode_fn is None:
        from tagtune.models.conditioning import encode_prompts as encode_fn
    ctx = contextlib.nullcontext() if train_encoders else torch.no_grad()
    with ctx:
        return encode_fn(components, list(captions), max_token_length=max_token_length)


def diffusion_loss(
    unet: torch.nn.Module,
    noise_scheduler: Any,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    pooled: torch.Tensor,
    time_ids: torch.Tensor,
    min_snr_gamma: float = 0.0,
) -> torch.Tensor:
    """Per-sample loss [B]: MSE between the U-Net's prediction and its target, min-SNR weighted."""
    prediction_type = noise_scheduler.config.prediction_type
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    target = (
        noise_scheduler.get_velocity(latents, noise, timesteps)
        if prediction_type == "v_prediction"
        else noise
    )
    pred = unet(
        noisy,
        timesteps,
        encoder_hidden_states=prompt_embeds,
        added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids},
    ).sample
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        loss = loss * min_snr_weights(
            noise_scheduler.alphas_cumprod, timesteps, min_snr_gamma, prediction_type
        ).to(loss.device)
    return loss


def training_scheduler(scheduler_config: dict[str, Any], prediction_type: str = "epsilon"):
    """The DDPM noise schedule for training, from the model's scheduler config."""
    from diffusers import DDPMScheduler

    config = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    config["prediction_type"] = prediction_type
    return DDPMScheduler.from_config(config)
