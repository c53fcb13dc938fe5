"""The delivery counters are exported to Prometheus as read at scrape time."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from meshext.api.meta import ResourceKey
from meshext.server.status_book import DeliveryCounts, StatusBook
from meshext.server.status_metrics import DeliveryMetrics

TAG = ResourceKey("ServiceMeshExtension", "bookinfo", "tag")
NAME = "meshext.servicemeshextension.bookinfo.tag"


def test_proxies_per_extension_and_state_are_exported_as_they_are_when_scraped() -> None:
    book = StatusBook()
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DeliveryMetrics(lambda: [(TAG, book.counts(TAG))]))
    for node in ("a", "b", "c"):
        book.offered(node, {TAG: (NAME, "v1")})
    book.acked("a", [NAME], "v1")
    book.nacked("b", [NAME], "v1", "bad")
    text = generate_latest(registry).decode()
    labels = 'kind="ServiceMeshExtension",name="tag",namespace="bookinfo"'
    assert f'meshext_extension_proxies{{{labels},state="Running"}} 1.0' in text
    assert f'meshext_extension_proxies{{{labels},state="Rejected"}} 1.0' in text
    assert f'meshext_extension_proxies{{{labels},state="Pending"}} 1.0' in text
    book.forget_proxy("c")
    assert f'{labels},state="Pending"}} 0.0' in generate_latest(registry).decode()


def test_an_extension_without_proxies_is_exported_with_zeros() -> None:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DeliveryMetrics(lambda: [(TAG, DeliveryCounts())]))
    text = generate_latest(registry).decode()
    assert 'state="Running"} 0.0' in text
