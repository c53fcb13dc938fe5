"""How the operator's, a mesh's and a namespace's keys and modes combine for one
namespace, and how the scoped verifier applies the result."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshext.images.certificate_trust import CertificateTrust, TrustedIdentity
from meshext.images.scoped_verification import ScopedSignatureVerifier, signature_scope
from meshext.images.trust import (
    SIGNATURES_OFF,
    SignatureMode,
    SignaturePolicy,
    TrustedKey,
    parse_public_keys,
)
from meshext.images.trust_scopes import (
    KeySet,
    MeshSignatures,
    ScopedTrust,
    parse_key_entries,
    scoped_trust,
    strictest,
)
from meshext.images.verification import SignatureRefused
from tests.images.signing_certificates import SigningAuthority

MESH = "istio-system"
TEAM = "team-a"


def pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def trusted(key: ec.EllipticCurvePrivateKey, name: str) -> TrustedKey:
    (parsed,) = parse_public_keys(pem(key).encode(), name)
    return parsed


@pytest.fixture(scope="module")
def mesh_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def team_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def operator_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def mesh_settings(
    mode: str | None, *keys: TrustedKey, problems: tuple[str, ...] = ()
) -> MeshSignatures:
    return MeshSignatures(
        "ServiceMeshControlPlane istio-system/basic", mode, KeySet(keys, problems)
    )


def names(trust: ScopedTrust) -> list[str]:
    return [k.name for k in trust.keys]


def test_the_strictest_mode_wins() -> None:
    assert strictest(SignatureMode.OFF, SignatureMode.WARN) is SignatureMode.WARN
    assert strictest(SignatureMode.ENFORCE, SignatureMode.OFF) is SignatureMode.ENFORCE
    assert strictest() is SignatureMode.OFF


def test_without_a_mesh_mode_the_operator_policy_applies(
    operator_key: ec.EllipticCurvePrivateKey,
) -> None:
    operator = SignaturePolicy(SignatureMode.WARN, (trusted(operator_key, "ci.pub"),))
    trust = scoped_trust(operator, TEAM, mesh_namespace=MESH, mesh=mesh_settings(None))
    assert trust.mode is SignatureMode.WARN
    assert names(trust) == ["ci.pub"]
    assert "--signature-policy" in trust.decided_by


def test_a_mesh_turns_enforcement_on_with_its_keys_for_every_namespace(
    mesh_key: ec.EllipticCurvePrivateKey,
) -> None:
    settings = mesh_settings("enforce", trusted(mesh_key, "ConfigMap istio-system/keys:ci"))
    for namespace in (MESH, TEAM, "team-b"):
        trust = scoped_trust(SIGNATURES_OFF, namespace, mesh_namespace=MESH, mesh=settings)
        assert trust.mode is SignatureMode.ENFORCE
        assert names(trust) == ["ConfigMap istio-system/keys:ci"]
        assert trust.decided_by == "ServiceMeshControlPlane istio-system/basic"


def test_a_mesh_cannot_weaken_the_operator_mode(
    operator_key: ec.EllipticCurvePrivateKey,
) -> None:
    operator = SignaturePolicy(SignatureMode.ENFORCE, (trusted(operator_key, "ci.pub"),))
    trust = scoped_trust(operator, TEAM, mesh_namespace=MESH, mesh=mesh_settings("off"))
    assert trust.mode is SignatureMode.ENFORCE


def test_namespace_keys_count_for_that_namespace_only(
    mesh_key: ec.EllipticCurvePrivateKey, team_key: ec.EllipticCurvePrivateKey
) -> None:
    settings = mesh_settings("enforce", trusted(mesh_key, "mesh"))
    published = [KeySet((trusted(team_key, "team"),))]
    own = scoped_trust(
        SIGNATURES_OFF, TEAM, mesh_namespace=MESH, mesh=settings, namespace_keys=published
    )
    assert names(own) == ["mesh", "team"]
    other = scoped_trust(SIGNATURES_OFF, "team-b", mesh_namespace=MESH, mesh=settings)
    assert names(other) == ["mesh"]
    assert own.identity != other.identity


def test_keys_published_for_the_control_plane_namespace_by_a_member_are_ignored(
    mesh_key: ec.EllipticCurvePrivateKey, team_key: ec.EllipticCurvePrivateKey
) -> None:
    settings = mesh_settings("enforce", trusted(mesh_key, "mesh"))
    trust = scoped_trust(
        SIGNATURES_OFF,
        MESH,
        mesh_namespace=MESH,
        mesh=settings,
        namespace_keys=[KeySet((trusted(team_key, "team"),))],
    )
    assert names(trust) == ["mesh"]


def test_namespace_keys_never_turn_checks_on_or_off(
    mesh_key: ec.EllipticCurvePrivateKey, team_key: ec.EllipticCurvePrivateKey
) -> None:
    published = [KeySet((trusted(team_key, "team"),))]
    for mode in (None, "off", "warn", "enforce"):
        expected = SignatureMode(mode) if mode else SignatureMode.OFF
        trust = scoped_trust(
            SIGNATURES_OFF,
            TEAM,
            mesh_namespace=MESH,
            mesh=mesh_settings(mode, trusted(mesh_key, "mesh")),
            namespace_keys=published,
        )
        assert trust.mode is expected


def test_operator_namespace_folders_still_count(
    operator_key: ec.EllipticCurvePrivateKey, team_key: ec.EllipticCurvePrivateKey
) -> None:
    operator = SignaturePolicy(
        SignatureMode.ENFORCE,
        (trusted(operator_key, "ci.pub"),),
        ((TEAM, (trusted(team_key, "team-a/ci.pub"),)),),
    )
    trust = scoped_trust(operator, TEAM, mesh_namespace=MESH, mesh=mesh_settings(None))
    assert names(trust) == ["ci.pub", "team-a/ci.pub"]


def test_a_misspelt_mesh_mode_fails_closed_and_says_so() -> None:
    trust = scoped_trust(SIGNATURES_OFF, TEAM, mesh_namespace=MESH, mesh=mesh_settings("enfroce"))
    assert trust.mode is SignatureMode.ENFORCE
    assert any("'enfroce' is not one of off, warn, enforce" in p for p in trust.problems)


def test_a_key_published_twice_is_trusted_once_under_its_first_name(
    mesh_key: ec.EllipticCurvePrivateKey,
) -> None:
    trust = scoped_trust(
        SIGNATURES_OFF,
        TEAM,
        mesh_namespace=MESH,
        mesh=mesh_settings("warn", trusted(mesh_key, "mesh")),
        namespace_keys=[KeySet((trusted(mesh_key, "team copy"),))],
    )
    assert names(trust) == ["mesh"]


def test_an_entry_that_is_not_a_key_is_named_and_the_others_still_count(
    mesh_key: ec.EllipticCurvePrivateKey,
) -> None:
    found = parse_key_entries(
        {
            "good.pub": pem(mesh_key),
            "bad.pub": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "note": "hello",
        },
        "ConfigMap team-a/keys",
    )
    assert [k.name for k in found.keys] == ["ConfigMap team-a/keys:good.pub"]
    assert any(
        p.startswith("ConfigMap team-a/keys:bad.pub: not a readable public key")
        for p in found.problems
    )
    assert any(p.startswith("ConfigMap team-a/keys:note: no PEM") for p in found.problems)


def test_an_enforcing_scope_without_keys_refuses_and_says_where_keys_go(tmp_path: Path) -> None:
    module, cached = tmp_path / "m.wasm", tmp_path / "cached.wasm"
    module.write_bytes(b"\0asm")
    cached.write_bytes(b"\0asm")
    trust = scoped_trust(
        SIGNATURES_OFF,
        TEAM,
        mesh_namespace=MESH,
        mesh=MeshSignatures(
            "ServiceMeshControlPlane istio-system/basic", "enforce", keys_hint="label a ConfigMap"
        ),
    )
    verifier = ScopedSignatureVerifier()
    with signature_scope(trust), pytest.raises(SignatureRefused) as refused:
        verifier.check_file(module, cached, "00", TEAM)
    assert "asks for signature policy 'enforce', but no trusted key applies" in str(refused.value)
    assert "label a ConfigMap" in str(refused.value)


def _signed_module(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    module = tmp_path / "signed.wasm"
    module.write_bytes(b"\0asm\x01\0\0\0")
    raw = key.sign(module.read_bytes(), ec.ECDSA(hashes.SHA256()))
    (tmp_path / "signed.wasm.sig").write_text(base64.b64encode(raw).decode())
    return module, module


def test_the_scoped_verifier_trusts_a_namespace_key_only_in_its_namespace(
    tmp_path: Path, mesh_key: ec.EllipticCurvePrivateKey, team_key: ec.EllipticCurvePrivateKey
) -> None:
    module, cached = _signed_module(tmp_path, team_key)
    settings = mesh_settings("enforce", trusted(mesh_key, "mesh"))
    published = [KeySet((trusted(team_key, "team"),))]
    own = scoped_trust(
        SIGNATURES_OFF, TEAM, mesh_namespace=MESH, mesh=settings, namespace_keys=published
    )
    verifier = ScopedSignatureVerifier()
    with signature_scope(own):
        signer = verifier.check_file(module, cached, "1" * 64, TEAM)
    assert signer is not None
    assert signer.name.startswith("team (sha256:")
    assert signer.kind == "detached signature"
    for namespace in ("team-b", MESH):
        other = scoped_trust(SIGNATURES_OFF, namespace, mesh_namespace=MESH, mesh=settings)
        with signature_scope(other), pytest.raises(SignatureRefused):
            verifier.check_file(module, cached, "1" * 64, namespace)


def test_removing_a_key_stops_it_counting_for_the_next_check(
    tmp_path: Path, mesh_key: ec.EllipticCurvePrivateKey, team_key: ec.EllipticCurvePrivateKey
) -> None:
    module, cached = _signed_module(tmp_path, team_key)
    before = mesh_settings("enforce", trusted(mesh_key, "mesh"), trusted(team_key, "old"))
    after = mesh_settings("enforce", trusted(mesh_key, "mesh"))
    verifier = ScopedSignatureVerifier()
    with signature_scope(scoped_trust(SIGNATURES_OFF, TEAM, mesh_namespace=MESH, mesh=before)):
        assert verifier.check_file(module, cached, "2" * 64, TEAM) is not None
    with (
        signature_scope(scoped_trust(SIGNATURES_OFF, TEAM, mesh_namespace=MESH, mesh=after)),
        pytest.raises(SignatureRefused),
    ):
        verifier.check_file(module, cached, "2" * 64, TEAM)


def test_a_scope_for_another_namespace_is_refused(mesh_key: ec.EllipticCurvePrivateKey) -> None:
    trust = scoped_trust(SIGNATURES_OFF, TEAM, mesh_namespace=MESH, mesh=mesh_settings("off"))
    verifier = ScopedSignatureVerifier()
    with signature_scope(trust), pytest.raises(SignatureRefused, match="cannot judge"):
        verifier.mode_for("team-b")


def test_outside_a_scope_the_operator_policy_applies() -> None:
    verifier = ScopedSignatureVerifier(SIGNATURES_OFF)
    assert verifier.mode_for(TEAM) is SignatureMode.OFF
    verifier.check_url("https://127.0.0.1/m.wasm", "3" * 64, TEAM)


def test_the_operators_certificate_trust_reaches_every_scope_and_enforces_without_keys() -> None:
    authority = SigningAuthority.generate("ci")
    certificates = CertificateTrust((authority.root,), (), (TrustedIdentity("release@ci.example"),))
    operator = SignaturePolicy(SignatureMode.ENFORCE, (), certificates=certificates)
    for namespace in (MESH, TEAM):
        trust = scoped_trust(operator, namespace, mesh_namespace=MESH, mesh=mesh_settings(None))
        policy = trust.policy()
        assert policy is not None, trust.without_keys()
        assert policy.certificates is certificates
        assert trust.keys == ()
