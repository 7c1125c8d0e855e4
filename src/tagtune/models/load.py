"""Load an SDXL model from a single-file checkpoint or a diffusers folder, offline.

Single files are split with diffusers' own original -> diffusers converters
(`diffusers.loaders.single_file_utils`), using the configs stored in our own exports
(`tagtune.configs`) or else the packaged SDXL 1.0 base configs. Every module is built empty
and filled strictly: a missing, unexpected or wrongly shaped tensor is a ModelFileError that
names the file and the tensor. `.ckpt`/`.pt`/`.bin` load only with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tagtune.core.errors import DependencyError, ModelFileError
from tagtune.core.untrusted import BadJSON, parse_json
from tagtune.models import clip_vocab, keys
from tagtune.models.components import SDXLComponents
from tagtune.models.configs import (
    CONFIG_FILES,
    METADATA_KEY,
    configs_from_metadata,
    read_config_file,
    sdxl_base_configs,
)
from tagtune.models.prediction import read_file_claim, read_folder_claim, with_claim
from tagtune.models.safetensors_io import load_tensors, read_header

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SDXL_SIGNATURE = keys.TE2_PREFIX + "transformer.resblocks.9.mlp.c_proj.bias"
WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
)


# Never reach a model hub: set before diffusers / transformers are first imported (lazily, below).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _unpickler_reason(exc: Exception) -> str:
    """The one useful sentence of torch's long weights-only error (never its advice to
    retry with weights_only=False)."""
    text = str(exc)
    _, _, tail = text.partition("WeightsUnpickler error:")
    paragraph = next((p for p in tail.strip().split("\n\n") if p.strip()), "")
    reason = " ".join(paragraph.split()).split(". ")[0]
    if reason:
        return reason
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return first if "weights_only" not in first else "not a plain dict of tensors"


def _torch_load_weights_only(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "Unsupported global" in reason:
            raise ModelFileError(
                "refused: pickled code and objects are never loaded, only plain tensors, and "
                f"this file holds more ({reason})",
                file=path,
                hint="get a .safetensors file, or convert this one with a tool you trust",
            ) from None
        raise ModelFileError(f"not a readable torch checkpoint ({reason})", file=path) from None
    except Exception as exc:  # corrupt zip, truncated file, not a torch file at all
        raise ModelFileError(
            f"not a readable torch checkpoint ({_unpickler_reason(exc)})", file=path
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ModelFileError("holds no dict of tensors", file=path)
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a checkpoint file and its header metadata (empty for pickles).

    safetensors headers are validated before reading; pickles load with weights_only=True.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError("no such file", file=path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return load_tensors(path)
    if suffix in PICKLE_SUFFIXES:
        return _torch_load_weights_only(path), {}
    raise ModelFileError(
        f"unsupported model file type {suffix or '(none)'!r}",
        file=path,
        allowed=", ".join((*SAFETENSORS_SUFFIXES, *PICKLE_SUFFIXES)) + ", or a diffusers folder",
    )


def empty_module(name: str, config: Mapping[str, Any]):
    """Component `name` built from its config with parameters on the meta device (no memory)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():  # parameters on meta: no time spent on random init
        if name == "unet":
            return UNet2DConditionModel.from_config(dict(config))
        if name == "vae":
            return AutoencoderKL.from_config(dict(config))
        text_cls = CLIPTextModel if name == "text_encoder" else CLIPTextModelWithProjection
        return text_cls(CLIPTextConfig.from_dict(dict(config)))


