"""mailslot deliver with Dovecot userdb fields: a per-user quota, an unservable location."""

from __future__ import annotations

from pathlib import Path

from .test_command import deliver, stored, write_config


def add_line(directory: Path, line: str) -> None:
    with (directory / "users").open("a", encoding="utf-8") as f:
        f.write(line + "\n")


def test_userdb_quota_rule_replaces_the_configured_quota(tmp_path: Path) -> None:
    config = write_config(tmp_path, delivery="quota_messages = 5")
    add_line(tmp_path, "dave:{PLAIN}x:::::: userdb_quota_rule=*:messages=1")
    assert deliver(config, "-u", "dave").returncode == 0
    full = deliver(config, "-u", "dave")
    assert (full.returncode, full.stderr) == (77, b"5.2.2 mailslot deliver: Mailbox full\n")
    assert len(stored(tmp_path, "dave")) == 1
    # Others keep [delivery]'s quota.
    for _ in range(2):
        assert deliver(config, "-u", "alice").returncode == 0


def test_an_unservable_userdb_mail_defers_delivery(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    add_line(tmp_path, "erin:{PLAIN}x:::::: userdb_mail=mdbox:~/mdbox")
    result = deliver(config, "-u", "erin")
    assert result.returncode == 75
    assert stored(tmp_path, "erin") == []
