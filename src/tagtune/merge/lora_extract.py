"""Extract a kohya LoRA from two single-file checkpoints: the difference TUNED - BASE, module by
module, as a truncated SVD (what sd-scripts' `extract_lora_from_models.py` does).

For each LoRA target (U-Net attention and feed-forward, the text encoders' attention and MLP;
with a conv rank also the resnets' convolutions, down- and upsamplers: LoCon) the difference
D [out, in] (a conv's [out, in, kh, kw] flattened to [out, in*kh*kw]) is factored as
U S Vh (exact, or for a rank far below the module's size the randomized
`torch.svd_lowrank`, which comes near the best truncation at a fraction of the time); the first
`rank` singular triplets give lora_up = U sqrt(S) and lora_down = sqrt(S) Vh
(a conv's down reshaped back to [rank, in, kh, kw], its up to [out, rank, 1, 1]), alpha = rank
(scale 1). A module whose difference is exactly zero (a frozen text encoder) is left out.
The tensors no LoRA targets (norms, biases, embeddings, the VAE) are compared too: those
that differ are counted, as what the LoRA cannot carry.

Streaming: one tensor pair is read at a time through the validated safetensors reader; only
the small factors are kept. The relative Frobenius error ||D - up @ down|| / ||D|| is measured
on the factors as stored (after the cast to the output dtype), per module, per group and over
all modules (the square root of the summed squared residuals over the summed squared norms).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tagtune.core.errors import InputError
from tagtune.core.outputs import claim_output
from tagtune.core.results import Result
from tagtune.merge.checkpoints import check_same_architecture
from tagtune.merge.io import read_parent
from tagtune.models.hashes import file_hashes
from tagtune.models.load import file_configs
from tagtune.models.lora_format import LoraModule, write_lora
from tagtune.models.lora_single_file import check_file_targets, file_targets
from tagtune.models.modelspec import HASH_KEY, modelspec_metadata
from tagtune.models.safetensors_io import Header, read_tensor
from tagtune.models.save import parse_dtype

DEFAULT_RANK = 32
MAX_RANK = 4096
OVERSAMPLE = 8
"""Extra columns of the randomized SVD (`torch.svd_lowrank`) beyond the rank."""
POWER_ITERATIONS = 6
LORA_ARCHITECTURE = "stable-diffusion-xl-v1-base/lora"
GROUPS = (
    ("lora_unet_input_blocks_", "U-Net input"),
    ("lora_unet_middle_block_", "U-Net middle"),
    ("lora_unet_output_blocks_", "U-Net output"),
    ("lora_te1_", "text encoder 1"),
    ("lora_te2_", "text encoder 2"),
)


def group_of(name: str) -> str:
    """The table group of a kohya module name (U-Net input/middle/output, text encoder 1/2)."""
    for prefix, group in GROUPS:
        if name.startswith(prefix):
            return group
    return "other"


@dataclass
class GroupError:
    """How much of the difference one group of modules keeps at its ranks."""

    group: str
    modules: int = 0
    unchanged: int = 0
    ranks: set[int] = field(default_factory=set)
    norm2: float = 0.0
    resid2: float = 0.0

    @property
    def relative_error(self) -> float:
        """||D - up @ down||_F / ||D||_F over the group's modules (0 when D is zero)."""
        return (self.resid2 / self.norm2) ** 0.5 if self.norm2 > 0 else 0.0

    def rank_text(self) -> str:
        """`32`, or `8-64` when the group's modules have several ranks; `-` for none."""
        if not self.ranks:
            return "-"
        lo, hi = min(self.ranks), max(self.ranks)
        return str(lo) if lo == hi else f"{lo}-{hi}"

    def to_json(self) -> dict:
        """The row as plain data."""
        return {
            "group": self.group,
            "modules": self.modules,
            "unchanged": self.unchanged,
            "rank": self.rank_text(),
            "relative_error": self.relative_error,
            "kept": 1.0 - self.relative_error**2 if self.norm2 > 0 else 1.0,
        }


@dataclass
class ExtractResult(Result):
    """What extract-lora wrote: the file, per-group and overall error, the parents."""

    path: Path
    groups: list[GroupError]
    overall: GroupError
    seconds: float
    parents: dict[str, dict[str, str]]
    module_errors: dict[str, float] = field(default_factory=dict)
    other_changed: list[str] = field(default_factory=list)
    """Tensors outside every LoRA target that differ (norms, biases, embeddings, ...)."""

    def to_json(self) -> dict:
        """The result as plain data (`--json`)."""
        return {
            "path": str(self.path),
            "other_changed": len(self.other_changed),
            "groups": [g.to_json() for g in self.groups],
            "overall": self.overall.to_json(),
            "seconds": round(self.seconds, 3),
            "parents": self.parents,
        }


def parse_rank_for(items: Iterable[str]) -> list[tuple[str, int]]:
    """`PATTERN=R` texts -> (glob pattern on kohya names, rank); rank 0 leaves modules out."""
    out = []
    for item in items:
        pattern, sep, value = item.rpartition("=")
        if not sep or not pattern or not value.strip().isdigit():
            raise InputError(
                "is not PATTERN=RANK", field="rank_for", value=item, allowed="e.g. lora_te*=8"
            )
        out.append((pattern, int(value)))
    return out


