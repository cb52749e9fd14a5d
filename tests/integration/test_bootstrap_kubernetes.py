"""KubernetesBootstrapper: leader election on a Lease, with the real client.

A real Kubernetes API server cannot run on this machine, so these tests
point the real `kubernetes` client at an in-test HTTP API
(`tests.support.fakekube`) that implements Lease get, create and replace and
honours resourceVersion conflicts (409) the way the API server does. Periods
are shortened (lease 1 s, renew deadline 0.5 s, retry 0.2 s) to keep the
tests quick; the rules do not depend on the scale.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime

import pytest
from kubernetes import client

from daemon.routing.lease import ANNOTATION, KubernetesBootstrapper
from tests.support.fakekube import FakeKubeApi, serve_fake_kube

NAMESPACE, NAME = "peerpull", "peerpull-bootstrap"
LEASE_S, RENEW_S, RETRY_S = 1, 0.5, 0.2


class Cluster:
    """Candidates campaigning on one fake API; closes them all at the end."""

    def __init__(self, api: FakeKubeApi, url: str) -> None:
        self.api = api
        self.url = url
        self.nodes: dict[str, KubernetesBootstrapper] = {}
        self._clients: list[client.ApiClient] = []

    async def start(self, identity: str) -> KubernetesBootstrapper:
        """A new candidate `identity` whose requests carry it as User-Agent."""
        api_client = client.ApiClient(client.Configuration(host=self.url, proxy=""))
        api_client.user_agent = identity
        self._clients.append(api_client)
        node = KubernetesBootstrapper(
            NAMESPACE, NAME, identity, api_client, LEASE_S, RENEW_S, RETRY_S
        )
        await node.start([address(identity), "/ip4/127.0.0.1/tcp/4001"])
        self.nodes[identity] = node
        return node

    def leaders(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node.is_leader]

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.close()
        for api_client in self._clients:
            api_client.close()  # type: ignore[no-untyped-call]  # untyped upstream


def address(identity: str) -> str:
    """The router address a test node publishes (not loopback, so preferred)."""
    return f"/ip4/10.0.0.{sum(identity.encode()) % 250}/tcp/4001/p2p/{identity}"


async def eventually(check: Callable[[], bool], within_s: float) -> float:
    """Seconds until `check()` holds; fails the test after `within_s`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within_s:
            pytest.fail(f"condition not met within {within_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with serve_fake_kube() as (api, url):
        group = Cluster(api, url)
        try:
            yield group
        finally:
            await group.close()


async def test_one_leader_among_three_and_followers_dial_it(cluster: Cluster) -> None:
    await asyncio.gather(*(cluster.start(f"node-{i}") for i in range(3)))

    await eventually(lambda: len(cluster.leaders()) == 1, within_s=3)
    await asyncio.sleep(3 * RETRY_S)

    [leader] = cluster.leaders()
    assert cluster.api.holder(NAMESPACE, NAME) == leader
    stored = cluster.api.leases[(NAMESPACE, NAME)]
    assert stored["metadata"]["annotations"][ANNOTATION] == address(leader)
    assert stored["spec"]["leaseDurationSeconds"] == LEASE_S
    for name, node in cluster.nodes.items():
        expected = [] if name == leader else [address(leader)]
        assert await node.peers() == expected


async def test_closed_leader_releases_and_another_takes_over(cluster: Cluster) -> None:
    for i in range(3):
        await cluster.start(f"node-{i}")
    await eventually(lambda: len(cluster.leaders()) == 1, within_s=3)
    [old] = cluster.leaders()

    await cluster.nodes.pop(old).close()

    assert cluster.api.holder(NAMESPACE, NAME) == ""
    took = await eventually(lambda: len(cluster.leaders()) == 1, LEASE_S + RETRY_S)
    assert took <= LEASE_S + RETRY_S
    [new] = cluster.leaders()
    assert new != old
    follower = next(node for name, node in cluster.nodes.items() if name != new)
    await eventually(lambda: cluster.api.holder(NAMESPACE, NAME) == new, 1)
    await asyncio.sleep(2 * RETRY_S)
    assert await follower.peers() == [address(new)]


@pytest.mark.parametrize("fault", ["errors", "hangs"])
async def test_leader_cut_off_from_api_steps_down_in_time(
    cluster: Cluster, fault: str
) -> None:
    leader = await cluster.start("node-a")
    await eventually(lambda: leader.is_leader, within_s=2)
    follower = await cluster.start("node-b")
    await asyncio.sleep(2 * RETRY_S)
    assert await follower.peers() == [address("node-a")]
    both: list[float] = []

    async def watch() -> None:
        while True:
            if leader.is_leader and follower.is_leader:
                both.append(time.monotonic())
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    cut = (
        cluster.api.failing_agents if fault == "errors" else cluster.api.hanging_agents
    )
    cut.add("node-a")
    try:
        # its last renewal was at most one retry period before the cut
        stepped_down = await eventually(lambda: not leader.is_leader, RENEW_S + RETRY_S)
        assert await leader.peers() == []
        took_over = await eventually(lambda: follower.is_leader, LEASE_S + 2 * RETRY_S)
    finally:
        watcher.cancel()

    assert stepped_down <= RENEW_S + RETRY_S
    assert stepped_down + took_over >= LEASE_S - RETRY_S
    assert both == []

    cut.clear()
    await eventually(lambda: cluster.api.holder(NAMESPACE, NAME) == "node-b", 1)
    await asyncio.sleep(3 * RETRY_S)
    assert not leader.is_leader
    assert await leader.peers() == [address("node-b")]


async def test_racing_candidates_never_lead_twice(cluster: Cluster) -> None:
    """Hammer: churn candidates while sampling; a new holder only ever follows
    a released or expired lease, and no two nodes believe they lead at once."""
    rng = random.Random(7)
    cluster.api.max_delay_s = 0.03
    names = [f"node-{i}" for i in range(5)]
    await asyncio.gather(*(cluster.start(name) for name in names))
    overlaps: list[list[str]] = []

    async def sample() -> None:
        while True:
            leaders = cluster.leaders()
            if len(leaders) > 1:
                overlaps.append(leaders)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    try:
        for _ in range(12):
            await asyncio.sleep(rng.uniform(0.2, 0.8))
            victim = next(iter(cluster.leaders()), rng.choice(names))
            if rng.random() < 0.5:
                await cluster.nodes.pop(victim).close()
                await cluster.start(victim)
            else:
                cluster.api.failing_agents = {victim}
                await asyncio.sleep(rng.uniform(0.2, 1.2))
                cluster.api.failing_agents = set()
        await eventually(lambda: len(cluster.leaders()) == 1, LEASE_S + 1)
    finally:
        sampler.cancel()

    assert overlaps == []
    assert cluster.api.conflicts > 0, "the candidates never actually raced"
    assert check_handovers(cluster.api) >= 3, "too little churn to mean anything"


def check_handovers(api: FakeKubeApi) -> int:
    """Assert each new holder took a released or expired lease; count them."""
    handovers = 0
    for before, after in itertools.pairwise(api.writes):
        old = before.lease["spec"].get("holderIdentity") or ""
        new = after.lease["spec"].get("holderIdentity") or ""
        if not new or new == old:
            continue
        handovers += 1
        if old:
            renewed = datetime.fromisoformat(before.lease["spec"]["renewTime"])
            expiry = renewed.timestamp() + before.lease["spec"]["leaseDurationSeconds"]
            assert after.at > expiry, f"{new} took the lease from live {old}"
    return handovers
