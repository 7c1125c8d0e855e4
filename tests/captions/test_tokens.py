"""CLIP token counts: per-tag sums are exactly the whole-caption count."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tagtune.captions.tokens import APPROXIMATE, CLIP_BPE, TokenCounter
from tagtune.models import clip_vocab

needs_vocab = pytest.mark.skipif(
    not clip_vocab.vocab_available(), reason="CLIP vocabulary not available offline"
)

TRICKY = [
    "1girl", "long hair", "smile", "fate (series)", "1990s (style)", "^_^", "o_o", "+_+", ":d",
    ":)", ">:(", "x_x", "c.c.", "ranma 1/2", "nier:automata", "7", "3d", "!?", "...", "é",
    "Ünicode", "don't", "it's", "||_||", "(o)_(o)", "k-on!", "trailing ", "tag\\)", "日本語",
    "masterpiece", "nsfw", "a's", "100", "2020s",
]  # fmt: skip


@needs_vocab
@pytest.mark.parametrize("separator", [", ", " , ", " | ", "; ", ",\n"])
def test_per_tag_counts_equal_whole_caption_counts(separator):
    counter = TokenCounter(separator)
    assert counter.method == CLIP_BPE and counter.by_tag
    rng = random.Random(3)
    captions = [rng.sample(TRICKY, rng.randint(1, 12)) for _ in range(300)]
    whole = counter.count_texts([separator.join(c) for c in captions])
    assert [counter.count_tags(c) for c in captions] == whole


@needs_vocab
def test_punctuation_merges_with_the_comma():
    counter = TokenCounter(", ")
    # `)` and `,` form the single pre-token `),`: one token, not two
    assert counter.count_text("fate (series), smile") == 5
    assert counter.count_tags(["fate (series)", "smile"]) == 5
    assert counter.count_tags(["1girl", "long hair", "smile"]) == 7


@needs_vocab
def test_count_lists_gives_totals_and_per_tag_costs():
    counter = TokenCounter(", ")
    flat = ["1girl", "smile", "fate (series)", "solo"]
    totals, per_tag = counter.count_lists(flat, np.array([0, 2, 2, 4]))
    assert totals.tolist() == [
        counter.count_text("1girl, smile"),
        0,
        counter.count_text("fate (series), solo"),
    ]
    assert int(per_tag.sum()) == int(totals.sum())


@needs_vocab
def test_separator_without_trailing_space_counts_whole_captions():
    counter = TokenCounter(",")
    assert not counter.by_tag
    assert counter.count_tags(["a_b", "smile"]) == counter.count_text("a_b,smile")


def test_approximation_is_labelled_and_counts_pretokens():
    counter = TokenCounter(", ", approximate=True)
    assert counter.method == APPROXIMATE
    # letter runs, single digits, punctuation runs: 1, girl, ",", long, hair
    assert counter.count_tags(["1girl", "long hair"]) == 5
    assert counter.count_text("") == 0


def test_a_file_that_is_not_the_vocabulary_is_a_clear_error(tmp_path, monkeypatch):
    from tagtune.core.errors import DependencyError
    from tagtune.models import clip_vocab

    bogus = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    bogus.write_text("not gzip")
    monkeypatch.setenv("TAGTUNE_CLIP_VOCAB", str(bogus))
    clip_vocab._bpe_lines.cache_clear()
    try:
        with pytest.raises(DependencyError, match="not a CLIP BPE vocabulary"):
            clip_vocab._bpe_lines()
    finally:
        clip_vocab._bpe_lines.cache_clear()
