"""``--trusted-keys`` turns enforcement on; contradictory options are usage errors."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from meshext.cli.serve import serve
from meshext.cli.trust_options import signature_policy
from meshext.images.trust import SignatureMode
from meshext.images.verification import SignatureRefused, SignatureVerifier


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    folder.mkdir()
    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (folder / "ci.pub").write_bytes(pem)
    return folder


def test_trusted_keys_alone_means_enforce(keys: Path) -> None:
    policy = signature_policy(keys, None)
    assert policy.mode is SignatureMode.ENFORCE
    assert [k.name for k in policy.keys] == ["ci.pub"]


def test_no_option_and_an_explicit_off_check_nothing(keys: Path) -> None:
    assert not signature_policy(None, None).active
    assert not signature_policy(keys, "off").active


def test_warn_keeps_the_keys(keys: Path) -> None:
    assert signature_policy(keys, "warn").mode is SignatureMode.WARN


def test_a_policy_without_keys_is_a_usage_error() -> None:
    with pytest.raises(click.UsageError, match="needs --trusted-keys"):
        signature_policy(None, "enforce")


def test_serve_refuses_a_keys_folder_without_keys(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(serve, ["--config", str(tmp_path), "--trusted-keys", str(empty)])
    assert result.exit_code == 2
    assert "holds no *.pem or *.pub public key" in result.output


def test_an_http_module_is_refused_under_enforce_and_only_logged_under_warn(keys: Path) -> None:
    url = "https://modules.example/filter.wasm?token=secret"
    with pytest.raises(SignatureRefused, match="http") as refused:
        SignatureVerifier(signature_policy(keys, None)).check_url(url, "ab" * 32)
    assert "secret" not in str(refused.value)
    SignatureVerifier(signature_policy(keys, "warn")).check_url(url, "ab" * 32)
    SignatureVerifier(signature_policy(None, None)).check_url(url, "ab" * 32)
