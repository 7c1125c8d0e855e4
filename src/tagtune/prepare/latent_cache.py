"""The on-disk latent cache: safetensors shards, per-rank indexes and the current manifest.

Layout, under the workspace's `cache/latents/vae-<first 16 hex of the VAE hash>/`:

- `shard-r<rank>-<seq>.safetensors`: up to 256 latents each, fp16, already SCALED by the VAE
  scaling factor (0.13025), shape [4, h/8, w/8]. Tensor names are cache keys. The header
  metadata holds `tagtune.entries`, a JSON object key -> {post_id, sha256, bucket,
  original_size, crop_top_left, target_size, flipped}, so every shard describes itself.
  Shards are written atomically (temporary name, fsync, rename).
- `index-r<rank>.json`: {"shards": {shard file: [keys]}}, rewritten atomically after each shard,
  so it lists completed shards only. A shard that made it to disk but not to the index (a crash
  between the two renames) is adopted from its own header by the next prepare.
- `manifest.json`: what the latest prepare planned: one entry per image (and per flipped copy)
  with its key and conditioning values. `records()` returns the manifest's entries whose key is
  in a completed shard, so latents of an older bucket setting are never served, while a latent
  whose key is unchanged is reused across settings.

A cache key is `<image sha256>_<W>x<H>_<top>_<left>_<n|f>` (bucket, crop, flip); the VAE hash
is the folder. A changed VAE or bucket therefore never reuses a stale latent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tagtune.core.atomic import atomic_path, write_text_atomic
from tagtune.core.errors import InputError, WorkspaceError
from tagtune.core.stale_temps import Freed, clean_stale_temps, clean_stale_temps_in
from tagtune.models.components import VAE_SCALING_FACTOR
from tagtune.prepare.buckets import CropPlan

CACHE_FORMAT = 1
STORE_DTYPE = torch.float16
"""Latents are stored in fp16 (scaled latents are of order 1: fp16 keeps ~3 decimal digits)."""
SHARD_SIZE = 256
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard-r(\d+)-(\d+)\.safetensors$")


@dataclass(frozen=True)
class LatentRecord:
    """One cached latent and its SDXL micro-conditioning (sizes (h, w), positions (top, left))."""

    post_id: int
    key: str
    bucket: tuple[int, int]
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_size: tuple[int, int]
    flipped: bool

    def time_ids(self) -> list[int]:
        """SDXL add_time_ids: original h, w, crop top, left, target h, w."""
        return [*self.original_size, *self.crop_top_left, *self.target_size]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LatentRecord:
        """Inverse of `to_json`."""
        return cls(
            post_id=int(d["post_id"]),
            key=str(d["key"]),
            bucket=(int(d["bucket"][0]), int(d["bucket"][1])),
            original_size=(int(d["original_size"][0]), int(d["original_size"][1])),
            crop_top_left=(int(d["crop_top_left"][0]), int(d["crop_top_left"][1])),
            target_size=(int(d["target_size"][0]), int(d["target_size"][1])),
            flipped=bool(d["flipped"]),
        )


def cache_key(sha256: str, plan: CropPlan) -> str:
    """The cache key of one latent: image content hash, bucket, crop top-left and flip."""
    top, left = plan.crop_top_left
    w, h = plan.bucket
    return f"{sha256}_{w}x{h}_{top}_{left}_{'f' if plan.flipped else 'n'}"


def make_record(post_id: int, sha256: str, plan: CropPlan) -> LatentRecord:
    """The record of one planned latent."""
    return LatentRecord(
        post_id=post_id,
        key=cache_key(sha256, plan),
        bucket=plan.bucket,
        original_size=plan.original_size,
        crop_top_left=plan.crop_top_left,
        target_size=plan.target_size,
        flipped=plan.flipped,
    )


def latents_dir(ws_cache_dir: str | Path, vae_hash: str) -> Path:
    """The cache folder of one VAE inside a workspace's `cache/` folder."""
    return Path(ws_cache_dir) / "latents" / f"vae-{vae_hash[:16]}"


