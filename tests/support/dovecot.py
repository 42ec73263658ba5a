"""A throwaway Dovecot POP3 server, the reference implementation the parity tests compare to.

It runs in the foreground (``dovecot -F -c FILE``) with its own base_dir, state_dir and log,
POP3 listeners on 127.0.0.1 high ports (STLS and implicit TLS), a passwd-file passdb and
userdb, and ``maildir:`` storage under a given root.  Dovecot 2.3 and 2.4 syntax are both
written; ``dovecot --version`` picks one.  Benchmarks reuse it as the peer.

Its files live in a fresh directory under the system temp dir (removed by ``stop()``).
As root, Dovecot refuses to give mail processes uid 0, so the Maildir copy it serves is chowned
to an unprivileged system user (``dovenull`` or ``nobody``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .passwd import PasswdUser, password_field
from .programs import require_program
from .server import STARTUP_DEADLINE, free_port, wait_for_greeting
from .tls import TlsFiles

_CONF_23 = """\
base_dir = {base_dir}
state_dir = {state_dir}
log_path = {log_path}
info_log_path = {log_path}
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
default_internal_user = {internal_user}
default_login_user = {login_user}
pop3_uidl_format = %f
mail_location = maildir:{mail_root}/%u/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = {pop3s_port}
    ssl = yes
  }}
}}
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
"""

_CONF_24 = """\
dovecot_config_version = {version}
dovecot_storage_version = {version}
base_dir = {base_dir}
state_dir = {state_dir}
log_path = {log_path}
info_log_path = {log_path}
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_server_cert_file = {cert}
ssl_server_key_file = {key}
ssl_min_protocol = TLSv1.2
auth_allow_cleartext = yes
auth_mechanisms = plain
first_valid_uid = 1
default_internal_user = {internal_user}
default_login_user = {login_user}
pop3_uidl_format = %{{file_name}}
mail_driver = maildir
mail_path = {mail_root}/%{{user}}/Maildir
passdb passwd-file {{
  passwd_file_path = {passwd}
  default_password_scheme = PLAIN
}}
userdb passwd-file {{
  passwd_file_path = {passwd}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3_port}
  }}
  inet_listener pop3s {{
    port = {pop3s_port}
    ssl = yes
  }}
}}
"""


def dovecot_version() -> tuple[int, int, str]:
    binary = require_program("dovecot")
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    text = out.stdout.split()[0]
    major, minor = (int(part) for part in text.split(".")[:2])
    return major, minor, text


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("dovenull", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("no unprivileged user (dovenull, nobody) to own the Dovecot maildirs")


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for directory, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            os.chown(os.path.join(directory, name), uid, gid, follow_symlinks=False)


def _children(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _descendants(pid: int) -> list[int]:
    """``pid``'s children, their children, and so on."""
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _command(pid: int) -> str:
    """A process's command name, or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _end_processes(pids: Sequence[int], deadline: float = 10.0) -> None:
    """SIGTERM each of ``pids`` still alive, then SIGKILL what is left after ``deadline``."""
    alive = list(pids)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + deadline
    while alive and time.monotonic() < end:
        alive = [pid for pid in alive if Path(f"/proc/{pid}").exists() and not _zombie(pid)]
        time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _zombie(pid: int) -> bool:
    try:
        return " Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    except OSError:
        return True


class DovecotServer:
    """A foreground Dovecot; mail lives in ``mail_root/<user>/Maildir``."""

    def __init__(
        self,
        tls_files: TlsFiles,
        users: Sequence[PasswdUser],
        directory: Path | None = None,
        settings: Mapping[str, str] | None = None,
        blocks: str = "",
        passwd_lines: Sequence[str] | None = None,
        passwd_template: str | None = None,
    ) -> None:
        """``settings`` are more lines of dovecot.conf (``pop3_uidl_format`` replaces the
        default ``%f``), written as ``key = value``; ``blocks`` is more text, written as it
        is (sections such as ``service auth { ... }``).  ``passwd_lines``: the passwd-file as
        given (``{uid}`` and ``{gid}`` replaced by the mail owner's ids) instead of ``users``.
        ``passwd_template``: the passdb's and userdb's file instead, with Dovecot's variables
        (``/dir/%d/passwd``: one file per domain, written by the caller)."""
        self.binary = require_program("dovecot")
        self.major, self.minor, self.version = dovecot_version()
        # Dovecot's unprivileged processes must traverse every ancestor of base_dir and the
        # mail root, which pytest's 0700 tmp_path forbids: by default use a fresh directory
        # in the system temp dir, removed by stop().
        self._owns_directory = directory is None
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="mailslot-dovecot-"))
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o755)
        self.mail_root = directory / "mail"
        self.mail_root.mkdir(exist_ok=True)
        self.log_path = directory / "dovecot.log"
        self.config_path = directory / "dovecot.conf"
        self.pop3_port = free_port()
        self.pop3s_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        if os.getuid() == 0:
            owner = _unprivileged_user()
            self.uid, self.gid = owner.pw_uid, owner.pw_gid
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
        passwd = directory / "users"
        if passwd_lines is None:
            passwd_lines = [
                f"{u.name}:{password_field(u)}:{{uid}}:{{gid}}::{u.home}::" for u in users
            ]
        passwd.write_text(
            "".join(
                line.replace("{uid}", str(self.uid)).replace("{gid}", str(self.gid)) + "\n"
                for line in passwd_lines
            ),
            encoding="utf-8",
        )
        passwd.chmod(0o644)
        for sub in ("run", "state"):
            (directory / sub).mkdir(exist_ok=True)
        template = _CONF_23 if (self.major, self.minor) < (2, 4) else _CONF_24
        extra = dict(settings or {})
        if "pop3_uidl_format" in extra:
            uidl = extra.pop("pop3_uidl_format").replace("{", "{{").replace("}", "}}")
            template = template.replace("pop3_uidl_format = %f", f"pop3_uidl_format = {uidl}")
            template = template.replace(
                "pop3_uidl_format = %{{file_name}}", f"pop3_uidl_format = {uidl}"
            )
        template += (
            "".join(f"{key} = {value}\n" for key, value in extra.items())
            .replace("{", "{{")
            .replace("}", "}}")
        )
        template += blocks.replace("{", "{{").replace("}", "}}")
        self.config_path.write_text(
            template.format(
                version=self.version,
                base_dir=directory / "run",
                state_dir=directory / "state",
                log_path=self.log_path,
                cert=tls_files.certificate,
                key=tls_files.private_key,
                mail_root=self.mail_root,
                passwd=passwd_template or passwd,
                pop3_port=self.pop3_port,
                pop3s_port=self.pop3s_port,
                internal_user="dovecot" if os.getuid() == 0 else pwd.getpwuid(os.getuid())[0],
                login_user="dovenull" if os.getuid() == 0 else pwd.getpwuid(os.getuid())[0],
            ),
            encoding="utf-8",
        )
        self.tls_files = tls_files

    def maildir(self, user: str) -> Path:
        return self.mail_root / user / "Maildir"

    def start(self) -> DovecotServer:
        if os.getuid() == 0:
            _chown_tree(self.mail_root, self.uid, self.gid)
        with (self.directory / "dovecot.stderr").open("ab") as err:
            self.process = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + STARTUP_DEADLINE
        try:
            wait_for_greeting("127.0.0.1", self.pop3_port, None, deadline)
            wait_for_greeting(
                "127.0.0.1", self.pop3s_port, self.tls_files.client_context(), deadline
            )
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"dovecot did not come up: {exc}\n{self.log()}") from None
        return self

    def stop(self, *, remove: bool = True) -> None:
        """Stop the master and every process it started (by their ids), as ``systemctl
        stop`` would: an auth process otherwise goes on serving the clients it has.
        ``remove=False`` keeps its files (its configuration, its mail) for a server started
        after it on the same ports."""
        if self.process is not None and self.process.poll() is None:
            children = _children(self.process.pid)
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            _end_processes(children)
        if remove and self._owns_directory and self.directory.exists():
            self.final_log = self.log()
            shutil.rmtree(self.directory, ignore_errors=True)

    def settle(self, deadline: float = 10.0) -> None:
        """Wait until no ``pop3`` mail process is left: Dovecot answers QUIT before it has
        finished writing its uidlist and index, so a test that changes those files must
        wait for the process that writes them to exit."""
        assert self.process is not None
        end = time.monotonic() + deadline
        while any(_command(pid) == "pop3" for pid in _descendants(self.process.pid)):
            if time.monotonic() > end:
                raise TimeoutError(f"a Dovecot pop3 process is still running\n{self.log()}")
            time.sleep(0.01)

    final_log = ""

    def log(self) -> str:
        if not self.directory.exists():
            return self.final_log
        parts = []
        for path in (self.log_path, self.directory / "dovecot.stderr"):
            if path.exists():
                parts.append(path.read_text(encoding="utf-8", errors="replace"))
        return "\n".join(parts)

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
