"""`make demo`: peerpull serving a node's containerd content, on this machine.

Today (before the DHT router and HTTP/3 transport land) the demo shows one
node's peerpull at work: node 1 pulls an image while peerpull misses fast
and containerd falls back to the upstream; then the upstream is stopped and
node 2, a second real containerd whose mirror is node 1's peerpull, pulls
the same image from it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from tests.support.containerd import ContainerdProcess
from tests.support.images import build_image
from tests.support.peerpull import PeerpullProcess
from tests.support.upstream import UpstreamRegistry

LAYER_SIZES = (4 << 20, 8 << 20, 16 << 20)
REPO, TAG = "demo/app", "v1"


def step(number: int, text: str) -> None:
    print(f"[{number}/6] {text}", flush=True)


def configure_mirror(config_path: Path, registry_url: str, mirror_url: str) -> None:
    """Run the real `peerpull configuration` for one registry."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "configuration",
            f"--containerd-registry-config-path={config_path}",
            f"--mirror-targets={mirror_url}",
            f"--mirrored-registries={registry_url}",
            "--log-level=WARN",
        ],
        check=True,
    )


def timed_pull(node: ContainerdProcess, ref: str, hosts: Path) -> float:
    started = time.perf_counter()
    node.pull(ref, plain_http=False, hosts_dir=hosts)
    return time.perf_counter() - started


def served(peerpull: PeerpullProcess, since: int) -> list[dict[str, object]]:
    """The manifest and blob requests peerpull logged after line `since`."""
    records = []
    for line in peerpull.log_text().splitlines()[since:]:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("msg") == "request" and "/v2/" in str(record.get("path")):
            records.append(record)
    return records


def print_requests(title: str, records: list[dict[str, object]]) -> None:
    print(f"\n  {title}")
    print(f"  {'request':<52} {'status':>6} {'bytes':>10} {'ms':>8}")
    for record in records:
        path = str(record["path"]).split("/v2/", 1)[1]
        kind, _, ref = path.rpartition("/")
        label = f"{kind.rsplit('/', 1)[-1]} {ref[:40]}"
        size = record.get("bytes") or 0
        print(
            f"  {label:<52} {record['status']:>6} {size:>10} "
            f"{float(str(record['seconds'])) * 1000:>8.2f}"
        )


def run(base: Path) -> None:
    with ExitStack() as stack:
        step(1, "starting the upstream registry (docker-registry) on 127.0.0.1")
        upstream = UpstreamRegistry(base / "upstream")
        upstream.start()
        stack.callback(upstream.stop)

        step(2, "starting node 1: containerd + peerpull registry on 127.0.1.1")
        node1 = ContainerdProcess(base / "node1")
        node1.start()
        stack.callback(node1.stop)
        peerpull = PeerpullProcess(
            base / "peerpull1", node1.socket, node1.content_path, host="127.0.1.1"
        )
        peerpull.start()
        stack.callback(peerpull.stop)
        hosts1 = base / "node1-certs.d"
        configure_mirror(hosts1, upstream.url, peerpull.url)

        step(3, f"building a {sum(LAYER_SIZES) >> 20} MiB image and pushing it")
        image = build_image(base / "image", LAYER_SIZES, seed=7)
        ref = upstream.push(image, REPO, TAG)

        step(4, f"node 1 pulls {ref}: peerpull misses, containerd goes upstream")
        mark = len(peerpull.log_text().splitlines())
        seconds = timed_pull(node1, ref, hosts1)
        misses = served(peerpull, mark)
        print_requests(f"node 1 pull took {seconds:.2f}s; peerpull answered:", misses)

        step(5, "stopping the upstream registry")
        upstream.stop()

        step(
            6, "node 2 (its own containerd) pulls the same image from node 1's peerpull"
        )
        node2 = ContainerdProcess(base / "node2")
        node2.start()
        stack.callback(node2.stop)
        hosts2 = base / "node2-certs.d"
        configure_mirror(hosts2, upstream.url, peerpull.url)
        mark = len(peerpull.log_text().splitlines())
        seconds = timed_pull(node2, ref, hosts2)
        hits = served(peerpull, mark)
        print_requests(f"node 2 pull took {seconds:.2f}s; peerpull served:", hits)

        blobs = [r for r in hits if r["status"] == 200 and "/blobs/" in str(r["path"])]
        total = sum(int(str(r.get("bytes") or 0)) for r in blobs)
        worst_miss = max((float(str(r["seconds"])) for r in misses), default=0.0)
        print(
            "\nsummary: node 1 got the image from the upstream; peerpull's slowest"
            f" miss took {worst_miss * 1000:.1f} ms. node 2 got {len(blobs)} blobs,"
            f" {total / 2**20:.1f} MiB, from node 1's peerpull with the upstream down."
        )


def main() -> int:
    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="peerpull-demo-") as scratch:
        try:
            run(Path(scratch))
        except KeyboardInterrupt:
            print("interrupted; everything stopped", file=sys.stderr)
            return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
