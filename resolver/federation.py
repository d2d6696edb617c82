"""Federated names: from registry snapshots to DNS records and per-client answers.

For a service ``<svc>`` in namespace ``<ns>`` under federation zone ``Z``:

=====================================  ==========================================
``<svc>.<ns>.Z``                       A/AAAA: the best healthy endpoints for the
                                       asking client (policy, locality, health)
``<cluster>.<svc>.<ns>.Z``             A/AAAA: that cluster's healthy endpoints
``<host>.<cluster>.<svc>.<ns>.Z``      A/AAAA: one named endpoint (hostname, or
                                       its address with dashes)
``_<port>._<proto>.<svc>.<ns>.Z``      SRV: tiers as priority, weights as weight,
                                       targets ``<host>.<cluster>.<svc>.<ns>.Z``
=====================================  ==========================================

The control side turns each registry snapshot into a ``ServicePlan`` (plain,
picklable data: it is what goes to the serving workers). Each worker turns a
plan into zone records (so NXDOMAIN/NODATA/ENT semantics stay the zone's) and
``Router`` objects that pick the per-client answer and cache its wire bytes
per (type, locality bucket).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dnslib import SRV, DNSLabel

from .policy import Candidate, Client, Decision, Policy, decide, policy_fields, with_fields
from .wire import T_A, T_AAAA, T_SRV
from .zone import Addresses, Lazy, RRset, key_of

_LABEL_OK = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")


@dataclass(frozen=True, slots=True)
class PlanPort:
    name: str
    port: int
    protocol: str  # "tcp" / "udp" / "sctp", lowercase as in SRV labels


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """All a worker needs to answer for one federated service."""

    zone: str  # federation zone origin, absolute
    namespace: str
    name: str
    policy: Policy
    ports: tuple[PlanPort, ...]
    candidates: tuple[Candidate, ...]
    clusters: tuple[str, ...]
    problems: tuple[str, ...] = ()  # annotation values that were ignored, for explain/logs

    @property
    def base(self) -> str:
        return f"{self.name}.{self.namespace}.{self.zone}"

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.zone, self.namespace, self.name)


def endpoint_label(hostname: str | None, addresses: Sequence[str]) -> str:
    """The DNS label of one endpoint: its hostname, else its first address with dashes."""
    if hostname and _LABEL_OK.match(hostname.lower()):
        return hostname.lower()
    if not addresses:
        return "endpoint"
    return addresses[0].replace(".", "-").replace(":", "-").lower()


def split_families(addresses: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    v4: list[str] = []
    v6: list[str] = []
    for a in addresses:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        (v4 if ip.version == 4 else v6).append(str(ip))
    return tuple(v4), tuple(v6)


# -- records ------------------------------------------------------------------




def _srv_rrset(owner: str, plan: ServicePlan, port: PlanPort, decision: Decision) -> RRset | None:
    """SRV with the decision's tiers as priorities (chosen tier first) and weights."""
    records = []
    chosen = {(c.cluster, c.name) for c in decision.chosen}
    tiers: list[Sequence[Candidate]] = [decision.chosen] + [
        [c for c in t if (c.cluster, c.name) not in chosen and c.healthy] for t in decision.tiers
    ]
    seen: set[tuple[str, str]] = set()
    prio = 0
    for tier in tiers:
        members = [c for c in tier if (c.cluster, c.name) not in seen]
        if not members:
            continue
        prio += 1
        # Weights are per cluster: a cluster's share is split among its endpoints
        # in the tier, so a cluster with more pods does not get more traffic.
        cluster_weight = {m.cluster: m.weight for m in members}
        total = max(1, sum(cluster_weight.values()))
        per_cluster = Counter(m.cluster for m in members)
        for c in members:
            seen.add((c.cluster, c.name))
            share = max(1, round(c.weight * 100 / total / per_cluster[c.cluster]))
            target = DNSLabel(f"{c.name}.{c.cluster}.{plan.base}")
            records.append(SRV(priority=prio * 10, weight=share, port=port.port, target=target))
    if not records:
        return None
    return RRset(DNSLabel(owner), T_SRV, plan.policy.ttl, tuple(records))


def srv_owner(plan: ServicePlan, port: PlanPort) -> str:
    return f"_{port.name}._{port.protocol}.{plan.base}"


_NONE = Addresses(0, (), ())


def _addresses(cands: Sequence[Candidate], ttl: int) -> Addresses:
    if len(cands) == 1:
        return Addresses(ttl, cands[0].v4, cands[0].v6)
    v4 = tuple(dict.fromkeys(a for c in cands for a in c.v4))
    v6 = tuple(dict.fromkeys(a for c in cands for a in c.v6))
    return Addresses(ttl, v4, v6) if v4 or v6 else _NONE


