"""TLS handshakes per second with one certificate and with several chosen by SNI.

In one process, over memory BIOs (no sockets, no event loop): what the SNI callback of
:mod:`mailslot.tls.sni` adds to a full handshake.  The two servers are measured in
alternating rounds, so that a busy machine slows both alike::

    PYTHONPATH=src python benchmarks/sni_handshakes.py --rounds 10 --count 200
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trustme

from mailslot.tls.certificates import KeyPair
from mailslot.tls.context import TlsContexts


def _pair(directory: Path, ca: trustme.CA, name: str, *names: str) -> tuple[Path, Path]:
    leaf = ca.issue_cert(*names)
    certificate, key = directory / f"{name}.pem", directory / f"{name}.key"
    certificate.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return certificate, key


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c = client.wrap_bio(c_in, c_out, server_hostname=name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done_c = done_s = False
    while not (done_c and done_s):
        for obj, done in ((c, done_c), (s, done_s)):
            if done:
                continue
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            else:
                if obj is c:
                    done_c = True
                else:
                    done_s = True
        s_in.write(c_out.read())
        c_in.write(s_out.read())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--count", type=int, default=200, help="handshakes per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        ca = trustme.CA()
        default = _pair(directory, ca, "default", "localhost")
        more = [
            _pair(directory, ca, f"site{n}", f"mail.site{n}.example", f"*.site{n}.example")
            for n in range(20)
        ]
        single = TlsContexts(*default).current
        several = TlsContexts(
            *default,
            more=[KeyPair(f"tls.certificates[{n}]", c, k) for n, (c, k) in enumerate(more)],
        ).current
        client = ssl.create_default_context()
        ca.configure_trust(client)
        rates: dict[str, list[float]] = {"one certificate": [], "21 certificates, SNI": []}
        for _ in range(args.rounds):
            for label, server, name in (
                ("one certificate", single, "localhost"),
                ("21 certificates, SNI", several, "imap.site13.example"),
            ):
                start = time.perf_counter()
                for _ in range(args.count):
                    _handshake(server, client, name)
                rates[label].append(args.count / (time.perf_counter() - start))
    for label, values in rates.items():
        print(
            f"{label:24} median {statistics.median(values):7.0f} handshakes/s "
            f"(min {min(values):.0f}, max {max(values):.0f}, {args.rounds} rounds)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
