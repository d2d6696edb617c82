"""Precomputed wire answers and the per-query hot path.

A ``Table`` holds, for every name fedns is authoritative for, the response
bodies (everything after the question) already in wire form. Per query the
work is: parse header, question and OPT from the bytes, one dict lookup,
splice ID/flags, the question exactly as asked, the body, and the OPT record.

Bodies are built so that they do not depend on the letter case of the
question: the question is echoed from the query (0x20 case preserved), and
compression pointers into it stay valid because the name has the same length
in any case. Answers that depend on the asked name itself (NXDOMAIN, NODATA
below a wildcard, synthesized wildcard records, referrals from below a cut)
are *templates*: byte runs with gaps for a 2-byte pointer to a suffix of the
question, filled in per query. That keeps a random-subdomain flood as cheap
as a positive answer, with no per-name cache to blow up.

Tailored answers (federated names, EDNS Client Subnet) take the same path:
what a query's OPT record asks (payload, DO, the validated and placed ECS
subnet) is memoized by the record's bytes, and each router's answer with its
reply OPT record (the ECS echo with our SCOPE) per client subnet or source,
so the per-query work stays dict lookups and one join.

On top, whole UDP replies that depend on nothing but the query's bytes are
remembered by those bytes less the ID (``Table.replies``, as PowerDNS's packet
cache), and the UDP transport looks there first: a repeated question costs one
dict lookup and a copy. Negative answers below existing names are not put there
(a flood of new names would only churn it) but in ``Table.below``, per parent
and length of the new first label: a flood costs two lookups and an existence
check.

Federated names come by the hundred thousand (a name per endpoint and per
cluster of every service) and are kept compact in the zone (``zone.Lazy``):
their nodes are built when first asked for, so a full sync costs little more
than the registry itself.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dnslib import DNSBuffer, DNSLabel, DNSQuestion

from .ecs import PRIVACY_PREFIX, ClientSubnet, ecs_option, parse_ecs
from .federation import Router, ServicePlan, routers_for, static_records
from .locality import Placement
from .locator import Locator
from .wire import (
    AA,
    BADVERS,
    C_ANY,
    C_CH,
    C_IN,
    CD,
    DEFAULT_UDP_PAYLOAD,
    FORMERR,
    MIN_UDP_PAYLOAD,
    NOERROR,
    NOTIMP,
    OPT_ECS,
    QR,
    REFUSED,
    T_AXFR,
    T_IXFR,
    T_OPT,
    T_SOA,
    T_TXT,
    TC,
    FormErr,
    error_reply,
    header_only,
    opt_record,
    parse_query,
)
from .zone import WILDCARD, Lazy, Resolution, RRset, Zone, key_of, label_of, parent

_COUNTS = struct.Struct(">HHHH")
_PTR = struct.Struct(">H")
_RRFIXED = struct.Struct(">HHIH")

SECTION_ANSWER, SECTION_AUTHORITY, SECTION_ADDITIONAL = 0, 1, 2

# Question types the fast path leaves to the general one: refused or malformed there.
_NOT_FAST = frozenset((T_AXFR, T_IXFR, T_OPT))

_SUBNETS_MAX = 1 << 16  # distinct ECS options remembered per table; cleared whole when full
# Per-client results remembered by the routers (Router.memo), all of them
# together: past this many every router's memo is cleared. One bound for the
# table rather than one per router, so a popular service can remember as many
# client subnets as a resolver fleet sends (one placement each) while a
# thousand services cannot hold a thousand times that. The memo stays on the
# router, so a replaced router's entries go with it.
_ROUTES_MAX = 1 << 16
_EDNS_KEY_MAX = 96  # longer OPT records (padding, big cookies) are not memoized
# Whole UDP replies remembered by the query's bytes after its ID (Table.replies);
# cleared whole when full, and at every change of the table.
_REPLIES_MAX = 1 << 14
# Nodes of compact address-only names (Zone.lazy) built on first query and kept;
# past this many they are all dropped and built again as asked.
_LAZY_NODES_MAX = 1 << 16


@dataclass(slots=True)
class _Subnet:
    """One distinct ECS option of the queries (keyed by its raw data): validated
    and its reply OPT records built once, not per query."""

    cs: ClientSubnet
    # Placed by the subnet alone, whatever the packet's source (Locator.source_free):
    # then a router's answer for it can be remembered per subnet. None until a
    # router first places it (static answers never place the client).
    free: bool | None
    # The reply's OPT record (ECS echo with that SCOPE), without and with DO, per SCOPE.
    opts: dict[int, tuple[bytes, bytes]]


# What one OPT record asks for, as the fast path uses it: (UDP payload limit,
# DO bit, ECS option data, its _Subnet, the reply's OPT record for SCOPE 0).
_Edns = tuple[int, int, bytes | None, _Subnet | None, bytes]


class _FlatBuffer(DNSBuffer):
    """A dnslib buffer that never compresses: for bytes that move between packets."""

    def encode_name(self, name: Any) -> None:
        self.encode_name_nocompress(name)


@dataclass(frozen=True, slots=True)
class Cut:
    """Where a body may be cut to drop whole RRsets: byte offset and counts so far."""

    end: int
    an: int
    ns: int
    ar: int
    required: bool  # dropping this RRset means the reply is truncated (TC)


@dataclass(frozen=True, slots=True)
class Entry:
    """One precomputed response, less ID, question and OPT."""

    flags1: int  # QR | AA (| TC for pre-truncated variants)
    rcode: int
    counts: bytes  # QD, AN, NS, AR without OPT
    counts_opt: bytes  # same with AR + 1
    parts: tuple[bytes | int, ...]  # int n = pointer to the question's last n name bytes
    static: bytes | None  # the body when it has no pointer gaps
    size: int
    cuts: tuple[Cut, ...]
    # Flags and counts as sent, indexed by the query's RD bit | CD bit >> 3 | 4 with OPT.
    heads: tuple[bytes, ...] = ()
    _truncated: dict[int, Entry] = field(default_factory=dict, compare=False, repr=False)
    _bodies: dict[int, bytes] = field(default_factory=dict, compare=False, repr=False)

    def body(self, qname_len: int) -> bytes:
        if self.static is not None:
            return self.static
        # A template's bytes depend only on the length of the question's name,
        # so they are kept per length: at most 255 per entry, whatever the names.
        b = self._bodies.get(qname_len)
        if b is None:
            b = b"".join(
                p if isinstance(p, bytes) else _PTR.pack(0xC000 | (12 + qname_len - p))
                for p in self.parts
            )
            self._bodies[qname_len] = b
        return b

    def fit(self, budget: int) -> Entry:
        """The largest prefix of whole RRsets within ``budget`` bytes (RFC 2181 9)."""
        hit = self._truncated.get(budget)
        if hit is not None:
            return hit
        end = 0
        for c in self.cuts:
            if c.end > budget:
                break
            end = c.end
        tc = any(c.required for c in self.cuts if c.end > end)
        e = self.prefix(end, TC if tc else 0)
        if len(self._truncated) < 64:
            self._truncated[budget] = e
        return e

    def prefix(self, end: int, add_flags: int = 0, drop_flags: int = 0) -> Entry:
        """This entry cut after the RRset that ends at byte ``end`` of the body."""
        kept = tuple(c for c in self.cuts if c.end <= end)
        an, ns, ar = (kept[-1].an, kept[-1].ns, kept[-1].ar) if kept else (0, 0, 0)
        parts: list[bytes | int] = []
        pos = 0
        for p in self.parts:
            n = len(p) if isinstance(p, bytes) else 2
            if pos + n <= end:
                parts.append(p)
            elif pos < end and isinstance(p, bytes):
                parts.append(p[: end - pos])
            pos += n
        flags = (self.flags1 | add_flags) & ~drop_flags
        return _make_entry(flags, self.rcode, an, ns, ar, parts, kept)


def _make_entry(
    flags1: int,
    rcode: int,
    an: int,
    ns: int,
    ar: int,
    parts: list[bytes | int],
    cuts: tuple[Cut, ...],
) -> Entry:
    merged: list[bytes | int] = []
    for p in parts:
        if isinstance(p, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] = merged[-1] + p
        elif not (isinstance(p, bytes) and not p):
            merged.append(p)
    static = None
    if not merged:
        static = b""
    elif len(merged) == 1 and isinstance(merged[0], bytes):
        static = merged[0]
    size = sum(len(p) if isinstance(p, bytes) else 2 for p in merged)
    counts, counts_opt, heads = _header_bytes(flags1, rcode, an, ns, ar)
    return Entry(flags1, rcode, counts, counts_opt, tuple(merged), static, size, cuts, heads)


@functools.lru_cache(maxsize=4096)
def _header_bytes(
    flags1: int, rcode: int, an: int, ns: int, ar: int
) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    """Counts and heads of an entry, shared by every entry with the same ones
    (immutable bytes; some 500 bytes saved per entry, at 100k names and more)."""
    heads = tuple(
        bytes((flags1 | rd, cd | rcode)) + _COUNTS.pack(1, an, ns, ar + with_opt)
        for with_opt in (0, 1)
        for cd in (0, CD)
        for rd in (0, 1)
    )
    return _COUNTS.pack(1, an, ns, ar), _COUNTS.pack(1, an, ns, ar + 1), heads


def _sections(res: Resolution) -> list[tuple[int, RRset]]:
    return (
        [(SECTION_ANSWER, r) for r in res.answer]
        + [(SECTION_AUTHORITY, r) for r in res.authority]
        + [(SECTION_ADDITIONAL, r) for r in res.additional]
    )


def compile_exact(res: Resolution, qname: DNSLabel, qtype: int) -> Entry:
    """Bytes for a question whose name is exactly ``qname`` (any letter case)."""
    buf = DNSBuffer()
    buf.pack("!HHHHHH", 0, 0, 1, 0, 0, 0)
    DNSQuestion(qname, qtype).pack(buf)
    start = buf.offset
    cuts = []
    counts = [0, 0, 0]
    referral = not res.aa and bool(res.authority)
    for sec, rrset in _sections(res):
        for rr in rrset.rrs():
            rr.pack(buf)
        counts[sec] += len(rrset.rdatas)
        required = sec != SECTION_ADDITIONAL or referral
        cuts.append(Cut(buf.offset - start, counts[0], counts[1], counts[2], required))
    body = bytes(buf.data[start:])
    an, ns, ar = counts
    return _make_entry(_flags(res), res.rcode, an, ns, ar, [body], tuple(cuts))


def compile_template(res: Resolution, anchor: bytes, exact_owner: bytes | None) -> Entry:
    """Bytes for any question below ``anchor``.

    An owner equal to ``exact_owner`` (a wildcard) becomes a pointer to the
    whole question; an owner at or above ``anchor`` becomes a pointer to that
    suffix of the question; other names are written out in full.
    """
    parts: list[bytes | int] = []
    cuts = []
    counts = [0, 0, 0]
    pos = 0
    referral = not res.aa and bool(res.authority)
    for sec, rrset in _sections(res):
        okey = key_of(rrset.name)
        if exact_owner is not None and okey == exact_owner:
            owner: bytes | int = b"\xc0\x0c"
        elif anchor.endswith(okey) and _label_suffix(anchor, okey):
            owner = len(okey)
        else:
            owner = okey
        for rd in rrset.rdatas:
            fb = _FlatBuffer()
            rd.pack(fb)
            rdata = bytes(fb.data)
            parts.append(owner)
            parts.append(_RRFIXED.pack(rrset.rtype, C_IN, rrset.ttl, len(rdata)) + rdata)
            pos += (2 if isinstance(owner, int) else len(owner)) + 10 + len(rdata)
        counts[sec] += len(rrset.rdatas)
        required = sec != SECTION_ADDITIONAL or referral
        cuts.append(Cut(pos, counts[0], counts[1], counts[2], required))
    an, ns, ar = counts
    return _make_entry(_flags(res), res.rcode, an, ns, ar, parts, tuple(cuts))


def _label_suffix(key: bytes, suffix: bytes) -> bool:
    k = key
    while len(k) > len(suffix):
        k = parent(k)
    return k == suffix


def _flags(res: Resolution) -> int:
    return QR | (AA if res.aa else 0)


@dataclass
class Node:
    """Everything the hot path needs for one existing name (owner or empty non-terminal)."""

    zone: Zone
    key: bytes
    exact: dict[int, Entry]  # per qtype, filled eagerly for present types, lazily for CNAME chains
    default: Entry | None  # answer for any other qtype; None when it depends on qtype (CNAME)
    below: Entry | None  # answer for a nonexistent child: NXDOMAIN or referral template
    wildcard: bytes | None  # key of "*.<this name>" when a wildcard covers nonexistent children
    synth: dict[int, Entry] = field(default_factory=dict)  # wildcard answers per qtype
    router: Router | None = None  # set for names whose A/AAAA/SRV depend on the client

    def answer(self, qtype: int) -> Entry:
        e = self.exact.get(qtype)
        if e is not None:
            return e
        if self.default is not None:
            return self.default
        e = compile_exact(self.zone.resolve(self.key, qtype), label_of(self.key), qtype)
        if len(self.exact) < 1024:
            self.exact[qtype] = e
        return e

    def answer_below(self, qtype: int) -> Entry:
        if self.below is not None:
            return self.below
        e = self.synth.get(qtype)
        if e is None:
            assert self.wildcard is not None
            wkey = self.wildcard
            res = self.zone.resolve(wkey, qtype, label_of(wkey))
            e = compile_template(res, self.key, wkey)
            if len(self.synth) < 1024:
                self.synth[qtype] = e
        return e


def nx_template(zone: Zone) -> Entry:
    """NXDOMAIN below any name of ``zone`` without a wildcard child: the SOA's owner
    is a pointer to the question's zone suffix, so one template serves every name."""
    return compile_template(Resolution(3, True, (), (zone.negative_soa(),)), zone.okey, None)


