"""scripts/dashboard-picture (benchmarks.dashboard_picture): the server it runs and its legends.

The whole script takes 15 minutes (its panels' [5m] windows must fill), so the tests check its
parts: the server it sets up is a valid configuration with metrics on and the users and
Maildirs the clients need, and its legends follow Grafana's ``legendFormat``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailslot.auth import admin
from mailslot.config import load

pytest.importorskip("trustme")
picture = pytest.importorskip("benchmarks.dashboard_picture")


def test_the_server_it_runs_is_valid_with_metrics_and_two_workers(tmp_path: Path) -> None:
    setup = picture.prepare(tmp_path)
    config = load(setup.config)
    assert config.metrics.port == setup.metrics
    assert config.server.workers == 2
    assert [lst.protocol for lst in config.listeners] == ["pop3", "pop3", "lmtp"]
    assert config.auth.passwd_file is not None
    users = set(admin.list_users(config.auth.passwd_file))
    assert users == {
        *picture.USERS,
        picture.FULL,
        picture.BROKEN,
        picture.POLLER,
        picture.DISABLED,
    }
    # The disabled account, whose phone polls: nologin in the eighth field, the others none.
    lines = config.auth.passwd_file.read_text().splitlines()
    extras = {line.split(":")[0]: line.split(":")[7:] for line in lines}
    assert extras[picture.DISABLED] == ["nologin nodelay"]
    assert extras[picture.POLLER] == []
    # Two certificates for the dashboard's expiry panel: [tls] and one [[tls.certificates]].
    assert config.tls.certificate is not None
    assert len(config.tls.certificates) == 1
    # The user whose deliveries are deferred: a symlinked tmp/, which the store refuses.
    assert (tmp_path / "mail" / picture.BROKEN / "Maildir" / "tmp").is_symlink()
    assert config.delivery.quota_messages == picture.QUOTA_MESSAGES


def test_legends_follow_grafanas_legend_format() -> None:
    assert picture.legend({"legendFormat": "p99"}, {}) == "p99"
    assert picture.legend({"legendFormat": "{{tls}} sessions"}, {"tls": "TLSv1.3"}) == (
        "TLSv1.3 sessions"
    )
    labels = {"result": "ok", "job": "mailslot", "instance": "127.0.0.1:9154"}
    assert picture.legend({"legendFormat": "__auto"}, labels) == "result=ok"
    assert picture.legend({}, {}) == "value"
