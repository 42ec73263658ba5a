"""User authentication behind a small Protocol (see :mod:`mailslot.auth.base`)."""

from mailslot.auth.base import (
    AuthenticationFailed,
    Authenticator,
    AuthError,
    TemporaryAuthFailure,
    User,
)

__all__ = ["AuthError", "AuthenticationFailed", "Authenticator", "TemporaryAuthFailure", "User"]