def write_manifest(
    folder: Path, vae_hash: str, records: Sequence[LatentRecord], settings: dict[str, Any]
) -> None:
    """Record what the current prepare planned (atomic); `settings` is the bucket config etc."""
    data = {
        "format": CACHE_FORMAT,
        "vae_hash": vae_hash,
        "scaling_factor": VAE_SCALING_FACTOR,
        "store_dtype": str(STORE_DTYPE).removeprefix("torch."),
        "settings": settings,
        "entries": [r.to_json() for r in records],
    }
    clean_stale_temps(folder / MANIFEST)
    write_text_atomic(folder / MANIFEST, json.dumps(data, separators=(",", ":")))


def read_index(folder: Path) -> dict[str, list[str]]:
    """Completed shards of every rank: shard file name -> keys."""
    shards: dict[str, list[str]] = {}
    for path in sorted(folder.glob("index-r*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WorkspaceError(
                f"latent cache index is unreadable: {exc}",
                file=path,
                hint="delete the folder and run `tagtune prepare` again",
            ) from None
        shards.update(data.get("shards", {}))
    return shards


def shard_entries(path: Path) -> dict[str, dict[str, Any]]:
    """The entries a shard's header describes (key -> conditioning values), header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata() or {}
    return json.loads(meta.get("tagtune.entries", "{}"))


class ShardWriter:
    """Collects encoded latents of one rank and writes them as atomic safetensors shards."""

    def __init__(self, folder: Path, rank: int, vae_hash: str, shard_size: int = SHARD_SIZE):
        self.folder = folder
        self.rank = rank
        self.vae_hash = vae_hash
        self.shard_size = shard_size
        self.index_path = folder / f"index-r{rank}.json"
        self.shards: dict[str, list[str]] = {}
        if self.index_path.exists():
            self.shards = json.loads(self.index_path.read_text(encoding="utf-8"))["shards"]
        self._pending: dict[str, torch.Tensor] = {}
        self._entries: dict[str, dict[str, Any]] = {}
        self.shards_written = 0
        self.freed = self._clean_stale_temps()
        self._seq = self._adopt_orphans()

    def _clean_stale_temps(self) -> Freed:
        """Remove the temporaries killed writes of this rank's shards and index left."""
        mine = re.compile(rf"^shard-r{self.rank}-\d+\.safetensors$")
        index = self.index_path.name
        return clean_stale_temps_in(
            self.folder, lambda name: name == index or mine.match(name) is not None
        )

    def _adopt_orphans(self) -> int:
        """Add this rank's complete-but-unindexed shards to the index; return the next number."""
        last = 0
        adopted = False
        for path in sorted(self.folder.glob(f"shard-r{self.rank}-*.safetensors")):
            m = _SHARD_RE.match(path.name)
            if not m:
                continue
            last = max(last, int(m.group(2)))
            if path.name not in self.shards:
                try:
                    self.shards[path.name] = sorted(shard_entries(path))
                    adopted = True
                except Exception:  # noqa: BLE001 - a broken orphan is simply re-encoded
                    continue
        if adopted:
            self._write_index()
        return last + 1

    def _write_index(self) -> None:
        data = {"format": CACHE_FORMAT, "vae_hash": self.vae_hash, "shards": self.shards}
        write_text_atomic(self.index_path, json.dumps(data, separators=(",", ":")))

    def add(self, record: LatentRecord, sha256: str, latent: torch.Tensor) -> None:
        """Queue one scaled latent [4, h/8, w/8]; a full shard is written at once."""
        entry = record.to_json()
        entry["sha256"] = sha256
        self._pending[record.key] = latent.detach().to("cpu", STORE_DTYPE).contiguous()
        self._entries[record.key] = entry
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Write what is queued as one shard, then list it in this rank's index."""
        if not self._pending:
            return
        from safetensors.torch import save_file

        name = f"shard-r{self.rank}-{self._seq:06d}.safetensors"
        meta = {
            "tagtune.format": str(CACHE_FORMAT),
            "tagtune.vae_hash": self.vae_hash,
            "tagtune.entries": json.dumps(self._entries, separators=(",", ":")),
        }
        with atomic_path(self.folder / name) as tmp:
            save_file(self._pending, str(tmp), metadata=meta)
        self.shards[name] = sorted(self._pending)
        self._write_index()
        self._seq += 1
        self.shards_written += 1
        self._pending, self._entries = {}, {}


class LatentCache:
    """Read side of the cache: records of the current manifest, their latents and time ids."""

    def __init__(self, folder: Path, manifest: dict[str, Any], shards: dict[str, list[str]]):
        self.folder = folder
        self.manifest = manifest
        self.vae_hash: str = manifest["vae_hash"]
        self._shard_of = {k: name for name, keys in shards.items() for k in keys}
        self._planned = [LatentRecord.from_json(e) for e in manifest["entries"]]
        self._handles: dict[str, Any] = {}

    def records(
        self, post_ids: Iterable[int] | None = None, include_flipped: bool = False
    ) -> list[LatentRecord]:
        """Completed latents of the current manifest, sorted by (post_id, flipped).

        `post_ids` keeps only those posts; flipped copies only with `include_flipped`.
        """
        wanted = None if post_ids is None else set(post_ids)
        out = [
            r
            for r in self._planned
            if r.key in self._shard_of
            and (include_flipped or not r.flipped)
            and (wanted is None or r.post_id in wanted)
        ]
        return sorted(out, key=lambda r: (r.post_id, r.flipped))

    def missing(self, post_ids: Iterable[int] | None = None) -> list[int]:
        """Post ids (of `post_ids`, default every planned post) with no completed latent."""
        done = {r.post_id for r in self.records()}
        ids = {r.post_id for r in self._planned} if post_ids is None else set(post_ids)
        return sorted(ids - done)

    def _handle(self, shard: str) -> Any:
        if shard not in self._handles:
            from safetensors import safe_open

            self._handles[shard] = safe_open(str(self.folder / shard), framework="pt")
        return self._handles[shard]

    def load(self, records: Sequence[LatentRecord]) -> torch.Tensor:
        """Latents of `records` as one float32 batch [B, 4, h/8, w/8], SCALED (ready for noise).

        Every record must come from the same bucket (batches never mix buckets).
        """
        if not records:
            raise InputError("no records to load", field="records")
        buckets = {r.bucket for r in records}
        if len(buckets) > 1:
            raise InputError(
                "a batch mixes buckets",
                field="records",
                value=sorted(buckets),
                allowed="records of one bucket",
            )
        tensors = []
        for r in records:
            shard = self._shard_of.get(r.key)
            if shard is None:
                raise WorkspaceError(
                    "latent not in the cache",
                    file=self.folder,
                    field="key",
                    value=r.key,
                    hint="run `tagtune prepare WS`",
                )
            tensors.append(self._handle(shard).get_tensor(r.key))
        return torch.stack(tensors).to(torch.float32)

    def time_ids(self, records: Sequence[LatentRecord]) -> torch.Tensor:
        """SDXL time ids [B, 6] float32: original h, w, crop top, left, target h, w."""
        return torch.tensor([r.time_ids() for r in records], dtype=torch.float32).reshape(-1, 6)

    def close(self) -> None:
        """Drop the open shard handles."""
        self._handles.clear()

    def __len__(self) -> int:
        return len(self.records(include_flipped=True))


def open_latent_cache(ws_cache_dir: Path, vae_hash: str) -> LatentCache:
    """The latent cache of one VAE in a workspace's `cache/` folder (as the last prepare left it).

    `vae_hash` is `vae_fingerprint(vae)`, or at least its first 16 hex (the folder name).
    """
    folder = latents_dir(ws_cache_dir, vae_hash)
    path = folder / MANIFEST
    if not path.is_file():
        raise WorkspaceError(
            "no latent cache for this VAE", file=folder, hint="run `tagtune prepare WS` first"
        )
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if len(vae_hash) < 16 or not str(manifest.get("vae_hash", "")).startswith(vae_hash):
        raise WorkspaceError(
            "latent cache belongs to another VAE",
            file=path,
            field="vae_hash",
            value=manifest.get("vae_hash"),
            allowed=vae_hash,
        )
    return LatentCache(folder, manifest, read_index(folder))
