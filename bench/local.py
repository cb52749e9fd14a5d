"""Local serving: peerpull against docker-registry, side by side in one run.

One image (a large layer plus small blobs) is pushed to a real
docker-registry and pulled into a real containerd; peerpull then serves it
from that containerd. The same client, in this process, reads the large
blob from both servers in alternating rounds and sends HEADs for the small
blobs to both, interleaved in blocks. Reported as ratios, since this
machine's speed varies from minute to minute.

    python -m bench.local [--blob-mib 1024] [--rounds 3] [--heads 1000]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.support.containerd import ContainerdProcess
from tests.support.images import build_image
from tests.support.peerpull import PeerpullProcess
from tests.support.upstream import UpstreamRegistry

READ_BYTES = 1 << 20


def read_blob(
    host: str, port: int, path: str, timeout_s: float = 600
) -> tuple[int, float]:
    """GET `path` and discard the body; returns bytes read and seconds taken.

    The timeout is long: through the mirror path, headers come only once the
    whole blob has arrived from the peer and passed its digest check.
    """
    buffer = bytearray(READ_BYTES)
    view = memoryview(buffer)
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    started = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    assert response.status == 200, response.status
    total = 0
    while count := response.readinto(view):
        total += count
    elapsed = time.perf_counter() - started
    connection.close()
    return total, elapsed


def head_latencies(host: str, port: int, paths: list[str]) -> list[float]:
    """HEAD each path on one keep-alive connection; returns seconds per request."""
    connection = http.client.HTTPConnection(host, port, timeout=10)
    latencies = []
    for path in paths:
        started = time.perf_counter()
        connection.request("HEAD", path)
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        assert response.status == 200, (path, response.status)
    connection.close()
    return latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def interleaved(
    rounds: int, peerpull: Callable[[], float], upstream: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """Run the two measurements alternately, swapping who goes first each round."""
    ours, theirs = [], []
    for number in range(rounds):
        if number % 2 == 0:
            ours.append(peerpull())
            theirs.append(upstream())
        else:
            theirs.append(upstream())
            ours.append(peerpull())
    return ours, theirs


def run(base: Path, blob_mib: int, rounds: int, heads: int) -> None:
    upstream = UpstreamRegistry(base / "upstream")
    node = ContainerdProcess(base / "node")
    peerpull: PeerpullProcess | None = None
    try:
        upstream.start()
        node.start()
        print(f"building and pushing a {blob_mib} MiB layer ...", flush=True)
        image = build_image(base / "image", (blob_mib << 20, 1000, 2000, 3000), seed=11)
        ref = upstream.push(image, "bench/local", "v1")
        node.pull(ref)
        peerpull = PeerpullProcess(base / "peerpull", node.socket, node.content_path)
        peerpull.start()
        ns = f"?ns={upstream.host}"
        big = f"/v2/bench/local/blobs/{image.layers[0].digest}"
        small = [f"/v2/bench/local/blobs/{blob.digest}" for blob in image.layers[1:]]
        small.append(f"/v2/bench/local/blobs/{image.configs[0].digest}")

        def ours_blob() -> float:
            size, seconds = read_blob(peerpull.host, peerpull.port, big + ns)  # type: ignore[union-attr]
            return size / seconds / 1e6

        def theirs_blob() -> float:
            size, seconds = read_blob("127.0.0.1", upstream.port, big)
            return size / seconds / 1e6

        ours_mbs, theirs_mbs = interleaved(rounds, ours_blob, theirs_blob)
        ratios = [o / t for o, t in zip(ours_mbs, theirs_mbs, strict=True)]
        print(f"\n{blob_mib} MiB blob, {rounds} alternating rounds (MB/s):")
        print("  peerpull       " + "  ".join(f"{v:8.1f}" for v in ours_mbs))
        print("  docker-registry" + "  ".join(f"{v:8.1f}" for v in theirs_mbs))
        print(
            f"  ratio peerpull/docker-registry: median {statistics.median(ratios):.2f}"
            f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
        )

        block = 100
        ours_heads: list[float] = []
        theirs_heads: list[float] = []
        for start in range(0, heads, block):
            paths = [
                small[i % len(small)] for i in range(start, min(heads, start + block))
            ]
            ours_heads += head_latencies(
                peerpull.host, peerpull.port, [p + ns for p in paths]
            )
            theirs_heads += head_latencies("127.0.0.1", upstream.port, paths)
        print(
            f"\n{heads} HEADs of small blobs, keep-alive,"
            f" interleaved in blocks of {block} (ms):"
        )
        for name, values in (
            ("peerpull", ours_heads),
            ("docker-registry", theirs_heads),
        ):
            print(
                f"  {name:<16} p50 {percentile(values, 0.5) * 1e3:6.3f}"
                f"  p99 {percentile(values, 0.99) * 1e3:6.3f}"
                f"  max {max(values) * 1e3:6.3f}"
            )
        p99_ratio = percentile(ours_heads, 0.99) / percentile(theirs_heads, 0.99)
        print(f"  p99 ratio peerpull/docker-registry: {p99_ratio:.2f}")
    finally:
        if peerpull is not None:
            peerpull.stop()
        node.stop()
        upstream.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blob-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--heads", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peerpull-bench-") as scratch:
        run(Path(scratch), args.blob_mib, args.rounds, args.heads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
