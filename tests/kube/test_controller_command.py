"""``meshext kube controller``'s listeners are secure by default."""

from __future__ import annotations

from click.testing import CliRunner

from meshext.cli.kube import controller


def _default(name: str) -> object:
    (option,) = [p for p in controller.params if p.name == name]
    return option.default


def test_the_admin_endpoint_listens_on_loopback_unless_told_otherwise() -> None:
    assert _default("admin_address") == "127.0.0.1:8080"


def test_the_webhook_ca_without_a_webhook_certificate_is_a_usage_error() -> None:
    result = CliRunner().invoke(controller, ["--webhook-ca", __file__])
    assert result.exit_code == 2
    assert "--webhook-ca needs --webhook-cert" in result.output
