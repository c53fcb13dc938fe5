"""Status is written as a merge patch, and only when it changed."""

from __future__ import annotations

from meshext.api.extension import DeploymentStatus, ExtensionStatus
from meshext.api.phase import Phase
from meshext.kube.status import merge_patch, status_patch

READY = ExtensionStatus(
    phase=Phase.POST_AUTHZ,
    priority=10,
    observed_generation=2,
    deployment=DeploymentStatus(
        ready=True, container_sha256="sha256:" + "a" * 64, sha256="b" * 64, url="http://m/x"
    ),
)


def test_an_unchanged_status_needs_no_patch() -> None:
    stored = {
        "phase": "PostAuthZ",
        "priority": 10,
        "observedGeneration": 2,
        "deployment": {
            "ready": True,
            "containerSha256": "sha256:" + "a" * 64,
            "sha256": "b" * 64,
            "url": "http://m/x",
        },
    }
    assert status_patch(stored, READY) is None


def test_a_first_status_is_written_whole() -> None:
    patch = status_patch(None, READY)
    assert patch is not None
    assert patch["status"]["deployment"]["ready"] is True
    assert patch["status"]["observedGeneration"] == 2


def test_a_failure_clears_the_deployment_fields_with_nulls() -> None:
    stored = status_patch(None, READY)
    assert stored is not None
    failed = READY.model_copy(
        update={"deployment": DeploymentStatus(ready=False, message="image not found")}
    )
    patch = status_patch(stored["status"], failed)
    assert patch == {
        "status": {
            "deployment": {
                "ready": False,
                "message": "image not found",
                "containerSha256": None,
                "sha256": None,
                "url": None,
            }
        }
    }


def test_merge_patch_leaves_out_what_is_equal_and_nulls_what_disappeared() -> None:
    assert merge_patch({"a": 1, "b": {"c": 2, "d": 3}}, {"a": 1, "b": {"c": 2}}) == {
        "b": {"d": None}
    }
    assert merge_patch({"a": [1]}, {"a": [1, 2]}) == {"a": [1, 2]}
