"""The web demo's FastAPI application: the page, ``/health`` and ``POST /api/segment`` with its limits.

Inference is CPU-bound, so it runs in a small thread pool (``DemoLimits.workers`` threads; the
model itself is serialised by :class:`~tcl.inference.Predictor`), never on the event loop, and at
most ``workers + queue`` segment requests are admitted at a time (being read, waiting or running).
Further requests get ``503`` with ``Retry-After`` at once, without their body being read. The event
loop only reads request bytes: JSON parsing, base64 and image decoding, the model and the PNG
encoding of the overlay all run in the pool.

Body limits, checked twice: a ``Content-Length`` over the limit is refused with ``413`` before any
byte is read, and the bytes actually received are counted while reading (a chunked body has no
``Content-Length``), so a missing or lying header cannot get past it. h11 itself refuses a
malformed (e.g. negative) ``Content-Length`` with ``400``, and never reads more than the header
announces. A body that does not arrive within ``read_timeout`` gets ``408``. The image's pixels are
limited by the predictor's ``max_pixels`` (checked from the image header, before decoding), and the
phrase list by ``max_phrases``. Every refusal is a JSON ``{"error": "<one line>"}``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..errors import TCLError, require
from ..inference import (
    DEFAULT_MAX_BYTES,
    InputError,
    PredictOptions,
    Predictor,
    TooLargeError,
    decode_base64_image,
    overlay_image,
    parse_phrases,
)
from ..inference.settings import DEFAULT_SETTINGS
from .demo_page import PAGE

__all__ = ["DemoLimits", "create_demo_app", "InferencePool"]

_NO_STORE = {"Cache-Control": "no-store"}


@dataclass(frozen=True)
class DemoLimits:
    """What one demo server accepts. ``max_bytes``: encoded image bytes (the request body may be 4/3
    of that, base64, plus 64 KiB for the other fields); ``max_phrases``: phrases per request;
    ``workers``: inference threads; ``queue``: admitted requests beyond those running (more get 503);
    ``read_timeout``: seconds for a request's headers, and again for its body; ``keep_alive``: seconds
    an idle connection stays open; ``backlog``: the listen queue of not yet accepted connections."""

    max_bytes: int = DEFAULT_MAX_BYTES
    max_phrases: int = 64
    workers: int = 1
    queue: int = 32
    read_timeout: float = 10.0
    keep_alive: float = 5.0
    backlog: int = 2048

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_phrases", "workers", "backlog"):
            require(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))
        require(self.queue >= 0, "queue", "must be >= 0", self.queue)
        for name in ("read_timeout", "keep_alive"):
            require(getattr(self, name) > 0, name, "must be > 0", getattr(self, name))

    @property
    def max_body(self) -> int:
        return self.max_bytes * 4 // 3 + 64 * 1024


class _RequestError(Exception):
    def __init__(self, status: HTTPStatus, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.close = status, close


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers={**_NO_STORE, **(headers or {})})


class InferencePool:
    """A bounded admission count in front of a thread pool. Admission and release happen on the
    event loop (no lock needed); the work runs in ``workers`` threads."""

    def __init__(self, workers: int, queue: int) -> None:
        self.capacity = workers + queue
        self.workers = workers
        self.admitted = 0
        self._mean_seconds = 1.0  # running mean of a job's duration, for Retry-After
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tcl-demo-inference")

    def try_admit(self) -> bool:
        if self.admitted >= self.capacity:
            return False
        self.admitted += 1
        return True

    def release(self) -> None:
        self.admitted -= 1

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: the admitted requests' expected time on the workers."""
        return max(1, math.ceil(self._mean_seconds * self.admitted / self.workers))

    async def run(self, fn, *args):
        start = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._mean_seconds = 0.8 * self._mean_seconds + 0.2 * (time.perf_counter() - start)

    def close(self) -> None:
        """Drop queued jobs; a running one finishes in its thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _read_body(request: Request, limits: DemoLimits) -> bytes:
    """The request body, at most ``limits.max_body`` bytes, within ``limits.read_timeout`` seconds."""
    declared = request.headers.get("content-length")
    if declared is None and "chunked" not in request.headers.get("transfer-encoding", "").lower():
        raise _RequestError(HTTPStatus.LENGTH_REQUIRED, "the request needs a Content-Length", close=True)
    if declared is not None and int(declared) > limits.max_body:  # h11 accepts only digits here
        # Answered before reading; uvicorn then reads and drops the rest of the body, so the client
        # sees this response rather than a connection reset (HeaderTimeoutH11Protocol bounds that).
        raise _RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"upload too large ({declared} bytes; images are limited to {limits.max_bytes} bytes)")
    chunks, received = [], 0
    try:
        async with asyncio.timeout(limits.read_timeout):
            async for chunk in request.stream():
                received += len(chunk)
                if received > limits.max_body:
                    raise _RequestError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                        f"upload too large (over {limits.max_body} bytes; images are limited to "
                                        f"{limits.max_bytes} bytes)")  # uvicorn drops the rest
                chunks.append(chunk)
    except TimeoutError:
        raise _RequestError(HTTPStatus.REQUEST_TIMEOUT, f"request body not received within {limits.read_timeout:g} s "
                            f"({received} bytes arrived)", close=True) from None
    return b"".join(chunks)


def _request_options(predictor: Predictor, data: dict) -> PredictOptions:
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
    elif data.get("background") is True and predictor.options.settings.bg_thresh is None and "bg_thresh" not in changes:
        changes["bg_thresh"] = DEFAULT_SETTINGS.bg_thresh
    return predictor.options.replace(**changes)


def _segment(predictor: Predictor, limits: DemoLimits, body: bytes) -> dict[str, Any]:
    """Everything CPU-bound about one request (runs in the pool): parse, decode, segment, draw."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _RequestError(HTTPStatus.BAD_REQUEST, "the request body is not JSON") from None
    if not isinstance(data, dict):
        raise _RequestError(HTTPStatus.BAD_REQUEST, "the request body must be a JSON object")
    if not data.get("image"):
        raise InputError("no image uploaded")
    phrases = parse_phrases(data.get("phrases", ""))
    if len(phrases) > limits.max_phrases:
        raise InputError(f"too many phrases ({len(phrases)}; the limit is {limits.max_phrases})")
    options = _request_options(predictor, data)
    image = decode_base64_image(data["image"], "the uploaded image", predictor.options.max_pixels, limits.max_bytes)
    start = time.perf_counter()
    result = predictor.segment(image, phrases, options)
    buffer = io.BytesIO()
    overlay_image(image, result).save(buffer, format="PNG")
    return {"overlay": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"),
            "classes": result.names, "fractions": result.fractions(), "width": image.width,
            "height": image.height, "seconds": round(time.perf_counter() - start, 4)}


