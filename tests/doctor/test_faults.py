"""``mailslot doctor`` against servers set up to be wrong: each fault is the failure it is.

Each server is the threaded ``ssl`` POP3 server of tests/support/faultypop3.py on 127.0.0.1;
the doctor runs as a subprocess with ``--json``.  The first test is the control: the same
server set up right passes, so a fault test's failure comes from its fault.
"""

from __future__ import annotations

import datetime
import os
import pty
import select
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trustme
from cryptography import x509
from tests.doctor.conftest import Pki, doctor_args, run_doctor
from tests.support.programs import require_program

NOW = datetime.datetime.now(datetime.UTC)


def intermediate_subject(pki: Pki) -> str:
    cert = x509.load_pem_x509_certificate(pki.intermediate.cert_pem.bytes())
    return cert.subject.rfc4514_string()


def test_a_correct_server_passes(faulty: Any, pki: Pki) -> None:
    server = faulty()
    outcome = run_doctor(
        *doctor_args(server, pki), "--user", "alice", "--password-stdin", stdin="secret\n"
    )
    failures = [c for c in outcome.report["checks"] if c["status"] == "failure"]
    assert failures == [], outcome.stdout
    assert outcome.status == 0
    assert outcome.status_of("pop3.login") == "ok"
    assert outcome.checks("pop3.login")[0]["details"]["messages"] == 2
    assert "secret" not in outcome.stdout + outcome.stderr


def test_self_signed(faulty: Any, pki: Pki) -> None:
    server = faulty(pki.self_signed("selfsigned"))
    outcome = run_doctor(*doctor_args(server, pki))
    assert outcome.status == 1
    for port in (server.implicit_port, server.stls_port):
        chain = outcome.checks("cert.chain", port)[0]
        assert chain["status"] == "failure"
        assert "self-signed" in chain["summary"]
        assert chain["details"]["verify_code"] == 18  # X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT


def test_expired(faulty: Any, pki: Pki) -> None:
    server = faulty(
        pki.leaf(
            "expired",
            not_before=NOW - datetime.timedelta(days=90),
            not_after=NOW - datetime.timedelta(days=1),
        )
    )
    outcome = run_doctor(*doctor_args(server, pki))
    assert outcome.status == 1
    expiry = outcome.checks("cert.expiry", server.implicit_port)[0]
    assert expiry["status"] == "failure"
    assert expiry["summary"].startswith("expired on")
    assert outcome.status_of("cert.chain", server.implicit_port) == "failure"
    assert outcome.status_of("cert.name", server.implicit_port) == "ok"


def test_expiring_soon_is_a_warning(faulty: Any, pki: Pki) -> None:
    server = faulty(pki.leaf("soon", not_after=NOW + datetime.timedelta(days=10)))
    outcome = run_doctor(*doctor_args(server, pki))
    expiry = outcome.checks("cert.expiry", server.implicit_port)[0]
    assert expiry["status"] == "warning"
    assert expiry["details"]["days_left"] in (9, 10)
    assert outcome.status == 0, outcome.stdout


def test_wrong_name(faulty: Any, pki: Pki) -> None:
    server = faulty(pki.leaf("wrongname", "mail.example.org"))
    outcome = run_doctor(*doctor_args(server, pki))
    assert outcome.status == 1
    name = outcome.checks("cert.name", server.implicit_port)[0]
    assert name["status"] == "failure"
    assert name["details"]["names"] == ["mail.example.org"]
    # The chain itself is fine: the name is a separate finding.
    assert outcome.status_of("cert.chain", server.implicit_port) == "ok"


def test_ip_literal_not_in_the_certificate(faulty: Any, pki: Pki) -> None:
    server = faulty(pki.leaf("nameonly", "localhost"))
    outcome = run_doctor(*doctor_args(server, pki, host="127.0.0.1"))
    assert outcome.status == 1
    assert outcome.status_of("cert.name", server.implicit_port) == "failure"
    assert outcome.status_of("dns.resolve") == "ok"


def test_missing_intermediate(faulty: Any, pki: Pki) -> None:
    server = faulty(pki.leaf("leafonly", chain=False))
    outcome = run_doctor(*doctor_args(server, pki))
    assert outcome.status == 1
    for port in (server.implicit_port, server.stls_port):
        missing = outcome.checks("cert.intermediates", port)[0]
        assert missing["status"] == "failure", outcome.stdout
        assert missing["summary"].startswith("missing intermediate")
        assert missing["details"]["missing"] == intermediate_subject(pki)
        assert outcome.status_of("cert.chain", port) == "failure"


def test_tls_1_0_allowed(faulty: Any, pki: Pki) -> None:
    server = faulty(minimum=ssl.TLSVersion.TLSv1)
    outcome = run_doctor(*doctor_args(server, pki))
    assert outcome.status == 1
    assert outcome.status_of("tls.v1_0", server.implicit_port) == "failure"
    assert outcome.status_of("tls.v1_1", server.implicit_port) == "failure"
    assert outcome.status_of("tls.v1_0", server.stls_port) == "failure"
    # SECLEVEL=0 and TLS 1.0 bring CBC and static-RSA suites with them.
    assert outcome.status_of("tls.suites", server.implicit_port) in ("warning", "failure")


