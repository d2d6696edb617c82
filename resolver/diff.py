"""``fedns diff``: which answers a config change moves, for which clients, and why.

Each side (the running or OLD config, the NEW one) is built as a server would
serve it: its zones in an answer table of its own, its static services (and,
with a snapshot of a running instance, the services its clusters report)
planned by the federation's own ``Control.plan`` and published by the
``Publisher``. Then each question is asked of both tables through
``Table.respond``, the call every transport makes, as a query in wire form with
the client's subnet as ECS, so a difference here is a difference on the wire.

Questions: every name of every zone of both sides with each record type it has
at either side, and every name a federated service publishes (service,
per-cluster, per-endpoint: A and AAAA; SRV). A name whose answer depends on the
client (a service name, its SRV names) is asked once per *bucket*: one per
``federation.localities`` rule of either side, one per ``--subnets`` entry, and
one for the clients no rule places; every other name once, for all clients.
Names whose answers are made from equal inputs at both sides (``Unchanged``)
are not asked: that keeps a reload's summary cheap when a few services change.

A rule's bucket is asked with a /24 (IPv4) or /56 (IPv6) inside the rule that
the rule itself places (not a more specific rule, not unmapped private space),
the unplaced bucket with the first such subnet no rule places, the same subnet
at both sides: a weighted answer hashes it, so only a change of weights (or of
what places it) moves it. Questions come from that unplaced subnet's address,
the resolver that places a client whose ECS is not used (RFC 7871 10).

Replies are compared by RCODE, answer and authority RRsets (sorted, TTLs
included; a negative answer's SOA by its TTL only, so a serial bump does not
mark every NODATA). Each change gets its reasons from the two sides' plans,
records and locality maps. What cannot be evaluated without live state (active
probes; with no snapshot, the Kubernetes clusters' services and their export)
is listed apart, and counts as a change too.

Pure: the callers load (``resolver.app.load_instance``) and fetch snapshots;
nothing here reads a file or the network.
"""

from __future__ import annotations

import bisect
import copy
import ipaddress
import itertools
import json
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import dns.edns
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
from dnslib import RR, DNSRecord

from .config import Config, ConfigError
from .dns.answers import Table
from .dns.ecs import FAMILY_IPV4, FAMILY_IPV6, MAX_SOURCE, PRIVACY_PREFIX, ClientSubnet
from .dns.wire import OPT_ECS, T_A, T_AAAA, T_OPT, T_SOA
from .dns.zone import Lazy, Packed, RRset, Zone, key_of
from .federation.config import FederationConfig, federation_from_dict
from .federation.control import Control
from .federation.explain import parse_subnet
from .federation.locality import LocalityMap, Locator, Rule
from .federation.model import KubeObject, ServiceKey
from .federation.plan import PlanUpdate, ServicePlan
from .federation.policy import Candidate, Client, Policy
from .federation.registry import Registry
from .federation.router import Publisher, srv_owner, static_records
from .federation.sources.static import StaticSource

REASONS = ("record", "policy", "weights", "ttl", "locality", "probe", "export", "other")
UNPLACED = "unplaced"  # the bucket of the clients no rule places
ALL = "all"  # the "bucket" of a name that answers every client alike
FIRST_NAMES = 5  # names a summary lists


class Loaded(Protocol):
    """A loaded config (``resolver.app.Instance``): its settings, its answer table
    (its zones, as loaded), its federation."""

    @property
    def cfg(self) -> Config: ...

    @property
    def table(self) -> Table: ...

    @property
    def fed(self) -> FederationConfig | None: ...


# -- buckets --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bucket:
    """Clients that may get their own answer: a rule's CIDR, a ``--subnets`` entry,
    or the clients no rule places. ``subnet`` is what is sent as ECS (None: no ECS,
    for the names that answer all clients alike)."""

    label: str
    origin: str  # "federation.localities" | "--subnets" | "unplaced" | "all"
    subnet: ClientSubnet | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None

    @property
    def ecs(self) -> str | None:
        s = self.subnet
        if s is None:
            return None
        return f"{_address(s.family, s.network_int)}/{s.source}"


ALL_CLIENTS = Bucket(ALL, "all", None, None)


def parse_subnets(text: str, source: str = "--subnets") -> list[Bucket]:
    """``--subnets FILE``: one CIDR or address a line, ``#`` comments. An address
    stands for its /24 (IPv4) or /56 (IPv6), as much as fedns ever uses of it;
    a wider network is sent as it is written. ``ConfigError`` names the line."""
    out: list[Bucket] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        item = line.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            if "/" in item:
                net = ipaddress.ip_network(item, strict=False)
            else:
                ip = ipaddress.ip_address(item)
                net = ipaddress.ip_network(f"{ip}/{PRIVACY_PREFIX[_family(ip.version)]}", strict=False)
        except ValueError:
            raise ConfigError(
                f"{source}:{lineno}: {item!r} is not an address or network "
                "(write e.g. 198.51.100.7, 10.1.0.0/16 or 2001:db8::/56)"
            ) from None
        clamp = PRIVACY_PREFIX[_family(net.version)]
        if net.prefixlen > clamp:
            net = net.supernet(new_prefix=clamp)
        cs = parse_subnet(str(net))
        out.append(Bucket(str(net), "--subnets", cs, net))
    return out


def _family(version: int) -> int:
    return FAMILY_IPV4 if version == 4 else FAMILY_IPV6


