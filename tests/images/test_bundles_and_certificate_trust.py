"""Sigstore bundles are read strictly and count only for the digest they name, signed by
a trusted key or by a certificate of a trusted authority naming a trusted identity;
the certificate trust files are read strictly too."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path

import click
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from meshext.cli.trust_options import signature_policy
from meshext.images.certificate_trust import (
    CertificateTrust,
    TrustedIdentity,
    load_certificate_trust,
)
from meshext.images.sigstore_bundle import (
    BUNDLE_ARTIFACT,
    IN_TOTO_PAYLOAD_TYPE,
    BundleError,
    FoundBundle,
    judge_bundles,
    pae,
    parse_bundle,
)
from meshext.images.trust import SignatureMode, TrustConfigError, TrustedKey, parse_public_keys
from tests.images.signing_certificates import (
    ISSUER,
    SigningAuthority,
    identities_yaml,
    trusted_root_json,
)

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def statement(*digests: str) -> bytes:
    subjects = [{"name": "", "digest": {"sha256": d.removeprefix("sha256:")}} for d in digests]
    return json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": subjects,
            "predicateType": "https://sigstore.dev/cosign/sign/v1",
        }
    ).encode()


def dsse_bundle(
    private: ec.EllipticCurvePrivateKey, payload: bytes, certificate_der: bytes | None = None
) -> bytes:
    signature = private.sign(pae(IN_TOTO_PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    material: dict[str, object] = {"publicKey": {"hint": "x"}}
    if certificate_der is not None:
        material = {"certificate": {"rawBytes": base64.b64encode(certificate_der).decode()}}
    return json.dumps(
        {
            "mediaType": BUNDLE_ARTIFACT,
            "verificationMaterial": material,
            "dsseEnvelope": {
                "payload": base64.b64encode(payload).decode(),
                "payloadType": IN_TOTO_PAYLOAD_TYPE,
                "signatures": [{"sig": base64.b64encode(signature).decode()}],
            },
        }
    ).encode()


def trusted(private: ec.EllipticCurvePrivateKey, name: str = "ci.pub") -> tuple[TrustedKey, ...]:
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return parse_public_keys(pem, name)


def test_a_dsse_bundle_by_a_trusted_key_for_the_digest_is_verified() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    found = (FoundBundle(dsse_bundle(private, statement(DIGEST)), "referrers API x"),)
    verdict = judge_bundles(DIGEST, found, trusted(private), None, "here")
    assert verdict.verified
    assert str(verdict.signer).endswith(", sigstore bundle")
    assert verdict.found_via == "referrers API x"


def test_a_bundle_naming_another_digest_counts_for_nothing_even_if_genuine() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    found = (FoundBundle(dsse_bundle(private, statement(OTHER)), "r"),)
    verdict = judge_bundles(DIGEST, found, trusted(private), None, "here")
    assert not verdict.verified
    assert verdict.findings == (f"r: a DSSE envelope for {OTHER}, not this image",)


def test_a_message_signature_bundle_over_the_manifest_is_verified_by_key() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    manifest = b'{"schemaVersion":2}'
    digest = hashlib.sha256(manifest).digest()
    signature = private.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    bundle = json.dumps(
        {
            "mediaType": "application/vnd.dev.sigstore.bundle+json;version=0.2",
            "verificationMaterial": {"publicKey": {"hint": ""}},
            "messageSignature": {
                "messageDigest": {
                    "algorithm": "SHA2_256",
                    "digest": base64.b64encode(digest).decode(),
                },
                "signature": base64.b64encode(signature).decode(),
            },
        }
    ).encode()
    verdict = judge_bundles(
        f"sha256:{digest.hex()}", (FoundBundle(bundle, "r"),), trusted(private), None, "here"
    )
    assert verdict.verified, verdict.findings


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: b.update(mediaType="application/json"), "is not a Sigstore bundle"),
        (lambda b: b["dsseEnvelope"].update(payloadType="text/plain"), "payloadType"),
        (lambda b: b["dsseEnvelope"].update(payload="%%%"), "dsseEnvelope.payload is not base64"),
        (lambda b: b["dsseEnvelope"]["signatures"].append({"sig": ""}), "exactly one signature"),
        (lambda b: b.pop("dsseEnvelope"), "neither dsseEnvelope nor messageSignature"),
        (
            lambda b: b.update(verificationMaterial={"certificate": {"rawBytes": "AAAA"}}),
            "the certificate is unreadable",
        ),
    ],
)
def test_a_malformed_bundle_is_a_finding_naming_the_field(change: object, reason: str) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    document = json.loads(dsse_bundle(private, statement(DIGEST)))
    change(document)  # type: ignore[operator]
    with pytest.raises(BundleError, match=reason):
        parse_bundle(json.dumps(document).encode())
    verdict = judge_bundles(
        DIGEST, (FoundBundle(json.dumps(document).encode(), "r"),), trusted(private), None, "x"
    )
    assert not verdict.verified
    assert verdict.findings[0].startswith("r: unreadable bundle (")


def test_a_statement_that_is_not_in_toto_is_refused() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    payload = json.dumps({"_type": "something else", "subject": []}).encode()
    with pytest.raises(BundleError, match="is not in-toto's"):
        parse_bundle(dsse_bundle(private, payload))


def certified_bundle(
    authority: SigningAuthority, tmp_path: Path, email: str, *, code_signing: bool = True
) -> bytes:
    private = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "signer.pub"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    leaf = authority.certify(public, email, tmp_path / "leaf.pem", code_signing=code_signing)
    der = x509.load_pem_x509_certificate(leaf.read_bytes()).public_bytes(serialization.Encoding.DER)
    return dsse_bundle(private, statement(DIGEST), der)


def certificate_trust(
    authority: SigningAuthority, *identities: TrustedIdentity
) -> CertificateTrust:
    intermediates = (authority.intermediate,) if authority.intermediate else ()
    return CertificateTrust((authority.root,), intermediates, identities)


def test_a_certificate_of_a_trusted_authority_naming_a_trusted_identity_signs(
    tmp_path: Path,
) -> None:
    authority = SigningAuthority.generate("ci", intermediate=True)
    bundle = certified_bundle(authority, tmp_path, "ci@example.com")
    trust = certificate_trust(authority, TrustedIdentity("ci@example.com", ISSUER))
    verdict = judge_bundles(DIGEST, (FoundBundle(bundle, "r"),), (), trust, "x")
    assert verdict.verified, verdict.findings
    assert str(verdict.signer) == (
        f"ci@example.com (issuer {ISSUER}, CA CN=ci root), sigstore bundle"
    )


def test_an_identity_without_issuer_matches_any_issuer_but_a_named_one_must_match(
    tmp_path: Path,
) -> None:
    authority = SigningAuthority.generate("ci")
    bundle = (FoundBundle(certified_bundle(authority, tmp_path, "ci@example.com"), "r"),)
    anyone = certificate_trust(authority, TrustedIdentity("ci@example.com"))
    assert judge_bundles(DIGEST, bundle, (), anyone, "x").verified
    elsewhere = certificate_trust(authority, TrustedIdentity("ci@example.com", "https://other"))
    refused = judge_bundles(DIGEST, bundle, (), elsewhere, "x")
    assert not refused.verified
    assert "which is no trusted identity" in refused.findings[0]


def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    authority = SigningAuthority.generate("ci")
    bundle = (FoundBundle(certified_bundle(authority, tmp_path, "ci@example.com"), "r"),)
    trust = certificate_trust(authority, TrustedIdentity("ci@example.com"))
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=30)
    verdict = judge_bundles(DIGEST, bundle, (), trust, "x", at=later)
    assert not verdict.verified
    assert "does not chain to a trusted authority" in verdict.findings[0]


def test_a_certificate_not_for_code_signing_is_refused(tmp_path: Path) -> None:
    authority = SigningAuthority.generate("ci")
    bundle = certified_bundle(authority, tmp_path, "ci@example.com", code_signing=False)
    trust = certificate_trust(authority, TrustedIdentity("ci@example.com"))
    verdict = judge_bundles(DIGEST, (FoundBundle(bundle, "r"),), (), trust, "x")
    assert not verdict.verified
    assert "code signing" in verdict.findings[0]


def test_a_certificate_bundle_without_certificate_trust_says_so(tmp_path: Path) -> None:
    authority = SigningAuthority.generate("ci")
    bundle = certified_bundle(authority, tmp_path, "ci@example.com")
    verdict = judge_bundles(DIGEST, (FoundBundle(bundle, "r"),), (), None, "x")
    assert verdict.findings == (
        "r: signed with a certificate, and no certificate authority is trusted",
    )


def test_a_folder_without_certificate_files_configures_no_certificate_trust(
    tmp_path: Path,
) -> None:
    assert load_certificate_trust(tmp_path) is None


def test_authorities_without_identities_are_an_error_naming_the_folder(tmp_path: Path) -> None:
    SigningAuthority.generate("ci").write_root(tmp_path / "ci.crt")
    with pytest.raises(TrustConfigError, match=f"{tmp_path}: .*identities.yaml names no identity"):
        load_certificate_trust(tmp_path)


def test_identities_without_authorities_are_an_error(tmp_path: Path) -> None:
    identities_yaml(tmp_path / "identities.yaml", ("ci@example.com", None))
    with pytest.raises(TrustConfigError, match="no certificate authority is trusted"):
        load_certificate_trust(tmp_path)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("identities: []\n", "'identities' must be a non-empty list"),
        ("identities:\n  - issuer: x\n", r"identities\[0\]\.subject must be a non-empty string"),
        ("identities:\n  - subject: a\n    san: b\n", r"identities\[0\] has unknown fields"),
        ("identities: [a\n", "not YAML"),
    ],
)
def test_a_bad_identities_file_is_an_error_naming_file_and_field(
    tmp_path: Path, text: str, reason: str
) -> None:
    SigningAuthority.generate("ci").write_root(tmp_path / "ci.crt")
    (tmp_path / "identities.yaml").write_text(text)
    with pytest.raises(TrustConfigError, match=f"identities.yaml: {reason}"):
        load_certificate_trust(tmp_path)


def test_a_trusted_root_is_read_into_anchors_and_intermediates(tmp_path: Path) -> None:
    authority = SigningAuthority.generate("ci", intermediate=True)
    trusted_root_json(tmp_path / "trusted_root.json", authority)
    identities_yaml(tmp_path / "identities.yaml", ("ci@example.com", ISSUER))
    trust = load_certificate_trust(tmp_path)
    assert trust is not None
    assert trust.anchors == (authority.root,)
    assert trust.intermediates == (authority.intermediate,)
    assert trust.identities == (TrustedIdentity("ci@example.com", ISSUER),)


def test_a_trusted_root_without_certificate_bytes_is_an_error_naming_the_field(
    tmp_path: Path,
) -> None:
    (tmp_path / "trusted_root.json").write_text(
        json.dumps({"certificateAuthorities": [{"certChain": {"certificates": [{}]}}]})
    )
    with pytest.raises(
        TrustConfigError,
        match=r"certificateAuthorities\[0\]\.certChain\.certificates\[0\]\.rawBytes is missing",
    ):
        load_certificate_trust(tmp_path)


def test_a_trust_folder_with_only_certificate_trust_enforces_without_keys(
    tmp_path: Path,
) -> None:
    SigningAuthority.generate("ci").write_root(tmp_path / "ci.crt")
    identities_yaml(tmp_path / "identities.yaml", ("ci@example.com", None))
    policy = signature_policy(tmp_path, None)
    assert policy.mode is SignatureMode.ENFORCE
    assert policy.keys == ()
    assert policy.certificates is not None


def test_a_trust_folder_with_neither_keys_nor_certificates_is_a_usage_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(click.BadParameter, match=r"holds no \*\.pem or \*\.pub public key"):
        signature_policy(tmp_path, "enforce")
