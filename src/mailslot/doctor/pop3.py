"""POP3 checks: greeting, CAPA (RFC 2449), STLS (RFC 2595), cleartext logins, a real login.

* ``pop3.greeting``: the server greets with ``+OK`` (RFC 1939 section 4) within
  :data:`GREETING_WARNING_SECONDS` (slower greetings hit client timeouts and usually mean a
  reverse-DNS lookup or an overloaded server).
* ``pop3.capa``: CAPA is answered (RFC 2449 section 5), its multi-line reply ends with ``.``,
  every line is a well-formed capability (a tag of letters, digits and ``-``, lines of at most
  512 octets, RFC 2449 section 4); RESP-CODES, UIDL, TOP, PIPELINING are noted, a missing UIDL
  is a warning (clients that leave mail on the server need it, RFC 1939 section 7).
* ``pop3.implementation``: an IMPLEMENTATION capability with a version number is a warning
  (it tells an attacker which CVEs to try); without one it is ok.
* ``pop3.stls``: port 110 lists STLS in CAPA (RFC 2595 section 4) and the upgrade works.
* ``pop3.cleartext-auth``: before TLS, CAPA must list neither USER nor a SASL PLAIN or LOGIN
  mechanism (RFC 2595 section 2.3, RFC 8314 section 4.1): a failure if it does.
* ``pop3.login``: with ``--user``, USER/PASS (or AUTH PLAIN, RFC 5034) over verified TLS, then
  STAT and QUIT (RFC 1939 sections 5 and 6).  The password is never printed.
"""

from __future__ import annotations

import base64
import contextlib
import re
import ssl
from dataclasses import dataclass, field

from mailslot.doctor.net import MultiLine, Pop3Channel, Pop3Error, open_session
from mailslot.doctor.results import Check, failure, ok, warning
from mailslot.doctor.tls import Endpoint

GREETING_WARNING_SECONDS = 2.0
MAX_CAPA_LINE = 512  # RFC 2449 section 4: responses, CRLF included, of at most 512 octets
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
NOTED = ("RESP-CODES", "UIDL", "TOP", "PIPELINING", "AUTH-RESP-CODE", "STLS", "USER", "SASL")
CLEARTEXT_SASL = ("PLAIN", "LOGIN")


@dataclass
class Capabilities:
    """A CAPA reply: tag (upper case) -> its arguments, and what was wrong with its form."""

    answered: bool
    reply: str = ""
    tags: dict[str, list[str]] = field(default_factory=dict)
    malformed: list[str] = field(default_factory=list)
    terminated: bool = True
    bare_lf: bool = False

    def has(self, tag: str) -> bool:
        return tag in self.tags

    @property
    def sasl(self) -> list[str]:
        return [m.upper() for m in self.tags.get("SASL", [])]


def parse_capa(status: str, body: MultiLine | None) -> Capabilities:
    """Parse CAPA's reply (RFC 2449 section 5: ``capa-tag *(SP param)`` per line)."""
    if not status.startswith("+OK") or body is None:
        return Capabilities(False, status)
    caps = Capabilities(True, status, terminated=body.terminated, bare_lf=body.bare_lf)
    for line in body.lines:
        words = line.split()
        if (
            not words
            or not _TAG.fullmatch(words[0])
            or len(line.encode("utf-8")) + 2 > MAX_CAPA_LINE
            or not line.isascii()
        ):
            caps.malformed.append(line[:80])
            continue
        caps.tags[words[0].upper()] = words[1:]
    return caps


def read_capa(channel: Pop3Channel) -> Capabilities:
    status = channel.command("CAPA")
    body = channel.read_multiline() if status.startswith("+OK") else None
    return parse_capa(status, body)


def check_greeting(greeting: str, seconds: float, port: int) -> Check:
    """``pop3.greeting``: +OK, and how long it took."""
    timing = f"{seconds * 1000:.0f} ms"
    if seconds > GREETING_WARNING_SECONDS:
        return warning(
            "pop3.greeting",
            f"the greeting took {timing} (more than {GREETING_WARNING_SECONDS:g} s)",
            "look for slow reverse-DNS or ident lookups, or an overloaded server",
            port,
            seconds=round(seconds, 3),
        )
    return ok("pop3.greeting", f"+OK greeting in {timing}", port, seconds=round(seconds, 3))


def check_capa(caps: Capabilities, port: int) -> Check:
    """``pop3.capa``: CAPA answered and well-formed (RFC 2449 sections 4 and 5)."""
    if not caps.answered:
        return warning(
            "pop3.capa",
            f"CAPA is not supported ({caps.reply[:60]!r}): clients cannot discover STLS, "
            "UIDL or SASL",
            "enable CAPA (RFC 2449); every current POP3 server has it",
            port,
        )
    noted = [tag for tag in NOTED if caps.has(tag)]
    if not caps.terminated or caps.malformed:
        problems = []
        if not caps.terminated:
            problems.append("the reply does not end with a '.' line")
        if caps.malformed:
            problems.append(f"malformed lines: {'; '.join(repr(m) for m in caps.malformed)}")
        return failure(
            "pop3.capa",
            "CAPA reply is malformed: " + ", ".join(problems),
            "fix the server's CAPA reply: one 'TAG params' per line, ended by '.' (RFC 2449)",
            port,
            capabilities=noted,
        )
    if caps.bare_lf:
        return warning(
            "pop3.capa",
            "CAPA lines end with a bare LF instead of CRLF (RFC 1939 section 3)",
            "end every line with CRLF",
            port,
            capabilities=noted,
        )
    if not caps.has("UIDL"):
        return warning(
            "pop3.capa",
            "CAPA lacks UIDL: clients that leave mail on the server download it again",
            "enable UIDL (RFC 1939 section 7)",
            port,
            capabilities=noted,
        )
    return ok("pop3.capa", f"CAPA: {' '.join(noted)}", port, capabilities=noted)