def _address(family: int, value: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.IPv4Address(value) if family == FAMILY_IPV4 else ipaddress.IPv6Address(value)


def _first_blocks(lm: LocalityMap) -> dict[int, list[int]]:
    """Per rule index, the starts of the first few partition blocks it decides."""
    out: dict[int, list[int]] = {}
    for fam in (FAMILY_IPV4, FAMILY_IPV6):
        for cidr, m in lm.blocks(fam):
            if m.rule_id >= 0:
                starts = out.setdefault(m.rule_id, [])
                if len(starts) < 16:
                    starts.append(int(ipaddress.ip_network(cidr).network_address))
    return out


def _placed_by(lm: LocalityMap, cs: ClientSubnet, cidr: str) -> bool:
    """Whether an ECS of ``cs`` is placed by the rule written ``cidr`` in ``lm``."""
    p = lm.place(cs, None)
    if p.basis != "ecs" or p.match.rule_id < 0:
        return False
    rule = next((r for r in lm.rules if r.index == p.match.rule_id), None)
    return rule is not None and _norm(rule) == cidr


def _norm(rule: Rule) -> str:
    return str(ipaddress.ip_network(rule.text, strict=False))


def rule_buckets(maps: Sequence[LocalityMap | None]) -> list[Bucket]:
    """One bucket per rule CIDR of any of ``maps``, in config order, each with a
    representative subnet its rule places (in every map that has the rule, when
    one exists). A rule wholly covered by more specific ones has no bucket of its
    own: those rules' buckets are its clients."""
    holders: dict[str, list[tuple[LocalityMap, Rule]]] = {}
    for lm in maps:
        if lm is None:
            continue
        for rule in lm.rules:
            holders.setdefault(_norm(rule), []).append((lm, rule))
    firsts = {id(lm): _first_blocks(lm) for lm in maps if lm is not None}
    out: list[Bucket] = []
    for cidr, hold in holders.items():
        net = ipaddress.ip_network(cidr)
        fam = _family(net.version)
        bits = min(PRIVACY_PREFIX[fam], MAX_SOURCE[fam])
        found: list[ClientSubnet] = []
        for lm, rule in hold:
            for start in firsts[id(lm)].get(rule.index, ()):
                cs = parse_subnet(f"{_address(fam, start)}/{bits}")
                assert cs is not None
                if _placed_by(lm, cs, cidr):
                    found.append(cs)
        if not found:
            continue
        everywhere = [cs for cs in found if all(_placed_by(lm, cs, cidr) for lm, _ in hold)]
        out.append(Bucket(cidr, "federation.localities", (everywhere or found)[0], net))
    return out


# The questions' source address when rules place every address (any will do then).
_RESOLVER = "192.0.2.1"
# Where to look first for a client no rule places: the documentation ranges.
_UNPLACED_FIRST = ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/56")


def unplaced_bucket(sides: Sequence[Side]) -> Bucket | None:
    """The clients no rule of either side places, represented by the first /24
    (/56) that is in no rule and not in special-purpose space (whose ECS is not
    used). Sent as ECS: a client without ECS from that subnet is placed, and
    hashed (weighted), the same. None when rules place every address."""
    candidates = [parse_subnet(t) for t in _UNPLACED_FIRST]
    for side in sides:
        lm = side.localities
        for fam in (FAMILY_IPV4, FAMILY_IPV6) if lm is not None else ():
            assert lm is not None
            starts = [c for c, m in lm.blocks(fam) if m.rule_id < 0]
            for cidr in starts[:64]:
                net = ipaddress.ip_network(cidr)
                candidates.append(parse_subnet(f"{net.network_address}/{PRIVACY_PREFIX[fam]}"))
    for cs in candidates:
        assert cs is not None
        if all(_unplaced(side, cs) for side in sides):
            net = ipaddress.ip_network(f"{_address(cs.family, cs.network_int)}/{cs.source}")
            return Bucket(UNPLACED, UNPLACED, cs, net)
    return None


def _unplaced(side: Side, cs: ClientSubnet) -> bool:
    client, placement = side.locator.client(cs, None)
    return (client.region, client.zone) == (None, None) and (
        placement is None or placement.basis == "ecs"
    )


def buckets_for(old: Side, new: Side, subnets: Sequence[Bucket]) -> list[Bucket]:
    seen: dict[str, Bucket] = {}
    for b in [*rule_buckets([old.localities, new.localities]), *subnets]:
        seen.setdefault(b.label, b)
    unplaced = unplaced_bucket((old, new))
    return [*seen.values(), *([unplaced] if unplaced is not None else [])]


# -- locality moves ---------------------------------------------------------------


Loc = tuple[str | None, str | None]  # (region, zone)


@dataclass(frozen=True, slots=True)
class Place:
    """Where a bucket's clients are at one side, and what placed them: their ECS,
    or (ECS in private space no rule maps, RFC 7871 10) the resolver's address."""

    region: str | None
    zone: str | None
    by: str  # "ecs" | "resolver"

    @property
    def loc(self) -> Loc:
        return (self.region, self.zone)

    def as_dict(self) -> dict[str, Any]:
        return {"region": self.region, "zone": self.zone, "by": self.by}

    def __str__(self) -> str:
        where = _loc_text(self.loc)
        return where if self.by == "ecs" else f"{where} by the resolver's address"


@dataclass(frozen=True, slots=True)
class Move:
    """Client subnets that a change of ``federation.localities`` places elsewhere."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    before: Loc
    after: Loc

    def as_dict(self) -> dict[str, Any]:
        return {"cidr": str(self.network), "before": _loc_dict(self.before), "after": _loc_dict(self.after)}


def _pieces(lm: LocalityMap | None, fam: int) -> tuple[list[int], list[Loc]]:
    if lm is None:
        return [0], [(None, None)]
    starts: list[int] = []
    locs: list[Loc] = []
    for cidr, m in lm.blocks(fam):
        starts.append(int(ipaddress.ip_network(cidr).network_address))
        locs.append((m.region, m.zone))
    return starts, locs


def locality_moves(old: LocalityMap | None, new: LocalityMap | None) -> list[Move]:
    """Exactly the subnets whose (region, zone) differs between the two maps' rules,
    as few CIDRs as cover them."""
    if old is None and new is None:
        return []
    out: list[Move] = []
    for fam in (FAMILY_IPV4, FAMILY_IPV6):
        width = MAX_SOURCE[fam]
        a_starts, a_locs = _pieces(old, fam)
        b_starts, b_locs = _pieces(new, fam)
        bounds = sorted({*a_starts, *b_starts, 1 << width})
        runs: list[tuple[int, int, Loc, Loc]] = []
        for lo, hi in itertools.pairwise(bounds):
            before = a_locs[bisect.bisect_right(a_starts, lo) - 1]
            after = b_locs[bisect.bisect_right(b_starts, lo) - 1]
            if before == after:
                continue
            if runs and runs[-1][1] == lo and runs[-1][2:] == (before, after):
                runs[-1] = (runs[-1][0], hi, before, after)
            else:
                runs.append((lo, hi, before, after))
        for lo, hi, before, after in runs:
            for net in ipaddress.summarize_address_range(_address(fam, lo), _address(fam, hi - 1)):
                out.append(Move(net, before, after))
    return out


# -- one side -------------------------------------------------------------------


@dataclass
class Side:
    """One config as a server would serve it, in a table of its own."""

    label: str
    cfg: Config
    fed: FederationConfig | None  # with a snapshot: the clusters' services in it, static
    table: Table
    plans: dict[ServiceKey, ServicePlan] = field(default_factory=dict)
    owners: dict[bytes, ServiceKey] = field(default_factory=dict)  # federated names
    routed: set[bytes] = field(default_factory=set)  # names answered per client
    probes: dict[ServiceKey, tuple[str, Any]] = field(default_factory=dict)  # _probe_of
    unexported: set[ServiceKey] = field(default_factory=set)  # live, left out by this export
    watched: tuple[str, ...] = ()  # clusters with an API server (kubeconfig / in_cluster)
    reach: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)  # watched ones
    # The address the questions come from: it places a client whose ECS is not used
    # (unmapped private space). A resolver no rule places, as ``compare`` picks it.
    resolver: str | None = None

    @property
    def locator(self) -> Locator:
        return self.fed.routing.locator if self.fed is not None else Locator()

    @property
    def localities(self) -> LocalityMap | None:
        return self.locator.localities

    def client(self, b: Bucket) -> Client:
        if b.origin == "all":
            return Client(None, None)
        return self.locator.client(b.subnet, self.resolver)[0]

    def place(self, b: Bucket) -> Place:
        if b.origin == "all":
            return Place(None, None, "ecs")
        c, p = self.locator.client(b.subnet, self.resolver)
        return Place(c.region, c.zone, "resolver" if p is not None and p.basis != "ecs" else "ecs")

    def zone_records(self, k: bytes) -> dict[int, RRset] | None:
        """The zone-file records owned by ``k`` (not a federated name's)."""
        if k in self.owners:
            return None
        for z in self.table.zones.values():
            if k in z.data or k in z.lazy:
                return z.records(k)
        return None


def _pristine(z: Zone) -> Zone:
    """A copy of a zone as its file has it: a table's zones also hold the federated
    names published into them (compact, in ``lazy``), which are not the file's.
    Its dicts are copied whole first (one step under the GIL), as a serving zone
    may be published into meanwhile."""
    data, everything = dict(z.data), dict(z.lazy)
    lazy: dict[bytes, Lazy] = {k: v for k, v in everything.items() if isinstance(v, Packed)}
    return Zone(z.origin, z.okey, data, lazy=lazy)


def build_side(label: str, loaded: Loaded, snapshot: Mapping[str, Any] | None = None) -> Side:
    """``loaded``'s zones and federation in a table of their own (``loaded`` is left
    as it is: it may be serving), with every static service published; with
    ``snapshot`` (``Control.snapshot`` of a running instance), the services its
    watched clusters report too, as this config would export and route them."""
    cfg, fed = loaded.cfg, loaded.fed
    table = Table([_pristine(z) for z in loaded.table.zones.values()],
                  cfg.max_udp_payload, cfg.identity, cfg.version)
    table.publish({}, {})  # as load_instance: the table learns its compact names
    side = Side(label, cfg, fed, table)
    if fed is None:
        return side
    side.watched = tuple(c.name for c in fed.clusters if c.source == "kubernetes")
    side.reach = {c.name: (c.reach, c.gateway) for c in fed.clusters if c.source == "kubernetes"}
    if snapshot is not None and side.watched:
        side.fed, side.unexported = with_snapshot(cfg, fed, snapshot)
        fed = side.fed
    registry = Registry.from_config(fed)
    try:
        for c in fed.clusters:
            if c.source != "static":
                continue
            sink = registry.sink(c.name)
            svcs, slices = StaticSource(c, fed.services).objects()
            # One object at a time: the same store a list fills, without marking the
            # cluster synced (that is logged, and this registry serves nothing).
            objs: list[KubeObject] = [*svcs, *slices]
            for obj in objs:
                sink.upsert(obj)
        control = Control(fed, lambda _u: None, registry)
        for key in sorted(registry.keys()):
            plan = control.plan(key)
            if plan is None:
                continue
            side.plans[key] = plan
            side.probes[key] = _probe_of(plan)
    finally:
        registry.close()
    Publisher(table, fed.routing.locator).apply(PlanUpdate(tuple(side.plans.values())))
    for key, plan in side.plans.items():
        for k in static_records(plan):
            side.owners[k] = key
        side.routed.add(key_of(plan.base))
        side.routed.update(key_of(srv_owner(plan, p)) for p in plan.ports)
    return side


def _probe_of(plan: ServicePlan) -> tuple[str, Any]:
    """The probe the plan chose (annotation, ``federation.policies`` entry, then
    ``federation.health``, as ``Control`` chooses it; a bad annotation already
    skipped): where it came from, and its settings as explain shows them."""
    choice = plan.probe
    return (choice.key or "none", choice.spec.describe() if choice.spec is not None else None)


def with_snapshot(
    cfg: Config, fed: FederationConfig, snapshot: Mapping[str, Any]
) -> tuple[FederationConfig, set[ServiceKey]]:
    """``fed`` with the watched clusters' services taken from a running instance's
    snapshot: those clusters become static ones holding what the snapshot says
    (its addresses are already the ones clients reach: ``reach`` was applied),
    filtered by this config's ``export.namespaces``. Returns it and the services
    the snapshot has that this export leaves out. Parsed by the config's own
    parser, so the result is a config fedns could load."""
    watched = {c.name for c in fed.clusters if c.source == "kubernetes"}
    doc = copy.deepcopy(dict(cfg.federation))
    clusters = []
    for raw in doc.get("clusters") or []:
        c = dict(raw)
        if str(c.get("name", "")).lower() in watched:
            for k in ("kubeconfig", "context", "in_cluster", "gateway"):
                c.pop(k, None)
            c["reach"] = "pod"
        clusters.append(c)
    doc["clusters"] = clusters
    services: dict[tuple[str, str], dict[str, Any]] = {}
    for s in doc.get("services") or []:
        services[(str(s["namespace"]), str(s["name"]))] = s
    unexported: set[ServiceKey] = set()
    for s in snapshot.get("services") or []:
        ns, name = str(s["namespace"]), str(s["name"])
        eps = {c: e for c, e in (s.get("endpoints") or {}).items() if c in watched}
        if not eps:
            continue
        if not fed.export.namespace_allowed(ns):
            unexported.add(ServiceKey(ns, name))
            continue
        entry = services.setdefault((ns, name), {"namespace": ns, "name": name})
        entry["endpoints"] = {**(entry.get("endpoints") or {}), **eps}
        ports = list(entry.get("ports") or [])
        have = {_port_key(p) for p in ports}
        ports += [p for p in s.get("ports") or [] if _port_key(p) not in have]
        entry["ports"] = ports
        entry["annotations"] = {**(s.get("annotations") or {}), **(entry.get("annotations") or {})}
    doc["services"] = list(services.values())
    try:
        return federation_from_dict(doc, cfg.path), unexported
    except ConfigError as e:
        raise ConfigError(f"the running instance's snapshot does not fit {cfg.path}: {e}") from None


def _port_key(p: Mapping[str, Any]) -> tuple[Any, str]:
    name = str(p.get("name") or "")
    return (name or int(p.get("port", 0)), str(p.get("protocol", "TCP")).upper())


# -- asking ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    """A reply as compared: RCODE, answer and authority lines (sorted)."""

    rcode: str
    answer: tuple[str, ...]
    authority: tuple[str, ...]
    ttl: int | None  # the answer's lowest TTL
    scope: int | None  # the ECS SCOPE, when the query had ECS

    @property
    def key(self) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        return (self.rcode, self.answer, self.authority)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rcode": self.rcode,
            "answer": list(self.answer),
            "authority": list(self.authority),
            "ttl": self.ttl,
            "scope": self.scope,
        }


def opt_record(bucket: Bucket) -> bytes:
    """The OPT record of the bucket's questions (EDNS, the subnet as ECS), as
    dnspython writes it: the one part of a question that depends on the client."""
    options: list[dns.edns.Option] = []
    if bucket.subnet is not None:
        ecs = bucket.ecs
        assert ecs is not None
        addr, bits = ecs.split("/")
        options.append(dns.edns.ECSOption(addr, int(bits)))
    q = dns.message.make_query(dns.name.root, dns.rdatatype.A, use_edns=0, payload=1232,
                               options=options, flags=0, id=0)
    return q.to_wire()[12 + 5 :]  # after the header and the root's question


def query(key: bytes, qtype: int, opt: bytes) -> bytes:
    """A question as a resolver asks an authoritative server (ID 0, no RD, class IN),
    ``key`` the name in wire form, ``opt`` the OPT record (``opt_record``). The
    header and question as ``explain._query`` packs them, with one additional."""
    return struct.pack(">6H", 0, 0, 1, 0, 0, 1) + key + struct.pack(">HH", qtype, 1) + opt


def read_answer(wire: bytes | None) -> Answer:
    """A reply as compared and shown (dnslib reads it: a third of dnspython's time,
    which counts when every answer of a thousand services changes)."""
    if not wire:
        return Answer("no reply", (), (), None, None)
    msg = DNSRecord.parse(wire)
    answer = tuple(sorted(_line(rr) for rr in msg.rr))
    authority = tuple(sorted(
        # The negative answer's TTL is what resolvers cache; the serial is the apex's.
        f"{rr.rname} {rr.ttl} IN SOA (negative answer)" if rr.rtype == T_SOA else _line(rr)
        for rr in msg.auth
    ))
    scope = None
    for rr in msg.ar:
        for o in rr.rdata if rr.rtype == T_OPT else ():
            if o.code == OPT_ECS and len(o.data) >= 4:
                scope = o.data[3]
    ttl = min((rr.ttl for rr in msg.rr), default=None)
    return Answer(dns.rcode.to_text(msg.header.rcode), answer, authority, ttl, scope)


def _line(rr: RR) -> str:
    return f"{rr.rname} {rr.ttl} IN {dns.rdatatype.to_text(rr.rtype)} {rr.rdata.toZone()}"


# -- reasons ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reason:
    kind: str  # one of REASONS
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "detail": self.detail}


