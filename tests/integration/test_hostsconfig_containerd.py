"""A real containerd 1.6 pulls through the hosts.toml files peerpull writes.

The mirror is a small HTTP server on 127.0.0.1 that records each request and
answers 404 with an OCI error body, so containerd must fall back to the real
upstream registry and the pull must still succeed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from daemon.hostsconfig import MirrorConfiguration, restore_backup, write_configuration
from tests.support.containerd import ContainerdProcess
from tests.support.fixtures_upstream import ImageFactory
from tests.support.images import BuiltImage
from tests.support.upstream import UpstreamRegistry

pytestmark = pytest.mark.integration

REPO = "test/app"


@dataclass(frozen=True)
class Seen:
    """One request a recording mirror received."""

    mirror: str
    method: str
    path: str
    ns: list[str]


class RecordingMirror:
    """An HTTP server on 127.0.0.1 that logs requests and answers 404."""

    def __init__(self, name: str, log: list[Seen], lock: threading.Lock) -> None:
        handler = _handler(name, log, lock)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> RecordingMirror:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler(
    name: str, log: list[Seen], lock: threading.Lock
) -> type[BaseHTTPRequestHandler]:
    """Build a handler class that records into log and always answers 404."""
    body = json.dumps(
        {"errors": [{"code": "NOT_FOUND", "message": "not on this mirror"}]}
    ).encode()

    class Handler(BaseHTTPRequestHandler):
        def _miss(self) -> None:
            url = urlsplit(self.path)
            ns = parse_qs(url.query).get("ns", [])
            with lock:
                log.append(Seen(name, self.command, url.path, ns))
            self.send_response(404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = _miss
        do_HEAD = _miss

        def log_message(self, format: str, *args: object) -> None:
            """Keep the test output quiet."""

    return Handler


@pytest.fixture
def requests_seen() -> tuple[list[Seen], threading.Lock]:
    """A shared request log for every recording mirror in a test."""
    return [], threading.Lock()


@pytest.fixture
def mirror(requests_seen: tuple[list[Seen], threading.Lock]) -> Iterator[str]:
    """The URL of a running recording mirror named "peerpull"."""
    with RecordingMirror("peerpull", *requests_seen) as server:
        yield server.url


@pytest.fixture
def pushed(
    upstream: UpstreamRegistry, image_factory: ImageFactory
) -> tuple[str, BuiltImage]:
    """An image pushed to the upstream registry as test/app:v1."""
    image = image_factory((2048, 4096), seed=7)
    return upstream.push(image, REPO, "v1"), image


def blob_paths(image: BuiltImage) -> set[str]:
    """The blob paths containerd fetches for a single-manifest image."""
    digests = [blob.digest for blob in image.configs + image.layers]
    return {f"/v2/{REPO}/blobs/{digest}" for digest in digests}


def pulled(containerd: ContainerdProcess, reference: str) -> bool:
    """Whether containerd lists the image by that name."""
    return reference in containerd.ctr("images", "ls", "-q").stdout.split()


def test_pull_asks_the_mirror_first_then_falls_back(
    tmp_path: Path,
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    pushed: tuple[str, BuiltImage],
    mirror: str,
    requests_seen: tuple[list[Seen], threading.Lock],
) -> None:
    reference, image = pushed
    config = tmp_path / "certs.d"
    cfg = MirrorConfiguration(config, (mirror,), (upstream.url,))
    write_configuration(cfg)

    containerd.pull(reference, plain_http=False, hosts_dir=config)

    log, _ = requests_seen
    assert pulled(containerd, reference)
    assert log, "the mirror saw no request"
    first = log[0]
    assert first.path == f"/v2/{REPO}/manifests/v1"
    assert first.method in ("HEAD", "GET")
    assert all(seen.ns == [upstream.host] for seen in log)
    assert f"/v2/{REPO}/manifests/{image.root.digest}" in {s.path for s in log}
    assert blob_paths(image) <= {seen.path for seen in log}


def test_without_resolve_tags_only_content_goes_to_the_mirror(
    tmp_path: Path,
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    pushed: tuple[str, BuiltImage],
    mirror: str,
    requests_seen: tuple[list[Seen], threading.Lock],
) -> None:
    reference, image = pushed
    config = tmp_path / "certs.d"
    cfg = MirrorConfiguration(config, (mirror,), (upstream.url,), resolve_tags=False)
    write_configuration(cfg)

    containerd.pull(reference, plain_http=False, hosts_dir=config)

    log, _ = requests_seen
    paths = {seen.path for seen in log}
    assert pulled(containerd, reference)
    assert f"/v2/{REPO}/manifests/v1" not in paths
    assert f"/v2/{REPO}/manifests/{image.root.digest}" in paths
    assert blob_paths(image) <= paths
    assert all(seen.ns == [upstream.host] for seen in log)


def test_prepended_mirror_is_asked_after_peerpull(
    tmp_path: Path,
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    pushed: tuple[str, BuiltImage],
    mirror: str,
    requests_seen: tuple[list[Seen], threading.Lock],
) -> None:
    reference, _ = pushed
    config = tmp_path / "certs.d"
    log, lock = requests_seen
    with RecordingMirror("old", log, lock) as old:
        old_hosts = config / upstream.host / "hosts.toml"
        old_hosts.parent.mkdir(parents=True)
        old_hosts.write_text(
            f'server = "{upstream.url}"\n\n'
            f'[host."{old.url}"]\ncapabilities = ["pull", "resolve"]\n'
        )
        cfg = MirrorConfiguration(
            config, (mirror,), (upstream.url,), prepend_existing=True
        )
        write_configuration(cfg)

        containerd.pull(reference, plain_http=False, hosts_dir=config)

    tag_requests = [s.mirror for s in log if s.path == f"/v2/{REPO}/manifests/v1"]
    assert pulled(containerd, reference)
    assert tag_requests[:2] == ["peerpull", "old"]


def test_after_cleanup_the_mirror_is_not_asked(
    tmp_path: Path,
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    pushed: tuple[str, BuiltImage],
    mirror: str,
    requests_seen: tuple[list[Seen], threading.Lock],
) -> None:
    reference, _ = pushed
    config = tmp_path / "certs.d"
    write_configuration(MirrorConfiguration(config, (mirror,), (upstream.url,)))

    assert restore_backup(config) is True
    containerd.pull(reference, plain_http=True, hosts_dir=config)

    log, _ = requests_seen
    assert pulled(containerd, reference)
    assert log == []
    assert list(config.iterdir()) == []
