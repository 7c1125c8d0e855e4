"""Synthetic Danbooru-style data with harmless tags: API-shaped posts, dumps and image folders.

Tests, benchmarks and the demo need realistic metadata (tag counts, Zipf-like popularity,
created_at with an offset, kaomoji and digit-leading tags) and a small image collection laid
out the way gallery-dl writes it, including the broken files a real collection has. Nothing
here is downloaded; everything is generated from a seed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tagtune.core.atomic import atomic_open
from tagtune.models.shapes import shape_image

COLORS = [
    "red", "blue", "green", "yellow", "purple", "pink", "orange", "white", "black", "grey",
    "brown", "aqua", "silver", "gold", "light_blue", "dark_blue", "light_green", "beige",
    "lavender", "teal",
]  # fmt: skip
ITEMS = [
    "hair", "eyes", "shirt", "dress", "skirt", "background", "ribbon", "bow", "hat", "jacket",
    "scarf", "gloves", "socks", "shoes", "flower", "sky", "theme", "nails", "necktie", "umbrella",
    "bag", "cape", "hoodie", "sweater", "coat", "apron", "belt", "boots", "headband", "hairband",
    "kimono", "leaves", "moon", "star", "heart", "border", "outline", "pants", "shorts", "vest",
]  # fmt: skip
OBJECTS = [
    "book", "cup", "flower", "umbrella", "sword", "staff", "balloon", "fan", "phone", "pen",
    "brush", "cat", "dog", "bird", "fish", "apple", "bread", "ice_cream", "lantern", "kite",
    "guitar", "violin", "camera", "map", "key", "leaf", "shell", "ribbon", "bag", "hat",
]  # fmt: skip
PLAIN = [
    "smile", "open_mouth", "blush", "looking_at_viewer", "simple_background", "outdoors",
    "indoors", "day", "night", "cloud", "tree", "grass", "water", "sunlight", "upper_body",
    "full_body", "portrait", "standing", "sitting", "closed_eyes", "long_hair", "short_hair",
    "twintails", "ponytail", "bangs", "hair_ornament", "jewelry", "earrings", "holding",
    "solo", "food", "fruit", "rain", "snow", "city", "building", "window", "sunset", "beach",
    "ocean", "mountain", "forest", "petals", "cherry_blossoms", "wind", "sparkle", "light_rays",
    "from_side", "from_behind", "profile", "wavy_hair", "hand_up", "v", "wink", "tongue_out",
    "animal_ears", "cat_ears", "tail", "wings", "halo", "school_uniform", "serafuku", "hood",
    "teeth", "frills", "lace", "striped", "plaid", "polka_dot", "signature", "dated", "watermark",
    "english_text", "speech_bubble", "no_humans", "scenery", "still_life", "abstract",
    "geometric", "circle", "triangle", "square", "hexagon", "gradient", "monochrome",
    "greyscale", "sketch", "lineart", "chibi", "2koma", "4koma", "3d", "2020s", "1990s",
]  # fmt: skip
KAOMOJI = ["^_^", "+_+", "o_o", "0_0", ">_<", "=_=", "x_x", "@_@", "u_u", "._."]
COUNT_TAGS = [
    "1girl", "1boy", "2girls", "2boys", "multiple_girls", "multiple_boys", "1other", "3girls",
]  # fmt: skip
META = [
    "highres", "absurdres", "commentary_request", "commentary", "translated",
    "english_commentary", "official_art", "scan", "lowres", "bad_id", "bad_pixiv_id",
]  # fmt: skip
SYLLABLES = [
    "ka", "ri", "mo", "na", "to", "shi", "yu", "ki", "ha", "ru", "me", "so", "ta", "ne", "fu",
    "ro", "mi", "sa", "ko", "no", "wa", "hi", "chi", "ma",
]  # fmt: skip
RATINGS = np.array(["g", "s", "q", "e"])
RATING_P = np.array([0.45, 0.30, 0.15, 0.10])
EXTS = np.array(["jpg", "png", "webp"])


def _name(rng: np.random.Generator, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES, size=parts))


class Vocabulary:
    """A fixed harmless tag vocabulary per category, ordered by popularity (rank 0 = most used)."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        general = [f"{c}_{i}" for c in COLORS for i in ITEMS]
        general += [f"holding_{o}" for o in OBJECTS] + [f"{o}_print" for o in OBJECTS]
        general += PLAIN + KAOMOJI
        general += [f"{c}_{o}" for c in COLORS[:10] for o in OBJECTS]
        general = list(dict.fromkeys(general))
        order = rng.permutation(len(general))
        self.general = [general[i] for i in order]
        self.count_tags = COUNT_TAGS
        self.meta = META
        self.artists = sorted({f"{_name(rng, 3)}_{_name(rng, 2)}" for _ in range(600)})
        self.copyrights = ["original"] + sorted({f"{_name(rng, 3)}_project" for _ in range(150)})
        self.characters = sorted(
            {f"{_name(rng, 2)}_{_name(rng, 2)}_({_name(rng, 2)})" for _ in range(400)}
        )
        for tag in self.all_tags():
            assert '"' not in tag and "\\" not in tag, tag

    def all_tags(self) -> list[str]:
        """Every tag of every category."""
        v = self
        return [*v.general, *v.count_tags, *v.meta, *v.artists, *v.copyrights, *v.characters]


