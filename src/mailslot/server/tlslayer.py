"""TLS over a TCP transport, for implicit TLS (RFC 8314 section 3.3) and STLS (RFC 2595).

:class:`TlsTransport` is the protocol of the connection's TCP transport and the transport of
the session above it.  OpenSSL does all of the TLS through :class:`ssl.SSLObject` over two
:class:`ssl.MemoryBIO` (the handshake, RFC 8446 section 4 and RFC 5246 section 7.4, the
records, the alerts); this module only moves bytes between the BIOs, the socket and the
session.  It replaces the event loop's ``start_tls()`` (uvloop's ``SSLProtocol``), which
costs a login more than the TLS does: a task and futures for each handshake (and, before
it, a protocol holding the ClientHello), a failing ``SSLObject.read`` after every record,
and separate socket writes for the tickets and the first reply (docs/benchmarks.md,
"tls-login").  Here:

- every callback from the socket ends with one write of everything OpenSSL produced during
  it: the server's half of the handshake is one write, and after the client's Finished the
  session tickets (RFC 8446 section 4.6.1) and the greeting go out together;
- a read is decrypted only while OpenSSL has a record (``MemoryBIO.pending``,
  ``SSLObject.pending``), and the session gets the plaintext in one call;
- the handshake is driven from ``data_received``, without a task or a future.

Closing sends ``close_notify`` (RFC 8446 section 6.1) and closes the socket once the peer's
``close_notify`` or FIN arrives; the session bounds that wait (``session._CLOSE_WAIT``).
A peer's ``close_notify`` or FIN while serving is the session's EOF, after which the
transport closes (a TLS session is never left half open).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from mailslot.server.proxy import ProxyHeader, ProxyParser, ProxyProtocolError

_PROXY = 0  # reading a PROXY header before the ClientHello (implicit TLS behind a proxy)
_HANDSHAKE = 1
_OPEN = 2
_CLOSING = 3  # our close_notify sent; waiting for the peer's, or its FIN
_CLOSED = 4

_READ_SIZE = 256 * 1024  # plaintext asked of OpenSSL per read

# What a TLS transport tells of itself beyond the socket's extra info (asyncio's names).
_TLS_INFO = frozenset({"ssl_object", "sslcontext", "peercert", "cipher", "compression"})

Handshaken = Callable[["TlsTransport", BaseException | None], None]


class TlsTransport(asyncio.Transport, asyncio.Protocol):
    """One connection's TLS: the TCP transport's protocol, the session's transport.

    ``handshaken(self, error)`` is called once, when the handshake ends: ``error`` is
    ``None`` once it succeeded (for implicit TLS the caller then makes the session and calls
    its ``connection_made`` with this transport), else why it failed (an
    :class:`ssl.SSLError`, :class:`TimeoutError`, :class:`ConnectionError`), just before the
    socket is closed.  ``app``: a protocol already connected (STLS: the session that answered the
    command), which gets ``connection_lost`` whenever the connection ends; for implicit TLS it
    is set by :meth:`set_protocol` after the handshake.  ``proxy``: read a PROXY header first,
    passed to ``on_header``, which says whether to go on.  Each phase (the header, the
    handshake) ends ``timeout`` seconds after it began, and both by ``deadline`` (loop time).
    Subclasses may add slots for what the caller keeps per connection.
    """

    __slots__ = (
        "_app",
        "_app_reading",
        "_context",
        "_deadline",
        "_deferred",
        "_done",
        "_handshaken",
        "_in",
        "_loop",
        "_on_header",
        "_out",
        "_proxy",
        "_sslobj",
        "_state",
        "_tcp",
        "_timeout",
        "_timer",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        context: ssl.SSLContext,
        handshaken: Handshaken,
        timeout: float,
        deadline: float,
        *,
        app: asyncio.BaseProtocol | None = None,
        proxy: ProxyParser | None = None,
        on_header: Callable[[TlsTransport, ProxyHeader], bool] | None = None,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._context = context
        self._handshaken: Handshaken | None = handshaken
        self._timeout = timeout
        self._deadline = deadline
        self._app = app
        self._app_reading = True
        self._proxy = proxy
        self._on_header = on_header
        self._state = _PROXY if proxy is not None else _HANDSHAKE
        self._tcp: asyncio.Transport | None = None
        self._sslobj: ssl.SSLObject | None = None
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._deferred = False  # in a socket callback: its end writes what OpenSSL produced
        self._timer: asyncio.TimerHandle | None = None
        self._done: asyncio.Future[None] | None = None

    # ------------------------------------------------------------------ the TCP side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport  # type: ignore[assignment]
        self._arm()
        if self._state == _HANDSHAKE:
            self._sslobj = self._context.wrap_bio(self._in, self._out, server_side=True)

    def take_over(self, transport: asyncio.Transport) -> None:
        """Become the protocol of an open transport (STLS, once its ``+OK`` was written)."""
        transport.set_protocol(self)
        self.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._deferred = True
        try:
            state = self._state
            if state == _OPEN:
                self._in.write(data)
                self._read()
            elif state == _HANDSHAKE:
                self._in.write(data)
                self._handshake()
            elif state == _PROXY:
                self._proxy_data(data)
            elif state == _CLOSING:
                self._in.write(data)
                self._shutdown()
        finally:
            self._deferred = False
            self._flush()

    def eof_received(self) -> bool:
        state = self._state
        if state < _OPEN:
            self._fail(self._closed_early())
        elif state == _OPEN:
            self._peer_closed()
        # Our close_notify (if any) is written; the TCP transport now closes.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        state = self._state
        early = self._closed_early() if state < _OPEN else None
        self._state = _CLOSED
        self._cancel_timer()
        if early is not None:
            # A reset before the PROXY header is complete is a header cut short, as an EOF.
            self._fail(early if self._proxy is not None else exc or early)
        # For implicit TLS the session exists only once the handshake succeeded; for STLS
        # it was connected before and hears of the end either way.
        app, self._app = self._app, None
        if app is not None:
            app.connection_lost(exc)
        self._finished()

    def pause_writing(self) -> None:
        if self._app is not None and self._state >= _OPEN:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None and self._state >= _OPEN:
            self._app.resume_writing()

    # ------------------------------------------------------------------ TLS

    def _proxy_data(self, data: bytes) -> None:
        assert self._proxy is not None and self._on_header is not None
        try:
            header = self._proxy.feed(data)
        except ProxyProtocolError as exc:
            self._fail(exc)
            return
        if header is None:
            return
        rest = self._proxy.rest
        self._proxy = None
        if not self._on_header(self, header):
            self._fail(ConnectionRefusedError("refused by the connection limits"))
            return
        self._state = _HANDSHAKE
        self._arm()  # the handshake's own timeout, from now
        self._sslobj = self._context.wrap_bio(self._in, self._out, server_side=True)
        if rest:
            self._in.write(rest)
            self._handshake()

    def _handshake(self) -> None:
        sslobj = self._sslobj
        assert sslobj is not None
        try:
            sslobj.do_handshake()
        except ssl.SSLWantReadError:
            return
        except (ssl.SSLError, OSError) as exc:
            self._fail(exc)
            return
        self._state = _OPEN
        self._cancel_timer()
        handshaken, self._handshaken = self._handshaken, None
        if handshaken is not None:
            handshaken(self, None)  # the greeting, if any, is written before the tickets leave
        if self._state == _OPEN and (self._in.pending or sslobj.pending()):
            self._read()  # the client's first command, sent with its Finished

    def _read(self) -> None:
        """Give the session what the records read so far decrypt to."""
        sslobj = self._sslobj
        assert sslobj is not None
        incoming = self._in
        while self._app_reading and (incoming.pending or sslobj.pending()):
            try:
                data = sslobj.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                return  # a record not yet whole
            except ssl.SSLError:
                self._fatal()
                return
            if not data:  # ssl's read() answers b"" to the peer's close_notify
                self._peer_closed()
                return
            app = self._app
            if app is not None:
                app.data_received(data)  # type: ignore[attr-defined]
            if self._state != _OPEN:
                return

    def _peer_closed(self) -> None:
        """The peer's close_notify or FIN: the session's EOF, then close."""
        app = self._app
        if app is not None:
            app.eof_received()  # type: ignore[attr-defined]
        self.close()

    def _shutdown(self) -> None:
        """Closing: wait for the peer's close_notify, dropping any data before it."""
        sslobj = self._sslobj
        assert sslobj is not None
        try:
            while self._in.pending or sslobj.pending():
                if not sslobj.read(_READ_SIZE):
                    break  # the peer's close_notify
            else:
                return
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError:
            pass  # nothing more to say to this peer
        self._state = _CLOSED
        self._close_tcp()

    def _close_tcp(self) -> None:
        """Write what OpenSSL produced (a callback's end would be too late), then close."""
        tcp = self._tcp
        if tcp is not None:
            if self._out.pending:
                tcp.write(self._out.read())
            tcp.close()

    def _flush(self) -> None:
        """Write what OpenSSL produced, unless a socket callback will at its end."""
        if self._out.pending and not self._deferred and self._state != _CLOSED:
            assert self._tcp is not None
            self._tcp.write(self._out.read())

    def _fail(self, exc: BaseException) -> None:
        """The handshake (or the PROXY header) failed: tell, then send any alert and close."""
        self._cancel_timer()
        close = self._state < _CLOSING
        self._state = _CLOSED
        handshaken, self._handshaken = self._handshaken, None
        if handshaken is not None:
            handshaken(self, exc)  # first: uvloop answers get_extra_info only while open
        if close:
            self._close_tcp()  # an alert OpenSSL wrote (say, protocol_version) goes first
        self._finished()

    def _fatal(self) -> None:
        """A bad record after the handshake: OpenSSL's alert goes out, the socket closes,
        and the session hears of it as a lost connection (``connection_lost``)."""
        self._state = _CLOSED
        self._close_tcp()

    def _arm(self) -> None:
        """Time the current phase out: ``timeout`` from now, but not past ``deadline``."""
        self._cancel_timer()
        when = min(self._loop.time() + self._timeout, self._deadline)
        self._timer = self._loop.call_at(when, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        if self._state < _OPEN:
            self._fail(TimeoutError("timeout"))

    def _closed_early(self) -> Exception:
        if self._state == _PROXY:
            return ProxyProtocolError("connection closed before a complete header")
        return ConnectionResetError("closed by the peer during the handshake")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _abort_tcp(self) -> None:
        if self._tcp is not None:
            self._tcp.abort()

    def _finished(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    # ------------------------------------------------------------------ for the listener

    @property
    def handshaking(self) -> bool:
        return self._state < _OPEN

    @property
    def reading_header(self) -> bool:
        """Still before (or without) a complete PROXY header."""
        return self._proxy is not None

    def handshake_ended(self) -> asyncio.Future[None]:
        """Done once the handshake has ended, either way (for shutdown to wait on)."""
        if self._done is None:
            self._done = self._loop.create_future()
            if self._state >= _OPEN:
                self._done.set_result(None)
        return self._done

    def cancel_handshake(self) -> None:
        """Shutdown: a handshake still running ends here."""
        if self._state < _OPEN:
            self._fail(ConnectionAbortedError("server shutdown"))

    # ------------------------------------------------------------------ the session's side

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _OPEN:
            return  # as a closing transport: the bytes are dropped
        sslobj = self._sslobj
        assert sslobj is not None
        # A MemoryBIO never fills: one call writes it all, as records of up to 16 KiB.
        count = sslobj.write(data)
        if count < len(data):  # pragma: no cover - not with OpenSSL 1.1.1 to 3.x
            view = memoryview(data)[count:]
            while view:
                view = view[sslobj.write(view) :]
        self._flush()

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def close(self) -> None:
        """Send close_notify after what was written; the socket closes on the peer's reply."""
        if self._state >= _CLOSING:
            return
        if self._state < _OPEN:
            self._fail(ConnectionAbortedError("closed during the handshake"))
            return
        self._state = _CLOSING
        sslobj = self._sslobj
        assert sslobj is not None
        try:
            sslobj.unwrap()
        except ssl.SSLWantReadError:
            pass  # our close_notify is written; the peer's is to come
        except ssl.SSLError:
            self._state = _CLOSED
        else:
            self._state = _CLOSED  # the peer's close_notify had come already
        if self._state == _CLOSED:
            self._close_tcp()
        else:
            self._flush()

    def abort(self) -> None:
        self._cancel_timer()
        if self._state < _OPEN:
            self._fail(ConnectionAbortedError("aborted during the handshake"))
        self._state = _CLOSED
        self._abort_tcp()

    def is_closing(self) -> bool:
        return self._state >= _CLOSING

    def pause_reading(self) -> None:
        self._app_reading = False
        if self._tcp is not None:
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        self._app_reading = True
        if self._tcp is not None:
            self._tcp.resume_reading()
        if self._state == _OPEN and (self._in.pending or self._sslobj_pending()):
            self._loop.call_soon(self._read_now)

    def _sslobj_pending(self) -> int:
        return self._sslobj.pending() if self._sslobj is not None else 0

    def _read_now(self) -> None:
        if self._state == _OPEN:
            self._deferred = True
            try:
                self._read()
            finally:
                self._deferred = False
                self._flush()

    def is_reading(self) -> bool:
        return self._app_reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._tcp is not None:
            self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        size = self._out.pending
        return size + (self._tcp.get_write_buffer_size() if self._tcp is not None else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._tcp.get_write_buffer_limits() if self._tcp is not None else (0, 0)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS has no half close; close() sends close_notify")

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._app is not None
        return self._app

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in _TLS_INFO:
            sslobj = self._sslobj
            if sslobj is None:
                return default
            if name == "ssl_object":
                return sslobj
            if name == "sslcontext":
                return sslobj.context
            if name == "peercert":
                return sslobj.getpeercert()
            if name == "cipher":
                return sslobj.cipher()
            return sslobj.compression()
        if self._tcp is None:
            return default
        return self._tcp.get_extra_info(name, default)
