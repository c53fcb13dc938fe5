"""The CA bundle written into the ServiceMeshExtension CRD, without an API server."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from meshext.kube.cainjector import CaBundleError, ca_bundle_of, ca_bundle_patch, read_ca_bundle
from meshext.kube.certs import self_signed
from meshext.kube.crds import ConversionWebhook, custom_resource_definitions


def test_the_patch_sets_only_the_bundle_of_the_conversion_webhook(tmp_path: Path) -> None:
    ca, _, _ = self_signed(["meshext.meshext-system.svc"]).write(tmp_path)
    pem = read_ca_bundle(ca)
    patch = ca_bundle_patch("servicemeshextensions.maistra.io", pem)
    assert patch["metadata"] == {"name": "servicemeshextensions.maistra.io"}
    assert patch["spec"] == {
        "conversion": {
            "strategy": "Webhook",
            "webhook": {"clientConfig": {"caBundle": base64.b64encode(pem).decode()}},
        }
    }
    assert ca_bundle_of(patch) == base64.b64encode(pem).decode()


def test_the_generated_crd_has_no_bundle_until_one_is_given() -> None:
    (sme, *_) = custom_resource_definitions()
    assert ca_bundle_of(sme) == ""
    (with_ca, *_) = custom_resource_definitions(ConversionWebhook(ca_bundle=b"pem"))
    assert ca_bundle_of(with_ca) == base64.b64encode(b"pem").decode()


def test_a_ca_file_without_a_certificate_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ca.crt"
    path.write_text("not a certificate")
    with pytest.raises(CaBundleError, match="no PEM certificate"):
        read_ca_bundle(path)
    with pytest.raises(CaBundleError, match="cannot read"):
        read_ca_bundle(tmp_path / "absent.crt")
