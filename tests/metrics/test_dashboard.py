"""dashboards/mailslot.json: valid JSON whose queries parse and name only exported metrics.

Every panel query is checked by ``promtool check rules`` (as a recording rule, which parses
it as PromQL) and each ``mailslot_*`` name in it must be one docs/metrics.md lists.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.support.programs import require_program

ROOT = Path(__file__).parents[2]
DASHBOARD = ROOT / "dashboards" / "mailslot.json"
DOCS = ROOT / "docs" / "metrics.md"


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_query_names_documented_metrics() -> None:
    documented = set(re.findall(r"^\| `(mailslot_\w+)`", DOCS.read_text(), re.MULTILINE))
    for expr in queries():
        for name in re.findall(r"mailslot_\w+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in documented, expr


def test_every_query_parses(tmp_path: Path) -> None:
    promtool = require_program("promtool")
    rules = tmp_path / "rules.yml"
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for index, expr in enumerate(queries()):
        lines += [f"      - record: dashboard:query{index}", f"        expr: {json.dumps(expr)}"]
    rules.write_text("\n".join(lines) + "\n")
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
