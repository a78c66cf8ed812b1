"""User inputs for inference: images from files, folders, URLs or bytes, and phrase lists.

Every check happens before any expensive work: an image's size is read from its header (PIL opens
lazily) and refused above ``max_pixels`` before the pixels are decoded, URLs are fetched with a
timeout and a byte limit, and an empty phrase list is refused. Failures raise :class:`InputError`
with a one-line message naming the input, which the CLI, the MLflow model and the web demo report
as they are.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import TCLError

__all__ = ["InputError", "TooLargeError", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_BYTES", "IMAGE_SUFFIXES", "ImageSource",
           "parse_phrases", "decode_image", "decode_base64_image", "fetch_url", "resolve_sources"]

DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # compressed bytes accepted from a URL or an upload
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class InputError(TCLError, ValueError):
    """An image or phrase list that cannot be used (unreadable, too large, empty, unreachable)."""


class TooLargeError(InputError):
    """An image over the pixel limit, or encoded data over the byte limit."""


def _is_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a phrase too long, or with a NUL byte, for a file name
        return False


def parse_phrases(value: str | Iterable[str] | os.PathLike, allow_file: bool = False) -> list[str]:
    """Class names or free-form phrases: a comma-separated string, a list, or (with ``allow_file``,
    the command line only: remote clients must not name server files) a file with one per line.
    Blank entries are dropped; an empty result is an error."""
    if allow_file and (isinstance(value, os.PathLike) or (isinstance(value, str) and "," not in value
                                                          and _is_file(value))):
        items = Path(value).read_text().splitlines()
    elif isinstance(value, str):
        items = value.replace("\n", ",").split(",")
    elif isinstance(value, Iterable) and not isinstance(value, bytes | os.PathLike):
        items = list(value)
        if not all(isinstance(item, str) for item in items):
            raise InputError("phrases must be strings")
    else:
        raise InputError(f"phrases must be a comma-separated string or a list of strings, got {type(value).__name__}")
    phrases = [item.strip() for item in items if item.strip()]
    if not phrases:
        raise InputError("no phrases given (comma-separated, a list, or a file with one per line)")
    return phrases


@contextmanager
def _opened(source, name: str, max_pixels: int) -> Iterator[Image.Image]:
    """``Image.open`` (header only) with the pixel limit checked and errors made one-line."""
    try:
        # PIL warns from 89 MP and raises from 179 MP (DecompressionBombError, caught below). The
        # warning is left alone: silencing it would change process-wide filters from server threads.
        with Image.open(source) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise TooLargeError(f"{name}: image too large ({width}x{height} = {width * height} pixels; "
                                    f"the limit is {max_pixels})")
            yield image
    except Image.DecompressionBombError:
        raise TooLargeError(f"{name}: image too large (over PIL's decompression-bomb limit)") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot read {name}: not an image file PIL can decode (PNG, JPEG, ...)") from None
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"cannot read {name}: {reason}") from None


def decode_image(data: bytes | io.BufferedIOBase | os.PathLike, name: str,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An RGB image from encoded bytes or a file, refusing more than ``max_pixels`` before decoding."""
    with _opened(io.BytesIO(data) if isinstance(data, bytes | bytearray) else data, name, max_pixels) as image:
        return image.convert("RGB")


def decode_base64_image(text: str, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                        max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """An image sent as base64 text (a ``data:...;base64,`` prefix is accepted), refusing more than
    ``max_bytes`` of encoded data or ``max_pixels`` before decoding the pixels."""
    if not isinstance(text, str) or not text:
        raise InputError(f"{name}: expected a base64-encoded PNG/JPEG string")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    if len(text) > (max_bytes + 2) // 3 * 4:
        raise TooLargeError(f"{name}: upload too large (over {max_bytes} bytes)")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(f"{name}: not valid base64") from None
    if len(data) > max_bytes:
        raise TooLargeError(f"{name}: upload too large ({len(data)} bytes; the limit is {max_bytes})")
    return decode_image(data, name, max_pixels)


def fetch_url(url: str, timeout: float = 30.0, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The body of an http(s) URL, read at most ``max_bytes`` (plus one, to detect more)."""
    request = urllib.request.Request(url, headers={"User-Agent": "tcl-predict"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) only, checked
            data = response.read(max_bytes + 1)
    except urllib.error.HTTPError as err:
        raise InputError(f"cannot fetch {url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise InputError(f"cannot fetch {url}: {reason}") from None
    if len(data) > max_bytes:
        raise TooLargeError(f"cannot fetch {url}: more than {max_bytes} bytes")
    return data


def _is_url(text: str) -> bool:
    return urllib.parse.urlsplit(text).scheme in ("http", "https")


@dataclass(frozen=True)
class ImageSource:
    """One image to segment: a local file or a URL, with the stem its outputs are named after."""

    location: str
    stem: str

    @property
    def is_url(self) -> bool:
        return _is_url(self.location)

    def probe(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        """Check a local file's format and size from its header, without decoding it (URLs: no-op)."""
        if not self.is_url:
            with _opened(self.location, self.location, max_pixels):
                pass

    def read(self, max_pixels: int = DEFAULT_MAX_PIXELS, timeout: float = 30.0,
             max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
        if self.is_url:
            return decode_image(fetch_url(self.location, timeout, max_bytes), self.location, max_pixels)
        return decode_image(Path(self.location), self.location, max_pixels)


def _unique_stem(stem: str, taken: set[str]) -> str:
    candidate, n = stem or "image", 1
    while candidate in taken:
        n += 1
        candidate = f"{stem or 'image'}_{n}"
    taken.add(candidate)
    return candidate


def resolve_sources(items: Iterable[str | os.PathLike]) -> list[ImageSource]:
    """Expand files, folders (their images, sorted, not recursive) and http(s) URLs into sources with
    distinct output stems. Missing paths and folders without images are errors."""
    sources, taken = [], set()
    for item in items:
        text = str(item)
        if _is_url(text):
            stem = Path(urllib.parse.urlsplit(text).path).stem
            sources.append(ImageSource(text, _unique_stem(stem, taken)))
            continue
        path = Path(text)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            sources.extend(ImageSource(str(p), _unique_stem(p.stem, taken)) for p in files)
        elif path.is_file():
            sources.append(ImageSource(str(path), _unique_stem(path.stem, taken)))
        else:
            raise InputError(f"image not found: {path}")
    if not sources:
        raise InputError("no images given")
    return sources
