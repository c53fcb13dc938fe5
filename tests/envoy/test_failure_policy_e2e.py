"""An extension's failure policy in real Envoy: FAIL_OPEN bypasses a failed extension
and the rest of the chain keeps running; FAIL_CLOSED answers 503."""

from __future__ import annotations

from pathlib import Path

import pytest
import wasmtime

from meshext.api.phase import Phase
from meshext.mesh.extension import FailurePolicy
from tests.envoy.harness import EchoApp, EnvoyProxy, headers_named
from tests.envoy.support import module_from_bytes, planned
from tests.envoy.test_envoy_runs_extensions import LOCAL, header_append, resources_for, sidecar

pytestmark = pytest.mark.e2e

MODULES = Path(__file__).parent / "modules"


@pytest.mark.parametrize(
    "outcome",
    [(FailurePolicy.FAIL_CLOSED, 503), (FailurePolicy.FAIL_OPEN, 200)],
    ids=["fail-closed", "fail-open"],
)
async def test_after_an_extension_traps_its_failure_policy_decides_what_requests_get(
    examples: Path, app: EchoApp, tmp_path: Path, outcome: tuple[FailurePolicy, int]
) -> None:
    policy, later_status = outcome
    path = tmp_path / "traps.wasm"
    path.write_bytes(wasmtime.wat2wasm((MODULES / "traps_on_request.wat").read_text()))
    trapping = planned(
        "traps", phase=Phase.PRE_AUTHN, module=module_from_bytes(path), failure_policy=policy
    )
    info = sidecar(app)
    resources = resources_for(info, [trapping, header_append("after", "ran")], LOCAL, tmp_path)
    async with EnvoyProxy(tmp_path, info, resources) as envoy:
        trapped = await envoy.request()
        later = [await envoy.request() for _ in range(3)]
    # The request during which the VM trapped fails whatever the policy.
    assert trapped.status_code == 503
    assert [r.status_code for r in later] == [later_status] * 3
    if later_status == 200:
        # Bypassed: the rest of the chain ran and the app answered.
        assert app.requests == 3
        assert headers_named(later[-1].json(), "x-header-append") == ["ran"]
    else:
        assert app.requests == 0
