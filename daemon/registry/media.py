"""Manifest media types and how to recognise a manifest from its bytes."""

from __future__ import annotations

import json

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MANIFEST_TYPES = frozenset({OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_LIMIT_BYTES = 4 * 1024 * 1024  # the distribution spec's advised maximum


def manifest_media_type(content: bytes) -> str | None:
    """The media type of a manifest or index, or None if `content` is neither.

    Uses the document's own `mediaType`; an OCI document may omit it, and is
    then an index when it lists `manifests`, a manifest when it has `config`.
    """
    try:
        document = json.loads(content)
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        return None
    media_type = document.get("mediaType")
    if media_type is None:
        if isinstance(document.get("manifests"), list):
            return OCI_INDEX
        if isinstance(document.get("config"), dict):
            return OCI_MANIFEST
        return None
    return media_type if media_type in MANIFEST_TYPES else None
