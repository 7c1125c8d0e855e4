"""Merge single-file SDXL checkpoints tensor by tensor: weighted sum, add difference, per block.

- weighted-sum: (1 - w) * A + w * B
- add-difference: A + w * (B - C)

w is `alpha`, or with `blocks` the weight of the tensor's block (see `merge_blocks`);
both text encoders take `text_encoder_alpha` when given (else the BASE weight / alpha),
and `vae="a"|"b"` copies one parent's VAE unchanged. Math runs in fp32 per tensor and
is stored in A's dtype (or `dtype`). Only one tensor of each input is in memory at a
time: the output header is written first, then tensor bytes are appended, and the
parents' SHA-256 (for the AutoV2 names in the metadata) is computed from the same reads.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tagtune.atomic import atomic_path
from tagtune.errors import InputError, ModelFileError
from tagtune.merge_blocks import BLOCK_INDEX, block_of, parse_blocks, part_of
from tagtune.merge_io import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    Background,
    Header,
    Reader,
    Slots,
    encode_header,
    read_header,
    shape_text,
    to_tensor,
)

MODES = ("weighted-sum", "add-difference")
DEFAULT_ALPHA = 0.3
MAX_LISTED = 5
CHUNK = 1 << 16  # elements per fp32 slice and torch thread (256 KiB: stays in L2)
_PLACEHOLDER = "0" * 10
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
            parse_blocks(list(self.blocks))
        for name in ("alpha", "text_encoder_alpha"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise InputError(
                    "weight must be a finite number", field=f"--{name.replace('_', '-')}", value=v
                )
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
    """Write the merged values into `out` (flat, output dtype), computed in fp32 per slice.

    Slices of CHUNK elements keep the fp32 temporaries in the CPU cache, so the merge costs
    about one pass over the inputs instead of several over full-size fp32 copies.
    """
    flats = [t.reshape(-1) for t in tensors]
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


def _copy_into(readers: list[Reader], index: int, key: str, buf: memoryview, dtype: str) -> None:
    """One parent's tensor unchanged into `buf` (converted only when the dtype differs)."""
    src = readers[index]
    info = src.header.tensors[key]
    raw = src.read_bytes(info)
    if info.dtype == dtype:
        buf[:] = raw
    elif len(buf):
        to_tensor(buf, dtype, (-1,)).copy_(to_tensor(raw, info.dtype, info.shape).reshape(-1))
    for i, r in enumerate(readers):
        if i != index:
            r.skip(key)


def merge_checkpoints(
    a: str | Path,
    b: str | Path,
    out: str | Path,
    spec: MergeSpec,
    c: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    hash_parents: bool = True,
) -> MergeResult:
    """Merge checkpoints A and B (and C for add-difference) into `out`, streaming.

    Why streaming: SDXL files are ~7 GB each; peak memory stays near the largest tensor.
    `progress(done_bytes, total_bytes)` is called after each tensor. With `hash_parents`
    (default) the metadata names each parent's AutoV2, hashed from the same reads on
    background threads; without it only the file names are recorded (faster).
    """
    start = time.perf_counter()
    spec.validate(c is not None)
    paths = [Path(a), Path(b)] + ([Path(c)] if c is not None else [])
    out = Path(out)
    if out.exists() and any(out.resolve() == p.resolve() for p in paths if p.exists()):
        raise InputError("the output would overwrite an input checkpoint", file=out)
    headers = [read_header(p) for p in paths]
    check_same_architecture(headers)
    ha = headers[0]
    keys = sorted(ha.tensors, key=lambda k: ha.tensors[k].start)
    plan = {k: _plan(spec, ha, k) for k in keys}
    entries = [(k, _out_dtype(spec, ha.tensors[k].dtype), ha.tensors[k].shape) for k in keys]
    roles = ["a", "b", "c"]
    parents = [
        {"role": r, "file": h.path.name, **({"autov2": _PLACEHOLDER} if hash_parents else {})}
        for r, h in zip(roles, headers, strict=False)
    ]
    header_bytes, sizes = encode_header(entries, _metadata(spec, ha, out, parents))
    total = sum(sizes)

    readers = [Reader(h, hash_file=hash_parents) for h in headers]
    shas: list[str] = []
    merged = copied = done = 0
    try:
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            fh.write(header_bytes)
            out_slots = Slots(2)
            writer = Background(fh.write, out_slots.release)
            scratch = _scratch()
            for (key, dtype, _shape), size in zip(entries, sizes, strict=True):
                action, w = plan[key]
                buf = out_slots.take(size)
                if action == "merge":
                    tensors = [r.tensor(key) for r in readers]
                    if size:
                        _merge_into(spec, w, tensors, to_tensor(buf, dtype, (-1,)), scratch)
                    merged += 1
                else:
                    _copy_into(readers, roles.index(action), key, buf, dtype)
                    copied += 1
                writer.put(buf)
                done += size
                if progress:
                    progress(done, total)
            writer.close()
            if hash_parents:
                shas = [r.sha256() for r in readers]
                for p, sha in zip(parents, shas, strict=True):
                    p["autov2"] = sha[:10].upper()
            final = _metadata(spec, ha, out, parents)
            final_header, _ = encode_header(entries, final)
            assert len(final_header) == len(header_bytes), "AutoV2 placeholders keep the length"
            fh.seek(0)
            fh.write(final_header)
            fh.flush()
    finally:
        for r in readers:
            r.close()
    return MergeResult(
        path=out,
        tensors=len(keys),
        merged=merged,
        copied=copied,
        bytes=len(header_bytes) + total,
        seconds=time.perf_counter() - start,
        parents=[{**p, "sha256": sha} for p, sha in zip(parents, shas, strict=False)] or parents,
        metadata=final,
    )
