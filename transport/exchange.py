"""One pooled client connection to a peer, and the responses it carries.

A PeerConnection is the Session behind one QUIC connection: it sends
requests, routes H3 events to their H3Response, and applies receive-side
flow control. aioquic grants stream credit as bytes arrive, not as the
application consumes them, so a slow consumer would otherwise buffer a whole
blob: once the bytes delivered but not yet consumed pass RECEIVE_HIGH_BYTES
the connection stops reading its UDP socket (the kernel drops, the peer's
congestion control backs off and its own send gate holds its memory), and
resumes under half.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from daemon.observability.metrics import TRANSFER_BYTES, TRANSFER_DURATION
from transport.engine import Engine
from transport.peer import PeerStreamBroken, PeerUnavailable
from transport.streams import H3_REQUEST_CANCELLED, request_fields

RECEIVE_HIGH_BYTES = 8 << 20
_SKIPPED_HEADERS = {"host", "connection", "keep-alive", "transfer-encoding", "te"}


class H3Response:
    """A peer's answer: status and headers, then the body as it arrives."""

    def __init__(
        self, connection: PeerConnection, stream_id: int, method: str, idle_s: float
    ):
        self.status = 0
        self.headers: Mapping[str, str] = {}
        self.stream_id = stream_id
        self._connection = connection
        self._head = method == "HEAD"
        self._idle_s = idle_s
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._received = 0
        self._expected: int | None = None
        self._ended = False
        self._error: Exception | None = None
        self._arrived = asyncio.Event()
        self._headers_in: asyncio.Future[None] = (
            asyncio.get_running_loop().create_future()
        )
        self._started = time.monotonic()
        self._closed = False

    async def wait_headers(self) -> None:
        """Return once the response headers are in; PeerUnavailable if never."""
        await asyncio.shield(self._headers_in)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._body()

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                self._connection.consumed(len(chunk))
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self._ended:
                self._finish()
                return
            else:
                self._arrived.clear()
                try:
                    async with asyncio.timeout(self._idle_s):
                        await self._arrived.wait()
                except TimeoutError as err:
                    await self.close()
                    raise PeerStreamBroken(
                        f"no body bytes for {self._idle_s:g}s"
                    ) from err

    async def close(self) -> None:
        """Reset the stream if the body is unfinished; release its buffers."""
        if self._closed:
            return
        self._closed = True
        if not self._ended and self._error is None:
            self._connection.cancel(self.stream_id)
        self._connection.forget(self.stream_id, self._buffered)
        self._chunks.clear()
        self._buffered = 0

    # fed by the connection

    def on_headers(self, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        pseudo, plain = request_fields(headers)
        try:
            self.status = int(pseudo.get(":status", ""))
            length = plain.get("content-length")
            self._expected = int(length) if length is not None else None
        except ValueError:
            self.fail(PeerUnavailable("malformed response headers"))
            return
        if self._head or self.status in (204, 304) or self.status < 200:
            self._expected = 0
        self.headers = plain
        if not self._headers_in.done():
            self._headers_in.set_result(None)
        if ended:
            self.on_data(b"", True)

    def on_data(self, data: bytes, ended: bool) -> None:
        if self._error is not None or self._closed:
            return
        if data:
            self._received += len(data)
            self._buffered += len(data)
            self._chunks.append(data)
            TRANSFER_BYTES.labels(direction="in", protocol="h3").inc(len(data))
        if self._expected is not None and self._received > self._expected:
            self._connection.cancel(self.stream_id)
            self.fail(PeerStreamBroken(f"body ran past {self._expected} bytes"))
            return
        if ended:
            self._ended = True
        self._arrived.set()

    def fail(self, error: Exception) -> None:
        """End the exchange with an error (before headers: PeerUnavailable)."""
        if not self._headers_in.done():
            unavailable = (
                error
                if isinstance(error, PeerUnavailable)
                else PeerUnavailable(str(error))
            )
            self._headers_in.set_exception(unavailable)
            self._headers_in.exception()  # retrieved: no "never retrieved" log
        if self._error is None and not self._ended:
            self._error = (
                error
                if isinstance(error, PeerStreamBroken)
                else PeerStreamBroken(str(error))
            )
        self._arrived.set()

    def _finish(self) -> None:
        if self._expected is not None and self._received != self._expected:
            self._error = PeerStreamBroken(
                f"body ended at {self._received} of {self._expected} bytes"
            )
            raise self._error
        TRANSFER_DURATION.labels(direction="in").observe(
            time.monotonic() - self._started
        )
        self._closed = True
        self._connection.forget(self.stream_id, 0)


class PeerConnection:
    """The Session of one client QUIC connection to one peer."""

    def __init__(
        self,
        engine: Engine,
        protocol: Any,
        transport: asyncio.DatagramTransport,
        peer_id: str,
        on_closed: Callable[[PeerConnection], None],
    ) -> None:
        self.peer_id = peer_id
        self.protocol = protocol
        self.last_used = time.monotonic()
        self.closed = False
        self._engine = engine
        # TODO(slow consumers beside fast ones on one connection): pausing the
        # UDP socket stalls every stream of this peer; per-stream credit needs
        # aioquic to grant stream credit as the application reads.
        self._transport: Any = transport  # pause/resume_reading: selector UDP
        self._quic = protocol._quic
        self._h3 = engine.H3Connection(self._quic)
        self._responses: dict[int, H3Response] = {}
        self._buffered = 0
        self._paused = False
        self._on_closed = on_closed

    @property
    def active(self) -> int:
        """Requests whose response is still open."""
        return len(self._responses)

    def request(
        self,
        method: str,
        authority: str,
        path_qs: str,
        headers: Mapping[str, str],
        idle_s: float,
    ) -> H3Response:
        """Send a request (headers only) and return its pending response."""
        if self.closed:
            raise PeerUnavailable("connection closed")
        self.last_used = time.monotonic()
        stream_id = self._quic.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path_qs.encode()),
        ]
        fields.extend(
            (name.lower().encode(), value.encode())
            for name, value in headers.items()
            if name.lower() not in _SKIPPED_HEADERS and not name.startswith(":")
        )
        response = H3Response(self, stream_id, method, idle_s)
        self._responses[stream_id] = response
        try:
            self._h3.send_headers(stream_id, fields, end_stream=True)
        except Exception as err:  # the engine refuses: connection is closing
            self._responses.pop(stream_id, None)
            raise PeerUnavailable(f"cannot send request: {err}") from err
        self.protocol.transmit()
        return response

    def cancel(self, stream_id: int) -> None:
        """Ask the peer to stop sending on the stream (STOP_SENDING)."""
        if self.closed:
            return
        # the stream may already be finished on our side
        with contextlib.suppress(ValueError, AssertionError, RuntimeError):
            self._quic.stop_stream(stream_id, H3_REQUEST_CANCELLED)
        self.protocol.transmit()

    def forget(self, stream_id: int, unread: int) -> None:
        """Drop a finished or abandoned response and its unread bytes."""
        self._responses.pop(stream_id, None)
        self.consumed(unread)
        self.last_used = time.monotonic()

    def consumed(self, size: int) -> None:
        """The application took `size` bytes; resume reading under half."""
        self._buffered -= size
        if self._paused and self._buffered < RECEIVE_HIGH_BYTES // 2:
            self._paused = False
            if not self._transport.is_closing():
                self._transport.resume_reading()

    def close(self) -> None:
        """Close the QUIC connection and its socket."""
        if not self.closed:
            self.protocol.close()
        self._terminated("connection closed")
        self._transport.close()

    # Session

    def quic_event(self, event: Any) -> None:
        engine = self._engine
        if isinstance(event, engine.ConnectionTerminated):
            self._terminated(f"connection terminated: {event.reason_phrase}")
            return
        if isinstance(event, engine.StreamReset):
            response = self._responses.get(event.stream_id)
            if response is not None:
                response.fail(PeerStreamBroken(f"stream reset ({event.error_code})"))
        for h3_event in self._h3.handle_event(event):
            response = self._responses.get(getattr(h3_event, "stream_id", -1))
            if response is None:
                continue
            if isinstance(h3_event, engine.HeadersReceived):
                response.on_headers(h3_event.headers, h3_event.stream_ended)
            elif isinstance(h3_event, engine.DataReceived):
                self._buffered += len(h3_event.data)
                response.on_data(h3_event.data, h3_event.stream_ended)
        if self._buffered > RECEIVE_HIGH_BYTES and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def wake(self) -> None:
        return None

    def _terminated(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        for response in list(self._responses.values()):
            response.fail(PeerStreamBroken(reason))
        self._on_closed(self)
