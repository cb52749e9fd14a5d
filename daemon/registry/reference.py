"""Repository names, tags, digests and registries, as the distribution spec
defines them (OCI distribution-spec v1.1, "Pulling manifests").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from daemon.values import canonical_registry

NAME_MAX = 255
_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_NAME = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_DIGEST = re.compile(r"([a-z0-9]+(?:[+._-][a-z0-9]+)*):([A-Za-z0-9=_-]+)")
_REGISTRY = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])"
    r"(?::[0-9]{1,5})?"
)
# Registered algorithms and the length of their lowercase hex encoding.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


class ReferenceError(ValueError):
    """A name, tag, digest or registry breaks the grammar; `code` is the OCI code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Reference:
    """What a request asks for: a manifest or blob of `registry/name`."""

    registry: str | None
    name: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """`registry/name`, the subject of `--registry-filters`."""
        return f"{self.registry or ''}/{self.name}"

    @property
    def tag_key(self) -> str:
        """The image name in containerd and the routing key: `registry/name:tag`."""
        return f"{self.repository}:{self.tag}"


def parse_name(value: str) -> str:
    """Validate a repository name."""
    if len(value) > NAME_MAX or not _NAME.fullmatch(value):
        raise ReferenceError("NAME_INVALID", "invalid repository name")
    return value


def parse_digest(value: str) -> str:
    """Validate a digest; registered algorithms must be lowercase hex of full length."""
    match = _DIGEST.fullmatch(value)
    if len(value) > 256 or not match:
        raise ReferenceError("DIGEST_INVALID", "invalid digest")
    algorithm, encoded = match.groups()
    expected = DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise ReferenceError(
            "DIGEST_INVALID", f"digest algorithm {algorithm} unsupported"
        )
    if len(encoded) != expected or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise ReferenceError("DIGEST_INVALID", "invalid digest")
    return value


def is_digest(value: str) -> bool:
    """Tell a digest reference from a tag (a tag cannot hold a colon)."""
    return ":" in value


def parse_tag(value: str) -> str:
    """Validate a tag."""
    if not _TAG.fullmatch(value):
        raise ReferenceError("NAME_INVALID", "invalid tag")
    return value


def parse_registry(value: str | None) -> str | None:
    """Validate and normalise the `ns` query parameter (a registry host)."""
    if value is None:
        return None
    if len(value) > NAME_MAX or not _REGISTRY.fullmatch(value):
        raise ReferenceError("NAME_INVALID", "invalid ns registry")
    return canonical_registry(value.lower())


def normalise_name(registry: str | None, name: str) -> str:
    """Docker Hub's official images live under `library/`."""
    if registry == "docker.io" and "/" not in name:
        return f"library/{name}"
    return name
