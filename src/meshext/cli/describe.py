"""``meshext validate`` and ``meshext describe``: check a folder, explain a workload's chain."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from meshext.api.meta import ResourceKey
from meshext.cli.console import make_console
from meshext.cli.options import parse_labels, registry_options, registry_transport_options
from meshext.cli.trust_options import signature_options
from meshext.cli.trust_options import signature_policy as signature_policy_of
from meshext.envoy import names
from meshext.envoy.sidecar import filter_chain, filter_names, network_chain
from meshext.images.cache import ModuleCache
from meshext.images.resolver import ImageResolver
from meshext.images.secrets import FolderPullSecretStore
from meshext.images.verification import SignatureVerifier
from meshext.mesh.extension import Extension
from meshext.mesh.model import build_model
from meshext.mesh.planner import PlannedExtension, WorkloadPlan, plan_workload
from meshext.mesh.resolution import Resolution
from meshext.mesh.traffic import Direction, Side
from meshext.mesh.workload import ProxyKind, Workload
from meshext.preflight.gate import preflight_all
from meshext.preflight.runner import PreflightRunner
from meshext.preflight.store import PreflightStore
from meshext.server.app import default_cache_dir
from meshext.sources.folder import load_folder


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
def validate(folder: Path) -> None:
    """Check every resource below FOLDER; list every error (exit 1) or say it is valid."""
    result = load_folder(folder)
    model = build_model(r.resource for r in result.resources)
    errors = [*result.errors, *model.errors]
    err = make_console(stderr=True)
    for error in errors:
        err.print(f"[red]error[/red]: {error}", markup=True)
    if errors:
        err.print(f"{len(errors)} error(s); {len(result.resources)} resource(s) valid")
        sys.exit(1)
    click.echo(f"{folder}: {len(result.resources)} resource(s) valid")


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--namespace", "-n", required=True, help="Namespace of the workload.")
@click.option("--labels", "-l", default="", help="Workload labels, k=v,k2=v2.")
@click.option("--gateway", is_flag=True, help="The workload is a gateway, not a sidecar.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Explain the listener of this port (inbound, gateway, or with --outbound the "
    "destination port); default: any port.",
)
@click.option(
    "--outbound", is_flag=True, help="Explain the sidecar's outbound side (what the app sends)."
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    help="A table for people or JSON for programs.",
)
@click.option(
    "--offline",
    is_flag=True,
    help="Do not resolve images: phase and priority must then come from the resources.",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Module cache folder (default: $MESHEXT_CACHE/modules or ~/.cache/meshext/modules).",
)
@registry_transport_options
@signature_options
def describe(
    folder: Path,
    namespace: str,
    labels: str,
    gateway: bool,
    port: int | None,
    outbound: bool,
    output: str,
    offline: bool,
    cache_dir: Path | None,
    insecure_registry: tuple[str, ...],
    ca_file: Path | None,
    registry_config: Path | None,
    trusted_keys: Path | None,
    signature_policy: str | None,
) -> None:
    """Explain which extensions from FOLDER run on a workload, in what order, and why
    the others do not. Images are resolved (pulled into the module cache) unless
    --offline, so defaults from their manifest.yaml count and broken images show, and
    every resolved module is started with its configuration in the pre-flight sandbox,
    so a module that would not start shows as not applied, in its own words."""
    if outbound and gateway:
        raise click.UsageError("a gateway has no outbound side; drop --outbound or --gateway")
    side = Side(
        Direction.GATEWAY if gateway else Direction.OUTBOUND if outbound else Direction.INBOUND,
        port,
    )
    result = load_folder(folder)
    model = build_model(r.resource for r in result.resources)
    workload = Workload(
        namespace=namespace,
        labels=parse_labels(labels),
        kind=ProxyKind.GATEWAY if gateway else ProxyKind.SIDECAR,
    )
    resolutions: dict[ResourceKey, Resolution] = {}
    if not offline:
        cache = cache_dir or default_cache_dir()
        resolver = ImageResolver(
            ModuleCache(cache),
            FolderPullSecretStore(folder),
            registry_config=registry_options(insecure_registry, ca_file, registry_config),
            signatures=SignatureVerifier(signature_policy_of(trusted_keys, signature_policy)),
        )
        runner = PreflightRunner(store=PreflightStore(cache / "preflight"))
        resolutions = asyncio.run(_resolve_all(resolver, runner, model.extensions))
    plan = plan_workload(model.topology, model.extensions, resolutions, workload, offline=offline)
    err = make_console(stderr=True)
    for error in [*result.errors, *model.errors]:
        err.print(f"[yellow]warning[/yellow]: {error}")
    applied = {p.key for p in plan.applied}
    for key, resolution in sorted(resolutions.items(), key=lambda item: str(item[0])):
        if key in applied and resolution.module is not None and resolution.message:
            err.print(f"[yellow]warning[/yellow]: {key}: {resolution.message}", highlight=False)
    if output == "json":
        click.echo(json.dumps(plan_to_json(plan, side), indent=2))
        return
    _print_plan(plan, side)


async def _resolve_all(
    resolver: ImageResolver, runner: PreflightRunner, extensions: Sequence[Extension]
) -> dict[ResourceKey, Resolution]:
    """Resolve every image, then start every resolved combination in the pre-flight."""
    results = await asyncio.gather(*(resolver.resolve(e) for e in extensions))
    resolved = {e.key: r for e, r in zip(extensions, results, strict=True)}
    return await preflight_all(runner, extensions, resolved)


def plan_to_json(plan: WorkloadPlan, side: Side | None = None) -> dict[str, Any]:
    """The plan as JSON; with ``side``, which extensions run on that listener, and its chains."""
    document: dict[str, Any] = {
        "workload": {
            "namespace": plan.workload.namespace,
            "labels": dict(plan.workload.labels),
            "kind": plan.workload.kind.value,
        },
        "extensions": [_applied_json(p, i, side) for i, p in enumerate(plan.applied, start=1)],
        "skipped": [
            {
                "kind": s.key.kind,
                "namespace": s.key.namespace,
                "name": s.key.name,
                "reason": s.reason.value,
                "detail": s.detail,
            }
            for s in plan.skipped
        ],
    }
    if side is not None:
        document["listener"] = {"direction": side.direction.value, "port": side.port}
        document["networkFilters"] = [
            names.extension_config_name(p.key) for p in network_chain(plan, side)
        ]
        document["httpFilters"] = filter_names(plan, side)
    return document


def _applied_json(planned: PlannedExtension, order: int, side: Side | None) -> dict[str, Any]:
    module = planned.module
    ext = planned.extension
    extra: dict[str, Any] = {
        "type": ext.layer.value,
        "match": [
            {"directions": sorted(d.value for d in s.directions), "ports": sorted(s.ports)}
            for s in ext.traffic.selectors
        ],
        "targets": [{"kind": t.kind, "name": t.name} for t in ext.targets],
    }
    if side is not None:
        extra["onListener"] = ext.traffic.selects(side)
    return {
        "order": order,
        "kind": planned.key.kind,
        "namespace": planned.key.namespace,
        "name": planned.key.name,
        "phase": planned.phase.value,
        "priority": planned.priority,
        "rootId": planned.root_id,
        "image": planned.extension.image,
        "sha256": module.sha256 if module else None,
        "imageDigest": module.image_digest if module else None,
        "signer": module.signer if module else None,
        **extra,
    }


def _print_plan(plan: WorkloadPlan, side: Side) -> None:
    console = make_console()
    w = plan.workload
    labels = ",".join(f"{k}={v}" for k, v in sorted(w.labels.items())) or "(none)"
    console.print(
        f"[bold]{w.kind.value}[/bold] in namespace [bold]{w.namespace}[/bold], labels {labels}"
    )
    table = Table(title="Extensions, in execution order", title_justify="left")
    columns = ("#", "phase", "priority", "extension", "root id", "type", "traffic", f"on {side}")
    for column in (*columns, "image"):
        table.add_column(column)
    for i, p in enumerate(plan.applied, start=1):
        ext = p.extension
        table.add_row(
            str(i),
            p.phase.value,
            str(p.priority),
            str(p.key),
            repr(p.root_id),
            ext.layer.value,
            ext.traffic.describe(),
            "yes" if ext.traffic.selects(side) else "no",
            ext.image,
        )
    console.print(table)
    for p in plan.applied:
        if p.module is not None and p.module.signer:
            console.print(f"{p.key}: image {p.module.image_digest} signed by {p.module.signer}")
    network = network_chain(plan, side)
    if network:
        shown = [f"[cyan]{p.key.name}[/cyan]" for p in network]
        console.print(
            f"Network filters ({side}): " + " → ".join([*shown, names.HCM_FILTER]),
            highlight=False,
        )
    chain = filter_chain(plan, side)
    rendered = [c if isinstance(c, str) else f"[cyan]{c.key.name}[/cyan]" for c in chain]
    console.print(f"HTTP filter chain ({side}): " + " → ".join(rendered), highlight=False)
    if plan.skipped:
        skipped = Table(title="Not applied", title_justify="left")
        for column in ("extension", "reason", "detail"):
            skipped.add_column(column)
        for s in plan.skipped:
            skipped.add_row(str(s.key), s.reason.value, s.detail)
        console.print(skipped)


_MESH_CHAIN = (
    "envoy.filters.http.jwt_authn",
    "envoy.filters.http.rbac",
    "envoy.filters.http.router",
)
