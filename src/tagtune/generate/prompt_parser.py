"""A1111 emphasis syntax: a prompt string -> [(text, weight)] segments.

What is matched (the rules of AUTOMATIC1111's `parse_prompt_attention`, so prompts copied
from image sites weigh the same here):

- `(x)` multiplies the weight of x by 1.1, `[x]` divides it by 1.1; brackets nest and
  multiply: `((x))` is 1.1 * 1.1 = 1.21.
- `(x:1.3)` sets a factor of 1.3 instead of 1.1 (any `[+-]?[.digits]+` number, spaces
  allowed around it); the number is what multiplies, so `((x:1.3))` is 1.3 * 1.1.
- `\\(`, `\\)`, `\\[`, `\\]` and `\\\\` are literal characters (Danbooru tags such as
  `\\(artist\\)`); any other backslash is kept as text.
- Unbalanced brackets: a `)` or `]` without an opener is literal text; an opener never
  closed applies its 1.1 (or 1/1.1) up to the end of the prompt.
- A `:` that is not a weight (`a:b`) is literal text; `[x:1.3]` is not a weight either
  (the `:1.3]` stays text inside a square bracket, as A1111 does).
- Neighbouring segments with the same weight are joined; an empty prompt is [("", 1.0)].

Not matched: A1111's `BREAK` keyword and prompt editing `[a:b:step]` (both kept as text).
"""

from __future__ import annotations

import re

ROUND = 1.1
SQUARE = 1 / 1.1

# One token per match, tried in order: escapes, openers, a weight closing a round
# bracket, closers, plain text, a lone colon or backslash.
_TOKEN = re.compile(
    r"""
    (?P<escape>\\[()\[\]\\])
  | (?P<open>[(\[])
  | :\s*(?P<weight>[+-]?[.\d]+)\s*\)
  | (?P<close>[)\]])
  | (?P<text>[^\\()\[\]:]+)
  | (?P<other>[:\\])
    """,
    re.X,
)


def _merge_equal(segments: list[list]) -> list[tuple[str, float]]:
    out: list[list] = []
    for text, weight in segments:
        if out and out[-1][1] == weight:
            out[-1][0] += text
        else:
            out.append([text, weight])
    return [(t, w) for t, w in out] or [("", 1.0)]


def parse_prompt(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) segments by A1111 emphasis rules (see module doc).

    Why: the conditioning multiplies each token's hidden state by its weight, so the
    weights must be exactly what users get from the same prompt in A1111.
    """
    segments: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for seg in segments[start:]:
            seg[1] *= factor

    for m in _TOKEN.finditer(text):
        token = m.group(0)
        if m.group("escape"):
            segments.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(segments))
        elif token == "[":
            square_open.append(len(segments))
        elif m.group("weight") is not None and round_open:
            try:
                factor = float(m.group("weight"))
            except ValueError:  # "1.2.3" or "." : not a number, keep it as text
                segments.append([token, 1.0])
                continue
            scale(round_open.pop(), factor)
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            segments.append([token, 1.0])

    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    return _merge_equal(segments)


def escape_prompt_text(text: str) -> str:
    """Escape brackets so a literal tag such as `name_(series)` keeps its parentheses."""
    return re.sub(r"([()\[\]\\])", r"\\\1", text)
