"""The quick start prints a ``mailslot doctor`` line; run as printed, it finds nothing wrong.

The quick start's server runs as ``python -m mailslot serve --data-dir DIR`` on a new data
directory (a taken 1110 or 1995 is replaced by a free port, and the printed lines say which);
the doctor line it prints is run with ``--json`` and, with the printed password, a real login.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.doctor.conftest import run_doctor

STARTUP_DEADLINE = 60.0  # polling for the quick start to come up, not a threshold


def test_the_printed_doctor_line_passes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    process = subprocess.Popen(
        [sys.executable, "-m", "mailslot", "serve", "--data-dir", str(data)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    output = b""
    try:
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + STARTUP_DEADLINE
        line = None
        while line is None and time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=1.0):
                output += os.read(process.stdout.fileno(), 65536)
            found = re.search(rb"^\s*(mailslot doctor .*)$", output, re.M)
            if found and output.count(b"listening") >= 2:
                line = found.group(1).decode()
        assert line is not None, output.decode(errors="replace")
        password = output.split(b"has the password: ", 1)[1].split()[0].decode()
        args = shlex.split(line)
        assert args[:2] == ["mailslot", "doctor"]
        assert f":{args[args.index('--port') + 1]}/ -u demo:" in output.decode()  # curl's
        outcome = run_doctor(*args[2:], "--user", "demo", "--password-stdin", stdin=password + "\n")
        not_ok = {key: status for key, status in outcome.statuses().items() if status != "ok"}
        assert not_ok == {}, outcome.stdout
        assert outcome.status == 0
        assert outcome.checks("pop3.login")[0]["details"]["messages"] == 1  # the welcome
        assert password not in outcome.stdout + outcome.stderr
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        process.stdout.close()
