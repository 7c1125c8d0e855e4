"""Validation: held-out images, their fixed draws, the validation loss and the conditioning gap.

Held-out set. Chosen once per run, before any stage: the captioned posts with a cached latent
that are not excluded (or those of the `[validation] subset`), ranked by sha256(seed, post id),
the first N kept (rules in `held_out_size`). Every stage trains without them, favorites included.

Fixed draws. Each held-out image gets `timesteps` timesteps, one in each equal slice of
[0, 1000), and their noise, from its own generator keyed by ("validation", seed, post id):
every evaluation sees the same inputs, so curves compare, and no training generator is
touched, so a resumed run stays bit-identical.

Loss. The training forward pass (`tagtune.train.loss.diffusion_loss`: same noising, prediction
type and target), in eval mode without gradients, as plain MSE: no min-SNR weighting and no
offset noise, so stages with different loss settings are measured on one scale. The loss is
the mean over held-out images and their timesteps.

Conditioning gap. The same images, noise and timesteps, with another held-out image's caption
(the next image in the seeded order whose caption differs from its own): (wrong - right) /
right. Near 0 the model ignores its captions; rising, it learns them. None with fewer than two
held-out images.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tagtune.core.catalog import check_subset, open_catalog, subset_where
from tagtune.core.errors import TrainingError
from tagtune.core.subsets import SubsetOrigin
from tagtune.recipe.model import Recipe
from tagtune.recipe.validation import ValidationConfig
from tagtune.train.data import keyed_generator
from tagtune.train.loss import diffusion_loss, training_scheduler
from tagtune.train.runtime import Runtime

NUM_TRAIN_TIMESTEPS = 1000
EVALUATION_KEYS = ("step", "epoch", "loss", "loss_wrong_caption", "conditioning_gap", "seconds")


@dataclass(frozen=True)
class HeldOutImage:
    """One held-out image: its post, its caption, and the caption it is also measured with."""

    post_id: int
    caption: str
    wrong_caption: str | None
    record: Any


def held_out_size(cfg: ValidationConfig, posts: int) -> int:
    """How many of `posts` candidate posts to hold out.

    A subset holds out all of its posts; `count` that many; otherwise floor(share x posts).
    Never more than max_images, and (share, count) never more than half the posts, so
    training always keeps most of a small collection.
    """
    if not cfg.active or posts <= 0:
        return 0
    if cfg.subset.strip():
        return min(posts, cfg.max_images)
    wanted = cfg.count if cfg.count else math.floor(cfg.share * posts + 1e-9)
    return max(0, min(wanted, cfg.max_images, posts // 2))


def seeded_rank(seed: int, post_id: int) -> bytes:
    """Sort key of a post in the held-out choice: stable, independent of id order."""
    return hashlib.sha256(f"validation:{seed}:{post_id}".encode()).digest()


def choose_held_out(ws: Any, recipe: Recipe, latents: Any) -> list[HeldOutImage]:
    """The run's held-out images, in their seeded order (deterministic from catalog + recipe).

    Candidates are the captioned posts of the validation subset (default: all posts) that
    have a cached latent (posts without one are not trained on either).
    """
    cfg = recipe.validation
    if not cfg.active:
        return []
    subset = cfg.subset.strip() or "all"
    with open_catalog(ws.catalog_path, read_only=True) as con:
        check_subset(con, subset, SubsetOrigin("validation.subset", ws.recipe_path))
        rows = con.execute(
            "SELECT c.post_id, c.caption FROM captions c JOIN posts ON posts.id = c.post_id "
            f"WHERE {subset_where(subset)} ORDER BY c.post_id"
        ).fetchall()
    captions = dict(rows)
    records = {r.post_id: r for r in latents.records(list(captions), include_flipped=False)}
    pool = sorted(records, key=lambda p: seeded_rank(cfg.seed, p))
    chosen = pool[: held_out_size(cfg, len(pool))]
    wrong = wrong_captions([captions[p] for p in chosen])
    return [HeldOutImage(p, captions[p], w, records[p]) for p, w in zip(chosen, wrong, strict=True)]


def wrong_captions(captions: Sequence[str]) -> list[str | None]:
    """For each caption, the next one in the list (cyclically) that differs from it.

    The same one when all are equal; None for a list of fewer than two.
    """
    n = len(captions)
    if n < 2:
        return [None] * n
    out: list[str | None] = []
    for i, own in enumerate(captions):
        others = [captions[(i + k) % n] for k in range(1, n)]
        out.append(next((c for c in others if c != own), others[0]))
    return out


def fixed_draws(
    seed: int, post_id: int, timesteps: int, shape: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps [K] (one per equal slice of [0, 1000)) and noise [K, *shape] of one image."""
    gen = keyed_generator("validation", seed, post_id)
    width = NUM_TRAIN_TIMESTEPS / timesteps
    offsets = torch.rand(timesteps, generator=gen, dtype=torch.float64)
    t = ((torch.arange(timesteps, dtype=torch.float64) + offsets) * width).floor().long()
    noise = torch.randn((timesteps, *shape), generator=gen)
    return t.clamp_(0, NUM_TRAIN_TIMESTEPS - 1), noise


