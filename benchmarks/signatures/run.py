"""Signature policy benchmark: what checking cosign signatures costs a resolve.

Starts Debian's ``docker-registry`` on 127.0.0.1 (the helper of
``benchmarks/image_pull``), pushes a Maistra image with ``meshext image build
--tag``, signs it by digest with the ``cosign`` that ``scripts/setup.d/45-cosign.sh``
builds (no transparency log, nothing leaves 127.0.0.1), then measures, with
``--repetitions`` runs each (median reported):

* one signature verification in process (``judge``), ECDSA P-256 and Ed25519ph;
* a cold resolve of the image pinned by digest with the policy off and with
  ``enforce`` (a new cache and resolver per run), and the registry requests each makes;
* a warm resolve (image cached, digest already verified by this resolver).

Writes the results into README.md beside this file.

    .venv/bin/python benchmarks/signatures/run.py [--repetitions 7]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from nacl.bindings import (
    crypto_sign_ed25519ph_final_create,
    crypto_sign_ed25519ph_state,
    crypto_sign_ed25519ph_update,
)

from meshext.images.cache import ModuleCache
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import MappingPullSecretStore
from meshext.images.signatures import COSIGN_PAYLOAD_TYPE, FoundSignature, judge
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
_spec = importlib.util.spec_from_file_location("image_pull_run", HERE.parent / "image_pull/run.py")
assert _spec is not None
assert _spec.loader is not None
image_pull = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(image_pull)

DIGEST = "sha256:" + "ab" * 32


class Counting(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
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
        *(f"| resolve, {k} | {v * 1e3:.1f} ms | {n} |" for k, (v, n) in resolves.items()),
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
