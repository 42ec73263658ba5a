"""fetchmail against mailslot: POP3S (``ssl``) and STLS (``sslproto tls1.2+``), keep and delete.

fetchmail hands each message to the MDA with LF line ends and one ``Received:`` header
prepended; everything after that header must be the stored message exactly.  Messages
without a header (empty, starting with a blank line) get a fetchmail-made header, so the
corpus here is the well-formed part of the sample corpus.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.external import assert_delivered, describe, run
from tests.support.maildir import SAMPLE_MESSAGES, message_files
from tests.support.programs import require_program
from tests.support.server import MailslotServer

WELL_FORMED = ("lf", "crlf", "mixed", "no-final-newline", "dots", "long-line", "8bit")

MDA = """#!/bin/sh
# One file per message, numbered in delivery order (fetchmail runs the MDA sequentially).
n=$(ls "{out}" | wc -l)
cat > "{out}/$(printf %04d "$n")"
"""


def _fetchmail(server: MailslotServer, tmp_path: Path, mode: str, *, keep: bool) -> list[bytes]:
    fetchmail = require_program("fetchmail")
    home = tmp_path / "fetchmail-home"
    out = home / "out"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    mda = home / "mda.sh"
    mda.write_text(MDA.format(out=out))
    mda.chmod(0o755)
    if mode == "implicit":
        port, tls = server.implicit[1], "ssl"
    else:
        port, tls = server.starttls[1], 'sslproto "tls1.2+"'
    rc = home / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll localhost via 127.0.0.1 service {port} protocol pop3 timeout 30:\n"
        f'  user "alice" there with password "{server.password("alice")}" is "root" here\n'
        f'  {tls} sslcertck sslcertfile "{server.tls_files.ca_pem}"\n'
        f'  sslcertpath "{home}" sslcommonname "localhost"\n'
        f"  {'keep' if keep else 'nokeep'} fetchall\n"
        f'  mda "{mda}"\n'
    )
    rc.chmod(0o600)  # fetchmail refuses a run control file others can read
    result = run(
        [fetchmail, "-f", str(rc), "--idfile", str(home / "ids"), "-v"],
        env={"HOME": str(home), "FETCHMAILHOME": str(home)},
    )
    assert result.returncode == 0, describe(result) + "\n" + server.log()[-3000:]
    return [path.read_bytes() for path in sorted(out.iterdir())]


@pytest.mark.parametrize("mode", ["stls", "implicit"])
def test_fetchmail_keep_then_delete(mailslot: MailslotServer, tmp_path: Path, mode: str) -> None:
    builder = mailslot.builder("alice")
    messages = [builder.add(SAMPLE_MESSAGES[name]) for name in WELL_FORMED]

    assert_delivered(_fetchmail(mailslot, tmp_path, mode, keep=True), messages)
    assert message_files(mailslot.maildir("alice")) == {m.base: m.data for m in messages}

    assert_delivered(_fetchmail(mailslot, tmp_path, mode, keep=False), messages)
    assert message_files(mailslot.maildir("alice")) == {}
