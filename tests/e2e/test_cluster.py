"""peerpull doing its job on a local cluster: real containerd, peerpull, registry.

Each test brings up its own cluster (nodes on 127.0.1.1..N, the upstream
docker-registry on 127.0.0.1) so that one test's failed peers, stopped
upstream or damaged content never reach another test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.cluster import ClusterNode, LocalCluster, PullReport
from tests.support.images import BuiltImage, build_image, build_multiarch_image

pytestmark = pytest.mark.integration

# peerpull's answer to a miss: resolve timeout (20 ms) plus local work.
FAST_404_S = 0.05
MIB = 1 << 20

ClusterFactory = Callable[[int], LocalCluster]


@pytest.fixture
def cluster_of(tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start a LocalCluster of the given size; stop it after the test."""
    if os.geteuid() != 0:
        pytest.skip("private containerd instances need root")
    tools = ("containerd", "ctr", "docker-registry", "skopeo")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)}")
    started: list[LocalCluster] = []

    def start(size: int) -> LocalCluster:
        cluster = LocalCluster(tmp_path / f"cluster{len(started)}", size)
        started.append(cluster)
        return cluster.start()

    try:
        yield start
    finally:
        for cluster in started:
            cluster.stop()


def held_digests(node: ClusterNode) -> set[str]:
    """The digests in a node's content store, as `ctr content ls` lists them."""
    return set(node.containerd.ctr("content", "ls", "-q").stdout.split())


def corrupt_blobs(node: ClusterNode) -> list[str]:
    """Digests of blobs in a node's content store whose bytes do not match."""
    bad = []
    for path in (node.containerd.content_path / "blobs" / "sha256").iterdir():
        hasher = hashlib.sha256()
        with path.open("rb") as blob:
            while chunk := blob.read(4 * MIB):
                hasher.update(chunk)
        if hasher.hexdigest() != path.name:
            bad.append(f"sha256:{path.name}")
    return bad


def blob_sources(report: PullReport) -> dict[str, str]:
    """Digest -> source of every blob GET in a pull."""
    return {
        fetch.path.rsplit("/", 1)[-1]: fetch.source
        for fetch in report.fetches
        if "/blobs/" in fetch.path
    }


def pulled_blobs(image: BuiltImage) -> set[str]:
    """The blobs containerd fetches for a single-platform image."""
    return {blob.digest for blob in (*image.configs, *image.layers)}


