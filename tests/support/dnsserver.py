"""A tiny DNS server for the ACME tests: the resolver pebble asks, and the primary that takes
RFC 2136 updates (TSIG-signed, RFC 8945) for DNS-01.

Debian's pebble-challtestsrv answers pebble's lookups but takes its records over an HTTP API,
not RFC 2136, so it cannot stand in for the server a DNS-01 client updates; no authoritative
server (BIND, Knot) is a test dependency.  This one is built on dnspython's message parsing,
signing and TSIG checks, on 127.0.0.1 (UDP and TCP, one port):

- A queries for any name: 127.0.0.1 (so every test name leads the CA's validation to the
  responders on this machine); AAAA: no records.
- TXT queries: the records updates added.
- UPDATE: accepted only when signed with the test key (anything else: NOTAUTH or REFUSED),
  then each RR in the update section added (class IN) or deleted (class NONE, RFC 2136
  section 2.5.4).
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring

from .server import free_port


@dataclass
class DnsState:
    port: int
    keyring: dict[dns.name.Name, dns.tsig.Key]
    txt: dict[str, list[str]] = field(default_factory=dict)
    updates: list[str] = field(default_factory=list)  # "add NAME VALUE" / "delete NAME VALUE"
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, wire: bytes) -> bytes | None:
        try:
            message = dns.message.from_wire(wire, keyring=self.keyring)
        except dns.exception.DNSException:  # a bad signature or key (or not DNS at all)
            try:
                query = dns.message.from_wire(wire, keyring=False)
            except dns.exception.DNSException:
                return None
            with self.lock:
                self.refused += 1
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.NOTAUTH)
            response.keyring = None
            return response.to_wire()
        response = dns.message.make_response(message)
        if message.opcode() == dns.opcode.UPDATE:
            if not message.had_tsig:
                with self.lock:
                    self.refused += 1
                response.set_rcode(dns.rcode.REFUSED)
            else:
                self.apply(message)
            return response.to_wire()
        for question in message.question:
            response.answer.extend(self.answer(question))
        return response.to_wire()

    def apply(self, update: dns.message.Message) -> None:
        with self.lock:
            for rrset in update.update:  # type: ignore[attr-defined]
                name = rrset.name.to_text().lower()
                for rdata in rrset:
                    value = b"".join(rdata.strings).decode()
                    values = self.txt.setdefault(name, [])
                    if rrset.deleting == dns.rdataclass.NONE:
                        if value in values:
                            values.remove(value)
                        self.updates.append(f"delete {name} {value}")
                    else:
                        values.append(value)
                        self.updates.append(f"add {name} {value}")

    def answer(self, question: dns.rrset.RRset) -> Iterator[dns.rrset.RRset]:
        name = question.name.to_text().lower()
        if question.rdtype == dns.rdatatype.A:
            yield dns.rrset.from_text(question.name, 60, "IN", "A", "127.0.0.1")
        elif question.rdtype == dns.rdatatype.TXT:
            with self.lock:
                values = list(self.txt.get(name, ()))
            if values:
                yield dns.rrset.from_text_list(
                    question.name, 60, "IN", "TXT", [f'"{v}"' for v in values]
                )


class _Udp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        reply = self.server.dns.handle(data)  # type: ignore[attr-defined]
        if reply is not None:
            sock.sendto(reply, self.client_address)


class _Tcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        reader = sock.makefile("rb")
        while True:
            header = reader.read(2)
            if len(header) < 2:
                return
            (length,) = struct.unpack("!H", header)
            reply = self.server.dns.handle(reader.read(length))  # type: ignore[attr-defined]
            if reply is None:
                return
            sock.sendall(struct.pack("!H", len(reply)) + reply)


class _UdpServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


TSIG_NAME = "mailslot-test."
TSIG_SECRET = "bWFpbHNsb3QtdGVzdC10c2lnLXNlY3JldC0zMmJ5dGVzIQ=="


@contextmanager
def dns_server() -> Iterator[DnsState]:
    """The server on a free 127.0.0.1 port, stopped on exit."""
    port = free_port()
    keyring = dns.tsigkeyring.from_text({TSIG_NAME: ("hmac-sha256", TSIG_SECRET)})
    state = DnsState(port, keyring)
    servers: list[socketserver.BaseServer] = []
    for cls, handler in ((_UdpServer, _Udp), (_TcpServer, _Tcp)):
        server = cls(("127.0.0.1", port), handler)
        server.dns = state  # type: ignore[attr-defined]
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
