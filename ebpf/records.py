"""Decoding of the probe's ring-buffer records into blob events (pure).

A record is the C `struct record_t` of `ebpf.probe`, little-endian:

    offset  size  field
    0       8     ts_ns     bpf_ktime_get_ns() at syscall exit (CLOCK_MONOTONIC)
    8       4     pid       thread group id (the process)
    12      4     tid       thread id
    16      4     kind      1 committed (rename into blobs), 2 deleted (unlink)
    20      4     syscall   1 rename, 2 renameat, 3 renameat2, 4 unlink, 5 unlinkat
    24      4     length    bytes of path, without the NUL
    28      4     (padding)
    32      512   path      NUL-terminated, as the process passed it

The kernel already filtered each record; `to_event` checks the path again,
so a record that is not exactly `<content root>/blobs/sha256/<64 hex>`
never becomes an event.
"""

from __future__ import annotations

import asyncio
import re
import struct
from dataclasses import dataclass
from pathlib import PurePosixPath

from daemon.state.containerd import BlobCommitted, BlobDeleted

PATH_CAPACITY = 512
HEADER = struct.Struct("<QIIIIII")
RECORD_SIZE = HEADER.size + PATH_CAPACITY
KIND_COMMITTED = 1
KIND_DELETED = 2
SYSCALLS = {1: "rename", 2: "renameat", 3: "renameat2", 4: "unlink", 5: "unlinkat"}
BLOB_DIR = "blobs/sha256"
DIGEST_HEX = 64
_HEX = re.compile(r"[0-9a-f]{64}")


class RecordError(ValueError):
    """A ring-buffer record is malformed."""


@dataclass(frozen=True)
class ProbeRecord:
    """One successful rename or unlink the probe saw."""

    ts_ns: int
    pid: int
    tid: int
    kind: int
    syscall: str
    path: str


@dataclass(frozen=True)
class SeenCommitted(BlobCommitted):
    """A blob commit, with the CLOCK_MONOTONIC time (ns) it was seen at."""

    seen_ns: int


@dataclass(frozen=True)
class SeenDeleted(BlobDeleted):
    """A blob deletion, with the CLOCK_MONOTONIC time (ns) it was seen at."""

    seen_ns: int


BlobEvent = SeenCommitted | SeenDeleted


def parse_record(data: bytes) -> ProbeRecord:
    """Decode one record; raises RecordError if it is malformed."""
    if len(data) < HEADER.size:
        raise RecordError(f"record of {len(data)} bytes is shorter than its header")
    ts_ns, pid, tid, kind, syscall, length, _ = HEADER.unpack_from(data)
    if kind not in (KIND_COMMITTED, KIND_DELETED):
        raise RecordError(f"unknown record kind {kind}")
    if syscall not in SYSCALLS:
        raise RecordError(f"unknown syscall number {syscall}")
    raw = data[HEADER.size : HEADER.size + PATH_CAPACITY]
    if length >= len(raw) or raw[length] != 0:
        raise RecordError(f"path length {length} does not match its terminator")

    try:
        path = raw[:length].decode("ascii")
    except UnicodeDecodeError as exc:
        raise RecordError("path is not ASCII") from exc
    return ProbeRecord(ts_ns, pid, tid, kind, SYSCALLS[syscall], path)


def blob_prefix(content_root: PurePosixPath) -> str:
    """The path every blob of this content root starts with, `/` at the end."""
    return f"{str(content_root).rstrip('/')}/{BLOB_DIR}/"


def blob_digest(path: str, content_root: PurePosixPath) -> str | None:
    """`sha256:<hex>` if path is exactly a blob file of the root, else None."""
    prefix = blob_prefix(content_root)
    if not path.startswith(prefix):
        return None
    return digest_of_name(path[len(prefix) :])


def digest_of_name(name: str) -> str | None:
    """`sha256:<name>` if a file name is 64 lowercase hex digits, else None."""
    if len(name) != DIGEST_HEX or not _HEX.fullmatch(name):
        return None
    return f"sha256:{name}"


def to_event(record: ProbeRecord, content_root: PurePosixPath) -> BlobEvent | None:
    """The event a record stands for, or None if its path is not a blob."""
    digest = blob_digest(record.path, content_root)
    if digest is None:
        return None
    if record.kind == KIND_COMMITTED:
        return SeenCommitted(digest, record.ts_ns)
    return SeenDeleted(digest, record.ts_ns)


class EventQueue:
    """The watchers' shared tail: events queued from any source, read with
    `async for`; `end()` makes this and every later iteration stop."""

    _END = object()

    def __init__(self) -> None:
        self._queue: asyncio.Queue[object] = asyncio.Queue()

    def put(self, event: BlobEvent) -> None:
        self._queue.put_nowait(event)

    def end(self) -> None:
        self._queue.put_nowait(self._END)

    def __aiter__(self) -> EventQueue:
        return self

    async def __anext__(self) -> BlobEvent:
        item = await self._queue.get()
        if item is self._END:
            self._queue.put_nowait(self._END)  # later iterations end too
            raise StopAsyncIteration
        assert isinstance(item, SeenCommitted | SeenDeleted)
        return item
