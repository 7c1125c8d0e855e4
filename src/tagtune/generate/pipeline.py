"""txt2img with diffusers' SDXL pipeline, A1111-style prompts, and A1111 infotext in each PNG.

Prompt embeddings are computed here (`tagtune.models.conditioning`): emphasis syntax is parsed by
`tagtune.generate.prompt_parser`, prompts longer than 75 tokens are encoded in 75-token chunks (up to
225 tokens), and the prompt and negative prompt are padded to the same chunk count. Image i
uses seed + i with its own generator, so any image can be re-made alone (`--from-png`).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tagtune.core.errors import DependencyError, InputError
from tagtune.core.outputs import claim_output
from tagtune.generate.infotext import Infotext, read_png_infotext, write_png
from tagtune.generate.lora import load_loras, lora_tags, lora_use, strip_lora_tags, with_loras
from tagtune.generate.prompt_parser import parse_prompt
from tagtune.generate.samplers import SAMPLER_LABELS, SCHEDULERS, make_scheduler
from tagtune.models.hashes import file_hashes
from tagtune.models.prediction import components_prediction
from tagtune.recipe.model import MAX_SIDE

MAX_SEED = 2**32 - 1
MAX_TOKEN_LENGTH = 225


@dataclass
class LoadedModel:
    """Components plus the name and AutoV2 hash written into each image's infotext."""

    components: Any
    name: str
    autov2: str


def parse_size(text: str | tuple[int, int]) -> tuple[int, int]:
    """`832x1216` -> (832, 1216); both sides positive multiples of 8, else an InputError."""
    if isinstance(text, tuple):
        w, h = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
        if not m:
            raise InputError(
                "size must be WIDTHxHEIGHT", field="size", value=text, allowed="e.g. 832x1216"
            )
        w, h = int(m.group(1)), int(m.group(2))
    if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE) or w % 8 or h % 8:
        raise InputError(
            f"width and height must be multiples of 8 from 8 to {MAX_SIDE}",
            field="size",
            value=f"{w}x{h}",
            allowed="e.g. 832x1216, 1024x1024",
        )
    return w, h


def _autov2(path: Path) -> str:
    """A1111's short hash (lower-case AutoV2): the first 10 hex of the file's SHA-256."""

    return file_hashes(path)["autov2"].lower()


def load_for_generation(
    model: Any, tokenizers: str | Path | None = None, device: str | None = None
) -> LoadedModel:
    """Components from a path (single file or diffusers folder) or an SDXLComponents as is.

    Files are loaded in fp16 for a CUDA device (the VAE is upcast for decoding by the
    pipeline when its config asks), fp32 otherwise.
    """
    if isinstance(model, LoadedModel):
        return model
    if not isinstance(model, str | Path):
        name = getattr(model, "source", "") or "model"
        return LoadedModel(model, re.sub(r"[\s,:]+", "_", name), "")
    path = Path(model)
    if not path.exists():
        raise InputError("checkpoint not found", file=path)
    try:
        from tagtune.models.load import load_model
    except ImportError:
        raise DependencyError(
            "the model loader (tagtune.models.load) is not available", file=path
        ) from None
    import torch

    cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    components = load_model(
        path, tokenizers=tokenizers, dtype=torch.float16 if cuda else torch.float32
    )
    return LoadedModel(
        components,
        path.stem if path.is_file() else path.name,
        _autov2(path) if path.is_file() else "",
    )


