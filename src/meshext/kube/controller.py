"""The Kubernetes controller: ServiceMeshExtension status, and Istio resources for them.

Informers keep local copies of ServiceMeshExtensions (read through v1, the storage
version, whatever version users wrote), control planes, member rolls, the ConfigMaps
that publish trusted keys (:mod:`meshext.kube.signature_trust`) and, in Istio mode,
WasmPlugins and EnvoyFilters. Every change puts the key of the extension it concerns
on a :class:`~meshext.kube.workqueue.WorkQueue`; a control plane, member roll or
trusted-keys change concerns every extension. The reconciler then looks at the *current*
state only (level-triggered), so a burst of events costs one pass, and the result
is the same whether events were seen, missed and re-listed, or replayed:

1. decode the object (an invalid one gets a status saying what is wrong);
2. check the namespace is in a mesh with extensions enabled (else a status saying so);
3. resolve the image through the :class:`~meshext.mesh.resolution.ModuleResolver`,
   under the signature policy of the extension's mesh and namespace (a retryable
   failure is retried with backoff);
4. in Istio mode, render the WasmPlugin or EnvoyFilter, create or correct it (someone
   editing it is undone), and delete what this extension rendered before but no
   longer should - also when the extension is deleted: owner references are set,
   but nothing here relies on a garbage collector;
5. write the status subresource, only when it differs from what is stored.

Only the leader (a Lease, see :mod:`meshext.kube.leader`) writes; standbys keep their
caches and module cache warm, serve modules and conversions, and take over with a
full pass when they win the lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from meshext.api import extension as sme_api
from meshext.api.controlplane import ServiceMeshControlPlane, ServiceMeshMemberRoll
from meshext.api.decode import DecodeError, decode
from meshext.api.extension import DeploymentStatus, ExtensionStatus, ServiceMeshExtension
from meshext.api.meta import ResourceKey, SourceLocation
from meshext.api.phase import Phase
from meshext.errors import MeshextError
from meshext.images.trust_scopes import ScopedTrust
from meshext.istio.render import (
    MANAGED_BY,
    MANAGED_BY_LABEL,
    OWNER_ANNOTATION,
    IstioOptions,
    RenderError,
    Rendering,
    Resolved,
    render,
)
from meshext.kube.client import KubeClient
from meshext.kube.errors import Conflict, Forbidden, Invalid, NotFound
from meshext.kube.leader import LeaderElector
from meshext.kube.resources import (
    ENVOY_FILTER,
    SERVICE_MESH_CONTROL_PLANE,
    SERVICE_MESH_EXTENSION,
    SERVICE_MESH_MEMBER_ROLL,
    WASM_PLUGIN,
    KubeObject,
    ObjectKey,
    ResourceType,
    annotations_of,
    labels_of,
    metadata,
    object_key,
)
from meshext.kube.scoped_resolution import resolving_in
from meshext.kube.signature_trust import ClusterTrust
from meshext.kube.status import write_status
from meshext.kube.tasks import Backoff, cancel_and_wait
from meshext.kube.watching import Informer, wait_all_synced
from meshext.kube.workqueue import WorkQueue
from meshext.mesh.extension import Extension, from_service_mesh_extension
from meshext.mesh.resolution import ModuleResolver, Resolution, ResolutionState
from meshext.mesh.status import extension_status
from meshext.mesh.topology import Topology, build_topology
from meshext.server.modules import module_url

log = logging.getLogger(__name__)

LEASE_NAME = "meshext-controller"


@runtime_checkable
class ForgettingResolver(Protocol):
    """A resolver that tracks which extensions use which module (the image cache does)."""

    def forget(self, key: ResourceKey) -> None: ...


@dataclass(frozen=True)
class ControllerSettings:
    """How the controller runs.

    ``namespace`` holds its Lease. ``module_base_url`` is where proxies reach the module
    server (reported in ``status.deployment.url`` and used for Istio's resources);
    ``istio`` turns on rendering into Istio resources.
    """

    namespace: str = "meshext-system"
    identity: str = field(default_factory=socket.gethostname)
    lease_name: str = LEASE_NAME
    leader_election: bool = True
    module_base_url: str | None = None
    istio: IstioOptions | None = None
    workers: int = 4
    resync_period: float = 300.0
    watch_timeout: int = 300
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass
class ControllerStats:
    """Writes done so far, by kind; tests and the admin API read these."""

    status_writes: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    reconciles: int = 0


@dataclass(frozen=True)
class _Evaluation:
    status: ExtensionStatus
    rendering: Rendering | None = None
    retry: bool = False


class Controller:
    def __init__(
        self,
        client: KubeClient,
        resolver: ModuleResolver,
        settings: ControllerSettings | None = None,
        *,
        trust: ClusterTrust | None = None,
    ) -> None:
        self.client = client
        self.resolver = resolver
        self.settings = settings or ControllerSettings()
        self.trust = trust
        """Keys and modes published in the cluster; its verifier must be the resolver's."""
        if trust is not None:
            trust.config_maps.add_handler(self._on_mesh)
        self.stats = ControllerStats()
        timeout = self.settings.watch_timeout
        self.extensions = Informer(
            client, SERVICE_MESH_EXTENSION, on_change=self._on_extension, watch_timeout=timeout
        )
        self.control_planes = Informer(
            client, SERVICE_MESH_CONTROL_PLANE, on_change=self._on_mesh, watch_timeout=timeout
        )
        self.member_rolls = Informer(
            client, SERVICE_MESH_MEMBER_ROLL, on_change=self._on_mesh, watch_timeout=timeout
        )
        self.rendered: dict[str, Informer] = {}
        if self.settings.istio is not None:
            for rtype in (WASM_PLUGIN, ENVOY_FILTER):
                self.rendered[rtype.kind] = Informer(
                    client, rtype, on_change=self._on_rendered, watch_timeout=timeout
                )
        self.queue: WorkQueue[ObjectKey] = WorkQueue(
            self._reconcile, workers=self.settings.workers, name="servicemeshextensions"
        )
        self.elector: LeaderElector | None = None
        if self.settings.leader_election:
            self.elector = LeaderElector(
                client,
                namespace=self.settings.namespace,
                name=self.settings.lease_name,
                identity=self.settings.identity,
                lease_duration=self.settings.lease_duration,
                renew_deadline=self.settings.renew_deadline,
                retry_period=self.settings.retry_period,
                on_change=self._on_leadership,
            )
        self._ready = asyncio.Event()
        self._resolved: dict[ObjectKey, tuple[_ResolvedFor, Resolution]] = {}
        self._retries: dict[ObjectKey, Backoff] = {}
        self._epoch = 0

    def __repr__(self) -> str:
        role = "leader" if self.is_leader else "standby"
        return f"<Controller {self.settings.identity} ({role}): {self.queue!r}>"

    @property
    def informers(self) -> list[Informer]:
        trusted = [self.trust.config_maps] if self.trust is not None else []
        return [
            self.extensions,
            self.control_planes,
            self.member_rolls,
            *trusted,
            *self.rendered.values(),
        ]

    @property
    def ready(self) -> bool:
        """Caches are filled, reconciliation has started, and the API server answers."""
        return self.unready_reason() is None

    def unready_reason(self) -> str | None:
        """Why this replica is not ready, ``None`` when it is."""
        connectivity = self.client.connectivity
        if not connectivity.reachable:
            return (
                f"the API server has not answered for {connectivity.lost_for():.0f}s "
                f"({connectivity.problem}); caches may be stale"
            )
        if not self._ready.is_set():
            return "caches are not filled yet"
        return None

    async def wait_ready(self) -> None:
        await self._ready.wait()

    @property
    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Watch, elect and reconcile until cancelled (or until a part fails)."""
        workers = [asyncio.create_task(i.run(), name=f"informer {i.rtype}") for i in self.informers]
        workers.append(
            asyncio.create_task(
                self.client.connectivity.probe(self.client.version), name="API server probe"
            )
        )
        election = (
            asyncio.create_task(self.elector.run(), name="leader election")
            if self.elector is not None
            else None
        )
        try:
            await wait_all_synced(*self.informers)
            workers.append(asyncio.create_task(self.queue.run(), name="work queue"))
            workers.append(asyncio.create_task(self._resync(), name="resync"))
            self._enqueue_everything()
            self._ready.set()
            log.info("controller %s ready", self.settings.identity)
            everything = [*workers, *([election] if election else [])]
            done, _ = await asyncio.wait(everything, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise RuntimeError(f"{next(iter(done)).get_name()} stopped")
        finally:
            self._ready.clear()
            await cancel_and_wait(*workers)
            # Last, once nothing writes any more: the elector releases the lease.
            if election is not None:
                await cancel_and_wait(election)

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_period)
            self._epoch += 1
            self._enqueue_everything()

    def _enqueue_everything(self) -> None:
        for key in self.extensions.objects:
            self.queue.add(key)
        for informer in self.rendered.values():
            for obj in informer.objects.values():
                owner = _owner_of(obj)
                if owner is not None:
                    self.queue.add(owner)

    # ------------------------------------------------------------------ events

    def _on_extension(self, key: ObjectKey, old: KubeObject | None, new: KubeObject | None) -> None:
        self.queue.add(key)

    def _on_mesh(self, key: ObjectKey, old: KubeObject | None, new: KubeObject | None) -> None:
        for extension_key in self.extensions.objects:
            self.queue.add(extension_key)

    def _on_rendered(self, key: ObjectKey, old: KubeObject | None, new: KubeObject | None) -> None:
        obj = new or old
        if obj is None:
            return
        owner = _owner_of(obj)
        if owner is not None:
            self.queue.add(owner)
            return
        # Not ours: an extension may be waiting for this name to become free.
        for extension_key in self.extensions.objects:
            if extension_key.name == key.name:
                self.queue.add(extension_key)

    def _on_leadership(self, leading: bool) -> None:
        if leading:
            self._enqueue_everything()

    # ------------------------------------------------------------------ reconciling

    async def _reconcile(self, key: ObjectKey) -> None:
        self.stats.reconciles += 1
        obj = self.extensions.get(key)
        if obj is None:
            self._forget(key)
            if self.is_leader:
                await self._sync_rendered(key, None)
            return
        evaluation = await self._evaluate(key, obj)
        if evaluation.retry:
            backoff = self._retries.setdefault(key, Backoff(initial=1.0, maximum=300.0))
            self.queue.add_after(key, backoff.next_delay())
        else:
            self._retries.pop(key, None)
        if not self.is_leader:
            return
        status = evaluation.status
        if self.rendered:
            problem = await self._sync_rendered(key, evaluation.rendering)
            if problem is not None:
                status = _not_ready(status, problem)
        resource_key = ResourceKey(sme_api.KIND, key.namespace, key.name)
        if await write_status(self.client, resource_key, obj.get("status"), status):
            self.stats.status_writes += 1

    def _forget(self, key: ObjectKey) -> None:
        self._resolved.pop(key, None)
        self._retries.pop(key, None)
        self.queue.forget(key)
        if isinstance(self.resolver, ForgettingResolver):
            self.resolver.forget(ResourceKey(sme_api.KIND, key.namespace, key.name))

    async def _evaluate(self, key: ObjectKey, obj: KubeObject) -> _Evaluation:
        meta = metadata(obj)
        generation = int(meta.get("generation") or 1)
        location = SourceLocation(f"kubernetes://{key.namespace}/{sme_api.KIND}/{key.name}")
        try:
            resource = decode(obj, location)
        except DecodeError as exc:
            return _Evaluation(_failed(generation, _decode_message(exc), obj))
        if not isinstance(resource, ServiceMeshExtension):
            return _Evaluation(_failed(generation, "not a ServiceMeshExtension"))
        extension = from_service_mesh_extension(resource)
        topology = self._topology()
        mesh = topology.mesh_of(key.namespace)
        if mesh is None:
            return _Evaluation(
                _not_ready(
                    _base(extension),
                    f"namespace {key.namespace!r} is not a control-plane namespace and is not "
                    "listed in any ServiceMeshMemberRoll; extensions in it are ignored",
                )
            )
        if not mesh.extensions_enabled:
            plane = mesh.control_plane.metadata
            return _Evaluation(
                _not_ready(
                    _base(extension),
                    f"extensions are disabled in this mesh: ServiceMeshControlPlane "
                    f"{plane.namespace}/{plane.name} does not set "
                    "spec.techPreview.wasmExtensions.enabled: true",
                )
            )
        scope = self.trust.trust_for(key.namespace, mesh) if self.trust is not None else None
        resolution, retry = await self._resolve(key, obj, extension, scope)
        status = extension_status(extension, resolution, self._module_url)
        istio = self.settings.istio
        if istio is None or not status.deployment.ready:
            return _Evaluation(status, retry=retry)
        try:
            rendering = render(
                resource,
                Resolved(status.phase, status.priority, resolution.module),
                control_plane_namespace=mesh.namespace,
                options=istio,
            )
        except RenderError as exc:
            return _Evaluation(_not_ready(status, f"cannot render for Istio: {exc}"))
        unrepresentable = [str(n) for n in rendering.notes if n.field == "spec.priority"]
        if unrepresentable:
            # Istio would order this extension by another priority than the one in
            # effect: say so rather than write a clamped value.
            message = f"cannot render for Istio: {'; '.join(unrepresentable)}"
            return _Evaluation(_not_ready(status, message))
        return _Evaluation(status, rendering)

    async def _resolve(
        self,
        key: ObjectKey,
        obj: KubeObject,
        extension: Extension,
        scope: ScopedTrust | None = None,
    ) -> tuple[Resolution, bool]:
        """The image's resolution, and whether to try again later.

        A ready resolution is reused until the extension changes, the keys or mode
        that apply to it change, or the periodic resync comes. When re-resolving
        fails for a reason that may pass (registry down), the module already in use
        for this very generation stays in use; so does it when a newer image is
        refused by the signature policy, unless that policy itself changed (a key
        removed must stop counting).
        """
        uid = str(metadata(obj).get("uid") or "")
        trust = scope.identity if scope is not None else ()
        current = _ResolvedFor(uid, extension.generation, self._epoch, trust)
        cached = self._resolved.get(key)
        if cached is not None and cached[0] == current:
            return cached[1], False
        try:
            with resolving_in(extension.namespace, scope):
                resolution = await self.resolver.resolve(extension)
        except MeshextError as exc:
            resolution = Resolution.failed(
                str(exc), retryable=bool(getattr(exc, "retryable", False))
            )
        if resolution.state is ResolutionState.READY:
            self._resolved[key] = (current, resolution)
            return resolution, False
        retry = resolution.state is ResolutionState.FAILED and (
            resolution.retryable or resolution.keep_previous
        )
        same = cached is not None and cached[0].same_object(current)
        if resolution.keep_previous and cached is not None and cached[0].trust != trust:
            same = False  # refused under a policy other than the one that verified it
        if retry and cached is not None and same:
            log.warning("%s: %s; keeping the module in use", key, resolution.message)
            if resolution.keep_previous:  # status says why the newer image was refused
                return replace(cached[1], message=resolution.message), True
            return cached[1], True
        self._resolved.pop(key, None)
        return resolution, retry

    def _module_url(self, sha256: str) -> str | None:
        base = self.settings.module_base_url
        return module_url(base, sha256) if base else None

    def _topology(self) -> Topology:
        planes: list[ServiceMeshControlPlane] = []
        rolls: list[ServiceMeshMemberRoll] = []
        for obj in self.control_planes.values():
            resource = _decode_quietly(obj)
            if isinstance(resource, ServiceMeshControlPlane):
                planes.append(resource)
        for obj in self.member_rolls.values():
            resource = _decode_quietly(obj)
            if isinstance(resource, ServiceMeshMemberRoll):
                rolls.append(resource)
        return build_topology(planes, rolls)

    # ------------------------------------------------------------------ Istio resources

    async def _sync_rendered(self, key: ObjectKey, rendering: Rendering | None) -> str | None:
        """Make the objects rendered for extension ``key`` exactly ``rendering``.

        Returns a message for the status when the API server refuses the rendering
        (validation, permissions, a foreign object in the way); raises when trying
        again later may help.
        """
        wanted = (
            (rendering.kind, ObjectKey(rendering.namespace, rendering.name))
            if rendering is not None
            else None
        )
        for kind, informer in self.rendered.items():
            for obj_key, obj in list(informer.objects.items()):
                if _owner_of(obj) != key or (kind, obj_key) == wanted:
                    continue
                await self._delete(informer.rtype, obj)
        if rendering is None:
            return None
        informer = self.rendered[rendering.kind]
        if not informer.served:
            return (
                f"the API server does not serve {informer.rtype}: install Istio's CRDs "
                "(or run without --istio)"
            )
        target = ObjectKey(rendering.namespace, rendering.name)
        current = informer.get(target)
        if current is not None and _owner_of(current) != key:
            return (
                f"{rendering.kind} {target} already exists and is not managed by this "
                "ServiceMeshExtension; rename one of them"
            )
        try:
            try:
                await self._write_rendered(informer.rtype, current, rendering)
            except Conflict:
                # The cache lags behind (our own earlier write, or someone else's):
                # read the object as it is now and decide again, once.
                try:
                    current = await self.client.get(informer.rtype, *target)
                except NotFound:
                    current = None
                if current is not None and _owner_of(current) != key:
                    return f"{rendering.kind} {target} appeared meanwhile and is not ours"
                await self._write_rendered(informer.rtype, current, rendering)
        except (Invalid, Forbidden) as exc:
            return f"the API server refused {rendering.kind} {target}: {exc.message or exc}"
        return None

    async def _write_rendered(
        self, rtype: ResourceType, current: KubeObject | None, rendering: Rendering
    ) -> None:
        target = f"{rendering.namespace}/{rendering.name}"
        owner = rendering.manifest["metadata"]["annotations"][OWNER_ANNOTATION]
        if current is None:
            await self.client.create(rtype, rendering.manifest)
            self.stats.created += 1
            log.info("created %s %s for %s", rendering.kind, target, owner)
        elif _differs(current, rendering.manifest):
            await self.client.replace(rtype, _merged(current, rendering.manifest))
            self.stats.updated += 1
            log.info("restored %s %s for %s", rendering.kind, target, owner)

    async def _delete(self, rtype: ResourceType, obj: KubeObject) -> None:
        key = object_key(obj)
        try:
            await self.client.delete(rtype, key.namespace, key.name, uid=metadata(obj).get("uid"))
        except (NotFound, Conflict):
            return  # already gone, or replaced by a new object whose event follows
        self.stats.deleted += 1
        log.info("deleted %s %s", rtype.kind, key)


# --------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class _ResolvedFor:
    """What a cached resolution was made for."""

    uid: str
    generation: int
    epoch: int
    trust: tuple[str, ...]

    def same_object(self, other: _ResolvedFor) -> bool:
        return (self.uid, self.generation) == (other.uid, other.generation)


def _owner_of(obj: KubeObject) -> ObjectKey | None:
    if labels_of(obj).get(MANAGED_BY_LABEL) != MANAGED_BY:
        return None
    owner = annotations_of(obj).get(OWNER_ANNOTATION, "")
    namespace, _, name = owner.partition("/")
    return ObjectKey(namespace, name) if namespace and name else None


def _differs(current: KubeObject, desired: KubeObject) -> bool:
    if current.get("spec") != desired.get("spec"):
        return True
    want = metadata(desired)
    have = metadata(current)
    for field_name in ("labels", "annotations"):
        wanted = want.get(field_name) or {}
        present = have.get(field_name) or {}
        if any(present.get(k) != v for k, v in wanted.items()):
            return True
    return "ownerReferences" in want and want["ownerReferences"] != have.get("ownerReferences")


def _merged(current: KubeObject, desired: KubeObject) -> KubeObject:
    """``desired`` with ``current``'s identity and foreign labels and annotations kept."""
    have = metadata(current)
    want = metadata(desired)
    meta = {
        **want,
        "resourceVersion": have.get("resourceVersion"),
        "labels": {**(have.get("labels") or {}), **(want.get("labels") or {})},
        "annotations": {**(have.get("annotations") or {}), **(want.get("annotations") or {})},
    }
    if "ownerReferences" not in want and "ownerReferences" in have:
        meta["ownerReferences"] = have["ownerReferences"]
    return {**desired, "metadata": meta}


def _decode_quietly(obj: KubeObject) -> object:
    key = object_key(obj)
    try:
        return decode(
            obj, SourceLocation(f"kubernetes://{key.namespace}/{obj.get('kind')}/{key.name}")
        )
    except DecodeError as exc:
        log.warning("ignoring %s %s: %s", obj.get("kind"), key, exc)
        return None


def _decode_message(error: DecodeError) -> str:
    """What is wrong with the object, worded as Maistra did for the image."""
    problems = []
    for problem in error.errors:
        if problem.field == "spec.image":
            problems.append(f"failed to parse spec.image: {problem.message}")
        elif problem.field:
            problems.append(f"invalid {problem.field}: {problem.message}")
        else:
            problems.append(f"invalid: {problem.message}")
    return "; ".join(problems)


def _base(extension: Extension) -> ExtensionStatus:
    return ExtensionStatus(
        phase=extension.phase,
        priority=extension.priority,
        observed_generation=extension.generation,
    )


def _failed(generation: int, message: str, obj: KubeObject | None = None) -> ExtensionStatus:
    """A status for an object that does not decode, with the phase and priority it
    declares where those parts are valid on their own."""
    spec = (obj or {}).get("spec")
    spec = spec if isinstance(spec, dict) else {}
    phase: Phase | None = None
    if isinstance(spec.get("phase"), str):
        with contextlib.suppress(ValueError):
            phase = Phase.parse(spec["phase"])
    priority = spec.get("priority")
    return ExtensionStatus(
        phase=phase,
        priority=priority if isinstance(priority, int) and not isinstance(priority, bool) else None,
        observed_generation=generation,
        deployment=DeploymentStatus(ready=False, message=message),
    )


def _not_ready(status: ExtensionStatus, message: str) -> ExtensionStatus:
    """``status`` turned into a failure: not ready, the deployment fields cleared."""
    return status.model_copy(update={"deployment": DeploymentStatus(ready=False, message=message)})
