"""Fixtures for the integration tests: a server whose ``alice`` holds the sample corpus."""

from __future__ import annotations

import pytest
from tests.support.maildir import SAMPLE_MESSAGES
from tests.support.popclient import Corpus
from tests.support.server import MailslotServer


@pytest.fixture
def corpus(mailslot: MailslotServer) -> Corpus:
    """alice's maildrop holds every sample message, alternately in new/ and cur/."""
    builder = mailslot.builder("alice")
    names = list(SAMPLE_MESSAGES)
    messages = [
        builder.add(SAMPLE_MESSAGES[name], folder="new" if i % 2 == 0 else "cur", flags="S")
        for i, name in enumerate(names)
    ]
    return Corpus(mailslot, "alice", mailslot.password("alice"), messages, names)
