"""The mesh CA, SPIFFE ids, credentials folders and the stream authorization check."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshext.envoy import tls
from meshext.identity import ca as mesh_ca
from meshext.identity.authority import CaSettings
from meshext.identity.credentials import issue_credentials, read_identity
from meshext.identity.errors import IdentityError
from meshext.identity.issuance import renew_due
from meshext.identity.peer import MeshStreamSecurity, ServerCertificate, spiffe_id_of
from meshext.identity.spiffe import SpiffeId, parse_spiffe_id
from meshext.xds.server import StreamDenied
from meshext.xds.types import Node

BOOKINFO = SpiffeId("cluster.local", "bookinfo", "default")


def test_a_spiffe_id_reads_back_as_written() -> None:
    uri = "spiffe://cluster.local/ns/bookinfo/sa/reviews"
    assert parse_spiffe_id(uri) == SpiffeId("cluster.local", "bookinfo", "reviews")
    assert parse_spiffe_id(uri).uri == uri


@pytest.mark.parametrize(
    "uri",
    [
        "https://cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a",
        "spiffe://cluster.local/sa/b/ns/a",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "spiffe://Bad_Domain/ns/a/sa/b",
        "spiffe://cluster.local/ns/../sa/b",
    ],
)
def test_other_shapes_are_not_spiffe_ids_of_a_workload(uri: str) -> None:
    with pytest.raises(IdentityError):
        parse_spiffe_id(uri)


def test_a_workload_certificate_chains_to_the_ca_and_names_its_identity() -> None:
    ca = mesh_ca.create("cluster.local")
    issued = ca.issue_workload(BOOKINFO)
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    cert.verify_directly_issued_by(ca.certificate)
    assert spiffe_id_of(cert) == BOOKINFO
    assert issued.not_after - datetime.now(UTC) <= mesh_ca.WORKLOAD_LIFETIME
    assert issued.renew_after() < issued.not_after
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca is False


def test_a_ca_signs_only_its_own_trust_domain() -> None:
    ca = mesh_ca.create("cluster.local")
    with pytest.raises(IdentityError, match="trust domain"):
        ca.issue_workload(SpiffeId("other.example", "bookinfo", "default"))


def test_the_ca_is_created_once_with_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    first = mesh_ca.load_or_create(tmp_path / "ca", "cluster.local")
    again = mesh_ca.load_or_create(tmp_path / "ca", "cluster.local")
    assert first.certificate == again.certificate
    mode = stat.S_IMODE((tmp_path / "ca" / mesh_ca.CA_KEY_FILE).stat().st_mode)
    assert mode == 0o600
    with pytest.raises(IdentityError, match=r"trust domain 'cluster\.local'"):
        mesh_ca.load_or_create(tmp_path / "ca", "other.example")


def test_the_operators_ca_files_and_an_older_root_make_the_bundle(tmp_path: Path) -> None:
    mesh_ca.load_or_create(tmp_path / "new", "cluster.local")
    old = mesh_ca.create("cluster.local")
    (tmp_path / "new" / mesh_ca.EXTRA_ROOTS_FILE).write_bytes(old.bundle_pem)
    settings = CaSettings(
        cert=tmp_path / "new" / mesh_ca.CA_CERT_FILE, key=tmp_path / "new" / mesh_ca.CA_KEY_FILE
    )
    ca = settings.load()
    assert x509.load_pem_x509_certificates(ca.bundle_pem)[1] == old.certificate


def test_a_ca_key_without_its_certificate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="both"):
        CaSettings(cert=tmp_path / "ca.crt").load()


def test_a_credentials_folder_holds_pem_files_and_sds_documents(tmp_path: Path) -> None:
    ca = mesh_ca.create("cluster.local")
    written = issue_credentials(ca, BOOKINFO, tmp_path / "creds")
    assert read_identity(tmp_path / "creds") == BOOKINFO
    assert stat.S_IMODE(written.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(written.files.certificate_sds).stat().st_mode) == 0o600
    document = json.loads(Path(written.files.certificate_sds).read_text())
    [secret] = document["resources"]
    assert secret["name"] == tls.WORKLOAD_SECRET
    assert secret["tls_certificate"]["certificate_chain"]["inline_string"] == (
        written.cert_path.read_text()
    )
    bundle = json.loads(Path(written.files.bundle_sds).read_text())["resources"][0]
    assert bundle["validation_context"]["trusted_ca"]["inline_string"] == ca.bundle_pem.decode()
    assert sorted(p.name for p in (tmp_path / "creds").iterdir()) == sorted(
        ["key.pem", "cert.pem", "ca.pem", tls.CERTIFICATE_SDS_FILE, tls.BUNDLE_SDS_FILE]
    )


def test_renewing_a_folder_replaces_key_and_certificate_together(tmp_path: Path) -> None:
    ca = mesh_ca.create("cluster.local")
    first = issue_credentials(ca, BOOKINFO, tmp_path)
    second = issue_credentials(ca, BOOKINFO, tmp_path)
    assert first.issued.key_pem != second.issued.key_pem
    secret = json.loads(Path(second.files.certificate_sds).read_text())["resources"][0]
    assert secret["tls_certificate"]["private_key"]["inline_string"] == (
        second.issued.key_pem.decode()
    )


def auth_context(cert_pem: bytes) -> dict[str, list[bytes]]:
    return {"x509_pem_cert": [cert_pem]}


def security() -> tuple[mesh_ca.CertificateAuthority, MeshStreamSecurity]:
    ca = mesh_ca.create("cluster.local")
    return ca, MeshStreamSecurity(ServerCertificate(ca, hosts=("10.0.0.1",)))


def test_a_node_in_the_certificates_namespace_is_authorized() -> None:
    ca, checker = security()
    issued = ca.issue_workload(BOOKINFO)
    node = Node(id="sidecar~a.bookinfo~1", metadata={"NAMESPACE": "bookinfo"})
    assert checker.authorize(auth_context(issued.cert_pem), node) == BOOKINFO.uri


def test_a_node_claiming_another_namespace_is_denied_naming_both() -> None:
    ca, checker = security()
    issued = ca.issue_workload(BOOKINFO)
    node = Node(id="sidecar~a.payments~1", metadata={"NAMESPACE": "payments"})
    with pytest.raises(StreamDenied) as denied:
        checker.authorize(auth_context(issued.cert_pem), node)
    assert "'payments'" in str(denied.value)
    assert BOOKINFO.uri in str(denied.value)
    assert denied.value.reason == "namespace mismatch"


def test_a_peer_without_a_certificate_or_spiffe_id_is_denied() -> None:
    _, checker = security()
    node = Node(id="n", metadata={"NAMESPACE": "bookinfo"})
    with pytest.raises(StreamDenied, match="no SPIFFE id"):
        checker.authorize({}, node)


def test_a_certificate_of_another_trust_domain_is_denied() -> None:
    _, checker = security()
    other = mesh_ca.create("other.example")
    issued = other.issue_workload(SpiffeId("other.example", "bookinfo", "default"))
    with pytest.raises(StreamDenied, match="trust domain"):
        checker.authorize(
            auth_context(issued.cert_pem), Node(id="n", metadata={"NAMESPACE": "bookinfo"})
        )


def test_the_server_certificate_names_its_hosts_and_is_reissued_at_half_life() -> None:
    _ca, checker = security()
    current = checker.server.current()
    cert = x509.load_pem_x509_certificate(current.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "10.0.0.1"}
    assert checker.server.current() is current
    later = current.renew_after() + timedelta(seconds=1)
    assert checker.server.current(now=later) is not current
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)


def test_serve_renews_only_the_folders_past_half_their_lifetime(tmp_path: Path) -> None:
    ca = mesh_ca.create("cluster.local")
    fresh = issue_credentials(ca, BOOKINFO, tmp_path / "bookinfo" / "default")
    foreign = mesh_ca.create("other.example")
    issue_credentials(
        foreign,
        SpiffeId("other.example", "payments", "default"),
        tmp_path / "payments" / "default",
    )
    (tmp_path / "junk" / "x").mkdir(parents=True)
    assert renew_due(ca, tmp_path) == []
    later = fresh.issued.renew_after() + timedelta(minutes=1)
    [renewed] = renew_due(ca, tmp_path, now=later)
    assert renewed.identity == BOOKINFO
    assert renewed.cert_path.read_bytes() != fresh.issued.cert_pem
    assert renewed.cert_path.read_bytes() == renewed.issued.cert_pem
