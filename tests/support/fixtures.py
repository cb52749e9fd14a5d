"""pytest fixtures for a private containerd (loaded from tests/conftest.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.containerd import ContainerdProcess


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[ContainerdProcess]:
    """A started private containerd 1.6 under tmp_path, stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("a private containerd needs root")
    missing = [tool for tool in ("containerd", "ctr") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{' and '.join(missing)} not installed")

    process = ContainerdProcess(tmp_path / "containerd")
    process.start()
    try:
        yield process
    finally:
        process.stop()
