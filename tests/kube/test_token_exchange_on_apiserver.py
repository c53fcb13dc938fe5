"""Exchanging service-account tokens for certificates, checked by a real API server."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshext.identity import ca as mesh_ca
from meshext.identity.authority import server_ssl_context
from meshext.identity.errors import IdentityError
from meshext.identity.exchange import (
    CERTIFICATES_PATH,
    ServiceAccount,
    TokenRejected,
    exchange_app,
    request_certificate,
)
from meshext.identity.peer import ServerCertificate, spiffe_id_of
from meshext.identity.spiffe import SpiffeId
from meshext.kube.client import KubeClient
from meshext.kube.token_review import KubeTokenAuthenticator
from meshext.server.modules import RunningServer, start_module_server
from tests.kube.support import Cluster, unique

pytestmark = pytest.mark.e2e


@pytest.fixture
async def authenticator(cluster: Cluster) -> AsyncIterator[KubeTokenAuthenticator]:
    client = await KubeClient.connect(cluster.api.kubeconfig_path)
    try:
        yield KubeTokenAuthenticator(client, "meshext")
    finally:
        await client.close()


@pytest.fixture
def account(cluster: Cluster) -> ServiceAccount:
    namespace = cluster.namespace(unique("workloads"))
    cluster.kubectl("create", "serviceaccount", "reviews", "-n", namespace)
    return ServiceAccount(namespace, "reviews")


def token(cluster: Cluster, account: ServiceAccount, audience: str) -> str:
    return cluster.kubectl(
        "create", "token", account.name, "-n", account.namespace, "--audience", audience
    ).strip()


@pytest.fixture
async def exchange(
    authenticator: KubeTokenAuthenticator,
) -> AsyncIterator[tuple[mesh_ca.CertificateAuthority, RunningServer]]:
    ca = mesh_ca.create("cluster.local")
    context = server_ssl_context(ServerCertificate(ca, hosts=()))
    server = await start_module_server(exchange_app(ca, authenticator), ssl_context=context)
    try:
        yield ca, server
    finally:
        await server.stop()


async def test_a_token_for_meshext_proves_its_service_account(
    cluster: Cluster, account: ServiceAccount, authenticator: KubeTokenAuthenticator
) -> None:
    assert await authenticator.authenticate(token(cluster, account, "meshext")) == account


async def test_a_token_for_another_audience_is_refused(
    cluster: Cluster, account: ServiceAccount, authenticator: KubeTokenAuthenticator
) -> None:
    with pytest.raises(TokenRejected):
        await authenticator.authenticate(token(cluster, account, "https://kubernetes.default.svc"))


async def test_a_forged_token_is_refused(authenticator: KubeTokenAuthenticator) -> None:
    with pytest.raises(TokenRejected, match="not authenticated"):
        await authenticator.authenticate("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtZSJ9.c2ln")


async def test_the_certificate_names_the_token_identity_whatever_the_request_asks(
    cluster: Cluster,
    account: ServiceAccount,
    exchange: tuple[mesh_ca.CertificateAuthority, RunningServer],
) -> None:
    ca, server = exchange
    key = ec.generate_private_key(ec.SECP256R1())
    other = "spiffe://cluster.local/ns/istio-system/sa/admin"
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(other)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    async with httpx.AsyncClient(verify=server_ca_context(ca)) as client:
        answer = await client.post(
            server.base_url + CERTIFICATES_PATH,
            headers={"Authorization": f"Bearer {token(cluster, account, 'meshext')}"},
            json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()},
        )
    assert answer.status_code == 200
    cert = x509.load_pem_x509_certificate(answer.json()["certificate"].encode())
    assert spiffe_id_of(cert) == SpiffeId("cluster.local", account.namespace, account.name)
    assert cert.public_key() == key.public_key()


async def test_a_refused_token_gets_no_certificate(
    cluster: Cluster,
    account: ServiceAccount,
    exchange: tuple[mesh_ca.CertificateAuthority, RunningServer],
    tmp_path: Path,
) -> None:
    ca, server = exchange
    wrong = token(cluster, account, "someone-else")
    with pytest.raises(IdentityError, match="401"):
        await request_certificate(server.base_url, wrong, ca.bundle_pem, tmp_path / "creds")
    assert not (tmp_path / "creds").exists()
    written = await request_certificate(
        server.base_url, token(cluster, account, "meshext"), ca.bundle_pem, tmp_path / "creds"
    )
    assert written.identity == SpiffeId("cluster.local", account.namespace, account.name)


def server_ca_context(ca: mesh_ca.CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=ca.bundle_pem.decode())
