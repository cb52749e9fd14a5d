"""The Router seam and MemoryRouter, its in-memory fake.

Keys are strings: blob and manifest digests (`sha256:<hex>`) and tag keys
(`<registry>/<name>:<tag>`). A router never returns its own node.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Collection
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Peer:
    """A node that holds a key: its libp2p peer id and the IP it is reached at."""

    peer_id: str
    host: str


class Router(Protocol):
    """Advertise what this node holds and find the nodes that hold a key."""

    async def advertise(self, keys: Collection[str]) -> None:
        """Announce that this node holds `keys` (idempotent, refreshes them)."""

    async def withdraw(self, keys: Collection[str]) -> None:
        """Stop announcing `keys` and tell the others, as far as possible."""

    def resolve(self, key: str, count: int) -> AsyncIterator[Peer]:
        """Yield up to `count` other nodes holding `key`, best first, as found."""

    async def ready(self) -> bool:
        """True once the node has joined the cluster (its routing table has peers)."""


class MemoryNetwork:
    """What every MemoryRouter of one test sees: key → nodes holding it."""

    def __init__(self) -> None:
        self.holders: defaultdict[str, dict[str, Peer]] = defaultdict(dict)
        self.members: set[str] = set()


class MemoryRouter:
    """A Router over a MemoryNetwork; for tests of the components above routing."""

    def __init__(self, network: MemoryNetwork, me: Peer) -> None:
        self._network = network
        self._me = me
        self.advertised: set[str] = set()
        network.members.add(me.peer_id)

    async def advertise(self, keys: Collection[str]) -> None:
        for key in keys:
            self._network.holders[key][self._me.peer_id] = self._me
        self.advertised.update(keys)

    async def withdraw(self, keys: Collection[str]) -> None:
        for key in keys:
            self._network.holders[key].pop(self._me.peer_id, None)
        self.advertised.difference_update(keys)

    async def resolve(self, key: str, count: int) -> AsyncIterator[Peer]:
        found = [
            peer
            for peer_id, peer in list(self._network.holders.get(key, {}).items())
            if peer_id != self._me.peer_id
        ]
        for peer in found[:count]:
            yield peer

    async def ready(self) -> bool:
        return bool(self._network.members - {self._me.peer_id})
