"""The storage interface the POP3 transport drives.

RFC 1939 section 3 and 8: once a client is authenticated, the server acquires an exclusive lock
on the maildrop, takes a snapshot of its messages (numbered from 1, oldest first), serves message
bytes and, only on QUIT in the TRANSACTION state, removes the messages marked as deleted.

Backends raise only the errors defined here; the transport maps them to RFC 2449/3206 response
codes: :class:`MaildropLocked` -> ``[IN-USE]``, :class:`TemporaryFailure` -> ``[SYS/TEMP]``,
:class:`PermanentFailure` -> ``[SYS/PERM]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class StoreError(Exception):
    """Base class of every error a store backend raises."""


class MaildropLocked(StoreError):
    """Another session holds the maildrop's exclusive lock (RFC 2449 ``[IN-USE]``)."""


class TemporaryFailure(StoreError):
    """An I/O problem that may go away (RFC 3206 ``[SYS/TEMP]``)."""


class PermanentFailure(StoreError):
    """A problem that will not go away by retrying (RFC 3206 ``[SYS/PERM]``)."""


class PartialDeletion(TemporaryFailure):
    """:meth:`Maildrop.delete` removed some of the messages, not all (``[SYS/TEMP]``).

    ``deleted`` of them are gone.  With ``pending`` the rest are removed at the next
    :meth:`Store.open` of the maildrop, before its snapshot (a journal records them); without
    it they stay and are listed again.
    """

    def __init__(self, message: str, *, deleted: int, pending: bool) -> None:
        super().__init__(message)
        self.deleted = deleted
        self.pending = pending


class MessageGone(StoreError):
    """A message of the snapshot no longer exists (removed behind the server's back)."""


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message of a maildrop snapshot.

    ``key`` is the backend's own stable name for the message (for Maildir, the base file name
    without the ``:2,`` info part).  ``uid`` is the RFC 1939 section 7 unique-id: 1 to 70
    characters in 0x21-0x7E, stable across sessions and never reused.  ``size`` is the exact
    number of octets RETR sends with CRLF line endings, before dot-stuffing and without the
    final CRLF that a message lacking one gets before the terminator.
    """

    key: str
    uid: str
    size: int


class Maildrop(Protocol):
    """One user's locked maildrop, open for a single POP3 session.

    Obtained from :meth:`Store.open`; the exclusive lock is held until :meth:`close`.
    """

    @property
    def messages(self) -> Sequence[MessageInfo]:
        """The snapshot taken when the maildrop was opened, in delivery order, oldest first."""
        ...

    def read(self, message: MessageInfo, chunk_size: int = 65536) -> AsyncIterator[bytes]:
        """Yield the stored bytes of ``message`` as they are on disk (LF or CRLF line ends).

        Raises :class:`MessageGone` before the first chunk if the message has disappeared,
        :class:`TemporaryFailure` on I/O errors.
        """
        ...

    async def delete(self, messages: Sequence[MessageInfo]) -> None:
        """Durably remove ``messages``; return only once every one of them is gone for good.

        Raises :class:`PartialDeletion` if some were removed and not all, any other
        :class:`StoreError` only if none was.  Recovery of an interrupted deletion happens in
        the next :meth:`Store.open` of this maildrop, so a crash at any point removes either
        every listed message or none, and never a message that is not listed; a backend may
        give that up only where it could not record the deletion first (a full disk), and
        then says how many were removed.
        """
        ...

    async def close(self) -> None:
        """Release the lock. Idempotent."""
        ...


@runtime_checkable
class SeenFlags(Protocol):
    """A maildrop that flags messages retrieved whole with RETR as seen (not with TOP)."""

    def retrieved(self, message: MessageInfo) -> None:
        """``message`` was sent whole for RETR; flag it seen when the session ends."""
        ...

    def forget_retrieved(self) -> None:
        """RSET: flag none of the messages retrieved so far (Dovecot's RSET drops them)."""
        ...


@runtime_checkable
class ReadsAhead(Protocol):
    """A maildrop that may fetch the messages after the one being read in the same trip to
    its storage (a database round trip), when the session says the client has already sent
    further commands (RFC 2449 section 6.6's pipelining), and drops them when it does not."""

    def read_ahead(self, more: bool) -> None:
        """``more``: the client's next commands are in already, so the next :meth:`read`
        may bring the following messages with it; not ``more``: the session waits for the
        client's next command, so nothing read ahead is kept."""
        ...


Owner = tuple[int, int]
"""(uid, gid) for files a store creates as root; -1 leaves that id as it comes."""


class Store(Protocol):
    """A collection of maildrops, one per user."""

    async def open(
        self, user: str, home: str | None = None, *, owner: Owner | None = None
    ) -> Maildrop:
        """Lock ``user``'s maildrop and take its snapshot.

        ``user`` has already been validated by :func:`mailslot.auth.usernames.validate`;
        ``home`` is the home directory from the user database, if any (``{home}`` in path
        templates).  ``owner``: the (uid, gid) the user database gives (Dovecot's userdb
        uid/gid; -1 for one not given): a store that runs as root gives what it creates
        for the user that owner.  Raises :class:`MaildropLocked` if another session holds it.
        """
        ...

    async def deliver(
        self, user: str, data: bytes, home: str | None = None, *, owner: Owner | None = None
    ) -> str:
        """Durably add one message (LF line ends) to ``user``'s maildrop; return its key.

        Used by LMTP and ``mailslot deliver``; returns once the message is durable.
        ``owner`` as for :meth:`open`.
        """
        ...
