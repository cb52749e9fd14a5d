"""H3PeerClient: fetches from peers over HTTP/3, one pooled connection per peer.

Connections are bound to the node's own address (never `::`), checked
against the peer id the router named (the certificate's identity binding),
kept for reuse, closed when idle for `idle_timeout_s`, and the least
recently used is closed beyond `max_connections`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

from libp2p.crypto.keys import KeyPair

from daemon.observability.metrics import PEER_CONNECTIONS
from transport import engine as engines
from transport.exchange import H3Response, PeerConnection
from transport.identity import peer_id_of, tls_credentials
from transport.peer import PeerIdentityMismatch, PeerUnavailable

log = logging.getLogger(__name__)

QUIC_IDLE_TIMEOUT_S = 60.0
BODY_IDLE_TIMEOUT_S = 10.0
H3_IDENTITY_ERROR = 0x0100 + 0x2A  # a crypto-range code: bad certificate


class H3PeerClient:
    """A PeerClient over HTTP/3 with a bounded pool of per-peer connections."""

    def __init__(
        self,
        *,
        bind_host: str,
        port: int,
        key_pair: KeyPair,
        data_dir: Path,
        engine: str = "auto",
        max_datagram_size: str | int = "auto",
        max_connections: int = 64,
        idle_timeout_s: float = 30.0,
        body_idle_timeout_s: float = BODY_IDLE_TIMEOUT_S,
    ) -> None:
        self._bind_host = bind_host
        self._port = port
        self._key_pair = key_pair
        self._data_dir = data_dir
        self._engine = engines.load_engine(engine)
        self._datagram_size = engines.datagram_size(max_datagram_size, bind_host)
        self._max_connections = max(1, max_connections)
        self._idle_timeout_s = idle_timeout_s
        self._body_idle_s = body_idle_timeout_s
        self._pool: OrderedDict[str, PeerConnection] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.connections_opened = 0

    async def fetch(
        self,
        peer_id: str,
        host: str,
        method: str,
        path_qs: str,
        headers: Mapping[str, str],
        timeout_s: float,
    ) -> H3Response:
        """Send one request to `peer_id` at `host`; return once headers arrive."""
        self._start_reaper()
        response: H3Response | None = None
        try:
            async with asyncio.timeout(timeout_s):
                connection = await self._connection(peer_id, host)
                response = connection.request(
                    method, host, path_qs, headers, self._body_idle_s
                )
                await response.wait_headers()
        except TimeoutError as err:
            if response is not None:
                await response.close()
            raise PeerUnavailable(f"peer {peer_id} gave no answer in time") from err
        except PeerUnavailable:
            if response is not None:
                await response.close()
            raise
        except (OSError, ConnectionError) as err:
            raise PeerUnavailable(f"peer {peer_id} unreachable: {err}") from err
        return response

    async def close(self) -> None:
        """Close every connection and stop the idle reaper."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        for connection in list(self._pool.values()):
            connection.close()
        self._pool.clear()
        await asyncio.sleep(0)

    async def _connection(self, peer_id: str, host: str) -> PeerConnection:
        lock = self._locks.setdefault(peer_id, asyncio.Lock())
        async with lock:
            connection = self._pool.get(peer_id)
            if connection is not None and not connection.closed:
                self._pool.move_to_end(peer_id)
                return connection
            connection = await self._connect(peer_id, host)
            self._pool[peer_id] = connection
            self._evict()
            return connection

    async def _connect(self, peer_id: str, host: str) -> PeerConnection:
        engine = self._engine
        config = engines.configuration(
            engine,
            is_client=True,
            max_datagram_size=self._datagram_size,
            idle_timeout_s=QUIC_IDLE_TIMEOUT_S,
        )
        config.verify_mode = ssl.CERT_NONE  # trust comes from the identity binding
        config.server_name = "peerpull"
        cert, key = tls_credentials(self._key_pair, self._data_dir)
        config.load_cert_chain(str(cert), str(key))
        quic = engine.QuicConnection(configuration=config)
        transport, protocol = await engine.datagram_endpoint(
            lambda: engine.shell(quic), self._bind_host
        )
        connection = PeerConnection(
            engine, protocol, transport, peer_id, self._connection_closed
        )
        protocol.session = connection
        try:
            protocol.connect((host, self._port))
            await protocol.wait_connected()
            self._check_identity(peer_id, engine.peer_certificate_der(quic))
        except BaseException:
            connection.close()
            raise
        self.connections_opened += 1
        PEER_CONNECTIONS.labels(role="client").inc()
        log.debug("peer connected", extra={"peer": peer_id, "host": host})
        return connection

    @staticmethod
    def _check_identity(expected: str, cert_der: bytes | None) -> None:
        if cert_der is None:
            raise PeerIdentityMismatch("peer presented no certificate")
        found = peer_id_of(cert_der)
        if found != expected:
            raise PeerIdentityMismatch(f"expected peer {expected}, reached {found}")

    def _connection_closed(self, connection: PeerConnection) -> None:
        if self._pool.get(connection.peer_id) is connection:
            del self._pool[connection.peer_id]
            PEER_CONNECTIONS.labels(role="client").dec()

    def _evict(self) -> None:
        """Close least recently used connections beyond the cap, idle ones first."""
        while len(self._pool) > self._max_connections:
            idle = [c for c in self._pool.values() if c.active == 0]
            victim = idle[0] if idle else next(iter(self._pool.values()))
            victim.close()

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        period = max(0.05, self._idle_timeout_s / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for connection in list(self._pool.values()):
                if connection.active == 0 and (
                    now - connection.last_used >= self._idle_timeout_s
                ):
                    log.debug("idle peer closed", extra={"peer": connection.peer_id})
                    connection.close()
