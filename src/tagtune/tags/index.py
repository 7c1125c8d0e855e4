"""The tag index: the captions as one sparse post x tag matrix, cached in the workspace.

X (scipy CSC, posts x tags, 1 where a caption has the tag) is built once from the
`captions` table by DuckDB (unnest, join to the vocabulary, row numbers) and saved in
`WS/cache/tag-index.npz` with a fingerprint of the captions; it is rebuilt only when the
captions change. Subsets are 0/1 vectors over its rows, read live from `posts` with
`catalog.subset_where`, so favorites or exclusions changed after captioning need no rebuild.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import scipy.sparse as sp

from tagtune.core.atomic import atomic_open
from tagtune.core.catalog import check_subset, subset_where
from tagtune.core.errors import WorkspaceError
from tagtune.core.workspace import Workspace

INDEX_FILE = "tag-index.npz"
INDEX_VERSION = 1


# --- the index -------------------------------------------------------------------------


@dataclass
class TagIndex:
    """The post x tag incidence matrix of the captions, with its vocabulary."""

    post_ids: np.ndarray
    """Post id of each row, ascending (int64)."""
    X: sp.csc_matrix
    """posts x tags, 1 where the post's caption has the tag (int32 data, no duplicates)."""
    tags: np.ndarray
    """Tag of each column in caption form, sorted (Python str objects)."""
    groups: np.ndarray
    """Group of each tag (its most frequent group in the captions)."""
    fingerprint: str
    _lookup: dict[str, int] | None = field(default=None, repr=False)

    @property
    def n_posts(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_tags(self) -> int:
        return int(self.X.shape[1])

    def column(self, tag: str) -> int | None:
        """Column of `tag` (caption form) or None."""
        if self._lookup is None:
            self._lookup = {str(t): i for i, t in enumerate(self.tags)}
        return self._lookup.get(tag)


def captions_fingerprint(con: duckdb.DuckDBPyConnection) -> str:
    """A digest of the captions table's content: the cached index is valid while it holds."""
    row = con.execute(
        "SELECT count(*), CAST(max(built_at) AS VARCHAR), "
        "CAST(sum(hash(post_id, caption)) AS VARCHAR) FROM captions"
    ).fetchone()
    text = f"v{INDEX_VERSION}|{row[0]}|{row[1]}|{row[2]}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def build_index(con: duckdb.DuckDBPyConnection, fingerprint: str | None = None) -> TagIndex:
    """Build the index from the captions table (DuckDB does the unnest, join and numbering)."""
    fingerprint = fingerprint or captions_fingerprint(con)
    # Vocabulary: every tag once, with the group it has most often.
    vocab = con.execute(
        "SELECT tag, arg_max(grp, n) FROM ("
        "  SELECT tag, coalesce(grp, 'general') AS grp, count(*) AS n FROM ("
        "    SELECT unnest(tags) AS tag, unnest(groups) AS grp FROM captions"
        "  ) WHERE tag IS NOT NULL AND tag <> '' GROUP BY ALL"
        ") GROUP BY tag ORDER BY tag"
    ).fetchall()
    tags = np.array([v[0] for v in vocab], dtype=object)
    groups = np.array([v[1] for v in vocab], dtype=str)
    post_ids = con.execute("SELECT post_id FROM captions ORDER BY post_id").fetchnumpy()["post_id"]
    post_ids = np.asarray(post_ids, dtype=np.int64)
    vocab_tbl = {"tag": tags, "col": np.arange(len(tags), dtype=np.int32)}
    con.register("_tagtune_vocab", _arrow(vocab_tbl))
    try:
        pairs = con.execute(
            "SELECT p.row, v.col FROM ("
            "  SELECT (row_number() OVER (ORDER BY post_id) - 1)::INTEGER AS row,"
            "         unnest(tags) AS tag FROM captions"
            ") p JOIN _tagtune_vocab v ON p.tag = v.tag"
        ).fetchnumpy()
    finally:
        con.unregister("_tagtune_vocab")
    rows = np.asarray(pairs["row"], dtype=np.int32)
    cols = np.asarray(pairs["col"], dtype=np.int32)
    X = sp.csc_matrix(
        (np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(post_ids), len(tags))
    )
    X.sum_duplicates()
    X.data[:] = 1  # a tag written twice in one caption is still one post
    return TagIndex(post_ids, X, tags, groups, fingerprint)


def _arrow(columns: dict[str, np.ndarray]):
    import pyarrow as pa

    return pa.table({k: pa.array(v) for k, v in columns.items()})


def _pack(tags: np.ndarray) -> np.ndarray:
    """Tags as one NUL-separated UTF-8 byte array (compact, loads without pickle)."""
    return np.frombuffer("\0".join(tags).encode(), dtype=np.uint8)


def _unpack(blob: np.ndarray) -> np.ndarray:
    text = blob.tobytes().decode()
    return np.array(text.split("\0") if text else [], dtype=object)


def save_index(index: TagIndex, path: str | Path) -> None:
    """Write the index atomically (uncompressed npz: loads in a fraction of a second)."""
    with atomic_open(path, "wb", encoding=None) as fh:
        np.savez(
            fh,
            version=np.array(INDEX_VERSION),
            fingerprint=np.array(index.fingerprint),
            post_ids=index.post_ids,
            indptr=index.X.indptr,
            indices=index.X.indices,
            tags=_pack(index.tags),
            groups=index.groups,
        )


def load_index(path: str | Path) -> TagIndex | None:
    """Read a saved index, or None when it is missing, unreadable or of another version."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_VERSION:
                return None
            post_ids, indptr, indices = z["post_ids"], z["indptr"], z["indices"]
            tags, groups, fp = _unpack(z["tags"]), z["groups"], str(z["fingerprint"])
    except (OSError, ValueError, KeyError):
        return None
    data = np.ones(len(indices), dtype=np.int32)
    X = sp.csc_matrix((data, indices, indptr), shape=(len(post_ids), len(tags)))
    return TagIndex(post_ids, X, tags, groups, fp)


def tag_index(ws: Workspace, con: duckdb.DuckDBPyConnection, rebuild: bool = False) -> TagIndex:
    """The workspace's index: the cached one while the captions are unchanged, else rebuilt."""
    fp = captions_fingerprint(con)
    path = ws.cache_dir / INDEX_FILE
    index = None if rebuild else load_index(path)
    if index is None or index.fingerprint != fp:
        index = build_index(con, fp)
        if index.n_posts == 0:
            raise WorkspaceError(
                "no captions in the catalog", file=ws.catalog_path, hint="run `tagtune caption`"
            )
        save_index(index, path)
    return index


# --- subsets ---------------------------------------------------------------------------


def subset_expr(subset: str = "all", where: str | None = None) -> str:
    """One subset from `--subset` and `--where` (both must hold); its name in results.

    Each part is checked on its own first (`catalog.subset_where`), so an error names its flag.
    """
    s = (subset or "all").strip()
    subset_where(s, "--subset")
    if not where or not where.strip():
        return s
    subset_where(where, "--where")
    if s in ("", "all"):
        return where.strip()
    head = "posts.favorite" if s == "favorites" else f"({s})"
    return f"{head} AND ({where.strip()})"


def subset_flags(subset: str | None, where: str | None) -> str:
    """The flag(s) a `subset_expr` came from, for errors found when it runs."""
    given = [f for f, v in (("--subset", subset), ("--where", where)) if v and v.strip()]
    return "/".join(given) or "--subset"


def subset_mask(
    con: duckdb.DuckDBPyConnection, index: TagIndex, subset: str, field: str = "subset"
) -> np.ndarray:
    """0/1 int32 vector over the index rows: captioned posts of `subset`, never excluded ones.

    `field` names the flag or key the subset came from in errors.
    """
    where = check_subset(con, subset, field)
    ids = con.execute(f"SELECT id FROM posts WHERE {where}").fetchnumpy()["id"]
    ids = np.asarray(ids, dtype=np.int64)
    mask = np.zeros(index.n_posts, dtype=np.int32)
    if len(ids) and index.n_posts:
        pos = np.minimum(np.searchsorted(index.post_ids, ids), index.n_posts - 1)
        mask[pos[index.post_ids[pos] == ids]] = 1
    return mask


def column_counts(index: TagIndex, mask: np.ndarray) -> np.ndarray:
    """Posts per tag inside the 0/1 row vector `mask` (one sparse product, exact)."""
    return np.asarray(index.X.T @ mask, dtype=np.int64)
