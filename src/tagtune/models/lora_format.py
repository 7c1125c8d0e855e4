"""The kohya LoRA file format: read, write, validate and apply (what A1111, Forge, ComfyUI load).

One safetensors file; per module NAME (see `tagtune.models.lora_names`):
- `NAME.lora_down.weight`: [rank, in] (linear) or [rank, in, kh, kw] (conv)
- `NAME.lora_up.weight`: [out, rank] (linear) or [out, rank, 1, 1] (conv)
- `NAME.alpha`: a 0-d (or 1-element) tensor; the update is (alpha / rank) * up @ down.
  A file without it means alpha = rank (scale 1), as kohya and ComfyUI read it.
- `NAME.lora_mid.weight` (LyCORIS LoCon with Tucker decomposition, optional):
  [rank, rank, kh, kw], with down [rank, in, 1, 1].

The header metadata (`ss_*` keys kohya tools read, `modelspec.*`) is kept as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tagtune.core.errors import ModelFileError
from tagtune.core.outputs import Inputs, claim_output
from tagtune.models.lora_names import (
    COMPONENTS,
    kohya_name,
    lora_aliases,
    lora_targets,
)
from tagtune.models.safetensors_io import read_header, read_tensor, write_safetensors

__all__ = [
    "LoraModule",
    "apply_lora",
    "kohya_name",
    "delta_shape",
    "lora_delta",
    "lora_targets",
    "map_lora_names",
    "read_lora",
    "write_lora",
]

SUFFIXES = ("lora_down.weight", "lora_up.weight", "alpha", "lora_mid.weight")
SHOWN = 5
"""Unmapped or unknown names listed in an error (the count says how many in all)."""


@dataclass
class LoraModule:
    """One module's low-rank update: (alpha / rank) * up @ (mid) @ down."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    mid: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        """The rank (rows of down)."""
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """alpha / rank: what up @ down is multiplied by."""
        return self.alpha / self.rank


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN else f" ({len(names)} in all)"
    return shown + more


def _check_module(name: str, m: LoraModule, path: Path | str | None = None) -> None:
    def bad(reason: str) -> ModelFileError:
        return ModelFileError(reason, file=path, field=f"module {name}")

    down, up = m.down, m.up
    if down.ndim not in (2, 4) or up.ndim != down.ndim:
        raise bad(f"lora_down {list(down.shape)} and lora_up {list(up.shape)} are not 2-D or 4-D")
    if 0 in down.shape or 0 in up.shape:
        raise bad(f"lora_down {list(down.shape)} or lora_up {list(up.shape)} is empty")
    if up.shape[1] != down.shape[0]:
        raise bad(f"rank differs: lora_down has {down.shape[0]} rows, lora_up {up.shape[1]}")
    if up.ndim == 4 and tuple(up.shape[2:]) != (1, 1):
        raise bad(f"lora_up {list(up.shape)} is not a 1x1 convolution")
    if m.mid is not None:
        if m.mid.ndim != 4 or tuple(m.mid.shape[:2]) != (m.rank, m.rank) or down.ndim != 4:
            raise bad(f"lora_mid {list(m.mid.shape)} does not fit rank {m.rank} (LoCon)")
        if tuple(down.shape[2:]) != (1, 1):
            raise bad(f"lora_down {list(down.shape)} with lora_mid must be 1x1")
    if (
        not isinstance(m.alpha, float | int)
        or not (m.alpha == m.alpha)
        or abs(m.alpha) == float("inf")
    ):
        raise bad(f"alpha {m.alpha!r} is not a finite number")


def write_lora(
    path: str | Path,
    modules: Mapping[str, LoraModule],
    metadata: Mapping[str, str],
    *,
    dtype: torch.dtype = torch.float16,
    force: bool = False,
    inputs: Inputs = (),
    hash_key: str | None = None,
) -> Path:
    """Write `modules` as a kohya LoRA file (atomic; the overwrite rule of `claim_output`).

    Tensors are stored in `dtype`, alpha as a 0-d tensor as kohya writes it; `metadata` goes
    into the header as given. `inputs` are (what, path) pairs the output may never replace;
    with `hash_key` the header gets "0x" + the SHA-256 of the data section under that key.
    """
    path = Path(path)
    for name, m in modules.items():
        _check_module(name, m)
    claim_output(path, force=force, inputs=inputs)
    tensors: dict[str, torch.Tensor] = {}
    for name, m in modules.items():
        tensors[f"{name}.lora_down.weight"] = m.down
        tensors[f"{name}.lora_up.weight"] = m.up
        tensors[f"{name}.alpha"] = torch.tensor(float(m.alpha))
        if m.mid is not None:
            tensors[f"{name}.lora_mid.weight"] = m.mid
    write_safetensors(path, tensors, metadata, cast=dtype, hash_key=hash_key)
    return path


def _split_key(key: str) -> tuple[str, str] | None:
    for suffix in SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def _alpha(t: torch.Tensor, path: Path, name: str) -> float:
    if (
        t.numel() != 1
        or not t.dtype.is_floating_point
        and t.dtype not in (torch.int64, torch.int32)
    ):
        raise ModelFileError(
            f"alpha must be one number, not a {t.dtype} tensor of shape {list(t.shape)}",
            file=path,
            field=f"tensor {name}.alpha",
        )
    return float(t.reshape(()).item())


