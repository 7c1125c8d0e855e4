"""Sample images during training: seeded PNGs with A1111 infotext, and a labelled grid.

Built from the in-memory components (no copy of the weights) by `tagtune.generate.pipeline`,
so samples condition prompts exactly as `tagtune generate` does, and sample as the model
predicts (the components' scheduler config: v-prediction, zero terminal SNR). Prompts and their
settings come from `tagtune.train.sample_prompts` (the recipe's list and an sd-scripts prompt
file). `TrainingSamples` says when: at a stage's start (`sample_at_start`), every N steps and
every N epochs; with EMA on, samples show the averaged weights. Sampling draws only from its
own seeded generators and puts every global RNG back as it was, so a run with samples trains
exactly as one without.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tagtune.core.atomic import atomic_path
from tagtune.core.workspace import Workspace
from tagtune.generate.infotext import Infotext, write_png
from tagtune.generate.pipeline import (
    build_pipeline,
    prediction_fields,
    prompt_embeddings,
    render,
)
from tagtune.generate.samplers import make_scheduler
from tagtune.recipe.model import Recipe, StageConfig, TrainConfig
from tagtune.train.ema import WeightEMA, ema_applied
from tagtune.train.export_file import export_components
from tagtune.train.lora_export import export_epoch_lora
from tagtune.train.sample_prompts import SamplePrompt, inline_prompts

CFG_SCALE = 7.0
"""The recipe's default `sample_cfg_scale`."""
SAMPLER = "euler"
"""The recipe's default `sample_sampler`."""
LABEL_LINES = 3
"""Lines of prompt text under each grid cell."""


@torch.no_grad()
def sample_images(
    components: Any,
    cfg: TrainConfig,
    out_dir: Path,
    label: str,
    seed: int | None = None,
    prompts: Sequence[SamplePrompt] | None = None,
    extra: dict[str, str] | None = None,
) -> list[Path]:
    """One PNG per prompt (`NN.png`, infotext with every setting) and `grid.png`.

    `prompts` default to `cfg.sample_prompts` with the recipe's settings (seed = `seed` or the
    train seed, plus the prompt's index). The pipeline and the prompt embeddings come from
    `tagtune.generate.pipeline` (on the device the U-Net is on), so a sample and `tagtune generate`
    with the same prompt, seed and settings condition the prompt identically.
    """

    prompts = inline_prompts(cfg, seed) if prompts is None else list(prompts)
    paths, images = [], []
    if not prompts:
        return paths
    with vae_beside_unet(components), own_random_state(components.unet):
        pipe = build_pipeline(components, prompts[0].sampler, device=str(components.unet.device))
        for i, p in enumerate(prompts):
            pipe.scheduler = make_scheduler(p.sampler, components.scheduler_config)
            info, image = _sample_one(components, pipe, p, label, extra or {})
            paths.append(write_png(image, out_dir / f"{i:02d}.png", info))
            images.append(image)
    paths.append(save_grid(images, out_dir / "grid.png", [p.prompt for p in prompts]))
    return paths


def _sample_one(
    components: Any, pipe: Any, p: SamplePrompt, label: str, extra: dict[str, str]
) -> tuple[Any, Any]:
    """(infotext, image) of one sample."""

    with mixed_dtype_autocast(components):
        embeddings = prompt_embeddings(components, p.prompt, p.negative)
        image = render(pipe, embeddings, p.seed, p.steps, p.cfg_scale, p.width, p.height)
    info = Infotext(
        prompt=p.prompt,
        negative=p.negative,
        steps=p.steps,
        sampler=p.sampler,
        cfg=p.cfg_scale,
        seed=p.seed,
        width=p.width,
        height=p.height,
        model=label,
        **prediction_fields(components),
        extra=dict(extra),
    )
    return info, image


