"""What killed writes leave behind is removed by the next writer of the same output, which
says how much it freed; a live writer's temporary, and every other file, survive."""

from __future__ import annotations

import copy
import hashlib
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file
from test_overwrite_rules import completed_run_workspace

from cli_main import run_cli
from tagtune.core.atomic import atomic_dir, atomic_path
from tagtune.recipe.workspace import workspace_recipe

MB = 1_000_000
HOUR = 3600

CAPTION_POSTS = """
INSERT INTO posts (id, md5, score, rating, date, tags_copyright, tags_general, favorite) VALUES
 (1, 'aa', 150, 'g', DATE '2021-01-01', ['original'], ['1girl', 'smile'], TRUE),
 (2, 'bb', 5, 'g', DATE '2021-01-01', ['original'], ['blue_sky'], FALSE)
"""


def host_id():
    """The host part of a temp's owner: the first 8 hex of sha256(host name)."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


@pytest.fixture(scope="module")
def dead_pid():
    """The pid of a process that has exited (a writer killed earlier)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture()
def live_pid():
    """The pid of a process that is still running (a concurrent writer)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def temp(folder, target, pid, size=0, host=None, rand="k1ll3d00", folder_temp=False):
    """A temporary entry as `tagtune.core.atomic` names it, owned by `pid` on `host`."""
    path = folder / f".{target}.{rand}.{pid}-{host or host_id()}.tmp"
    if folder_temp:
        path.mkdir(parents=True)
        (path / "weights.safetensors").write_bytes(b"\0" * size)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * size)
    return path


def age(path, seconds):
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_temp_names_name_their_writer(tmp_path):
    from tagtune.core.stale_temps import is_stale, temp_target

    with atomic_path(tmp_path / "model.v2.safetensors") as tmp:
        assert temp_target(tmp.name) == "model.v2.safetensors"
        assert tmp.name.endswith(f".{os.getpid()}-{host_id()}.tmp")
        assert not is_stale(tmp)  # this process is alive
    with atomic_dir(tmp_path / "state") as tmp:
        assert temp_target(tmp.name) == "state" and not is_stale(tmp)
    for other in ("model.safetensors", ".model.safetensors", ".model.safetensors.tmp"):
        assert temp_target(other) is None


def test_a_temp_whose_owner_cannot_be_asked_goes_only_when_untouched_for_long(tmp_path):
    from tagtune.core.stale_temps import UNKNOWN_OWNER_STALE_S, clean_stale_temps, is_stale

    foreign = temp(tmp_path, "m.safetensors", 123, host="00000000")
    legacy = tmp_path / ".m.safetensors.abcd_123.tmp"  # older tagtune: no owner in the name
    legacy.write_bytes(b"x")
    for path in (foreign, legacy):
        assert not is_stale(path)
        assert is_stale(path, now=time.time() + UNKNOWN_OWNER_STALE_S + 60)
    assert clean_stale_temps(tmp_path / "m.safetensors").files == 0
    assert foreign.exists() and legacy.exists()


def test_merge_removes_what_a_killed_merge_left_and_says_how_much(
    tmp_path, capsys, dead_pid, live_pid
):
    parents = []
    for name in ("a", "b"):
        save_file({"model.diffusion_model.out.2.weight": torch.ones(3, 4)}, tmp_path / f"{name}.st")
        parents.append(tmp_path / f"{name}.st")
    out = tmp_path / "merged.safetensors"
    killed = temp(tmp_path, out.name, dead_pid, 2 * MB)
    foreign_old = temp(tmp_path, out.name, 77, MB // 2, host="00000000", rand="f0re1gn0")
    age(foreign_old, HOUR + 60)
    survivors = [
        temp(tmp_path, out.name, live_pid, 10, rand="l1ve0000"),  # a concurrent merge
        temp(tmp_path, out.name, 78, 10, host="00000000", rand="f0re1gn1"),  # busy elsewhere
        temp(tmp_path, "other.safetensors", dead_pid, 10),  # another output's temp
        tmp_path / ".merged.safetensors.backup",
        tmp_path / "notes.tmp",
    ]
    for path in survivors[3:]:
        path.write_bytes(b"keep me")
    precious = tmp_path / "precious.bin"
    precious.write_bytes(b"keep me")
    link = tmp_path / f".{out.name}.l1nk0000.{dead_pid}-{host_id()}.tmp"
    link.symlink_to(precious)
    survivors += [link, precious]

    res = run_cli(capsys, "merge", *parents, "--out", out)
    assert res.code == 0, res.err
    assert "removed 2 stale temporary files (2.5 MB)" in res.err.splitlines()
    assert not killed.exists() and not foreign_old.exists()
    assert all(os.path.lexists(p) for p in survivors)
    assert precious.read_bytes() == b"keep me"
    res = run_cli(capsys, "merge", *parents, "--out", out, "--force")
    assert res.code == 0 and "stale" not in res.err  # nothing left to free: no message


def test_export_removes_its_stale_temps(tmp_path, capsys, dead_pid, tiny_sdxl):
    ws = completed_run_workspace(tmp_path / "ws", tiny_sdxl)
    killed = temp(ws.out_dir, "tagtune-sdxl.safetensors", dead_pid, MB)
    res = run_cli(capsys, "export", ws.root)
    assert res.code == 0, res.err
    assert "removed 1 stale temporary file (1.0 MB)" in res.err
    assert not killed.exists()


def test_caption_removes_stale_temps_of_captions_jsonl_and_its_sidecars(tmp_path, capsys, dead_pid):
    from tagtune.core.catalog import open_catalog
    from tagtune.ingest.verdicts import sync_with_recipe
    from tagtune.recipe.workspace import init_workspace

    ws = init_workspace(tmp_path / "ws")
    images = ws.root / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"x")
    with open_catalog(ws.catalog_path) as con:
        sync_with_recipe(con, workspace_recipe(ws))
        con.execute(CAPTION_POSTS)
        con.execute("INSERT INTO files VALUES (1, 'images/a.png', 'h1', 64, 64, 'png', 1)")
    killed = [temp(ws.root, "captions.jsonl", dead_pid, MB), temp(images, "a.txt", dead_pid, 10)]
    kept = temp(images, "z.txt", dead_pid, 10)  # no image z.png: not a sidecar of this run
    res = run_cli(capsys, "caption", ws.root, "--sidecars")
    assert res.code == 0, res.err
    assert "removed 2 stale temporary files (1.0 MB)" in res.err
    assert not any(p.exists() for p in killed) and kept.exists()


def test_a_stale_state_temp_is_removed_when_its_stage_starts(
    tmp_path, capsys, dead_pid, monkeypatch, tiny_sdxl
):
    import tagtune.train.stages as stages
    from tagtune.synthetic.runs import latents_for, make_training_workspace, tiny_train_recipe

    torch.set_num_threads(1)
    ws, _ = make_training_workspace(tmp_path / "ws", tiny_train_recipe(epochs=1), n=2)
    monkeypatch.setattr(stages, "load_base", lambda *_a: copy.deepcopy(tiny_sdxl))
    # the workspace's latents are in memory: the checks before training get them
    monkeypatch.setattr(stages, "check_before_training", lambda w, *_a, **_k: latents_for(w))
    states = ws.runs_dir / "run1" / "main" / "states"
    temp(states, "step-1", dead_pid, MB, folder_temp=True)
    res = run_cli(capsys, "train", ws.root, "--json")
    assert res.code == 0, res.err
    assert "removed 1 stale temporary file (1.0 MB)" in res.err
    assert sorted(p.name for p in states.iterdir()) == ["step-1"]


def test_a_stale_latent_shard_temp_is_removed_when_prepare_starts(tmp_path, dead_pid, tiny_sdxl):
    from tagtune.core.stale_temps import freed_total, reset_freed_total
    from tagtune.prepare.encode import encode_images, vae_fingerprint
    from tagtune.prepare.latent_cache import latents_dir
    from tagtune.recipe.model import BucketConfig

    folder = latents_dir(tmp_path / "cache", vae_fingerprint(tiny_sdxl.vae))
    killed = [
        temp(folder, "shard-r0-000003.safetensors", dead_pid, MB),
        temp(folder, "index-r0.json", dead_pid, 10),
    ]
    other_rank = temp(folder, "shard-r1-000003.safetensors", dead_pid, 10)
    unrelated = folder / "shard-r0-000002.safetensors.partial"
    unrelated.write_bytes(b"keep")
    reset_freed_total()
    encode_images([], tiny_sdxl.vae, tmp_path / "cache", BucketConfig(), workers=0)
    assert freed_total().files == 2 and freed_total().bytes == MB + 10
    assert not any(p.exists() for p in killed)
    assert other_rank.exists() and unrelated.exists()
