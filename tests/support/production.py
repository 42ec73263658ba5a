"""Production-shaped files (the shipped sample configuration, docs/production.md) made testable.

They name the paths of a real server (certbot's ``/etc/letsencrypt/live/...``, ``/etc/mailslot``,
``/var/vmail``, Postfix's queue directory) and ``user = "mailslot"``.  :func:`localise` points
each at a file of a test directory, made for real (a certificate chain from a throwaway CA, a
passwd-file), and the account at one that exists here, so that ``mailslot check-config`` and
``mailslot serve`` take the text exactly as written but for those names.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from .passwd import DEFAULT_USERS, write_passwd
from .tls import TlsFiles, make_tls_files

LIVE = "/etc/letsencrypt/live/mail.example.org"


@dataclass(frozen=True)
class Localised:
    directory: Path
    tls_files: TlsFiles
    config_path: Path  # where /etc/mailslot/mailslot.toml went
    passwd_path: Path
    mail_root: Path
    user: str
    replacements: dict[str, str]

    def apply(self, text: str) -> str:
        for production, here in self.replacements.items():
            text = text.replace(production, here)
        return text


def serving_account() -> str:
    """Who ``[server] user`` can be here: ``nobody`` for root (a root-started server serves
    as an unprivileged account), else whoever runs the tests (mailslot serves as itself)."""
    if os.geteuid() == 0:
        return "nobody"
    return pwd.getpwuid(os.geteuid()).pw_name


def localise(directory: Path) -> Localised:
    """Make the files the production paths name, below ``directory`` (which the serving
    account must be able to traverse when the tests run as root)."""
    tls_files = make_tls_files(directory / "letsencrypt")
    passwd_path = write_passwd(directory / "users", list(DEFAULT_USERS))
    mail_root = directory / "vmail"
    mail_root.mkdir()
    user = serving_account()
    if os.geteuid() == 0:
        # The dropped workers read the passwd-file again and write the Maildirs.
        account = pwd.getpwnam(user)
        os.chown(passwd_path, 0, account.pw_gid)
        passwd_path.chmod(0o640)
        os.chown(mail_root, account.pw_uid, account.pw_gid)
    config_path = directory / "mailslot.toml"
    replacements = {
        f"{LIVE}/fullchain.pem": str(tls_files.certificate),
        f"{LIVE}/privkey.pem": str(tls_files.private_key),
        "/etc/mailslot/mailslot.toml": str(config_path),
        "/etc/mailslot/users": str(passwd_path),
        "/var/vmail/": f"{mail_root}/",
        "/var/spool/postfix/private/mailslot-lmtp": str(directory / "mailslot-lmtp"),
        'user = "mailslot"': f'user = "{user}"',
    }
    return Localised(directory, tls_files, config_path, passwd_path, mail_root, user, replacements)
