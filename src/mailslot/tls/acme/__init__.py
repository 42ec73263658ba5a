"""Certificates issued and renewed by mailslot itself: ACME (RFC 8555), docs/acme.md.

- :mod:`.settings`: the ``[acme]`` checks and the names a certificate is for.
- :mod:`.state`: the state directory (account key, status file) and atomic writes.
- :mod:`.schedule`: when to renew (two thirds of the lifetime, ARI) and back off (pure).
- :mod:`.responders`: HTTP-01 (RFC 8555 section 8.3) and TLS-ALPN-01 (RFC 8737) answered by
  mailslot; :mod:`.dns01`: DNS-01 (RFC 8555 section 8.4) through RFC 2136 updates.
- :mod:`.issuer`: one order, account to certificate, through the ``acme`` library (blocking).
- :mod:`.service`: the renewal loop; :mod:`.process`: the one process that runs it.
"""
