"""mpop against mailslot: POP3S (``tls_starttls off``) and STLS, keep on and off.

mpop delivers to a Maildir with LF line ends and one ``Received:`` header prepended.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.support.external import assert_delivered, describe, run
from tests.support.maildir import SAMPLE_MESSAGES, message_files
from tests.support.programs import require_program
from tests.support.server import MailslotServer

# Messages with a header: mpop's Received header goes on top of it unchanged.
WELL_FORMED = ("lf", "crlf", "mixed", "no-final-newline", "dots", "long-line", "8bit")
_Q = re.compile(r"Q(\d+)")


def _delivery_order(path: Path) -> tuple[int, int, str]:
    # mpop names files <secs>.M<usec>P<pid>Q<n>.<host>; Q counts deliveries in one run.
    seconds = int(path.name.split(".", 1)[0])
    found = _Q.search(path.name)
    return seconds, int(found.group(1)) if found else 0, path.name


def _mpop(server: MailslotServer, tmp_path: Path, mode: str, *, keep: bool) -> list[bytes]:
    mpop = require_program("mpop")
    home = tmp_path / "mpop-home"
    out = home / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).iterdir():
            old.unlink()
    _, port = server.implicit if mode == "implicit" else server.starttls
    rc = home / "mpoprc"
    rc.write_text(
        "account test\n"
        "host localhost\n"
        f"port {port}\n"
        "user alice\n"
        f"password {server.password('alice')}\n"
        "tls on\n"
        f"tls_starttls {'off' if mode == 'implicit' else 'on'}\n"
        f"tls_trust_file {server.tls_files.ca_pem}\n"
        f"delivery maildir {out}\n"
        f"keep {'on' if keep else 'off'}\n"
        "only_new off\n"
        f"uidls_file {home}/uidls\n"
    )
    rc.chmod(0o600)
    result = run([mpop, "-C", str(rc), "--all-accounts"], env={"HOME": str(home)})
    assert result.returncode == 0, describe(result) + "\n" + server.log()[-3000:]
    files = sorted((out / "new").iterdir(), key=_delivery_order)
    return [path.read_bytes() for path in files]


@pytest.mark.parametrize("mode", ["stls", "implicit"])
def test_mpop_keep_then_delete(mailslot: MailslotServer, tmp_path: Path, mode: str) -> None:
    builder = mailslot.builder("alice")
    messages = [builder.add(SAMPLE_MESSAGES[name]) for name in WELL_FORMED]

    assert_delivered(_mpop(mailslot, tmp_path, mode, keep=True), messages)
    assert message_files(mailslot.maildir("alice")) == {m.base: m.data for m in messages}

    assert_delivered(_mpop(mailslot, tmp_path, mode, keep=False), messages)
    assert message_files(mailslot.maildir("alice")) == {}
