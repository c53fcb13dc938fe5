"""``meshext kube controller``: listeners secure by default, and loud about what it lacks."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshext.cli.kube import controller
from meshext.kube.run import RunOptions, run_controller
from tests.kube.support import MeshextCrds, settings
from tests.kube_harness import KubeApiServer


def _default(name: str) -> object:
    (option,) = [p for p in controller.params if p.name == name]
    return option.default


def test_the_admin_endpoint_listens_on_loopback_unless_told_otherwise() -> None:
    assert _default("admin_address") == "127.0.0.1:8080"


def test_the_webhook_ca_without_a_webhook_certificate_is_a_usage_error() -> None:
    result = CliRunner().invoke(controller, ["--webhook-ca", __file__])
    assert result.exit_code == 2
    assert "--webhook-ca needs --webhook-cert" in result.output


@pytest.mark.e2e
async def test_a_controller_without_a_webhook_certificate_warns_that_it_serves_no_conversions(
    kube_apiserver: KubeApiServer,
    crds: MeshextCrds,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    stop.set()
    options = RunOptions(
        settings=settings(),
        cache_dir=tmp_path / "cache",
        kubeconfig=str(kube_apiserver.kubeconfig_path),
        admin_port=0,
    )
    with caplog.at_level(logging.WARNING, logger="meshext.kube.run"):
        await run_controller(options, stop)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith("no --webhook-cert: this replica serves no conversion")
