"""A LoRA step against a full step on the tiny SDXL: seconds per step and peak memory.

Each variant runs in its own process (so each peak is its own): the same stage (batch 4,
64 px, in-memory latents, AdamW, U-Net + both text encoders at lr > 0), trained fully or as
a rank-4 LoRA on attention + feed-forward (`--convs` adds LoCon; the tiny model's layers are
16 to 48 wide, so rank 4 is to it what rank 32-128 is to SDXL). Prints the median seconds per
step (after the first), how far the process's peak RSS rose while training (CPU) or
`torch.cuda.max_memory_allocated` (CUDA), the trained tensors and the size of the state.

    .venv/bin/python benchmarks/lora_step.py [--n STEPS] [--rank 4] [--convs] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


class StepClock:
    """Monitor stand-in that records the wall time between optimizer steps."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.t = time.perf_counter()

    def start(self, *a) -> None:
        self.t = time.perf_counter()

    def step(self, *a) -> None:
        t = time.perf_counter()
        self.times.append(t - self.t)
        self.t = t

    def validation(self, *a) -> None:
        pass

    def close(self) -> None:
        pass


def rss_mib() -> float:
    """This process's resident set now (Linux), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run_variant(method: str, n: int, rank: int, convs: bool) -> dict:
    """Train `n` steps of one variant in this process; its figures."""
    from tagtune.models.tiny import build_tiny_sdxl
    from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe
    from tagtune.train.examples import load_examples
    from tagtune.train.loop import StageJob, train_stage
    from tagtune.train.runtime import make_runtime

    batch = 4
    lora = {"rank": rank, "targets": ["attention", "feed_forward", *(["convs"] * convs)]}
    extra = {"method": "lora", "lora": lora} if method == "lora" else {}
    recipe = tiny_train_recipe(epochs=1, batch_size=batch, **extra)
    runtime = make_runtime("no")
    components = build_tiny_sdxl(0)
    for module in components.modules().values():
        module.to(runtime.device)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ws, latents = make_training_workspace(root / "ws", recipe, n=batch * n)
        stage = recipe.train.stages[0]
        examples, _ = load_examples(ws, stage, latents)
        clock = StepClock()
        job = StageJob(
            components=copy.copy(components), stage=stage, stage_index=0, train=recipe.train,
            examples=examples, latents=latents, stage_dir=root / "run", runtime=runtime,
            monitor=clock,
        )  # fmt: skip
        if runtime.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = rss_mib()
        result = train_stage(job)
        state = sum(f.stat().st_size for f in result.final_state.iterdir() if f.is_file())
        groups = json.loads((result.final_state / "optimizer.json").read_text())["param_groups"]
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if runtime.device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    )
    return {
        "method": method,
        "device": runtime.device.type,
        "median_s_per_step": statistics.median(clock.times[1:]),
        "peak_mib": peak,
        "peak_kind": "max_memory_allocated"
        if runtime.device.type == "cuda"
        else "peak RSS growth while training",
        "trained_tensors": sum(len(g["params"]) for g in groups),
        "state_mib": state / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="optimizer steps per variant")
    parser.add_argument(
        "--rank", type=int, default=4, help="LoRA rank (the tiny model is 16-48 wide)"
    )
    parser.add_argument("--convs", action="store_true", help="LoCon: the ResNet convs too")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--variant", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.n, args.rank, args.convs)))
        return
    rows = []
    for method in ("full", "lora"):
        cmd = [sys.executable, __file__, "--variant", method, "--n", str(args.n),
               "--rank", str(args.rank), "--threads", str(args.threads)]  # fmt: skip
        if args.convs:
            cmd.append("--convs")
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    targets = "attention + feed-forward" + (" + convs" if args.convs else "")
    print(f"tiny SDXL, batch 4, 64 px, AdamW, U-Net + both text encoders, {args.n} steps, "
          f"{args.threads} thread(s); LoRA rank {args.rank} on {targets}")  # fmt: skip
    for r in rows:
        print(
            f"{r['method']:>5}: {r['median_s_per_step']:.3f} s/step, {r['peak_kind']} "
            f"{r['peak_mib']:.0f} MiB ({r['device']}), {r['trained_tensors']} trained tensors, "
            f"state {r['state_mib']:.1f} MiB"
        )
    full, lora = rows
    print(f"LoRA / full: {lora['median_s_per_step'] / full['median_s_per_step']:.2f}x time, "
          f"{lora['peak_mib'] / full['peak_mib']:.2f}x peak, "
          f"{lora['state_mib'] / full['state_mib']:.3f}x state")  # fmt: skip


if __name__ == "__main__":
    main()
