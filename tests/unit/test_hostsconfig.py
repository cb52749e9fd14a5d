"""Tests for writing containerd hosts.toml files, the backup and the restore."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.hostsconfig import (
    BACKUP_DIR,
    ConfigurationError,
    MirrorConfiguration,
    parse_mirror_targets,
    parse_mirrored_registries,
    render_hosts_toml,
    restore_backup,
    write_configuration,
)
from daemon.hostsconfig import files as files_module

Snapshot = dict[str, tuple[str, int, bytes]]

PEER = "http://10.0.0.7:5000"
OTHER_PEER = "http://10.0.0.8:5000"


def snapshot(root: Path) -> Snapshot:
    """Map every path under root to (kind, mode, bytes or link target)."""
    tree: Snapshot = {".": ("dir", stat.S_IMODE(root.lstat().st_mode), b"")}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            info = path.lstat()
            relative = str(path.relative_to(root))
            mode = stat.S_IMODE(info.st_mode)
            if stat.S_ISLNK(info.st_mode):
                tree[relative] = ("link", 0, os.readlink(path).encode())
            elif stat.S_ISDIR(info.st_mode):
                tree[relative] = ("dir", mode, b"")
            else:
                tree[relative] = ("file", mode, path.read_bytes())
    return tree


def write_tree(root: Path, files: Mapping[str, bytes | str], mode: int = 0o644) -> None:
    """Create files (parents included) under root; str content is UTF-8 text."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)
        path.chmod(mode)


def hosts(path: Path) -> dict[str, Any]:
    """Parse a written hosts.toml."""
    return tomllib.loads(path.read_text())


# rendering


def test_default_registry_has_no_server_and_resolves_tags() -> None:
    document = tomllib.loads(render_hosts_toml(None, [PEER], resolve_tags=True))

    assert "server" not in document
    assert document["host"] == {
        PEER: {"capabilities": ["pull", "resolve"], "dial_timeout": "200ms"}
    }


def test_docker_hub_is_served_from_registry_1() -> None:
    text = render_hosts_toml("https://docker.io", [PEER], resolve_tags=True)

    assert tomllib.loads(text)["server"] == "https://registry-1.docker.io"


def test_other_registry_server_keeps_scheme_and_port() -> None:
    text = render_hosts_toml("http://127.0.0.1:5001", [PEER], resolve_tags=True)

    assert tomllib.loads(text)["server"] == "http://127.0.0.1:5001"


def test_without_resolve_tags_only_pull() -> None:
    document = tomllib.loads(render_hosts_toml(None, [PEER], resolve_tags=False))

    assert document["host"][PEER]["capabilities"] == ["pull"]


def test_targets_keep_order_and_ipv6_is_bracketed() -> None:
    targets = ["http://fd00::1:30020", PEER, "https://[::1]:443/"]
    document = tomllib.loads(render_hosts_toml(None, targets, resolve_tags=True))

    assert list(document["host"]) == [
        "http://[fd00::1]:30020",
        PEER,
        "https://[::1]:443",
    ]


def test_existing_hosts_follow_ours_and_ours_win_a_clash() -> None:
    existing = f"""
server = "https://old.example"
ca = "root.crt"

[host."https://cache.example"]
capabilities = ["pull"]
ca = ["cache.crt"]
client = [["c.crt", "c.key"]]
[host."https://cache.example".header]
X-Team = ["a \\"quoted\\" \\\\ value"]

[host."{PEER}"]
skip_verify = true
"""
    text = render_hosts_toml("https://ghcr.io", [PEER], True, existing)
    document = tomllib.loads(text)

    assert document["server"] == "https://ghcr.io"
    assert "ca" not in document
    assert list(document["host"]) == [PEER, "https://cache.example"]
    assert document["host"][PEER] == {
        "capabilities": ["pull", "resolve"],
        "dial_timeout": "200ms",
    }
    assert document["host"]["https://cache.example"] == {
        "capabilities": ["pull"],
        "ca": ["cache.crt"],
        "client": [["c.crt", "c.key"]],
        "header": {"X-Team": ['a "quoted" \\ value']},
    }


def test_malformed_existing_hosts_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="not valid TOML"):
        render_hosts_toml(None, [PEER], True, '[host."x"\ncapabilities = 1')


def test_existing_host_that_is_not_a_table_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="`host` must hold tables"):
        render_hosts_toml(None, [PEER], True, 'host = "x"')


def toml_string(value: str) -> str:
    """Encode a TOML basic string independently of the module, via JSON."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    """Encode the few value types the property test generates."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return toml_string(value)
    return "[" + ", ".join(toml_value(item) for item in value) + "]"


