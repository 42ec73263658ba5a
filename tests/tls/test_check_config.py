"""``mailslot check-config`` and ``mailslot serve`` on broken certificate and key files: both
exit 78 (EX_CONFIG) with a ``FILE:LINE: KEY: ...`` line that names the file; warnings are
printed and do not stop them.  Real files, real processes for the errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.server import RUN_AS_ROOT, free_port
from tests.tls.certmaker import DAY, NOW, Pki, issue, pki, write

from mailslot.cli import main

DEADLINE = 60.0  # a safety net for a serve that wrongly starts, not a timing threshold


def write_config(
    directory: Path,
    certificate: Path,
    private_key: Path,
    *,
    hostname: str = "localhost",
    profile: str = "intermediate",
    workers: int = 1,
    extra: str = "",
) -> Path:
    (directory / "users").write_text("")
    root = f'run_as_root = "{RUN_AS_ROOT}"\n' if os.geteuid() == 0 else ""
    config = directory / "mailslot.toml"
    config.write_text(
        "[[listener]]\n"
        'address = "127.0.0.1"\n'
        f"port = {free_port()}\n"
        'tls = "implicit"\n\n'
        "[tls]\n"
        f'certificate = "{certificate}"\n'
        f'private_key = "{private_key}"\n'
        f'profile = "{profile}"\n\n'
        '[auth]\npasswd_file = "users"\n\n'
        f'[server]\nhostname = "{hostname}"\nworkers = {workers}\n{root}\n' + extra
    )
    return config


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every account can traverse (pytest's are 0700), for the mode checks."""
    path = Path(tempfile.mkdtemp(prefix="mailslot-certs-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def _leaf_chain(ca: Pki, directory: Path, **options: object) -> tuple[Path, Path]:
    leaf = ca.leaf("localhost", **options)  # type: ignore[arg-type]
    return write(directory, leaf, ca.intermediate)


def _not_pem(ca: Pki, d: Path) -> tuple[Path, Path]:
    cert, key = _leaf_chain(ca, d)
    cert.write_text("this is not a certificate\n")
    return cert, key


def _der(ca: Pki, d: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization

    leaf = ca.leaf("localhost")
    cert, key = write(d, leaf, ca.intermediate)
    cert.write_bytes(leaf.cert.public_bytes(serialization.Encoding.DER))
    return cert, key


def _swapped(ca: Pki, d: Path) -> tuple[Path, Path]:
    cert, key = _leaf_chain(ca, d)
    return key, cert


def _key_holds_certificate(ca: Pki, d: Path) -> tuple[Path, Path]:
    cert, key = _leaf_chain(ca, d)
    key.write_bytes(cert.read_bytes())
    return cert, key


def _encrypted(ca: Pki, d: Path) -> tuple[Path, Path]:
    leaf = ca.leaf("localhost")
    return write(d, leaf, ca.intermediate, key=leaf.key_pem(b"secret"))


def _encrypted_legacy(ca: Pki, d: Path) -> tuple[Path, Path]:
    """The traditional ``-----BEGIN EC PRIVATE KEY-----`` with ``Proc-Type: 4,ENCRYPTED``."""
    from cryptography.hazmat.primitives import serialization

    leaf = ca.leaf("localhost")
    pem = leaf.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret"),
    )
    assert b"Proc-Type: 4,ENCRYPTED" in pem
    return write(d, leaf, ca.intermediate, key=pem)


def _mismatch(ca: Pki, d: Path) -> tuple[Path, Path]:
    leaf, other = ca.leaf("localhost"), ca.leaf("localhost")
    return write(d, leaf, ca.intermediate, key=other.key_pem())


def _leaf_second(ca: Pki, d: Path) -> tuple[Path, Path]:
    leaf = ca.leaf("localhost")
    cert, key = write(d, leaf, ca.intermediate)
    cert.write_bytes(ca.intermediate.pem + leaf.pem)
    return cert, key


def _wrong_order(ca: Pki, d: Path) -> tuple[Path, Path]:
    return write(d, ca.leaf("localhost"), ca.root, ca.intermediate)


def _truncated(ca: Pki, d: Path) -> tuple[Path, Path]:
    cert, key = _leaf_chain(ca, d)
    data = cert.read_bytes()
    cert.write_bytes(data[: len(data) * 3 // 4])
    return cert, key


def _expired(ca: Pki, d: Path) -> tuple[Path, Path]:
    return _leaf_chain(ca, d, not_before=NOW - 100 * DAY, not_after=NOW - DAY)


def _not_yet_valid(ca: Pki, d: Path) -> tuple[Path, Path]:
    return _leaf_chain(ca, d, not_before=NOW + 2 * DAY, not_after=NOW + 40 * DAY)


def _rsa_1024(ca: Pki, d: Path) -> tuple[Path, Path]:
    return _leaf_chain(ca, d, kind="rsa", bits=1024)


Maker = Callable[[Pki, Path], tuple[Path, Path]]
# (how to break the files, which file the message names, what it says)
BROKEN: dict[str, tuple[Maker, str, str]] = {
    "not-pem": (_not_pem, "certificate", "is not a PEM file"),
    "der": (_der, "certificate", "is DER, not PEM"),
    "swapped": (_swapped, "certificate", "holds a private key, not a certificate"),
    "key-is-a-certificate": (_key_holds_certificate, "private_key", "not a private key"),
    "encrypted-key": (_encrypted, "private_key", "is encrypted"),
    "encrypted-legacy-key": (_encrypted_legacy, "private_key", "is encrypted"),
    "mismatch": (_mismatch, "private_key", "does not belong to the certificate"),
    "leaf-second": (_leaf_second, "private_key", "belongs to certificate 2 of the file"),
    "wrong-order": (_wrong_order, "certificate", "did not issue certificate"),
    "truncated": (_truncated, "certificate", "does not parse"),
    "expired": (_expired, "certificate", "expired on"),
    "not-yet-valid": (_not_yet_valid, "certificate", "is not valid before"),
    "rsa-1024": (_rsa_1024, "certificate", "at least 2048"),
}


def _run(command: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailslot", command, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("case", list(BROKEN))
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_broken_file_stops_check_config_and_serve_naming_it(
    tmp_path: Path, ca: Pki, case: str, command: str
) -> None:
    make, which, says = BROKEN[case]
    certificate, private_key = make(ca, tmp_path / "tls")
    config = write_config(tmp_path, certificate, private_key)
    result = _run(command, config)
    assert result.returncode == 78, result.stderr
    named = certificate if which == "certificate" else private_key
    line = 7 if which == "certificate" else 8  # of write_config's file
    expected = f"{config}:{line}: tls.{which}: "
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(expected)]
    assert any(str(named) in ln and says in ln for ln in lines), result.stderr
    assert "Traceback" not in result.stderr
    assert "problem" in result.stderr.splitlines()[-1]


def test_the_files_as_the_server_loads_them_pass(tmp_path: Path, ca: Pki) -> None:
    """The control for the broken cases: the same layout, unbroken, is OK (exit 0)."""
    certificate, private_key = _leaf_chain(ca, tmp_path / "tls")
    result = _run("check-config", write_config(tmp_path, certificate, private_key))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("OK: ")


def _check(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["check-config", "--config", str(config)])
    return code, capsys.readouterr().err


def test_a_certificate_expiring_soon_is_a_warning(
    tmp_path: Path, ca: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    certificate, key = _leaf_chain(ca, tmp_path, not_after=NOW + 10 * DAY)
    code, err = _check(write_config(tmp_path, certificate, key), capsys)
    assert code == 0
    assert f"tls.certificate: warning: {certificate}: the certificate expires on" in err
    assert "in 9 days" in err or "in 10 days" in err


@pytest.mark.parametrize(
    ("profile", "days", "warned"),
    [
        ("intermediate", 365, False),
        ("intermediate", 400, True),
        ("modern", 89, False),
        ("modern", 100, True),
    ],
)
def test_the_profiles_lifetime_is_a_warning(
    tmp_path: Path,
    ca: Pki,
    capsys: pytest.CaptureFixture[str],
    profile: str,
    days: int,
    warned: bool,
) -> None:
    certificate, key = _leaf_chain(
        ca, tmp_path, not_before=NOW - DAY, not_after=NOW + (days - 1) * DAY
    )
    code, err = _check(write_config(tmp_path, certificate, key, profile=profile), capsys)
    assert code == 0
    assert (f"is valid for {days} days" in err) == warned, err


def test_a_hostname_the_certificate_does_not_name_is_a_warning(
    tmp_path: Path, ca: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    certificate, key = write(tmp_path, ca.leaf("*.example.org"), ca.intermediate)
    code, err = _check(
        write_config(tmp_path, certificate, key, hostname="mail.example.org"), capsys
    )
    assert code == 0
    assert "does not name [server] hostname" not in err  # the wildcard covers it
    config = write_config(tmp_path, certificate, key, hostname="a.b.example.org")
    code, err = _check(config, capsys)
    assert code == 0
    assert 'does not name [server] hostname "a.b.example.org"' in err
    assert "its DNS names are *.example.org" in err


def test_a_chain_without_its_intermediate_is_a_warning_unless_the_host_trusts_the_issuer(
    tmp_path: Path, ca: Pki, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate, key = write(tmp_path, ca.leaf("localhost"))  # the leaf alone
    config = write_config(tmp_path, certificate, key)
    code, err = _check(config, capsys)
    assert code == 0
    assert "which is neither in the file nor in this host's trust store" in err
    assert "append it (certbot: fullchain.pem, not cert.pem)" in err
    # The full chain, whose root this host's store holds: nothing to say.
    trusted = tmp_path / "store.pem"
    trusted.write_bytes(ca.root.pem)
    monkeypatch.setenv("SSL_CERT_FILE", str(trusted))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "none"))
    write(tmp_path, ca.leaf("localhost"), ca.intermediate)
    code, err = _check(config, capsys)
    assert code == 0
    assert "trust store" not in err, err


def test_a_self_signed_certificate_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    certificate, key = write(tmp_path, issue("localhost"))
    code, err = _check(write_config(tmp_path, certificate, key), capsys)
    assert code == 0
    assert "the certificate is self-signed" in err


def test_a_key_outside_the_profiles_is_a_warning(
    tmp_path: Path, ca: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    certificate, key = _leaf_chain(ca, tmp_path, kind="p521")
    code, err = _check(write_config(tmp_path, certificate, key), capsys)
    assert code == 0
    assert "the certificate's key is ECDSA secp521r1, which Mozilla's profiles do not list" in err


def test_a_key_every_account_can_read_is_an_error(
    open_dir: Path, ca: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    certificate, key = _leaf_chain(ca, open_dir)
    key.chmod(0o644)
    code, err = _check(write_config(open_dir, certificate, key), capsys)
    assert code == 78
    assert f"tls.private_key: {key} can be read by every account on this host (mode 0644)" in err
    # The same mode behind a directory only its owner may enter is not readable by others.
    open_dir.chmod(0o700)
    code, err = _check(write_config(open_dir, certificate, key), capsys)
    assert code == 0, err


@pytest.mark.skipif(os.geteuid() != 0, reason="the reloader is root only when run as root")
def test_a_group_readable_key_that_a_root_parent_reloads_is_a_warning(
    open_dir: Path, ca: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    certificate, key = _leaf_chain(ca, open_dir)
    key.chmod(0o640)
    code, err = _check(write_config(open_dir, certificate, key, workers=2), capsys)
    assert code == 0
    assert f"{key} can be read by its group (mode 0640), which mailslot does not need" in err
    key.chmod(0o600)
    code, err = _check(write_config(open_dir, certificate, key, workers=2), capsys)
    assert code == 0
    assert "can be read by its group" not in err, err


def test_a_certificates_entry_is_checked_with_its_own_key_and_line(
    tmp_path: Path, ca: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    certificate, key = _leaf_chain(ca, tmp_path / "default")
    other, other_key = _mismatch(ca, tmp_path / "other")
    extra = f'[[tls.certificates]]\ncertificate = "{other}"\nprivate_key = "{other_key}"\n'
    config = write_config(tmp_path, certificate, key, extra=extra)
    code, err = _check(config, capsys)
    assert code == 78
    line = config.read_text().splitlines().index(f'private_key = "{other_key}"') + 1
    assert f"{config}:{line}: tls.certificates[0].private_key: the key in {other_key}" in err