def _check_rank(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_RANK:
        raise InputError("rank out of range", field=what, value=value, allowed=f"0 to {MAX_RANK}")
    return value


@dataclass(frozen=True)
class RankPlan:
    """The rank of each module: the first matching pattern, else conv or default rank."""

    rank: int
    conv_rank: int
    rank_for: tuple[tuple[str, int], ...]

    def of(self, name: str, conv_only: bool) -> int:
        """The rank for module `name` (`conv_only`: a LoCon target, not in plain LoRA)."""
        for pattern, r in self.rank_for:
            if fnmatch.fnmatchcase(name, pattern):
                return r
        return self.conv_rank if conv_only else self.rank


def _svd(d: torch.Tensor, rank: int, exact: bool) -> tuple[torch.Tensor, ...]:
    """The first `rank` singular triplets of `d`: exact, or randomized for a small rank."""
    if exact or (rank + OVERSAMPLE) * 4 > min(d.shape):
        u, s, vh = torch.linalg.svd(d, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    g = torch.random.fork_rng(devices=[])  # deterministic, and leaves the caller's RNG alone
    with g:
        torch.manual_seed(0)
        u, s, v = torch.svd_lowrank(d, q=rank + OVERSAMPLE, niter=POWER_ITERATIONS)
    return u[:, :rank], s[:rank], v[:, :rank].T


def factor(
    diff: torch.Tensor, rank: int, dtype: torch.dtype, exact: bool = False
) -> tuple[LoraModule, float, float]:
    """Truncated SVD of one difference -> (module, squared norm of D, squared residual).

    `diff` is the weight's shape; the residual is measured on the factors cast to `dtype`.
    """
    d = diff.float().reshape(diff.shape[0], -1)
    rank = min(rank, *d.shape)
    u, s, vh = _svd(d, rank, exact)
    root = s.sqrt()
    up = (u * root).to(dtype)
    down = (root[:, None] * vh).to(dtype)
    resid2 = float((d - up.float() @ down.float()).pow(2).sum())
    norm2 = float(d.pow(2).sum())
    if diff.ndim == 4:
        down = down.reshape(rank, *diff.shape[1:])
        up = up.reshape(*up.shape, 1, 1)
    return LoraModule(down=down, up=up, alpha=float(rank)), norm2, resid2


def _parents(paths: dict[str, Path], hash_parents: bool) -> dict[str, dict[str, str]]:
    out = {}
    for role, path in paths.items():
        entry = {"file": path.name}
        if hash_parents:
            h = file_hashes(path)
            entry.update(sha256=str(h["sha256"]), autov2=str(h["autov2"]))
        out[role] = entry
    return out


COMPARE_BYTES = 8 << 20
"""Bytes compared at a time when looking for changed tensors outside the LoRA targets."""


def _same_bytes(fa, fb, a: int, b: int, n: int, bufs: tuple[bytearray, bytearray]) -> bool:
    for off in range(0, n, COMPARE_BYTES):
        k = min(COMPARE_BYTES, n - off)
        fa.seek(a + off)
        fb.seek(b + off)
        va, vb = memoryview(bufs[0])[:k], memoryview(bufs[1])[:k]
        if fa.readinto(va) != k or fb.readinto(vb) != k or va != vb:
            return False
    return True


def _changed_tensors(ht: Header, hb: Header, keys: list[str]) -> list[str]:
    """The tensors of `keys` that differ between the two files, compared piece by piece
    (two reused buffers: memory stays flat whatever the tensor sizes)."""
    bufs = (bytearray(COMPARE_BYTES), bytearray(COMPARE_BYTES))
    changed = []
    with open(ht.path, "rb") as fa, open(hb.path, "rb") as fb:
        for key in sorted(keys, key=lambda k: ht.tensors[k].begin):
            ia, ib = ht.tensors[key], hb.tensors[key]
            if ia.dtype != ib.dtype:
                same = torch.equal(read_tensor(ht, key).float(), read_tensor(hb, key).float())
            else:
                start_a, start_b = ht.data_start + ia.begin, hb.data_start + ib.begin
                same = _same_bytes(fa, fb, start_a, start_b, ia.nbytes, bufs)
            if not same:
                changed.append(key)
    return changed


def lora_metadata(
    out: Path,
    parents: dict[str, dict[str, str]],
    plan: RankPlan,
    overall: GroupError,
    tuned_meta: dict[str, str],
    description: str,
) -> dict[str, str]:
    """ss_* keys (what kohya tools and model sites read) and ModelSpec keys naming the parents."""
    base, tuned = parents["base"], parents["tuned"]
    meta = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(plan.rank),
        "ss_network_alpha": str(plan.rank),
        "ss_base_model_version": "sdxl_base_v1-0",
        "ss_v2": "False",
        "ss_sd_model_name": base["file"],
        "ss_output_name": out.stem,
        "ss_training_comment": description,
    }
    if base.get("sha256"):
        meta["ss_new_sd_model_hash"] = base["sha256"]
    if plan.conv_rank:
        meta["ss_network_args"] = json.dumps(
            {"conv_dim": str(plan.conv_rank), "conv_alpha": str(plan.conv_rank)}
        )
    record = {
        "tuned": tuned,
        "base": base,
        "rank": plan.rank,
        "conv_rank": plan.conv_rank,
        "rank_for": [list(p) for p in plan.rank_for],
        "relative_error": round(overall.relative_error, 6),
    }
    extra = {
        "modelspec.architecture": LORA_ARCHITECTURE,
        **{k: v for k, v in tuned_meta.items() if k == "modelspec.prediction_type"},
        "tagtune.extract_lora": json.dumps(record),
    }
    spec = modelspec_metadata(
        out.stem,
        description=description,
        date=dt.datetime.now(dt.UTC).replace(microsecond=0),
        resolution=tuned_meta.get("modelspec.resolution", "1024x1024"),
        extra=extra,
    )
    return {**meta, **spec}


def extract_lora(
    tuned: str | Path,
    base: str | Path,
    out: str | Path,
    *,
    rank: int | None = None,
    rank_for: Iterable[tuple[str, int]] = (),
    conv_rank: int | None = None,
    dtype: str | None = None,
    force: bool = False,
    hash_parents: bool = True,
    exact: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ExtractResult:
    """Write TUNED - BASE as a kohya LoRA at `out` (see the module doc); return the errors.

    `rank` (default 32) is every module's rank, `conv_rank` (default 0: none) the rank of
    the LoCon targets, `rank_for` (glob pattern on kohya names, rank) pairs override both,
    first match wins, rank 0 leaves a module out. Ranks above a module's full rank are cut
    to it. A rank under a quarter of a module's size uses a randomized SVD (much faster, near
    the best truncation), unless `exact`; the errors reported are measured either way.
    `progress(done, total)` after each module.
    """
    start = time.perf_counter()
    tuned, base, out = Path(tuned), Path(base), Path(out)
    plan = RankPlan(
        _check_rank("rank", DEFAULT_RANK if rank is None else rank),
        _check_rank("conv_rank", conv_rank or 0),
        tuple((p, _check_rank("rank_for", r)) for p, r in rank_for),
    )
    cast = parse_dtype(dtype or "fp16")
    inputs = [("the tuned checkpoint", tuned), ("the base checkpoint", base)]
    claim_output(out, force=force, inputs=inputs)  # before the slow work
    ht, hb = read_parent(tuned), read_parent(base)
    check_same_architecture([ht, hb])
    targets = file_targets(file_configs(tuned), convs=True, source=str(tuned))
    check_file_targets(ht, targets)
    ranks = {n: plan.of(n, t.locon) for n, t in targets.items()}
    for pattern, _ in plan.rank_for:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in targets):
            raise InputError(
                "pattern matches no module (kohya names such as "
                "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q, lora_te1_*)",
                field="rank_for",
                value=pattern,
            )
    todo = sorted(
        (n for n in targets if ranks[n] > 0), key=lambda n: ht.tensors[targets[n].key].begin
    )
    groups: dict[str, GroupError] = {g: GroupError(g) for _, g in GROUPS}
    overall = GroupError("all")
    modules: dict[str, LoraModule] = {}
    errors: dict[str, float] = {}
    cached: tuple[str, torch.Tensor] | None = None
    for i, name in enumerate(todo):
        t = targets[name]
        if cached is None or cached[0] != t.key:
            cached = (t.key, read_tensor(ht, t.key).float() - read_tensor(hb, t.key).float())
        diff = cached[1] if t.rows is None else cached[1][t.rows[0] : t.rows[1]]
        g = groups[group_of(name)]
        if not torch.any(diff):
            g.unchanged += 1
            overall.unchanged += 1
        else:
            module, norm2, resid2 = factor(diff, ranks[name], cast, exact)
            modules[name] = module
            errors[name] = (resid2 / norm2) ** 0.5
            for acc in (g, overall):
                acc.modules += 1
                acc.ranks.add(module.rank)
                acc.norm2 += norm2
                acc.resid2 += resid2
        if progress:
            progress(i + 1, len(todo))
    cached = None
    used = {targets[n].key for n in targets}
    other = [k for k in ht.tensors if k not in used]
    if not modules:
        raise InputError(
            "the two checkpoints do not differ in any LoRA target; nothing to extract",
            file=tuned,
        )
    parents = _parents({"tuned": tuned, "base": base}, hash_parents)
    description = f"LoRA extracted by tagtune from {tuned.name} - {base.name}"
    meta = lora_metadata(out, parents, plan, overall, dict(ht.metadata), description)
    write_lora(out, modules, meta, dtype=cast, force=force, inputs=inputs, hash_key=HASH_KEY)
    return ExtractResult(
        path=out,
        groups=[g for g in groups.values() if g.modules or g.unchanged],
        overall=overall,
        seconds=time.perf_counter() - start,
        parents=parents,
        module_errors=errors,
        other_changed=_changed_tensors(ht, hb, other),
    )
