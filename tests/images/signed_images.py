"""Helpers shared by the tests that sign images with cosign: pushing a one-module image
(or the header-append example), naming it by digest, a trust folder of cosign public keys and an imported Ed25519 key."""

from __future__ import annotations

import shutil
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.envoy.support import build_examples
from tests.images.conftest import skopeo_manifest_digest, skopeo_push
from tests.images.cosign import Cosign, KeyPair
from tests.images.layouts import OCI_LAYER_GZIP, Entry, Layout, tar_layer
from tests.images.registry import Registry
from tests.images.wasm import proxy_wasm_module


def trust_folder(tmp_path: Path, *keys: KeyPair) -> Path:
    """``tmp_path/trusted`` holding the public keys as ``key0.pub``, ``key1.pub``, ..."""
    folder = tmp_path / "trusted"
    folder.mkdir(exist_ok=True)
    for number, key in enumerate(keys):
        shutil.copy(key.public, folder / f"key{number}.pub")
    return folder


def push_image(
    tmp_path: Path,
    registry: Registry,
    repository: str,
    marker: str,
    *extra: str,
    tag: str = "v1",
    module: bytes | None = None,
) -> tuple[str, str]:
    """An istio-compat image with ``module``, by default a module unique to ``marker``;
    (tag reference, digest)."""
    layout = Layout(tmp_path / f"layout-{marker}-{tag}")
    module = module if module is not None else proxy_wasm_module(marker)
    layout.image(tag, [(OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", module)]))])
    skopeo_push(layout.root, tag, registry, f"{repository}:{tag}", *extra)
    reference = f"{registry.host}/{repository}:{tag}"
    return reference, skopeo_manifest_digest(registry, reference)


def push_header_append(
    tmp_path: Path, registry: Registry, repository: str, *extra: str
) -> tuple[str, str]:
    """The header-append example as an istio-compat image; (reference, digest)."""
    module = (build_examples() / "header-append.wasm").read_bytes()
    return push_image(tmp_path, registry, repository, repository, *extra, module=module)


def by_digest(reference: str, digest: str) -> str:
    return reference.rsplit(":", 1)[0] + "@" + digest


def imported_ed25519_key(cosign: Cosign, tmp_path: Path) -> KeyPair:
    """A fresh Ed25519 private key imported into cosign (``cosign import-key-pair``)."""
    private = ed25519.Ed25519PrivateKey.generate()
    pem = tmp_path / "ed25519.pem"
    pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cosign.import_key_pair(pem, tmp_path / "imported")
