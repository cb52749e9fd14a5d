"""DhtNode: the trio side of the DHT router (host, KadDHT, liveness, pushes).

Everything here runs on the TrioBridge thread and takes and returns plain
data (key strings, multiaddr strings, (peer id, ip) pairs).

How records move (the design the 20 ms resolve budget asks for): Kademlia
stores a provider record on the k=20 nodes closest to the key. While our
routing table holds fewer than PUSH_TO_ALL_MAX_PEERS peers, an
advertisement goes straight to every live peer (no lookup walk first), a node
pushes all its keys to each peer it newly sees (a joining or restarted node
starts with an empty store), and then the local store is complete: `resolve`
answers from it, hit or miss, without touching the network. Past that,
advertisements walk to the closest peers and a local miss falls back to a
bounded network lookup whose results are never stored (py-libp2p's own
`find_providers` re-stores them with a fresh timestamp, keeping dead
providers alive forever).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

import trio
from libp2p.abc import INetStream
from libp2p.crypto.keys import KeyPair
from libp2p.kad_dht.common import ALPHA, BUCKET_SIZE, PROTOCOL_ID
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from daemon.routing import host as hosts
from daemon.routing.keys import multihash
from daemon.routing.liveness import Liveness
from daemon.routing.records import ADD, REMOVE, RecordsProtocol, remove_records

if TYPE_CHECKING:  # trio-typing's stubs shadow trio's own types
    from trio_typing import TaskStatus

log = logging.getLogger(__name__)

INBOUND_KAD_STREAMS = 64  # py-libp2p: 12, and it resets (drops) the excess
ADD_PROVIDER_RATE_MAX = 10**9  # py-libp2p: 10 per 10 s per sender, excess dropped
SEND_CONCURRENCY = 32
PUSH_TICK_S = 1.0
# Below this many table peers, every advertisement is pushed to every peer in
# one batch each and resolve answers from the local store. Measured: at 30
# nodes on this machine the k=20 walk-and-ADD_PROVIDER path found 0/100 keys
# (lookups bounded by the 1 s query timeout on 2 busy cores), so the batch
# push covers clusters well past k.
# TODO(clusters past ~64 nodes): make the Kademlia path (walk, ADD_PROVIDER,
# GET_PROVIDERS) work under load, and measure it, before raising this.
PUSH_TO_ALL_MAX_PEERS = 64

Found = tuple[str, str]  # (peer id, ip)


class DhtNode:
    """One libp2p host running KadDHT in server mode, driven through the bridge."""

    def __init__(
        self,
        key_pair: KeyPair,
        listen: Multiaddr,
        query_timeout_s: float,
        republish_interval_s: float,
    ) -> None:
        self._host = hosts.build(key_pair)
        self._listen = listen
        self._timeout_s = query_timeout_s
        self._republish_s = republish_interval_s
        self._me = self._host.get_id()
        self._dht = KadDHT(self._host, DHTMode.SERVER, enable_random_walk=False)
        self._dht._provider_rate_max = ADD_PROVIDER_RATE_MAX
        self._store = self._dht.provider_store
        self._kad_limiter = trio.CapacityLimiter(INBOUND_KAD_STREAMS)
        self._host.set_stream_handler(PROTOCOL_ID, self._handle_kad)
        self._records = RecordsProtocol(self._host, self._store, query_timeout_s)
        self.liveness = Liveness(self._host, self._dht, query_timeout_s)
        self._send_limiter = trio.CapacityLimiter(SEND_CONCURRENCY)
        self._advertised: dict[bytes, float] = {}  # key -> monotonic time sent
        self._inflight: dict[bytes, trio.Event] = {}
        self._pushed: set[ID] = set()
        self._stop = trio.Event()

    # lifecycle

    async def serve(self, *, task_status: TaskStatus[dict[str, object]]) -> None:
        """Run host and DHT until `stop`; `started` reports id and addresses."""
        async with (
            self._host.run([self._listen]),
            background_trio_service(self._dht),
            trio.open_nursery() as tasks,
        ):
            await tasks.start(self.liveness.run)
            tasks.start_soon(self._maintain)
            task_status.started(
                {"peer_id": str(self._me), "addresses": self.addresses()}
            )
            await self._stop.wait()
            tasks.cancel_scope.cancel()

    async def stop(self) -> None:
        """Make `serve` leave: closes the DHT and the host."""
        self._stop.set()

    def addresses(self) -> list[str]:
        """Listen multiaddrs with the real port and `/p2p/<id>`."""
        own = f"/p2p/{self._me}"
        return [
            text if text.endswith(own) else text + own
            for text in (str(addr) for addr in self._host.get_addrs())
        ]

    async def _handle_kad(self, stream: INetStream) -> None:
        # queue inbound KAD streams instead of resetting the excess
        async with self._kad_limiter:
            await self._dht._do_handle_stream(stream)

    # joining

    async def join(self, addresses: list[str]) -> int:
        """Dial `addresses` (a missing /p2p/<id> is learned), add them to the
        routing table, refresh it; return the table size."""
        async with trio.open_nursery() as nursery:
            for text in addresses:
                nursery.start_soon(self._dial, text)
        if self._dht.routing_table.size():
            with trio.move_on_after(max(5.0, 5 * self._timeout_s)):
                await self._dht.refresh_routing_table()
        return self._dht.routing_table.size()

    async def _dial(self, text: str) -> None:
        try:
            addr = Multiaddr(text)
            if "p2p" in [proto.name for proto in addr.protocols()]:
                info = info_from_p2p_addr(addr)
            else:
                info = PeerInfo(await hosts.learn_peer_id(self._host, addr), [addr])
            if info.peer_id == self._me:
                return
            with trio.fail_after(hosts.DIAL_TIMEOUT_S):
                await self._host.connect(info)
            await self._dht.add_peer(info.peer_id, skip_server_mode_check=True)
        except (Exception, trio.TooSlowError) as err:
            log.info("bootstrap dial failed", extra={"addr": text, "error": repr(err)})

    async def table_size(self) -> int:
        """Peers in the routing table."""
        return self._dht.routing_table.size()

    # advertising

    async def advertise(self, keys: list[str]) -> None:
        """Store our record locally and send it to the closest live peers."""
        encoded = [multihash(key) for key in keys]
        for key in encoded:
            self._advertised.setdefault(key, 0.0)
        if self._dht.routing_table.size() < PUSH_TO_ALL_MAX_PEERS:
            await self._push(encoded, self._live_peers())
        else:
            await self._provide_all(encoded)

    def _live_peers(self) -> list[ID]:
        return [
            peer_id
            for peer_id in self._dht.routing_table.get_peer_ids()
            if peer_id != self._me and self.liveness.alive(peer_id)
        ]

    async def _push(self, keys: list[bytes], peers: Iterable[ID]) -> None:
        """Record `keys` here and send them to `peers` in one batch each.

        Used while the routing table holds the whole cluster (< k peers):
        one stream per peer instead of one ADD_PROVIDER stream per key.
        """
        keys = [key for key in keys if key in self._advertised]
        me = PeerInfo(self._me, self._host.get_addrs())
        for key in keys:
            self._store.providing_keys.add(key)
            self._store.add_provider(key, me)
        done = trio.Event()
        for key in keys:
            self._inflight.setdefault(key, done)
        try:
            async with trio.open_nursery() as nursery:
                for peer_id in peers:
                    nursery.start_soon(self._push_to, peer_id, keys)
        finally:
            for key in keys:
                if self._inflight.get(key) is done:
                    del self._inflight[key]
            done.set()
        now = time.monotonic()
        for key in keys:
            if key in self._advertised:
                self._advertised[key] = now

    async def _push_to(self, peer_id: ID, keys: list[bytes]) -> None:
        async with self._send_limiter:
            if not await self._records.send(peer_id, ADD, keys):
                # Once it answers pings again, `_maintain` pushes it everything.
                self._pushed.discard(peer_id)
                self.liveness.suspect(peer_id)

    async def withdraw(self, keys: list[str]) -> None:
        """Stop republishing, drop our records here, tell every peer to drop them."""
        encoded = [multihash(key) for key in keys]
        for key in encoded:
            self._advertised.pop(key, None)
            self._store.providing_keys.discard(key)
            self._store._last_republish.pop(key, None)
        for key in encoded:  # a provide already sending must not land after us
            if (event := self._inflight.get(key)) is not None:
                await event.wait()
        remove_records(self._store, self._me, encoded)
        peers = set(self._dht.routing_table.get_peer_ids())
        peers.update(self._host.get_connected_peers())
        async with trio.open_nursery() as nursery:
            for peer_id in peers:
                if peer_id != self._me and not self.liveness.suspected(peer_id):
                    nursery.start_soon(self._records.send, peer_id, REMOVE, encoded)

    async def _provide_all(self, keys: Iterable[bytes], to: ID | None = None) -> None:
        async with trio.open_nursery() as nursery:
            for key in keys:
                nursery.start_soon(self._provide, key, to)

    async def _provide(self, key: bytes, to: ID | None) -> None:
        if key not in self._advertised or key in self._inflight:
            return
        self._inflight[key] = done = trio.Event()
        try:
            if to is None:
                self._store.providing_keys.add(key)
                self._store.add_provider(
                    key, PeerInfo(self._me, self._host.get_addrs())
                )
            peers = [to] if to is not None else await self._closest(key)
            async with trio.open_nursery() as nursery:
                for peer_id in peers:
                    nursery.start_soon(self._send_record, peer_id, key)
            if to is None:
                self._advertised[key] = time.monotonic()
        finally:
            del self._inflight[key]
            done.set()

    async def _closest(self, key: bytes) -> list[ID]:
        table = self._dht.routing_table
        found: list[ID] = []  # stays empty if the walk times out
        if table.size() < BUCKET_SIZE:
            found = table.get_peer_ids()
        else:
            with trio.move_on_after(2 * self._timeout_s):
                found = await self._dht.peer_routing.find_closest_peers_network(key)
        usable = [p for p in found if p != self._me and not self.liveness.suspected(p)]
        return usable[:BUCKET_SIZE]

    async def _send_record(self, peer_id: ID, key: bytes) -> None:
        async with self._send_limiter:
            with trio.move_on_after(self._timeout_s) as scope:
                await self._store._send_add_provider(peer_id, key)
            if scope.cancelled_caught:
                self.liveness.suspect(peer_id)

    async def _maintain(self) -> None:
        """Push our keys to newly seen peers; republish keys that are due."""
        while True:
            await trio.sleep(PUSH_TICK_S)
            table = self._dht.routing_table
            self._pushed.intersection_update(
                p for p in table.get_peer_ids() if self.liveness.connected(p)
            )
            small = table.size() < PUSH_TO_ALL_MAX_PEERS
            if small:
                for peer_id in table.get_peer_ids():
                    if peer_id not in self._pushed and self.liveness.alive(peer_id):
                        self._pushed.add(peer_id)
                        await self._push_to(peer_id, list(self._advertised))
            now = time.monotonic()
            due = [
                k for k, at in self._advertised.items() if now - at >= self._republish_s
            ]
            if due and small:
                await self._push(due, self._live_peers())
            elif due:
                await self._provide_all(due)

    # resolving

    async def local_providers(self, key: str, count: int) -> tuple[list[Found], bool]:
        """Live providers from the local store, and whether that store is
        complete (the cluster is smaller than k) so a miss here is final."""
        complete = self._dht.routing_table.size() < PUSH_TO_ALL_MAX_PEERS
        found: list[Found] = []
        for info in self._store.get_providers(multihash(key)):
            if info.peer_id != self._me and self.liveness.alive(info.peer_id):
                found.append((str(info.peer_id), self._ip_of(info)))
        return found[:count], complete

    async def network_providers(
        self, key: str, count: int, skip: list[str]
    ) -> list[Found]:
        """A bounded lookup walk; results are filtered for liveness, not stored."""
        encoded = multihash(key)
        found: dict[str, str] = {}
        asked: set[ID] = set()
        candidates = self._dht.routing_table.find_local_closest_peers(
            encoded, BUCKET_SIZE
        )
        with trio.move_on_after(self._timeout_s):
            while candidates and len(found) < count:
                batch = [p for p in candidates[:ALPHA] if p not in asked]
                candidates = candidates[ALPHA:]
                closer: list[ID] = []
                async with trio.open_nursery() as nursery:
                    for peer_id in batch:
                        asked.add(peer_id)
                        nursery.start_soon(self._ask, peer_id, encoded, found, closer)
                candidates += [p for p in closer if p not in asked and p != self._me]
        result = [(pid, ip) for pid, ip in found.items() if pid not in skip]
        return result[:count]

    async def _ask(
        self, peer_id: ID, key: bytes, found: dict[str, str], closer: list[ID]
    ) -> None:
        if self.liveness.suspected(peer_id) or peer_id == self._me:
            return
        with trio.move_on_after(self._timeout_s) as scope:
            got = await self._store._get_providers_from_peer_with_closers(peer_id, key)
        if scope.cancelled_caught:
            self.liveness.suspect(peer_id)
            return
        providers, nearer = got
        closer.extend(nearer)
        for info in providers:
            if info.peer_id != self._me and await self._reachable(info):
                found[str(info.peer_id)] = self._ip_of(info)

    async def _reachable(self, info: PeerInfo) -> bool:
        if self.liveness.alive(info.peer_id):
            return True
        if self.liveness.suspected(info.peer_id):
            return False
        with trio.move_on_after(self._timeout_s):
            try:
                await self._host.connect(info)
                return True
            except Exception:
                return False
        return False

    def _ip_of(self, info: PeerInfo) -> str:
        # the record's listen addresses first: a connection's remote end may be
        # the dialler's source address, not where it serves
        conns = self._host.get_network().connections.get(info.peer_id) or []
        addrs = info.addrs + [a for c in conns for a in c.get_transport_addresses()]
        for addr in addrs:
            for proto in ("ip4", "ip6"):
                try:
                    ip = addr.value_for_protocol(proto)
                except Exception:
                    continue
                if ip and ip not in ("0.0.0.0", "::"):
                    return str(ip)
        return ""

    async def stats(self) -> dict[str, int]:
        """Sizes for logs, metrics and the bench."""
        return {
            "table": self._dht.routing_table.size(),
            "connected": len(self._host.get_connected_peers()),
            "records": self._store.size(),
            "advertised": len(self._advertised),
        }
