"""The web demo under load and abuse: a real uvicorn server on 127.0.0.1, raw sockets as clients.

Each test proves one promise of ``tcl serve-demo`` (see docs/inference.md, "The web demo"): bursts are answered
(200 or 503 + Retry-After, never a dropped connection), slow clients neither block others nor stay
forever, and the byte, pixel and phrase limits hold whatever the ``Content-Length`` says.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import select
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from PIL import Image

from tcl.inference import PredictOptions, Predictor, load_inference_model
from tcl.serving import DemoLimits, DemoServer
from tests.inference.conftest import scene

OPTIONS = PredictOptions(short_side=64, max_pixels=200 * 200)


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


GOOD = json.dumps({"image": _png(scene(seed=5)), "phrases": "red disc, blue square"}).encode()


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return Predictor(load_inference_model(tiny_checkpoint), OPTIONS)


def _port(server: DemoServer) -> int:
    return int(server.url.rstrip("/").rsplit(":", 1)[1])


def _post(url: str, body: bytes, timeout: float = 60) -> tuple[int, dict, dict]:
    request = urllib.request.Request(url + "api/segment", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, json.loads(err.read())


def _raw(port: int, head: bytes, body: bytes = b"", timeout: float = 20) -> tuple[int, dict, bytes]:
    """Send ``head`` (request line and headers, without the blank line) and ``body`` as they are; read one
    response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + b"\r\n\r\n" + body)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def _health(url: str) -> bytes:
    with urllib.request.urlopen(url + "health", timeout=20) as response:
        return response.read()


