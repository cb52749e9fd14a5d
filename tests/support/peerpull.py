"""Run `peerpull registry` as a real subprocess for integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tests.support.upstream import free_port


class PeerpullProcess:
    """One `peerpull registry` daemon on `host`, talking to one containerd."""

    def __init__(
        self,
        base_dir: Path,
        containerd_socket: Path,
        content_path: Path,
        host: str = "127.0.0.1",
        extra_args: tuple[str, ...] = (),
        namespace: str = "k8s.io",
        transport_port: int | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.host = host
        self.port = free_port(host)
        self.metrics_port = free_port(host)
        self.router_port = free_port(host)
        # Peers reach each other on one cluster-wide transport port.
        self.transport_port = transport_port or free_port(host)
        self.log_path = base_dir / "peerpull.log"
        self._args = [
            "registry",
            f"--registry-addr={host}:{self.port}",
            f"--metrics-addr={host}:{self.metrics_port}",
            f"--router-addr={host}:{self.router_port}",
            f"--transport-addr={host}:{self.transport_port}",
            f"--containerd-sock={containerd_socket}",
            f"--containerd-namespace={namespace}",
            f"--containerd-content-path={content_path}",
            f"--data-dir={base_dir / 'data'}",
            "--log-level=DEBUG",
            *extra_args,
        ]
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 20, wait_ready: bool = True) -> None:
        """Start the daemon and wait until `/readyz` answers (200 unless
        `wait_ready` is False, then any answer)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "daemon", *self._args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"peerpull exited early:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except urllib.error.HTTPError:
                if not wait_ready:
                    return
                time.sleep(0.05)
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"peerpull not ready in {timeout_s}s:\n{self.log_text()}")

    def stop(self, timeout_s: float = 15) -> int | None:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
                raise
        return process.returncode

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def metrics(self) -> str:
        url = f"http://{self.host}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())

    @property
    def router_multiaddr(self) -> str:
        """This node's router address, without `/p2p/<id>` (learned on dial)."""
        return f"/ip4/{self.host}/tcp/{self.router_port}"

    def resolve(self, key: str) -> list[str]:
        """Peer hosts this node's router resolves `key` to (debug endpoint)."""
        query = urllib.parse.urlencode({"key": key})
        url = f"http://{self.host}:{self.metrics_port}/debug/resolve?{query}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return [peer["host"] for peer in json.loads(reply.read())["peers"]]

    def ready(self) -> bool:
        """Whether `/readyz` answers 200 now."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
