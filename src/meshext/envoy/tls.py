"""TLS for the connections a proxy opens to meshext: xDS and module fetches.

Pure config generation. A proxy's own key and certificate and the roots it trusts
reach Envoy through file-based SDS: two small discovery documents in the proxy's
credentials folder (:class:`CredentialFiles`), each holding one ``Secret`` with the
PEM inline. Envoy watches the folder, so a renewed certificate written there (by an
atomic rename) is used for the next handshake without a restart, and key and
certificate change together because they sit in one document.

The server is verified twice: its chain against the trust bundle, and its URI
subject alternative name against the control plane's SPIFFE id.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final

from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from google.protobuf import json_format

WORKLOAD_SECRET: Final = "meshext-workload"
TRUST_BUNDLE_SECRET: Final = "meshext-trust-bundle"
SECRET_TYPE: Final = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
UPSTREAM_TLS_TYPE: Final = (
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
)
TLS_SOCKET: Final = "envoy.transport_sockets.tls"

CERTIFICATE_FILE: Final = "cert.pem"
KEY_FILE: Final = "key.pem"
BUNDLE_FILE: Final = "ca.pem"
CERTIFICATE_SDS_FILE: Final = "workload.sds.json"
BUNDLE_SDS_FILE: Final = "trust-bundle.sds.json"


@dataclass(frozen=True)
class CredentialFiles:
    """A proxy's credentials folder, as paths on the proxy's host."""

    directory: str

    @property
    def certificate_sds(self) -> str:
        return f"{self.directory.rstrip('/')}/{CERTIFICATE_SDS_FILE}"

    @property
    def bundle_sds(self) -> str:
        return f"{self.directory.rstrip('/')}/{BUNDLE_SDS_FILE}"


def certificate_sds_document(key_pem: str, cert_pem: str) -> dict[str, Any]:
    """The SDS document holding a proxy's key and certificate."""
    secret = {
        "@type": SECRET_TYPE,
        "name": WORKLOAD_SECRET,
        "tls_certificate": {
            "certificate_chain": {"inline_string": cert_pem},
            "private_key": {"inline_string": key_pem},
        },
    }
    return _checked({"resources": [secret]})


def bundle_sds_document(bundle_pem: str) -> dict[str, Any]:
    """The SDS document holding the roots a proxy trusts."""
    secret = {
        "@type": SECRET_TYPE,
        "name": TRUST_BUNDLE_SECRET,
        "validation_context": {"trusted_ca": {"inline_string": bundle_pem}},
    }
    return _checked({"resources": [secret]})


def upstream_tls_socket(
    *,
    server_identity: str,
    sni: str,
    files: CredentialFiles | None = None,
    trusted_ca_pem: str | None = None,
) -> dict[str, Any]:
    """The transport socket of a cluster reaching meshext: the server must present a
    certificate for ``server_identity`` (a SPIFFE URI) chaining to the trust bundle,
    which comes from ``files`` (with the proxy's own certificate for client
    authentication) or, with no files, inline as ``trusted_ca_pem``."""
    san = {"san_type": "URI", "matcher": {"exact": server_identity}}
    common: dict[str, Any] = {}
    if files is not None:
        common["tls_certificate_sds_secret_configs"] = [
            _sds_secret(WORKLOAD_SECRET, files.certificate_sds, files.directory)
        ]
        common["combined_validation_context"] = {
            "default_validation_context": {"match_typed_subject_alt_names": [san]},
            "validation_context_sds_secret_config": _sds_secret(
                TRUST_BUNDLE_SECRET, files.bundle_sds, files.directory
            ),
        }
    elif trusted_ca_pem is not None:
        common["validation_context"] = {
            "trusted_ca": {"inline_string": trusted_ca_pem},
            "match_typed_subject_alt_names": [san],
        }
    else:
        raise ValueError("a TLS upstream needs credential files or a trusted CA")
    context: dict[str, Any] = {"@type": UPSTREAM_TLS_TYPE, "common_tls_context": common}
    if sni and not _is_ip(sni):
        context["sni"] = sni
    return {"name": TLS_SOCKET, "typed_config": context}


def upstream_tls_socket_proto(**kwargs: Any) -> base_pb2.TransportSocket:
    """:func:`upstream_tls_socket` as a protobuf message, for generated clusters."""
    return json_format.ParseDict(upstream_tls_socket(**kwargs), base_pb2.TransportSocket())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _sds_secret(name: str, path: str, directory: str) -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {
            "path_config_source": {"path": path, "watched_directory": {"path": directory}},
            "resource_api_version": "V3",
        },
    }


def _checked(document: dict[str, Any]) -> dict[str, Any]:
    for resource in document["resources"]:
        json_format.ParseDict(
            {k: v for k, v in resource.items() if k != "@type"}, secret_pb2.Secret()
        )
    return document


# Referenced so the descriptor pool knows the TLS context types ParseDict resolves.
_ = tls_pb2.UpstreamTlsContext
