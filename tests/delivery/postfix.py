"""A private Postfix instance for end-to-end delivery tests (Debian's postfix package).

Everything lives in one directory outside pytest's 0700 tmp tree, because Postfix's daemons
drop to ``mail_owner``: ``config_directory`` (main.cf, master.cf), ``queue_directory``,
``data_directory`` and the mail log.  It listens only on 127.0.0.1 (``inet_interfaces``), on a
high port set in master.cf, runs no service chrooted, and never touches /etc/postfix or the
machine's own Postfix.  ``postfix -c DIR start`` and ``postfix -c DIR stop`` bracket it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
DEADLINE = 60.0  # seconds for a message to arrive; polling the Maildir, not a pace

_MASTER_CF = """\
{address}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def available() -> bool:
    return os.access(POSTFIX, os.X_OK) and os.geteuid() == 0


class Postfix:
    """One private Postfix: :meth:`start` with main.cf settings, :meth:`stop` at the end."""

    def __init__(self, smtp_port: int, settings: dict[str, str]) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="mailslot-postfix-"))
        self.directory.chmod(0o755)
        self.smtp_port = smtp_port
        self.config = self.directory / "etc"
        self.config.mkdir()
        queue = self.directory / "queue"
        queue.mkdir(mode=0o755)  # root-owned; `postfix start` creates what is below it
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(queue),
            "data_directory": str(self.directory / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "mx.example.test",
            "mydomain": "example.test",
            "myorigin": "example.test",
            "mydestination": "example.test",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "maillog_file": str(self.directory / "maillog"),
            "maillog_file_prefixes": str(self.directory),
            "syslog_name": f"postfix-mailslot-test-{smtp_port}",
            "smtputf8_enable": "no",
            "lmtp_host_lookup": "native",
            "smtp_host_lookup": "native",
            "disable_dns_lookups": "yes",
        }
        main.update(settings)
        self.settings = main
        (self.config / "master.cf").write_text(
            _MASTER_CF.format(address="127.0.0.1", port=smtp_port), encoding="utf-8"
        )
        self.started = False

    def set(self, key: str, value: str) -> None:
        """Set a main.cf parameter (before :meth:`start`)."""
        self.settings[key] = value

    def _postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )

    def start(self) -> None:
        (self.config / "main.cf").write_text(
            "".join(f"{key} = {value}\n" for key, value in self.settings.items()),
            encoding="utf-8",
        )
        # Postfix reports start-up errors only to syslog or a terminal; `script` gives it one.
        start = subprocess.run(
            ["script", "-qec", f"{POSTFIX} -c {self.config} start", "/dev/null"],
            capture_output=True,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
        if start.returncode != 0:
            raise RuntimeError(f"postfix start failed: {start.stdout}{start.stderr}")
        self.started = True

    def stop(self) -> None:
        if self.started:
            self._postfix("stop")
            self.started = False

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self.directory / "maillog").read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, condition: object, what: str) -> None:
        """Poll ``condition()`` until true; fail with the mail log after :data:`DEADLINE`."""
        deadline = time.monotonic() + DEADLINE
        while not condition():  # type: ignore[operator]
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; mail log:\n{self.log()}")
            time.sleep(0.1)  # integration polling on an external daemon, not a unit-test pace
