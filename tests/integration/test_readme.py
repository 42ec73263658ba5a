"""The README's first command, run as a new user would: ``scripts/serve`` in a fresh virtualenv.

It makes the virtualenv on the system Python, installs this checkout into it and starts the
quick start; the test then runs the ``curl`` line the quick start prints and checks that it
lists the welcome message over POP3S, verifying the certificate against the printed CA.
"""

from __future__ import annotations

import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from tests.support.programs import require_program

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# pip install of the project and its dependencies into an empty virtualenv: polling, not a limit.
INSTALL_DEADLINE = 300.0


def readme_commands() -> list[str]:
    """The commands of the README's first code block, without their comments."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert block is not None, "the README opens with a sh code block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_opens_with_the_serve_and_test_scripts() -> None:
    commands = readme_commands()
    assert commands == ["scripts/serve", "scripts/test"]
    for command in commands:
        assert os.access(ROOT / command, os.X_OK), f"{command} is not executable"


def test_scripts_serve_installs_and_serves_the_quick_start(tmp_path: Path) -> None:
    curl = require_program("curl")
    # Outside pytest's 0700 temporary directory: a server that drops root must read it.
    venv = Path(tempfile.mkdtemp(prefix="mailslot-readme-venv."))
    venv.chmod(0o755)
    # A taken 1110 or 1995 is replaced by a free port, which the printed curl line names.
    data = tmp_path / "data"
    env = {**os.environ, "MAILSLOT_VENV": str(venv)}
    env.pop("PYTHONPATH", None)  # the virtualenv's own install must serve, not this checkout
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "serve"), "--data-dir", str(data)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    output = b""
    try:
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + INSTALL_DEADLINE
        line = None
        while line is None and time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=1.0):
                output += os.read(process.stdout.fileno(), 65536)
            found = re.search(rb"^\s*(curl --cacert \S+ pop3s://\S+ -u \S+)$", output, re.M)
            # The curl line is printed before the listeners are up: wait for them too.
            if found and b"listening: pop3" in output and output.count(b"listening") >= 2:
                line = found.group(1).decode()
        assert line is not None, output.decode(errors="replace")
        args = shlex.split(line)
        assert args[0] == "curl"
        result = subprocess.run(
            [curl, "--silent", "--show-error", *args[1:]],
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        # The quick start's maildrop holds one welcome message: LIST says "1 SIZE".
        assert re.fullmatch(rb"1 \d+\r?\n", result.stdout), result.stdout
        assert (venv / "bin" / "mailslot").exists()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        process.stdout.close()
        shutil.rmtree(venv, ignore_errors=True)
