"""``meshext status``, ``meshext proxies`` and ``meshext config-dump``: views over the
admin API of a running ``meshext serve``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import httpx
from rich.table import Table

from meshext.cli.console import make_console

ADMIN_URL = "http://127.0.0.1:15014"
admin_option = click.option(
    "--admin",
    "admin",
    default=ADMIN_URL,
    show_default=True,
    envvar="MESHEXT_ADMIN",
    help="meshext's admin API: HOST:PORT as given to serve --admin-address, or a URL "
    "(environment: MESHEXT_ADMIN).",
)
output_option = click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    help="A table for people or JSON for programs.",
)


def admin_url(admin: str) -> str:
    """``HOST:PORT`` (the form of ``serve --admin-address``) or a URL, as a base URL."""
    admin = admin.strip().rstrip("/")
    return admin if "://" in admin else f"http://{admin}"


def fetch(admin: str, path: str) -> dict[str, Any]:
    url = admin_url(admin) + path
    try:
        response = httpx.get(url, timeout=10)
    except httpx.HTTPError as exc:
        click.echo(f"error: cannot reach meshext's admin API at {admin}: {exc}", err=True)
        sys.exit(1)
    if response.status_code != 200:
        click.echo(f"error: {url}: {response.status_code} {response.text.strip()}", err=True)
        sys.exit(1)
    body: dict[str, Any] = response.json()
    return body


@click.command()
@admin_option
@output_option
def status(admin: str, output: str) -> None:
    """Extensions with their status: resolved phase and priority, module, and proxies."""
    body = fetch(admin, "/api/v1/extensions")
    errors = fetch(admin, "/api/v1/errors")["errors"]
    security = fetch(admin, "/api/v1/security")
    if output == "json":
        click.echo(json.dumps({**body, "errors": errors, "security": security}, indent=2))
        return
    console = make_console()
    if security.get("warning"):
        console.print(f"[bold red]WARNING[/bold red]: {security['warning']}")
    table = Table(title="Extensions", title_justify="left")
    for column in ("extension", "ready", "phase", "priority", "sha256", "proxies", "message"):
        table.add_column(column)
    for ext in body["extensions"]:
        st = ext["status"]
        deployment = st.get("deployment", {})
        # Proxies not running it with a reason: rejected, or pending after a rejection
        # (a remote module the proxy has not fetched yet).
        troubled = [p for p in ext["proxies"] if p["state"] != "Running" and p.get("message")]
        parts = [deployment["message"]] if deployment.get("message") else []
        parts += [f"{p['proxy']}: {p['message']}" for p in troubled]
        message = "; ".join(parts)
        table.add_row(
            f"{ext['kind']} {ext['namespace']}/{ext['name']}",
            "yes" if deployment.get("ready") else "no",
            str(st.get("phase") or "-"),
            str(st.get("priority") if st.get("priority") is not None else "-"),
            (deployment.get("sha256") or "-")[:12],
            ext["summary"],
            message,
        )
    console.print(table)
    for ext in body["extensions"]:
        deployment = ext["status"].get("deployment", {})
        if deployment.get("signer"):
            console.print(
                f"{ext['namespace']}/{ext['name']}: image {deployment.get('containerSha256')} "
                f"signed by {deployment['signer']}"
            )
    for error in errors:
        label = "error" if error.startswith("control loop:") else "configuration error"
        console.print(f"[yellow]{label}[/yellow]: {error}")


@click.command()
@admin_option
@output_option
def proxies(admin: str, output: str) -> None:
    """Connected proxies, their workload, and the extensions they run."""
    body = fetch(admin, "/api/v1/proxies")
    if output == "json":
        click.echo(json.dumps(body, indent=2))
        return
    console = make_console()
    table = Table(title="Proxies", title_justify="left")
    for column in ("proxy", "workload", "extensions (in order)", "problems"):
        table.add_column(column)
    for proxy in body["proxies"]:
        workload = proxy.get("workload", {})
        labels = ",".join(f"{k}={v}" for k, v in sorted(workload.get("labels", {}).items()))
        extensions = [
            e["name"] + (" (left out)" if e.get("leftOut") else "")
            for e in proxy.get("extensions", [])
        ]
        problems = [proxy["error"]] if proxy.get("error") else []
        problems += [f"{t}: {d}" for t, d in proxy.get("rejections", {}).items()]
        problems += [
            f"{e['name']}: {e['leftOut']}" for e in proxy.get("extensions", []) if e.get("leftOut")
        ]
        table.add_row(
            proxy["node"],
            f"{workload.get('kind', '?')} {workload.get('namespace', '?')} {labels}",
            "\n".join(extensions) or "-",
            "\n".join(problems) or "-",
        )
    console.print(table)


@click.command("config-dump")
@click.argument("proxy")
@admin_option
def config_dump(proxy: str, admin: str) -> None:
    """The configuration meshext generated for PROXY (its node id), as JSON."""
    body = fetch(admin, f"/api/v1/proxies/{httpx.URL(proxy).path}/config")
    click.echo(json.dumps(body, indent=2))
