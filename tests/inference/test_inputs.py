from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from tcl.data.url_lists import serve_directory
from tcl.inference import (
    InputError,
    TooLargeError,
    decode_base64_image,
    decode_image,
    fetch_url,
    parse_phrases,
    resolve_sources,
)
from tests.inference.conftest import scene


def test_phrases_from_strings_lists_and_files(tmp_path):
    assert parse_phrases(" cat, dog ,,a red car ") == ["cat", "dog", "a red car"]
    assert parse_phrases(["sky", " ", "sea"]) == ["sky", "sea"]
    (tmp_path / "classes.txt").write_text("cat\n\n  dog  \n")
    assert parse_phrases(str(tmp_path / "classes.txt"), allow_file=True) == ["cat", "dog"]
    # Remote callers cannot make the server read its files: the path is taken as a phrase.
    assert parse_phrases(str(tmp_path / "classes.txt")) == [str(tmp_path / "classes.txt")]
    for empty in ("", " , ", [], ["  "]):
        with pytest.raises(InputError, match="no phrases given"):
            parse_phrases(empty)
    with pytest.raises(InputError, match="must be"):
        parse_phrases(3)


def _png_without_pixels(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` followed by almost no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
            + chunk(b"IEND", b""))


def test_image_limits_are_checked_before_decoding(tmp_path):
    # Decoding 8000x8000 would take 192 MB (and fail: the data is missing): refused from the header.
    with pytest.raises(InputError, match=r"^big: image too large \(8000x8000 = 64000000 pixels; the limit is 1000\)$"):
        decode_image(_png_without_pixels(8000, 8000), "big", max_pixels=1000)
    with pytest.raises(InputError, match="over PIL's decompression-bomb limit"):
        decode_image(_png_without_pixels(20000, 20000), "huge", max_pixels=10**10)
    with pytest.raises(InputError, match="cannot read text.png: not an image file"):
        decode_image(b"hello", "text.png")
    path = tmp_path / "ok.png"
    scene().save(path)
    image = decode_image(path, "ok.png", max_pixels=96 * 72)
    assert image.mode == "RGB" and image.size == (96, 72)
    with pytest.raises(InputError, match="image too large"):
        decode_image(path, "ok.png", max_pixels=96 * 72 - 1)
    (tmp_path / "truncated.png").write_bytes(path.read_bytes()[:80])
    with pytest.raises(InputError, match="cannot read truncated.png"):
        decode_image(tmp_path / "truncated.png", "truncated.png")


def test_sources_expand_folders_and_keep_output_names_distinct(tmp_path):
    (tmp_path / "photos").mkdir()
    for name in ("b.jpg", "a.png", "notes.txt"):
        (tmp_path / "photos" / name).write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    sources = resolve_sources([tmp_path / "photos", str(tmp_path / "a.png"), "http://127.0.0.1:9/x/a.jpg"])
    assert [s.stem for s in sources] == ["a", "b", "a_2", "a_3"]
    assert sources[0].location == str(tmp_path / "photos" / "a.png") and sources[3].is_url
    with pytest.raises(InputError, match="image not found"):
        resolve_sources([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        resolve_sources([tmp_path / "empty"])
    with pytest.raises(InputError, match="cannot read .*: not an image file"):
        sources[0].probe()  # b"x" is not an image: found from the header, before any model loads


def test_urls_are_fetched_with_limits(tmp_path):
    scene().save(tmp_path / "photo.png")
    size = (tmp_path / "photo.png").stat().st_size
    with serve_directory(tmp_path) as base:
        (source,) = resolve_sources([f"{base}photo.png"])
        assert source.stem == "photo" and source.read().size == (96, 72)
        with pytest.raises(InputError, match="HTTP 404"):
            fetch_url(f"{base}missing.png")
        with pytest.raises(InputError, match=f"more than {size - 1} bytes"):
            fetch_url(f"{base}photo.png", max_bytes=size - 1)
    with pytest.raises(InputError, match="cannot fetch http://127.0.0.1:9/"):
        fetch_url("http://127.0.0.1:9/photo.png", timeout=5)  # nothing listens on the discard port
    assert isinstance(Image.open(tmp_path / "photo.png"), Image.Image)


def test_base64_uploads_are_checked_for_bytes_then_pixels():
    buffer = io.BytesIO()
    scene().save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    assert decode_base64_image("data:image/png;base64," + encoded, "upload").size == (96, 72)
    with pytest.raises(TooLargeError, match="upload: upload too large"):
        decode_base64_image(encoded, "upload", max_bytes=len(buffer.getvalue()) - 1)
    with pytest.raises(TooLargeError, match="upload: image too large"):
        decode_base64_image(encoded, "upload", max_pixels=100)
    for bad, message in [("%%%", "not valid base64"), ("", "expected a base64"), (None, "expected a base64")]:
        with pytest.raises(InputError, match=message):
            decode_base64_image(bad, "upload")
