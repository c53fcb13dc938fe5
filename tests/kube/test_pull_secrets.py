"""Pull secrets are read only in the namespace of the extension being resolved."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration

from meshext.kube.client import KubeClient
from meshext.kube.secrets import KubePullSecretStore, PullSecretError, only_namespace


def _unreachable_client() -> KubeClient:
    configuration = Configuration()
    configuration.host = "https://127.0.0.1:9"
    return KubeClient(ApiClient(configuration=configuration), request_timeout=1)


async def test_a_secret_of_another_namespace_is_refused_before_asking_the_api_server() -> None:
    client = _unreachable_client()
    try:
        store = KubePullSecretStore(client)
        with only_namespace("team-a"), pytest.raises(PullSecretError, match="own namespace"):
            await store.get("team-b", "regcred")
    finally:
        await client.close()


async def test_the_restriction_follows_tasks_started_while_resolving() -> None:
    client = _unreachable_client()
    try:
        store = KubePullSecretStore(client)
        with only_namespace("team-a"):
            task = asyncio.create_task(store.get("kube-system", "admin-token"))
        with pytest.raises(PullSecretError, match="'team-a'"):
            await task
    finally:
        await client.close()