_VOCAB: Vocabulary | None = None


def vocabulary() -> Vocabulary:
    """The shared default vocabulary (built once)."""
    global _VOCAB
    if _VOCAB is None:
        _VOCAB = Vocabulary(0)
    return _VOCAB


def _zipf_p(n: int, s: float = 1.05) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** s
    return p / p.sum()


EPOCH_2008 = dt.datetime(2008, 1, 1).timestamp()
SPAN = dt.datetime(2025, 12, 31).timestamp() - EPOCH_2008


def _created_at(seconds: np.ndarray) -> tuple[list[str], list[str]]:
    """created_at strings (ms, a US-Eastern-like offset) and gallery-dl `date`s (UTC), vectorised."""
    local = ((EPOCH_2008 + seconds) * 1000).astype("int64").astype("datetime64[ms]")
    month = local.astype("datetime64[M]").astype("int64") % 12 + 1
    summer = (month >= 4) & (month <= 10)
    offset = np.where(summer, "-04:00", "-05:00")
    text = np.char.add(np.datetime_as_string(local, unit="ms"), offset)
    utc = local + np.where(summer, 4, 5).astype("timedelta64[h]")
    utc_text = np.char.replace(np.datetime_as_string(utc, unit="s"), "T", " ")
    return text.tolist(), utc_text.tolist()


