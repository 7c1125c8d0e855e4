"""Merge single-file SDXL checkpoints tensor by tensor: weighted sum, add difference, per block.

- weighted-sum: (1 - w) * A + w * B
- add-difference: A + w * (B - C)

w is `alpha`, or with `blocks` the weight of the tensor's block (see `merge_blocks`);
both text encoders take `text_encoder_alpha` when given (else the BASE weight / alpha),
and `vae="a"|"b"` copies one parent's VAE unchanged. Math runs in fp32 and is stored in
A's dtype (or `dtype`). Streaming (`merge_io`): tensors go through in pieces of a few MiB,
read ahead on one thread, merged on this one, written behind on another; the output header
is written first (every shape and dtype is known), and the parents' SHA-256 (for the AutoV2
names in the metadata) is computed from the same reads.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tagtune.core.atomic import atomic_path
from tagtune.core.errors import InputError, ModelFileError
from tagtune.core.outputs import claim_output
from tagtune.merge.blocks import BLOCK_INDEX, block_of, parse_blocks, part_of
from tagtune.merge.io import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    OutputWriter,
    PieceReader,
    cut_pieces,
    read_parent,
    to_tensor,
)
from tagtune.models.safetensors_io import Header, encode_header, itemsize

MODES = ("weighted-sum", "add-difference")
DEFAULT_ALPHA = 0.3
MAX_LISTED = 5
CHUNK = 1 << 16  # elements per fp32 slice and torch thread (256 KiB: stays in L2)
_PLACEHOLDER = "0" * 10
LERP_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# A's metadata that describes the architecture (same for every parent), kept in the output
CARRIED_METADATA = ("tagtune.configs", "modelspec.prediction_type")


@dataclass(frozen=True)
class MergeSpec:
    """What to merge and how; `validate` explains any bad combination."""

    mode: str = "weighted-sum"
    alpha: float | None = None
    """Weight of B (weighted-sum) or of B - C (add-difference); default 0.3 without blocks."""
    blocks: tuple[float, ...] | None = None
    """20 weights: BASE, IN00..IN08, M00, OUT00..OUT08 (supermerger's SDXL order)."""
    text_encoder_alpha: float | None = None
    """Weight for both text encoders; default: the BASE weight (or alpha)."""
    vae: str | None = None
    """Copy the VAE of parent "a" or "b" instead of merging it."""
    dtype: str | None = None
    """Output float dtype (fp16, bf16, fp32); default: A's dtype per tensor."""

    def validate(self, has_c: bool) -> None:
        """Raise InputError for an unknown mode, bad weights, or a C that does not fit the mode."""
        if self.mode not in MODES:
            raise InputError(
                "unknown merge mode", field="--mode", value=self.mode, allowed=", ".join(MODES)
            )
        if self.mode == "add-difference" and not has_c:
            raise InputError(
                "add-difference needs a third checkpoint C", field="--mode", value=self.mode
            )
        if self.mode == "weighted-sum" and has_c:
            raise InputError(
                "a third checkpoint C is only used by add-difference",
                field="--mode",
                value=self.mode,
            )
        if self.alpha is not None and self.blocks is not None:
            raise InputError(
                "give --alpha or --blocks, not both", field="--alpha", value=self.alpha
            )
        if self.blocks is not None:
            for v in parse_blocks(list(self.blocks)):
                if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                    raise InputError(
                        f"block weight {v} is outside 0 to 1", field="--blocks",
                        value=",".join(str(b) for b in self.blocks), allowed="numbers from 0 to 1",
                    )  # fmt: skip
        for name in ("alpha", "text_encoder_alpha"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise InputError(
                    "weight must be a number from 0 to 1 (as A1111's merger multiplier)",
                    field=f"--{name.replace('_', '-')}", value=v, allowed="0 to 1",
                )  # fmt: skip
        if self.vae not in (None, "a", "b"):
            raise InputError("unknown VAE source", field="--vae", value=self.vae, allowed="a, b")
        if self.dtype is not None and self.dtype not in DTYPE_NAMES:
            raise InputError(
                "unknown dtype", field="--dtype", value=self.dtype, allowed=", ".join(DTYPE_NAMES)
            )

    @property
    def base_weight(self) -> float:
        """The BASE weight: blocks[0], else alpha, else 0.3."""
        if self.blocks is not None:
            return self.blocks[0]
        return DEFAULT_ALPHA if self.alpha is None else self.alpha

    def weight(self, key: str) -> float:
        """The merge weight of one tensor name."""
        if part_of(key) == "text_encoder" and self.text_encoder_alpha is not None:
            return self.text_encoder_alpha
        if self.blocks is not None:
            return self.blocks[BLOCK_INDEX[block_of(key)]]
        return self.base_weight

    def to_json(self) -> dict:
        """The recipe of the merge, for the output's metadata."""
        return {
            "mode": self.mode,
            "alpha": self.base_weight if self.blocks is None else None,
            "blocks": list(self.blocks) if self.blocks is not None else None,
            "text_encoder_alpha": self.text_encoder_alpha
            if self.text_encoder_alpha is not None
            else self.base_weight,
            "vae": self.vae,
            "dtype": self.dtype,
        }


@dataclass
class MergeResult:
    """What a merge wrote: path, counts, timing, the parents' names and hashes."""

    path: Path
    tensors: int
    merged: int
    copied: int
    bytes: int
    seconds: float
    parents: list[dict[str, str]]
    metadata: dict[str, str] = field(default_factory=dict)


def shape_text(shape: tuple[int, ...]) -> str:
    """`4x320x3x3` (the notation of sdxl-base-keys.tsv); `scalar` for 0-d tensors."""
    return "x".join(str(s) for s in shape) or "scalar"


def check_same_architecture(headers: list[Header]) -> None:
    """Raise ModelFileError when the inputs differ in key set or shapes, listing the first ones."""
    first = headers[0]
    for other in headers[1:]:
        diffs: list[str] = []
        a, b = first.tensors, other.tensors
        an, bn = first.path.name, other.path.name
        for key in sorted(a.keys() | b.keys()):
            if key not in b:
                diffs.append(f"{key} only in {an} ({shape_text(a[key].shape)})")
            elif key not in a:
                diffs.append(f"{key} only in {bn} ({shape_text(b[key].shape)})")
            elif a[key].shape != b[key].shape:
                diffs.append(
                    f"{key} is {shape_text(a[key].shape)} in {an}, {shape_text(b[key].shape)} in {bn}"
                )
        if diffs:
            listed = "; ".join(diffs[:MAX_LISTED])
            more = f"; and {len(diffs) - MAX_LISTED} more" if len(diffs) > MAX_LISTED else ""
            raise ModelFileError(
                f"not the same architecture as {an}: {len(diffs)} tensors differ: {listed}{more}",
                file=other.path,
            )


def _plan(spec: MergeSpec, ha: Header, key: str) -> tuple[str, float]:
    """(action, weight): action is "a", "b" (copy that parent) or "merge"."""
    info = ha.tensors[key]
    if spec.vae and part_of(key) == "vae":
        return spec.vae, 0.0
    if info.dtype not in FLOAT_DTYPES:
        return "a", 0.0
    w = spec.weight(key)
    if w == 0:
        return "a", w
    if w == 1 and spec.mode == "weighted-sum":
        return "b", w
    return "merge", w


def _out_dtype(spec: MergeSpec, src_dtype: str) -> str:
    if spec.dtype and src_dtype in FLOAT_DTYPES:
        return DTYPE_NAMES[spec.dtype]
    return src_dtype


def _metadata(
    spec: MergeSpec, ha: Header, out: Path, parents: list[dict[str, str]]
) -> dict[str, str]:
    names = " and ".join(p["file"] for p in parents)
    carried = {k: ha.metadata[k] for k in CARRIED_METADATA if k in ha.metadata}
    meta = {
        **carried,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ha.metadata.get(
            "modelspec.architecture", "stable-diffusion-xl-v1-base"
        ),
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": out.stem,
        "modelspec.date": dt.date.today().isoformat(),
        "modelspec.description": f"{spec.mode} merge of {names}",
        "modelspec.resolution": ha.metadata.get("modelspec.resolution", "1024x1024"),
        "tagtune.merge": json.dumps({**spec.to_json(), "parents": parents}),
    }
    return meta


def _chunk() -> int:
    """Elements per fp32 slice: 64Ki (256 KiB, stays in L2) per torch thread, at most 1Mi."""
    return min(CHUNK * max(1, torch.get_num_threads()), 1 << 20)


def _scratch() -> list[torch.Tensor]:
    """fp32 slices reused by every `_merge_into` call of one merge."""
    return [torch.empty(_chunk(), dtype=torch.float32) for _ in range(3)]


def _merge_into(
    spec: MergeSpec, w: float, tensors: list[torch.Tensor], out: torch.Tensor, scratch: list
) -> None:
    """Write the merged values into `out` (flat, output dtype), computed in fp32.

    A weighted sum whose inputs and output share one of fp16, bf16 or fp32 is one `lerp`
    into `out` (torch computes reduced floats in fp32 and rounds once: the same bits as the
    general path, about twice as fast). Otherwise slices of CHUNK elements are converted to
    fp32 scratch buffers that stay in the CPU cache, merged in place, and stored.
    """
    flats = [t.reshape(-1) for t in tensors]
    one_dtype = flats[0].dtype == flats[1].dtype == out.dtype
    if spec.mode == "weighted-sum" and one_dtype and out.dtype in LERP_DTYPES:
        torch.lerp(flats[0], flats[1], w, out=out)
        return
    n = flats[0].numel()
    acc, tmp, tmp2 = scratch
    step = acc.numel()
    for s in range(0, n, step):
        e = min(s + step, n)
        a, t = acc[: e - s], tmp[: e - s]
        a.copy_(flats[0][s:e])
        t.copy_(flats[1][s:e])
        if spec.mode == "weighted-sum":
            a.lerp_(t, w)  # a + w (t - a) = (1 - w) a + w t, one pass
        else:
            t2 = tmp2[: e - s]
            t2.copy_(flats[2][s:e])
            a.add_(t.sub_(t2), alpha=w)
        out[s:e].copy_(a)


def _copy_into(src: torch.Tensor, out: torch.Tensor) -> None:
    """One parent's values unchanged into `out` (converted only when the dtype differs)."""
    if src.dtype == out.dtype:
        out.view(torch.uint8).copy_(src.view(torch.uint8))
    else:
        out.copy_(src)


def _compute_threads(helpers: int) -> int:
    """torch threads for the math: the cores the reader, hasher and writer threads leave."""
    return max(1, min(4, (os.cpu_count() or 1) - helpers))


def merge_checkpoints(
    a: str | Path,
    b: str | Path,
    out: str | Path,
    spec: MergeSpec,
    c: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    hash_parents: bool = True,
    force: bool = False,
) -> MergeResult:
    """Merge checkpoints A and B (and C for add-difference) into `out`, streaming.

    Why streaming: SDXL files are ~7 GB each; memory stays at a few small reused buffers
    (see `merge_io`), and reading, hashing, the math and writing overlap on their own threads.
    `progress(done_bytes, total_bytes)` is called after each piece. With `hash_parents`
    (default) the metadata names each parent's AutoV2, hashed from the same reads;
    without it only the file names are recorded (faster). An existing `out` is replaced only
    with `force`, and never when it is a parent (see `outputs.claim_output`).
    """
    start = time.perf_counter()
    spec.validate(c is not None)
    paths = [Path(a), Path(b)] + ([Path(c)] if c is not None else [])
    out = Path(out)
    parents_in = [(f"parent {r.upper()}", p) for r, p in zip("abc", paths, strict=False)]
    claim_output(out, force=force, inputs=parents_in)
    headers = [read_parent(p) for p in paths]
    check_same_architecture(headers)
    ha = headers[0]
    keys = sorted(ha.tensors, key=lambda k: ha.tensors[k].begin)
    plan = {k: _plan(spec, ha, k) for k in keys}
    out_dtype = {k: _out_dtype(spec, ha.tensors[k].dtype) for k in keys}
    entries = [(k, out_dtype[k], ha.tensors[k].shape) for k in keys]
    roles = ["a", "b", "c"]
    parents = [
        {"role": r, "file": h.path.name, **({"autov2": _PLACEHOLDER} if hash_parents else {})}
        for r, h in zip(roles, headers, strict=False)
    ]
    header_bytes, sizes = encode_header(entries, _metadata(spec, ha, out, parents))
    total = sum(sizes)
    sources = {
        k: tuple(range(len(headers))) if act == "merge" else (roles.index(act),)
        for k, (act, _w) in plan.items()
    }
    numel = {k: math.prod(ha.tensors[k].shape) for k in keys}
    pieces = cut_pieces(keys, numel, sources)
    merged = sum(act == "merge" for act, _ in plan.values())
    threads = torch.get_num_threads()
    torch.set_num_threads(_compute_threads(2 + (len(headers) if hash_parents else 0)))
    reader = PieceReader(headers, pieces, hash_files=hash_parents)
    shas: list[str] = []
    done = 0
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            fh.write(header_bytes)
            writer = OutputWriter(fh, len(header_bytes))
            scratch = _scratch()
            for piece, tensors in reader:
                dtype = out_dtype[piece.key]
                slot, buf = writer.take(piece.numel * itemsize(dtype))
                dst = to_tensor(buf, dtype)
                action, w = plan[piece.key]
                if action == "merge":
                    _merge_into(spec, w, [tensors[i] for i in piece.sources], dst, scratch)
                else:
                    _copy_into(tensors[piece.sources[0]], dst)
                writer.put(slot, buf)
                done += len(buf)
                if progress:
                    progress(done, total)
            writer.close()
            if hash_parents:
                shas = [reader.sha256(i) for i in range(len(headers))]
                for p, sha in zip(parents, shas, strict=True):
                    p["autov2"] = sha[:10].upper()
            final = _metadata(spec, ha, out, parents)
            final_header, _ = encode_header(entries, final)
            assert len(final_header) == len(header_bytes), "AutoV2 placeholders keep the length"
            fh.seek(0)
            fh.write(final_header)
            fh.flush()
    finally:
        reader.close()
        torch.set_num_threads(threads)
    return MergeResult(
        path=out,
        tensors=len(keys),
        merged=merged,
        copied=len(keys) - merged,
        bytes=len(header_bytes) + total,
        seconds=time.perf_counter() - start,
        parents=[{**p, "sha256": sha} for p, sha in zip(parents, shas, strict=False)] or parents,
        metadata=final,
    )
