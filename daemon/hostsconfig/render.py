"""Render containerd `hosts.toml` files (containerd's hosts directory format).

peerpull's mirror targets come first, one `[host."<url>"]` table each, in the
order given. With an existing file, its own `[host.*]` tables follow ours, so
containerd tries peerpull, then the old mirrors, then `server`. The TOML is
written by hand: the values are strings, lists and tables, and the output is
checked back with `tomllib` in the tests.
"""

from __future__ import annotations

import datetime
import math
import re
import tomllib
from collections.abc import Mapping, Sequence

from daemon.hostsconfig.urls import (
    ConfigurationError,
    normalise_registry,
    normalise_targets,
    registry_server,
)

# containerd >= 2.1 gives up on a mirror that does not accept a connection
# within this time; containerd 1.6 ignores the key (checked with 1.6.20).
DIAL_TIMEOUT = "200ms"

_HEADER = (
    "# Written by peerpull configuration; peerpull cleanup restores the original.\n"
)
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def render_hosts_toml(
    registry: str | None,
    targets: Sequence[str],
    resolve_tags: bool,
    existing_hosts: str | None = None,
) -> str:
    """Return hosts.toml text: our targets first, then the existing file's hosts."""
    ours = normalise_targets(targets)
    if not ours:
        raise ConfigurationError("--mirror-targets: at least one target is required")
    capabilities = ["pull", "resolve"] if resolve_tags else ["pull"]
    server = registry_server(normalise_registry(registry or "_default"))

    blocks = [_HEADER + (f"server = {_value(server)}\n" if server else "")]
    for target in ours:
        table: dict[str, object] = {
            "capabilities": capabilities,
            "dial_timeout": DIAL_TIMEOUT,
        }
        blocks.extend(_tables(("host", target), table))
    for target, table in _existing_hosts(existing_hosts).items():
        if target not in ours:
            blocks.extend(_tables(("host", target), table))
    return "\n".join(blocks)


def _existing_hosts(text: str | None) -> dict[str, dict[str, object]]:
    """Return the `[host.*]` tables of an existing hosts.toml, in file order."""
    if text is None:
        return {}
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigurationError(
            f"existing hosts.toml is not valid TOML: {error}"
        ) from error

    hosts = document.get("host", {})
    if not isinstance(hosts, dict) or not all(
        isinstance(table, dict) for table in hosts.values()
    ):
        raise ConfigurationError("existing hosts.toml: `host` must hold tables only")
    return hosts


def _tables(path: tuple[str, ...], table: Mapping[str, object]) -> list[str]:
    """Render a table and its sub-tables, one block each, plain keys first."""
    header = "[" + ".".join(_key(part) for part in path) + "]\n"
    plain = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
    blocks = [header + "".join(f"{_key(k)} = {_value(v)}\n" for k, v in plain)]
    for key, value in table.items():
        if isinstance(value, Mapping):
            blocks.extend(_tables((*path, key), value))
    return blocks


def _key(key: str) -> str:
    """Render a key bare when TOML allows it, else as a quoted string."""
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _value(value: object) -> str:
    """Render a TOML value; tables nested in arrays become inline tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = (f"{_key(k)} = {_value(v)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }" if value else "{}"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _float(value: float) -> str:
    """Render a float, including TOML's inf and nan."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


def _string(value: str) -> str:
    """Render a TOML basic string, escaping quotes, backslashes and controls."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'
