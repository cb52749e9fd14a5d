"""containerd mirror configuration: write `hosts.toml` files, back up, restore.

`peerpull configuration` calls `write_configuration`; `peerpull cleanup` calls
`restore_backup`. The inputs come from `parse_mirror_targets` and
`parse_mirrored_registries`, which raise `ConfigurationError` naming the flag.
"""

from __future__ import annotations

from daemon.hostsconfig.files import (
    BACKUP_DIR,
    MirrorConfiguration,
    restore_backup,
    write_configuration,
)
from daemon.hostsconfig.render import render_hosts_toml
from daemon.hostsconfig.urls import (
    ConfigurationError,
    parse_mirror_targets,
    parse_mirrored_registries,
)

__all__ = [
    "BACKUP_DIR",
    "ConfigurationError",
    "MirrorConfiguration",
    "parse_mirror_targets",
    "parse_mirrored_registries",
    "render_hosts_toml",
    "restore_backup",
    "write_configuration",
]
