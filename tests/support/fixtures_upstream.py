"""Pytest fixtures: a real upstream registry and a builder of test images."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.images import BuiltImage, build_image, build_multiarch_image
from tests.support.upstream import UpstreamRegistry


class ImageFactory:
    """Builds images, each in its own layout directory under one base."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.count = 0

    def __call__(
        self,
        layer_sizes: Sequence[int] = (2048, 4096),
        *,
        platforms: Sequence[str] | None = None,
        **options: Any,
    ) -> BuiltImage:
        """Build a single image, or a multi-arch one when platforms are given."""
        self.count += 1
        dest = self.base / f"image-{self.count}"
        if platforms is None:
            return build_image(dest, layer_sizes, **options)
        return build_multiarch_image(dest, platforms, layer_sizes, **options)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[UpstreamRegistry]:
    """Yield a started docker-registry on 127.0.0.1; stop it afterwards."""
    for tool in ("docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt: docker-registry, skopeo)")
    registry = UpstreamRegistry(tmp_path / "upstream")
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def image_factory(tmp_path: Path) -> ImageFactory:
    """Return a callable that builds test images under tmp_path."""
    return ImageFactory(tmp_path / "images")
