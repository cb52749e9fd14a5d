"""The ContentWatcher seam, the eBPF watcher, and the choice between watchers.

A content watcher is an async iterator of blob events (`SeenCommitted`,
`SeenDeleted`: containerd's `BlobCommitted`/`BlobDeleted` plus the time
they were seen). `start()` begins watching, `close()` ends the iteration.
`open_watcher` starts the one asked for; `auto` tries eBPF and falls back
to inotify with a one-line reason.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Literal, Protocol

from daemon.observability.metrics import (
    CONTENT_WATCHER_INFO,
    EBPF_EVENTS,
    EBPF_LOST_EVENTS,
)
from ebpf.errors import EbpfUnavailable
from ebpf.inotify import InotifyWatcher
from ebpf.probe import BlobProbe
from ebpf.records import (
    KIND_COMMITTED,
    BlobEvent,
    EventQueue,
    RecordError,
    parse_record,
    to_event,
)

log = logging.getLogger(__name__)

WatcherKind = Literal["ebpf", "inotify", "auto"]
WATCHER_KINDS: tuple[WatcherKind, ...] = ("ebpf", "inotify", "auto")
POLL_MS = 500  # ring_buffer_poll wakes at once on data; this bounds idle wakeups
LOST_CHECK_S = 1.0


class ContentWatcher(Protocol):
    """Blob commits and deletions in containerd's content store, as they happen."""

    kind: str

    async def start(self) -> None:
        """Begin watching; raises a WatcherError if this watcher cannot run."""

    async def close(self) -> None:
        """Stop watching and end the iteration; safe to call more than once."""

    def __aiter__(self) -> AsyncIterator[BlobEvent]:
        """Iterate the events until `close()`."""


class EbpfWatcher:
    """Blob events from the bcc probe on one containerd process.

    The probe is loaded in a worker thread (about a second) and polled by a
    daemon thread that hands events to the loop `start()` ran in.
    """

    kind = "ebpf"

    def __init__(self, content_root: Path, pid: int) -> None:
        self._root = PurePosixPath(content_root)
        self._pid = pid
        self._events = EventQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probe: BlobProbe | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lost = 0

    async def start(self) -> None:
        """Compile and attach the probe, then start polling it."""
        self._loop = asyncio.get_running_loop()
        probe = BlobProbe(self._root, self._pid, self._on_record)
        await asyncio.to_thread(probe.load)
        self._probe = probe
        self._thread = threading.Thread(
            target=self._pump, name="peerpull-ebpf", daemon=True
        )
        self._thread.start()
        log.info("ebpf probe attached", extra={"pid": self._pid})

    async def close(self) -> None:
        """Stop polling, detach the probe and end the iteration."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        await asyncio.to_thread(thread.join)
        if self._probe is not None:
            self._probe.close()
        self._events.end()

    def thread_cpu_s(self) -> float:
        """CPU seconds the polling thread has used (0 once it has stopped)."""
        thread = self._thread
        if thread is None or thread.ident is None:
            return 0.0
        try:
            clock = time.pthread_getcpuclockid(thread.ident)
            return time.clock_gettime(clock)
        except (OSError, ProcessLookupError):
            return 0.0

    def program_fds(self) -> list[int]:
        """File descriptors of the loaded BPF programs (for run-time stats)."""
        return self._probe.program_fds() if self._probe is not None else []

    def __aiter__(self) -> EventQueue:
        return self._events

    # TODO(probe CPU over 1% of a pull): measured 1.15% (0.24% in the kernel);
    # the Python callback costs about 300 us per event, batch its decoding.
    def _pump(self) -> None:
        """Poll the ring buffer until told to stop (the polling thread)."""
        assert self._probe is not None
        checked = time.monotonic()
        while not self._stop.is_set():
            self._probe.poll(POLL_MS)
            if time.monotonic() - checked >= LOST_CHECK_S:
                self._count_lost()
                checked = time.monotonic()
        self._count_lost()

    def _count_lost(self) -> None:
        assert self._probe is not None
        lost = self._probe.lost()
        if lost > self._lost:
            EBPF_LOST_EVENTS.inc(lost - self._lost)
            log.warning("ebpf records lost", extra={"lost": lost - self._lost})
            self._lost = lost

    def _on_record(self, data: bytes) -> None:
        """Decode one record and queue its event (in the polling thread)."""
        try:
            record = parse_record(data)
        except RecordError as exc:
            log.warning("ebpf record malformed", extra={"error": str(exc)})
            return
        event = to_event(record, self._root)
        if event is None or self._loop is None:
            return
        kind = "committed" if record.kind == KIND_COMMITTED else "deleted"
        EBPF_EVENTS.labels(kind=kind).inc()
        self._loop.call_soon_threadsafe(self._events.put, event)


async def open_watcher(
    kind: WatcherKind, content_root: Path, pid: int | None
) -> tuple[ContentWatcher, str]:
    """Start the watcher of `kind` and say why it is the one running.

    `auto` tries eBPF and falls back to inotify, the reason naming what
    eBPF lacked; `ebpf` raises EbpfUnavailable instead of falling back.
    """
    if kind not in WATCHER_KINDS:
        raise ValueError(f"content watcher must be one of {WATCHER_KINDS}: {kind!r}")

    if kind == "inotify":
        reason = "inotify asked for"
    else:
        try:
            if pid is None:
                raise EbpfUnavailable("containerd's pid is unknown")
            ebpf = EbpfWatcher(content_root, pid)
            await ebpf.start()
            return _active(ebpf), f"ebpf probe attached to pid {pid}"
        except EbpfUnavailable as exc:
            if kind == "ebpf":
                raise
            reason = f"ebpf unavailable, using inotify: {exc}"

    inotify = InotifyWatcher(content_root)
    await inotify.start()
    return _active(inotify), reason


def _active(watcher: ContentWatcher) -> ContentWatcher:
    """Publish which watcher runs."""
    for kind in ("ebpf", "inotify"):
        CONTENT_WATCHER_INFO.labels(kind=kind).set(1 if kind == watcher.kind else 0)
    return watcher


__all__ = [
    "ContentWatcher",
    "EbpfWatcher",
    "InotifyWatcher",
    "WatcherKind",
    "open_watcher",
]
