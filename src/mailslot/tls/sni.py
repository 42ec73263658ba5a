"""Which certificate a handshake gets, by the name the client sends (SNI, RFC 6066 section 3).

Each certificate serves the DNS names of its subjectAltName: exact names, and wildcards
``*.example.org`` that stand for one label (RFC 9525 section 6.3).  Everything is worked out
when the certificates are loaded: one :class:`ssl.SSLContext` per distinct set of
certificates a name is served by, and two dicts from a name (or the part after its first
label) to that context, so a handshake costs the callback two dict lookups at most.

An ``SSLContext`` holds one certificate per key type, and OpenSSL picks, per handshake, the
one the client can verify: so an ECDSA and an RSA certificate for the same names go into the
same context, ECDSA for clients that offer it, RSA for the rest.  For a name several
certificates of one key type serve, the first in the configuration wins.

Clients that send no name, or a name no certificate serves, get the default context: that of
the default certificate's first name (so it holds the default certificate and any
certificate of the other key type for that name).  The name a client sends is never trusted
beyond choosing among the configured certificates.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence

from mailslot.tls.certificates import Loaded


class SniTable:
    """The contexts of ``loaded`` (the default first) and the name -> context lookup."""

    def __init__(self, loaded: Sequence[Loaded], new_context: Callable[[], ssl.SSLContext]):
        self._new_context = new_context
        # name -> the certificates serving it, at most one per key type, config order.
        serving: dict[str, list[Loaded]] = {}
        for item in loaded:
            for name in item.names:
                chosen = serving.setdefault(name, [])
                if all(other.kind != item.kind or item.kind == "other" for other in chosen):
                    chosen.append(item)
        contexts: dict[tuple[int, ...], ssl.SSLContext] = {}

        def context_of(items: Sequence[Loaded]) -> ssl.SSLContext:
            key = tuple(id(item) for item in items)
            if key not in contexts:
                context = new_context()
                for item in items:
                    context.load_cert_chain(item.pair.certificate, item.pair.private_key)
                contexts[key] = context
            return contexts[key]

        self.exact: dict[str, ssl.SSLContext] = {}
        self.wildcard: dict[str, ssl.SSLContext] = {}  # "example.org" for "*.example.org"
        for name, items in serving.items():
            if name.startswith("*."):
                if "*" not in name[2:]:
                    self.wildcard[name[2:]] = context_of(items)
            elif "*" not in name:
                self.exact[name] = context_of(items)
        first = loaded[0]
        if first.names and first.names[0] in serving:
            self.default = context_of(serving[first.names[0]])
        else:
            self.default = context_of([first])
        self.contexts = list(contexts.values())
        if len(self.contexts) > 1:
            self.default.sni_callback = self.select

    def lookup(self, server_name: str | None) -> ssl.SSLContext:
        """The context for ``server_name``: an exact name first, then a wildcard."""
        if server_name is None:
            return self.default
        name = server_name.lower().rstrip(".")
        context = self.exact.get(name)
        if context is None:
            label, dot, rest = name.partition(".")
            context = self.wildcard.get(rest) if label and dot else None
        return context if context is not None else self.default

    def select(
        self, ssl_object: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: object
    ) -> None:
        """``SSLContext.sni_callback``: switch the handshake to the name's context."""
        context = self.lookup(server_name)
        if context is not ssl_object.context:
            ssl_object.context = context
