"""Training examples, deterministic bucket batching, and per-sample random draws.

An example is one cached latent (a post, maybe flipped) with its caption. Batches never mix
buckets. The order of an epoch depends only on (seed, stage index, epoch); every random draw
for one sample of one step (caption shuffle/dropout, timestep, noise) comes from a generator
keyed by (seed, stage index, step, sample position in the global batch). Resuming therefore
needs only the step counter, and the result does not depend on how many processes share the
global batch.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from tagtune.recipe.model import StageConfig
from tagtune.train.caption_draws import draw_tags


@dataclass(frozen=True)
class Example:
    """One training item: post, caption (and its tags in caption order), bucket (w, h), latent
    handle, how many times an epoch shows it (`repeats`: its folder's, sd-scripts' N_concept;
    the stage's repeats multiply it), the group of each tag and the tags dropout never drops
    (`train.caption_draws`)."""

    post_id: int
    caption: str
    tags: tuple[str, ...]
    bucket: tuple[int, int]
    record: Any
    groups: tuple[str, ...] = ()
    protected: frozenset[str] = frozenset()
    repeats: int = 1


class LatentSource(Protocol):
    """Where latents come from: the prepare step's latent cache, or an in-memory one in tests."""

    def load(self, records: Sequence[Any]) -> torch.Tensor:
        """SCALED latents [B, 4, h/8, w/8] of records from one bucket."""
        ...

    def time_ids(self, records: Sequence[Any]) -> torch.Tensor:
        """SDXL micro-conditioning [B, 6] of the records."""
        ...


def keyed_generator(*key: int | str) -> torch.Generator:
    """A CPU generator seeded from a tuple key (stable across runs, processes and machines)."""
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    gen = torch.Generator()
    gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
    return gen


def epoch_batches(
    examples: Sequence[Example],
    batch_size: int,
    repeats: int,
    seed: int,
    stage_index: int,
    epoch: int,
) -> list[list[int]]:
    """Global batches (indices into `examples`) of one epoch, each from one bucket, shuffled.

    Every bucket's items (each `repeats` x its own `Example.repeats` times) are shuffled and cut into batches of `batch_size`;
    a bucket's last batch may be smaller. Then the batch order is shuffled.
    """
    gen = keyed_generator("order", seed, stage_index, epoch)
    by_bucket: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, ex in enumerate(examples):
        by_bucket[ex.bucket].extend([i] * (repeats * ex.repeats))
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        items = by_bucket[bucket]
        perm = torch.randperm(len(items), generator=gen).tolist()
        items = [items[p] for p in perm]
        batches += [items[s : s + batch_size] for s in range(0, len(items), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[o] for o in order]


def group_steps(batches: list[list[int]], accumulation: int) -> list[list[list[int]]]:
    """Optimizer steps of an epoch: runs of `accumulation` batches (the last run may be shorter)."""
    return [batches[s : s + accumulation] for s in range(0, len(batches), accumulation)]


def batches_per_epoch(examples: Sequence[Example], batch_size: int, repeats: int) -> int:
    """Number of global batches one epoch has (the same every epoch)."""
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for ex in examples:
        counts[ex.bucket] += repeats * ex.repeats
    return sum(math.ceil(c / batch_size) for c in counts.values())


def steps_per_epoch(examples: Sequence[Example], stage: StageConfig, world_size: int = 1) -> int:
    """Optimizer steps per epoch for a stage (global batch = batch_size x processes)."""
    n = batches_per_epoch(examples, stage.batch_size * world_size, stage.repeats)
    return math.ceil(n / stage.gradient_accumulation)


def rank_share(batch: list[int], rank: int, world_size: int) -> tuple[int, list[int]]:
    """This process's slice of a global batch: (offset of the slice, indices), split evenly."""
    n = len(batch)
    start = rank * n // world_size
    stop = (rank + 1) * n // world_size
    return start, batch[start:stop]


def transform_caption(
    ex: Example, stage: StageConfig, gen: torch.Generator, sep: str = ", "
) -> str:
    """The caption used for one draw: caption dropout, then tag dropout and shuffle inside the
    caption's movable tags (`tagtune.train.caption_draws`).

    Always draws the same number of values for the same settings, so draws stay in step.
    """
    if stage.caption_dropout and torch.rand((), generator=gen).item() < stage.caption_dropout:
        return ""
    if not (stage.shuffle_captions or stage.tag_dropout) or not ex.tags:
        return ex.caption
    return sep.join(draw_tags(ex.tags, ex.groups, ex.protected, stage, gen))


@dataclass
class Draws:
    """Random inputs of one micro-batch: captions, timesteps [B], noise [B, 4, h, w]."""

    captions: list[str]
    timesteps: torch.Tensor
    noise: torch.Tensor


def sample_draws(
    items: Sequence[Example],
    offset: int,
    latent_shape: tuple[int, int, int],
    stage: StageConfig,
    key: tuple[int, int, int, int],
    num_train_timesteps: int = 1000,
) -> Draws:
    """Draw captions, timesteps and (offset) noise per sample from keyed generators.

    `key` = (seed, stage index, step, micro-batch index); sample i of the slice is at global
    position `offset + i`.
    """
    captions, timesteps, noise = [], [], []
    c, h, w = latent_shape
    for i, ex in enumerate(items):
        gen = keyed_generator("sample", *key, offset + i)
        captions.append(transform_caption(ex, stage, gen))
        timesteps.append(torch.randint(0, num_train_timesteps, (1,), generator=gen))
        n = torch.randn((c, h, w), generator=gen)
        if stage.noise_offset:
            n = n + stage.noise_offset * torch.randn((c, 1, 1), generator=gen)
        noise.append(n)
    return Draws(captions, torch.cat(timesteps), torch.stack(noise))
