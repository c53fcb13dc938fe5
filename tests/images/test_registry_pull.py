"""Images pushed to a real registry by skopeo and umoci are pulled by meshext."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from meshext.api.phase import Phase
from meshext.images.cache import ModuleCache
from meshext.images.secrets import load_docker_config
from meshext.mesh.resolution import ImageFormat, ResolutionState
from tests.images.conftest import (
    dockerconfigjson,
    extension,
    registry_config,
    resolve_once,
    resolver_for,
    run,
    skopeo_manifest_digest,
    skopeo_push,
    unique,
    write_pull_secret,
)
from tests.images.layouts import (
    CNCF_CONFIG,
    CNCF_LAYER,
    OCI_LAYER_GZIP,
    WASM_ARTIFACT_CONFIG,
    WASM_ARTIFACT_LAYER,
    Entry,
    Layout,
    manifest_yaml,
    tar_layer,
)
from tests.images.registry import PASSWORD, USERNAME, Registry
from tests.images.tokens import TokenServer
from tests.images.wasm import proxy_wasm_module

pytestmark = pytest.mark.e2e


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_regcred(
    folder: Path, namespace: str, registry: Registry, password: str = PASSWORD
) -> None:
    """A pull secret ``regcred`` in ``namespace`` with the test user's login to ``registry``."""
    write_pull_secret(
        folder, namespace, "regcred", dockerconfigjson(registry.host, USERNAME, password)
    )


