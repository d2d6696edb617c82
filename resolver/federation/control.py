"""The control side of one fedns instance: sources -> registry -> plans -> published updates.

One ``Control`` runs per instance (in the parent process when there are
several serving workers), so each cluster's API is watched once and every
worker gets the same ``ServicePlan`` updates. A registry change for a set of
service keys becomes one ``publish(PlanUpdate)`` call; plans are plain
frozen data, cheap to pickle to the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from ..config import NO_FILE, ConfigError
from .config import FederationConfig, Routing
from .health import Prober, ProbeSpec, Target, parse_probe
from .model import FederatedService, ServiceKey
from .plan import PlanId, PlanUpdate, ServicePlan, plan_from_snapshot
from .policy import Candidate
from .registry import Registry
from .sources import build_sources

log = structlog.get_logger("fedns.control")

Publish = Callable[[PlanUpdate], None]


class Control:
    def __init__(
        self, fed: FederationConfig, publish: Publish, registry: Registry | None = None
    ) -> None:
        self.fed = fed
        self.publish = publish
        self.registry = registry if registry is not None else Registry.from_config(fed)
        self.plans: dict[ServiceKey, ServicePlan] = {}
        self._since: dict[tuple[ServiceKey, str, str], tuple[bool, float]] = {}
        self.set_routing(fed.routing)
        self.prober: Prober | None = None
        self._targets: dict[ServiceKey, dict[Target, ProbeSpec]] = {}
        self.holding = True  # see release()
        self._held: set[ServiceKey] = set()
        self._task: asyncio.Task[None] | None = None
        self._unsub: Callable[[], None] | None = None

    def set_routing(self, routing: Routing) -> None:
        """Policies and the default probe (a reload that keeps the clusters); call
        ``republish`` after it."""
        self.defaults, self.overrides, self.probe = routing.defaults, routing.overrides, routing.probe

    def republish(self) -> None:
        """Plan every service again and publish all of it (into a new table)."""
        self.plans.clear()
        self.on_change(self.registry.keys())

    async def start(self) -> None:
        self._unsub = self.registry.subscribe(self.on_change)
        self.prober = Prober(self._on_probe_flip)
        self._task = asyncio.create_task(self.registry.run(build_sources(self.fed)), name="fedns-registry")

    async def stop(self) -> None:
        if self._unsub is not None:
            self._unsub()
        if self.prober is not None:
            await self.prober.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.registry.close()

    def plan(self, key: ServiceKey) -> ServicePlan | None:
        snap = self.registry.snapshot(key)
        if snap is None:
            for k in [k for k in self._since if k[0] == key]:
                del self._since[k]
            self._targets.pop(key, None)
            return None
        override = self.overrides.get(f"{key.namespace}/{key.name}")
        spec, problem = self._probe_spec(snap)
        health = None
        wanted: dict[Target, ProbeSpec] = {}
        if spec is not None:
            ports = [p.port for cs in snap.per_cluster for p in cs.ports]
            port = spec.port if spec.port is not None else (ports[0] if ports else None)
            if port is not None:
                prober = self.prober

                def health(_cluster: str, address: str) -> tuple[bool, str, float] | None:
                    t = Target(address, port, spec.kind, spec.path)
                    wanted[t] = spec
                    return prober.result(t) if prober is not None else None

        plan = plan_from_snapshot(self.fed.zone, snap, self.defaults, override, health)
        self._targets[key] = wanted
        if problem:
            plan = replace(plan, problems=(*plan.problems, problem))
        return replace(plan, candidates=tuple(self._stamp(key, c) for c in plan.candidates))

    def _probe_spec(self, snap: FederatedService) -> tuple[ProbeSpec | None, str]:
        """The service's probe: ``fedns.io/probe`` annotation, else ``federation.health``."""
        for cs in snap.per_cluster:
            raw = cs.annotations.get("fedns.io/probe")
            if raw is not None:
                try:
                    return parse_probe(raw, "annotation", NO_FILE), ""
                except ConfigError as e:
                    return self.probe, f"fedns.io/probe={raw!r} ignored: {str(e).removeprefix('annotation')}"
        return self.probe, ""

    def _on_probe_flip(self, targets: set[Target]) -> None:
        keys = frozenset(k for k, ts in self._targets.items() if targets & ts.keys())
        if keys:
            self.on_change(keys)

    def _stamp(self, key: ServiceKey, c: Candidate) -> Candidate:
        """When this endpoint's health last changed, as this instance saw it (for explain)."""
        k = (key, c.cluster, c.name)
        now = time.time()
        prev = self._since.get(k)
        if prev is None or prev[0] != c.healthy:
            prev = (c.healthy, now)
            self._since[k] = prev
        return replace(c, since=prev[1])

    def release(self) -> None:
        """Stop holding: publish everything the registry knows, then follow changes.

        Until the first full sync (or the startup bound) changes are only noted:
        every cluster's initial lists would otherwise republish each service once
        per list, blocking the loop for seconds at scale, for answers that queries
        held by ``dns.startup_wait`` would not see anyway."""
        if not self.holding:
            return
        self.holding = False
        self.on_change(self.registry.keys() | self._held)
        self._held = set()

    def on_change(self, keys: frozenset[ServiceKey]) -> None:
        if self.holding:
            self._held.update(keys)
            return
        plans: list[ServicePlan] = []
        removed: list[PlanId] = []
        for key in keys:
            plan = self.plan(key)
            old = self.plans.get(key)
            if plan is None:
                if old is not None:
                    removed.append(old.ident)
                    del self.plans[key]
                continue
            if plan == old:
                continue
            for problem in plan.problems:
                if old is None or problem not in old.problems:
                    log.warning("annotation_ignored", service=str(key), problem=problem)
            self.plans[key] = plan
            plans.append(plan)
        if self.prober is not None:
            self.prober.set_targets({t: sp for ts in self._targets.values() for t, sp in ts.items()})
        if plans or removed:
            self.publish(PlanUpdate(tuple(plans), tuple(removed)))

    # -- views for the admin API --------------------------------------------------

    def registry_view(self) -> dict[str, Any]:
        out: dict[str, Any] = {"zone": self.fed.zone, "services": []}
        for key in sorted(self.plans):
            p = self.plans[key]
            out["services"].append(
                {
                    "namespace": p.namespace,
                    "name": p.name,
                    "fqdn": p.base,
                    "policy": p.policy.kind,
                    "ttl": p.policy.ttl,
                    "ports": [f"{x.name}/{x.protocol}:{x.port}" for x in p.ports],
                    "problems": list(p.problems),
                    "endpoints": [
                        {
                            "cluster": c.cluster,
                            "region": c.region,
                            "zone": c.zone,
                            "name": c.name,
                            "addresses": list(c.v4 + c.v6),
                            "healthy": c.healthy,
                            "health": c.health_reason,
                        }
                        for c in p.candidates
                    ],
                }
            )
        return out

    def clusters_view(self) -> dict[str, Any]:
        return {name: st.as_dict() for name, st in self.registry.cluster_status().items()}

    def snapshot(self) -> dict[str, Any]:
        """What the registry holds, as ``federation.services`` entries (the static format
        of ``config.py``), for ``fedns diff --server``: every published service with its
        endpoints per cluster, after the cluster's reach and with readiness as the
        clusters report it (no probe results: the diff's config may probe differently).
        ``clusters`` says where each cluster's data came from and whether it is current."""
        services: list[dict[str, Any]] = []
        for key in sorted(self.registry.keys()):
            snap = self.registry.snapshot(key)
            if snap is None:
                continue
            # The first cluster's port wins a name, as in plan_from_snapshot.
            ports: dict[tuple[str, str] | tuple[int, str], dict[str, Any]] = {}
            annotations: dict[str, str] = {}
            endpoints: dict[str, list[dict[str, Any]]] = {}
            for cs in snap.per_cluster:
                annotations.update(cs.annotations)
                for p in cs.ports:
                    pk = (p.name, p.protocol) if p.name else (p.port, p.protocol)
                    ports.setdefault(pk, {"name": p.name, "port": p.port, "protocol": p.protocol})
                endpoints[cs.cluster.name] = [
                    {
                        "addresses": list(e.addresses),
                        "ready": e.ready,
                        "serving": e.serving,
                        "terminating": e.terminating,
                        **{f: v for f in ("hostname", "zone", "node") if (v := getattr(e, f))},
                    }
                    for e in cs.endpoints
                ]
            services.append(
                {
                    "namespace": key.namespace,
                    "name": key.name,
                    "ports": list(ports.values()),
                    "annotations": annotations,
                    "endpoints": endpoints,
                }
            )
        clusters = {
            name: {"source": st.source, "synced": st.synced, "stale": st.stale}
            for name, st in self.registry.cluster_status().items()
        }
        return {"zone": self.fed.zone, "clusters": clusters, "services": services}

    def lagging(self) -> list[dict[str, Any]]:
        """The clusters this instance has no current view of (never listed, or out of
        contact past ``stale_after``) and what that does to answers; empty when all are."""
        out: list[dict[str, Any]] = []
        for name, st in self.registry.cluster_status().items():
            if st.synced and not st.stale:
                continue
            if not st.synced:
                lists = ", ".join(st.waiting_for) or "its resources"
                effect = f"not listed yet ({lists}): what those hold is not in answers"
            elif st.stale_policy == "serve":
                effect = f"no contact for over {st.stale_after:g} s: its endpoints kept, marked stale"
            else:
                effect = f"no contact for over {st.stale_after:g} s: left out of answers"
            out.append(
                {
                    "cluster": name,
                    "synced": st.synced,
                    "stale": st.stale,
                    "last_error": st.last_error,
                    "effect": effect,
                }
            )
        return out
