"""A local multi-node cluster on this machine, for tests, the demo and benchmarks.

Node i runs on 127.0.1.i: its own containerd (own root, state, sockets, no
CRI), its `hosts.toml` written by `peerpull configuration`, and its
`peerpull registry`, bootstrapped from node 1. One real docker-registry
serves as upstream on 127.0.0.1, optionally behind a throttling proxy.
Everything stops on `stop()`, also after a failure or Ctrl-C.

    python -m tests.support.cluster --nodes 3 [--upstream-mbps 50]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from tests.support.containerd import ContainerdProcess
from tests.support.images import BuiltImage
from tests.support.peerpull import PeerpullProcess
from tests.support.throttle import ThrottledProxy
from tests.support.upstream import UpstreamRegistry, free_port


@dataclass(frozen=True)
class BlobFetch:
    """How one manifest or blob request of a pull was answered by peerpull."""

    path: str
    status: int
    source: str  # local, peer, or upstream (peerpull missed; containerd went on)
    bytes: int
    seconds: float


@dataclass
class PullReport:
    """One node's pull: how long it took and where each request was served."""

    node: int
    ref: str
    seconds: float
    fetches: list[BlobFetch] = field(default_factory=list)

    def bytes_from(self, source: str) -> int:
        return sum(
            f.bytes for f in self.fetches if f.source == source and "/blobs/" in f.path
        )


class ClusterNode:
    """containerd + peerpull on 127.0.1.<index>."""

    def __init__(
        self, base: Path, index: int, extra_args: tuple[str, ...], transport_port: int
    ) -> None:
        self.index = index
        self.host = f"127.0.1.{index}"
        self.containerd = ContainerdProcess(base / f"node{index}")
        self.hosts_dir = base / f"node{index}-certs.d"
        self._base = base
        self._extra = extra_args
        self._transport_port = transport_port
        self.peerpull: PeerpullProcess | None = None

    def start(self, seeds: list[str], wait_ready: bool = True) -> None:
        """Start containerd and peerpull, bootstrapping from `seeds`."""
        self.containerd.start()
        bootstrap = (f"--static-bootstrap-peers={','.join(seeds)}",) if seeds else ()
        for attempt in range(3):  # a port free a moment ago may be taken since
            self.peerpull = PeerpullProcess(
                self._base / f"peerpull{self.index}",
                self.containerd.socket,
                self.containerd.content_path,
                host=self.host,
                extra_args=(*bootstrap, *self._extra),
                transport_port=self._transport_port,
            )
            try:
                self.peerpull.start(wait_ready=wait_ready)
                return
            except RuntimeError as err:
                if attempt == 2 or "address already in use" not in str(err):
                    raise

    def configure(self, registry_url: str) -> None:
        """Write this node's hosts.toml with the real `peerpull configuration`."""
        assert self.peerpull is not None
        subprocess.run(
            [
                sys.executable,
                "-m",
                "daemon",
                "configuration",
                f"--containerd-registry-config-path={self.hosts_dir}",
                f"--mirror-targets={self.peerpull.url}",
                f"--mirrored-registries={registry_url}",
                "--log-level=WARN",
            ],
            check=True,
        )

    def pull(self, ref: str) -> PullReport:
        """Pull through hosts.toml (peerpull first, then the upstream)."""
        assert self.peerpull is not None
        mark = len(self.peerpull.log_text().splitlines())
        started = time.perf_counter()
        self.containerd.pull(ref, plain_http=False, hosts_dir=self.hosts_dir)
        report = PullReport(self.index, ref, time.perf_counter() - started)
        for line in self.peerpull.log_text().splitlines()[mark:]:
            record = json.loads(line) if line.startswith("{") else {}
            if record.get("msg") != "request" or "/v2/" not in str(record.get("path")):
                continue
            source = record.get("source") or "none"
            report.fetches.append(
                BlobFetch(
                    path=str(record["path"]).split("?")[0],
                    status=int(record["status"]),
                    source="upstream" if source == "none" else source,
                    bytes=int(record.get("bytes") or 0) if source != "none" else 0,
                    seconds=float(record["seconds"]),
                )
            )
        return report

    def kill_peerpull(self) -> None:
        """SIGKILL this node's peerpull (no clean shutdown) and reap it."""
        assert self.peerpull is not None and self.peerpull.pid is not None
        os.kill(self.peerpull.pid, signal.SIGKILL)
        self.peerpull.stop()

    def restart_peerpull(self, kill: bool = False) -> None:
        """Stop peerpull (SIGTERM, or SIGKILL) and start it again, same ports."""
        assert self.peerpull is not None
        if kill:
            self.kill_peerpull()
        else:
            self.peerpull.stop()
        self.peerpull.start()

    def wait_resolves(self, key: str, hosts: set[str], timeout_s: float = 15) -> None:
        """Wait until this node's router resolves `key` to exactly `hosts`."""
        assert self.peerpull is not None
        deadline = time.monotonic() + timeout_s
        while (found := set(self.peerpull.resolve(key))) != hosts:
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.index}: {key} -> {found}, not {hosts}")
            time.sleep(0.1)

    def stop(self) -> None:
        try:
            if self.peerpull is not None:
                self.peerpull.stop()
        finally:
            self.containerd.stop()


