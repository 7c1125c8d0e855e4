"""What every command shares: the console, JSON output, and turning library errors into one line.

Both consoles print text as it is (`markup=False`): file names, tags, captions, prompts and
error values may hold `[bold]` or `[/]`, which Rich markup would hide or choke on. Styles come
from `rich.text.Text` objects (`Text.assemble(("error:", "bold red"), " ", message)`).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

from tagtune.core.results import json_ready

console = Console(highlight=False, markup=False)
err_console = Console(stderr=True, highlight=False, markup=False)

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(32), 127) if c != 9} | {10: "\\n", 13: "\\r"}


def one_line(text: str) -> str:
    """`text` on one line: newlines and other control characters (an escape sequence in a
    file name) written as escapes, so an error stays one line and cannot drive the terminal."""
    return text.translate(_CONTROL)


def error_line(message: str, hint: str | None = None) -> list[Text]:
    """The `error: ...` line (and `hint: ...`) for a library error, user text shown literally."""
    lines = [Text.assemble(("error:", "bold red"), " ", one_line(message))]
    if hint:
        lines.append(Text.assemble(("hint:", "dim"), " ", one_line(hint)))
    return lines


def print_json(data: Any) -> None:
    """Print one JSON object on stdout (machine-readable output of `--json`): a library
    `Result` through its `to_json()`, other data made JSON-ready the same way."""
    text = json.dumps(json_ready(data), indent=None, sort_keys=False, default=str)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
