"""Run the real upstream `docker-registry` (distribution 2.8) for tests.

The registry listens on 127.0.0.1 only, keeps its blobs in a filesystem store
under the given base directory, has no auth and allows deletes. Images get in
with `skopeo copy --preserve-digests`, which keeps the built digests (see
`tests.support.images`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support.images import BuiltImage

MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    ]
)

_CONFIG = """\
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: {host}:{port}
"""


class UpstreamError(Exception):
    """The upstream registry did not start, or a push went wrong."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on host that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class UpstreamRegistry:
    """A docker-registry process on host:port with its store under base_dir."""

    def __init__(self, base_dir: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.base_dir = base_dir
        self.root = base_dir / "storage"
        self.port = port or free_port(host)
        self.host = f"{host}:{self.port}"
        self.url = f"http://{self.host}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 15) -> None:
        """Start the registry and wait until GET /v2/ answers 200."""
        binary = shutil.which("docker-registry")
        if binary is None:
            raise UpstreamError("docker-registry is not installed")
        self.root.mkdir(parents=True, exist_ok=True)
        host, port = self.host.rsplit(":", 1)
        config = self.base_dir / "registry.yml"
        config.write_text(_CONFIG.format(root=self.root, host=host, port=port))
        log = (self.base_dir / "registry.log").open("wb")
        with log:
            self._process = subprocess.Popen(
                [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )

        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float) -> None:
        """Poll GET /v2/ until 200; fail if the process exits or time runs out."""
        assert self._process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise UpstreamError(f"docker-registry exited: {self.log_text()}")
            if self._ready():
                return
            time.sleep(0.05)
        raise UpstreamError(f"docker-registry not ready within {timeout_s}s")

    def stop(self) -> None:
        """Stop the registry: SIGTERM, then SIGKILL after five seconds."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def pid(self) -> int | None:
        """The registry's process id while it runs."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def log_text(self) -> str:
        """Return what the registry has logged so far."""
        path = self.base_dir / "registry.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def push(self, image: BuiltImage, repo: str, tag: str) -> str:
        """Push an image with skopeo, check its digest; return HOST/repo:tag."""
        skopeo = shutil.which("skopeo")
        if skopeo is None:
            raise UpstreamError("skopeo is not installed")
        reference = f"{self.host}/{repo}:{tag}"
        with tempfile.TemporaryDirectory(dir=self.base_dir) as scratch:
            source = _skopeo_source(image, Path(scratch))
            command = [skopeo, "--insecure-policy", "copy", "--quiet"]
            command += ["--preserve-digests", "--dest-tls-verify=false"]
            if image.root not in image.manifests:
                command.append("--all")
            command += [source, f"docker://{reference}"]
            result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise UpstreamError(f"skopeo copy failed: {result.stderr.strip()}")

        pushed = self.manifest_digest(repo, tag)
        if pushed != image.root.digest:
            raise AssertionError(f"pushed {pushed}, built {image.root.digest}")
        return reference

    def manifest_digest(self, repo: str, reference: str) -> str:
        """Fetch a manifest and return the sha256 digest of its bytes."""
        request = urllib.request.Request(
            f"{self.url}/v2/{repo}/manifests/{reference}",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            body: bytes = response.read()
        return "sha256:" + hashlib.sha256(body).hexdigest()

    def _ready(self) -> bool:
        """Say whether GET /v2/ answers 200 yet."""
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def __enter__(self) -> UpstreamRegistry:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _skopeo_source(image: BuiltImage, scratch: Path) -> str:
    """Return a skopeo source that keeps the image's media types and digests.

    skopeo 1.9 reads only OCI media types from an OCI layout's index.json, so
    Docker images go through a `dir:` view of the same blobs instead.
    """
    if not image.root.media_type.startswith("application/vnd.docker."):
        return f"oci:{image.layout}:{image.ref_name}"

    view = scratch / "dir"
    view.mkdir()
    (view / "version").write_text("Directory Transport Version: 1.1\n")
    _link(image.root.path, view / "manifest.json")
    for manifest in image.manifests:
        if manifest != image.root:
            _link(manifest.path, view / f"{manifest.path.name}.manifest.json")
    for blob in [*image.configs, *image.layers]:
        _link(blob.path, view / blob.path.name)
    return f"dir:{view}"


def _link(source: Path, target: Path) -> None:
    """Hard-link source to target, copying when they are on different devices."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
