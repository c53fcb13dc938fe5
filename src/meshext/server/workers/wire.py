"""The messages between ``meshext serve`` and its xDS worker processes, and their bytes.

A frame is ``u32 length | u8 kind | u32 header length | header | blob``: the header is
a small JSON value (names, versions, references), the blob raw bytes (a resource's
serialized protobuf, sent as it will go on the xDS wire). Protobuf objects are never
pickled: a worker rebuilds ``google.protobuf.Any`` from the bytes it receives.

JSON (standard library) carries the headers because they are few and small: resources
are defined once per worker and referenced by number afterwards, so the frames sent
for each proxy hold a node id and one integer. The framing itself is ``struct``; a
schema library would add a dependency for a dozen message kinds.
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from meshext.errors import MeshextError
from meshext.xds.protocol import TypeStatus
from meshext.xds.server import ConnectionInfo
from meshext.xds.types import Node

_FRAME: Final = struct.Struct("!IBI")
MAX_FRAME: Final = 256 * 1024 * 1024


class WireError(MeshextError):
    """A frame between the main process and a worker is malformed."""


class Kind(enum.IntEnum):
    """What a frame says; the first group goes to workers, the second comes back."""

    DEFINE_RESOURCE = 1
    """header ``[ref, type_url, name, version, [[type_url, name], ...]]``, blob: value"""
    DEFINE_SNAPSHOT = 2
    """header ``[ref, [[type_url, [resource ref, ...]], ...]]``"""
    ASSIGN = 3
    """header ``[snapshot ref, [node_id, ...]]``"""
    RELEASE = 4
    """header ``[[snapshot ref, ...], [resource ref, ...]]``"""
    CLAIM = 5
    """header ``[node_id, identity or null]``: who holds a node id, for every worker"""
    VERDICT = 6
    """header ``[[request id, accepted, reason], ...]``: answers to ``CONNECT`` requests"""
    QUERY = 7
    """header ``[request id]``: asks for the worker's open streams"""

    READY = 20
    """header ``[port]``"""
    CONNECT = 21
    """header ``[[request id, node, identity], ...]``: the streams that named their node
    in one turn of the worker's event loop"""
    ACK = 22
    """header ``[[type_url, version, [name, ...], [node_id, ...]], ...]``: the ACKs of
    one turn of the worker's event loop, grouped by what was acknowledged"""
    NACK = 23
    """header ``[node_id, type_url, version, [name, ...], error detail]``"""
    DISCONNECT = 24
    """header ``[node_id]``"""
    CONNECTIONS = 25
    """header ``[request id, [connection, ...]]``: every open stream, answering ``QUERY``"""
    METRICS = 26
    """header ``[[name, type, help, [[sample name, labels, value], ...]], ...]``"""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: Kind
    header: Any
    blob: bytes = b""


def encode(kind: Kind, header: Any, blob: bytes = b"") -> bytes:
    """One frame's bytes."""
    text = json.dumps(header, separators=(",", ":")).encode()
    length = 5 + len(text) + len(blob)
    if length > MAX_FRAME:
        raise WireError(f"a {kind.name} frame of {length} bytes exceeds {MAX_FRAME}")
    return _FRAME.pack(length, kind, len(text)) + text + blob


def frame_length(prefix: bytes) -> int:
    """The length of the rest of the frame whose first four bytes are ``prefix``."""
    (length,) = struct.unpack("!I", prefix)
    if length < 5 or length > MAX_FRAME:
        raise WireError(f"frame length {length} is out of bounds")
    return int(length)


def decode_body(body: bytes) -> Frame:
    """The frame whose bytes after the length are ``body``."""
    if len(body) < 5:
        raise WireError("frame shorter than its header")
    kind_number, header_length = struct.unpack_from("!BI", body)
    try:
        kind = Kind(kind_number)
    except ValueError as exc:
        raise WireError(f"unknown frame kind {kind_number}") from exc
    end = 5 + header_length
    if end > len(body):
        raise WireError(f"{kind.name} frame: header runs past the frame")
    try:
        header = json.loads(body[5:end])
    except ValueError as exc:
        raise WireError(f"{kind.name} frame: header is not JSON: {exc}") from exc
    return Frame(kind, header, bytes(body[end:]))


class FrameBuffer:
    """Frames out of a byte stream fed in arbitrary pieces."""

    def __init__(self) -> None:
        self._data = bytearray()

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._data += data
        while len(self._data) >= 4:
            length = frame_length(bytes(self._data[:4]))
            if len(self._data) < 4 + length:
                return
            body = bytes(self._data[4 : 4 + length])
            del self._data[: 4 + length]
            yield decode_body(body)


# --- nodes, connections and metrics as JSON values ---------------------------------


def node_to_json(node: Node) -> dict[str, Any]:
    return {
        "id": node.id,
        "cluster": node.cluster,
        "metadata": _plain(node.metadata),
        "user_agent": node.user_agent,
        "locality": dict(node.locality),
    }


def node_from_json(value: Mapping[str, Any]) -> Node:
    try:
        return Node(
            id=str(value["id"]),
            cluster=str(value["cluster"]),
            metadata=MappingProxyType(dict(value["metadata"])),
            user_agent=str(value["user_agent"]),
            locality=MappingProxyType({str(k): str(v) for k, v in value["locality"].items()}),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise WireError(f"malformed node: {exc!r}") from exc


def connection_to_json(info: ConnectionInfo, worker: int) -> list[Any]:
    """``info`` with its stream id made unique across workers."""
    return [
        (worker << 40) | info.stream_id,
        info.node_id,
        info.cluster,
        _plain(info.metadata),
        info.user_agent,
        info.protocol,
        info.peer,
        info.connected_since.isoformat(),
        info.identity,
        {type_url: _type_status_to_json(status) for type_url, status in info.types.items()},
    ]


def connection_from_json(value: list[Any]) -> ConnectionInfo:
    try:
        stream_id, node_id, cluster, metadata, agent, protocol, peer, since, identity, kinds = value
        return ConnectionInfo(
            stream_id=int(stream_id),
            node_id=str(node_id),
            cluster=str(cluster),
            metadata=MappingProxyType(dict(metadata)),
            user_agent=str(agent),
            protocol="delta" if protocol == "delta" else "sotw",
            peer=str(peer),
            connected_since=datetime.fromisoformat(since),
            types=MappingProxyType(
                {str(t): _type_status_from_json(str(t), s) for t, s in kinds.items()}
            ),
            identity=str(identity),
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise WireError(f"malformed connection: {exc!r}") from exc


def _type_status_to_json(status: TypeStatus) -> list[Any]:
    return [
        status.wildcard,
        list(status.subscribed),
        status.acked_version,
        dict(status.resources),
        dict(status.rejected),
        status.last_nack,
        status.pending_nonce,
        status.responses_sent,
        status.acks,
        status.nacks,
    ]


def _type_status_from_json(type_url: str, value: list[Any]) -> TypeStatus:
    wildcard, subscribed, acked, resources, rejected, last_nack, pending, sent, acks, nacks = value
    return TypeStatus(
        type_url=type_url,
        wildcard=bool(wildcard),
        subscribed=tuple(subscribed),
        acked_version=str(acked),
        resources=MappingProxyType(dict(resources)),
        rejected=MappingProxyType(dict(rejected)),
        last_nack=last_nack,
        pending_nonce=pending,
        responses_sent=int(sent),
        acks=int(acks),
        nacks=int(nacks),
    )


def _plain(value: Any) -> Any:
    """``value`` with read-only mappings turned into dicts, for ``json``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
