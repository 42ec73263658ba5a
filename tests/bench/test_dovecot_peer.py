"""The benchmark's Dovecot peers (benchmarks.servers.Dovecot) are set up as their names say.

The ratios against ``dovecot-hp`` and ``dovecot-sc0`` mean something only if those
configurations reuse the processes they are said to reuse; ``doveconf`` reads each
generated file back.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from benchmarks.run import SERVERS
from benchmarks.servers import DOVECOT_MODES, Dovecot

pytestmark = pytest.mark.skipif(
    shutil.which("doveconf") is None, reason="doveconf is not installed (dovecot-core)"
)


def _setting(config: Path, name: str) -> str:
    out = subprocess.run(
        ["doveconf", "-c", str(config), "-h", name], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_every_dovecot_peer_of_the_runner_has_a_mode() -> None:
    assert {s for s in SERVERS if s.startswith("dovecot")} == set(DOVECOT_MODES)


@pytest.mark.parametrize("name", sorted(DOVECOT_MODES))
def test_a_dovecot_peer_reuses_the_processes_its_name_says(tmp_path: Path, name: str) -> None:
    for f in ("passwd", "cert", "key"):
        (tmp_path / f).write_text("")
    reuse_login, reuse_pop3 = DOVECOT_MODES[name]
    server = Dovecot(
        name,
        tmp_path,
        tmp_path / "mail",
        passwd=tmp_path / "passwd",
        cert=tmp_path / "cert",
        key=tmp_path / "key",
        uid=64123,
        gid=64123,
        reuse_login=reuse_login,
        reuse_pop3=reuse_pop3,
    )
    server.write_config()
    login = _setting(server.config_path, "service/pop3-login/service_count")
    pop3 = _setting(server.config_path, "service/pop3/service_count")
    assert (login, pop3) == {
        "dovecot": ("1", "1"),
        "dovecot-hp": ("0", "1"),
        "dovecot-sc0": ("0", "0"),
    }[name]
    if reuse_login:  # the documented high-performance login mode keeps one per core ready
        assert int(_setting(server.config_path, "service/pop3-login/process_min_avail")) >= 1