def _cand(c: Candidate) -> str:
    return f"{c.cluster}/{c.name} {','.join(c.v4 + c.v6)}{'' if c.healthy else ' (unhealthy)'}"


def plan_reasons(key: ServiceKey, p0: ServicePlan | None, p1: ServicePlan | None,
                 old: Side, new: Side) -> list[Reason]:
    """Why a service's answers may differ between two plans of it."""
    svc = str(key)
    if p0 is None or p1 is None:
        gone = p1 is None
        side = new if gone else old
        if key in side.unexported:
            return [Reason("export", f"{svc}: namespace {key.namespace} is not exported by "
                           f"{side.label}'s federation.export")]
        return [Reason("record", f"{svc}: service {'removed' if gone else 'added'}")]
    out: list[Reason] = []
    if (key in old.unexported) != (key in new.unexported):
        out.append(Reason("export", f"{svc}: export of namespace {key.namespace} changed"))
    ident0 = {(c.cluster, c.name): c for c in p0.candidates}
    ident1 = {(c.cluster, c.name): c for c in p1.candidates}
    ends = []
    for k in ident0.keys() - ident1.keys():
        ends.append(f"-{_cand(ident0[k])}")
    for k in ident1.keys() - ident0.keys():
        ends.append(f"+{_cand(ident1[k])}")
    for k in ident0.keys() & ident1.keys():
        a, b = ident0[k], ident1[k]
        if (a.v4, a.v6, a.healthy) != (b.v4, b.v6, b.healthy):
            ends.append(f"{_cand(a)} -> {_cand(b)}")
    order0 = [k for k in ident0 if k in ident1]
    order1 = [k for k in ident1 if k in ident0]
    if order0 != order1:
        ends.append("endpoint order (federation.clusters order)")
    if ends:
        out.append(Reason("record", f"{svc}: endpoints " + "; ".join(sorted(ends))))
    if p0.ports != p1.ports:
        out.append(Reason("record", f"{svc}: ports {_ports(p0)} -> {_ports(p1)}"))
    placed = [
        f"{c.cluster}/{c.name} {c.region}/{c.zone} -> {n.region}/{n.zone}"
        for k, c in ident0.items()
        if (n := ident1.get(k)) is not None and (c.region, c.zone) != (n.region, n.zone)
    ]
    if placed:
        out.append(Reason("locality", f"{svc}: endpoints placed elsewhere: " + "; ".join(placed)))
    pol0, pol1 = p0.policy, p1.policy
    if pol0.ttl != pol1.ttl:
        out.append(Reason("ttl", f"{svc}: ttl {pol0.ttl} -> {pol1.ttl}"))
    # Weights of the clusters at both sides (one that comes or goes is an endpoint
    # change): the policy's for a weighted service, the clusters' own in SRV weights.
    cw0 = {c.cluster: c.weight for c in p0.candidates}
    cw1 = {c.cluster: c.weight for c in p1.candidates}
    both = sorted(cw0.keys() & cw1.keys())
    hashed = "weighted" in (pol0.kind, pol1.kind)
    w0 = _weights(pol0 if hashed else Policy(), cw0, both)
    w1 = _weights(pol1 if hashed else Policy(), cw1, both)
    if w0 != w1:
        out.append(Reason("weights", f"{svc}: weights {w0} -> {w1}"))
    changes = []
    if pol0.kind != pol1.kind:
        changes.append(f"policy {pol0.kind} -> {pol1.kind}")
    if pol0.failover != pol1.failover:
        changes.append(f"failover [{', '.join(pol0.failover)}] -> [{', '.join(pol1.failover)}]")
    for f in ("max_answers", "min_healthy_fraction", "fail_open"):
        if getattr(pol0, f) != getattr(pol1, f):
            changes.append(f"{f} {getattr(pol0, f)} -> {getattr(pol1, f)}")
    if changes:
        out.append(Reason("policy", f"{svc}: " + "; ".join(changes)))
    return out


