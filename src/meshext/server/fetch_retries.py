"""Re-offering remote modules a proxy could not fetch yet, with backoff.

With remote delivery and ``nack_on_code_cache_miss`` (:class:`ModuleDelivery`), Envoy
rejects an extension's configuration while its module is not in its cache, and
fetches the module in the background. A rejected version is never offered again
(:mod:`meshext.server.delivery`), so each new offer of the same module is a new
attempt: the module URL carries ``?attempt=N``
(:func:`~meshext.envoy.wasm.with_fetch_attempt`), which makes it a new version of the
resource. Meanwhile the proxy runs what it accepted before: the earlier module of the
extension, or the pass-through stand-in (:mod:`meshext.envoy.standin`).

:class:`FetchRetries` keeps, per proxy and extension (ECDS resource name), the
attempt number and when the next attempt is due: 1 s after the first rejection,
doubling to 15 s, or 0.1 s after the module server sent that module (a proxy
fetching a module it rejected need not wait for the backoff). When an attempt is due
it asks for the proxy to be recomputed. An
accepted attempt stops the retries; its number is kept, so the accepted resource
stays the same version.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshext.envoy import names
from meshext.envoy.resources import EnvoyResources
from meshext.envoy.standin import closes, stand_in_config
from meshext.envoy.wasm import with_fetch_attempt
from meshext.mesh.planner import PlannedExtension
from meshext.mesh.traffic import FilterLayer
from meshext.server.delivery import DeliveryState, ProxyDelivery


@dataclass(frozen=True)
class FetchBackoff:
    first: float = 1.0
    maximum: float = 15.0
    after_fetch: float = 0.1
    """Seconds between the module server sending a module and the next offer of it."""

    def delay(self, failures: int) -> float:
        return float(min(self.first * 2 ** max(failures - 1, 0), self.maximum))


@dataclass
class _Attempts:
    attempt: int = 0
    failures: int = 0
    due: asyncio.TimerHandle | None = None
    stand_in_version: str | None = None
    sha256: str = ""


@dataclass
class FetchRetries:
    on_due: Callable[[str], None]
    """Called with a proxy's node id when one of its attempts is due."""
    backoff: FetchBackoff = field(default_factory=FetchBackoff)
    _proxies: dict[str, dict[str, _Attempts]] = field(default_factory=dict)

    def attempts(self, node_id: str) -> dict[str, int]:
        """Per resource name, the attempt to offer (only names past attempt 0)."""
        return {n: a.attempt for n, a in self._proxies.get(node_id, {}).items() if a.attempt}

    def attempts_key(self, node_id: str) -> tuple[tuple[str, int], ...]:
        """The proxy's attempts as a hashable key: proxies of one workload whose
        attempts are equal get the same resources and may share them."""
        if not self._proxies.get(node_id):
            return ()  # the usual case, asked for every proxy on every push
        return tuple(sorted(self.attempts(node_id).items()))

    def active(self, node_id: str) -> bool:
        """Whether meshext follows fetch attempts for this proxy."""
        return bool(self._proxies.get(node_id))

    def waiting(self, node_id: str, name: str) -> bool:
        entry = self._proxies.get(node_id, {}).get(name)
        return entry is not None and entry.due is not None

    def rejected(self, node_id: str, name: str, sha256: str = "") -> float:
        """The proxy rejected the current attempt of the module ``sha256``: schedule the
        next; returns the delay."""
        entry = self._proxies.setdefault(node_id, {}).setdefault(name, _Attempts())
        entry.sha256 = sha256 or entry.sha256
        if entry.due is not None:
            return 0.0
        entry.failures += 1
        delay = self.backoff.delay(entry.failures)
        entry.due = asyncio.get_running_loop().call_later(delay, self._due, node_id, name)
        return delay

    def fetched(self, sha256: str) -> None:
        """The module server sent the module ``sha256`` to a proxy: every proxy waiting to
        be offered it again gets it shortly (the fetch was likely its own), instead of
        after the backoff. A proxy that did not fetch it only rejects once more."""
        loop = asyncio.get_running_loop()
        for node_id, entries in self._proxies.items():
            for name, entry in entries.items():
                if entry.due is not None and entry.sha256 == sha256:
                    entry.due.cancel()
                    entry.due = loop.call_later(self.backoff.after_fetch, self._due, node_id, name)

    def _due(self, node_id: str, name: str) -> None:
        entry = self._proxies.get(node_id, {}).get(name)
        if entry is None:
            return
        entry.due = None
        entry.attempt += 1
        self.on_due(node_id)

    def standing_in(self, node_id: str, name: str, version: str) -> None:
        """The proxy is offered the stand-in (resource version ``version``) for ``name``."""
        self._proxies.setdefault(node_id, {}).setdefault(
            name, _Attempts()
        ).stand_in_version = version

    def explain(
        self, delivery: ProxyDelivery, name: str, *, closed: bool, network: bool = False
    ) -> ProxyDelivery:
        """``delivery`` (from the tracker) saying that the proxy has not fetched the
        module and what runs meanwhile (the module it ran before, or the stand-in, which
        answers 503 when ``closed``, or closes connections of a ``network`` extension)."""
        entry = self._proxies.get(delivery.proxy, {}).get(name)
        if (
            entry is None
            or delivery.state is DeliveryState.RUNNING
            or (entry.due is None and entry.failures == 0)
        ):
            return delivery
        stand_in = entry.stand_in_version
        on_stand_in = delivery.running_version is None or delivery.running_version == stand_in
        message = delivery.message
        if stand_in is not None:
            message = message.removesuffix(f"; still running version {stand_in}")
        if entry.due is not None:
            next_offer = f"offered again in {_seconds_until(entry.due):.0f}s"
        else:
            next_offer = f"offered again (attempt {entry.attempt}), waiting for the proxy"
        fetching = f"the proxy has not fetched the module (it rejects it until fetched), or could not start it; {next_offer}"
        if on_stand_in:
            fetching += (
                "; meanwhile the extension's filter lets traffic through"
                if not closed
                else "; meanwhile the extension's filter closes every connection (fail-closed)"
                if network
                else "; meanwhile the extension's filter answers 503 (fail-closed)"
            )
        message = f"{message}; {fetching}" if message else fetching
        running = None if on_stand_in else delivery.running_version
        return dataclasses.replace(delivery, running_version=running, message=message)

    def accepted(self, node_id: str, name: str) -> None:
        """The proxy accepted the current attempt: no more retries."""
        entry = self._proxies.get(node_id, {}).get(name)
        if entry is None:
            return
        if entry.due is not None:
            entry.due.cancel()
            entry.due = None
        entry.failures = 0

    def retain(self, node_id: str, names: set[str]) -> None:
        """Forget extensions the proxy no longer has."""
        entries = self._proxies.get(node_id, {})
        for name in [n for n in entries if n not in names]:
            self._cancel(entries.pop(name))
        if not entries:
            self._proxies.pop(node_id, None)

    def forget_proxy(self, node_id: str) -> None:
        for entry in self._proxies.pop(node_id, {}).values():
            self._cancel(entry)

    def close(self) -> None:
        for node_id in list(self._proxies):
            self.forget_proxy(node_id)

    @staticmethod
    def _cancel(entry: _Attempts) -> None:
        if entry.due is not None:
            entry.due.cancel()


def _seconds_until(handle: asyncio.TimerHandle) -> float:
    try:
        now = asyncio.get_running_loop().time()
    except RuntimeError:  # called outside the loop the timer runs on
        return 0.0
    return max(handle.when() - now, 0.0)


def with_attempts(resources: EnvoyResources, attempts: Mapping[str, int]) -> EnvoyResources:
    """``resources`` with each extension named in ``attempts`` at that fetch attempt."""
    if not attempts:
        return resources
    configs = {
        name: with_fetch_attempt(config, attempts.get(name, 0))
        for name, config in resources.extension_configs.items()
    }
    return EnvoyResources(resources.listeners, resources.clusters, configs)


def stand_in_for(planned: PlannedExtension) -> Any:
    """The stand-in ECDS resource of ``planned`` (HTTP or network, as the extension)."""
    ext = planned.extension
    return stand_in_config(
        names.extension_config_name(planned.key),
        ext.name,
        network=ext.layer is FilterLayer.NETWORK,
        closed=closes(ext.failure_policy),
    )
