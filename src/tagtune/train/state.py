"""Resumable training state: safetensors + JSON only (never pickle), written atomically.

A state folder `states/step-<N>/` holds
- `<module>.safetensors` for every trained module (U-Net, text encoders),
- `optimizer.safetensors` (every tensor of the optimizer state) + `optimizer.json` (the rest),
- `rng.safetensors` (torch/cuda RNG of every process) + `state.json` (counters, data position,
  schedule step, grad scaler, numpy and python RNG of every process),
- under DeepSpeed ZeRO-2, `zero-rank-<r>.safetensors` + `.json` per process (its fp32 shard
  and optimizer state) instead of the optimizer files,
- `COMPLETE`, written last by `tagtune.core.atomic.atomic_dir`; a folder without it is ignored.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tagtune.core.atomic import atomic_dir
from tagtune.core.errors import TrainingError
from tagtune.core.stale_temps import (
    UNKNOWN_OWNER_STALE_S,
    Freed,
    clean_stale_temps_in,
    older_than,
    remove_entry,
)

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_SHARDS_DIR = re.compile(r"^\.step-(\d+)\.shards$")


def _split_tensors(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace every tensor inside `value` (dicts, lists, tuples) by a reference into `tensors`."""
    if torch.is_tensor(value):
        tensors[path] = value.detach().contiguous().cpu()
        return {"__tensor__": path}
    if isinstance(value, dict):
        return {str(k): _split_tensors(v, f"{path}.{k}", tensors) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_split_tensors(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    return value


def _join_tensors(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: _join_tensors(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_tensors(v, tensors) for v in value]
    return value


def flatten_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors (for safetensors) and JSON-able values.

    Tensors may sit anywhere (bitsandbytes keeps quantization maps and absmax beside the
    moments); each is stored under its path and referenced from the JSON side.
    """
    tensors: dict[str, torch.Tensor] = {}
    state = {
        str(pid): _split_tensors(entry, str(pid), tensors) for pid, entry in sd["state"].items()
    }
    groups = _split_tensors(sd["param_groups"], "param_groups", tensors)
    return tensors, {"param_groups": groups, "state": state}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `flatten_optimizer`."""
    state = {int(pid): _join_tensors(entry, tensors) for pid, entry in meta["state"].items()}
    return {"state": state, "param_groups": _join_tensors(meta["param_groups"], tensors)}


def rng_snapshot() -> dict[str, Any]:
    """RNG state of this process: torch, cuda, numpy and python."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def restore_rng(snap: dict[str, Any]) -> None:
    """Put back an RNG snapshot taken by `rng_snapshot` (in this process)."""
    torch.set_rng_state(snap["torch"])
    if snap["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(snap["cuda"])
    n = snap["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = snap["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def save_state(
    states_dir: Path,
    step: int,
    modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
    rngs: list[dict[str, Any]],
    shards: Path | None = None,
) -> Path:
    """Write `states_dir/step-<step>/` atomically (temp folder, fsync, rename, marker).

    `modules` maps names to modules or to their state dicts. Without `optimizer` no
    optimizer files are written; the files in `shards` (each process's DeepSpeed shard) are
    moved into the state before it is marked complete.
    """
    target = Path(states_dir) / f"step-{step}"
    with atomic_dir(target, MARKER) as tmp:
        for name, module in modules.items():
            weights = module.state_dict() if isinstance(module, torch.nn.Module) else module
            sd = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
            save_file(sd, tmp / f"{name}.safetensors")
        if optimizer is not None:
            tensors, opt_meta = flatten_optimizer(optimizer.state_dict())
            save_file(tensors, tmp / "optimizer.safetensors")
            (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
        if shards is not None:
            for file in sorted(Path(shards).iterdir()):
                file.replace(tmp / file.name)
            Path(shards).rmdir()
        rng_tensors: dict[str, torch.Tensor] = {}
        rng_json = []
        for rank, snap in enumerate(rngs):
            rng_tensors[f"{rank}.torch"] = snap["torch"]
            for d, s in enumerate(snap["cuda"]):
                rng_tensors[f"{rank}.cuda.{d}"] = s
            rng_json.append({"numpy": snap["numpy"], "python": snap["python"]})
        save_file(rng_tensors, tmp / "rng.safetensors")
        (tmp / "state.json").write_text(json.dumps({**meta, "rng": rng_json}, indent=1))
    return target


def load_state(
    path: Path,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None,
    rank: int = 0,
) -> dict[str, Any]:
    """Load a state into the modules (and optimizer); restore this rank's RNG; return its meta."""
    path = Path(path)
    for name, module in modules.items():
        load_weights(path, name, module)
    meta = state_meta(path)
    if optimizer is not None:
        opt_meta = json.loads((path / "optimizer.json").read_text())
        optimizer.load_state_dict(
            unflatten_optimizer(load_file(path / "optimizer.safetensors"), opt_meta)
        )
    rng_tensors = load_file(path / "rng.safetensors")
    if f"{rank}.torch" in rng_tensors and rank < len(meta["rng"]):
        cuda = sorted(k for k in rng_tensors if k.startswith(f"{rank}.cuda."))
        restore_rng(
            {
                "torch": rng_tensors[f"{rank}.torch"],
                "cuda": [rng_tensors[k] for k in cuda],
                **meta["rng"][rank],
            }
        )
    return meta


def state_meta(path: Path) -> dict[str, Any]:
    """The `state.json` of a state folder: counters, data position, settings."""
    return json.loads((Path(path) / "state.json").read_text())


def load_weights(path: Path, name: str, module: torch.nn.Module) -> bool:
    """Load `<name>.safetensors` of a state into `module` if the state has it (strict keys)."""
    file = Path(path) / f"{name}.safetensors"
    if not file.is_file():
        return False
    missing, unexpected = module.load_state_dict(load_file(file), strict=False)
    if missing or unexpected:
        raise TrainingError(
            f"state does not fit the model ({len(missing)} missing, {len(unexpected)} unexpected keys)",
            file=file,
        )
    return True


def list_states(states_dir: Path) -> tuple[list[Path], list[Path]]:
    """(complete states oldest first, incomplete ones) under `states_dir`."""
    complete, incomplete = [], []
    if not Path(states_dir).is_dir():
        return complete, incomplete
    found = []
    for p in Path(states_dir).iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
        elif p.name.startswith(".step-") and p.is_dir():
            incomplete.append(p)
    for _, p in sorted(found):
        (complete if (p / MARKER).is_file() else incomplete).append(p)
    return complete, incomplete


def latest_state(states_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest complete state, and one message per incomplete folder skipped."""
    complete, incomplete = list_states(states_dir)
    notes = [f"skipping incomplete state {p} (no {MARKER} marker)" for p in incomplete]
    return (complete[-1] if complete else None), notes


def clean_state_temps(states_dir: Path) -> Freed:
    """Remove what killed saves left under `states_dir`; returns what was freed.

    The temporary `.step-<N>.*.tmp` folders of `atomic_dir` go when the process that wrote
    them is gone (`stale_temps`); the ZeRO `.step-<N>.shards` folders name no owner and go
    when nothing in them changed for `UNKNOWN_OWNER_STALE_S`. Complete states, and folders
    without a marker that are not temporaries, are never touched here.
    """
    freed = clean_stale_temps_in(states_dir, lambda name: _STEP_DIR.match(name) is not None)
    if Path(states_dir).is_dir():
        for p in Path(states_dir).iterdir():
            if _SHARDS_DIR.match(p.name) and older_than(p, UNKNOWN_OWNER_STALE_S):
                freed = freed + remove_entry(p)
    return freed


def prune_states(states_dir: Path, keep_last: int, protect: Path | None = None) -> list[Path]:
    """Remove all but the newest `keep_last` complete states (and leftover temp folders)."""
    complete, incomplete = list_states(states_dir)
    doomed = [p for p in complete[:-keep_last] if p != protect]
    doomed += [p for p in incomplete if p.name.startswith(".")]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed
