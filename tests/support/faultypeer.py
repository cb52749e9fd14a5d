"""FaultyPeer: an HTTP/3 test peer that serves fixed content and misbehaves on cue.

It speaks real HTTP/3 over aioquic with the same identity-bound certificate
as a real node, so H3PeerClient accepts it unless the fault says otherwise.

Faults (`fault_at` is a byte offset into the body):
    close_mid_stream  reset the stream after `fault_at` body bytes
    short             end the body (FIN) after `fault_at` bytes
    long              send the body plus `fault_at` (at least 1) extra bytes
    corrupt           flip the byte at `fault_at`; length stays right
    stall_headers     accept the request, never answer
    stall_body        send headers and `fault_at` bytes, then nothing
    wrong_identity    present a certificate bound to another libp2p key
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from daemon.values import Address
from transport import engine as engines
from transport.identity import tls_credentials
from transport.streams import H3_INTERNAL_ERROR, request_fields, response_headers

FAULTS = (
    "close_mid_stream",
    "short",
    "long",
    "corrupt",
    "stall_headers",
    "stall_body",
    "wrong_identity",
)
Content = dict[str, tuple[dict[str, str], bytes]]


class _FaultySession:
    def __init__(self, peer: FaultyPeer, protocol: Any) -> None:
        self._peer = peer
        self._protocol = protocol
        self._h3 = peer.engine.H3Connection(protocol._quic)

    def quic_event(self, event: Any) -> None:
        for h3_event in self._h3.handle_event(event):
            if isinstance(h3_event, self._peer.engine.HeadersReceived):
                self._peer.requests.append(request_fields(h3_event.headers))
                self._answer(h3_event.stream_id, h3_event.headers)

    def wake(self) -> None:
        return None

    def _answer(self, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        pseudo, _ = request_fields(headers)
        fault, at = self._peer.fault, self._peer.fault_at
        if fault == "stall_headers":
            return
        path = pseudo.get(":path", "").partition("?")[0]
        found = self._peer.content.get(path)
        if found is None:
            self._send(stream_id, 404, {"content-length": "0"}, b"", True)
            return
        fields, body = found
        fields = {"content-length": str(len(body)), **fields}
        if pseudo.get(":method") == "HEAD":
            self._send(stream_id, 200, fields, b"", True)
        elif fault in ("close_mid_stream", "stall_body"):
            self._send(stream_id, 200, fields, body[:at], False)
            if fault == "close_mid_stream":
                self._protocol._quic.reset_stream(stream_id, H3_INTERNAL_ERROR)
                self._protocol.transmit()
        elif fault == "short":
            self._send(stream_id, 200, fields, body[:at], True)
        elif fault == "long":
            self._send(stream_id, 200, fields, body + b"x" * max(1, at), True)
        elif fault == "corrupt" and body:
            index = min(at, len(body) - 1)
            flipped = body[:index] + bytes([body[index] ^ 0xFF]) + body[index + 1 :]
            self._send(stream_id, 200, fields, flipped, True)
        else:
            self._send(stream_id, 200, fields, body, True)

    def _send(
        self,
        stream_id: int,
        status: int,
        fields: dict[str, str],
        body: bytes,
        end: bool,
    ) -> None:
        self._h3.send_headers(
            stream_id, response_headers(status, fields), end_stream=not body and end
        )
        if body:
            self._h3.send_data(stream_id, body, end_stream=end)
        self._protocol.transmit()


class FaultyPeer:
    """A test H3 peer serving `content` (path without query -> headers, body)."""

    def __init__(
        self,
        listen: Address,
        content: Content,
        fault: str | None = None,
        fault_at: int = 1024,
        key_pair: KeyPair | None = None,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self.engine = engines.load_engine("aioquic")
        self.content = content
        self.fault = fault
        self.fault_at = fault_at
        self.requests: list[tuple[dict[str, str], dict[str, str]]] = []
        self._listen = listen
        self._key_pair = key_pair or create_new_key_pair()
        self._dir = tempfile.TemporaryDirectory(prefix="faultypeer-")
        self._server: Any = None
        self._port = listen.port

    @property
    def port(self) -> int:
        """The UDP port (the real one once started)."""
        return self._port

    @property
    def peer_id(self) -> str:
        """The peer id a client should expect (the one the router would name)."""
        return str(ID.from_pubkey(self._key_pair.public_key))

    async def start(self) -> None:
        """Listen on the address given."""
        presented = self._key_pair
        if self.fault == "wrong_identity":
            presented = create_new_key_pair()
        cert, key = tls_credentials(presented, Path(self._dir.name))
        config = engines.configuration(
            self.engine, is_client=False, max_datagram_size=1350, idle_timeout_s=30
        )
        config.load_cert_chain(str(cert), str(key))
        transport, self._server = await self.engine.datagram_endpoint(
            lambda: self.engine.QuicServer(
                configuration=config, create_protocol=self._create_protocol
            ),
            self._listen.host,
            self._listen.port,
        )
        self._port = int(transport.get_extra_info("sockname")[1])

    async def close(self) -> None:
        """Close connections, stop listening, remove the credentials."""
        if self._server is not None:
            self._server.close()
            self._server = None
        await asyncio.sleep(0)
        self._dir.cleanup()

    def _create_protocol(self, connection: Any, **kwargs: Any) -> Any:
        protocol = self.engine.shell(connection, **kwargs)
        protocol.session = _FaultySession(self, protocol)
        return protocol