def _ports(p: ServicePlan) -> str:
    return ",".join(f"{x.name}/{x.protocol}:{x.port}" for x in p.ports) or "none"


def _weights(p: Policy, cluster_weight: Mapping[str, int], clusters: Iterable[str]) -> str:
    """The weight each cluster has under ``p`` (its own, else the cluster's)."""
    return ", ".join(f"{c}={p.weight_of(c, cluster_weight.get(c, 100))}" for c in clusters)


def _rrsets_text(records: dict[int, RRset] | None, qtype: int) -> tuple[int, tuple[str, ...]] | None:
    rs = (records or {}).get(qtype)
    return None if rs is None else (rs.ttl, tuple(sorted(str(rd) for rd in rs.rdatas)))


def zone_reasons(k: bytes, name: str, qtype: int, old: Side, new: Side) -> list[Reason]:
    r0, r1 = old.zone_records(k), new.zone_records(k)
    if r0 is None and r1 is None:
        return []
    t = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))
    if r0 is None or r1 is None:
        return [Reason("record", f"{name} {'added to' if r0 is None else 'removed from'} the zone")]
    a, b = _rrsets_text(r0, qtype), _rrsets_text(r1, qtype)
    if a != b:
        if a is not None and b is not None and a[1] == b[1]:
            return [Reason("ttl", f"{name} {t}: TTL {a[0]} -> {b[0]}")]
        return [Reason("record", f"{name} {t}: records changed in the zone file")]
    return [Reason("record", f"{name}: the zone data around it changed "
                             "(a CNAME target, wildcard, delegation, glue or the SOA)")]


