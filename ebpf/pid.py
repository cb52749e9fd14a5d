"""Find the host pid of the process serving containerd's socket.

The kernel records who listens on a unix socket; connecting and asking for
SO_PEERCRED returns that process's pid, translated into our pid namespace.
The probe needs the host pid, so the daemon must share the host's pid
namespace (`hostPID: true`); otherwise the kernel answers 0.
"""

from __future__ import annotations

import socket
import struct

from ebpf.errors import WatcherError

_UCRED = struct.Struct("3i")  # pid, uid, gid


class PidUnknown(WatcherError):
    """The pid behind a socket cannot be found."""


def socket_owner_pid(socket_path: str, timeout_s: float = 2.0) -> int:
    """The pid of the process listening on a unix socket; raises PidUnknown."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout_s)
        try:
            conn.connect(socket_path)
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        except OSError as exc:
            message = f"cannot ask {socket_path} for its owner: {exc.strerror or exc}"
            raise PidUnknown(message) from exc

    pid: int = _UCRED.unpack(raw)[0]
    if pid <= 0:
        message = f"the owner of {socket_path} is outside our pid namespace"
        raise PidUnknown(message)
    return pid