def check_implementation(caps: Capabilities, port: int) -> Check:
    """``pop3.implementation``: revealed software, a warning only with a version number."""
    words = caps.tags.get("IMPLEMENTATION")
    if not words:
        return ok("pop3.implementation", "no IMPLEMENTATION capability", port)
    text = " ".join(words)
    if any(char.isdigit() for char in text):
        return warning(
            "pop3.implementation",
            f"IMPLEMENTATION reveals a version: {text!r}",
            "hide the version (RFC 2449 section 6.9 makes IMPLEMENTATION optional)",
            port,
            implementation=text,
        )
    return ok("pop3.implementation", f"IMPLEMENTATION {text!r} (no version)", port)


def check_cleartext_auth(caps: Capabilities, port: int) -> Check:
    """``pop3.cleartext-auth``: nothing that sends a password in the clear before STLS."""
    offered = (["USER"] if caps.has("USER") else []) + [
        f"SASL {m}" for m in caps.sasl if m in CLEARTEXT_SASL
    ]
    if offered:
        return failure(
            "pop3.cleartext-auth",
            f"before TLS the server offers {', '.join(offered)}: clients may send passwords "
            "in the clear (RFC 2595 section 2.3, RFC 8314 section 4.1)",
            "refuse logins before STLS (mailslot: the default; Dovecot: "
            "auth_allow_cleartext = no / disable_plaintext_auth = yes)",
            port,
            offered=offered,
        )
    if not caps.answered:
        return warning(
            "pop3.cleartext-auth",
            "could not check: CAPA is not answered",
            "enable CAPA (RFC 2449)",
            port,
        )
    return ok("pop3.cleartext-auth", "no USER or SASL PLAIN/LOGIN before TLS", port)


def check_stls_offered(caps: Capabilities, port: int) -> Check:
    """``pop3.stls``: CAPA on the plaintext port lists STLS (RFC 2595 section 4)."""
    if caps.has("STLS"):
        return ok("pop3.stls", "STLS is offered", port)
    return failure(
        "pop3.stls",
        "STLS is not offered on the plaintext port: clients cannot protect their logins",
        "enable STLS (RFC 2595) on this port, or close it and use only POP3S (RFC 8314)",
        port,
    )


def login(endpoint: Endpoint, context: ssl.SSLContext, user: str, password: str) -> Check:
    """``pop3.login``: log in over verified TLS, STAT, QUIT (RFC 1939, RFC 5034)."""
    port = endpoint.port
    try:
        opened = open_session(
            endpoint.host, endpoint.port, endpoint.timeout, context=context, stls=endpoint.stls
        )
    except ssl.SSLCertVerificationError as exc:
        return failure(
            "pop3.login",
            f"not attempted: the certificate does not verify ({exc.verify_message}); "
            "the password was not sent",
            "fix the certificate problems above",
            port,
        )
    except (OSError, Pop3Error) as exc:
        return failure("pop3.login", f"could not connect: {exc}", "see the checks above", port)
    channel = opened.channel
    try:
        caps = read_capa(channel)
        if caps.has("USER") or not caps.answered or "PLAIN" not in caps.sasl:
            reply = channel.command(f"USER {user}")
            if reply.startswith("+OK"):
                reply = channel.command(f"PASS {password}")
        else:
            token = base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")
            reply = channel.command(f"AUTH PLAIN {token}")
        if not reply.startswith("+OK"):
            return failure(
                "pop3.login",
                f"login as {user!r} refused: {reply[:120]}",
                "check the user name and password; see the server's log",
                port,
            )
        stat = channel.command("STAT")
        parts = stat.split()
        if not stat.startswith("+OK") or len(parts) < 3 or not parts[1].isdigit():
            return failure(
                "pop3.login",
                f"logged in, but STAT answered {stat[:80]!r}",
                "see the server's log (RFC 1939 section 5: '+OK count size')",
                port,
            )
        count, size = int(parts[1]), int(parts[2]) if parts[2].isdigit() else 0
        quit_reply = channel.command("QUIT")
        if not quit_reply.startswith("+OK"):
            return warning(
                "pop3.login",
                f"{user!r} has {count} message(s); QUIT answered {quit_reply[:80]!r}",
                "see the server's log",
                port,
                messages=count,
            )
        return ok(
            "pop3.login",
            f"logged in as {user!r}: {count} message(s), {size} octets",
            port,
            messages=count,
            octets=size,
        )
    except (OSError, Pop3Error) as exc:
        return failure("pop3.login", f"the session broke: {exc}", "see the server's log", port)
    finally:
        with contextlib.suppress(OSError):
            channel.close()