def test_cleartext_user_before_stls(faulty: Any, pki: Pki) -> None:
    server = faulty(capa_plain=("UIDL", "USER", "SASL PLAIN SCRAM-SHA-256", "STLS"))
    outcome = run_doctor(*doctor_args(server, pki))
    assert outcome.status == 1
    check = outcome.checks("pop3.cleartext-auth", server.stls_port)[0]
    assert check["status"] == "failure"
    assert check["details"]["offered"] == ["USER", "SASL PLAIN"]


def test_no_stls(faulty: Any, pki: Pki) -> None:
    server = faulty(capa_plain=("UIDL", "TOP"))
    outcome = run_doctor(*doctor_args(server, pki))
    assert outcome.status == 1
    assert outcome.status_of("pop3.stls", server.stls_port) == "failure"
    # Without STLS there is no TLS on that port to check.
    assert outcome.checks("tls.handshake", server.stls_port) == []


def test_weak_suites_only_cbc(faulty: Any, pki: Pki) -> None:
    server = faulty(ciphers="ECDHE+AES128+SHA:ECDHE+AESGCM", minimum=ssl.TLSVersion.TLSv1_2)
    outcome = run_doctor(*doctor_args(server, pki))
    suites = outcome.checks("tls.suites", server.implicit_port)[0]
    assert suites["status"] == "warning", outcome.stdout
    assert suites["details"]["cbc"], suites
    assert suites["details"]["broken"] == []


def _rsa_leaf(pki: Pki) -> tuple[Path, Path]:
    # Static-RSA key exchange needs an RSA certificate (trustme's default is ECDSA).
    leaf = pki.intermediate.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    cert, key = pki.directory / "rsa.pem", pki.directory / "rsa-key.pem"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


def test_static_rsa_without_forward_secrecy(faulty: Any, pki: Pki) -> None:
    server = faulty(_rsa_leaf(pki), ciphers="AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256")
    outcome = run_doctor(*doctor_args(server, pki))
    suites = outcome.checks("tls.suites", server.implicit_port)[0]
    assert suites["status"] == "warning", outcome.stdout
    assert suites["details"]["no_forward_secrecy"] == ["AES128-GCM-SHA256"]
    assert outcome.status_of("cert.key", server.implicit_port) == "ok"


def test_null_encryption_accepted(faulty: Any, pki: Pki) -> None:
    server = faulty(_rsa_leaf(pki), ciphers="ECDHE-RSA-AES128-GCM-SHA256:NULL-SHA256:@SECLEVEL=0")
    outcome = run_doctor(*doctor_args(server, pki))
    suites = outcome.checks("tls.suites", server.implicit_port)[0]
    assert suites["status"] == "failure", outcome.stdout
    assert suites["details"]["broken"] == ["NULL-SHA256"]
    assert outcome.status == 1


def test_tls_1_2_only(faulty: Any, pki: Pki) -> None:
    server = faulty(maximum=ssl.TLSVersion.TLSv1_2)
    outcome = run_doctor(*doctor_args(server, pki, groups=True))
    modern = outcome.checks("tls.modern", server.implicit_port)[0]
    assert modern["status"] == "warning"
    assert modern["details"]["offered"] == ["1.2"]
    # Over TLS 1.2 the groups are probed with ECDHE, without the finite-field ones, each
    # beside the certificate's P-256; where the server prefers P-256 nothing is learnt.
    groups = outcome.checks("tls.groups", server.implicit_port)[0]
    details = groups["details"]
    assert details["accepted"][:2] == ["X25519", "P-256"], outcome.stdout
    assert "ffdhe" not in details["accepted"] + details["not_determined"]
    assert set(details["accepted"] + details["not_determined"]) == {
        "X25519",
        "P-256",
        "P-384",
        "X448",
        "P-521",
    }
    assert outcome.status_of("tls.handshake", server.implicit_port) == "ok"


def test_groups_beyond_the_expected_three(faulty: Any, pki: Pki) -> None:
    # Python's default server context takes X448, P-521 and the ffdhe groups too.
    server = faulty()
    outcome = run_doctor(*doctor_args(server, pki, groups=True))
    groups = outcome.checks("tls.groups", server.implicit_port)[0]
    assert groups["status"] == "warning", outcome.stdout
    assert groups["details"]["accepted"][:3] == ["X25519", "P-256", "P-384"]
    assert {"X448", "P-521", "ffdhe"} <= set(groups["details"]["accepted"])


def test_only_stls_login_goes_over_stls(faulty: Any, pki: Pki) -> None:
    server = faulty()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        args = doctor_args(server, pki)
        args[args.index("--port") + 1] = str(closed.getsockname()[1])
        outcome = run_doctor(*args, "--user", "alice", "--password-stdin", stdin="secret\n")
    port = int(args[args.index("--port") + 1])
    assert outcome.status_of("connect", port) == "warning"
    login = outcome.checks("pop3.login")[0]
    assert login["status"] == "ok", outcome.stdout
    assert login["port"] == server.stls_port
    assert outcome.status == 0


