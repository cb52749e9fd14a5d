"""Node 2 pulls, through its own peerpull, an image only node 1 holds.

Two real containerd instances and two `peerpull registry` daemons on
127.0.1.1 and 127.0.1.2; the DHT tells node 2 that node 1 holds the
content and the bytes come over HTTP/3. The upstream registry is stopped
before node 2 pulls, and node 2's answers for every manifest, config,
layer, HEAD and range equal what the upstream answered before it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_registry_conformance import COMPARED_HEADERS, Reply, fetch
from tests.support.cluster import ClusterNode
from tests.support.fixtures_upstream import ImageFactory
from tests.support.peerpull import PeerpullProcess
from tests.support.upstream import MANIFEST_ACCEPT, UpstreamRegistry, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[PeerNode, PeerNode]]:
    port = free_port("127.0.1.1")
    first = ClusterNode(tmp_path, 1, (), port)
    second = ClusterNode(tmp_path, 2, (), port)
    try:
        first.start([])
        assert first.peerpull is not None
        second.start([first.peerpull.router_multiaddr])
        assert second.peerpull is not None
        yield PeerNode(first, first.peerpull), PeerNode(second, second.peerpull)
    finally:
        second.stop()
        first.stop()


class PeerNode:
    """A started ClusterNode and its (started) daemon."""

    def __init__(self, node: ClusterNode, peerpull: PeerpullProcess) -> None:
        self.node = node
        self.containerd = node.containerd
        self.peerpull = peerpull
        self.hosts = node.hosts_dir

    def configure(self, registry_url: str) -> None:
        self.node.configure(registry_url)


def requests_for(
    image_root: str, manifests: list[str], blobs: list[tuple[str, int]]
) -> list[tuple[str, str, dict[str, str]]]:
    accept = {"Accept": MANIFEST_ACCEPT}
    out = []
    for ref in ("v1", image_root, *manifests):
        for method in ("GET", "HEAD"):
            out.append((method, f"manifests/{ref}", accept))
    for digest, size in blobs:
        for method in ("GET", "HEAD"):
            out.append((method, f"blobs/{digest}", {}))
        for spec in ("0-0", f"{size // 2}-", f"-{min(size, 1000)}", f"10-{size + 50}"):
            out.append(("GET", f"blobs/{digest}", {"Range": f"bytes={spec}"}))
    return out


def test_node2_pulls_from_node1_over_http3_with_upstream_down(
    pair: tuple[PeerNode, PeerNode],
    upstream: UpstreamRegistry,
    image_factory: ImageFactory,
) -> None:
    node1, node2 = pair
    image = image_factory((600_000, 90_000, 3), seed=61)
    ref = upstream.push(image, "t/peer", "v1")
    node1.configure(upstream.url)
    node1.containerd.pull(ref, plain_http=False, hosts_dir=node1.hosts)

    blobs = [(b.digest, b.size) for b in (*image.configs, *image.layers)]
    plan = requests_for(image.root.digest, [], blobs)
    expected: list[Reply] = [
        fetch(f"{upstream.url}/v2/t/peer/{path}", method, headers)
        for method, path, headers in plan
    ]
    upstream.stop()

    deadline = time.monotonic() + 15
    while node2.peerpull.resolve(image.layers[0].digest) != ["127.0.1.1"]:
        assert time.monotonic() < deadline, "node 2 never learned node 1's layer"
        time.sleep(0.1)

    # node 2 holds nothing yet: every answer below comes from node 1 over HTTP/3
    for (method, path, headers), theirs in zip(plan, expected, strict=True):
        ours = fetch(
            f"{node2.peerpull.url}/v2/t/peer/{path}?ns={upstream.host}", method, headers
        )
        assert theirs.status in (200, 206)
        assert (ours.status, ours.headers, ours.body) == (
            theirs.status,
            theirs.headers,
            theirs.body,
        ), f"{method} {path} {headers}"

    node2.configure(upstream.url)
    node2.containerd.pull(ref, plain_http=False, hosts_dir=node2.hosts)
    held = set(node2.containerd.ctr("content", "ls", "-q").stdout.split())
    assert {blob.digest for blob in image.all_blobs()} <= held

    assert set(COMPARED_HEADERS) >= {"Content-Type", "Content-Length"}

    metrics = node2.peerpull.metrics()
    assert 'source="peer"' in metrics and 'cache="hit"' in metrics
