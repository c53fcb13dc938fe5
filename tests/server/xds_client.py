"""A Python ADS client that claims a node, for tests of who may speak for a proxy.

It opens one stream (state of the world or delta), names ``node_id`` with the
``metadata`` given, asks for listeners and reports the first thing that comes back:
a response, or the gRPC status the stream ended with.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format, struct_pb2

from meshext.identity.ca import CertificateAuthority, IssuedCertificate
from meshext.identity.spiffe import SpiffeId
from meshext.xds import types

WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class Answer:
    """What a claim got: a response (``resources`` names) or an error status."""

    code: grpc.StatusCode
    details: str = ""
    response: Any = None

    @property
    def got_configuration(self) -> bool:
        return self.response is not None


def client_credentials(
    bundle: bytes, issued: IssuedCertificate | None = None
) -> grpc.ChannelCredentials:
    if issued is None:
        return grpc.ssl_channel_credentials(root_certificates=bundle)
    return grpc.ssl_channel_credentials(
        root_certificates=bundle, private_key=issued.key_pem, certificate_chain=issued.cert_pem
    )


def workload_credentials(
    ca: CertificateAuthority, trusted: bytes, namespace: str, service_account: str = "default"
) -> grpc.ChannelCredentials:
    issued = ca.issue_workload(SpiffeId(ca.trust_domain, namespace, service_account))
    return client_credentials(trusted, issued)


async def claim(
    address: str,
    node_id: str,
    metadata: Mapping[str, object],
    credentials: grpc.ChannelCredentials | None,
    *,
    delta: bool = False,
) -> Answer:
    """Open a stream as ``node_id`` and return the first answer."""
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    node = base_pb2.Node(id=node_id, cluster="attacker")
    node.metadata.CopyFrom(json_format.ParseDict(dict(metadata), struct_pb2.Struct()))
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
    try:
        if delta:
            call = stub.DeltaAggregatedResources()
            await call.write(
                discovery_pb2.DeltaDiscoveryRequest(node=node, type_url=types.LISTENER)
            )
        else:
            call = stub.StreamAggregatedResources()
            await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=types.LISTENER))
        try:
            response = await asyncio.wait_for(call.read(), WAIT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            return Answer(exc.code(), exc.details() or "")
        if response is grpc.aio.EOF:
            return Answer(await call.code(), await call.details())
        call.cancel()
        return Answer(grpc.StatusCode.OK, response=response)
    except grpc.aio.AioRpcError as exc:
        return Answer(exc.code(), exc.details() or "")
    finally:
        await channel.close()
