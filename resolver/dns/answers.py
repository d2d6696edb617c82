"""The answer table and the per-query path, read top to bottom in ``Table.respond``.

A ``Table`` holds, for every name fedns is authoritative for, the compiled
answers (``entries.Node``: bodies already in wire form, templates for answers
that depend on the asked name). Per query the work is: parse header, question
and OPT from the bytes, one dict lookup, splice ID/flags, the question exactly
as asked, the body, and the OPT record.

Tailored answers (federated names, EDNS Client Subnet) take the same path:
what a query's OPT record asks (payload, DO, the validated ECS subnet) is
memoized by the record's bytes, and each router's answer with its reply OPT
record (the ECS echo with our SCOPE) per client subnet or source, so the
per-query work stays dict lookups and one join.

Caches sit in front, all written and read here only, all bounded and
emptied at every change of the table:

- ``replies``: whole UDP replies less the ID, keyed by the query's bytes after
  the ID, for answers that depend on nothing else (not on the packet's source), as
  PowerDNS's packet cache: a repeated question costs one dict lookup and a join;
  ``tcp_replies`` the same for TCP (a TCP reply is never truncated, so it may differ);
- ``below``: negative (and wildcard, referral) replies for a name that does not
  exist below an existing one, per parent and length of the new first label: a
  random-subdomain flood asks for new names below the same few, so it costs the
  existence check the path makes anyway and one lookup (a flood would only
  churn ``replies``);
- ``buckets``: UDP replies of routed names less the ECS ADDRESS they end with,
  per (the query up to that ADDRESS, the router's bucket of the subnet): a
  resolver fleet sends another client subnet in almost every query, yet under
  the locality and failover policies every subnet of one bucket (``Router.lpm_for``:
  the client's locality and the SCOPE, from one longest-prefix lookup) gets
  the same reply but for the ADDRESS echoed, so thousands of subnets cost one
  routing and then a lookup and a join each, with no per-subnet memo filled.
  A subnet that asks again goes into ``replies``.

Federated names come by the hundred thousand (a name per endpoint and per
cluster of every service) and are kept compact in the zone (``zone.Lazy``):
their nodes are built when first asked for, so a full sync costs little more
than the registry itself.

Every transport (the mmsg thread, uvloop UDP, TCP) makes the one call
``Table.respond(data, tcp, addr)``.

Replies are counted here, for ``/metrics`` (``Counts``): by transport, question
type and RCODE, one list item bumped where the fast path knows the type anyway
(the general path reads it from the reply); a reply sent from ``buckets`` is
counted when sent, as a routed answer its router's memo did not route again;
one from another cache is counted by its cache entry, whose hits are added up
when the cache is emptied (``Counts.fold``) or the counters are read
(``Counts.tally``).
"""

from __future__ import annotations

import time
from bisect import bisect_right
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from dnslib import DNSLabel

from .cookies import CLIENT_ONLY, VALID, Cookies, well_formed
from .ecs import MAX_SOURCE, PRIVACY_PREFIX, ClientSubnet, parse_ecs, reply_option
from .entries import (
    Entry,
    Node,
    Router,
    build_node,
    build_nodes,
    chaos_entries,
    class_any,
    compile_exact,
    nodata_template,
    nx_template,
)
from .rrl import DROP, ERRORS, LOG, Limiter
from .wire import (
    BADCOOKIE,
    BADVERS,
    C_ANY,
    C_CH,
    C_IN,
    CD,
    DEFAULT_UDP_PAYLOAD,
    FORMERR,
    MAX_NAME,
    MIN_UDP_PAYLOAD,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    OPT_COOKIE,
    OPT_ECS,
    QR,
    REFUSED,
    T_AXFR,
    T_IXFR,
    T_OPT,
    T_TXT,
    TC,
    FormErr,
    Query,
    error_reply,
    header_only,
    opt_record,
    parse_query,
    tsig_error,
)
from .zone import WILDCARD, Lazy, Resolution, RRset, Zone, key_of

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
_SHAPES_MAX = 1 << 10  # distinct OPT records less the ECS ADDRESS (``Table._shape``)
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


# What one OPT record asks for, as the fast path uses it (memoized by its bytes):
# (UDP payload limit, DO bit 0/1, the ECS option's data, its _Subnet, the reply's
# OPT record for SCOPE 0), unpacked by those names in ``respond``. A plain tuple:
# unpacking a tuple subclass (a NamedTuple) takes the interpreter's slow path.
_Edns = tuple[int, int, bytes | None, _Subnet | None, bytes]
# An OPT record with one ECS option, read from its bytes before the ADDRESS
# (``Table._shape``): (ADDRESS length, bits of its last byte past SOURCE, FAMILY,
# padding shift, clamp mask), or () when the fast path reads it otherwise.
_Shape = tuple[int, ...]
# One question of ``Table.buckets``: its ``_Shape`` less FAMILY (ADDRESS length,
# bits past SOURCE, padding shift, clamp mask), its router's ``lpm`` lists (block
# starts, slice index, slice shift, bucket per block), and per bucket the reply
# less its ID and ADDRESS with its place in ``Counts.answers``. A plain tuple,
# indexed in ``respond``.
_PerQuestion = tuple[Any, ...]


@dataclass(slots=True)
class _Below:
    """UDP replies for names that do not exist, below one existing parent (``Table.below``)."""

    head: bytes  # the reply's flags and counts
    parent: int  # the parent name's length: where the question's name must end
    bodies: dict[int, bytes]  # per length of the new first label: all after the question
    index: int  # its place in ``Counts.answers`` (UDP, the question's type, the RCODE)
    hits: int = 0  # replies sent from it