def _fit_text_keys(module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Match `text_model.` prefixes to what this transformers version's class expects."""
    wrapped = hasattr(module, "text_model")
    out = {}
    for k, v in state.items():
        if k.startswith("text_projection"):
            out[k] = v
        else:
            bare = k.removeprefix("text_model.")
            out[f"text_model.{bare}" if wrapped else bare] = v
    return out


def checked_empty_module(name: str, config: Mapping[str, Any], source: str):
    """empty_module, with a config diffusers or transformers cannot build (an unknown block
    type, a width that does not divide into heads) as a ModelFileError naming the file.

    Their constructors raise many types for a bad config (ValueError, TypeError, KeyError,
    IndexError, huggingface_hub's StrictDataclassError, ...); sizes were bounded before
    (`check_config`), so any failure here is the file's config, reported as such.
    """
    try:
        return empty_module(name, config)
    except Exception as exc:
        reason = " ".join(str(exc).split())[:240] or type(exc).__name__
        raise ModelFileError(
            f"the {name} config does not build a model ({reason})", file=source
        ) from None


def build_module(
    name: str, config: Mapping[str, Any], state: Mapping[str, torch.Tensor], dtype, source: str
):
    """Build component `name` from its diffusers config and fill it strictly from `state`."""
    module = checked_empty_module(name, config, source)
    if name.startswith("text_encoder"):
        state = _fit_text_keys(module, state)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.endswith(keys.IGNORED_SUFFIXES)]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise ModelFileError(
            f"{name}: {len(missing)} tensors missing, {len(unexpected)} unexpected "
            f"(first: {first}); not an SDXL 1.0 model of this configuration",
            file=source,
        )
    for k, want in expected.items():
        if tuple(state[k].shape) != tuple(want.shape):
            raise ModelFileError(
                f"{name}: shape {list(state[k].shape)} does not fit the config's {list(want.shape)}",
                file=source,
                field=k,
                hint="only SDXL 1.0 base-architecture checkpoints load",
            )
    filled = {
        k: (state[k].to(dtype) if state[k].is_floating_point() else state[k]) for k in expected
    }
    module.load_state_dict(filled, strict=True, assign=True)
    return module.eval()


def split_single_file(
    state: Mapping[str, torch.Tensor], configs: Mapping[str, Mapping[str, Any]], source: str
) -> dict[str, dict[str, torch.Tensor]]:
    """Single-file tensors -> diffusers state dicts per component, via diffusers' converters."""
    from diffusers.loaders import single_file_utils as sfu

    if not any(k.startswith(keys.UNET_PREFIX) for k in state):
        raise ModelFileError(f"not an SDXL checkpoint: no {keys.UNET_PREFIX}* tensors", file=source)
    if SDXL_SIGNATURE not in state:
        raise ModelFileError(
            f"not an SDXL 1.0 base checkpoint: {SDXL_SIGNATURE} is missing "
            "(SD 1.x/2.x and the SDXL refiner are not supported)",
            file=source,
        )
    te2_probe = checked_empty_module("text_encoder_2", configs["text_encoder_2"], source)
    return {
        "unet": sfu.convert_ldm_unet_checkpoint(dict(state), dict(configs["unet"])),
        "vae": sfu.convert_ldm_vae_checkpoint(
            {k: v for k, v in state.items() if k.startswith(keys.VAE_PREFIX)}, dict(configs["vae"])
        ),
        "text_encoder": sfu.convert_ldm_clip_checkpoint(
            {k: v for k, v in state.items() if k.startswith(keys.TE1_PREFIX)}
        ),
        "text_encoder_2": sfu.convert_open_clip_checkpoint(
            te2_probe, dict(state), prefix=keys.TE2_PREFIX
        ),
    }


def _configs_from_metadata(meta: Mapping[str, str], source: str) -> dict[str, dict[str, Any]]:
    if METADATA_KEY not in meta:
        return sdxl_base_configs()
    return configs_from_metadata(meta[METADATA_KEY], source)


def file_configs(path: Path) -> dict[str, dict[str, Any]]:
    """The component configs a single file will be built with, checked before any of its
    tensors is read: its own `tagtune.configs` (safetensors) or the SDXL base configs."""
    if path.suffix.lower() in SAFETENSORS_SUFFIXES and path.is_file():
        return _configs_from_metadata(read_header(path).metadata, str(path))
    return sdxl_base_configs()


def resolve_tokenizers(tokenizers: Any = None, folder: Path | None = None) -> tuple[Any, Any]:
    """(tokenizer, tokenizer_2): given objects, a dir with tokenizer/ and tokenizer_2/, the
    model folder's own, or the real CLIP vocabulary found offline; DependencyError if none."""
    if isinstance(tokenizers, tuple | list):
        return tokenizers[0], tokenizers[1]
    from transformers import CLIPTokenizer

    candidates = [Path(tokenizers)] if tokenizers is not None else []
    if folder is not None:
        candidates.append(folder)
    for d in candidates:
        if (d / "tokenizer").is_dir() and (d / "tokenizer_2").is_dir():
            return tuple(
                CLIPTokenizer.from_pretrained(d / sub, local_files_only=True)
                for sub in ("tokenizer", "tokenizer_2")
            )  # type: ignore[return-value]
    if tokenizers is not None:
        raise DependencyError("has no tokenizer/ and tokenizer_2/ folders", file=tokenizers)

    if clip_vocab.vocab_available():
        return clip_vocab.sdxl_tokenizers()
    raise DependencyError(
        "no tokenizers: the model has no tokenizer/ and tokenizer_2/ folders, no tokenizers "
        "folder was given, and the CLIP BPE vocabulary is not available offline",
        file=folder,
        hint="pass `tokenizers` (a diffusers SDXL folder) or run `make setup`",
    )


