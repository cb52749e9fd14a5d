"""The bcc program that sees blob commits and deletions, and its loader.

The program hooks the enter and exit tracepoints of rename, renameat,
renameat2, unlink and unlinkat. On enter it remembers the path pointer of
calls made by one process (the containerd host pid, compiled in); on exit,
only if the call returned 0, it reads the path and sends it through a ring
buffer when it is exactly `<content root>/blobs/sha256/<64 lowercase hex>`
(the root is written into a map before any record can match). Everything
else is dropped in the kernel. Records that do not fit the ring buffer are
counted in `lost`.

bcc raises bare Exceptions; they become EbpfUnavailable here, cause kept.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from ebpf.errors import EbpfUnavailable
from ebpf.records import PATH_CAPACITY, blob_prefix

RING_PAGES = 64
TRACEFS_DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
TRACEPOINTS = tuple(
    f"sys_{edge}_{call}"
    for call in ("rename", "renameat", "renameat2", "unlink", "unlinkat")
    for edge in ("enter", "exit")
)
_CAP_SYS_ADMIN = 21
_CAP_PERFMON = 38
_CAP_BPF = 39

PROGRAM = r"""
// peerpull blob probe: successful renames into, and unlinks of,
// <content root>/blobs/sha256/<64 hex> by one process (TARGET_PID).
// Compiled by bcc; ebpf/records.py decodes struct record_t.

#define PATH_CAP PATH_CAPACITY
#define KIND_COMMITTED 1
#define KIND_DELETED 2

struct pending_t {
    u64 path;
    u32 kind;
    u32 syscall;
};

struct prefix_t {
    u32 len;
    char path[PATH_CAP];
};

struct record_t {
    u64 ts_ns;
    u32 pid;
    u32 tid;
    u32 kind;
    u32 syscall;
    u32 len;
    u32 pad;
    char path[PATH_CAP];
};

BPF_HASH(pending, u64, struct pending_t, 4096);
BPF_ARRAY(prefix, struct prefix_t, 1);
BPF_PERCPU_ARRAY(lost, u64, 1);
BPF_RINGBUF_OUTPUT(records, RING_PAGES);

// Enter: remember the path pointer of a call by the target process.
static __always_inline int remember(const char *path, u32 kind, u32 syscall)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID)
        return 0;
    struct pending_t call = {.path = (u64)path, .kind = kind, .syscall = syscall};
    pending.update(&id, &call);
    return 0;
}

