"""CLIP token counts of captions (without BOS/EOS), exact and fast.

CLIP's pre-tokenizer splits on whitespace, and BPE never merges across a pre-token, so a
caption `t1, t2, ..., tn` (separator ending in whitespace) costs exactly
`count("t1,") + ... + count("t(n-1),") + count("tn")`. A tag ending in a letter, digit or
space costs one more token with its comma; a tag ending in punctuation can merge with it
(`(style),` is the single pre-token `),`), so those are tokenized with their comma.
Per-tag counts are cached, distinct tags tokenized once in a batch with the fast tokenizer.

Without the CLIP vocabulary a clearly labelled approximation counts pre-tokens (letter runs,
single digits, punctuation runs), a lower bound of the real count.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

from tagtune.models import clip_vocab
from tagtune.models.clip_vocab import clip_tokenizer

CLIP_BPE = "clip-bpe"
APPROXIMATE = "approximate"

# CLIP's pre-token pattern, with Python's `re` classes: letter runs, single digits, punctuation runs.
_PRETOKENS = re.compile(r"[^\W\d_]+|\d|(?:[^\s\w]|_)+")


def _separate(text: str, glue: str) -> bool:
    """True when `glue` written right after `text` starts a new CLIP pre-token.

    Letters run together, digits stand alone, punctuation runs together (`)` + `,` -> `),`).
    """
    if not text or not glue:
        return True
    a, b = text[-1], glue[0]
    if a.isspace() or b.isspace():
        return True
    ca, cb = unicodedata.category(a)[0], unicodedata.category(b)[0]
    if "N" in (ca, cb):
        return True
    return (ca == "L") != (cb == "L")


@functools.lru_cache(maxsize=1)
def _clip_tokenizer():
    """The fast CLIP tokenizer over the real vocabulary, built once per process."""

    return clip_tokenizer()


class TokenCounter:
    """Counts CLIP tokens of captions built from tags joined by `separator`.

    `method` is "clip-bpe" with the real vocabulary, else "approximate".
    """

    def __init__(self, separator: str = ", ", approximate: bool | None = None) -> None:

        self.separator = separator
        self.glue = separator.rstrip()  # the part of the separator glued to the previous tag
        self.by_tag = bool(separator) and separator[-1].isspace()
        use_real = clip_vocab.vocab_available() if approximate is None else not approximate
        self.method = CLIP_BPE if use_real else APPROXIMATE
        self._tok = _clip_tokenizer() if use_real else None
        self._mid: dict[str, int] = {}
        self._last: dict[str, int] = {}

    def count_texts(self, texts: Sequence[str]) -> list[int]:
        """Token counts of whole strings (no BOS/EOS), batched."""
        if not texts:
            return []
        if self._tok is None:
            return [len(_PRETOKENS.findall(t.lower())) for t in texts]
        ids = self._tok(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    def count_text(self, text: str) -> int:
        """Token count of one whole string (no BOS/EOS)."""
        return self.count_texts([text])[0]

    def prepare(self, tags: Iterable[str]) -> None:
        """Tokenize every not-yet-seen tag once (batched) and cache its two costs."""
        new = [t for t in dict.fromkeys(tags) if t not in self._last]
        if not new:
            return
        last = self.count_texts(new)
        glued = [i for i, t in enumerate(new) if not _separate(t, self.glue)]
        glued_counts = self.count_texts([new[i] + self.glue for i in glued])
        extra = self.count_text(self.glue) if self.glue else 0
        mid = [n + extra for n in last]
        for i, n in zip(glued, glued_counts, strict=True):
            mid[i] = n
        for t, m, n in zip(new, mid, last, strict=True):
            self._mid[t] = m
            self._last[t] = n

    def tag_costs(self, tags: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Per-tag costs: (with the separator after it, as the last tag), as int32 arrays."""
        self.prepare(tags)
        mid = np.fromiter((self._mid[t] for t in tags), dtype=np.int32, count=len(tags))
        last = np.fromiter((self._last[t] for t in tags), dtype=np.int32, count=len(tags))
        return mid, last

    def count_tags(self, tags: Sequence[str]) -> int:
        """Tokens of `separator.join(tags)`, from cached per-tag counts when exact."""
        if not tags:
            return 0
        if not self.by_tag:
            return self.count_text(self.separator.join(tags))
        self.prepare(tags)
        return sum(self._mid[t] for t in tags[:-1]) + self._last[tags[-1]]

    def count_lists(
        self, flat: Sequence[str], offsets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token counts of many captions given as one flat tag list and list offsets.

        Returns (tokens per caption, tokens per flat tag including its separator), both int64;
        the second lets callers sum tokens per field group. Distinct tags are tokenized once.
        """
        offsets = np.asarray(offsets, dtype=np.int64)
        n = len(offsets) - 1
        if not self.by_tag:
            items = flat.to_pylist() if hasattr(flat, "to_pylist") else list(flat)
            texts = [self.separator.join(items[offsets[i] : offsets[i + 1]]) for i in range(n)]
            totals = np.asarray(self.count_texts(texts), dtype=np.int64)
            return totals, np.zeros(len(flat), dtype=np.int64)
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = flat if isinstance(flat, pa.Array) else pa.array(flat, type=pa.string())
        uniq = pc.unique(arr)
        mid, last = self.tag_costs(uniq.to_pylist())
        idx = pc.index_in(arr, value_set=uniq).to_numpy(zero_copy_only=False)
        per_tag = mid[idx].astype(np.int64)
        lengths = np.diff(offsets)
        ends = offsets[1:][lengths > 0] - 1
        per_tag[ends] = last[idx[ends]]
        csum = np.concatenate([[0], np.cumsum(per_tag)])
        totals = csum[offsets[1:]] - csum[offsets[:-1]]
        return totals, per_tag
