"""Image names and walking an image's content: index → manifests → blobs.

An image name in containerd is `registry/repo:tag`, `registry/repo@digest`
or `registry/repo:tag@digest`. Only names whose first component is a
registry host can be mirrored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from daemon.registry.media import INDEX_TYPES, MANIFEST_LIMIT_BYTES, manifest_media_type
from daemon.state.containerd import Descriptor
from daemon.state.store import ContentStore, read_small
from daemon.values import canonical_registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageName:
    """A parsed image name; `tag` is None for digest-only names."""

    registry: str
    repository: str
    tag: str | None

    @property
    def tag_key(self) -> str | None:
        """The routing key of the tag, `registry/repo:tag`."""
        return (
            None
            if self.tag is None
            else f"{self.registry}/{self.repository}:{self.tag}"
        )


def parse_image_name(name: str) -> ImageName | None:
    """Parse a containerd image name; None when it names no registry."""
    base = name.split("@", 1)[0]
    first, slash, rest = base.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        return None
    repository, tag = rest, None
    last_colon = rest.rfind(":")
    if last_colon > rest.rfind("/"):
        repository, tag = rest[:last_colon], rest[last_colon + 1 :]
    if not repository:
        return None
    return ImageName(canonical_registry(first.lower()), repository, tag)


@dataclass
class ImageContent:
    """The local digests of one image, and its tag key if any."""

    digests: set[str] = field(default_factory=set)
    tag_key: str | None = None


async def walk_image(store: ContentStore, target: Descriptor) -> set[str]:
    """Every local digest reachable from `target`; content not held is skipped.

    A multi-arch index lists every platform but a node holds only its own,
    so a manifest or blob that is not local is left out (not an error).
    """
    found: set[str] = set()
    pending = [target]
    while pending:
        descriptor = pending.pop()
        if descriptor.digest in found:
            continue
        size = await store.size(descriptor.digest)
        if size is None:
            continue
        found.add(descriptor.digest)
        if descriptor.media_type and manifest_media_type_of(descriptor) is None:
            continue  # a config or layer: nothing below it
        content = await read_small(store, descriptor.digest, MANIFEST_LIMIT_BYTES)
        if content is None:
            continue
        pending.extend(_children(content))
    return found


def manifest_media_type_of(descriptor: Descriptor) -> str | None:
    """The descriptor's type if it names a manifest or index."""
    media = descriptor.media_type
    if (
        media in INDEX_TYPES
        or media.endswith("manifest.v1+json")
        or media.endswith("manifest.v2+json")
    ):
        return media
    return None


def _children(content: bytes) -> list[Descriptor]:
    """Descriptors an index or manifest points at; [] for anything else."""
    media_type = manifest_media_type(content)
    if media_type is None:
        return []
    document = json.loads(content)
    if media_type in INDEX_TYPES:
        entries = document.get("manifests") or []
        default = "application/vnd.oci.image.manifest.v1+json"
    else:
        entries = [document.get("config"), *(document.get("layers") or [])]
        default = ""
    children = []
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            media = entry.get("mediaType") or default
            children.append(
                Descriptor(str(media), entry["digest"], int(entry.get("size", 0)))
            )
    return children
