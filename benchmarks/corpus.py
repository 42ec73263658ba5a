"""The test data both servers get: users, Maildirs, the throwaway CA and certificate.

Messages are deterministic ~44 KB LF-terminated files (as an MTA delivers them) carrying an
``X-Bench-Id`` header, so a client can check every RETR against the expected CRLF bytes
without knowing how a server numbers the maildrop. Bodies contain lines that begin with
``.``, lines that are only ``.`` or ``..``: the dot-stuffing paths get exercised.
Each server gets its own tree of hard links to the same files: Dovecot renames files and
writes indexes, which must not leak into what the other server sees.
"""

from __future__ import annotations

import os
import random
import zlib
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "bench-pw-1"
MESSAGES_PER_USER = 10
TEMPLATES = 20
_WORDS = [
    "mail",
    "slot",
    "post",
    "office",
    "protocol",
    "maildrop",
    "server",
    "client",
    "message",
    "octet",
    "line",
    "retrieve",
    "list",
    "stat",
    "quit",
    "user",
    "pass",
    "greeting",
    "dot",
    "stuffing",
    "terminator",
    "transport",
    "session",
    "latency",
    "throughput",
    "benchmark",
    "dovecot",
    "asyncio",
    "python",
    "kernel",
    "socket",
]


@dataclass(frozen=True, slots=True)
class Expected:
    """What RETR of a template must return.

    ``size`` and ``crc`` are the message's: its CRLF octets, as LIST counts them.  ``wire_size``
    and ``wire_crc`` are of the body as it crosses the wire, dot-stuffed (RFC 1939 section 3)
    and without the terminating ``.`` line: a client that checks those need not undo the
    stuffing of every reply, and a server that stuffs wrongly still fails the check.
    """

    size: int
    crc: int
    wire_size: int
    wire_crc: int


def make_message(ident: int, target: int = 44 * 1024) -> bytes:
    rnd = random.Random(ident)
    head = (
        f"Return-Path: <sender{ident}@example.org>\n"
        f"From: Sender {ident} <sender{ident}@example.org>\n"
        "To: Bench <bench@example.net>\n"
        f"Subject: benchmark message {ident}\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
        f"Message-ID: <bench.{ident}@example.org>\n"
        f"X-Bench-Id: {ident}\n"
        "\n"
    )
    lines = [head]
    size = len(head)
    goal = target + rnd.randint(-2048, 2048)
    n = 0
    while size < goal:
        n += 1
        if n % 41 == 0:
            line = "."
        elif n % 67 == 0:
            line = ".."
        elif n % 23 == 0:
            line = "." + " ".join(rnd.choice(_WORDS) for _ in range(8))
        else:
            line = " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(6, 12)))
        lines.append(line + "\n")
        size += len(line) + 1
    return "".join(lines).encode()


def small_message(ident: int) -> bytes:
    return make_message(ident, target=3 * 1024)


def dot_stuff(crlf: bytes) -> bytes:
    """RFC 1939 section 3: every line that starts with "." gets one more in front."""
    return (b"\r\n" + crlf).replace(b"\r\n.", b"\r\n..")[2:]


def expected_of(data: bytes) -> Expected:
    crlf = data.replace(b"\n", b"\r\n")
    wire = dot_stuff(crlf)
    return Expected(len(crlf), zlib.crc32(crlf), len(wire), zlib.crc32(wire))