def _loc_text(loc: Loc) -> str:
    return "unplaced" if loc == (None, None) else f"{loc[0]}/{loc[1] or '-'}"


def _loc_dict(loc: Loc) -> dict[str, str | None]:
    return {"region": loc[0], "zone": loc[1]}


def client_reasons(
    b: Bucket, kinds: set[str], old: Side, new: Side, moves: Sequence[Move]
) -> tuple[list[Reason], list[str]]:
    """Why one bucket of clients is routed otherwise under policies ``kinds``: placed
    elsewhere (locality), hashed by another subnet (weighted: an ECS address in
    private space is used only once a rule maps it), or the region order."""
    out: list[Reason] = []
    moved: list[str] = []
    c0, c1 = old.client(b), new.client(b)
    before, after = (c0.region, c0.zone), (c1.region, c1.zone)
    if ("locality" in kinds and before != after) or ("weighted" in kinds and c0.subnet != c1.subnet):
        hits = [m for m in moves if b.network is not None and m.network.overlaps(b.network)]
        moved = [str(m.network) for m in hits]
        out.append(Reason(
            "locality",
            "locality map moved these subnets: "
            + (", ".join(f"{m.network} {_loc_text(m.before)} -> {_loc_text(m.after)}" for m in hits)
               or f"{b.label} {_loc_text(before)} -> {_loc_text(after)}"),
        ))
    region = after[0]
    o0, o1 = old.locator.region_order(before[0]), new.locator.region_order(region)
    if "locality" in kinds and before[0] == region and region is not None and tuple(o0) != tuple(o1):
        out.append(Reason("locality", f"federation.regions: order from {region} "
                                      f"{', '.join(o0)} -> {', '.join(o1)}"))
    return out, moved


