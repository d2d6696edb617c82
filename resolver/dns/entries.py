"""Compiled answers: one response's wire bytes less ID, question and OPT (``Entry``),
and every existing name's entries (``Node``).

dnslib builds these bytes when data changes, never per query. Bodies do not
depend on the letter case of the question: the question is echoed from the
query (0x20 case preserved), and compression pointers into it stay valid
because the name has the same length in any case. Answers that depend on the
asked name itself (NXDOMAIN, NODATA below a wildcard, synthesized wildcard
records, referrals from below a cut) are *templates*: byte runs with gaps for
a 2-byte pointer to a suffix of the question, filled in per query. That keeps
a random-subdomain flood as cheap as a positive answer, with no per-name
cache to blow up.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import Any, Protocol

from dnslib import RR, TXT, DNSBuffer, DNSLabel, DNSQuestion

from .ecs import ClientSubnet
from .wire import AA, C_CH, C_IN, CD, NOERROR, QR, T_SOA, T_TXT, TC
from .zone import WILDCARD, Resolution, RRset, Zone, key_of, label_of, parent

_COUNTS = struct.Struct(">HHHH")
_PTR = struct.Struct(">H")
_RRFIXED = struct.Struct(">HHIH")

SECTION_ANSWER, SECTION_AUTHORITY, SECTION_ADDITIONAL = 0, 1, 2

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


class Router(Protocol):
    """Answers a name whose A/AAAA/SRV depend on the client (a federated service).

    The federation side implements it (``resolver.federation.router``); the
    answer table only calls it, so this layer knows nothing of policies.
    """

    # Whole per-query results kept by the table's hot path, keyed by what the
    # client's place came from; cleared by the table (its bound is table-wide).
    memo: dict[Any, Any]
    lpm: dict[int, tuple[Any, ...]]  # filled by ``lpm_for``, read by the table's hot path

    def handles(self, qtype: int) -> bool:
        """Whether answers of this type depend on the client (else the zone's apply)."""
        ...

    def route(self, qtype: int, subnet: ClientSubnet | None, addr: Any) -> tuple[Entry, int, bool]:
        """The answer for one client: its entry, the reply's ECS SCOPE, and whether
        the client was placed by ``subnet`` alone (then the answer holds for any ``addr``)."""
        ...

    def lpm_for(self, qtype: int, family: int) -> tuple[Any, ...]:
        """How the table finds the bucket of a valid ECS subnet of ``family`` (ECS
        FAMILY) for this type, also kept in ``lpm`` under ``qtype << 2 | family``:
        (block starts, slice index, slice shift, bucket per block), or () when
        there is none. The address (zero-padded, privacy-clamped) is in block
        ``bisect_right(starts, v, index[k], index[k + 1]) - 1`` with ``k = v >>
        shift``; its bucket, unless -1, is such that ``route`` gives every subnet
        of it the same entry and SCOPE, placed by the subnet alone. The table
        remembers whole replies per (query less the ECS ADDRESS, bucket)."""
        ...


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
    # A routed name's records are made only when a type is first asked for: for a
    # federated service they are every endpoint's addresses and SRV targets, made
    # into RRsets here for nothing (a quarter of a first publish's CPU).
    types = {} if routed else zone.records(k) or {}
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


def chaos_entries(identity: str | None, version: str | None) -> dict[bytes, Entry]:
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


def class_any(e: Entry, qname_len: int) -> Entry:
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
