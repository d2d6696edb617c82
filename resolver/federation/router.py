"""A plan in a serving process: its zone records, its ``Router``s, and the publisher.

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

Each serving process turns a ``ServicePlan`` into zone records (so
NXDOMAIN/NODATA/ENT semantics stay the zone's) and ``Router`` objects (the
answer table's ``Router`` protocol) that place the client, pick its answer and
cache the wire bytes per (type, locality bucket). ``Publisher`` applies plans
to one answer table; ``explain`` calls the same ``Router`` code the hot path does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from dnslib import SRV, DNSLabel

from ..dns.answers import Table
from ..dns.ecs import MAX_SOURCE, PRIVACY_PREFIX, ClientSubnet
from ..dns.entries import Entry
from ..dns.wire import T_A, T_AAAA, T_SRV
from ..dns.zone import Addresses, Lazy, RRset, key_of
from .locality import Locality, Locator, Placement, ScopeTable
from .plan import PlanId, PlanPort, PlanUpdate, ServicePlan
from .policy import Candidate, Client, Decision, decide

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
    # Targets are <endpoint>.<cluster>.<base>: the cluster's and the base's labels
    # encoded once, not the whole name by DNSLabel's IDNA codec per endpoint (a
    # service's SRV set lists every endpoint: 1,000 of them across 50 clusters).
    base = DNSLabel(plan.base).label
    suffixes: dict[str, tuple[bytes, ...]] = {}
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
            suffix = suffixes.get(c.cluster)
            if suffix is None:
                suffix = suffixes[c.cluster] = DNSLabel(c.cluster).label + base
            target = srv_target(c.name, c.cluster, plan.base, suffix)
            records.append(SRV(priority=prio * 10, weight=share, port=port.port, target=target))
    if not records:
        return None
    return RRset(DNSLabel(owner), T_SRV, plan.ttl, tuple(records))


def srv_target(name: str, cluster: str, base: str, suffix: tuple[bytes, ...]) -> DNSLabel:
    """``DNSLabel(f"{name}.{cluster}.{base}")``, given ``suffix``, the labels DNSLabel
    makes of ``cluster`` and ``base``: a plain ASCII label is its own IDNA form."""
    if name.isascii() and 0 < len(name) < 64 and "." not in name and "\\" not in name:
        return DNSLabel((name.encode(), *suffix))
    return DNSLabel(f"{name}.{cluster}.{base}")


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
    ttl = plan.ttl  # the unstable TTL inside a flap window
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
        for c in members:  # one per endpoint: two million at a first publish
            out[key_of(c.name)[:-1] + ckey] = Addresses(ttl, c.v4, c.v6) if c.healthy else _NONE
    for p in plan.ports:
        out[key_of(srv_owner(plan, p))] = _Srv(plan, p)
    return out


# -- per-client answers ---------------------------------------------------------


Build = Callable[[RRset | None, int], Entry]


class Router:
    """Answers a location-dependent name for one client; caches by bucket.

    ``build(resolution_records, qtype)`` is supplied by the answer table: it
    turns the chosen RRset into an Entry (wire bytes), so this module stays free
    of wire concerns.
    """

    __slots__ = (
        "_cache",
        "_family",
        "_per_subnet",
        "_scopes",
        "build",
        "kind",
        "locator",
        "lpm",
        "memo",
        "plan",
        "port",
    )

    def __init__(
        self,
        plan: ServicePlan,
        kind: str,  # "service" or "srv"
        locator: Locator,
        build: Build,
        port: PlanPort | None = None,
    ) -> None:
        self.plan = plan
        self.kind = kind
        self.port = port
        self.locator = locator
        self.build = build
        self._cache: dict[tuple[int, object], tuple[Entry, str]] = {}
        self._scopes: dict[int, ScopeTable] = {}
        self._family: dict[int, tuple[Candidate, ...]] = {}
        # Weighted answers hash the client's /24 (/56) itself (rendezvous over
        # blake2b, for stickiness): there are as many answers as subnets, so no
        # bucket coarser than the subnet holds one answer (``lpm_for``).
        self._per_subnet = plan.policy.kind == "weighted"
        # For the answer table's hot path: whole per-query results (Entry, OPT
        # bytes) keyed by what the client's place came from, so a repeated
        # client costs one lookup. Holds only what ``answer``/``scope`` give.
        self.memo: dict[object, Any] = {}
        # For the hot path too: per (type << 2 | ECS family), ``lpm_for``'s result.
        self.lpm: dict[int, tuple[Any, ...]] = {}

    def route(self, qtype: int, subnet: ClientSubnet | None, addr: Any) -> tuple[Entry, int, bool]:
        """The answer table's call (``entries.Router``): place the client, answer,
        and the reply's ECS SCOPE; and whether the placement used ``subnet`` alone."""
        client, placement = self.locator.client(subnet, addr)
        e, depends = self.answer(qtype, client)
        scope = self.scope(subnet, placement, depends, qtype)
        free = subnet is not None and Locator.source_free(subnet, placement)
        return e, scope, free

    def lpm_for(self, qtype: int, family: int) -> tuple[Any, ...]:
        """The answer table's call (``entries.Router``), once per type and family: how
        to find the bucket of an ECS subnet, in ``lpm`` from then on.

        Locality and failover answers depend on the client's locality only, and
        their SCOPE on its partition block (``ScopeTable``): (locality, SCOPE) is
        the bucket (``LocalityMap.lpm``), a few whatever the number of rules.
        Without a locality map no client is placed: one bucket. Weighted answers
        hash the subnet itself: none, so they keep the per-subnet memo.
        """
        out: tuple[Any, ...] = ()
        if not self._per_subnet:
            lm = self.locator.localities
            if lm is None:
                out = ([0], [0, 1], MAX_SOURCE[family], [0])
            else:
                out = lm.lpm(self._scopes.get(qtype) or self._scope_table(qtype), family)
        self.lpm[(qtype << 2) | family] = out
        return out

    def scope(
        self, subnet: ClientSubnet | None, placement: Placement | None, depends: str, qtype: int
    ) -> int:
        """The ECS SCOPE of this name's answer for a client (0 without ECS).

        Per subnet (weighted): the bits the hash used. Per locality: the widest
        block around the client over which *this service's answer* is the same
        (``LocalityMap.scope_table``), so a service that answers every region
        alike gets SCOPE 0 and resolvers cache it once. Without a locality map,
        a weighted answer holds for the subnet as far as the privacy clamp.
        """
        if subnet is None or depends == "nothing":
            return 0
        localities = self.locator.localities
        if placement is None or localities is None:
            return min(subnet.source, PRIVACY_PREFIX[subnet.family]) if depends == "subnet" else 0
        if depends == "subnet":
            return int(placement.subnet_scope)
        table = self._scopes.get(qtype) or self._scope_table(qtype)
        return int(table.scope(placement))

    def _scope_table(self, qtype: int) -> ScopeTable:
        localities = self.locator.localities
        assert localities is not None
        table = self._scopes[qtype] = localities.scope_table(
            lambda loc: self._answer_key(loc, qtype)
        )
        return table

    def _answer_key(self, loc: Locality, qtype: int) -> object:
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
        return decide(self.plan.policy, cands, client, self.locator.region_order)

    def answer(self, qtype: int, client: Client) -> tuple[Entry, str]:
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
            chosen = _addresses(d.chosen, self.plan.ttl)
            rrset = None if d.empty else chosen.rrsets(key_of(owner)).get(qtype)
        result = (self.build(rrset, qtype), d.depends_on)
        if len(self._cache) > 4096:  # subnet buckets are unbounded; keep memory flat
            self._cache.clear()
        self._cache[key] = result
        return result


