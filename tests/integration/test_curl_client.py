"""curl's POP3 client (pop3s:// and pop3:// with --ssl-reqd, i.e. STLS) against mailslot.

curl writes a RETR body with CRLF line ends and dot-stuffing removed; custom commands go
through ``--request`` and, for single-line replies, ``--head`` (libcurl's NOBODY).
"""

from __future__ import annotations

import pytest
from tests.support.external import describe, run
from tests.support.maildir import message_files, wire_body
from tests.support.popclient import MODES, Corpus
from tests.support.programs import require_program


def _curl(corpus: Corpus, mode: str, path: str, *extra: str) -> bytes:
    curl = require_program("curl")
    server = corpus.server
    if mode == "implicit":
        url = f"pop3s://localhost:{server.implicit[1]}/{path}"
        tls_args = []
    else:
        url = f"pop3://localhost:{server.starttls[1]}/{path}"
        tls_args = ["--ssl-reqd"]
    result = run(
        [
            curl,
            "--silent",
            "--show-error",
            "--ipv4",  # the listeners are on 127.0.0.1; localhost matches the certificate
            "--cacert",
            str(server.tls_files.ca_pem),
            "--user",
            f"{corpus.user}:{corpus.password}",
            *tls_args,
            *extra,
            url,
        ]
    )
    assert result.returncode == 0, describe(result) + "\n" + server.log()[-3000:]
    return result.stdout


@pytest.mark.parametrize("mode", MODES)
def test_curl_list(corpus: Corpus, mode: str) -> None:
    expected = b"".join(b"%d %d\r\n" % (n, m.size) for n, m in enumerate(corpus.messages, 1))
    assert _curl(corpus, mode, "") == expected


@pytest.mark.parametrize("mode", MODES)
def test_curl_uidl(corpus: Corpus, mode: str) -> None:
    expected = b"".join(
        b"%d %s\r\n" % (n, m.base.encode()) for n, m in enumerate(corpus.messages, 1)
    )
    assert _curl(corpus, mode, "", "--request", "UIDL") == expected


@pytest.mark.parametrize("mode", MODES)
def test_curl_retr_every_message(corpus: Corpus, mode: str) -> None:
    for n, message in enumerate(corpus.messages, 1):
        name = corpus.names[n - 1]
        expected = wire_body(message.data)
        if not expected:
            # curl's end-of-body scanner starts as if after a CRLF and writes that CRLF out
            # when the body is empty: "+OK\r\n.\r\n" comes out as "\r\n" (the wire bytes
            # are checked exactly in test_poplib_client.py).
            expected = b"\r\n"
        assert _curl(corpus, mode, str(n)) == expected, name


@pytest.mark.parametrize("mode", MODES)
def test_curl_dele_commits_at_quit(corpus: Corpus, mode: str) -> None:
    _curl(corpus, mode, "", "--request", "DELE 3", "--head")
    kept = [m for i, m in enumerate(corpus.messages, 1) if i != 3]
    assert message_files(corpus.server.maildir("alice")) == {m.base: m.data for m in kept}
    expected = b"".join(b"%d %d\r\n" % (n, m.size) for n, m in enumerate(kept, 1))
    assert _curl(corpus, mode, "") == expected


def test_curl_list_only_one_message(corpus: Corpus) -> None:
    # --list-only with a message number sends LIST n instead of RETR n: no body follows.
    assert _curl(corpus, "implicit", "2", "--list-only") == b""
    assert message_files(corpus.server.maildir("alice")) == {
        m.base: m.data for m in corpus.messages
    }


def test_curl_wrong_password_fails(corpus: Corpus) -> None:
    curl = require_program("curl")
    result = run(
        [
            curl,
            "--silent",
            "--ipv4",
            "--cacert",
            str(corpus.server.tls_files.ca_pem),
            "--user",
            "alice:not-the-password",
            f"pop3s://localhost:{corpus.server.implicit[1]}/",
        ]
    )
    assert result.returncode == 67, describe(result)  # CURLE_LOGIN_DENIED
    assert result.stdout == b""
