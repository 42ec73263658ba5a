"""The ``tls-login`` benchmark's floor and its summary against the issue's targets.

A TLS login's cost is mostly the handshake (RFC 8446 section 2; implicit TLS, RFC 8314
section 3.3).  The floor for mailslot's server CPU per implicit-TLS login is what OpenSSL
alone spends on the server's side of one full handshake with the same certificate and the
same ``SSLContext`` (:class:`mailslot.tls.context.TlsContexts`, as ``mailslot serve`` builds
it), plus mailslot's own CPU per plaintext login (the same USER/PASS/QUIT dialogue, RFC 1939
section 7, on a plaintext listener).  The handshake runs in this process over memory BIOs,
client and server alike, and only the server side's calls are timed, with the thread's own
CPU clock (``time.thread_time``): no sockets, no event loop, no scheduler.

Targets (issue 17): mailslot's server CPU per TLS login at most 1.2 times the floor, and its
TLS logins/s at least 1.5 times the best peer's, with either certificate type.
"""

from __future__ import annotations

import argparse
import json
import ssl
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.report import Report

CPU_TARGET = 1.2  # mailslot's CPU per TLS login / floor, at most
RATE_TARGET = 1.5  # mailslot's TLS logins/s / the best peer's, at least
KINDS = ("ecdsa", "rsa")  # ECDSA P-256 and RSA-2048 leaves from one CA


def handshake_server_cpu(
    server: ssl.SSLContext, client: ssl.SSLContext, server_name: str = "localhost"
) -> float:
    """The server side's CPU seconds for one full handshake between the two contexts.

    Everything the server does for the handshake is counted: making its ``SSLObject`` and
    every ``do_handshake`` call, the last of which also writes TLS 1.3's session tickets
    (RFC 8446 section 4.6.1).  The client's work, which runs in the same thread, is not.
    The client offers no session, so every handshake is a full one.
    """
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    clock = time.thread_time
    t0 = clock()
    s = server.wrap_bio(s_in, s_out, server_side=True)
    spent = clock() - t0
    c = client.wrap_bio(c_in, c_out, server_hostname=server_name)
    client_done = server_done = False
    for _ in range(20):  # a full handshake takes 2 round trips; never loop forever
        if not client_done:
            try:
                c.do_handshake()
                client_done = True
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        if not server_done:
            t0 = clock()
            try:
                s.do_handshake()
                server_done = True
            except ssl.SSLWantReadError:
                pass
            spent += clock() - t0
        c_in.write(s_out.read())
        if client_done and server_done:
            return spent
    raise ssl.SSLError("the handshake did not complete")


def handshake_floor(
    server: ssl.SSLContext, client: ssl.SSLContext, count: int, server_name: str = "localhost"
) -> float:
    """Mean server CPU seconds per handshake over ``count`` handshakes (after 5 unmeasured)."""
    for _ in range(5):  # first-use costs: lazy tables, the key's precomputation
        handshake_server_cpu(server, client, server_name)
    total = sum(handshake_server_cpu(server, client, server_name) for _ in range(count))
    return total / count


def summarise(report: Report, subject: str = "mailslot") -> None:
    """Add the floor, the two ratios and a note per target, from the reps' medians."""
    add = report.add
    plain = report.figures.get("tls-login plain server CPU/op")
    for kind in KINDS:
        label = f"tls-login {kind}"
        floor = report.figures.get(f"{label} handshake floor")
        used = report.figures.get(f"{label} server CPU/op")
        if plain is not None and floor is not None and used is not None:
            total = floor.median(subject) + plain.median(subject)
            ratio = used.median(subject) / total
            if total == total and ratio == ratio:
                add(f"{label} floor (handshake + plain login)", "ms", "lower", subject, total)
                add(f"{label} CPU/login / floor", "x", "lower", subject, ratio)
                verdict = "met" if ratio <= CPU_TARGET else "missed"
                report.notes.append(
                    f"{label}: {subject} {used.median(subject):.3f} ms of server CPU per TLS "
                    f"login against a floor of {total:.3f} ms (handshake "
                    f"{floor.median(subject):.3f} + plain login {plain.median(subject):.3f}): "
                    f"{ratio:.2f}x, target <= {CPU_TARGET}x {verdict}"
                )
        rate = report.figures.get(f"{label} rate")
        if rate is None:
            continue
        peers = {
            s: rate.median(s)
            for s in report.servers
            if s != subject and rate.median(s) == rate.median(s)
        }
        mine = rate.median(subject)
        if not peers or mine != mine:
            continue
        best = max(peers, key=lambda s: peers[s])
        ratio = mine / peers[best]
        add(f"{label} rate / best peer", "x", "higher", subject, ratio)
        verdict = "met" if ratio >= RATE_TARGET else "missed"
        report.notes.append(
            f"{label}: {subject} {mine:,.0f} TLS logins/s against the best peer's "
            f"({best}) {peers[best]:,.0f}: {ratio:.2f}x, target >= {RATE_TARGET}x {verdict}"
        )


