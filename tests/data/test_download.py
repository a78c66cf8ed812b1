"""The download stage against a loopback HTTP server: shards, failures by reason, resuming, serve_root."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import importlib.util
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tcl.data.config import DownloadSource
from tcl.data.download import DownloadError, download_shards, is_transient, read_url_list, shard_name, work_dir
from tcl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
STAGE = str(REPO / "stages" / "download.py")
FAST = dict(processes=1, threads=4, timeout=1, promote_interval=0.2)
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def _jpeg(size: tuple[int, int], noise: bool = False) -> bytes:
    image = Image.effect_noise(size, 60).convert("RGB") if noise else Image.new("RGB", size, (200, 40, 10))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG")
    return buffer.getvalue()


def _download(url_list: Path, out: Path, *, serve_root: Path | None = None, stats_path: Path | None = None,
              overwrite: bool = False, promote_interval: float = 2.0, **settings) -> dict:
    """download_shards on the DownloadSource of ``url_list`` (served from ``serve_root``) → ``out``."""
    where = (dict(root=str(serve_root), list=str(url_list.absolute()), serve=True) if serve_root is not None
             else dict(root=str(url_list.parent), list=url_list.name))
    source = DownloadSource(**where, out=str(out), **settings)
    return download_shards(source, stats_path=stats_path, overwrite=overwrite, promote_interval=promote_interval)


SMALL, BIG, NOISY = _jpeg((24, 20)), _jpeg((80, 60)), _jpeg((64, 64), noise=True)


class ImageServer(ThreadingHTTPServer):
    """/ok/* small JPEG, /big/* 80×60, /slow/* after 2 s, /late/* after 0.5 s, /text/* not an image,
    /truncated/* half a JPEG, /blocked/* waits for ``release``, anything else 404. Counts requests
    per path."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.release = threading.Event()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address) -> None:
        pass  # clients that timed out


class _Handler(BaseHTTPRequestHandler):
    server: ImageServer

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.requests[self.path] += 1
        kind = self.path.split("/")[1]
        if kind in ("slow", "late"):
            time.sleep(2 if kind == "slow" else 0.5)
        if kind == "blocked":
            self.server.release.wait(30)
        body = {"ok": SMALL, "slow": SMALL, "late": SMALL, "blocked": SMALL, "big": BIG,
                "text": b"<html>no image</html>", "truncated": NOISY[: len(NOISY) // 2]}.get(kind)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def server():
    srv = ImageServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.release.set()
        srv.shutdown()
        srv.server_close()
        thread.join(10)


def _write_tsv(path: Path, rows: list[tuple[str, str]], header: tuple[str, str] | None = None) -> Path:
    lines = (["\t".join(header)] if header else []) + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


# --------------------------------------------------------------------------- the URL list

PAIRS = [("http://example.com/a.jpg", '"the best" red car'), ("https://example.com/b.jpg", "two dogs, one cat")]


@pytest.mark.parametrize("layout", ["cc3m_header", "cc12m_header", "cc3m_no_header", "cc12m_no_header", "gzip",
                                    "parquet_named", "parquet_unnamed"])
def test_column_order_and_header_are_detected(tmp_path, layout):
    url_first = [(u, c) for u, c in PAIRS]
    caption_first = [(c, u) for u, c in PAIRS]
    if layout == "cc3m_header":
        path = _write_tsv(tmp_path / "l.tsv", caption_first, ("caption", "url"))
    elif layout == "cc12m_header":
        path = _write_tsv(tmp_path / "l.tsv", url_first, ("url", "caption"))
    elif layout == "cc3m_no_header":
        path = _write_tsv(tmp_path / "l.tsv", caption_first)
    elif layout == "cc12m_no_header":
        path = _write_tsv(tmp_path / "l.tsv", url_first)
    elif layout == "gzip":
        path = tmp_path / "l.tsv.gz"
        path.write_bytes(gzip.compress(_write_tsv(tmp_path / "plain.tsv", caption_first).read_bytes()))
    else:
        names = ["URL", "TEXT"] if layout == "parquet_named" else ["alt", "link"]
        columns = [[u for u, _ in PAIRS], [c for _, c in PAIRS]]
        if layout == "parquet_unnamed":
            columns.reverse()
        path = tmp_path / "l.parquet"
        pq.write_table(pa.table(dict(zip(names, columns, strict=True))), path)
    table, dropped = read_url_list(path)
    assert table.column_names == ["url", "caption"] and dropped == 0
    assert list(zip(table.column("url").to_pylist(), table.column("caption").to_pylist(), strict=True)) == PAIRS


def test_relative_paths_count_as_urls_under_a_serve_root(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(SMALL)
    path = _write_tsv(tmp_path / "l.tsv", [("img/a.jpg", "a red square"), ("img/missing.jpg", "gone")])
    with pytest.raises(DownloadError, match="no URL column found"):
        read_url_list(path)
    table, _ = read_url_list(path, serve_root=tmp_path)
    assert table.column("url").to_pylist() == ["img/a.jpg", "img/missing.jpg"]


def test_bad_inputs_give_one_line_errors(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="URL list not found: .*nowhere.tsv"):
        _download(tmp_path / "nowhere.tsv", out)
    no_urls = _write_tsv(tmp_path / "no_urls.tsv", [("a cat", "a dog"), ("a car", "a bus")])
    with pytest.raises(DownloadError, match="no_urls.tsv: no URL column found"):
        _download(no_urls, out)
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(DownloadError, match="empty.tsv: the URL list is empty"):
        _download(tmp_path / "empty.tsv", out)
    header_only = _write_tsv(tmp_path / "header.tsv", [], ("caption", "url"))
    with pytest.raises(DownloadError, match="header.tsv: the URL list holds no"):
        _download(header_only, out)
    good = _write_tsv(tmp_path / "good.tsv", [(u, c) for u, c in PAIRS])
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(DownloadError, match="cannot write to output directory .*a_file/out"):
        _download(good, blocker / "out")
    # settings DownloadSource refuses when it is built (from params.yaml, the command line or code)
    with pytest.raises(ConfigError, match=r"prefix: must be a plain file-name start .*, got .a/b-."):
        _download(good, out, prefix="a/b-")
    with pytest.raises(ConfigError, match=r"encode_quality: must be in \[0, 9\] for png .*, got 95"):
        _download(good, out, encode_format="png")
    with pytest.raises(ConfigError, match="extra.output_folder: set by this section or the stage"):
        _download(good, out, extra={"output_folder": "x"})
    with pytest.raises(ConfigError, match="extra.url_col: set by this section or the stage"):
        _download(good, out, extra={"url_col": "x"})
    # what only the environment tells: img2dataset's own arguments, the distributor's package
    with pytest.raises(DownloadError, match="unknown or reserved img2dataset argument.*: nope$"):
        _download(good, out, extra={"nope": 1, "min_image_size": 8})
    for name in ("pyspark", "ray"):
        if importlib.util.find_spec(name) is None:
            with pytest.raises(DownloadError, match=f"distributor '{name}' needs the {name} package"):
                _download(good, out, distributor=name)


def _load_stage():
    spec = importlib.util.spec_from_file_location("download_stage", STAGE)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    return stage


def test_stage_reports_bad_input_in_one_line(tmp_path, capsys):
    stage = _load_stage()
    with pytest.raises(SystemExit) as exit_info:
        stage.main(["--help"])
    assert exit_info.value.code == 0 and "CC12M" in capsys.readouterr().out
    assert stage.main(["--list", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == (f"download: error: --list: {tmp_path / 'missing.tsv'} not found "
                                               "(a TSV or parquet of (url, caption) pairs)")
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exit_info:
        stage.main(["--list", "x.tsv", "--out", "o", "--set", "no_equals_sign"])
    assert exit_info.value.code == 2 and "download: error: argument --set" in capsys.readouterr().err


def test_stage_settings_are_one_download_source(tmp_path):
    """The stage's command line has no defaults of its own: unset options are DownloadSource's defaults (or the
    file's entry with --source), given ones replace single fields, --set adds to the entry's extra."""
    stage = _load_stage()
    parser = stage._parser()
    plain = stage.build_source(parser.parse_args(["--list", str(tmp_path / "l.tsv"), "--out", str(tmp_path / "o")]))
    assert plain == DownloadSource(root=str(tmp_path), list="l.tsv", out=str(tmp_path / "o"))
    params = REPO / "params.yaml"
    from tcl.config import load_params

    entry = load_params(params).download.sources["synthetic"]
    args = ["--params", str(params), "--source", "synthetic"]
    assert stage.build_source(parser.parse_args(args)) == entry
    changed = stage.build_source(parser.parse_args([*args, "--threads", "3", "--no-sort-samples", "--set",
                                                    "min_image_size=8", "--out", str(tmp_path / "o")]))
    assert changed == dataclasses.replace(entry, threads=3, sort_samples=False, extra={"min_image_size": 8},
                                          out=str(tmp_path / "o"))
    served = stage.build_source(parser.parse_args(["--list", str(tmp_path / "c" / "p.tsv"), "--serve-root",
                                                   str(tmp_path / "c"), "--out", "o"]))
    assert (served.url_list, served.serve_root) == (tmp_path / "c" / "p.tsv", tmp_path / "c")
    with pytest.raises(ConfigError, match="threads: must be >= 1, got 0"):
        stage.build_source(parser.parse_args([*args, "--threads", "0"]))


# --------------------------------------------------------------------------- downloading

def test_shards_failures_and_resume(tmp_path, server):
    kinds = ["ok", "big", "ok", "missing", "ok", "slow", "text", "ok", "truncated", "ok"]
    paths = [f"/{kind}/{i}.jpg" for i, kind in enumerate(kinds)]
    urls = [server.url(p) for p in paths]
    captions = [f"\"{kind}\" thing, caption {i}" for i, kind in enumerate(kinds)]  # quotes survive as they are
    url_list = _write_tsv(tmp_path / "gcc.tsv", list(zip(captions, urls, strict=True)), ("caption", "url"))
    out, stats_path = tmp_path / "gcc3m", tmp_path / "metrics" / "download.json"

    stats = _download(url_list, out, prefix="gcc-train-", stats_path=stats_path, image_size=32,
                            samples_per_shard=4, **FAST)
    names = [shard_name("gcc-train-", i) for i in range(3)]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == names
    assert json.loads(stats_path.read_text()) == stats
    assert stats["samples_attempted"] == 10 and stats["samples_succeeded"] == 6 and stats["samples_failed"] == 4
    assert stats["failed_by_reason"] == {"HTTP Error 404: Not Found": 1, "timed out": 1, "Image decoding error": 2}
    assert stats["failed_to_download"] == 2 and stats["failed_to_resize"] == 2
    assert stats["failed_transient"] == 1  # the timeout: final, since this run was not interrupted
    assert stats["shards"] == 3 and stats["shard_bytes"] == sum((out / n).stat().st_size for n in names)
    assert stats["shards_downloaded_now"] == 3 and stats["throughput_samples_per_s"] > 0

    found = {}
    for name in names:
        for sample in _read_shard(out / name).values():
            assert set(sample) == {"jpg", "txt", "json"}
            meta = json.loads(sample["json"])
            image = Image.open(io.BytesIO(sample["jpg"]))
            image.load()
            assert sample["txt"].decode() == meta["caption"] and meta["status"] == "success"
            found[meta["url"]] = (sample["txt"].decode(), image.size, name)
    assert {u: v[0] for u, v in found.items()} == {u: c for u, c, k in zip(urls, captions, kinds, strict=True)
                                                   if k in ("ok", "big")}
    assert found[urls[1]][1] == (43, 32)  # keep_ratio: shorter side to image_size
    assert found[urls[0]][1] == (24, 20)  # resize_only_if_bigger: never upscaled
    assert found[urls[4]][2] == names[1] and found[urls[9]][2] == names[2]  # rows 4..7 → shard 1

    kept = {n: (out / n).stat() for n in (names[0], names[2])}
    (out / names[1]).unlink()
    server.requests.clear()
    again = _download(url_list, out, prefix="gcc-train-", stats_path=stats_path, image_size=32,
                            samples_per_shard=4, **FAST)
    assert server.requests == Counter(paths[4:8])  # shard 1's rows, once each
    assert (out / names[1]).exists() and again["shards_downloaded_now"] == 1
    for name, before in kept.items():
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    per_run = ("shards_downloaded_now", "samples_attempted_now", "wall_time_s", "throughput_samples_per_s")
    assert {k: v for k, v in again.items() if k not in per_run} == {k: v for k, v in stats.items() if k not in per_run}

    with pytest.raises(DownloadError, match=r"other settings \(changed: image_size\); use overwrite"):
        _download(url_list, out, prefix="gcc-train-", image_size=64, samples_per_shard=4, **FAST)
    server.requests.clear()
    assert _download(url_list, out, prefix="gcc-train-", image_size=32, samples_per_shard=4,
                           **FAST)["shards_downloaded_now"] == 0
    assert not server.requests
    redone = _download(url_list, out, prefix="gcc-train-", image_size=64, samples_per_shard=5,
                             overwrite=True, **FAST)
    assert redone["shards_downloaded_now"] == 2 and redone["samples_succeeded"] == 6
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == names[:2]


def test_sorted_shards_are_in_key_order_and_the_same_bytes_on_every_run_whatever_the_threads(tmp_path, server):
    """The thread count is a speed setting only (params.yaml lowers it for the loopback corpus)."""
    kinds = ["late", "ok", "late", "ok", "ok"]
    rows = [(f"caption {i}", server.url(f"/{kind}/{i}.jpg")) for i, kind in enumerate(kinds)]
    url_list = _write_tsv(tmp_path / "list.tsv", rows, ("caption", "url"))

    def keys(folder: Path) -> list[str]:
        with tarfile.open(folder / shard_name("", 0)) as tar:
            return [member.name for member in tar.getmembers()]

    _download(url_list, tmp_path / "plain", image_size=32, samples_per_shard=5, **FAST)
    plain = keys(tmp_path / "plain")
    assert plain != sorted(plain)  # img2dataset's order: as the downloads finish, the late rows last
    shards = []
    for run, threads in (("a", 4), ("b", 1)):
        _download(url_list, tmp_path / run, image_size=32, samples_per_shard=5, sort_samples=True,
                  **(FAST | {"threads": threads}))
        shards.append((tmp_path / run / shard_name("", 0)).read_bytes())
        assert keys(tmp_path / run) == sorted(plain)
    assert shards[0] == shards[1]
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".partial")]


def test_serve_root_from_a_worker_thread(tmp_path):
    root = tmp_path / "corpus"
    (root / "img").mkdir(parents=True)
    (root / "img" / "red square.jpg").write_bytes(SMALL)
    (root / "img" / "big.jpg").write_bytes(BIG)
    rows = [("img/red square.jpg", "a red square"), ("img/big.jpg", "a big red square"), ("img/gone.jpg", "gone")]
    url_list = _write_tsv(tmp_path / "synthetic.tsv", rows)  # header-less, url first, relative paths
    result: dict = {}

    def run() -> None:  # a Prefect task runs in a thread, where signal.signal is not allowed
        try:
            result["stats"] = _download(url_list, tmp_path / "out", prefix="synth-", serve_root=root,
                                              image_size=32, **FAST)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            result["error"] = err

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(120)
    assert "error" not in result, result.get("error")
    stats = result["stats"]
    assert stats["samples_succeeded"] == 2 and stats["failed_by_reason"] == {"HTTP Error 404: File not found": 1}
    samples = _read_shard(tmp_path / "out" / "synth-000000.tar")
    captions = sorted(s["txt"].decode() for s in samples.values())
    assert captions == ["a big red square", "a red square"]
    url = json.loads(next(iter(samples.values()))["json"])["url"]
    assert url.startswith("http://127.0.0.1:") and "/img/" in url
    port = int(url.split(":")[2].split("/")[0])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the server is gone once download_shards returns


def test_killed_run_leaves_only_complete_shards_and_resumes(tmp_path, server, capsys):
    kinds = ["ok", "ok", "blocked", "ok"]
    urls = [server.url(f"/{kind}/{i}.jpg") for i, kind in enumerate(kinds)]
    url_list = _write_tsv(tmp_path / "cc12m.tsv", [(u, f"caption {i}") for i, u in enumerate(urls)])
    out = tmp_path / "cc12m"
    args = ["--list", str(url_list), "--out", str(out), "--prefix", "cc-", "--samples-per-shard", "2",
            "--processes", "1", "--threads", "2", "--timeout", "20", "--stats", str(tmp_path / "stats.json")]
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    first = subprocess.Popen([sys.executable, STAGE, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while not (out / "cc-000000.tar").exists() or not server.requests["/blocked/2.jpg"]:
            assert time.monotonic() < deadline and first.poll() is None, "shard 0 never completed"
            time.sleep(0.1)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["cc-000000.tar"]
    before = (out / "cc-000000.tar").stat()

    server.release.set()
    server.requests.clear()
    assert _load_stage().main(args) == 0  # in this process: a second interpreter would cost seconds
    assert "download: 4 of 4 samples in 2 shards" in capsys.readouterr().out
    assert set(server.requests) == {"/blocked/2.jpg", "/ok/3.jpg"}
    after = (out / "cc-000000.tar").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert len(_read_shard(out / "cc-000001.tar")) == 2
    assert not list(work_dir(out, "cc-").glob("*.tar"))
    assert json.loads((tmp_path / "stats.json").read_text())["samples_succeeded"] == 4


# --------------------------------------------------------------------------- interrupted runs lose nothing

@pytest.mark.parametrize(("message", "transient"), [
    ("<urlopen error [Errno 111] Connection refused>", True), ("timed out", True),
    ("<urlopen error timed out>", True), ("[Errno 104] Connection reset by peer", True),
    ("Remote end closed connection without response", True), ("HTTP Error 503: Service Unavailable", True),
    ("HTTP Error 429: Too Many Requests", True), ("HTTP Error 404: Not Found", False),
    ("HTTP Error 403: Forbidden", False), ("Image decoding error", False),
    ("<urlopen error [Errno -2] Name or service not known>", False)])
def test_transient_failures_are_told_from_permanent_ones(message, transient):
    assert is_transient(message) is transient


MISSING, UNDECODABLE = (17, 101, 150), (40, 123)  # rows that fail for good: 404, not an image
BLOCKED = (70, 130)  # rows from the test's server that answer only once it is released


def _corpus(root: Path, server: ImageServer | None = None, rows: int = 160) -> tuple[Path, set[str]]:
    """A served corpus (hard links to one 640×480 JPEG, so decoding takes a moment) with a few rows that
    can never be delivered and, with ``server``, a few that wait for it; the list and the captions of
    the rows that can be delivered."""
    (root / "img").mkdir(parents=True)
    buffer = io.BytesIO()
    Image.effect_noise((640, 480), 60).convert("RGB").save(buffer, "JPEG", quality=90)
    (root / "base.jpg").write_bytes(buffer.getvalue())
    lines, deliverable = [], set()
    for i in range(rows):
        name = f"img/{i:04d}.jpg"
        if server is not None and i in BLOCKED:
            name = server.url(f"/blocked/{i}.jpg")
            deliverable.add(f"caption {i}")
        elif i in UNDECODABLE:
            (root / name).write_text("<html>not an image</html>")
        elif i not in MISSING:
            os.link(root / "base.jpg", root / name)
            deliverable.add(f"caption {i}")
        lines.append(f"{name}\tcaption {i}")
    (root / "pairs.tsv").write_text("\n".join(lines) + "\n")
    return root / "pairs.tsv", deliverable


def _group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes in process group ``pgid``, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _interrupt_and_resume(tmp_path: Path, server: ImageServer, how: str, when: str, capsys) -> None:
    """Start the stage in its own session and interrupt it (``how``: SIGKILL of the parent alone or of
    its process group, SIGTERM of the parent) once ``when``: the first shard or half of them are
    written, or a worker waits on the test's server (two rows block for 30 s, under a 25 s timeout).
    Then no process of it may remain 10 s later, and a rerun must end with every deliverable sample
    exactly once and the permanent failures counted, not retried."""
    url_list, deliverable = _corpus(tmp_path / "corpus", server)
    out, stats_path = tmp_path / "shards", tmp_path / "stats.json"
    args = ["--list", str(url_list), "--serve-root", str(tmp_path / "corpus"), "--out", str(out),
            "--prefix", "synthetic-", "--samples-per-shard", "20", "--processes", "2", "--threads", "4",
            "--image-size", "32", "--timeout", "25", "--stats", str(stats_path)]
    shards = 8  # 4 per worker: no worker restarts (img2dataset's pool renews a worker after 5 shards)
    enough = 1 if when == "first_shard" else shards // 2
    work = work_dir(out, "synthetic-")
    log = (tmp_path / "killed.log").open("w")
    first = subprocess.Popen([sys.executable, STAGE, *args], stdout=log, stderr=subprocess.STDOUT,
                             env=dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1"), start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while (len(list(work.glob("*_stats.json"))) < enough if when != "blocked"
               else not any(path.startswith("/blocked/") for path in list(server.requests))):
            assert first.poll() is None, f"the stage ended before it was interrupted: {first.returncode}"
            assert time.monotonic() < deadline, "no shard was written in 120 s"
            time.sleep(0.02)
        if how == "kill_group":
            os.killpg(first.pid, signal.SIGKILL)
        else:
            os.kill(first.pid, signal.SIGKILL if how == "kill_parent" else signal.SIGTERM)
        returncode = first.wait(60)
        deadline = time.monotonic() + 10
        while (left := _group_members(first.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not left, f"processes outlived the stage: {left}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # only the group this test started
        first.wait(30)
        log.close()
    assert returncode != 0 and (how != "term_parent" or returncode == 130), returncode
    assert len(list(work.glob("*_stats.json"))) < shards, "interrupted too late to test anything"

    server.release.set()
    capsys.readouterr()
    assert _load_stage().main(args) == 0
    captions = Counter()
    for tar in sorted(out.glob("synthetic-*.tar")):
        captions.update(sample["txt"].decode() for sample in _read_shard(tar).values())
    assert sorted(captions.elements()) == sorted(deliverable)  # each deliverable sample, once
    stats = json.loads(stats_path.read_text())
    assert stats["failed_by_reason"] == {"HTTP Error 404: File not found": len(MISSING),
                                         "Image decoding error": len(UNDECODABLE)}
    assert stats["samples_succeeded"] == len(deliverable) and stats["failed_transient"] == 0
    assert stats["shards"] == shards and not list(work.glob("*.tar"))
    # the permanent failures are final: nothing is downloaded again
    again = _download(url_list, out, prefix="synthetic-", serve_root=tmp_path / "corpus", image_size=32,
                            samples_per_shard=20, timeout=25)
    assert again["shards_downloaded_now"] == 0 and again["samples_succeeded"] == len(deliverable)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through /proc")
def test_parent_killed_alone_loses_nothing(tmp_path, server, capsys):
    _interrupt_and_resume(tmp_path, server, "kill_parent", "blocked", capsys)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through /proc")
@pytest.mark.parametrize(("how", "when"), [("kill_parent", "first_shard"), ("kill_parent", "midway"),
                                           ("kill_group", "first_shard"), ("kill_group", "midway"),
                                           ("term_parent", "blocked")])
def test_interrupted_runs_lose_nothing(tmp_path, server, capsys, how, when):
    _interrupt_and_resume(tmp_path, server, how, when, capsys)
