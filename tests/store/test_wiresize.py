"""Wire size (RFC 1939 section 11 byte-stuffing aside, CRLF line ends) and Maildir names."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from mailslot.store.maildirnames import (
    UniqueNames,
    escape_hostname,
    sort_key,
    uid_of,
    wire_size_from_name,
)
from mailslot.store.wiresize import WireSizeCounter, wire_size

line_soup = st.lists(st.sampled_from([b"\r", b"\n", b"\r\n", b"ab"])).map(b"".join)


@given(data=line_soup | st.binary(), cuts=st.lists(st.integers(min_value=0, max_value=64)))
def test_counter_over_any_chunking_equals_the_whole(data: bytes, cuts: list[int]) -> None:
    counter = WireSizeCounter()
    points = sorted({min(c, len(data)) for c in cuts})
    for start, end in zip([0, *points], [*points, len(data)], strict=True):
        counter.feed(data[start:end])
    assert counter.physical == len(data)
    assert counter.wire == wire_size(data) == len(re.sub(rb"(?<!\r)\n", b"\r\n", data))


def test_cr_at_a_chunk_boundary_joins_the_next_lf() -> None:
    counter = WireSizeCounter()
    counter.feed(b"a\r")
    counter.feed(b"\nb\n")
    assert counter.wire == len(b"a\r\nb\r\n")


def test_sort_key_orders_by_seconds_then_microseconds_then_name() -> None:
    names = [
        "zzz-no-time",
        "100.M40P1Q1.host",
        "100.M5P1Q1.host",
        "99.M999999P1.host",
        "100.1_2.host",  # the old unique-part form, no microseconds
        "abc",
        "100.M5P1Q2.host",
    ]
    assert sorted(names, key=sort_key) == [
        "99.M999999P1.host",
        "100.1_2.host",
        "100.M5P1Q1.host",
        "100.M5P1Q2.host",
        "100.M40P1Q1.host",
        "abc",
        "zzz-no-time",
    ]


def test_uid_is_the_base_name_when_valid_else_a_stable_digest() -> None:
    assert uid_of("1700000000.M1P2Q3.host,S=5,W=6") == "1700000000.M1P2Q3.host,S=5,W=6"
    long_name = "1700000000.M1P2Q3." + "h" * 80
    for odd in (long_name, "with space", "caf\u00e9", "bad\udcffbyte"):
        uid = uid_of(odd)
        assert re.fullmatch(r"H[0-9a-f]{40}", uid)
        assert uid_of(odd) == uid
    assert uid_of("with space") != uid_of("with  space")


def test_unique_names_carry_sizes_and_an_escaped_host() -> None:
    names = UniqueNames("mx/1:2,x")
    first = names.make(12, 14)
    second = names.make(12, 14)
    assert first != second
    assert re.fullmatch(r"\d+\.M\d+P\d+Q\d+\.mx\\0571\\0722\\054x,S=12,W=14", first)
    assert wire_size_from_name(first) == 14
    assert ":" not in first and "/" not in first
    assert escape_hostname("a/b:c") == "a\\057b\\072c"
    assert wire_size_from_name("1700000000.foreign") is None
