"""A private containerd 1.6 for tests: own root, state and sockets, no CRI.

Nothing it starts touches the system containerd: every address lives under a
directory the test owns, metrics are off and the CRI plugin (which would open a
TCP streaming port) is disabled.

containerd's garbage collector deletes blobs that nothing references: once
100 ms after boot, and soon after any delete. `start()` therefore returns only
after that first collection, and `ingest()` marks blobs as GC roots, so that a
test's loose blobs stay until the test removes them.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

# sun_path holds 108 bytes; leave room for the ".ttrpc" suffix.
_MAX_SOCKET_PATH = 96
_GC_ROOT_LABEL = "containerd.io/gc.root"
_GC_DONE_LOG = "garbage collected"
_CONFIG = """\
version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "{grpc}"

[ttrpc]
  address = "{ttrpc}"

[debug]
  address = "{debug}"
  level = "debug"

[metrics]
  address = ""
"""


class ContainerdError(RuntimeError):
    """The private containerd failed to start or a ctr command failed."""


class ContainerdProcess:
    """One private containerd daemon and the `ctr` commands that talk to it.

    `config_path` is a registry hosts directory (`certs.d` layout); `pull`
    uses it when no other is given.
    """

    def __init__(
        self,
        base_dir: Path,
        namespace: str = "k8s.io",
        config_path: Path | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.namespace = namespace
        self.hosts_dir = config_path
        self.root = base_dir / "root"
        self.state = base_dir / "state"
        self.content_path = self.root / "io.containerd.content.v1.content"
        self.log_path = base_dir / "containerd.log"
        self.config_file = base_dir / "config.toml"
        self._socket_dir = self._pick_socket_dir()
        self.socket = self._socket_dir / "containerd.sock"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 20) -> None:
        """Start containerd; return once it answers and its startup GC is done."""
        for directory in (self.root, self.state, self._socket_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self._config())

        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                ["containerd", "--config", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        try:
            deadline = time.monotonic() + timeout_s
            self._wait_ready(deadline)
            self._wait_startup_gc(deadline)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop containerd (SIGTERM, then SIGKILL) and remove its sockets."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

        if self._socket_dir != self.base_dir:
            shutil.rmtree(self._socket_dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        """Whether the daemon process is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The daemon's process id while it runs."""
        return self._process.pid if self.running and self._process else None

    def ctr(
        self, *args: str, check: bool = True, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `ctr -a SOCKET -n NAMESPACE ARGS...` and return its output."""
        command = ["ctr", "-a", str(self.socket), "-n", namespace or self.namespace]
        command += args
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=300, check=False
        )
        if check and result.returncode != 0:
            raise ContainerdError(
                f"{' '.join(command)} exited {result.returncode}: "
                f"{result.stderr.strip()}"
            )
        return result

    def ingest(self, data: bytes, ref: str, digest: str, gc_root: bool = True) -> None:
        """Put raw bytes into the content store with `ctr content ingest`.

        With `gc_root` the blob is labelled so the garbage collector keeps it.
        """
        command = ["ctr", "-a", str(self.socket), "-n", self.namespace]
        command += ["content", "ingest", "--expected-digest", digest]
        command += ["--expected-size", str(len(data)), ref]
        result = subprocess.run(command, input=data, capture_output=True, timeout=60)
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            raise ContainerdError(f"ctr content ingest {ref} failed: {stderr}")

        if gc_root:
            self.ctr("content", "label", digest, f"{_GC_ROOT_LABEL}={time.time_ns()}")

    def pull(
        self,
        ref: str,
        plain_http: bool = True,
        hosts_dir: Path | None = None,
        platform: str | None = None,
        all_platforms: bool = False,
    ) -> None:
        """Pull an image with `ctr images pull` (through a hosts dir if given)."""
        args = ["images", "pull"]
        if plain_http:
            args.append("--plain-http")
        hosts = hosts_dir if hosts_dir is not None else self.hosts_dir
        if hosts is not None:
            args += ["--hosts-dir", str(hosts)]
        if platform is not None:
            args += ["--platform", platform]
        if all_platforms:
            args.append("--all-platforms")
        self.ctr(*args, ref)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of containerd's log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _pick_socket_dir(self) -> Path:
        """Use base_dir for sockets unless its path is too long for sun_path."""
        if len(str(self.base_dir / "containerd.sock.ttrpc")) <= _MAX_SOCKET_PATH:
            return self.base_dir
        return Path(tempfile.mkdtemp(prefix="ctrd-"))

    def _config(self) -> str:
        """containerd's config.toml with every address under our directories."""
        return _CONFIG.format(
            root=self.root,
            state=self.state,
            grpc=self.socket,
            ttrpc=f"{self.socket}.ttrpc",
            debug=self._socket_dir / "debug.sock",
        )

    def _wait_ready(self, deadline: float) -> None:
        """Poll until containerd answers `ctr version`, or fail with its log."""
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise ContainerdError(f"containerd exited:\n{self.log_tail()}")

            if os.path.exists(self.socket):
                result = self.ctr("version", check=False)
                if result.returncode == 0:
                    return
            time.sleep(0.05)

        message = "containerd did not answer in time"
        raise ContainerdError(f"{message}:\n{self.log_tail()}")

    def _wait_startup_gc(self, deadline: float) -> None:
        """Wait for the first garbage collection, logged at debug level."""
        while time.monotonic() < deadline:
            if _GC_DONE_LOG in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.02)

        message = "containerd ran no startup garbage collection in time"
        raise ContainerdError(f"{message}:\n{self.log_tail()}")
