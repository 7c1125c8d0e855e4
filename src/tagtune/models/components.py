"""The parts of an SDXL model, held together, whatever file they came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VAE_SCALING_FACTOR = 0.13025


@dataclass
class SDXLComponents:
    """U-Net, VAE, both text encoders, their tokenizers and the noise scheduler config.

    `source` names where the weights came from (file or folder), for records and errors;
    `vae_source` (a `tagtune.models.recipe_model.VaeSource`, set by `load_recipe_model`)
    names the VAE baked in and the fingerprint that keys its latent cache. `claim` (a
    `tagtune.models.prediction.Claim`, set by `load_model`) is what the source states about
    its prediction type and zero terminal SNR; the scheduler config holds the answer.
    """

    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    vae_source: Any = None
    claim: Any = None

    def modules(self) -> dict[str, Any]:
        """The four weight-carrying modules by their diffusers folder name."""
        return {
            "unet": self.unet,
            "vae": self.vae,
            "text_encoder": self.text_encoder,
            "text_encoder_2": self.text_encoder_2,
        }
