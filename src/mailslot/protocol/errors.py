"""Two kinds of protocol error, in the manner of h11: ours and the peer's.

A :class:`RemoteProtocolError` is the client's mistake; the core answers it with ``-ERR`` and the
session goes on (RFC 1939 section 3) unless a limit says otherwise.  A :class:`LocalProtocolError`
is a bug in the code driving the core (an answer to an event that was not asked for).
"""


class ProtocolError(Exception):
    """Base class."""


class LocalProtocolError(ProtocolError):
    """The driver used the core wrongly: a bug on our side, never the client's."""


class RemoteProtocolError(ProtocolError):
    """The client sent something the protocol does not allow."""