def test_peer_pull_with_the_upstream_stopped(
    cluster_of: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_of(2)
    node1, node2 = cluster.nodes
    image = build_image(tmp_path / "img", (3 * MIB, 1 * MIB, 5000), seed=1)
    ref = cluster.push(image, "e2e/peer", "v1")
    node1.pull(ref)
    node2.wait_resolves(image.layers[0].digest, {node1.host})
    cluster.stop_upstream()

    report = node2.pull(ref)

    assert blob_sources(report) == dict.fromkeys(pulled_blobs(image), "peer")
    assert all(f.status == 200 for f in report.fetches), report.fetches
    assert report.bytes_from("peer") == sum(b.size for b in image.layers) + sum(
        c.size for c in image.configs
    )
    assert {blob.digest for blob in image.all_blobs()} <= held_digests(node2)
    assert corrupt_blobs(node2) == []


def test_a_miss_falls_back_to_the_upstream_quickly(
    cluster_of: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_of(2)
    node1, node2 = cluster.nodes
    sizes = (4 * MIB, 2 * MIB, 1 * MIB)
    mirrored = cluster.push(build_image(tmp_path / "a", sizes, seed=2), "e2e/a", "v1")
    direct = cluster.push(build_image(tmp_path / "b", sizes, seed=3), "e2e/b", "v1")

    started = time.perf_counter()
    node2.containerd.pull(direct, plain_http=True)  # no mirror configured
    plain_s = time.perf_counter() - started
    report = node1.pull(mirrored)

    misses = [f for f in report.fetches if f.status == 404]
    assert misses and len(misses) == len(report.fetches), report.fetches
    assert all(f.source == "upstream" for f in misses)
    slowest = max(f.seconds for f in misses)
    print(
        f"\nno mirror {plain_s:.3f}s, through peerpull {report.seconds:.3f}s"
        f" (added {report.seconds - plain_s:+.3f}s); {len(misses)} misses,"
        f" slowest 404 {slowest * 1000:.1f} ms,"
        f" total 404 time {sum(f.seconds for f in misses) * 1000:.1f} ms"
    )
    assert slowest < FAST_404_S, misses


def test_multiarch_index_holds_and_advertises_only_the_local_platform(
    cluster_of: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_of(2)
    node1, node2 = cluster.nodes
    image = build_multiarch_image(
        tmp_path / "multi", ("linux/amd64", "linux/arm64"), (300_000, 7000), seed=4
    )
    amd64, arm64 = image.manifests
    amd64_layers, arm64_layers = image.layers[:2], image.layers[2:]
    ref = cluster.push(image, "e2e/multi", "v1")
    node1.pull(ref)

    held = held_digests(node1)
    assert {amd64.digest, *(b.digest for b in amd64_layers)} <= held
    assert not {arm64.digest, *(b.digest for b in arm64_layers)} & held
    node2.wait_resolves(amd64_layers[0].digest, {node1.host})
    node2.wait_resolves(image.root.digest, {node1.host})
    node2.wait_resolves(amd64.digest, {node1.host})
    for blob in (arm64, image.configs[1], *arm64_layers):
        assert node2.peerpull is not None
        assert node2.peerpull.resolve(blob.digest) == [], blob

    cluster.stop_upstream()
    report = node2.pull(ref)
    expected = {image.configs[0].digest, *(b.digest for b in amd64_layers)}
    assert blob_sources(report) == dict.fromkeys(expected, "peer")
    manifests = [f for f in report.fetches if "/manifests/" in f.path]
    assert manifests and all(f.source == "peer" for f in manifests), manifests


@pytest.mark.parametrize("media_types", ["oci", "docker"])
def test_media_types_by_tag_and_by_digest(
    cluster_of: ClusterFactory, tmp_path: Path, media_types: str
) -> None:
    cluster = cluster_of(3)
    node1, node2, node3 = cluster.nodes
    image = build_image(
        tmp_path / "img",
        (600_000, 9000),
        media_types="docker" if media_types == "docker" else "oci",
        seed=5,
    )
    ref = cluster.push(image, f"e2e/{media_types}", "v1")
    by_digest = f"{ref.rsplit(':', 1)[0]}@{image.root.digest}"
    node1.pull(ref)
    node2.wait_resolves(image.layers[0].digest, {node1.host})
    cluster.stop_upstream()

    for node, wanted in ((node2, by_digest), (node3, ref)):
        report = node.pull(wanted)
        assert blob_sources(report) == dict.fromkeys(pulled_blobs(image), "peer")
        manifests = [f for f in report.fetches if "/manifests/" in f.path]
        assert manifests and all(
            (f.source, f.status) == ("peer", 200) for f in manifests
        ), manifests
        listed = node.containerd.ctr("images", "ls").stdout
        assert wanted in listed and image.root.media_type in listed, listed
        assert {blob.digest for blob in image.all_blobs()} <= held_digests(node)


def serving_peer(candidates: list[ClusterNode], sample_s: float = 0.3) -> ClusterNode:
    """The node whose peerpull reads the most bytes over `sample_s` (the one
    streaming a blob); counters are /proc/<pid>/io rchar."""

    def rchar(node: ClusterNode) -> int:
        assert node.peerpull is not None and node.peerpull.pid is not None
        text = Path(f"/proc/{node.peerpull.pid}/io").read_text()
        return int(text.split("rchar:")[1].split()[0])

    before = [rchar(node) for node in candidates]
    time.sleep(sample_s)
    grown = [rchar(node) - was for node, was in zip(candidates, before, strict=True)]
    return candidates[grown.index(max(grown))]


def ingest_started(node: ClusterNode, at_least: int) -> bool:
    """Whether a content ingest on the node has written `at_least` bytes."""
    ingest = node.containerd.content_path / "ingest"
    if not ingest.is_dir():
        return False
    return any(
        data.stat().st_size >= at_least
        for data in ingest.glob("*/data")
        if data.exists()
    )


def test_a_peer_killed_mid_blob_the_pull_completes(
    cluster_of: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_of(3)
    node1, node2, node3 = cluster.nodes
    image = build_image(tmp_path / "big", (256 * MIB, 4000), seed=6)
    ref = cluster.push(image, "e2e/big", "v1")
    node1.pull(ref)
    node3.wait_resolves(image.layers[0].digest, {node1.host})
    cluster.stop_upstream()
    node3.pull(ref)
    node2.wait_resolves(image.layers[0].digest, {node1.host, node3.host})

    failure: list[BaseException] = []
    reports: list[PullReport] = []

    def pull() -> None:
        try:
            reports.append(node2.pull(ref))
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            failure.append(err)

    puller = threading.Thread(target=pull)
    puller.start()
    deadline = time.monotonic() + 60
    while not ingest_started(node2, 8 * MIB):
        assert puller.is_alive() and time.monotonic() < deadline, failure
        time.sleep(0.02)
    victim = serving_peer([node1, node3])
    victim.kill_peerpull()
    print(f"\nkilled node {victim.index}'s peerpull mid-blob")
    puller.join(timeout=120)

    assert not puller.is_alive(), "the pull did not finish in 120 s"
    assert not failure, f"pull failed after a peer was killed: {failure[0]}"
    assert {blob.digest for blob in image.all_blobs()} <= held_digests(node2)
    assert corrupt_blobs(node2) == []
    big = image.layers[0].digest
    assert blob_sources(reports[0])[big] == "peer"
    print(f"node 2's pull took {reports[0].seconds:.1f}s with the kill")


def test_a_peer_serving_flipped_bytes_never_gets_committed(
    cluster_of: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_of(2)
    node1, node2 = cluster.nodes
    image = build_image(tmp_path / "img", (8 * MIB, 5000), seed=7)
    ref = cluster.push(image, "e2e/flipped", "v1")
    node1.pull(ref)
    layer = image.layers[0]
    blob = node1.containerd.content_path / "blobs" / "sha256" / layer.digest[7:]
    with blob.open("r+b") as file:
        file.seek(layer.size // 2)
        byte = file.read(1)
        file.seek(layer.size // 2)
        file.write(bytes([byte[0] ^ 0xFF]))
    node2.wait_resolves(layer.digest, {node1.host})

    try:
        report = node2.pull(ref)
    finally:
        assert corrupt_blobs(node2) == []
    assert {b.digest for b in image.all_blobs()} <= held_digests(node2)
    print(f"\nflipped layer answered by: {blob_sources(report).get(layer.digest)}")


def test_content_collected_on_the_only_holder_falls_back_fast(
    cluster_of: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_of(2)
    node1, node2 = cluster.nodes
    image = build_image(tmp_path / "img", (2 * MIB, 5000), seed=8)
    ref = cluster.push(image, "e2e/gone", "v1")
    node1.pull(ref)
    node2.wait_resolves(image.layers[0].digest, {node1.host})

    node1.containerd.ctr("images", "rm", "--sync", ref)
    leftover = {b.digest for b in image.all_blobs()} & held_digests(node1)
    if leftover:
        node1.containerd.ctr("content", "rm", *sorted(leftover))
    assert not {b.digest for b in image.all_blobs()} & held_digests(node1)

    report = node2.pull(ref)
    assert report.fetches and all(f.status == 404 for f in report.fetches)
    assert all(f.source == "upstream" for f in report.fetches)
    slowest = max(f.seconds for f in report.fetches)
    print(f"\nslowest 404 after the holder's GC: {slowest * 1000:.1f} ms")
    assert slowest < FAST_404_S, report.fetches
    assert {b.digest for b in image.all_blobs()} <= held_digests(node2)


def test_a_restarted_daemon_rejoins_and_serves(
    cluster_of: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_of(3)
    node1, node2, node3 = cluster.nodes
    image = build_image(tmp_path / "img", (3 * MIB, 5000), seed=9)
    ref = cluster.push(image, "e2e/restart", "v1")
    node2.pull(ref)  # node 2 is the only holder
    node3.wait_resolves(image.layers[0].digest, {node2.host})

    node2.restart_peerpull()  # SIGTERM, start again; start() waits for readyz 200
    assert node2.peerpull is not None and node2.peerpull.ready()
    cluster.stop_upstream()
    node3.wait_resolves(image.layers[0].digest, {node2.host})
    node1.wait_resolves(image.layers[0].digest, {node2.host})

    report = node3.pull(ref)
    assert blob_sources(report) == dict.fromkeys(pulled_blobs(image), "peer")
    assert {b.digest for b in image.all_blobs()} <= held_digests(node3)
