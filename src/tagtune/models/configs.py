"""diffusers configs of SDXL 1.0 base (package data) and of loaded components.

Single files carry no config. We ship the published SDXL base configs so a single file loads
offline, and our own exports store the configs they were built with in the header
(`tagtune.configs`), so tiny or non-standard models load back exactly.

A config read from a file (header metadata, a diffusers folder's config.json) decides what
is allocated before a single weight is read: `check_config` bounds every size in it (at most
SIZE_FACTOR times the SDXL 1.0 base value; widths of 100,000 would ask for 160 GB) and its
types, so a hostile file gets a ModelFileError naming the file and the key.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from tagtune.core.errors import ModelFileError
from tagtune.core.untrusted import BadJSON, NotRegularFile, parse_json, read_regular
from tagtune.models.components import SDXLComponents
from tagtune.models.safetensors_io import short_repr

CONFIG_FILES: dict[str, str] = {
    "unet": "unet/config.json",
    "vae": "vae/config.json",
    "text_encoder": "text_encoder/config.json",
    "text_encoder_2": "text_encoder_2/config.json",
    "scheduler": "scheduler/scheduler_config.json",
}
METADATA_KEY = "tagtune.configs"


def sdxl_base_dir() -> Path:
    """The packaged diffusers folder (configs only) of SDXL 1.0 base."""
    return Path(str(resources.files("tagtune") / "configs" / "sdxl-base"))


def sdxl_base_configs() -> dict[str, dict[str, Any]]:
    """The SDXL 1.0 base configs by component name (unet, vae, text_encoder, ...)."""
    base = sdxl_base_dir()
    return {name: json.loads((base / rel).read_text()) for name, rel in CONFIG_FILES.items()}


def _plain(config: Any) -> dict[str, Any]:
    # transformers PretrainedConfig has to_dict(); diffusers configs are FrozenDicts
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # private keys (`_use_default_values` is a set: its order varies run to run) are dropped
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    return json.loads(json.dumps(data, default=str))


def component_configs(components: SDXLComponents) -> dict[str, dict[str, Any]]:
    """The configs of loaded components, JSON-ready, in the layout of `sdxl_base_configs`."""
    out = {name: _plain(m.config) for name, m in components.modules().items()}
    out["scheduler"] = dict(components.scheduler_config)
    return out


def configs_to_metadata(configs: dict[str, dict[str, Any]]) -> str:
    """Compact JSON for the `tagtune.configs` header key."""
    return json.dumps(configs, separators=(",", ":"), sort_keys=True)


SIZE_FACTOR = 2
"""A config may ask for at most this many times each SDXL 1.0 base size."""
SDXL_SIZES: dict[str, dict[str, int]] = {
    "unet": {
        "in_channels": 4, "out_channels": 4, "sample_size": 128, "block_out_channels": 1280,
        "layers_per_block": 2, "transformer_layers_per_block": 10, "attention_head_dim": 20,
        "num_attention_heads": 20, "cross_attention_dim": 2048, "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
        "addition_embed_type_num_heads": 64, "time_embedding_dim": 1280,
        "encoder_hid_dim": 2048, "time_cond_proj_dim": 256, "conv_in_kernel": 3,
        "conv_out_kernel": 3,
    },
    "vae": {
        "in_channels": 3, "out_channels": 3, "latent_channels": 4, "block_out_channels": 512,
        "layers_per_block": 2, "norm_num_groups": 32, "sample_size": 1024,
    },
    "text_encoder": {
        "vocab_size": 49408, "max_position_embeddings": 77, "hidden_size": 1280,
        "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
        "projection_dim": 1280,
    },
    "scheduler": {"num_train_timesteps": 1000},
}  # fmt: skip
"""Every size key a component config may set, with its SDXL 1.0 base value (the larger
encoder's for both text encoders). Any other integer of a config is bounded by the largest."""
SDXL_SIZES["text_encoder_2"] = SDXL_SIZES["text_encoder"]
MAX_BLOCKS = 8
"""Most entries of a per-block list (SDXL: 3 U-Net levels, 4 VAE levels)."""
MAX_LIST = 4096
"""Most entries of any other list in a config (a scheduler's trained_betas)."""
MAX_CONFIG_BYTES = 1024 * 1024
"""A config.json is a few KiB; a larger one is not read."""


def _refuse(source: str | Path, where: str, value: Any, reason: str, allowed: str | None = None):
    shown = short_repr(value)
    return ModelFileError(
        reason,
        file=source,
        field=f"{where} = {shown}" if shown != repr(value) else where,
        value=value if shown == repr(value) else None,
        allowed=allowed,
    )


def _check_sized(value: Any, limit: int, source: str | Path, where: str) -> None:
    """A size key: a positive integer up to `limit`, None, or a short list (of lists) of them."""
    allowed = f"integers 1 to {limit} ({SIZE_FACTOR}x the SDXL 1.0 base size), or lists of them"
    if value is None:
        return
    if isinstance(value, list):
        if len(value) > MAX_BLOCKS:
            raise _refuse(
                source, where, value, f"has {len(value)} entries", f"at most {MAX_BLOCKS}"
            )
        for item in value:
            _check_sized(item, limit, source, where)
        return
    if type(value) is not int:  # bool is an int subclass; floats and strings are no sizes
        raise _refuse(source, where, value, "is not an integer size", allowed)
    if not 1 <= value <= limit:
        raise _refuse(source, where, value, "is out of range", allowed)


def _check_other(value: Any, limit: int, source: str | Path, where: str) -> None:
    """Any other value: finite numbers, integers within +-`limit`, lists of MAX_LIST at most."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_other(item, limit, source, f"{where}.{key}")
    elif isinstance(value, list):
        if len(value) > MAX_LIST:
            raise _refuse(source, where, value, f"has {len(value)} entries", f"at most {MAX_LIST}")
        for item in value:
            _check_other(item, limit, source, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise _refuse(source, where, value, "is not a finite number")
    elif type(value) is int and abs(value) > limit:
        raise _refuse(source, where, value, "is out of range", f"-{limit} to {limit}")


def check_config(name: str, config: Any, source: str | Path, prefix: str = "") -> dict[str, Any]:
    """Check the config of component `name` (unet, vae, text_encoder, text_encoder_2,
    scheduler) read from `source`, before anything is built from it; returns it.

    Sizes (widths, layers, heads, vocabulary, positions, timesteps) must be positive
    integers of at most SIZE_FACTOR times SDXL 1.0's; every other integer is bounded by the
    largest of those, every float finite. `prefix` names where the config sits in the file
    (`tagtune.configs.unet.`) for the error's field.
    """
    if not isinstance(config, dict):
        raise _refuse(
            source, prefix.rstrip(".") or name, config, f"the {name} config is not a JSON object"
        )
    sizes = SDXL_SIZES[name]
    largest = max(sizes.values()) * SIZE_FACTOR
    for key, value in config.items():
        where = f"{prefix}{key}"
        if key in sizes:
            _check_sized(value, sizes[key] * SIZE_FACTOR, source, where)
        else:
            _check_other(value, largest, source, where)
    return config


def check_configs(
    configs: Any, source: str | Path, field: str = METADATA_KEY
) -> dict[str, dict[str, Any]]:
    """Check a `{component: config}` mapping (a header's `tagtune.configs`) with check_config."""
    if not isinstance(configs, dict):
        raise _refuse(source, field, configs, "is not a JSON object of component configs")
    missing = [k for k in CONFIG_FILES if k not in configs]
    if missing:
        raise ModelFileError(f"header configs lack {missing}", file=source, field=field)
    return {
        name: check_config(name, configs[name], source, f"{field}.{name}.") for name in CONFIG_FILES
    }


def read_config_file(path: str | Path, name: str) -> dict[str, Any]:
    """A component's config.json (or scheduler_config.json), read within limits and checked."""
    path = Path(path)
    try:
        data = read_regular(path, MAX_CONFIG_BYTES)
    except NotRegularFile:
        raise ModelFileError("not a regular file", file=path) from None
    except OSError as exc:
        raise ModelFileError(f"cannot read: {exc.strerror or exc}", file=path) from None
    try:
        config = parse_json(data)
    except BadJSON as exc:
        raise ModelFileError(f"not valid JSON ({exc})", file=path) from None
    return check_config(name, config, path)


def configs_from_metadata(text: str, source: str | Path) -> dict[str, dict[str, Any]]:
    """The `tagtune.configs` header value parsed within limits and checked (check_configs)."""
    try:
        configs = parse_json(text)
    except BadJSON as exc:
        raise ModelFileError(
            f"header metadata is not JSON ({exc})", file=source, field=METADATA_KEY
        ) from None
    return check_configs(configs, source)
