"""[log] format: the text and JSON renderings of one event carry the same fields, escape
control characters, and a hostile value can neither add a line nor pass for a field."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from mailslot import log
from mailslot.log import Formatter, LogContext, escape
from mailslot.logfields import event_name

CREATED = 1_800_000_000.25
TEXT_HEAD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) (?P<logger>\S+): ")


@pytest.fixture(autouse=True)
def no_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(log, "_PROCESS_FIELDS", {})
    monkeypatch.setattr(log, "_process_rendered", ())
    yield


def text_fields(line: str) -> dict[str, str]:
    """The key=value pairs of a text line (logfmt: a quoted value may hold spaces)."""
    body = TEXT_HEAD.sub("", line)
    return {
        key: quoted.replace('\\"', '"') if quoted else plain
        for key, quoted, plain in re.findall(r'(?:^| )(\w+)=(?:"((?:[^"\\]|\\.)*)"|(\S*))', body)
    }


def context() -> LogContext:
    ctx = log.session_prefix("5a1", "[fe80::1%eth0]:41000")
    ctx.set("listener", "starttls")
    ctx.set("tls", "TLSv1.3/TLS_AES_256_GCM_SHA384")
    ctx.set("user", "alice")
    return ctx


def both(msg: str, *args: object, ctx: LogContext | None = None) -> tuple[str, dict[str, object]]:
    text = Formatter().line(CREATED, logging.INFO, "mailslot.session", msg, args, ctx)
    line = Formatter(style="json").line(CREATED, logging.INFO, "mailslot.session", msg, args, ctx)
    assert "\n" not in text and "\n" not in line
    return text, json.loads(line)


def test_text_and_json_carry_the_same_fields() -> None:
    text, event = both(
        "disconnect: reason=%s retr=%d retr_octets=%d summary=%s",
        "idle timeout",
        2,
        1234,
        "top=0/0, retr=2/1234",
        ctx=context(),
    )
    assert text.endswith(
        'session=5a1 peer=[fe80::1%eth0]:41000 disconnect: reason="idle timeout" retr=2'
        ' retr_octets=1234 summary="top=0/0, retr=2/1234" listener=starttls'
        " tls=TLSv1.3/TLS_AES_256_GCM_SHA384 user=alice"
    )
    assert event["event"] == "disconnect"
    assert event["level"] == "info"
    assert event["logger"] == "mailslot.session"
    assert event["time"] == "2027-01-15T08:00:00.250Z"
    assert event["message"] == TEXT_HEAD.sub("", text).split(" ", 2)[2].split(" listener=")[0]
    head = {"time", "level", "logger", "event", "message"}
    fields = {k: str(v) for k, v in event.items() if k not in head}
    assert fields == text_fields(text)
    # Numbers stay numbers in JSON.
    assert event["retr"] == 2 and event["retr_octets"] == 1234


def test_a_line_without_a_session_has_the_process_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    log.set_worker(3)
    text, event = both("peer=%s TLS handshake failed: %s", "192.0.2.1:4000", "bad version")
    assert text.endswith("peer=192.0.2.1:4000 TLS handshake failed: bad version worker=3")
    assert event["event"] == "tls_handshake_failed"
    assert (event["peer"], event["worker"]) == ("192.0.2.1:4000", 3)
    assert "session" not in event


@pytest.mark.parametrize(
    ("msg", "name"),
    [
        ("login failed: user=%s mechanism=%s", "login_failed"),
        ("login: user=%s mechanism=%s messages=%d", "login"),
        ("peer=%s PROXY header refused, closing: %s", "proxy_header_refused"),
        ("login refused, too many sessions: user=%s", "login_refused"),
        ("deleted %d messages", "deleted_messages"),
        ("worker %d retired", "worker_retired"),
        ("%s: %s", "message"),
        ("no arguments, 100%", "no_arguments"),
    ],
)
def test_event_names_come_from_the_message(msg: str, name: str) -> None:
    assert event_name(msg) == name


def test_control_characters_are_escaped_in_both_whatever_the_caller_did() -> None:
    raw = "a\rb\x1b[31m\u2028\x85\x00"
    text, event = both("bad command: %s detail=%s", raw, raw)
    assert "\r" not in text and "\x1b" not in text and "\u2028" not in text and "\x85" not in text
    assert "bad command: a\\x0db\\x1b[31m\\u2028\\u0085\\x00 detail=" in text
    assert event["detail"] == "a\\x0db\\x1b[31m\\u2028\\u0085\\x00"
    # A value the caller escaped already is not escaped twice.
    assert both("x: user=%s", escape("a\rb"))[0].endswith("user=a\\x0db")


def test_a_hostile_user_name_can_neither_add_a_line_nor_pass_for_a_field() -> None:
    name = 'mal mechanism=EVIL\r\n2030-01-01 00:00:00,000 INFO forged: user=root" x="'
    text, event = both("login failed: user=%s mechanism=%s", escape(name, 64), "USER", ctx=None)
    assert text.count("\n") == 0
    fields = text_fields(text)
    assert fields["mechanism"] == "USER"
    assert fields["user"] == escape(name, 64)
    assert set(fields) == {"user", "mechanism"}
    assert (event["user"], event["mechanism"]) == (escape(name, 64), "USER")


def test_a_field_named_like_the_head_does_not_replace_it() -> None:
    _, event = both("odd: message=%s level=%s", "m", "l")
    assert (event["message"], event["level"]) == ("odd: message=m level=l", "info")
    assert (event["field_message"], event["field_level"]) == ("m", "l")


def test_records_of_logging_render_as_the_direct_path_does() -> None:
    """What a record of a plain logger call becomes equals Formatter.line(), in both."""
    for style in ("text", "json"):
        formatter = Formatter(style=style)
        record = logging.LogRecord(
            "mailslot",
            logging.WARNING,
            __file__,
            1,
            "listening: pop3 %s tls=%s",
            ("h:1", "x"),
            None,
        )
        record.created, record.msecs = CREATED, 250.0
        assert formatter.format(record) == formatter.line(
            CREATED, logging.WARNING, "mailslot", "listening: pop3 %s tls=%s", ("h:1", "x")
        )


def test_an_exception_is_one_field_of_the_json_line() -> None:
    formatter = Formatter(style="json")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        import sys

        record = logging.LogRecord(
            "mailslot", logging.ERROR, __file__, 1, "internal error", (), sys.exc_info()
        )
    line = formatter.format(record)
    assert "\n" not in line
    event = json.loads(line)
    assert event["event"] == "internal_error"
    assert "ValueError: boom\nsecond line" in event["exception"]


def test_a_mapping_argument_gives_its_message_and_no_fields() -> None:
    record = logging.LogRecord("mailslot", logging.INFO, __file__, 1, "n=%(n)d", ({"n": 1},), None)
    event = json.loads(Formatter(style="json").format(record))
    assert event["message"] == "n=1"
    assert "n" not in event


def test_an_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        Formatter(style="logfmt")
