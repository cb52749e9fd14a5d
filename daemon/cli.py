"""The `peerpull` command line: subcommands, flags, environment variables.

Every flag `--some-flag` also reads `PEERPULL_SOME_FLAG`; a flag wins over
the environment, the environment over the default. A bad value prints one
line naming the flag and exits 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from daemon import values

EXIT_USAGE = 2
EXIT_FAILURE = 1


class UsageError(Exception):
    """A flag or its value is wrong; the message names the flag."""


@dataclass(frozen=True)
class Flag:
    """One flag: its name, default (as text), parser and help."""

    name: str
    default: str | None
    parse: Callable[[str], Any]
    help: str
    is_bool: bool = False
    unit: str = ""

    @property
    def env(self) -> str:
        return "PEERPULL_" + self.name.upper().replace("-", "_")

    @property
    def field(self) -> str:
        """The config field: the flag's name, with its unit appended."""
        return self.name.replace("-", "_") + self.unit


def _text(value: str) -> str:
    return value


def _path(value: str) -> Path:
    if not value:
        raise ValueError("must not be empty")
    return Path(value)


def _log_level(value: str) -> str:
    level = value.strip().upper()
    level = "WARNING" if level == "WARN" else level
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"{value!r} is not DEBUG, INFO, WARN or ERROR")
    return level


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return value

    return parse


def _matching(pattern: str, what: str, max_len: int) -> Callable[[str], str]:
    regex = re.compile(pattern)

    def parse(value: str) -> str:
        if len(value) > max_len or not regex.fullmatch(value):
            raise ValueError(f"{value!r} is not {what}")
        return value

    return parse


_K8S_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_k8s_namespace = _matching(_K8S_LABEL, "a Kubernetes namespace", 63)
_k8s_name = _matching(rf"{_K8S_LABEL}(?:\.{_K8S_LABEL})*", "a Kubernetes name", 253)
_containerd_namespace = _matching(
    r"[A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*", "a containerd namespace", 76
)


def _optional(parse: Callable[[str], str]) -> Callable[[str], str]:
    def parse_or_empty(value: str) -> str:
        return parse(value) if value else ""

    return parse_or_empty


def _each(parse: Callable[[str], str]) -> Callable[[str], tuple[str, ...]]:
    def parse_all(value: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(parse(item) for item in values.split_list(value)))

    return parse_all


def _ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError as err:
        raise ValueError(f"{value!r} is not an IP address") from err


def _datagram_size(value: str) -> str:
    if value == "auto":
        return value
    size = values.parse_count(value, minimum=1200, maximum=16384)
    return str(size)


def _retries(value: str) -> int:
    return values.parse_count(value, minimum=1, maximum=100)


def _mirror_targets(value: str) -> tuple[str, ...]:
    from daemon.hostsconfig import parse_mirror_targets

    return parse_mirror_targets(value)


def _mirror_registry_urls(value: str) -> tuple[str, ...]:
    from daemon.hostsconfig import parse_mirrored_registries

    return parse_mirrored_registries(value)


LOG_LEVEL = Flag("log-level", "INFO", _log_level, "DEBUG, INFO, WARN or ERROR")
CONFIG_PATH = Flag(
    "containerd-registry-config-path",
    "/etc/containerd/certs.d",
    _path,
    "containerd's registry hosts directory (config_path)",
)
RESOLVE_TAGS = Flag(
    "resolve-tags", "true", values.parse_bool, "resolve tags through peers", True
)

REGISTRY_FLAGS = (
    Flag("registry-addr", ":5000", values.parse_address, "HTTP address for containerd"),
    Flag("router-addr", ":5001", values.parse_address, "libp2p TCP address"),
    Flag("transport-addr", ":5002", values.parse_address, "HTTP/3 UDP address"),
    Flag("metrics-addr", ":9090", values.parse_address, "Prometheus /metrics address"),
    Flag(
        "containerd-sock",
        "/run/containerd/containerd.sock",
        _path,
        "containerd's gRPC socket",
    ),
    Flag(
        "containerd-namespace", "k8s.io", _containerd_namespace, "containerd namespace"
    ),
    Flag(
        "containerd-content-path",
        "/var/lib/containerd/io.containerd.content.v1.content",
        _path,
        "containerd's content root, read directly when readable",
    ),
    Flag("data-dir", "/var/lib/peerpull", _path, "node identity and keys"),
    Flag(
        "bootstrap-kind",
        "static",
        _choice("static", "dns", "kubernetes"),
        "static, dns or kubernetes",
    ),
    Flag(
        "static-bootstrap-peers",
        "",
        _each(values.parse_multiaddr),
        "comma list of multiaddrs, e.g. /ip4/10.0.0.5/tcp/5001",
    ),
    Flag(
        "dns-bootstrap-domain",
        "",
        _optional(values.parse_dns_name),
        "headless service name",
    ),
    Flag(
        "leader-election-namespace",
        "peerpull",
        _k8s_namespace,
        "namespace of the Lease",
    ),
    Flag("leader-election-name", "peerpull-leader-election", _k8s_name, "Lease name"),
    Flag(
        "mirror-resolve-timeout",
        "20ms",
        values.parse_duration,
        "longest wait for the first peer",
        unit="_s",
    ),
    Flag("mirror-resolve-retries", "3", _retries, "peers tried per request"),
    Flag(
        "dns-bootstrap-nameservers",
        "",
        _each(_ip),
        "DNS servers for the dns bootstrap (default: the system's)",
    ),
    Flag(
        "mirrored-registries",
        "",
        _each(values.parse_registry_host),
        "registries served (URLs or hosts); empty means all",
    ),
    Flag(
        "registry-filters",
        "",
        values.parse_regexes,
        "regexes over registry/repo[:tag] never served nor advertised",
    ),
    RESOLVE_TAGS,
    Flag(
        "transport-max-datagram-size",
        "auto",
        _datagram_size,
        "QUIC datagram bytes, or auto (the route's interface MTU)",
    ),
    Flag(
        "quic-engine", "auto", _choice("auto", "aioquic", "qh3"), "auto, aioquic or qh3"
    ),
    Flag(
        "content-watcher",
        "auto",
        _choice("auto", "ebpf", "inotify"),
        "how new blobs are seen: ebpf, inotify, or auto (ebpf, else inotify)",
    ),
    Flag("record-ttl", "10m", values.parse_duration, "life of a DHT record", unit="_s"),
    Flag(
        "refresh-interval",
        "9m",
        values.parse_duration,
        "full re-walk and re-advertisement period",
        unit="_s",
    ),
    LOG_LEVEL,
)

