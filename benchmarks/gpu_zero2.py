"""DeepSpeed ZeRO-2 drill on the tiny model under `accelerate launch`, GPU or CPU.

    python benchmarks/gpu_zero2.py                    # CUDA: bf16, N processes = GPUs
    python benchmarks/gpu_zero2.py --cpu --procs 2    # the same drill on CPU (fp32, gloo)

Runs: (1) adamw (+ gradient checkpointing and samples on GPU) uninterrupted; (2) the same
killed with SIGKILL at step 3 and resumed, compared with (1); (3) 8-bit AdamW (GPU) and
Adafactor. Prints one line per run; exits non-zero on the first failure.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def make_workspace(root: Path, cpu: bool, **stage) -> Path:
    """A synthetic workspace (16 images) whose recipe trains with the given stage options."""
    from tagtune.synthetic.runs import make_training_workspace, tiny_train_recipe

    recipe = tiny_train_recipe(epochs=2, batch_size=2, gradient_accumulation=2, **stage)
    recipe.train.save_every_n_steps = 1
    recipe.train.keep_last = 10
    if not cpu:
        recipe.train.mixed_precision = "bf16"
        recipe.train.gradient_checkpointing = True
        recipe.train.sample_every_n_epochs = 2
        recipe.train.sample_prompts = ["1girl, smile, blue sky"]
        recipe.train.sample_steps = 4
        recipe.train.sample_size = (128, 128)
    ws, _ = make_training_workspace(root, recipe, n=16)
    return ws.root


def launch(ws: Path, procs: int, cpu: bool, *args: str, kill_at: int = 0) -> float:
    """Train the workspace under accelerate's DeepSpeed launcher; return seconds taken."""
    config = ws.parent / "zero2.yaml"
    text = (ROOT / "docs/accelerate-zero2.yaml").read_text()
    text = text.replace("num_processes: 4", f"num_processes: {procs}")
    if cpu:
        text = text.replace("mixed_precision: bf16", "mixed_precision: 'no'\nuse_cpu: true")
    config.write_text(text)
    from tagtune.synthetic.runs import free_port

    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        "--main_process_port", str(free_port()), "-m", "tagtune.synthetic.runs", str(ws), *args,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TAGTUNE_KILL_AT_STEP": str(kill_at)}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if (proc.returncode == 0) == bool(kill_at):
        print(proc.stdout[-2000:], proc.stderr[-6000:])
        raise SystemExit(f"FAIL launch {ws.name} (kill_at={kill_at}): rc {proc.returncode}")
    return time.perf_counter() - t0


def final_state(ws: Path) -> Path:
    """The last complete state folder of the workspace's only stage."""
    states = sorted((ws / "runs/run1/main/states").glob("step-*"), key=lambda p: int(p.name[5:]))
    return states[-1]


def compare(a: Path, b: Path) -> float:
    """Largest absolute difference over every weight and shard tensor of two states."""
    worst = 0.0
    for file in sorted(p.name for p in a.glob("*.safetensors")):
        if file == "rng.safetensors":
            continue
        ta, tb = load_file(a / file), load_file(b / file)
        for k in ta:
            worst = max(worst, (ta[k].float() - tb[k].float()).abs().max().item())
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--procs", type=int, default=max(1, torch.cuda.device_count()))
    args = parser.parse_args()
    import json

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ws = make_workspace(tmp / "adamw", args.cpu)
        seconds = launch(ws, args.procs, args.cpu, "--dump-weights", str(tmp / "dump"))
        run = json.loads((ws / "runs/run1/run.json").read_text())["stages"][0]
        dtypes = {str(v.dtype) for v in load_file(tmp / "dump/unet-rank0.safetensors").values()}
        samples = len(list(ws.rglob("*.png")))
        print(f"ok   zero2 adamw x{args.procs}: {run['steps']} steps, loss {run['final_loss']:.4f}, "
              f"weights after the stage {dtypes}, {samples} sample PNGs, {seconds:.1f}s")  # fmt: skip
        assert dtypes == {"torch.float32"}, dtypes

        killed = make_workspace(tmp / "killed", args.cpu)
        launch(killed, args.procs, args.cpu, kill_at=3)
        launch(killed, args.procs, args.cpu, "--resume")
        diff = compare(final_state(ws), final_state(killed))
        print(f"ok   zero2 SIGKILL at step 3 + resume: max |diff| vs uninterrupted {diff:.3g}")
        if args.cpu:
            assert diff == 0.0, diff

        for name in ["adafactor"] + ([] if args.cpu else ["adamw8bit"]):
            other = make_workspace(tmp / name, args.cpu, optimizer=name)
            seconds = launch(other, args.procs, args.cpu)
            run = json.loads((other / "runs/run1/run.json").read_text())["stages"][0]
            print(f"ok   zero2 {name}: loss {run['final_loss']:.4f}, {seconds:.1f}s")


if __name__ == "__main__":
    main()
