"""Maildrop storage behind a small Protocol (see :mod:`mailslot.store.base`)."""

from mailslot.store.base import (
    Maildrop,
    MaildropLocked,
    MessageInfo,
    Store,
    StoreError,
    TemporaryFailure,
)

__all__ = ["Maildrop", "MaildropLocked", "MessageInfo", "Store", "StoreError", "TemporaryFailure"]
