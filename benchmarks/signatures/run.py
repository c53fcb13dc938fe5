"""Signature policy benchmark: what checking cosign signatures costs a resolve.

Starts Debian's ``docker-registry`` on 127.0.0.1 (the helper of
``benchmarks/image_pull``), pushes a Maistra image with ``meshext image build
--tag``, signs it by digest with the ``cosign`` that ``scripts/setup.d/45-cosign.sh``
builds (no transparency log, nothing leaves 127.0.0.1), then measures, with
``--repetitions`` runs each (median reported):

* one signature verification in process (``judge``), ECDSA P-256 and Ed25519ph;
* one Sigstore bundle verification in process (``judge_bundles``): a DSSE bundle by
  a trusted key, and one by a certificate chaining through an intermediate to a
  trusted root and naming a trusted identity;
* a cold resolve of the image pinned by digest with the policy off and with
  ``enforce`` (a new cache and resolver per run), and the registry requests each makes;
* a warm resolve (image cached, digest already verified by this resolver);
* on the OCI 1.1 test registry (``tools/oci-registry``, TLS on loopback), a cold
  enforced resolve of an image signed with ``cosign sign --new-bundle-format``, by
  key and by certificate, found through the referrers API.

Writes the results into README.md beside this file.

    .venv/bin/python benchmarks/signatures/run.py [--repetitions 7]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import importlib.util
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from nacl.bindings import (
    crypto_sign_ed25519ph_final_create,
    crypto_sign_ed25519ph_state,
    crypto_sign_ed25519ph_update,
)

from meshext.cli.trust_options import signature_policy
from meshext.images.cache import ModuleCache
from meshext.images.certificate_trust import CertificateTrust, TrustedIdentity
from meshext.images.config import RegistryConfig
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import MappingPullSecretStore
from meshext.images.signatures import COSIGN_PAYLOAD_TYPE, FoundSignature, judge
from meshext.images.sigstore_bundle import (
    BUNDLE_ARTIFACT,
    IN_TOTO_PAYLOAD_TYPE,
    FoundBundle,
    judge_bundles,
    pae,
)
from meshext.images.trust import (
    SIGNATURES_OFF,
    SignatureMode,
    SignaturePolicy,
    load_trusted_keys,
    parse_public_keys,
)
from meshext.images.verification import SignatureVerifier
from meshext.mesh.resolution import ResolutionState

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))  # the test helpers: OCI 1.1 registry, cosign, signing CA

from tests.images.conftest import skopeo_push  # noqa: E402
from tests.images.cosign import Cosign, find_cosign  # noqa: E402
from tests.images.layouts import OCI_LAYER_GZIP, Entry, Layout, tar_layer  # noqa: E402
from tests.images.oci_registry import start_oci_registry  # noqa: E402
from tests.images.registry import make_ca  # noqa: E402
from tests.images.signing_certificates import (  # noqa: E402
    ISSUER,
    SigningAuthority,
    identities_yaml,
)

_spec = importlib.util.spec_from_file_location("image_pull_run", HERE.parent / "image_pull/run.py")
assert _spec is not None
assert _spec.loader is not None
image_pull = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_pull)

DIGEST = "sha256:" + "ab" * 32


class Counting(httpx.AsyncBaseTransport):
    def __init__(self, ca_file: Path | None = None) -> None:
        verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
        self.inner = httpx.AsyncHTTPTransport(verify=verify)
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def payload() -> bytes:
    critical = {"image": {"docker-manifest-digest": DIGEST}, "type": COSIGN_PAYLOAD_TYPE}
    return json.dumps({"critical": critical, "optional": None}).encode()


def verify_costs(repetitions: int) -> dict[str, float]:
    data = payload()
    ecdsa = ec.generate_private_key(ec.SECP256R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    state = crypto_sign_ed25519ph_state()
    crypto_sign_ed25519ph_update(state, data)
    raw_ed = ed.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    ph_signature = crypto_sign_ed25519ph_final_create(
        state, raw_ed + ed.public_key().public_bytes_raw()
    )
    cases: dict[str, tuple[ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey, bytes]] = {
        "ECDSA P-256": (ecdsa, ecdsa.sign(data, ec.ECDSA(hashes.SHA256()))),
        "Ed25519ph": (ed, ph_signature),
    }
    results = {}
    for name, (private, signature) in cases.items():
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        keys = parse_public_keys(pem, "bench.pub")
        found = (FoundSignature(data, base64.b64encode(signature).decode(), "bench"),)
        samples = []
        for _ in range(repetitions):
            start = time.perf_counter()
            for _ in range(100):
                verdict = judge(DIGEST, found, keys, "bench")
            samples.append((time.perf_counter() - start) / 100)
            if not verdict.verified:
                raise RuntimeError(f"{name}: not verified")
        results[name] = statistics.median(samples)
    return results


def bundle(private: ec.EllipticCurvePrivateKey, certificate_der: bytes | None) -> bytes:
    statement = {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "", "digest": {"sha256": DIGEST[7:]}}],
        "predicateType": "https://sigstore.dev/cosign/sign/v1",
    }
    payload = json.dumps(statement).encode()
    signature = private.sign(pae(IN_TOTO_PAYLOAD_TYPE, payload), ec.ECDSA(hashes.SHA256()))
    material: dict[str, object] = {"publicKey": {"hint": ""}}
    if certificate_der is not None:
        material = {"certificate": {"rawBytes": base64.b64encode(certificate_der).decode()}}
    envelope = {
        "payload": base64.b64encode(payload).decode(),
        "payloadType": IN_TOTO_PAYLOAD_TYPE,
        "signatures": [{"sig": base64.b64encode(signature).decode()}],
    }
    document = {
        "mediaType": BUNDLE_ARTIFACT,
        "verificationMaterial": material,
        "dsseEnvelope": envelope,
    }
    return json.dumps(document).encode()


def bundle_costs(work: Path, repetitions: int) -> dict[str, float]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (work / "signer.pub").write_bytes(pem)
    authority = SigningAuthority.generate("bench", intermediate=True)
    leaf = authority.certify(work / "signer.pub", "ci@example.com", work / "leaf.pem")
    der = x509.load_pem_x509_certificate(leaf.read_bytes()).public_bytes(serialization.Encoding.DER)
    assert authority.intermediate is not None
    trust = CertificateTrust(
        (authority.root,), (authority.intermediate,), (TrustedIdentity("ci@example.com", ISSUER),)
    )
    cases = {
        "by key (DSSE, ECDSA P-256)": (
            bundle(private, None),
            parse_public_keys(pem, "k.pub"),
            None,
        ),
        "by certificate (chain of 3, identity)": (bundle(private, der), (), trust),
    }
    results = {}
    for name, (data, keys, certificates) in cases.items():
        found = (FoundBundle(data, "bench"),)
        samples = []
        for _ in range(repetitions):
            start = time.perf_counter()
            for _ in range(100):
                verdict = judge_bundles(DIGEST, found, keys, certificates, "bench")
            samples.append((time.perf_counter() - start) / 100)
            if not verdict.verified:
                raise RuntimeError(f"{name}: not verified: {verdict.findings}")
        results[name] = statistics.median(samples)
    return results


async def bundle_resolves(work: Path, repetitions: int) -> dict[str, tuple[float, int]]:
    """Cold enforced resolves of bundle-signed images on the OCI 1.1 registry."""
    registry = start_oci_registry(work / "oci", make_ca(work / "oci" / "pki"))
    try:
        assert registry.ca is not None
        config = RegistryConfig(
            ca_file=registry.ca.ca_file, allowed_private_registries=frozenset({"127.0.0.1"})
        )
        cosign = Cosign(find_cosign(), work / "bundle-cosign")
        key = cosign.generate_key_pair(work / "bundle-key")
        authority = SigningAuthority.generate("bench", intermediate=True)
        trusted = work / "bundle-trusted"
        trusted.mkdir()
        (trusted / "k.pub").write_bytes(key.public.read_bytes())
        authority.write_chain(trusted / "bench.crt")
        identities_yaml(trusted / "identities.yaml", ("ci@example.com", ISSUER))
        policy = signature_policy(trusted, "enforce")
        results: dict[str, tuple[float, int]] = {}
        for number, kind in enumerate(("key", "certificate")):
            layout = Layout(work / f"layout-{kind}")
            module = image_pull.padded_module((1 << 20) + 64 * number)
            layout.image("v1", [(OCI_LAYER_GZIP, tar_layer([Entry("plugin.wasm", module)]))])
            skopeo_push(layout.root, "v1", registry, f"bench/{kind}:v1")
            raw = subprocess.run(
                ["skopeo", "inspect", "--raw", *registry.skopeo_args(),
                 f"docker://{registry.host}/bench/{kind}:v1"],
                capture_output=True, check=True,
            ).stdout  # fmt: skip
            pinned = f"{registry.host}/bench/{kind}@sha256:{hashlib.sha256(raw).hexdigest()}"
            if kind == "key":
                cosign.sign_bundle(key, pinned, registry)
            else:
                leaf = authority.certify(key.public, "ci@example.com", work / "leaf.pem")
                chain = authority.write_chain(work / "chain.pem")
                cosign.sign_bundle(key, pinned, registry, certificate=leaf, chain=chain)
            measured = [("off", SIGNATURES_OFF)] if kind == "key" else []
            for mode, chosen in [*measured, ("enforce", policy)]:
                samples, requests = [], 0
                for run in range(repetitions):
                    counting = Counting(registry.ca.ca_file)
                    resolver = ImageResolver(
                        ModuleCache(work / f"bundle-{kind}-{mode}-{run}"),
                        MappingPullSecretStore(),
                        registry_config=config,
                        transport=counting,
                        signatures=SignatureVerifier(chosen),
                    )
                    start = time.perf_counter()
                    resolution = await resolver.resolve(
                        image_pull.extension(pinned, "IfNotPresent")
                    )
                    samples.append(time.perf_counter() - start)
                    await resolver.aclose()
                    if resolution.module is None:
                        raise RuntimeError(f"bundle by {kind}: {resolution.message}")
                    if mode == "enforce" and not str(resolution.module.signer).endswith(
                        "sigstore bundle"
                    ):
                        raise RuntimeError(f"bundle by {kind}: no bundle signer")
                    requests = counting.requests
                label = "" if mode == "off" else f", bundle by {kind}"
                results[f"cold, policy {mode}, OCI 1.1 registry{label}"] = (
                    statistics.median(samples),
                    requests,
                )
        return results
    finally:
        registry.stop()


def cosign_binary() -> Path:
    out = subprocess.run(
        ["bash", str(REPO / "scripts/setup.d/45-cosign.sh")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return Path(dict(line.split("=", 1) for line in out.splitlines())["cosign"])


def cosign_env(home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "TUF_ROOT": str(home / "tuf"),
        "COSIGN_PASSWORD": "benchmark",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1",
    }


async def resolve(
    cache_dir: Path, image: str, policy: SignaturePolicy, resolver: ImageResolver | None = None
) -> tuple[float, int, ImageResolver, Counting]:
    counting = Counting()
    own = resolver or ImageResolver(
        ModuleCache(cache_dir),
        MappingPullSecretStore(),
        registry_config=image_pull.CONFIG,
        transport=counting,
        signatures=SignatureVerifier(policy),
    )
    start = time.perf_counter()
    resolution = await own.resolve(image_pull.extension(image, "IfNotPresent"))
    elapsed = time.perf_counter() - start
    if resolution.state is not ResolutionState.READY:
        raise RuntimeError(resolution.message)
    return elapsed, counting.requests, own, counting


async def resolve_costs(
    work: Path, image: str, policy: SignaturePolicy, repetitions: int
) -> dict[str, tuple[float, int]]:
    results: dict[str, tuple[float, int]] = {}
    for name, chosen in (("off", SIGNATURES_OFF), ("enforce", policy)):
        samples, requests = [], 0
        for run in range(repetitions):
            elapsed, requests, resolver, _ = await resolve(work / f"{name}-{run}", image, chosen)
            await resolver.aclose()
            samples.append(elapsed)
        results[f"cold, policy {name}"] = (statistics.median(samples), requests)
    elapsed, _, resolver, counting = await resolve(work / "warm", image, policy)
    samples = []
    before = counting.requests
    for _ in range(repetitions):
        start = time.perf_counter()
        resolution = await resolver.resolve(image_pull.extension(image, "IfNotPresent"))
        samples.append(time.perf_counter() - start)
        if resolution.module is None or resolution.module.signer is None:
            raise RuntimeError("warm resolve lost the signer")
    await resolver.aclose()
    results["warm, policy enforce (digest verified before)"] = (
        statistics.median(samples),
        (counting.requests - before) // repetitions,
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repetitions", type=int, default=7)
    args = parser.parse_args()
    verify = verify_costs(args.repetitions)
    with tempfile.TemporaryDirectory() as temp:
        work = Path(temp)
        bundles = bundle_costs(work, args.repetitions)
        bundled = asyncio.run(bundle_resolves(work, args.repetitions))
        (work / "registry").mkdir()
        process, host = image_pull.start_registry(work / "registry")
        try:
            module = work / "module.wasm"
            module.write_bytes(image_pull.padded_module(1 << 20))
            image = f"{host}/bench/signed:v1"
            built = subprocess.run(
                [
                    str(REPO / ".venv/bin/meshext"), "image", "build", f"--wasm={module}",
                    "--name=bench", "--phase=PostAuthZ", f"--tag={image}",
                    "--insecure-registry=127.0.0.1", "--quiet",
                ],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            digest = built.stdout.split()[0]
            pinned = f"{host}/bench/signed@{digest}"
            home = work / "cosign"
            (home / "tuf").mkdir(parents=True)
            cosign = cosign_binary()
            env = cosign_env(home)
            subprocess.run(
                [str(cosign), "generate-key-pair", "--output-key-prefix", str(home / "k")],
                env=env, cwd=home, check=True, capture_output=True,
            )  # fmt: skip
            subprocess.run(
                [
                    str(cosign), "sign", "--key", str(home / "k.key"), "--tlog-upload=false",
                    "--yes", "--allow-insecure-registry", "--allow-http-registry", pinned,
                ],
                env=env, cwd=home, check=True, capture_output=True,
            )  # fmt: skip
            trusted = work / "trusted"
            trusted.mkdir()
            (trusted / "k.pub").write_bytes((home / "k.pub").read_bytes())
            policy = SignaturePolicy(SignatureMode.ENFORCE, load_trusted_keys(trusted))
            resolves = asyncio.run(resolve_costs(work, pinned, policy, args.repetitions))
        finally:
            process.terminate()
            process.wait()
    lines = [
        "| measurement | median | registry requests |",
        "|---|---|---|",
        *(f"| verify one signature, {k} | {v * 1e6:.0f} µs | 0 |" for k, v in verify.items()),
        *(f"| verify one bundle, {k} | {v * 1e6:.0f} µs | 0 |" for k, v in bundles.items()),
        *(f"| resolve, {k} | {v * 1e3:.1f} ms | {n} |" for k, (v, n) in resolves.items()),
        *(f"| resolve, {k} | {v * 1e3:.1f} ms | {n} |" for k, (v, n) in bundled.items()),
    ]
    table = "\n".join(lines)
    print(table)
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else ""
    start, end = "<!-- results -->", "<!-- /results -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1]
        readme.write_text(text)


if __name__ == "__main__":
    main()
