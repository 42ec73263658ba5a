"""Delivery outcomes as data: one LMTP reply and one sysexits code per outcome.

RFC 2033 section 4.2: after DATA an LMTP server sends one reply per accepted recipient, each
with an RFC 3463 enhanced status code (RFC 2034).  ``mailslot deliver`` reports the same outcome
as a ``sysexits.h`` exit status, which Postfix's local(8) and Exim's pipe transport turn into
"deliver", "defer" or "bounce" (Postfix ``local(8)``: EX_TEMPFAIL defers, other failures bounce).
"""

from __future__ import annotations

from dataclasses import dataclass

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78


@dataclass(frozen=True, slots=True)
class Status:
    """One outcome: the SMTP reply code, the RFC 3463 code, a fixed text and an exit status.

    The text is fixed per outcome so no exception text or path ever reaches the peer.
    """

    code: int
    enhanced: str
    text: str
    sysexit: int

    @property
    def reply(self) -> str:
        """The LMTP reply line without CRLF (RFC 5321 section 4.2, RFC 2034 section 4)."""
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300


DELIVERED = Status(250, "2.0.0", "Delivered", EX_OK)
RECIPIENT_OK = Status(250, "2.1.5", "Recipient ok", EX_OK)
# RFC 3463 X.1.1: bad destination mailbox address; X.1.2: bad destination system (not our domain).
NO_SUCH_USER = Status(550, "5.1.1", "No such user here", EX_NOUSER)
NOT_LOCAL_DOMAIN = Status(550, "5.1.2", "Not a local domain", EX_NOUSER)
# X.3.0: other or undefined mail system status; a 4yz reply makes the MTA keep the message.
TEMPORARY = Status(451, "4.3.0", "Temporary failure, try again later", EX_TEMPFAIL)
# X.3.4: message too big for system (RFC 1870 section 6 uses 552 for the SIZE limit).
TOO_BIG = Status(552, "5.3.4", "Message too big for system", EX_NOPERM)
# X.2.2: mailbox full.
OVER_QUOTA = Status(552, "5.2.2", "Mailbox full", EX_NOPERM)
# RFC 5321 section 4.5.3.1.6: text lines are limited to 1000 octets including CRLF.
LINE_TOO_LONG = Status(500, "5.6.0", "Line too long", EX_DATAERR)
NOT_A_MESSAGE = Status(554, "5.6.0", "Input is not a mail message", EX_DATAERR)
