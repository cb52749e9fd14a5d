"""Decoding of the probe's ring-buffer records: layout, validation, events."""

from __future__ import annotations

import struct
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ebpf.records import (
    HEADER,
    KIND_COMMITTED,
    KIND_DELETED,
    PATH_CAPACITY,
    RECORD_SIZE,
    RecordError,
    SeenCommitted,
    SeenDeleted,
    blob_digest,
    parse_record,
    to_event,
)

ROOT = PurePosixPath("/var/lib/containerd/io.containerd.content.v1.content")
HEX = "0123456789abcdef" * 4


def record(
    path: str | bytes,
    kind: int = KIND_COMMITTED,
    syscall: int = 2,
    ts_ns: int = 7,
    pid: int = 100,
    tid: int = 101,
    length: int | None = None,
) -> bytes:
    raw = path.encode() if isinstance(path, str) else path
    size = len(raw) if length is None else length
    header = HEADER.pack(ts_ns, pid, tid, kind, syscall, size, 0)
    return header + raw.ljust(PATH_CAPACITY, b"\0")[:PATH_CAPACITY]


def test_layout_matches_the_c_struct() -> None:
    assert HEADER.size == 32
    assert RECORD_SIZE == 32 + 512


def test_a_commit_record_becomes_a_commit_event() -> None:
    path = f"{ROOT}/blobs/sha256/{HEX}"
    parsed = parse_record(record(path, ts_ns=123))
    assert (parsed.pid, parsed.tid, parsed.syscall) == (100, 101, "renameat")
    assert to_event(parsed, ROOT) == SeenCommitted(f"sha256:{HEX}", 123)


def test_a_delete_record_becomes_a_delete_event() -> None:
    path = f"{ROOT}/blobs/sha256/{HEX}"
    parsed = parse_record(record(path, kind=KIND_DELETED, syscall=5))
    assert parsed.syscall == "unlinkat"
    assert to_event(parsed, ROOT) == SeenDeleted(f"sha256:{HEX}", 7)


@pytest.mark.parametrize(
    "path",
    [
        f"/elsewhere/blobs/sha256/{HEX}",
        f"{ROOT}/ingest/abc/data",
        f"{ROOT}/blobs/sha256/{HEX.upper()}",
        f"{ROOT}/blobs/sha256/{HEX[:-1]}",
        f"{ROOT}/blobs/sha256/{HEX}0",
        f"{ROOT}/blobs/sha512/{HEX}",
        f"{ROOT}/x/blobs/sha256/{HEX}",
        f"blobs/sha256/{HEX}",
    ],
)
def test_paths_that_are_not_blobs_of_the_root_give_no_event(path: str) -> None:
    assert to_event(parse_record(record(path)), ROOT) is None


def test_a_trailing_slash_on_the_root_does_not_matter() -> None:
    path = f"{ROOT}/blobs/sha256/{HEX}"
    assert blob_digest(path, PurePosixPath(f"{ROOT}/")) == f"sha256:{HEX}"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\0" * 10, "shorter"),
        (record("x", kind=3), "kind"),
        (record("x", syscall=9), "syscall"),
        (record("abc", length=2), "terminator"),
        (record("abc", length=PATH_CAPACITY), "terminator"),
        (record(b"\xff\xfe"), "ASCII"),
    ],
)
def test_malformed_records_raise(data: bytes, problem: str) -> None:
    with pytest.raises(RecordError, match=problem):
        parse_record(data)


digests = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/"),
    min_size=1,
    max_size=20,
)


@given(
    digest=digests,
    parts=st.lists(names, min_size=1, max_size=5),
    kind=st.sampled_from([KIND_COMMITTED, KIND_DELETED]),
    syscall=st.integers(1, 5),
    ts=st.integers(0, 2**64 - 1),
    pid=st.integers(0, 2**32 - 1),
)
def test_any_blob_of_any_root_round_trips(
    digest: str, parts: list[str], kind: int, syscall: int, ts: int, pid: int
) -> None:
    root = PurePosixPath("/", *parts)
    event = to_event(
        parse_record(record(f"{root}/blobs/sha256/{digest}", kind, syscall, ts, pid)),
        root,
    )
    expected = SeenCommitted if kind == KIND_COMMITTED else SeenDeleted
    assert event == expected(f"sha256:{digest}", ts)


@given(data=st.binary(max_size=RECORD_SIZE + 8))
def test_arbitrary_bytes_parse_or_raise_record_error(data: bytes) -> None:
    try:
        parsed = parse_record(data)
    except RecordError:
        return
    event = to_event(parsed, ROOT)
    assert event is None or event.digest.startswith("sha256:")


@given(path=st.text(max_size=200))
def test_only_exact_blob_paths_give_digests(path: str) -> None:
    digest = blob_digest(path, ROOT)
    if digest is not None:
        assert path == f"{ROOT}/blobs/sha256/{digest[7:]}"


def test_header_is_little_endian() -> None:
    data = record("x", ts_ns=1)
    assert struct.unpack_from("<Q", data)[0] == 1
