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
import gc
import time
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import Any

import structlog

from .config import FederationConfig, Routing
from .health import Prober, Target, target
from .model import ServiceKey
from .plan import (
    PlanId,
    PlanUpdate,
    ServicePlan,
    Stamp,
    choose_probe,
    merged_annotations,
    plan_from_snapshot,
)
from .policy import ProbeView, Stamps
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
        # The last plan of each service; its candidates also say when each health
        # input last changed as this instance saw it (see _stamps).
        self.plans: dict[ServiceKey, ServicePlan] = {}
        # Per service: its answer set, when it last changed, and whether it had
        # endpoints (the health-aware TTL, _stability); and the timer that ends
        # its flap window.
        self._answers: dict[ServiceKey, tuple[int, float, bool]] = {}
        self._settle: dict[ServiceKey, tuple[float, asyncio.TimerHandle]] = {}
        self._flipped: set[ServiceKey] = set()
        self._flip_handle: asyncio.Handle | None = None
        self._endpoints: dict[ServiceKey, dict[str, list[int]]] = {}  # for probe_stats
        self.prober: Prober | None = None
        self.set_routing(fed.routing)
        self.holding = True  # see release()
        self._held: set[ServiceKey] = set()
        self._task: asyncio.Task[None] | None = None
        self._unsub: Callable[[], None] | None = None

    def set_routing(self, routing: Routing) -> None:
        """Policies and probes (a reload that keeps the clusters); call ``republish``
        after it."""
        self.defaults, self.overrides, self.probe = routing.defaults, routing.overrides, routing.probe
        self.probes, self.concurrency = routing.probes, routing.concurrency
        if self.prober is not None:
            self.prober.set_concurrency(routing.concurrency)

    def republish(self) -> None:
        """Plan every service again and publish all of it (into a new table)."""
        keys = self.registry.keys()
        # The plans stay: they are the endpoints' health history (see _stamps).
        for key in self.plans.keys() - keys:
            del self.plans[key]
        self.on_change(keys, everything=True)

    async def start(self) -> None:
        self._unsub = self.registry.subscribe(self.on_change)
        self.prober = Prober(self._on_probe_flip, self.concurrency)
        self._task = asyncio.create_task(self.registry.run(build_sources(self.fed)), name="fedns-registry")

    async def stop(self) -> None:
        if self._unsub is not None:
            self._unsub()
        for _, handle in self._settle.values():
            handle.cancel()
        self._settle.clear()
        if self._flip_handle is not None:
            self._flip_handle.cancel()
            self._flip_handle = None
        if self.prober is not None:
            await self.prober.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.registry.close()

    def plan(self, key: ServiceKey) -> ServicePlan | None:
        snap = self.registry.snapshot(key)
        prober = self.prober
        if snap is None:
            self._answers.pop(key, None)
            settle = self._settle.pop(key, None)
            if settle is not None:
                settle[1].cancel()
            if prober is not None:
                prober.assign(key, frozenset())
            return None
        name = f"{key.namespace}/{key.name}".lower()
        override = self.overrides.get(name)
        choice, problem = choose_probe(merged_annotations(snap), name, self.probes, self.probe)
        spec = choice.spec
        wanted: set[Target] = set()
        health = None
        if spec is not None:
            ports = [p.port for cs in snap.per_cluster for p in cs.ports]
            port = spec.port if spec.port is not None else (ports[0] if ports else None)
            if port is not None:
                resolved = target("", spec, port).spec  # the port filled in, once per plan

                def health(_cluster: str, address: str) -> ProbeView | None:
                    t = Target(address, resolved)
                    wanted.add(t)
                    return prober.state(t).view() if prober is not None else None

        now = time.time()
        stamp = self._stamps(self.plans.get(key), now)
        plan = plan_from_snapshot(
            self.fed.zone, snap, self.defaults, override, health, choice, stamp
        )
        if prober is not None:
            prober.assign(key, frozenset(wanted))
        if problem:
            plan = replace(plan, problems=(*plan.problems, problem))
        return self._stability(key, plan, now)

    @staticmethod
    def _stamps(old: ServicePlan | None, now: float) -> Stamp:
        """When each endpoint's health inputs (and its effective health) last changed,
        as this instance saw it (for explain): from the service's last plan, whose
        candidates carry them (a history of its own cost ~190 bytes per endpoint)."""
        first = (now, now, now)
        if old is None or not old.candidates:
            return lambda _cl, _name, _healthy, _cond, _stale: first
        prev = {(c.cluster, c.name): c for c in old.candidates}

        def stamp(cluster: str, name: str, healthy: bool, cond: str, stale: bool) -> Stamps:
            p = prev.get((cluster, name))
            if p is None:
                return first
            same = (p.healthy == healthy, p.condition == cond, p.stale == stale)
            if all(same):
                return p.stamps  # the tuple itself: shared, not one more per endpoint
            t = p.stamps
            return (t[0] if same[0] else now, t[1] if same[1] else now, t[2] if same[2] else now)

        return stamp

    def _stability(self, key: ServiceKey, plan: ServicePlan, now: float) -> ServicePlan:
        """Health-aware TTL: a service whose answer set changed within the last
        ``flap_window`` is served with ``ttl_unstable`` until the window ends (a timer
        plans it again then). The first endpoints a new service gets are not a change."""
        pol = plan.policy
        healthy = [c for c in plan.candidates if c.healthy]
        shown = healthy or (list(plan.candidates) if pol.fail_open else [])
        # Its hash stands for the set: one int kept per service, not a set of tuples.
        answer = hash(frozenset((c.cluster, c.name, c.v4, c.v6) for c in shown))
        prev = self._answers.get(key)
        changed = 0.0
        if prev is not None:
            old, changed, had = prev
            if answer != old and had:
                changed = now
        self._answers[key] = (answer, changed, bool(plan.candidates))
        if not changed:
            return plan
        until = changed + pol.flap_window
        if until <= now:
            return replace(plan, changed=changed)
        armed = self._settle.get(key)
        if armed is None or armed[0] != until:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # planned without a loop (fedns diff): nothing to end
                pass
            else:
                if armed is not None:
                    armed[1].cancel()
                # A little after the window, so the plan made then is past it.
                handle = loop.call_later(until - now + 0.01, self._settled, key)
                self._settle[key] = (until, handle)
        return replace(plan, changed=changed, unstable_until=until)

    def _settled(self, key: ServiceKey) -> None:
        self._settle.pop(key, None)
        self.on_change(frozenset({key}))

    def _on_probe_flip(self, owners: set[Hashable]) -> None:
        """Plan the flipped target's services again, once per loop iteration however
        many targets flipped in it."""
        self._flipped.update(k for k in owners if isinstance(k, ServiceKey))
        if self._flip_handle is None:
            self._flip_handle = asyncio.get_running_loop().call_soon(self._replan_flipped)

    def _replan_flipped(self) -> None:
        self._flip_handle = None
        keys = frozenset(self._flipped)
        self._flipped.clear()
        if keys:
            self.on_change(keys)

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

    def on_change(self, keys: frozenset[ServiceKey], everything: bool = False) -> None:
        """Plan ``keys`` again and publish the plans that changed (``everything``: all)."""
        if self.holding:
            self._held.update(keys)
            return
        # Plans and the table they publish are made by the million at the first
        # publish, none of it cyclic garbage; the collector's passes over them and
        # over everything the registry holds were a fifth of that publish's CPU at
        # 200,000 endpoints (benchmarks/scale.py).
        collecting = gc.isenabled()
        gc.disable()
        try:
            self._replan(keys, everything)
        finally:
            if collecting:
                gc.enable()

    def _replan(self, keys: frozenset[ServiceKey], everything: bool) -> None:
        plans: list[ServicePlan] = []
        removed: list[PlanId] = []
        for key in keys:
            plan = self.plan(key)
            old = self.plans.get(key)
            if plan is None:
                self._endpoints.pop(key, None)
                if old is not None:
                    removed.append(old.ident)
                    del self.plans[key]
                continue
            if plan == old and not everything:
                continue
            for problem in plan.problems:
                if old is None or everything or problem not in old.problems:
                    log.warning("annotation_ignored", service=str(key), problem=problem)
            self.plans[key] = plan
            plans.append(plan)
            counts: dict[str, list[int]] = {}
            for c in plan.candidates:
                counts.setdefault(c.cluster, [0, 0])[0 if c.healthy else 1] += 1
            self._endpoints[key] = counts
        if plans or removed:
            self.publish(PlanUpdate(tuple(plans), tuple(removed)))

    # -- views for the admin API --------------------------------------------------

    def probe_stats(self) -> dict[str, Any]:
        """Probe and endpoint counters for ``/metrics``: results by outcome, the latency
        histogram (cumulative ``[le, count]`` buckets, the last ``+Inf``), targets
        probed, health flips by direction, and each cluster's healthy and unhealthy
        service endpoints (effective health, as published)."""
        out = self.prober.stats() if self.prober is not None else Prober.empty_stats()
        endpoints = {c.name: {"healthy": 0, "unhealthy": 0} for c in self.fed.clusters}
        for counts in self._endpoints.values():
            for cluster, (up, down) in counts.items():
                e = endpoints.setdefault(cluster, {"healthy": 0, "unhealthy": 0})
                e["healthy"] += up
                e["unhealthy"] += down
        out["endpoints"] = endpoints
        return out

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
                    "ttl_served": p.ttl,
                    "probe": p.probe.describe(),
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
