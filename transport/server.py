"""The HTTP/3 server peers fetch from: local content only, never forwarding.

Each request is answered by `LocalContent.answer()` exactly as the HTTP/1.1
API would answer it (status, headers, bytes). Blob bodies are read from the
store in 1 MiB chunks and written through a SendGate, so a slow or stalled
reader holds at most a few MiB per stream. A reset, STOP_SENDING or closed
connection cancels the stream's task, which stops reading and closes the blob.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

from libp2p.crypto.keys import KeyPair

from daemon.observability.metrics import (
    PEER_CONNECTIONS,
    TRANSFER_BYTES,
    TRANSFER_DURATION,
)
from daemon.registry.local import Answer
from daemon.values import Address
from transport import engine as engines
from transport.identity import tls_credentials
from transport.streams import SendGate, request_fields, response_headers

log = logging.getLogger(__name__)

SERVER_IDLE_TIMEOUT_S = 60.0


class Content(Protocol):
    """What the server answers from (LocalContent)."""

    async def answer(
        self,
        method: str,
        raw_path: str,
        namespaces: Sequence[str],
        range_header: str | None,
    ) -> Answer:
        """The local answer to a GET or HEAD."""


class ServerSession:
    """One peer's QUIC connection: H3 requests in, answers out."""

    def __init__(
        self,
        engine: engines.Engine,
        protocol: Any,
        content: Content,
        on_closed: Callable[[ServerSession], None],
    ) -> None:
        self._engine = engine
        self._on_closed = on_closed
        self._protocol = protocol
        self._quic = protocol._quic
        self._h3 = engine.H3Connection(self._quic)
        self._content = content
        self._gate = SendGate(engine, self._quic)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._open = True
        PEER_CONNECTIONS.labels(role="server").inc()

    def quic_event(self, event: Any) -> None:
        engine = self._engine
        if isinstance(event, engine.ConnectionTerminated):
            self._terminated()
            return
        if isinstance(event, engine.StreamReset) or (
            engine.StopSendingReceived is not None
            and isinstance(event, engine.StopSendingReceived)
        ):
            self._abort(event.stream_id)
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, engine.HeadersReceived):
                self._start(h3_event.stream_id, h3_event.headers)

    def wake(self) -> None:
        self._gate.wake()

    def close(self) -> None:
        """Cancel every request of this connection."""
        for task in list(self._tasks.values()):
            task.cancel()

    def _terminated(self) -> None:
        if self._open:
            self._open = False
            PEER_CONNECTIONS.labels(role="server").dec()
            self._on_closed(self)
        self.close()

    def _abort(self, stream_id: int) -> None:
        task = self._tasks.get(stream_id)
        if task is not None:
            task.cancel()

    def _start(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        if stream_id in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._serve(stream_id, headers))
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(stream_id, None))

    async def _serve(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        pseudo, plain = request_fields(headers)
        method = pseudo.get(":method", "")
        raw_path, _, query = pseudo.get(":path", "").partition("?")
        if method not in ("GET", "HEAD"):
            self._send(stream_id, 405, {"Allow": "GET, HEAD", "Content-Length": "0"})
            return
        namespaces = [value for key, value in parse_qsl(query) if key == "ns"]
        answer = await self._content.answer(
            method, raw_path, namespaces, plain.get("range")
        )
        try:
            await self._render(stream_id, method, answer)
        except RuntimeError as err:  # writing to a stream the peer has reset
            log.debug("peer stream ended", extra={"stream": stream_id, "error": err})
        finally:
            await answer.close()

    async def _render(self, stream_id: int, method: str, answer: Answer) -> None:
        has_body = method != "HEAD" and (answer.blob is not None or answer.body)
        self._h3.send_headers(
            stream_id,
            response_headers(answer.status, answer.headers),
            end_stream=not has_body,
        )
        self._protocol.transmit()
        if not has_body:
            return
        if answer.blob is None:
            self._h3.send_data(stream_id, answer.body, end_stream=True)
            self._protocol.transmit()
            TRANSFER_BYTES.labels(direction="out", protocol="h3").inc(len(answer.body))
            return
        started = time.monotonic()
        async for chunk in answer.blob.chunks(answer.first, answer.length):
            await self._gate.wait_room(stream_id)
            self._h3.send_data(stream_id, chunk, end_stream=False)
            self._protocol.transmit()
            TRANSFER_BYTES.labels(direction="out", protocol="h3").inc(len(chunk))
        self._h3.send_data(stream_id, b"", end_stream=True)
        self._protocol.transmit()
        TRANSFER_DURATION.labels(direction="out").observe(time.monotonic() - started)

    def _send(self, stream_id: int, status: int, headers: dict[str, str]) -> None:
        self._h3.send_headers(
            stream_id, response_headers(status, headers), end_stream=True
        )
        self._protocol.transmit()


# TODO(peers outside the trust boundary): the server does not check client
# certificates, so anyone who reaches the UDP port reads what the registry
# port would serve them; the docs' trust boundary covers both ports.
class TransportServer:
    """Serves the node's local content to peers over HTTP/3 on a UDP address."""

    def __init__(
        self,
        *,
        listen: Address,
        key_pair: KeyPair,
        data_dir: Path,
        content: Content,
        engine: str = "auto",
        max_datagram_size: str | int = "auto",
    ) -> None:
        self._listen = listen
        self._key_pair = key_pair
        self._data_dir = data_dir
        self._content = content
        self._engine = engines.load_engine(engine)
        host = listen.host or "::"
        self._host = host
        self._datagram_size = engines.datagram_size(max_datagram_size, host)
        self._transport: Any = None
        self._server: Any = None
        self._sessions: set[ServerSession] = set()
        self._port = listen.port

    @property
    def port(self) -> int:
        """The UDP port listened on (the real one once started with port 0)."""
        return self._port

    @property
    def engine(self) -> str:
        """The QUIC engine in use."""
        return self._engine.name

    async def start(self) -> None:
        """Make the TLS credentials and start listening."""
        cert, key = tls_credentials(self._key_pair, self._data_dir)
        config = engines.configuration(
            self._engine,
            is_client=False,
            max_datagram_size=self._datagram_size,
            idle_timeout_s=SERVER_IDLE_TIMEOUT_S,
        )
        config.load_cert_chain(str(cert), str(key))
        self._transport, self._server = await self._engine.datagram_endpoint(
            lambda: self._engine.QuicServer(
                configuration=config, create_protocol=self._create_protocol
            ),
            self._host,
            self._listen.port,
        )
        self._port = int(self._transport.get_extra_info("sockname")[1])
        log.info(
            "transport listening",
            extra={
                "address": f"{self._host}:{self._port}",
                "engine": self._engine.name,
                "datagram_bytes": self._datagram_size,
            },
        )

    async def close(self) -> None:
        """Close every connection and stop listening."""
        if self._server is None:
            return
        for session in list(self._sessions):
            session.close()
        self._server.close()
        self._server = None
        await asyncio.sleep(0)

    def _create_protocol(self, connection: Any, **kwargs: Any) -> Any:
        protocol = self._engine.shell(connection, **kwargs)
        session = ServerSession(
            self._engine, protocol, self._content, self._sessions.discard
        )
        protocol.session = session
        self._sessions.add(session)
        return protocol
