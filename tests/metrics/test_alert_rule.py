"""The alerting rules docs/metrics.md gives: ``promtool check rules`` parses them and
``promtool test rules`` shows each firing when it should and only then (the certificate with
under 21 days left; failed and throttled logins, never in-use ones), with the labels and the
text an administrator reads."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support.programs import require_program

DOCS = Path(__file__).parents[2] / "docs" / "metrics.md"
DAY = 86400
NAME = "mailslot_certificate_expiry_timestamp_seconds"


def documented_rules() -> str:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    (rules,) = [block for block in blocks if "alert: MailslotCertificateExpiresSoon" in block]
    return str(rules)


def promtool_test(tmp_path: Path, inputs: str, expectations: str) -> None:
    """Write the documented rules and a ``promtool test rules`` file of ``inputs`` (input
    series) and ``expectations`` (alert rule tests), then run it: it must pass."""
    promtool = require_program("promtool")
    (tmp_path / "mailslot.rules.yml").write_text(documented_rules())
    cases = tmp_path / "test.yml"
    cases.write_text(
        "rule_files: [mailslot.rules.yml]\n"
        "evaluation_interval: 1m\n"
        "tests:\n"
        "  - interval: 1m\n"
        "    input_series:\n" + inputs + "    alert_rule_test:\n" + expectations
    )
    test = subprocess.run(
        [promtool, "test", "rules", str(cases)], capture_output=True, cwd=tmp_path
    )
    assert test.returncode == 0, test.stdout + test.stderr


def series(path: str, names: str, key_type: str, expires: int) -> str:
    labels = (
        f'certificate="{path}",names="{names}",key_type="{key_type}",'
        'instance="pop.example.org:9154",job="mailslot"'
    )
    return f"      - series: '{NAME}{{{labels}}}'\n        values: '{expires}x10'\n"


def test_the_documented_rule_fires_for_the_certificate_about_to_expire(tmp_path: Path) -> None:
    promtool = require_program("promtool")
    rules = tmp_path / "mailslot.rules.yml"
    rules.write_text(documented_rules())
    check = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # Evaluated 5 minutes after the epoch: the ECDSA certificate has 20 days left, the RSA one
    # beside it 21 days and an hour (over the line), another 40 days.
    soon = 20 * DAY + 300
    promtool_test(
        tmp_path,
        series("/etc/mailslot/mail.pem", "mail.example.org,pop.example.org", "ecdsa", soon)
        + series("/etc/mailslot/mail-rsa.pem", "mail.example.org", "rsa", 21 * DAY + 3600 + 300)
        + series("/etc/mailslot/other.pem", "other.example.org", "ecdsa", 40 * DAY),
        "      - eval_time: 5m\n"
        "        alertname: MailslotCertificateExpiresSoon\n"
        "        exp_alerts:\n"
        "          - exp_labels:\n"
        "              severity: warning\n"
        "              certificate: /etc/mailslot/mail.pem\n"
        "              names: mail.example.org,pop.example.org\n"
        "              key_type: ecdsa\n"
        "              instance: pop.example.org:9154\n"
        "              job: mailslot\n"
        "            exp_annotations:\n"
        "              summary: 'TLS certificate for mail.example.org,pop.example.org (ecdsa)"
        " expires in 20d 0h 0m 0s'\n"
        "              description: '/etc/mailslot/mail.pem on pop.example.org:9154: renew it,"
        " or see why the renewal was not loaded (mailslot acme status, the server''s log).'\n",
    )


def logins(instance: str, result: str, per_minute: int) -> str:
    labels = (
        f'listener="0.0.0.0:995",result="{result}",mechanism="USER",'
        f'instance="{instance}",job="mailslot"'
    )
    series = f"mailslot_logins_total{{{labels}}}"
    return f"      - series: '{series}'\n        values: '0+{per_minute}x30'\n"


def test_the_password_guessing_rule_fires_on_failed_and_throttled_logins_not_in_use(
    tmp_path: Path,
) -> None:
    """Four servers, 20 minutes on: one answers 10 logins a second ``in-use`` (a client that
    polls while its other session holds the maildrop) and 1 a second ``disabled``, one 2 a
    second ``failed``, one 2 a second ``throttled``, one 0.5 a second ``failed``.  Only the
    second and third fire.  Counted as ``failed`` before in-use had its own result, the
    first fired too."""
    promtool_test(
        tmp_path,
        logins("polled:9154", "in-use", 600)
        + logins("polled:9154", "disabled", 60)
        + logins("polled:9154", "ok", 600)
        + logins("guessed:9154", "failed", 120)
        + logins("guessed:9154", "ok", 600)
        + logins("throttled:9154", "throttled", 120)
        + logins("quiet:9154", "failed", 30),
        "      - eval_time: 20m\n"
        "        alertname: MailslotPasswordGuessing\n"
        "        exp_alerts:\n"
        + "".join(
            "          - exp_labels:\n"
            "              severity: warning\n"
            f"              instance: {instance}\n"
            "              job: mailslot\n"
            "            exp_annotations:\n"
            f"              summary: '2 failed logins per second on {instance}'\n"
            "              description: 'Wrong passwords, unknown users and attempts refused"
            " by the failure penalty: see the log''s login failed and login refused lines"
            " for the addresses.'\n"
            for instance in ("guessed:9154", "throttled:9154")
        )
        # Not yet at 9 minutes: the rate must hold for 10.
        + "      - eval_time: 9m\n"
        "        alertname: MailslotPasswordGuessing\n"
        "        exp_alerts: []\n",
    )
