"""Benchmark of `tagtune extract-lora` on two SDXL-sized random checkpoints (issue 17).

    .venv/bin/python benchmarks/extract_lora.py [--rank 32] [--conv-rank 0] [--exact]
        [--no-parent-hashes] [--threads N] [--dir bench-out/extract_lora] [--keep]

Writes two single-file fp16 checkpoints with the real SDXL 1.0 tensor names and shapes
(the layout `benchmarks/merge.py` streams from the SDXL key list, ~6.9 GB each; random
values, so TUNED - BASE is noise and the error figures say nothing about real fine-tunes),
then runs the extraction in a fresh process (as the CLI runs it) and reports its wall time
and peak RSS (getrusage), next to the RSS the process had before extracting (Python, torch,
diffusers, the meta-device model). It must stream: the peak stays far below one checkpoint.
Disk: two files and the LoRA, deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from merge import sdxl_layout, write_synthetic  # noqa: E402

CHILD = """
import json, resource, sys, time
import torch
from tagtune.merge.lora_extract import extract_lora
from tagtune.models.configs import sdxl_base_configs
from tagtune.models.lora_single_file import file_targets
file_targets(sdxl_base_configs())  # warm the imports and the meta-model build
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tuned, base, out, rank, conv_rank, exact, hashes, threads = sys.argv[1:9]
if int(threads) > 0:
    torch.set_num_threads(int(threads))
start = time.perf_counter()
result = extract_lora(tuned, base, out, rank=int(rank), conv_rank=int(conv_rank),
                      exact=exact == "1", hash_parents=hashes == "1")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "rss_before_kib": before, "peak_rss_kib": peak,
                  "result": result.to_json()}))
"""


def main() -> None:
    """Write the two checkpoints, extract in a child process, print the figures."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--conv-rank", type=int, default=0)
    ap.add_argument("--exact", action="store_true", help="full SVD for every module")
    ap.add_argument("--no-parent-hashes", action="store_true")
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (default: torch's choice)"
    )
    ap.add_argument("--dir", type=Path, default=Path("bench-out/extract_lora"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    layout = sdxl_layout(1.0)
    base, tuned, out = (
        args.dir / n for n in ("base.safetensors", "tuned.safetensors", "lora.safetensors")
    )
    try:
        start = time.perf_counter()
        size = write_synthetic(base, layout, seed=1)
        write_synthetic(tuned, layout, seed=2)
        print(f"wrote 2 checkpoints of {size / 1e9:.2f} GB in {time.perf_counter() - start:.1f} s")
        out.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-c", CHILD, str(tuned), str(base), str(out), str(args.rank),
            str(args.conv_rank), "1" if args.exact else "0", "0" if args.no_parent_hashes else "1", str(args.threads),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        data = json.loads(proc.stdout.strip().splitlines()[-1])
        peak_gb = data["peak_rss_kib"] * 1024 / 1e9
        print(
            f"extract-lora --rank {args.rank} --conv-rank {args.conv_rank}"
            f"{' --exact-svd' if args.exact else ''}"
            f"{' --no-parent-hashes' if args.no_parent_hashes else ''}"
            f"{f' ({args.threads} torch threads)' if args.threads else ''}: "
            f"{data['seconds']:.1f} s, peak RSS {peak_gb:.2f} GB "
            f"({peak_gb / (size / 1e9):.1%} of one checkpoint; "
            f"{data['rss_before_kib'] * 1024 / 1e9:.2f} GB before extracting), "
            f"LoRA {out.stat().st_size / 1e6:.1f} MB"
        )
        for row in [*data["result"]["groups"], data["result"]["overall"]]:
            print(
                f"  {row['group']:<15} {row['modules']:>4} modules  rank {row['rank']:>5}  "
                f"relative error {row['relative_error']:.4f}"
            )
        print(f"load average {os.getloadavg()[0]:.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
