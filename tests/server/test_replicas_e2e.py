"""Several ``meshext serve`` replicas on one config folder give every proxy the same
configuration, byte for byte, so a proxy moved between them receives nothing new.

Three replicas run as separate processes (``python -m meshext serve``), each with its
own state folder and ports, sharing the config folder, the module cache path and the
mesh CA (``--mesh-ca-cert``/``--mesh-ca-key``). A real Envoy sidecar, bootstrapped by
``meshext bootstrap`` with the same CA, reaches them through a TCP pass-through
balancer (mutual TLS end to end with whichever replica serves it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format, struct_pb2

from meshext.identity import ca as ca_files
from meshext.identity.spiffe import DEFAULT_TRUST_DOMAIN
from meshext.quickstart.echo import start_echo_app
from meshext.quickstart.envoy_process import EnvoyProcess
from meshext.xds import types
from tests.envoy.harness import eventually
from tests.envoy.support import build_examples
from tests.network import free_port
from tests.server.mesh import CONTROL_PLANE, sme
from tests.server.passthrough import Passthrough, passthrough

pytestmark = pytest.mark.e2e

REPLICAS = 3
DEADLINE = 120.0
ECDS = "envoy.config.core.v3.TypedExtensionConfig"


@dataclass
class Replica:
    index: int
    xds: int
    admin: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"

    async def get(self, path: str) -> Any:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(self.admin_url + path)
            response.raise_for_status()
            return response.json()

    async def proxy(self, node_id: str) -> dict[str, Any] | None:
        proxies = (await self.get("/api/v1/proxies"))["proxies"]
        return next((p for p in proxies if p["node"] == node_id and p["streams"]), None)


@dataclass(frozen=True)
class SharedSetup:
    config: Path
    cache: Path
    ca_cert: Path
    ca_key: Path
    workdir: Path

    def ca_flags(self) -> list[str]:
        return ["--mesh-ca-cert", str(self.ca_cert), "--mesh-ca-key", str(self.ca_key)]


def write_manifest(folder: Path, name: str, text: str) -> None:
    temporary = folder / f".{name}.tmp"
    temporary.write_text(text)
    temporary.rename(folder / name)


@pytest.fixture
def shared(tmp_path: Path) -> SharedSetup:
    config = tmp_path / "config"
    config.mkdir()
    write_manifest(config, "00-mesh.yaml", CONTROL_PLANE.format(enabled="true", members="bookinfo"))
    write_manifest(
        config, "tag.yaml", sme("bookinfo", "tag", "header-append", config={"value": "first"})
    )
    # The operator's CA, made once and handed to every replica (a Secret, a shared file).
    ca_files.load_or_create(tmp_path / "mesh-ca", DEFAULT_TRUST_DOMAIN)
    return SharedSetup(
        config=config,
        cache=tmp_path / "module-cache",
        ca_cert=tmp_path / "mesh-ca" / ca_files.CA_CERT_FILE,
        ca_key=tmp_path / "mesh-ca" / ca_files.CA_KEY_FILE,
        workdir=tmp_path,
    )


@contextlib.contextmanager
def replicas(setup: SharedSetup, count: int) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for index in range(count):
            xds, admin, log = free_port(), free_port(), setup.workdir / f"serve-{index}.log"
            env = {**os.environ, "MESHEXT_CACHE": str(setup.workdir / f"state-{index}")}
            argv = [
                sys.executable, "-m", "meshext", "serve", "--config", str(setup.config),
                "--xds-address", f"127.0.0.1:{xds}",
                "--admin-address", f"127.0.0.1:{admin}",
                "--module-address", f"127.0.0.1:{free_port()}",
                "--cache-dir", str(setup.cache),
                "--local-images", str(build_examples()),
                *setup.ca_flags(),
            ]  # fmt: skip
            with log.open("wb") as out:
                process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
            started.append(Replica(index, xds, admin, process, log))
        yield started
    finally:
        for replica in started:
            replica.process.send_signal(signal.SIGINT)
        for replica in started:
            try:
                replica.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()


async def extension_states(replica: Replica) -> list[tuple[str, bool, list[str]]]:
    extensions = (await replica.get("/api/v1/extensions"))["extensions"]
    return [
        (
            e["name"],
            bool(e["status"].get("deployment", {}).get("ready")),
            [p["state"] for p in e["proxies"]],
        )
        for e in extensions
    ]


async def observed_generations(replica: Replica) -> list[int]:
    extensions = (await replica.get("/api/v1/extensions"))["extensions"]
    return [e["status"].get("observedGeneration") for e in extensions]


async def until_ready(replica: Replica, proxies: list[str]) -> None:
    await eventually(
        lambda: extension_states(replica),
        lambda states: states == [("tag", True, proxies)],
        f"replica {replica.index}: tag ready and Running on {proxies}",
        deadline=DEADLINE,
    )


@contextlib.asynccontextmanager
async def sidecar(
    setup: SharedSetup, balancer: Passthrough, *, delta: bool
) -> AsyncIterator[Sidecar]:
    app = await start_echo_app()
    port = free_port()
    credentials = setup.workdir / "sidecar-credentials"
    printed = subprocess.run(
        [
            sys.executable, "-m", "meshext", "bootstrap", "--name", "httpbin", "-n", "bookinfo",
            "-l", "app=httpbin", "--listen", f"127.0.0.1:{port}", "--app", f"127.0.0.1:{app.port}",
            "--xds-address", balancer.address, "--admin-port", str(free_port()),
            "--credentials-dir", str(credentials), *setup.ca_flags(),
            *(["--delta"] if delta else []),
        ],
        env={**os.environ, "MESHEXT_CACHE": str(setup.workdir / "sidecar-state")},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    bootstrap = yaml.safe_load(printed.stdout)
    envoy = EnvoyProcess(bootstrap, setup.workdir, name="sidecar")
    try:
        await envoy.start()
        yield Sidecar(envoy, port, bootstrap["node"], credentials)
    finally:
        await envoy.stop()
        await app.stop()


@dataclass
class Sidecar:
    envoy: EnvoyProcess
    port: int
    node: dict[str, Any]
    credentials: Path

    @property
    def node_id(self) -> str:
        node_id: str = self.node["id"]
        return node_id

    async def appended(self) -> list[str]:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"http://127.0.0.1:{self.port}/")
        if response.status_code != 200:
            return [f"status {response.status_code}"]
        return [v for k, v in response.json()["headers"] if k.lower() == "x-header-append"]

    async def updates(self) -> dict[str, int]:
        """Envoy's counters of configuration updates it accepted or rejected."""
        return {
            name: value
            for name, value in (await self.envoy.stats()).items()
            if name.endswith((".update_success", ".update_rejected"))
            and ("lds" in name or "cds" in name or "extension_config_discovery" in name)
        }


