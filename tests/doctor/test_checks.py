"""The doctor's checks as pure functions: name matching, CAPA parsing, keys, expiry, chains,
groups; and the package's import graph (a client: nothing of mailslot's server)."""

from __future__ import annotations

import datetime
import subprocess
import sys
from collections.abc import Sequence

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from mailslot.doctor import certificate, groups, pop3
from mailslot.doctor.groups import Probe
from mailslot.doctor.net import MultiLine
from mailslot.doctor.results import Status
from mailslot.doctor.tls import Endpoint, suite_categories

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("reference", "presented", "matches"),
    [
        ("pop.example.org", "pop.example.org", True),
        ("POP.Example.ORG", "pop.example.org.", True),
        ("pop.example.org", "*.example.org", True),
        ("a.pop.example.org", "*.example.org", False),  # one label only (RFC 9525 s. 6.3)
        ("example.org", "*.example.org", False),
        ("pop.example.org", "p*.example.org", False),  # partial wildcards: not matched
        ("pop.example.org", "*.org", False),
        ("pop.example.org", "pop.example.com", False),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", True),
    ],
)
def test_dns_id_matching(reference: str, presented: str, matches: bool) -> None:
    assert certificate.dns_id_matches(reference, presented) is matches


def _cert(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    *,
    names: Sequence[x509.GeneralName] = (x509.DNSName("localhost"),),
    common_name: str = "localhost",
    not_before: datetime.datetime = NOW - datetime.timedelta(days=1),
    not_after: datetime.datetime = NOW + datetime.timedelta(days=90),
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), False)
    return builder.sign(key, hashes.SHA256())


@pytest.fixture(scope="module")
def p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_name_by_ip_uses_ip_ids_only(p256: ec.EllipticCurvePrivateKey) -> None:
    import ipaddress

    cert = _cert(
        p256, names=[x509.DNSName("127.0.0.1"), x509.IPAddress(ipaddress.ip_address("::1"))]
    )
    assert certificate.check_name(cert, "::1", True, 995).status is Status.OK
    # A DNS-ID spelling an address is not an IP-ID: addresses match IP-IDs only (RFC 9525).
    assert certificate.check_name(cert, "127.0.0.1", True, 995).status is Status.FAILURE


def test_common_name_alone_does_not_match(p256: ec.EllipticCurvePrivateKey) -> None:
    cert = _cert(p256, names=(), common_name="pop.example.org")
    check = certificate.check_name(cert, "pop.example.org", False, 995)
    assert check.status is Status.FAILURE
    assert "only the subject CN matches" in check.summary


@pytest.mark.parametrize(
    ("days_left", "status"),
    [(-1, Status.FAILURE), (5, Status.WARNING), (20, Status.WARNING), (22, Status.OK)],
)
def test_expiry(p256: ec.EllipticCurvePrivateKey, days_left: int, status: Status) -> None:
    cert = _cert(
        p256,
        not_before=NOW - datetime.timedelta(days=30),
        not_after=NOW + datetime.timedelta(days=days_left, hours=1),
    )
    assert certificate.check_expiry(cert, NOW, 995).status is status


def test_not_yet_valid(p256: ec.EllipticCurvePrivateKey) -> None:
    cert = _cert(p256, not_before=NOW + datetime.timedelta(days=2))
    check = certificate.check_expiry(cert, NOW, 995)
    assert check.status is Status.FAILURE
    assert check.summary.startswith("not valid yet")


def test_key_sizes_and_curves() -> None:
    small = _cert(rsa.generate_private_key(65537, 1024))  # noqa: S505 - the weak key under test
    assert certificate.check_key(small, 995).status is Status.FAILURE
    good = _cert(rsa.generate_private_key(65537, 2048))
    assert certificate.check_key(good, 995).status is Status.OK
    for curve, status in ((ec.SECP384R1(), Status.OK), (ec.SECP521R1(), Status.WARNING)):
        cert = _cert(ec.generate_private_key(curve))
        assert certificate.check_key(cert, 995).status is status


def _load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def test_intermediate_found_only_in_the_trust_store_is_a_warning() -> None:
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("localhost")
    sent = [_load(leaf.cert_chain_pems[0].bytes())]
    trust = [_load(root.cert_pem.bytes()), _load(intermediate.cert_pem.bytes())]
    verified = certificate.Verification(0, "ok", "test store")
    check = certificate.check_intermediates(sent, trust, verified, 995)
    assert check.status is Status.WARNING
    assert "holds the intermediate" in check.summary


def test_missing_intermediate_named() -> None:
    root = trustme.CA()
    intermediate = root.create_child_ca()
    leaf = intermediate.issue_cert("localhost")
    sent = [_load(leaf.cert_chain_pems[0].bytes())]
    failed = certificate.Verification(20, "unable to get local issuer certificate", "store")
    check = certificate.check_intermediates(sent, [_load(root.cert_pem.bytes())], failed, 995)
    assert check.status is Status.FAILURE
    assert check.details["missing"] == _load(intermediate.cert_pem.bytes()).subject.rfc4514_string()
    # With the intermediate sent, the same chain is complete.
    full = [_load(blob.bytes()) for blob in leaf.cert_chain_pems]
    ok = certificate.check_intermediates(full, [_load(root.cert_pem.bytes())], failed, 995)
    assert ok.status is Status.OK


