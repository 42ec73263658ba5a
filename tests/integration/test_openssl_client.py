"""``openssl s_client`` against mailslot: chain verification, close_notify, TLS versions.

The server must send its full chain (clients trust only the root), end the session with a
TLS close_notify after QUIT (no "unexpected eof"), accept TLS 1.2 and 1.3 and refuse 1.0/1.1
(RFC 8996; RFC 8314 section 4.1).
"""

from __future__ import annotations

import pytest
from tests.support.external import run
from tests.support.programs import require_program
from tests.support.server import MailslotServer

MESSAGE_CRLF = b"Subject: one\r\n\r\nbody\r\n"
SESSION = b"CAPA\nUSER alice\nPASS alice-secret\nSTAT\nQUIT\n"


def _s_client(
    server: MailslotServer, mode: str, *extra: str, stdin: bytes = SESSION
) -> tuple[int, str, str]:
    openssl = require_program("openssl")
    if mode == "implicit":
        target = ["-connect", f"127.0.0.1:{server.implicit[1]}"]
    else:
        target = ["-starttls", "pop3", "-connect", f"127.0.0.1:{server.starttls[1]}"]
    result = run(
        [
            openssl,
            "s_client",
            *target,
            "-CAfile",
            str(server.tls_files.ca_pem),
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-crlf",  # s_client sends our LF-terminated lines as CRLF
            "-ign_eof",  # keep reading until the server closes after QUIT
            "-nocommands",  # a line starting with Q (QUIT) is not s_client's quit command
            *extra,
        ],
        input=stdin,
    )
    return (
        result.returncode,
        result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )


def _replies(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(("+OK", "-ERR"))]


@pytest.mark.parametrize("mode", ["stls", "implicit"])
@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_session_verifies_and_ends_with_close_notify(
    mailslot: MailslotServer, mode: str, version: str
) -> None:
    mailslot.builder("alice").add(MESSAGE_CRLF.replace(b"\r\n", b"\n"))
    code, out, err = _s_client(mailslot, mode, version)
    context = f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert code == 0, context
    assert "Verification: OK" in out, context
    assert "Verify return code: 0 (ok)" in out, context
    assert "unexpected eof" not in err.lower(), context
    assert "error" not in err.lower(), context
    expected_protocol = "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
    assert f"Protocol: {expected_protocol}" in out.replace("Protocol  :", "Protocol:"), context
    replies = _replies(out)
    # implicit TLS shows the greeting in stdout; with -starttls s_client consumes it itself.
    if mode == "implicit":
        assert replies[0].startswith("+OK"), context
        replies = replies[1:]
    assert len(replies) == 5, context  # CAPA, USER, PASS, STAT, QUIT
    assert all(reply.startswith("+OK") for reply in replies), context
    assert replies[3] == f"+OK 1 {len(MESSAGE_CRLF)}", context
    capa = out[out.index(replies[0]) :]
    assert "\nUSER\n" in capa.replace("\r", ""), context
    assert "\nSTLS\n" not in capa.replace("\r", "").split("\n.\n")[0], context


@pytest.mark.parametrize("mode", ["stls", "implicit"])
@pytest.mark.parametrize("version", ["-tls1", "-tls1_1"])
def test_old_tls_versions_are_refused(mailslot: MailslotServer, mode: str, version: str) -> None:
    # SECLEVEL=0 lets the client offer TLS 1.0/1.1 at all, so a refusal is the server's.
    code, out, err = _s_client(
        mailslot, mode, version, "-cipher", "DEFAULT@SECLEVEL=0", stdin=b"CAPA\nQUIT\n"
    )
    context = f"exit {code}\nstdout:\n{out}\nstderr:\n{err}"
    assert code != 0, context
    assert _replies(out) == [], context  # no POP3 reply came over the refused session
    assert mailslot.running
    code, out, err = _s_client(mailslot, mode, "-tls1_2", stdin=b"QUIT\n")
    assert code == 0, err  # and the listener still serves


def test_server_sends_its_intermediate(mailslot: MailslotServer) -> None:
    code, out, err = _s_client(mailslot, "implicit", "-showcerts", stdin=b"QUIT\n")
    assert code == 0, err
    assert out.count("-----BEGIN CERTIFICATE-----") == 2, out  # leaf and intermediate
