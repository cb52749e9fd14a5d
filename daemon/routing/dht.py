"""DhtRouter: the Router seam over py-libp2p's Kademlia DHT.

The DHT runs on one trio thread (TrioBridge) as a DhtNode; this class is its
asyncio face and owns the bootstrap loop. Only plain data crosses the
bridge. See `daemon.routing.node` for how records move and `tuning` for the
py-libp2p globals this process patches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from types import TracebackType

from daemon.observability.metrics import RESOLVE_DURATION
from daemon.routing import host as hosts
from daemon.routing import identity, tuning
from daemon.routing.bootstrap import Bootstrapper, StaticBootstrapper
from daemon.routing.bridge import TrioBridge
from daemon.routing.node import DhtNode
from daemon.routing.router import Peer
from daemon.values import Address

_RESOLVED = RESOLVE_DURATION.labels(router="libp2p")

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.2
BACKOFF_MAX_S = 10.0
REJOIN_FIRST_S = 1.0
REJOIN_INTERVAL_S = 180.0


class DhtRouter:
    """A Router whose records live in a Kademlia DHT shared by all nodes."""

    def __init__(
        self,
        *,
        listen: Address,
        data_dir: Path,
        bootstrapper: Bootstrapper,
        record_ttl_s: float = 600.0,
        query_timeout_s: float = 1.0,
        republish_interval_s: float | None = None,
    ) -> None:
        self._listen = listen
        self._data_dir = data_dir
        self._bootstrapper = bootstrapper
        self._record_ttl_s = record_ttl_s
        self._timeout_s = query_timeout_s
        self._republish_s = republish_interval_s or 0.9 * record_ttl_s
        self._bridge = TrioBridge()
        self._node: DhtNode | None = None
        self._peer_id = ""
        self._addresses: list[str] = []
        self._alone_by_design = False
        self._joined = asyncio.Event()
        self._bootstrap_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def peer_id(self) -> str:
        """This node's libp2p peer id (base58)."""
        return self._peer_id

    @property
    def addresses(self) -> list[str]:
        """Listen multiaddrs, real port, ending in `/p2p/<id>`."""
        return list(self._addresses)

    async def start(self) -> None:
        """Bring up the trio thread, host and DHT; start bootstrapping in the
        background (returns before the node has joined)."""
        tuning.quiet_logs()
        tuning.apply(self._record_ttl_s, self._timeout_s)
        key_pair = await asyncio.to_thread(identity.load_or_create, self._data_dir)
        listen = await asyncio.to_thread(hosts.listen_multiaddr, self._listen)
        self._bridge.start()
        self._node = await self._bridge.call(
            _make_node, key_pair, listen, self._timeout_s, self._republish_s
        )
        started = await self._bridge.start_task(self._node.serve)
        self._peer_id = str(started["peer_id"])
        self._addresses = list(started["addresses"])
        await self._bootstrapper.start(self._addresses)
        self._bootstrap_task = asyncio.create_task(self._bootstrap_loop())
        log.info(
            "router started", extra={"peer": self._peer_id, "addrs": self._addresses}
        )

    async def close(self) -> None:
        """Stop bootstrapping, the DHT and the trio thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._bootstrap_task is not None:
            self._bootstrap_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._bootstrap_task
        await self._bootstrapper.close()
        if self._node is not None and self._bridge.running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._bridge.call(self._node.stop), 5.0)
                await asyncio.sleep(0.05)
        await self._bridge.close()

    async def __aenter__(self) -> DhtRouter:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def advertise(self, keys: Collection[str]) -> None:
        """Announce `keys` (refreshes ones already announced)."""
        if keys:
            await self._bridge.call(self._require_node().advertise, list(keys))

    async def withdraw(self, keys: Collection[str]) -> None:
        """Stop announcing `keys` and make every reachable node drop our record."""
        if keys:
            await self._bridge.call(self._require_node().withdraw, list(keys))

    async def resolve(self, key: str, count: int) -> AsyncIterator[Peer]:
        """Yield up to `count` live other nodes holding `key`: the local store
        first, then (large clusters only) a lookup bounded by the query timeout."""
        node = self._require_node()
        started = time.perf_counter()
        local, complete = await self._bridge.call(node.local_providers, key, count)
        if local or complete:
            _RESOLVED.observe(time.perf_counter() - started)
        for peer_id, host in local:
            yield Peer(peer_id, host)
        if complete or len(local) >= count:
            return
        skip = [peer_id for peer_id, _ in local]
        found = await self._bridge.call(
            node.network_providers, key, count - len(local), skip
        )
        if not local:
            _RESOLVED.observe(time.perf_counter() - started)
        for peer_id, host in found:
            yield Peer(peer_id, host)

    async def ready(self) -> bool:
        """True once the routing table has a peer, or when a static bootstrap
        lists no peer but this node (a one-node cluster, alone by design)."""
        if self._alone_by_design:
            return True
        return await self.peer_count() > 0

    async def peer_count(self) -> int:
        """Peers in the routing table (the peerpull_router_peers gauge)."""
        if self._node is None or not self._bridge.running:
            return 0
        return await self._bridge.call(self._node.table_size)

    async def stats(self) -> dict[str, int]:
        """Table, connection, record and advertised-key counts."""
        return await self._bridge.call(self._require_node().stats)

    def _require_node(self) -> DhtNode:
        if self._node is None:
            raise RuntimeError("router is not started")
        return self._node

    async def _bootstrap_loop(self) -> None:
        """Join with backoff until the table has peers, then re-join now and
        then so that a partitioned or restarted cluster heals."""
        delay, rejoin = BACKOFF_FIRST_S, REJOIN_FIRST_S
        while True:
            if await self._join_once():
                # refresh soon and then less often: peers that started at
                # the same time are only found by later refreshes
                delay = BACKOFF_FIRST_S
                await asyncio.sleep(rejoin)
                rejoin = min(rejoin * 2, REJOIN_INTERVAL_S)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX_S)

    async def _join_once(self) -> bool:
        try:
            candidates = await self._bootstrapper.peers()
        except Exception as err:
            log.warning("bootstrap peers unavailable", extra={"error": repr(err)})
            return False
        others = [a for a in candidates if not a.endswith(f"/p2p/{self._peer_id}")]
        others = [a for a in others if a not in _bare(self._addresses)]
        static = isinstance(self._bootstrapper, StaticBootstrapper)
        self._alone_by_design = static and not others
        if not others:
            return self._alone_by_design
        size = await self._bridge.call(self._require_node().join, others)
        log.info("bootstrap round", extra={"dialled": len(others), "table": size})
        return size > 0


def _bare(addresses: list[str]) -> set[str]:
    return {address.split("/p2p/")[0] for address in addresses}


async def _make_node(
    key_pair: object, listen: object, timeout_s: float, republish_s: float
) -> DhtNode:
    # built on the trio thread: KadDHT makes trio primitives in __init__
    return DhtNode(key_pair, listen, timeout_s, republish_s)  # type: ignore[arg-type]