@dataclass(frozen=True, slots=True)
class _Srv(Lazy):
    """A service port's SRV name: every healthy endpoint (all when none is), one tier."""

    plan: ServicePlan
    port: PlanPort

    def exists(self) -> bool:
        return bool(self.plan.candidates)

    def rrsets(self, key: bytes) -> dict[int, RRset]:
        plan = self.plan
        healthy = tuple(c for c in plan.candidates if c.healthy) or plan.candidates
        everyone = Decision((plan.candidates,), healthy, (), "nothing")
        rs = _srv_rrset(srv_owner(plan, self.port), plan, self.port, everyone)
        return {T_SRV: rs} if rs is not None else {}


def static_records(plan: ServicePlan) -> dict[bytes, Lazy]:
    """The plan's names with location-independent records.

    Location-dependent names carry here the records of every healthy endpoint
    (all of them when none is healthy): that is what ANY, CNAME chains into the
    name and the zone's NODATA logic see; the Router replaces A/AAAA/SRV per client.
    All are ``Lazy`` (compact until asked for; without records the name does not exist).
    """
    ttl = plan.policy.ttl
    out: dict[bytes, Lazy] = {}
    healthy = [c for c in plan.candidates if c.healthy] or list(plan.candidates)
    out[key_of(plan.base)] = _addresses(healthy, ttl)
    members_of: dict[str, list[Candidate]] = {cl: [] for cl in plan.clusters}
    for c in plan.candidates:
        members_of.setdefault(c.cluster, []).append(c)
    suffix = key_of(plan.base)
    for cluster in plan.clusters:
        members = members_of[cluster]
        ckey = key_of(cluster)[:-1] + suffix
        ok = [c for c in members if c.healthy] or (members if plan.policy.fail_open else [])
        out[ckey] = _addresses(ok, ttl)
        for c in members:
            out[key_of(c.name)[:-1] + ckey] = _addresses([c], ttl) if c.healthy else _NONE
    for p in plan.ports:
        out[key_of(srv_owner(plan, p))] = _Srv(plan, p)
    return out


# -- per-client answers ---------------------------------------------------------


RegionOrder = Callable[[str | None], Sequence[str]]


class Router:
    """Answers a location-dependent name for one client; caches by bucket.

    ``build(resolution_records, qtype)`` is supplied by the answer table: it
    turns the chosen RRset into an Entry (wire bytes), so this module stays free
    of wire concerns.
    """

    __slots__ = (
        "_cache",
        "_family",
        "_scopes",
        "build",
        "kind",
        "memo",
        "plan",
        "port",
        "region_order",
    )

    def __init__(
        self,
        plan: ServicePlan,
        kind: str,  # "service" or "srv"
        region_order: RegionOrder,
        build: Callable[[RRset | None, int], Any],
        port: PlanPort | None = None,
    ) -> None:
        self.plan = plan
        self.kind = kind
        self.port = port
        self.region_order = region_order
        self.build = build
        self._cache: dict[tuple[int, object], tuple[Any, str]] = {}
        self._scopes: dict[int, Any] = {}
        self._family: dict[int, tuple[Candidate, ...]] = {}
        # For the answer table's hot path: whole per-query results (Entry, OPT
        # bytes) keyed by what the client's place came from, so a repeated
        # client costs one lookup. Holds only what ``answer``/``scope`` give.
        self.memo: dict[object, Any] = {}

    def scope(self, placement: Any, depends: str, localities: Any, qtype: int = 0) -> int:
        """The ECS SCOPE of this name's answer for ``placement``.

        Per subnet (weighted): the bits the hash used. Per locality: the widest
        block around the client over which *this service's answer* is the same
        (``LocalityMap.scope_table``), so a service that answers every region
        alike gets SCOPE 0 and resolvers cache it once.
        """
        if depends == "subnet":
            return int(placement.subnet_scope)
        table = self._scopes.get(qtype)
        if table is None:
            table = self._scopes[qtype] = localities.scope_table(
                lambda loc: self._answer_key(loc, qtype)
            )
        return int(table.scope(placement))

    def _answer_key(self, loc: Any, qtype: int) -> object:
        d = self.decision(Client(loc.region, loc.zone, b""), qtype)
        return tuple(sorted((c.cluster, c.name) for c in d.chosen))

    def handles(self, qtype: int) -> bool:
        return qtype == T_SRV if self.kind == "srv" else qtype in (T_A, T_AAAA)

    def bucket(self, client: Client) -> object:
        pol = self.plan.policy
        if pol.kind == "locality":
            return (client.region, client.zone)
        if pol.kind == "weighted":
            return client.subnet
        return None

    def decision(self, client: Client, qtype: int = 0) -> Decision:
        """The policy's choice; for A/AAAA among the endpoints with an address of
        that family, so a single-stack tier does not hide the other family's
        nearest endpoints (an A query would get NODATA from an IPv6-only zone)."""
        cands = self.plan.candidates
        if qtype in (T_A, T_AAAA):
            fam = self._family.get(qtype)
            if fam is None:
                fam = self._family[qtype] = tuple(
                    c for c in cands if (c.v4 if qtype == T_A else c.v6)
                )
            cands = fam
        return decide(self.plan.policy, cands, client, self.region_order)

    def answer(self, qtype: int, client: Client) -> tuple[Any, str]:
        """(Entry, what it depends on: "nothing" | "locality" | "subnet")."""
        key = (qtype, self.bucket(client))
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        d = self.decision(client, qtype)
        owner = self.plan.base
        if self.kind == "srv":
            assert self.port is not None
            owner = srv_owner(self.plan, self.port)
            rrset = None if d.empty else _srv_rrset(owner, self.plan, self.port, d)
        else:
            chosen = _addresses(d.chosen, self.plan.policy.ttl)
            rrset = None if d.empty else chosen.rrsets(key_of(owner)).get(qtype)
        result = (self.build(rrset, qtype), d.depends_on)
        if len(self._cache) > 4096:  # subnet buckets are unbounded; keep memory flat
            self._cache.clear()
        self._cache[key] = result
        return result


