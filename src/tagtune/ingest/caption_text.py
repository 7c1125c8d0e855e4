"""A kohya-style caption file's text as tags: the caption as written, and tags in Danbooru form.

A caption file (`NAME.txt`, `NAME.caption`) holds one caption: tags separated by a separator
(`,` as sd-scripts splits them), each tag written with spaces (`long hair`). Its text is read
with the project's one tag normaliser (`tag_normalize.clean_text`: NFKC, hidden characters
removed and reported), so:

- `caption` tags keep the user's order and spelling (whitespace runs as one space): the
  caption the builder writes, as sd-scripts would read it;
- `danbooru` tags are the same tags with underscores (`long_hair`), deduplicated: what tag
  analytics, subsets and the safety filter read, like a Danbooru post's `tags_general`.

No spelling hides a listed tag from the safety filter: the other reading of hidden characters
(as `split_tags` does) and every run of up to `NGRAM_WORDS` words inside a tag (a caption
written as `1girl loli smile` without separators) are compared too, and the runs that are
listed are added to the Danbooru tags, so the filter sees them at ingest and again on each
re-judgement.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

from tagtune.ingest.tag_normalize import clean_text, filter_key

NGRAM_WORDS = 3
"""Longest run of words inside one caption tag that is compared with the safety lists (the
longest listed tag has two words; recipe extras may have more, up to this)."""


@dataclass(frozen=True)
class CaptionText:
    """A caption file's text read as tags (see the module notes); `hidden` lists the hidden
    characters found (`U+200B ...`, empty when none)."""

    caption: list[str]
    danbooru: list[str]
    hidden: str


def _pieces(text: str, separator: str) -> list[str]:
    sep = separator.strip() or separator
    return text.split(sep) if sep else [text]


def word_runs(tag: str) -> Iterator[str]:
    """Every run of 1..`NGRAM_WORDS` consecutive words of a caption tag, joined by `_`."""
    words = tag.replace("_", " ").split()
    for n in range(1, min(NGRAM_WORDS, len(words)) + 1):
        for i in range(len(words) - n + 1):
            yield "_".join(words[i : i + n])


def listed_runs(tags: Collection[str], blocked: Collection[str]) -> list[str]:
    """The word runs of `tags` whose `filter_key` is in `blocked` (the safety lists' keys)."""
    out: list[str] = []
    for tag in tags:
        for run in word_runs(tag):
            if filter_key(run) in blocked and run not in out:
                out.append(run)
    return out


def read_caption_text(
    text: str,
    separator: str = ",",
    blocked: Collection[str] = (),
    prefix: str = "",
    suffix: str = "",
) -> CaptionText:
    """Split a caption file's text into caption tags and Danbooru tags (module notes).

    `prefix` / `suffix` are sd-scripts' `caption_prefix` / `caption_suffix`, added as
    written before splitting. Empty pieces (`a,,b`, a trailing comma) are dropped.
    """
    text = f"{prefix}{text}{suffix}"
    cleaned, hidden = clean_text(text)
    caption: list[str] = []
    for piece in _pieces(cleaned, separator):
        tag = " ".join(piece.split())
        if tag and tag not in caption:
            caption.append(tag)
    danbooru = list(dict.fromkeys("_".join(t.split()) for t in caption))
    extra = listed_runs(caption, blocked)
    if hidden and blocked:  # the other reading of the hidden characters (as split_tags)
        swapped, _ = clean_text(text, swap=True)
        other = [" ".join(p.split()) for p in _pieces(swapped, separator)]
        extra += [
            r
            for r in (*("_".join(t.split()) for t in other if t), *listed_runs(other, blocked))
            if filter_key(r) in blocked
        ]
    danbooru += [t for t in dict.fromkeys(extra) if t not in danbooru]
    return CaptionText(caption, danbooru, hidden)
