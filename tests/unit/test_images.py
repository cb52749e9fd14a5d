"""The built layouts are valid OCI image layouts and reproducible from a seed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import (
    REF_NAME_ANNOTATION,
    BuiltImage,
    MediaTypes,
    build_image,
    build_multiarch_image,
)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_bytes())
    return document


def _check_layout(image: BuiltImage) -> None:
    """Assert the image-layout rules that a reader of the layout relies on."""
    assert _load(image.layout / "oci-layout") == {"imageLayoutVersion": "1.0.0"}

    blob_dir = image.layout / "blobs" / "sha256"
    for path in blob_dir.iterdir():
        assert _sha256(path.read_bytes()) == f"sha256:{path.name}"
    for blob in image.all_blobs():
        assert blob.path.parent == blob_dir
        assert f"sha256:{blob.path.name}" == blob.digest
        assert blob.path.stat().st_size == blob.size
    assert {p.name for p in blob_dir.iterdir()} == {
        b.path.name for b in image.all_blobs()
    }

    (entry,) = _load(image.layout / "index.json")["manifests"]
    assert entry["digest"] == image.root.digest
    assert entry["size"] == image.root.size
    assert entry["mediaType"] == image.root.media_type
    assert entry["annotations"] == {REF_NAME_ANNOTATION: image.ref_name}


def _check_manifest(
    image: BuiltImage, manifest: dict[str, Any], sizes: list[int]
) -> dict[str, Any]:
    """Assert a manifest's config and layers exist and hold what was asked."""
    by_digest = {blob.digest: blob for blob in image.all_blobs()}
    config_blob = by_digest[manifest["config"]["digest"]]
    assert manifest["config"]["mediaType"] == config_blob.media_type
    config = _load(config_blob.path)
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(manifest["layers"]) == len(sizes) == len(diff_ids)

    for descriptor, size, diff_id in zip(
        manifest["layers"], sizes, diff_ids, strict=True
    ):
        layer = by_digest[descriptor["digest"]]
        assert descriptor["size"] == layer.size
        tar_bytes = gzip.decompress(layer.path.read_bytes())
        assert _sha256(tar_bytes) == diff_id
        with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
            (member,) = tar.getmembers()
            assert member.isfile() and member.size == size
    return config


@pytest.mark.parametrize("media_types", ["oci", "docker"])
def test_single_image_is_a_valid_layout(
    tmp_path: Path, media_types: MediaTypes
) -> None:
    image = build_image(tmp_path, [100, 0, 5000], media_types=media_types, seed=1)

    _check_layout(image)
    manifest = _load(image.root.path)
    assert image.manifests == [image.root]
    assert manifest["mediaType"] == image.root.media_type
    assert image.root.media_type.startswith(f"application/vnd.{media_types}.")
    config = _check_manifest(image, manifest, [100, 0, 5000])
    assert (config["os"], config["architecture"]) == ("linux", "amd64")


@pytest.mark.parametrize("media_types", ["oci", "docker"])
def test_multiarch_image_has_a_manifest_per_platform(
    tmp_path: Path, media_types: MediaTypes
) -> None:
    platforms = ["linux/amd64", "linux/arm64/v8", "linux/s390x"]
    image = build_multiarch_image(
        tmp_path, platforms, [300, 700], media_types=media_types
    )

    _check_layout(image)
    index = _load(image.root.path)
    assert index["mediaType"] == image.root.media_type
    assert [e["digest"] for e in index["manifests"]] == [
        m.digest for m in image.manifests
    ]
    for entry, manifest_blob in zip(index["manifests"], image.manifests, strict=True):
        assert entry["mediaType"] == manifest_blob.media_type
        config = _check_manifest(image, _load(manifest_blob.path), [300, 700])
        platform = entry["platform"]
        assert config["os"] == platform["os"]
        assert config["architecture"] == platform["architecture"]
        assert config.get("variant") == platform.get("variant")
    assert len({layer.digest for layer in image.layers}) == 2 * len(platforms)


def test_without_media_type_drops_the_root_field(tmp_path: Path) -> None:
    single = build_image(tmp_path / "a", [10], index_without_media_type=True)
    multi = build_multiarch_image(tmp_path / "b", index_without_media_type=True)

    for image in (single, multi):
        _check_layout(image)
        assert "mediaType" not in _load(image.root.path)
    assert all("mediaType" in _load(m.path) for m in multi.manifests)


def test_docker_without_media_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mediaType"):
        build_image(tmp_path, [10], media_types="docker", index_without_media_type=True)


def test_seed_makes_the_image_reproducible(tmp_path: Path) -> None:
    first = build_multiarch_image(tmp_path / "a", seed=7)
    again = build_multiarch_image(tmp_path / "b", seed=7)
    other = build_multiarch_image(tmp_path / "c", seed=8)
    unseeded = build_multiarch_image(tmp_path / "d")

    assert [b.digest for b in first.all_blobs()] == [
        b.digest for b in again.all_blobs()
    ]
    assert (tmp_path / "a" / "index.json").read_bytes() == (
        tmp_path / "b" / "index.json"
    ).read_bytes()
    assert other.root.digest != first.root.digest
    assert unseeded.root.digest != first.root.digest
    assert not {b.digest for b in first.layers} & {b.digest for b in other.layers}


def test_ref_name_goes_into_index_json(tmp_path: Path) -> None:
    image = build_image(tmp_path, [10], ref_name="v1.2.3")

    _check_layout(image)
    assert image.ref_name == "v1.2.3"


def test_bad_platform_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="os/arch"):
        build_multiarch_image(tmp_path, ["amd64"])
