"""The admin socket: ``mailslot who``, ``kick``, ``mailbox status``, ``reload``, ``stop``.

- :mod:`~mailslot.admin.protocol`: the wire format, one JSON request line and one JSON
  response line (sans-IO, stdlib only).
- :mod:`~mailslot.admin.sockets`: making the Unix sockets (mode 0600, no symlink followed)
  and checking a peer's credentials (``SO_PEERCRED``).
- :mod:`~mailslot.admin.server`: what each worker runs: it answers on the shared admin socket
  and asks the other workers over their own sockets (the fan-out).
- :mod:`~mailslot.admin.mailbox`: a maildrop's size, age and lock, read without locking it.
- :mod:`~mailslot.admin.client` and :mod:`~mailslot.admin.command`: the CLI side.

docs/cli.md documents the commands and the protocol.
"""