def page_html(predictor: Predictor) -> str:
    """The page with the server's default options filled in."""
    options, settings = predictor.options, predictor.options.settings
    bg = DEFAULT_SETTINGS.bg_thresh if settings.bg_thresh is None else settings.bg_thresh
    html = (PAGE.replace("__BG_THRESH__", f"{bg:g}").replace("__KP_W__", f"{settings.kp_w:g}")
            .replace("__PAMR__", "checked" if settings.pamr else "")
            .replace("__SLIDING__", "checked" if options.sliding else ""))
    if settings.bg_thresh is None:
        html = html.replace('id="background" checked', 'id="background"')
    return html


def create_demo_app(predictor: Predictor, limits: DemoLimits, pool: InferencePool) -> FastAPI:
    """The demo's ASGI application; ``pool`` runs the inference (the caller closes it)."""
    app = FastAPI(title="TCL demo", docs_url=None, redoc_url=None, openapi_url=None)
    page = page_html(predictor)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == HTTPStatus.NOT_FOUND:
            return _error(exc.status_code, f"no such page: {request.url.path}")
        return _error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    @app.get("/", response_class=HTMLResponse)
    @app.get("/index.html", response_class=HTMLResponse)
    async def _page() -> HTMLResponse:
        return HTMLResponse(page, headers=_NO_STORE)

    @app.get("/health", response_class=PlainTextResponse)
    async def _health() -> PlainTextResponse:
        return PlainTextResponse("ok\n", headers=_NO_STORE)

    @app.post("/api/segment")
    async def _segment_endpoint(request: Request) -> Response:
        if not pool.try_admit():
            # The unread body is read and dropped by uvicorn after this response (keep-alive).
            return _error(HTTPStatus.SERVICE_UNAVAILABLE,
                          f"busy: {pool.admitted} requests are being served or waiting; try again shortly",
                          {"Retry-After": str(pool.retry_after())})
        try:
            body = await _read_body(request, limits)
            return JSONResponse(await pool.run(_segment, predictor, limits, body), headers=_NO_STORE)
        except ClientDisconnect:
            return Response(status_code=HTTPStatus.BAD_REQUEST)  # nobody reads it
        except _RequestError as err:
            return _error(err.status, str(err), {"Connection": "close"} if err.close else None)
        except TooLargeError as err:
            return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, str(err))
        except TCLError as err:  # InputError, or options out of range (ConfigError)
            return _error(HTTPStatus.BAD_REQUEST, str(err))
        except Exception as err:  # noqa: BLE001 - keep serving; the page shows the message
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            sys.stderr.write(f"[serve-demo] error: {type(err).__name__}: {message}\n")
            return _error(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {message}")
        finally:
            pool.release()

    return app