// Exit: if the call succeeded and its path is a blob of the root, send it.
static __always_inline int settle(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    if ((id >> 32) != TARGET_PID)
        return 0;
    struct pending_t *found = pending.lookup(&id);
    if (!found)
        return 0;
    struct pending_t call = *found;
    pending.delete(&id);
    if (ret != 0)
        return 0;

    int zero = 0;
    struct prefix_t *want = prefix.lookup(&zero);
    if (!want || want->len != PREFIX_LEN)  // not armed yet
        return 0;

    struct record_t *rec = records.ringbuf_reserve(sizeof(struct record_t));
    if (!rec) {
        u64 *dropped = lost.lookup(&zero);
        if (dropped)
            *dropped += 1;
        return 0;
    }
    long n = bpf_probe_read_user_str(rec->path, PATH_CAP, (const void *)call.path);
    if (n != PREFIX_LEN + 65)  // prefix, 64 hex digits, NUL
        goto discard;

    // PREFIX_LEN is a constant, so the verifier walks each loop once.
    for (u32 i = 0; i < PREFIX_LEN; i++) {
        if (rec->path[i] != want->path[i])
            goto discard;
    }
    for (u32 j = PREFIX_LEN; j < PREFIX_LEN + 64; j++) {
        char c = rec->path[j];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            goto discard;
    }

    rec->ts_ns = bpf_ktime_get_ns();
    rec->pid = id >> 32;
    rec->tid = (u32)id;
    rec->kind = call.kind;
    rec->syscall = call.syscall;
    rec->len = n - 1;
    rec->pad = 0;
    records.ringbuf_submit(rec, 0);
    return 0;

discard:
    records.ringbuf_discard(rec, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_rename)
{
    return remember(args->newname, KIND_COMMITTED, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_renameat)
{
    return remember(args->newname, KIND_COMMITTED, 2);
}

TRACEPOINT_PROBE(syscalls, sys_enter_renameat2)
{
    return remember(args->newname, KIND_COMMITTED, 3);
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlink)
{
    return remember(args->pathname, KIND_DELETED, 4);
}

TRACEPOINT_PROBE(syscalls, sys_enter_unlinkat)
{
    return remember(args->pathname, KIND_DELETED, 5);
}

TRACEPOINT_PROBE(syscalls, sys_exit_rename) { return settle(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_renameat) { return settle(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_renameat2) { return settle(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_unlink) { return settle(args->ret); }
TRACEPOINT_PROBE(syscalls, sys_exit_unlinkat) { return settle(args->ret); }
"""

RecordSink = Callable[[bytes], None]


def preflight(pid: int) -> str | None:
    """Why the probe cannot run for `pid` here, or None if it may.

    Cheap checks only, so the fallback can name a reason; loading may still
    fail (compiler or verifier), which `BlobProbe.load` reports.
    """
    if not _has_bpf_capabilities():
        return "needs root or CAP_BPF and CAP_PERFMON"
    if pid <= 0 or not Path(f"/proc/{pid}").is_dir():
        return f"process {pid} does not exist in this pid namespace"
    release = platform.release()
    headers = Path(f"/lib/modules/{release}/build")
    if not headers.exists() and not Path("/sys/kernel/kheaders.tar.xz").exists():
        return f"no kernel headers at {headers} (install or mount them from the host)"
    if _tracepoint_dir() is None:
        return "no syscall tracepoints (tracefs not mounted or kernel without them)"
    return None


class BlobProbe:
    """The loaded program for one content root and one process.

    `load()` compiles and attaches (about a second) and `poll()` blocks up to
    `timeout_ms` delivering records to `sink`; both block, so callers run
    them off the event loop, in one thread. `close()` detaches.
    """

    def __init__(self, content_root: PurePosixPath, pid: int, sink: RecordSink) -> None:
        self._prefix = blob_prefix(content_root).encode()
        self._pid = pid
        self._sink = sink
        self._bpf: Any = None
        if len(self._prefix) > PATH_CAPACITY - 65:
            message = f"content root {content_root} is too long for the probe"
            raise EbpfUnavailable(message)

    def load(self) -> None:
        """Compile, attach and arm the program; raises EbpfUnavailable."""
        reason = preflight(self._pid)
        if reason is not None:
            raise EbpfUnavailable(reason)
        bcc = _import_bcc()

        cflags = [
            f"-DTARGET_PID={self._pid}",
            f"-DPATH_CAPACITY={PATH_CAPACITY}",
            f"-DRING_PAGES={RING_PAGES}",
            f"-DPREFIX_LEN={len(self._prefix)}",
        ]
        try:
            self._bpf = bcc.BPF(text=PROGRAM.encode(), cflags=cflags)
            self._arm()
        except Exception as exc:  # bcc raises plain Exception for everything
            self.close()
            raise EbpfUnavailable(f"cannot load the probe: {_one_line(exc)}") from exc

    def poll(self, timeout_ms: int) -> None:
        """Wait up to `timeout_ms` and hand every record that came to the sink."""
        self._loaded().ring_buffer_poll(timeout_ms)

    def lost(self) -> int:
        """Records dropped so far because the ring buffer was full."""
        table = self._loaded()[b"lost"]
        return int(sum(table.getvalue(table.Key(0))))

    def program_fds(self) -> list[int]:
        """File descriptors of the loaded programs (for run-time statistics)."""
        return [int(function.fd) for function in self._loaded().funcs.values()]

    def close(self) -> None:
        """Detach and free the program; safe to call more than once."""
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            bpf.cleanup()

    def _arm(self) -> None:
        """Write the blob path prefix into the map and open the ring buffer."""
        bpf = self._loaded()
        table = bpf[b"prefix"]
        value = table.Leaf()
        value.len = len(self._prefix)
        value.path = self._prefix  # a c_char array field takes bytes
        table[table.Key(0)] = value

        def deliver(_ctx: Any, data: Any, size: int) -> int:
            self._sink(ctypes.string_at(data, size))
            return 0

        bpf[b"records"].open_ring_buffer(deliver)

    def _loaded(self) -> Any:
        if self._bpf is None:
            raise EbpfUnavailable("the probe is not loaded")
        return self._bpf


def _import_bcc() -> Any:
    """bcc, through the venv path shim if needed; EbpfUnavailable if absent."""
    from ebpf._bcc_path import import_bcc

    try:
        return import_bcc()
    except ImportError as exc:
        raise EbpfUnavailable(f"bcc is not importable: {exc}") from exc
    except OSError as exc:  # libbcc.so missing or broken
        raise EbpfUnavailable(f"libbcc cannot be loaded: {exc}") from exc


def _has_bpf_capabilities() -> bool:
    """Whether the effective capabilities allow loading tracing programs."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            caps = int(line.split()[1], 16)
            if caps >> _CAP_SYS_ADMIN & 1:
                return True
            return bool(caps >> _CAP_BPF & 1 and caps >> _CAP_PERFMON & 1)
    return False


def _tracepoint_dir() -> Path | None:
    """The tracefs events directory that has every tracepoint we need."""
    for base in TRACEFS_DIRS:
        events = base / "events" / "syscalls"
        if all((events / name).is_dir() for name in TRACEPOINTS):
            return events
    return None


def _one_line(exc: BaseException) -> str:
    """An exception's text on one line, capped (compiler output is long)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]
