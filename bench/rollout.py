"""Rollout: an image spreading through a local cluster behind a slow upstream.

Three nodes (real containerd and peerpull each) and one docker-registry
behind the cluster's throttling proxy, capped at 50 MB/s for all clients
together.

(a) A 100 MB image (4 layers) pulled on node 1 from the upstream, then on
    node 2 from node 1 over HTTP/3; against node 2 pulling a fresh image of
    the same shape straight from the upstream (containerd with no mirror),
    in the same run. Target: node 2's peer pull <= 0.3x the upstream pull.
(b) Three nodes pulling a new image at the same moment: bytes the upstream
    sent (through the proxy) against the image size.

    python -m bench.rollout [--upstream-mbps 50] [--layer-mb 25]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.cluster import LocalCluster, PullReport
from tests.support.images import BuiltImage, build_image

LAYERS = 4
TARGET_RATIO = 0.3


def image_size(image: BuiltImage) -> int:
    """Bytes containerd fetches for the image: manifest, config, layers."""
    return sum(blob.size for blob in image.all_blobs())


def upstream_bytes(cluster: LocalCluster) -> int:
    """Bytes the upstream has sent through the throttling proxy so far."""
    assert cluster.proxy is not None
    return cluster.proxy.bytes_down


def sources(report: PullReport) -> str:
    """Where a pull's blob bytes came from, in MB per source."""
    parts = [
        f"{report.bytes_from(source) / 1e6:.1f} MB {source}"
        for source in ("local", "peer", "upstream")
        if report.bytes_from(source)
    ]
    return ", ".join(parts) or "nothing through peerpull"


def seconds_of(action: Callable[[], None]) -> float:
    """Wall-clock seconds one call takes."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def rollout_a(cluster: LocalCluster, base: Path, layer: int) -> None:
    """Node 2 from a peer against node 2 (and node 1) from the upstream."""
    node1, node2, _ = cluster.nodes
    shape = (layer,) * LAYERS
    image = build_image(base / "a", shape, seed=101)
    fresh = build_image(base / "a-fresh", shape, seed=102)
    ref = cluster.push(image, "bench/a", "v1")
    fresh_ref = cluster.push(fresh, "bench/a-fresh", "v1")
    size = image_size(image)
    print(f"(a) image {size / 1e6:.1f} MB in {LAYERS} layers", flush=True)

    sent = upstream_bytes(cluster)
    direct_s = seconds_of(lambda: node2.containerd.pull(fresh_ref, plain_http=True))
    direct_mb = (upstream_bytes(cluster) - sent) / 1e6
    first = node1.pull(ref)
    for blob in image.layers:
        node2.wait_resolves(blob.digest, {node1.host})
    sent = upstream_bytes(cluster)
    second = node2.pull(ref)
    second_mb = (upstream_bytes(cluster) - sent) / 1e6

    print(f"    node 2 no mirror (fresh img):{direct_s:6.2f}s ({direct_mb:.1f} MB up)")
    print(f"    node 1 peerpull (upstream): {first.seconds:6.2f}s ({sources(first)})")
    print(f"    node 2 peerpull (peer):     {second.seconds:6.2f}s ({sources(second)})")
    print(f"    upstream bytes for node 2's pull: {second_mb:.2f} MB")
    print(
        f"    ratio node 2 peer / node 2 upstream: {second.seconds / direct_s:.2f}x"
        f"   ratio node 2 peer / node 1 upstream: {second.seconds / first.seconds:.2f}x"
        f"   (target <= {TARGET_RATIO}x)",
        flush=True,
    )


def rollout_b(cluster: LocalCluster, base: Path, layer: int) -> None:
    """Three simultaneous pulls of a new image: upstream bytes per image byte."""
    image = build_image(base / "b", (layer,) * LAYERS, seed=103)
    ref = cluster.push(image, "bench/b", "v1")
    size = image_size(image)
    print(f"(b) 3 nodes pull a new {size / 1e6:.1f} MB image at once", flush=True)

    reports: list[PullReport] = []
    errors: list[BaseException] = []
    go = threading.Barrier(len(cluster.nodes))

    def pull(index: int) -> None:
        go.wait()
        try:
            reports.append(cluster.nodes[index].pull(ref))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    sent = upstream_bytes(cluster)
    started = time.perf_counter()
    threads = [
        threading.Thread(target=pull, args=(i,)) for i in range(len(cluster.nodes))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    served = upstream_bytes(cluster) - sent
    if errors:
        raise errors[0]
    for report in sorted(reports, key=lambda r: r.node):
        print(f"    node {report.node}: {report.seconds:6.2f}s ({sources(report)})")
    print(
        f"    all done in {wall:.2f}s; upstream sent {served / 1e6:.1f} MB"
        f" for a {size / 1e6:.1f} MB image: ratio {served / size:.2f}x"
        " (1.0x = each byte left the upstream once)",
        flush=True,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-mbps", type=float, default=50.0, help="MB/s")
    parser.add_argument("--layer-mb", type=float, default=25.0)
    args = parser.parse_args()
    layer = int(args.layer_mb * 1e6)
    with tempfile.TemporaryDirectory(prefix="peerpull-rollout-") as scratch:
        base = Path(scratch)
        with LocalCluster(base, 3, upstream_mbps=args.upstream_mbps) as cluster:
            print(
                f"3 nodes, upstream capped at {args.upstream_mbps:g} MB/s"
                f" (proxy 127.0.0.1:{cluster.registry_host.rsplit(':', 1)[1]})",
                flush=True,
            )
            rollout_a(cluster, base, layer)
            rollout_b(cluster, base, layer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