def nodata_template(zone: Zone) -> Entry:
    """NODATA at any name of ``zone`` (no CNAME there): the same bytes as ``nx_template``
    with NOERROR, so one entry serves every name instead of one compile per name."""
    return compile_template(Resolution(0, True, (), (zone.negative_soa(),)), zone.okey, None)


def _same_resolution(a: Resolution, b: Resolution) -> bool:
    """The same sections of the same RRset objects: compiled, the same bytes."""
    return (
        a.rcode == b.rcode
        and a.aa == b.aa
        and all(
            len(x) == len(y) and all(r is q for r, q in zip(x, y, strict=True))
            for x, y in (
                (a.answer, b.answer),
                (a.authority, b.authority),
                (a.additional, b.additional),
            )
        )
    )


def build_node(
    zone: Zone,
    k: bytes,
    nx: Entry | None = None,
    nodata: Entry | None = None,
    routed: bool = False,
) -> Node:
    """Precompute one name's node (the name must be in ``zone.names``).

    ``nx``, ``nodata``: the zone's templates, when the caller builds many nodes.
    ``routed``: a name whose Router answers its A/AAAA/SRV: the other types
    (ANY, QCLASS=ANY, CNAME chains, NODATA) are compiled when first asked, as
    a federated service's records (hundreds of addresses, SRV targets with their
    addresses) would be compiled at every change for answers rarely asked."""
    types = zone.records(k) or {}
    qname = label_of(k)
    cut = zone.cut_above(k)
    exact: dict[int, Entry] = {}
    if cut is not None:
        referral = compile_exact(zone.resolve(k, 1), qname, 1)
        if cut == k:
            exact[43] = compile_exact(zone.resolve(k, 43), qname, 43)  # DS lives above the cut
        ref_below = compile_template(zone.resolve(cut, 1), k, None)
        return Node(zone, k, exact, referral, ref_below, None)
    done: list[tuple[Resolution, Entry]] = []
    for t in () if routed else (*types, 255):
        res = zone.resolve(k, t)
        # ANY answers with one RRset, often exactly what that type's query gets:
        # the entry (whose bytes do not depend on the question's type) is shared.
        e = next((e for r, e in done if _same_resolution(r, res)), None)
        if e is None:
            e = compile_exact(res, qname, t)
            done.append((res, e))
        exact[t] = e
    default = (
        None if 5 in types or routed else (nodata if nodata is not None else nodata_template(zone))
    )
    wkey = WILDCARD + k
    if wkey in zone.data:
        return Node(zone, k, exact, default, None, wkey)
    return Node(zone, k, exact, default, nx if nx is not None else nx_template(zone), None)


