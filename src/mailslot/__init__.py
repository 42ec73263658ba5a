"""mailslot: a POP3 server (RFC 1939) with implicit TLS (RFC 8314) and STLS (RFC 2595)."""

__version__ = "0.1.0"