def read_lora(path: str | Path) -> tuple[dict[str, LoraModule], dict[str, str]]:
    """Read and validate a kohya LoRA file: modules by name, and the header metadata.

    The header is validated before any tensor is read. Keys with a suffix this format does
    not have (a DoRA `dora_scale`, LoHa `hada_*`, ...) and modules lacking down or up are a
    ModelFileError listing them: nothing is ignored silently.
    """
    path = Path(path)
    header = read_header(path)
    parts: dict[str, dict[str, str]] = {}
    unknown: list[str] = []
    for key in header.tensors:
        split = _split_key(key)
        if split is None:
            unknown.append(key)
        else:
            parts.setdefault(split[0], {})[split[1]] = key
    if unknown:
        raise ModelFileError(
            f"not a kohya LoRA: {len(unknown)} tensors with no known suffix "
            f"(first: {_listing(unknown)})",
            file=path,
            allowed=", ".join("NAME." + s for s in SUFFIXES),
        )
    if not parts:
        raise ModelFileError("holds no LoRA module", file=path)
    incomplete = sorted(
        n for n, p in parts.items() if not {"lora_down.weight", "lora_up.weight"} <= set(p)
    )
    if incomplete:
        raise ModelFileError(
            f"{len(incomplete)} modules lack lora_down or lora_up (first: {_listing(incomplete)})",
            file=path,
        )
    modules: dict[str, LoraModule] = {}
    for name in sorted(parts):
        p = parts[name]
        down = read_tensor(header, p["lora_down.weight"])
        up = read_tensor(header, p["lora_up.weight"])
        mid = read_tensor(header, p["lora_mid.weight"]) if "lora_mid.weight" in p else None
        if not (down.dtype.is_floating_point and up.dtype.is_floating_point):
            raise ModelFileError(
                f"lora weights must be floating point, not {down.dtype}/{up.dtype}",
                file=path,
                field=f"module {name}",
            )
        alpha = _alpha(read_tensor(header, p["alpha"]), path, name) if "alpha" in p else None
        m = LoraModule(
            down=down, up=up, alpha=float(down.shape[0]) if alpha is None else alpha, mid=mid
        )
        _check_module(name, m, path)
        modules[name] = m
    return modules, dict(header.metadata)


def delta_shape(m: LoraModule) -> tuple[int, ...]:
    """The shape of the update this module makes: [out, in] or [out, in, kh, kw]."""
    kernel = tuple(m.mid.shape[2:]) if m.mid is not None else tuple(m.down.shape[2:])
    return (int(m.up.shape[0]), int(m.down.shape[1]), *kernel)


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[:2]) if tuple(shape[2:]) in ((), (1, 1)) else tuple(shape)


def _fits(m: LoraModule, shape: tuple[int, ...] | torch.Size) -> bool:
    """Whether the update fits a weight of `shape` (a linear update fits a 1x1 conv too)."""
    return _squeezed(delta_shape(m)) == _squeezed(tuple(shape))


def lora_delta(m: LoraModule, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """(alpha / rank) * up @ (mid) @ down as a float32 tensor of the target weight's `shape`."""
    if not _fits(m, shape):
        raise ModelFileError(
            f"LoRA update of shape {list(delta_shape(m))} does not fit the weight's {list(shape)}"
        )
    up = m.up.float().flatten(1)
    if m.mid is not None:
        # Tucker: W[o, i, h, w] = sum_{a,b} up[o, a] mid[a, b, h, w] down[b, i]
        core = torch.einsum("abhw,bi->aihw", m.mid.float(), m.down.float().flatten(1))
        delta = up @ core.flatten(1)
    else:
        delta = up @ m.down.float().flatten(1)
    return delta.reshape(shape) * m.scale


def map_lora_names(
    names: list[str] | Mapping[str, Any], targets: Mapping[str, tuple[str, str]]
) -> tuple[dict[str, str], list[str]]:
    """Each LoRA name -> the kohya target name it changes, and the names that map to nothing.

    Accepts kohya names and the diffusers-path U-Net names some trainers write.
    """
    aliases = lora_aliases(targets)
    mapped: dict[str, str] = {}
    unmapped: list[str] = []
    for name in names:
        target = name if name in targets else aliases.get(name)
        if target is None:
            unmapped.append(name)
        else:
            mapped[name] = target
    return mapped, unmapped


def unmapped_error(unmapped: list[str], source: str | Path | None = None) -> ModelFileError:
    """The one-line error for LoRA modules this model has no module for."""
    return ModelFileError(
        f"{len(unmapped)} LoRA modules match no module of this SDXL model "
        f"(first: {_listing(sorted(unmapped))}); nothing was applied",
        file=source,
    )


def apply_lora(
    components: Any, loras: list[tuple[dict[str, LoraModule], float]], *, source: str | None = None
) -> list[str]:
    """Add strength * (alpha / rank) * up @ down to each targeted weight, in place.

    Every name of every LoRA is mapped (and every shape checked) before any weight changes;
    a name that maps to no module raises ModelFileError listing them. Returns the kohya
    names applied, in order.
    """
    targets = lora_targets(components, convs=True)
    plan: list[tuple[torch.nn.Parameter, LoraModule, float, str]] = []
    unmapped: list[str] = []
    for modules, strength in loras:
        mapped, missing = map_lora_names(modules, targets)
        unmapped.extend(missing)
        for name, target in mapped.items():
            component, module_path = targets[target]
            module = getattr(components, COMPONENTS[component]).get_submodule(module_path)
            if not _fits(modules[name], tuple(module.weight.shape)):
                raise ModelFileError(
                    f"update of shape {list(delta_shape(modules[name]))} does not fit the "
                    f"weight's {list(module.weight.shape)}",
                    file=source,
                    field=f"module {name}",
                )
            plan.append((module.weight, modules[name], strength, target))
    if unmapped:
        raise unmapped_error(unmapped, source)
    with torch.no_grad():
        for weight, m, strength, _ in plan:
            weight.add_((strength * lora_delta(m, weight.shape)).to(weight.dtype))
    return [name for *_, name in plan]
