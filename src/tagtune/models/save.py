"""Write SDXL components as one single-file checkpoint or as a diffusers folder.

The single file uses the original SDXL key layout (see `keys.py`), ModelSpec metadata with
`modelspec.hash_sha256` (= AutoV3), and `tagtune.configs` (the diffusers configs it was built
with, so tiny or non-standard models load back exactly). Both writers are atomic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from tagtune.core.atomic import atomic_dir, write_text_atomic
from tagtune.core.errors import InputError
from tagtune.core.outputs import check_output
from tagtune.models import keys
from tagtune.models.components import SDXLComponents
from tagtune.models.configs import (
    METADATA_KEY,
    component_configs,
    configs_to_metadata,
    sdxl_base_dir,
)
from tagtune.models.modelspec import HASH_KEY, modelspec_metadata
from tagtune.models.prediction import MODELSPEC_KEY, components_prediction, markers
from tagtune.models.safetensors_io import write_safetensors

DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
}
WEIGHT_FILES: dict[str, str] = {
    "unet": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
    "text_encoder": "model.safetensors",
    "text_encoder_2": "model.safetensors",
}
FOLDER_MARKER = ".tagtune-complete"


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """`fp16` / `bf16` / `fp32` (or a torch dtype) -> torch dtype; InputError otherwise."""
    if isinstance(name, torch.dtype):
        if name in DTYPES.values():
            return name
        name = str(name)
    if name not in DTYPES:
        raise InputError("unknown dtype", field="dtype", value=name, allowed=", ".join(DTYPES))
    return DTYPES[name]


def single_file_state_dict(components: SDXLComponents) -> dict[str, torch.Tensor]:
    """Every tensor under its single-file SDXL name (views of the modules' tensors, no copy
    except the fused OpenCLIP in_proj and the transposed text_projection)."""
    out: dict[str, torch.Tensor] = {}
    out.update(keys.unet_to_ldm(components.unet.state_dict(), components.unet.config))
    out.update(keys.vae_to_ldm(components.vae.state_dict(), components.vae.config))
    out.update(keys.te1_to_ldm(components.text_encoder.state_dict()))
    out.update(keys.te2_to_ldm(components.text_encoder_2.state_dict()))
    return out


def save_single_file(
    components: SDXLComponents,
    path: str | Path,
    dtype: str | torch.dtype = "fp16",
    metadata: Mapping[str, str] | None = None,
    *,
    hash_sha256: bool = True,
) -> Path:
    """Write an SDXL single-file safetensors checkpoint (A1111 / ComfyUI / diffusers layout).

    Metadata: `metadata` (e.g. from `modelspec_metadata`), or default ModelSpec keys
    (title = file stem) when None, plus `tagtune.configs`. With `hash_sha256`,
    `modelspec.hash_sha256` = "0x" + AutoV3. A v-prediction model (its scheduler config,
    `prediction.py`) gets the `v_pred` / `ztsnr` marker tensors, and ModelSpec metadata
    always names the components' prediction type, so the file never contradicts itself.
    """
    path = Path(path)
    cast = parse_dtype(dtype)
    meta = dict(metadata) if metadata is not None else modelspec_metadata(path.stem)
    meta.setdefault(METADATA_KEY, configs_to_metadata(component_configs(components)))
    prediction = components_prediction(components)
    if any(k.startswith("modelspec.") for k in meta):
        meta[MODELSPEC_KEY] = prediction.modelspec_value
    write_safetensors(
        path,
        {**single_file_state_dict(components), **markers(prediction)},
        meta,
        cast=cast,
        hash_key=HASH_KEY if hash_sha256 else None,
    )
    return path


def _text_encoder_state_dict(module) -> dict[str, torch.Tensor]:
    """transformers state dict with the canonical `text_model.` prefix every version reads."""
    sd = module.state_dict()
    return {
        k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v
        for k, v in sd.items()
        if not k.endswith(keys.IGNORED_SUFFIXES)
    }


def save_tokenizer(tokenizer, folder: Path) -> None:
    """`save_pretrained`, plus the classic vocab.json / merges.txt that older transformers
    releases (slow CLIPTokenizer) need and recent ones no longer write."""
    tokenizer.save_pretrained(folder)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or (folder / "vocab.json").exists():
        return
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "BPE":
        return
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    write_text_atomic(folder / "vocab.json", json.dumps(model["vocab"], ensure_ascii=False))
    write_text_atomic(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")


def _text_encoder_config(module):
    """The encoder's config as the model's own `save_pretrained` writes it: `architectures`
    names its class (diffusers' SDXL training example reads it), on a copy."""
    import copy

    config = copy.deepcopy(module.config)
    config.architectures = [type(module).__name__]
    return config


def _scheduler_config(components: SDXLComponents) -> dict:
    """The scheduler config with the keys diffusers' `save_config` adds (`_class_name`,
    `_diffusers_version`); its own keys stay exactly the components' (so a folder loads back
    to the same config; diffusers fills the rest with its defaults when it loads)."""
    config = {k: v for k, v in components.scheduler_config.items() if not k.startswith("_")}
    return {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": _diffusers_version(),
        **config,
    }


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def save_diffusers(
    components: SDXLComponents,
    folder: str | Path,
    dtype: str | torch.dtype = "fp32",
    *,
    overwrite: bool = False,
) -> Path:
    """Write a complete diffusers folder (weights, configs, tokenizers, scheduler) atomically.

    An existing non-empty folder is refused unless `overwrite`; it is then replaced whole,
    and only when it is a diffusers model folder (`outputs.check_output`).
    """
    folder = Path(folder)
    check_output(folder, force=overwrite, folder=True)
    cast = parse_dtype(dtype)
    index = json.loads((sdxl_base_dir() / "model_index.json").read_text())
    with atomic_dir(folder, marker=FOLDER_MARKER) as tmp:
        for name, module in components.modules().items():
            sub = tmp / name
            sub.mkdir()
            if name.startswith("text_encoder"):
                _text_encoder_config(module).save_pretrained(sub)
                state = _text_encoder_state_dict(module)
            else:
                module.save_config(sub)
                state = module.state_dict()
            write_safetensors(sub / WEIGHT_FILES[name], state, {"format": "pt"}, cast=cast)
        for name in ("tokenizer", "tokenizer_2"):
            tok = getattr(components, name)
            if tok is None:
                index[name] = [None, None]
                continue
            save_tokenizer(tok, tmp / name)
        (tmp / "scheduler").mkdir()
        write_text_atomic(
            tmp / "scheduler" / "scheduler_config.json",
            json.dumps(_scheduler_config(components), indent=2, sort_keys=True),
        )
        index["_diffusers_version"] = _diffusers_version()
        write_text_atomic(tmp / "model_index.json", json.dumps(index, indent=2, sort_keys=True))
    return folder
