"""The TLS policy of mailslot.tls.context over real 127.0.0.1 sockets (RFC 8314 section 3.3,
RFC 2595 section 4): TLS 1.2+ only, ECDHE AEAD suites on 1.2, no compression, the full chain
served, and a reload that cannot break the live context.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme
from tests.server.tlsprobe import CertFiles, handshake, issue

from mailslot.tls import context as tls

# RFC 7919 ffdhe2048, for the control server that must be able to do DHE.
FFDHE2048 = """\
-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


_KEY_TYPES = {"ecdsa": trustme.KeyType.ECDSA, "rsa": trustme.KeyType.RSA}


@pytest.fixture(scope="module")
def all_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CertFiles]:
    return {
        name: issue(tmp_path_factory.mktemp(f"tls-{name}"), key_type=key_type)
        for name, key_type in _KEY_TYPES.items()
    }


@pytest.fixture(params=list(_KEY_TYPES))
def certs(request: pytest.FixtureRequest, all_certs: dict[str, CertFiles]) -> CertFiles:
    """Each test runs with an ECDSA and with an RSA certificate."""
    return all_certs[request.param]


@pytest.fixture
def context(certs: CertFiles) -> ssl.SSLContext:
    return tls.server_context(certs.certificate, certs.private_key)


def _permissive_client(certs: CertFiles, version: ssl.TLSVersion, ciphers: str) -> ssl.SSLContext:
    """A verifying client pinned to ``version`` that is itself willing to use old things."""
    client = certs.client_context()
    client.minimum_version = version
    client.maximum_version = version
    client.set_ciphers(ciphers + ":@SECLEVEL=0")
    return client


