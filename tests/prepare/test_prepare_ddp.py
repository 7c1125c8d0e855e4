"""`tagtune prepare` under torchrun / accelerate launch: each process encodes its own share."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from test_prepare import make_prepare_workspace

from tagtune.core.catalog import open_catalog
from tagtune.models.save import save_single_file
from tagtune.prepare.encode import open_latent_cache
from tagtune.recipe.workspace import init_workspace, workspace_recipe


@pytest.mark.slow
def test_two_processes_each_encode_their_own_share(tmp_path, tiny_sdxl):
    ws = make_prepare_workspace(tmp_path / "ws")
    save_single_file(tiny_sdxl, ws.root / "base.safetensors", dtype="fp32", hash_sha256=False)
    recipe = workspace_recipe(ws)
    recipe.model.base = "base.safetensors"
    init_workspace(ws.root, recipe, force=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_port", str(port),
        "-m", "tagtune.cli.main", "prepare", str(ws.root), "--workers", "0", "--json",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert sorted((r["planned"], r["encoded"]) for r in runs) == [(3, 2), (3, 3)]
    folder = ws.cache_dir / "latents" / f"vae-{runs[0]['vae_hash'][:16]}"
    assert sorted(p.name for p in folder.glob("shard-*")) == [
        "shard-r0-000001.safetensors",
        "shard-r1-000001.safetensors",
    ]
    cache = open_latent_cache(ws.cache_dir, runs[0]["vae_hash"])
    assert [r.post_id for r in cache.records()] == [1, 2, 3, 4, 5]
    with open_catalog(ws.catalog_path, read_only=True) as con:
        assert con.execute("SELECT post_id, stage FROM problems").fetchall() == [(7, "prepare")]
