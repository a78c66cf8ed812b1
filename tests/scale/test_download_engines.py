"""Path 3 of the scale-out suite: the download stage on img2dataset's ``pyspark`` and ``ray`` distributors.

A URL list (absolute URLs, as CC3M's) is fetched from a loopback HTTP server by ``python stages/download.py
--distributor ...``, the command a user runs (``dvc repro download@<name>`` runs it with the source's
``distributor``): on a local SparkSession (``local[2]``, driver on 127.0.0.1) and on a local Ray cluster
(``ray start --head``). Each must give the shards the multiprocessing distributor gives: the same shard
names, keys, image bytes, captions and metadata per key, and the same counts. The failures a user meets
first (no Java, workers on a Python without img2dataset, ray not importable, no cluster answering) are
one line each, exit status 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
STAGE = str(REPO / "stages" / "download.py")
ROWS = 14  # 12 images of other sizes and colours, one 404, one that is not an image
SAMPLES_PER_SHARD = 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _jpeg(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40 + 7 * index, 30 + 3 * index), (15 * index, 200 - 9 * index, 60)).save(buffer, "JPEG")
    return buffer.getvalue()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = files

    def handle_error(self, request, client_address) -> None:
        pass


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def url_list(tmp_path_factory) -> Iterator[Path]:
    """A CC3M-like list (caption<TAB>url, header) of ROWS URLs on a loopback server that lives for the module."""
    files = {f"/img/{i}.jpg": _jpeg(i) for i in range(ROWS) if i not in (5, 11)}
    files["/img/11.jpg"] = b"<html>not an image</html>"  # row 5: 404
    server = _Server(files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    path = tmp_path_factory.mktemp("list") / "cc3m.tsv"
    path.write_text("caption\turl\n" + "".join(f"caption {i}\thttp://127.0.0.1:{port}/img/{i}.jpg\n"
                                               for i in range(ROWS)))
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _group_members(pgid: int) -> list[int]:
    """PIDs of the live (not zombie) processes of process group ``pgid``, from /proc."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


