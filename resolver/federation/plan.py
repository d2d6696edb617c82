"""The plan of one federated service: what the control process decides and sends on.

The control side turns each registry snapshot into a ``ServicePlan``: plain,
frozen, picklable data (the only thing that goes from the control process to
the serving workers). ``router.py`` turns a plan into zone records and the
per-client ``Router`` objects in whichever process serves.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..config import NO_FILE, ConfigError
from .model import FederatedService
from .policy import Candidate, Policy, policy_fields, with_fields

_LABEL_OK = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")

# (zone, namespace, name): a plan's identity, what a removal names.
PlanId = tuple[str, str, str]

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
    def ident(self) -> PlanId:
        return (self.zone, self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class PlanUpdate:
    """What the control process publishes at a registry change: changed and removed plans."""

    plans: tuple[ServicePlan, ...]
    removed: tuple[PlanId, ...] = ()


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
            policy = with_fields(policy, policy_fields({field_name: v}, "annotation", NO_FILE))
        except ConfigError as e:
            problems.append(f"{k}={v!r} ignored: {str(e).removeprefix('annotation.')}")
    return policy, tuple(problems)


def plan_from_snapshot(
    zone: str,
    fs: FederatedService,
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

