"""Hostile and careless input through the real command (issue 13, points 7 to 10).

A bad model file, recipe or value is one `error:` line naming the file and the field, with
exit code 2; a bad record or file inside an ingest is a problem row, and the run completes
with the good ones ingested. Each case here was a traceback, a hang or a runaway allocation.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
import torch

from cli_main import run_with_deadline
from tagtune.models.configs import METADATA_KEY, sdxl_base_configs
from tagtune.models.save import save_single_file
from tagtune.recipe.workspace import init_workspace
from tagtune.synthetic.collection import shape_image


@dataclass
class Run:
    """What one command did: exit code, stdout, stderr."""

    code: int
    out: str
    err: str


def tagtune(*args, timeout: int = 120) -> Run:
    """`tagtune ARGS` in this process, as the console script runs it (errors printed by
    `main`, exit code from SystemExit); a command that runs past `timeout` fails the test."""

    res = run_with_deadline(args, timeout)
    return Run(res.code, res.out, res.err)


def one_error(run: Run, *needles: str) -> str:
    """The single `error:` line of a failed command (exit 2, nothing else but a hint)."""
    assert run.code == 2, (run.code, run.out, run.err)
    lines = run.err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, run.err
    assert all(line.startswith(("error: ", "hint: ")) for line in lines), run.err
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def cli_subprocess(*args, timeout: int = 60) -> subprocess.CompletedProcess:
    """`tagtune ARGS` in a child process: for cases that could hang the caller."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    return subprocess.run(
        [sys.executable, "-m", "tagtune.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def post(pid, **over) -> dict:
    """A small API-shaped post with harmless tags."""
    p = {
        "id": pid,
        "created_at": "2020-06-01T12:00:00.000-04:00",
        "score": 10,
        "rating": "g",
        "tag_string_general": "1girl smile",
    }
    p.update(over)
    return p


def save_png(path: Path, seed: int = 0) -> None:
    import numpy as np

    img, _ = shape_image(np.random.default_rng(seed), (96, 96))
    img.save(path)


def problems(ws, source: Path | None = None) -> list[tuple]:
    with duckdb.connect(str(ws.catalog_path), read_only=True) as con:
        return con.execute(
            "SELECT path, post_id, reason, detail FROM problems ORDER BY path, detail"
        ).fetchall()


def post_ids(ws) -> list[int]:
    with duckdb.connect(str(ws.catalog_path), read_only=True) as con:
        return [r[0] for r in con.execute("SELECT id FROM posts ORDER BY id").fetchall()]


@pytest.fixture
def ws(tmp_path):
    return init_workspace(tmp_path / "ws")


# --- point 7: ingest -----------------------------------------------------------------------


def test_hostile_sidecars_are_problems_and_the_good_post_is_ingested(ws, tmp_path, monkeypatch):
    import tagtune.ingest.sources as sources

    monkeypatch.setattr(sources, "MAX_SIDECAR_BYTES", 300_000)  # "huge" without 16 MiB
    folder = tmp_path / "coll"
    folder.mkdir()
    sidecars = {
        "good": json.dumps(post(1)),
        "surrogate": '{"id": 2, "rating": "g", "tag_string_general": "smile \\ud800"}',
        "deep": '{"id": 3, "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "nan": '{"id": 4, "score": NaN}',
        "huge": json.dumps(post(5, tag_string_general="smile " * 60_000)),
    }
    for i, (name, text) in enumerate(sidecars.items()):
        save_png(folder / f"{name}.png", seed=i)
        (folder / f"{name}.png.json").write_text(text)
    run = tagtune("ingest", ws.root, folder, "--json")
    assert run.code == 0, run.err
    summary = json.loads(run.out)
    assert (summary["posts"], summary["images"]) == (1, 1)
    assert summary["problems"] == {"bad-metadata": 4}
    assert post_ids(ws) == [1]
    details = {Path(p).name: d for p, _, _, d in problems(ws)}
    assert details == {
        "deep.png.json": "nested 100001 levels deep (at most 64 are read)",
        "huge.png.json": f"cannot read: {len(sidecars['huge'])} bytes, over the 300000 byte limit",
        "nan.png.json": "NaN is not a JSON number",
        "surrogate.png.json": "holds a lone UTF-16 surrogate (such as \\ud800): not valid Unicode",
    }


def test_fifos_are_never_read_and_ingest_completes(ws, tmp_path):
    folder = tmp_path / "coll"
    folder.mkdir()
    save_png(folder / "good.png")
    (folder / "good.png.json").write_text(json.dumps(post(1)))
    os.mkfifo(folder / "pipe.png")  # an "image" that is a FIFO: reading it blocks forever
    (folder / "pipe.png.json").write_text(json.dumps(post(2)))
    save_png(folder / "side.png", seed=1)
    os.mkfifo(folder / "side.png.json")  # a FIFO sidecar
    proc = cli_subprocess("ingest", ws.root, folder, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == 1
    never_read = "not a regular file (a FIFO, socket or device): never read"
    assert [(Path(p).name, pid, reason, d) for p, pid, reason, d in problems(ws)] == [
        ("pipe.png", 2, "unreadable", never_read),
        ("side.png.json", None, "bad-metadata", never_read),
    ]
    fifo_dump = tmp_path / "dump.jsonl"
    os.mkfifo(fifo_dump)
    proc = cli_subprocess("ingest", ws.root, fifo_dump)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: {fifo_dump}: SOURCE: {never_read}"]


def test_post_ids_are_integers_as_written_and_every_dropped_record_is_named(ws, tmp_path):
    records = [
        post(28.5, tag_string_general="float"),  # once rounded into post 29, taking it over
        post(29, tag_string_general="real"),
        post("0x1F"),  # once read as post 31
        post(True),
        post(-3),
        post(1e3),
        post("40"),  # a string of decimal digits is an id as written
        post(41, score=1),
        post(41, score=2),  # the same id again in one dump: once dropped silently
        {"rating": "g"},
    ]
    dump = tmp_path / "d.jsonl"
    dump.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tagtune("ingest", ws.root, dump, "--json")
    assert run.code == 0, run.err
    assert post_ids(ws) == [29, 40, 41]
    with duckdb.connect(str(ws.catalog_path), read_only=True) as con:
        assert con.execute("SELECT tags_general FROM posts WHERE id = 29").fetchone() == (["real"],)
        assert con.execute("SELECT score FROM posts WHERE id = 41").fetchone() == (1,)
    rule = "is not a positive integer written in decimal digits; dropped"
    assert sorted((pid or 0, reason, d) for _, pid, reason, d in problems(ws)) == [
        (0, "bad-metadata", "record 10: no id; dropped"),
        (0, "bad-metadata", f"record 1: id = 28.5 {rule}"),
        (0, "bad-metadata", f'record 3: id = "0x1F" {rule}'),
        (0, "bad-metadata", f"record 4: id = true {rule}"),
        (0, "bad-metadata", f"record 5: id = -3 {rule}"),
        (0, "bad-metadata", f"record 6: id = 1000.0 {rule}"),
        (41, "duplicate-id", "record 9: post 41 again (first in record 8, kept); dropped"),
    ]


def test_duplicate_ids_across_sidecars_are_named(ws, tmp_path):
    folder = tmp_path / "coll"
    folder.mkdir()
    for name, seed in (("a", 0), ("b", 1)):
        save_png(folder / f"{name}.png", seed)
        (folder / f"{name}.png.json").write_text(json.dumps(post(7, tag_string_general=name)))
    run = tagtune("ingest", ws.root, folder, "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["problems"] == {"duplicate-id": 1}
    assert problems(ws) == [
        (
            str(folder / "b.png.json"),
            7,
            "duplicate-id",
            f"post 7 again (first in {folder / 'a.png.json'}, kept); dropped",
        )
    ]


def test_deep_broken_and_surrogate_records_in_dumps_are_named(ws, tmp_path):
    deep = '{"id": 3, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    dump = tmp_path / "d.jsonl"
    dump.write_text(
        "\n".join([json.dumps(post(1)), '{"id": 2, "t": "\\ud800"}', deep, "{not json"]) + "\n"
    )
    api = tmp_path / "api.json"  # a broken API list that is also deep: read by Python
    api.write_text('[{"id": 5}, ' + "[" * 100_000)
    run = tagtune("ingest", ws.root, dump, api, "--json")
    assert run.code == 0, run.err
    assert post_ids(ws) == [1, 3]  # DuckDB reads the deep record; Python never recurses into it
    assert [(Path(p).name, d) for p, _, _, d in problems(ws)] == [
        ("api.json", "nested 100001 levels deep (at most 64 are read)"),
        ("d.jsonl", "line 2: holds a lone UTF-16 surrogate (such as \\ud800): not valid Unicode"),
        ("d.jsonl", "line 4: Expecting property name enclosed in double quotes"),
    ]


def test_a_corrupt_parquet_page_is_a_problem_and_the_next_source_is_read(ws, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 1000
    tags = [f"tag_{i} smile" for i in range(n)]
    table = pa.table({"id": list(range(1, n + 1)), "tag_string_general": tags})
    path = tmp_path / "dump.parquet"
    pq.write_table(table, path, row_group_size=250, compression="snappy")
    column = pq.ParquetFile(path).metadata.row_group(1).column(1)
    data = bytearray(path.read_bytes())
    start = column.data_page_offset
    assert column.total_compressed_size > 200
    for i in range(start + 30, start + 70):
        data[i] ^= 0x5A  # damage the second row group's tag page, and nothing else
    path.write_bytes(bytes(data))
    good = tmp_path / "more.jsonl"
    good.write_text(json.dumps(post(5000)) + "\n")
    run = tagtune("ingest", ws.root, path, good, "--json")
    assert run.code == 0, run.err
    ids = post_ids(ws)
    assert len(ids) == 751 and 5000 in ids and not set(range(251, 501)) & set(ids)
    [(where, _, reason, detail)] = problems(ws)
    assert (where, reason) == (str(path), "bad-metadata")
    assert detail.startswith("row group 2 of 4 (rows 251 to 500) is corrupt (")
    assert detail.endswith("); skipped, 750 of 1000 rows read")


# --- point 8: model files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_file(tiny_sdxl, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "tiny.safetensors"
    return save_single_file(tiny_sdxl, path, dtype="fp16")


def split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def with_header(path: Path, header: dict | bytes, data: bytes) -> Path:
    body = header if isinstance(header, bytes) else json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    path.write_bytes(len(body).to_bytes(8, "little") + body + data)
    return path


def hostile_header(tiny_file: Path, case: str) -> dict | bytes:
    header, _ = split(tiny_file)
    first = next(k for k in header if k != "__metadata__")
    configs = json.loads(header["__metadata__"][METADATA_KEY])
    if case == "dtype-list":
        header[first]["dtype"] = ["F16"]
    elif case == "dtype-object":
        header[first]["dtype"] = {"F16": 1}
    elif case == "deep":
        return b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    elif case == "configs-strings":
        configs = {name: "x" for name in configs}
    elif case == "wide":  # a 160 GB allocation when the U-Net was built
        configs["unet"]["block_out_channels"] = [100_000] * 3
    elif case == "positions":
        configs["text_encoder"]["max_position_embeddings"] = 10**10
    elif case == "no-such-block":
        configs["unet"]["down_block_types"][0] = "NoSuchBlock2D"
    header["__metadata__"][METADATA_KEY] = json.dumps(configs)
    return header


@pytest.mark.parametrize(
    ("case", "needles"),
    [
        ("dtype-list", ["tensor 'conditioner.", "unknown dtype ['F16'] (allowed: F64, F32"]),
        ("dtype-object", ["tensor 'conditioner.", "unknown dtype {'F16': 1}"]),
        ("deep", ["header is not valid JSON (nested 200001 levels deep (at most 8 are read))"]),
        ("configs-strings", ["tagtune.configs.unet = 'x': the unet config is not a JSON object"]),
        (
            "wide",
            [
                "tagtune.configs.unet.block_out_channels = 100000: is out of range "
                "(allowed: integers 1 to 2560 (2x the SDXL 1.0 base size), or lists of them)"
            ],
        ),
        ("positions", ["tagtune.configs.text_encoder.max_position_embeddings = 10000000000"]),
        ("no-such-block", ["the unet config does not build a model (NoSuchBlock2D does not"]),
    ],
)
def test_hostile_single_files_are_one_line_errors(tiny_file, tmp_path, case, needles):
    _, data = split(tiny_file)
    bad = with_header(tmp_path / f"{case}.safetensors", hostile_header(tiny_file, case), data)
    one_error(tagtune("convert", bad, tmp_path / "out"), f"error: {bad}: ", *needles)


def test_merge_refuses_a_hostile_parent_and_a_folder_as_output(tiny_file, tmp_path):
    _, data = split(tiny_file)
    bad = with_header(tmp_path / "bad.safetensors", hostile_header(tiny_file, "dtype-list"), data)
    one_error(tagtune("merge", bad, tiny_file, "--out", tmp_path / "m.safetensors"), str(bad))
    folder = tmp_path / "existing"
    folder.mkdir()
    run = tagtune("merge", tiny_file, tiny_file, "--out", folder)
    one_error(run, f"error: {folder}: is a folder; the output is a file")
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob(".existing*"))


def test_a_pickle_is_refused_and_never_loaded(tmp_path, capsys):
    class Code:
        def __reduce__(self):
            return (print, ("this must never run",))

    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": Code()}, ckpt)
    line = one_error(
        tagtune("convert", ckpt, tmp_path / "out"),
        f"error: {ckpt}: refused: pickled code and objects are never loaded",
    )
    assert "weights_only" not in line
    assert "this must never run" not in capsys.readouterr().out


def test_broken_configs_in_a_folder_or_beside_a_vae_are_one_line_errors(tiny_file, tmp_path):
    folder = tmp_path / "pipe"
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        (folder / name).mkdir(parents=True)
        (folder / name / "config.json").write_text(json.dumps(sdxl_base_configs()[name]))
    index = folder / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text('{"weight_map": {"w": "../../../elsewhere.safetensors"}}')
    one_error(tagtune("convert", folder, tmp_path / "o.safetensors"), f"error: {index}: weight_map")
    index.write_text("{broken")
    one_error(tagtune("convert", folder, tmp_path / "o.safetensors"), "not a readable shard index")
    (folder / "vae" / "config.json").write_text('{"block_out_channels": [128, 256, 100000, 512]}')
    one_error(
        tagtune("convert", folder, tmp_path / "o.safetensors"),
        f"error: {folder / 'vae' / 'config.json'}: block_out_channels = 100000: is out of range",
    )
    (folder / "unet" / "config.json").write_text("{not json")
    one_error(
        tagtune("convert", folder, tmp_path / "o.safetensors"),
        f"error: {folder / 'unet' / 'config.json'}: not valid JSON (line 1 column 2: ",
    )
    vae_dir = tmp_path / "vae"
    vae_dir.mkdir()
    from safetensors.torch import save_file

    save_file({"encoder.down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)}, vae_dir / "v.sft")
    (vae_dir / "v.sft").rename(vae_dir / "vae.safetensors")
    (vae_dir / "config.json").write_text('{"block_out_channels": "abc"')
    one_error(
        tagtune("bake-vae", tiny_file, vae_dir / "vae.safetensors", tmp_path / "b.safetensors"),
        f"error: {vae_dir / 'config.json'}: not valid JSON (line 1 column 29: ",
    )


def test_non_utf8_recipe_is_one_line(ws):
    ws.recipe_path.write_bytes(b'[project]\nname = "\xff\xfe"\n')
    one_error(
        tagtune("train", ws.root, "--dry-run"),
        f"error: {ws.recipe_path}: not UTF-8 text (byte 0xff on line 2)",
    )


# --- point 9: values -----------------------------------------------------------------------


def test_generate_size_and_clip_skip_are_bounded(tiny_file, tmp_path):
    one_error(
        tagtune("generate", tiny_file, "smile", "--size", "100000x100000", "--out", tmp_path),
        "error: --size = '100000x100000': width and height must be multiples of 8 from 8 to 4096",
    )
    run = tagtune(
        "generate", tiny_file, "smile", "--clip-skip", "99", "--size", "64x64", "--steps", "1",
        "-n", "1", "--out", tmp_path,
    )  # fmt: skip
    one_error(
        run,
        "error: --clip-skip = 99: must be an integer from 1 to 12 (the text encoders have 12 "
        "layers)",
    )
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.parametrize(
    ("old", "new", "needle"),
    [
        ("lr_unet = 1e-05", "lr_unet = inf", "train.stages[0].lr_unet = inf"),
        ("min = 150.0", "min = nan", "caption.quality_bands[0].min = nan"),
        ("noise_offset = 0.0357", "noise_offset = -inf", "train.stages[1].noise_offset = -inf"),
    ],
)
def test_recipe_floats_must_be_finite(ws, old, new, needle):
    text = ws.recipe_path.read_text()
    assert old in text
    ws.recipe_path.write_text(text.replace(old, new, 1))
    one_error(
        tagtune("train", ws.root, "--dry-run"),
        f"error: {ws.recipe_path}: {needle}: input should be a finite number",
    )


# --- point 10: user text is printed literally ----------------------------------------------


@pytest.mark.parametrize("name", ["[/bold]", "[bold]x", "[nan, 16]", "a\nb\x1b[2J"])
def test_error_lines_print_user_text_literally(tmp_path, name):
    where = tmp_path / name
    shown = str(where).replace("\n", "\\n").replace("\x1b", "\\x1b")
    line = one_error(tagtune("status", where))
    assert line == f"error: {shown}: not a tagtune workspace (no tagtune.toml)"


def test_summaries_and_progress_print_file_names_literally(ws, tmp_path, tiny_file):
    folder = tmp_path / "x[" / "bold] coll [red]"  # its path holds "[/bold]"
    folder.mkdir(parents=True)
    save_png(folder / "a.png")
    (folder / "a.png.json").write_text(json.dumps(post(1, tag_string_general="[/bold] smile")))
    run = tagtune("ingest", ws.root, folder)
    assert run.code == 0, run.err
    flat = "".join(run.out.split())  # long lines are wrapped at the console width
    assert "".join(f"{folder}: +1 posts, +1 images, 0 problems".split()) in flat
    odd = tmp_path / "x[" / "bold].safetensors"
    shutil.copy(tiny_file, odd)
    run = tagtune("hash", odd)
    assert run.code == 0, run.err
    assert run.out.splitlines()[0] == str(odd)
    pipe = tmp_path / "x[" / "bold]pipe.safetensors"
    os.mkfifo(pipe)  # never opened for a blocking read: the hash would wait forever
    run = tagtune("hash", odd, pipe, timeout=60)
    assert run.code == 1
    assert run.err.splitlines() == [
        f"  error: {pipe}: cannot read: not a regular file (a FIFO, socket or device): never read"
    ]