def _permissive_server(certs: CertFiles) -> ssl.SSLContext:
    """The control: a server that accepts anything, to show the client could connect."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    server.set_ciphers("ALL:@SECLEVEL=0")
    server.load_cert_chain(certs.certificate, certs.private_key)
    return server


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_old_tls_versions_are_refused(
    certs: CertFiles, context: ssl.SSLContext, version: ssl.TLSVersion
) -> None:
    client = _permissive_client(certs, version, "ALL")
    # The control: this client does speak the old version to a server that allows it.
    assert (
        handshake(_permissive_server(certs), client).version
        == {
            ssl.TLSVersion.TLSv1: "TLSv1",
            ssl.TLSVersion.TLSv1_1: "TLSv1.1",
        }[version]
    )
    with pytest.raises(ssl.SSLError):
        handshake(context, client)


def test_tls12_negotiates_an_ecdhe_aead_suite(certs: CertFiles, context: ssl.SSLContext) -> None:
    client = certs.client_context(
        minimum_version=ssl.TLSVersion.TLSv1_2, maximum_version=ssl.TLSVersion.TLSv1_2
    )
    result = handshake(context, client)
    assert result.version == "TLSv1.2"
    assert result.cipher in tls.INTERMEDIATE_CIPHERS.split(":")
    assert result.cipher is not None and result.cipher.startswith("ECDHE-")


def test_tls13_succeeds(certs: CertFiles, context: ssl.SSLContext) -> None:
    client = certs.client_context(minimum_version=ssl.TLSVersion.TLSv1_3)
    result = handshake(context, client)
    assert result.version == "TLSv1.3"
    assert result.cipher in {
        "TLS_AES_256_GCM_SHA384",
        "TLS_AES_128_GCM_SHA256",
        "TLS_CHACHA20_POLY1305_SHA256",
    }


def test_only_ecdhe_aead_suites_are_enabled_for_tls12(context: ssl.SSLContext) -> None:
    for cipher in context.get_ciphers():
        if cipher["protocol"] == "TLSv1.3":
            assert cipher["aead"], cipher["name"]
            continue
        assert cipher["kea"] == "kx-ecdhe", cipher["name"]
        assert cipher["aead"], cipher["name"]


# Each suite works with some certificate key type; the control handshake shows which.
_WEAK_SUITES = {
    "rsa": [
        "AES128-SHA256",
        "DHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-SHA256",
        "ECDHE-RSA-AES128-SHA",
        "AES128-GCM-SHA256",
    ],
    "ecdsa": ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA"],
}


@pytest.mark.parametrize(
    ("key", "suite"), [(key, suite) for key, suites in _WEAK_SUITES.items() for suite in suites]
)
def test_non_ecdhe_or_non_aead_suites_are_refused(
    tmp_path: Path, all_certs: dict[str, CertFiles], key: str, suite: str
) -> None:
    certs = all_certs[key]
    context = tls.server_context(certs.certificate, certs.private_key)
    client = _permissive_client(certs, ssl.TLSVersion.TLSv1_2, suite)
    control = _permissive_server(certs)
    if suite.startswith("DHE-"):
        dh = tmp_path / "ffdhe2048.pem"
        dh.write_text(FFDHE2048)
        control.load_dh_params(str(dh))
    assert handshake(control, client).cipher == suite
    with pytest.raises(ssl.SSLError):
        handshake(context, client)


def test_compression_and_renegotiation_are_off(certs: CertFiles, context: ssl.SSLContext) -> None:
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        client = certs.client_context(minimum_version=version, maximum_version=version)
        assert handshake(context, client).compression is None


def test_the_served_chain_includes_the_intermediate(
    certs: CertFiles, context: ssl.SSLContext
) -> None:
    # The client trusts only the root, so verification needs the intermediate from the server.
    assert handshake(context, certs.client_context()).serial == certs.serial


def test_a_leaf_only_file_fails_verification(tmp_path: Path, certs: CertFiles) -> None:
    """The control for the chain test: without the intermediate the same client refuses."""
    leaf_only = issue(tmp_path, certs.ca, chain=False)
    context = tls.server_context(leaf_only.certificate, leaf_only.private_key)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(context, certs.client_context())


class _Live:
    """A TlsContexts over files at fixed paths, as a server config names them."""

    def __init__(self, directory: Path, certs: CertFiles) -> None:
        directory.mkdir()
        self.certificate = directory / "fullchain.pem"
        self.private_key = directory / "privkey.pem"
        self.install(certs)
        self.contexts = tls.TlsContexts(self.certificate, self.private_key)

    def install(self, certs: CertFiles, key: Path | None = None) -> None:
        self.certificate.write_bytes(certs.certificate.read_bytes())
        self.private_key.write_bytes((key or certs.private_key).read_bytes())

    def serial(self, client: ssl.SSLContext) -> int:
        return handshake(self.contexts.current, client).serial


def test_reload_swaps_the_certificate_for_new_handshakes(tmp_path: Path, certs: CertFiles) -> None:
    live = _Live(tmp_path / "live", certs)
    new = issue(tmp_path, certs.ca)
    assert new.serial != certs.serial
    live.install(new)
    live.contexts.reload()
    assert live.serial(certs.client_context()) == new.serial


def test_reload_with_a_mismatched_key_raises_and_keeps_the_old_certificate(
    tmp_path: Path, certs: CertFiles
) -> None:
    live = _Live(tmp_path / "live", certs)
    new = issue(tmp_path, certs.ca)
    live.install(new, key=certs.private_key)
    with pytest.raises(ssl.SSLError):
        live.contexts.reload()
    assert live.serial(certs.client_context()) == certs.serial


def test_reload_with_a_truncated_certificate_keeps_the_old_one(
    tmp_path: Path, certs: CertFiles
) -> None:
    live = _Live(tmp_path / "live", certs)
    data = live.certificate.read_bytes()
    live.certificate.write_bytes(data[: len(data) // 3])
    with pytest.raises(ssl.SSLError):
        live.contexts.reload()
    assert live.serial(certs.client_context()) == certs.serial


def test_reload_with_a_missing_file_keeps_the_old_one(tmp_path: Path, certs: CertFiles) -> None:
    live = _Live(tmp_path / "live", certs)
    live.certificate.unlink()
    with pytest.raises(OSError):
        live.contexts.reload()
    assert live.serial(certs.client_context()) == certs.serial


@pytest.mark.parametrize(("old", "new"), [("ecdsa", "rsa"), ("rsa", "ecdsa")])
def test_reload_to_another_key_type_never_serves_the_old_certificate(
    tmp_path: Path, all_certs: dict[str, CertFiles], old: str, new: str
) -> None:
    # An SSLContext keeps one certificate per key type: loading the new chain into the live
    # context would leave the old one served to clients that prefer its key type.
    current = all_certs[old]
    live = _Live(tmp_path / "live", current)
    replacement = issue(tmp_path, current.ca, key_type=_KEY_TYPES[new])
    live.install(replacement)
    live.contexts.reload()
    # A default client, and a TLS 1.2 client that can only use the old key type.
    default = current.client_context()
    old_kind_only = current.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    old_kind_only.set_ciphers(f"ECDHE-{old.upper()}-AES128-GCM-SHA256")
    served = []
    for client in (default, old_kind_only):
        try:
            served.append(live.serial(client))
        except ssl.SSLError:
            continue  # refusing is fine; serving the replaced certificate is not
    assert current.serial not in served
    assert replacement.serial in served


# Groups that OpenSSL offers by default and Mozilla's profiles leave out, with the versions
# they can be negotiated in (finite-field groups only as TLS 1.3 groups: no DHE suites).
_OUTSIDE_GROUPS = [
    ("X448", ssl.TLSVersion.TLSv1_2),
    ("X448", ssl.TLSVersion.TLSv1_3),
    ("P-521", ssl.TLSVersion.TLSv1_2),
    ("P-521", ssl.TLSVersion.TLSv1_3),
    ("ffdhe2048", ssl.TLSVersion.TLSv1_3),
    ("ffdhe8192", ssl.TLSVersion.TLSv1_3),
]


def _client_offering(certs: CertFiles, group: str, version: ssl.TLSVersion) -> ssl.SSLContext:
    client = certs.client_context(minimum_version=version, maximum_version=version)
    tls.set_groups(client, group)  # the client offers this group alone
    return client


def _certs_for(all_certs: dict[str, CertFiles], key: str, version: ssl.TLSVersion) -> CertFiles:
    """TLS 1.2 lets an ECDSA certificate be used only with a curve the client offers (RFC
    8422 section 5.1), so a client offering one other group cannot use the P-256 one there."""
    return all_certs["rsa" if version == ssl.TLSVersion.TLSv1_2 else key]


@pytest.mark.parametrize("key", list(_KEY_TYPES))
@pytest.mark.parametrize(("group", "version"), _OUTSIDE_GROUPS)
def test_groups_outside_the_profiles_are_refused(
    all_certs: dict[str, CertFiles], key: str, group: str, version: ssl.TLSVersion
) -> None:
    certs = _certs_for(all_certs, key, version)
    context = tls.server_context(certs.certificate, certs.private_key)
    client = _client_offering(certs, group, version)
    # The control: OpenSSL's own defaults accept the group.
    assert handshake(_permissive_server(certs), client).version is not None
    with pytest.raises(ssl.SSLError):
        handshake(context, client)


@pytest.mark.parametrize("key", list(_KEY_TYPES))
@pytest.mark.parametrize("group", ["X25519", "P-256", "P-384"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_the_profiles_groups_are_accepted(
    all_certs: dict[str, CertFiles], key: str, group: str, version: ssl.TLSVersion
) -> None:
    certs = _certs_for(all_certs, key, version)
    context = tls.server_context(certs.certificate, certs.private_key)
    result = handshake(context, _client_offering(certs, group, version))
    assert result.version == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


def test_modern_profile_is_tls13_only(certs: CertFiles) -> None:
    modern = tls.server_context(certs.certificate, certs.private_key, "modern")
    tls12 = certs.client_context(
        minimum_version=ssl.TLSVersion.TLSv1_2, maximum_version=ssl.TLSVersion.TLSv1_2
    )
    assert handshake(tls.server_context(certs.certificate, certs.private_key), tls12).version
    with pytest.raises(ssl.SSLError):
        handshake(modern, tls12)
    assert handshake(modern, certs.client_context()).version == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        handshake(modern, _client_offering(certs, "X448", ssl.TLSVersion.TLSv1_3))


def test_set_groups_refuses_a_context_it_cannot_vouch_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.set_groups(context, tls.GROUPS)  # loads the library
    assert tls._libssl is not None
    # OpenSSL reporting other options than Python means the pointer is not this context's.
    monkeypatch.setattr(tls._libssl, "get_options", lambda pointer: 0)
    with pytest.raises(tls.TlsPolicyError, match="does not belong"):
        tls.set_groups(context, tls.GROUPS)


def test_set_groups_refuses_unknown_groups() -> None:
    with pytest.raises(tls.TlsPolicyError, match="refused the group list"):
        tls.set_groups(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), "X25519:no-such-group")
