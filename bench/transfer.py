"""Transfer: a blob through the mirror path over HTTP/3 against docker-registry.

Node A (containerd + peerpull) holds an image; node B's peerpull holds
nothing, so a GET on B's registry port resolves A through the DHT and
streams the blob from A over HTTP/3. The same blob is fetched straight
from docker-registry over HTTP/1.1 in the same run, alternating. Reported
per datagram size: MB/s, serving CPU-s per GB, B's RSS growth, and ratios
to docker-registry.

    python -m bench.transfer [--sizes-mib 256,1024] [--datagrams 1350,8952,auto]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from bench.local import read_blob
from bench.procstat import cpu_seconds, rss_bytes
from tests.support.containerd import ContainerdProcess
from tests.support.images import build_image
from tests.support.peerpull import PeerpullProcess
from tests.support.upstream import UpstreamRegistry, free_port


class RssPeak:
    """Samples a process's RSS every 50 ms in a thread; keeps the peak."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = rss_bytes(pid)
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except FileNotFoundError:
                return  # the process ended

    def growth_mib(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.start) / 2**20


def timed(pid: int, host: str, port: int, path: str) -> tuple[float, float]:
    """MB/s of one GET and the CPU seconds `pid` spent meanwhile."""
    before = cpu_seconds(pid)
    size, seconds = read_blob(host, port, path)
    return size / seconds / 1e6, cpu_seconds(pid) - before


def compare(
    label: str,
    size_mib: int,
    digest: str,
    a: PeerpullProcess,
    b: PeerpullProcess,
    upstream: UpstreamRegistry,
) -> None:
    """One blob through B (from A over HTTP/3), then from docker-registry."""
    while b.resolve(digest) != [a.host]:
        time.sleep(0.1)
    path = f"/v2/bench/transfer{size_mib}/blobs/{digest}"
    assert a.pid is not None and b.pid is not None and upstream.pid is not None
    rss = RssPeak(b.pid)
    b_before = cpu_seconds(b.pid)
    ours, a_cpu = timed(a.pid, b.host, b.port, f"{path}?ns={upstream.host}")
    b_cpu = cpu_seconds(b.pid) - b_before
    growth = rss.growth_mib()
    theirs, r_cpu = timed(upstream.pid, "127.0.0.1", upstream.port, path)
    gib = size_mib / 1024
    print(
        f"\n{label} blob={size_mib} MiB:\n"
        f"  mirror path over h3: {ours:7.1f} MB/s; serving node A"
        f" {a_cpu / gib:6.1f} CPU-s/GiB, node B {b_cpu / gib:6.1f} CPU-s/GiB;"
        f" node B RSS +{growth:.1f} MiB\n"
        f"  docker-registry:     {theirs:7.1f} MB/s; {r_cpu / gib:6.1f} CPU-s/GiB\n"
        f"  ratio h3/docker-registry: {ours / theirs:.2f}",
        flush=True,
    )


def run(base: Path, sizes_mib: list[int], datagrams: list[str], engine: str) -> None:
    upstream = UpstreamRegistry(base / "upstream")
    node_a = ContainerdProcess(base / "a")
    node_b = ContainerdProcess(base / "b")
    upstream.start()
    node_a.start()
    node_b.start()
    try:
        images = {}
        for size in sizes_mib:
            print(f"building and pushing a {size} MiB layer ...", flush=True)
            image = build_image(base / f"image{size}", (size << 20,), seed=size)
            node_a.pull(upstream.push(image, f"bench/transfer{size}", "v1"))
            images[size] = image
        assert upstream.pid is not None
        for datagram in datagrams:
            extra = (
                f"--transport-max-datagram-size={datagram}",
                f"--quic-engine={engine}",
            )
            port = free_port("127.0.1.1")  # peers share one transport port
            peer_a = PeerpullProcess(
                base / f"pa-{datagram}",
                node_a.socket,
                node_a.content_path,
                host="127.0.1.1",
                extra_args=extra,
                transport_port=port,
            )
            peer_a.start()
            peer_b = PeerpullProcess(
                base / f"pb-{datagram}",
                node_b.socket,
                node_b.content_path,
                host="127.0.1.2",
                extra_args=(
                    *extra,
                    f"--static-bootstrap-peers={peer_a.router_multiaddr}",
                ),
                transport_port=port,
            )
            peer_b.start()
            try:
                for size, image in images.items():
                    label = f"{engine} datagram={datagram}"
                    compare(
                        label, size, image.layers[0].digest, peer_a, peer_b, upstream
                    )
            finally:
                peer_b.stop()
                peer_a.stop()
    finally:
        node_b.stop()
        node_a.stop()
        upstream.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="256,1024")
    parser.add_argument("--datagrams", default="1350,8952,auto")
    parser.add_argument("--engine", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peerpull-bench-transfer-") as scratch:
        run(
            Path(scratch),
            [int(s) for s in args.sizes_mib.split(",")],
            args.datagrams.split(","),
            args.engine,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
