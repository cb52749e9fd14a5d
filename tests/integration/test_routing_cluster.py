"""Two and three real nodes (containerd + `peerpull registry` each) on 127.0.1.N.

What containerd holds on one node becomes resolvable on the others through
the DHT, and goes away when containerd deletes it; `/readyz` stays 503
until a node has joined.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster import ClusterNode
from tests.support.fixtures_upstream import ImageFactory
from tests.support.upstream import UpstreamRegistry, free_port

pytestmark = pytest.mark.integration


def resolves_to(node: ClusterNode, key: str, hosts: list[str]) -> Callable[[], bool]:
    return lambda: node.peerpull.resolve(key) == hosts


def eventually(
    check: Callable[[], bool], timeout_s: float = 15, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def stop_all(nodes: list[ClusterNode]) -> None:
    """Stop each node, checking its daemon exited cleanly."""
    for node in nodes:
        try:
            assert node.peerpull is not None
            code = node.peerpull.stop()
            assert code in (0, None), node.peerpull.log_text()[-3000:]
        finally:
            node.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[ClusterNode]]:
    port = free_port("127.0.1.1")
    started: list[ClusterNode] = []
    try:
        for index in (1, 2, 3):
            node = ClusterNode(tmp_path, index, (), port)
            started.append(node)
            first = started[0].peerpull
            seeds = [first.router_multiaddr] if first is not None else []
            node.start(seeds)
        yield started
    finally:
        stop_all(started)


def test_pulled_content_resolves_on_other_nodes_and_goes_when_deleted(
    nodes: list[ClusterNode], upstream: UpstreamRegistry, image_factory: ImageFactory
) -> None:
    image = image_factory((20_000, 30_000), seed=51)
    ref = upstream.push(image, "t/cluster", "v1")
    nodes[0].containerd.pull(ref)
    keys = [blob.digest for blob in image.all_blobs()] + [ref]
    for other in nodes[1:]:
        for key in keys:
            eventually(
                resolves_to(other, key, ["127.0.1.1"]),
                what=f"{key} on {other.peerpull.host}",
            )
    assert nodes[0].peerpull.resolve(keys[0]) == []  # never itself

    nodes[0].containerd.ctr("images", "rm", ref)
    for key in keys:
        eventually(resolves_to(nodes[2], key, []), what=f"{key} withdrawn")


def test_not_ready_until_joined(tmp_path: Path) -> None:
    lonely = ClusterNode(tmp_path, 7, (), free_port("127.0.1.7"))
    try:
        lonely.start(["/ip4/127.0.1.8/tcp/1"], wait_ready=False)  # nobody listens
        assert lonely.peerpull is not None
        time.sleep(1.5)
        assert not lonely.peerpull.ready()
        assert lonely.peerpull.running
    finally:
        stop_all([lonely])


def test_restarted_node_rejoins_with_its_peer_id(nodes: list[ClusterNode]) -> None:
    node = nodes[2]
    before = node.peerpull.log_text()
    assert node.peerpull.stop() == 0
    node.peerpull.start()
    after = node.peerpull.log_text()[len(before) :]
    peer_ids = [line for line in (before, after) if '"peer_id"' in line]
    assert len(peer_ids) == 2
    first = before.split('"peer_id": "')[1].split('"')[0]
    second = after.split('"peer_id": "')[1].split('"')[0]
    assert first == second
