"""The ACME state directory and the files written into it and where ``[tls]`` points.

``[acme] state_directory`` (0700) holds:

- ``account.key``: the account's private key (PEM, 0600), made once; ``account.json``: the
  account's URL at the CA it was registered with (RFC 8555 section 7.3).
- ``status.json``: what the renewal loop last did: the certificate's names and dates, when it
  renews, the last failure and when it tries again (``mailslot acme status`` prints it, and
  ``mailslot doctor --config`` reports it).  Keys: ``state`` (``"ok"``, ``"ordering"``,
  ``"failing"``), ``names``, ``not_after``, ``renew_at``, ``checked``, ``issued``,
  ``reason``, ``last_error``, ``failures``, ``rate_limited``, ``account_problem`` and
  ``next_attempt``; times are ISO 8601 with an offset.

Every file is written atomically: a temporary file in the same directory, fsynced, then
renamed over the old one (rename(2)), so a reader (the server's reload, :mod:`mailslot.tls.
watch`) sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes


def write_atomically(
    path: Path, data: bytes, mode: int = 0o644, *, group: int | None = None, private: bool = False
) -> None:
    """Replace ``path`` with ``data`` in one rename.  The new file keeps the mode, owner and
    group of the file it replaces (so a key that ``[server] user``'s group may read stays
    so); a new file gets ``mode`` and, run as root, ``group``.  ``private``: never readable
    by others, whatever the old file allowed."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        old = None
    if old is not None:
        mode = old.st_mode & 0o777
    if private:
        mode &= 0o770
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            if os.geteuid() == 0 and old is not None:
                os.fchown(handle.fileno(), old.st_uid, old.st_gid)
            elif os.geteuid() == 0 and group is not None:
                os.fchown(handle.fileno(), 0, group)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself is durable once the directory is
        directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def new_private_key(key_type: str) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """A fresh key of ``[acme] key_type``: ECDSA P-256 (the default), P-384, or RSA."""
    if key_type == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class StateDirectory:
    """``[acme] state_directory``; made (0700) on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    @property
    def account_key(self) -> Path:
        return self.path / "account.key"

    @property
    def account(self) -> Path:
        return self.path / "account.json"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    def load_account_key(self) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
        """The account key; made (ECDSA P-256) and saved (0600) the first time."""
        self.ensure()
        try:
            data = self.account_key.read_bytes()
        except FileNotFoundError:
            key = ec.generate_private_key(ec.SECP256R1())
            write_atomically(self.account_key, private_key_pem(key), 0o600, private=True)
            return key
        loaded = serialization.load_pem_private_key(data, password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError(f"{self.account_key}: not an ECDSA or RSA key")
        return loaded

    def read_json(self, path: Path) -> dict[str, Any]:
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def write_json(self, path: Path, value: dict[str, Any]) -> None:
        self.ensure()
        text = json.dumps(value, indent=2, sort_keys=True) + "\n"
        write_atomically(path, text.encode("utf-8"), 0o600, private=True)

    def status(self) -> dict[str, Any]:
        return self.read_json(self.status_file)

    def update_status(self, **values: Any) -> dict[str, Any]:
        status = self.status() | values
        self.write_json(self.status_file, status)
        return status
