"""The benchmark corpus: maildrops made for each server, and warming them before a run."""

from __future__ import annotations

import os
from pathlib import Path

from benchmarks.corpus import Corpus, warm_homes


def test_warm_homes_reads_every_file_of_every_user_given(tmp_path: Path) -> None:
    """Messages and whatever a server wrote beside them (an index), for the users asked."""
    corpus = Corpus(tmp_path / "data", os.getuid(), os.getgid())
    mail = tmp_path / "mail"
    mail.mkdir()
    for n in range(3):
        corpus.make_maildir(mail, f"u{n}", [1000 + n, 1001 + n])
    (mail / "u1" / "Maildir" / "dovecot.index").write_bytes(b"x" * 200_000)

    assert warm_homes(mail, ["u0", "u1"]) == 5
    assert warm_homes(mail, ["u2"]) == 2
    assert warm_homes(mail, []) == 0
