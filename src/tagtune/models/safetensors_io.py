"""Safetensors read/write with the header checked before any tensor byte is read.

Format: 8-byte little-endian header length N, N bytes of JSON header (padded with spaces),
then the data section. Every tensor entry names its dtype, shape and [begin, end) offsets
inside the data section. A hostile or truncated file gets a ModelFileError naming the file
and the tensor, never a crash or a huge allocation.

Reading streams one tensor at a time (`iter_tensors`, `lazy_tensors`); writing
(`write_safetensors`) streams too, and can put the SHA-256 of the data section (AutoV3) into
the header metadata: the header is written with a placeholder of the same length, the
data is hashed as it is written, and the placeholder is overwritten at the end.
"""

from __future__ import annotations

import hashlib
import json
import math
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from tagtune.core.atomic import atomic_path
from tagtune.core.errors import ModelFileError
from tagtune.core.untrusted import BadJSON, parse_json

MAX_HEADER_BYTES = 100 * 1024 * 1024
MAX_HEADER_DEPTH = 8
"""A header nests 3 levels (tensor -> entry -> shape); deeper is refused before parsing."""
MAX_DIMS = 16
"""Most dimensions a tensor may have (SDXL's have at most 4)."""

# safetensors dtype code -> torch dtype (item size comes from torch)
DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
CODES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
ITEMSIZE: dict[str, int] = {k: v.itemsize for k, v in DTYPES.items()}
HASH_PLACEHOLDER = "0x" + "0" * 64


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lies: dtype code, shape, [begin, end) inside the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of this tensor."""
        return DTYPES[self.dtype]

    @property
    def nbytes(self) -> int:
        """Size of the tensor's bytes."""
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A validated safetensors header: tensors by name, metadata, where the data starts."""

    path: Path
    data_start: int
    data_size: int
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]

    @property
    def file_size(self) -> int:
        """Size of the whole file (header included) when it was read."""
        return self.data_start + self.data_size


@dataclass(frozen=True)
class LazyTensor:
    """A tensor known by dtype and shape, read (or computed) only when `load()` is called."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    load: Callable[[], torch.Tensor]


def itemsize(code: str) -> int:
    """Bytes per element of a safetensors dtype code (`F16` -> 2)."""
    return ITEMSIZE[code]


def short_repr(value: object, limit: int = 60) -> str:
    """repr() cut to `limit` characters: a hostile value must not make a huge message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(path: Path, reason: str, tensor: str | None = None) -> ModelFileError:
    return ModelFileError(
        reason, file=path, field=f"tensor {short_repr(tensor, 200)}" if tensor else None
    )


def _check_metadata(path: Path, meta: object) -> dict[str, str]:
    if not isinstance(meta, dict):
        raise _fail(path, "__metadata__ is not a JSON object")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise ModelFileError(
                f"__metadata__ values must be strings, not {short_repr(v)}",
                file=path,
                field=f"__metadata__.{short_repr(k)[1:-1]}",
            )
    return meta


def _check_entry(path: Path, name: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _fail(path, "entry must have exactly dtype, shape and data_offsets", name)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:  # a list or object is no dtype
        raise ModelFileError(
            f"unknown dtype {short_repr(dtype)}",
            file=path,
            field=f"tensor {short_repr(name, 200)}",
            allowed=", ".join(DTYPES),
        )
    if not isinstance(shape, list) or not all(
        type(d) is int and d >= 0 for d in shape
    ):  # bool is an int subclass: `type(d) is int` keeps it out
        raise _fail(path, f"shape {short_repr(shape)} is not a list of integers >= 0", name)
    if len(shape) > MAX_DIMS:
        raise _fail(path, f"shape has {len(shape)} dimensions (at most {MAX_DIMS})", name)
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise _fail(
            path, f"data_offsets {short_repr(offsets)} are not two ordered integers >= 0", name
        )
    begin, end = offsets
    if end > data_size:
        raise _fail(
            path,
            f"data_offsets [{begin}, {end}] run past the end of the data section "
            f"({data_size} bytes): truncated or corrupt file",
            name,
        )
    need = math.prod(shape) * itemsize(dtype)
    if end - begin != need:
        raise _fail(
            path,
            f"holds {end - begin} bytes but shape {shape} of {dtype} needs {need}",
            name,
        )
    return TensorInfo(name, dtype, tuple(shape), begin, end)


def read_header(path: str | Path) -> Header:
    """Read and validate the header of a safetensors file, reading no tensor data.

    Checks: length within bounds, JSON object, metadata str->str, each tensor's dtype, shape
    and offsets (inside the data section, sized prod(shape) * itemsize, tiling it exactly).
    """
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise _fail(path, "not a regular file")
        size = info.st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise _fail(path, f"too short for a safetensors file ({size} bytes)")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER_BYTES:
                raise _fail(
                    path, f"header length {n} bytes is over the {MAX_HEADER_BYTES} byte limit"
                )
            if n > size - 8:
                raise _fail(
                    path,
                    f"header length {n} bytes runs past the end of the file ({size} bytes): "
                    "truncated or not a safetensors file",
                )
            raw = fh.read(n)
    except OSError as exc:
        raise ModelFileError(f"cannot read: {exc.strerror or exc}", file=path) from exc
    try:
        header = parse_json(raw, max_depth=MAX_HEADER_DEPTH)
    except BadJSON as exc:
        raise _fail(path, f"header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    data_size = size - 8 - n
    metadata = _check_metadata(path, header.pop("__metadata__", {}))
    tensors = {name: _check_entry(path, name, e, data_size) for name, e in header.items()}
    # The tensors must tile the data section: no overlap, no hole, nothing after the last
    # (as the safetensors library requires; hidden bytes would make a polyglot file)
    last_end, last_name = 0, None
    for info in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if info.begin < last_end:
            raise _fail(
                path,
                f"data_offsets [{info.begin}, {info.end}] overlap tensor {last_name!r}",
                info.name,
            )
        if info.begin > last_end:
            raise _fail(
                path,
                f"data_offsets [{info.begin}, {info.end}] leave bytes {last_end} to "
                f"{info.begin} of the data section unused",
                info.name,
            )
        if info.end > info.begin:
            last_end, last_name = info.end, info.name
    if last_end != data_size:
        raise _fail(
            path,
            f"{data_size - last_end} bytes after the last tensor are not part of any tensor",
        )
    return Header(path, 8 + n, data_size, tensors, metadata)


def _read(fh, header: Header, info: TensorInfo) -> torch.Tensor:
    nbytes = info.end - info.begin
    if nbytes == 0:
        return torch.empty(info.shape, dtype=info.torch_dtype)
    fh.seek(header.data_start + info.begin)
    buf = bytearray(nbytes)
    if fh.readinto(buf) != nbytes:
        raise _fail(header.path, "file ended inside the tensor's data", info.name)
    return torch.frombuffer(buf, dtype=info.torch_dtype).reshape(info.shape)


def iter_tensors(
    path: str | Path, names: list[str] | None = None, header: Header | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) one at a time in file order, after validating the header."""
    header = header or read_header(path)
    infos = [header.tensors[n] for n in names] if names else list(header.tensors.values())
    with open(header.path, "rb") as fh:
        for info in sorted(infos, key=lambda t: t.begin):
            yield info.name, _read(fh, header, info)


