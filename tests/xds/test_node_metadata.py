"""A node's metadata Struct reads as json_format would read it."""

from __future__ import annotations

import math
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from meshext.envoy.node import proxy_from_metadata
from meshext.xds.types import Node, struct_to_python

json_leaves = (
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_metadata_converts_exactly_as_message_to_dict(data: dict[str, Any]) -> None:
    struct = struct_pb2.Struct()
    struct.update(data)
    assert struct_to_python(struct) == json_format.MessageToDict(struct)


def test_an_unset_value_is_none() -> None:
    struct = struct_pb2.Struct()
    struct.fields["unset"].CopyFrom(struct_pb2.Value())
    assert struct_to_python(struct) == {"unset": None}


@pytest.mark.parametrize("number", [math.inf, -math.inf, math.nan])
def test_a_number_json_cannot_hold_is_refused_as_before(number: float) -> None:
    struct = struct_pb2.Struct()
    struct.update({"ok": 1, "nested": {"bad": 0}})
    struct.fields["nested"].struct_value.fields["bad"].number_value = number
    with pytest.raises(ValueError, match="serialize"):
        struct_to_python(struct)


def test_a_sidecars_node_keeps_its_metadata() -> None:
    node = base_pb2.Node(id="sidecar~1")
    node.metadata.update({"NAMESPACE": "bookinfo", "LABELS": {"app": "web"}, "PORTS": [9080]})
    assert dict(Node.from_proto(node).metadata) == {
        "NAMESPACE": "bookinfo",
        "LABELS": {"app": "web"},
        "PORTS": [9080.0],
    }


def _sidecar(node_id: str, app: str) -> Any:
    node = base_pb2.Node(id=node_id, cluster="productpage.bookinfo")
    node.metadata.update(
        {
            "NAMESPACE": "bookinfo",
            "LABELS": {"app": app},
            "WORKLOAD_NAME": app,
            "INBOUND_PORT": "15006",
            "APP_ADDRESS": "127.0.0.1:9080",
        }
    )
    return node


def test_replicas_sending_the_same_metadata_share_one_read_only_copy() -> None:
    first = Node.from_proto(_sidecar("productpage-1", "productpage"))
    second = Node.from_proto(_sidecar("productpage-2", "productpage"))
    other = Node.from_proto(_sidecar("reviews-1", "reviews"))
    assert first.metadata is second.metadata
    assert first.metadata == second.metadata
    assert other.metadata["LABELS"] == {"app": "reviews"}
    with pytest.raises(TypeError):
        first.metadata["NAMESPACE"] = "elsewhere"  # type: ignore[index]


def test_replicas_are_separate_proxies_sharing_their_workload() -> None:
    first = Node.from_proto(_sidecar("productpage-1", "productpage"))
    second = Node.from_proto(_sidecar("productpage-2", "productpage"))
    one = proxy_from_metadata(first.id, first.metadata)
    two = proxy_from_metadata(second.id, second.metadata)
    assert (one.node_id, two.node_id) == ("productpage-1", "productpage-2")
    assert one.workload is two.workload
    assert two.workload.labels == {"app": "productpage"}
    assert two.app == one.app
