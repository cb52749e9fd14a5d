"""Build test images with random content as OCI image layouts on disk.

Each layer is a gzip'd tar (compresslevel 1, fixed mtimes) holding one file of
random bytes, so a seed makes every digest reproducible. Images come in OCI or
Docker schema 2 media types; both are stored in an OCI layout
(image-layout spec: `oci-layout`, `index.json`, `blobs/sha256/<hex>`).

What skopeo 1.9.3 does with these layouts (tried against docker-registry 2.8):

- OCI media types: `skopeo copy --preserve-digests [--all] oci:<layout>:<ref>
  docker://...` pushes every blob unchanged, also a manifest or index without
  its `mediaType` field (the registry guesses the type from the content).
- Docker media types: the `oci:` transport skips `index.json` entries whose
  mediaType is not an OCI one and fails with "no descriptor found for
  reference". The `dir:` transport reads the type from the manifest bytes, so
  a `dir:` view of the same blobs (`UpstreamRegistry.push` builds one) pushes
  manifests and manifest lists unchanged with `--preserve-digests --all`.
- `--format v2s2` is no way in: without `--preserve-digests` it rewrites an
  OCI image (new digests); with it, it exits 0 and silently keeps OCI types.
- A Docker schema 2 manifest without `mediaType` is invalid, so
  `index_without_media_type` is refused for `media_types="docker"`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

MediaTypes = Literal["oci", "docker"]

_TYPES: dict[str, dict[str, str]] = {
    "oci": {
        "manifest": "application/vnd.oci.image.manifest.v1+json",
        "index": "application/vnd.oci.image.index.v1+json",
        "config": "application/vnd.oci.image.config.v1+json",
        "layer": "application/vnd.oci.image.layer.v1.tar+gzip",
    },
    "docker": {
        "manifest": "application/vnd.docker.distribution.manifest.v2+json",
        "index": "application/vnd.docker.distribution.manifest.list.v2+json",
        "config": "application/vnd.docker.container.image.v1+json",
        "layer": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    },
}

REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


@dataclass(frozen=True)
class Blob:
    """One content-addressed blob written into a layout."""

    digest: str
    media_type: str
    size: int
    path: Path

    def descriptor(self) -> dict[str, Any]:
        """Return the OCI descriptor of this blob."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class BuiltImage:
    """An image written as an OCI layout, with every blob it holds."""

    layout: Path
    ref_name: str
    root: Blob
    manifests: list[Blob]
    configs: list[Blob]
    layers: list[Blob]

    def all_blobs(self) -> list[Blob]:
        """Return the root, manifests, configs and layers, without repeats."""
        blobs = [self.root, *self.manifests, *self.configs, *self.layers]
        return list({blob.digest: blob for blob in blobs}.values())


def build_image(
    dest: Path,
    layer_sizes: Sequence[int],
    *,
    media_types: MediaTypes = "oci",
    ref_name: str = "latest",
    seed: int | None = None,
    index_without_media_type: bool = False,
) -> BuiltImage:
    """Build a single-manifest image; without_media_type drops the manifest's field."""
    _check_media_type_choice(media_types, index_without_media_type)
    writer = _LayoutWriter(dest, media_types, seed)
    manifest, config, layers = writer.image(
        "linux/amd64", layer_sizes, with_media_type=not index_without_media_type
    )
    writer.finish(manifest, ref_name)
    return BuiltImage(dest, ref_name, manifest, [manifest], [config], layers)


def build_multiarch_image(
    dest: Path,
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
    layer_sizes: Sequence[int] = (2048, 4096),
    *,
    media_types: MediaTypes = "oci",
    ref_name: str = "latest",
    seed: int | None = None,
    index_without_media_type: bool = False,
) -> BuiltImage:
    """Build an index (or Docker manifest list) with one manifest per platform."""
    _check_media_type_choice(media_types, index_without_media_type)
    writer = _LayoutWriter(dest, media_types, seed)
    manifests: list[Blob] = []
    configs: list[Blob] = []
    layers: list[Blob] = []
    entries: list[dict[str, Any]] = []
    for platform in platforms:
        manifest, config, image_layers = writer.image(platform, layer_sizes)
        manifests.append(manifest)
        configs.append(config)
        layers.extend(image_layers)
        entries.append({**manifest.descriptor(), "platform": _platform(platform)})

    index: dict[str, Any] = {"schemaVersion": 2}
    if not index_without_media_type:
        index["mediaType"] = writer.types["index"]
    index["manifests"] = entries
    root = writer.json_blob(index, writer.types["index"])
    writer.finish(root, ref_name)
    return BuiltImage(dest, ref_name, root, manifests, configs, layers)