@contextlib.contextmanager
def own_random_state(module: torch.nn.Module) -> Iterator[None]:
    """Put the global torch RNG (CPU and the module's CUDA device) back after the block."""
    device = next(module.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


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


def save_grid(images: list[Any], path: Path, labels: Sequence[str] | None = None) -> Path:
    """Paste images into a near-square grid PNG (atomically), each with its label under it.

    Cells are as large as the largest image (samples may differ in size); a label is
    wrapped to the cell's width and cut after `LABEL_LINES` lines.
    """
    from PIL import Image, ImageDraw, ImageFont

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w = max(im.size[0] for im in images)
    h = max(im.size[1] for im in images)
    font = ImageFont.load_default()
    line = font.getbbox("Ag")[3] + 2
    strip = LABEL_LINES * line + 4 if labels else 0
    grid = Image.new("RGB", (cols * w, rows * (h + strip)), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * (h + strip)
        grid.paste(im, (x, y))
        if labels:
            for k, text in enumerate(wrap_label(labels[i], w - 4, draw, font)):
                draw.text((x + 2, y + h + 2 + k * line), text, fill="black", font=font)
    with atomic_path(path) as tmp:
        grid.save(tmp, format="PNG")
    return path


def wrap_label(text: str, width: int, draw: Any, font: Any) -> list[str]:
    """`text` in at most LABEL_LINES lines no wider than `width` px (the last one cut with …)."""
    lines: list[str] = []
    current = ""
    for ch in " ".join(text.split()):
        if draw.textlength(current + ch, font=font) > width and current:
            lines.append(current)
            current = ch.lstrip()
        else:
            current += ch
    lines.append(current)
    if len(lines) > LABEL_LINES:
        lines = lines[:LABEL_LINES]
        lines[-1] = lines[-1][:-1] + "…"
    return lines


class TrainingSamples:
    """When a stage samples: at its start, every N steps, every N epochs (main process).

    Samples go to `<stage>/samples/start/`, `step-NNNNNN/` and `epoch-NNN/`; with EMA on,
    the step and epoch samples show the averaged weights. The epoch hook also writes the
    per-epoch export (`export_every_epoch`, the trained weights).
    """

    def __init__(
        self,
        ws: Workspace,
        recipe: Recipe,
        components: Any,
        stage: StageConfig,
        stage_dir: Path,
        prompts: Sequence[SamplePrompt] = (),
        ema: WeightEMA | None = None,
        base_hash: str = "",
    ) -> None:
        self.recipe, self.components, self.stage = recipe, components, stage
        self.dir = stage_dir
        self.prompts = list(prompts)
        self.ema = ema
        self.base_hash = base_hash

    def _sample(self, folder: str, label: str, step: int, ema: WeightEMA | None) -> None:
        extra = {"Training step": str(step)}
        if self.base_hash:
            extra["Base model hash"] = self.base_hash
        if ema is not None:
            extra["EMA"] = str(ema.decay)
        name = f"{self.recipe.project.name}-{self.stage.name}-{label}"
        with ema_applied(ema):
            sample_images(self.components, self.recipe.train, self.dir / "samples" / folder,
                          name, prompts=self.prompts, extra=extra)  # fmt: skip

    def at_start(self) -> None:
        """Samples of the stage's starting weights (`sample_at_start`)."""
        if self.recipe.train.sample_at_start and self.prompts:
            self._sample("start", "start", 0, None)

    def after_step(self, step: int) -> None:
        """Samples every `sample_every_n_steps` steps."""
        n = self.recipe.train.sample_every_n_steps
        if n and self.prompts and step % n == 0:
            self._sample(f"step-{step:06d}", f"s{step}", step, self.ema)

    def after_epoch(self, epoch: int, step: int) -> None:
        """Samples every `sample_every_n_epochs` epochs, then the optional per-epoch export."""
        cfg = self.recipe.train
        if cfg.sample_every_n_epochs and self.prompts and epoch % cfg.sample_every_n_epochs == 0:
            self._sample(f"epoch-{epoch:03d}", f"e{epoch}", step, self.ema)
        if cfg.export_every_epoch:
            name = f"{self.recipe.project.name}-{self.stage.name}-e{epoch:03d}.safetensors"
            out = self.dir / "exports" / name
            if self.stage.method == "lora":  # its LoRA as a kohya file (none for DoRA)
                export_epoch_lora(self.components, self.stage, self.recipe, out, epoch, step)
            else:
                export_components(self.components, out, self.recipe, dtype=self.recipe.export.dtype)


def sampling_planned(cfg: TrainConfig) -> bool:
    """Whether the recipe samples at all (at start, every N steps or every N epochs)."""
    return bool(cfg.sample_at_start or cfg.sample_every_n_steps or cfg.sample_every_n_epochs)
