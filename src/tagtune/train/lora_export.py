"""`tagtune export` of a LoRA stage: a kohya-format LoRA file with kohya's `ss_*` metadata.

The file holds `lora_unet_*` / `lora_te1_*` / `lora_te2_*` modules (`lora_down.weight`,
`lora_up.weight`, `alpha`), written by `tagtune.models.lora_format.write_lora`, and a header
that kohya's tools, A1111's and model sites read: the `ss_*` training keys as sd-scripts'
`train_network.py` writes them (every value a string, Python's spelling: "True", "None",
"(1024, 1024)"; `ss_tag_frequency` JSON of {"<repeats>_<dataset>": {tag: count}}), the
base model's name and hashes (`ss_sd_model_hash`: the legacy 8-hex hash, `ss_new_sd_model_hash`:
SHA-256), `sshs_model_hash` / `sshs_legacy_hash` as sd-scripts computes them (SHA-256 of the
tensor bytes, and the legacy hash of the file serialised with only the `ss_*` keys), next to
the ModelSpec keys (`modelspec.architecture` "stable-diffusion-xl-v1-base/lora").

The LoRA is the difference the stage trained on top of the weights it started from: the base,
plus any full stage before it (`tagtune.lora_starts_from` names them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from tagtune.core.catalog import check_subset, open_catalog
from tagtune.core.errors import TrainingError
from tagtune.core.subsets import stage_origin
from tagtune.core.workspace import Workspace
from tagtune.models.lora_format import LoraModule, kohya_name, write_lora
from tagtune.models.modelspec import modelspec_metadata
from tagtune.recipe.lora import LoraConfig, stage_lora
from tagtune.recipe.model import Recipe, StageConfig
from tagtune.train.lora import ADAPTER, COMPONENTS, has_adapters
from tagtune.train.state import trained_weights

NETWORK_MODULE = "networks.lora"
BASE_MODEL_VERSION = "sdxl_base_v1-0"
LORA_ARCHITECTURE = "stable-diffusion-xl-v1-base/lora"
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DOWN, UP = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight"
LEGACY_OFFSET, LEGACY_LENGTH = 0x100000, 0x10000


def module_alpha(down: torch.Tensor, lora: LoraConfig) -> float:
    """The alpha a module trained with: conv_alpha for a 3x3 convolution, else alpha."""
    spatial = down.dim() == 4 and tuple(down.shape[2:]) != (1, 1)
    return lora.conv_dims[1] if spatial else lora.scale_alpha


def state_lora_modules(state: Path, lora: LoraConfig) -> dict[str, Any]:
    """The kohya modules of a LoRA stage's state (see `kohya_modules`)."""
    from safetensors.torch import load_file

    files = {n: Path(state) / f"{n}.safetensors" for n in COMPONENTS}
    return kohya_modules({n: load_file(f) for n, f in files.items() if f.is_file()}, lora, state)


def kohya_modules(
    weights: dict[str, dict[str, torch.Tensor]], lora: LoraConfig, source: Path | None = None
) -> dict[str, Any]:
    """Kohya modules from the adapters' tensors per module name: peft's A is kohya's down,
    B its up. Anything but LoRA A/B pairs (DoRA magnitudes, a full stage's weights) is a
    TrainingError: a kohya file could not hold it."""
    modules: dict[str, LoraModule] = {}
    for name, tensors in weights.items():
        odd = sorted(k for k in tensors if not k.endswith((DOWN, UP)))
        if odd:
            raise TrainingError(
                f"{name}: {len(odd)} tensors a kohya LoRA cannot hold (first: {odd[0]})",
                file=source, hint="only a LoRA stage without dora exports as a kohya LoRA",
            )  # fmt: skip
        for key, down in tensors.items():
            if key.endswith(DOWN):
                path = key.removesuffix(DOWN)
                up = tensors[path + UP]
                modules[kohya_name(COMPONENTS[name], path)] = LoraModule(
                    down.detach().cpu(), up.detach().cpu(), module_alpha(down, lora)
                )
    return modules


