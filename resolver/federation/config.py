"""The config's ``federation:`` mapping, validated into frozen dataclasses.

::

    federation:
      zone: global.example.test.
      clusters:
        - {name: east, region: us-east, zone: us-east-1a, kubeconfig: east.kubeconfig,
           context: east, reach: pod, stale_after: 30s, stale_policy: serve, weight: 100}
        - {name: west, region: us-west, zone: us-west-1a}     # no kubeconfig: static
      export: {mode: all | selector | serviceexport, selector: "k=v,...",
               namespaces: {allow: [...], deny: [...]}}
      services:                                               # static services
        - namespace: shop
          name: cart
          ports: [{name: https, port: 443, protocol: TCP}]
          annotations: {fedns.io/policy: failover}
          endpoints:
            west: [{addresses: [127.2.0.1], ready: true, hostname: cart-0, zone: us-west-1a}]

      defaults: {policy: locality, ttl: 10, max_answers: 8, min_healthy_fraction: 0.0, fail_open: true,
                 flap_window: 60s, ttl_unstable: 5s}                 # health-aware TTL
      policies:
        shop/cart: {policy: failover, failover: [east, west]}
        shop/ads: {policy: weighted, weights: {east: 3, west: 1}}
        shop/web: {policy: locality, probe: {probe: http, port: 8080, path: /healthz}}
      localities: [{cidr: 10.1.0.0/16, region: us-east, zone: us-east-1a}, ...]
      regions: [{name: us-east, lat: 39.0, lon: -77.5, prefer: [us-west]}, ...]
      health: {probe: tcp, port: 443, interval: 500ms, timeout: 400ms, rise: 2, fall: 2}
      probes: {concurrency: 256}                              # probes in flight, at most

The whole section is parsed at load, routing included (``Routing``), so
``fedns check`` reports every error. Errors are ``ConfigError`` naming the file
and key path (``federation.clusters[1].reach``). Durations (``stale_after``, probe
``interval``/``timeout``, ``flap_window``, ``ttl_unstable``) go through ``Reader.duration``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import Config, ConfigError, Reader, absolute_name
from . import locality
from .health import DEFAULT_CONCURRENCY, ProbeSpec, parse_probe, probe_settings
from .locality import Locator
from .model import (
    REACH_MODES,
    STALE_POLICIES,
    Cluster,
    Endpoint,
    FrozenMap,
    Port,
    ServiceKey,
    fedns_annotations,
)
from .policy import Policy, policy_fields, with_fields

ExportMode = Literal["all", "selector", "serviceexport"]
ROUTING_KEYS = frozenset(
    {"localities", "regions", "policies", "defaults", "mmdb", "health", "probes"}
)
_FED_KEYS = {"zone", "clusters", "export", "services"} | ROUTING_KEYS
_CLUSTER_KEYS = {
    "name",
    "region",
    "zone",
    "kubeconfig",
    "context",
    "in_cluster",
    "reach",
    "gateway",
    "stale_after",
    "stale_policy",
    "weight",
}
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
PROTOCOLS = ("TCP", "UDP", "SCTP")


# -- label selectors (the Kubernetes syntax, as labels.Parse accepts it) ------------


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: Literal["=", "!=", "in", "notin", "exists", "!"]
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and labels[self.key] in self.values
        return not has or labels[self.key] not in self.values  # != and notin

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def __str__(self) -> str:
        """The canonical form, sent to the API server as ``labelSelector``."""
        return ",".join(str(r) for r in self.requirements)


def _valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and not _LABEL_PREFIX.match(prefix):
        return False
    return bool(_LABEL_NAME.match(name))


def parse_selector(text: str) -> LabelSelector:
    """``app=web,tier!=db,env in (a,b),!legacy`` -> LabelSelector; ValueError says what is wrong."""
    parts: list[str] = []
    depth = 0
    cur: list[str] = []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    reqs: list[Requirement] = []
    for raw in parts:
        p = raw.strip()
        if not p:
            raise ValueError(f"empty requirement in {text!r}")
        m = re.fullmatch(r"(\S+)\s+(in|notin)\s*\((.*)\)", p)
        req: Requirement
        if m:
            vals = tuple(v.strip() for v in m.group(3).split(","))
            req = Requirement(m.group(1), m.group(2), tuple(sorted(set(vals))))  # type: ignore[arg-type]
        elif p.startswith("!"):
            req = Requirement(p[1:].strip(), "!")
        elif "!=" in p:
            k, v = p.split("!=", 1)
            req = Requirement(k.strip(), "!=", (v.strip(),))
        elif "=" in p:
            k, v = p.split("==", 1) if "==" in p else p.split("=", 1)
            req = Requirement(k.strip(), "=", (v.strip(),))
        else:
            req = Requirement(p, "exists")
        if not _valid_label_key(req.key):
            raise ValueError(f"{req.key!r} is not a valid label key")
        for v in req.values:
            if v and not _LABEL_NAME.match(v):
                raise ValueError(f"{v!r} is not a valid label value")
        reqs.append(req)
    return LabelSelector(tuple(reqs))


# -- the federation config ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportConfig:
    """Which Kubernetes services are published. Static services are always published."""

    mode: ExportMode = "all"
    selector: LabelSelector | None = None
    allow: frozenset[str] | None = None  # None: every namespace
    deny: frozenset[str] = frozenset()

    def namespace_allowed(self, namespace: str) -> bool:
        if namespace in self.deny:
            return False
        return self.allow is None or namespace in self.allow

    @property
    def watched_namespaces(self) -> tuple[str, ...] | None:
        """The namespaces a Kubernetes source lists and watches one by one (allow
        minus deny, sorted); None: all namespaces in one list+watch."""
        return None if self.allow is None else tuple(sorted(self.allow - self.deny))


@dataclass(frozen=True, slots=True)
class StaticService:
    key: ServiceKey
    ports: tuple[Port, ...] = ()
    annotations: Mapping[str, str] = FrozenMap()
    endpoints: tuple[tuple[str, tuple[Endpoint, ...]], ...] = ()  # (cluster name, endpoints)

    def endpoints_in(self, cluster: str) -> tuple[Endpoint, ...] | None:
        for name, eps in self.endpoints:
            if name == cluster:
                return eps
        return None


@dataclass(frozen=True, slots=True)
class FederationConfig:
    zone: str  # absolute, lowercase, trailing dot
    clusters: tuple[Cluster, ...]
    export: ExportConfig = ExportConfig()
    services: tuple[StaticService, ...] = ()
    # How answers are chosen. Not part of equality: two configs that watch the
    # same clusters the same way are equal, so a reload that only changes
    # routing keeps the watches and republishes.
    routing: Routing = field(default_factory=lambda: Routing(), compare=False)

    def cluster(self, name: str) -> Cluster | None:
        for c in self.clusters:
            if c.name == name:
                return c
        return None


def parse_federation(config: Config) -> FederationConfig | None:
    """The federation of a loaded ``Config``; None when it has no ``federation:`` key."""
    if not config.federation:
        return None
    return federation_from_dict(config.federation, config.path)


def federation_from_dict(raw: Any, path: Path | None = None) -> FederationConfig:
    r = Reader(path)
    base = path.parent if path is not None else Path.cwd()
    fed = r.mapping(raw, "federation")
    r.known(fed, "federation", _FED_KEYS)
    if "zone" not in fed:
        raise r.fail(
            "federation.zone",
            "missing; give the zone names are served under, e.g. global.example.test.",
        )
    zone = absolute_name(r.string(fed["zone"], "federation.zone"))

    cl = r.sequence(fed.get("clusters"), "federation.clusters", "{name, region, zone, ...}")
    clusters: list[Cluster] = []
    for i, c in enumerate(cl):
        cluster = _cluster(r, c, f"federation.clusters[{i}]", base)
        if any(x.name == cluster.name for x in clusters):
            raise r.fail(
                f"federation.clusters[{i}].name", f"cluster {cluster.name!r} is listed twice"
            )
        clusters.append(cluster)

    export = _export(r, fed.get("export"), "federation.export")
    services = _services(r, fed.get("services"), "federation.services", clusters)
    routing = parse_routing(
        {k: fed[k] for k in ROUTING_KEYS if k in fed}, path, frozenset(c.name for c in clusters)
    )
    return FederationConfig(zone, tuple(clusters), export, services, routing)


def _cluster(r: Reader, raw: Any, key: str, base: Path) -> Cluster:
    c = r.mapping(raw, key)
    r.known(c, key, _CLUSTER_KEYS)
    if "name" not in c:
        raise r.fail(f"{key}.name", "missing; a cluster needs a name (a DNS label, e.g. east)")
    name = r.string(c["name"], f"{key}.name").lower()
    if not _DNS_LABEL.match(name):
        raise r.fail(f"{key}.name", f"{name!r} is not a DNS label (a-z, 0-9, '-', at most 63)")
    region = _opt_str(r, c.get("region"), f"{key}.region")
    zone = _opt_str(r, c.get("zone"), f"{key}.zone")
    reach = c.get("reach", "pod")
    if reach not in REACH_MODES:
        raise r.fail(f"{key}.reach", f"{reach!r} is not one of {', '.join(REACH_MODES)}")
    gw = c.get("gateway", [])
    if isinstance(gw, str):
        gw = [gw]
    if not isinstance(gw, list):
        raise r.fail(f"{key}.gateway", "expected a list of IP addresses")
    gateway = tuple(_ip(r, a, f"{key}.gateway[{j}]") for j, a in enumerate(gw))
    if reach == "gateway" and not gateway:
        raise r.fail(f"{key}.gateway", "reach: gateway needs at least one gateway address")
    if reach != "gateway" and gateway:
        raise r.fail(
            f"{key}.gateway", f"only used with reach: gateway (this cluster has reach: {reach})"
        )
    stale_after = r.duration(c.get("stale_after", 30.0), f"{key}.stale_after", 0.05, 86400)
    policy = c.get("stale_policy", "serve")
    if policy not in STALE_POLICIES:
        raise r.fail(f"{key}.stale_policy", f"{policy!r} is not one of {', '.join(STALE_POLICIES)}")
    weight = r.integer(c.get("weight", 100), f"{key}.weight", 0, 65535)
    in_cluster = c.get("in_cluster", False)
    if not isinstance(in_cluster, bool):
        raise r.fail(f"{key}.in_cluster", f"expected true or false, got {in_cluster!r}")
    kubeconfig: Path | None = None
    if c.get("kubeconfig") is not None:
        if in_cluster:
            raise r.fail(
                f"{key}.kubeconfig", "give either kubeconfig or in_cluster: true, not both"
            )
        kubeconfig = Path(r.string(c["kubeconfig"], f"{key}.kubeconfig")).expanduser()
        if not kubeconfig.is_absolute():
            kubeconfig = base / kubeconfig
    context = None
    if c.get("context") is not None:
        if kubeconfig is None:
            raise r.fail(f"{key}.context", "a context needs a kubeconfig file")
        context = r.string(c["context"], f"{key}.context")
    if reach == "loadbalancer" and kubeconfig is None and not in_cluster:
        raise r.fail(
            f"{key}.reach",
            "reach: loadbalancer needs a Kubernetes cluster (kubeconfig or in_cluster)",
        )
    return Cluster(
        name=name,
        region=region,
        zone=zone,
        reach=reach,
        gateway=gateway,
        stale_after=stale_after,
        stale_policy=policy,
        weight=weight,
        kubeconfig=kubeconfig,
        context=context,
        in_cluster=in_cluster,
    )


def _export(r: Reader, raw: Any, key: str) -> ExportConfig:
    e = r.mapping(raw, key)
    r.known(e, key, {"mode", "selector", "namespaces"})
    mode = e.get("mode", "all")
    if mode not in ("all", "selector", "serviceexport"):
        raise r.fail(f"{key}.mode", f"{mode!r} is not one of all, selector, serviceexport")
    selector = None
    if e.get("selector") is not None:
        if mode != "selector":
            raise r.fail(f"{key}.selector", f"only used with mode: selector (mode is {mode})")
        text = r.string(e["selector"], f"{key}.selector")
        try:
            selector = parse_selector(text)
        except ValueError as err:
            raise r.fail(f"{key}.selector", str(err)) from None
    elif mode == "selector":
        raise r.fail(
            f"{key}.selector", "mode: selector needs a label selector, e.g. 'fedns.io/export=true'"
        )
    ns = r.mapping(e.get("namespaces"), f"{key}.namespaces")
    r.known(ns, f"{key}.namespaces", {"allow", "deny"})
    allow = None
    if ns.get("allow") is not None:
        allow = frozenset(_str_list(r, ns["allow"], f"{key}.namespaces.allow"))
    deny = frozenset(_str_list(r, ns.get("deny", []), f"{key}.namespaces.deny"))
    if allow is not None and not allow - deny:
        raise r.fail(
            f"{key}.namespaces.allow",
            "allows no namespace (empty, or all of them denied): nothing would be exported; "
            "name the namespaces to export, or drop allow to export all",
        )
    return ExportConfig(mode, selector, allow, deny)


def _services(r: Reader, raw: Any, key: str, clusters: list[Cluster]) -> tuple[StaticService, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise r.fail(key, "expected a list of {namespace, name, ports, endpoints}")
    by_name = {c.name: c for c in clusters}
    out: list[StaticService] = []
    for i, s in enumerate(raw):
        k = f"{key}[{i}]"
        s = r.mapping(s, k)
        r.known(s, k, {"namespace", "name", "ports", "annotations", "endpoints"})
        for f in ("namespace", "name"):
            if f not in s:
                raise r.fail(f"{k}.{f}", "missing")
            if not _DNS_LABEL.match(str(s[f])):
                raise r.fail(f"{k}.{f}", f"{s[f]!r} is not a DNS label (a-z, 0-9, '-')")
        skey = ServiceKey(str(s["namespace"]), str(s["name"]))
        if any(o.key == skey for o in out):
            raise r.fail(k, f"service {skey} is listed twice")
        ports = _ports(r, s.get("ports", []), f"{k}.ports")
        ann = r.mapping(s.get("annotations"), f"{k}.annotations")
        for ak, av in ann.items():
            if not isinstance(ak, str) or not ak.startswith("fedns.io/"):
                raise r.fail(f"{k}.annotations.{ak}", "only fedns.io/ annotations are used")
            if not isinstance(av, str | int | float | bool):
                raise r.fail(f"{k}.annotations.{ak}", "expected a string value")
        annotations = fedns_annotations({ak: str(av) for ak, av in ann.items()})
        eps_raw = r.mapping(s.get("endpoints"), f"{k}.endpoints")
        per: list[tuple[str, tuple[Endpoint, ...]]] = []
        for cname, lst in eps_raw.items():
            ck = f"{k}.endpoints.{cname}"
            cluster = by_name.get(str(cname))
            if cluster is None:
                raise r.fail(ck, f"no cluster named {cname!r} in federation.clusters")
            if cluster.source != "static":
                raise r.fail(
                    ck,
                    f"cluster {cname!r} is watched through its API server; static endpoints are only for clusters without kubeconfig/in_cluster",
                )
            if not isinstance(lst, list):
                raise r.fail(ck, "expected a list of {addresses, ready, hostname, zone}")
            per.append(
                (
                    cluster.name,
                    tuple(_endpoint(r, e, f"{ck}[{j}]", cluster.name) for j, e in enumerate(lst)),
                )
            )
        out.append(StaticService(skey, ports, annotations, tuple(per)))
    return tuple(out)


def _ports(r: Reader, raw: Any, key: str) -> tuple[Port, ...]:
    if not isinstance(raw, list):
        raise r.fail(key, "expected a list of {name, port, protocol}")
    ports: list[Port] = []
    for j, p in enumerate(raw):
        pk = f"{key}[{j}]"
        p = r.mapping(p, pk)
        r.known(p, pk, {"name", "port", "protocol"})
        if "port" not in p:
            raise r.fail(f"{pk}.port", "missing")
        name = str(p.get("name", "") or "")
        if name and not _DNS_LABEL.match(name):
            raise r.fail(f"{pk}.name", f"{name!r} is not a valid port name (a DNS label)")
        proto = str(p.get("protocol", "TCP")).upper()
        if proto not in PROTOCOLS:
            raise r.fail(f"{pk}.protocol", f"{proto!r} is not one of {', '.join(PROTOCOLS)}")
        ports.append(Port(name, r.integer(p["port"], f"{pk}.port", 1, 65535), proto))
    return tuple(sorted(set(ports)))


def _endpoint(r: Reader, raw: Any, key: str, cluster: str) -> Endpoint:
    e = r.mapping(raw, key)
    r.known(e, key, {"addresses", "ready", "serving", "terminating", "hostname", "zone", "node"})
    addrs = e.get("addresses")
    if isinstance(addrs, str):
        addrs = [addrs]
    if not isinstance(addrs, list) or not addrs:
        raise r.fail(f"{key}.addresses", "expected a non-empty list of IP addresses")
    addresses = tuple(_ip(r, a, f"{key}.addresses[{j}]") for j, a in enumerate(addrs))
    flags: dict[str, bool] = {}
    for f in ("ready", "serving", "terminating"):
        v = e.get(f)
        if v is not None and not isinstance(v, bool):
            raise r.fail(f"{key}.{f}", f"expected true or false, got {v!r}")
        flags[f] = v  # type: ignore[assignment]
    ready = True if flags["ready"] is None else flags["ready"]
    terminating = bool(flags["terminating"])
    serving = ready if flags["serving"] is None else flags["serving"]
    hostname = e.get("hostname")
    if hostname is not None:
        hostname = str(hostname).lower()
        if not _DNS_LABEL.match(hostname):
            raise r.fail(f"{key}.hostname", f"{hostname!r} is not a DNS label")
    return Endpoint(
        cluster=cluster,
        addresses=addresses,
        ready=ready,
        serving=serving,
        terminating=terminating,
        zone=_opt_str(r, e.get("zone"), f"{key}.zone") or None,
        hostname=hostname,
        node=_opt_str(r, e.get("node"), f"{key}.node") or None,
    )


def _ip(r: Reader, v: Any, key: str) -> str:
    try:
        return str(ipaddress.ip_address(str(v)))
    except ValueError:
        raise r.fail(key, f"{v!r} is not an IP address") from None


def _opt_str(r: Reader, v: Any, key: str) -> str:
    if v is None:
        return ""
    if not isinstance(v, str):
        raise r.fail(key, f"expected a string, got {v!r}")
    return v


def _str_list(r: Reader, v: Any, key: str) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
        raise r.fail(key, "expected a list of namespace names")
    return list(v)




# -- routing: policies, localities, the default probe -------------------------

DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Routing:
    """The routing keys of ``federation:``, parsed."""

    defaults: Policy = DEFAULT_POLICY
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    locator: Locator = field(default_factory=Locator)
    probe: ProbeSpec | None = None  # default active probe for every federated service
    # ``federation.policies.<ns/name>.probe``, for the entries that give one (None: none)
    probes: dict[str, ProbeSpec | None] = field(default_factory=dict)
    concurrency: int = DEFAULT_CONCURRENCY  # ``federation.probes.concurrency``


def parse_routing(
    routing: Any, path: Path | None, clusters: frozenset[str] | None = None
) -> Routing:
    """The routing keys of ``federation:``; with ``clusters``, policies may name only those."""
    r = Reader(path)
    raw = dict(routing or {})
    defaults = with_fields(
        DEFAULT_POLICY,
        policy_fields(raw.get("defaults") or {}, "federation.defaults", r, clusters),
    )
    overrides: dict[str, dict[str, Any]] = {}
    probes: dict[str, ProbeSpec | None] = {}
    base = path.parent if path is not None else None
    pol = raw.get("policies") or {}
    if not isinstance(pol, dict):
        raise r.fail("federation.policies", "expected a mapping of 'namespace/name' to settings")
    for svc, settings in pol.items():
        if not isinstance(svc, str) or svc.count("/") != 1:
            raise r.fail(f"federation.policies.{svc}", "key must be 'namespace/name'")
        key = svc.lower()
        overrides[key] = policy_fields(
            settings, f"federation.policies.{svc}", r, clusters, also=frozenset({"probe"})
        )
        if "probe" in settings:
            where = f"federation.policies.{svc}.probe"
            raw_probe = settings["probe"]
            if raw_probe is None:
                raise r.fail(where, "empty; write none, or a mapping like {probe: http, port: 8080}")
            probes[key] = parse_probe(raw_probe, where, r, base)
    probe = parse_probe(raw.get("health"), "federation.health", r, base)
    concurrency = probe_settings(raw.get("probes"), r)
    return Routing(defaults, overrides, build_locator(raw, path), probe, probes, concurrency)


def build_locator(raw: dict[str, Any], path: Path | None) -> Locator:
    if not any(k in raw for k in ("localities", "regions", "mmdb")):
        return Locator()
    regions = locality.parse_regions(raw, path)
    lmap = locality.parse_localities(raw, path, regions)
    return Locator(lmap, regions)


__all__ = [
    "ConfigError",
    "ExportConfig",
    "FederationConfig",
    "LabelSelector",
    "Routing",
    "StaticService",
    "federation_from_dict",
    "parse_federation",
    "parse_selector",
]
