"""``python -m mailslot``: the same as the ``mailslot`` command."""

from mailslot.cli import main

raise SystemExit(main())
