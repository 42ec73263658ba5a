"""User-name rules (mailslot.auth.usernames): what may reach a path, a query or a log line."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailslot.auth.usernames import InvalidUsername, for_log, is_valid, validate

VALID = [
    "alice",
    "alice@example.com",
    "first.last+tag",
    "a.b.c",
    "x",
    "x" * 255,
    "é" * 127,  # 254 octets
    unicodedata.normalize("NFC", "jöhn"),
    "用户",  # RFC 6856 UTF-8 user name
]

INVALID = [
    "",
    "../x",
    "a/b",
    "a\\b",
    "a:b",
    "a\x00b",
    "a\r\nb",
    "a\nb",
    "a\tb",
    "a b",
    "a\u00a0b",  # no-break space
    "a\x7fb",  # DEL
    "a\x85b",  # C1 NEL
    "a\u202eb",  # bidi override (format character)
    "a\u200bb",  # zero-width space
    "a\udcffb",  # lone surrogate, e.g. from surrogateescape decoding
    "a\ue000b",  # private use
    ".hidden",
    "..",
    "a..b",
    "x" * 256,
    "x" * 300,
    "é" * 128,  # 128 characters but 256 octets
    unicodedata.normalize("NFD", "jöhn"),
]


@pytest.mark.parametrize("name", VALID, ids=repr)
def test_valid_names_are_returned_unchanged(name: str) -> None:
    assert validate(name) is name
    assert is_valid(name)


@pytest.mark.parametrize("name", INVALID, ids=repr)
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidUsername):
        validate(name)
    assert not is_valid(name)


def test_invalid_username_is_a_value_error_without_the_name() -> None:
    with pytest.raises(ValueError) as info:
        validate("evil\r\nInjected: yes")
    assert "evil" not in str(info.value)


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidUsername):
        validate(b"alice")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", VALID, ids=repr)
def test_for_log_keeps_valid_names_readable(name: str) -> None:
    assert for_log(name, limit=1000) == name


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("a b", "a\\x20b"),
        ("a\\x0d", "a\\\\x0d"),  # a literal backslash cannot forge an escape
        ("\x1b[31m", "\\x1b[31m"),
        ("a\u202eb", "a\\u202eb"),
        ("a\udcffb", "a\\udcffb"),
        ("\U000e0001", "\\U000e0001"),
    ],
)
def test_for_log_escapes(raw: str, logged: str) -> None:
    assert for_log(raw) == logged


def test_for_log_output_is_one_printable_line() -> None:
    everything = "".join(chr(c) for c in range(0x250)) + "\u2028\u2029\ud800"
    out = for_log(everything, limit=len(everything))
    assert out.isprintable()
    assert not any(c.isspace() for c in out)


def test_for_log_truncates_long_input() -> None:
    assert for_log("x" * 10, limit=4) == "xxxx..."
    assert for_log("x" * 4, limit=4) == "xxxx"


@given(st.text(max_size=300))
def test_any_accepted_name_is_safe_in_a_path_and_a_log_line(name: str) -> None:
    if is_valid(name):
        assert not set(name) & set("/\\:\x00\r\n\t ")
        assert not name.startswith(".") and ".." not in name
        assert 1 <= len(name.encode("utf-8")) <= 255
    out = for_log(name, limit=300)
    assert out.isprintable() and not any(c.isspace() for c in out)