def test_capa_parsing() -> None:
    body = MultiLine(["TOP", "UIDL", "SASL PLAIN scram-sha-256", "STLS", "B@D tag", ""], True)
    caps = pop3.parse_capa("+OK", body)
    assert caps.sasl == ["PLAIN", "SCRAM-SHA-256"]
    assert caps.malformed == ["B@D tag", ""]
    assert pop3.check_capa(caps, 110).status is Status.FAILURE
    assert pop3.check_cleartext_auth(caps, 110).details["offered"] == ["SASL PLAIN"]
    unterminated = pop3.parse_capa("+OK", MultiLine(["UIDL"], False))
    assert pop3.check_capa(unterminated, 110).status is Status.FAILURE
    refused = pop3.parse_capa("-ERR no", None)
    assert pop3.check_capa(refused, 110).status is Status.WARNING
    assert pop3.check_cleartext_auth(refused, 110).status is Status.WARNING
    no_uidl = pop3.parse_capa("+OK", MultiLine(["TOP", "STLS"], True))
    assert pop3.check_capa(no_uidl, 110).status is Status.WARNING


def test_implementation_with_a_version_is_a_warning() -> None:
    with_version = pop3.parse_capa("+OK", MultiLine(["IMPLEMENTATION Foo-POP 2.3.1"], True))
    assert pop3.check_implementation(with_version, 995).status is Status.WARNING
    bare = pop3.parse_capa("+OK", MultiLine(["IMPLEMENTATION Foo"], True))
    assert pop3.check_implementation(bare, 995).status is Status.OK


def test_greeting_threshold() -> None:
    assert pop3.check_greeting("+OK", 2.5, 110).status is Status.WARNING
    assert pop3.check_greeting("+OK", 0.1, 110).status is Status.OK


ENDPOINT = Endpoint("127.0.0.1", 995, False, 1.0)


def test_groups_rules() -> None:
    def accepts(*names: str) -> groups.Prober:
        def probe(_endpoint: Endpoint, group: str, _tls13: bool, _c: str | None) -> Probe:
            found = group in names or (group.startswith("ffdhe") and "ffdhe" in names)
            return Probe.ACCEPTED if found else Probe.REFUSED

        return probe

    expected = groups.check_groups(ENDPOINT, True, prober=accepts(*groups.EXPECTED))
    assert expected.status is Status.OK
    odd = groups.check_groups(ENDPOINT, True, prober=accepts("X25519", "X448"))
    assert odd.status is Status.WARNING
    only_ffdhe = groups.check_groups(ENDPOINT, True, prober=accepts("ffdhe"))
    assert only_ffdhe.status is Status.FAILURE
    missing = groups.check_groups(ENDPOINT, True, prober=lambda *_: Probe.UNAVAILABLE)
    assert missing.status is Status.WARNING
    # Not determined (the server preferred the certificate's curve) is not accepted.
    undetermined = groups.check_groups(
        ENDPOINT,
        False,
        "P-256",
        prober=lambda _e, g, _t, _c: Probe.ACCEPTED if g == "P-256" else Probe.UNKNOWN,
    )
    assert undetermined.status is Status.OK
    assert undetermined.details["not_determined"] == ["X25519", "P-384", "X448", "P-521"]
    assert missing.status is Status.WARNING
    assert "could not check" in missing.summary


def test_suite_categories_cover_the_weak_kinds() -> None:
    categories = suite_categories()
    assert "AES128-GCM-SHA256" in categories["no-fs"]
    assert "ECDHE-ECDSA-AES128-SHA" in categories["cbc"]
    assert all(
        "GCM" not in name or name.startswith(("AES", "DHE-PSK", "ADH", "AECDH"))
        for name in categories["cbc"] + categories["broken"]
    )
    every = {name for names in categories.values() for name in names}
    assert "ECDHE-ECDSA-AES128-GCM-SHA256" not in every


def test_imports_nothing_of_the_server() -> None:
    """The doctor is a client: no mailslot server, store, auth, protocol or config code."""
    code = (
        "import sys, mailslot.doctor.command, mailslot.doctor.runner, mailslot.doctor.render\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('mailslot'))))\n"
        "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(done.stdout.split())
    ours = {m for m in modules if m.startswith("mailslot")}
    assert ours <= {"mailslot"} | {m for m in ours if m.startswith("mailslot.doctor")}
    assert "mailslot.doctor.runner" in ours
    # Third-party code: cryptography only (and what it brings: cffi, its Rust bindings, and
    # before version 47 bcrypt, which its SSH key loading imports when installed).
    third_party = modules - set(sys.stdlib_module_names) - {"mailslot", "sitecustomize"}
    third_party = {m for m in third_party if "." not in m and not m.startswith("_")}
    assert third_party <= {"cryptography", "cffi", "typing_extensions", "bcrypt"}, third_party


def test_no_module_of_the_doctor_names_another_mailslot_package() -> None:
    """The same rule read from the source, so a lazy import inside a function counts too."""
    import ast
    from pathlib import Path

    import mailslot.doctor

    package = Path(mailslot.doctor.__file__).parent
    for path in package.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module]
            for name in names:
                if name.startswith("mailslot"):
                    assert name.startswith("mailslot.doctor"), f"{path.name} imports {name}"
