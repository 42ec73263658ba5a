"""``mailslot doctor``: check a live POP3 server from outside, as the strictest client would.

The package is a client and imports nothing of mailslot's server, store or auth (a test checks
its import graph): it must judge Dovecot, Courier or any other POP3 server as fairly as mailslot.
It uses the standard library (``socket``, ``ssl``) and ``cryptography`` to parse certificates;
the optional key-exchange group probe runs ``openssl s_client`` (see :mod:`.groups`).

Modules, one concern each: :mod:`.results` (check results, exit status), :mod:`.net` (sockets
and POP3 lines), :mod:`.dns`, :mod:`.certificate` (chain, name, expiry, key; RFC 5280,
RFC 9525), :mod:`.tls` (versions and cipher suites; RFC 8996, RFC 9325), :mod:`.groups`,
:mod:`.pop3` (greeting, CAPA, STLS, login; RFC 1939, RFC 2449, RFC 2595, RFC 8314),
:mod:`.render` (text and JSON), :mod:`.runner` (the order of checks) and :mod:`.command`
(the CLI).  docs/doctor.md lists every check.
"""

from __future__ import annotations
