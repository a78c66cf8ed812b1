"""The web demo: its HTTP API with good and bad requests, and the real page in headless Chromium."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcl.inference import PredictOptions, Predictor, load_inference_model, overlay_image
from tcl.serving import DemoServer
from tcl.visualize import palette
from tests.inference.conftest import scene
from tests.serving.chromium import Chromium, find_chromium

OPTIONS = PredictOptions(short_side=64, max_pixels=200 * 200)


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _request(url: str, payload: dict | bytes | None = None) -> tuple[int, bytes]:
    data = payload if isinstance(payload, bytes | None) else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return Predictor(load_inference_model(tiny_checkpoint), OPTIONS)


def test_demo_api_segments_and_keeps_serving_after_bad_requests(predictor):
    image = scene(seed=5)
    with DemoServer(predictor, port=0, max_bytes=150_000, quiet=True) as server:
        status, page = _request(server.url)
        assert status == 200 and b'id="image"' in page and b'id="phrases"' in page
        assert _request(server.url + "health") == (200, b"ok\n")

        good = {"image": _png(image), "phrases": "red disc, blue square"}
        status, body = _request(server.url + "api/segment", good)
        assert status == 200
        reply = json.loads(body)
        expected = predictor.segment(image, "red disc, blue square")
        assert reply["classes"] == expected.names and reply["fractions"] == expected.fractions()
        overlay = Image.open(io.BytesIO(base64.b64decode(reply["overlay"].partition(",")[2])))
        assert np.array_equal(np.asarray(overlay), np.asarray(overlay_image(image, expected)))

        noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (250, 250, 3), dtype=np.uint8))
        bad = [
            ({"image": "data:image/png;base64," + base64.b64encode(b"hello").decode(), "phrases": "cat"}, 400,
             "cannot read the uploaded image: not an image file"),
            ({"image": "data:image/png;base64,%%%", "phrases": "cat"}, 400, "the uploaded image: not valid base64"),
            ({"image": _png(image), "phrases": " , "}, 400, "no phrases given"),
            ({"image": _png(scene(300, 200)), "phrases": "cat"}, 413,
             "the uploaded image: image too large (300x200 = 60000 pixels; the limit is 40000)"),
            ({"image": _png(noise), "phrases": "cat"}, 413, "upload too large"),
            ({"image": _png(image), "phrases": "cat", "kp_w": "high"}, 400, "kp_w must be a number"),
            ({"image": _png(image), "phrases": "cat", "kp_w": 7}, 400, "kp_w: must be in [0, 1]"),
            ({"phrases": "cat"}, 400, "no image uploaded"),
            (b"{not json", 400, "not JSON"),
            (b"x" * 300_000, 413, "upload too large (300000 bytes"),  # refused from Content-Length
        ]
        for payload, code, message in bad:
            status, body = _request(server.url + "api/segment", payload)
            assert status == code and message in json.loads(body)["error"], (payload if isinstance(payload, bytes)
                                                                             else payload.get("phrases"), body)
        assert _request(server.url + "nothing")[0] == 404

        status, body = _request(server.url + "api/segment", {**good, "background": False, "pamr": False})
        assert status == 200 and json.loads(body)["classes"] == ["red disc", "blue square"]


@contextmanager
def _serve_demo_command(checkpoint: Path, log: Path, *options: str, stop_signal: int = signal.SIGINT,
                        ignore_sigint: bool = False) -> Iterator[str]:
    """``tcl serve-demo`` as a subprocess on a free port; yields its URL, always stops it (with
    ``stop_signal``; ``ignore_sigint``: started with SIGINT ignored, as a background job of a
    non-interactive shell is). Its output goes to ``log`` (a file, not a pipe: nothing can block on
    a full pipe buffer)."""
    ignore = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    with log.open("w") as sink:
        process = subprocess.Popen([sys.executable, "-m", "tcl.cli", "serve-demo", "--checkpoint", str(checkpoint),
                                    "--port", "0", *options], stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True, preexec_fn=ignore)
    try:
        deadline = time.monotonic() + 60
        while not (match := re.search(r"TCL demo on (http://\S+)", log.read_text())):
            assert process.poll() is None, f"serve-demo exited: {log.read_text()}"
            assert time.monotonic() < deadline, f"serve-demo printed no URL in 60 s: {log.read_text()}"
            time.sleep(0.1)
        yield match.group(1)
    finally:
        process.send_signal(stop_signal)  # Ctrl-C or a service manager: the command stops its server and exits
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            raise
    assert process.returncode == 0, log.read_text()


@pytest.mark.parametrize(("stop_signal", "ignore_sigint"),
                         [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["sigint", "sigint-inherited-ignored", "sigterm"])
def test_serve_demo_stops_on_signal_despite_an_idle_connection(tiny_checkpoint, tmp_path, stop_signal, ignore_sigint):
    log = tmp_path / "serve-demo.log"
    with _serve_demo_command(tiny_checkpoint, log, "--short-side", "64", stop_signal=stop_signal,
                             ignore_sigint=ignore_sigint) as url:
        assert _request(url + "health") == (200, b"ok\n")
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        idle = socket.create_connection((host, int(port)), timeout=20)  # a browser tab's keep-alive connection
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        response = http.client.HTTPResponse(idle)
        response.begin()
        assert response.status == 200 and response.read() == b"ok\n" and not response.will_close
    # _serve_demo_command checked the exit status (0, within 20 s); the idle connection was closed.
    assert log.read_text().rstrip().endswith("stopped") and idle.recv(4096) == b""
    idle.close()


def _pixels_near(shot: np.ndarray, colour, tolerance: int = 2) -> int:
    return int((np.abs(shot.astype(int) - np.asarray(colour, dtype=int)).max(axis=-1) <= tolerance).sum())


@pytest.mark.skipif(find_chromium() is None,
                    reason="no chromium binary (Debian/Ubuntu: apt-get install -y chromium)")
def test_demo_page_in_headless_chromium(tiny_checkpoint, tmp_path):
    scene(320, 240, seed=6).save(tmp_path / "photo.png")
    (tmp_path / "notes.png").write_text("not an image")
    with _serve_demo_command(tiny_checkpoint, tmp_path / "serve-demo.log", "--short-side", "64") as url, \
            Chromium(find_chromium(), tmp_path / "profile") as browser:
        browser.open(url)
        blank = np.asarray(browser.screenshot())

        # A file that is not an image: the page shows the server's error.
        browser.set_file("#image", tmp_path / "notes.png")
        browser.evaluate("document.getElementById('phrases').value = 'cat'; document.getElementById('run').click()")
        state = "document.body.dataset.state !== 'busy' && document.body.dataset.state"
        assert browser.wait_for(state) == "error"
        assert "not an image file" in browser.evaluate("document.getElementById('error').textContent")

        # The server kept serving: a real photo, two phrases, no background.
        browser.set_file("#image", tmp_path / "photo.png")
        browser.evaluate("document.getElementById('phrases').value = 'red disc, blue square';"
                         "document.getElementById('background').checked = false;"
                         "document.getElementById('run').click()")
        assert browser.wait_for(state) == "done", \
            browser.evaluate("document.getElementById('error').textContent")
        assert browser.evaluate("document.getElementById('error').textContent") == ""
        status = browser.evaluate("document.getElementById('status').textContent")
        assert re.fullmatch(r"320x240 in \d+\.\d\d s", status)
        shown = browser.evaluate("[...document.querySelectorAll('#fractions tr')]"
                                 ".map(r => [r.cells[0].textContent, parseFloat(r.cells[1].textContent)])")
        assert [name for name, _ in shown] == ["red disc", "blue square"]
        assert sum(share for _, share in shown) == pytest.approx(100, abs=0.2)
        shot = np.asarray(browser.screenshot())
    Image.fromarray(shot).save(tmp_path / "screenshot.png")  # for a look when the checks below fail

    # The overlay and its legend are on screen: each present class's legend swatch (15x15 px of its
    # exact colour) is visible, and the page changed where the result image appeared.
    colours = palette(2, background=False)
    for index, (_, share) in enumerate(shown):
        if share > 0:
            assert _pixels_near(shot, colours[index]) >= 15 * 15, f"legend colour {colours[index]} not on screen"
    changed = np.abs(shot[:blank.shape[0]].astype(int) - blank[:shot.shape[0]].astype(int)).max(axis=-1) > 30
    assert changed.sum() > 320 * 240 * 0.5