def read_tensor(header: Header, name: str) -> torch.Tensor:
    """Read one tensor of a validated file."""
    with open(header.path, "rb") as fh:
        return _read(fh, header, header.tensors[name])


def lazy_tensors(path: str | Path) -> tuple[dict[str, LazyTensor], dict[str, str]]:
    """Every tensor of a file as a LazyTensor (read on demand), plus the header metadata."""
    header = read_header(path)
    lazy = {
        name: LazyTensor(info.torch_dtype, info.shape, lambda name=name: read_tensor(header, name))
        for name, info in header.tensors.items()
    }
    return lazy, dict(header.metadata)


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a safetensors file (validated first) and its metadata."""
    header = read_header(path)
    return dict(iter_tensors(path, header=header)), dict(header.metadata)


def _spec(value: torch.Tensor | LazyTensor, cast: torch.dtype | None) -> tuple[torch.dtype, tuple]:
    dtype = value.dtype
    if cast is not None and dtype.is_floating_point:
        dtype = cast
    return dtype, tuple(value.shape)


def _bytes(
    name: str, value: torch.Tensor | LazyTensor, dtype: torch.dtype, nbytes: int
) -> memoryview:
    t = value.load() if isinstance(value, LazyTensor) else value
    t = t.detach().to(device="cpu", dtype=dtype).contiguous().reshape(-1)
    data = memoryview(t.view(torch.uint8).numpy())
    if data.nbytes != nbytes:  # a LazyTensor that loaded something else than it declared
        raise ModelFileError(f"holds {data.nbytes} bytes, {nbytes} were declared", field=name)
    return data


def encode_header(
    entries: list[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str]
) -> tuple[bytes, list[int]]:
    """Header bytes (length prefix + JSON padded to 8 bytes) for tensors stored in this order.

    `entries` are (name, dtype code, shape); returns the bytes and each tensor's byte size in
    the same order. Empty metadata is left out, as the safetensors library does.
    """
    doc: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    sizes = []
    for name, code, shape in entries:
        nbytes = math.prod(shape) * itemsize(code)
        doc[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        sizes.append(nbytes)
    body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body, sizes


def write_safetensors(
    path: str | Path,
    tensors: Mapping[str, torch.Tensor | LazyTensor],
    metadata: Mapping[str, str] | None = None,
    *,
    cast: torch.dtype | None = None,
    hash_key: str | None = None,
) -> str:
    """Write tensors (sorted by name) atomically; return the SHA-256 of the data section.

    `cast` converts floating-point tensors as they are written (one at a time, so a full
    SDXL checkpoint never exists twice in memory). With `hash_key`, metadata[hash_key] is
    set to "0x" + that SHA-256 (ModelSpec's `modelspec.hash_sha256`, = AutoV3).
    """
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    if hash_key:
        meta[hash_key] = HASH_PLACEHOLDER
    entries: list[tuple[str, str, tuple[int, ...]]] = []
    for name in sorted(tensors):
        dtype, shape = _spec(tensors[name], cast)
        if dtype not in CODES:
            raise ModelFileError(f"dtype {dtype} cannot be stored", field=name)
        entries.append((name, CODES[dtype], shape))
    head, sizes = encode_header(entries, meta)
    raw = head[8:]
    digest = hashlib.sha256()
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(head)
        for (name, code, _), nbytes in zip(entries, sizes, strict=True):
            data = _bytes(name, tensors[name], DTYPES[code], nbytes)
            digest.update(data)
            fh.write(data)
        if hash_key:
            marker = json.dumps({hash_key: HASH_PLACEHOLDER}, separators=(",", ":"))[1:-1]
            at = raw.index(marker.encode("utf-8")) + len(marker) - len(HASH_PLACEHOLDER) - 1
            fh.seek(8 + at)
            fh.write(("0x" + digest.hexdigest()).encode("ascii"))
    return digest.hexdigest()
