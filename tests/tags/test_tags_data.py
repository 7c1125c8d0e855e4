"""Small random catalogs for the tag analytics tests (helpers, no tests), with a brute-force copy."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tagtune.core.catalog import open_catalog
from tagtune.core.workspace import Workspace
from tagtune.recipe.workspace import init_workspace

ARTISTS = ["artist a", "artist b", "artist c"]
COPYRIGHTS = ["original", "fate (series)"]
CHARACTERS = ["hero", "witch"]
GENERAL = ["1girl", "long hair", "short hair", "smile", "blue sky", "outdoors", "flower",
           "cat", "hat", "open mouth", "^_^", "school uniform"]  # fmt: skip
QUALITY = [(150, "masterpiece"), (100, "best quality"), (25, "medium quality"),
           (0, "normal quality"), (-10**9, "worst quality")]  # fmt: skip
RATING = {"g": ["safe"], "s": ["sensitive"], "q": ["nsfw"], "e": ["nsfw", "explicit"]}


@dataclass
class Post:
    id: int
    tags: list[str]
    groups: list[str]
    score: int = 0
    rating: str = "g"
    favorite: bool = False
    excluded: str | None = None


@dataclass
class Catalog:
    ws: Workspace
    posts: list[Post] = field(default_factory=list)

    def sets(self, keep=lambda p: True) -> dict[str, set[int]]:
        """Brute force: tag -> ids of the non-excluded posts that `keep` accepts."""
        out: dict[str, set[int]] = {}
        for p in self.posts:
            if p.excluded is None and keep(p):
                for t in p.tags:
                    out.setdefault(t, set()).add(p.id)
        return out

    def group_of(self, tag: str) -> str:
        return next(
            g for p in self.posts for t, g in zip(p.tags, p.groups, strict=True) if t == tag
        )


def random_posts(seed: int, n: int = 60) -> list[Post]:
    """n posts with 1 artist, 1 copyright, 1 character, 2-8 general tags and the tokens."""
    rng = random.Random(seed)
    posts = []
    for i in range(n):
        score = rng.randint(-20, 200)
        rating = rng.choice("gsqe")
        general = sorted(rng.sample(GENERAL, rng.randint(2, 8)))
        quality = next(t for lo, t in QUALITY if score >= lo)
        tags = [rng.choice(ARTISTS), rng.choice(COPYRIGHTS), rng.choice(CHARACTERS), *general,
                quality, *RATING[rating], rng.choice(["newest", "recent"])]  # fmt: skip
        groups = ["artist", "copyright", "character", *["general"] * len(general), "quality",
                  *["rating"] * len(RATING[rating]), "period"]  # fmt: skip
        posts.append(Post(
            id=1000 + 3 * i, tags=tags, groups=groups, score=score, rating=rating,
            favorite=rng.random() < 0.35,
            excluded="blocked tag" if rng.random() < 0.1 else None,
        ))  # fmt: skip
    return posts


def add_posts(cat: Catalog, posts: list[Post]) -> None:
    """Insert posts and their captions into the catalog (as ingest and caption would)."""
    with open_catalog(cat.ws.catalog_path) as con:
        if not posts:
            return
        con.executemany(
            "INSERT INTO posts (id, score, rating, favorite, excluded) VALUES (?, ?, ?, ?, ?)",
            [[p.id, p.score, p.rating, p.favorite, p.excluded] for p in posts],
        )
        con.executemany(
            "INSERT INTO captions (post_id, caption, tags, groups, tokens) VALUES (?, ?, ?, ?, ?)",
            [[p.id, ", ".join(p.tags), p.tags, p.groups, 3 * len(p.tags)] for p in posts],
        )
    cat.posts += posts


def make_catalog(root, posts: list[Post]) -> Catalog:
    """A fresh workspace under `root` holding `posts`."""
    cat = Catalog(init_workspace(root))
    add_posts(cat, posts)
    return cat