def routers_for(plan: ServicePlan, locator: Locator, build_for: Callable[[str], Build]) -> dict[bytes, Router]:
    out = {key_of(plan.base): Router(plan, "service", locator, build_for(plan.base))}
    for p in plan.ports:
        owner = srv_owner(plan, p)
        out[key_of(owner)] = Router(plan, "srv", locator, build_for(owner), p)
    return out


class Publisher:
    """Applies plans to one answer table: the names each plan has, and their routers."""

    def __init__(self, table: Table, locator: Locator) -> None:
        self.table = table
        self.locator = locator
        # Each plan's names, as a tuple: a set per plan costs ~8x the memory.
        self.names: dict[PlanId, tuple[bytes, ...]] = {}

    def apply(self, update: PlanUpdate) -> int:
        """Publish changed plans and drop removed ones. Returns the names rebuilt."""
        plans, removed = update.plans, update.removed
        zones: dict[bytes, tuple[set[bytes], dict[bytes, Lazy]]] = {}
        routers: dict[bytes, Router] = {}
        for ident in removed:
            gone, _ = zones.setdefault(key_of(ident[0]), (set(), {}))
            gone.update(self.names.pop(ident, ()))
        for plan in plans:
            okey = key_of(plan.zone)
            if okey not in self.table.zones:
                continue
            gone, records = zones.setdefault(okey, (set(), {}))
            mine = static_records(plan)
            gone.update(k for k in self.names.get(plan.ident, ()) if k not in mine)
            records.update(mine)
            routers.update(routers_for(plan, self.locator, self.table.builder))
            self.names[plan.ident] = tuple(mine)
        return self.table.publish(zones, routers)
