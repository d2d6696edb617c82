"""Where a client is: CIDR locality rules, an optional MaxMind DB, region distances, and the
``Locator`` that turns a query's ECS option or source address into a routing ``Client``.

``LocalityMap`` maps a client subnet to a locality (region, zone) with the
longest matching rule (``federation.localities``), falling back to a MaxMind
DB (``federation.mmdb``) for addresses no rule covers. It runs per query.

**The ECS scope.** ``lookup`` returns a ``Match`` whose ``prefix_len`` is the
*widest* prefix around the address over which the locality is constant --
not the matched rule's length. With rules ``10.1.0.0/16 -> us-east`` and a
default ``0.0.0.0/0 -> eu-west``, a client in 10.9.0.0/24 is in eu-west and
so is everyone in 10.8.0.0/13, the widest block around it that does not
touch 10.1.0.0/16: the reply's SCOPE is 13 and one resolver cache entry
serves that whole /13. Two adjacent rules with the same locality merge the
same way. This is what gdnsd does (its "optimal" net tree merges equal
siblings), and what resolvers' caches need. The reply (answer, SCOPE) is then
exactly true for every client in ADDRESS/SCOPE. A SCOPE may be longer than
the query's SOURCE when a more specific rule lies inside the client's
prefix: the lookup uses the zero-padded ADDRESS, and RFC 7871 7.2.1 defines
that case ("the provided prefix length was not specific enough").

An answer often depends on less than the locality (a service that runs in
one region answers every client alike): ``scope_table(answer_key)`` widens
the scope to where the *answer* is constant, for an answer function given as
locality -> hashable key; ``ScopeTable.constant`` means SCOPE 0 everywhere.

**How it is built.** Per family the rules (and the special-purpose blocks of
RFC 7871 10, see ``ecs.py``) are expanded once into a partition of the whole
address space into aligned blocks that do not overlap, each with its deciding
rule and its precomputed ``Match``. A lookup is one ``bisect`` over the block
starts and a list index. Two designs timed with timeit (Python 3.11, this
machine; 12 rules, 98 IPv4 blocks): bisect over the partition 0.23 us per
lookup for any address; a dict per distinct rule prefix length probed
longest first 0.14 us when the first probe (/24) hits, 0.30 us when only the
default /0 matches after four misses -- and it yields only the rule, so the
widened scope would need a second structure per query. Bisect stays: flat
cost, scope included. It grows with log2(blocks): 20k random /24 rules make
192k blocks, built in 0.9 s, looked up in 0.36 us. So the bisect runs over one
slice of the blocks (``_Partition.block``: the top bits of the address pick
it, about one block per slice), which keeps its cost flat: 100,000 rules
(752,888 blocks) cost what 10 do. ``place`` memoizes whole placements per ECS
option and per source host: 0.08 us on a hit; ``block_of`` is the lookup
alone, for the answer table's per-bucket replies (no memo to churn).

Rules longer than /24 (IPv4) or /56 (IPv6) are refused at load: fedns never
uses more of a client address than that (RFC 7871 11.1), so they could not
match as written.

**Regions.** ``RegionGraph.order(region)`` gives that region, then the
regions it explicitly prefers (``federation.regions[].prefer``, in order),
then the rest by great-circle distance from its coordinates (then by config
order). Explicit preference wins over distance.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ConfigError, Reader
from ..dns.ecs import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    MAX_SOURCE,
    PRIVACY_PREFIX,
    SPECIAL_BLOCKS,
    ClientSubnet,
    clamp,
    mask,
)
from .policy import Client

_MEMO_MAX = 1 << 16

# See ``LocalityMap.lpm`` (and ``entries.Router.lpm_for``).
Lpm = tuple[list[int], list[int], int, list[int]]


@dataclass(frozen=True, slots=True)
class Locality:
    region: str | None
    zone: str | None


UNKNOWN = Locality(None, None)


@dataclass(frozen=True, slots=True)
class Rule:
    """One ``federation.localities`` entry."""

    family: int  # 1 = IPv4, 2 = IPv6 (ECS FAMILY numbers)
    network: int
    prefix_len: int
    region: str
    zone: str | None
    index: int  # position in federation.localities
    text: str  # the CIDR as configured


@dataclass(frozen=True, slots=True)
class Match:
    """The locality of one address, and how far it extends."""

    region: str | None
    zone: str | None
    prefix_len: int  # widest prefix around the address with this locality: the ECS SCOPE
    rule_id: int  # index in federation.localities; -1 when no rule decided
    family: int
    network: int  # network of the scope block (address masked to prefix_len)
    via: str  # "rule" | "mmdb" | "none"
    block: int  # index of the address's partition block (ScopeTable key)
    note: str = ""  # for explain: the MaxMind record used, when via == "mmdb"

    @property
    def cidr(self) -> str:
        return _cidr(self.family, self.network, self.prefix_len)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where one query's client is, from its ECS option or the packet's source.

    ``scope`` is the ECS SCOPE for an answer that depends on the locality,
    ``subnet_scope`` for one that depends on the client subnet itself (weighted
    stickiness); answers that depend on nothing get SCOPE 0 (the caller knows).
    """

    match: Match
    basis: str  # "ecs" | "source" | "ecs-opt-out" | "ecs-private" | "unknown"
    family: int
    value: int  # the subnet that was looked up (privacy-clamped, masked)
    bits: int
    scope: int
    subnet_scope: int
    subnet_key: bytes  # family, bits, address bytes: stable per client subnet
    note: str = ""

    @property
    def region(self) -> str | None:
        return self.match.region

    @property
    def zone(self) -> str | None:
        return self.match.zone

    def explain(self) -> dict[str, Any]:
        m = self.match
        rule = None
        if m.via == "rule":
            rule = m.rule_id
        return {
            "from": self.basis,
            "subnet": _cidr(self.family, self.value, self.bits) if self.family else None,
            "region": m.region,
            "zone": m.zone,
            "via": m.via,
            "rule": rule,
            "same_locality_block": m.cidr,
            "scope": self.scope,
            "subnet_scope": self.subnet_scope,
            "note": self.note or m.note,
        }


