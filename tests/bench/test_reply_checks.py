"""The session and retr benchmarks' check of every RETR reply (benchmarks.scenarios.check_message).

The check compares the body as sent, still dot-stuffed, with the corpus template stuffed
once in advance.  These tests hold that it still catches what undoing the stuffing caught:
a server that does not stuff, that stuffs twice, that changes a byte, or whose LIST size is
not the message's; that the client's reader hands over exactly the stuffed body however
the bytes arrive; and that the session and retr clients pass against a real mailslot.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from benchmarks import corpus
from benchmarks.corpus import Expected, dot_stuff, expected_of, make_message
from benchmarks.loadgen import run_coroutine_job
from benchmarks.pop3client import Pop3Client, ReplyError, TlsMode, _Buffer, unstuff
from benchmarks.scenarios import Job, Kind, check_message
from tests.support.passwd import PasswdUser
from tests.support.server import Listener, ServerFactory

IDENT = 7


@pytest.fixture(scope="module")
def template() -> bytes:
    """A corpus message in CRLF form, as LIST counts it."""
    return make_message(IDENT).replace(b"\n", b"\r\n")


@pytest.fixture(scope="module")
def expected() -> dict[int, Expected]:
    return {IDENT: expected_of(make_message(IDENT))}


def test_the_corpus_has_lines_to_stuff(template: bytes) -> None:
    """Otherwise the checks below could not tell a stuffing server from one that does not."""
    assert template.startswith(b"Return-Path")
    assert b"\r\n.\r\n" in template and b"\r\n..\r\n" in template
    assert dot_stuff(template) != template


def test_the_stuffed_template_unstuffs_to_the_message(
    template: bytes, expected: dict[int, Expected]
) -> None:
    wire = dot_stuff(template)
    assert unstuff(wire) == template
    want = expected[IDENT]
    assert (want.size, want.crc) == (len(template), zlib.crc32(template))
    assert (want.wire_size, want.wire_crc) == (len(wire), zlib.crc32(wire))
    assert want.wire_size - want.size == template.count(b"\r\n.")


def test_a_correctly_stuffed_reply_passes(template: bytes, expected: dict[int, Expected]) -> None:
    check_message(dot_stuff(template), len(template), expected)


def _lose_a_dot(t: bytes) -> bytes:
    return dot_stuff(t).replace(b"\r\n..\r\n", b"\r\n.\r\n", 1)


def _change_a_byte(t: bytes) -> bytes:
    return dot_stuff(t).replace(b"dovecot", b"Dovecot", 1)


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param(lambda t: t, id="not stuffed"),
        pytest.param(lambda t: dot_stuff(dot_stuff(t)), id="stuffed twice"),
        pytest.param(_lose_a_dot, id="one dot lost"),
        pytest.param(_change_a_byte, id="one byte changed"),
        pytest.param(lambda t: dot_stuff(t)[:-2], id="last CRLF missing"),
    ],
)
def test_a_wrong_body_is_a_reply_error(
    template: bytes, expected: dict[int, Expected], wrong: Callable[[bytes], bytes]
) -> None:
    assert wrong(template) != dot_stuff(template)
    with pytest.raises(ReplyError, match="dot-stuffed"):
        check_message(wrong(template), len(template), expected)


def test_a_list_size_that_is_not_the_message_s_is_a_reply_error(
    template: bytes, expected: dict[int, Expected]
) -> None:
    with pytest.raises(ReplyError, match="LIST said"):
        check_message(dot_stuff(template), len(dot_stuff(template)), expected)


def test_a_body_without_the_bench_header_is_a_reply_error(expected: dict[int, Expected]) -> None:
    with pytest.raises(ReplyError, match="X-Bench-Id"):
        check_message(b"Subject: hi\r\n\r\nbody\r\n", 19, expected)


@pytest.mark.parametrize("hint", [False, True], ids=["no size", "LIST size"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 1000, 1 << 20])
def test_read_stuffed_returns_the_body_as_sent_however_it_arrives(
    template: bytes, chunk: int, hint: bool
) -> None:
    """Split anywhere, the terminator too; a pipelined reply behind it stays in the buffer."""
    wire = dot_stuff(template)
    stream = b"+OK 123 octets\r\n" + wire + b".\r\n" + b"+OK\r\n.\r\n" + b"+OK next\r\n"
    body, empty, after = asyncio.run(_read(stream, chunk, at_least=len(template) if hint else 0))
    assert body == wire
    assert empty == b""
    assert after == b"+OK next\r\n"


async def _read(stream: bytes, chunk: int, at_least: int) -> tuple[bytes, bytes, bytes]:
    """Two bodies and a status line from ``stream``, fed to the client ``chunk`` at a time."""
    proto = _Buffer()
    client = Pop3Client(proto, transport=None)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    for at in range(0, len(stream), chunk):
        loop.call_soon(proto.data_received, stream[at : at + chunk])
    body = await client.read_stuffed(at_least)
    empty = await client.read_stuffed()
    return body, empty, await client.read_status()


@pytest.mark.parametrize("past_list_size", [False, True], ids=["within stuffing", "past LIST"])
def test_a_body_cut_short_fails_the_check(
    template: bytes, expected: dict[int, Expected], past_list_size: bool
) -> None:
    """The terminator is looked for only from LIST's size on.  A body cut by fewer octets than
    stuffing added still ends there; one cut shorter than LIST's size runs on into the next
    reply.  Either way what comes back is not the message."""
    wire = dot_stuff(template)
    cut = len(wire) - len(template) + 10 if past_list_size else 1
    short = wire[: -cut - 2] + b"\r\n"
    more = b"+OK\r\n" + b"x" * 100 + b"\r\n.\r\n"
    stream = b"+OK\r\n" + short + b".\r\n" + more + more + b"+OK next\r\n"
    body, _, _ = asyncio.run(_read(stream, 4096, at_least=len(template)))
    if past_list_size:
        assert body == short + b".\r\n" + more[:-3]
    else:
        assert body == short
    with pytest.raises(ReplyError, match="dot-stuffed"):
        check_message(body, len(template), expected)


def test_a_body_far_shorter_than_listed_is_waited_on(template: bytes) -> None:
    """With no terminator past LIST's size the read waits: in a run, OP_TIMEOUT ends it as an
    error rather than a wrong body being taken for a message."""
    short = template[: len(template) // 2] + b"\r\n"
    stream = b"+OK\r\n" + short + b".\r\n" + b"+OK\r\n.\r\n" + b"+OK next\r\n"

    async def read() -> None:
        async with asyncio.timeout(0.5):
            await _read(stream, 4096, at_least=len(template))

    with pytest.raises(TimeoutError):
        asyncio.run(read())


@pytest.mark.parametrize("kind", ["session", "retr"])
@pytest.mark.parametrize("mode", ["none", "implicit"])
def test_the_session_and_retr_clients_find_no_error_against_mailslot(
    mailslot_factory: ServerFactory, tmp_path: Path, kind: Kind, mode: TlsMode
) -> None:
    """Over real sockets, pipelined, with the corpus's dotted lines: mailslot's replies pass
    the stuffed-bytes check, and every RETR the client counted was checked."""
    users = [f"load{i}" for i in range(3)]
    server = mailslot_factory(
        listeners=(Listener("starttls"), Listener("implicit")),
        extra_users=[PasswdUser(name, corpus.PASSWORD) for name in users],
        allow_plaintext=True,
    )
    data = corpus.Corpus(tmp_path / "corpus", os.getuid(), os.getgid())
    for i, user in enumerate(users):
        data.make_maildir(server.mail_root, user, corpus.load_idents(i))
    port = server.implicit[1] if mode == "implicit" else server.starttls[1]
    job = Job(
        kind,
        port,
        mode,
        str(server.tls_files.ca_pem),
        users,
        dict(data.expected),
        duration=30.0,
        max_ops=30,
    )
    res = run_coroutine_job(job, None)
    assert res.errors == 0, res.describe_errors()
    assert res.ops >= 30
    per_op = corpus.MESSAGES_PER_USER if kind == "session" else 1
    sizes = {e.size for e in data.expected.values()}
    # Each op's bytes are those of the messages it retrieved, each a template's size.
    assert min(sizes) * per_op * res.ops <= res.bytes <= max(sizes) * per_op * res.ops
