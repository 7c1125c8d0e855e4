"""Sample images during training: seeded, PNG with A1111 infotext, and a grid per epoch.

Built from the in-memory components (no copy of the weights) by `tagtune.generate.pipeline` (Euler
scheduler), so samples condition prompts exactly as `tagtune generate` does.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from tagtune.core.atomic import atomic_path
from tagtune.core.workspace import Workspace
from tagtune.generate.infotext import Infotext, write_png
from tagtune.generate.pipeline import build_pipeline, prompt_embeddings, render
from tagtune.recipe.model import Recipe, StageConfig, TrainConfig
from tagtune.train.export_file import export_components
from tagtune.train.lora_export import export_epoch_lora

CFG_SCALE = 7.0
SAMPLER = "euler"


@torch.no_grad()
def sample_images(
    components: Any, cfg: TrainConfig, out_dir: Path, label: str, seed: int | None = None
) -> list[Path]:
    """One PNG per `cfg.sample_prompts` (seed = train seed + prompt index) and `grid.png`.

    The pipeline and the prompt embeddings come from `tagtune.generate.pipeline` (sampler "euler", on
    the device the U-Net is on), so a sample and `tagtune generate` with the same prompt,
    seed and settings condition the prompt identically (emphasis, long prompts).
    """

    base_seed = cfg.seed if seed is None else seed
    paths, images = [], []
    with vae_beside_unet(components):
        pipe = build_pipeline(components, SAMPLER, device=str(components.unet.device))
        for i, prompt in enumerate(cfg.sample_prompts):
            info, image = _sample_one(components, cfg, pipe, prompt, base_seed + i, label)
            paths.append(write_png(image, out_dir / f"{i:02d}.png", info))
            images.append(image)
    if images:
        paths.append(save_grid(images, out_dir / "grid.png"))
    return paths


def _sample_one(
    components: Any, cfg: TrainConfig, pipe: Any, prompt: str, seed: int, label: str
) -> tuple[Any, Any]:
    """(infotext, image) of one sample."""

    width, height = cfg.sample_size
    with mixed_dtype_autocast(components):
        embeddings = prompt_embeddings(components, prompt, cfg.sample_negative)
        image = render(pipe, embeddings, seed, cfg.sample_steps, CFG_SCALE, width, height)
    info = Infotext(
        prompt=prompt,
        negative=cfg.sample_negative,
        steps=cfg.sample_steps,
        sampler=SAMPLER,
        cfg=CFG_SCALE,
        seed=seed,
        width=width,
        height=height,
        model=label,
    )
    return info, image


@contextlib.contextmanager
def vae_beside_unet(components: Any) -> Iterator[None]:
    """Lend the VAE to the U-Net's device while sampling, then put it back where it was.

    Training keeps the VAE on the CPU (latents are cached), so it takes GPU memory only
    while samples are decoded.
    """
    vae = components.vae
    home = next(vae.parameters()).device
    vae.to(components.unet.device)
    try:
        yield
    finally:
        vae.to(home)


def mixed_dtype_autocast(components: Any) -> contextlib.AbstractContextManager:
    """Autocast to the half dtype when the modules' dtypes differ, else nothing.

    Under DeepSpeed with bf16 the trained modules are bf16 while frozen ones and the VAE
    stay fp32; the pipeline would hand bf16 latents to an fp32 VAE.
    """
    modules = [components.unet, components.vae, components.text_encoder, components.text_encoder_2]
    dtypes = {next(m.parameters()).dtype for m in modules}
    half = [d for d in (torch.bfloat16, torch.float16) if d in dtypes]
    if len(dtypes) == 1 or not half:
        return contextlib.nullcontext()
    return torch.autocast(components.unet.device.type, dtype=half[0])


def save_grid(images: list[Any], path: Path) -> Path:
    """Paste images into a near-square grid PNG (atomically)."""
    from PIL import Image

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h))
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


def epoch_hook(
    ws: Workspace, recipe: Recipe, components: Any, stage: StageConfig, stage_dir: Path
) -> Callable[[int, int], None]:
    """What runs after each epoch on the main process: samples every N epochs, optional export."""
    cfg = recipe.train

    def hook(epoch: int, step: int) -> None:
        if (
            cfg.sample_every_n_epochs
            and cfg.sample_prompts
            and epoch % cfg.sample_every_n_epochs == 0
        ):
            label = f"{recipe.project.name}-{stage.name}-e{epoch}"
            sample_images(components, cfg, stage_dir / "samples" / f"epoch-{epoch:03d}", label)
        if cfg.export_every_epoch:
            out = (
                stage_dir
                / "exports"
                / f"{recipe.project.name}-{stage.name}-e{epoch:03d}.safetensors"
            )
            if stage.method == "lora":  # its LoRA as a kohya file (none for DoRA)
                export_epoch_lora(components, stage, recipe, out, epoch, step)
            else:
                export_components(components, out, recipe, dtype=recipe.export.dtype)

    return hook
