"""The report page: one Jinja2 template, autoescaped, with the stylesheet and script inlined.

Everything a user typed or a file carried (tags, captions, paths, problem details, run
names) reaches the page only through the template's autoescaping; the one piece of HTML
passed through as is is the model card, rendered from Markdown with raw HTML disabled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

GENERATOR = "tagtune report"
TEMPLATES = Path(__file__).parent / "templates"
SECTIONS = (
    ("dataset", "Dataset"),
    ("buckets", "Buckets"),
    ("runs", "Runs"),
    ("outputs", "Outputs"),
)


def fmt(value: Any) -> str:
    """A table cell: floats with 5 significant digits, nothing for missing values."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.5g}"
    return str(value)


def render_page(**context: Any) -> str:
    """The whole page from the sections' data (see report.html.j2 for the names it uses)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2").render(
        generator=GENERATOR,
        nav=SECTIONS,
        fmt=fmt,
        css=(TEMPLATES / "report.css").read_text(encoding="utf-8"),
        js=(TEMPLATES / "report.js").read_text(encoding="utf-8"),
        **context,
    )


def written_by_us(page: Path) -> bool:
    """Whether an existing file is a page this module wrote (its generator tag)."""
    try:
        with open(page, encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">' in head