def routers_for(
    plan: ServicePlan,
    region_order: RegionOrder,
    build_for: Callable[[str], Callable[[RRset | None, int], Any]],
) -> dict[bytes, Router]:
    out = {key_of(plan.base): Router(plan, "service", region_order, build_for(plan.base))}
    for p in plan.ports:
        owner = srv_owner(plan, p)
        out[key_of(owner)] = Router(plan, "srv", region_order, build_for(owner), p)
    return out


# -- from the registry's model ---------------------------------------------------


def policy_from(
    base: Policy, annotations: Mapping[str, str], override: Mapping[str, Any] | None = None
) -> tuple[Policy, tuple[str, ...]]:
    """The effective policy: config defaults, then config per service, then
    ``fedns.io/<key>`` Service annotations. A bad annotation is skipped and
    reported (it is the cluster owner's input, not ours to crash on)."""
    policy = with_fields(base, dict(override or {}))
    problems: list[str] = []
    for k, v in annotations.items():
        if not k.startswith("fedns.io/"):
            continue
        field_name = k.removeprefix("fedns.io/").replace("-", "_")
        try:
            policy = with_fields(policy, policy_fields({field_name: v}, "annotation"))
        except ValueError as e:
            problems.append(f"{k}={v!r} ignored: {str(e).removeprefix('annotation.')}")
    return policy, tuple(problems)


def plan_from_snapshot(
    zone: str,
    fs: Any,
    defaults: Policy,
    override: Mapping[str, Any] | None = None,
    health: Callable[[str, str], tuple[bool, str, float] | None] | None = None,
) -> ServicePlan:
    """A ``ServicePlan`` from a registry ``FederatedService`` snapshot.

    ``health(cluster, address)`` may overrule readiness with an active probe
    result: (healthy, reason, since), or None when the endpoint is not probed.
    """
    annotations: dict[str, str] = {}
    ports: dict[tuple[str, str], PlanPort] = {}
    cands: list[Candidate] = []
    clusters: list[str] = []
    for cs in fs.per_cluster:
        cl = cs.cluster
        clusters.append(cl.name)
        annotations.update(cs.annotations)
        for p in cs.ports:
            if p.name and _LABEL_OK.match(p.name.lower()):
                proto = p.protocol.lower()
                ports.setdefault((p.name.lower(), proto), PlanPort(p.name.lower(), p.port, proto))
        for ep in cs.endpoints:
            v4, v6 = split_families(ep.addresses)
            if not v4 and not v6:
                continue
            healthy = bool(ep.ready)
            reason = "ready" if ep.ready else ("terminating" if ep.terminating else "not ready")
            since = 0.0
            if health is not None:
                probe = health(cl.name, (v4 + v6)[0])
                if probe is not None and healthy:
                    healthy, since = probe[0], probe[2]
                    reason = f"ready; probe {'up' if healthy else 'down'}: {probe[1]}"
            if cs.stale:
                reason += " (cluster stale: last-known data)"
            cands.append(
                Candidate(
                    cluster=cl.name,
                    region=cl.region,
                    zone=ep.zone or cl.zone,
                    name=endpoint_label(ep.hostname, v4 + v6),
                    v4=v4,
                    v6=v6,
                    healthy=healthy,
                    health_reason=reason,
                    weight=cl.weight,
                    since=since,
                )
            )
    policy, problems = policy_from(defaults, annotations, override)
    return ServicePlan(
        zone=zone,
        namespace=fs.key.namespace.lower(),
        name=fs.key.name.lower(),
        policy=policy,
        ports=tuple(ports.values()),
        candidates=tuple(_unique_names(cands)),
        clusters=tuple(clusters),
        problems=problems,
    )


def _unique_names(cands: list[Candidate]) -> list[Candidate]:
    """Two endpoints of one cluster must not share a DNS label (e.g. equal hostnames)."""
    from dataclasses import replace

    seen: set[tuple[str, str]] = set()
    out = []
    for c in cands:
        if (c.cluster, c.name) in seen:
            c = replace(c, name=endpoint_label(None, c.v4 + c.v6))
        if (c.cluster, c.name) in seen:
            continue
        seen.add((c.cluster, c.name))
        out.append(c)
    return out
