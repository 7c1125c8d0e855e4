"""docs/report.png: the README's screenshot of the report of `make demo`'s workspace.

Runs `tagtune demo` into FOLDER when it holds no demo yet (or with --run-demo), rewrites
the report, opens it in headless Chromium and stacks three parts of the page (the dataset
totals, two bucket rows with their crops, the first training stage) into one modest PNG.

    .venv/bin/python scripts/readme_screenshot.py [--demo demo-workspace] [--out docs/report.png]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the DevTools-protocol helper the browser test uses

from browser import Browser, find_chromium  # noqa: E402

WIDTH = 1280
PARTS = {
    # one screenshot part: from the first element matching A to the n-th matching B
    "dataset": ("header", "#dataset .stage-body", 0),
    "buckets": ("#buckets h2", "#buckets .bucket", 1),
    "runs": ("#runs .stage", "#runs .stage .grids", 0),
}
RECT_JS = """(() => {{ const a = document.querySelector({first!r}),
    b = document.querySelectorAll({last!r})[{index}]; if (!a || !b) return null;
    const r = a.getBoundingClientRect(), s = b.getBoundingClientRect();
    return [r.top + scrollY, s.bottom + scrollY + 8]; }})()"""


def main() -> None:
    """Make (or reuse) the demo, rewrite its report, screenshot it, write the PNG."""
    from PIL import Image

    from tagtune.core.workspace import open_workspace
    from tagtune.report import write_report

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=Path("demo-workspace"), help="demo folder")
    ap.add_argument("--out", type=Path, default=Path("docs/report.png"), help="PNG to write")
    ap.add_argument("--run-demo", action="store_true", help="run the demo even if it exists")
    ap.add_argument("--scale", type=float, default=0.7, help="size of the PNG vs the page")
    args = ap.parse_args()

    binary = find_chromium()
    if binary is None:
        sys.exit("no Chromium found: `make browser` installs it (or set $CHROMIUM)")
    ws_root = args.demo / "workspace"
    if args.run_demo or not (ws_root / "runs").is_dir():
        from tagtune.demo import run_demo

        run_demo(args.demo, step=lambda name: print(f"==> {name}", flush=True))
    page = write_report(open_workspace(ws_root)).path
    parts = []
    with Browser(binary, width=WIDTH, height=900) as browser:
        browser.open(page.resolve().as_uri())
        if browser.errors():
            sys.exit(f"the page has errors: {browser.errors()}")
        for name, (first, last, index) in PARTS.items():
            top_bottom = browser.evaluate(RECT_JS.format(first=first, last=last, index=index))
            if top_bottom is None:
                sys.exit(f"the page has no {name} part ({first} ... {last})")
            top, bottom = top_bottom
            clip = {"x": 0, "y": top, "width": WIDTH, "height": bottom - top, "scale": args.scale}
            with tempfile.TemporaryDirectory() as tmp:
                shot = browser.screenshot(Path(tmp) / f"{name}.png", clip=clip)
                parts.append(Image.open(shot).convert("RGB"))
    gap = 6
    sheet = Image.new(
        "RGB",
        (max(p.width for p in parts), sum(p.height for p in parts) + gap * (len(parts) - 1)),
        (200, 205, 212),
    )
    y = 0
    for p in parts:
        sheet.paste(p, (0, y))
        y += p.height + gap
    buf = io.BytesIO()
    sheet.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(buf, "PNG", optimize=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(buf.getvalue())
    print(f"wrote {args.out} ({sheet.width}x{sheet.height}, {len(buf.getvalue()):,} bytes)")


if __name__ == "__main__":
    main()
