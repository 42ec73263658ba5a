"""Several certificates chosen by the name the client sends (SNI, RFC 6066 section 3): exact
names, wildcards (RFC 9525 section 6.3), the default, an ECDSA and an RSA certificate side by
side; over real 127.0.0.1 sockets with real OpenSSL on both ends, then through ``mailslot
serve`` on implicit TLS and STLS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.server.tlsprobe import handshake
from tests.support.server import MailslotServer
from tests.support.tls import TlsFiles
from tests.support.wire import Pop3Wire
from tests.tls.certmaker import Issued, Pki, pki, write

from mailslot.tls.certificates import KeyPair, name_matches
from mailslot.tls.context import TlsContexts


@dataclass
class Site:
    """The default certificate (localhost) and three more, as [[tls.certificates]]."""

    ca: Pki
    default: Issued
    mail: Issued  # ECDSA, mail.example.org and example.org
    mail_rsa: Issued  # RSA, the same names
    wildcard: Issued  # *.example.net
    pairs: list[tuple[Path, Path]]

    def contexts(self) -> TlsContexts:
        (cert, key), *more = self.pairs
        return TlsContexts(
            cert,
            key,
            more=[KeyPair(f"tls.certificates[{n}]", c, k) for n, (c, k) in enumerate(more)],
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    directory = tmp_path_factory.mktemp("sni")
    ca = pki(directory)
    default = ca.leaf("localhost")
    mail = ca.leaf("mail.example.org", "example.org")
    mail_rsa = ca.leaf("mail.example.org", "example.org", kind="rsa")
    wildcard = ca.leaf("*.example.net")
    pairs = [
        write(directory / name, leaf, ca.intermediate)
        for name, leaf in (
            ("default", default),
            ("mail", mail),
            ("mail-rsa", mail_rsa),
            ("wildcard", wildcard),
        )
    ]
    return Site(ca, default, mail, mail_rsa, wildcard, pairs)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("localhost", "default"),
        ("mail.example.org", "mail"),
        ("MAIL.Example.ORG", "mail"),
        ("example.org", "mail"),
        ("imap.example.net", "wildcard"),
        ("unknown.example.com", "default"),
    ],
)
def test_the_certificate_is_chosen_by_the_name_the_client_sends(
    site: Site, name: str, expected: str
) -> None:
    client = site.ca.client()
    client.check_hostname = expected != "default" or name == "localhost"
    result = handshake(site.contexts().current, client, server_hostname=name)
    assert result.serial == getattr(site, expected).serial


def test_a_wildcard_stands_for_one_label_only(site: Site) -> None:
    client = site.ca.client()
    client.check_hostname = False  # the default is not for these names: see what is served
    for name in ("a.b.example.net", "example.net"):
        result = handshake(site.contexts().current, client, server_hostname=name)
        assert result.serial == site.default.serial, name


def test_a_client_without_sni_gets_the_default(site: Site) -> None:
    client = site.ca.client()
    client.check_hostname = False
    # server_hostname=None: no server_name extension at all.
    assert handshake(site.contexts().current, client, server_hostname=None).serial == (  # type: ignore[arg-type]
        site.default.serial
    )


@pytest.mark.parametrize(
    ("cipher", "expected"),
    [("ECDHE-ECDSA-AES128-GCM-SHA256", "mail"), ("ECDHE-RSA-AES128-GCM-SHA256", "mail_rsa")],
)
def test_ecdsa_and_rsa_certificates_for_the_same_names_are_served_side_by_side(
    site: Site, cipher: str, expected: str
) -> None:
    """A TLS 1.2 client that can only use RSA (or ECDSA) gets the certificate it can use."""
    client = site.ca.client(
        minimum_version=ssl.TLSVersion.TLSv1_2, maximum_version=ssl.TLSVersion.TLSv1_2
    )
    client.set_ciphers(cipher)
    result = handshake(site.contexts().current, client, server_hostname="mail.example.org")
    assert result.cipher == cipher
    assert result.serial == getattr(site, expected).serial


def test_a_tls13_client_gets_ecdsa_when_it_offers_it(site: Site) -> None:
    result = handshake(site.contexts().current, site.ca.client(), "mail.example.org")
    assert result.version == "TLSv1.3"
    assert result.serial == site.mail.serial


def test_one_lookup_table_per_load_and_no_context_per_handshake(site: Site) -> None:
    contexts = site.contexts()
    table = contexts.names
    # localhost; mail+mail_rsa share one context; the wildcard: three in all.
    assert len(table.contexts) == 3
    assert table.lookup("mail.example.org") is table.lookup("example.org")
    assert table.lookup("x.example.net") is table.wildcard["example.net"]
    assert table.lookup("nothing.invalid") is table.default is contexts.current


@pytest.mark.parametrize(
    ("pattern", "hostname", "matches"),
    [
        ("mail.example.org", "mail.example.org", True),
        ("Mail.Example.org", "mail.EXAMPLE.org.", True),
        ("*.example.org", "mail.example.org", True),
        ("*.example.org", "example.org", False),
        ("*.example.org", "a.mail.example.org", False),
        ("m*.example.org", "mail.example.org", False),
        ("mail.*.org", "mail.example.org", False),
        ("*.*.org", "a.example.org", False),
    ],
)
def test_name_matching_follows_rfc_9525(pattern: str, hostname: str, matches: bool) -> None:
    assert name_matches(pattern, hostname) is matches


def test_serve_chooses_by_sni_on_implicit_tls_and_stls(site: Site, tmp_path: Path) -> None:
    (cert, key), *more = site.pairs
    server = MailslotServer(tmp_path / "server", TlsFiles(site.ca.ca_pem, cert, key))
    with server.config_path.open("a") as config:
        for certificate, private_key in more:
            config.write(
                f'[[tls.certificates]]\ncertificate = "{certificate}"\n'
                f'private_key = "{private_key}"\n\n'
            )
    with server:
        client = site.ca.client()
        for name, expected in (("imap.example.net", site.wildcard), ("localhost", site.default)):
            host, port = server.implicit
            with Pop3Wire(host, port, tls_context=client, server_hostname=name) as wire:
                assert wire.greeting.startswith(b"+OK")
                assert _serial(wire) == expected.serial
            host, port = server.starttls
            with Pop3Wire(host, port) as wire:
                assert wire.command("STLS").startswith(b"+OK")
                wire.start_tls(client, server_hostname=name)
                assert wire.command("CAPA").startswith(b"+OK")
                assert b"USER" in wire.multiline()  # the session goes on over TLS
                assert _serial(wire) == expected.serial
        rsa_only = site.ca.client(
            minimum_version=ssl.TLSVersion.TLSv1_2, maximum_version=ssl.TLSVersion.TLSv1_2
        )
        rsa_only.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        host, port = server.implicit
        with Pop3Wire(host, port, tls_context=rsa_only, server_hostname="mail.example.org") as w:
            assert _serial(w) == site.mail_rsa.serial


def _serial(wire: Pop3Wire) -> int:
    from cryptography import x509

    assert wire._tls is not None
    der = wire._tls.obj.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_a_reload_reads_every_certificate_again(site: Site, tmp_path: Path) -> None:
    (cert, key), (entry_cert, entry_key), *_ = site.pairs
    live = tmp_path / "entry"
    live.mkdir()
    certificate, private_key = live / "fullchain.pem", live / "privkey.pem"
    certificate.write_bytes(entry_cert.read_bytes())
    private_key.write_bytes(entry_key.read_bytes())
    contexts = TlsContexts(
        cert, key, more=[KeyPair("tls.certificates[0]", certificate, private_key)]
    )
    client = site.ca.client()
    assert handshake(contexts.current, client, "mail.example.org").serial == site.mail.serial
    renewed = site.ca.leaf("mail.example.org", "example.org")
    write(live, renewed, site.ca.intermediate)
    contexts.reload()
    assert handshake(contexts.current, client, "mail.example.org").serial == renewed.serial
    assert handshake(contexts.current, client, "localhost").serial == site.default.serial
    # A broken entry refuses the whole reload: the entry's old certificate stays too.
    private_key.write_bytes(site.default.key_pem())
    with pytest.raises(ssl.SSLError, match="does not belong to the certificate"):
        contexts.reload()
    assert handshake(contexts.current, client, "mail.example.org").serial == renewed.serial
