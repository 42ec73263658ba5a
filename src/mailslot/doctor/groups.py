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

import enum
import re
import shutil
import subprocess
from collections.abc import Callable

from mailslot.doctor.results import Check, failure, ok, warning
from mailslot.doctor.tls import Endpoint

EXPECTED = ("X25519", "P-256", "P-384")
UNUSUAL = ("X448", "P-521")
FINITE_FIELD = ("ffdhe2048", "ffdhe3072", "ffdhe4096", "ffdhe6144", "ffdhe8192")  # RFC 7919

# How ``s_client -brief`` names the key exchange it made ("Server Temp Key: ...").
_TEMP_KEY = re.compile(rb"Server Temp Key: (?:ECDH, )?([A-Za-z0-9-]+)")
_OPENSSL_NAMES = {"prime256v1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


class Probe(enum.Enum):
    """What offering a group showed."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    UNKNOWN = "unknown"  # the server preferred the companion curve: nothing learnt
    UNAVAILABLE = "unavailable"  # the probe could not run (no openssl program, a timeout)


Prober = Callable[[Endpoint, str, bool, str | None], Probe]


def s_client_accepts(
    endpoint: Endpoint, group: str, tls13: bool, companion: str | None = None
) -> Probe:
    """Offer ``group`` with ``openssl s_client`` and say what happened.

    ``companion``, the curve of an ECDSA certificate, is offered after ``group`` over TLS 1.2:
    there the client's groups also bound the certificate's curve (RFC 8422 section 5.1.1), so
    offering X25519 alone would fail against a P-256 certificate for the wrong reason.  The
    group is then accepted only if the key exchange used it; if the server preferred the
    companion, nothing was learnt about ``group``.
    """
    program = shutil.which("openssl")
    if program is None:
        return Probe.UNAVAILABLE
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    offered = group if companion is None or companion == group else f"{group}:{companion}"
    command = [program, "s_client", "-connect", f"{host}:{endpoint.port}", "-groups", offered]
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
        return Probe.UNAVAILABLE
    output = done.stdout + done.stderr
    if done.returncode != 0 or b"CONNECTION ESTABLISHED" not in output:
        return Probe.REFUSED
    if offered == group:
        return Probe.ACCEPTED
    used = _TEMP_KEY.search(output)
    name = used.group(1).decode() if used is not None else ""
    return Probe.ACCEPTED if _OPENSSL_NAMES.get(name, name) == group else Probe.UNKNOWN


def check_groups(
    endpoint: Endpoint,
    tls13: bool,
    certificate_curve: str | None = None,
    prober: Prober = s_client_accepts,
) -> Check:
    """``tls.groups``: offer each group alone (ffdhe* together) and sort what is accepted.

    ``certificate_curve`` ("P-256", "P-384", "P-521") is the leaf's ECDSA curve, if any.
    """
    port = endpoint.port
    # Over TLS 1.2 a finite-field DHE group is the server's choice, not negotiated (RFC 7919
    # is rarely honoured there), so ffdhe groups are probed over TLS 1.3 only.
    # The finite-field groups are offered together, in one handshake: any of them accepted
    # is the same warning, and a server's ffdhe8192 key generation alone can take a second.
    candidates = EXPECTED + UNUSUAL + ((":".join(FINITE_FIELD),) if tls13 else ())
    accepted: list[str] = []
    unknown: list[str] = []
    for group in candidates:
        result = prober(endpoint, group, tls13, None if tls13 else certificate_curve)
        name = "ffdhe" if group.startswith("ffdhe") else group
        if result is Probe.UNAVAILABLE:
            return warning(
                "tls.groups",
                "could not check the key-exchange groups (the openssl program is missing "
                "or did not run)",
                "install OpenSSL's command-line program and run the doctor again",
                port,
            )
        if result is Probe.ACCEPTED:
            accepted.append(name)
        elif result is Probe.UNKNOWN:
            unknown.append(name)
    expected = [g for g in accepted if g in EXPECTED]
    odd = [g for g in accepted if g not in EXPECTED]
    note = (
        f" ({', '.join(unknown)} not determined: over TLS 1.2 the server preferred its "
        "certificate's curve)"
        if unknown
        else ""
    )
    details: dict[str, list[str]] = {"accepted": accepted, "not_determined": unknown}
    if not expected:
        return failure(
            "tls.groups",
            "none of X25519, P-256, P-384 is accepted"
            + (f" (only {', '.join(odd)})" if odd else "")
            + note,
            "enable X25519, P-256 and P-384 on the server",
            port,
            **details,
        )
    if odd:
        return warning(
            "tls.groups",
            f"accepts {', '.join(accepted)}: {', '.join(odd)} beyond X25519, P-256, P-384" + note,
            "limit the groups to X25519:P-256:P-384 (Dovecot: ssl_curve_list; mailslot does "
            "this itself)",
            port,
            **details,
        )
    return ok("tls.groups", f"accepts {', '.join(accepted)}" + note, port, **details)