def export_epoch_lora(
    components: Any, stage: StageConfig, recipe: Recipe, out: Path, epoch: int, step: int
) -> Path | None:
    """`train.export_every_epoch` for a LoRA stage: the adapters now, as a kohya LoRA with the
    network keys and ModelSpec (the full `ss_*` set comes with `tagtune export`)."""
    lora = stage_lora(stage)
    if lora is None or lora.dora:
        return None
    weights = {
        n: trained_weights(getattr(components, n))
        for n in COMPONENTS
        if has_adapters(getattr(components, n))
    }
    meta = modelspec_metadata(
        f"{recipe.project.name}-{stage.name}-e{epoch:03d}",
        prediction_type=recipe.model.prediction_type,
        extra={
            "ss_network_module": NETWORK_MODULE, "ss_network_dim": str(lora.rank),
            "ss_network_alpha": str(lora.scale_alpha), "ss_base_model_version": BASE_MODEL_VERSION,
            "ss_epoch": str(epoch), "ss_steps": str(step), "ss_output_name": out.stem,
        },
    )  # fmt: skip
    meta["modelspec.architecture"] = LORA_ARCHITECTURE
    dtype = DTYPES[recipe.export.dtype]
    return write_lora(out, kohya_modules(weights, lora), meta, dtype=dtype, force=True)


def legacy_hash(data: bytes | Path) -> str:
    """sd-scripts' / A1111's legacy hash: SHA-256 of the 64 KiB at 1 MiB, first 8 hex digits."""
    if isinstance(data, Path):
        with open(data, "rb") as fh:
            fh.seek(LEGACY_OFFSET)
            window = fh.read(LEGACY_LENGTH)
    else:
        window = data[LEGACY_OFFSET : LEGACY_OFFSET + LEGACY_LENGTH]
    return hashlib.sha256(window).hexdigest()[:8]


