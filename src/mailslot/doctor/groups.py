"""The ``tls.groups`` check: which key-exchange groups the server accepts (RFC 8446 s. 4.2.7).

Python's ``ssl`` module (3.11) cannot choose the groups a client offers, so each group is
offered alone by ``openssl s_client -groups NAME`` (``-starttls pop3`` for STLS).  An external
program was chosen over reaching into OpenSSL with ctypes: it needs no knowledge of CPython's
private object layout, works with any Python build, and is already on every machine that has
OpenSSL.  Without the ``openssl`` program the check says it could not check (a warning).

Rule (Mozilla's "intermediate" profile, RFC 9325 section 4.2.1): X25519, P-256 and P-384 are
expected; finite-field groups (ffdhe*, RFC 7919: slow, and their DHE form was behind Logjam)
and the unusual X448 and P-521 are warnings at most.  None of the expected groups is a failure,
since clients then cannot agree on a key exchange.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

from mailslot.doctor.results import Check, failure, ok, warning
from mailslot.doctor.tls import Endpoint

EXPECTED = ("X25519", "P-256", "P-384")
UNUSUAL = ("X448", "P-521")
FINITE_FIELD = ("ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192")  # RFC 7919

Prober = Callable[[Endpoint, str, bool], bool | None]


def s_client_accepts(endpoint: Endpoint, group: str, tls13: bool) -> bool | None:
    """Offer ``group`` alone; True accepted, False refused, None the probe could not run."""
    program = shutil.which("openssl")
    if program is None:
        return None
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    command = [program, "s_client", "-connect", f"{host}:{endpoint.port}", "-groups", group]
    command += ["-brief", "-tls1_3" if tls13 else "-tls1_2"]
    if endpoint.stls:
        command += ["-starttls", "pop3"]
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=endpoint.timeout * 3 + 2,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.returncode == 0 and b"CONNECTION ESTABLISHED" in done.stdout + done.stderr


def check_groups(endpoint: Endpoint, tls13: bool, prober: Prober = s_client_accepts) -> Check:
    """``tls.groups``: offer each group alone (ffdhe* together) and sort what is accepted."""
    port = endpoint.port
    # Over TLS 1.2 a finite-field DHE group is the server's choice, not negotiated (RFC 7919
    # is rarely honoured there), so ffdhe groups are probed over TLS 1.3 only.
    # The finite-field groups are offered together, in one handshake: any of them accepted
    # is the same warning, and a server's ffdhe8192 key generation alone can take a second.
    candidates = EXPECTED + UNUSUAL + ((":".join(FINITE_FIELD),) if tls13 else ())
    accepted: list[str] = []
    for group in candidates:
        result = prober(endpoint, group, tls13)
        if result is None:
            return warning(
                "tls.groups",
                "could not check the key-exchange groups (the openssl program is missing "
                "or did not run)",
                "install OpenSSL's command-line program and run the doctor again",
                port,
            )
        if result:
            accepted.append("ffdhe" if group.startswith("ffdhe") else group)
    expected = [g for g in accepted if g in EXPECTED]
    odd = [g for g in accepted if g not in EXPECTED]
    if not expected:
        return failure(
            "tls.groups",
            "none of X25519, P-256, P-384 is accepted"
            + (f" (only {', '.join(odd)})" if odd else ""),
            "enable X25519, P-256 and P-384 on the server",
            port,
            accepted=accepted,
        )
    if odd:
        return warning(
            "tls.groups",
            f"accepts {', '.join(accepted)}: {', '.join(odd)} beyond X25519, P-256, P-384",
            "limit the groups to X25519:P-256:P-384 (Dovecot: ssl_curve_list; mailslot does "
            "this itself)",
            port,
            accepted=accepted,
        )
    return ok("tls.groups", f"accepts {', '.join(accepted)}", port, accepted=accepted)
