"""A small web demo over the standard library's HTTP server: upload an image, type phrases, see the overlay.

``GET /`` serves one page (:mod:`tcl.serving.demo_page`); its script posts JSON to
``POST /api/segment`` (``image``: base64 or a ``data:`` URL; ``phrases``; optional ``background``,
``bg_thresh``, ``pamr``, ``kp_w``, ``sliding``) and shows the returned overlay PNG (with its legend)
and the class fractions. ``GET /health`` answers ``ok``. Every bad request (not an image, no
phrases, too many pixels or bytes, malformed JSON) gets a 4xx JSON ``{"error": "..."}`` that the
page displays; an unexpected failure gets a 500 with its one-line message. Either way the server
keeps serving. No extra dependencies (Gradio is not needed).
"""

from __future__ import annotations

import base64
import io
import json
import signal
import sys
import threading
import time
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..inference import DEFAULT_MAX_BYTES, InputError, Predictor, TooLargeError, decode_base64_image, overlay_image
from .demo_page import PAGE

__all__ = ["DemoServer", "serve_demo"]


class _RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def _page(predictor: Predictor) -> bytes:
    options = predictor.options
    bg = 0.4 if options.bg_thresh is None else options.bg_thresh
    html = (PAGE.replace("__BG_THRESH__", f"{bg:g}").replace("__KP_W__", f"{options.kp_w:g}")
            .replace("__PAMR__", "checked" if options.pamr else "")
            .replace("__SLIDING__", "checked" if options.sliding else ""))
    if options.bg_thresh is None:
        html = html.replace('id="background" checked', 'id="background"')
    return html.encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        if not self.server.quiet:
            sys.stderr.write(f"[serve-demo] {self.address_string()} {format % args}\n")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, data: dict) -> None:
        self._send(status, json.dumps(data).encode("utf-8"), "application/json")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
        elif path == "/health":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain")
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0] != "/api/segment":
            self.close_connection = True
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {self.path}"})
            return
        try:
            self._json(HTTPStatus.OK, self._segment(self._read_json()))
        except _RequestError as err:
            self._json(err.status, {"error": str(err)})
        except TooLargeError as err:
            self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"error": str(err)})
        except InputError as err:
            self._json(HTTPStatus.BAD_REQUEST, {"error": str(err)})
        except Exception as err:  # noqa: BLE001 - keep serving; the page shows the message
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            sys.stderr.write(f"[serve-demo] error: {type(err).__name__}: {message}\n")
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {message}"})

    def _read_json(self) -> dict:
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self.close_connection = True
            raise _RequestError(HTTPStatus.LENGTH_REQUIRED, "the request needs a Content-Length") from None
        # base64 inflates by 4/3; allow some room for the other fields.
        if length > self.server.max_bytes * 4 // 3 + 64 * 1024:
            self.close_connection = True
            self._discard(length)
            limit = self.server.max_bytes
            raise _RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                f"upload too large ({length} bytes; images are limited to {limit} bytes)")
        try:
            data = json.loads(self.rfile.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _RequestError(HTTPStatus.BAD_REQUEST, "the request body is not JSON") from None
        if not isinstance(data, dict):
            raise _RequestError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
        return data

    def _discard(self, length: int) -> None:
        """Read and drop a refused body (up to 64 MiB), so the client gets the error response instead of
        a connection reset for unread data."""
        remaining = min(length, 64 * 1024 * 1024)
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            remaining -= len(chunk)

    def _segment(self, data: dict) -> dict:
        predictor = self.server.predictor
        if not data.get("image"):
            raise InputError("no image uploaded")
        image = decode_base64_image(data["image"], "the upload", predictor.options.max_pixels, self.server.max_bytes)
        options = _request_options(predictor, data)
        start = time.perf_counter()
        result = predictor.segment(image, data.get("phrases", ""), options)
        buffer = io.BytesIO()
        overlay_image(image, result).save(buffer, format="PNG")
        return {"overlay": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
                "classes": result.names, "fractions": result.fractions(), "width": image.width,
                "height": image.height, "seconds": round(time.perf_counter() - start, 4)}


def _request_options(predictor: Predictor, data: dict):
    """The server's options with the page's choices applied (the pixel limit is not client-settable)."""
    changes = {}
    for key, kind in (("bg_thresh", float), ("kp_w", float), ("pamr", bool), ("sliding", bool)):
        if data.get(key) is not None:
            value = data[key]
            ok = isinstance(value, bool) if kind is bool else isinstance(value, int | float) and \
                not isinstance(value, bool)
            if not ok:
                raise InputError(f"{key} must be a {'boolean' if kind is bool else 'number'}, got {value!r}")
            changes[key] = kind(value)
    if data.get("background") is False:
        changes["bg_thresh"] = None
    elif data.get("background") is True and predictor.options.bg_thresh is None and "bg_thresh" not in changes:
        changes["bg_thresh"] = 0.4
    return replace(predictor.options, **changes)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Stopping must not wait for idle keep-alive connections (HTTP/1.1): a browser tab left open
    # would otherwise hold Ctrl-C (and the tests' shutdown) until it closes its socket.
    block_on_close = False

    def __init__(self, address, predictor: Predictor, max_bytes: int, quiet: bool) -> None:
        self.predictor, self.max_bytes, self.quiet = predictor, max_bytes, quiet
        self.page = _page(predictor)
        super().__init__(address, _Handler)


class DemoServer:
    """The demo web server for ``predictor`` on ``host:port`` (port 0: a free one).

    ``start()`` serves from a background thread (tests, notebooks); ``serve_forever()`` blocks
    (``tcl serve-demo``). Also a context manager that stops the server on exit.
    """

    def __init__(self, predictor: Predictor, host: str = "127.0.0.1", port: int = 7860,
                 max_bytes: int = DEFAULT_MAX_BYTES, quiet: bool = False) -> None:
        self._httpd = _Server((host, port), predictor, max_bytes, quiet)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/"

    def start(self) -> DemoServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="tcl-demo", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> DemoServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_demo(predictor: Predictor, host: str = "127.0.0.1", port: int = 7860,
               max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Serve the demo until interrupted (Ctrl-C), printing its address."""
    server = DemoServer(predictor, host, port, max_bytes)
    # Ctrl-C and SIGTERM (service managers) stop the server. Set explicitly: a process started in the
    # background by a non-interactive shell inherits SIGINT as ignored, and Python then never raises
    # KeyboardInterrupt for it.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    print(f"TCL demo on {server.url} (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt
