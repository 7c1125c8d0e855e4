"""`tagtune report`: the page a user opens to see a workspace and its runs.

The demo workspace's page is opened in headless Chromium (no console errors, every image
loads, every section there); hostile tags, paths and card text stay text; runs with and
without validation; the watch loop; nothing tagtune did not write is replaced.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from browser import Browser, find_chromium
from tagtune.cli.main import app
from tagtune.core.catalog import open_catalog
from tagtune.core.errors import InputError, WorkspaceError
from tagtune.recipe.workspace import init_workspace
from tagtune.report import watch_report, write_report

SECTIONS = ("dataset", "buckets", "runs", "outputs")
HOSTILE = "<script>document.title='pwned'</script>"
HOSTILE_IMG = "<img src=x onerror=\"document.title='pwned'\">"

IMAGES_JS = """JSON.stringify([...document.images].map(i => ({
    src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0})))"""
SECTIONS_JS = """JSON.stringify([...document.querySelectorAll('main > section')].map(s => ({
    id: s.id, title: s.querySelector('h2') && s.querySelector('h2').textContent})))"""


def _chromium() -> str:
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no Chromium found (Debian: `apt-get install chromium`; or set $CHROMIUM): "
            "the report's browser checks need it"
        )
    return binary


def _open(binary: str, page: Path) -> Browser:
    browser = Browser(binary)
    browser.open(page.resolve().as_uri())
    return browser


# --- the demo workspace, in a real browser -----------------------------------------------


@pytest.mark.slow
def test_demo_report_opens_in_chromium_with_every_image_and_section(quick_demo, tmp_path):
    result, out = quick_demo
    assert result.exit_code == 0, result.output
    page = Path(out["paths"]["report"])
    assert page == Path(out["paths"]["catalog"]).parent / "out" / "report.html"
    with _open(_chromium(), page) as browser:
        images = json.loads(browser.evaluate(IMAGES_JS))
        sections = json.loads(browser.evaluate(SECTIONS_JS))
        crops = browser.evaluate("document.querySelectorAll('#buckets img[src*=crop-]').length")
        grids = browser.evaluate("document.querySelectorAll('#runs img[src*=grid-]').length")
        problems = browser.evaluate("document.querySelectorAll('#problems tbody tr').length")
        # the problems filter: typing a reason leaves only its rows
        shown = browser.evaluate(
            """(() => { const f = document.querySelector('input[data-filter=problems]');
            f.value = 'zero-byte'; f.dispatchEvent(new Event('input'));
            return [...document.querySelectorAll('#problems tbody tr')]
                .filter(r => !r.hidden).map(r => r.textContent); })()"""
        )
        shot = browser.screenshot(tmp_path / "demo-report.png")
        errors = browser.errors()
    assert errors == []
    assert [s["id"] for s in sections] == list(SECTIONS)
    assert [s["title"] for s in sections] == ["Dataset", "Buckets", "Runs", "Outputs"]
    assert images and [i for i in images if not i["ok"]] == []
    assert crops >= 3  # a few crop thumbnails per bucket
    assert grids == 2  # one sample grid per epoch: main and favorites, one epoch each
    assert problems == sum(out["facts"]["ingest"]["problems"].values())  # every one listed
    assert len(shown) == 1 and "zero-byte" in shown[0]
    assert shot.stat().st_size > 10_000


# --- user text stays text ------------------------------------------------------------------


def _hostile_workspace(root: Path):
    ws = init_workspace(root)
    with open_catalog(ws.catalog_path) as con:
        con.execute(
            "INSERT INTO posts (id, rating, date, tags_general, tags_artist, source, favorite) "
            "VALUES (1, 'g', DATE '2020-01-01', [?, 'smile'], [?], ?, TRUE)",
            [HOSTILE, HOSTILE_IMG, f"/data/{HOSTILE}"],
        )
        con.execute(
            "INSERT INTO problems (path, post_id, reason, detail, stage) "
            "VALUES (?, 1, 'unreadable', ?, 'ingest')",
            [f"/data/{HOSTILE}.png", HOSTILE_IMG],
        )
        con.execute(
            "INSERT INTO captions (post_id, caption, tags, groups, tokens) "
            "VALUES (1, ?, [?], ['general'], 80)",
            [f"{HOSTILE}, smile", HOSTILE],
        )
        con.execute(
            "INSERT INTO recommended_tags (subset, rank, tag, jaccard, count) "
            "VALUES ('favorites', 1, ?, 0.5, 3)",
            [HOSTILE_IMG],
        )
    (ws.out_dir / "model.md").write_text(
        f"# card\n\n{HOSTILE}\n\n{HOSTILE_IMG}\n\n[click](javascript:alert(1))\n"
    )
    run = ws.runs_dir / "<b>run<b>"
    run.mkdir(parents=True)
    (run / "run.json").write_text(
        json.dumps(
            {
                "stages": [
                    {"name": HOSTILE_IMG, "status": "failed", "subset": HOSTILE},
                    {"name": "edited", "status": "running", "steps": "many", "epochs": None},
                ],
                "totals": [],
            }
        )
    )
    return ws


def test_tags_paths_captions_and_card_text_are_escaped(tmp_path):
    ws = _hostile_workspace(tmp_path / "ws")
    html = write_report(ws).path.read_text()
    assert HOSTILE not in html and HOSTILE_IMG not in html
    assert html.count("<script") == 1  # the page's own filter/reload script
    assert "<img src=x" not in html and 'href="javascript:' not in html
    for shown in (
        "/data/&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;.png",  # problem path
        "&lt;script&gt;document.title=&#39;pwned&#39;&lt;/script&gt;, smile",  # caption
        "run &lt;b&gt;run&lt;b&gt;",  # run folder name
        'stage edited <span class="status unreadable">',  # a hand-edited entry: no crash
    ):
        assert shown in html
    card = html.split('class="card-md"')[1]  # the model card's raw HTML is shown as text
    assert "<p>&lt;script&gt;document.title='pwned'&lt;/script&gt;</p>" in card


def test_hostile_text_does_not_run_in_chromium(tmp_path):
    binary = _chromium()
    ws = _hostile_workspace(tmp_path / "ws")
    page = write_report(ws).path
    with _open(binary, page) as browser:
        title = browser.evaluate("document.title")
        injected = browser.evaluate("document.querySelectorAll('img[src=x]').length")
        errors = browser.errors()
    assert title.startswith("tagtune report") and injected == 0 and errors == []


# --- runs: curves, validation (present or not), resumes, samples -----------------------------


def _scalars(log_dir: Path, tags: dict[str, list[tuple[int, float]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(log_dir))
    for tag, points in tags.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def _stage(name: str, status: str, steps: int, **extra) -> dict:
    return {
        "name": name, "status": status, "subset": "all", "images": 8, "epochs": 2,
        "batch_size": 2, "steps_per_epoch": steps // 2, "steps": steps, "seconds": 12.5,
        "final_loss": 0.25 if status == "complete" else None, "started_at": "2026-01-01T00:00:00",
        **extra,
    }  # fmt: skip


def _runs_workspace(root: Path):
    ws = init_workspace(root)
    run = ws.runs_dir / "r1"
    evaluations = [
        {"step": s, "epoch": s // 4, "loss": 0.5 - s / 100, "loss_wrong_caption": 0.61,
         "conditioning_gap": 0.11 + s / 1000, "seconds": 1.5}
        for s in (4, 8)
    ]  # fmt: skip
    record = {
        "run": "r1",
        "stages": [
            _stage(
                "main",
                "complete",
                8,
                validation={"images": 4, "evaluations": evaluations},
                resumes=[{"step": 3, "at": "2026-01-01T01:00:00+00:00"}],
            ),  # fmt: skip
            _stage("favorites", "running", 12),
        ],
        "totals": {"steps": 8, "seconds": 12.5},
        "recipe": {"train": {"stages": [{"name": "main"}, {"name": "favorites"}, {"name": "x"}]}},
    }
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps(record))
    loss = [(s, 1.0 / s) for s in range(1, 9)]
    _scalars(run / "main" / "logs", {"loss": loss, "lr/unet": [(s, 1e-4) for s in range(1, 9)]})
    # favorites: no validation in run.json; TensorBoard has val/loss (and nothing else of it)
    _scalars(
        run / "favorites" / "logs",
        {"loss": loss[:6], "lr/unet": [(s, 1e-5) for s in range(1, 7)], "val/loss": [(6, 0.77)]},
    )
    from PIL import Image

    for epoch in (1, 2):
        grid = run / "main" / "samples" / f"epoch-{epoch:03d}" / "grid.png"
        grid.parent.mkdir(parents=True)
        Image.new("RGB", (64, 32), (40 * epoch, 90, 160)).save(grid)
    plain = ws.runs_dir / "r0"
    plain.mkdir()
    (plain / "run.json").write_text(json.dumps({"stages": [_stage("only", "complete", 4)]}))
    _scalars(plain / "only" / "logs", {"loss": loss[:4]})
    return ws


def _section(html: str, start: str, *ends: str) -> str:
    """From `start` to the nearest of `ends` after it."""
    i = html.index(start)
    return html[i : min(j for e in ends if (j := html.find(e, i + len(start))) >= 0)]


def test_runs_show_validation_when_recorded_and_resumes_on_the_curves(tmp_path):
    ws = _runs_workspace(tmp_path / "ws")
    result = write_report(ws)
    html = result.path.read_text()
    main = _section(html, "stage main", "stage favorites")
    favorites = _section(html, "stage favorites", "stage x")
    plain = _section(html, "<h3>run r0", "<h3>run ", "</section>")
    # run.json's evaluations: a table and the conditioning-gap panel
    assert "on 4 held-out images" in main
    assert '<td class="num">0.46</td><td class="num">0.61</td>' in main
    chart = re.search(r'src="report/(chart-[0-9a-f]+\.svg)" alt="loss and learning rate', main)
    svg = (result.assets / chart.group(1)).read_text()
    assert "conditioning gap" in svg and "validation" in svg and "resumed" in svg
    assert "from step 3 at 2026-01-01T01:00:00+00:00" in main
    assert main.count('src="report/grid-') == 2 and "epoch 2" in main
    # TensorBoard's val/loss when run.json has none; progress of a running stage from its logs
    assert '<td class="num">0.77</td>' in favorites and "6 of 12" in favorites
    # nothing about validation where there is none, and no gap panel
    assert "Validation" not in plain
    chart = re.search(r'src="report/(chart-[0-9a-f]+\.svg)"', plain)
    svg = (result.assets / chart.group(1)).read_text()
    assert "conditioning gap" not in svg and "resumed" not in svg
    assert 'stage x <span class="status pending">pending</span>' in html


# --- writing: atomic, never over a foreign file, the watch loop -----------------------------


def test_a_page_tagtune_did_not_write_is_kept_unless_forced(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    page = ws.out_dir / "report.html"
    page.write_text("<html>my own notes</html>")
    with pytest.raises(WorkspaceError, match="not a report tagtune wrote"):
        write_report(ws)
    assert page.read_text() == "<html>my own notes</html>"
    run = subprocess.run(
        [sys.executable, "-m", "tagtune.cli.main", "report", str(ws.root)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2 and run.stderr.startswith(f"error: {page}: exists and is not")
    run = CliRunner().invoke(app, ["report", str(ws.root), "--force", "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["page_bytes"] == page.stat().st_size
    assert "no catalog yet" in page.read_text()
    write_report(ws)  # its own page is rewritten without --force


def test_old_assets_go_but_files_the_report_did_not_write_stay(tmp_path):
    ws = _runs_workspace(tmp_path / "ws")
    folder = ws.out_dir / "report"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    stale = folder / "chart-0123456789abcdef.svg"
    stale.write_text("<svg/>")
    first = set(re.findall(r"report/(chart-[\w.-]+)", write_report(ws).path.read_text()))
    assert not stale.exists() and (folder / "notes.txt").read_text() == "mine"
    _scalars(ws.runs_dir / "r1" / "main" / "logs", {"loss": [(8, 0.01)]})  # a new curve
    second = set(re.findall(r"report/(chart-[\w.-]+)", write_report(ws).path.read_text()))
    replaced = first - second
    assert len(replaced) == 1
    # a browser still showing the first page keeps its chart until the next rewrite
    assert all((folder / n).is_file() for n in first | second)
    write_report(ws)
    assert not (folder / replaced.pop()).exists()
    assert all((folder / n).is_file() for n in second) and (folder / "notes.txt").is_file()


def test_watch_rewrites_a_reloading_page_and_leaves_a_static_one(tmp_path):
    ws = init_workspace(tmp_path / "ws")
    seen = []

    def on_write(result):
        seen.append(result.path.read_text())
        if len(seen) == 2:
            raise KeyboardInterrupt  # Ctrl-C during the second round

    last = watch_report(ws, every=1, on_write=on_write)
    assert len(seen) == 2 and all('data-refresh="1"' in p for p in seen)
    assert 'data-refresh=""' in last.path.read_text()  # the page left behind stays put
    with pytest.raises(InputError, match="too short"):
        watch_report(ws, every=0)
