"""peerpull answers like the upstream registry, request by request.

Real everything: images built by the test are pushed with skopeo to a real
docker-registry 2.8, pulled into a real containerd 1.6, then the same
requests go to the upstream and to `peerpull registry` serving from that
containerd. Status, the headers containerd relies on and the bytes must be
the same. Runs twice: blobs read from files, and over gRPC `Content.Read`.
"""

from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.containerd import ContainerdProcess
from tests.support.fixtures_upstream import ImageFactory
from tests.support.images import Blob, BuiltImage
from tests.support.peerpull import PeerpullProcess
from tests.support.upstream import MANIFEST_ACCEPT, UpstreamRegistry

COMPARED_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Docker-Content-Digest",
    "Content-Range",
)
LAYER_SIZES = (300_000, 70_000, 1)


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str | None]
    body: bytes


def fetch(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, raw_headers, body = (
                response.status,
                response.headers,
                response.read(),
            )
    except urllib.error.HTTPError as err:
        status, raw_headers = err.code, err.headers
        try:
            body = err.read()
        except http.client.IncompleteRead as short:
            # docker-registry 2.8 (Go 1.19) announces the blob's length on a 416.
            body = short.partial
    return Reply(
        status, {name: raw_headers.get(name) for name in COMPARED_HEADERS}, body
    )


@dataclass
class Scene:
    upstream: UpstreamRegistry
    peerpull: PeerpullProcess
    images: dict[str, BuiltImage]

    def both(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[Reply, Reply]:
        """The same request to the upstream and to peerpull (with `ns`)."""
        separator = "&" if "?" in path else "?"
        theirs = fetch(self.upstream.url + path, method, headers)
        ours = fetch(
            f"{self.peerpull.url}{path}{separator}ns={self.upstream.host}",
            method,
            headers,
        )
        return theirs, ours


@pytest.fixture(params=["file", "grpc"])
def scene(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    containerd: ContainerdProcess,
    upstream: UpstreamRegistry,
    image_factory: ImageFactory,
) -> Iterator[Scene]:
    images = {
        "oci": image_factory(LAYER_SIZES, seed=1),
        "docker": image_factory(LAYER_SIZES, media_types="docker", seed=2),
        "bare": image_factory((5000,), index_without_media_type=True, seed=3),
        "multi": image_factory(
            (4000, 8000), platforms=("linux/amd64", "linux/arm64"), seed=4
        ),
        "multidocker": image_factory(
            (4000,),
            platforms=("linux/amd64", "linux/arm64"),
            media_types="docker",
            seed=5,
        ),
        "barelist": image_factory(
            (4000,),
            platforms=("linux/amd64", "linux/s390x"),
            index_without_media_type=True,
            seed=6,
        ),
    }
    for name, image in images.items():
        ref = upstream.push(image, f"test/{name}", "v1")
        containerd.pull(ref)  # the host platform only, like a kubelet pull

    content_path = (
        containerd.content_path if request.param == "file" else tmp_path / "none"
    )
    peerpull = PeerpullProcess(tmp_path / "peerpull", containerd.socket, content_path)
    peerpull.start()
    try:
        yield Scene(upstream, peerpull, images)
    finally:
        assert peerpull.stop() == 0, peerpull.log_text()
    assert f'"reads": "{request.param}"' in peerpull.log_text()


def assert_same(theirs: Reply, ours: Reply, what: str) -> None:
    assert ours.status == theirs.status, what
    assert ours.headers == theirs.headers, what
    assert ours.body == theirs.body, what


def local_blobs(image: BuiltImage) -> list[Blob]:
    """Config and layers of the host platform (the first), which a pull holds."""
    per_platform = len(image.layers) // len(image.manifests)
    return [image.configs[0], *image.layers[:per_platform]]


def test_manifests_by_tag_and_digest_match_upstream(scene: Scene) -> None:
    accept = {"Accept": MANIFEST_ACCEPT}
    for name, image in scene.images.items():
        for ref in ("v1", image.root.digest, image.manifests[0].digest):
            for method in ("GET", "HEAD"):
                theirs, ours = scene.both(
                    f"/v2/test/{name}/manifests/{ref}", method, accept
                )
                assert theirs.status == 200
                assert_same(theirs, ours, f"{method} {name} manifest {ref}")


def test_blobs_and_heads_match_upstream(scene: Scene) -> None:
    for name, image in scene.images.items():
        for blob in local_blobs(image):
            for method in ("GET", "HEAD"):
                theirs, ours = scene.both(
                    f"/v2/test/{name}/blobs/{blob.digest}", method
                )
                assert theirs.status == 200
                assert_same(theirs, ours, f"{method} {name} blob {blob.digest}")
                if method == "GET":
                    assert hashlib.sha256(ours.body).hexdigest() == blob.digest[7:]


@pytest.mark.parametrize(
    "spec", ["0-0", "0-99", "1000-", "-1000", "299999-", "100-99999999", "-99999999"]
)
def test_ranges_match_upstream(scene: Scene, spec: str) -> None:
    layer = scene.images["oci"].layers[0]
    for method in ("GET", "HEAD"):
        theirs, ours = scene.both(
            f"/v2/test/oci/blobs/{layer.digest}", method, {"Range": f"bytes={spec}"}
        )
        assert theirs.status == 206
        assert_same(theirs, ours, f"{method} range {spec}")


def test_unsatisfiable_range_is_416_like_upstream(scene: Scene) -> None:
    layer = scene.images["oci"].layers[0]
    theirs, ours = scene.both(
        f"/v2/test/oci/blobs/{layer.digest}", headers={"Range": f"bytes={layer.size}-"}
    )
    assert ours.status == theirs.status == 416
    assert ours.headers["Content-Range"] == theirs.headers["Content-Range"]
    assert ours.headers["Content-Length"] == str(len(ours.body))


def test_other_platforms_are_not_local(scene: Scene) -> None:
    image = scene.images["multi"]
    foreign_manifest, foreign_layer = image.manifests[1], image.layers[-1]
    theirs, ours = scene.both(
        f"/v2/test/multi/manifests/{foreign_manifest.digest}",
        headers={"Accept": MANIFEST_ACCEPT},
    )
    assert theirs.status == 200 and ours.status == 404
    theirs, ours = scene.both(f"/v2/test/multi/blobs/{foreign_layer.digest}")
    assert theirs.status == 200 and ours.status == 404


def test_unknown_content_is_a_404_like_upstream(scene: Scene) -> None:
    missing = "sha256:" + "0" * 64
    for path in (
        f"/v2/test/oci/blobs/{missing}",
        f"/v2/test/oci/manifests/{missing}",
        "/v2/test/oci/manifests/nosuchtag",
    ):
        theirs, ours = scene.both(path)
        assert ours.status == theirs.status == 404, path
        assert ours.headers["Content-Type"] == theirs.headers["Content-Type"]
        assert ours.body.startswith(b'{"errors": [{"code": ')


def test_metrics_count_hits_and_misses(scene: Scene) -> None:
    image = scene.images["oci"]
    scene.both(f"/v2/test/oci/blobs/{image.layers[0].digest}")
    scene.both("/v2/test/oci/blobs/sha256:" + "1" * 64)
    text = scene.peerpull.metrics()
    registry = scene.upstream.host
    # a hit is served locally; a miss was looked for among peers too
    for cache, source in (("hit", "local"), ("miss", "peer")):
        labels = f'cache="{cache}",registry="{registry}",source="{source}"'
        assert f"peerpull_mirror_requests_total{{{labels}}} 1.0" in text
    assert (
        'peerpull_http_request_duration_seconds_count{code="200",handler="blobs",method="GET"}'
        in text
    )
