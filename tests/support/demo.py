"""`make demo`: three nodes on this machine pull one image, mostly from each other.

Node 1 pulls from the upstream registry (its peerpull answers a fast 404
for each request, so containerd goes on to the upstream); the upstream is
then stopped, and nodes 2 and 3 pull the same image from their peers over
HTTP/3, found through the DHT.
"""

from __future__ import annotations

import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

from tests.support.cluster import LocalCluster, PullReport
from tests.support.images import build_image

LAYER_SIZES = (8 << 20, 16 << 20, 32 << 20)
REPO, TAG = "demo/app", "v1"


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def show(report: PullReport) -> None:
    print(f"\n  node {report.node} pulled in {report.seconds:.2f}s")
    print(f"  {'request':<34} {'status':>6} {'source':>9} {'bytes':>10} {'ms':>8}")
    for fetch in report.fetches:
        kind, _, ref = fetch.path.rpartition("/")
        label = f"{kind.rsplit('/', 1)[-1]} {ref[:24]}"
        print(
            f"  {label:<34} {fetch.status:>6} {fetch.source:>9} {fetch.bytes:>10}"
            f" {fetch.seconds * 1000:>8.1f}"
        )


def run(base: Path) -> int:
    with LocalCluster(base, size=3) as cluster:
        step("3 nodes up (containerd + peerpull on 127.0.1.1-3), upstream on 127.0.0.1")
        image = build_image(base / "image", LAYER_SIZES, seed=7)
        ref = cluster.push(image, REPO, TAG)
        step(
            f"pushed {ref} ({sum(LAYER_SIZES) >> 20} MiB in {len(LAYER_SIZES)} layers)"
        )

        step("node 1 pulls: no peer has it, peerpull misses fast, the upstream serves")
        reports = [cluster.nodes[0].pull(ref)]
        show(reports[0])

        step("stopping the upstream registry")
        cluster.stop_upstream()

        for node in cluster.nodes[1:]:
            step(f"node {node.index} pulls with the upstream down")
            reports.append(node.pull(ref))
            show(reports[-1])

        print("\nsummary:")
        for report in reports:
            peer = report.bytes_from("peer") / 2**20
            upstream = "the upstream" if report.node == 1 else "nowhere else"
            print(
                f"  node {report.node}: {report.seconds:.2f}s,"
                f" {peer:.1f} MiB from peers, the rest from {upstream}"
            )
        served = all(r.bytes_from("peer") > 0 for r in reports[1:])
        print(
            "  result:",
            "nodes 2 and 3 pulled from peers" if served else "PEER PULL FAILED",
        )
        return 0 if served else 1


def main() -> int:
    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="peerpull-demo-") as scratch:
        try:
            return run(Path(scratch))
        except KeyboardInterrupt:
            print("interrupted; everything stopped", file=sys.stderr)
            return 130


if __name__ == "__main__":
    raise SystemExit(main())
