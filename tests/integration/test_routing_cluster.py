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

from tests.support.containerd import ContainerdProcess
from tests.support.fixtures_upstream import ImageFactory
from tests.support.peerpull import PeerpullProcess
from tests.support.upstream import UpstreamRegistry

pytestmark = pytest.mark.integration


def resolves_to(node: Node, key: str, hosts: list[str]) -> Callable[[], bool]:
    return lambda: node.peerpull.resolve(key) == hosts


def eventually(
    check: Callable[[], bool], timeout_s: float = 15, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


class Node:
    def __init__(self, base: Path, index: int, peers: list[str]) -> None:
        self.containerd = ContainerdProcess(base / f"node{index}")
        self.containerd.start()
        extra = (f"--static-bootstrap-peers={','.join(peers)}",) if peers else ()
        self.peerpull = PeerpullProcess(
            base / f"pp{index}",
            self.containerd.socket,
            self.containerd.content_path,
            host=f"127.0.1.{index}",
            extra_args=extra,
        )

    def stop(self) -> None:
        try:
            assert self.peerpull.stop() in (0, None), self.peerpull.log_text()[-3000:]
        finally:
            self.containerd.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    first = Node(tmp_path, 1, [])
    started = [first]
    try:
        first.peerpull.start()
        for index in (2, 3):
            node = Node(tmp_path, index, [first.peerpull.router_multiaddr])
            started.append(node)
            node.peerpull.start()
        yield started
    finally:
        for node in started:
            node.stop()


def test_pulled_content_resolves_on_other_nodes_and_goes_when_deleted(
    nodes: list[Node], upstream: UpstreamRegistry, image_factory: ImageFactory
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
    lonely = Node(tmp_path, 7, ["/ip4/127.0.1.8/tcp/1"])  # nobody listens there
    try:
        lonely.peerpull.start(wait_ready=False)
        time.sleep(1.5)
        assert not lonely.peerpull.ready()
        assert lonely.peerpull.running
    finally:
        lonely.stop()


def test_restarted_node_rejoins_with_its_peer_id(nodes: list[Node]) -> None:
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
