"""The dry-run memory estimate of a LoRA stage (`tagtune.train.memory` calls it).

A LoRA stage holds every weight of the real SDXL 1.0 (frozen, in the weight dtype), plus the
LoRA parameters, their gradients and their optimizer state, plus the activations of a full
forward and backward pass: the gradients must flow back through the frozen U-Net (and each
trained text encoder) to reach the adapters, so a LoRA step keeps what a full step keeps
(`tagtune.train.memory`'s activation figures; the adapters' own rank-wide intermediates are
under 1% of them and not counted).

LoRA parameter counts are exact, from `LAYERS`: the layers `tagtune.train.lora.target_paths`
targets in the real SDXL modules (built on the meta device by the test that checks this
table): rank x (in + out) per linear or 1x1 layer, conv_rank x (in x 3 x 3 + out) per 3x3
convolution. Adafactor's state is exact too: one fp32 value per row and per column of each
factored LoRA matrix.
"""

from __future__ import annotations

from tagtune.recipe.lora import LoraConfig

ADAM_BYTES = {"adamw": 8.0, "adamw8bit": 2.034}  # as tagtune.train.memory.OPTIMIZER_BYTES

LAYERS: dict[tuple[str, str], tuple[int, int, int, int, int]] = {
    ("unet", "attention"): (582, 1_495_040, 0, 0, 2048),
    ("unet", "feed_forward"): (140, 1_164_800, 0, 0, 10240),
    ("unet", "convs"): (28, 58_560, 38, 355_840, 23040),
    ("text_encoder", "attention"): (48, 73_728, 0, 0, 768),
    ("text_encoder", "feed_forward"): (24, 92_160, 0, 0, 3072),
    ("text_encoder_2", "attention"): (128, 327_680, 0, 0, 1280),
    ("text_encoder_2", "feed_forward"): (64, 409_600, 0, 0, 5120),
}
"""(module, target) -> (linear and 1x1 layers, their sum of in + out, 3x3 convolutions,
their sum of in x 9 + out, the largest in or out of one layer) in SDXL 1.0."""


def _rows(lora: LoraConfig, modules: list[str]) -> list[tuple[int, int, int, int, int]]:
    return [LAYERS[(m, t)] for m in modules for t in lora.targets if (m, t) in LAYERS]


def lora_params(lora: LoraConfig, modules: list[str]) -> int:
    """LoRA parameters (elements) the stage trains in `modules`."""
    conv_rank = lora.conv_dims[0]
    return sum(
        lora.rank * io + conv_rank * conv_io for _, io, _, conv_io, _ in _rows(lora, modules)
    )


def lora_optimizer_bytes(lora: LoraConfig, modules: list[str], optimizer: str) -> float:
    """Optimizer state bytes of the LoRA parameters."""
    if optimizer != "adafactor":
        return lora_params(lora, modules) * ADAM_BYTES[optimizer]
    conv_rank = lora.conv_dims[0]
    state = sum(
        io + 2 * lora.rank * n + conv_io + 2 * conv_rank * n_conv
        for n, io, n_conv, conv_io, _ in _rows(lora, modules)
    )
    return state * 4.0


def largest_lora_tensor(lora: LoraConfig, modules: list[str]) -> int:
    """Elements of the largest LoRA tensor in `modules` (bounds the step buffers)."""
    rank = max(lora.rank, lora.conv_dims[0])
    return max((rank * widest for *_, widest in _rows(lora, modules)), default=0)