async def until_holds(
    replica: Replica, node_id: str, held: dict[str, dict[str, str]]
) -> dict[str, Any]:
    """Waits until ``replica`` sees the proxy connected and holding ``held``."""

    async def probe() -> dict[str, Any] | None:
        return await replica.proxy(node_id)

    proxy = await eventually(
        probe,
        lambda p: p is not None and len(p["streams"]) == 1 and versions(p) == held,
        f"replica {replica.index} seeing the sidecar hold the versions it held before",
        deadline=DEADLINE,
    )
    assert proxy is not None
    return proxy


def versions(proxy: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """What a replica says the proxy holds: per type, the version (content hash) of each
    resource."""
    (stream,) = proxy["streams"]
    return {type_name: status["resources"] for type_name, status in stream["types"].items()}


async def fetch_raw(
    replica: Replica, node: Mapping[str, Any], credentials: Path, extension_names: list[str]
) -> dict[str, tuple[str, list[tuple[str, bytes]]]]:
    """The serialized resources a replica sends to ``node``, per type: the response's
    version and each resource's type URL and bytes, as they go on the wire."""
    channel_credentials = grpc.ssl_channel_credentials(
        root_certificates=(credentials / "ca.pem").read_bytes(),
        private_key=(credentials / "key.pem").read_bytes(),
        certificate_chain=(credentials / "cert.pem").read_bytes(),
    )
    request_node = base_pb2.Node(id=node["id"], cluster=node.get("cluster", ""))
    request_node.metadata.CopyFrom(
        json_format.ParseDict(node.get("metadata", {}), struct_pb2.Struct())
    )
    wanted = [
        (types.CLUSTER, []),
        (types.LISTENER, []),
        (types.EXTENSION_CONFIG, extension_names),
    ]
    found: dict[str, tuple[str, list[tuple[str, bytes]]]] = {}
    async with grpc.aio.secure_channel(f"127.0.0.1:{replica.xds}", channel_credentials) as channel:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        for type_url, names in wanted:
            await call.write(
                discovery_pb2.DiscoveryRequest(
                    node=request_node, type_url=type_url, resource_names=names
                )
            )
            response = await asyncio.wait_for(call.read(), 30)
            assert isinstance(response, discovery_pb2.DiscoveryResponse), response
            assert response.type_url == type_url
            found[type_url] = (
                response.version_info,
                [(r.type_url, r.value) for r in response.resources],
            )
        call.cancel()
    return found


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
async def test_replicas_serve_identical_bytes_and_a_moved_proxy_gets_nothing_new(
    shared: SharedSetup, delta: bool
) -> None:
    with replicas(shared, REPLICAS) as running:
        for replica in running:
            await until_ready(replica, [])
        async with (
            passthrough(running[0].xds) as balancer,
            sidecar(shared, balancer, delta=delta) as proxy,
        ):
            await eventually(proxy.appended, lambda h: h == ["first"], "the header", deadline=90)
            await until_ready(running[0], ["Running"])
            first = await running[0].proxy(proxy.node_id)
            assert first is not None
            held = versions(first)
            dump = (await running[0].get(f"/api/v1/proxies/{proxy.node_id}/config"))["resources"]
            updates = await proxy.updates()
            assert updates, "Envoy counts its configuration updates"

            for replica in running[1:]:
                await balancer.switch(replica.xds)
                moved = await until_holds(replica, proxy.node_id, held)
                # The sidecar announced what it holds and the replica had nothing to add.
                assert moved["streams"][0]["responsesSent"] == 0
                await until_ready(replica, ["Running"])
                config = await replica.get(f"/api/v1/proxies/{proxy.node_id}/config")
                assert config["resources"] == dump
                assert await proxy.updates() == updates
                assert await proxy.appended() == ["first"]

            # A change reaches the proxy once, from its replica; every replica agrees on it.
            write_manifest(
                shared.config,
                "tag.yaml",
                sme("bookinfo", "tag", "header-append", config={"value": "second"}),
            )
            await eventually(proxy.appended, lambda h: h == ["second"], "the changed header")
            changed = await proxy.updates()
            ecds = [k for k in changed if "extension_config_discovery" in k]
            assert sum(changed[k] - updates.get(k, 0) for k in ecds) == 1
            assert {k: v for k, v in changed.items() if k not in ecds} == {
                k: v for k, v in updates.items() if k not in ecds
            }

            async def on_last() -> dict[str, Any] | None:
                return await running[-1].proxy(proxy.node_id)

            def acked_change(p: dict[str, Any] | None) -> bool:
                return p is not None and versions(p)[ECDS] != held[ECDS]

            last = await eventually(on_last, acked_change, "the change ACKed", deadline=DEADLINE)
            assert last is not None
            now_held = versions(last)
            for replica in running:  # every replica has seen the edit
                await eventually(
                    functools.partial(observed_generations, replica),
                    lambda generations: generations == [2],
                    f"replica {replica.index} seeing the edit",
                    deadline=DEADLINE,
                )
            await balancer.switch(running[0].xds)
            back = await until_holds(running[0], proxy.node_id, now_held)
            assert back["streams"][0]["responsesSent"] == 0
            await until_ready(running[0], ["Running"])
            assert await proxy.updates() == changed

            # The same bytes on the wire from every replica, for the same proxy.
            names = sorted(dump[ECDS])
            raw = [await fetch_raw(r, proxy.node, proxy.credentials, names) for r in running]
            assert raw[0][types.EXTENSION_CONFIG][1], "the extension's config was sent"
            assert all(r == raw[0] for r in raw[1:])
            assert len(raw[0][types.EXTENSION_CONFIG][1]) == len(now_held[ECDS])
