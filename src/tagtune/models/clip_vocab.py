"""The real CLIP BPE vocabulary, found offline, and CLIP tokenizers built from it.

SDXL's two text encoders share OpenAI's CLIP BPE (49,408 tokens). It ships inside the
`open-clip-torch` wheel as `open_clip/bpe_simple_vocab_16e6.txt.gz`; `make setup` downloads
that wheel (`pip download --no-deps`) and we read the file out of the zip without importing
the package. Tokenizer 1 pads with `<|endoftext|>`, tokenizer 2 with `!` (id 0), as SDXL does.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import os
import sys
import zipfile
from pathlib import Path

from tagtune.core.errors import DependencyError

VOCAB_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
MAX_LENGTH = 77


def _candidates() -> list[Path]:
    paths: list[Path] = []
    if env := os.environ.get("TAGTUNE_CLIP_VOCAB"):
        paths.append(Path(env))
    for base in (Path(sys.prefix) / "share" / "tagtune", Path.home() / ".cache" / "tagtune"):
        paths.append(base / "bpe_simple_vocab_16e6.txt.gz")
        wheels = base / "wheels"
        if wheels.is_dir():
            paths.extend(sorted(wheels.glob("open_clip_torch-*.whl"), reverse=True))
    spec = importlib.util.find_spec("open_clip")  # locates the package without importing it
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            paths.append(Path(loc) / "bpe_simple_vocab_16e6.txt.gz")
    return paths


def find_vocab() -> Path | None:
    """Where the CLIP BPE file (or a wheel holding it) is, or None."""
    for p in _candidates():
        if p.is_file():
            return p
    return None


@functools.lru_cache(maxsize=1)
def _bpe_lines() -> tuple[str, ...]:
    path = find_vocab()
    if path is None:
        raise DependencyError(
            "the CLIP BPE vocabulary is not available offline",
            hint="run `make setup` (downloads the open-clip-torch wheel without installing it) "
            "or set TAGTUNE_CLIP_VOCAB to bpe_simple_vocab_16e6.txt.gz",
        )
    try:
        if path.suffix == ".whl":
            with zipfile.ZipFile(path) as zf:
                data = zf.read(VOCAB_MEMBER)
        else:
            data = path.read_bytes()
        return tuple(gzip.decompress(data).decode("utf-8").split("\n"))
    except (OSError, EOFError, UnicodeDecodeError, zipfile.BadZipFile, KeyError) as exc:
        raise DependencyError(
            f"not a CLIP BPE vocabulary ({type(exc).__name__}: {exc})",
            file=path,
            hint="point TAGTUNE_CLIP_VOCAB at bpe_simple_vocab_16e6.txt.gz or run `make setup`",
        ) from None


def vocab_available() -> bool:
    """True when the real CLIP vocabulary can be read offline."""
    return find_vocab() is not None


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: each byte mapped to a printable character."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(keep)
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return [chr(c) for c in chars]


@functools.lru_cache(maxsize=1)
def vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's token->id map and BPE merges, built the way OpenAI's tokenizer builds them."""
    lines = _bpe_lines()
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = _bytes_to_unicode()
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == VOCAB_SIZE, len(tokens)
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """A transformers CLIPTokenizer over the real vocabulary (model_max_length 77)."""
    from transformers import CLIPTokenizer

    vocab, merges = vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        pad_token=pad_token,
        model_max_length=MAX_LENGTH,
    )


def sdxl_tokenizers():
    """(tokenizer, tokenizer_2) as SDXL uses them: same BPE, pads `<|endoftext|>` and `!`."""
    return clip_tokenizer("<|endoftext|>"), clip_tokenizer("!")
