"""Cost of validation: seconds per evaluation against seconds per training epoch (tiny SDXL, CPU).

Trains the tiny model through `run_training` on a synthetic workspace with the recipe's
default `[validation]` table (5% held out, capped at 64, 4 fixed timesteps, evaluated at the
stage's start and after every epoch) and prints the evaluation time as a share of an epoch.

    .venv/bin/python benchmarks/validation.py [--images 400] [--epochs 2] [--share 0.05]

An evaluation runs 2 x timesteps forward passes per held-out image (own and wrong caption),
without gradients; an epoch runs a forward and backward pass per training image. The share
therefore falls as the collection grows past 64 / share images (the cap).
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400, help="posts in the collection")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the stage")
    parser.add_argument("--share", type=float, default=0.05, help="[validation] share")
    parser.add_argument("--timesteps", type=int, default=4, help="[validation] timesteps")
    parser.add_argument("--frozen-encoders", action="store_true", help="train the U-Net only")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from tagtune.models.tiny import build_tiny_sdxl
    from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
    from tagtune.train.stages import run_training

    frozen = {"lr_text_encoder": 0.0, "lr_text_encoder_2": 0.0} if args.frozen_encoders else {}
    recipe = tiny_train_recipe(epochs=args.epochs, batch_size=4, **frozen)
    recipe.validation.share = args.share
    recipe.validation.timesteps = args.timesteps
    components = copy.deepcopy(build_tiny_sdxl(0))
    with tempfile.TemporaryDirectory() as tmp:
        ws, latents = make_training_workspace(Path(tmp) / "ws", recipe, n=args.images)
        start = time.perf_counter()
        summary = run_training(ws, components=components, latents=latents, progress=False)
        wall = time.perf_counter() - start
        run = json.loads((ws.runs_dir / "run1" / "run.json").read_text())
    stage = run["stages"][0]
    validation = stage["validation"]
    evals = validation["evaluations"]
    eval_seconds = sum(e["seconds"] for e in evals)
    epoch_seconds = (stage["seconds"] - eval_seconds) / args.epochs
    per_eval = eval_seconds / len(evals)
    trained = "U-Net" if args.frozen_encoders else "U-Net and both text encoders"
    print(
        f"tiny SDXL, CPU, 1 torch thread, 64x64 px (8x8 latents), batch 4, {trained} trained, "
        f"{args.images} posts: {stage['images']} trained, {validation['images']} held out, "
        f"{args.timesteps} timesteps per image"
    )
    print(f"stage:                {summary.ran[0]['steps']} steps, {wall:.1f} s wall")
    print(f"epoch (training):     {epoch_seconds:.2f} s ({stage['steps_per_epoch']} steps)")
    print(f"evaluations:          {len(evals)}, {per_eval:.2f} s each on average")
    print(f"one evaluation:       {100 * per_eval / epoch_seconds:.1f}% of an epoch")
    print(
        f"validation in total:  {100 * eval_seconds / stage['seconds']:.1f}% of the stage's time "
        f"(start + every epoch)"
    )


if __name__ == "__main__":
    main()