# The event loop waiting for the next event: py-spy --native sees the thread in the system
# call and counts the sample as busy.  Left out of the shares below.
IDLE_FRAMES = frozenset({"epoll_pwait", "epoll_wait", "io_uring_enter"})


# A thread blocked on a lock (the to_thread pool's idle workers, in a futex wait that
# py-spy's symbols do not name) is not busy either.
BLOCKED_FRAME = "PyThread_acquire_lock_timed"


def _samples(doc: dict[str, Any]) -> Iterator[tuple[list[int], float]]:
    """(stack, weight) of every sample but the idle ones (outermost frame first)."""
    frames = doc["shared"]["frames"]
    for profile in doc["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if stack and frames[stack[-1]]["name"] in IDLE_FRAMES:
                continue
            if any(frames[i]["name"] == BLOCKED_FRAME for i in stack):
                continue
            yield stack, weight


def top_frames(speedscope: Path, top: int = 15) -> list[tuple[str, float, float]]:
    """(frame, self %, total %) of a ``py-spy record --format speedscope`` profile.

    "self" counts the busy samples a frame was the innermost one of, "total" those it was
    anywhere on the stack of (once per sample); sorted by self.
    """
    doc = json.loads(speedscope.read_text())
    frames = [
        f"{f['name']} ({Path(f.get('file', '?')).name}:{f.get('line', '?')})"
        for f in doc["shared"]["frames"]
    ]
    own: defaultdict[int, float] = defaultdict(float)
    anywhere: defaultdict[int, float] = defaultdict(float)
    samples = 0.0
    for stack, weight in _samples(doc):
        samples += weight
        if stack:
            own[stack[-1]] += weight
        for index in set(stack):
            anywhere[index] += weight
    if not samples:
        return []
    return [
        (frames[i], 100 * n / samples, 100 * anywhere[i] / samples)
        for i, n in sorted(own.items(), key=lambda item: -item[1])[:top]
    ]


def shares(speedscope: Path) -> dict[str, float]:
    """Busy samples by where their innermost frame is, in %: a library, or Python code.

    Native frames are named by their library (``libcrypto.so.3``, ``libssl.so.3``,
    ``libc.so.6`` and so the system calls, uvloop's ``loop.c``); Python frames by
    ``mailslot`` or ``python`` (the standard library, asyncio's and ssl's Python parts).
    """
    doc = json.loads(speedscope.read_text())
    frames = doc["shared"]["frames"]
    where: defaultdict[str, float] = defaultdict(float)
    total = 0.0
    for stack, weight in _samples(doc):
        total += weight
        if not stack:
            where["?"] += weight
            continue
        path = str(frames[stack[-1]].get("file", "?"))
        name = Path(path).name
        if name.endswith(".py"):
            where["mailslot" if "/mailslot/" in path else "python"] += weight
        else:
            where[name] += weight
    ordered = sorted(where.items(), key=lambda item: -item[1])
    return {k: 100 * v / total for k, v in ordered} if total else {}


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.tls_logins PROFILE...``: what ``--profile`` recorded, summed up."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tls_logins")
    parser.add_argument("profiles", nargs="+", type=Path, help="speedscope files of py-spy")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    for path in args.profiles:
        print(f"{path} (busy samples; the loop's waits left out)")
        for where, share in shares(path).items():
            print(f"  {share:5.1f} %  {where}")
        print("  self %  total %  frame")
        for frame, own, anywhere in top_frames(path, args.top):
            print(f"  {own:6.1f}  {anywhere:7.1f}  {frame}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