class Corpus:
    """Template files on disk plus the table of expected replies, keyed by X-Bench-Id."""

    def __init__(self, root: Path, uid: int, gid: int) -> None:
        self.root = root
        self.uid = uid
        self.gid = gid
        self.templates: dict[int, Path] = {}
        self.expected: dict[int, Expected] = {}
        (root / "templates").mkdir(parents=True, exist_ok=True)
        for ident in range(TEMPLATES):
            self._add(ident, make_message(ident))
        # Bigbox messages are small: 100,000 of them are about the count, not the bytes.
        for ident in range(1000, 1000 + TEMPLATES):
            self._add(ident, small_message(ident))

    def _add(self, ident: int, data: bytes) -> None:
        path = self.root / "templates" / f"{ident}.eml"
        path.write_bytes(data)
        os.chown(path, self.uid, self.gid)
        self.templates[ident] = path
        self.expected[ident] = expected_of(data)

    def make_maildir(self, mail_root: Path, user: str, idents: list[int]) -> None:
        """Create ``<mail_root>/<user>/Maildir`` with hard links to ``idents`` in ``cur/``."""
        home = mail_root / user
        maildir = home / "Maildir"
        for d in (home, maildir, maildir / "cur", maildir / "new", maildir / "tmp"):
            d.mkdir(exist_ok=True)
            os.chown(d, self.uid, self.gid)
        cur = maildir / "cur"
        for seq, ident in enumerate(idents):
            src = self.templates[ident]
            size = src.stat().st_size
            wire = self.expected[ident].size
            # Dovecot's own delivery names: both servers read sizes from S=/W= when present.
            name = f"{1700000000 + seq}.M{seq}P{ident}.bench,S={size},W={wire}:2,"
            os.link(src, cur / name)


def warm_homes(mail_root: Path, users: list[str]) -> int:
    """Read every directory and file under each user's home; returns the files read.

    The idle benchmarks open thousands of maildrops, and what that costs depends on whether
    the kernel still caches their directories.  mailslot, measured first in each rep, came
    right after stock Dovecot's ~7,800 TLS sessions of the rep before (about 15 GB) had
    pushed its tree out of the page cache, and ramped up at less than half its rate in the
    other reps (1,686 against 3,265 and 4,373 logins/s in one full run).  Warming every
    server's tree the same way before its run leaves that to chance no longer.  Files are
    read whole: the idle users' one message (shared by hard link) and the server's own
    small index or cache files.
    """
    read = 0
    for user in users:
        for dirpath, _dirs, files in os.walk(mail_root / user):
            for name in files:
                with open(os.path.join(dirpath, name), "rb") as f:
                    while f.read(1 << 16):
                        pass
                read += 1
    return read


def load_idents(user_index: int) -> list[int]:
    return [(user_index + k) % TEMPLATES for k in range(MESSAGES_PER_USER)]


def bigbox_idents(count: int) -> list[int]:
    return [1000 + (k % TEMPLATES) for k in range(count)]


def write_passwd(path: Path, users: list[str], home_root: Path) -> None:
    """Dovecot passwd-file lines ``user:{PLAIN}pw:uid:gid:gecos:home:shell:extra``."""
    with path.open("w") as f:
        for user in users:
            f.write(f"{user}:{{PLAIN}}{PASSWORD}::::{home_root / user}::\n")


def make_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and an RSA-2048 leaf for localhost/127.0.0.1: (ca, chain, key)."""
    ca_path, leaves = make_certificates(directory)
    chain_path, key_path = leaves["rsa"]
    return ca_path, chain_path, key_path


def make_certificates(directory: Path) -> tuple[Path, dict[str, tuple[Path, Path]]]:
    """A throwaway CA and two leaves for localhost/127.0.0.1 that it signed.

    Returns the CA's file and, by key type, (chain, key): ``"rsa"`` (RSA-2048, the files
    ``fullchain.pem`` and ``privkey.pem`` that every benchmark serves) and ``"ecdsa"``
    (ECDSA P-256, ``fullchain-ecdsa.pem`` and ``privkey-ecdsa.pem``, for ``tls-login``).
    """
    import trustme

    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    ca_path = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    leaves: dict[str, tuple[Path, Path]] = {}
    for kind, key_type, suffix in (
        ("rsa", trustme.KeyType.RSA, ""),
        ("ecdsa", trustme.KeyType.ECDSA, "-ecdsa"),  # trustme's ECDSA keys are P-256
    ):
        leaf = ca.issue_cert("localhost", "127.0.0.1", key_type=key_type)
        chain_path = directory / f"fullchain{suffix}.pem"
        key_path = directory / f"privkey{suffix}.pem"
        chain_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key_path))
        key_path.chmod(0o600)  # mailslot refuses a key every account can read
        leaves[kind] = (chain_path, key_path)
    return ca_path, leaves
