"""Maildrop storage behind a small Protocol (see :mod:`mailslot.store.base`)."""

from mailslot.store.base import (
    Maildrop,
    MaildropLocked,
    MessageInfo,
    PartialDeletion,
    PermanentFailure,
    Store,
    StoreError,
    TemporaryFailure,
)

__all__ = [
    "Maildrop",
    "MaildropLocked",
    "MessageInfo",
    "PartialDeletion",
    "PermanentFailure",
    "Store",
    "StoreError",
    "TemporaryFailure",
]