class _LayoutWriter:
    """Writes blobs into one OCI layout directory."""

    def __init__(self, dest: Path, media_types: MediaTypes, seed: int | None) -> None:
        self.dest = dest
        self.types = _TYPES[media_types]
        self.blobs = dest / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.random = random.Random(seed) if seed is not None else None
        self.count = 0

    def random_bytes(self, size: int) -> bytes:
        """Return seeded bytes when a seed was given, else os.urandom."""
        if self.random is None:
            return os.urandom(size)
        piece = 64 << 20  # randbytes cannot make a GiB in one call
        rng = self.random
        return b"".join(
            rng.randbytes(min(piece, size - i)) for i in range(0, size, piece)
        )

    def blob(self, data: bytes, media_type: str) -> Blob:
        """Write data under its sha256 name and describe it."""
        hexdigest = hashlib.sha256(data).hexdigest()
        path = self.blobs / hexdigest
        path.write_bytes(data)
        return Blob(f"sha256:{hexdigest}", media_type, len(data), path)

    def json_blob(self, document: dict[str, Any], media_type: str) -> Blob:
        """Write a JSON document as a blob."""
        return self.blob(json.dumps(document, indent=2).encode(), media_type)

    def layer(self, size: int) -> tuple[Blob, str]:
        """Write a gzip'd tar layer with one random file; return it and its diff id."""
        self.count += 1
        tar_bytes = _tar_one_file(
            f"data/file-{self.count}.bin", self.random_bytes(size)
        )
        compressed = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
        diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
        return self.blob(compressed, self.types["layer"]), diff_id

    def image(
        self, platform: str, layer_sizes: Sequence[int], with_media_type: bool = True
    ) -> tuple[Blob, Blob, list[Blob]]:
        """Write the layers, config and manifest of one platform's image."""
        built = [self.layer(size) for size in layer_sizes]
        layers = [blob for blob, _ in built]
        fields = _platform(platform)
        config_doc = {
            "architecture": fields["architecture"],
            "os": fields["os"],
            **({"variant": fields["variant"]} if "variant" in fields else {}),
            "config": {"Cmd": ["/bin/true"]},
            "rootfs": {"type": "layers", "diff_ids": [diff for _, diff in built]},
            "history": [{"created_by": "peerpull tests"} for _ in built],
        }
        config = self.json_blob(config_doc, self.types["config"])

        manifest_doc: dict[str, Any] = {"schemaVersion": 2}
        if with_media_type:
            manifest_doc["mediaType"] = self.types["manifest"]
        manifest_doc["config"] = config.descriptor()
        manifest_doc["layers"] = [blob.descriptor() for blob in layers]
        manifest = self.json_blob(manifest_doc, self.types["manifest"])
        return manifest, config, layers

    def finish(self, root: Blob, ref_name: str) -> None:
        """Write oci-layout and an index.json whose only entry tags the root."""
        (self.dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        entry = {**root.descriptor(), "annotations": {REF_NAME_ANNOTATION: ref_name}}
        index = {
            "schemaVersion": 2,
            "mediaType": _TYPES["oci"]["index"],
            "manifests": [entry],
        }
        (self.dest / "index.json").write_text(json.dumps(index, indent=2))


def _check_media_type_choice(media_types: MediaTypes, without: bool) -> None:
    """Refuse a Docker root without mediaType: schema 2 requires the field."""
    if media_types == "docker" and without:
        raise ValueError("docker schema 2 documents must carry mediaType")


def _platform(platform: str) -> dict[str, str]:
    """Split "os/arch[/variant]" into OCI platform fields."""
    parts = platform.split("/")
    if len(parts) not in (2, 3):
        raise ValueError(f"platform must be os/arch[/variant], got {platform!r}")
    fields = {"os": parts[0], "architecture": parts[1]}
    if len(parts) == 3:
        fields["variant"] = parts[2]
    return fields


def _tar_one_file(name: str, data: bytes) -> bytes:
    """Return an uncompressed tar holding one regular file with fixed metadata."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = 0
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
