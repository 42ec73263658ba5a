"""``mailslot migrate`` between two real ``mailslot serve`` runs on real Maildirs and a real
PostgreSQL: LIST and UIDL (RFC 1939 sections 5 and 7) identical before and after, passwords
copied, an interrupted run resumed with nothing doubled, ``--verify`` catching a difference,
and a delivery to an account being migrated deferred (LMTP 451, RFC 2033 section 4.2) and
delivered afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import poplib
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tests.integration.test_postgresql import LISTENERS, upgraded
from tests.support.maildir import SAMPLE_MESSAGES, MaildirBuilder, wire_size
from tests.support.popclient import pop3_connect
from tests.support.postgres import PostgresServer
from tests.support.server import MailslotServer, ServerFactory

DOVECOT_FORMAT = "%08Xu%08Xv"
DEADLINE = 120.0  # polling for the migration to get going; not a threshold
USERS = ("alice", "bob")


def dovecot_names(maildir: Path, count: int, start: int) -> list[str]:
    """Messages named as Dovecot 2.3 names them (``,S=`` and ``,W=`` sizes, ``:2,`` flags)."""
    names = []
    for n in range(count):
        data = b"From: dovecot@example.org\nSubject: dovecot %d\n\nbody %d\nline two\n" % (n, n)
        base = (
            f"{start + n}.M{100000 + n}P{4242 + n}.mail.example,S={len(data)},W={wire_size(data)}"
        )
        (maildir / "cur" / f"{base}:2,S").write_bytes(data)
        names.append(base)
    return names


def fill(maildir: Path, *, uidl_format: str | None, seed: int) -> None:
    """A corpus: the sample messages, Dovecot-written names (with a ``dovecot-uidlist``
    giving their UIDs when Dovecot UIDLs are served), and odd names."""
    builder = MaildirBuilder(maildir, first_seconds=1_700_000_000 + seed * 1000)
    for i, data in enumerate(SAMPLE_MESSAGES.values()):
        builder.add(data, folder="new" if i % 2 else "cur", flags="S")
    dovecot = dovecot_names(maildir, 4, 1_700_000_500 + seed * 1000)
    odd = {
        f"{1_700_000_600 + seed * 1000}.odd name with spaces": b"Subject: spaces\n\nx\n",
        f"{1_700_000_601 + seed * 1000}.caf\u00e9.example": b"Subject: utf-8 name\r\n\r\ncrlf\r\n",
        f"{1_700_000_602 + seed * 1000}.no-final-newline": b"Subject: no newline\n\nend",
        "plainname": b"Subject: no dots at all\n\nbody\n",
    }
    for name, data in odd.items():
        (maildir / "new" / name).write_bytes(data)
    if uidl_format is not None:
        records = "".join(f"{uid} :{base}\n" for uid, base in enumerate(dovecot, 101))
        (maildir / "dovecot-uidlist").write_text(f"3 V1700001234 N200\n{records}")


def listings(server: MailslotServer, user: str) -> tuple[list[bytes], list[bytes], list[str]]:
    """LIST, UIDL and a SHA-256 of every RETR, as poplib gets them."""
    client = pop3_connect(server, "implicit")
    client.user(user)
    client.pass_(server.password(user))
    _, listing, _ = client.list()
    _, uidl, _ = client.uidl()
    digests = [
        hashlib.sha256(b"\n".join(client.retr(n)[1])).hexdigest()
        for n in range(1, len(listing) + 1)
    ]
    client.quit()
    return listing, uidl, digests


def migrate(old: MailslotServer, new: MailslotServer, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "src")}
    return subprocess.Popen(
        [sys.executable, "-m", "mailslot", "migrate", "--from-config", str(old.config_path),
         "--to-config", str(new.config_path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=600)
    return process.returncode, out, err


def sql(dsn: str, query: str, *args: Any) -> Any:
    async def run() -> Any:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetch(query, *args)
        finally:
            await connection.close()

    return asyncio.run(run())


def pair(
    factory: ServerFactory, dsn: str, uidl_format: str | None = None, *, start_new: bool = True
) -> tuple[MailslotServer, MailslotServer]:
    store = {} if uidl_format is None else {"uidl_format": uidl_format}
    old = factory(listeners=LISTENERS, store=store, start=False)
    new = factory(
        listeners=LISTENERS,
        store={"backend": "postgresql", "dsn": dsn, "pool_size": 4},
        auth={"backend": "postgresql"},
        extra_sections={"server": {"node_id": "new"}},
        start=False,
    )
    return old, new


@pytest.fixture
def dsn(postgres: PostgresServer) -> str:
    return upgraded(postgres)


@pytest.mark.parametrize("uidl_format", [None, DOVECOT_FORMAT])
def test_list_and_uidl_are_identical_after_migration(
    mailslot_factory: ServerFactory, dsn: str, uidl_format: str | None
) -> None:
    old, new = pair(mailslot_factory, dsn, uidl_format)
    for seed, user in enumerate(USERS):
        fill(old.maildir(user), uidl_format=uidl_format, seed=seed)
    old.start()
    before = {user: listings(old, user) for user in USERS}
    old.stop()

    code, _, err = finished(migrate(old, new))
    assert code == 0, err
    assert "2 of 3 accounts migrated" not in err
    code, out, err = finished(migrate(old, new, "--verify"))
    assert code == 0, out + err
    assert out.count(": identical") == 3

    new.start()
    after = {user: listings(new, user) for user in USERS}  # passwords copied: same logins
    assert after == before
    assert len(before["alice"][0]) == len(SAMPLE_MESSAGES) + 8
    if uidl_format is not None:
        assert b"00000065" in b" ".join(before["alice"][1])  # the uidlist's UID 101


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL])
def test_an_interrupted_migration_goes_on_with_nothing_doubled(
    mailslot_factory: ServerFactory, dsn: str, how: signal.Signals
) -> None:
    old, new = pair(mailslot_factory, dsn)
    builder = old.builder("alice")
    for n in range(3000):
        builder.add(b"Subject: %d\n\n%s\n" % (n, b"x" * (n % 700)), folder="cur", flags="S")
    process = migrate(old, new, "--batch", "20")
    started = time.monotonic()
    while not sql(dsn, "SELECT 1 FROM mailslot_messages LIMIT 1"):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() - started < DEADLINE
        time.sleep(0.02)
    process.send_signal(how)
    code, _, err = finished(process)
    assert code == (130 if how == signal.SIGINT else -signal.SIGKILL), err
    copied = sql(dsn, "SELECT count(*) FROM mailslot_messages")[0][0]
    assert 0 < copied < 3000, "interrupted too late to prove anything"
    # The account stays held: a login on the new store would see half a maildrop, and a
    # delivery would come before the rest of the old messages: it is deferred.
    assert sql(dsn, "SELECT node FROM mailslot_leases")[0][0] == "mailslot-migrate"
    assert deliver(new, "alice") == 75

    code, _, err = finished(migrate(old, new))
    assert code == 0, err
    rows = sql(dsn, "SELECT count(*), count(DISTINCT uidl) FROM mailslot_messages")
    assert tuple(rows[0]) == (3000, 3000)
    assert not sql(dsn, "SELECT 1 FROM mailslot_leases")  # released
    code, out, err = finished(migrate(old, new, "--verify"))
    assert code == 0, out + err
    assert deliver(new, "alice") == 0  # released: delivered after the migrated ones
    assert sql(dsn, "SELECT max(seq) FROM mailslot_messages")[0][0] == 3001


def deliver(new: MailslotServer, user: str) -> int:
    """``mailslot deliver`` of one message into NEW; its exit status."""
    result = subprocess.run(
        [sys.executable, "-m", "mailslot", "deliver", "--config", str(new.config_path),
         "-u", user],
        input=b"Subject: delivered\n\nbody\n", capture_output=True, check=False,
    )  # fmt: skip
    return result.returncode


def test_verify_reports_an_altered_message_and_a_missing_one(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    old, new = pair(mailslot_factory, dsn, DOVECOT_FORMAT)
    fill(old.maildir("alice"), uidl_format=DOVECOT_FORMAT, seed=0)
    code, _, err = finished(migrate(old, new, "--user", "alice"))
    assert code == 0, err
    sql(dsn, "UPDATE mailslot_bodies SET body = body || '\\x58'::bytea WHERE seq = 3")
    code, out, err = finished(migrate(old, new, "--user", "alice", "--verify"))
    assert code == 1, out + err
    uid = sql(dsn, "SELECT uidl FROM mailslot_messages WHERE seq = 3")[0][0]
    assert f"alice: message 3 (UIDL {uid}): the bytes differ" in out
    assert "STAT" not in out  # the stored size is the listing's: only the bytes changed

    sql(dsn, "DELETE FROM mailslot_messages WHERE seq = 5")
    code, out, _ = finished(migrate(old, new, "--user", "alice", "--verify"))
    assert code == 1
    assert "alice: STAT: Maildir" in out
    assert "alice: UIDL 5: Maildir" in out
    # A re-run puts back what is missing (at the end: the order differs, and --verify says so).
    code, _, err = finished(migrate(old, new, "--user", "alice"))
    assert code == 0, err
    assert sql(dsn, "SELECT count(*) FROM mailslot_messages")[0][0] == len(SAMPLE_MESSAGES) + 8


def test_a_delivery_to_an_account_being_migrated_is_deferred_then_delivered(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    old, new = pair(mailslot_factory, dsn)
    fill(old.maildir("alice"), uidl_format=None, seed=0)
    code, _, err = finished(migrate(old, new, "--hold"))
    assert code == 0, err
    new.start()
    message = b"Subject: during the migration\r\n\r\nkept\r\n"
    with (
        smtplib.LMTP(*new.listener("none", protocol="lmtp"), timeout=30) as lmtp,
        pytest.raises(smtplib.SMTPDataError) as refused,
    ):
        lmtp.sendmail("sender@example.org", ["alice@localhost"], message)
    assert refused.value.smtp_code == 451
    assert deliver(new, "alice") == 75
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        listings(new, "alice")

    code, _, err = finished(migrate(old, new))
    assert code == 0, err
    with smtplib.LMTP(*new.listener("none", protocol="lmtp"), timeout=30) as lmtp:
        lmtp.sendmail("sender@example.org", ["alice@localhost"], message)
    listing, _, _ = listings(new, "alice")
    assert len(listing) == len(SAMPLE_MESSAGES) + 8 + 1  # the migrated ones, then the new one


BIG = 100_000  # about 21 s here; the rate is measured in benchmarks/migrate_rate.py


def test_a_big_dovecot_maildrop_lists_the_same_before_and_after(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    old, new = pair(mailslot_factory, dsn, DOVECOT_FORMAT)
    maildir = old.maildir("alice")
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    names = dovecot_names(maildir, BIG, 1_600_000_000)
    # Dovecot knew the first half; the rest get their UIDs from mailslot, as from Dovecot.
    records = "".join(f"{uid} :{base}\n" for uid, base in enumerate(names[: BIG // 2], 1))
    (maildir / "dovecot-uidlist").write_text(f"3 V1600000000 N{BIG // 2 + 1}\n{records}")
    old.start()
    client = pop3_connect(old, "implicit")
    client.user("alice")
    client.pass_(old.password("alice"))
    before = (client.list()[1], client.uidl()[1])
    client.quit()
    old.stop()
    assert len(before[0]) == BIG

    code, _, err = finished(migrate(old, new))
    assert code == 0, err
    new.start()
    client = pop3_connect(new, "implicit")
    client.user("alice")
    client.pass_(old.password("alice"))
    after = (client.list()[1], client.uidl()[1])
    client.quit()
    assert after == before


def test_an_account_in_use_on_the_old_server_is_skipped_and_taken_by_the_next_run(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    old, new = pair(mailslot_factory, dsn)
    for seed, user in enumerate(USERS):
        fill(old.maildir(user), uidl_format=None, seed=seed)
    old.start()
    session = pop3_connect(old, "implicit")
    session.user("alice")
    session.pass_(old.password("alice"))  # holds alice's Maildir lock
    code, _, err = finished(migrate(old, new))
    assert code == 75, err
    assert "alice: skipped: a POP3 session holds its Maildir; run again later" in err
    assert "2 of 3 accounts migrated" in err  # bob and carol
    session.quit()
    code, _, err = finished(migrate(old, new))
    assert code == 0, err
    code, out, err = finished(migrate(old, new, "--verify"))
    assert code == 0, out + err


def test_a_large_message_is_retrieved_the_same_after_migration(
    mailslot_factory: ServerFactory, dsn: str
) -> None:
    """A message far over the size held whole (Batches.whole) is streamed in: RETR and TOP
    give its bytes and header as the Maildir server did, in its place."""
    old, new = pair(mailslot_factory, dsn)
    builder = old.builder("alice")
    builder.add(b"Subject: before\n\nsmall\n", folder="cur", flags="S")
    lines = [os.urandom(38).hex().encode() for _ in range(40_000)]  # 3 MiB of 76-octet lines
    builder.add(b"Subject: attachment\n\n" + b"\n".join(lines) + b"\n", folder="cur", flags="S")
    builder.add(b"Subject: after\n\nsmall\n", folder="cur", flags="S")
    old.start()
    before = listings(old, "alice")
    client = pop3_connect(old, "implicit")
    client.user("alice")
    client.pass_(old.password("alice"))
    top_before = client.top(2, 3)[1]
    client.quit()
    old.stop()

    code, _, err = finished(migrate(old, new, "--user", "alice"))
    assert code == 0, err
    code, out, err = finished(migrate(old, new, "--user", "alice", "--verify"))
    assert code == 0, out + err
    new.start()
    assert listings(new, "alice") == before
    client = pop3_connect(new, "implicit")
    client.user("alice")
    client.pass_(old.password("alice"))
    assert client.top(2, 3)[1] == top_before
    client.quit()
