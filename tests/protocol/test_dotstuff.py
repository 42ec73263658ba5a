"""Message bytes to the wire (RFC 1939 sections 3, 7, 11): CRLF, byte-stuffing, TOP, sizes.

The reference implementations here are deliberately written differently from the core (regular
expressions and whole-message passes) so that the two can disagree.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailslot.protocol.dotstuff import (
    CrlfConverter,
    DotStuffer,
    MessageEncoder,
    TopFilter,
    wire_size,
)

# ----------------------------------------------------------------- references


def to_crlf(data: bytes) -> bytes:
    """Every LF not preceded by CR becomes CRLF; nothing else changes."""
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def split_lines(data: bytes) -> list[bytes]:
    """Lines with their LF kept; a last line without LF is kept too."""
    return re.findall(rb"[^\n]*\n|[^\n]+\Z", data)


def reference_top(crlf_data: bytes, lines: int) -> bytes:
    """Header, blank line and ``lines`` body lines of CRLF data (RFC 1939 section 7)."""
    out: list[bytes] = []
    in_header = True
    left = lines
    for line in split_lines(crlf_data):
        if in_header:
            out.append(line)
            if line == b"\r\n":
                in_header = False
        elif left > 0:
            out.append(line)
            left -= 1
        else:
            break
    return b"".join(out)


def client_unstuff(wire: bytes) -> bytes:
    """Read a multi-line response body as poplib does: stop at ".", drop one leading "."."""
    assert wire.endswith(b".\r\n")
    lines = wire.split(b"\r\n")
    assert lines[-1] == b""
    assert lines[-2] == b"."
    body = lines[:-2]
    result = bytearray()
    for line in body:
        # A line before the terminator that is exactly "." would end the response early.
        assert line != b"."
        if line.startswith(b"."):
            # Every line the server sends that starts with "." must have been stuffed.
            assert line.startswith(b"..")
            line = line[1:]
        result += line + b"\r\n"
    return bytes(result)


def ended(crlf_data: bytes) -> bytes:
    """What a client reads back: the message with a final CRLF added if it lacked one."""
    if crlf_data and not crlf_data.endswith(b"\r\n"):
        return crlf_data + b"\r\n"
    return crlf_data


def chunked(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = sorted({c for c in cuts if 0 <= c <= len(data)})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def encode(chunks: Sequence[bytes], top_lines: int | None = None) -> bytes:
    encoder = MessageEncoder(top_lines)
    out = b"".join(encoder.encode(chunk) for chunk in chunks)
    return out + encoder.finish()


# Bytes biased towards the characters that matter on the wire.
PIECES = st.sampled_from(
    [b"\n", b"\r", b".", b"\r\n", b"..", b"\r\n.\r\n", b"\n.\n", b"a", b"From: x", b" ", b"\x00"]
)
MESSAGE = st.lists(PIECES | st.binary(max_size=4), max_size=40).map(b"".join)


@st.composite
def message_and_cuts(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    data = draw(MESSAGE)
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    return data, cuts


# ----------------------------------------------------------------- wire_size


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (b"", 0),
        (b"a", 1),
        (b"a\n", 3),
        (b"a\r\n", 3),
        (b"\n\n", 4),
        (b"\r", 1),
        (b"\r\r\n", 3),
        (b"\n\r", 3),
        (b"a\nb\r\nc", 7),
        (b".\n", 3),
    ],
)
def test_wire_size(data: bytes, size: int) -> None:
    assert wire_size(data) == size
    assert len(to_crlf(data)) == size


# ----------------------------------------------------------------- CrlfConverter

CRLF_SAMPLES = [
    b"a\r\nb\nc\r\rd\n\r\n",
    b"\r\n\r\n",
    b"\r\r\r\n\n",
    b"\n",
    b"\r",
    b"x\r",
    b"\rx\n",
]


@pytest.mark.parametrize("data", CRLF_SAMPLES)
def test_crlf_converter_every_single_split(data: bytes) -> None:
    for i in range(len(data) + 1):
        converter = CrlfConverter()
        out = converter.convert(data[:i]) + converter.convert(data[i:])
        assert out == to_crlf(data), i


@pytest.mark.parametrize("data", CRLF_SAMPLES)
def test_crlf_converter_every_double_split(data: bytes) -> None:
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            converter = CrlfConverter()
            out = b"".join(converter.convert(c) for c in (data[:i], data[i:j], data[j:]))
            assert out == to_crlf(data), (i, j)


@pytest.mark.parametrize("data", CRLF_SAMPLES)
def test_crlf_converter_byte_by_byte(data: bytes) -> None:
    converter = CrlfConverter()
    out = b"".join(converter.convert(data[i : i + 1]) for i in range(len(data)))
    assert out == to_crlf(data)


def test_crlf_converter_cr_at_boundary_then_empty_chunk() -> None:
    converter = CrlfConverter()
    out = converter.convert(b"a\r") + converter.convert(b"") + converter.convert(b"\nb")
    assert out == b"a\r\nb"


def test_crlf_converter_cr_at_boundary_not_followed_by_lf() -> None:
    converter = CrlfConverter()
    assert converter.convert(b"a\r") + converter.convert(b"b\n") == b"a\rb\r\n"


def test_crlf_converter_lone_lf_after_boundary_without_cr() -> None:
    converter = CrlfConverter()
    assert converter.convert(b"a") + converter.convert(b"\n") == b"a\r\n"


@given(message_and_cuts())
def test_crlf_converter_any_chunking(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    converter = CrlfConverter()
    out = b"".join(converter.convert(c) for c in chunked(data, cuts))
    assert out == to_crlf(data)


# ----------------------------------------------------------------- DotStuffer


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"a\r\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"..x\r\n", b"...x\r\n.\r\n"),
        (b"x.y\r\n", b"x.y\r\n.\r\n"),
    ],
)
def test_dot_stuffer(data: bytes, wire: bytes) -> None:
    stuffer = DotStuffer()
    assert stuffer.stuff(data) + stuffer.terminator() == wire


def test_dot_stuffer_dot_at_start_of_next_chunk() -> None:
    stuffer = DotStuffer()
    out = stuffer.stuff(b"a\r\n") + stuffer.stuff(b".b\r\n") + stuffer.stuff(b".")
    assert out + stuffer.terminator() == b"a\r\n..b\r\n..\r\n.\r\n"


def test_dot_stuffer_dot_not_at_line_start_in_next_chunk() -> None:
    stuffer = DotStuffer()
    out = stuffer.stuff(b"a\r") + stuffer.stuff(b".b")
    # "\r" alone does not end a line, so the "." is inside a line.
    assert out == b"a\r.b"


def test_dot_stuffer_empty_chunk_keeps_line_state() -> None:
    stuffer = DotStuffer()
    out = stuffer.stuff(b"a\r\n") + stuffer.stuff(b"") + stuffer.stuff(b".")
    assert out == b"a\r\n.."
    assert stuffer.terminator() == b"\r\n.\r\n"


# ----------------------------------------------------------------- TopFilter

HEADER = b"From: a@example.org\r\nSubject: hi\r\n"
BODY_LINES = [b"line one\r\n", b".dotted\r\n", b"\r\n", b"line four\r\n"]
MESSAGE_CRLF = HEADER + b"\r\n" + b"".join(BODY_LINES)


@pytest.mark.parametrize("lines", range(len(BODY_LINES) + 3))
def test_top_filter_header_blank_and_k_lines(lines: int) -> None:
    expected = HEADER + b"\r\n" + b"".join(BODY_LINES[:lines])
    for cut in range(len(MESSAGE_CRLF) + 1):
        top = TopFilter(lines)
        out = top.filter(MESSAGE_CRLF[:cut]) + top.filter(MESSAGE_CRLF[cut:])
        assert out == expected, cut
        assert top.done == (lines <= len(BODY_LINES))


def test_top_filter_byte_by_byte() -> None:
    top = TopFilter(2)
    out = b"".join(top.filter(MESSAGE_CRLF[i : i + 1]) for i in range(len(MESSAGE_CRLF)))
    assert out == HEADER + b"\r\n" + BODY_LINES[0] + BODY_LINES[1]


def test_top_filter_done_only_after_last_wanted_line() -> None:
    top = TopFilter(1)
    assert top.filter(HEADER) == HEADER
    assert not top.done
    assert top.filter(b"\r\n") == b"\r\n"
    assert not top.done
    assert top.filter(b"body") == b"body"
    assert not top.done
    assert top.filter(b"\r\nmore\r\n") == b"\r\n"
    assert top.done
    assert top.filter(b"anything\r\n") == b""


def test_top_zero_is_done_after_blank_line() -> None:
    top = TopFilter(0)
    assert top.filter(MESSAGE_CRLF) == HEADER + b"\r\n"
    assert top.done


@pytest.mark.parametrize("lines", [0, 1, 5])
def test_top_filter_message_without_blank_line_is_all_header(lines: int) -> None:
    data = b"From: a\r\nSubject: b\r\nno blank line here\r\n"
    top = TopFilter(lines)
    assert top.filter(data) == data
    assert not top.done


def test_top_filter_message_starting_with_blank_line() -> None:
    data = b"\r\nbody 1\r\nbody 2\r\n"
    top = TopFilter(1)
    assert top.filter(data) == b"\r\nbody 1\r\n"
    assert top.done


def test_top_filter_long_header_line_split_over_chunks_is_not_blank() -> None:
    # A header line whose two bytes "\r\n" arrive in their own chunk is not a blank line.
    top = TopFilter(0)
    out = top.filter(b"Subject: x") + top.filter(b"\r\n") + top.filter(b"\r\nbody\r\n")
    assert out == b"Subject: x\r\n\r\n"
    assert top.done


# ----------------------------------------------------------------- MessageEncoder


def test_encoder_lf_message() -> None:
    assert encode([b"Subject: x\n\n.hidden\nend"]) == (
        b"Subject: x\r\n\r\n..hidden\r\nend\r\n.\r\n"
    )


def test_encoder_top_on_lf_message() -> None:
    data = b"Subject: x\n\nb1\n.b2\nb3\n"
    assert encode([data], top_lines=2) == b"Subject: x\r\n\r\nb1\r\n..b2\r\n.\r\n"
    encoder = MessageEncoder(2)
    encoder.encode(data)
    assert encoder.done


def test_encoder_retr_is_never_done() -> None:
    encoder = MessageEncoder()
    encoder.encode(b"a\n\nb\n")
    assert not encoder.done


def test_encoder_empty_message() -> None:
    assert encode([]) == b".\r\n"
    assert encode([b""]) == b".\r\n"


def test_encoder_terminator_only_once_for_message_ending_in_dot_line() -> None:
    assert encode([b"a\n.\n"]) == b"a\r\n..\r\n.\r\n"
    assert encode([b"a\n."]) == b"a\r\n..\r\n.\r\n"


@given(message_and_cuts())
def test_encoder_round_trip_through_client(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    wire = encode(chunked(data, cuts))
    assert client_unstuff(wire) == ended(to_crlf(data))


@given(MESSAGE)
def test_crlf_length_is_wire_size(data: bytes) -> None:
    assert len(to_crlf(data)) == wire_size(data)


@given(message_and_cuts())
def test_encoder_never_terminates_early(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    wire = encode(chunked(data, cuts))
    assert not wire[:-3].startswith(b".\r\n")
    assert wire.find(b"\r\n.\r\n") in (-1, len(wire) - 5)


@given(message_and_cuts())
def test_encoder_output_independent_of_chunking(case: tuple[bytes, list[int]]) -> None:
    data, cuts = case
    assert encode(chunked(data, cuts)) == encode([data])
    assert encode([data[i : i + 1] for i in range(len(data))]) == encode([data])


@given(message_and_cuts(), st.integers(0, 12))
def test_encoder_top_matches_reference(case: tuple[bytes, list[int]], lines: int) -> None:
    data, cuts = case
    encoder = MessageEncoder(lines)
    out = bytearray()
    for chunk in chunked(data, cuts):
        out += encoder.encode(chunk)
    wire = bytes(out) + encoder.finish()
    assert client_unstuff(wire) == ended(reference_top(to_crlf(data), lines))
    assert wire == encode([data], top_lines=lines)


@given(
    st.lists(st.from_regex(rb"[A-Za-z]{1,8}: [ -~]{0,10}", fullmatch=True), max_size=4),
    st.lists(st.sampled_from([b"", b".", b"..", b"text", b". x", b"a\rb"]), max_size=8),
    st.integers(0, 10),
    st.booleans(),
)
def test_top_header_body_shapes(
    headers: list[bytes], body: list[bytes], lines: int, lf_stored: bool
) -> None:
    end = b"\n" if lf_stored else b"\r\n"
    data = b"".join(h + end for h in headers) + end + b"".join(b + end for b in body)
    wanted = b"".join(h + b"\r\n" for h in headers) + b"\r\n"
    wanted += b"".join(b + b"\r\n" for b in body[:lines])
    wire = encode([data], top_lines=lines)
    assert client_unstuff(wire) == wanted


# ----------------------------------------------------------------- Dovecot's client workarounds


def workaround_reference(data: bytes, *, no_nuls: bool, end_of_header: bool) -> bytes:
    """What Dovecot 2.3 sends for RETR (its fetch_callback), written as whole-message passes."""
    if no_nuls:
        data = data.replace(b"\x00", b"\x80")
    wire = to_crlf(data)
    has_empty_line = wire.startswith(b"\r\n") or b"\n\r\n" in wire
    body = re.sub(rb"(^|\n)\.", rb"\1..", wire)
    if not body.endswith(b"\n"):
        body += b"\r\n"
    if end_of_header and not has_empty_line:
        body += b"\r\n"
    return body + b".\r\n"


@given(message_and_cuts(), st.booleans(), st.booleans())
def test_workarounds_any_chunking(
    case: tuple[bytes, list[int]], no_nuls: bool, end_of_header: bool
) -> None:
    data, cuts = case
    encoder = MessageEncoder(no_nuls=no_nuls, end_of_header=end_of_header)
    wire = b"".join(encoder.encode(chunk) for chunk in chunked(data, cuts)) + encoder.finish()
    if data:  # Dovecot sends an empty message as CRLF: mailslot does not (test_dovecot_parity)
        assert wire == workaround_reference(data, no_nuls=no_nuls, end_of_header=end_of_header)


def test_outlook_no_nuls_sends_0x80_octet_for_octet() -> None:
    encoder = MessageEncoder(no_nuls=True)
    assert encoder.encode(b"a\x00b\n\x00\x00\n") + encoder.finish() == (
        b"a\x80b\r\n\x80\x80\r\n.\r\n"
    )
    plain = MessageEncoder()
    assert plain.encode(b"a\x00b\n") == b"a\x00b\r\n"


@pytest.mark.parametrize(
    ("data", "wire"),
    [
        (b"Subject: x\nX: y\n", b"Subject: x\r\nX: y\r\n\r\n.\r\n"),
        (b"Subject: x", b"Subject: x\r\n\r\n.\r\n"),
        (b"Subject: x\n\nbody\n", b"Subject: x\r\n\r\nbody\r\n.\r\n"),
        (b"\nbody\n", b"\r\nbody\r\n.\r\n"),
        (b"Subject: x\n\n", b"Subject: x\r\n\r\n.\r\n"),
    ],
)
def test_oe_ns_eoh_adds_the_missing_empty_line(data: bytes, wire: bytes) -> None:
    encoder = MessageEncoder(end_of_header=True)
    assert b"".join(encoder.encode(bytes([b])) for b in data) + encoder.finish() == wire


def test_oe_ns_eoh_on_top_of_a_message_without_empty_line() -> None:
    encoder = MessageEncoder(0, end_of_header=True)
    assert encoder.encode(b"Subject: x\nX: y\n") + encoder.finish() == (
        b"Subject: x\r\nX: y\r\n\r\n.\r\n"
    )
    encoder = MessageEncoder(0, end_of_header=True)
    assert encoder.encode(b"Subject: x\n\nbody\n") + encoder.finish() == (
        b"Subject: x\r\n\r\n.\r\n"
    )
