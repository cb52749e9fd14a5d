"""What each subcommand does once its flags are parsed."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from daemon import __version__
from daemon.observability import logs

log = logging.getLogger(__name__)


class CommandFailed(Exception):
    """The command could not do its job; the message is one line."""


def run(command: str, options: dict[str, Any]) -> int:
    """Run a subcommand with parsed options; returns the exit code."""
    if command == "version":
        print(f"peerpull {__version__}")
        return 0
    logs.configure(options.pop("log_level"))
    if command == "registry":
        return _registry(options)
    if command == "configuration":
        return _configuration(options)
    return _cleanup(options)


def _registry(options: dict[str, Any]) -> int:
    from daemon.config import RegistryConfig
    from daemon.node import StartupFailed, serve

    config = RegistryConfig(**options)
    try:
        asyncio.run(serve(config))
    except StartupFailed as err:
        raise CommandFailed(str(err)) from err
    return 0


def _configuration(options: dict[str, Any]) -> int:
    from daemon.hostsconfig import (
        ConfigurationError,
        MirrorConfiguration,
        write_configuration,
    )

    config = MirrorConfiguration(
        config_path=options["containerd_registry_config_path"],
        mirror_targets=options["mirror_targets"],
        mirrored_registries=options["mirrored_registries"],
        resolve_tags=options["resolve_tags"],
        prepend_existing=options["prepend_existing"],
    )
    try:
        written = write_configuration(config)
    except (ConfigurationError, OSError) as err:
        raise CommandFailed(str(err)) from err
    for path in written:
        log.info("hosts.toml written", extra={"path": str(path)})
    return 0


def _cleanup(options: dict[str, Any]) -> int:
    from daemon.hostsconfig import restore_backup

    config_path = options["containerd_registry_config_path"]
    try:
        restored = restore_backup(config_path)
    except OSError as err:
        raise CommandFailed(f"cannot restore {config_path}: {err}") from err
    log.info("cleanup", extra={"path": str(config_path), "restored": restored})
    return 0
