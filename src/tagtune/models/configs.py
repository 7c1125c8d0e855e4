"""diffusers configs of SDXL 1.0 base (package data) and of loaded components.

Single files carry no config. We ship the published SDXL base configs so a single file loads
offline, and our own exports store the configs they were built with in the header
(`tagtune.configs`), so tiny or non-standard models load back exactly.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from tagtune.models.components import SDXLComponents

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
