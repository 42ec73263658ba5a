"""KeyLines: the best-effort line index behind configuration error messages."""

from __future__ import annotations

from mailslot.tomllines import KeyLines

TEXT = '''\
title = "x"
tls.certificate = "a.pem"

[[listener]]
port = 1

[[ listener ]]  # spaces and a comment
"port" = 2
banner = """
[limits]
idle_timeout = 1
"""
tls = "none"

[limits]
idle_timeout = 600
'''


def test_keys_in_array_tables_by_index() -> None:
    lines = KeyLines(TEXT)
    assert lines.find("listener", "port", 0) == 5
    assert lines.find("listener", "port", 1) == 8
    assert lines.find("listener", "tls", 1) == 13


def test_multiline_strings_hide_headers_and_keys() -> None:
    lines = KeyLines(TEXT)
    assert lines.find("limits", "idle_timeout") == 16


def test_missing_key_falls_back_to_the_header() -> None:
    lines = KeyLines(TEXT)
    assert lines.find("listener", "address", 1) == 7
    assert lines.find("limits", "login_timeout") == 15


def test_root_keys_and_dotted_keys() -> None:
    lines = KeyLines(TEXT)
    assert lines.find(None, "title") == 1
    assert lines.find("tls", "certificate") == 2


def test_unknown_places_are_none() -> None:
    lines = KeyLines(TEXT)
    assert lines.find("server", "hostname") is None
    assert lines.find("listener", "port", 5) is None
    assert lines.find(None, "nothing") is None
