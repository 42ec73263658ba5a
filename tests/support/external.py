"""Running external clients: captured output, a safety timeout, readable failures."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from .maildir import StoredMessage, wire_body

# A safety net so a hung client fails its test; not a performance threshold.
CLIENT_TIMEOUT = 60.0


def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=CLIENT_TIMEOUT,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[bytes]) -> str:
    out = result.stdout.decode("utf-8", "replace")[-4000:]
    err = result.stderr.decode("utf-8", "replace")[-4000:]
    return f"{result.args!r} exited {result.returncode}\nstdout:\n{out}\nstderr:\n{err}"


_RECEIVED = re.compile(rb"\AReceived:[^\n]*\n(?:[ \t][^\n]*\n)*")


def strip_received(data: bytes) -> bytes:
    """Remove the one ``Received:`` header (and its folded lines) a client prepended."""
    match = _RECEIVED.match(data)
    assert match is not None, f"no leading Received header in {data[:200]!r}"
    return data[match.end() :]


def crlf_to_lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def assert_delivered(delivered: Sequence[bytes], messages: Sequence[StoredMessage]) -> None:
    """A fetching client delivered each message, in order, as its LF form after a Received."""
    assert len(delivered) == len(messages)
    for got, message in zip(delivered, messages, strict=True):
        assert strip_received(got) == crlf_to_lf(wire_body(message.data)), message.base