class LocalCluster:
    """N nodes and one upstream registry; a context manager."""

    def __init__(
        self,
        base: Path,
        size: int = 3,
        upstream_mbps: float | None = None,
        peerpull_args: tuple[str, ...] = (),
    ) -> None:
        self.base = base
        self.upstream = UpstreamRegistry(base / "upstream")
        port = free_port("127.0.1.1")  # one transport port for the cluster
        self.nodes = [
            ClusterNode(base, i + 1, peerpull_args, port) for i in range(size)
        ]
        self._upstream_mbps = upstream_mbps
        self.proxy: ThrottledProxy | None = None
        self._stack = ExitStack()

    @property
    def registry_host(self) -> str:
        """The registry host images are pulled by (the proxy when throttled)."""
        if self.proxy is not None:
            return f"127.0.0.1:{self.proxy.port}"
        return self.upstream.host

    def start(self) -> LocalCluster:
        with ExitStack() as starting:
            self.upstream.start()
            starting.callback(self.upstream.stop)
            if self._upstream_mbps is not None:
                target = ("127.0.0.1", self.upstream.port)
                self.proxy = ThrottledProxy(
                    "127.0.0.1", target, self._upstream_mbps * 1e6
                )
                self.proxy.start()
                starting.callback(self.proxy.stop)
            seeds: list[str] = []
            for node in self.nodes:
                starting.callback(node.stop)
                node.start(seeds)
                assert node.peerpull is not None
                seeds = seeds or [node.peerpull.router_multiaddr]
                node.configure(f"http://{self.registry_host}")
            self._stack = starting.pop_all()
        return self

    def push(self, image: BuiltImage, repo: str, tag: str) -> str:
        """Push to the upstream; return the reference nodes pull by."""
        self.upstream.push(image, repo, tag)
        return f"{self.registry_host}/{repo}:{tag}"

    def stop_upstream(self) -> None:
        self.upstream.stop()

    def start_upstream(self) -> None:
        """Start the upstream again on its port, with the images it held."""
        self.upstream.start()

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run a local peerpull cluster until Ctrl-C."
    )
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--upstream-mbps", type=float, default=None)
    args = parser.parse_args()

    def interrupted(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    with tempfile.TemporaryDirectory(prefix="peerpull-cluster-") as scratch:
        try:
            with LocalCluster(Path(scratch), args.nodes, args.upstream_mbps) as cluster:
                print(f"upstream: http://{cluster.registry_host}")
                for node in cluster.nodes:
                    assert node.peerpull is not None
                    print(
                        f"node {node.index}: registry {node.peerpull.url},"
                        f" containerd {node.containerd.socket}, hosts {node.hosts_dir}"
                    )
                print("Ctrl-C stops everything.", flush=True)
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
