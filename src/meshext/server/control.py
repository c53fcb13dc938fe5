"""The control loop of ``meshext serve``: configuration in, per-proxy snapshots out.

It ties the pure parts together. A config source yields the resources; images are
resolved in the background (retried with backoff when the failure is transient,
re-checked periodically for ``Always`` pull policy); each connected proxy gets the
plan of its workload turned into Envoy resources, published to the snapshot cache
(which sends nothing when nothing changed). The ADS server reports each proxy's
verdicts back here (this class implements its ``StreamEvents``), which feed the
delivery tracker and so the status users read.

Recomputation starts as soon as a change is applied, without a fixed delay; changes
that arrive while a round runs (or in the same turn of the event loop) are coalesced
into the next round. A round's plans and generated configurations are kept until the
next change of what they depend on (configuration, resolutions, pre-flight): a proxy
that connects meanwhile and belongs to a known workload gets the very snapshot its
replicas have, without planning or generating anything.

Status is accounted per event (:mod:`meshext.server.status_book`): an ACK or NACK
costs the same whatever the number of proxies, an offer pushed to a proxy is counted
with its answer (after the responses are written), per-proxy reports are built only
when read, and the status written to sinks (which does not depend on proxies) is
computed only when what it depends on changed (:mod:`meshext.server.status_publisher`).

No proxy is answered before the images of the first configuration are resolved (or
``settle_timeout`` has passed): a restarted control plane must not push a chain that
lacks extensions the proxies already run merely because it has not pulled them yet.
For the same reason, when an extension's image changes, the module it had keeps
being served until the new image is resolved.

Between resolution and planning sits the pre-flight gate
(:mod:`meshext.preflight.gate`): proxies get only combinations of module and
configuration that started in the sandbox; the first answer also waits for those.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshext.api.decode import ResourceError
from meshext.api.extension import ExtensionStatus, ServiceMeshExtension
from meshext.api.meta import ResourceKey
from meshext.envoy import names
from meshext.envoy.errors import EnvoyConfigError
from meshext.envoy.node import DeliveryMode, ProxyInfo, proxy_from_metadata
from meshext.envoy.resources import EXTENSION_CONFIG_TYPE_URL, EnvoyResources
from meshext.envoy.sidecar import proxy_resources
from meshext.envoy.standin import closes
from meshext.envoy.wasm import ModuleDelivery, extension_config
from meshext.images.reference import parse_image_reference
from meshext.mesh.extension import Extension
from meshext.mesh.model import MeshModel, build_model
from meshext.mesh.planner import PlannedExtension, WorkloadPlan, plan_workload
from meshext.mesh.resolution import JudgingResolver, ModuleResolver, Resolution, ResolutionState
from meshext.mesh.status import extension_status
from meshext.mesh.topology import Topology
from meshext.mesh.traffic import FilterLayer
from meshext.mesh.workload import Workload
from meshext.preflight.gate import Gated, PreflightGate
from meshext.preflight.runner import PreflightRunner
from meshext.server.collection import collection_held_through_sends
from meshext.server.delivery import DeliveryState, ProxyDelivery
from meshext.server.faults import Faults
from meshext.server.fetch_retries import FetchRetries, stand_in_for, with_attempts
from meshext.server.kept_resources import KeptResources
from meshext.server.modules import module_url
from meshext.server.status_book import DeliveryCounts, StatusBook
from meshext.server.status_publisher import StatusPublisher
from meshext.sources.base import ConfigSource, StatusSink
from meshext.sources.folder import LoadResult
from meshext.xds.cache import SnapshotCache
from meshext.xds.snapshot import Resource, ResourceSet, Snapshot, make_resource
from meshext.xds.types import Node

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResolveSchedule:
    """When to resolve an image again (retries inside one resolve are the resolver's)."""

    first_retry: float = 2.0
    max_retry: float = 300.0
    refresh_always: float = 60.0
    """How often ``Always`` images (and ``latest`` without a policy) are re-checked."""


@dataclass(slots=True)
class ProxyRecord:
    """What meshext knows of one connected proxy."""

    node_id: str
    proxy: ProxyInfo | None = None
    error: str = ""
    plan: WorkloadPlan | None = None
    left_out: dict[ResourceKey, str] = field(default_factory=dict)
    """Extensions of the plan left out of this proxy because it rejected them."""
    extension_versions: dict[ResourceKey, tuple[str, str]] = field(default_factory=dict)
    """Per applied extension: (ECDS resource name, version offered)."""
    rejections: dict[str, str] = field(default_factory=dict)
    """Last rejection per type URL, for resources other than extension configs."""
    resources: EnvoyResources | None = None
    keys: tuple[ProxyInfo, int, int] | None = None
    """``proxy`` with the numbers of its workload key and replica key (see
    :class:`_KeyNumbers`), computed once per proxy."""


@dataclass(frozen=True)
class ExtensionReport:
    """An extension's status plus how every proxy that should run it is doing."""

    key: ResourceKey
    served_version: str | None
    status: ExtensionStatus
    proxies: tuple[ProxyDelivery, ...]
    counts: DeliveryCounts = field(default_factory=DeliveryCounts)


class ControlPlane:
    def __init__(
        self,
        resolver: ModuleResolver,
        cache: SnapshotCache,
        delivery: ModuleDelivery,
        *,
        sinks: Sequence[StatusSink] = (),
        retry: ResolveSchedule = ResolveSchedule(),
        debounce: float = 0.0,
        settle_timeout: float = 30.0,
        preflight: PreflightRunner | None = None,
        status_interval: float = 1.0,
    ) -> None:
        """``debounce``: an extra wait before each round, to coalesce more changes
        (none by default: a round starts at once and coalesces what is queued).
        ``status_interval``: the least time between two writes of status to ``sinks``."""
        self._resolver = resolver
        self._judged_by = resolver.judged_by if isinstance(resolver, JudgingResolver) else _alone
        self._cache = cache
        self._delivery = delivery
        self._retry = retry
        self._debounce = debounce
        self._settle_timeout = settle_timeout
        self._load = LoadResult()
        self._model = MeshModel(Topology(), ())
        self._served_versions: dict[ResourceKey, str] = {}
        self._resolutions: dict[ResourceKey, Resolution] = {}
        self._resolving: dict[ResourceKey, asyncio.Task[None]] = {}
        self._inputs: dict[ResourceKey, tuple[object, ...]] = {}
        self._failures: dict[ResourceKey, int] = {}
        self._proxies: dict[str, ProxyRecord] = {}
        self._key_numbers = _KeyNumbers()
        self._book = StatusBook()
        """Delivery per proxy and extension; every tracker event goes through it."""
        self._round: _RoundCache | None = None
        """Plans and configurations valid until the next ``_request(everything=True)``."""
        self._full_round: _RoundCache | None = None
        """The round every proxy was last recomputed in (by ``recompute``)."""
        self._kept = KeptResources()
        """Listeners and clusters by shape, kept from round to round."""
        self._wake = asyncio.Event()
        self._recompute_all = False
        self._recompute_proxies: set[str] = set()
        self._loaded = asyncio.Event()
        self._settled = asyncio.Event()
        self.faults = Faults()
        """Failures of the loop itself; see :mod:`meshext.server.faults`."""
        self._gate = PreflightGate(preflight or PreflightRunner(), self._preflight_done)
        self._gated = Gated((), {}, {})
        self._logged_errors: set[str] = set()
        self._fetches = FetchRetries(lambda node_id: self._request(proxy=node_id))
        """Remote modules a proxy has not fetched yet: re-offered with backoff."""
        self._publisher = StatusPublisher(
            sinks, self._statuses, self.faults, interval=status_interval
        )

    # --- configuration -------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._loaded.is_set()

    @property
    def ready(self) -> bool:
        """Configuration loaded, and no part of the control loop failing."""
        return self.loaded and not self.faults.current()

    @property
    def config_errors(self) -> list[ResourceError]:
        return [*self._load.errors, *self._model.errors]

    @property
    def model(self) -> MeshModel:
        return self._model

    def apply(self, result: LoadResult) -> None:
        """Take a new complete configuration."""
        model = build_model(r.resource for r in result.resources)
        self._served_versions = {
            r.key: r.resource.served_version
            for r in result.resources
            if isinstance(r.resource, ServiceMeshExtension)
        }
        self._load, self._model = result, model
        errors = {str(error) for error in self.config_errors}
        for error in sorted(errors - self._logged_errors):
            log.warning("configuration: %s", error)  # once, not on every reload
        self._logged_errors = errors
        self._schedule_resolutions()
        self._loaded.set()
        self._request(everything=True)

    async def _settle(self) -> None:
        await self._loaded.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settle_timeout
        while loop.time() < deadline and any(
            r.state is ResolutionState.PENDING
            for r in [*self._resolutions.values(), *self._gate_now().statuses.values()]
        ):
            await asyncio.sleep(0.05)
        self._settled.set()

    async def run(self, source: ConfigSource) -> None:
        """Follow ``source`` and keep proxies and status up to date, until cancelled."""
        settler = asyncio.create_task(self._settle())
        pusher = asyncio.create_task(self._push_loop())
        publisher = asyncio.create_task(self._publish_loop())
        try:
            await self._follow(source)
        finally:
            settler.cancel()
            pusher.cancel()
            publisher.cancel()
            for task in self._resolving.values():
                task.cancel()
            self._gate.close()
            self._fetches.close()
            for task in (pusher, publisher):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _follow(self, source: ConfigSource, restart_delay: float = 1.0) -> None:
        """Apply every configuration ``source`` yields. A configuration that cannot be
        applied, or a source that fails, is a fault until a later one applies: the
        previous configuration keeps being served, and a failed source is restarted
        (sources yield complete states, so nothing is missed)."""
        while True:
            try:
                async for result in source.updates():
                    try:
                        self.apply(result)
                    except Exception as exc:
                        self.faults.failed("applying the configuration", exc)
                    else:
                        self.faults.succeeded("applying the configuration")
                        self.faults.succeeded("reading the configuration")
            except Exception as exc:
                self.faults.failed("reading the configuration", exc)
            await asyncio.sleep(restart_delay)
            restart_delay = min(restart_delay * 2, 30.0)

    # --- image resolution ----------------------------------------------------------

    def _schedule_resolutions(self) -> None:
        wanted = {e.key: e for e in self._model.extensions}
        for key in [k for k in self._inputs if k not in wanted]:
            self._forget_extension(key)
            self._resolver.forget(key)
        for key, ext in wanted.items():
            inputs = (ext.image, ext.pull, ext.expected_sha256, *self._judged_by(ext))
            if self._inputs.get(key) == inputs:
                continue
            previous = self._resolutions.get(key)
            self._forget_extension(key)
            self._inputs[key] = inputs
            if previous is not None and previous.state is ResolutionState.READY:
                # served until the new image is resolved, and said so
                self._resolutions[key] = dataclasses.replace(
                    previous, message=f"resolving {ext.image}; {_still_running(previous)}"
                )
            else:
                self._resolutions[key] = Resolution.pending("resolving image " + ext.image)
            self._start_resolution(ext, delay=0.0)

    def _forget_extension(self, key: ResourceKey) -> None:
        task = self._resolving.pop(key, None)
        if task is not None:
            task.cancel()
        self._inputs.pop(key, None)
        self._resolutions.pop(key, None)
        self._failures.pop(key, None)

    def _start_resolution(self, ext: Extension, delay: float) -> None:
        self._resolving[ext.key] = asyncio.create_task(
            self._resolve(ext, delay), name=f"resolve {ext.key}"
        )

    async def _resolve(self, ext: Extension, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        inputs = self._inputs.get(ext.key)
        try:
            resolution = await self._resolver.resolve(ext)
        except Exception as exc:  # a resolver bug must not stop the control loop
            log.exception("resolving %s failed unexpectedly", ext.key)
            resolution = Resolution.failed(f"internal error resolving image: {exc}", retryable=True)
        if self._inputs.get(ext.key) != inputs:
            return  # the extension changed meanwhile; a newer resolution is under way
        previous = self._resolutions.get(ext.key)
        keep_previous = (
            resolution.state is ResolutionState.FAILED
            and previous is not None
            and previous.state is ResolutionState.READY
            and (resolution.retryable or resolution.keep_previous)
        )
        if keep_previous:
            assert previous is not None
            self._resolutions[ext.key] = dataclasses.replace(
                previous,
                message=f"{ext.image} could not be resolved ({resolution.message}); "
                f"{_still_running(previous)}",
            )
        else:
            self._resolutions[ext.key] = resolution
        if resolution.state is ResolutionState.FAILED:
            failures = self._failures.get(ext.key, 0) + 1
            self._failures[ext.key] = failures
            wait = min(self._retry.first_retry * 2 ** (failures - 1), self._retry.max_retry)
            log.warning("%s: %s (next try in %.0fs)", ext.key, resolution.message, wait)
            self._start_resolution(ext, wait)
        else:
            self._failures.pop(ext.key, None)
            if _refreshes(ext):
                self._start_resolution(ext, self._retry.refresh_always)
            else:
                self._resolving.pop(ext.key, None)
        self._request(everything=True)

    # --- pre-flight ------------------------------------------------------------------

    def _gate_now(self) -> Gated:
        """Extensions and resolutions as the pre-flight lets them be planned."""
        self._gated = self._gate.gate(self._model.extensions, self._resolutions)
        return self._gated

    def _preflight_done(self) -> None:
        self._request(everything=True)

    def _new_round(self) -> _RoundCache:
        return _RoundCache(self._delivery, self._model.topology, self._gate_now(), self._kept)

    def _current_round(self) -> _RoundCache:
        """The round of the current configuration, resolutions and pre-flight results:
        what is planned and generated in it stays valid until one of them changes.

        When what planning reads is equal to what the last full recomputation read (a
        changed extension waits for its image or its pre-flight, and meanwhile keeps
        what it had), that round is current again, with everything computed in it."""
        if self._round is None:
            fresh = self._new_round()
            last = self._full_round
            if last is not None and last.inputs == fresh.inputs:
                self._round = last
            else:
                self._round = fresh
                self._kept.next_round()
        return self._round

    # --- proxies (StreamEvents) ----------------------------------------------------

    async def on_connect(self, node: Node) -> None:
        await self._settled.wait()
        record = self._proxies.setdefault(node.id, ProxyRecord(node.id))
        try:
            record.proxy = proxy_from_metadata(node.id, node.metadata)
            record.error = ""
        except EnvoyConfigError as exc:
            record.proxy, record.error = None, str(exc)
            log.warning("proxy %s: %s", node.id, exc)
        self._push_proxy(record, self._current_round())

    def on_disconnect(self, node_id: str) -> None:
        self._proxies.pop(node_id, None)
        if self._key_numbers.crowded(len(self._proxies)):
            self._key_numbers.keep(
                key
                for record in self._proxies.values()
                if record.proxy is not None
                for key in (_workload_key(record.proxy.workload), _replica_key(record.proxy))
            )
        self._book.forget_proxy(node_id)
        self._fetches.forget_proxy(node_id)
        self._cache.clear(node_id)

    def on_ack(
        self, node_id: str, type_url: str, version: str, resource_names: Sequence[str]
    ) -> None:
        record = self._proxies.get(node_id)
        if record is None:
            return
        if type_url == EXTENSION_CONFIG_TYPE_URL:
            rejected_before = self._book.tracker.rejects(node_id)
            self._book.acked(node_id, resource_names, version)
            if self._fetches.active(node_id):
                current = dict(record.extension_versions.values())
                for name in resource_names:
                    if current.get(name) == version:  # the real module, not a stand-in
                        self._book.cleared(node_id, name)
                        self._fetches.accepted(node_id, name)
            # Only a cleared rejection can change what this proxy should get; anything
            # else an ACK changes is status, which the book has just counted.
            if rejected_before and not self._book.tracker.rejects(node_id):
                self._request(proxy=node_id)
        else:
            record.rejections.pop(type_url, None)

    def on_nack(
        self,
        node_id: str,
        type_url: str,
        rejected_version: str,
        resource_names: Sequence[str],
        error_detail: str,
    ) -> None:
        record = self._proxies.get(node_id)
        if record is None:
            return
        # The ADS server has logged the rejection; status records it.
        if type_url == EXTENSION_CONFIG_TYPE_URL:
            self._book.nacked(node_id, resource_names, rejected_version, error_detail)
            if self._stands_in(record):
                for name in resource_names:
                    self._fetches.rejected(node_id, name, _module_sha256(record, name))
        else:
            record.rejections[type_url] = error_detail
        self._request(proxy=node_id)

    # --- computing and publishing --------------------------------------------------

    def _request(self, *, everything: bool = False, proxy: str | None = None) -> None:
        """Ask the push loop for work: recompute every proxy (configuration, images or
        pre-flight results changed: what was planned and generated is stale, and so
        is the status written to sinks), or one proxy (it rejected or re-accepted
        something)."""
        if everything:
            self._recompute_all = True
            self._round = None
        if proxy is not None:
            self._recompute_proxies.add(proxy)
        self._wake.set()

    async def _push_loop(self) -> None:
        """One round per wake-up, started as soon as work is asked for. A round runs
        without yielding, so what is asked for meanwhile, or in the same turn of the
        event loop (the ``sleep(0)`` lets those callbacks run first), is done together
        in the next round."""
        await self._settled.wait()
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._debounce)
            self._wake.clear()
            everything, proxies = self._recompute_all, self._recompute_proxies
            self._recompute_all, self._recompute_proxies = False, set()
            try:
                with collection_held_through_sends(asyncio.get_running_loop()):
                    self._run_round(everything, proxies)
            except Exception as exc:
                self.faults.failed("computing proxy configurations", exc)
                # the next change tries again, and again everything, from scratch
                self._recompute_all = True
                self._round = self._full_round = None
            else:
                self.faults.succeeded("computing proxy configurations")

    def _run_round(self, everything: bool, proxies: set[str]) -> None:
        """Recompute every proxy (``everything``) or those of ``proxies``."""
        if everything:
            if self._current_round() is not self._full_round:
                self.recompute()
            # else every proxy already has what this round would give it
            self._publisher.stale()
        else:
            round_cache = self._current_round()
            for node_id in sorted(proxies):
                record = self._proxies.get(node_id)
                if record is not None:
                    self._push_proxy(record, round_cache)

    def recompute(self) -> None:
        """Recompute and publish every proxy's snapshot (unchanged ones send nothing).

        Replicas of a workload (same namespace, labels, listeners, application address
        and module delivery; see ``_replica_key``) get the same configuration:
        within one round it is planned, generated and built into an immutable snapshot
        once, and shared by every such proxy that has rejected nothing (a proxy with
        rejections gets its own, see ``_generate``), including proxies that connect
        before the next change.
        """
        round_cache = self._current_round()
        for record in list(self._proxies.values()):
            self._push_proxy(record, round_cache)
        self._full_round = round_cache

    def _push_proxy(self, record: ProxyRecord, round_cache: _RoundCache) -> None:
        if record.proxy is None:
            self._cache.set_snapshot(record.node_id, Snapshot())
            return
        proxy = record.proxy
        keys = record.keys
        if keys is None or keys[0] is not proxy:
            numbers = self._key_numbers
            keys = record.keys = (
                proxy,
                numbers.number(_workload_key(proxy.workload)),
                numbers.number(_replica_key(proxy)),
            )
        workload_key = keys[1]
        plan = round_cache.plans.get(workload_key)
        if plan is None:
            gated = round_cache.gated
            plan = plan_workload(
                round_cache.topology,
                gated.extensions,
                gated.resolutions,
                proxy.workload,
                explain=False,
            )
            round_cache.plans[workload_key] = plan
        record.plan = plan
        try:
            shareable = not self._book.tracker.rejects(proxy.node_id)
            # Replicas that fetched their modules at the same attempts share too.
            key = (
                keys[2],
                self._delivery.mode_for(proxy),
                self._fetches.attempts_key(proxy.node_id),
            )
            generated = round_cache.generated.get(key) if shareable else None
            if generated is None:
                generated = self._generate(proxy, plan, round_cache)
                if shareable:
                    round_cache.generated[key] = generated
        except EnvoyConfigError as exc:
            record.error = str(exc)
            log.error("proxy %s: %s", record.node_id, exc)
            return
        record.error = ""
        record.left_out = generated.left_out
        record.extension_versions = generated.versions
        record.resources = generated.resources
        self._book.offered(
            record.node_id, generated.versions, generated.left_out, generated.messages
        )
        if self._fetches.active(record.node_id):
            self._fetches.retain(record.node_id, {n for n, _ in generated.versions.values()})
        self._cache.set_snapshot(record.node_id, generated.snapshot)

    def _generate(
        self, proxy: ProxyInfo, plan: WorkloadPlan, round_cache: _RoundCache
    ) -> _Generated:
        """The proxy's resources and snapshot, with every version it rejected replaced by
        the last one it accepted, or left out when it accepted none. A proxy that rejects
        remote modules until fetched gets the stand-in of its failure policy instead of nothing,
        and each module at its current fetch attempt (:mod:`meshext.server.fetch_retries`)."""

        stands_in = self._delivery.stands_in(self._delivery.mode_for(proxy))
        attempts = self._fetches.attempts(proxy.node_id) if stands_in else {}

        def generate(applied_plan: WorkloadPlan) -> EnvoyResources:
            resources = proxy_resources(
                proxy,
                applied_plan,
                self._delivery,
                extension_configs=round_cache.extension_config,
                listeners=round_cache.kept.listener,
                clusters=round_cache.kept.cluster,
            )
            return with_attempts(resources, attempts)

        resources = generate(plan)
        snapshot = round_cache.snapshot_of(resources)
        versions: dict[ResourceKey, tuple[str, str]] = {}
        for planned in plan.applied:
            name = names.extension_config_name(planned.key)
            version = snapshot.resource_version(EXTENSION_CONFIG_TYPE_URL, name)
            if version is not None:  # None: its traffic match selects none of the listeners
                versions[planned.key] = (name, version)
        if not self._book.tracker.rejects(proxy.node_id):
            return _Generated(resources, snapshot, versions, {})
        left_out: dict[ResourceKey, str] = {}
        keep: list[PlannedExtension] = []
        replacements: dict[str, Any] = {}
        stand_in_names: set[str] = set()
        for planned in plan.applied:
            name, version = versions.get(planned.key, ("", ""))
            if not self._book.tracker.is_rejected(proxy.node_id, name, version):
                keep.append(planned)
                continue
            accepted = self._book.tracker.last_accepted(proxy.node_id, name)
            if accepted is not None:
                keep.append(planned)
                replacements[name] = accepted
            elif stands_in:  # the module is being fetched: the stand-in meanwhile
                keep.append(planned)
                replacements[name] = stand_in_for(planned)
                stand_in_names.add(name)
            else:
                left_out[planned.key] = self._book.tracker.state(
                    proxy.node_id, name, version
                ).message
        if not left_out and not replacements:
            return _Generated(resources, snapshot, versions, {})
        if left_out:
            resources = generate(WorkloadPlan(plan.workload, tuple(keep), plan.skipped))
        if replacements:
            configs = {**resources.extension_configs, **replacements}
            resources = EnvoyResources(resources.listeners, resources.clusters, configs)
        snapshot = round_cache.snapshot_of(resources)
        for name in stand_in_names:
            stand_in_version = snapshot.resource_version(EXTENSION_CONFIG_TYPE_URL, name)
            if stand_in_version is not None:
                self._fetches.standing_in(proxy.node_id, name, stand_in_version)
        return _Generated(resources, snapshot, versions, left_out)

    def module_served(self, sha256: str) -> None:
        """The module server sent module ``sha256`` to a proxy (see ``fetch_retries``)."""
        self._fetches.fetched(sha256)

    def _stands_in(self, record: ProxyRecord) -> bool:
        if record.proxy is None:
            return False
        try:
            return self._delivery.stands_in(self._delivery.mode_for(record.proxy))
        except EnvoyConfigError:
            return False

    # --- status ---------------------------------------------------------------------

    def module_url(self, sha256: str) -> str | None:
        base = self._delivery.base_url
        return module_url(base, sha256) if base else None

    def reports(self) -> list[ExtensionReport]:
        """Status of every extension, with per-proxy delivery (built now, for a reader)."""
        return [
            ExtensionReport(
                ext.key,
                self._served_versions.get(ext.key),
                self._status_of(ext),
                self._book.deliveries(ext.key, self._fetch_explainer(ext)),
                self._book.counts(ext.key),
            )
            for ext in self._model.extensions
        ]

    def _fetch_explainer(self, ext: Extension) -> Callable[[ProxyDelivery, str], ProxyDelivery]:
        """Adds to a proxy's delivery of ``ext`` whether it waits for a module fetch."""
        closed = closes(ext.failure_policy)
        network = ext.layer is FilterLayer.NETWORK

        def explain(delivery: ProxyDelivery, name: str) -> ProxyDelivery:
            return self._fetches.explain(delivery, name, closed=closed, network=network)

        return explain

    def delivery_counts(self, key: ResourceKey) -> DeliveryCounts:
        """How many proxies run, rejected or wait for the extension ``key`` (no cost)."""
        return self._book.counts(key)

    def extension_counts(self) -> list[tuple[ResourceKey, DeliveryCounts]]:
        """:meth:`delivery_counts` of every extension of the configuration."""
        return [(ext.key, self._book.counts(ext.key)) for ext in self._model.extensions]

    def proxies(self) -> list[ProxyRecord]:
        return [self._proxies[k] for k in sorted(self._proxies)]

    def proxy(self, node_id: str) -> ProxyRecord | None:
        return self._proxies.get(node_id)

    def _status_of(self, ext: Extension) -> ExtensionStatus:
        resolution = self._gated.statuses.get(ext.key, self._resolutions.get(ext.key))
        return extension_status(ext, resolution, self.module_url, self._model.topology)

    def _statuses(self) -> dict[ResourceKey, ExtensionStatus]:
        """What sinks get: every extension's status, which no proxy changes."""
        return {ext.key: self._status_of(ext) for ext in self._model.extensions}

    async def _publish_loop(self) -> None:
        await self._settled.wait()
        await self._publisher.run()


@dataclass(frozen=True)
class _Generated:
    resources: EnvoyResources
    snapshot: Snapshot
    versions: dict[ResourceKey, tuple[str, str]]
    """Per applied extension: (ECDS resource name, version generated for it)."""
    left_out: dict[ResourceKey, str]

    @functools.cached_property
    def messages(self) -> dict[str, Any]:
        """The extension configs of the snapshot, by resource name."""
        configs = self.snapshot.resources(EXTENSION_CONFIG_TYPE_URL).resources
        return {name: resource.message for name, resource in configs.items()}


@dataclass
class _RoundCache:
    """What one recomputation computes once and shares between proxies: plans per
    workload, whole configurations per replica set, and, across different workloads,
    each extension's ECDS resource and its serialized form. Listeners and clusters,
    which a change of an extension's config leaves as they were, come from ``kept``,
    across rounds."""

    delivery: ModuleDelivery
    topology: Topology
    gated: Gated
    kept: KeptResources
    plans: dict[object, WorkloadPlan] = field(default_factory=dict)
    generated: dict[object, _Generated] = field(default_factory=dict)
    configs: dict[object, Any] = field(default_factory=dict)
    packed: dict[int, Resource] = field(default_factory=dict)

    @functools.cached_property
    def inputs(self) -> tuple[object, ...]:
        """Everything planning and generation read besides the proxy (delivery is fixed).
        An extension's generation is left out: only status reads it."""
        extensions = tuple(dataclasses.replace(e, generation=0) for e in self.gated.extensions)
        return (self.topology, extensions, self.gated.resolutions)

    def extension_config(self, planned: PlannedExtension, mode: DeliveryMode) -> Any:
        # Objects of this round's model and resolutions: their ids are stable until the
        # round ends, and the messages kept here keep their ids unique meanwhile.
        key = (planned.key, id(planned.extension), id(planned.module), mode)
        config = self.configs.get(key)
        if config is None:
            config = self.configs[key] = extension_config(planned, mode, self.delivery)
        return config

    def snapshot_of(self, resources: EnvoyResources) -> Snapshot:
        sets = []
        for type_url, by_name in resources.by_type().items():
            if type_url != EXTENSION_CONFIG_TYPE_URL:  # listeners and clusters: kept
                kept = self.kept.packed
                sets.append(ResourceSet.of(type_url, [kept(type_url, m) for m in by_name.values()]))
                continue
            made = []
            for message in by_name.values():
                resource = self.packed.get(id(message))
                if resource is None or resource.message is not message:
                    resource = self.packed[id(message)] = make_resource(type_url, message)
                made.append(resource)
            sets.append(ResourceSet.of(type_url, made))
        return Snapshot(sets)


def _module_sha256(record: ProxyRecord, config_name: str) -> str:
    """The sha256 of the module of the extension whose ECDS resource is ``config_name``."""
    for planned in record.plan.applied if record.plan else ():
        if planned.module is not None and names.extension_config_name(planned.key) == config_name:
            return planned.module.sha256
    return ""


class _KeyNumbers:
    """A number for each distinct workload or replica key of the connected proxies.

    A round looks its plans and configurations up by these keys once per proxy. The
    keys hold enums and dataclasses, whose hashes and comparisons are Python calls;
    a number costs nothing to hash or compare, and replicas share one. Numbers are
    never reused, so a proxy's number stays valid while it is connected; the keys of
    proxies gone are dropped when they outnumber those in use (:meth:`crowded`).
    """

    __slots__ = ("_next", "_numbers")

    def __init__(self) -> None:
        self._numbers: dict[object, int] = {}
        self._next = 0

    def number(self, key: object) -> int:
        found = self._numbers.get(key)
        if found is None:
            found = self._numbers[key] = self._next
            self._next += 1
        return found

    def crowded(self, proxies: int) -> bool:
        """Whether more keys are kept than ``proxies`` could be using."""
        return len(self._numbers) > 2 * proxies + 64

    def keep(self, keys: Iterable[object]) -> None:
        """Forget every key but ``keys`` (each keeps its number)."""
        numbers = self._numbers
        self._numbers = {key: numbers[key] for key in keys if key in numbers}

    def __len__(self) -> int:
        return len(self._numbers)


def _workload_key(workload: Workload) -> object:
    """What planning depends on: two proxies with the same key have the same plan."""
    return (
        workload.namespace,
        tuple(sorted(workload.labels.items())),
        workload.kind,
        workload.name,
    )


def _replica_key(proxy: ProxyInfo) -> object:
    """What generation depends on besides the plan and the module delivery mode (every
    field of the proxy that :func:`meshext.envoy.sidecar.proxy_resources` reads, except
    its node id, which only error messages name): two proxies with the same key and
    mode get the same resources."""
    return (
        _workload_key(proxy.workload),
        proxy.inbound_ports,
        proxy.inbound_address,
        proxy.app,
        proxy.outbound,
    )


def _still_running(previous: Resolution) -> str:
    module = previous.module
    assert module is not None
    image = f"image {module.image_digest}, " if module.image_digest else ""
    return (
        f"still running the module resolved before ({image}module sha256:{module.sha256}); "
        "until the change resolves"
    )


def _alone(ext: Extension) -> tuple[object, ...]:
    """Nothing besides the extension decides its resolution."""
    return ()


def _refreshes(ext: Extension) -> bool:
    """Whether a resolved image must be re-checked: ``Always``, or ``latest`` by default."""
    if ext.pull.policy == "Always":
        return True
    if ext.pull.policy is None:
        ref = parse_image_reference(ext.image)
        return ref.is_latest
    return False


def delivery_summary(proxies: Sequence[ProxyDelivery]) -> str:
    """``2/3 running, 1 rejected``-style summary for tables."""
    counts = dict.fromkeys(DeliveryState, 0)
    for proxy in proxies:
        counts[proxy.state] += 1
    if not proxies:
        return "no proxies"
    parts = [f"{counts[DeliveryState.RUNNING]}/{len(proxies)} running"]
    if counts[DeliveryState.REJECTED]:
        parts.append(f"{counts[DeliveryState.REJECTED]} rejected")
    if counts[DeliveryState.PENDING]:
        parts.append(f"{counts[DeliveryState.PENDING]} pending")
    return ", ".join(parts)
