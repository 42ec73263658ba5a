"""Helpers shared by the integration and delivery tests.

Everything here drives real things: a ``mailslot serve`` subprocess on 127.0.0.1/::1 ports,
TLS with a throwaway trustme CA, Maildirs written byte for byte, external clients.  The
fixtures that wrap these helpers live in ``tests/conftest.py``.
"""
