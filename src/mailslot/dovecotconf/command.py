"""``mailslot import-dovecot``: a Dovecot 2.3 configuration into a mailslot.toml (docs/cli.md).

Exit status: 0 written (whatever was not carried over is on stderr and in the file), 65 the
Dovecot configuration cannot be read, 73 the output cannot be written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mailslot.dovecotconf.mapping import convert
from mailslot.dovecotconf.parser import DovecotConfigError
from mailslot.dovecotconf.render import render
from mailslot.dovecotconf.source import load

EX_DATAERR = 65
EX_CANTCREAT = 73


def run(args: argparse.Namespace) -> int:
    source: Path = args.source
    try:
        loaded = load(source, use_doveconf=not args.no_doveconf)
        imported = convert(loaded.root, base=source.parent)
    except DovecotConfigError as exc:
        print(f"mailslot: import-dovecot: {exc}", file=sys.stderr)
        return EX_DATAERR
    text = render(imported, f"{source} (read through {loaded.how})")
    output: Path = args.output
    mode = 0o600 if imported.secret else 0o640
    try:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
        fd = os.open(output, flags, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        print(f"mailslot: {output} exists; --force replaces it", file=sys.stderr)
        return EX_CANTCREAT
    except OSError as exc:
        print(f"mailslot: cannot write {output}: {exc.strerror or exc}", file=sys.stderr)
        return EX_CANTCREAT
    for item in imported.skipped:
        print(f"not carried over: {item.format()}", file=sys.stderr)
    for note in imported.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"wrote {output} from {source} ({loaded.how}): {len(imported.listeners)} listeners, "
        f"{len(imported.skipped)} settings not carried over; check it with "
        f"'mailslot check-config --config {output}'",
        file=sys.stderr,
    )
    return 0
