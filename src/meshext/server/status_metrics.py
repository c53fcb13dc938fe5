"""Prometheus view of the status book: proxies per extension and delivery state.

``meshext_extension_proxies{kind, namespace, name, state}`` is read from the
counters of :class:`~meshext.server.status_book.StatusBook` when scraped: one value
per extension and state, nothing computed per proxy, nothing kept between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from meshext.api.meta import ResourceKey
from meshext.server.delivery import DeliveryState
from meshext.server.status_book import DeliveryCounts

NAME = "meshext_extension_proxies"


class DeliveryMetrics:
    """A collector for a :class:`prometheus_client.CollectorRegistry`."""

    def __init__(self, counts: Callable[[], Iterable[tuple[ResourceKey, DeliveryCounts]]]) -> None:
        """``counts``: every extension with its counts (``ControlPlane.extension_counts``)."""
        self._counts = counts

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        for key, counts in self._counts():
            for state, value in (
                (DeliveryState.RUNNING, counts.running),
                (DeliveryState.REJECTED, counts.rejected),
                (DeliveryState.PENDING, counts.pending),
            ):
                family.add_metric([key.kind, key.namespace, key.name, state.value], value)
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            NAME,
            "Connected proxies that should run the extension, by delivery state",
            labels=["kind", "namespace", "name", "state"],
        )
