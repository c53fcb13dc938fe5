"""The control loop of ``meshext serve``: configuration in, per-proxy snapshots out.

It ties the pure parts together. A config source yields the resources; images are
resolved in the background (retried with backoff when the failure is transient,
re-checked periodically for ``Always`` pull policy); each connected proxy gets the
plan of its workload turned into Envoy resources, published to the snapshot cache
(which sends nothing when nothing changed). The ADS server reports each proxy's
verdicts back here (this class implements its ``StreamEvents``), which feed the
delivery tracker and so the status users read.

Recomputation is debounced: bursts of changes (an edited folder, many images
resolving at once) produce one recomputation a short quiet period later.

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
import logging
from collections.abc import Sequence
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
from meshext.server.delivery import DeliveryState, DeliveryTracker, ProxyDelivery
from meshext.server.faults import Faults
from meshext.server.fetch_retries import FetchRetries, stand_in_for, with_attempts
from meshext.server.modules import module_url
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


@dataclass
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


@dataclass(frozen=True)
class ExtensionReport:
    """An extension's status plus how every proxy that should run it is doing."""

    key: ResourceKey
    served_version: str | None
    status: ExtensionStatus
    proxies: tuple[ProxyDelivery, ...]


class ControlPlane:
    def __init__(
        self,
        resolver: ModuleResolver,
        cache: SnapshotCache,
        delivery: ModuleDelivery,
        *,
        sinks: Sequence[StatusSink] = (),
        retry: ResolveSchedule = ResolveSchedule(),
        debounce: float = 0.05,
        settle_timeout: float = 30.0,
        preflight: PreflightRunner | None = None,
    ) -> None:
        self._resolver = resolver
        self._judged_by = resolver.judged_by if isinstance(resolver, JudgingResolver) else _alone
        self._cache = cache
        self._delivery = delivery
        self._sinks = list(sinks)
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
        self._tracker = DeliveryTracker()
        self._published: dict[ResourceKey, ExtensionStatus] = {}
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
        try:
            await self._follow(source)
        finally:
            settler.cancel()
            pusher.cancel()
            for task in self._resolving.values():
                task.cancel()
            self._gate.close()
            self._fetches.close()
            with contextlib.suppress(asyncio.CancelledError):
                await pusher

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
        return _RoundCache(self._delivery, self._gate_now())

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
        self._push_proxy(record)

    def on_disconnect(self, node_id: str) -> None:
        self._proxies.pop(node_id, None)
        self._tracker.forget_proxy(node_id)
        self._fetches.forget_proxy(node_id)
        self._cache.clear(node_id)
        self._request()

    def on_ack(
        self, node_id: str, type_url: str, version: str, resource_names: Sequence[str]
    ) -> None:
        record = self._proxies.get(node_id)
        if record is None:
            return
        if type_url == EXTENSION_CONFIG_TYPE_URL:
            rejected_before = self._tracker.rejects(node_id)
            current = dict(record.extension_versions.values())
            for name in resource_names:
                self._tracker.acked(node_id, name, version)
                if current.get(name) == version:  # the real module, not a stand-in
                    self._tracker.clear_rejection(node_id, name)
                    self._fetches.accepted(node_id, name)
            # Only a cleared rejection can change what this proxy should get.
            changed = rejected_before and not self._tracker.rejects(node_id)
            self._request(proxy=node_id if changed else None)
        else:
            record.rejections.pop(type_url, None)
            self._request()

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
            stands_in = self._stands_in(record)
            for name in resource_names:
                self._tracker.nacked(node_id, name, rejected_version, error_detail)
                if stands_in:
                    self._fetches.rejected(node_id, name, _module_sha256(record, name))
        else:
            record.rejections[type_url] = error_detail
        self._request(proxy=node_id)

    # --- computing and publishing --------------------------------------------------

    def _request(self, *, everything: bool = False, proxy: str | None = None) -> None:
        """Ask the push loop for work: recompute every proxy (configuration or images
        changed), one proxy (it rejected or re-accepted something), or, with neither,
        only refresh the status (an ACK changes what users see, not what proxies get)."""
        self._recompute_all |= everything
        if proxy is not None:
            self._recompute_proxies.add(proxy)
        self._wake.set()

    async def _push_loop(self) -> None:
        await self._settled.wait()
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._debounce)
            self._wake.clear()
            everything, proxies = self._recompute_all, self._recompute_proxies
            self._recompute_all, self._recompute_proxies = False, set()
            try:
                if everything:
                    self.recompute()
                else:
                    round_cache = self._new_round()
                    for node_id in sorted(proxies):
                        record = self._proxies.get(node_id)
                        if record is not None:
                            self._push_proxy(record, round_cache)
                await self._publish_statuses()
            except Exception as exc:
                self.faults.failed("computing proxy configurations", exc)
                # the next change tries again, and again everything
                self._recompute_all = True
            else:
                self.faults.succeeded("computing proxy configurations")

    def recompute(self) -> None:
        """Recompute and publish every proxy's snapshot (unchanged ones send nothing).

        Replicas of a workload (same namespace, labels, ports and application address)
        get the same configuration: within one recomputation it is planned, generated and
        built into an immutable snapshot once, and shared by every such proxy that has
        rejected nothing (a proxy with rejections gets its own, see ``_generate``).
        """
        round_cache = self._new_round()
        for record in list(self._proxies.values()):
            self._push_proxy(record, round_cache)

    def _push_proxy(self, record: ProxyRecord, round_cache: _RoundCache | None = None) -> None:
        if record.proxy is None:
            self._cache.set_snapshot(record.node_id, Snapshot())
            return
        round_cache = round_cache or self._new_round()
        proxy = record.proxy
        workload_key = _workload_key(proxy.workload)
        plan = round_cache.plans.get(workload_key)
        if plan is None:
            gated = round_cache.gated
            plan = plan_workload(
                self._model.topology, gated.extensions, gated.resolutions, proxy.workload
            )
            round_cache.plans[workload_key] = plan
        record.plan = plan
        try:
            shareable = not self._tracker.rejects(proxy.node_id)
            # Replicas that fetched their modules at the same attempts share too.
            key = (workload_key, proxy.inbound_port, proxy.app, proxy.inbound_address,
                   self._delivery.mode_for(proxy), self._fetches.attempts_key(proxy.node_id))  # fmt: skip
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
        configs = generated.snapshot.resources(EXTENSION_CONFIG_TYPE_URL).resources
        for key_, (name, version) in generated.versions.items():
            if key_ not in generated.left_out:
                self._tracker.offered(record.node_id, name, version, configs[name].message)
        self._tracker.retain(record.node_id, {n for n, _ in generated.versions.values()})
        self._fetches.retain(record.node_id, {n for n, _ in generated.versions.values()})
        self._cache.set_snapshot(record.node_id, generated.snapshot)

    def _generate(
        self, proxy: ProxyInfo, plan: WorkloadPlan, round_cache: _RoundCache
    ) -> _Generated:
        """The proxy's resources and snapshot, with every version it rejected replaced by
        the last one it accepted, or left out when it accepted none. A proxy that rejects
        remote modules until fetched gets the pass-through stand-in instead of nothing,
        and each module at its current fetch attempt (:mod:`meshext.server.fetch_retries`)."""

        stands_in = self._delivery.stands_in(self._delivery.mode_for(proxy))
        attempts = self._fetches.attempts(proxy.node_id) if stands_in else {}

        def generate(applied_plan: WorkloadPlan) -> EnvoyResources:
            resources = proxy_resources(
                proxy, applied_plan, self._delivery, extension_configs=round_cache.extension_config
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
        if not self._tracker.rejects(proxy.node_id):
            return _Generated(resources, snapshot, versions, {})
        left_out: dict[ResourceKey, str] = {}
        keep: list[PlannedExtension] = []
        replacements: dict[str, Any] = {}
        stand_in_names: set[str] = set()
        for planned in plan.applied:
            name, version = versions.get(planned.key, ("", ""))
            if not self._tracker.is_rejected(proxy.node_id, name, version):
                keep.append(planned)
                continue
            accepted = self._tracker.last_accepted(proxy.node_id, name)
            if accepted is not None:
                keep.append(planned)
                replacements[name] = accepted
            elif stands_in:  # the module is being fetched: the stand-in meanwhile
                keep.append(planned)
                replacements[name] = stand_in_for(planned)
                stand_in_names.add(name)
            else:
                left_out[planned.key] = self._tracker.state(proxy.node_id, name, version).message
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
        """Status of every extension, with per-proxy delivery."""
        per_extension: dict[ResourceKey, list[ProxyDelivery]] = {}
        known = {e.key: e for e in self._model.extensions}
        for record in self._proxies.values():
            for key, (name, version) in record.extension_versions.items():
                state = self._tracker.state(record.node_id, name, version)
                ext = known.get(key)
                closed = ext is None or closes(ext.failure_policy)
                network = ext is not None and ext.layer is FilterLayer.NETWORK
                per_extension.setdefault(key, []).append(
                    self._fetches.explain(state, name, closed=closed, network=network)
                )
        reports = []
        for ext in self._model.extensions:
            resolution = self._gated.statuses.get(ext.key, self._resolutions.get(ext.key))
            status = extension_status(ext, resolution, self.module_url, self._model.topology)
            proxies = tuple(sorted(per_extension.get(ext.key, []), key=lambda p: p.proxy))
            reports.append(
                ExtensionReport(ext.key, self._served_versions.get(ext.key), status, proxies)
            )
        return reports

    def proxies(self) -> list[ProxyRecord]:
        return [self._proxies[k] for k in sorted(self._proxies)]

    def proxy(self, node_id: str) -> ProxyRecord | None:
        return self._proxies.get(node_id)

    async def _publish_statuses(self) -> None:
        current = {r.key: r.status for r in self.reports()}
        for key, status in current.items():
            if self._published.get(key) == status:
                continue
            self._published[key] = status
            for sink in self._sinks:
                try:
                    await sink.publish(key, status)
                except Exception:
                    log.exception("writing status of %s failed", key)
        for key in [k for k in self._published if k not in current]:
            del self._published[key]


@dataclass(frozen=True)
class _Generated:
    resources: EnvoyResources
    snapshot: Snapshot
    versions: dict[ResourceKey, tuple[str, str]]
    """Per applied extension: (ECDS resource name, version generated for it)."""
    left_out: dict[ResourceKey, str]


@dataclass
class _RoundCache:
    """What one recomputation computes once and shares between proxies: plans per
    workload, whole configurations per replica set, and, across different workloads,
    each extension's ECDS resource and its serialized form."""

    delivery: ModuleDelivery
    gated: Gated
    plans: dict[object, WorkloadPlan] = field(default_factory=dict)
    generated: dict[object, _Generated] = field(default_factory=dict)
    configs: dict[object, Any] = field(default_factory=dict)
    packed: dict[int, Resource] = field(default_factory=dict)

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
            made = []
            for message in by_name.values():
                resource = self.packed.get(id(message))
                if resource is None or resource.message is not message:
                    resource = make_resource(type_url, message)
                    if type_url == EXTENSION_CONFIG_TYPE_URL:
                        self.packed[id(message)] = resource
                made.append(resource)
            sets.append(ResourceSet.of(type_url, made))
        return Snapshot(sets)


def _module_sha256(record: ProxyRecord, config_name: str) -> str:
    """The sha256 of the module of the extension whose ECDS resource is ``config_name``."""
    for planned in record.plan.applied if record.plan else ():
        if planned.module is not None and names.extension_config_name(planned.key) == config_name:
            return planned.module.sha256
    return ""


def _workload_key(workload: Workload) -> object:
    return (
        workload.namespace,
        tuple(sorted(workload.labels.items())),
        workload.kind,
        workload.name,
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