# One reply of ``Table.replies``: [the reply less its ID, its place in
# ``Counts.answers``, how many times it was sent from there]. A list: bumping an
# item costs less than an attribute of an instance, and it is made per remembered
# reply without a Python ``__init__``.
_Reply = list[Any]
# ``Table.live``: the caches' entries (replies of both transports, below), the counters
# and the folded hits (UDP replies, below, TCP replies), for ``Counts.tally``.
Live = tuple[list[_Reply], list[_Below], list[int], list[int], int, int, int]

# Question types that ``fedns_responses_total`` names; every other type is "other".
# Replies are counted by the table, in ``Counts.answers``, at an index made of
# whether a router's memo answered (+512), the transport (TCP: +256), the type's
# slot (shifted by 4) and the RCODE (the header's 4 bits): one list item bumped
# per reply, where the type is known anyway.
COUNTED_TYPES = ("A", "AAAA", "SRV", "TXT", "NS", "SOA", "CNAME", "MX", "PTR", "HTTPS",
                 "SVCB", "ANY", "other")
_TYPE_CODES = (1, 28, 33, 16, 2, 6, 5, 15, 12, 65, 64, 255)
ANSWER_SLOTS = 1024  # len(Counts.answers)
TCP_BASE, ROUTED_BASE = 256, 512


def _slot_table(base: int) -> list[list[int]]:
    """qtype -> [its index for each RCODE], for every 16-bit type: two list subscripts
    (which the interpreter specializes) and no int made per query."""
    rows = [[base + (t << 4) + r for r in range(16)] for t in range(len(COUNTED_TYPES))]
    other = rows[-1]
    return [rows[_TYPE_CODES.index(t)] if t in _TYPE_CODES else other for t in range(65536)]


_SLOTS, _SLOTS_TCP = _slot_table(0), _slot_table(TCP_BASE)
_ROUTED, _ROUTED_TCP = _slot_table(ROUTED_BASE), _slot_table(ROUTED_BASE + TCP_BASE)


# A reply's COOKIE option: code, length, client cookie (8), server cookie (16).
_COOKIE_ROOM = 28


@dataclass(slots=True)
class Counts:
    """What the cookie check and the rate limiter did, for ``/metrics``: plain ints
    bumped on the query path (the serving side's ``Stats`` holds one and exports it)."""

    cookie_client_only: int = 0  # queries with a client cookie alone: a fresh server cookie
    cookie_valid: int = 0  # with a valid server cookie
    cookie_invalid: int = 0  # with a server cookie not valid (now): treated as client-only
    cookie_malformed: int = 0  # COOKIE option of a wrong length: FORMERR
    rrl_slipped: int = 0  # replies over the rate sent truncated (TC=1, no records)
    rrl_badcookie: int = 0  # ... sent as BADCOOKIE instead, to clients that sent a cookie
    rrl_dropped: int = 0  # ... not sent
    rrl_logged: int = 0  # ... sent anyway (log_only)
    rrl_exempt: int = 0  # ... sent anyway: the query had a valid server cookie
    # Replies by transport, question type and RCODE (``answer_index``), except those
    # sent from the reply caches: their entries count those (``_Reply``, ``_Below``)
    # until they are emptied, then ``fold`` adds them to ``folded``.
    answers: list[int] = field(default_factory=lambda: [0] * ANSWER_SLOTS)
    # Federated answers routed afresh (then remembered in ``Router.memo``); those found
    # there are the answers counted at ROUTED_BASE and up less these.
    memo_misses: int = 0
    rebuilt: int = 0  # names whose answers ``publish`` compiled again
    # The hits of cache entries emptied since: written by ``fold`` only, which runs
    # where the caches are emptied (under the serving side's lock, or in the one
    # thread that uses them), never beside the query path's increments.
    folded: list[int] = field(default_factory=lambda: [0] * ANSWER_SLOTS)
    folded_reply_hits: int = 0
    folded_below_hits: int = 0
    folded_tcp_hits: int = 0  # of ``tcp_replies`` (``folded_reply_hits``: UDP only)

    def fold(self, replies: Mapping[bytes, _Reply], below: Mapping[bytes, _Below]) -> None:
        """Keep the hits of cache entries about to be dropped."""
        folded = self.folded
        n = tcp = 0
        for r in replies.values():
            if r[2]:
                folded[r[1]] += r[2]
                if r[1] & TCP_BASE:
                    tcp += r[2]
                else:
                    n += r[2]
        self.folded_reply_hits += n
        self.folded_tcp_hits += tcp
        n = 0
        for b in below.values():
            if b.hits:
                folded[b.index] += b.hits
                n += b.hits
        self.folded_below_hits += n

    def tally(self, live: Live) -> dict[str, Any]:
        """Replies by index and the caches' hits, from ``Table.live`` (taken under the
        serving side's lock, so no entry is both live there and folded)."""
        replies, below, answers, folded, reply_hits, below_hits, tcp_hits = live
        total = [a + b for a, b in zip(answers, folded, strict=True)]
        for r in replies:
            if r[2]:
                total[r[1]] += r[2]
                if r[1] & TCP_BASE:
                    tcp_hits += r[2]
                else:
                    reply_hits += r[2]
        for b in below:
            if b.hits:
                total[b.index] += b.hits
                below_hits += b.hits
        return {"answers": total, "reply_hits": reply_hits, "below_hits": below_hits,
                "tcp_reply_hits": tcp_hits}