# -- the report -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    name: str
    qtype: str
    bucket: Bucket
    placed: tuple[Place, Place]  # where the bucket's clients are at each side
    before: Answer
    after: Answer
    reasons: tuple[Reason, ...]
    moved: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "type": self.qtype,
            "bucket": self.bucket.label,
            "subnet": self.bucket.ecs,
            "client": {"before": self.placed[0].as_dict(), "after": self.placed[1].as_dict()},
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "reasons": [r.as_dict() for r in self.reasons],
        }
        if self.moved:
            d["moved_subnets"] = list(self.moved)
        return d


@dataclass(frozen=True, slots=True)
class Unevaluated:
    """A change whose effect on answers needs live state this diff does not have."""

    kind: str
    subject: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail}


@dataclass
class Report:
    old: str
    new: str
    server: str | None
    buckets: list[tuple[Bucket, Place, Place]]
    changes: list[Change]
    moves: list[Move]
    unevaluated: list[Unevaluated]
    notes: list[str]
    questions: int  # asked of each side
    unchanged: int = 0  # names not asked: their answers' inputs are equal at both sides

    @property
    def changed(self) -> bool:
        return bool(self.changes or self.unevaluated)

    def summary(self) -> dict[str, Any]:
        by: dict[str, int] = {}
        for c in self.changes:
            for kind in dict.fromkeys(r.kind for r in c.reasons):
                by[kind] = by.get(kind, 0) + 1
        later: dict[str, int] = {}
        for u in self.unevaluated:
            later[u.kind] = later.get(u.kind, 0) + 1
        return {
            "answers": len(self.changes),
            "by_reason": {k: by[k] for k in REASONS if k in by},
            "names": list(dict.fromkeys(c.name for c in self.changes))[:FIRST_NAMES],
            "moved_subnets": len(self.moves),
            "not_evaluated": later,
            "questions": self.questions,
            "unchanged_names": self.unchanged,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "server": self.server,
            "changed": self.changed,
            "summary": self.summary(),
            "buckets": [
                {"bucket": b.label, "from": b.origin, "subnet": b.ecs,
                 "before": p0.as_dict(), "after": p1.as_dict()}
                for b, p0, p1 in self.buckets
            ],
            "changes": [c.as_dict() for c in self.changes],
            "locality_moves": [m.as_dict() for m in self.moves],
            "not_evaluated": [u.as_dict() for u in self.unevaluated],
            "notes": list(self.notes),
        }


def _types(side: Side, k: bytes) -> set[int]:
    out: set[int] = set()
    if k in side.owners:
        out.update((T_A, T_AAAA))
    for z in side.table.zones.values():
        if k in z.data or k in z.lazy:
            out.update((z.records(k) or {}).keys())
            break
    return out


def _names(side: Side) -> Iterable[bytes]:
    for z in side.table.zones.values():
        yield from z.data
        yield from z.lazy


def compare(
    old: Loaded,
    new: Loaded,
    subnets: Sequence[Bucket] = (),
    snapshot: Mapping[str, Any] | None = None,
    labels: tuple[str, str] = ("OLD", "NEW"),
    server: str | None = None,
) -> Report:
    """Every (name, type, client bucket) whose answer differs between ``old`` and
    ``new``, with before, after and why; ``snapshot`` gives both sides the services
    of their watched clusters (``Control.snapshot`` of the running instance)."""
    a = build_side(labels[0], old, snapshot)
    b = build_side(labels[1], new, snapshot)
    buckets = buckets_for(a, b, subnets)
    unplaced = next((bk for bk in buckets if bk.origin == UNPLACED), None)
    resolver = str(unplaced.network.network_address) if unplaced and unplaced.network else None
    a.resolver = b.resolver = resolver or _RESOLVER
    source = (a.resolver, 53)
    moves = locality_moves(a.localities, b.localities)
    same = Unchanged(a, b)
    changes: list[Change] = []
    asked = skipped = 0
    opts = {bk.label: opt_record(bk) for bk in (*buckets, ALL_CLIENTS)}
    answers: dict[bytes | None, Answer] = {}
    reasons: dict[ServiceKey, list[Reason]] = {}
    # DNS order (RFC 4034 6.1): a service's names together, under its zone.
    for k in sorted(set(_names(a)) | set(_names(b)), key=_name):
        if same.name(k):
            skipped += 1
            continue
        name = _name(k).to_text()
        routed = k in a.routed or k in b.routed
        for qtype in sorted(_types(a, k) | _types(b, k)):
            for bucket in buckets if routed else (ALL_CLIENTS,):
                opt = opts[bucket.label]
                wire = query(k, qtype, opt)
                r0 = a.table.respond(wire, True, source)
                r1 = b.table.respond(wire, True, source)
                asked += 1
                if r0 == r1 or _same_but_scope(r0, r1, len(opt)):
                    continue
                before, after = _read(answers, r0), _read(answers, r1)
                if before.key == after.key:
                    continue
                changes.append(_change(k, name, qtype, bucket, before, after, a, b, moves,
                                       reasons))
    return Report(
        labels[0], labels[1], server,
        [(bk, a.place(bk), b.place(bk)) for bk in buckets],
        changes, moves, _unevaluated(a, b, snapshot), _notes(a, b, snapshot), asked, skipped,
    )


