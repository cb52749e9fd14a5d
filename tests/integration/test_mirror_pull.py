"""containerd pulls through hosts.toml with the real peerpull as its mirror.

Node 1's pull misses in peerpull (fast 404s) and falls back to the real
upstream; with the upstream stopped, node 2's containerd, whose mirror is
node 1's peerpull, pulls the same image from it. Until the peer transport
lands, node 2 reaches node 1's registry port directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.containerd import ContainerdProcess
from tests.support.fixtures_upstream import ImageFactory
from tests.support.peerpull import PeerpullProcess
from tests.support.upstream import UpstreamRegistry

pytestmark = pytest.mark.integration


def configure(config_path: Path, registry: str, mirror: str) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "daemon",
            "configuration",
            f"--containerd-registry-config-path={config_path}",
            f"--mirror-targets={mirror}",
            f"--mirrored-registries={registry}",
        ],
        check=True,
        capture_output=True,
    )


def requests_seen(peerpull: PeerpullProcess) -> list[tuple[str, str, int]]:
    seen = []
    for line in peerpull.log_text().splitlines():
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("msg") == "request" and "/v2/" in record.get("path", ""):
            seen.append((record["method"], record["path"], record["status"]))
    return seen


def status_of(url: str, timeout_s: float = 5) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_miss_falls_back_upstream_then_peerpull_serves_with_upstream_down(
    tmp_path: Path,
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    image_factory: ImageFactory,
) -> None:
    image = image_factory((200_000, 50_000), seed=21)
    ref = upstream.push(image, "test/app", "v1")
    peerpull = PeerpullProcess(
        tmp_path / "pp", containerd.socket, containerd.content_path, host="127.0.1.1"
    )
    peerpull.start()
    try:
        hosts1 = tmp_path / "certs1"
        configure(hosts1, upstream.url, peerpull.url)
        containerd.pull(ref, plain_http=False, hosts_dir=hosts1)

        first = requests_seen(peerpull)
        assert first[0][1].startswith("/v2/test/app/manifests/v1?ns=127.0.0.1")
        assert all(status == 404 for _, _, status in first)
        blob_paths = {path.split("?")[0] for _, path, _ in first if "/blobs/" in path}
        assert {f"/v2/test/app/blobs/{b.digest}" for b in image.layers} <= blob_paths

        upstream.stop()
        node2 = ContainerdProcess(tmp_path / "node2")
        node2.start()
        try:
            hosts2 = tmp_path / "certs2"
            configure(hosts2, upstream.url, peerpull.url)
            node2.pull(ref, plain_http=False, hosts_dir=hosts2)
            held = node2.ctr("content", "ls", "-q").stdout.split()
            assert {blob.digest for blob in image.all_blobs()} <= set(held)
        finally:
            node2.stop()

        second = requests_seen(peerpull)[len(first) :]
        assert second and all(status == 200 for _, _, status in second)
        assert 'cache="hit"' in peerpull.metrics()
    finally:
        assert peerpull.stop() == 0


def test_containerd_down_means_not_ready_and_fast_misses(
    tmp_path: Path,
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    image_factory: ImageFactory,
) -> None:
    image = image_factory((10_000,), seed=22)
    containerd.pull(upstream.push(image, "test/app", "v1"))
    peerpull = PeerpullProcess(
        tmp_path / "pp", containerd.socket, containerd.content_path
    )
    peerpull.start()
    try:
        tag = f"{peerpull.url}/v2/test/app/manifests/v1?ns={upstream.host}"
        blob = f"{peerpull.url}/v2/test/app/blobs/{image.layers[0].digest}"
        assert status_of(tag) == 200

        containerd.stop()
        deadline = time.monotonic() + 5
        while status_of(f"{peerpull.url}/readyz") != 503:
            assert time.monotonic() < deadline, "readyz stayed 200 with containerd down"
            time.sleep(0.2)
        started = time.monotonic()
        assert status_of(tag) == 404  # tags need containerd's image store
        assert time.monotonic() - started < 3
        assert status_of(blob) == 200  # blob files are still on disk

        containerd.start()
        deadline = time.monotonic() + 10
        while status_of(f"{peerpull.url}/readyz") != 200:
            assert time.monotonic() < deadline, (
                "readyz not back after containerd restart"
            )
            time.sleep(0.2)
        assert status_of(tag) == 200
    finally:
        assert peerpull.stop() == 0