def answer_index(reply: bytes, tcp: bool) -> int:
    """A reply's place in ``Counts.answers``, read from its bytes: for the replies
    the fast path does not make (errors, the general path). Without a question
    (a header-only FORMERR or NOTIMP) its type counts as "other"."""
    row = (_SLOTS_TCP if tcp else _SLOTS)[0x10000 - 1]  # "other" (65535 is no counted type)
    if reply[5]:
        n = len(reply)
        z = 12
        while z < n and reply[z]:  # the echoed question's labels (never compressed)
            z += reply[z] + 1
        if z + 2 < n:
            row = (_SLOTS_TCP if tcp else _SLOTS)[(reply[z + 1] << 8) | reply[z + 2]]
    return row[reply[3] & 0x0F]


class _Counted(bytes):
    """A reply that ``respond`` counted already: a query with a DNS cookie is answered
    by answering the same query without it (``Table._with_cookie``)."""


# Names in the tables' keys' (wire) form, 255 octets at most (RFC 1035 3.1): a
# query's name ends at byte ``12 + MAX_NAME - 1`` or earlier.
_LAST_NAME_BYTE = 12 + MAX_NAME - 1


# A name's records as published: compact, or every RRset by type.
Records = Lazy | dict[int, RRset]

_monotonic = time.monotonic  # a global: one lookup fewer per query than time.monotonic
WAIT = b""  # respond() result: ask again once the federation has synced (never sent)


