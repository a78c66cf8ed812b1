"""A small web demo on FastAPI + uvicorn: upload an image, type phrases, see the overlay.

``GET /`` serves one page (:mod:`tcl.serving.demo_page`); its script posts JSON to
``POST /api/segment`` (``image``: base64 or a ``data:`` URL; ``phrases``; optional ``background``,
``bg_thresh``, ``pamr``, ``kp_w``, ``sliding``) and shows the returned overlay PNG (with its legend)
and the class fractions. ``GET /health`` answers ``ok``. Every bad request gets a 4xx JSON
``{"error": "..."}`` that the page displays: not an image, no phrases or too many, too many pixels
or bytes, malformed JSON (400/413), a body that does not arrive in time (408); when more requests
are waiting than the queue holds, 503 with ``Retry-After``. An unexpected failure gets a 500 with its
one-line message. Either way the server keeps serving. Limits, the inference pool and the slow-client
timeouts: :class:`~tcl.serving.demo_app.DemoLimits`, :mod:`tcl.serving.demo_app`,
:mod:`tcl.serving.http_timeouts`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from functools import partial

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from ..inference import DEFAULT_MAX_BYTES, Predictor
from .demo_app import DemoLimits, InferencePool, create_demo_app
from .http_timeouts import HeaderTimeoutH11Protocol

__all__ = ["DemoServer", "DemoLimits", "serve_demo"]

# In-flight requests get this long to finish when the server stops; then they are cancelled.
_GRACEFUL_STOP_SECONDS = 10


class _Server(uvicorn.Server):
    """uvicorn's server with our own SIGINT/SIGTERM handling.

    uvicorn re-raises a caught signal after shutting down (KeyboardInterrupt, or death by SIGTERM);
    ``tcl serve-demo`` instead returns normally. The handlers are installed explicitly even where
    SIGINT was inherited as ignored (a background job of a non-interactive shell), so Ctrl-C and
    service managers always stop it.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # DemoServer.start(): stopped through stop(), not signals
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame) -> None:
        if self.should_exit and signum == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for in-flight requests
        self.should_exit = True


def _bind(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket (errors such as a port in use surface here, before serving)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)  # connections queue from now on, even before the loop accepts them
    except BaseException:
        sock.close()
        raise
    return sock


class DemoServer:
    """The demo web server for ``predictor`` on ``host:port`` (port 0: a free one), on uvicorn.

    ``start()`` serves from a background thread (tests, notebooks); ``serve_forever()`` blocks
    (``tcl serve-demo``) until SIGINT/SIGTERM. Also a context manager that stops the server on exit.
    ``limits`` (:class:`DemoLimits`) overrides ``max_bytes``.
    """

    def __init__(self, predictor: Predictor, host: str = "127.0.0.1", port: int = 7860,
                 max_bytes: int = DEFAULT_MAX_BYTES, quiet: bool = False, limits: DemoLimits | None = None) -> None:
        self.limits = limits or DemoLimits(max_bytes=max_bytes)
        self._pool = InferencePool(self.limits.workers, self.limits.queue)
        config = uvicorn.Config(
            create_demo_app(predictor, self.limits, self._pool), lifespan="off",
            http=partial(HeaderTimeoutH11Protocol, header_timeout=self.limits.read_timeout),
            backlog=self.limits.backlog, timeout_keep_alive=self.limits.keep_alive,
            timeout_graceful_shutdown=_GRACEFUL_STOP_SECONDS, server_header=False,
            log_config=None if quiet else LOGGING_CONFIG, log_level="warning" if quiet else "info",
            access_log=not quiet)
        self._server = _Server(config)
        self._socket = _bind(host, port, self.limits.backlog)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def start(self, timeout: float = 30) -> DemoServer:
        """Serve from a daemon thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="tcl-demo", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the demo server did not start")
            time.sleep(0.02)
        return self

    def serve_forever(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._pool.close()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=_GRACEFUL_STOP_SECONDS + 10)
            self._thread = None
        self._pool.close()
        self._socket.close()

    def __enter__(self) -> DemoServer:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_demo(predictor: Predictor, host: str = "127.0.0.1", port: int = 7860,
               max_bytes: int = DEFAULT_MAX_BYTES, limits: DemoLimits | None = None) -> None:
    """Serve the demo until SIGINT (Ctrl-C) or SIGTERM, printing its address."""
    server = DemoServer(predictor, host, port, max_bytes, limits=limits)
    print(f"TCL demo on {server.url} (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.stop()
    print("stopped", flush=True)
