"""Leader election with a ``coordination.k8s.io/v1`` Lease, so replicas can stand by.

Every replica watches and computes; only the leader writes (status, rendered
objects). The algorithm is the usual one for Leases:

* the lease names its holder and how long a claim lasts (``leaseDurationSeconds``);
* the holder renews it every ``retry_period``; if renewing keeps failing for
  ``renew_deadline`` it stops acting as leader *before* others may take over
  (``renew_deadline < lease_duration``);
* a candidate takes the lease when it is free, released, or when its record has
  not changed for ``lease_duration`` as measured on the candidate's own clock -
  clocks of different machines are never compared;
* every write carries the resourceVersion read, so two candidates racing for the
  same lease cannot both win (the loser gets a 409 Conflict);
* on shutdown the leader releases the lease, so a successor takes over at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from meshext.kube.client import KubeClient
from meshext.kube.errors import Conflict, KubeError, NotFound
from meshext.kube.resources import LEASE, KubeObject, resource_version

log = logging.getLogger(__name__)


def _micro_time(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        on_change: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < retry_period < renew_deadline < lease_duration:
            raise ValueError("need 0 < retry_period < renew_deadline < lease_duration")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self._on_change = on_change
        self._clock = clock
        self._leading = asyncio.Event()
        self._last_renew = 0.0
        self._observed_version = ""
        self._observed_at = 0.0
        self._waiting_for = ""
        self.transitions = 0

    def __repr__(self) -> str:
        state = "leading" if self.is_leader else "standing by"
        return f"<LeaderElector {self.namespace}/{self.name} as {self.identity}: {state}>"

    @property
    def is_leader(self) -> bool:
        """True while this replica holds a lease renewed within ``renew_deadline``."""
        if not self._leading.is_set():
            return False
        return self._clock() - self._last_renew < self.renew_deadline

    async def wait_leading(self) -> None:
        await self._leading.wait()

    async def run(self) -> None:
        """Campaign and renew until cancelled; then release the lease if held."""
        try:
            while True:
                won = await self._try_acquire_or_renew()
                now = self._clock()
                if won:
                    self._last_renew = now
                    if not self._leading.is_set():
                        log.info("%s: now leading %s/%s", self.identity, self.namespace, self.name)
                        self._set_leading(True)
                elif self._leading.is_set() and now - self._last_renew >= self.renew_deadline:
                    log.warning("%s: could not renew the lease; standing down", self.identity)
                    self._set_leading(False)
                await asyncio.sleep(self.retry_period)
        finally:
            if self._leading.is_set():
                self._set_leading(False)
                await self._release()

    def _set_leading(self, leading: bool) -> None:
        if leading:
            self._leading.set()
        else:
            self._leading.clear()
        if self._on_change is not None:
            try:
                self._on_change(leading)
            except Exception:
                log.exception("leadership change handler failed")

    async def _try_acquire_or_renew(self) -> bool:
        now_wall = dt.datetime.now(dt.UTC)
        try:
            lease = await self.client.get(LEASE, self.namespace, self.name)
        except NotFound:
            return await self._create(now_wall)
        except KubeError as exc:
            log.debug("%s: cannot read the lease: %s", self.identity, exc)
            return False
        spec: dict[str, Any] = dict(lease.get("spec") or {})
        version = resource_version(lease)
        if version != self._observed_version:
            self._observed_version = version
            self._observed_at = self._clock()
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
        if holder and holder != self.identity and self._clock() - self._observed_at < duration:
            if holder != self._waiting_for:
                log.info(
                    "%s: standing by; lease %s/%s is held by %s, waiting for it",
                    self.identity,
                    self.namespace,
                    self.name,
                    holder,
                )
                self._waiting_for = holder
            return False
        self._waiting_for = ""
        if holder != self.identity:
            spec["acquireTime"] = _micro_time(now_wall)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = round(self.lease_duration)
        spec["renewTime"] = _micro_time(now_wall)
        return await self._update(lease, spec)

    async def _create(self, now: dt.datetime) -> bool:
        lease: KubeObject = {
            "apiVersion": LEASE.api_version,
            "kind": LEASE.kind,
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": round(self.lease_duration),
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            created = await self.client.create(LEASE, lease)
        except KubeError as exc:
            log.debug("%s: cannot create the lease: %s", self.identity, exc)
            return False
        self._observe(created)
        self.transitions += 1
        return True

    async def _update(self, lease: KubeObject, spec: dict[str, Any]) -> bool:
        updated = {**lease, "spec": spec}
        try:
            stored = await self.client.replace(LEASE, updated)
        except Conflict:
            return False
        except KubeError as exc:
            log.debug("%s: cannot update the lease: %s", self.identity, exc)
            return False
        if not self._leading.is_set():
            self.transitions += 1
        self._observe(stored)
        return True

    def _observe(self, lease: KubeObject) -> None:
        self._observed_version = resource_version(lease)
        self._observed_at = self._clock()

    async def _release(self) -> None:
        try:
            lease = await self.client.get(LEASE, self.namespace, self.name)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            spec["holderIdentity"] = ""
            spec["leaseDurationSeconds"] = 1
            spec["renewTime"] = _micro_time(dt.datetime.now(dt.UTC))
            await self.client.replace(LEASE, {**lease, "spec": spec})
            log.info("%s: released the lease", self.identity)
        except KubeError as exc:
            log.warning("%s: could not release the lease: %s", self.identity, exc)