def kohya_tensors(modules: dict[str, Any], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The tensors of a kohya LoRA file as `write_lora` stores them (for the sshs hashes)."""
    out: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        out[f"{name}.lora_down.weight"] = m.down.to(dtype).contiguous()
        out[f"{name}.lora_up.weight"] = m.up.to(dtype).contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(m.alpha)).to(dtype)
        if m.mid is not None:
            out[f"{name}.lora_mid.weight"] = m.mid.to(dtype).contiguous()
    return out


def sshs_hashes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict[str, str]:
    """`sshs_model_hash` and `sshs_legacy_hash` the way sd-scripts precalculates them: the
    file serialised with only its `ss_*` keys; the first hashes the bytes after the header
    (which no header changes), the second is the legacy hash of those bytes."""
    from safetensors.torch import save

    blob = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    start = 8 + int.from_bytes(blob[:8], "little")
    return {
        "sshs_model_hash": hashlib.sha256(blob[start:]).hexdigest(),
        "sshs_legacy_hash": legacy_hash(blob),
    }


def stage_tag_frequency(ws: Workspace, recipe: Recipe, stage: StageConfig) -> dict[str, int]:
    """Caption tag counts over the stage's subset (every tag, most frequent first)."""
    if not ws.catalog_path.exists():
        return {}
    with open_catalog(ws.catalog_path, read_only=True) as con:
        where = check_subset(
            con, stage.subset, stage_origin(recipe.train.stages, stage, ws.recipe_path)
        )
        rows = con.execute(
            "SELECT tag, count(*) AS n FROM (SELECT unnest(c.tags) AS tag FROM captions c "
            f"JOIN posts ON posts.id = c.post_id WHERE posts.excluded IS NULL AND ({where})) "
            "GROUP BY tag ORDER BY n DESC, tag"
        ).fetchall()
    return {t: int(n) for t, n in rows}


def base_hashes(ws: Workspace, record: dict[str, Any]) -> dict[str, str]:
    """Name and hashes of the run's base model file, from run.json (and its 64 KiB window)."""
    base = record.get("base_model") or {}
    path = ws.resolve(base["path"]) if base.get("path") else None
    out = {"ss_sd_model_name": Path(base.get("path") or "").name or "None"}
    if path is not None and path.is_file():
        out["ss_sd_model_hash"] = legacy_hash(path)
    if base.get("sha256"):
        out["ss_new_sd_model_hash"] = base["sha256"]
    return out


def ss_metadata(
    ws: Workspace,
    recipe: Recipe,
    record: dict[str, Any],
    entry: dict[str, Any],
    output_name: str,
) -> dict[str, str]:
    """The `ss_*` keys of a LoRA stage's export (see the module docstring)."""
    stage = StageConfig.model_validate(entry["settings"])
    lora = stage_lora(stage) or LoraConfig()
    cfg = recipe.train
    args: dict[str, str] = {}
    if "convs" in lora.targets:
        args = {"conv_dim": str(lora.conv_dims[0]), "conv_alpha": str(lora.conv_dims[1])}
    resolution = recipe.buckets.resolution
    meta: dict[str, Any] = {
        "ss_network_module": NETWORK_MODULE,
        "ss_network_dim": lora.rank,
        "ss_network_alpha": lora.scale_alpha,
        "ss_network_dropout": lora.dropout,
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_v2": False,
        "ss_output_name": output_name,
        "ss_training_comment": recipe.project.description or "trained with tagtune",
        "ss_resolution": (resolution, resolution),
        "ss_steps": entry["steps"],
        "ss_epoch": entry["epochs"],
        "ss_num_epochs": stage.epochs,
        "ss_num_train_images": entry["images"] * stage.repeats,
        "ss_num_batches_per_epoch": entry["steps_per_epoch"],
        "ss_batch_size_per_device": stage.batch_size,
        "ss_gradient_accumulation_steps": stage.gradient_accumulation,
        "ss_learning_rate": stage.lr_unet,
        "ss_unet_lr": stage.lr_unet,
        "ss_text_encoder_lr": stage.lr_text_encoder,
        "ss_lr_scheduler": stage.scheduler,
        "ss_lr_warmup_steps": entry.get("warmup_steps", 0),
        "ss_optimizer": stage.optimizer,
        "ss_max_grad_norm": stage.max_grad_norm,
        "ss_noise_offset": stage.noise_offset,
        "ss_min_snr_gamma": stage.min_snr_gamma,
        "ss_seed": cfg.seed,
        "ss_mixed_precision": cfg.mixed_precision,
        "ss_gradient_checkpointing": cfg.gradient_checkpointing,
        "ss_max_token_length": stage.max_token_length,
        "ss_shuffle_caption": stage.shuffle_captions,
        "ss_keep_tokens": stage.keep_tokens,
        "ss_caption_dropout_rate": stage.caption_dropout,
        "ss_caption_tag_dropout_rate": stage.tag_dropout,
        "ss_flip_aug": recipe.buckets.flip,
        "ss_cache_latents": True,
        "ss_tag_frequency": json.dumps(
            {f"{stage.repeats}_{stage.name}": stage_tag_frequency(ws, recipe, stage)}
        ),
        **({"ss_network_args": json.dumps(args)} if args else {}),
        **base_hashes(ws, record),
    }
    return {k: str(v) for k, v in meta.items()}


def export_lora(
    ws: Workspace,
    recipe: Recipe,
    record: dict[str, Any],
    entry: dict[str, Any],
    state: Path,
    out: Path,
    dtype: str,
    earlier: list[str],
) -> tuple[Path, dict[str, Any]]:
    """Write the LoRA of a finished LoRA stage (its final `state`) as a kohya file at `out`.

    The caller has claimed `out` (the overwrite rule). `earlier` names the stages before it
    (the LoRA applies to the weights they left). Returns the path and the export record's
    `lora` entry (rank, alpha, modules, base) for run.json and the model card.
    """
    stage = StageConfig.model_validate(entry["settings"])
    lora = stage_lora(stage)
    if lora is None or lora.dora:
        raise TrainingError(
            f"stage {stage.name!r} is not an exportable LoRA stage (a kohya LoRA holds plain "
            "LoRA modules; DoRA has no place in it)",
            field="lora.dora" if lora is not None else "method", value=True if lora else "full",
        )  # fmt: skip
    modules = state_lora_modules(state, lora)
    if not modules:
        raise TrainingError(f"stage {stage.name!r} trained no LoRA module", file=state)
    ss = ss_metadata(ws, recipe, record, entry, out.stem)
    torch_dtype = DTYPES[dtype]
    ss.update(sshs_hashes(kohya_tensors(modules, torch_dtype), ss))
    meta = modelspec_metadata(
        recipe.project.name,
        author=recipe.project.author,
        description=recipe.project.description,
        license=recipe.project.license,
        resolution="{}x{}".format(*recipe.export.resolution),
        prediction_type=recipe.model.prediction_type,
        usage_hint=f"<lora:{out.stem}:1>",
        date=str(entry.get("finished_at") or ""),  # reproducible: when the stage finished
        extra={
            **ss,
            "tagtune.recipe.model": json.dumps(recipe.model_dump(mode="json"), sort_keys=True),
            "tagtune.lora_stage": stage.name,
            "tagtune.lora_starts_from": json.dumps(["base", *earlier]),
        },
    )
    meta["modelspec.architecture"] = LORA_ARCHITECTURE
    path = write_lora(out, modules, meta, dtype=torch_dtype, force=True)
    info = {
        "stage": stage.name,
        "rank": lora.rank,
        "alpha": lora.scale_alpha,
        "targets": list(lora.targets),
        "modules": len(modules),
        "starts_from": ["base", *earlier],
        "base": {k: v for k, v in (record.get("base_model") or {}).items() if v},
    }
    return path, info
