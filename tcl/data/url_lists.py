"""Caption/URL lists: column detection, normalisation, and a loopback server for local files.

CC3M ships ``caption<TAB>url``, CC12M ``url<TAB>caption``, with or without a header line. The URL
column is found by name (``url``) or else by content, so no ``sed`` on multi-GB files is needed.
Lists of paths relative to a folder (the built-in synthetic corpus) are served over 127.0.0.1 so
they take the same HTTP download path as real data.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import os
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ..errors import TCLError

__all__ = ["DownloadError", "read_url_list", "rewrite_relative_urls", "serve_directory"]

_URL_NAMES = ("url", "image_url", "img_url")
_CAPTION_NAMES = ("caption", "captions", "text", "txt", "title")
_SAMPLE_ROWS = 100


class DownloadError(TCLError, ValueError):
    """Unusable URL list, settings or output folder, or shards that did not complete."""



def _looks_like_url(value: Any, serve_root: Path | None) -> bool:
    if not isinstance(value, str) or not (value := value.strip()):
        return False
    if value.lower().startswith(("http://", "https://")):
        return True
    if serve_root is None or "://" in value:
        return False
    try:
        return (serve_root / value.lstrip("/")).is_file()
    except (OSError, ValueError):  # a caption that is not a valid path at all
        return False


def _pick_columns(names: list[str] | None, rows: list[list[Any]], serve_root: Path | None,
                  source: Path) -> tuple[int, int, bool]:
    """(url index, caption index, first row is a header) from a name row and sample rows.

    ``names`` is the schema of a parquet file (then ``rows`` are all data); ``None`` means the first
    of ``rows`` may be a header or data (a TSV). A column literally called ``url`` wins; otherwise
    the column where most sample rows hold a URL, and a TSV whose first row holds no URL there has
    a header.
    """
    header = names if names is not None else (rows[0] if rows else [])
    width = len(header)
    if width < 2:
        raise DownloadError(f"{source}: {width} column(s): expected (url, caption) pairs in 2 or more columns")
    lowered = [str(n).strip().lower() for n in header]
    url_idx = next((lowered.index(n) for n in _URL_NAMES if n in lowered), None)
    has_header = names is not None or url_idx is not None
    if url_idx is None:
        # at least half of the sample rows, a possible header row aside, must hold a URL
        scores = [sum(_looks_like_url(r[i], serve_root) for r in rows if i < len(r)) for i in range(width)]
        if not rows or max(scores) == 0 or max(scores) * 2 < len(rows) - (names is None):
            kinds = "http(s) URLs or paths relative to the serve root" if serve_root else "http(s) URLs"
            raise DownloadError(f"{source}: no URL column found (no column named 'url', and none where at "
                                f"least half of the first {len(rows)} rows hold {kinds})")
        url_idx = scores.index(max(scores))
        if names is None:
            has_header = not _looks_like_url(rows[0][url_idx], serve_root)
    caption_idx = next((lowered.index(n) for n in _CAPTION_NAMES if has_header and n in lowered), None)
    if caption_idx is None:
        if width != 2:
            raise DownloadError(f"{source}: cannot tell which of {width} columns holds the caption; "
                                f"name it one of {', '.join(_CAPTION_NAMES)} in a header")
        caption_idx = 1 - url_idx
    return url_idx, caption_idx, has_header


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _read_parquet(path: Path, serve_root: Path | None) -> pa.Table:
    file = pq.ParquetFile(path)
    if file.metadata.num_rows == 0:
        raise DownloadError(f"{path}: the URL list holds no (url, caption) rows")
    names = file.schema_arrow.names
    sample: list[list[Any]] = []
    for batch in file.iter_batches(batch_size=_SAMPLE_ROWS):
        sample = [list(row.values()) for row in batch.to_pylist()]
        break
    url_idx, caption_idx, _ = _pick_columns(names, sample, serve_root, path)
    table = file.read(columns=[names[url_idx], names[caption_idx]])
    return pa.table({"url": table.column(0).cast(pa.string()), "caption": table.column(1).cast(pa.string())})


def _read_tsv(path: Path, serve_root: Path | None) -> tuple[pa.Table, int]:
    compression = "gzip" if _is_gzip(path) else None
    opener = gzip.open if compression else open
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as f:
        rows = []
        for line in f:
            if line.strip():
                rows.append(line.rstrip("\r\n").split("\t"))
            if len(rows) > _SAMPLE_ROWS:
                break
    if not rows:
        raise DownloadError(f"{path}: the URL list is empty")
    rows[0][0] = rows[0][0].removeprefix("\ufeff")  # a byte-order mark (pyarrow drops it too)
    url_idx, caption_idx, has_header = _pick_columns(None, rows, serve_root, path)
    width = len(rows[0])
    names = [f"c{i}" for i in range(width)]
    malformed = []

    def skip(row: Any) -> str:  # a row with another number of fields: count it, keep going
        malformed.append(row.number)
        return "skip"

    with pa.input_stream(str(path), compression=compression) as stream:
        table = pa_csv.read_csv(
            stream,
            read_options=pa_csv.ReadOptions(column_names=names, skip_rows=int(has_header)),
            # quote_char=False: CC3M/CC12M captions contain unbalanced quotes and are never quoted.
            parse_options=pa_csv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=skip),
            convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                  include_columns=[names[url_idx], names[caption_idx]],
                                                  strings_can_be_null=False))
    table = pa.table({"url": table.column(names[url_idx]), "caption": table.column(names[caption_idx])})
    return table, len(malformed)


def read_url_list(path: str | os.PathLike, serve_root: str | os.PathLike | None = None) -> tuple[pa.Table, int]:
    """Read a TSV (optionally gzipped) or parquet URL list as a table of ``url`` and ``caption``.

    The column order and the presence of a header are detected (see the module docstring); with
    ``serve_root``, paths relative to it count as URLs (they are rewritten only when the download
    starts, since the port is known only then). Rows without a URL, and TSV rows with another number
    of fields than the first, are dropped. Returns the table and the number of dropped rows.
    """
    path = Path(path)
    root = Path(serve_root) if serve_root is not None else None
    if not path.is_file():
        raise DownloadError(f"URL list not found: {path}")
    if root is not None and not root.is_dir():
        raise DownloadError(f"serve root not found: {root}")
    with path.open("rb") as f:
        is_parquet = f.read(4) == b"PAR1"
    try:
        if is_parquet:
            table, dropped = _read_parquet(path, root), 0
        else:
            table, dropped = _read_tsv(path, root)
    except (pa.ArrowException, UnicodeDecodeError) as err:
        raise DownloadError(f"{path}: cannot read the URL list: {str(err).splitlines()[0]}") from err
    url = pc.utf8_trim_whitespace(pc.fill_null(table.column("url"), ""))
    keep = pc.greater(pc.utf8_length(url), 0)
    table = pa.table({"url": url, "caption": pc.fill_null(table.column("caption"), "")}).filter(keep)
    dropped += len(keep) - table.num_rows
    if table.num_rows == 0:
        raise DownloadError(f"{path}: the URL list holds no (url, caption) rows")
    return table, dropped


def rewrite_relative_urls(table: pa.Table, base_url: str) -> pa.Table:
    urls = [u if "://" in u else base_url + urllib.parse.quote(u.lstrip("/").removeprefix("./"))
            for u in table.column("url").to_pylist()]
    return table.set_column(0, "url", pa.array(urls, pa.string()))


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown img2dataset's progress; it reports failures itself


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout) leaves a broken pipe here; img2dataset counts it already


@contextlib.contextmanager
def serve_directory(root: str | os.PathLike) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (ephemeral port) in a daemon thread; yields ``http://127.0.0.1:PORT/``.

    Only the loopback interface is bound: the server exists so that local files go through
    img2dataset's HTTP download path, not to publish them. Reachable by the multiprocessing
    distributor and a local Spark/Ray, not by remote executors.
    """
    server = _QuietServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name="tcl-serve-root", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


