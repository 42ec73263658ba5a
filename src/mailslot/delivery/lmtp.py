"""The LMTP listener (RFC 2033) on aiosmtpd, delivering into the store.

aiosmtpd parses the protocol (LHLO, MAIL, RCPT, DATA, dot-unstuffing per RFC 5321 section
4.5.2); this module supplies the delivery decisions:

* RCPT (RFC 2033 section 4.1): the address is mapped to a user at once, so an unknown user
  gets ``550 5.1.1`` before any data is sent.
* DATA (RFC 2033 section 4.2): one reply per accepted recipient, in RCPT order, each sent only
  after :meth:`Store.deliver` has returned, i.e. once the message is durable.  A connection
  that drops before a reply leaves the MTA holding the message, so no message is lost and
  no ``250`` is sent without it.
* SIZE (RFC 1870): ``max_message_size`` is announced and enforced with ``552 5.3.4``.  aiosmtpd
  answers an over-size DATA with a single line; LMTP needs one per recipient, so
  :class:`MailslotLMTP` repeats it.
* PIPELINING (RFC 2920) and ENHANCEDSTATUSCODES (RFC 2034) are announced, as RFC 2033
  section 5 asks: aiosmtpd reads commands from a stream, so pipelined commands just queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import stat
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session

from mailslot.auth.base import Authenticator, User
from mailslot.config import DeliveryConfig, ListenerConfig
from mailslot.delivery.agent import DeliveryAgent
from mailslot.delivery.message import to_lf
from mailslot.delivery.quota import UsageProbe
from mailslot.delivery.recipient import RecipientRejected
from mailslot.delivery.status import LINE_TOO_LONG, RECIPIENT_OK, TEMPORARY, TOO_BIG, Status
from mailslot.delivery.transactions import Transactions
from mailslot.metrics import Metrics
from mailslot.store.base import Store

UNIX_SOCKET_MODE = 0o660
IDENT = "mailslot LMTP"
# aiosmtpd's own one-line DATA failures, which LMTP must repeat once per recipient.
_DATA_FAILURES = {
    "552 Error: Too much mail data": TOO_BIG,
    "500 Line too long": LINE_TOO_LONG,
}
_MAIL_SIZE_FAILURE = "552 Error: message size exceeds fixed maximum message size"


class DeliveryEnvelope(Envelope):
    """aiosmtpd's envelope plus the user each accepted recipient maps to, in RCPT order."""

    def __init__(self) -> None:
        super().__init__()
        self.users: list[User] = []


