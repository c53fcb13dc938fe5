"""Registry credentials: docker config parsing, matching, challenges and pull Secrets."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from meshext.images.auth import Credentials, CredentialsError, DockerConfig, parse_challenge
from meshext.images.config import RegistryConfig
from meshext.images.reference import registry_api_host
from meshext.images.secrets import FolderPullSecretStore, load_docker_config


def config(auths: dict[str, dict[str, str]]) -> DockerConfig:
    return DockerConfig.parse(json.dumps({"auths": auths}).encode())


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_auth_field_is_decoded_into_user_and_password() -> None:
    found = config({"quay.io": {"auth": b64("robot:to:ken")}}).credentials_for("quay.io", "x/y")
    assert found == Credentials("robot", "to:ken")


def test_username_and_password_fields_are_read() -> None:
    found = config({"https://ghcr.io": {"username": "me", "password": "pw"}}).credentials_for(
        "ghcr.io", "me/filter"
    )
    assert found == Credentials("me", "pw")


def test_docker_hub_index_key_covers_docker_io_images() -> None:
    hub = config({"https://index.docker.io/v1/": {"auth": b64("u:p")}})
    assert hub.credentials_for("docker.io", "library/filter") == Credentials("u", "p")


def test_most_specific_repository_key_wins() -> None:
    auths = config(
        {
            "registry.example": {"auth": b64("any:1")},
            "registry.example/team": {"auth": b64("team:2")},
            "registry.example/team/filters": {"auth": b64("filters:3")},
        }
    )
    assert auths.credentials_for("registry.example", "team/filters/a").username == "filters"  # type: ignore[union-attr]
    assert auths.credentials_for("registry.example", "team/other").username == "team"  # type: ignore[union-attr]
    assert auths.credentials_for("registry.example", "teamwork/x").username == "any"  # type: ignore[union-attr]


def test_wildcard_host_matches_one_label() -> None:
    auths = config({"*.registry.example": {"auth": b64("w:1")}})
    assert auths.credentials_for("eu.registry.example", "x") is not None
    assert auths.credentials_for("a.b.registry.example", "x") is None


def test_other_registries_get_no_credentials() -> None:
    assert config({"quay.io": {"auth": b64("u:p")}}).credentials_for("ghcr.io", "x") is None


def test_auth_that_is_not_base64_is_an_error_naming_the_key() -> None:
    with pytest.raises(CredentialsError, match=r"auths\['quay.io'\].auth"):
        config({"quay.io": {"auth": "not base64!"}})


def test_credentials_never_show_the_password_in_repr() -> None:
    assert "hunter2" not in repr(Credentials("me", "hunter2"))


def test_bearer_challenge_parameters_are_parsed_with_quoted_commas() -> None:
    challenge = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert challenge is not None
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }


def test_basic_challenge_is_recognised() -> None:
    challenge = parse_challenge('Basic realm="Registry Realm"')
    assert challenge is not None
    assert challenge.scheme == "basic"


def test_docker_hub_is_reached_on_its_api_host() -> None:
    assert registry_api_host("docker.io") == "registry-1.docker.io"
    assert registry_api_host("quay.io") == "quay.io"
    assert RegistryConfig().base_url("docker.io") == "https://registry-1.docker.io"


def test_plain_http_is_used_only_for_listed_hosts() -> None:
    by_host = RegistryConfig(insecure_registries=frozenset({"registry.local"}))
    by_port = RegistryConfig(insecure_registries=frozenset({"registry.local:5000"}))
    assert by_host.base_url("registry.local:5000") == "http://registry.local:5000"
    assert by_port.base_url("registry.local:5000") == "http://registry.local:5000"
    assert by_port.base_url("registry.local:5001") == "https://registry.local:5001"
    assert RegistryConfig().base_url("localhost:5000") == "https://localhost:5000"


async def test_folder_store_reads_data_and_string_data_secrets(tmp_path: Path) -> None:
    docker_json = json.dumps({"auths": {"quay.io": {"auth": b64("u:p")}}})
    (tmp_path / "secrets.yaml").write_text(
        f"""
apiVersion: v1
kind: Secret
type: kubernetes.io/dockerconfigjson
metadata: {{name: encoded, namespace: team-a}}
data:
  .dockerconfigjson: {b64(docker_json)}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/dockerconfigjson
metadata: {{name: plain}}
stringData:
  .dockerconfigjson: '{docker_json}'
---
apiVersion: v1
kind: Secret
type: Opaque
metadata: {{name: other, namespace: team-a}}
data: {{password: {b64("x")}}}
---
apiVersion: maistra.io/v1
kind: ServiceMeshExtension
metadata: {{name: encoded, namespace: team-a}}
"""
    )
    store = FolderPullSecretStore(tmp_path)
    assert await store.get("team-a", "encoded") == docker_json.encode()
    assert await store.get("default", "plain") == docker_json.encode()
    assert await store.get("team-a", "other") is None
    assert await store.get("team-b", "encoded") is None


async def test_folder_store_sees_secrets_added_later(tmp_path: Path) -> None:
    store = FolderPullSecretStore(tmp_path)
    assert await store.get("ns", "late") is None
    (tmp_path / "late.yaml").write_text(
        "kind: Secret\ntype: kubernetes.io/dockerconfigjson\n"
        "metadata: {name: late, namespace: ns}\nstringData: {.dockerconfigjson: '{}'}\n"
    )
    assert await store.get("ns", "late") == b"{}"


async def test_folder_store_reports_secrets_it_cannot_decode(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "kind: Secret\ntype: kubernetes.io/dockerconfigjson\n"
        "metadata: {name: bad, namespace: ns}\ndata: {.dockerconfigjson: '!!!'}\n"
    )
    store = FolderPullSecretStore(tmp_path)
    assert await store.get("ns", "bad") is None
    assert any("Secret ns/bad: data..dockerconfigjson is not base64" in p for p in store.problems)


def test_docker_config_comes_from_the_docker_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"quay.io": {"auth": b64("a:b")}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    assert load_docker_config().credentials_for("quay.io", "x") == Credentials("a", "b")


def test_missing_default_docker_config_means_no_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "absent"))
    assert not load_docker_config()
