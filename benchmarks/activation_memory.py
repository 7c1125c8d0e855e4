"""Activation memory of one SDXL training step at 1024x1024, measured without a GPU.

The real-size U-Net and text encoders (configs in src/tagtune/configs/sdxl-base) run one
forward and backward pass in bf16 under torch's FakeTensorMode: tensors have shapes and
dtypes but no storage, and torch's MemTracker records what would be allocated. It prints,
per case, the peak and the part of it beyond the weights and their gradients: the
activations (and temporaries) that `tagtune.train.memory` counts per image. The peak falls
near the end of the backward pass, when nearly every gradient is held.

    PYTHONPATH=src python benchmarks/activation_memory.py              # every case (slow)
    PYTHONPATH=src python benchmarks/activation_memory.py --only te    # text encoders only
    PYTHONPATH=src python benchmarks/activation_memory.py --only step  # stage main, batch 4
    PYTHONPATH=src python benchmarks/activation_memory.py --case step --batch 1 --no-checkpointing

The U-Net cases take several minutes each on 2 CPU cores (nothing is computed, but every
op is dispatched in Python).
"""

from __future__ import annotations

import argparse
import time

import torch

GIB = 1024**3
LATENT = 128  # 1024 px / 8
TOKENS = 77


def _build(name: str):
    from tagtune.models.configs import sdxl_base_configs

    config = sdxl_base_configs()[name]
    if name == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_config(config)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModel if name == "text_encoder" else CLIPTextModelWithProjection
    return cls(CLIPTextConfig.from_dict(config))


def _checkpoint(module) -> None:
    if hasattr(module, "enable_gradient_checkpointing"):
        module.enable_gradient_checkpointing()
    else:
        module.gradient_checkpointing_enable()


def _unet_loss(unet, batch: int, context: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    out = unet(
        torch.randn(batch, 4, LATENT, LATENT, dtype=torch.bfloat16),
        torch.randint(0, 1000, (batch,)),
        encoder_hidden_states=context,
        added_cond_kwargs={
            "text_embeds": pooled,
            "time_ids": torch.randn(batch, 6, dtype=torch.bfloat16),
        },
    ).sample
    return out.float().pow(2).mean()


def _text(module, batch: int, chunks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Penultimate hidden states [batch, 77 x chunks, width] and the first chunk's pooled."""
    ids = torch.randint(0, 49407, (batch * chunks, TOKENS))
    out = module(ids, output_hidden_states=True)
    hidden = out.hidden_states[-2].reshape(batch, chunks * TOKENS, -1)
    pooled = out[0][:, 0] if out[0].ndim == 3 else out[0]
    pooled = pooled.reshape(batch, chunks, -1)[:, 0]
    return hidden.to(torch.bfloat16), pooled.to(torch.bfloat16)


def measure(case: str, batch: int, checkpointing: bool, chunks: int = 3) -> dict[str, float]:
    """Peak GiB of one bf16 forward + backward, and the share beyond weights and gradients.

    `case` is one module ("unet", "text_encoder", "text_encoder_2": encoders see batch x
    chunks sequences of 77 tokens, a 225-token caption being 3 chunks) or "step": both
    encoders and the U-Net trained together, conditioning as SDXL does (stage main).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    names = ("text_encoder", "text_encoder_2", "unet") if case == "step" else (case,)
    with FakeTensorMode():
        torch.set_default_dtype(torch.bfloat16)
        try:
            modules = {n: _build(n) for n in names}
        finally:
            torch.set_default_dtype(torch.float32)
        tracker = MemTracker()
        for module in modules.values():
            if checkpointing:
                _checkpoint(module)
            module.train()
            tracker.track_external(module)
        with tracker:
            if case == "step":
                h1, _ = _text(modules["text_encoder"], batch, chunks)
                h2, pooled = _text(modules["text_encoder_2"], batch, chunks)
                loss = _unet_loss(modules["unet"], batch, torch.cat([h1, h2], -1), pooled)
            elif case == "unet":
                context = torch.randn(batch, TOKENS * chunks, 2048, dtype=torch.bfloat16)
                pooled = torch.randn(batch, 1280, dtype=torch.bfloat16)
                loss = _unet_loss(modules["unet"], batch, context, pooled)
            else:
                loss = _text(modules[case], batch, chunks)[0].float().pow(2).mean()
            loss.backward()
        peak = tracker.get_tracker_snapshot("peak")
    parts = next(iter(peak.values()))
    total = sum(v for k, v in parts.items() if str(k) != "Total") / GIB
    weights = sum(v for k, v in parts.items() if "PARAM" in str(k).upper()) / GIB
    grads = sum(v for k, v in parts.items() if "GRAD" in str(k).upper()) / GIB
    return {
        "peak": total,
        "weights": weights,
        "gradients": grads,
        "beyond": total - weights - grads,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("unet", "te", "step"), default=None)
    parser.add_argument("--case", choices=("unet", "text_encoder", "text_encoder_2", "step"),
                        help="measure this one case (with --batch, --no-checkpointing)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-checkpointing", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = []
    if args.case:
        cases = [(args.case, args.batch, not args.no_checkpointing)]
    elif args.only in (None, "te"):
        cases += [(n, 4, c) for n in ("text_encoder", "text_encoder_2") for c in (True, False)]
    if not args.case and args.only in (None, "unet"):
        cases += [("unet", 1, True), ("unet", 4, True), ("unet", 1, False)]
    if not args.case and args.only in (None, "step"):
        cases += [("step", 4, True)]
    for name, batch, ckpt in cases:
        t0 = time.perf_counter()
        r = measure(name, batch, ckpt)
        print(
            f"{name:15s} batch {batch} checkpointing {'on ' if ckpt else 'off'}: "
            f"peak {r['peak']:.2f} GiB = weights {r['weights']:.2f} + gradients "
            f"{r['gradients']:.2f} + activations/temporaries {r['beyond']:.2f} "
            f"({r['beyond'] / batch:.3f} per image; {time.perf_counter() - t0:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