class Validator:
    """Evaluates the held-out images of a run: `evaluate(...)` -> one evaluation record."""

    def __init__(
        self,
        images: Sequence[HeldOutImage],
        cfg: ValidationConfig,
        latents: Any,
        runtime: Runtime,
        prediction_type: str = "epsilon",
    ) -> None:
        self.images = list(images)
        self.cfg = cfg
        self.latents = latents
        self.runtime = runtime
        self.prediction_type = prediction_type
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def due_at_step(self, step: int) -> bool:
        """Whether to evaluate after optimizer step `step` (every_n_steps)."""
        return bool(self.cfg.every_n_steps) and step % self.cfg.every_n_steps == 0

    def due_at_epoch(self, epoch: int, epochs: int) -> bool:
        """Whether to evaluate after epoch `epoch` (1-based): every N epochs, and the last."""
        every = self.cfg.every_n_epochs
        return epoch == epochs or bool(every and epoch % every == 0)

    def _inputs(self, image: HeldOutImage) -> tuple[torch.Tensor, torch.Tensor]:
        if image.post_id not in self._cache:
            latent = self.latents.load([image.record])[0]
            time_ids = self.latents.time_ids([image.record])[0]
            self._cache[image.post_id] = (latent, time_ids)
        return self._cache[image.post_id]

    def _rows(self) -> list[list[tuple[HeldOutImage, int, bool]]]:
        """This process's rows (image, timestep index, wrong caption?) in forward batches.

        Images are shared among processes; a batch holds rows of one bucket only.
        """
        rt = self.runtime
        mine = self.images[rt.rank :: rt.world_size]
        by_bucket: dict[Any, list[tuple[HeldOutImage, int, bool]]] = {}
        for wrong in (False, True):
            for image in mine:
                if wrong and image.wrong_caption is None:
                    continue
                rows = by_bucket.setdefault(tuple(image.record.bucket), [])
                rows += [(image, k, wrong) for k in range(self.cfg.timesteps)]
        size = self.cfg.batch_size
        return [
            rows[s : s + size]
            for _, rows in sorted(by_bucket.items())
            for s in range(0, len(rows), size)
        ]

    @torch.no_grad()
    def _loss_sums(self, components: Any, encode: Callable) -> list[float]:
        """[sum of right-caption row losses, rows, sum of wrong-caption row losses, rows]."""
        rt = self.runtime
        scheduler = training_scheduler(components.scheduler_config, self.prediction_type)
        dtype = next(components.unet.parameters()).dtype
        sums = [0.0, 0.0, 0.0, 0.0]
        draws: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for batch in self._rows():
            latents, time_ids, noise, steps, captions = [], [], [], [], []
            for image, k, wrong in batch:
                latent, ids = self._inputs(image)
                if image.post_id not in draws:
                    draws[image.post_id] = fixed_draws(
                        self.cfg.seed, image.post_id, self.cfg.timesteps, latent.shape
                    )
                t, n = draws[image.post_id]
                latents.append(latent)
                time_ids.append(ids)
                noise.append(n[k])
                steps.append(t[k])
                captions.append(image.wrong_caption if wrong else image.caption)
            unique = list(dict.fromkeys(captions))
            index = torch.tensor([unique.index(c) for c in captions])
            with rt.autocast():
                embeds, pooled = encode(unique)
                per_row = diffusion_loss(
                    components.unet,
                    scheduler,
                    torch.stack(latents).to(rt.device, dtype),
                    torch.stack(noise).to(rt.device, dtype),
                    torch.stack(steps).to(rt.device),
                    embeds[index.to(embeds.device)],
                    pooled[index.to(pooled.device)],
                    torch.stack(time_ids).to(rt.device, dtype),
                )
            for (_, _, wrong), value in zip(batch, per_row.double().cpu().tolist(), strict=True):
                sums[2 * wrong] += value
                sums[2 * wrong + 1] += 1
        return sums

    def evaluate(self, components: Any, encode: Callable, step: int, epoch: float) -> dict:
        """Validation loss, wrong-caption loss and conditioning gap of the current weights.

        Every process evaluates its share of the images; the sums are added over processes.
        Modules are put in eval mode for the evaluation and back in their mode after it.
        """
        start = time.perf_counter()
        modules = components.modules()
        modes = {name: m.training for name, m in modules.items()}
        for m in modules.values():
            m.eval()
        try:
            sums = [self.runtime.sum_loss(v) for v in self._loss_sums(components, encode)]
        finally:
            for name, m in modules.items():
                m.train(modes[name])
        right = sums[0] / sums[1] if sums[1] else None
        wrong = sums[2] / sums[3] if sums[3] else None
        gap = (wrong - right) / right if right and wrong is not None else None
        return {
            "step": step,
            "epoch": epoch,
            "loss": right,
            "loss_wrong_caption": wrong,
            "conditioning_gap": gap,
            "seconds": round(time.perf_counter() - start, 3),
        }