def push_each_format(tmp_path: Path, registry: Registry, module: bytes) -> dict[ImageFormat, str]:
    """One image per format, pushed with skopeo; returns the references by format."""
    layout = Layout(tmp_path / "layout")
    layout.image(
        "maistra",
        [
            (
                OCI_LAYER_GZIP,
                tar_layer(
                    [
                        Entry("manifest.yaml", manifest_yaml(phase="PostAuthZ", priority=7)),
                        Entry("extension.wasm", module),
                    ]
                ),
            )
        ],
    )
    layout.image("istio", [(OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", module)]))])
    layout.image(
        "wasm", [(WASM_ARTIFACT_LAYER, module)], config=b"{}", config_type=WASM_ARTIFACT_CONFIG
    )
    layout.image("cncf", [(CNCF_LAYER, module)], config=b"{}", config_type=CNCF_CONFIG)
    repository = unique("formats")
    references = {}
    for image_format, tag in (
        (ImageFormat.MAISTRA, "maistra"),
        (ImageFormat.ISTIO_COMPAT, "istio"),
        (ImageFormat.WASM_ARTIFACT, "wasm"),
        (ImageFormat.CNCF_ARTIFACT, "cncf"),
    ):
        skopeo_push(layout.root, tag, registry, f"{repository}:{tag}")
        references[image_format] = f"{registry.host}/{repository}:{tag}"
    return references


async def test_every_format_pushed_by_skopeo_is_pulled_from_an_anonymous_registry(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    module = proxy_wasm_module("every format")
    references = push_each_format(tmp_path, plain_registry, module)
    resolver = resolver_for(cache, plain_registry)
    for image_format, reference in references.items():
        resolution = await resolver.resolve(extension(reference))
        assert resolution.state is ResolutionState.READY, resolution.message
        assert resolution.module is not None
        assert resolution.module.image_format is image_format
        assert resolution.module.sha256 == sha256(module)
        assert Path(resolution.module.path).read_bytes() == module
        assert resolution.module.abi_versions == ("0_2_1",)
        assert resolution.module.image_digest == skopeo_manifest_digest(plain_registry, reference)
    await resolver.aclose()


async def test_maistra_image_reports_its_manifest_defaults(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    references = push_each_format(tmp_path, plain_registry, proxy_wasm_module("defaults"))
    resolution = await resolve_once(
        cache, plain_registry, extension(references[ImageFormat.MAISTRA])
    )
    assert resolution.module is not None
    assert resolution.module.manifest is not None
    assert resolution.module.manifest.phase is Phase.POST_AUTHZ
    assert resolution.module.manifest.priority == 7
    assert resolution.module.manifest.module == "extension.wasm"


async def test_formats_without_manifest_yaml_report_no_manifest(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    references = push_each_format(tmp_path, plain_registry, proxy_wasm_module("no manifest"))
    resolver = resolver_for(cache, plain_registry)
    for image_format in (
        ImageFormat.ISTIO_COMPAT,
        ImageFormat.WASM_ARTIFACT,
        ImageFormat.CNCF_ARTIFACT,
    ):
        resolution = await resolver.resolve(extension(references[image_format]))
        assert resolution.module is not None
        assert resolution.module.manifest is None
    await resolver.aclose()


async def test_docker_schema_2_image_converted_by_skopeo_is_pulled(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    module = proxy_wasm_module("docker schema 2")
    layout = Layout(tmp_path / "layout")
    layout.image("v1", [(OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", module)]))])
    repository = unique("docker")
    skopeo_push(layout.root, "v1", plain_registry, f"{repository}:v1", "--format=v2s2")
    raw = run(
        "skopeo",
        "inspect",
        "--raw",
        "--tls-verify=false",
        f"docker://{plain_registry.host}/{repository}:v1",
    )
    assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    resolution = await resolve_once(
        cache, plain_registry, extension(f"{plain_registry.host}/{repository}:v1")
    )
    assert resolution.module is not None, resolution.message
    assert resolution.module.image_format is ImageFormat.ISTIO_COMPAT
    assert resolution.module.sha256 == sha256(module)


async def test_multi_layer_image_made_with_umoci_is_read_with_its_whiteouts_applied(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    old, new = proxy_wasm_module("old layer"), proxy_wasm_module("new layer")
    files = tmp_path / "files"
    files.mkdir()
    (files / "manifest.yaml").write_bytes(manifest_yaml("modules/filter.wasm"))
    (files / "old.wasm").write_bytes(old)
    (files / "new.wasm").write_bytes(new)
    image = f"{tmp_path / 'umoci'}:v1"
    run("umoci", "init", "--layout", str(tmp_path / "umoci"))
    run("umoci", "new", "--image", image)
    run("umoci", "insert", "--image", image, str(files / "manifest.yaml"), "/manifest.yaml")
    run("umoci", "insert", "--image", image, str(files / "old.wasm"), "/modules/filter.wasm")
    run("umoci", "insert", "--image", image, str(files / "old.wasm"), "/plugin.wasm")
    run("umoci", "insert", "--image", image, "--whiteout", "/modules")
    run("umoci", "insert", "--image", image, str(files / "new.wasm"), "/modules/filter.wasm")
    repository = unique("umoci")
    skopeo_push(tmp_path / "umoci", "v1", plain_registry, f"{repository}:v1")
    resolution = await resolve_once(
        cache, plain_registry, extension(f"{plain_registry.host}/{repository}:v1")
    )
    assert resolution.module is not None, resolution.message
    assert resolution.module.image_format is ImageFormat.MAISTRA
    assert resolution.module.sha256 == sha256(new)


async def test_umoci_whiteout_of_the_named_module_is_reported_as_missing(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    (files / "manifest.yaml").write_bytes(manifest_yaml("extension.wasm"))
    (files / "extension.wasm").write_bytes(proxy_wasm_module("deleted"))
    image = f"{tmp_path / 'umoci'}:v1"
    run("umoci", "init", "--layout", str(tmp_path / "umoci"))
    run("umoci", "new", "--image", image)
    run("umoci", "insert", "--image", image, str(files / "manifest.yaml"), "/manifest.yaml")
    run("umoci", "insert", "--image", image, str(files / "extension.wasm"), "/extension.wasm")
    run("umoci", "insert", "--image", image, "--whiteout", "/extension.wasm")
    repository = unique("umoci-deleted")
    skopeo_push(tmp_path / "umoci", "v1", plain_registry, f"{repository}:v1")
    resolution = await resolve_once(
        cache, plain_registry, extension(f"{plain_registry.host}/{repository}:v1")
    )
    assert resolution.state is ResolutionState.FAILED
    assert "no module at /extension.wasm named by manifest.yaml" in resolution.message


async def test_index_pushed_with_skopeo_all_resolves_to_its_linux_amd64_image(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    arm, amd = proxy_wasm_module("arm64"), proxy_wasm_module("amd64")
    layout = Layout(tmp_path / "layout")
    arm_image = layout.image(
        None,
        [(OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", arm)]))],
        platform={"os": "linux", "architecture": "arm64"},
    )
    amd_image = layout.image(
        None,
        [(OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", amd)]))],
        platform={"os": "linux", "architecture": "amd64"},
    )
    layout.index("multi", [arm_image, amd_image])
    repository = unique("index")
    skopeo_push(layout.root, "multi", plain_registry, f"{repository}:multi", "--all")
    resolution = await resolve_once(
        cache, plain_registry, extension(f"{plain_registry.host}/{repository}:multi")
    )
    assert resolution.module is not None, resolution.message
    assert resolution.module.sha256 == sha256(amd)
    assert resolution.module.image_digest == amd_image["digest"]


async def test_basic_auth_registry_is_pulled_with_an_image_pull_secret(
    tmp_path: Path, cache: ModuleCache, basic_registry: Registry, secrets_folder: Path
) -> None:
    module = proxy_wasm_module("basic auth")
    references = push_each_format(tmp_path, basic_registry, module)
    write_regcred(secrets_folder, "team-a", basic_registry)
    resolution = await resolve_once(
        cache,
        basic_registry,
        extension(references[ImageFormat.MAISTRA], secrets=("regcred",)),
        secrets_folder,
    )
    assert resolution.module is not None, resolution.message
    assert resolution.module.sha256 == sha256(module)


async def test_basic_auth_registry_without_a_secret_fails_with_advice(
    tmp_path: Path, cache: ModuleCache, basic_registry: Registry
) -> None:
    references = push_each_format(tmp_path, basic_registry, proxy_wasm_module("no secret"))
    resolution = await resolve_once(
        cache, basic_registry, extension(references[ImageFormat.MAISTRA])
    )
    assert resolution.state is ResolutionState.FAILED
    assert resolution.retryable is False
    assert resolution.message.startswith(f"unauthorized pulling {references[ImageFormat.MAISTRA]}")
    assert "add imagePullSecrets" in resolution.message


async def test_wrong_password_names_the_secret_and_namespace(
    tmp_path: Path, cache: ModuleCache, basic_registry: Registry, secrets_folder: Path
) -> None:
    references = push_each_format(tmp_path, basic_registry, proxy_wasm_module("wrong password"))
    write_regcred(secrets_folder, "ns", basic_registry, password="nope")
    resolution = await resolve_once(
        cache,
        basic_registry,
        extension(references[ImageFormat.MAISTRA], namespace="ns", secrets=("regcred",)),
        secrets_folder,
    )
    assert resolution.message.startswith(
        f"unauthorized pulling {references[ImageFormat.MAISTRA]}: check imagePullSecrets "
        "'regcred' in namespace 'ns'"
    )
    assert resolution.retryable is False


async def test_missing_pull_secret_is_named_in_the_failure(
    tmp_path: Path, cache: ModuleCache, basic_registry: Registry
) -> None:
    references = push_each_format(tmp_path, basic_registry, proxy_wasm_module("missing secret"))
    resolution = await resolve_once(
        cache,
        basic_registry,
        extension(references[ImageFormat.MAISTRA], namespace="ns", secrets=("gone",)),
    )
    assert "imagePullSecrets 'gone' not found in namespace 'ns'" in resolution.message


async def test_secret_of_another_namespace_is_never_used(
    tmp_path: Path, cache: ModuleCache, basic_registry: Registry, secrets_folder: Path
) -> None:
    references = push_each_format(tmp_path, basic_registry, proxy_wasm_module("other namespace"))
    write_regcred(secrets_folder, "team-b", basic_registry)
    resolution = await resolve_once(
        cache,
        basic_registry,
        extension(references[ImageFormat.MAISTRA], namespace="team-a", secrets=("regcred",)),
        secrets_folder,
    )
    assert resolution.state is ResolutionState.FAILED
    assert "not found in namespace 'team-a'" in resolution.message


async def test_module_pulled_with_credentials_is_not_handed_to_an_extension_without_them(
    tmp_path: Path, cache: ModuleCache, basic_registry: Registry, secrets_folder: Path
) -> None:
    references = push_each_format(tmp_path, basic_registry, proxy_wasm_module("tenant boundary"))
    write_regcred(secrets_folder, "team-a", basic_registry)
    resolver = resolver_for(cache, basic_registry, secrets_folder)
    image = references[ImageFormat.MAISTRA]
    allowed = await resolver.resolve(extension(image, namespace="team-a", secrets=("regcred",)))
    refused = await resolver.resolve(extension(image, namespace="team-b", policy="IfNotPresent"))
    await resolver.aclose()
    assert allowed.state is ResolutionState.READY
    assert refused.state is ResolutionState.FAILED
    assert refused.message.startswith(f"unauthorized pulling {image}")


async def test_token_auth_registry_is_pulled_through_the_challenge(
    tmp_path: Path,
    cache: ModuleCache,
    token_registry: Registry,
    token_server: TokenServer,
    secrets_folder: Path,
) -> None:
    module = proxy_wasm_module("token auth")
    references = push_each_format(tmp_path, token_registry, module)
    write_regcred(secrets_folder, "team-a", token_registry)
    before = len(token_server.requests)
    resolution = await resolve_once(
        cache,
        token_registry,
        extension(references[ImageFormat.CNCF_ARTIFACT], secrets=("regcred",)),
        secrets_folder,
    )
    assert resolution.module is not None, resolution.message
    assert resolution.module.sha256 == sha256(module)
    repository = references[ImageFormat.CNCF_ARTIFACT].split("/", 1)[1].split(":")[0]
    asked = token_server.requests[before:]
    assert {"user": USERNAME, "scope": f"repository:{repository}:pull"} in asked


async def test_token_auth_registry_refuses_anonymous_pulls(
    tmp_path: Path, cache: ModuleCache, token_registry: Registry
) -> None:
    references = push_each_format(tmp_path, token_registry, proxy_wasm_module("token anon"))
    resolution = await resolve_once(
        cache, token_registry, extension(references[ImageFormat.WASM_ARTIFACT])
    )
    assert resolution.state is ResolutionState.FAILED
    assert resolution.message.startswith("unauthorized pulling")


async def test_docker_config_json_gives_fallback_credentials(
    tmp_path: Path, cache: ModuleCache, token_registry: Registry
) -> None:
    module = proxy_wasm_module("docker config")
    references = push_each_format(tmp_path, token_registry, module)
    config = tmp_path / "docker" / "config.json"
    config.parent.mkdir()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    f"https://{token_registry.host}": {"username": USERNAME, "password": PASSWORD}
                }
            }
        )
    )
    resolution = await resolve_once(
        cache,
        token_registry,
        extension(references[ImageFormat.ISTIO_COMPAT]),
        credentials=load_docker_config(config),
    )
    assert resolution.module is not None, resolution.message
    assert resolution.module.sha256 == sha256(module)


async def test_tls_registry_is_pulled_with_the_test_ca(
    tmp_path: Path, cache: ModuleCache, tls_registry: Registry
) -> None:
    module = proxy_wasm_module("tls")
    references = push_each_format(tmp_path, tls_registry, module)
    resolution = await resolve_once(
        cache, tls_registry, extension(references[ImageFormat.WASM_ARTIFACT])
    )
    assert resolution.module is not None, resolution.message
    assert resolution.module.sha256 == sha256(module)


async def test_tls_registry_without_the_ca_fails_permanently_with_advice(
    tmp_path: Path, cache: ModuleCache, tls_registry: Registry
) -> None:
    references = push_each_format(tmp_path, tls_registry, proxy_wasm_module("no ca"))
    resolution = await resolve_once(
        cache, tls_registry, extension(references[ImageFormat.WASM_ARTIFACT]), ca_file=None
    )
    assert resolution.state is ResolutionState.FAILED
    assert resolution.retryable is False
    assert "--ca-file" in resolution.message


async def test_plain_http_registry_is_not_used_unless_allowed(
    tmp_path: Path, cache: ModuleCache, plain_registry: Registry
) -> None:
    references = push_each_format(tmp_path, plain_registry, proxy_wasm_module("not allowed"))
    resolution = await resolve_once(
        cache,
        plain_registry,
        extension(references[ImageFormat.WASM_ARTIFACT]),
        insecure_registries=frozenset(),
        allowed_private_registries=frozenset({"127.0.0.1"}),  # past the address guard
    )
    assert resolution.state is ResolutionState.FAILED
    assert resolution.retryable is False
    assert f"--insecure-registry {plain_registry.host.split(':')[0]}" in resolution.message


async def test_unknown_tag_is_not_found_and_not_retried(
    cache: ModuleCache, plain_registry: Registry
) -> None:
    image = f"{plain_registry.host}/{unique('absent')}:v9"
    resolution = await resolve_once(cache, plain_registry, extension(image))
    assert resolution.state is ResolutionState.FAILED
    assert resolution.retryable is False
    assert resolution.message.startswith(f"{image} not found")


def test_registry_config_for_a_plain_registry_allows_only_its_host(
    plain_registry: Registry,
) -> None:
    config = registry_config(plain_registry)
    assert config.base_url(plain_registry.host) == f"http://{plain_registry.host}"
    assert config.base_url("quay.io") == "https://quay.io"