def weights_file(sub: Path) -> Path:
    """The weights file of a diffusers component folder (unsharded), or a ModelFileError."""
    for name in WEIGHT_NAMES:
        if (sub / name).is_file():
            return sub / name
    raise ModelFileError("no weights file", file=sub, allowed=", ".join(WEIGHT_NAMES))


def read_folder_component(sub: Path) -> dict[str, torch.Tensor]:
    """The weights of one diffusers component folder (single or sharded file), validated."""
    for index_name in (
        "diffusion_pytorch_model.safetensors.index.json",
        "model.safetensors.index.json",
    ):
        index = sub / index_name
        if index.is_file():
            shards = _index_shards(index)
            for shard in shards:  # validate every header before reading any data
                read_header(sub / shard)
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_tensors(sub / shard)[0])
            return state
    return read_checkpoint(weights_file(sub))[0]


def _index_shards(index: Path) -> list[str]:
    """The shard file names of a `*.safetensors.index.json`, checked: names in the folder."""
    try:
        weight_map = parse_json(index.read_bytes()).get("weight_map")
    except (OSError, BadJSON, AttributeError) as exc:
        raise ModelFileError(f"not a readable shard index ({exc})", file=index) from None
    if not isinstance(weight_map, dict) or not all(
        isinstance(v, str) and v and Path(v).name == v and v not in (".", "..")
        for v in weight_map.values()
    ):
        raise ModelFileError(
            "weight_map must map tensor names to shard file names in this folder",
            file=index,
            field="weight_map",
        )
    return sorted(set(weight_map.values()))


def folder_configs(folder: Path) -> dict[str, dict[str, Any]]:
    """The configs of a diffusers folder, each read within limits and checked before any
    weight is read; the scheduler's is optional ({} when absent)."""
    configs = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        cfg_path = folder / CONFIG_FILES[name]
        if not cfg_path.is_file():
            raise ModelFileError("not a diffusers SDXL folder: missing config", file=cfg_path)
        configs[name] = read_config_file(cfg_path, name)
    sched_path = folder / CONFIG_FILES["scheduler"]
    scheduler = read_config_file(sched_path, "scheduler") if sched_path.exists() else {}
    scheduler.pop("_diffusers_version", None)  # the writer's version, not the model's
    configs["scheduler"] = scheduler
    return configs


def _load_folder(folder: Path, tokenizers: Any, dtype) -> SDXLComponents:
    configs = folder_configs(folder)
    modules = {}
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        modules[name] = build_module(
            name, configs[name], read_folder_component(folder / name), dtype, str(folder / name)
        )
    scheduler = configs["scheduler"]
    tok1, tok2 = resolve_tokenizers(tokenizers, folder)
    return SDXLComponents(
        **modules, tokenizer=tok1, tokenizer_2=tok2, scheduler_config=scheduler,
        source=str(folder), claim=read_folder_claim(scheduler),
    )  # fmt: skip


def load_model(
    path: str | Path, tokenizers: Any = None, dtype: torch.dtype = torch.float32
) -> SDXLComponents:
    """Load SDXL from a single file (.safetensors; .ckpt/.pt weights only) or a diffusers folder.

    Offline: configs come from the file's `tagtune.configs` metadata or the packaged SDXL base
    configs; tokenizers from `tokenizers` (objects or a folder), the model folder, or the real
    CLIP vocabulary (see `resolve_tokenizers`). The scheduler config carries what the model
    predicts (`models.prediction`): a single file's `v_pred` / `ztsnr` markers and
    `modelspec.prediction_type` override its stored or packaged config.
    """
    path = Path(path)
    if path.is_dir():
        return _load_folder(path, tokenizers, dtype)
    configs = file_configs(path)  # checked before a tensor is read or a module is built
    state, meta = read_checkpoint(path)
    claim = read_file_claim(state.keys(), meta)  # the v_pred / ztsnr markers, modelspec
    parts = split_single_file(state, configs, str(path))
    del state
    modules = {
        name: build_module(name, configs[name], sd, dtype, str(path)) for name, sd in parts.items()
    }
    tok1, tok2 = resolve_tokenizers(tokenizers)
    return SDXLComponents(
        **modules,
        tokenizer=tok1,
        tokenizer_2=tok2,
        scheduler_config=with_claim(configs["scheduler"], claim),
        source=str(path),
        claim=claim,
    )