def validation_record(images: Sequence[HeldOutImage]) -> dict[str, Any]:
    """The `validation` entry of a stage in run.json, before any evaluation."""
    return {
        "images": len(images),
        "post_ids": sorted(i.post_id for i in images),
        "evaluations": [],
    }


def stage_validation(
    images: Sequence[HeldOutImage],
    previous: dict[str, Any] | None,
    resume_step: int | None,
    stage_dir: Any,
) -> dict[str, Any]:
    """A stage's validation entry: fresh, or on resume the earlier evaluations up to the state.

    Evaluations after the resumed state are dropped: the resumed run repeats them exactly. A
    held-out set that changed since the state was written is a TrainingError (the stage would
    not continue the run that wrote it).
    """
    record = validation_record(images)
    if previous is None or resume_step is None:
        return record
    before = previous.get("validation") or {}
    if before.get("post_ids", record["post_ids"]) != record["post_ids"]:
        raise TrainingError(
            "the held-out images changed since the state was written ([validation] settings, "
            "captions or posts)",
            file=stage_dir,
            hint="restore them, or remove the stage folder to start over",
        )
    record["evaluations"] = [
        e for e in before.get("evaluations") or [] if e.get("step", 0) <= resume_step
    ]
    return record


def held_out_notes(cfg: ValidationConfig, images: Sequence[HeldOutImage]) -> list[str]:
    """What a user should know about the held-out set (too small, no gap, how many)."""
    if not cfg.active:
        return []
    if not images:
        return [
            "validation: no held-out images (the collection is too small for "
            f"share {cfg.share:g}; set [validation] count to hold some out)"
        ]
    note = f"validation: {len(images)} held-out images, never trained on"
    if len(images) < 2:
        note += "; the conditioning gap needs at least 2"
    return [note]


def start_and_end(record: dict[str, Any] | None) -> dict[str, Any]:
    """First and last evaluation of a stage's validation entry and the total evaluation time.

    {"images", "start", "end", "evaluations", "seconds"}; start/end are None without
    evaluations (older run.json files have no validation entry at all).
    """
    record = record or {}
    evals = list(record.get("evaluations") or [])
    return {
        "images": record.get("images", 0),
        "start": evals[0] if evals else None,
        "end": evals[-1] if len(evals) > 1 else None,
        "evaluations": len(evals),
        "seconds": round(sum(e.get("seconds") or 0.0 for e in evals), 3),
    }


def format_gap(gap: float | None) -> str:
    """The conditioning gap as a signed percentage ("+12.34%"), "-" when undefined."""
    return "-" if gap is None else f"{gap * 100:+.2f}%"


def format_loss(loss: float | None) -> str:
    """A loss with 4 decimals, "-" when undefined."""
    return "-" if loss is None else f"{loss:.4f}"


def describe(evaluation: dict[str, Any]) -> str:
    """One line for a user: where, loss, wrong-caption loss, gap, and how long it took."""
    e = evaluation
    return (
        f"validation at step {e['step']} (epoch {e['epoch']:g}): loss {format_loss(e['loss'])}, "
        f"wrong caption {format_loss(e['loss_wrong_caption'])}, "
        f"conditioning gap {format_gap(e['conditioning_gap'])} ({e['seconds']:.1f} s)"
    )


def stage_summary(stage: dict[str, Any]) -> str | None:
    """One line on a stage's validation for the end-of-stage summary; None without evaluations.

    Loss and conditioning gap at the stage's start and end, and the evaluation time with its
    share of the stage's time.
    """
    v = start_and_end(stage.get("validation"))
    if v["start"] is None:
        return None
    first, last = v["start"], v["end"] or v["start"]
    share = v["seconds"] / stage["seconds"] if stage.get("seconds") else 0.0
    return (
        f"{stage['name']}: validation on {v['images']} held-out images, step {first['step']} -> "
        f"{last['step']}: loss {format_loss(first['loss'])} -> {format_loss(last['loss'])}, "
        f"wrong caption {format_loss(first['loss_wrong_caption'])} -> "
        f"{format_loss(last['loss_wrong_caption'])}, conditioning gap "
        f"{format_gap(first['conditioning_gap'])} -> {format_gap(last['conditioning_gap'])}; "
        f"{v['evaluations']} evaluations took {v['seconds']:.1f} s ({share:.1%} of the stage)"
    )
