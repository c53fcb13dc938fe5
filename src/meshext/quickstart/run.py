"""``meshext quickstart``: meshext, a demo app and its Envoy sidecar, and a tour of them.

Everything runs on loopback: the control plane in this process serving the quickstart
folder, the demo app (it echoes requests back, so added headers show), and a real
Envoy sidecar in front of it, configured by meshext over xDS. The tour sends a few
requests through the sidecar and shows what the extensions did; then, unless asked
to stop, it keeps everything running for the user to edit the folder and watch, and
stops every process it started on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from meshext.envoy.bootstrap import AdsServer, XdsTls, sidecar_bootstrap
from meshext.identity.issuance import keep_renewed, proxy_credentials
from meshext.mesh.workload import ProxyKind
from meshext.quickstart.echo import start_echo_app
from meshext.quickstart.envoy_process import EnvoyProcess
from meshext.server.app import RunningControlPlane, ServeOptions, running_control_plane
from meshext.server.control import ControlPlane
from meshext.server.delivery import DeliveryState

NAMESPACE = "bookinfo"
LABELS = {"app": "httpbin", "version": "v1"}
TOKEN_HEADER = "x-mesh-token"


@dataclass(frozen=True)
class QuickstartOptions:
    config: Path
    sidecar_port: int = 18000
    envoy_admin_port: int = 19000
    xds_address: str = "127.0.0.1:15010"
    admin_address: str = "127.0.0.1:15014"
    module_address: str = "127.0.0.1:15080"
    stay: bool = True
    timeout: float = 120.0


async def run_quickstart(options: QuickstartOptions, console: Console) -> bool:
    """Run the tour; returns whether every check of it passed."""
    workdir = Path(tempfile.mkdtemp(prefix="meshext-quickstart-"))
    serve = ServeOptions(
        config=options.config,
        xds_address=options.xds_address,
        admin_address=options.admin_address,
        module_address=options.module_address,
        cache_dir=workdir / "cache",
        local_images=(options.config.parent,),
    )
    console.print(f"[bold]meshext quickstart[/bold]: serving {options.config}")
    async with running_control_plane(serve) as running:
        app = await start_echo_app()
        assert running.ca is not None
        credentials, tls = proxy_credentials(
            running.ca, NAMESPACE, directory=workdir / "credentials"
        )
        renewal = asyncio.create_task(keep_renewed(running.ca, credentials))
        envoy = EnvoyProcess(
            _bootstrap(options, running, app.port, tls), workdir, name="httpbin-sidecar"
        )
        try:
            await envoy.start()
            console.print(
                f"control plane: xDS 127.0.0.1:{running.xds_port} (mutual TLS, sidecar "
                f"identity {credentials.identity}), admin {running.admin_url}\n"
                f"demo app 'httpbin' (namespace {NAMESPACE}, labels "
                f"{','.join(f'{k}={v}' for k, v in LABELS.items())}) on 127.0.0.1:{app.port}, "
                f"its Envoy sidecar on 127.0.0.1:{options.sidecar_port} (admin {envoy.admin_url})"
            )
            ok = await _tour(options, running.control, envoy, console)
            if options.stay:
                meshext = _command_name()
                console.print(
                    "\nEverything keeps running. Edit the YAML files under "
                    f"{options.config} and send requests again, e.g.\n"
                    f"  curl -H '{TOKEN_HEADER}: yes' http://127.0.0.1:{options.sidecar_port}/\n"
                    f"  {meshext} status --admin {running.admin_url}\n"
                    f"  {meshext} proxies --admin {running.admin_url}\n"
                    "Press Ctrl-C to stop every process the quickstart started."
                )
                await _until_interrupted()
            return ok
        finally:
            renewal.cancel()
            await envoy.stop()
            await app.stop()
            console.print("stopped the sidecar, the demo app and the control plane")
            shutil.rmtree(workdir, ignore_errors=True)


def _bootstrap(
    options: QuickstartOptions, running: RunningControlPlane, app_port: int, tls: XdsTls
) -> dict[str, object]:
    return sidecar_bootstrap(
        name="httpbin",
        namespace=NAMESPACE,
        labels=LABELS,
        listen=f"127.0.0.1:{options.sidecar_port}",
        app=f"127.0.0.1:{app_port}",
        xds=AdsServer(running.xds_address, tls=tls),
        admin_port=options.envoy_admin_port,
        kind=ProxyKind.SIDECAR,
    )


async def _tour(
    options: QuickstartOptions, control: ControlPlane, envoy: EnvoyProcess, console: Console
) -> bool:
    if not await _wait_until_settled(control, options.timeout):
        console.print("[red]extensions did not all reach the sidecar in time[/red]")
    _print_status(control, console)
    url = f"http://127.0.0.1:{options.sidecar_port}/get"
    checks: list[bool] = []
    async with httpx.AsyncClient(timeout=10) as client:
        console.print(f"\n[bold]1.[/bold] GET {url} without {TOKEN_HEADER}")
        denied = await client.get(url)
        console.print(f"   → {denied.status_code} {denied.text.strip()[:80]}")
        checks.append(denied.status_code == 403)
        console.print(f"[bold]2.[/bold] GET {url} with {TOKEN_HEADER}: yes")
        allowed = await client.get(url, headers={TOKEN_HEADER: "yes"})
        console.print(f"   → {allowed.status_code}")
        appended: list[str] = []
        if allowed.status_code == 200:
            appended = [v for k, v in allowed.json()["headers"] if k.lower() == "x-header-append"]
        console.print(
            "   headers the app received from the extensions, in execution order: "
            + json.dumps(appended)
        )
        checks.append(allowed.status_code == 200 and appended == ["bookinfo", "test", "wasmplugin"])
    stats = await envoy.stats()
    counted = stats.get("wasmcustom.meshext_quickstart_requests")
    console.print(
        f"[bold]3.[/bold] request-counter's metric in Envoy: {counted} (the refused request "
        "stopped at require-token, PreAuthZ, before request-counter, PostStats, could count it)"
    )
    checks.append(counted == 1)
    verdict = "[green]all checks passed[/green]" if all(checks) else "[red]some checks failed[/red]"
    console.print(verdict)
    return all(checks)


async def _wait_until_settled(control: ControlPlane, timeout: float) -> bool:
    """Until every extension meant for a proxy runs there or was rejected."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        reports = control.reports()
        states = [p.state for r in reports for p in r.proxies]
        if states and DeliveryState.PENDING not in states:
            return True
        await asyncio.sleep(0.2)
    return False


def _print_status(control: ControlPlane, console: Console) -> None:
    table = Table(title="Extensions (meshext status)", title_justify="left")
    for column in ("extension", "ready", "phase", "priority", "on the sidecar", "message"):
        table.add_column(column)
    for report in control.reports():
        deployment = report.status.deployment
        states = ", ".join(p.state.value for p in report.proxies) or "-"
        table.add_row(
            f"{report.key.kind} {report.key.namespace}/{report.key.name}",
            "yes" if deployment.ready else "no",
            str(report.status.phase.value if report.status.phase else "-"),
            str(report.status.priority if report.status.priority is not None else "-"),
            states,
            deployment.message or "",
        )
    console.print(table)


def _command_name() -> str:
    """How the user can run ``meshext`` again: by name if it is on PATH, else by path."""
    if shutil.which("meshext"):
        return "meshext"
    here = Path(sys.argv[0])
    if here.name == "meshext" and here.exists():
        return os.path.relpath(here) if not here.is_absolute() else str(here)
    return f"{sys.executable} -m meshext"


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
