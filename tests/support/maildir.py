"""Maildirs written byte for byte, and what RETR and TOP must send for each message.

Names are ``<secs>.M<usec>P<pid>.<host>`` with strictly increasing seconds, so the delivery
order (and so the message numbers) is defined by the order of :meth:`MaildirBuilder.add`.
The wire forms follow RFC 1939 section 3: every bare LF goes out as CRLF, a message without
a final newline gets one CRLF before the terminator, lines starting with ``.`` are stuffed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_BARE_LF = re.compile(rb"(?<!\r)\n")

# Far enough in the past that no real delivery during a test sorts before these names.
FIRST_SECONDS = 1_600_000_000


def to_crlf(data: bytes) -> bytes:
    """``data`` with every LF not preceded by CR turned into CRLF."""
    return _BARE_LF.sub(b"\r\n", data)


def wire_body(data: bytes) -> bytes:
    """The message as RETR carries it, after un-stuffing and before the ``.`` line."""
    body = to_crlf(data)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body


def wire_lines(data: bytes) -> list[bytes]:
    """The lines of :func:`wire_body` without their CRLF, as ``poplib`` returns them."""
    body = wire_body(data)
    return body.split(b"\r\n")[:-1] if body else []


def dot_stuff(body: bytes) -> bytes:
    return b"".join(
        b"." + line if line.startswith(b".") else line for line in body.splitlines(keepends=True)
    )


def retr_wire(data: bytes) -> bytes:
    """Every byte after the ``+OK`` line of RETR, terminator included."""
    return dot_stuff(wire_body(data)) + b".\r\n"


def top_lines(data: bytes, body_lines: int) -> list[bytes]:
    """The lines TOP sends: the header, the blank separator line, ``body_lines`` body lines.

    A message without a blank line is all header and is sent whole.
    """
    lines = wire_lines(data)
    try:
        separator = lines.index(b"")
    except ValueError:
        return lines
    return lines[: separator + 1 + body_lines]


def top_wire(data: bytes, body_lines: int) -> bytes:
    lines = top_lines(data, body_lines)
    return dot_stuff(b"".join(line + b"\r\n" for line in lines)) + b".\r\n"


def wire_size(data: bytes) -> int:
    """The LIST size: octets of the CRLF form, without the CRLF added after a last line."""
    return len(to_crlf(data))


@dataclass(frozen=True)
class StoredMessage:
    base: str  # the file name without ``:2,...``; the UIDL mailslot reports for it
    folder: str  # where it was written: "new" or "cur"
    data: bytes

    @property
    def wire_lines(self) -> list[bytes]:
        return wire_lines(self.data)

    @property
    def retr_wire(self) -> bytes:
        return retr_wire(self.data)

    @property
    def size(self) -> int:
        return wire_size(self.data)


class MaildirBuilder:
    """Writes messages into ``path`` (creating ``new``, ``cur`` and ``tmp``)."""

    def __init__(self, path: Path, *, host: str = "test.example", first_seconds: int = 0) -> None:
        self.path = path
        self.host = host
        self.messages: list[StoredMessage] = []
        self._seconds = first_seconds or FIRST_SECONDS
        for sub in ("new", "cur", "tmp"):
            (path / sub).mkdir(parents=True, exist_ok=True)

    def next_base(self) -> str:
        self._seconds += 1
        return f"{self._seconds}.M{self._seconds % 1_000_000}P{os.getpid()}.{self.host}"

    def add(self, data: bytes, *, folder: str = "new", flags: str = "") -> StoredMessage:
        base = self.next_base()
        name = base if folder == "new" else f"{base}:2,{flags}"
        target = self.path / folder / name
        staging = self.path / "tmp" / base
        staging.write_bytes(data)
        os.rename(staging, target)
        message = StoredMessage(base=base, folder=folder, data=data)
        self.messages.append(message)
        return message

    def add_all(self, messages: list[bytes], *, folder: str = "new") -> list[StoredMessage]:
        return [self.add(data, folder=folder) for data in messages]


def message_files(maildir: Path) -> dict[str, bytes]:
    """``{base name: bytes}`` of every regular file in ``new/`` and ``cur/``."""
    found: dict[str, bytes] = {}
    for sub in ("new", "cur"):
        directory = maildir / sub
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if entry.is_file() and not entry.is_symlink():
                found[entry.name.partition(":")[0]] = entry.read_bytes()
    return found


def _body_lines(count: int) -> bytes:
    return b"".join(b"body line %d\n" % n for n in range(1, count + 1))


# The corpus every client test fetches: each entry is an edge of RFC 1939 framing.
SAMPLE_MESSAGES: dict[str, bytes] = {
    "lf": b"From: alice@example.org\nTo: bob@example.org\nSubject: lf\n\n" + _body_lines(6),
    "crlf": (
        b"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: crlf\r\n\r\nfirst\r\n"
        b"second\r\nthird\r\nfourth\r\n"
    ),
    "mixed": b"Subject: mixed\r\nX-Mixed: yes\n\r\nCRLF line\r\nLF line\nCRLF again\r\nlast LF\n",
    "no-final-newline": b"Subject: no final newline\n\nline one\nthe last line has no newline",
    "empty": b"",
    "dots": (
        b"Subject: dots\n\n.\n..\n.leading dot\n...three dots\n. \nmiddle\n.\n.end without newline"
    ),
    "long-line": b"Subject: long line\n\n" + b"x" * 2000 + b"\nafter the long line\n",
    "8bit": (
        b"Subject: =?ISO-8859-1?Q?caf=E9?=\nContent-Type: text/plain; charset=ISO-8859-1\n"
        b"Content-Transfer-Encoding: 8bit\n\ncaf\xe9 \xff\xfe\x80\x81 na\xefve\n\xc3\xa9t\xc3\xa9\n"
    ),
    "headers-only": b"Subject: only a header\nX-Nothing: here\n",
    "body-first-blank": b"\nstarts with the blank line\nso it has no header\n",
}


def sample_corpus() -> list[tuple[str, bytes]]:
    return list(SAMPLE_MESSAGES.items())
