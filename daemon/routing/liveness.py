"""Which peers are alive: connected and answering pings in time.

py-libp2p never evicts a hung peer (a SIGSTOPped process keeps its TCP
connections open), so every lookup would wait on it again. Liveness pings
every connected routing-table peer (`/ipfs/ping/1.0.0`) each interval; a peer
that misses the query timeout, here or in a lookup, is suspected: left out of
lookups, advertisements and results, and dropped from the routing table. A
later good ping clears it and puts it back. A peer with no connection is not
alive (a killed node's connections close at once).
"""

from __future__ import annotations

import logging
import secrets
from typing import TYPE_CHECKING

import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.host.ping import ID as PING_PROTOCOL_ID
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID

if TYPE_CHECKING:  # trio-typing's stubs shadow trio's own types
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

# Each node pings each table peer once per interval: O(N) per node, so keep
# it slow enough for 30 processes sharing two cores.
# TODO(clusters past ~20 nodes on busy hosts): 30 processes on 2 cores miss
# the 1 s deadline and drop each other from their tables; ping fewer peers.
PING_INTERVAL_S = 3.0
_PING_BYTES = 32


class Liveness:
    """Tracks suspected peers; `run` is the ping loop (a trio task)."""

    def __init__(self, host: IHost, dht: KadDHT, timeout_s: float) -> None:
        self._host = host
        self._dht = dht
        self._timeout_s = timeout_s
        self._suspected: set[ID] = set()

    def connected(self, peer_id: ID) -> bool:
        """True if a connection to the peer is open."""
        return bool(self._host.get_network().connections.get(peer_id))

    def alive(self, peer_id: ID) -> bool:
        """Connected and not suspected of hanging."""
        return peer_id not in self._suspected and self.connected(peer_id)

    def suspected(self, peer_id: ID) -> bool:
        """True if the peer missed its last deadline."""
        return peer_id in self._suspected

    def suspect(self, peer_id: ID) -> None:
        """Leave the peer out until it answers a ping again."""
        if peer_id not in self._suspected:
            log.info("peer unresponsive", extra={"peer": str(peer_id)})
        self._suspected.add(peer_id)
        self._dht.routing_table.remove_peer(peer_id)

    async def run(
        self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Ping peers every PING_INTERVAL_S until cancelled."""
        task_status.started()
        while True:
            peers = set(self._dht.routing_table.get_peer_ids()) | self._suspected
            async with trio.open_nursery() as nursery:
                for peer_id in peers:
                    nursery.start_soon(self._check, peer_id)
            await trio.sleep(PING_INTERVAL_S)

    async def _check(self, peer_id: ID) -> None:
        if not self.connected(peer_id):
            self._suspected.discard(peer_id)
            return
        if await self.ping(peer_id):
            if peer_id in self._suspected:
                log.info("peer responsive again", extra={"peer": str(peer_id)})
                self._suspected.discard(peer_id)
                await self._dht.add_peer(peer_id, skip_server_mode_check=True)
        else:
            self.suspect(peer_id)

    async def ping(self, peer_id: ID) -> bool:
        """One ping round trip within the query timeout."""
        payload = secrets.token_bytes(_PING_BYTES)
        with trio.move_on_after(self._timeout_s):
            try:
                stream = await self._host.new_stream(
                    peer_id, [TProtocol(PING_PROTOCOL_ID)]
                )
                try:
                    await stream.write(payload)
                    echoed = b""
                    while len(echoed) < _PING_BYTES:
                        chunk = await stream.read(_PING_BYTES - len(echoed))
                        if not chunk:
                            break
                        echoed += chunk
                finally:
                    await stream.close()
            except Exception:
                return False
            return echoed == payload
        return False