def subnet_key(family: int, bits: int, value: int) -> bytes:
    return bytes((family, bits)) + value.to_bytes(MAX_SOURCE[family] // 8, "big")


def _cidr(family: int, value: int, bits: int) -> str:
    if family == FAMILY_IPV4:
        return f"{ipaddress.IPv4Address(value)}/{bits}"
    return f"{ipaddress.IPv6Address(value)}/{bits}"


@dataclass(frozen=True, slots=True)
class _Fallback:
    """An ECS subnet in unmapped special-purpose space: place by the source instead."""

    scope: int
    note: str


@dataclass
class _Partition:
    family: int
    width: int
    clamp: int
    starts: list[int]
    lens: list[int]
    rules: list[int]  # deciding rule (index into LocalityMap.rules), -1 = none
    specials: list[int]  # index into ecs.SPECIAL_BLOCKS, -1 = none
    matches: list[Match] = field(default_factory=list)
    fallback: list[_Fallback | None] = field(default_factory=list)
    # Per block: whether an ECS subnet in it is placed by its own address and gets
    # the block's Match (no fallback to the source, no MaxMind DB inside): then
    # every subnet of the block is one client for a locality answer (``block_of``).
    free: list[bool] = field(default_factory=list)
    # The first block of every aligned slice of the space (the top ``top_bits`` of an
    # address pick the slice, ``index[k]:index[k + 1]`` its blocks, the one before
    # ``index[k]`` reaching into it): a lookup bisects one slice, not the whole list.
    top_bits: int = 0
    slice_shift: int = 0  # width - top_bits
    index: list[int] = field(default_factory=list)

    def block(self, v: int) -> int:
        """The block that holds the address ``v``."""
        k = v >> self.slice_shift
        return bisect_right(self.starts, v, self.index[k], self.index[k + 1]) - 1


def _split(width: int, items: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Aligned blocks covering the space: (start, prefix_len, rule, special).

    ``items`` are (network, prefix_len, kind, index) with kind 0 = rule,
    1 = special block. A block ends where no item lies strictly inside it.
    """
    out: list[tuple[int, int, int, int]] = []

    def rec(
        net: int, plen: int, its: list[tuple[int, int, int, int]], rule: int, spec: int
    ) -> None:
        deeper = []
        for it in its:
            if it[1] == plen:
                if it[2] == 0:
                    rule = it[3]
                else:
                    spec = it[3]
            else:
                deeper.append(it)
        if not deeper:
            out.append((net, plen, rule, spec))
            return
        bit = 1 << (width - plen - 1)
        rec(net, plen + 1, [it for it in deeper if not it[0] & bit], rule, spec)
        rec(net | bit, plen + 1, [it for it in deeper if it[0] & bit], rule, spec)

    rec(0, 0, items, -1, -1)
    return out


_MIXED = object()


def _coarsen(
    width: int, starts: Sequence[int], lens: Sequence[int], keys: Sequence[Any]
) -> list[int]:
    """Per block: the shortest prefix containing it whose blocks all share its key."""
    n = len(starts)
    out = [0] * n

    def rec(i: int, j: int, net: int, plen: int) -> Any:
        if j - i == 1 and lens[i] == plen:
            return keys[i]
        bit = 1 << (width - plen - 1)
        k = bisect_left(starts, net | bit, i, j)
        a = rec(i, k, net, plen + 1)
        b = rec(k, j, net | bit, plen + 1)
        if a is not _MIXED and b is not _MIXED and a == b:
            return a
        if a is not _MIXED:
            out[i:k] = [plen + 1] * (k - i)
        if b is not _MIXED:
            out[k:j] = [plen + 1] * (j - k)
        return _MIXED

    rec(0, n, 0, 0)  # uniform everywhere: every block keeps scope 0
    return out


class MmdbSource:
    """A MaxMind DB (GeoIP2/GeoLite2 Country or City) mapped to regions.

    ``regions`` maps an ISO country code (``DE``) or a continent code
    (``EU``) to a region; ``country:XX`` / ``continent:XX`` say which when a
    code is both (AF, AS, NA, SA are countries and continents). The country
    is tried first, then the continent.
    """

    def __init__(self, path: Path, regions: Mapping[str, str]) -> None:
        import maxminddb

        self.path = Path(path)
        self.reader = maxminddb.open_database(str(self.path))
        self.countries: dict[str, str] = {}
        self.continents: dict[str, str] = {}
        for code, region in regions.items():
            c = code.strip()
            if c.lower().startswith("continent:"):
                self.continents[c[10:].upper()] = region
            elif c.lower().startswith("country:"):
                self.countries[c[8:].upper()] = region
            else:
                self.countries.setdefault(c.upper(), region)
                self.continents.setdefault(c.upper(), region)

    def regions(self) -> list[str]:
        return list(dict.fromkeys([*self.countries.values(), *self.continents.values()]))

    def lookup(self, family: int, value: int) -> tuple[str | None, int, str]:
        """(region or None, prefix length of the DB network, what decided)."""
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address
        ip = ipaddress.IPv4Address(value) if family == FAMILY_IPV4 else ipaddress.IPv6Address(value)
        try:
            rec, plen = self.reader.get_with_prefix_len(ip)
        except ValueError:  # an IPv6 address in an IPv4-only database
            return None, 0, "not in the MaxMind DB"
        if not isinstance(rec, dict):
            return None, int(plen), "not in the MaxMind DB"
        country = _code(rec, "country", "iso_code") or _code(rec, "registered_country", "iso_code")
        continent = _code(rec, "continent", "code")
        if country and country in self.countries:
            return self.countries[country], int(plen), f"MaxMind country {country}"
        if continent and continent in self.continents:
            return self.continents[continent], int(plen), f"MaxMind continent {continent}"
        return None, int(plen), f"MaxMind {country or '-'}/{continent or '-'}: no region mapped"

    def close(self) -> None:
        self.reader.close()


def _code(rec: Mapping[str, Any], key: str, sub: str) -> str | None:
    v = rec.get(key)
    if isinstance(v, Mapping):
        c = v.get(sub)
        if isinstance(c, str):
            return c.upper()
    return None


class LocalityMap:
    """Longest-prefix locality rules for IPv4 and IPv6 (see the module docstring)."""

    def __init__(self, rules: Sequence[Rule] = (), mmdb: MmdbSource | None = None) -> None:
        self.rules = tuple(rules)
        self.mmdb = mmdb
        locs: dict[Locality, int] = {UNKNOWN: 0}
        for r in self.rules:
            locs.setdefault(Locality(r.region, r.zone), len(locs))
        if mmdb is not None:
            for region in mmdb.regions():
                locs.setdefault(Locality(region, None), len(locs))
        self.localities: tuple[Locality, ...] = tuple(locs)
        self._loc_id = locs
        self._parts = {f: self._build(f) for f in (FAMILY_IPV4, FAMILY_IPV6)}
        self._v4 = self._parts[FAMILY_IPV4]
        self._v6 = self._parts[FAMILY_IPV6]
        # Per family, per block: the id of its locality (index in ``localities``).
        self.block_locality = {
            f: [locs[self._loc_of_block(p, i)] for i in range(len(p.starts))]
            for f, p in self._parts.items()
        }
        self._mmdb_memo: dict[tuple[int, int], Match] = {}
        self._ecs_memo: dict[Any, Placement | _Fallback] = {}
        self._src_memo: dict[Any, Placement] = {}
        self._mixed_memo: dict[Any, Placement] = {}
        self._tables: dict[tuple[Hashable, ...], ScopeTable] = {}
        self.unknown = Match(None, None, 0, -1, FAMILY_IPV4, 0, "none", -1)

    @classmethod
    def from_rules(
        cls, rules: Sequence[tuple[str, str, str | None]], mmdb: MmdbSource | None = None
    ) -> LocalityMap:
        """A map from (cidr, region, zone) triples; ValueError on a bad CIDR."""
        out = []
        for i, (cidr, region, zone) in enumerate(rules):
            n = ipaddress.ip_network(cidr)
            fam = FAMILY_IPV4 if n.version == 4 else FAMILY_IPV6
            out.append(Rule(fam, int(n.network_address), n.prefixlen, region, zone, i, cidr))
        return cls(out, mmdb)

    # -- construction -----------------------------------------------------------

    def _build(self, family: int) -> _Partition:
        width = MAX_SOURCE[family]
        clamp = PRIVACY_PREFIX[family]
        items = [
            (r.network, r.prefix_len, 0, i) for i, r in enumerate(self.rules) if r.family == family
        ]
        items += [
            (net, plen, 1, i)
            for i, (fam, net, plen, _t) in enumerate(SPECIAL_BLOCKS)
            if fam == family and plen <= clamp  # longer ones can never hold a clamped subnet
        ]
        blocks = _split(width, items)
        p = _Partition(
            family,
            width,
            clamp,
            [b[0] for b in blocks],
            [b[1] for b in blocks],
            [b[2] for b in blocks],
            [b[3] for b in blocks],
        )
        keys = [self._block_key(p, i, self._loc_of_block(p, i)) for i in range(len(blocks))]
        scopes = _coarsen(width, p.starts, p.lens, keys)
        for i in range(len(blocks)):
            loc = self._loc_of_block(p, i)
            r = p.rules[i]
            sc = scopes[i]
            net = (p.starts[i] >> (width - sc)) << (width - sc) if sc else 0
            p.matches.append(
                Match(
                    loc.region,
                    loc.zone,
                    sc,
                    self.rules[r].index if r >= 0 else -1,
                    family,
                    net,
                    "rule" if r >= 0 else "none",
                    i,
                )
            )
            s = p.specials[i]
            fb = None
            if s >= 0 and not self._honoured(p, i):
                text = SPECIAL_BLOCKS[s][3]
                fb = _Fallback(
                    sc,
                    f"ECS address in {text}, which no locality rule maps: placed by the "
                    "query's source address instead (RFC 7871 section 10)",
                )
            p.fallback.append(fb)
            p.free.append(fb is None and (r >= 0 or self.mmdb is None))
        # About as many slices as blocks (at most 2**16): a slice holds a few blocks
        # on average, so a lookup costs about the same at 10 rules as at 100,000
        # (timeit, 100,000 random /24 rules, 752,888 blocks: one bisect over all of
        # them 653 ns, over its slice ~130 ns; 10 rules: ~115 ns either way).
        p.top_bits = min(16, max(1, len(blocks).bit_length()))
        shift = p.slice_shift = width - p.top_bits
        p.index = [bisect_left(p.starts, k << shift) for k in range(1 << p.top_bits)]
        p.index.append(len(p.starts))
        return p

    def _loc_of_block(self, p: _Partition, i: int) -> Locality:
        r = p.rules[i]
        return Locality(self.rules[r].region, self.rules[r].zone) if r >= 0 else UNKNOWN

    def _honoured(self, p: _Partition, i: int) -> bool:
        """May an ECS address in block i be used? Not in special space that no
        rule *inside* that space maps (RFC 7871 10)."""
        s = p.specials[i]
        if s < 0:
            return True
        r = p.rules[i]
        return r >= 0 and self.rules[r].prefix_len >= SPECIAL_BLOCKS[s][2]

    def _block_key(self, p: _Partition, i: int, key: Hashable) -> Hashable:
        """What must be equal for two blocks to share a SCOPE, given the
        answer-level ``key`` of the block's locality."""
        if not self._honoured(p, i):
            return ("fallback", p.specials[i])  # the answer follows the resolver's address
        if p.rules[i] < 0 and self.mmdb is not None:
            return ("mmdb", i)  # varies inside the block: never merged
        return ("k", key)

    # -- per query ----------------------------------------------------------------

    def lookup(self, family: int, value: int, max_prefix: int) -> Match:
        """The locality of ``value`` using at most ``max_prefix`` bits (and never
        more than the privacy clamp). ``Match.prefix_len`` is the ECS SCOPE."""
        p = self._v4 if family == FAMILY_IPV4 else self._v6
        bits = max_prefix if max_prefix < p.clamp else p.clamp
        shift = p.width - bits
        v = (value >> shift) << shift if bits else 0
        i = p.block(v)
        m = p.matches[i]
        if m.rule_id < 0 and self.mmdb is not None:
            return self._mmdb_match(p, i, v, bits)
        return m

    def _mmdb_match(self, p: _Partition, i: int, v: int, bits: int) -> Match:
        key = (p.family, v)
        hit = self._mmdb_memo.get(key)
        if hit is not None:
            return hit
        assert self.mmdb is not None
        region, plen, note = self.mmdb.lookup(p.family, v)
        # The answer is constant over the DB's network and over our rule-free
        # block; the narrower of the two holds both. Never beyond what we use.
        sc = min(max(plen, p.lens[i]), p.clamp)
        net = (v >> (p.width - sc)) << (p.width - sc) if sc else 0
        loc = Locality(region, None) if region else UNKNOWN
        m = Match(
            loc.region,
            loc.zone,
            sc,
            -1,
            p.family,
            net,
            "mmdb" if region else "none",
            i,
            note,
        )
        if len(self._mmdb_memo) >= _MEMO_MAX:
            self._mmdb_memo.clear()
        self._mmdb_memo[key] = m
        return m

    def place(self, subnet: ClientSubnet | None, addr: Any) -> Placement:
        """Where the client of one query is: its ECS option, else the packet's
        source (``addr`` as the transport gives it: (host, port, ...), a host
        string, or None). Memoized per ECS option and per source host."""
        if subnet is not None and subnet.source:
            key: Any = subnet.raw or subnet
            hit = self._ecs_memo.get(key)
            if hit is None:
                hit = self._place_ecs(subnet)
                if len(self._ecs_memo) >= _MEMO_MAX:
                    self._ecs_memo.clear()
                self._ecs_memo[key] = hit
            if isinstance(hit, Placement):
                return hit
            return self._mixed(key, hit, addr, "ecs-private")
        if subnet is not None:  # SOURCE PREFIX-LENGTH 0: opted out (RFC 7871 7.1.2)
            return self._mixed(
                b"",
                _Fallback(0, "ECS SOURCE PREFIX-LENGTH 0: placed by the query's source address"),
                addr,
                "ecs-opt-out",
            )
        host = addr[0] if isinstance(addr, tuple) else addr
        hit2 = self._src_memo.get(host)
        if hit2 is None:
            hit2 = self._place_source(host)
            if len(self._src_memo) >= _MEMO_MAX:
                self._src_memo.clear()
            self._src_memo[host] = hit2
        return hit2

    def _place_ecs(self, subnet: ClientSubnet) -> Placement | _Fallback:
        fam = subnet.family
        p = self._v4 if fam == FAMILY_IPV4 else self._v6
        bits = min(subnet.source, p.clamp)
        shift = p.width - bits
        v = (subnet.network_int >> shift) << shift
        i = p.block(v)
        fb = p.fallback[i]
        if fb is not None:
            return fb
        m = self.lookup(fam, v, bits)
        return Placement(m, "ecs", fam, v, bits, m.prefix_len, bits, subnet_key(fam, bits, v))

    def block_of(self, family: int, addr: bytes, source: int) -> int | None:
        """The partition block of a valid ECS subnet (FAMILY, ADDRESS as sent,
        SOURCE > 0) when ``place`` puts every subnet of that block in the same
        place, with the same Match (see ``_Partition.free``); else None. The
        lookup the answer table makes in its own code with ``lpm``'s lists, as
        a method (for tests and tools). Blocks are numbered per family."""
        p = self._v4 if family == FAMILY_IPV4 else self._v6
        v = int.from_bytes(addr, "big") << (p.width - 8 * len(addr))
        if source > p.clamp:  # never more of the address than the privacy clamp
            v = (v >> (p.width - p.clamp)) << (p.width - p.clamp)
        index = p.index  # ``p.block(v)``, inlined: this runs per query
        k = v >> p.slice_shift
        i = bisect_right(p.starts, v, index[k], index[k + 1]) - 1
        return i if p.free[i] else None

    def lpm(self, table: ScopeTable, family: int) -> Lpm:
        """What the answer table needs to find, in its own code, the bucket of an ECS
        subnet of ``family`` for an answer whose SCOPEs are ``table``: (block starts,
        slice index, slice shift, bucket per block). The bucket is -1 where the
        block is not ``free``, else the block's locality and SCOPE as one int
        (0 everywhere for a constant answer): all that the answer and the reply's
        SCOPE depend on, so subnets of many blocks share a bucket. Shared by the
        routers whose answers have the same SCOPEs."""
        p = self._parts[family]
        ids = table.ids.get(family)
        if ids is None:
            locs = self.block_locality[family]
            scopes = table.per_family[family]
            ids = table.ids[family] = [
                -1 if not free else 0 if table.constant else (loc << 8) | sc
                for free, loc, sc in zip(p.free, locs, scopes, strict=True)
            ]
        return p.starts, p.index, p.slice_shift, ids

    def _mixed(self, key: Any, fb: _Fallback, addr: Any, basis: str) -> Placement:
        host = addr[0] if isinstance(addr, tuple) else addr
        mk = (key, host)
        hit = self._mixed_memo.get(mk)
        if hit is None:
            src = self._place_source(host)
            hit = Placement(
                src.match,
                basis,
                src.family,
                src.value,
                src.bits,
                fb.scope,
                fb.scope,
                src.subnet_key,
                fb.note,
            )
            if len(self._mixed_memo) >= _MEMO_MAX:
                self._mixed_memo.clear()
            self._mixed_memo[mk] = hit
        return hit

    def _place_source(self, host: Any) -> Placement:
        parsed = parse_host(host) if isinstance(host, str) else None
        if parsed is None:
            return Placement(self.unknown, "unknown", 0, 0, 0, 0, 0, b"", "no source address")
        fam, value = parsed
        p = self._v4 if fam == FAMILY_IPV4 else self._v6
        shift = p.width - p.clamp
        v = (value >> shift) << shift
        m = self.lookup(fam, v, p.clamp)
        return Placement(
            m, "source", fam, v, p.clamp, m.prefix_len, p.clamp, subnet_key(fam, p.clamp, v)
        )

    # -- answer-level scope ----------------------------------------------------------

    def scope_table(self, answer_key: Callable[[Locality], Hashable]) -> ScopeTable:
        """Scopes widened to where ``answer_key(locality)`` is constant.

        Build it when an answer function changes (not per query); tables are
        shared between answer functions with the same keys per locality.
        """
        sig = tuple(answer_key(loc) for loc in self.localities)
        hit = self._tables.get(sig)
        if hit is not None:
            return hit
        constant = all(k == sig[0] for k in sig)
        per_family: dict[int, list[int]] = {}
        for fam, p in self._parts.items():
            if constant:
                per_family[fam] = [0] * len(p.starts)
                continue
            keys = [
                self._block_key(p, i, sig[self._loc_id[self._loc_of_block(p, i)]])
                for i in range(len(p.starts))
            ]
            per_family[fam] = _coarsen(p.width, p.starts, p.lens, keys)
        t = ScopeTable(constant, per_family)
        if len(self._tables) < 4096:
            self._tables[sig] = t
        return t

    def widest_equivalent(self, match: Match, answer_key: Callable[[Locality], Hashable]) -> int:
        """The SCOPE for ``match`` when the answer is ``answer_key(locality)``
        (convenience over ``scope_table``; not for the per-query path)."""
        return self.scope_table(answer_key).scope_of(match)

    # -- explain ------------------------------------------------------------------------

    def describe(self, key: bytes) -> dict[str, Any]:
        """The rule a ``subnet_key`` matched, for the explain API."""
        if len(key) < 2 or key[0] not in MAX_SOURCE:
            return {"rule": None}
        fam, bits = key[0], key[1]
        m = self.lookup(fam, int.from_bytes(key[2:], "big"), bits)
        out: dict[str, Any] = {
            "rule": None,
            "region": m.region,
            "zone": m.zone,
            "via": m.via,
            "same_locality_block": m.cidr,
        }
        if m.rule_id >= 0:
            r = next(r for r in self.rules if r.index == m.rule_id)
            out["rule"] = {"index": r.index, "cidr": r.text, "region": r.region, "zone": r.zone}
        if m.note:
            out["note"] = m.note
        return out

    def blocks(self, family: int) -> list[tuple[str, Match]]:
        """Every partition block with its match (for debugging and tests)."""
        p = self._parts[family]
        return [
            (_cidr(family, s, n), m) for s, n, m in zip(p.starts, p.lens, p.matches, strict=True)
        ]


@dataclass(frozen=True, slots=True)
class ScopeTable:
    """Per partition block, the SCOPE for one answer function."""

    constant: bool  # the answer is the same for every locality: SCOPE 0
    per_family: Mapping[int, Sequence[int]]
    # Per family, per block: the bucket of the answer table's replies (``LocalityMap.lpm``).
    ids: dict[int, list[int]] = field(default_factory=dict, compare=False, repr=False)

    def scope_of(self, match: Match) -> int:
        if self.constant:
            return 0
        if match.via == "mmdb" or match.block < 0:
            return match.prefix_len
        return self.per_family[match.family][match.block]

    def scope(self, placement: Placement) -> int:
        """The SCOPE for a reply to ``placement`` (only meaningful with ECS)."""
        if self.constant or placement.basis == "ecs-opt-out":
            return 0
        if placement.basis != "ecs":
            return placement.scope
        return self.scope_of(placement.match)


_HOSTS: dict[str, tuple[int, int] | None] = {}


def parse_host(host: str) -> tuple[int, int] | None:
    """(ECS family, address as int) of a textual address; IPv4-mapped IPv6
    (a dual-stack socket's view of an IPv4 client) becomes IPv4."""
    hit = _HOSTS.get(host, False)
    if hit is not False:
        return hit  # type: ignore[return-value]
    out: tuple[int, int] | None
    try:
        out = (FAMILY_IPV4, int.from_bytes(socket.inet_pton(socket.AF_INET, host), "big"))
    except OSError:
        try:
            v = int.from_bytes(socket.inet_pton(socket.AF_INET6, host.split("%", 1)[0]), "big")
        except OSError:
            out = None
        else:
            out = (FAMILY_IPV4, v & 0xFFFFFFFF) if v >> 32 == 0xFFFF else (FAMILY_IPV6, v)
    if len(_HOSTS) >= _MEMO_MAX:
        _HOSTS.clear()
    _HOSTS[host] = out
    return out


# -- regions -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    lat: float | None = None
    lon: float | None = None
    prefer: tuple[str, ...] = ()


EARTH_RADIUS_KM = 6371.0088


def great_circle_km(a: Region, b: Region) -> float | None:
    """Haversine distance, or None when either region has no coordinates."""
    if a.lat is None or a.lon is None or b.lat is None or b.lon is None:
        return None
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


class RegionGraph:
    """Regions and how near they are to each other (orders precomputed)."""

    def __init__(self, regions: Sequence[Region] = ()) -> None:
        self.regions: dict[str, Region] = {r.name: r for r in regions}
        names = list(self.regions)
        self._order: dict[str | None, tuple[str, ...]] = {None: tuple(names)}
        for r in regions:
            self._order[r.name] = self._compute(r, names)

    def _compute(self, r: Region, names: list[str]) -> tuple[str, ...]:
        out = [r.name]
        for p in r.prefer:
            if p not in out and p in self.regions:
                out.append(p)
        rest = [n for n in names if n not in out]
        inf = float("inf")

        def dist(n: str) -> tuple[float, int]:
            d = great_circle_km(r, self.regions[n])
            return (inf if d is None else d, names.index(n))

        return tuple(out + sorted(rest, key=dist))

    def order(self, region: str | None) -> tuple[str, ...]:
        """``region`` first, then its preferred regions, then the others nearest
        first. An unknown or missing region: every region in config order."""
        hit = self._order.get(region)
        if hit is not None:
            return hit
        return self._order[None]

    def __contains__(self, name: object) -> bool:
        return name in self.regions


# -- config ------------------------------------------------------------------------------


def parse_regions(raw: Mapping[str, Any] | None, path: Path | None = None) -> RegionGraph:
    """``federation.regions: [{name, lat, lon, prefer: [...]}, ...]`` -> RegionGraph."""
    r = Reader(path)
    fed = r.mapping(raw, "federation")
    lst = fed.get("regions")
    if lst is None:
        return RegionGraph()
    if not isinstance(lst, list):
        raise r.fail("federation.regions", "expected a list of {name, lat, lon, prefer}")
    regions: list[Region] = []
    seen: dict[str, int] = {}
    prefers: list[tuple[str, list[Any]]] = []
    for i, item in enumerate(lst):
        key = f"federation.regions[{i}]"
        d = r.mapping(item, key)
        r.known(d, key, {"name", "lat", "lon", "prefer"})
        if "name" not in d:
            raise r.fail(f"{key}.name", "missing; give the region's name, e.g. us-east")
        name = r.string(d["name"], f"{key}.name")
        if name in seen:
            raise r.fail(
                f"{key}.name",
                f"region {name!r} is already defined at federation.regions[{seen[name]}]",
            )
        seen[name] = i
        lat = lon = None
        if ("lat" in d) != ("lon" in d):
            missing = "lon" if "lat" in d else "lat"
            raise r.fail(f"{key}.{missing}", "missing; give both lat and lon, or neither")
        if "lat" in d:
            lat = r.number(d["lat"], f"{key}.lat", -90, 90)
            lon = r.number(d["lon"], f"{key}.lon", -180, 180)
        pref = d.get("prefer", [])
        if not isinstance(pref, list):
            raise r.fail(f"{key}.prefer", "expected a list of region names, nearest first")
        prefers.append((key, pref))
        regions.append(Region(name, lat, lon))
    out = []
    for (key, pref), reg in zip(prefers, regions, strict=True):
        names: list[str] = []
        for j, p in enumerate(pref):
            pk = f"{key}.prefer[{j}]"
            p = r.string(p, pk)
            if p not in seen:
                raise r.fail(pk, f"unknown region {p!r}; defined regions: {', '.join(seen)}")
            if p == reg.name:
                raise r.fail(pk, f"a region need not prefer itself ({p!r} always comes first)")
            if p in names:
                raise r.fail(pk, f"{p!r} is listed twice")
            names.append(p)
        out.append(Region(reg.name, reg.lat, reg.lon, tuple(names)))
    return RegionGraph(out)


def parse_localities(
    raw: Mapping[str, Any] | None, path: Path | None = None, regions: RegionGraph | None = None
) -> LocalityMap:
    """``federation.localities`` (+ ``federation.mmdb``) -> LocalityMap.

    ``raw`` is the ``federation`` mapping of the config; ``path`` the config
    file (relative MMDB paths are relative to its directory). When
    ``federation.regions`` is given, every region named here must be in it.
    """
    r = Reader(path)
    fed = r.mapping(raw, "federation")
    if regions is None:
        regions = parse_regions(fed, path)
    known = list(regions.regions)

    def check_region(name: str, key: str) -> None:
        if known and name not in regions.regions:
            raise r.fail(
                key,
                f"region {name!r} is not in federation.regions ({', '.join(known)}); add it there or fix the name",
            )

    lst = r.sequence(fed.get("localities"), "federation.localities", "{cidr, region, zone}")
    rules: list[Rule] = []
    seen: dict[tuple[int, int, int], int] = {}
    for i, item in enumerate(lst):
        key = f"federation.localities[{i}]"
        d = r.mapping(item, key)
        r.known(d, key, {"cidr", "region", "zone"})
        if "cidr" not in d:
            raise r.fail(f"{key}.cidr", "missing; give a network such as 10.1.0.0/16")
        if "region" not in d:
            raise r.fail(f"{key}.region", "missing; give the region clients in this network are in")
        text = r.string(str(d["cidr"]) if d["cidr"] is not None else None, f"{key}.cidr").strip()
        fam, net, plen = _parse_cidr(r, text, f"{key}.cidr")
        if (fam, net, plen) in seen:
            raise r.fail(
                f"{key}.cidr",
                f"{text} is already mapped by federation.localities[{seen[fam, net, plen]}]",
            )
        seen[fam, net, plen] = i
        region = r.string(d["region"], f"{key}.region")
        check_region(region, f"{key}.region")
        zone = d.get("zone")
        if zone is not None:
            zone = r.string(zone, f"{key}.zone")
        rules.append(Rule(fam, net, plen, region, zone, i, text))
    mmdb = None
    if fed.get("mmdb") is not None:
        mmdb = _parse_mmdb(r, fed["mmdb"], path, check_region)
    return LocalityMap(rules, mmdb)


def _parse_cidr(r: Reader, text: str, key: str) -> tuple[int, int, int]:
    try:
        n = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise r.fail(
            key,
            f"{text!r} is not a network; write ADDRESS/PREFIX, e.g. 10.1.0.0/16 or 2001:db8::/48",
        ) from None
    if "/" not in text:
        raise r.fail(key, f"{text!r} has no prefix length; write a network such as 10.1.0.0/16")
    if int(ipaddress.ip_interface(text).ip) != int(n.network_address):
        raise r.fail(key, f"{text!r} has host bits set; the network is {n} (write that)")
    fam = FAMILY_IPV4 if n.version == 4 else FAMILY_IPV6
    if n.prefixlen > PRIVACY_PREFIX[fam]:
        lim = PRIVACY_PREFIX[fam]
        raise r.fail(
            key,
            f"{text} is longer than /{lim}: fedns never uses more than /{lim} of an "
            f"{'IPv4' if fam == FAMILY_IPV4 else 'IPv6'} client address (RFC 7871 privacy), "
            f"so this rule could not match as written; use {n.supernet(new_prefix=lim)} or shorter",
        )
    return fam, int(n.network_address), n.prefixlen


def _parse_mmdb(
    r: Reader, raw: Any, path: Path | None, check_region: Callable[[str, str], None]
) -> MmdbSource:
    d = r.mapping(raw, "federation.mmdb")
    r.known(d, "federation.mmdb", {"path", "regions"})
    if "path" not in d:
        raise r.fail(
            "federation.mmdb.path",
            "missing; give the .mmdb file (GeoLite2-Country.mmdb or similar)",
        )
    p = Path(r.string(d["path"], "federation.mmdb.path"))
    if not p.is_absolute() and path is not None:
        p = path.parent / p
    regions = r.mapping(d.get("regions"), "federation.mmdb.regions")
    if not regions:
        raise r.fail(
            "federation.mmdb.regions",
            "missing; map country or continent codes to regions, e.g. {US: us-east, EU: eu-west}",
        )
    mapping: dict[str, str] = {}
    for code, region in regions.items():
        k = f"federation.mmdb.regions.{code}"
        c = str(code).strip()
        bare = c.split(":", 1)[1] if ":" in c else c
        if ":" in c and c.split(":", 1)[0].lower() not in ("country", "continent"):
            raise r.fail(k, "a prefixed code is country:XX or continent:XX")
        if len(bare) != 2 or not bare.isalpha():
            raise r.fail(k, f"{c!r} is not a two-letter country (US) or continent (EU) code")
        reg = r.string(region, k)
        check_region(reg, k)
        mapping[c] = reg
    try:
        return MmdbSource(p, mapping)
    except (OSError, ValueError) as e:
        raise r.fail("federation.mmdb.path", f"cannot open {p} as a MaxMind DB: {e}") from None




# -- the Locator: from an ECS option or source address to a routing Client ----------
#
# The glue between the wire (ECS, the packet's source) and routing
# (``policy.Client``): ``LocalityMap.place`` does the placing (privacy clamp,
# RFC 7871 opt-out and private-address rules, memoized); the Locator adds what
# routing needs and works without any locality map at all.

_UNKNOWN = Client(None, None, b"")


class Locator:
    """Places clients against a locality map (``None``: every client is unplaced)."""

    def __init__(self, localities: LocalityMap | None = None, regions: RegionGraph | None = None) -> None:
        self.localities = localities
        self.regions = regions
        self._clients: dict[int, Client] = {}

    def region_order(self, region: str | None) -> Sequence[str]:
        return self.regions.order(region) if self.regions is not None else ()

    def client(self, subnet: ClientSubnet | None, addr: Any) -> tuple[Client, Placement | None]:
        """The routing view of the client, and its placement (None without a map)."""
        lm = self.localities
        if lm is None:
            return _plain_client(subnet, addr), None
        p = lm.place(subnet, addr)
        c = self._clients.get(id(p))
        if c is None or c.subnet != p.subnet_key:
            c = Client(p.match.region, p.match.zone, p.subnet_key)
            if len(self._clients) > 65536:
                self._clients.clear()
            self._clients[id(p)] = c
        return c, p

    @staticmethod
    def source_free(subnet: ClientSubnet, placement: Placement | None) -> bool:
        """Whether ``client(subnet, addr)`` is the same for every ``addr``: an
        ECS subnet placed by its own address (not SOURCE 0, which opts out, nor
        an unmapped private address, both placed by the packet's source)."""
        return subnet.source > 0 and (placement is None or placement.basis == "ecs")

    def describe(self, subnet: ClientSubnet | None, addr: Any) -> dict[str, Any]:
        """The locality rule a client matched, for the explain API."""
        client, p = self.client(subnet, addr)
        out: dict[str, Any] = {"region": client.region, "zone": client.zone}
        if p is not None and self.localities is not None:
            out.update(p.explain())
            out["rule"] = self.localities.describe(p.subnet_key).get("rule")
        return out


def _plain_client(subnet: ClientSubnet | None, addr: Any) -> Client:
    """No locality map: only the subnet matters (for weighted stickiness)."""
    if subnet is not None and subnet.source:
        value, bits = clamp(subnet.family, subnet.network_int, subnet.source)
        return Client(None, None, subnet_key(subnet.family, bits, value))
    host = addr[0] if isinstance(addr, tuple) else addr
    parsed = parse_host(host) if isinstance(host, str) else None
    if parsed is None:
        return _UNKNOWN
    fam, value = parsed
    bits = PRIVACY_PREFIX[fam]
    return Client(None, None, subnet_key(fam, bits, mask(fam, value, bits)))


__all__ = [
    "UNKNOWN",
    "ConfigError",
    "Locality",
    "LocalityMap",
    "Locator",
    "Match",
    "MmdbSource",
    "Placement",
    "Region",
    "RegionGraph",
    "Rule",
    "ScopeTable",
    "great_circle_km",
    "parse_host",
    "parse_localities",
    "parse_regions",
    "subnet_key",
]