class Table:
    """All answers for all zones, and the function that serves a query from them."""

    def __init__(
        self,
        zones: list[Zone],
        max_udp: int = DEFAULT_UDP_PAYLOAD,
        identity: str | None = None,
        version: str | None = None,
    ) -> None:
        self.max_udp = max(MIN_UDP_PAYLOAD, min(max_udp, 65535))
        self.zones = {z.okey: z for z in zones}
        self.nodes: dict[bytes, Node] = {}
        for z in zones:
            self.nodes.update(build_nodes(z))
        self.chaos = chaos_entries(identity, version)
        self.opt = opt_record(self.max_udp, False)
        self.opt_do = opt_record(self.max_udp, True)
        self._subnets: dict[bytes, _Subnet] = {}
        self._edns_memo: dict[bytes, _Edns] = {}
        # OPT records with one ECS option, by their bytes before its ADDRESS (``_shape``).
        self._shapes: dict[bytes, _Shape] = {}
        # UDP replies of routed names less the ECS ADDRESS they end with, and where
        # they count, by the query's bytes from after its ID to the ADDRESS, then by
        # the router's bucket of the subnet: a reply for many client subnets each.
        self.buckets: dict[bytes, _PerQuestion] = {}
        # Queries answered from ``buckets`` once: the second time, into ``replies``.
        self._seen: set[bytes] = set()
        # Federation zones whose clusters have not synced yet: a name that does
        # not exist there *yet* gets WAIT instead of NXDOMAIN, so startup does
        # not seed resolvers with negative answers (CoreDNS's kubernetes plugin
        # delays queries the same way). Cleared at first sync or after a bound.
        self.waiting: tuple[bytes, ...] = ()
        # Zones with compact names (Zone.lazy), their NXDOMAIN/NODATA templates,
        # and which nodes were built from compact names (dropped when too many).
        self._lazy_zones: tuple[tuple[Zone, Entry, Entry], ...] = ()
        self._lazy_built: set[bytes] = set()
        self._zone_templates: dict[bytes, tuple[Entry, Entry]] = {}
        # UDP replies less their ID, by the query's bytes after its ID, for the
        # answers that depend on nothing else (not on the packet's source).
        # Resolvers and clients ask the same few questions over and over (the
        # same case, flags and OPT record), so most queries cost one lookup.
        self.replies: dict[bytes, _Reply] = {}
        # The same for TCP, apart: a TCP reply is never truncated and counts as TCP.
        # CoreDNS's ``force_tcp`` and pipelining resolvers repeat questions as UDP ones do.
        self.tcp_replies: dict[bytes, _Reply] = {}
        # By the query's bytes after its ID with the first label cut out, for a
        # name that does not exist whose parent does; the question is echoed
        # from the query.
        self.below: dict[bytes, _Below] = {}
        self._below_bodies = 0  # bodies in ``below``, the bound it is cleared at
        self.lazy_names: tuple[dict[bytes, Lazy], ...] = ()  # the zones' compact names
        # Routers with entries in their memo, and how many entries were added
        # since the last clear (replaced routers' too: they count until then).
        self._memoized: list[Router] = []
        self._memo_entries = 0
        # DNS cookies and the rate limiter, off until the serving side sets them (``guard``).
        self.cookies: Cookies | None = None
        self.limiter: Limiter | None = None
        self.counts = Counts()
        self._answers = self.counts.answers  # bumped per reply: one attribute lookup fewer
        # What kind of reply the limiter counts, by the query's bytes after its ID
        # (``_kind``), and with it the reply when ``replies`` has it (emptied with
        # ``replies``, so never a reply it does not hold); bounded.
        self._kinds: dict[bytes, Any] = {}
        self._limited: dict[bytes, tuple[Any, _Reply]] = {}

    def guard(self, cookies: Cookies | None, limiter: Limiter | None, counts: Counts) -> None:
        """Answer DNS cookies with ``cookies``, count into ``counts``; ``limiter`` is
        what ``respond_limited`` asks (the transports call that one when it is set)."""
        if counts is not self.counts:
            self.empty_caches()  # their counts stay with the counts they were made under
        self.cookies, self.limiter, self.counts = cookies, limiter, counts
        self._answers = counts.answers
        if limiter is not None:
            self._limiter = limiter  # typed as set: read by respond_limited only
        self._edns_memo.clear()  # what an OPT record asks depends on whether cookies are on

    # -- federation -----------------------------------------------------------

    def publish(
        self,
        zones: Mapping[bytes, tuple[Collection[bytes], Mapping[bytes, Records]]],
        routers: Mapping[bytes, Router],
    ) -> int:
        """Publish changed federated names; rebuild only the names they touch.

        ``zones``: per zone (its origin's key) the names that are gone and the
        names with their records now, compact (``Lazy``) or in full; ``routers``: the names whose
        A/AAAA/SRV depend on the client. Returns how many names were rebuilt.
        """
        self.empty_caches()
        self._kinds.clear()
        by_zone: dict[bytes, dict[bytes, Records | None]] = {}
        for okey, (gone, records) in zones.items():
            zone = self.zones.get(okey)
            if zone is None:
                continue
            changes = by_zone.setdefault(okey, {})
            changes.update(dict.fromkeys(gone))
            data, lazy = zone.data, zone.lazy
            for k, types in records.items():
                # A name whose records did not change keeps its node: rebuilding it
                # would give the same bytes. Without this a change to one endpoint
                # rebuilt every name of the service, and each cluster's first list
                # at startup every name of every service. Routed names always get
                # their new Router.
                old = lazy.get(k)
                if not isinstance(types, Lazy):
                    changed = True  # records in full: nothing cheap to compare
                elif old is None:
                    changed = types.exists() or k in data
                else:
                    changed = old != types
                if changed or k in changes or k in routers:
                    changes[k] = types
        rebuilt = 0
        replaced: set[int] = set()  # routers no node will hold: their memos go
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
            lazy, data = zone.lazy, zone.data
            for k in affected:
                router = routers.get(k)
                prev = nodes.get(k)
                if prev is not None:
                    if prev.router is not None and prev.router is not router:
                        replaced.add(id(prev.router))
                    if router is None and k not in changes:
                        router = prev.router  # rebuilt as an ancestor: same service
                        replaced.discard(id(router))
                if router is None and k in lazy and WILDCARD + k not in data:
                    # Built when asked for (``_lazy_node``). With a wildcard child it
                    # is built now: the fast path's walk up from a name below it
                    # must find it, as it skips the compact names it passes.
                    nodes.pop(k, None)  # a serving thread may have built it meanwhile
                    self._lazy_built.discard(k)  # re-read: a serving thread swaps it
                elif k in zone.names:
                    node = build_node(zone, k, nx, nodata, router is not None)
                    node.router = router
                    nodes[k] = node
                else:
                    nodes.pop(k, None)
                rebuilt += 1
        self._forget_memos(replaced)
        self._lazy_zones = tuple((z, *self._templates(z)) for z in self.zones.values() if z.lazy)
        self.lazy_names = tuple(z.lazy for z, _, _ in self._lazy_zones)
        self.counts.rebuilt += rebuilt
        return rebuilt

    def empty_caches(self) -> None:
        """Empty ``replies``, ``tcp_replies`` and ``below``, keeping the counts of what they sent."""
        if self.replies or self.below or self.tcp_replies:
            self.counts.fold(self.replies, self.below)
            self.counts.fold(self.tcp_replies, {})
            self.replies.clear()
            self.tcp_replies.clear()
            self.below.clear()
        self.buckets.clear()  # counted when sent (as routed answers): nothing to fold
        self._seen.clear()
        self._limited.clear()
        self._below_bodies = 0

    def live(self) -> Live:
        """What ``Counts.tally`` adds up: the caches' entries and the counters, copied
        at once (call it where no reply is being made: under the serving side's lock)."""
        c = self.counts
        return ([*self.replies.values(), *self.tcp_replies.values()], list(self.below.values()),
                list(c.answers), list(c.folded), c.folded_reply_hits, c.folded_below_hits,
                c.folded_tcp_hits)

    def edns_of(self, rr: bytes) -> tuple[bytes | None] | None:
        """(the ECS option data or None) of an OPT record the fast path remembered;
        None when it did not: for the query log, which needs no more."""
        edns = self._edns_memo.get(rr)
        return (edns[2],) if edns is not None else None

    def cache_of(self, data: bytes, tcp: bool = False) -> bool:
        """Whether ``respond`` answers this query from ``replies`` (``tcp_replies``) or
        ``below`` (for the query log; read before the query is answered)."""
        if data[2:] in (self.tcp_replies if tcp else self.replies):
            return True
        first = data[12] if len(data) > 12 else 0
        if tcp or not self.below or not 0 < first < 64:
            return False
        neg = self.below.get(data[2:12] + data[13 + first :])
        if neg is None or first not in neg.bodies:
            return False
        return data[12 : 13 + first + neg.parent].lower() not in self.nodes

    def _templates(self, zone: Zone) -> tuple[Entry, Entry]:
        """The zone's NXDOMAIN and NODATA templates: built once, as its apex (the SOA
        they hold) changes only with a new table."""
        t = self._zone_templates.get(zone.okey)
        if t is None:
            t = self._zone_templates[zone.okey] = (nx_template(zone), nodata_template(zone))
        return t

    def _forget_memos(self, replaced: set[int]) -> None:
        """Drop the memos of routers no node holds any more: kept, every change of a
        service would leave its old router's memo alive until the global bound
        (about 2.8 KB each; hundreds of MB under steady churn)."""
        if not replaced or not self._memoized:
            return
        kept = [r for r in self._memoized if id(r) not in replaced]
        if len(kept) != len(self._memoized):
            self._memoized = kept
            self._memo_entries = sum(len(r.memo) for r in kept)

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

    def builder(self, owner: str) -> Callable[[RRset | None, int], Entry]:
        """How a router of ``owner`` turns the RRset it chose into an entry (None: NODATA)."""
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
        """The reply to one query packet, None to stay silent, or ``WAIT``.

        A UDP question asked before (the same bytes after the ID) is answered
        from ``replies`` at once. The common query is answered here, read in
        place from its bytes:
        opcode QUERY, one question of class IN for a name in our zones, no
        answer or authority records, and no additional record or one OPT
        (version 0) with well-formed options, at most one of them ECS and that
        one valid. Everything else, every error among it, goes to ``general``
        (each ``return self._slow(...)`` below), which builds a ``Query``
        and gives the same reply for what is handled here, only slower. The
        two are one function rather than two calls: a call is ~10 % of this.
        """
        cached = (self.tcp_replies if tcp else self.replies).get(data[2:])
        if cached is not None:
            cached[2] += 1
            return data[:2] + cached[0]
        if not tcp and self.below:
            # A new name below one that exists: the reply for any such name of
            # that first label's length (``_remember_below``), once the name
            # proves not to exist after all. The key is the query less its first
            # label, so it holds the header, the parent name, type and OPT that
            # the remembered query had: the rest of the packet was checked then.
            first = data[12] if len(data) > 12 else 0
            neg = self.below.get(data[2:12] + data[13 + first :]) if 0 < first < 64 else None
            if neg is not None:
                tail = neg.bodies.get(first)
                end = 13 + first + neg.parent  # where the name ends
                if tail is not None and end <= _LAST_NAME_BYTE + 1:
                    name = data[12:end].lower()
                    if name not in self.nodes and not (self.lazy_names and self._is_compact(name)):
                        neg.hits += 1
                        return b"".join((data[:2], neg.head, data[12 : end + 4], tail))
        n = len(data)
        z = data.find(0, 12)  # where the name ends, if its labels are well formed
        qend = z + 5
        if not tcp and self.buckets:
            # A resolver sends another client subnet in almost every query, but a
            # routed name's reply is the same for every subnet of one bucket of its
            # router (``Router.lpm_for``) but for the ECS ADDRESS echoed at its end:
            # remembered less that (``_remember_bucket``), by the query's bytes up
            # to its ADDRESS (header, question, the OPT record with ECS its only
            # option: all checked when it was remembered), then by bucket.
            ecs_at = qend + 19
            per = self.buckets.get(data[2:ecs_at])
            # (``_PerQuestion``, indexed rather than unpacked: every local of this
            # function costs every query, when its frame is cleared.)
            if per is not None and n == ecs_at + per[0] and not data[n - 1] & per[1]:
                # The ADDRESS is as long as SOURCE says, no bit set past it (as
                # ``parse_ecs`` checks); zero-padded, clamped to /24 or /56, its block
                # by one bisect in the slice its top bits pick; the block's bucket.
                v = int.from_bytes(data[ecs_at:], "big") << per[2] & per[3]
                k = v >> per[6]
                index = per[5]
                cached = per[8].get(per[7][bisect_right(per[4], v, index[k], index[k + 1]) - 1])
                if cached is not None:
                    self._answers[cached[1]] += 1  # a routed answer, as from the memo
                    reply = data[:2] + cached[0] + data[ecs_at:]
                    # The second time a subnet asks this, into ``replies``: a client
                    # repeated costs one lookup again, thousands asking once do not
                    # churn it.
                    if data[2:] in self._seen:
                        self._remember(data[2:], reply, cached[1], False)
                    else:
                        if len(self._seen) >= _REPLIES_MAX:
                            self._seen.clear()
                        self._seen.add(data[2:])
                    return reply
        if n < 17 or data[2] & 0xF8 or data[4:11] != b"\x00\x01\x00\x00\x00\x00\x00":
            # QR or an opcode set, or not one question and no records.
            return self._slow(data, tcp, addr)
        if qend > n or qend <= 12 or data[z + 3] or data[z + 4] != C_IN:
            return self._slow(data, tcp, addr)
        qtype = (data[z + 1] << 8) | data[z + 2]
        if qtype in _NOT_FAST:
            return self._slow(data, tcp, addr)
        ar = data[11]
        if ar == 0:
            if qend != n:
                return self._slow(data, tcp, addr)  # bytes after the question
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
                    return self._slow(data, tcp, addr)
                if len(rr) <= _EDNS_KEY_MAX:
                    if len(self._edns_memo) >= _SUBNETS_MAX:
                        self._edns_memo.clear()
                    self._edns_memo[rr] = edns
            limit, do, raw, sub, opt = edns
            if tcp:
                limit = 65535
        else:
            return self._slow(data, tcp, addr)
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
            remember = True
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
                    self.counts.memo_misses += 1
                    cs = sub.cs if sub is not None else None
                    e, scope, free = router.route(qtype, cs, addr)
                    if sub is not None:
                        hit = (e, self._reply_opts(sub, scope))
                        if sub.free is None:
                            sub.free = free
                            if free:
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
                slots = _ROUTED_TCP if tcp else _ROUTED  # memo hits: these less the misses
            else:
                e = node.exact.get(qtype) or node.answer(qtype)  # an Entry is always true
                slots = _SLOTS_TCP if tcp else _SLOTS
        else:
            # Not in ``replies``: a random-subdomain flood would only churn them.
            remember = False
            slots = _SLOTS_TCP if tcp else _SLOTS
            if z > _LAST_NAME_BYTE or self.waiting:
                # Longer than 255 octets; or maybe a name not synced yet.
                return self._slow(data, tcp, addr)
            # Up to the closest existing ancestor, checking label lengths on the
            # way; the ancestor is a key, hence well formed: so is the whole name.
            k = lname
            while True:
                if len(k) < 2 or k[0] > 63:
                    return self._slow(data, tcp, addr)  # not in our zones, or malformed
                k = k[k[0] + 1 :]
                node = nodes.get(k)
                if node is not None:
                    if node.wildcard is not None and self._lazy_zones:
                        # A compact name between it and the question would stop the wildcard.
                        return self._slow(data, tcp, addr)
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
        i = slots[qtype][e.rcode]
        self._answers[i] += 1
        if remember:
            self._remember(data[2:], reply, i, tcp)
            if slots is _ROUTED and data[qend + 11 : qend + 13] == b"\x00\x08":
                self._remember_bucket(data, qend, qtype, node.router, reply, i)
        elif below:
            self._remember_below(data, reply, qend, i)
        return reply

    def _remember_bucket(
        self, data: bytes, qend: int, qtype: int, router: Router | None, reply: bytes, slot: int
    ) -> None:
        """Put ``reply``, a routed name's UDP reply to ``data`` (placed by its ECS
        subnet alone), in ``buckets`` when its OPT record holds just that option and
        the router has a bucket for the subnet."""
        head = data[qend : qend + 19]
        shape = self._shapes.get(head)
        if shape is None:
            shape = self._shape(head)
        if not shape or router is None or len(data) != qend + 19 + shape[0]:
            return
        need, spare, family, pad, keep = shape
        lpm = router.lpm.get((qtype << 2) | family)
        if lpm is None:
            lpm = router.lpm_for(qtype, family)
        if not lpm:
            return  # no bucket holds more than one subnet (weighted answers)
        starts, index, shift, ids = lpm
        v = int.from_bytes(data[qend + 19 :], "big") << pad & keep
        k = v >> shift
        bucket = ids[bisect_right(starts, v, index[k], index[k + 1]) - 1]
        if bucket < 0:
            return  # placed with the packet's source (unmapped private space)
        key = data[2 : qend + 19]
        per = self.buckets.get(key)
        if per is None:
            if len(self.buckets) >= _REPLIES_MAX:
                self.buckets.clear()
            per = self.buckets[key] = (need, spare, pad, keep, starts, index, shift, ids, {})
        per[8][bucket] = (reply[2 : len(reply) - need], slot)

    def _remember(self, asked: bytes, reply: bytes, index: int, tcp: bool) -> None:
        """Put ``reply`` in ``replies`` (``tcp_replies``) for the query ``asked`` (its
        bytes after the ID); ``index``: the reply's place in ``Counts.answers``."""
        replies = self.tcp_replies if tcp else self.replies
        if len(replies) >= _REPLIES_MAX:
            self.counts.fold(replies, {})
            replies.clear()
            if not tcp:
                self._limited.clear()  # holds replies of ``replies`` only
        replies[asked] = [reply[2:], index & 0x1FF, 0]  # its hits are no memo's

    def respond_limited(self, data: bytes, tcp: bool, addr: Any = None) -> bytes | None:
        """``respond``, then response rate limiting (``rrl.Limiter``) on UDP.

        The transports call this one instead when ``rate_limit`` is configured,
        so that with it off not one instruction is added to ``respond``. TCP is
        exempt (a spoofed source cannot complete a handshake), and so is a query
        with a valid server cookie (``_over_limit``: checked only when over).
        """
        if tcp or addr is None:
            return self.respond(data, tcp, addr)
        key = data[2:]
        # A reply ``respond`` remembers in ``replies``, with its kind: the same one
        # lookup ``respond`` would make for it, and no call of ``respond``.
        hit = self._limited.get(key)
        if hit is not None:
            kind, cached = hit
            cached[2] += 1
            reply = data[:2] + cached[0]
        else:
            got = self.respond(data, tcp, addr)
            if not got:
                return got  # silence, or WAIT
            reply = got
            kind = self._kind(key, data, reply)
        limiter = self._limiter
        net = limiter.nets.get(addr[0])
        if net is None:
            net = limiter.network(addr[0])
        verdict = limiter.check(net, kind, _monotonic())
        if not verdict:  # ALLOW
            return reply
        return self._over_limit(data, reply, addr, verdict)

    def _kind(self, key: bytes, data: bytes, reply: bytes) -> Any:
        """What ``reply`` answers, as the rate limiter counts it: the name and type
        of an existing name (NODATA as type 0, whatever type was asked); the zone
        for NXDOMAIN and for answers made up below a name (wildcards, referrals),
        so a flood of random names shares one budget; one kind for all errors.
        Remembered by the query's bytes after its ID (``key``), with the reply if
        ``respond`` remembered it."""
        kind = self._kinds.get(key)
        if kind is None:
            rcode = reply[3] & 0x0F
            kind = ERRORS
            if rcode in (NOERROR, NXDOMAIN):
                z = data.find(0, 12)  # such a reply proves the question's name well formed
                lname = data[12 : z + 1].lower()
                if rcode == NOERROR and lname in self.nodes:
                    qtype = (data[z + 1] << 8) | data[z + 2] if reply[6] or reply[7] else 0
                    kind = (lname, qtype)
                else:
                    kind = next((k for k in self.zones if lname.endswith(k)), b"")
            if len(self._kinds) >= _REPLIES_MAX:
                self._kinds.clear()
            self._kinds[key] = kind
        cached = self.replies.get(key)
        if cached is not None:
            if len(self._limited) >= _REPLIES_MAX:
                self._limited.clear()
            self._limited[key] = (kind, cached)
        return kind

    def _over_limit(
        self, data: bytes, reply: bytes, addr: tuple[Any, ...], verdict: int
    ) -> bytes | None:
        """What goes out instead of ``reply``, which is over the rate (``verdict``)."""
        counts = self.counts
        fast = self._as_fast_path(data)
        if fast is not None:
            # A query as the fast path reads it (no COOKIE option to look at): a
            # flood's common case, answered without reading the query again.
            if verdict == DROP:
                counts.rrl_dropped += 1
                return None
            if verdict == LOG:
                counts.rrl_logged += 1
                return reply
            counts.rrl_slipped += 1
            qend, opt = fast
            return self._truncated(reply, data[12:qend], opt)
        # Any other: its question and OPT record, and a COOKIE option if there is one.
        cookies = self.cookies
        q: Query | None = None
        cookie = None
        try:
            q = parse_query(data)
        except (FormErr, IndexError, ValueError):
            q = None
        if q is not None and q.edns is not None and cookies is not None:
            cookie = q.edns.cookie
        ip = b""
        if cookie is not None and cookies is not None and well_formed(cookie):
            ip = cookies.packed(addr[0])
            if cookies.check(cookie, ip, time.time()) == VALID:
                counts.rrl_exempt += 1
                return reply
        else:
            cookie = None
        if verdict == LOG:
            counts.rrl_logged += 1
            return reply
        if verdict == DROP:
            counts.rrl_dropped += 1
            return None
        if cookie is not None and q is not None and cookies is not None:
            # RFC 7873 5.2.3, as BIND: a client that sends cookies gets BADCOOKIE with
            # a fresh server cookie, and retries with it over UDP rather than TCP.
            counts.rrl_badcookie += 1
            _, ours = cookies.answer(cookie, ip, time.time())
            return error_reply(q, BADCOOKIE, self.max_udp, options=ours)
        counts.rrl_slipped += 1
        if q is None:
            return self._truncated(reply, b"", b"")
        opt = b"" if q.edns is None else self.opt_do if q.edns.do else self.opt
        return self._truncated(reply, q.question, opt)

    def _as_fast_path(self, data: bytes) -> tuple[int, bytes] | None:
        """(where the question ends, the OPT record for a reply) when the fast path
        reads this query: one question, no other record but an OPT record it
        remembered (``_edns``, which leaves any with a COOKIE to ``general`` while
        cookies are answered) or none; else None."""
        if data[2] & 0xF8 or data[4:11] != b"\x00\x01\x00\x00\x00\x00\x00":
            return None
        qend = data.find(0, 12) + 5
        if not data[11]:
            return (qend, b"") if qend == len(data) else None
        edns = self._edns_memo.get(data[qend:])
        if edns is None:
            return None
        return qend, self.opt_do if edns[1] else self.opt

    @staticmethod
    def _truncated(reply: bytes, question: bytes, opt: bytes) -> bytes:
        """A slipped reply: ``reply``'s header with TC set, the question (if it had
        one), the OPT record, no records."""
        qd = 1 if question and reply[5] else 0
        return b"".join(
            (
                reply[:2],
                bytes((reply[2] | TC, reply[3], 0, qd, 0, 0, 0, 0, 0, 1 if opt else 0)),
                question if qd else b"",
                opt,
            )
        )

    def _is_compact(self, name: bytes) -> bool:
        """Whether ``name`` is a compact name (``Zone.lazy``). A method, not a
        generator inside ``respond``: one would make every call of it allocate a
        closure cell."""
        return any(name in m for m in self.lazy_names)

    def _remember_below(self, data: bytes, reply: bytes, qend: int, index: int) -> None:
        first = data[12]
        key = data[2:12] + data[13 + first :]
        if self._below_bodies >= _REPLIES_MAX:
            # Up to 63 bodies per key: bounded by bodies, not keys (~100 bytes each).
            self.counts.fold({}, self.below)
            self.below.clear()
            self._below_bodies = 0
        hit = self.below.get(key)
        if hit is None:
            # qend = z + 5; the key holds the type, and the parent fixes the RCODE.
            hit = self.below[key] = _Below(reply[2:12], qend - 17 - first, {}, index)
        if first not in hit.bodies:
            self._below_bodies += 1
        hit.bodies[first] = reply[qend:]

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
            elif rr[o] == 0 and rr[o + 1] == OPT_COOKIE and self.cookies is not None:
                return None  # answered by the general path (``_with_cookie``)
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

    def _shape(self, head: bytes) -> _Shape:
        """What an OPT record that holds one ECS option and nothing else asks, from
        its bytes up to the option's ADDRESS (``head``, 19 bytes): (ADDRESS length,
        the bits of its last byte that must be zero, FAMILY, the shift that pads the
        ADDRESS to the family's width and the mask that clamps it to /24 or /56 as
        ``locality`` does); () when the fast path does not read it so (``_edns``
        and ``parse_ecs`` decide then). Remembered: resolvers send a few."""
        shape: _Shape = ()
        if len(head) == 19 and head[:3] == b"\x00\x00\x29" and not head[6] and not head[18]:
            family = (head[15] << 8) | head[16]
            source = head[17]
            width = MAX_SOURCE.get(family, 0)
            need = (source + 7) >> 3
            rdlen = (head[9] << 8) | head[10]
            olen = (head[13] << 8) | head[14]
            if 0 < source <= width and olen == 4 + need and rdlen == 8 + need:
                host = width - min(source, PRIVACY_PREFIX[family])
                keep = ((1 << width) - 1) >> host << host
                shape = (need, (1 << (need * 8 - source)) - 1, family, width - 8 * need, keep)
        if len(self._shapes) >= _SHAPES_MAX:
            self._shapes.clear()
        self._shapes[head] = shape
        return shape

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
            ecs = reply_option(sub.cs, scope)
            pair = (opt_record(self.max_udp, False, 0, ecs), opt_record(self.max_udp, True, 0, ecs))
            sub.opts[scope] = pair
        return pair

    def _with_cookie(self, data: bytes, tcp: bool, addr: Any, q: Query) -> bytes | None:
        """The reply to a query with a COOKIE option (RFC 7873 5.2): the reply to the
        same query without the option, found as any other's (so the reply caches
        never hold a cookie, least of all someone else's), with this client's
        COOKIE option added to its OPT record."""
        edns, cookies = q.edns, self.cookies
        assert edns is not None and edns.cookie is not None and cookies is not None
        option = edns.cookie
        if not well_formed(option):
            self.counts.cookie_malformed += 1
            return error_reply(q, FORMERR, self.max_udp)  # RFC 7873 5.2.2
        at, rl = edns.cookie_at, edns.rdlen_at  # the option, and the OPT record's RDLEN
        payload = edns.payload
        limit = 65535 if tcp else max(MIN_UDP_PAYLOAD, min(payload, self.max_udp))
        if not tcp:
            payload = max(limit - _COOKIE_ROOM, 0)  # room for our option in the reply
        rdlen = ((data[rl] << 8) | data[rl + 1]) - 4 - len(option)
        stripped = b"".join(
            (
                data[: rl - 6],  # up to the OPT record's CLASS: the UDP payload size
                payload.to_bytes(2, "big"),
                data[rl - 4 : rl],
                rdlen.to_bytes(2, "big"),
                data[rl + 2 : at],
                data[at + 4 + len(option) :],
            )
        )
        reply = self.respond(stripped, tcp, addr)
        if not reply:
            return reply  # silence, or WAIT (the whole query is asked again once synced)
        ip = cookies.packed(addr[0]) if isinstance(addr, tuple) else b""
        status, ours = cookies.answer(option, ip, time.time())
        if status == CLIENT_ONLY:
            self.counts.cookie_client_only += 1
        elif status == VALID:
            self.counts.cookie_valid += 1
        else:
            self.counts.cookie_invalid += 1
        # Our OPT record ends the reply, with no option or the ECS echo (as long as the query's).
        n = len(reply)
        for k in (0,) if edns.ecs is None else (0, 4 + len(edns.ecs)):
            o = n - 11 - k
            if (
                o >= 12
                and reply[o : o + 3] == b"\x00\x00\x29"
                and reply[o + 9 : o + 11] == k.to_bytes(2, "big")
            ):
                break
        else:
            # No OPT record (a header-only error): nowhere for a cookie.
            return _Counted(reply)
        opt = b"".join(
            (reply[o : o + 9], (k + len(ours)).to_bytes(2, "big"), reply[o + 11 :], ours)
        )
        if n + len(ours) <= limit:
            return _Counted(reply[:o] + opt)
        # Too big with the cookie for a client that allows less than 540 bytes: truncated.
        qd = 1 if reply[5] else 0
        return _Counted(
            b"".join(
                (
                    reply[:2],
                    bytes((reply[2] | TC, reply[3], 0, qd, 0, 0, 0, 0, 0, 1)),
                    q.question if qd else b"",
                    opt,
                )
            )
        )

    def _slow(self, data: bytes, tcp: bool, addr: Any) -> bytes | None:
        """``general`` for ``respond``, with its reply counted (``general`` itself counts
        nothing: explain calls it too)."""
        reply = self.general(data, tcp, addr)
        if reply and type(reply) is not _Counted:
            self._answers[answer_index(reply, tcp)] += 1
        return reply

    def general(self, data: bytes, tcp: bool, addr: Any = None) -> bytes | None:
        """The reply to any query packet (``respond`` without its fast path), or None."""
        if len(data) < 12 or data[2] & QR:
            return None
        if data[2] & 0x78:
            # An opcode other than QUERY, before anything else is read: its sections
            # need not be a question. NOTIMP with no sections echoed, as NSD.
            return header_only(data, NOTIMP)
        try:
            q = parse_query(data)
        except FormErr as err:
            if err.query is not None:  # a fault in the OPT record's options
                return error_reply(err.query, FORMERR, self.max_udp)
            return header_only(data, FORMERR)
        except (IndexError, ValueError):
            return header_only(data, FORMERR)
        if q.tsig is not None:
            return tsig_error(q, self.max_udp)  # fedns holds no keys: every key is unknown
        edns = q.edns
        subnet: ClientSubnet | None = None
        if edns is not None:
            if edns.version != 0:
                return error_reply(q, BADVERS, self.max_udp)  # RFC 6891 6.1.3
            if edns.repeated_cookie and self.cookies is not None:
                return error_reply(q, FORMERR, self.max_udp)  # which one is meant?
            if edns.cookie is not None and self.cookies is not None:
                return self._with_cookie(data, tcp, addr, q)
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
        qtype = q.qtype
        scope = 0
        if q.qclass == C_IN:
            node = self.nodes.get(q.lname) or self._lazy_node(q.lname)
            if node is not None:
                router = node.router
                if router is not None and router.handles(qtype):
                    e, scope, _ = router.route(qtype, subnet, addr)
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
            e = class_any(found, len(q.question) - 4)
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
                reply_option(subnet, scope),
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
