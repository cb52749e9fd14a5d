"""MemoryStore: an in-memory ContentStore for tests of the components above it."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

from daemon.state.containerd import Descriptor


class MemoryBlob:
    """A blob held in memory."""

    def __init__(self, digest: str, content: bytes) -> None:
        self.digest = digest
        self.size = len(content)
        self._content = content

    def fileno(self) -> int | None:
        return None

    async def chunks(
        self, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        end = self.size if length is None else offset + length
        for start in range(offset, end, 65536):
            yield self._content[start : min(start + 65536, end)]

    async def close(self) -> None:
        return None


class MemoryStore:
    """Blobs and image names kept in dicts; `add_*` fills it."""

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._images: dict[str, Descriptor] = {}

    def add_blob(self, content: bytes) -> str:
        """Store bytes; returns their sha256 digest."""
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        self._blobs[digest] = content
        return digest

    def add_image(self, name: str, media_type: str, manifest: bytes) -> Descriptor:
        """Store a manifest and name it `registry/repo:tag`."""
        target = Descriptor(media_type, self.add_blob(manifest), len(manifest))
        self._images[name] = target
        return target

    def remove_blob(self, digest: str) -> None:
        """Forget a blob, as containerd's garbage collector would."""
        self._blobs.pop(digest, None)

    async def size(self, digest: str) -> int | None:
        content = self._blobs.get(digest)
        return None if content is None else len(content)

    async def open(self, digest: str) -> MemoryBlob | None:
        content = self._blobs.get(digest)
        return None if content is None else MemoryBlob(digest, content)

    async def resolve(self, name: str) -> Descriptor | None:
        return self._images.get(name)