class Unchanged:
    """Which names answer alike at both sides without asking them: a zone whose
    file data are equal, and whose federated services (if it is the federation
    zone) are all planned alike under equal routing; or a federated name whose
    service is planned alike, under equal routing, in a zone with equal data. Its
    answers are then made from equal inputs by the same code."""

    def __init__(self, a: Side, b: Side) -> None:
        self.a, self.b = a, b
        self.zones = {
            ok: _same_zone(a.table.zones.get(ok), b.table.zones.get(ok))
            for ok in a.table.zones.keys() | b.table.zones.keys()
        }
        self.routing = _routing(a) == _routing(b)
        self.services = {
            key for key in a.plans.keys() & b.plans.keys()
            if _as_answered(a.plans[key]) == _as_answered(b.plans[key])
        }
        self.fed_zones = {key_of(s.fed.zone) for s in (a, b) if s.fed is not None}
        self.federation = (
            self.routing and len(self.fed_zones) <= 1
            and a.plans.keys() == b.plans.keys() == self.services
        )

    def name(self, k: bytes) -> bool:
        ok = k
        while ok not in self.zones and len(ok) > 1:
            ok = ok[ok[0] + 1 :]
        if not self.zones.get(ok):
            return False
        ka, kb = self.a.owners.get(k), self.b.owners.get(k)
        if ka is None and kb is None:
            return ok not in self.fed_zones or self.federation
        in_file = any(k in z.data for s in (self.a, self.b) for z in s.table.zones.values())
        return ka == kb and ka in self.services and self.routing and not in_file


def _as_answered(p: ServicePlan) -> tuple[Any, ...]:
    """What of a plan its answers are made from (not, e.g., when each endpoint's
    health last changed, which only explain shows)."""
    return (p.zone, p.namespace, p.name, p.policy, p.ports, p.clusters, tuple(
        (c.cluster, c.region, c.zone, c.name, c.v4, c.v6, c.healthy, c.weight)
        for c in p.candidates))


def _routing(side: Side) -> tuple[Any, ...]:
    """What places clients and orders regions, as configured."""
    raw = side.cfg.federation if side.fed is not None else {}
    lm = side.localities
    mmdb = (lm.mmdb.path, sorted((raw.get("mmdb") or {}).get("regions", {}).items())) \
        if lm is not None and lm.mmdb is not None else None
    return (raw.get("localities"), raw.get("regions"), mmdb)


def _same_zone(za: Zone | None, zb: Zone | None) -> bool:
    """Whether two zones hold the same file data (federated names are not in ``data``)."""
    if za is None or zb is None or za.data.keys() != zb.data.keys():
        return False
    for k, ta in za.data.items():
        tb = zb.data[k]
        if isinstance(ta, Packed) or isinstance(tb, Packed):
            if not (isinstance(ta, Packed) and isinstance(tb, Packed) and ta.wire == tb.wire):
                return False
        elif ta != tb:
            return False
    return True


def _same_but_scope(r0: bytes | None, r1: bytes | None, opt_len: int) -> bool:
    """Replies that differ in their closing OPT record alone (the ECS SCOPE)."""
    if not r0 or not r1 or len(r0) != len(r1) or len(r0) < 12 + opt_len:
        return False
    cut = len(r0) - opt_len
    return r0[:cut] == r1[:cut] and r0[cut : cut + 3] == r1[cut : cut + 3] == b"\x00\x00\x29"


def _read(memo: dict[bytes | None, Answer], wire: bytes | None) -> Answer:
    hit = memo.get(wire)
    if hit is None:
        hit = memo[wire] = read_answer(wire)
    return hit


def _name(k: bytes) -> dns.name.Name:
    return dns.name.from_wire(k, 0)[0]


def _change(k: bytes, name: str, qtype: int, bucket: Bucket, before: Answer, after: Answer,
            a: Side, b: Side, moves: Sequence[Move],
            memo: dict[ServiceKey, list[Reason]]) -> Change:
    reasons: list[Reason] = []
    moved: list[str] = []
    key = a.owners.get(k) or b.owners.get(k)
    if key is not None:
        p0, p1 = a.plans.get(key), b.plans.get(key)
        if key not in memo:
            memo[key] = plan_reasons(key, p0, p1, a, b)
        reasons += memo[key]
        kinds: set[str] = {p.policy.kind for p in (p0, p1) if p is not None}
        if bucket.origin != "all" and p0 is not None and p1 is not None:
            more, moved = client_reasons(bucket, kinds, a, b, moves)
            reasons += more
    reasons += zone_reasons(k, name, qtype, a, b)
    if not reasons:
        reasons.append(Reason("other", "the answer differs though neither the plans, the "
                                       "records nor the client's placement do"))
    qt = dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))
    return Change(name, qt, bucket, (a.place(bucket), b.place(bucket)), before, after,
                  tuple(dict.fromkeys(reasons)), tuple(moved))


def _unevaluated(a: Side, b: Side, snapshot: Mapping[str, Any] | None) -> list[Unevaluated]:
    out: list[Unevaluated] = []
    for key in sorted(a.plans.keys() & b.plans.keys()):
        p0, p1 = a.probes.get(key), b.probes.get(key)
        if p0 != p1:
            out.append(Unevaluated(
                "probe", str(key),
                f"probe {_probe_text(p0)} -> {_probe_text(p1)}: which endpoints stay in answers "
                "then follows the probes' results, which only a running instance has",
            ))
    if snapshot is not None:
        for c in sorted(a.reach.keys() & b.reach.keys()):
            if a.reach[c] != b.reach[c]:
                out.append(Unevaluated(
                    "reach", f"cluster {c}",
                    f"reach {a.reach[c][0]} -> {b.reach[c][0]}: the snapshot holds the addresses "
                    "clients reach now (the reach was applied), not the pods behind them",
                ))
    e0 = a.fed.export if a.fed is not None else None
    e1 = b.fed.export if b.fed is not None else None
    watched = a.watched or b.watched
    if e0 != e1 and watched and e0 is not None and e1 is not None:
        if snapshot is None:
            out.append(Unevaluated(
                "export", "federation.export",
                "changed; it applies to the watched clusters "
                f"({', '.join(dict.fromkeys((*a.watched, *b.watched)))}), whose services are "
                "not in the files: give --server ADMIN_URL to diff what they publish",
            ))
        elif (e0.mode, e0.selector) != (e1.mode, e1.selector):
            out.append(Unevaluated(
                "export", "federation.export.mode",
                f"{e0.mode} -> {e1.mode}: the snapshot holds only what the running instance "
                "exports, without labels or ServiceExports",
            ))
        else:
            live = {str(s.get("namespace")) for s in snapshot.get("services") or []}
            named = _namespaces(e0) | _namespaces(e1)
            wider = sorted(ns for ns in live | named if e1.namespace_allowed(ns)
                           and not e0.namespace_allowed(ns))
            if wider or (e1.allow is None and e0.allow is not None):
                out.append(Unevaluated(
                    "export", "federation.export.namespaces",
                    "exports namespaces the running instance does not"
                    + (f" ({', '.join(wider)})" if wider else "")
                    + ": their services are not in its snapshot",
                ))
    return out


