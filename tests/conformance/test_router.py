"""One conformance suite for every Router: what any implementation must do.

`routers` yields three connected routers of one implementation: the
in-memory fake and the real DHT (three routers in this process, each on its
own trio thread and 127.0.1.2x address).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from daemon.routing.bootstrap import StaticBootstrapper
from daemon.routing.dht import DhtRouter
from daemon.routing.router import MemoryNetwork, MemoryRouter, Peer, Router
from daemon.values import Address

Factory = Callable[[int], AsyncIterator[list[Router]]]


async def memory_routers(count: int) -> AsyncIterator[list[Router]]:
    network = MemoryNetwork()
    yield [
        MemoryRouter(network, Peer(f"peer-{i}", f"127.0.1.{i + 1}"))
        for i in range(count)
    ]


async def dht_routers(count: int) -> AsyncIterator[list[Router]]:
    """Real DHT routers, each with its own trio thread, on 127.0.1.2x."""
    with tempfile.TemporaryDirectory(prefix="dht-conformance-") as scratch:
        routers: list[DhtRouter] = []
        try:
            for index in range(count):
                seeds = routers[0].addresses[:1] if routers else []
                router = DhtRouter(
                    listen=Address(f"127.0.1.{20 + index}", 0),
                    data_dir=Path(scratch) / str(index),
                    bootstrapper=StaticBootstrapper(seeds),
                )
                await router.start()
                routers.append(router)
            async with asyncio.timeout(20):
                while not all([await router.ready() for router in routers]):
                    await asyncio.sleep(0.1)
            yield list(routers)
        finally:
            for router in routers:
                await router.close()


ROUTER_KINDS: dict[str, Factory] = {"memory": memory_routers, "dht": dht_routers}


@pytest.fixture(params=sorted(ROUTER_KINDS))
async def routers(request: pytest.FixtureRequest) -> AsyncIterator[list[Router]]:
    async for nodes in ROUTER_KINDS[request.param](3):
        yield nodes


async def resolved(router: Router, key: str, count: int = 3) -> list[Peer]:
    async with asyncio.timeout(5):
        return [peer async for peer in router.resolve(key, count)]


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 5
) -> None:
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.05)


async def test_advertised_key_resolves_on_other_nodes(routers: list[Router]) -> None:
    first, second, third = routers
    await first.advertise(["sha256:" + "a" * 64, "example.io/team/app:v1"])

    async def seen_everywhere() -> bool:
        for other in (second, third):
            for key in ("sha256:" + "a" * 64, "example.io/team/app:v1"):
                if len(await resolved(other, key)) != 1:
                    return False
        return True

    await eventually(seen_everywhere)


async def test_a_node_never_resolves_itself(routers: list[Router]) -> None:
    first = routers[0]
    await first.advertise(["sha256:" + "b" * 64])
    assert await resolved(first, "sha256:" + "b" * 64) == []


async def test_two_holders_are_both_found(routers: list[Router]) -> None:
    first, second, third = routers
    key = "sha256:" + "c" * 64
    await first.advertise([key])
    await second.advertise([key])

    async def both() -> bool:
        return len({p.peer_id for p in await resolved(third, key)}) == 2

    await eventually(both)
    assert len(await resolved(third, key, count=1)) == 1


async def test_withdrawn_key_stops_resolving(routers: list[Router]) -> None:
    first, second, _ = routers
    key = "sha256:" + "d" * 64
    await first.advertise([key])

    async def present() -> bool:
        return len(await resolved(second, key)) == 1

    await eventually(present)
    await first.withdraw([key])

    async def absent() -> bool:
        return await resolved(second, key) == []

    await eventually(absent)


async def test_unknown_key_resolves_to_nothing(routers: list[Router]) -> None:
    assert await resolved(routers[1], "sha256:" + "e" * 64) == []


async def test_ready_once_peers_are_known(routers: list[Router]) -> None:
    async def all_ready() -> bool:
        return all([await router.ready() for router in routers[1:]])

    await eventually(all_ready)