class _Sampler:
    """Vectorised draws for many posts at once (fast enough for a million-post dump)."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.v = vocab
        self.p_general = _zipf_p(len(vocab.general))
        self.p_artist = _zipf_p(len(vocab.artists), 0.8)
        self.p_copy = _zipf_p(len(vocab.copyrights), 1.2)
        self.p_char = _zipf_p(len(vocab.characters), 0.9)
        self.p_count = _zipf_p(len(vocab.count_tags), 1.5)

    def posts(self, rng: np.random.Generator, first_id: int, n: int) -> Iterator[dict]:
        v = self.v
        artist = rng.choice(len(v.artists), size=n, p=self.p_artist)
        n_copy = rng.integers(1, 3, size=n)
        copy = rng.choice(len(v.copyrights), size=(n, 2), p=self.p_copy)
        char = rng.choice(len(v.characters), size=n, p=self.p_char)
        n_gen = rng.integers(10, 31, size=n)
        gen = rng.choice(len(v.general), size=(n, 64), p=self.p_general)
        count = rng.choice(len(v.count_tags), size=n, p=self.p_count)
        n_meta = rng.integers(1, 4, size=n)
        meta = rng.choice(len(v.meta), size=(n, 3), p=_zipf_p(len(v.meta), 1.3))
        score = np.round(rng.lognormal(3.0, 1.2, size=n) - 8).astype(int)
        favs = np.maximum(0, score + rng.integers(0, 20, size=n))
        rating = rng.choice(RATINGS, size=n, p=RATING_P)
        ext = rng.choice(EXTS, size=n, p=[0.5, 0.4, 0.1])
        width = rng.integers(600, 4000, size=n)
        height = (width * rng.choice([0.5625, 0.75, 1.0, 1.333, 1.5, 1.777], size=n)).astype(int)
        seconds = rng.uniform(0, SPAN, size=n)
        md5 = rng.bytes(16 * n).hex()
        parent = (rng.random(size=n) < 0.05).tolist()
        created, dates = _created_at(seconds)
        # plain Python lists: indexing numpy scalars one by one is the slow part
        artist, char, count = artist.tolist(), char.tolist(), count.tolist()
        n_copy, copy, n_gen, gen = n_copy.tolist(), copy.tolist(), n_gen.tolist(), gen.tolist()
        n_meta, meta, score, favs = n_meta.tolist(), meta.tolist(), score.tolist(), favs.tolist()
        rating, ext, width, height = rating.tolist(), ext.tolist(), width.tolist(), height.tolist()
        for i in range(n):
            pid = first_id + i
            picked = list(dict.fromkeys(gen[i]))[: n_gen[i]]  # distinct, Zipf-weighted
            general = sorted({v.general[j] for j in picked} | {v.count_tags[count[i]]})
            copyrights = sorted({v.copyrights[j] for j in copy[i][: n_copy[i]]})
            metas = sorted({v.meta[j] for j in meta[i][: n_meta[i]]})
            a, c = v.artists[artist[i]], v.characters[char[i]]
            yield {
                "id": pid,
                "created_at": created[i],
                "_date_utc": dates[i],
                "score": score[i],
                "fav_count": favs[i],
                "rating": rating[i],
                "md5": md5[32 * i : 32 * i + 32],
                "file_ext": ext[i],
                "image_width": width[i],
                "image_height": height[i],
                "tag_string": " ".join(sorted({a, c, *copyrights, *general, *metas})),
                "tag_string_general": " ".join(general),
                "tag_string_artist": a,
                "tag_string_copyright": " ".join(copyrights),
                "tag_string_character": c,
                "tag_string_meta": " ".join(metas),
                "tag_count_general": len(general),
                "is_deleted": False,
                "is_banned": False,
                "parent_id": pid - 1 if parent[i] and pid > 1 else None,
            }


def synthetic_post(rng: np.random.Generator, post_id: int) -> dict:
    """One API-shaped Danbooru post with harmless tags, drawn from `rng`."""
    post = next(_Sampler(vocabulary()).posts(rng, post_id, 1))
    post.pop("_date_utc")
    return post


def iter_synthetic_posts(n: int, seed: int = 0, first_id: int = 1) -> Iterator[dict]:
    """`n` API-shaped posts with ids first_id.. (same seed, same posts)."""
    rng = np.random.default_rng(seed)
    sampler = _Sampler(vocabulary())
    done = 0
    while done < n:
        chunk = min(50_000, n - done)
        for post in sampler.posts(rng, first_id + done, chunk):
            post.pop("_date_utc")
            yield post
        done += chunk


def write_jsonl_dump(path: str | Path, n: int, seed: int = 0) -> Path:
    """Write `n` synthetic posts as a JSONL dump (one API post per line), atomically."""
    path = Path(path)
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    with atomic_open(path, "w") as fh:
        lines: list[str] = []
        for post in iter_synthetic_posts(n, seed):
            lines.append(dumps(post))
            if len(lines) >= 10_000:
                fh.write("\n".join(lines) + "\n")
                lines.clear()
        if lines:
            fh.write("\n".join(lines) + "\n")
    return path


# --- a small image collection, laid out as gallery-dl writes it ---------------------------------

_SIZES = [(128, 128), (160, 96), (96, 160), (192, 128), (128, 192), (256, 144), (144, 256)]


THEMES = {"red_theme": (210, 40, 40), "blue_theme": (40, 70, 210)}
"""Two image themes that differ clearly in colour, named by a harmless Danbooru-style tag."""


def theme_image(theme: str, rng: np.random.Generator, size: tuple[int, int] = (64, 64)):
    """A PIL image of one theme of THEMES: its colour at a random brightness (80-100%).

    Images of a theme differ only in brightness, so what tells the themes apart is their
    colour, which the caption tag names: the learning test's collection.
    """
    from PIL import Image

    level = float(rng.uniform(0.8, 1.0))
    rgb = tuple(round(c * level) for c in THEMES[theme])
    return Image.new("RGB", size, rgb)


def _encode(img, ext: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext], quality=90)
    return buf.getvalue()


def _sidecar(post: dict, file_name: str, ext: str, date_utc: str) -> dict:
    """gallery-dl's metadata: the API fields plus tags_* lists, `date`, category, filename."""
    side = {k: v for k, v in post.items() if not k.startswith("_")}
    for group in ("artist", "copyright", "character", "general", "meta"):
        side[f"tags_{group}"] = side[f"tag_string_{group}"].split()
    side.update(category="danbooru", filename=file_name, extension=ext, date=date_utc)
    return side


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_collection(folder: str | Path, n_images: int, seed: int = 0, broken: bool = True) -> dict:
    """Write a gallery-dl style collection of small shape images with sidecars and favorites.

    Good images are `danbooru_{id}_{md5}.{ext}` (md5 of the bytes) with `{file}.{ext}.json`
    sidecars (every third one `{file}.json`; every fifth lacks created_at, as gallery-dl may).
    `favorites.txt` lists about a third of the posts by id or md5, with comments, a blank line
    and one unknown id. With `broken`, bad files are added, one per problem reason.
    Returns the paths and the expected counts.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    sampler = _Sampler(vocabulary())
    posts = list(sampler.posts(rng, 1000, n_images + 10))
    good: list[dict] = []
    for i, post in enumerate(posts[:n_images]):
        size = _SIZES[i % len(_SIZES)]
        img, shape_tags = shape_image(rng, size)
        ext = post["file_ext"]
        data = _encode(img, ext)
        post["md5"] = hashlib.md5(data).hexdigest()
        post["image_width"], post["image_height"] = size
        general = sorted(set(post["tag_string_general"].split()) | set(shape_tags))
        post["tag_string_general"] = " ".join(general)
        post["tag_string"] = " ".join(
            sorted({t for k in ("artist", "copyright", "character", "general", "meta")
                    for t in post[f"tag_string_{k}"].split()})
        )  # fmt: skip
        stem = f"danbooru_{post['id']}_{post['md5']}"
        sub = folder / ("2024" if i % 2 else "older")
        _write(sub / f"{stem}.{ext}", data)
        side = _sidecar(post, stem, ext, post["_date_utc"])
        if i % 5 == 4:
            side.pop("created_at")
        side_path = sub / (f"{stem}.json" if i % 3 == 2 else f"{stem}.{ext}.json")
        _write(side_path, json.dumps(side, indent=2).encode())
        good.append(post)

    fav_posts = good[::3]
    lines = ["# my favorites (ids or md5s)", ""]
    for j, post in enumerate(fav_posts):
        lines.append(str(post["id"]) if j % 2 == 0 else f"{post['md5']}  # by md5")
    lines += ["", "99999999  # not in the collection"]
    fav_path = folder / "favorites.txt"
    fav_path.write_text("\n".join(lines) + "\n")

    problems: dict[str, int] = {}
    if broken:
        problems = _write_broken(folder / "broken", rng, posts[n_images:], good[0])
    return {
        "folder": folder,
        "favorites_file": fav_path,
        "images": len(good),
        "posts": len(good)
        + sum(n for r, n in problems.items() if r not in ("bad-metadata", "no-metadata")),
        "favorites": len(fav_posts),
        "unknown_favorites": 1,
        "problems": problems,
        "post_ids": [p["id"] for p in good],
    }


def _write_broken(folder: Path, rng: np.random.Generator, spare: list[dict], dup_of: dict):
    """One bad file per problem reason (each with a sidecar, so its post is known)."""
    from PIL import Image

    img, _ = shape_image(rng, (128, 128))
    png = _encode(img, "png")
    frames = [shape_image(rng, (96, 96))[0] for _ in range(2)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    small = _encode(Image.new("RGB", (32, 32), (200, 30, 30)), "png")
    cases = [
        ("zero-byte", "png", b""),
        ("truncated", "png", png[: len(png) // 2]),
        ("unreadable", "png", bytes(rng.integers(0, 256, 2048, dtype=np.uint8))),
        ("animated", "gif", buf.getvalue()),
        ("video", "mp4", b"\x00\x00\x00\x18ftypmp42" + bytes(64)),
        ("video", "webm", b"\x1a\x45\xdf\xa3" + bytes(64)),
        ("too-small", "png", small),
    ]
    counts: dict[str, int] = {}
    for (reason, ext, data), post in zip(cases, spare, strict=False):
        stem = f"danbooru_{post['id']}_{post['md5']}"
        _write(folder / f"{stem}.{ext}", data)
        _write(
            folder / f"{stem}.{ext}.json",
            json.dumps(_sidecar(post, stem, ext, post["_date_utc"])).encode(),
        )
        counts[reason] = counts.get(reason, 0) + 1
    # a duplicate: the first good image again, under another post
    post = spare[len(cases)]
    src = next(folder.parent.rglob(f"danbooru_{dup_of['id']}_*.{dup_of['file_ext']}"))
    stem = f"danbooru_{post['id']}_{dup_of['md5']}"
    _write(folder / f"{stem}.{dup_of['file_ext']}", src.read_bytes())
    _write(
        folder / f"{stem}.{dup_of['file_ext']}.json",
        json.dumps(_sidecar(post, stem, dup_of["file_ext"], post["_date_utc"])).encode(),
    )
    counts["duplicate"] = 1
    # a sidecar that is not JSON, and an image with no sidecar at all
    _write(folder / "danbooru_1_00000000000000000000000000000000.png.json", b'{"id": 1, "tags')
    _write(folder / "danbooru_1_00000000000000000000000000000000.png", png)
    counts["bad-metadata"] = 1
    _write(folder / "stray_image.png", png)
    counts["no-metadata"] = 1
    return counts
