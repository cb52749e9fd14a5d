"""The CLI: flag > environment > default, and one-line errors with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon import cli
from daemon.values import Address, parse_duration


def parse(argv: list[str], environ: dict[str, str]) -> dict[str, object]:
    args = cli.build_parser().parse_args(argv)
    return cli.resolve_flags(cli.SUBCOMMANDS[args.command][1], args, environ)


def test_defaults_match_the_design() -> None:
    options = parse(["registry"], {})
    assert options["registry_addr"] == Address("", 5000)
    assert options["router_addr"] == Address("", 5001)
    assert options["transport_addr"] == Address("", 5002)
    assert options["metrics_addr"] == Address("", 9090)
    assert options["mirror_resolve_timeout_s"] == pytest.approx(0.020)
    assert options["mirror_resolve_retries"] == 3
    assert options["resolve_tags"] is True
    assert options["containerd_namespace"] == "k8s.io"
    assert options["mirrored_registries"] == ()


def test_flag_beats_env_beats_default() -> None:
    env = {"PEERPULL_REGISTRY_ADDR": "127.0.1.2:6000", "PEERPULL_RESOLVE_TAGS": "false"}
    assert parse(["registry"], env)["registry_addr"] == Address("127.0.1.2", 6000)
    assert parse(["registry"], env)["resolve_tags"] is False
    flagged = parse(
        ["registry", "--registry-addr", "127.0.1.3:7000", "--resolve-tags"], env
    )
    assert flagged["registry_addr"] == Address("127.0.1.3", 7000)
    assert flagged["resolve_tags"] is True


def test_every_registry_flag_has_an_env_variable() -> None:
    for flag in cli.REGISTRY_FLAGS:
        assert flag.env == "PEERPULL_" + flag.name.upper().replace("-", "_")


def test_lists_and_registries_are_normalised() -> None:
    options = parse(
        [
            "registry",
            "--mirrored-registries",
            "https://docker.io,registry-1.docker.io,ghcr.io",
            "--registry-filters",
            ":latest$,^docker.io/[a-z]{1,3}/",
            "--static-bootstrap-peers",
            "/ip4/10.0.0.5/tcp/5001,/ip6/::1/tcp/5001",
        ],
        {},
    )
    assert options["mirrored_registries"] == ("docker.io", "ghcr.io")
    assert [p.pattern for p in options["registry_filters"]] == [
        ":latest$",
        "^docker.io/[a-z]{1,3}/",
    ]
    assert len(options["static_bootstrap_peers"]) == 2


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--registry-addr", "5000"], "--registry-addr"),
        (["--registry-addr", ":99999"], "--registry-addr"),
        (["--mirror-resolve-timeout", "fast"], "--mirror-resolve-timeout"),
        (["--mirror-resolve-timeout", "0s"], "--mirror-resolve-timeout"),
        (["--mirror-resolve-retries", "-1"], "--mirror-resolve-retries"),
        (["--bootstrap-kind", "gossip"], "--bootstrap-kind"),
        (
            ["--static-bootstrap-peers", "/ip4/10.0.0.5/udp/5001"],
            "--static-bootstrap-peers",
        ),
        (["--registry-filters", "a(b"], "--registry-filters"),
        (["--resolve-tags=maybe"], "--resolve-tags"),
        (["--log-level", "LOUD"], "--log-level"),
        (["--content-watcher", "kprobe"], "--content-watcher"),
        (["--containerd-namespace", "bad ns"], "--containerd-namespace"),
        (["--mirrored-registries", "ftp://x/y"], "--mirrored-registries"),
    ],
)
def test_bad_values_name_the_flag(argv: list[str], flag: str) -> None:
    with pytest.raises(cli.UsageError, match=f"^{flag}"):
        parse(["registry", *argv], {})


def test_bad_env_value_names_flag_and_variable() -> None:
    with pytest.raises(cli.UsageError) as err:
        parse(["registry"], {"PEERPULL_METRICS_ADDR": "nowhere"})
    assert "--metrics-addr" in str(err.value) and "PEERPULL_METRICS_ADDR" in str(
        err.value
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("1.5s", 1.5), ("1m30s", 90), ("10m", 600), ("500us", 0.0005)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        cwd=Path(__file__).resolve().parents[2],
    )


def test_bad_flag_exits_2_with_one_line() -> None:
    result = run_cli("registry", "--mirror-resolve-timeout", "soon")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("peerpull: error: --mirror-resolve-timeout")
    assert "Traceback" not in result.stderr


def test_unknown_flag_exits_2_with_one_line() -> None:
    result = run_cli("registry", "--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1


def test_unreachable_containerd_is_one_clear_line(tmp_path: Path) -> None:
    socket_path = tmp_path / "missing.sock"
    result = run_cli("registry", "--containerd-sock", str(socket_path))
    assert result.returncode == 1
    lines = [
        line for line in result.stderr.splitlines() if line.startswith("peerpull:")
    ]
    assert lines == [f"peerpull: error: containerd socket {socket_path} does not exist"]
    assert "Traceback" not in result.stderr


def test_version() -> None:
    result = run_cli("version")
    assert result.returncode == 0
    assert result.stdout.startswith("peerpull ")


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--bootstrap-kind", "dns"], "--dns-bootstrap-domain"),
        (["--refresh-interval", "11m"], "--refresh-interval"),
        (["--router-addr", ":5000"], "--registry-addr and --router-addr"),
    ],
)
def test_flags_that_depend_on_each_other(argv: list[str], flag: str) -> None:
    with pytest.raises(cli.UsageError, match=f"^{flag}"):
        cli.check_registry_options(parse(["registry", *argv], {}))


def test_a_data_dir_that_is_a_file_is_one_clear_line(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    result = run_cli("registry", f"--data-dir={not_a_dir}")
    assert result.returncode == 1
    lines = [
        line for line in result.stderr.splitlines() if line.startswith("peerpull:")
    ]
    assert len(lines) == 1 and lines[0].startswith(
        f"peerpull: error: --data-dir {not_a_dir}"
    )
    assert "Traceback" not in result.stderr
