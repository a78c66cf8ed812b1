"""uvicorn's HTTP/1.1 protocol (h11) with a deadline for each request's headers.

uvicorn bounds only the idle time between requests (``timeout_keep_alive``), and cancels even that
timer on the first byte received: a client that opens a connection and sends its headers one byte
at a time (slowloris), or never sends anything, holds the connection for as long as it likes. With
asyncio such a connection does not block other clients, but each one costs a socket and memory, so
:class:`HeaderTimeoutH11Protocol` closes a connection whose next request has not fully arrived
(headers; and the unread rest of a body the application refused early) ``header_timeout`` seconds
after the connection opened or the previous response finished. A client that sent part of a request
gets ``408`` first; one that sent nothing is closed silently, as uvicorn closes idle keep-alive
connections. Bodies the application reads are bounded by the application (see ``tcl.serving.demo_app``).

This subclasses ``uvicorn.protocols.http.h11_impl.H11Protocol`` (checked with uvicorn 0.54); pass it
as ``uvicorn.Config(http=functools.partial(HeaderTimeoutH11Protocol, header_timeout=...))``.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["HeaderTimeoutH11Protocol"]


class HeaderTimeoutH11Protocol(H11Protocol):
    """:class:`~uvicorn.protocols.http.h11_impl.H11Protocol` that closes connections whose request is not
    received within ``header_timeout`` seconds (see the module docstring)."""

    def __init__(self, *args, header_timeout: float = 10.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_since_cycle = None  # the request cycle current when the deadline was armed
        self._partial = False  # bytes of the awaited request have arrived

    def _arm(self) -> None:
        self._disarm()
        self._waiting_since_cycle, self._partial = self.cycle, False
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._deadline is not None:
            self._partial = True
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        # A new request cycle: its headers arrived in time; the application bounds its body.
        if self._deadline is not None and self.cycle is not self._waiting_since_cycle:
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request, which handle_events disarms
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._arm()

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return
        if self._partial and self.conn.our_state is h11.IDLE and self.conn.their_state is h11.IDLE:
            # Part of a new request arrived (not the tail of a refused body, which gets no second
            # response). h11 cannot answer a request it has not parsed: write the response raw.
            body = json.dumps({"error": f"request not received within {self.header_timeout:g} s"}).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()
