"""The ACME process's end: SIGTERM, and SIGKILL for one that does not end in its grace."""

from __future__ import annotations

import os
import signal
import time

import pytest

from mailslot.tls.acme import process


def child(ignore_term: bool) -> int:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if ignore_term:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(ready_w, b".")
            time.sleep(60)
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"."  # its handler is set
    os.close(ready_r)
    return pid


@pytest.mark.parametrize("ignore_term", [False, True])
def test_stop_ends_and_collects_the_process(ignore_term: bool) -> None:
    pid = child(ignore_term)
    process.stop(pid, grace=0.5)
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # collected: no zombie left


def test_stop_of_nothing_or_of_a_collected_process_is_quiet() -> None:
    process.stop(None)
    pid = child(False)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    process.stop(pid, grace=0.1)
