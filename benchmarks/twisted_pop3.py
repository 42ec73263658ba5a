"""Twisted's POP3 server as a benchmark peer: one process, one reactor, the issue's third peer.

``python -m benchmarks.twisted_pop3 --passwd F --mail-root DIR --plain-port P --tls-port T
--cert CHAIN --key KEY`` serves ``DIR/<user>/Maildir`` with ``twisted.mail.pop3.POP3`` on a
plain port and an implicit-TLS port (RFC 8314) on 127.0.0.1, until SIGTERM.

What is Twisted's and what is added here:

* The protocol (``twisted.mail.pop3.POP3``), the reactor (epoll), the credential check
  (``twisted.cred``), TLS (``listenSSL``: pyOpenSSL over memory BIOs) are Twisted's own.
  Twisted's POP3 server has no STLS, so the STLS benchmarks skip this peer.
* The mailbox is Twisted's ``MaildirMailbox`` with two fixes without which it fails the
  benchmark's checks: it opens messages in text mode (Twisted then writes ``str`` to the
  transport), and LIST gives the file's LF size where RFC 1939 section 11 wants the octets
  RETR sends (CRLF). Sizes come from the ``,W=`` field of Dovecot-style names, as
  mailslot and Dovecot read them, else from the file.
* ``TCP_NODELAY`` is set on each connection, as mailslot and Dovecot do.
* The idle timeout is RFC 1939 section 3's ten minutes (Twisted's default is five), so
  held idle sessions outlive a slow ramp as they do on the other servers.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import IO, Any

from OpenSSL import SSL
from twisted.cred import checkers, portal
from twisted.internet import ssl
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, ServerFactory
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.mail import maildir, pop3
from zope.interface import implementer  # type: ignore[import-untyped]

_WIRE_SIZE = re.compile(rb",W=(\d+)")


def read_passwd(path: str) -> dict[bytes, bytes]:
    """``user:{PLAIN}password:...`` lines (Dovecot's passwd-file) to {user: password}."""
    users: dict[bytes, bytes] = {}
    with open(path, "rb") as f:
        for line in f:
            fields = line.rstrip(b"\n").split(b":")
            if len(fields) < 2 or not fields[1].startswith(b"{PLAIN}"):
                continue
            users[fields[0]] = fields[1][len(b"{PLAIN}") :]
    return users


def wire_size(path: bytes) -> int:
    """The message's size as RETR sends it: LF line ends counted as CRLF.

    Not mailslot's own ``store.wiresize``: a peer built on the subject's code would share its
    mistakes, and the benchmark's checks would not see them.
    """
    found = _WIRE_SIZE.search(os.path.basename(path))
    if found:
        return int(found.group(1))
    with open(path, "rb") as f:
        data = f.read()
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


class Mailbox(maildir.MaildirMailbox):
    """Twisted's Maildir mailbox, with RFC 1939 sizes and messages read as bytes."""

    def __init__(self, path: bytes) -> None:
        super().__init__(path)
        # By path: Twisted's RSET may put an undeleted message back in another slot.
        self.sizes = {p: wire_size(p) for p in self.list if isinstance(p, bytes)}

    def listMessages(self, i: int | None = None) -> Any:
        if i is None:
            return [self.sizes[p] if isinstance(p, bytes) else 0 for p in self.list]
        path = self.list[i]
        return self.sizes[path] if isinstance(path, bytes) else 0

    def getMessage(self, i: int) -> IO[bytes]:  # type: ignore[override]
        path = self.list[i]
        assert isinstance(path, bytes)
        return open(path, "rb")


@implementer(portal.IRealm)
class Realm:
    def __init__(self, mail_root: bytes) -> None:
        self.mail_root = mail_root

    def requestAvatar(
        self, avatar_id: bytes, mind: object, *interfaces: Any
    ) -> tuple[Any, Mailbox, Any]:
        if pop3.IMailbox not in interfaces:
            raise NotImplementedError("POP3 mailboxes only")
        box = Mailbox(os.path.join(self.mail_root, avatar_id, b"Maildir"))
        return pop3.IMailbox, box, lambda: None


class Server(pop3.POP3):
    timeOut = 600  # RFC 1939 section 3: an autologout timer of at least 10 minutes

    def connectionMade(self) -> None:
        # Without TCP_NODELAY a RETR's last segment (".\r\n") waits for the client's
        # delayed ACK: 40 ms a message on Linux. mailslot (uvloop) and Dovecot set it.
        transport: Any = self.transport
        transport.setTcpNoDelay(True)
        super().connectionMade()  # type: ignore[no-untyped-call]


class Factory(ServerFactory):
    protocol = Server  # type: ignore[assignment]  # Twisted's stubs want a factory callable

    def __init__(self, access: portal.Portal) -> None:
        self.portal = access

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        proto = super().buildProtocol(addr)
        assert isinstance(proto, Server)
        proto.portal = self.portal
        return proto


class TlsContext(ssl.ContextFactory):
    """One pyOpenSSL server context: TLS 1.2 and 1.3 only, the certificate chain and key."""

    def __init__(self, chain: str, key: str) -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.use_certificate_chain_file(chain)
        ctx.use_privatekey_file(key)
        ctx.check_privatekey()
        self._ctx = ctx

    def getContext(self) -> SSL.Context:
        return self._ctx


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.twisted_pop3", description=__doc__)
    p.add_argument("--passwd", required=True)
    p.add_argument("--mail-root", required=True)
    p.add_argument("--plain-port", type=int, required=True)
    p.add_argument("--tls-port", type=int, required=True)
    p.add_argument("--cert", required=True, help="PEM: the certificate, then its chain")
    p.add_argument("--key", required=True)
    args = p.parse_args(argv)

    from twisted.internet import reactor  # Twisted's default on Linux: EPollReactor

    # zope interfaces are declared with @implementer, which the type checker does not see.
    observer: Any = textFileLogObserver(sys.stdout)
    globalLogBeginner.beginLoggingTo([observer])
    checker: Any = checkers.InMemoryUsernamePasswordDatabaseDontUse()
    for user, password in read_passwd(args.passwd).items():
        checker.addUser(user, password)
    realm: Any = Realm(os.fsencode(args.mail_root))
    factory = Factory(portal.Portal(realm, [checker]))
    r: Any = reactor
    r.listenTCP(args.plain_port, factory, backlog=1024, interface="127.0.0.1")
    r.listenSSL(
        args.tls_port, factory, TlsContext(args.cert, args.key), backlog=1024, interface="127.0.0.1"
    )
    r.run()


if __name__ == "__main__":
    main()