texts = st.text(st.characters(codec="utf-8"), max_size=12)
scalars = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1), texts, st.lists(texts, max_size=3)
)
host_tables = st.dictionaries(
    st.sampled_from(["https://a.example", "http://b.example:81", PEER]),
    st.fixed_dictionaries(
        {"capabilities": st.lists(texts, max_size=3)},
        optional={
            "skip_verify": st.booleans(),
            "header": st.dictionaries(texts, st.lists(texts, max_size=2), max_size=3),
            "extra": scalars,
        },
    ),
    max_size=3,
)


# no deadline: the machine is shared, and this test checks values, not speed
@settings(deadline=None)
@given(host_tables)
def test_existing_tables_survive_rendering_exactly(tables: dict[str, Any]) -> None:
    existing = ""
    for host, table in tables.items():
        existing += f"[host.{toml_string(host)}]\n"
        for key, value in table.items():
            if key != "header":
                existing += f"{toml_string(key)} = {toml_value(value)}\n"
        if "header" in table:
            existing += f"[host.{toml_string(host)}.header]\n"
            for key, value in table["header"].items():
                existing += f"{toml_string(key)} = {toml_value(value)}\n"

    document = tomllib.loads(render_hosts_toml(None, [PEER], True, existing))

    expected_old = {host: table for host, table in tables.items() if host != PEER}
    assert list(document["host"]) == [PEER, *expected_old]
    assert {h: t for h, t in document["host"].items() if h != PEER} == expected_old


# validation


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://10.0.0.1:5000", ("http://10.0.0.1:5000",)),
        (" HTTP://Node-1.Example:05000/ ,", ("http://node-1.example:5000",)),
        ("http://a:1,https://b,http://a:1", ("http://a:1", "https://b")),
        ("http://fd00:0::1:30020", ("http://[fd00::1]:30020",)),
        ("http://[FD00::1]", ("http://[fd00::1]",)),
    ],
)
def test_mirror_targets_are_normalised(value: str, expected: tuple[str, ...]) -> None:
    assert parse_mirror_targets(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "at least one target"),
        (" , ", "at least one target"),
        ("10.0.0.1:5000", "http:// or https://"),
        ("ftp://10.0.0.1", "http or https"),
        ("http://10.0.0.1:5000/v2", "path, query or fragment"),
        ("http://10.0.0.1:5000?x=1", "path, query or fragment"),
        ("http://user:pw@10.0.0.1", "user info"),
        ("http://10.0.0.1:70000", "invalid port"),
        ("http://10.0.0.1:", "invalid port"),
        ("http://bad_host", "invalid host"),
        ("http://", "invalid host"),
        ("http://fd00::zz:80", "IPv6"),
        ("http://[fd00::1", "malformed IPv6"),
    ],
)
def test_bad_mirror_targets_name_the_flag(value: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason) as raised:
        parse_mirror_targets(value)

    assert str(raised.value).startswith("--mirror-targets: ")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ()),
        ("docker.io", ("https://docker.io",)),
        ("https://docker.io/,docker.io", ("https://docker.io",)),
        ("*,_default", ("_default",)),
        ("http://127.0.0.1:5000,ghcr.io", ("http://127.0.0.1:5000", "https://ghcr.io")),
    ],
)
def test_mirrored_registries_are_normalised(
    value: str, expected: tuple[str, ...]
) -> None:
    assert parse_mirrored_registries(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("docker.io/library", "path"),
        ("oci://ghcr.io", "http or https"),
        ("http://ghcr.io,https://ghcr.io", "share the directory"),
        ("not a host", "invalid host"),
    ],
)
def test_bad_registries_name_the_flag(value: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match=reason) as raised:
        parse_mirrored_registries(value)

    assert str(raised.value).startswith("--mirrored-registries: ")


def test_configuration_object_validates_what_it_is_given(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="--mirror-targets"):
        MirrorConfiguration(tmp_path, ("http://x/path",))
    with pytest.raises(ConfigurationError, match="--mirror-targets"):
        MirrorConfiguration(tmp_path, ())

    cfg = MirrorConfiguration(tmp_path, ("HTTP://X:1",), ("docker.io",))
    assert cfg.mirror_targets == ("http://x:1",)
    assert cfg.mirrored_registries == ("https://docker.io",)


# writing, backup and restore

