"""A LoRA stage as data: peft adapters in the modules, and which parameters train.

The training loop is the same for every stage. For a `method = "lora"` stage, `add_adapters`
puts a peft LoRA layer on each targeted layer of every module whose learning rate is above 0
(its base weights frozen), so "the trainable parameters" are the adapters: the optimizer,
gradient sums, clipping and resumable states (`tagtune.train.state.trained_weights`) see
only them. When the stage ends `merge_adapters` adds each LoRA into its base weight and
takes the adapters out, so the next stage (full or LoRA), samples of later stages and
exports start from the base + the merged LoRA. A later run that skips the finished stage
rebuilds the same weights from its final state (`apply_lora_state`: add adapters, load,
merge), bit for bit the same as the run that trained it.

Targets are the layers a kohya LoRA can hold (`tagtune.models.lora_format.lora_targets`,
sd-scripts' `networks.lora` layout), so every trained LoRA exports to a kohya file.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any

import torch

from tagtune.core.errors import TrainingError
from tagtune.models.lora_format import lora_targets
from tagtune.recipe.lora import LoraConfig, stage_lora
from tagtune.train.state import load_weights, trained_weights

ADAPTER = "default"
"""peft's adapter name: state keys read `<layer>.lora_A.default.weight`."""
COMPONENTS = {"unet": "unet", "text_encoder": "te1", "text_encoder_2": "te2"}
"""tagtune's trainable module name -> the LoRA component name of `lora_format`."""
LORA_MARK = ".lora_"


def stage_lrs(stage: Any) -> dict[str, float]:
    """Learning rate per trainable module of a stage."""
    return {
        "unet": stage.lr_unet,
        "text_encoder": stage.lr_text_encoder,
        "text_encoder_2": stage.lr_text_encoder_2,
    }


def target_category(component: str, path: str) -> str:
    """Which `LoraConfig.targets` entry a targetable layer belongs to."""
    if ".ff." in path or ".mlp." in path:
        return "feed_forward"
    if component == "unet" and ".attentions." not in path:
        return "convs"
    return "attention"


def target_paths(components: Any, lora: LoraConfig) -> dict[str, list[str]]:
    """Module paths to give a LoRA, per trainable module name (all of them, lr aside)."""
    convs = "convs" in lora.targets
    out: dict[str, list[str]] = {name: [] for name in COMPONENTS}
    by_component = {c: n for n, c in COMPONENTS.items()}
    for component, path in lora_targets(components, convs=convs).values():
        if target_category(component, path) in lora.targets:
            out[by_component[component]].append(path)
    return {name: sorted(paths) for name, paths in out.items()}


def _peft_config(module: torch.nn.Module, paths: list[str], lora: LoraConfig) -> Any:
    from peft import LoraConfig as PeftLoraConfig

    conv_rank, conv_alpha = lora.conv_dims
    spatial = [
        p
        for p in paths
        if isinstance(m := module.get_submodule(p), torch.nn.Conv2d) and m.kernel_size != (1, 1)
    ]
    return PeftLoraConfig(
        r=lora.rank,
        lora_alpha=lora.scale_alpha,
        lora_dropout=lora.dropout,
        target_modules=paths,
        use_dora=lora.dora,
        rank_pattern={f"^{p}$": conv_rank for p in spatial},
        alpha_pattern={f"^{p}$": conv_alpha for p in spatial},
        init_lora_weights=True,
    )


def key_seed(*key: int | str) -> int:
    """A seed from a tuple key (stable across runs, processes and machines)."""
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def init_seed(seed: int, stage_index: int, name: str) -> int:
    """The seed of a module's LoRA initialisation: the same on every process and every run."""
    return key_seed("lora-init", seed, stage_index, name)


@contextlib.contextmanager
def dropout_draws(stage: Any, key: tuple[int, ...], rank: int, device: torch.device):
    """Key the LoRA dropout of one micro-batch's forward pass by (seed, stage, step, micro-batch,
    process): peft's dropout draws from torch's global RNG, which is seeded from the key here
    and put back afterwards, so a resumed run drops what the uninterrupted one dropped. A
    no-op for a full stage and for a LoRA without dropout."""
    lora = stage_lora(stage)
    if lora is None or not lora.dropout:
        yield
        return
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(key_seed("lora-dropout", *key, rank))
        yield


def add_adapters(
    components: Any, stage: Any, seed: int = 0, stage_index: int = 0, deepspeed: bool = False
) -> list[str]:
    """Put the stage's LoRA on each module with lr > 0 (no-op for a full stage).

    Down weights start from peft's Kaiming draw, seeded by (seed, stage, module) so every
    process starts alike; up weights start at 0, so the model starts unchanged. Returns the
    names of the modules that got adapters.
    """
    lora = stage_lora(stage)
    if lora is None:
        return []
    if deepspeed:
        raise TrainingError(
            f"stage {stage.name!r} is a LoRA stage: it trains without DeepSpeed (one process or "
            "DDP); its optimizer state is a few MB, nothing ZeRO-2 would need to shard",
            field="method", value="lora",
        )  # fmt: skip
    from peft import inject_adapter_in_model

    paths = target_paths(components, lora)
    lrs = stage_lrs(stage)
    done = []
    for name in COMPONENTS:
        module = getattr(components, name)
        if lrs[name] <= 0 or not paths[name] or has_adapters(module):
            continue
        devices = [module.device] if getattr(module, "device", None) else []
        cuda = [d for d in devices if torch.device(d).type == "cuda"]
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(init_seed(seed, stage_index, name))
            inject_adapter_in_model(_peft_config(module, paths[name], lora), module, ADAPTER)
        done.append(name)
    return done


def _tuner_layers(module: torch.nn.Module) -> list[tuple[str, Any]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in module.named_modules() if isinstance(m, BaseTunerLayer)]


def has_adapters(module: torch.nn.Module) -> bool:
    """True when peft LoRA layers sit in the module."""
    return any(LORA_MARK in n for n, _ in module.named_parameters())


def trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters a stage trains in this module: its adapters if it has any, else all."""
    if has_adapters(module):
        return [p for n, p in module.named_parameters() if LORA_MARK in n]
    return list(module.parameters())


def merge_adapters(components: Any) -> list[str]:
    """Add every LoRA into its base weight and take the adapter layers out, in place.

    peft's merge (W + alpha / rank x up @ down, or DoRA's rescaled form) in the weights'
    dtype. Returns the names of the modules merged.
    """
    merged = []
    for name in COMPONENTS:
        module = getattr(components, name)
        layers = _tuner_layers(module)
        with torch.no_grad():
            for path, layer in layers:
                layer.merge(adapter_names=[ADAPTER])
                parent, _, child = path.rpartition(".")
                owner = module.get_submodule(parent) if parent else module
                setattr(owner, child, layer.get_base_layer())
        if layers:
            module.requires_grad_(False)
            merged.append(name)
    return merged


def apply_lora_state(components: Any, stage: Any, state: Path) -> list[str]:
    """Merge a finished LoRA stage's final state into the components (the stage chain)."""
    names = add_adapters(components, stage)
    for name in names:
        module = getattr(components, name)
        if not load_weights(state, name, module, keys=trained_weights(module).keys()):
            raise TrainingError(
                f"the final state of LoRA stage {stage.name!r} has no weights for {name}",
                file=Path(state) / f"{name}.safetensors",
            )
    return merge_adapters(components)