def _namespaces(e: Any) -> set[str]:
    return set(e.allow or ()) | set(e.deny)


def _probe_text(p: tuple[str, Any] | None) -> str:
    if p is None or p[1] is None:
        return "none"
    return f"{p[0]} {json.dumps(p[1], default=str)}"


def _notes(a: Side, b: Side, snapshot: Mapping[str, Any] | None) -> list[str]:
    out: list[str] = []
    watched = list(dict.fromkeys((*a.watched, *b.watched)))
    if watched and snapshot is None:
        out.append(
            f"clusters {', '.join(watched)} are watched through their API servers: their "
            "services are not in the files and not in this diff (give --server ADMIN_URL "
            "to use what a running instance has learned)"
        )
    if snapshot is not None:
        live = snapshot.get("clusters") or {}
        for c in watched:
            info = live.get(c)
            if info is None:
                out.append(f"cluster {c} is not one the running instance watches: none of its "
                           "services are in this diff")
            elif not info.get("synced"):
                out.append(f"cluster {c} has not synced in the running instance: its services "
                           "may be missing")
            elif info.get("stale"):
                out.append(f"cluster {c} is stale in the running instance: its services are "
                           "last-known data")
    for side in (a, b):
        lm = side.localities
        if lm is not None and lm.mmdb is not None:
            out.append(f"{side.label} places clients no rule covers with a MaxMind DB: only "
                       "the rules' placements are compared")
            break
    return out


def summarize(old: Loaded, new: Loaded, snapshot: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The diff in brief, for the reload log line: answers changed, counts per reason,
    the first names, moved subnets, what was not evaluated. ``old`` may be the
    instance serving (it is copied, not changed); ``snapshot`` its ``Control.snapshot``
    when it watches clusters.

    Cost: the demo config about 0.1 s. 1,000 static services (3 clusters x 3
    endpoints, 7 client buckets): about 2 s when nothing or one service changes
    (building and planning both sides), about 25 s when every answer changes (a
    new default TTL: 26,000 answers, each reply read at both sides)."""
    return compare(old, new, (), snapshot, ("running", "new")).summary()


# -- text ---------------------------------------------------------------------------


def _answer_text(ans: Answer, name: str) -> list[str]:
    if not ans.answer and not ans.authority:
        return [f"{ans.rcode} (nothing)"]
    if not ans.answer and all(" IN SOA " in line for line in ans.authority):
        ttl = ans.authority[0].split(" ")[1]
        return [f"{ans.rcode} ({'no such name' if ans.rcode == 'NXDOMAIN' else 'no records'}; "
                f"cached {ttl} s)"]
    lines = [ans.rcode]
    for line in (*ans.answer, *ans.authority):
        owner, _, rest = line.partition(" ")
        lines.append(rest if owner == name else line)
    return lines


def render_text(report: Report) -> str:
    s = report.summary()
    head = f"fedns diff {report.old} -> {report.new}"
    if report.server:
        head += f" (clusters' services from {report.server})"
    by = ", ".join(f"{k} {n}" for k, n in s["by_reason"].items()) or "none"
    later = s["not_evaluated"]
    head2 = f"{s['answers']} answers change ({by})"
    if later:
        head2 += f"; {sum(later.values())} changes not evaluated ("
        head2 += ", ".join(f"{k} {n}" for k, n in later.items()) + ")"
    out = [head, f"{head2}; {s['questions']} questions asked of each side, "
                 f"{s['unchanged_names']} names left out as unchanged"]
    if report.moves:
        out.append("")
        out.append("locality map: these client subnets move")
        out.extend(f"  {m.network}: {_loc_text(m.before)} -> {_loc_text(m.after)}"
                   for m in report.moves)
    groups: dict[tuple[Any, ...], list[Change]] = {}
    for c in report.changes:
        groups.setdefault((c.name, c.qtype, c.before.key, c.after.key, c.reasons), []).append(c)
    last = None
    for (name, qtype, *_), members in groups.items():
        if (name, qtype) != last:
            out.append("")
            out.append(f"{name} {qtype}")
            last = (name, qtype)
        first = members[0]
        clients = []
        for c in members:
            p0, p1 = c.placed
            where = str(p0) if p0 == p1 else f"{p0} -> {p1}"
            if c.bucket.origin == "all":
                clients.append(c.bucket.label)
            elif c.bucket.origin == UNPLACED:
                clients.append(f"{c.bucket.label} (as {c.bucket.ecs})")
            else:
                clients.append(f"{c.bucket.label} ({where})")
        out.append(f"  clients: {', '.join(clients)}")
        for label, ans in (("before", first.before), ("after", first.after)):
            lines = _answer_text(ans, name)
            if len(lines) == 2:
                lines = [f"{lines[0]} {lines[1]}"]
            out.append(f"    {label + ':':8}{lines[0]}")
            out.extend(f"            {line}" for line in lines[1:])
        for i, r in enumerate(first.reasons):
            out.append(f"    {'why:' if i == 0 else '':8}{r.kind}: {r.detail}")
    if report.unevaluated:
        out.append("")
        out.append("not evaluated (the effect needs live state)")
        out.extend(f"  {u.kind}: {u.subject}: {u.detail}" for u in report.unevaluated)
    if report.notes:
        out.append("")
        out.extend(f"note: {n}" for n in report.notes)
    return "\n".join(out)


__all__ = [
    "Bucket",
    "Change",
    "Loaded",
    "Move",
    "Reason",
    "Report",
    "build_side",
    "compare",
    "locality_moves",
    "parse_subnets",
    "render_text",
    "summarize",
]
