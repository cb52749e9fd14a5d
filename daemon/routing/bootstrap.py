"""The Bootstrapper seam: where a node finds its first peers.

Implementations: static multiaddrs, DNS A/AAAA records of a headless
service, and a Kubernetes Lease whose leader publishes its address. All run
on the daemon's asyncio loop; the router dials what `peers()` returns and
learns a missing `/p2p/<id>` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Bootstrapper(Protocol):
    """Gives the router candidate peers to dial until it has joined."""

    async def start(self, own_addresses: Sequence[str]) -> None:
        """Begin any background work (e.g. leader election); `own_addresses` are
        this node's router multiaddrs including `/p2p/<id>`."""

    async def peers(self) -> list[str]:
        """Multiaddrs to dial now (`/ip4/…/tcp/…[/p2p/<id>]`); may be empty."""

    async def close(self) -> None:
        """Stop background work; idempotent."""


class StaticBootstrapper:
    """A fixed list of multiaddrs from `--static-bootstrap-peers`."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self._addresses = list(addresses)

    async def start(self, own_addresses: Sequence[str]) -> None:
        return None

    async def peers(self) -> list[str]:
        return list(self._addresses)

    async def close(self) -> None:
        return None
