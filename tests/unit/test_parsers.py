"""Property tests for the request parsers: names, tags, digests, ranges."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.registry.ranges import RangeNotSatisfiable, parse_range
from daemon.registry.reference import (
    ReferenceError,
    parse_digest,
    parse_name,
    parse_registry,
    parse_tag,
)

# The distribution spec's grammar, written independently of the module's.
SPEC_NAME = re.compile(
    r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*"
)
SPEC_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
NAME_ALPHABET = "abz09._-/A%\x00\n"


@given(st.text(alphabet=NAME_ALPHABET, max_size=40))
def test_name_accepted_exactly_when_spec_grammar_matches(value: str) -> None:
    expected = SPEC_NAME.fullmatch(value) is not None
    try:
        parse_name(value)
        accepted = True
    except ReferenceError as err:
        assert err.code == "NAME_INVALID"
        accepted = False
    assert accepted == expected


@given(st.from_regex(SPEC_NAME, fullmatch=True).filter(lambda n: len(n) <= 255))
def test_every_spec_name_is_accepted(value: str) -> None:
    assert parse_name(value) == value


def test_over_long_name_is_refused() -> None:
    with pytest.raises(ReferenceError):
        parse_name("a" * 256)


@given(st.text(alphabet="aZ09_.-:/\x00", max_size=140))
def test_tag_accepted_exactly_when_spec_grammar_matches(value: str) -> None:
    expected = SPEC_TAG.fullmatch(value) is not None
    try:
        parse_tag(value)
        accepted = True
    except ReferenceError:
        accepted = False
    assert accepted == expected


@given(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64))
def test_sha256_digests_are_accepted(hex_part: str) -> None:
    assert parse_digest(f"sha256:{hex_part}") == f"sha256:{hex_part}"


@given(st.text(alphabet="0123456789abcdefABCDEF:/.\x00", max_size=80))
def test_malformed_digests_are_refused(hex_part: str) -> None:
    value = f"sha256:{hex_part}"
    valid = re.fullmatch(r"[0-9a-f]{64}", hex_part) is not None
    try:
        parse_digest(value)
        accepted = True
    except ReferenceError as err:
        assert err.code == "DIGEST_INVALID"
        accepted = False
    assert accepted == valid


def test_unknown_algorithm_is_an_invalid_digest() -> None:
    with pytest.raises(ReferenceError) as err:
        parse_digest("md5:" + "0" * 32)
    assert err.value.code == "DIGEST_INVALID"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("[::1]:5000", "[::1]:5000"),
        ("Quay.IO", "quay.io"),
        (None, None),
    ],
)
def test_registry_parameter(raw: str | None, expected: str | None) -> None:
    assert parse_registry(raw) == expected


@pytest.mark.parametrize("raw", ["a/b", "", "x" * 300, "a b", "..", "host:port"])
def test_bad_registry_parameter(raw: str) -> None:
    with pytest.raises(ReferenceError):
        parse_registry(raw)


def model_range(header: str, size: int) -> tuple[int, int] | None:
    """A straightforward RFC 9110 reading of one byte range, for comparison."""
    spec = header.removeprefix("bytes=")
    first_text, _, last_text = spec.partition("-")
    if not first_text:
        n = int(last_text)
        if n == 0 or size == 0:
            raise RangeNotSatisfiable
        return max(0, size - n), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last < first or first >= size:
        raise RangeNotSatisfiable
    return first, min(last, size - 1)


@given(
    size=st.integers(0, 10_000),
    first=st.one_of(st.none(), st.integers(0, 12_000)),
    last=st.one_of(st.none(), st.integers(0, 12_000)),
)
def test_ranges_match_the_model(size: int, first: int | None, last: int | None) -> None:
    header = f"bytes={'' if first is None else first}-{'' if last is None else last}"
    if first is None and last is None:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    try:
        expected = model_range(header, size)
    except RangeNotSatisfiable:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    parsed = parse_range(header, size)
    assert parsed is not None and expected is not None
    assert (parsed.first, parsed.last) == expected
    assert 0 < parsed.length <= size
    assert parsed.content_range == f"bytes {expected[0]}-{expected[1]}/{size}"


@given(st.text(max_size=30))
def test_garbage_ranges_never_crash(header: str) -> None:
    try:
        parsed = parse_range(header, 1000)
    except RangeNotSatisfiable:
        return
    assert parsed is not None and 0 <= parsed.first <= parsed.last < 1000


def test_no_range_header_means_whole_blob() -> None:
    assert parse_range(None, 10) is None