def build_nodes(zone: Zone) -> dict[bytes, Node]:
    """Precompute the nodes of one zone."""
    nx, nodata = nx_template(zone), nodata_template(zone)
    nodes = {k: build_node(zone, k, nx, nodata) for k in zone.names if k not in zone.lazy}
    assert zone.okey in nodes
    return nodes


def _chaos_entries(identity: str | None, version: str | None) -> dict[bytes, Entry]:
    from dnslib import RR, TXT

    out: dict[bytes, Entry] = {}
    for names, text in (
        (("version.bind.", "version.server."), version),
        (("id.server.", "hostname.bind."), identity),
    ):
        if text is None:
            continue
        for n in names:
            buf = DNSBuffer()
            buf.pack("!HHHHHH", 0, 0, 1, 0, 0, 0)
            DNSQuestion(n, T_TXT, C_CH).pack(buf)
            start = buf.offset
            RR(n, T_TXT, C_CH, 0, TXT(text)).pack(buf)
            body = bytes(buf.data[start:])
            out[key_of(n)] = _make_entry(
                QR, NOERROR, 1, 0, 0, [body], (Cut(len(body), 1, 0, 0, True),)
            )
    return out


WAIT = b""  # respond() result: ask again once the federation has synced (never sent)


class Table:
    """All answers for all zones, and the function that serves a query from them."""

    def __init__(
        self,
        zones: list[Zone],
        max_udp: int = DEFAULT_UDP_PAYLOAD,
        identity: str | None = None,
        version: str | None = None,
        locality: Locator | None = None,
    ) -> None:
        self.max_udp = max(MIN_UDP_PAYLOAD, min(max_udp, 65535))
        self.zones = {z.okey: z for z in zones}
        self.nodes: dict[bytes, Node] = {}
        for z in zones:
            self.nodes.update(build_nodes(z))
        self.chaos = _chaos_entries(identity, version)
        self.opt = opt_record(self.max_udp, False)
        self.opt_do = opt_record(self.max_udp, True)
        self.locator = locality if locality is not None else Locator()
        self._subnets: dict[bytes, _Subnet] = {}
        self._edns_memo: dict[bytes, _Edns] = {}
        self.plans: dict[tuple[str, str, str], ServicePlan] = {}
        # Federation zones whose clusters have not synced yet: a name that does
        # not exist there *yet* gets WAIT instead of NXDOMAIN, so startup does
        # not seed resolvers with negative answers (CoreDNS's kubernetes plugin
        # delays queries the same way). Cleared at first sync or after a bound.
        self.waiting: tuple[bytes, ...] = ()
        # Each plan's names, as a tuple: a set per plan costs ~8x the memory.
        self.plan_names: dict[tuple[str, str, str], tuple[bytes, ...]] = {}
        # Zones with compact names (Zone.lazy), their NXDOMAIN/NODATA templates,
        # and which nodes were built from compact names (dropped when too many).
        self._lazy_zones: tuple[tuple[Zone, Entry, Entry], ...] = ()
        self._lazy_built: set[bytes] = set()
        self._zone_templates: dict[bytes, tuple[Entry, Entry]] = {}
        # UDP replies less their ID, by the query's bytes after its ID, for the
        # answers that depend on nothing else (not on the packet's source): the
        # UDP transport looks here before calling ``respond`` at all. Resolvers
        # and clients ask the same few questions over and over (the same case,
        # flags and OPT record), so most queries cost one dict lookup.
        self.replies: dict[bytes, bytes] = {}
        # Negative (and wildcard, referral) UDP replies for a name that does not
        # exist below an existing one, by the query's bytes after its ID with the
        # first label cut out: (flags and counts, length of the query's OPT record,
        # length of the parent name, {first label's length: the reply's body and
        # OPT}). A random-subdomain flood asks for new names below the same few,
        # so the UDP transport answers it from here after one existence check
        # (``nodes``, ``lazy_names``), with the question echoed from the query.
        self.below: dict[bytes, tuple[bytes, int, int, dict[int, bytes]]] = {}
        self._below_bodies = 0  # bodies in ``below``, the bound it is cleared at
        self.lazy_names: tuple[dict[bytes, Lazy], ...] = ()
        # Routers with entries in their memo, and how many entries were added
        # since the last clear (replaced routers' too: they count until then).
        self._memoized: list[Router] = []
        self._memo_entries = 0

    # -- federation -----------------------------------------------------------

    def apply_plans(
        self, plans: Sequence[ServicePlan], removed: Sequence[tuple[str, str, str]] = ()
    ) -> int:
        """Publish changed services; rebuild only the names they touch. Returns names rebuilt."""
        self.replies.clear()
        self.below.clear()
        self._below_bodies = 0
        by_zone: dict[bytes, dict[bytes, dict[int, RRset] | Lazy | None]] = {}
        routers: dict[bytes, Router] = {}
        for ident in removed:
            self.plans.pop(ident, None)
            okey = key_of(ident[0])
            for k in self.plan_names.pop(ident, ()):
                by_zone.setdefault(okey, {})[k] = None
        for plan in plans:
            okey = key_of(plan.zone)
            if okey not in self.zones:
                continue
            changes = by_zone.setdefault(okey, {})
            records = static_records(plan)
            for k in self.plan_names.get(plan.ident, ()):
                if k not in records:
                    changes[k] = None
            plan_routers = routers_for(plan, self.locator.region_order, self._builder)
            zone = self.zones[okey]
            data, lazy = zone.data, zone.lazy
            for k, types in records.items():
                # A name whose records did not change keeps its node: rebuilding it
                # would give the same bytes. Without this a change to one endpoint
                # rebuilt every name of the service, and each cluster's first list
                # at startup every name of every service. Routed names always get
                # their new Router.
                old = lazy.get(k)
                if not isinstance(types, Lazy):
                    changed = True  # records given in full (tests build such a reference)
                elif old is None:
                    changed = types.exists() or k in data
                else:
                    changed = old != types
                if changed or k in changes or k in plan_routers:
                    changes[k] = types
            self.plans[plan.ident] = plan
            self.plan_names[plan.ident] = tuple(records)
            routers.update(plan_routers)
        rebuilt = 0
        for okey, changes in by_zone.items():
            zone = self.zones[okey]
            affected = zone.update(changes)
            zone.tailored = {
                k for k in zone.tailored | routers.keys() if k in zone.data or k in zone.lazy
            }
            # CNAME chains may lead into changed names: their cached answers go too.
            affected.update(zone.cnames)
            nodes = self.nodes
            nx, nodata = self._templates(zone)
            lazy = zone.lazy
            for k in affected:
                router = routers.get(k)
                if router is None and k not in changes and k in nodes:
                    router = nodes[k].router  # rebuilt as an ancestor: same service
                if k in lazy and router is None and WILDCARD + k not in zone.data:
                    # Built when asked for (``_lazy_node``). With a wildcard child it
                    # is built now: the fast path's walk up from a name below it
                    # must find it, as it skips the compact names it passes.
                    nodes.pop(k, None)
                    self._lazy_built.discard(k)
                elif k in zone.names:
                    node = build_node(zone, k, nx, nodata, router is not None)
                    node.router = router
                    nodes[k] = node
                else:
                    nodes.pop(k, None)
                rebuilt += 1
        self._lazy_zones = tuple((z, *self._templates(z)) for z in self.zones.values() if z.lazy)
        self.lazy_names = tuple(z.lazy for z, _, _ in self._lazy_zones)
        return rebuilt

    def _templates(self, zone: Zone) -> tuple[Entry, Entry]:
        """The zone's NXDOMAIN and NODATA templates: built once, as its apex (the SOA
        they hold) changes only with a new table."""
        t = self._zone_templates.get(zone.okey)
        if t is None:
            t = self._zone_templates[zone.okey] = (nx_template(zone), nodata_template(zone))
        return t

    def _clear_route_memos(self) -> None:
        memoized, self._memoized = self._memoized, []
        for r in memoized:
            r.memo.clear()
        self._memo_entries = 0

    def _lazy_node(self, lname: bytes) -> Node | None:
        """The node of a compact name (``Zone.lazy``), built now; None if there is none."""
        for zone, nx, nodata in self._lazy_zones:
            if lname in zone.lazy:
                if len(self._lazy_built) >= _LAZY_NODES_MAX:
                    # Swapped first: a thread answering meanwhile adds to the new set.
                    built, self._lazy_built = self._lazy_built, set()
                    for k in list(built):
                        self.nodes.pop(k, None)
                node = build_node(zone, lname, nx, nodata)
                self.nodes[lname] = node
                self._lazy_built.add(lname)
                return node
        return None

    def _builder(self, owner: str) -> Callable[[RRset | None, int], Entry]:
        qname = DNSLabel(owner)
        okey = key_of(owner)

        def build(rrset: RRset | None, qtype: int) -> Entry:
            node = self.nodes.get(okey)
            if rrset is None:
                zone = node.zone if node is not None else None
                soa = (zone.negative_soa(),) if zone is not None else ()
                return compile_exact(Resolution(NOERROR, True, (), soa), qname, qtype)
            return compile_exact(Resolution(NOERROR, True, (rrset,)), qname, qtype)

        return build

    # -- lookups --------------------------------------------------------------

    def find(self, lname: bytes, qtype: int) -> Entry | None:
        """The entry for a (lowercased wire name, type); None when not our zone."""
        node = self.nodes.get(lname) or self._lazy_node(lname)
        if node is not None:
            return node.answer(qtype)
        k = lname
        nodes = self.nodes
        while k != b"\x00":
            k = k[k[0] + 1 :]
            node = nodes.get(k)
            if node is None and self._lazy_zones:
                node = self._lazy_node(k)
            if node is not None:
                return node.answer_below(qtype)
        return None

    def respond(self, data: bytes, tcp: bool, addr: Any = None) -> bytes | None:
        """The reply to one query packet, or None to stay silent.

        The common query is answered here, read in place from its bytes:
        opcode QUERY, one question of class IN for a name in our zones, no
        answer or authority records, and no additional record or one OPT
        (version 0) with well-formed options, at most one of them ECS and that
        one valid. Everything else, every error among it, goes to ``general``
        (each ``return self.general(...)`` below), which builds a ``Query``
        and gives the same reply for what is handled here, only slower. The
        two are one function rather than two calls: a call is ~10 % of this.
        """
        n = len(data)
        if n < 17 or data[2] & 0xF8 or data[4:11] != b"\x00\x01\x00\x00\x00\x00\x00":
            # QR or an opcode set, or not one question and no records.
            return self.general(data, tcp, addr)
        z = data.find(0, 12)  # where the name ends, if its labels are well formed
        qend = z + 5
        if qend > n or qend <= 12 or data[z + 3] or data[z + 4] != C_IN:
            return self.general(data, tcp, addr)
        qtype = (data[z + 1] << 8) | data[z + 2]
        if qtype in _NOT_FAST:
            return self.general(data, tcp, addr)
        ar = data[11]
        if ar == 0:
            if qend != n:
                return self.general(data, tcp, addr)  # bytes after the question
            opt = b""
            limit = 65535 if tcp else MIN_UDP_PAYLOAD
            raw = sub = None
            do = 0
        elif ar == 1:
            # The OPT record is the rest of the packet. A resolver sends the same
            # few (one per client subnet), so what it asks is memoized by its bytes.
            rr = data[qend:]
            edns = self._edns_memo.get(rr)
            if edns is None:
                edns = self._edns(rr)
                if edns is None:
                    return self.general(data, tcp, addr)
                if len(rr) <= _EDNS_KEY_MAX:
                    if len(self._edns_memo) >= _SUBNETS_MAX:
                        self._edns_memo.clear()
                    self._edns_memo[rr] = edns
            limit, do, raw, sub, opt = edns
            if tcp:
                limit = 65535
        else:
            return self.general(data, tcp, addr)
        nodes = self.nodes
        lname = data[12 : z + 1].lower()
        node = nodes.get(lname)
        if node is None and self._lazy_zones:
            node = self._lazy_node(lname)
        below = False
        if node is not None:
            # Keys are well-formed names, so a hit proves these labels are.
            router = node.router
            hit = None
            remember = not tcp
            if router is not None:
                # The client's place comes from the ECS subnet alone, or with the
                # packet's source host, or (no ECS) from the host alone: the whole
                # result is remembered per router under exactly that key.
                key: tuple[Any, ...]
                if sub is None:
                    key = (qtype, None, addr[0] if isinstance(addr, tuple) else addr)
                elif sub.free:
                    key = (qtype, raw)
                else:  # placed with the source, or not placed yet
                    key = (qtype, raw, addr[0] if isinstance(addr, tuple) else addr)
                memo = router.memo
                hit = memo.get(key)
                if hit is None and router.handles(qtype):
                    cs = sub.cs if sub is not None else None
                    e, scope, placement = self._routed(router, qtype, cs, addr)
                    if sub is not None:
                        hit = (e, self._reply_opts(sub, scope))
                        if sub.free is None:
                            sub.free = Locator.source_free(sub.cs, placement)
                            if sub.free:
                                key = (qtype, raw)
                    else:
                        hit = (e, None)
                    if self._memo_entries >= _ROUTES_MAX or len(memo) >= _ROUTES_MAX:
                        self._clear_route_memos()
                        memo.clear()  # even if a race with the other thread left it out
                    if not memo:
                        self._memoized.append(router)
                    self._memo_entries += 1
                    memo[key] = hit
            if hit is not None:
                e, opts = hit
                if opts is not None:
                    opt = opts[do]
                remember = remember and sub is not None and sub.free is True
            else:
                e = node.exact.get(qtype) or node.answer(qtype)  # an Entry is always true
        else:
            # Not in ``replies``: a random-subdomain flood would only churn them.
            remember = False
            if z > 266 or self.waiting:
                # Longer than 255 octets; or maybe a name not synced yet.
                return self.general(data, tcp, addr)
            # Up to the closest existing ancestor, checking label lengths on the
            # way; the ancestor is a key, hence well formed: so is the whole name.
            k = lname
            while True:
                if len(k) < 2 or k[0] > 63:
                    return self.general(data, tcp, addr)  # not in our zones, or malformed
                k = k[k[0] + 1 :]
                node = nodes.get(k)
                if node is not None:
                    if node.wildcard is not None and self._lazy_zones:
                        # A compact name between it and the question would stop the wildcard.
                        return self.general(data, tcp, addr)
                    e = node.answer_below(qtype)
                    # In ``below`` when the parent exists (the answer depends on the
                    # question's length only, not on its first label).
                    below = not tcp and len(k) + lname[0] + 1 == len(lname)
                    break
        fixed = qend + len(opt)
        if fixed + e.size > limit:
            e = e.fit(limit - fixed)
            below = False
        body = e.static
        reply = b"".join(
            (
                data[:2],
                e.heads[(data[2] & 0x01) | ((data[3] & CD) >> 3) | (4 if opt else 0)],
                data[12:qend],
                e.body(z - 11) if body is None else body,
                opt,
            )
        )
        if remember:
            replies = self.replies
            if len(replies) >= _REPLIES_MAX:
                replies.clear()
            replies[data[2:]] = reply[2:]
        elif below:
            self._remember_below(data, reply, qend, z)
        return reply

    def _remember_below(self, data: bytes, reply: bytes, qend: int, z: int) -> None:
        first = data[12]
        key = data[2:12] + data[13 + first :]
        if self._below_bodies >= _REPLIES_MAX:
            # Up to 63 bodies per key: bounded by bodies, not keys (~100 bytes each).
            self.below.clear()
            self._below_bodies = 0
        hit = self.below.get(key)
        if hit is None:
            hit = self.below[key] = (reply[2:12], len(data) - qend, z - 12 - first, {})
        if first not in hit[3]:
            self._below_bodies += 1
        hit[3][first] = reply[qend:]

    def _edns(self, rr: bytes) -> _Edns | None:
        """What a query's OPT record (``rr``: the record, to the packet's end) asks
        for; None when it is not one the fast path handles: root owner, type
        OPT, version 0, options well formed, at most one ECS and that valid."""
        n = len(rr)
        if n < 11 or rr[:3] != b"\x00\x00\x29" or rr[6]:
            return None
        if 11 + ((rr[9] << 8) | rr[10]) != n:
            return None  # the OPT runs past the packet, or bytes follow it
        raw = None
        o = 11
        while o < n:
            if o + 4 > n:
                return None
            olen = (rr[o + 2] << 8) | rr[o + 3]
            if rr[o] == 0 and rr[o + 1] == OPT_ECS:
                if raw is not None:
                    return None  # a second ECS option: FORMERR, by the general path
                raw = rr[o + 4 : o + 4 + olen]
            o += 4 + olen
        if o != n:
            return None  # the last option runs past the OPT record
        do = rr[7] >> 7
        limit = max(MIN_UDP_PAYLOAD, min((rr[3] << 8) | rr[4], self.max_udp))
        if raw is None:
            return limit, do, None, None, self.opt_do if do else self.opt
        sub = self._subnets.get(raw) or self._subnet(raw)
        if sub is None:
            return None  # a malformed ECS option: FORMERR, by the general path
        # SCOPE 0, for every answer that does not depend on the client (RFC 7871 7.2.1).
        return limit, do, raw, sub, sub.opts[0][do]

    def _subnet(self, raw: bytes) -> _Subnet | None:
        """Validate and remember one ECS option; None when it is malformed."""
        try:
            cs = parse_ecs(raw)
        except FormErr:
            return None
        sub = _Subnet(cs, None, {})
        self._reply_opts(sub, 0)
        if len(self._subnets) >= _SUBNETS_MAX:
            self._subnets.clear()
        self._subnets[cs.raw] = sub
        return sub

    def _reply_opts(self, sub: _Subnet, scope: int) -> tuple[bytes, bytes]:
        """The reply's OPT record echoing ``sub`` with ``scope``: (without DO, with DO)."""
        pair = sub.opts.get(scope)
        if pair is None:
            cs = sub.cs
            ecs = ecs_option(cs.family, cs.source, scope, cs.addr_bytes)
            pair = (opt_record(self.max_udp, False, 0, ecs), opt_record(self.max_udp, True, 0, ecs))
            sub.opts[scope] = pair
        return pair

    def _routed(
        self, router: Router, qtype: int, subnet: ClientSubnet | None, addr: Any
    ) -> tuple[Entry, int, Placement | None]:
        """A router's answer for one client, the ECS SCOPE of the reply, and the placement."""
        client, placement = self.locator.client(subnet, addr)
        e, depends = router.answer(qtype, client)
        scope = 0
        if subnet is not None and placement is not None and depends != "nothing":
            scope = router.scope(placement, depends, self.locator.localities, qtype)
        elif subnet is not None and depends == "subnet":
            scope = min(subnet.source, PRIVACY_PREFIX[subnet.family])
        return e, scope, placement

    def general(self, data: bytes, tcp: bool, addr: Any = None) -> bytes | None:
        """The reply to any query packet (``respond`` without its fast path), or None."""
        if len(data) < 12 or data[2] & QR:
            return None
        try:
            q = parse_query(data)
        except FormErr:
            return header_only(data, FORMERR)
        except (IndexError, ValueError):
            return header_only(data, FORMERR)
        edns = q.edns
        subnet: ClientSubnet | None = None
        if edns is not None:
            if edns.version != 0:
                return error_reply(q, BADVERS, self.max_udp)  # RFC 6891 6.1.3
            limit = 65535 if tcp else max(MIN_UDP_PAYLOAD, min(edns.payload, self.max_udp))
            opt = self.opt_do if edns.do else self.opt
            if edns.ecs is not None:
                try:
                    subnet = parse_ecs(edns.ecs)
                except FormErr:
                    return error_reply(q, FORMERR, self.max_udp)  # RFC 7871 7.1.2
        else:
            limit = 65535 if tcp else MIN_UDP_PAYLOAD
            opt = b""
        if q.opcode != 0:
            # Sections of an unknown opcode need not be a question: echo none (as NSD).
            return error_reply(q, NOTIMP, self.max_udp, with_question=False)
        qtype = q.qtype
        scope = 0
        if q.qclass == C_IN:
            node = self.nodes.get(q.lname) or self._lazy_node(q.lname)
            if node is not None:
                router = node.router
                if router is not None and router.handles(qtype):
                    e, scope, _ = self._routed(router, qtype, subnet, addr)
                else:
                    e = node.answer(qtype)
            else:
                if self.waiting and q.lname.endswith(self.waiting):
                    return WAIT
                found = self.find(q.lname, qtype)
                if found is None:
                    return error_reply(q, REFUSED, self.max_udp)
                e = found
        elif q.qclass == C_ANY:
            found = self.find(q.lname, qtype)
            if found is None:
                return error_reply(q, REFUSED, self.max_udp)
            e = _class_any(found, len(q.question) - 4)
        elif q.qclass == C_CH and qtype == T_TXT and q.lname in self.chaos:
            e = self.chaos[q.lname]
        elif q.qclass == C_CH:
            return error_reply(q, REFUSED, self.max_udp)
        else:
            return error_reply(q, REFUSED, self.max_udp, with_question=False)
        if qtype in (T_AXFR, T_IXFR) or qtype == T_OPT:
            # Zone transfers are not offered; OPT is not a question type (RFC 6891 6.1.1).
            return error_reply(q, REFUSED if qtype != T_OPT else FORMERR, self.max_udp)
        if subnet is not None:
            assert edns is not None
            opt = opt_record(
                self.max_udp,
                edns.do,
                0,
                ecs_option(subnet.family, subnet.source, scope, subnet.addr_bytes),
            )
        question = q.question
        qname_len = len(question) - 4
        fixed = 12 + len(question) + len(opt)
        if fixed + e.size > limit:
            e = e.fit(limit - fixed)
        return b"".join(
            (
                data[0:2],
                bytes((e.flags1 | (q.flags1 & 0x01), (q.flags2 & CD) | e.rcode)),
                e.counts_opt if opt else e.counts,
                question,
                e.body(qname_len),
                opt,
            )
        )


def _class_any(e: Entry, qname_len: int) -> Entry:
    """QCLASS=ANY as NSD does: the IN answer without AA and without the SOA of negative answers.

    Referrals and additional records stay. A negative answer's SOA is its last
    RRset and the only one in authority, with nothing in additional.
    """
    last = e.cuts[-1] if e.cuts else None
    if last is not None and last.ns and not last.ar:
        start = e.cuts[-2].end if len(e.cuts) > 1 else 0
        body = e.body(qname_len)
        pos = start
        while body[pos] and body[pos] & 0xC0 != 0xC0:  # skip the owner name
            pos += body[pos] + 1
        pos += 2 if body[pos] else 1
        if (body[pos] << 8) | body[pos + 1] == T_SOA:
            return e.prefix(start, drop_flags=AA)
    return e.prefix(e.size, drop_flags=AA)
