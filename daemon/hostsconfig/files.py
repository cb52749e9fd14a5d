"""Write peerpull's hosts.toml files into containerd's certs.d, and undo it.

Layout of the config directory while peerpull is configured:

    <config>/_backup/...        everything that was there before, moved once
    <config>/<host>/hosts.toml  written by peerpull, one directory per registry

Every step is a rename within the config directory, so a crash at any point
loses nothing: the backup is staged under `.peerpull-backing-up` and renamed to
`_backup` only when complete; a restore renames `_backup` to a clearing name,
deletes the rest, then to a restoring name while it moves entries back. Both
resume on the next run. Each registry directory is built under a temporary
name and renamed into place, so containerd never reads a half-written file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from daemon.hostsconfig.render import render_hosts_toml
from daemon.hostsconfig.urls import (
    DEFAULT_REGISTRY,
    ConfigurationError,
    normalise_registries,
    normalise_targets,
    registry_directory,
)

BACKUP_DIR = "_backup"
HOSTS_FILE = "hosts.toml"

_BACKING_UP = ".peerpull-backing-up"
_CLEARING = ".peerpull-restore-clearing"
_RESTORING = ".peerpull-restore-moving"
_TMP_PREFIX = ".peerpull-tmp-"
_OLD_PREFIX = ".peerpull-old-"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MirrorConfiguration:
    """What `peerpull configuration` writes; inputs are validated and normalised."""

    config_path: Path
    mirror_targets: tuple[str, ...]
    mirrored_registries: tuple[str, ...] = ()
    resolve_tags: bool = True
    prepend_existing: bool = False

    def __post_init__(self) -> None:
        targets = normalise_targets(self.mirror_targets)
        if not targets:
            raise ConfigurationError(
                "--mirror-targets: at least one target is required"
            )
        registries = normalise_registries(self.mirrored_registries)
        object.__setattr__(self, "config_path", Path(self.config_path))
        object.__setattr__(self, "mirror_targets", targets)
        object.__setattr__(self, "mirrored_registries", registries)


def write_configuration(cfg: MirrorConfiguration) -> list[Path]:
    """Back up the config dir once, then write one hosts.toml per registry."""
    config = cfg.config_path
    config.mkdir(parents=True, exist_ok=True)
    with _locked(config):
        if (config / _CLEARING).is_dir() or (config / _RESTORING).is_dir():
            _restore(config)

        # render everything before touching a file, so a bad input changes nothing
        planned = [
            (registry_directory(registry), _render(cfg, config, registry))
            for registry in cfg.mirrored_registries or (DEFAULT_REGISTRY,)
        ]

        backup = _ensure_backup(config)
        written = []
        for directory, text in planned:
            certs = backup / directory if cfg.prepend_existing else None
            _install(config, directory, text, certs)
            written.append(config / directory / HOSTS_FILE)
        _remove_all_but(config, {BACKUP_DIR, *(name for name, _ in planned)})
        _fsync(config)

    logger.info(
        "mirror configuration written",
        extra={"path": str(config), "files": [str(path) for path in written]},
    )
    return written


def restore_backup(config_path: Path) -> bool:
    """Put the backed-up config dir back exactly; False when there was no backup."""
    if not config_path.is_dir():
        return False
    with _locked(config_path):
        restored = _restore(config_path)
    if restored:
        logger.info("mirror configuration restored", extra={"path": str(config_path)})
    return restored


def _render(cfg: MirrorConfiguration, config: Path, registry: str) -> str:
    """Render one registry's hosts.toml, reading its original when prepending."""
    original = _original_dir(config, registry_directory(registry)) / HOSTS_FILE
    if cfg.prepend_existing and original.is_file():
        try:
            existing = original.read_text(encoding="utf-8")
            return render_hosts_toml(
                registry, cfg.mirror_targets, cfg.resolve_tags, existing
            )
        except (ConfigurationError, UnicodeDecodeError) as error:
            raise ConfigurationError(
                f"--prepend-existing: {original}: {error}"
            ) from error
    return render_hosts_toml(registry, cfg.mirror_targets, cfg.resolve_tags)


def _original_dir(config: Path, directory: str) -> Path:
    """Return where the original content of a registry directory lives now."""
    if (config / BACKUP_DIR).is_dir():
        return config / BACKUP_DIR / directory
    staged = config / _BACKING_UP / directory
    return staged if os.path.lexists(staged) else config / directory


def _ensure_backup(config: Path) -> Path:
    """Move everything in config into `_backup`, unless a backup already exists."""
    backup = config / BACKUP_DIR
    if backup.is_dir():
        return backup

    staging = config / _BACKING_UP
    staging.mkdir(exist_ok=True)
    for entry in config.iterdir():
        if entry.name != _BACKING_UP:
            entry.rename(staging / entry.name)
    _fsync(staging)
    staging.rename(backup)
    _fsync(config)
    return backup


def _restore(config: Path) -> bool:
    """Run or resume a restore; see the module docstring for the stages."""
    clearing, restoring = config / _CLEARING, config / _RESTORING
    if (config / BACKUP_DIR).is_dir():
        (config / BACKUP_DIR).rename(clearing)
    elif (config / _BACKING_UP).is_dir():
        # a backup was cut short: nothing of ours was written, only move back
        (config / _BACKING_UP).rename(restoring)

    if clearing.is_dir():
        _remove_all_but(config, {_CLEARING})
        clearing.rename(restoring)
    if not restoring.is_dir():
        return False

    for entry in restoring.iterdir():
        entry.rename(config / entry.name)
    restoring.rmdir()
    _fsync(config)
    return True


def _install(config: Path, directory: str, text: str, certs: Path | None) -> None:
    """Build a registry directory under a temporary name and rename it into place."""
    staged = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=config))
    staged.chmod(0o755)
    if certs is not None and certs.is_dir():
        for entry in certs.iterdir():
            if entry.name != HOSTS_FILE:
                _copy(entry, staged / entry.name)
    hosts = staged / HOSTS_FILE
    with hosts.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    hosts.chmod(0o644)
    _fsync(staged)

    target, old = config / directory, config / f"{_OLD_PREFIX}{directory}"
    if os.path.lexists(target):
        _remove(old)
        target.rename(old)
    staged.rename(target)
    _remove(old)


def _copy(source: Path, destination: Path) -> None:
    """Copy a file, symlink or directory tree, keeping modes and times."""
    if source.is_dir() and not source.is_symlink():
        shutil.copytree(source, destination, symlinks=True)
    else:
        shutil.copy2(source, destination, follow_symlinks=False)


def _remove_all_but(config: Path, keep: set[str]) -> None:
    """Delete every entry of config whose name is not in keep."""
    for entry in config.iterdir():
        if entry.name not in keep:
            _remove(entry)


def _remove(path: Path) -> None:
    """Delete a file, symlink or directory tree; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def _fsync(directory: Path) -> None:
    """Flush a directory's entries to disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(config: Path) -> Iterator[None]:
    """Hold an exclusive flock on the config directory itself."""
    fd = os.open(config, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
