"""Built images pushed with skopeo come back from the real registry unchanged."""

from __future__ import annotations

import hashlib
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.images import BuiltImage, build_image, build_multiarch_image
from tests.support.upstream import MANIFEST_ACCEPT, UpstreamRegistry, free_port

pytestmark = pytest.mark.integration

Build = Callable[[Path], BuiltImage]

KINDS: dict[str, Build] = {
    "oci-single": lambda d: build_image(d, [1500, 70_000]),
    "docker-single": lambda d: build_image(d, [1500, 70_000], media_types="docker"),
    "oci-multiarch": lambda d: build_multiarch_image(d),
    "docker-manifest-list": lambda d: build_multiarch_image(d, media_types="docker"),
    "oci-index-without-media-type": lambda d: build_multiarch_image(
        d, index_without_media_type=True
    ),
    "oci-manifest-without-media-type": lambda d: build_image(
        d, [1500], index_without_media_type=True
    ),
}


def _get(url: str, accept: str | None = None) -> tuple[bytes, dict[str, str]]:
    headers = {"Accept": accept} if accept else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read(), dict(response.headers)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("kind", list(KINDS))
def test_pushed_image_keeps_every_digest(
    tmp_path: Path, upstream: UpstreamRegistry, kind: str
) -> None:
    image = KINDS[kind](tmp_path / kind)

    reference = upstream.push(image, f"test/{kind}", "v1")

    assert reference == f"{upstream.host}/test/{kind}:v1"
    base = f"{upstream.url}/v2/test/{kind}"
    for ref in ("v1", image.root.digest):
        body, headers = _get(f"{base}/manifests/{ref}", MANIFEST_ACCEPT)
        assert _digest(body) == image.root.digest
        assert len(body) == image.root.size
        assert headers["Docker-Content-Digest"] == image.root.digest
        assert headers["Content-Type"] == image.root.media_type

    for manifest in image.manifests:
        body, headers = _get(f"{base}/manifests/{manifest.digest}", MANIFEST_ACCEPT)
        assert _digest(body) == manifest.digest
        assert headers["Content-Type"] == manifest.media_type
        document = json.loads(body)
        assert document["config"]["digest"] in {c.digest for c in image.configs}

    for blob in [*image.configs, *image.layers]:
        body, headers = _get(f"{base}/blobs/{blob.digest}")
        assert _digest(body) == blob.digest
        assert len(body) == blob.size
        assert headers["Docker-Content-Digest"] == blob.digest


def test_image_factory_builds_under_tmp_path(
    tmp_path: Path, image_factory: Callable[..., BuiltImage]
) -> None:
    single = image_factory([10])
    multi = image_factory([10], platforms=["linux/amd64", "linux/riscv64"])

    assert single.layout.parent == multi.layout.parent
    assert single.layout != multi.layout
    assert single.layout.is_relative_to(tmp_path)
    assert len(multi.manifests) == 2


def test_registry_allows_deletes(
    upstream: UpstreamRegistry, image_factory: Callable[..., BuiltImage]
) -> None:
    image = image_factory([10])
    upstream.push(image, "test/delete", "v1")
    url = f"{upstream.url}/v2/test/delete/manifests/{image.root.digest}"

    request = urllib.request.Request(url, method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202

    with pytest.raises(urllib.error.HTTPError) as raised:
        _get(url, MANIFEST_ACCEPT)
    assert raised.value.code == 404


def test_registry_answers_until_stopped(tmp_path: Path) -> None:
    if shutil.which("docker-registry") is None:
        pytest.skip("docker-registry is not installed (apt: docker-registry)")
    registry = UpstreamRegistry(tmp_path / "reg", port=free_port())
    registry.start()
    try:
        body, _ = _get(f"{registry.url}/v2/")
        assert json.loads(body) == {}
        assert (tmp_path / "reg" / "registry.yml").read_text().count("127.0.0.1") == 1
    finally:
        registry.stop()

    with pytest.raises(urllib.error.URLError):
        _get(f"{registry.url}/v2/")
