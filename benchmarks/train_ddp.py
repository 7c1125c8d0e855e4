"""Step time of 2 CPU processes (gloo) training the tiny SDXL: an older tree against this one.

Both trees train the same workspace (the tiny model, batch 2 per process, one epoch of
`--images` synthetic posts, U-Net and first text encoder trained) under
`torch.distributed.run`, alternating before/after `--reps` times. Each run's figure is the
median wall time between optimizer steps, leaving out the first `--warmup` steps, and the
median CPU time per step of both processes (all threads: less sensitive to other jobs on a
shared machine than wall time); the script prints the median over runs of each tree, their
ratios and the load average.

    .venv/bin/python benchmarks/train_ddp.py                   # before: the merge base with main
    .venv/bin/python benchmarks/train_ddp.py --before v0.3 --reps 5 --images 48

"before" is `git archive REF src` of the named commit in a temporary folder; "after" is this
checkout's src/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(ws_root: str, out: str) -> None:
    """One process of a run: train the workspace, recording when each optimizer step ends."""
    import torch

    import tagtune
    from tagtune.core.workspace import open_workspace
    from tagtune.models.tiny import build_tiny_sdxl
    from tagtune.synthetic.runs import latents_for
    from tagtune.train import monitor
    from tagtune.train.stages import run_training

    if not Path(tagtune.__file__).is_relative_to(os.environ["PYTHONPATH"]):
        raise SystemExit(f"tagtune comes from {tagtune.__file__}, not {os.environ['PYTHONPATH']}")
    torch.set_num_threads(1)
    ends: list[tuple[float, float]] = []
    step = monitor.Monitor.step

    def timed_step(self, *args, **kwargs):
        ends.append((time.perf_counter(), time.process_time()))
        return step(self, *args, **kwargs)

    monitor.Monitor.step = timed_step
    ws = open_workspace(ws_root)
    run_training(ws, components=build_tiny_sdxl(0), latents=latents_for(ws), progress=False)
    Path(f"{out}.{os.environ.get('RANK', '0')}").write_text(json.dumps(ends))


def source_tree(ref: str, into: Path) -> Path:
    """The src/ folder of commit `ref`, unpacked under `into`."""
    data = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", ref, "src"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def merge_base() -> str:
    """The commit where this branch left main."""
    out = subprocess.run(
        ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def run_once(src: Path, ws_root: Path, out: Path, warmup: int) -> tuple[float, float]:
    """Median wall seconds per optimizer step of one 2-process run of the tree at `src`, and
    median CPU seconds per step of both processes together (all their threads)."""
    from tagtune.synthetic.runs import free_port

    shutil.rmtree(ws_root / "runs", ignore_errors=True)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(free_port()), __file__, "--worker", str(ws_root), str(out),
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "true",
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"run of {src} failed:\n{proc.stderr[-4000:]}")
    ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    wall = [b[0] - a[0] for a, b in zip(ranks[0], ranks[0][1:], strict=False)][warmup:]
    cpu = [
        sum(b[1] - a[1] for a, b in ((ends[i], ends[i + 1]) for ends in ranks))
        for i in range(warmup, len(ranks[0]) - 1)
    ]
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    """Alternate before/after runs; print the median s/step of each, the ratio and the load."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=None, help="commit of the 'before' tree")
    parser.add_argument("--reps", type=int, default=3, help="runs of each tree")
    parser.add_argument("--images", type=int, default=40, help="posts: images / 4 steps")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out")
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    sys.path.insert(0, str(ROOT / "src"))
    from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe

    ref = args.before or merge_base()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        trees = {"before": source_tree(ref, tmp_path / "before"), "after": ROOT / "src"}
        recipe = tiny_train_recipe(epochs=1, batch_size=2, lr_text_encoder_2=0.0)
        recipe.train.save_every_n_epochs = 1
        ws, _ = make_training_workspace(tmp_path / "ws", recipe, n=args.images)
        times: dict[str, list[float]] = {name: [] for name in trees}
        cpus: dict[str, list[float]] = {name: [] for name in trees}
        load = os.getloadavg()
        for rep in range(args.reps):  # before, after; after, before; ...
            for name in ("before", "after") if rep % 2 == 0 else ("after", "before"):
                t, c = run_once(trees[name], ws.root, tmp_path / "steps.json", args.warmup)
                times[name].append(t)
                cpus[name].append(c)
                print(
                    f"rep {rep + 1} {name:6s} {t * 1000:8.1f} ms/step, {c * 1000:8.1f} CPU ms/step",
                    flush=True,
                )
        load = tuple((a + b) / 2 for a, b in zip(load, os.getloadavg(), strict=True))
    before, after = (statistics.median(times[n]) for n in ("before", "after"))
    cpu_before, cpu_after = (statistics.median(cpus[n]) for n in ("before", "after"))
    print(f"before ({ref[:10]}): {before:.4f} s/step, {cpu_before:.4f} CPU s/step")
    print(f"after  (this tree): {after:.4f} s/step, {cpu_after:.4f} CPU s/step")
    print(f"after / before: {after / before:.3f} wall, {cpu_after / cpu_before:.3f} CPU")
    print(f"(medians of {args.reps} runs; CPU: both processes, all threads)")
    print("load average (1/5/15 min, mean of start and end): " + " ".join(f"{x:.2f}" for x in load))


if __name__ == "__main__":
    main()
