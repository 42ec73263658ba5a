"""Write the hand-made seed inputs of every harness into fuzz/corpus/<target>/seed-*.

The seeds are the RFC examples and the dialogues of tests/transcripts (RFC 1939 section 10,
RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH PLAIN), the PROXY headers of HAProxy's
proxy-protocol.txt (sections 2.1, 2.2), and Maildir names as Dovecot and mailslot write them.
The long fuzzing run starts from them; ``-merge=1`` then keeps the seeds that still add
coverage, so running this again only restores what the merge dropped (docs/fuzzing.md).

Run: ``python fuzz/seeds.py`` from the repository's root.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import struct

from _harness import CORPUS_DIR, FUZZ_DIR

TRANSCRIPTS = FUZZ_DIR.parent / "tests" / "transcripts"

# The two messages of RFC 1939 section 10 as tests/transcripts stores them (LF, then CRLF).
MESSAGES = (
    b"From: mrose@example.org\nTo: alice@example.org\nSubject: first\n"
    b"Padding: 12345678\n\nHello Alice.\n.A line with a dot.\n",
    b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: second\r\n"
    b"X-Pad: " + b"x" * 96 + b"\r\n\r\nLine 1.\r\nLine 2.\r\n.\r\nLine 4.\r\n",
)
_ESCAPE = re.compile(rb"\\(x[0-9A-Fa-f]{2}|\\)")
_FLAGS = {"tls_active": 1, "starttls_available": 2, "allow_plaintext": 4}


def _unescape(text: str) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        token = match.group(1)
        return b"\\" if token == b"\\" else bytes([int(token[1:], 16)])

    return _ESCAPE.sub(one, text.encode())


def transcript_streams() -> dict[str, tuple[int, bytes]]:
    """Each transcript's configuration flags and the client's bytes."""
    out = {}
    for path in sorted(TRANSCRIPTS.glob("*.txt")):
        flags = 0
        stream = b""
        for line in path.read_text().splitlines():
            if line.startswith("@config"):
                for item in line.split()[1:]:
                    key, _, value = item.partition("=")
                    if value == "true" and key in _FLAGS:
                        flags |= _FLAGS[key]
            elif line.startswith("C:"):
                stream += _unescape(line[3:]) + b"\r\n"
        out[path.stem] = (flags, stream)
    return out


def connection_seeds() -> dict[str, bytes]:
    # Answers: 0x02 accepts the login, reads the message whole and commits; 0x00 refuses the
    # login ([AUTH]), fails the message before its first line; 0x01 fails it after the "+OK".
    ok = b"\x02" * 8
    mixed = b"\x00\x02\x01\x02\x00\x06\x02\x03"
    table = bytes([len(MESSAGES)]) + b"".join(bytes([len(m)]) + m for m in MESSAGES)
    seeds = {}
    for name, (flags, stream) in transcript_streams().items():
        seeds[name] = bytes([flags]) + b"\x00\x07" + ok + table + stream
        seeds[name + "-failures"] = bytes([flags | 8]) + b"\x01\x03" + mixed + table + stream
    return seeds


def commands_seeds() -> dict[str, bytes]:
    seeds = {name: b"\xff\x00\x07" + stream for name, (_, stream) in transcript_streams().items()}
    seeds["long-line"] = b"\xff\x00\x03" + b"USER " + b"a" * 300 + b"\r\nNOOP\r\n"
    seeds["small-cap"] = b"\x0f\x00\x05" + b"LIST 1\nRETR 99999999999999999999999\r\n"
    return seeds


def sasl_seeds() -> dict[str, bytes]:
    return {
        "rfc5034-example": b"\x00" + base64.b64encode(b"test\x00test\x00test"),
        "rfc4616-authzid": b"\x01" + b"Ursel\x00Kurt\x00xipj3plmq",
        "rfc4616-no-authzid": b"\x01" + b"\x00tim\x00tanstaaftanstaaf",
        "utf8": b"\x01" + "\x00jürgen\x00pässwörd".encode(),
        "empty": b"\x00",
    }


def _v2(command: int, family: int, block: bytes) -> bytes:
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    return signature + bytes([command, family]) + struct.pack("!H", len(block)) + block


def proxy_seeds() -> dict[str, bytes]:
    a4, b4 = (ipaddress.ip_address(a).packed for a in ("192.0.2.1", "198.51.100.2"))
    a6, b6 = (ipaddress.ip_address(a).packed for a in ("2001:db8::1", "2001:db8::2"))
    inet = struct.pack("!4s4sHH", a4, b4, 56324, 110)
    inet6 = struct.pack("!16s16sHH", a6, b6, 56324, 995)
    headers = {
        "v1-tcp4": b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 110\r\nCAPA\r\n",
        "v1-tcp6": b"PROXY TCP6 2001:db8::1 2001:db8:0:0::2 56324 995\r\n\x16\x03\x01",
        "v1-unknown": b"PROXY UNKNOWN\r\nUSER a\r\n",
        "v1-unknown-rest": b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        "v1-longest": b"PROXY TCP6 "
        + b"ffff:" * 7
        + b"ffff "
        + b"ffff:" * 7
        + b"ffff 65535 65535\r\n",
        "v2-inet": _v2(0x21, 0x11, inet) + b"CAPA\r\n",
        "v2-inet6": _v2(0x21, 0x21, inet6) + b"\x16\x03\x01\x00",
        "v2-local": _v2(0x20, 0x00, b""),
        "v2-unspec": _v2(0x21, 0x00, b"\x01\x02"),
        "v2-tlv": _v2(0x21, 0x11, inet + b"\x04\x00\x03abc\x20\x00\x01\x07") + b"QUIT\r\n",
        "v2-udp": _v2(0x21, 0x12, inet),
        "v2-unix": _v2(0x21, 0x31, bytes(216)),
    }
    seeds = {name: b"\xff\x00\x07" + header for name, header in headers.items()}
    seeds["v2-small-cap"] = b"\x10\x00\x07" + _v2(0x21, 0x11, inet)
    return seeds


def dotstuff_seeds() -> dict[str, bytes]:
    seeds = {}
    for number, message in enumerate(MESSAGES, 1):
        seeds[f"rfc1939-message{number}-retr"] = b"\xff\x00\x05" + message
        seeds[f"rfc1939-message{number}-top1"] = b"\x01\x00\x05" + message
    seeds["no-final-newline"] = b"\xff\x00\x02Subject: x\n\n.\n..\nend"
    seeds["bare-cr"] = b"\x00\x00\x03Subject: x\r\r\n\r\n.\rx\r"
    return seeds


def maildirnames_seeds() -> dict[str, bytes]:
    names = [
        b"1700000000.M123456P4242Q1.mail.example.org,S=1024,W=1051:2,S",
        b"1600000000.M1P2.host,S=10,W=11",
        b"1600000000.with space",
        b"1234567890.12345_6.host:2,RS",
        b"cur-name-without-time",
        b"\xff\xfe-not-utf8",
        b"x" * 71,
    ]
    written = b"\x02\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x05hostA"
    return {
        "dovecot-and-mailslot": b"\x00" + b"/".join(names),
        "forged": b"\x05" + b"/".join(names[2:]),
        "written": written + b"/".join(names[:2]),
    }


SEEDS = {
    "commands": commands_seeds,
    "connection": connection_seeds,
    "dotstuff": dotstuff_seeds,
    "maildirnames": maildirnames_seeds,
    "proxy": proxy_seeds,
    "sasl": sasl_seeds,
}


def write_seeds() -> None:
    for target, make in SEEDS.items():
        folder = CORPUS_DIR / target
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (folder / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    write_seeds()
