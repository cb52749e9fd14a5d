"""HTTP `Range` for blobs (RFC 9110 section 14): one byte range only."""

from __future__ import annotations

import re
from dataclasses import dataclass

# spaces may surround the numbers (RFC 9110 allows OWS), never split them
_SINGLE = re.compile(r"bytes=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*")
_MAX_DIGITS = 19  # fits in a signed 64-bit offset


class RangeNotSatisfiable(ValueError):
    """The range is malformed, multiple, or lies outside the blob: answer 416."""


@dataclass(frozen=True)
class ByteRange:
    """Inclusive byte positions `first..last` of a blob of `size` bytes."""

    first: int
    last: int
    size: int

    @property
    def length(self) -> int:
        return self.last - self.first + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.first}-{self.last}/{self.size}"


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Parse a Range header against a blob size; None means the whole blob.

    Supports `a-b`, `a-` and `-n`. A last position past the end is cut to
    the end; a first position at or past the end is not satisfiable.
    """
    if header is None:
        return None
    match = _SINGLE.fullmatch(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        raise RangeNotSatisfiable(f"unsupported range {header[:64]!r}")
    first_text, last_text = match.groups()
    if len(first_text) > _MAX_DIGITS or len(last_text) > _MAX_DIGITS:
        raise RangeNotSatisfiable("range positions too large")
    if not first_text:
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return ByteRange(max(0, size - suffix), size - 1, size)
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last < first:
        raise RangeNotSatisfiable("range ends before it starts")
    if first >= size:
        raise RangeNotSatisfiable("range starts past the end")
    return ByteRange(first, min(last, size - 1), size)