CONFIGURATION_FLAGS = (
    CONFIG_PATH,
    Flag(
        "mirror-targets",
        None,
        _mirror_targets,
        "mirror URLs, e.g. http://10.0.0.5:5000",
    ),
    Flag("mirrored-registries", "", _mirror_registry_urls, "registries to mirror"),
    RESOLVE_TAGS,
    Flag(
        "prepend-existing",
        "false",
        values.parse_bool,
        "keep old mirrors after ours",
        True,
    ),
    LOG_LEVEL,
)

CLEANUP_FLAGS = (CONFIG_PATH, LOG_LEVEL)

SUBCOMMANDS: dict[str, tuple[str, tuple[Flag, ...]]] = {
    "registry": ("run the mirror daemon", REGISTRY_FLAGS),
    "configuration": (
        "write containerd's hosts.toml for the mirror",
        CONFIGURATION_FLAGS,
    ),
    "cleanup": ("restore containerd's hosts.toml from the backup", CLEANUP_FLAGS),
    "version": ("print the version", ()),
}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """Build the argparse tree; values stay text until `resolve_flags`."""
    parser = _Parser(prog="peerpull", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (summary, flags) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        for flag in flags:
            default = "required" if flag.default is None else repr(flag.default)
            sub.add_argument(
                f"--{flag.name}",
                dest=flag.field,
                metavar="VALUE",
                nargs="?" if flag.is_bool else None,
                const="true" if flag.is_bool else None,
                help=f"{flag.help} (env {flag.env}, default {default})",
            )
    return parser


def resolve_flags(
    flags: Sequence[Flag], args: argparse.Namespace, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Pick each flag's text (flag > env > default) and parse it."""
    resolved: dict[str, Any] = {}
    for flag in flags:
        text = getattr(args, flag.field, None)
        source = f"--{flag.name}"
        if text is None and flag.env in environ:
            text, source = environ[flag.env], f"--{flag.name} (from {flag.env})"
        if text is None:
            text = flag.default
        if text is None:
            raise UsageError(f"--{flag.name} is required (or set {flag.env})")
        try:
            resolved[flag.field] = flag.parse(text)
        except ValueError as err:
            reason = str(err).removeprefix(f"--{flag.name}: ")
            raise UsageError(f"{source}: {reason}") from err
    return resolved


def check_registry_options(options: Mapping[str, Any]) -> None:
    """Checks across flags of `peerpull registry`."""
    if options["bootstrap_kind"] == "dns" and not options["dns_bootstrap_domain"]:
        raise UsageError("--dns-bootstrap-domain is required with --bootstrap-kind=dns")
    tcp = [
        (name, options[name.replace("-", "_")])
        for name in ("registry-addr", "metrics-addr", "router-addr")
    ]
    for index, (name, address) in enumerate(tcp):
        for other, other_address in tcp[index + 1 :]:
            if address.port and address == other_address:
                raise UsageError(f"--{name} and --{other} are both {address}")
    if options["refresh_interval_s"] >= options["record_ttl_s"]:
        raise UsageError("--refresh-interval must be shorter than --record-ttl")


def main(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> int:
    """Run the CLI; returns the process exit code."""
    environ = os.environ if environ is None else environ
    try:
        args = build_parser().parse_args(argv)
        flags = SUBCOMMANDS[args.command][1]
        options = resolve_flags(flags, args, environ)
        if args.command == "registry":
            check_registry_options(options)
    except UsageError as err:
        print(f"peerpull: error: {err}", file=sys.stderr)
        return EXIT_USAGE

    from daemon import commands

    try:
        return commands.run(args.command, options)
    except UsageError as err:
        print(f"peerpull: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except commands.CommandFailed as err:
        print(f"peerpull: error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
