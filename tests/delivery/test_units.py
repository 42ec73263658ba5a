"""The pure parts of delivery, without a socket: address mapping, message shaping, quota."""

from __future__ import annotations

import asyncio
import os

import pytest

from mailslot.config import DeliveryConfig
from mailslot.delivery import quota
from mailslot.delivery.message import (
    UnsafeTraceValue,
    looks_like_message,
    split_mbox_from,
    top_trace_fields,
    trace_fields,
)
from mailslot.delivery.recipient import RecipientRejected, candidates
from mailslot.store.base import PermanentFailure
from mailslot.store.maildir import MaildirStore


@pytest.mark.parametrize(
    ("address", "config", "expected"),
    [
        ("Alice@Example.org", DeliveryConfig(), ["Alice", "alice"]),
        ("alice@example.org", DeliveryConfig(domains=("EXAMPLE.org",)), ["alice"]),
        ("postmaster", DeliveryConfig(domains=("example.org",)), ["postmaster"]),
        ("postmaster", DeliveryConfig(recipient="address"), []),
        (
            "Bo@Example.ORG",
            DeliveryConfig(recipient="address"),
            ["Bo@example.org", "bo@example.org"],
        ),
    ],
)
def test_candidates(address, config, expected):
    if not expected:
        with pytest.raises(RecipientRejected):
            candidates(address, config)
    else:
        assert candidates(address, config) == expected


@pytest.mark.parametrize("address", ["../etc@example.org", ".hidden@x", "a/b@x", "@x"])
def test_unsafe_local_parts_are_unknown_users(address):
    with pytest.raises(RecipientRejected) as caught:
        candidates(address, DeliveryConfig())
    assert caught.value.status.enhanced == "5.1.1"


def test_split_mbox_from():
    assert split_mbox_from(b"From bob@x  Thu Jan 1\nA: b\n") == (b"A: b\n", "bob@x")
    assert split_mbox_from(b"From MAILER-DAEMON  Thu\nA: b\n") == (b"A: b\n", "")
    assert split_mbox_from(b"From: bob\n") == (b"From: bob\n", None)


def test_looks_like_message():
    assert looks_like_message(b"Subject: x\n\nbody")
    assert looks_like_message(b"X-Odd :x\n")
    assert not looks_like_message(b"hello world\n")
    assert not looks_like_message(b"\nSubject: x\n")


def test_top_trace_fields_stop_at_the_first_other_field():
    data = b"Return-Path: <a@b>\nDelivered-To: c@d\nSubject: s\nDelivered-To: e@f\n"
    assert top_trace_fields(data) == {b"return-path": [b"<a@b>"], b"delivered-to": [b"c@d"]}


def test_trace_fields_refuse_control_characters():
    assert trace_fields("", "u@x") == b"Return-Path: <>\nDelivered-To: u@x\n"
    with pytest.raises(UnsafeTraceValue):
        trace_fields("a@b>\nX-Forged: 1", None)


def test_maildir_usage_counts_new_and_cur_not_tmp_or_dotfiles(tmp_path):
    for sub in ("new", "cur", "tmp"):
        (tmp_path / sub).mkdir()
    (tmp_path / "new" / "1.M1P1.h,S=100,W=104").write_bytes(b"x" * 7)  # the name wins
    (tmp_path / "cur" / "2.M2P2.h:2,S").write_bytes(b"y" * 30)  # no S=: stat
    (tmp_path / "cur" / ".hidden").write_bytes(b"z" * 1000)
    (tmp_path / "tmp" / "3.M3P3.h,S=500").write_bytes(b"w")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert quota.maildir_usage(fd) == quota.Usage(130, 2)
    finally:
        os.close(fd)


def test_the_quota_probe_counts_a_missing_maildir_as_empty_and_follows_no_symlink(tmp_path):
    store = MaildirStore(str(tmp_path / "{user}" / "Maildir"))
    probe = quota.probe_for(store)
    assert probe is not None
    assert asyncio.run(probe("alice", None)) == quota.Usage(0, 0)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "1.M1P1.h,S=100,W=104").write_bytes(b"x" * 7)
    box = tmp_path / "alice" / "Maildir"
    box.mkdir(parents=True)
    (box / "cur").symlink_to(outside)
    with pytest.raises(PermanentFailure, match="cur is not a directory"):
        asyncio.run(probe("alice", None))


def test_fits():
    config = DeliveryConfig(quota_bytes=100, quota_messages=2)
    assert quota.fits(quota.Usage(50, 1), 50, config)
    assert not quota.fits(quota.Usage(50, 1), 51, config)
    assert not quota.fits(quota.Usage(0, 2), 1, config)
    assert quota.fits(quota.Usage(10**9, 10**6), 1, DeliveryConfig())