def test_a_client_side_refusal_is_not_read_as_the_server_refusing(faulty: Any, pki: Pki) -> None:
    """At OpenSSL 3's default security level the client itself aborts a TLS 1.0 handshake
    that the server accepted ("legacy sigalg disallowed"): that is "could not check"."""
    from mailslot.doctor.tls import Endpoint, accepts_version

    server = faulty(minimum=ssl.TLSVersion.TLSv1)
    endpoint = Endpoint("127.0.0.1", server.implicit_port, False, 5.0)
    assert accepts_version(endpoint, "1.0") is True
    result = accepts_version(endpoint, "1.0", ciphers="DEFAULT")
    assert isinstance(result, str), result
    assert "local OpenSSL" in result


def test_a_server_that_never_greets(faulty: Any, pki: Pki) -> None:
    # Listening sockets that are never accepted from: connections complete in the kernel's
    # backlog, and no byte ever comes.  The doctor gives up after --timeout per connection.
    with socket.socket() as implicit, socket.socket() as plain:
        for sock in (implicit, plain):
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)
        implicit_port, plain_port = implicit.getsockname()[1], plain.getsockname()[1]
        outcome = run_doctor(
            "127.0.0.1",
            "--port",
            str(implicit.getsockname()[1]),
            "--stls-port",
            str(plain.getsockname()[1]),
            "--timeout",
            "1",
            "--no-groups",
        )
    assert outcome.status == 1
    assert outcome.status_of("tls.handshake", implicit_port) == "failure"
    assert outcome.status_of("pop3.greeting", plain_port) == "failure"


def test_plaintext_on_the_pop3s_port(faulty: Any, pki: Pki) -> None:
    server = faulty()
    args = doctor_args(server, pki)
    args[args.index("--port") + 1] = str(server.stls_port)  # plaintext POP3 where TLS belongs
    outcome = run_doctor(*args)
    handshake = outcome.checks("tls.handshake", server.stls_port)[0]
    assert handshake["status"] == "failure"
    assert "does not speak TLS" in handshake["fix"]
    assert outcome.status == 1


def test_bytes_after_the_stls_ok_fail_stls(faulty: Any, pki: Pki) -> None:
    # Anything between "+OK" and the handshake would later pass for protected data.
    server = faulty(after_stls_ok=b"+OK injected\r\n")
    outcome = run_doctor(*doctor_args(server, pki))
    handshake = outcome.checks("tls.handshake", server.stls_port)[0]
    assert handshake["status"] == "failure"
    assert "after its +OK to STLS" in handshake["summary"]
    assert outcome.status == 1


def test_roots_from_a_hashed_certificate_directory(faulty: Any, pki: Pki, tmp_path: Path) -> None:
    """A trust store that is only a directory (SSL_CERT_DIR, capath) still counts as roots:
    OpenSSL reads it lazily, so SSLContext.get_ca_certs() does not list it."""
    openssl = require_program("openssl")
    store = tmp_path / "certs"
    store.mkdir()
    shutil.copy(pki.ca_pem, store / "doctor-root.pem")
    subprocess.run([openssl, "rehash", str(store)], check=True, capture_output=True)
    server = faulty()
    args = [a for a in doctor_args(server, pki) if a not in ("--cafile", str(pki.ca_pem))]
    outcome = run_doctor(
        *args, env={"SSL_CERT_FILE": str(tmp_path / "none.pem"), "SSL_CERT_DIR": str(store)}
    )
    assert outcome.status_of("cert.chain", server.implicit_port) == "ok", outcome.stdout
    assert outcome.status_of("cert.intermediates", server.implicit_port) == "ok"


def test_password_prompt_on_a_terminal_is_not_echoed(faulty: Any, pki: Pki) -> None:
    """Without --password-stdin the password is asked on the terminal (getpass): a real
    pseudo-terminal here, whose output must not show the password typed."""
    server = faulty()
    command = [
        sys.executable,
        "-m",
        "mailslot",
        "doctor",
        *doctor_args(server, pki),
        "--user",
        "alice",
    ]
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.execv(sys.executable, command)  # noqa: S606 - a fixed argv, no shell involved
    output = b""
    deadline = time.monotonic() + 60  # a hang guard for the reads below, not a threshold
    while b"Password for alice: " not in output and time.monotonic() < deadline:
        if select.select([fd], [], [], 1.0)[0]:
            output += os.read(fd, 1024)
    os.write(fd, b"secret\n")
    while time.monotonic() < deadline:
        if not select.select([fd], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    text = output.decode(errors="replace")
    assert "secret" not in text
    assert "logged in as 'alice': 2 message(s)" in text
    assert os.waitstatus_to_exitcode(status) == 0, text
