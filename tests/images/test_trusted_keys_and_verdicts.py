"""Trusted keys are read strictly, and a verdict counts only a trusted signature over
the very digest judged."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from meshext.images.signatures import COSIGN_PAYLOAD_TYPE, FoundSignature, judge
from meshext.images.trust import (
    SignatureMode,
    SignaturePolicy,
    TrustConfigError,
    load_namespace_keys,
    load_trusted_keys,
    parse_public_keys,
)

DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


def public_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def payload(digest: str) -> bytes:
    document = {
        "critical": {
            "identity": {"docker-reference": "127.0.0.1:5000/x"},
            "image": {"docker-manifest-digest": digest},
            "type": COSIGN_PAYLOAD_TYPE,
        },
        "optional": None,
    }
    return json.dumps(document).encode()


def signed(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, data: bytes, where: str
) -> FoundSignature:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.sign(data)
    else:
        raw = key.sign(data, ec.ECDSA(hashes.SHA256()))
    return FoundSignature(data, base64.b64encode(raw).decode(), where)


def test_every_pem_and_pub_file_in_the_folder_is_trusted(tmp_path: Path) -> None:
    (tmp_path / "a.pub").write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "b.pem").write_bytes(public_pem(ed25519.Ed25519PrivateKey.generate()))
    (tmp_path / "README").write_text("not a key")
    keys = load_trusted_keys(tmp_path)
    assert [(k.name, k.algorithm) for k in keys] == [("a.pub", "ecdsa-p256"), ("b.pem", "ed25519")]
    assert all(len(k.fingerprint) == 16 for k in keys)


def test_a_folder_without_keys_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(TrustConfigError, match=str(tmp_path)):
        load_trusted_keys(tmp_path)


def test_a_key_file_that_holds_a_private_key_is_refused(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "oops.pem").write_bytes(private)
    with pytest.raises(TrustConfigError, match=r"oops\.pem: no PEM .PUBLIC KEY. block"):
        load_trusted_keys(tmp_path)


def test_rsa_and_other_curves_are_refused_by_name() -> None:
    rsa_pem = public_pem(rsa.generate_private_key(65537, 2048))  # type: ignore[arg-type]
    with pytest.raises(TrustConfigError, match="RSAPublicKey keys are not supported"):
        parse_public_keys(rsa_pem, "rsa.pub")
    p384 = public_pem(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(TrustConfigError, match="secp384r1 is not supported"):
        parse_public_keys(p384, "p384.pub")


def test_a_garbled_public_key_is_an_error_naming_the_file() -> None:
    garbled = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    with pytest.raises(TrustConfigError, match=r"bad\.pub: not a readable public key"):
        parse_public_keys(garbled, "bad.pub")


def test_enforcing_without_keys_is_a_configuration_error() -> None:
    with pytest.raises(TrustConfigError, match="needs trusted keys"):
        SignaturePolicy(SignatureMode.ENFORCE, ())


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519"])
def test_a_signature_by_a_trusted_key_over_the_digest_is_verified(algorithm: str) -> None:
    private: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if algorithm == "ecdsa"
        else ed25519.Ed25519PrivateKey.generate()
    )
    keys = parse_public_keys(public_pem(private), "ci.pub")
    verdict = judge(DIGEST, (signed(private, payload(DIGEST), "tag x.sig"),), keys, "tag x.sig")
    assert verdict.verified
    assert str(verdict.signer) == f"{keys[0]}, cosign signature"
    assert verdict.found_via == "tag x.sig"


def test_a_valid_signature_over_another_digest_does_not_count() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    keys = parse_public_keys(public_pem(private), "ci.pub")
    verdict = judge(DIGEST, (signed(private, payload(OTHER), "tag x.sig"),), keys, "tag x.sig")
    assert not verdict.verified
    assert f"for image {OTHER}, not this one" in verdict.explain()
    assert DIGEST in verdict.explain()


def test_a_payload_altered_after_signing_is_signed_by_no_trusted_key() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    keys = parse_public_keys(public_pem(private), "ci.pub")
    genuine = signed(private, payload(OTHER), "tag x.sig")
    forged = FoundSignature(payload(DIGEST), genuine.signature_b64, "tag x.sig")
    verdict = judge(DIGEST, (forged,), keys, "tag x.sig")
    assert not verdict.verified
    assert "tag x.sig: signed by no trusted key" in verdict.explain()


def test_garbage_payloads_and_signatures_are_reported_not_raised() -> None:
    keys = parse_public_keys(public_pem(ec.generate_private_key(ec.SECP256R1())), "ci.pub")
    found = (
        FoundSignature(b"{not json", "AAAA", "layer 1"),
        FoundSignature(payload(DIGEST), "!!not base64!!", "layer 2"),
        FoundSignature(b'{"critical": {"type": "other", "image": {}}}', "AAAA", "layer 3"),
    )
    verdict = judge(DIGEST, found, keys, "tag x.sig")
    assert not verdict.verified
    text = verdict.explain()
    assert "layer 1: unreadable (the payload is not JSON)" in text
    assert "layer 2: unreadable (the signature is not base64)" in text
    assert "layer 3: unreadable" in text


def test_no_signature_at_all_says_where_it_looked() -> None:
    keys = parse_public_keys(public_pem(ec.generate_private_key(ec.SECP256R1())), "ci.pub")
    verdict = judge(DIGEST, (), keys, "tag sha256-aaa.sig")
    assert verdict.explain() == (
        f"image {DIGEST} has no cosign signature or sigstore bundle (looked for tag sha256-aaa.sig)"
    )


def test_namespace_subfolders_add_keys_for_that_namespace_only(tmp_path: Path) -> None:
    (tmp_path / "mesh.pub").write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "team-a").mkdir()
    (tmp_path / "team-a" / "ci.pem").write_bytes(public_pem(ed25519.Ed25519PrivateKey.generate()))
    policy = SignaturePolicy(
        SignatureMode.ENFORCE, load_trusted_keys(tmp_path), load_namespace_keys(tmp_path)
    )
    assert [k.name for k in policy.keys_for("team-a")] == ["mesh.pub", "team-a/ci.pem"]
    assert [k.name for k in policy.keys_for("team-b")] == ["mesh.pub"]


def test_a_subfolder_that_is_not_a_namespace_name_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "mesh.pub").write_bytes(public_pem(ec.generate_private_key(ec.SECP256R1())))
    (tmp_path / "Team_A").mkdir()
    with pytest.raises(TrustConfigError, match="'Team_A' is not a namespace name"):
        load_namespace_keys(tmp_path)