class MailslotLMTP(LMTP):
    """aiosmtpd's LMTP with a per-recipient answer for every DATA failure it detects itself."""

    def __init__(self, *args: Any, transactions: Transactions, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._data_recipients = 0
        self._transactions = transactions

    def _create_envelope(self) -> DeliveryEnvelope:
        return DeliveryEnvelope()

    async def smtp_DATA(self, arg: str) -> None:
        envelope = self.envelope
        self._data_recipients = len(envelope.rcpt_tos) if envelope is not None else 0
        self._transactions.begin()
        try:
            await super().smtp_DATA(arg)
        finally:
            self._data_recipients = 0
            self._transactions.end()

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            if self._data_recipients:
                for prefix, outcome in _DATA_FAILURES.items():
                    if status.startswith(prefix):
                        status = "\r\n".join([outcome.reply] * self._data_recipients)
                        break
            elif status.startswith(_MAIL_SIZE_FAILURE):
                status = TOO_BIG.reply
        await super().push(status)


class LMTPHandler:
    """aiosmtpd handler hooks (``handle_EHLO``, ``handle_RCPT``, ``handle_DATA``)."""

    def __init__(self, agent: DeliveryAgent, metrics: Metrics | None = None) -> None:
        self._agent = agent
        self._metrics = metrics or Metrics()

    async def handle_EHLO(
        self,
        server: MailslotLMTP,
        session: Session,
        envelope: DeliveryEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_RCPT(
        self,
        server: MailslotLMTP,
        session: Session,
        envelope: DeliveryEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        try:
            user = await self._agent.resolve(address)
        except RecipientRejected as rejected:
            return rejected.status.reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.users.append(user)
        return RECIPIENT_OK.reply

    async def handle_DATA(
        self, server: MailslotLMTP, session: Session, envelope: DeliveryEnvelope
    ) -> str:
        content = envelope.original_content or b""
        replies: list[str] = []
        if self._agent.too_big(len(content)):
            for _ in envelope.rcpt_tos:
                self._metrics.lmtp_reply(TOO_BIG.code)
            return "\r\n".join([TOO_BIG.reply] * len(envelope.rcpt_tos))
        body = to_lf(content)
        sender = "" if envelope.mail_from in ("<>", None) else envelope.mail_from
        # The same recipient twice in one transaction gets one copy and the same answer twice.
        done: dict[str, Status] = {}
        for address, user in zip(envelope.rcpt_tos, envelope.users, strict=True):
            status = done.get(address)
            if status is None:
                try:
                    status = await self._agent.deliver(user, body, sender=sender, recipient=address)
                except ValueError:
                    # An address with a control character cannot become a header line.
                    status = TEMPORARY
                done[address] = status
            replies.append(status.reply)
            self._metrics.lmtp_reply(status.code)
        return "\r\n".join(replies)


def make_protocol_factory(
    agent: DeliveryAgent,
    hostname: str,
    loop: asyncio.AbstractEventLoop,
    transactions: Transactions | None = None,
    metrics: Metrics | None = None,
) -> Any:
    """A factory of :class:`MailslotLMTP` protocols sharing one handler (and ``transactions``,
    which counts their DATA commands in progress)."""
    handler = LMTPHandler(agent, metrics)
    limit = agent.config.max_message_size or None
    counted = transactions if transactions is not None else Transactions()

    def factory() -> MailslotLMTP:
        return MailslotLMTP(
            handler,
            data_size_limit=limit,
            enable_SMTPUTF8=True,
            hostname=hostname,
            ident=IDENT,
            loop=loop,
            transactions=counted,
        )

    return factory


def _bind_unix(path: str, owner: tuple[int, int] | None = None) -> socket.socket:
    """Bind a listening Unix socket at ``path`` with mode 0660, never visible with another mode.

    The socket is bound under a temporary name, chmod-ed (and chown-ed to ``owner``, a uid and
    gid), then renamed over ``path``, so there is no moment where an MTA (or anyone) finds it
    with the process umask's mode or root's ownership.  In a setgid directory the socket keeps
    the directory's group (the kernel gave it): that is how an administrator lets the MTA's
    group connect (docs/delivery.md).
    """
    directory, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        sock.bind(temporary)
        os.chmod(temporary, UNIX_SOCKET_MODE)
        if owner is not None:
            uid, gid = owner
            if os.stat(directory).st_mode & stat.S_ISGID:
                gid = -1
            os.chown(temporary, uid, gid)
        sock.listen(socket.SOMAXCONN)
        os.replace(temporary, path)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    sock.setblocking(False)
    return sock


async def start_lmtp_server(
    listener: ListenerConfig,
    delivery: DeliveryConfig,
    store: Store,
    users: Authenticator,
    hostname: str,
    *,
    usage: UsageProbe | None = None,
    sock: socket.socket | None = None,
    transactions: Transactions | None = None,
    metrics: Metrics | None = None,
) -> asyncio.AbstractServer:
    """Start serving LMTP on ``listener`` (TCP ``address:port`` or Unix socket ``path``).

    ``usage`` overrides how maildrop usage is counted for the quota (tests; other backends).
    ``sock``: the listener's socket, already listening (:func:`lmtp_socket`), else one is
    bound here.  ``transactions`` counts the DATA commands in progress, for a caller that
    must let them end before it exits.
    """
    loop = asyncio.get_running_loop()
    agent = DeliveryAgent(delivery, store, users, usage)
    factory = make_protocol_factory(agent, hostname, loop, transactions, metrics)
    if sock is None:
        sock = lmtp_socket(listener)
    if listener.path is not None:
        return await loop.create_unix_server(factory, sock=sock)
    return await loop.create_server(factory, sock=sock)


def lmtp_socket(listener: ListenerConfig, owner: tuple[int, int] | None = None) -> socket.socket:
    """A listening socket for ``listener``: a Unix socket at its ``path`` (mode 0660, owned by
    ``owner``'s uid and gid when given), or TCP on its address and port.  A pre-forking parent
    binds it once for all its workers, as root before they drop to ``[server] user``."""
    if listener.path is not None:
        return _bind_unix(os.fspath(listener.path), owner)
    from mailslot.server.listener import listening_socket  # the POP3 listeners' own binding

    return listening_socket(listener)
