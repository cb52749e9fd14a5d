"""InotifyWatcher: the content watcher for hosts where eBPF cannot run.

It watches `<content root>/blobs/sha256`: a name moved or created there is
a commit, a name deleted or moved away is a deletion. Until that directory
exists it watches the deepest existing directory on the way to it and
re-arms as the path appears; when the blob directory appears late, what
is already in it is reported as committed. Unlike the probe it cannot tell
which process acted, so any writer of the directory counts.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import struct
import time
from pathlib import Path

from ebpf.errors import InotifyError
from ebpf.records import (
    BLOB_DIR,
    BlobEvent,
    EventQueue,
    SeenCommitted,
    SeenDeleted,
    digest_of_name,
)

log = logging.getLogger(__name__)

IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

BLOB_MASK = (
    IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_DELETE_SELF | IN_MOVE_SELF
)
PARENT_MASK = IN_CREATE | IN_MOVED_TO | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_BYTES = 64 * 1024


class InotifyWatcher:
    """Blob commits and deletions from inotify on the content root's blob dir.

    `start()` must run inside the event loop that iterates the watcher;
    `close()` ends the iteration.
    """

    kind = "inotify"

    def __init__(self, content_root: Path) -> None:
        self._root = content_root
        self._blobs = content_root / BLOB_DIR
        self._fd = -1
        self._wd = -1
        self._watching: Path | None = None
        self._events = EventQueue()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Open inotify and watch the blob directory (or its nearest ancestor)."""
        self._loop = asyncio.get_running_loop()
        fd = _libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise InotifyError(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        self._fd = fd
        try:
            self._arm(report_existing=False)
        except BaseException:
            os.close(fd)
            self._fd = -1
            raise
        self._loop.add_reader(fd, self._drain)
        log.info("inotify watching", extra={"path": str(self._watching)})

    async def close(self) -> None:
        """Stop watching and end the iteration; safe to call more than once."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(fd)
            os.close(fd)
            self._events.end()

    def __aiter__(self) -> EventQueue:
        return self._events

    def _arm(self, report_existing: bool) -> None:
        """Watch the blob dir if it exists, else the deepest ancestor that does."""
        target = self._blobs
        while not target.is_dir() and target != target.parent:
            target = target.parent
        if target == self._watching:
            return

        mask = BLOB_MASK if target == self._blobs else PARENT_MASK
        wd = _libc().inotify_add_watch(self._fd, os.fsencode(target), mask)
        if wd < 0:
            error = os.strerror(ctypes.get_errno())
            raise InotifyError(f"inotify_add_watch {target}: {error}")
        if self._wd >= 0 and self._wd != wd:
            _libc().inotify_rm_watch(self._fd, self._wd)  # may be gone already
        self._wd, self._watching = wd, target

        if target == self._blobs and report_existing:
            now = time.monotonic_ns()
            for name in sorted(os.listdir(target)):
                digest = digest_of_name(name)
                if digest is not None:
                    self._events.put(SeenCommitted(digest, now))

    def _drain(self) -> None:
        """Read every pending inotify event (called by the loop when readable)."""
        try:
            data = os.read(self._fd, _READ_BYTES)
        except BlockingIOError:
            return
        now = time.monotonic_ns()
        rearm = False

        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            name = raw.split(b"\0", 1)[0].decode("ascii", "replace")

            if mask & IN_Q_OVERFLOW:
                log.warning("inotify queue overflowed; the refresh will catch up")
            elif wd != self._wd or self._watching != self._blobs or mask & _GONE:
                rearm = True  # a parent changed, or the blob dir went away
            else:
                event = _event(mask, name, now)
                if event is not None:
                    self._events.put(event)

        if rearm:
            self._rearm()

    def _rearm(self) -> None:
        """Follow the blob directory appearing or vanishing."""
        self._watching = None if not self._blobs.is_dir() else self._watching
        try:
            self._arm(report_existing=True)
        except InotifyError as exc:
            log.warning("inotify re-arm failed", extra={"error": str(exc)})


def _event(mask: int, name: str, now: int) -> BlobEvent | None:
    """The blob event for one inotify event on the blob dir, if any."""
    digest = digest_of_name(name)
    if digest is None:
        return None
    if mask & (IN_MOVED_TO | IN_CREATE):
        return SeenCommitted(digest, now)
    if mask & (IN_DELETE | IN_MOVED_FROM):
        return SeenDeleted(digest, now)
    return None


_LIBC: ctypes.CDLL | None = None


def _libc() -> ctypes.CDLL:
    """The C library, loaded once, with errno kept for error messages."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC
