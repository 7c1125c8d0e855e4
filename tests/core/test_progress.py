"""Progress in a log file: plain timed lines (done/total, rate, ETA), never a bar or escapes."""

from __future__ import annotations

import io
import re

from tagtune.core.progress import Progress, format_duration, progress_mode


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_a_plain_line_each_interval_and_one_at_the_end(monkeypatch):
    monkeypatch.delenv("TAGTUNE_PROGRESS", raising=False)
    out = io.StringIO()
    with Progress(unit="images", interval_s=0.0, percent_step=100, stream=out) as bar:
        task = bar.add_task("encoding", total=4)
        for _ in range(3):
            bar.advance(task)
    lines = out.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "encoding: 1/4 (25%)", "encoding: 2/4 (50%)", "encoding: 3/4 (75%)"
    ]  # fmt: skip
    assert all(re.search(r", [0-9.]+ (images/s|s/it), ETA \d+:\d\d$", line) for line in lines)
    assert "\x1b" not in out.getvalue()


def test_a_long_interval_prints_every_percent_step_only(monkeypatch):
    monkeypatch.delenv("TAGTUNE_PROGRESS", raising=False)
    out = io.StringIO()
    with Progress(unit="steps", interval_s=3600, percent_step=25, stream=out) as bar:
        task = bar.add_task("main", total=100, completed=10)
        for step in range(11, 101):
            bar.update(task, completed=step, info=f"step {step} loss 0.5")
    done = [int(m) for m in re.findall(r"^main: (\d+)/100", out.getvalue(), re.M)]
    assert done == [25, 50, 75, 100]
    assert "s/it" in out.getvalue() and "step 100 loss 0.5" in out.getvalue()


def test_bytes_and_unknown_totals_read_as_sizes_without_a_percent(monkeypatch):
    monkeypatch.delenv("TAGTUNE_PROGRESS", raising=False)
    out = io.StringIO()
    with Progress(unit="bytes", interval_s=0.0, stream=out) as bar:
        task = bar.add_task("merging")
        bar.update(task, completed=2_500_000)
    assert out.getvalue().startswith("merging: 2.5 MB, ")
    assert "ETA" not in out.getvalue()


def test_the_mode_follows_the_terminal_and_the_environment(monkeypatch):
    monkeypatch.delenv("TAGTUNE_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "lines"
    assert progress_mode(_Tty()) == "bar"
    monkeypatch.setenv("TAGTUNE_PROGRESS", "off")
    out = io.StringIO()
    with Progress(stream=out) as bar:
        bar.update(bar.add_task("x", total=2), completed=2)
    assert out.getvalue() == ""
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"


def test_control_characters_in_a_description_stay_out_of_the_log(monkeypatch):
    monkeypatch.delenv("TAGTUNE_PROGRESS", raising=False)
    out = io.StringIO()
    with Progress(interval_s=0.0, stream=out) as bar:
        bar.update(bar.add_task("bad\x1b[2Jname.png", total=1), completed=1)
    assert "\x1b" not in out.getvalue() and out.getvalue().startswith("bad [2Jname.png: 1/1")


def test_prepare_encoding_prints_plain_lines_into_a_log(tmp_path, tiny_sdxl, capsys, monkeypatch):
    import hashlib

    import numpy as np

    from tagtune.prepare.encode import PrepareItem, encode_images
    from tagtune.recipe.model import BucketConfig
    from tagtune.synthetic.collection import shape_image

    monkeypatch.delenv("TAGTUNE_PROGRESS", raising=False)
    monkeypatch.setenv("TAGTUNE_PROGRESS_INTERVAL", "0")
    rng = np.random.default_rng(0)
    items = []
    for i in (1, 2, 3):
        img, _ = shape_image(rng, (64, 64))
        img.save(tmp_path / f"{i}.png")
        sha = hashlib.sha256((tmp_path / f"{i}.png").read_bytes()).hexdigest()
        items.append(PrepareItem(i, str(tmp_path / f"{i}.png"), sha, 64, 64))
    cfg = BucketConfig(resolution=64, min_side=64, max_side=64, step=64)
    encode_images(items, tiny_sdxl.vae, tmp_path / "cache", cfg, workers=0, show_progress=True)
    err = capsys.readouterr().err
    assert re.search(r"^encoding: 3/3 \(100%\), [0-9.]+ (images/s|s/it), ETA 0:00$", err, re.M)
    assert "\x1b" not in err
