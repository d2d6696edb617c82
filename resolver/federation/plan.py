"""The plan of one federated service: what the control process decides and sends on.

The control side turns each registry snapshot into a ``ServicePlan``: plain,
frozen, picklable data (the only thing that goes from the control process to
the serving workers). ``router.py`` turns a plan into zone records and the
per-client ``Router`` objects in whichever process serves.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..config import NO_FILE, ConfigError
from .health import ProbeSpec, parse_probe
from .model import FederatedService, ip_text
from .policy import Candidate, Policy, ProbeView, Stamps, policy_fields, with_fields

_LABEL_OK = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
PROBE_ANNOTATION = "fedns.io/probe"  # read by choose_probe, not as a policy key

# (zone, namespace, name): a plan's identity, what a removal names.
PlanId = tuple[str, str, str]

@dataclass(frozen=True, slots=True)
class PlanPort:
    name: str
    port: int
    protocol: str  # "tcp" / "udp" / "sctp", lowercase as in SRV labels


@dataclass(frozen=True, slots=True)
class ProbeChoice:
    """Which probe a service has, and where it came from, for explain.

    ``source``: ``annotation`` (the Service's ``fedns.io/probe``), ``policies`` (its
    ``federation.policies`` entry), ``health`` (``federation.health``), or ``""``
    when none of them gives one. ``spec`` None: not probed (``probe: none`` at that
    level, or nothing configured)."""

    spec: ProbeSpec | None
    source: str
    key: str  # the annotation or config key it was read from

    def describe(self) -> dict[str, object]:
        return {
            "source": self.source or "none",
            "key": self.key,
            "settings": self.spec.describe() if self.spec is not None else None,
        }


NO_PROBE = ProbeChoice(None, "", "")


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
    probe: ProbeChoice = NO_PROBE
    # Health-aware TTL (set by the control side): when the answer set last changed
    # (unix time; 0: not since this instance first saw the service), and until when
    # the service is unstable (0: stable), served with ``policy.unstable_ttl``.
    changed: float = 0.0
    unstable_until: float = 0.0

    @property
    def ttl(self) -> int:
        """The TTL served now: the unstable one inside the flap window, else the policy's."""
        return self.policy.unstable_ttl if self.unstable_until else self.policy.ttl

    @property
    def base(self) -> str:
        return f"{self.name}.{self.namespace}.{self.zone}"

    @property
    def ident(self) -> PlanId:
        return (self.zone, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class PlanUpdate:
    """What the control process publishes at a registry change: changed and removed plans."""

    plans: tuple[ServicePlan, ...]
    removed: tuple[PlanId, ...] = ()


def endpoint_label(hostname: str | None, addresses: Sequence[str]) -> str:
    """The DNS label of one endpoint: its hostname, else its first address with dashes."""
    if hostname:
        low = hostname.lower()
        if _LABEL_OK.match(low):
            return hostname if low == hostname else low  # the registry's string, not a copy
    if not addresses:
        return "endpoint"
    a = addresses[0]
    if ":" not in a:  # IPv4: digits and dots, nothing to lower-case
        return a.replace(".", "-")
    return a.replace(".", "-").replace(":", "-").lower()


def split_families(addresses: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The canonical IPv4 and IPv6 addresses, in order; what is not an address is left out.

    When that is ``addresses`` itself (a tuple of canonical addresses of one family:
    nearly every endpoint), that very tuple is returned, so an endpoint's addresses
    are one tuple and one string each however many plans and names hold them."""
    if len(addresses) == 1 and isinstance(addresses, tuple):  # nearly every endpoint
        t = ip_text(addresses[0])
        if t is not None and t[0] is addresses[0]:
            return (addresses, ()) if t[1] == 4 else ((), addresses)
    v4: list[str] = []
    v6: list[str] = []
    same = True  # every address kept as the same object, in order
    for a in addresses:
        t = ip_text(a)
        if t is None:
            same = False
            continue
        same = same and t[0] is a
        (v4 if t[1] == 4 else v6).append(t[0])
    if same and isinstance(addresses, tuple):
        if not v6:
            return addresses, ()
        if not v4:
            return (), addresses
    return tuple(v4), tuple(v6)



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
        if not k.startswith("fedns.io/") or k == PROBE_ANNOTATION:
            continue
        field_name = k.removeprefix("fedns.io/").replace("-", "_")
        try:
            policy = with_fields(policy, policy_fields({field_name: v}, "annotation", NO_FILE))
        except ConfigError as e:
            problems.append(f"{k}={v!r} ignored: {str(e).removeprefix('annotation.')}")
    return policy, tuple(problems)


def merged_annotations(fs: FederatedService) -> dict[str, str]:
    """A service's ``fedns.io/`` annotations over its clusters: a later cluster (in
    ``federation.clusters`` order) overrides an earlier one's value for a key."""
    out: dict[str, str] = {}
    for cs in fs.per_cluster:
        out.update(cs.annotations)
    return out


def choose_probe(
    annotations: Mapping[str, str],
    service: str,
    configured: Mapping[str, ProbeSpec | None],
    default: ProbeSpec | None,
) -> tuple[ProbeChoice, str]:
    """The probe of ``service`` (``namespace/name``), by precedence: the
    ``fedns.io/probe`` annotation, then its ``federation.policies`` entry's ``probe``
    (``configured``: the entries that give one; None there is ``probe: none``),
    then ``federation.health`` (``default``).

    Returns the choice and a problem ("" when none): a bad annotation is ignored
    (the next level applies) and reported, never raised."""
    problem = ""
    raw = annotations.get(PROBE_ANNOTATION)
    if raw is not None:
        try:
            spec = parse_probe(raw, "annotation", NO_FILE)
            return ProbeChoice(spec, "annotation", PROBE_ANNOTATION), ""
        except ConfigError as e:
            why = str(e).removeprefix("annotation.").removeprefix("annotation: ")
            problem = f"{PROBE_ANNOTATION}={raw!r} ignored: {why}"
    if service in configured:
        where = f"federation.policies.{service}.probe"
        return ProbeChoice(configured[service], "policies", where), problem
    if default is not None:
        return ProbeChoice(default, "health", "federation.health"), problem
    return NO_PROBE, problem


Health = Callable[[str, str], ProbeView | tuple[bool, str, float] | None]
# (cluster, endpoint label, healthy, condition, stale) -> when the effective health,
# the condition and the staleness last changed: (since, ready_since, stale_since).
Stamp = Callable[[str, str, bool, str, bool], Stamps]


def plan_from_snapshot(
    zone: str,
    fs: FederatedService,
    defaults: Policy,
    override: Mapping[str, Any] | None = None,
    health: Health | None = None,
    probe: ProbeChoice = NO_PROBE,
    stamp: Stamp | None = None,
) -> ServicePlan:
    """A ``ServicePlan`` from a registry ``FederatedService`` snapshot.

    ``health(cluster, address)`` may overrule readiness with an active probe
    result: a ``ProbeView`` (or ``(healthy, reason, since)``), or None when the
    endpoint is not probed. ``probe``: which probe that is, for explain.
    ``stamp``: when each candidate's health inputs last changed (see ``Stamp``);
    without it ``since`` is the probe's and the other two are unknown (0).
    """
    annotations: dict[str, str] = {}
    ports: dict[tuple[str, str], PlanPort] = {}
    cands: list[Candidate] = []
    clusters: list[str] = []
    # One string per distinct health reason, not one per endpoint (a probe's
    # reason is formatted for each endpoint it covers).
    reasons: dict[str, str] = {}
    for cs in fs.per_cluster:
        cl = cs.cluster
        clusters.append(cl.name)
        annotations.update(cs.annotations)
        for p in cs.ports:
            if p.name and _LABEL_OK.match(p.name.lower()):
                proto = p.protocol.lower()
                ports.setdefault((p.name.lower(), proto), PlanPort(p.name.lower(), p.port, proto))
        # The same for every endpoint of the cluster: read once (a million endpoints
        # are planned at the first publish, and each lookup here costs per endpoint).
        name, region, czone, weight, stale = cl.name, cl.region, cl.zone, cl.weight, cs.stale
        add = cands.append
        for ep in cs.endpoints:
            v4, v6 = split_families(ep.addresses)
            if not v4 and not v6:
                continue
            healthy = ep.ready
            condition = "ready" if healthy else ("terminating" if ep.terminating else "not ready")
            reason = condition
            since = 0.0
            view: ProbeView | None = None
            if health is not None:
                result = health(name, v4[0] if v4 else v6[0])
                if isinstance(result, tuple):
                    result = ProbeView(result[0], result[2], result[1])
                view = result
                if view is not None and healthy:
                    healthy, since = view.up, view.since
                    reason = f"ready; probe {'up' if healthy else 'down'}: {view.reason}"
            if stale:
                reason += " (cluster stale: last-known data)"
            if reason is not condition:
                reason = reasons.setdefault(reason, reason)
            label = endpoint_label(ep.hostname, v4 + v6 if v6 else v4)
            # Positional: a million are made at the first publish.
            add(
                Candidate(
                    name, region, ep.zone or czone, label, v4, v6, healthy, reason, weight,
                    since, condition, 0.0, view, stale, 0.0,
                    None if stamp is None else stamp(name, label, healthy, condition, stale),
                )
            )
    policy, problems = policy_from(defaults, annotations, override)
    return ServicePlan(
        zone=zone,
        namespace=fs.key.namespace.lower(),
        name=fs.key.name.lower(),
        policy=policy,
        ports=tuple(ports.values()),
        candidates=tuple(_unique_names(cands, stamp)),
        clusters=tuple(clusters),
        problems=problems,
        probe=probe,
    )


def _unique_names(cands: list[Candidate], stamp: Stamp | None = None) -> list[Candidate]:
    """Two endpoints of one cluster must not share a DNS label (e.g. equal hostnames)."""
    seen: set[tuple[str, str]] = set()
    out = []
    for c in cands:
        if (c.cluster, c.name) in seen:
            name = endpoint_label(None, c.v4 + c.v6)
            if stamp is None:
                c = replace(c, name=name)
            else:  # its history is the renamed endpoint's
                c = replace(c, name=name, _stamps=stamp(c.cluster, name, c.healthy, c.condition, c.stale))
        if (c.cluster, c.name) in seen:
            continue
        seen.add((c.cluster, c.name))
        out.append(c)
    return out

