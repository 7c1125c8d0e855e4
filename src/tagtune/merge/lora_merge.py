"""Bake kohya LoRAs into a single-file SDXL checkpoint: W' = W + sum strength * (alpha/rank) up @ down.

Streaming, like merge: the LoRAs (small) are read and mapped first, every name and shape
checked before anything is written (a module no target matches is an error listing the
unmapped names, never skipped); then the checkpoint goes through one tensor at a time, the
targeted ones changed in fp32 and stored in their own dtype (or `dtype`). Text encoder 2's
q/k/v updates land in row slices of OpenCLIP's fused in_proj_weight. The header names the
checkpoint and each LoRA with its strength and hashes.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tagtune.core.errors import ModelFileError
from tagtune.core.outputs import claim_output
from tagtune.core.results import Result
from tagtune.merge.checkpoints import CARRIED_METADATA
from tagtune.merge.io import read_parent
from tagtune.models.hashes import file_hashes
from tagtune.models.load import file_configs
from tagtune.models.lora_format import (
    LoraModule,
    delta_shape,
    fits_shape,
    lora_delta,
    map_lora_names,
    read_lora,
    unmapped_error,
)
from tagtune.models.lora_single_file import FileTarget, check_file_targets, file_targets
from tagtune.models.modelspec import HASH_KEY, modelspec_metadata
from tagtune.models.safetensors_io import Header, LazyTensor, read_tensor, write_safetensors
from tagtune.models.save import parse_dtype

Update = tuple[FileTarget, LoraModule, float]


@dataclass
class MergeLoraResult(Result):
    """What merge-lora wrote: the file, how many tensors changed, the parents."""

    path: Path
    tensors: int
    changed: int
    modules: int
    seconds: float
    parents: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The result as plain data (`--json`)."""
        return {
            "path": str(self.path),
            "tensors": self.tensors,
            "changed": self.changed,
            "modules": self.modules,
            "seconds": round(self.seconds, 3),
            "parents": self.parents,
        }


def plan_updates(
    targets: dict[str, FileTarget], loras: list[tuple[Path, dict[str, LoraModule], float]]
) -> dict[str, list[Update]]:
    """Single-file tensor name -> the LoRA updates that change it, every name and shape checked.

    Raises ModelFileError for a LoRA module that maps to no target (listing them) or whose
    shape does not fit, before anything is written.
    """
    by_name = {n: (t.component, t.module_path) for n, t in targets.items()}
    updates: dict[str, list[Update]] = {}
    for path, modules, strength in loras:
        mapped, unmapped = map_lora_names(modules, by_name)
        if unmapped:
            raise unmapped_error(unmapped, path)
        for name, target in mapped.items():
            t, m = targets[target], modules[name]
            if not fits_shape(m, t.shape):
                raise ModelFileError(
                    f"update of shape {list(delta_shape(m))} does not fit the weight's "
                    f"{list(t.shape)}",
                    file=path,
                    field=f"module {name}",
                )
            updates.setdefault(t.key, []).append((t, m, strength))
    return updates


def _changed(header: Header, key: str, ups: list[Update], dtype: torch.dtype) -> LazyTensor:
    info = header.tensors[key]

    def load() -> torch.Tensor:
        w = read_tensor(header, key).float()
        for t, m, strength in ups:
            part = w if t.rows is None else w[t.rows[0] : t.rows[1]]
            part.add_(lora_delta(m, part.shape), alpha=strength)
        return w.to(dtype)

    return LazyTensor(dtype, info.shape, load)


def _same(header: Header, key: str) -> LazyTensor:
    info = header.tensors[key]
    return LazyTensor(info.torch_dtype, info.shape, lambda: read_tensor(header, key))


def _hashes(path: Path, on: bool) -> dict[str, str]:
    if not on:
        return {}
    h = file_hashes(path)
    out = {"sha256": str(h["sha256"]), "autov2": str(h["autov2"])}
    if h["autov3"]:
        out["autov3"] = str(h["autov3"])
    return out


def _metadata(header: Header, out: Path, parents: dict) -> dict[str, str]:
    carried = {k: header.metadata[k] for k in CARRIED_METADATA if k in header.metadata}
    names = ", ".join(f"{p['file']} x {p['strength']:g}" for p in parents["loras"])
    description = f"{parents['checkpoint']['file']} with LoRAs baked in: {names}"
    extra = {
        **carried,
        "modelspec.architecture": header.metadata.get(
            "modelspec.architecture", "stable-diffusion-xl-v1-base"
        ),
        "tagtune.merge_lora": json.dumps(parents),
    }
    return modelspec_metadata(
        out.stem,
        description=description,
        date=dt.datetime.now(dt.UTC).replace(microsecond=0),
        resolution=header.metadata.get("modelspec.resolution", "1024x1024"),
        extra=extra,
    )


def merge_loras(
    checkpoint: str | Path,
    loras: Iterable[tuple[str | Path, float]],
    out: str | Path,
    *,
    dtype: str | None = None,
    force: bool = False,
    hash_parents: bool = True,
) -> MergeLoraResult:
    """Write `checkpoint` with each (LoRA file, strength) added, to `out` (see the module doc).

    `dtype` (fp16, bf16, fp32) converts floating tensors; default: each keeps its own.
    `out` replaces an existing file only with `force`, and never an input.
    """
    start = time.perf_counter()
    checkpoint, out = Path(checkpoint), Path(out)
    refs = [(Path(p), float(s)) for p, s in loras]
    if not refs:
        raise ModelFileError("no LoRA given", field="loras", hint="name at least one LoRA file")
    inputs = [("the checkpoint", checkpoint)] + [(f"LoRA {p.name}", p) for p, _ in refs]
    claim_output(out, force=force, inputs=inputs)
    header = read_parent(checkpoint)
    read = [(p, *read_lora(p), s) for p, s in refs]
    targets = file_targets(file_configs(checkpoint), convs=True, source=str(checkpoint))
    updates = plan_updates(targets, [(p, mods, s) for p, mods, _meta, s in read])
    check_file_targets(header, {n: t for n, t in targets.items() if t.key in updates})
    cast = parse_dtype(dtype) if dtype else None
    tensors: dict[str, LazyTensor] = {}
    for key, info in header.tensors.items():
        floating = info.torch_dtype.is_floating_point
        want = cast if cast is not None and floating else info.torch_dtype
        if key in updates:
            tensors[key] = _changed(header, key, updates[key], want)
        else:
            tensors[key] = _same(header, key)
    parents = {
        "checkpoint": {"file": checkpoint.name, **_hashes(checkpoint, hash_parents)},
        "loras": [
            {"file": p.name, "strength": s, "modules": len(mods), **_hashes(p, hash_parents)}
            for p, mods, _meta, s in read
        ],
    }
    write_safetensors(out, tensors, _metadata(header, out, parents), cast=cast, hash_key=HASH_KEY)
    return MergeLoraResult(
        path=out,
        tensors=len(tensors),
        changed=len(updates),
        modules=sum(len(mods) for _, mods, _, _ in read),
        seconds=time.perf_counter() - start,
        parents=parents,
    )