ORIGINAL = {
    "docker.io/hosts.toml": (
        'server = "https://registry-1.docker.io"\n'
        '[host."https://cache.example"]\ncapabilities = ["pull"]\nca = "cache.crt"\n'
    ),
    "docker.io/cache.crt": "-----BEGIN CERTIFICATE-----\n",
    "docker.io/nested/extra.pem": "extra",
    "ghcr.io/hosts.toml": 'server = "https://ghcr.io"\n',
    "README": "hand-written notes\n",
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A certs.d directory holding a small hand-made configuration."""
    root = tmp_path / "certs.d"
    write_tree(root, ORIGINAL)
    (root / "docker.io" / "cache.crt").chmod(0o600)
    os.symlink("docker.io", root / "index.docker.io")
    return root


def test_default_configuration_backs_up_everything(config: Path) -> None:
    before = snapshot(config)

    written = write_configuration(MirrorConfiguration(config, (PEER,)))

    assert written == [config / "_default" / "hosts.toml"]
    assert sorted(p.name for p in config.iterdir()) == [BACKUP_DIR, "_default"]
    assert snapshot(config / BACKUP_DIR) == before
    assert hosts(written[0])["host"][PEER]["capabilities"] == ["pull", "resolve"]
    assert stat.S_IMODE(written[0].stat().st_mode) == 0o644
    assert stat.S_IMODE((config / "_default").stat().st_mode) == 0o755


def test_one_file_per_registry(config: Path) -> None:
    registries = parse_mirrored_registries("docker.io,http://127.0.0.1:5001,*")
    cfg = MirrorConfiguration(config, (PEER,), registries, resolve_tags=False)

    written = write_configuration(cfg)

    assert [p.parent.name for p in written] == [
        "docker.io",
        "127.0.0.1:5001",
        "_default",
    ]
    assert hosts(written[0])["server"] == "https://registry-1.docker.io"
    assert hosts(written[1])["server"] == "http://127.0.0.1:5001"
    assert "server" not in hosts(written[2])
    assert all(hosts(p)["host"][PEER]["capabilities"] == ["pull"] for p in written)
    assert not (config / "docker.io" / "cache.crt").exists()


def test_backup_is_taken_once_and_rerun_is_idempotent(config: Path) -> None:
    original = snapshot(config)
    cfg = MirrorConfiguration(config, (PEER,), ("docker.io", "ghcr.io"))

    write_configuration(cfg)
    first = snapshot(config)
    write_configuration(cfg)

    assert snapshot(config) == first
    assert snapshot(config / BACKUP_DIR) == original


def test_rerun_replaces_earlier_output(config: Path) -> None:
    original = snapshot(config)
    write_configuration(MirrorConfiguration(config, (PEER,), ("docker.io", "quay.io")))

    written = write_configuration(MirrorConfiguration(config, (OTHER_PEER,)))

    assert sorted(p.name for p in config.iterdir()) == [BACKUP_DIR, "_default"]
    assert list(hosts(written[0])["host"]) == [OTHER_PEER]
    assert snapshot(config / BACKUP_DIR) == original


def test_prepend_existing_keeps_old_mirrors_after_ours(config: Path) -> None:
    cfg = MirrorConfiguration(
        config, (PEER, OTHER_PEER), ("docker.io",), prepend_existing=True
    )

    write_configuration(cfg)
    document = hosts(config / "docker.io" / "hosts.toml")

    assert document["server"] == "https://registry-1.docker.io"
    assert list(document["host"]) == [PEER, OTHER_PEER, "https://cache.example"]
    assert document["host"]["https://cache.example"] == {
        "capabilities": ["pull"],
        "ca": "cache.crt",
    }


def test_prepend_existing_copies_certs_back_with_modes(config: Path) -> None:
    cfg = MirrorConfiguration(config, (PEER,), ("docker.io",), prepend_existing=True)

    write_configuration(cfg)
    write_configuration(cfg)

    copied = snapshot(config / "docker.io")
    backed_up = snapshot(config / BACKUP_DIR / "docker.io")
    del copied["hosts.toml"], backed_up["hosts.toml"]
    assert copied == backed_up
    assert copied["cache.crt"][1] == 0o600


def test_prepend_existing_without_old_dir_writes_only_ours(config: Path) -> None:
    cfg = MirrorConfiguration(config, (PEER,), ("quay.io",), prepend_existing=True)

    (written,) = write_configuration(cfg)

    assert sorted(p.name for p in written.parent.iterdir()) == ["hosts.toml"]
    assert list(hosts(written)["host"]) == [PEER]


def test_malformed_existing_changes_nothing(config: Path) -> None:
    (config / "ghcr.io" / "hosts.toml").write_text("server = \n")
    before = snapshot(config)
    cfg = MirrorConfiguration(config, (PEER,), ("ghcr.io",), prepend_existing=True)

    with pytest.raises(ConfigurationError) as raised:
        write_configuration(cfg)

    message = str(raised.value)
    assert message.startswith("--prepend-existing: ")
    assert "ghcr.io/hosts.toml" in message and "\n" not in message
    assert snapshot(config) == before


def test_cleanup_restores_the_exact_tree(config: Path) -> None:
    before = snapshot(config)
    cfg = MirrorConfiguration(
        config, (PEER,), ("docker.io", "*"), prepend_existing=True
    )
    write_configuration(cfg)
    write_configuration(cfg)

    assert restore_backup(config) is True
    assert snapshot(config) == before


def test_cleanup_without_backup_is_a_noop(config: Path, tmp_path: Path) -> None:
    before = snapshot(config)

    assert restore_backup(config) is False
    assert snapshot(config) == before
    assert restore_backup(tmp_path / "missing") is False
    assert not (tmp_path / "missing").exists()


def test_missing_config_dir_is_created_and_left_empty(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "containerd" / "certs.d"

    write_configuration(MirrorConfiguration(config, (PEER,)))

    assert (config / "_default" / "hosts.toml").is_file()
    assert restore_backup(config) is True
    assert list(config.iterdir()) == []


def test_interrupted_backup_is_completed(config: Path) -> None:
    before = snapshot(config)
    staging = config / files_module._BACKING_UP
    staging.mkdir()
    (config / "docker.io").rename(staging / "docker.io")

    write_configuration(MirrorConfiguration(config, (PEER,), prepend_existing=True))

    assert snapshot(config / BACKUP_DIR) == before
    assert restore_backup(config) is True
    assert snapshot(config) == before


def test_interrupted_backup_can_be_cleaned_up(config: Path) -> None:
    before = snapshot(config)
    staging = config / files_module._BACKING_UP
    staging.mkdir()
    (config / "README").rename(staging / "README")

    assert restore_backup(config) is True
    assert snapshot(config) == before


@pytest.mark.parametrize("stage", ["clearing", "moving"])
def test_interrupted_cleanup_resumes(config: Path, stage: str) -> None:
    before = snapshot(config)
    write_configuration(MirrorConfiguration(config, (PEER,), ("docker.io",)))
    clearing = config / files_module._CLEARING
    (config / BACKUP_DIR).rename(clearing)
    if stage == "moving":
        shutil.rmtree(config / "docker.io")
        restoring = config / files_module._RESTORING
        clearing.rename(restoring)
        (restoring / "README").rename(config / "README")

    assert restore_backup(config) is True
    assert snapshot(config) == before


def test_configuration_after_interrupted_cleanup_starts_clean(config: Path) -> None:
    before = snapshot(config)
    write_configuration(MirrorConfiguration(config, (PEER,), ("ghcr.io",)))
    (config / BACKUP_DIR).rename(config / files_module._CLEARING)

    write_configuration(MirrorConfiguration(config, (PEER,), ("ghcr.io",)))

    assert snapshot(config / BACKUP_DIR) == before
    assert restore_backup(config) is True
    assert snapshot(config) == before


# property: configuration then cleanup gives back the exact tree

names = st.sampled_from(
    ["_default", "docker.io", "ghcr.io", "hosts.toml", "ca.crt", "a", "b.key"]
)
entries = st.recursive(
    st.tuples(st.binary(max_size=40), st.sampled_from([0o600, 0o644, 0o755, 0o400])),
    lambda children: st.dictionaries(names, children, max_size=4),
    max_leaves=12,
)
trees = st.dictionaries(names, entries, max_size=5)
valid_hosts = st.sampled_from(
    [b"", b'[host."https://m.example"]\ncapabilities = ["pull"]\n', b"server = 1\n"]
)


def build(root: Path, tree: dict[str, Any]) -> None:
    """Write a generated tree: tuples are files, dicts are directories."""
    for name, node in tree.items():
        path = root / name
        if isinstance(node, dict):
            path.mkdir(mode=0o755)
            build(path, node)
        else:
            data, mode = node
            path.write_bytes(data)
            path.chmod(mode)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=trees,
    registries=st.lists(
        st.sampled_from(["docker.io", "ghcr.io", "*", "http://127.0.0.1:5001"]),
        max_size=3,
    ),
    resolve_tags=st.booleans(),
    prepend_existing=st.booleans(),
    runs=st.integers(1, 3),
    hosts_file=valid_hosts,
)
def test_configuration_then_cleanup_restores_any_tree(
    tree: dict[str, Any],
    registries: list[str],
    resolve_tags: bool,
    prepend_existing: bool,
    runs: int,
    hosts_file: bytes,
) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        config = Path(scratch) / "certs.d"
        config.mkdir()
        build(config, tree)
        old_hosts = config / "docker.io" / "hosts.toml"
        if old_hosts.parent.is_dir() and not old_hosts.is_dir():
            old_hosts.write_bytes(hosts_file)
        before = snapshot(config)
        cfg = MirrorConfiguration(
            config,
            (PEER,),
            tuple(registries),
            resolve_tags=resolve_tags,
            prepend_existing=prepend_existing,
        )

        for _ in range(runs):
            try:
                written = write_configuration(cfg)
            except ConfigurationError:
                assert prepend_existing
                assert snapshot(config) == before
                return
            assert all(tomllib.loads(p.read_text())["host"] for p in written)
            assert snapshot(config / BACKUP_DIR) == before

        assert restore_backup(config) is True
        assert snapshot(config) == before
        assert restore_backup(config) is False
