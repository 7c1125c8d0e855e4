"""Image checks trust nothing: one table of bad files, one reason word each."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tagtune.ingest.images import check_image, index_images, name_keys


def png(size=(128, 96), color=(30, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (96, 96), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((200, 200), 60).convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


CASES = [
    ("ok.png", png(), None, None),
    ("ok.jpg", jpeg(), None, None),
    ("empty.png", b"", "zero-byte", "file is empty"),
    ("garbage.png", b"\x00garbage" * 300, "unreadable", None),
    ("text.jpg", b"hello world", "unreadable", None),
    ("half.png", png()[: len(png()) // 2], "truncated", None),
    ("half.jpg", jpeg()[:2000], "truncated", None),
    ("anim.gif", animated("GIF"), "animated", "gif files are not ingested"),
    ("still.gif", png(), "animated", "gif files are not ingested"),
    ("anim.png", animated("PNG"), "animated", "2 frames"),
    ("anim.webp", animated("WEBP"), "animated", "2 frames"),
    ("clip.mp4", b"\x00\x00\x00\x18ftypmp42", "video", "mp4 files are not ingested"),
    ("clip.webm", b"\x1a\x45\xdf\xa3", "video", "webm files are not ingested"),
    ("ugoira.zip", b"PK\x03\x04", "video", "zip files are not ingested"),
    ("old.swf", b"FWS", "video", "swf files are not ingested"),
    ("tiny.png", png((63, 200)), "too-small", "63x200: shorter side under 64"),
    ("huge.png", png((400, 300)), "too-large", "400x300 is over 100000 pixels"),
]


@pytest.mark.parametrize("name, data, reason, detail", CASES, ids=[c[0] for c in CASES])
def test_check_image(tmp_path, name, data, reason, detail):
    path = tmp_path / name
    path.write_bytes(data)
    got = check_image(path, max_pixels=100_000, min_side=64)
    assert got.reason == reason
    if detail is not None:
        assert got.detail == detail
    if reason is None:
        assert len(got.sha256) == 64 and got.width > 0 and got.bytes == len(data)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_bomb_is_refused_from_the_header_before_decoding(tmp_path):
    # decoding 50000x50000 RGB would need 7.5 GB; the header alone tells
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_only(50_000, 50_000))
    got = check_image(path, max_pixels=178_956_970, min_side=64)
    assert (got.reason, got.detail) == ("too-large", "50000x50000 is over 178956970 pixels")


@pytest.mark.parametrize(
    "name, keys",
    [
        (f"{'a' * 32}.png", [("md5", "a" * 32)]),
        (f"{'A' * 32}.jpg", [("md5", "a" * 32)]),
        (f"danbooru_123_{'b' * 32}.webp", [("md5", "b" * 32), ("id", "123")]),
        ("00123.png", [("id", "123")]),
        ("cover.png", []),
    ],
)
def test_file_names_that_match_posts(name, keys):
    assert name_keys(Path(name)) == keys


def test_index_images_is_recursive_and_skips_other_files(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "5.png").write_bytes(b"x")
    (tmp_path / "6.txt").write_text("caption")
    assert index_images(tmp_path) == [("id", "5", str(tmp_path / "a" / "5.png"))]