def _stage_env(**changes: str | None) -> dict[str, str]:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "SPARK_LOCAL_IP": "127.0.0.1"}
    for name in ("PYSPARK_PYTHON", "PYSPARK_SUBMIT_ARGS", "RAY_ADDRESS", "JAVA_HOME"):
        env.pop(name, None)  # the project must find its own way, as on a user's machine
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _run_stage(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """The download stage as a user runs it, in its own process group; nothing of it may outlive it."""
    proc = subprocess.Popen([sys.executable, STAGE, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        deadline = time.monotonic() + 30  # the JVM / Ray driver threads exit with the stage
        while (left := _group_members(proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not left, f"processes outlived the stage: {left}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # only the group this test started
        proc.wait(30)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _download(url_list: Path, out: Path, distributor: str, env: dict[str, str]) -> tuple[dict, str]:
    """Run the stage into ``out``; the stats it wrote and its output."""
    stats_path = out.parent / f"{out.name}.json"
    done = _run_stage(["--list", str(url_list), "--out", str(out), "--samples-per-shard", str(SAMPLES_PER_SHARD),
                       "--processes", "2", "--threads", "2", "--image-size", "32", "--timeout", "20",
                       "--distributor", distributor, "--stats", str(stats_path)], env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(stats_path.read_text()), done.stdout + done.stderr


def _shards(out: Path) -> dict[str, dict[str, dict[str, bytes]]]:
    """shard name → key → extension → bytes, of every shard under ``out``."""
    found: dict[str, dict[str, dict[str, bytes]]] = {}
    for tar_path in sorted(out.glob("*.tar")):
        samples = found.setdefault(tar_path.name, {})
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return found


_PER_RUN = ("wall_time_s", "throughput_samples_per_s")


@pytest.fixture(scope="module")
def reference(url_list, tmp_path_factory) -> tuple[dict, dict]:
    """The multiprocessing distributor's shards and stats."""
    out = tmp_path_factory.mktemp("multiprocessing") / "shards"
    stats, _ = _download(url_list, out, "multiprocessing", _stage_env())
    shards = _shards(out)
    assert stats["samples_succeeded"] == ROWS - 2 and stats["shards"] == len(shards) == 4
    assert stats["failed_by_reason"] == {"HTTP Error 404: Not Found": 1, "Image decoding error": 1}
    return shards, stats


def _assert_same_as_reference(out: Path, stats: dict, reference: tuple[dict, dict]) -> None:
    shards, ref_stats = reference
    got = _shards(out)
    assert sorted(got) == sorted(shards)
    for name, samples in shards.items():
        assert sorted(got[name]) == sorted(samples), name  # the same keys in each shard
        for key, members in samples.items():
            meta, ref_meta = json.loads(got[name][key]["json"]), json.loads(members["json"])
            assert meta == ref_meta, key
            assert got[name][key] == members, key  # image, caption and metadata bytes alike
    assert {k: v for k, v in stats.items() if k not in _PER_RUN} == {
        k: v for k, v in ref_stats.items() if k not in _PER_RUN}


# --------------------------------------------------------------------------- Spark

def test_pyspark_distributor_on_a_local_spark_session(url_list, reference, tmp_path):
    """``--distributor pyspark`` with no SparkSession: the project's local[2] session on 127.0.0.1, workers on the
    stage's own interpreter (PYSPARK_PYTHON unset: img2dataset alone ran python3 from PATH and failed)."""
    start = time.monotonic()
    stats, output = _download(url_list, tmp_path / "spark", "pyspark", _stage_env())
    assert "img2dataset on Spark: master local[2], 2 cores" in output, output[-3000:]
    _assert_same_as_reference(tmp_path / "spark", stats, reference)
    print(f"pyspark download: {time.monotonic() - start:.0f} s")


def test_pyspark_failures_are_one_line(url_list, tmp_path):
    """No Java runtime; workers on a Python without img2dataset (a wrong PYSPARK_PYTHON): one line, exit 2."""
    args = ["--list", str(url_list), "--samples-per-shard", str(SAMPLES_PER_SHARD), "--processes", "1",
            "--threads", "2", "--image-size", "32", "--distributor", "pyspark"]
    no_java = _run_stage([*args, "--out", str(tmp_path / "no-java")], _stage_env(JAVA_HOME=str(tmp_path / "nowhere")))
    assert no_java.returncode == 2, no_java.stderr[-3000:]
    last = no_java.stderr.strip().splitlines()[-1]
    assert last.startswith("download: error: distributor 'pyspark': cannot start Spark (") and "Java" in last, last
    assert "Traceback" not in no_java.stderr
    assert not list((tmp_path / "no-java").glob("*.tar"))

    bare_python = tmp_path / "bare-python"  # this interpreter without site-packages: no img2dataset
    bare_python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare_python.chmod(0o755)
    wrong = _run_stage([*args, "--out", str(tmp_path / "wrong")], _stage_env(PYSPARK_PYTHON=str(bare_python)))
    assert wrong.returncode == 2, wrong.stderr[-3000:]
    assert wrong.stderr.strip().splitlines()[-1] == (
        "download: error: the Spark job failed: ModuleNotFoundError: No module named 'img2dataset' (the workers' "
        "Python, PYSPARK_PYTHON or spark.pyspark.python, must have img2dataset)")
    assert "Traceback" not in wrong.stderr.split("download: error:")[-1]
    assert not list((tmp_path / "wrong").glob("*.tar"))


# --------------------------------------------------------------------------- Ray

@contextlib.contextmanager
def _ray_head(ray_tmp: Path, wait_s: float = 180) -> Iterator[str]:
    """``ray start --head --block`` on a free port (its own process group, stopped by PID); its address."""
    port = _free_port()
    log_path = ray_tmp / "head.log"
    (ray_tmp / "auth_token").write_text(secrets.token_hex(32))  # the cluster's token, outside ~/.ray
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_TOKEN_PATH": str(ray_tmp / "auth_token")}
    with log_path.open("wb") as log:
        head = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
                                 "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
                                 "--disable-usage-stats"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + wait_s
        while b"Ray runtime started" not in log_path.read_bytes():
            assert head.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, f"ray start did not finish in {wait_s:.0f} s"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        # SIGTERM: ray start --block stops its processes; whatever is left after 30 s is killed
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 15)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, sig)
            deadline = time.monotonic() + wait
            while _group_members(head.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
        head.wait(15)
        assert not _group_members(head.pid)


def _short_tmp() -> Path:
    # Ray's session folder holds Unix sockets: its path must stay under ~100 characters
    return Path(tempfile.mkdtemp(prefix="tcl-ray-", dir="/tmp"))


def test_ray_distributor_on_a_local_ray_cluster(url_list, reference, tmp_path):
    ray_tmp = _short_tmp()
    try:
        start = time.monotonic()
        with _ray_head(ray_tmp) as address:
            env = _stage_env(RAY_ADDRESS=address, RAY_TMPDIR=str(ray_tmp),
                             RAY_AUTH_TOKEN_PATH=str(ray_tmp / "auth_token"))
            stats, output = _download(url_list, tmp_path / "ray", "ray", env)
        assert "Connecting to existing Ray cluster" in output, output[-3000:]
        _assert_same_as_reference(tmp_path / "ray", stats, reference)
        print(f"ray download (cluster start and stop included): {time.monotonic() - start:.0f} s")
    finally:
        subprocess.run(["rm", "-rf", str(ray_tmp)], check=False)


def test_ray_failures_are_one_line(url_list, tmp_path):
    """ray not importable, no cluster recorded, a cluster address that does not answer: one line, exit 2, within
    seconds (ray.init alone retried for minutes), nothing written."""
    args = ["--list", str(url_list), "--samples-per-shard", str(SAMPLES_PER_SHARD), "--distributor", "ray"]
    shadow = tmp_path / "shadow" / "ray"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\")\n")
    ray_tmp = tmp_path / "ray-tmp"
    ray_tmp.mkdir()
    closed = _free_port()
    cases = {
        "no-ray": (_stage_env(PYTHONPATH=str(shadow.parent)),
                   "download: error: distributor 'ray' needs the ray package, which cannot be imported (No module "
                   "named 'ray'); pip install ray (the project's scale extra)"),
        "none-recorded": (_stage_env(RAY_TMPDIR=str(ray_tmp)),
                          "download: error: distributor 'ray': no Ray cluster found (RAY_ADDRESS is not set and no "
                          "`ray start` cluster is recorded on this machine); start one with"),
        "closed": (_stage_env(RAY_ADDRESS=f"127.0.0.1:{closed}", RAY_TMPDIR=str(ray_tmp)),
                   f"download: error: distributor 'ray': no Ray cluster answers at 127.0.0.1:{closed} (Connection "
                   "refused); start one with `ray start --head --port 6379` and set RAY_ADDRESS=<head>:6379, or set "
                   "RAY_ADDRESS=local for a throwaway instance on this machine"),
    }
    for name, (env, expected) in cases.items():
        start = time.monotonic()
        done = _run_stage([*args, "--out", str(tmp_path / name)], env, timeout=120)
        assert done.returncode == 2, (name, done.stderr[-3000:])
        assert done.stderr.strip().splitlines() == [done.stderr.strip().splitlines()[-1]], (name, done.stderr)
        assert done.stderr.strip().startswith(expected), (name, done.stderr)
        assert not (tmp_path / name).exists(), name
        print(f"ray failure {name}: {time.monotonic() - start:.1f} s")


def test_spark_submit_master_is_kept(url_list, reference, tmp_path):
    """Under ``spark-submit --master ...`` the job runs on that master (img2dataset alone replaced it by local[N])."""
    spark_submit = Path(sys.executable).parent / "spark-submit"
    if not spark_submit.is_file():
        pytest.skip("spark-submit is not beside this interpreter")
    out = tmp_path / "submitted"
    env = _stage_env(PYSPARK_PYTHON=sys.executable)  # spark-submit's driver and workers: this interpreter
    proc = subprocess.Popen([str(spark_submit), "--master", "local[1]", "--conf", "spark.ui.enabled=false",
                             "--conf", "spark.driver.host=127.0.0.1", "--conf", "spark.driver.bindAddress=127.0.0.1",
                             STAGE, "--list", str(url_list), "--out", str(out), "--samples-per-shard",
                             str(SAMPLES_PER_SHARD), "--processes", "2", "--threads", "2", "--image-size", "32",
                             "--timeout", "20", "--distributor", "pyspark", "--stats", str(tmp_path / "s.json")],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == 0, output[-3000:]
    assert "img2dataset on Spark: master local[1], 1 cores" in output, output[-3000:]
    _assert_same_as_reference(out, json.loads((tmp_path / "s.json").read_text()), reference)
