"""The batch paths of Maildir name parsing give exactly what the one-name definitions give.

:func:`parse_bases` and the snapshot read all names at once with C-level shortcuts; message
order, sizes and unique-ids must still be those of :func:`parse` and :func:`uid_of` applied
to each name, since clients keep unique-ids across sessions (RFC 1939 section 7).
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import example, given, settings
from hypothesis import strategies as st

from mailslot.store.maildir import relative_path, take_snapshot
from mailslot.store.maildirnames import parse, parse_bases, uid_of, uids_of

from .conftest import directory

# Digits of other scripts too: \d and int() accept them, and so must the fast path.
_DIGITS = st.text(st.sampled_from("0123456789\u0663\uff17"), min_size=0, max_size=12)
_FIELD = st.text(st.sampled_from("abMPQSW=,.-_x \u00e9\n0123456789"), max_size=12)
_USUAL = [f"{1_600_000_000 + n}.M{n}P1.host,S=1,W={n}" for n in range(3)]


@st.composite
def _bases(draw: st.DrawFn) -> str:
    """Mostly names as Dovecot and mailslot write them, with every part liable to be odd."""
    if draw(st.booleans()):
        # Names from disk hold surrogates only as escaped bytes (os.fsdecode).
        odd = st.characters(exclude_categories=["Cs"], exclude_characters="/:\x00")
        escaped = st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF)
        return draw(st.text(odd | escaped, max_size=80))
    base = draw(_DIGITS)
    if draw(st.booleans()):
        base += "." + draw(st.sampled_from(["M", "", "xM", "M."])) + draw(_DIGITS)
        base += draw(st.sampled_from(["P", "Q", ""])) + draw(_DIGITS)
    base += draw(_FIELD)
    for size in ("S", "W"):
        if draw(st.booleans()):
            base += f",{size}=" + draw(_DIGITS) + draw(st.sampled_from(["", "", ",X=1", "a"]))
    return base


@settings(max_examples=500)
@given(st.lists(_bases(), unique=True, max_size=20))
@example([*_USUAL, "1600000009.M1P1.host,W=5xW=7"])  # only the last ",W=" counts
@example([*_USUAL, "1600000009.M1P1.host,W=5,W=x"])  # ... if digits follow it
@example([*_USUAL, "1600000009.M1P1.host,W=5:2,"])
@example([*_USUAL, "16000000091"])  # no ",W=": the whole base is not a size
@example([*_USUAL, "1600000009.P1M7,W=1", "1600000009.x.M7,W=1", "1600000009.M1234567,W=1"])
@example([*_USUAL, "\u0661\u0662.M\u0663,W=\u0664"])
@example([*_USUAL, ""])  # an empty base (name ":2,") is no uid
@example(["", *_USUAL])
@example([*_USUAL, "x" * 70, "y" * 71])
@example([*_USUAL, "1600000009.M1P1.h\u00e9,W=1"])
@example([*_USUAL, "1600000009.M1P1.h\x7f,W=1"])
@example([*_USUAL, "1600000009.M1P1.h\x1f,W=1"])
@example([*_USUAL, " 1600000009.M1,W=1"])  # int() would take these; the definition does not
@example([*_USUAL, "+1600000009.M1,W=1"])
@example([*_USUAL, "1_600_000_009.M1,W=1"])
@example([*_USUAL, "1600000009.M1,W= 1"])
@example([*_USUAL, "1600000009.M1,W=1_0"])
def test_parse_bases_is_parse_of_each(bases: list[str]) -> None:
    orders, wires, plain = parse_bases(bases)
    assert [(order, wire) for order, wire in zip(orders, wires, strict=True)] == [
        parse(base) for base in bases
    ]
    assert plain == all(uid_of(base) == base for base in bases)
    if plain:
        assert uids_of(bases) == bases


def test_parse_bases_fast_path_on_usual_names() -> None:
    bases = [f"{1_700_000_000 + n}.M{n}P{n}.host,S=10,W={n + 11}" for n in range(3)]
    orders, wires, plain = parse_bases(bases)
    assert orders == [1_700_000_000_000_000.0, 1_700_000_001_000_001.0, 1_700_000_002_000_002.0]
    assert wires == [11, 12, 13] and plain


def test_uids_of_gives_a_colliding_forgery_its_own_digest() -> None:
    odd = "1600000000.with space"
    forged = uid_of(odd)
    assert uids_of([forged, odd]) == [forged, uid_of("\n" + odd)]
    assert uids_of([odd, forged]) == [forged, uid_of("\n" + forged)]


def test_uids_of_gives_a_forgery_of_a_second_digest_a_digest_of_its_own_too() -> None:
    """Found by fuzz/fuzz_maildirnames.py: two forged names could take one unique-id.

    ``odd`` is not a uid, so it gets ``uid_of(odd)``; when a name holds that, ``odd`` got
    ``uid_of("\\n" + odd)``, and when a third name holds that too, both had it: RFC 1939
    section 7 wants one message per unique-id.
    """
    odd = "1600000000.with space"
    first, second = uid_of(odd), uid_of("\n" + odd)
    uids = uids_of([second, first, odd])
    assert uids[:2] == [second, first]
    assert len(set(uids)) == 3 and len(uids[2]) <= 70 and uids[2].isprintable()
    assert uids == uids_of([second, first, odd])  # deterministic


def _reference(cur: dict[str, bytes]) -> list[tuple[str, str, int]]:
    """The snapshot by definition: one file per base (the least name), sorted by (time, base)."""
    chosen: dict[str, str] = {}
    for name in sorted(cur, reverse=True):
        chosen[name.partition(":")[0]] = name
    ordered = sorted(chosen, key=lambda base: (parse(base)[0], base))
    listed, seen = [], set()
    for base in ordered:
        uid, salted = uid_of(base), base
        while uid in seen:
            salted = "\n" + salted
            uid = uid_of(salted)
        seen.add(uid)
        wire = parse(base)[1]
        data = cur[chosen[base]]
        listed.append((base, uid, len(data) + data.count(b"\n") if wire is None else wire))
    return listed


_INFO = st.sampled_from(["", ":2,", ":2,S", ":2,RS", ":1,x"])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_bases(), _INFO), max_size=12),
    st.lists(st.integers(0, 3), max_size=12),
)
def test_snapshot_matches_its_definition(names: list[tuple[str, str]], ties: list[int]) -> None:
    cur: dict[str, bytes] = {}
    for n, (base, info) in enumerate(names):
        name = os.fsdecode(os.fsencode(base + info))  # as a listing gives it back
        if name and not name.startswith(".") and len(os.fsencode(name)) < 250:
            cur[name] = b"x\n" * (n % 3)
    # Shared delivery times: the order then falls to the base name.
    for n, tie in enumerate(ties):
        cur[f"1600000000.M5P{tie}Q{n},W=7:2,"] = b""
    with tempfile.TemporaryDirectory() as maildir:
        for sub in ("cur", "new", "tmp"):
            os.mkdir(os.path.join(maildir, sub))
        for name, data in cur.items():
            with open(os.path.join(maildir, "cur", name), "wb") as f:
                f.write(data)
        with (
            directory(maildir) as fd,
            directory(maildir + "/new") as new,
            directory(maildir + "/cur") as cur_fd,
        ):
            messages, locations = take_snapshot(maildir, fd, new, cur_fd)
        assert [(m.key, m.uid, m.size) for m in messages] == _reference(cur)
        for m in messages:
            assert os.path.isfile(os.path.join(maildir, relative_path(locations[m.key])))