def build_pipeline(components: Any, sampler: str, device: str | None = None):
    """diffusers' StableDiffusionXLPipeline over our components (no watermark, quiet)."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    scheduler = make_scheduler(sampler, components.scheduler_config)
    pipe = StableDiffusionXLPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer,
        tokenizer_2=components.tokenizer_2,
        unet=components.unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeddings(components: Any, prompt: str, negative: str, clip_skip: int = 1):
    """(cond, pooled, uncond, uncond_pooled): emphasis parsed, long prompts chunked, same length."""
    import torch

    from tagtune.models.conditioning import encode_prompts

    with torch.no_grad():
        embeds, pooled = encode_prompts(
            components,
            [parse_prompt(prompt), parse_prompt(negative)],
            max_token_length=MAX_TOKEN_LENGTH,
            clip_skip=clip_skip,
        )
    return embeds[:1], pooled[:1], embeds[1:], pooled[1:]


def render(
    pipe: Any,
    embeddings: tuple,
    seed: int,
    steps: int,
    cfg: float,
    width: int,
    height: int,
    cfg_rescale: float = 0.0,
    on_step: Callable[[], None] | None = None,
) -> Any:
    """One image from `prompt_embeddings(...)`, its noise drawn from a CPU generator seeded
    with `seed` (so an image is re-made alone, on any device). Used by `generate` and by
    the samples taken during training, so both condition prompts identically.
    `cfg_rescale` is the guidance rescale phi (Lin et al. 2023; 0 = off, ~0.7 for v models);
    `on_step()` runs after each sampler step."""
    import torch

    cond, pooled, uncond, uncond_pooled = (t.to(pipe.device, pipe.unet.dtype) for t in embeddings)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        return pipe(
            prompt_embeds=cond,
            pooled_prompt_embeds=pooled,
            negative_prompt_embeds=uncond,
            negative_pooled_prompt_embeds=uncond_pooled,
            num_inference_steps=steps,
            guidance_scale=cfg,
            guidance_rescale=cfg_rescale,
            width=width,
            height=height,
            generator=generator,
            callback_on_step_end=_step_callback(on_step) if on_step else None,
        ).images[0]


def prediction_fields(components: Any) -> dict[str, Any]:
    """The Infotext fields naming what the model predicts (its scheduler config)."""
    p = components_prediction(components)
    return {"prediction_type": p.prediction_type, "zero_terminal_snr": p.zero_terminal_snr}


def _step_callback(on_step: Callable[[], None]) -> Callable[..., dict]:
    def callback(_pipe: Any, _step: int, _timestep: Any, kwargs: dict) -> dict:
        on_step()
        return kwargs

    return callback


def _next_index(out_dir: Path) -> int:
    found = [int(m.group(1)) for p in out_dir.glob("*.png") if (m := re.match(r"(\d+)-", p.name))]
    return max(found, default=-1) + 1


def generate(
    model: Any,
    prompt: str,
    negative: str = "worst quality",
    steps: int = 28,
    cfg: float = 7.0,
    sampler: str = "euler_a",
    seed: int | None = None,
    size: str | tuple[int, int] = (832, 1216),
    n: int = 4,
    clip_skip: int = 1,
    out_dir: str | Path = "outputs",
    tokenizers: str | Path | None = None,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    cfg_rescale: float = 0.0,
    loras: Sequence[tuple[str | Path, float]] = (),
) -> list[Path]:
    """Generate `n` images (seeds seed, seed+1, ...) and save PNGs carrying A1111 infotext.

    `model` is a checkpoint path (single file or diffusers folder), an SDXLComponents
    (tests pass the tiny model) or a LoadedModel. The scheduler follows the model's
    prediction type and zero terminal SNR (`make_scheduler`); the infotext names them and
    `cfg_rescale` (guidance rescale, 0 to 1). `loras` are (kohya LoRA file, strength)
    pairs applied in memory (see `generate.lora`). `progress(done, total)` counts sampler
    steps (total = n x steps). Returns the written paths.
    """
    width, height = parse_size(size)
    if sampler not in SCHEDULERS:
        raise InputError(
            "unknown sampler", field="sampler", value=sampler, allowed=", ".join(SCHEDULERS)
        )
    for field, value, low in (
        ("steps", steps, 1), ("n", n, 1), ("clip_skip", clip_skip, 1), ("cfg", cfg, 1),
    ):  # fmt: skip
        if not (math.isfinite(value) and value >= low):
            raise InputError(f"must be at least {low}", field=field, value=value)
    if not (math.isfinite(cfg_rescale) and 0 <= cfg_rescale <= 1):
        raise InputError("must be from 0 to 1", field="cfg_rescale", value=cfg_rescale)
    seed = secrets.randbelow(MAX_SEED) if seed is None or seed < 0 else seed
    from tagtune.models.conditioning import check_clip_skip

    used = load_loras(loras)
    loaded = load_for_generation(model, tokenizers, device)
    owned = isinstance(model, str | Path)
    loaded = LoadedModel(
        with_loras(loaded.components, used, owned=owned), loaded.name, loaded.autov2
    )
    check_clip_skip(loaded.components.text_encoder, loaded.components.text_encoder_2, clip_skip)
    pipe = build_pipeline(loaded.components, sampler, device)
    embeddings = prompt_embeddings(loaded.components, prompt, negative, clip_skip)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    first = _next_index(out_dir)
    paths, total, done = [], n * steps, [0]
    lora_text = lora_use(used)  # the prompt tags and infotext field of every image

    def step() -> None:
        done[0] = min(done[0] + 1, total)
        if progress:
            progress(done[0], total)

    for i in range(n):
        image_seed = (seed + i) % (MAX_SEED + 1)
        target = out_dir / f"{first + i:05d}-{image_seed}.png"
        claim_output(
            target, inputs=[("the model", model if isinstance(model, str | Path) else None)]
        )
        image = render(
            pipe, embeddings, image_seed, steps, cfg, width, height, cfg_rescale, on_step=step
        )
        info = Infotext(
            prompt=prompt + lora_text.prompt_suffix,
            negative=negative,
            steps=steps,
            sampler=sampler,
            cfg=cfg,
            seed=image_seed,
            width=width,
            height=height,
            model_hash=loaded.autov2,
            model=loaded.name,
            clip_skip=clip_skip,
            cfg_rescale=cfg_rescale,
            **prediction_fields(loaded.components),
            extra=lora_text.infotext_extra,
        )
        paths.append(write_png(image, target, info))
        done[0] = (i + 1) * steps
        if progress:
            progress(done[0], total)
    return paths


def params_from_png(path: str | Path, loras_given: bool = False) -> dict[str, Any]:
    """The generate() keyword arguments recorded in an image's infotext (for `--from-png`):
    one image (`n` = 1) with the image's prompt, settings and seed.

    `<lora:...>` tags are taken out of the prompt; an image made with LoRAs needs them given
    again (`loras_given`), as the infotext names them but cannot say where the files are.
    """
    info = read_png_infotext(path)
    used = lora_tags(info.prompt)
    if used and not loras_given:
        raise InputError(
            "the image was made with LoRAs "
            + ", ".join(f"{name} x {strength}" for name, strength in used)
            + "; give their files again",
            file=path,
            field="loras",
        )
    if info.sampler not in SCHEDULERS:
        raise InputError(
            "the image's sampler is not one tagtune runs",
            file=path,
            field="Sampler",
            value=SAMPLER_LABELS.get(info.sampler, info.sampler),
            allowed=", ".join(SAMPLER_LABELS[s] for s in SCHEDULERS),
        )
    rescale = {"cfg_rescale": info.cfg_rescale} if info.cfg_rescale else {}
    return {
        "prompt": strip_lora_tags(info.prompt),
        "negative": info.negative,
        "steps": info.steps,
        "cfg": info.cfg,
        "sampler": info.sampler,
        "seed": info.seed,
        "size": (info.width, info.height),
        "clip_skip": info.clip_skip,
        **rescale,
        "n": 1,
    }
