"""CRLF framing with a hard cap (RFC 1939 section 3, RFC 2449 section 4: 255 octets with CRLF)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailslot.protocol.framing import TOO_LONG, LineBuffer

CAP = 255


def drain(buffer: LineBuffer, limit: int = CAP) -> list[bytes | object]:
    out: list[bytes | object] = []
    while (line := buffer.next_line(limit)) is not None:
        out.append(line)
    return out


def test_complete_line_without_crlf() -> None:
    buffer = LineBuffer()
    buffer.feed(b"STAT\r\n")
    assert buffer.next_line(CAP) == b"STAT"
    assert buffer.next_line(CAP) is None
    assert len(buffer) == 0


def test_incomplete_line_waits() -> None:
    buffer = LineBuffer()
    buffer.feed(b"STA")
    assert buffer.next_line(CAP) is None
    buffer.feed(b"T\r")
    assert buffer.next_line(CAP) is None
    buffer.feed(b"\n")
    assert buffer.next_line(CAP) == b"STAT"


def test_bare_lf_accepted() -> None:
    buffer = LineBuffer()
    buffer.feed(b"NOOP\nSTAT\r\n")
    assert drain(buffer) == [b"NOOP", b"STAT"]


def test_empty_lines() -> None:
    buffer = LineBuffer()
    buffer.feed(b"\r\n\n")
    assert drain(buffer) == [b"", b""]


def test_only_one_cr_is_stripped() -> None:
    buffer = LineBuffer()
    buffer.feed(b"X\r\r\n")
    assert drain(buffer) == [b"X\r"]


def test_cr_inside_line_is_kept() -> None:
    buffer = LineBuffer()
    buffer.feed(b"A\rB\r\n")
    assert drain(buffer) == [b"A\rB"]


def test_253_octets_plus_crlf_fits() -> None:
    buffer = LineBuffer()
    command = b"X" * 253
    buffer.feed(command + b"\r\n")
    assert drain(buffer) == [command]


def test_254_octets_plus_crlf_is_too_long() -> None:
    buffer = LineBuffer()
    buffer.feed(b"X" * 254 + b"\r\nNOOP\r\n")
    assert drain(buffer) == [TOO_LONG, b"NOOP"]


def test_254_octets_plus_bare_lf_fits() -> None:
    buffer = LineBuffer()
    buffer.feed(b"X" * 254 + b"\n")
    assert drain(buffer) == [b"X" * 254]


def test_255_octets_plus_bare_lf_is_too_long() -> None:
    buffer = LineBuffer()
    buffer.feed(b"X" * 255 + b"\n")
    assert drain(buffer) == [TOO_LONG]


@pytest.mark.parametrize("length", [253, 254])
def test_cap_edge_byte_by_byte(length: int) -> None:
    buffer = LineBuffer()
    out: list[bytes | object] = []
    for byte in b"X" * length + b"\r\nNOOP\r\n":
        buffer.feed(bytes([byte]))
        out += drain(buffer)
    expected: list[bytes | object] = [b"X" * 253] if length == 253 else [TOO_LONG]
    assert out == [*expected, b"NOOP"]


@given(
    st.lists(st.from_regex(rb"[A-Z ]{0,20}", fullmatch=True), min_size=1, max_size=8),
    st.data(),
)
def test_data_split_anywhere_gives_same_lines(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(line + b"\r\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    bounds = [0, *cuts, len(stream)]
    buffer = LineBuffer()
    out: list[bytes | object] = []
    for a, b in itertools.pairwise(bounds):
        if b > a:  # feeding b"" would mean end of stream
            buffer.feed(stream[a:b])
        out += drain(buffer)
    assert out == lines


def test_data_byte_by_byte() -> None:
    stream = b"USER alice\r\nPASS secret word\r\nSTAT\n"
    buffer = LineBuffer()
    out: list[bytes | object] = []
    for byte in stream:
        buffer.feed(bytes([byte]))
        out += drain(buffer)
    assert out == [b"USER alice", b"PASS secret word", b"STAT"]


def test_too_long_reported_once_and_rest_discarded() -> None:
    buffer = LineBuffer()
    buffer.feed(b"X" * 300)
    assert buffer.next_line(CAP) is TOO_LONG
    assert buffer.next_line(CAP) is None
    buffer.feed(b"Y" * 300)
    assert buffer.next_line(CAP) is None
    buffer.feed(b"ZZZ\r\nNOOP\r\n")
    assert drain(buffer) == [b"NOOP"]


def test_too_long_exactly_at_cap_without_newline() -> None:
    buffer = LineBuffer()
    buffer.feed(b"X" * (CAP - 1))
    assert buffer.next_line(CAP) is None  # 254 octets could still be "253 + CR" ... + LF
    buffer.feed(b"X")
    assert buffer.next_line(CAP) is TOO_LONG


def test_memory_stays_bounded_on_a_megabyte_without_newline() -> None:
    buffer = LineBuffer()
    results: list[bytes | object] = []
    chunk = b"A" * 100
    for _ in range(10_000):  # 1 MB
        buffer.feed(chunk)
        results += drain(buffer)
        assert len(buffer) <= CAP
    assert results == [TOO_LONG]
    buffer.feed(b"tail\r\nQUIT\r\n")
    assert drain(buffer) == [b"QUIT"]


def test_too_long_complete_line_in_one_chunk_is_reported_once() -> None:
    buffer = LineBuffer()
    buffer.feed(b"X" * 1000 + b"\r\n" + b"Y" * 1000 + b"\r\nNOOP\r\n")
    assert drain(buffer) == [TOO_LONG, TOO_LONG, b"NOOP"]


def test_limit_is_chosen_per_call() -> None:
    buffer = LineBuffer()
    buffer.feed(b"A" * 1000 + b"\r\n")
    assert buffer.next_line(8192) == b"A" * 1000


def test_eof() -> None:
    buffer = LineBuffer()
    assert not buffer.eof
    buffer.feed(b"STAT\r\nQUI")
    buffer.feed(b"")
    assert buffer.eof
    assert buffer.next_line(CAP) == b"STAT"
    assert buffer.next_line(CAP) is None


def test_clear_returns_and_drops_buffered_bytes() -> None:
    buffer = LineBuffer()
    buffer.feed(b"STLS\r\nCAPA\r\n")
    assert buffer.next_line(CAP) == b"STLS"
    assert buffer.clear() == b"CAPA\r\n"
    assert len(buffer) == 0
    assert buffer.next_line(CAP) is None
    buffer.feed(b"NOOP\r\n")
    assert buffer.next_line(CAP) == b"NOOP"


def test_too_long_marker_repr() -> None:
    assert repr(TOO_LONG) == "TOO_LONG"