def test_a_burst_of_30_concurrent_requests_is_answered_not_dropped(predictor):
    # A small queue, so the burst overflows it: the surplus must get 503 + Retry-After, not resets.
    limits = DemoLimits(queue=4)
    results: list[tuple[int, dict, dict] | BaseException] = []
    barrier = threading.Barrier(30)

    def client() -> None:
        try:
            barrier.wait(timeout=30)
            results.append(_post(server.url, GOOD))
        except BaseException as err:  # noqa: BLE001 - a connection error is what this test looks for
            results.append(err)

    with DemoServer(predictor, port=0, quiet=True, limits=limits) as server:
        threads = [threading.Thread(target=client) for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert _health(server.url) == b"ok\n"
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(results) == 30 and not errors, errors
    statuses = [status for status, _, _ in results]
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    for status, headers, body in results:
        if status == 503:
            assert int(headers["retry-after"]) >= 1 and body["error"].startswith("busy:")
        else:
            assert body["classes"] == ["background", "red disc", "blue square"]


def test_full_queue_gets_503_and_a_body_that_never_arrives_gets_408(predictor):
    limits = DemoLimits(workers=1, queue=0, read_timeout=3)
    with DemoServer(predictor, port=0, quiet=True, limits=limits) as server:
        port = _port(server)
        # A client that announces 1000 bytes and sends 10 takes the only slot while it is being read.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(b"POST /api/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"{" * 10)
            deadline = time.monotonic() + 20
            while (answer := _post(server.url, GOOD))[0] == 200:  # until the server has admitted it
                assert time.monotonic() < deadline, "the slow request never took the slot"
                time.sleep(0.1)
            status, headers, body = answer
            assert status == 503 and int(headers["retry-after"]) >= 1, body
            assert body == {"error": "busy: 1 requests are being served or waiting; try again shortly"}
            response = http.client.HTTPResponse(slow)
            response.begin()  # answered once the read timeout passes, not held forever
            assert response.status == 408
            assert json.loads(response.read()) == {"error": "request body not received within 3 s (10 bytes arrived)"}
        # The slot is free again.
        status, _, body = _post(server.url, GOOD)
        assert status == 200 and body["classes"] == ["background", "red disc", "blue square"]
        # A refused body's announced rest is not waited for forever either: closed after the read timeout.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as liar:
            liar.sendall(b"POST /api/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{")
            response = http.client.HTTPResponse(liar)
            response.begin()
            assert response.status == 413 and b"upload too large" in response.read()
            assert liar.recv(1) == b""  # the server hung up (a timeout here raises instead)


def test_serve_demo_refuses_bad_limits_in_one_line(tiny_checkpoint, capsys):
    from tcl.cli import main

    assert main(["serve-demo", "--checkpoint", str(tiny_checkpoint), "--queue", "-1"]) == 2
    assert capsys.readouterr().err == "tcl: error: queue: must be >= 0, got -1\n"


def test_slow_clients_neither_block_others_nor_stay_connected(predictor):
    limits = DemoLimits(read_timeout=2)
    with DemoServer(predictor, port=0, quiet=True, limits=limits) as server:
        port = _port(server)
        header = b"POST /api/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" * 20
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        closed: dict[int, bytes] = {}
        stop = threading.Event()

        def drip() -> None:  # slowloris: one header byte per socket every 0.5 s, until the server hangs up
            received = {i: b"" for i in range(len(socks))}
            for step in range(len(header)):
                if stop.is_set() or len(closed) == len(socks):
                    return
                for i, sock in enumerate(socks):
                    if i in closed:
                        continue
                    try:
                        if select.select([sock], [], [], 0)[0]:
                            chunk = sock.recv(4096)
                            received[i] += chunk
                            if not chunk:
                                closed[i] = received[i]
                                continue
                        sock.send(header[step:step + 1])
                    except OSError:
                        closed[i] = received[i]
                time.sleep(0.5)

        dripper = threading.Thread(target=drip)
        dripper.start()
        try:
            time.sleep(1)
            status, _, body = _post(server.url, GOOD, timeout=30)  # served while the 20 are connected
            assert status == 200 and body["classes"] == ["background", "red disc", "blue square"]
            dripper.join(timeout=60)
        finally:
            stop.set()
            dripper.join(timeout=10)
            for sock in socks:
                sock.close()
    assert len(closed) == 20, f"{20 - len(closed)} slow connections still open"
    for data in closed.values():  # each got the 408 (or, if the close raced it, nothing)
        assert data == b"" or data.startswith(b"HTTP/1.1 408 Request Timeout"), data[:200]
    assert any(data.startswith(b"HTTP/1.1 408") for data in closed.values())


def test_byte_pixel_and_phrase_limits_hold_whatever_content_length_says(predictor):
    limits = DemoLimits(max_bytes=150_000, max_phrases=3, read_timeout=30)
    with DemoServer(predictor, port=0, quiet=True, limits=limits) as server:
        port = _port(server)
        post = b"POST /api/segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"

        # 10 GB announced, 1 byte sent: refused from the header at once (not after the 30 s read timeout).
        start = time.monotonic()
        status, _, body = _raw(port, post + b"\r\nContent-Length: 10000000000", b"{", timeout=20)
        assert status == 413 and json.loads(body)["error"] == \
            "upload too large (10000000000 bytes; images are limited to 150000 bytes)"
        assert time.monotonic() - start < 20

        # Negative: h11 refuses the header; nothing of the body is read.
        status, headers, body = _raw(port, post + b"\r\nContent-Length: -1", b"x" * 1000)
        assert status == 400 and headers["connection"] == "close" and body == b"Invalid HTTP request received."

        # Absent (and not chunked): nothing says how long the body is.
        status, headers, body = _raw(port, post + b"\r\nConnection: close", GOOD)
        assert status == 411 and json.loads(body) == {"error": "the request needs a Content-Length"}

        # Chunked, so no Content-Length at all: the bytes are counted as they arrive.
        chunk = b"x" * 65536
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6)) + b"0\r\n\r\n"
        status, headers, body = _raw(port, post + b"\r\nTransfer-Encoding: chunked", chunks)
        assert status == 413 and json.loads(body)["error"] == \
            "upload too large (over 265536 bytes; images are limited to 150000 bytes)"

        # Lying low: only the announced bytes are the body (the rest is not read as part of it).
        status, _, body = _raw(port, post + b"\r\nContent-Length: 10\r\nConnection: close", GOOD)
        assert status == 400 and json.loads(body) == {"error": "the request body is not JSON"}

        # Within the byte limit, a chunked valid request is served.
        chunked_good = b"%x\r\n%s\r\n0\r\n\r\n" % (len(GOOD), GOOD)
        status, _, body = _raw(port, post + b"\r\nTransfer-Encoding: chunked", chunked_good)
        assert status == 200 and json.loads(body)["classes"] == ["background", "red disc", "blue square"]

        # Pixels (from the image header) and phrases.
        big = json.dumps({"image": _png(scene(300, 200)), "phrases": "cat"}).encode()
        assert _post(server.url, big)[0::2] == (413, {"error": "the uploaded image: image too large (300x200 = "
                                                                "60000 pixels; the limit is 40000)"})
        many = json.dumps({"image": _png(scene()), "phrases": "a, b, c, d"}).encode()
        assert _post(server.url, many)[0::2] == (400, {"error": "too many phrases (4; the limit is 3)"})
        three = json.dumps({"image": _png(scene()), "phrases": "a, b, c", "background": False}).encode()
        status, _, body = _post(server.url, three)
        assert status == 200 and body["classes"] == ["a", "b", "c"]
        assert _health(server.url) == b"ok\n"
