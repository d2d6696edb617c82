"""Authoritative semantics of one zone: which records answer a (name, type).

Pure decisions, no sockets and no wire bytes: ``Zone.resolve`` says what the
answer, authority and additional sections hold; ``entries.py`` turns that into
bytes once per name. Names are keys in lowercased wire form (``b"\\x03www..."``)
so that lookups never build label objects.
"""

from __future__ import annotations

import gc
import itertools
import re
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.grange
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.zonefile
from dnslib import AAAA, QTYPE, RD, RDMAP, RR, A, DNSBuffer, DNSLabel

from . import wire
from .wire import (
    NOERROR,
    NXDOMAIN,
    T_A,
    T_AAAA,
    T_ANY,
    T_CNAME,
    T_DS,
    T_MX,
    T_NS,
    T_SOA,
    T_SRV,
)

MAX_CNAME_CHAIN = 8


class ZoneError(ValueError):
    """A zone that must not be served; the message names file, line and problem."""


@dataclass(frozen=True, slots=True)
class RRset:
    """Records of one owner and type. ``rdatas`` are dnslib rdata objects."""

    name: DNSLabel
    rtype: int
    ttl: int
    rdatas: tuple[RD, ...]

    def rrs(self, owner: DNSLabel | None = None) -> list[RR]:
        o = self.name if owner is None else owner
        return [RR(o, self.rtype, 1, self.ttl, rd) for rd in self.rdatas]

    def renamed(self, owner: DNSLabel) -> RRset:
        return RRset(owner, self.rtype, self.ttl, self.rdatas)


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a zone says for one question: sections as RRsets, in order."""

    rcode: int
    aa: bool
    answer: tuple[RRset, ...] = ()
    authority: tuple[RRset, ...] = ()
    additional: tuple[RRset, ...] = ()


_LENGTH = [bytes((n,)) for n in range(64)]


def key_of(name: DNSLabel | str) -> bytes:
    """A name's wire form, lower-cased: the key of ``Zone`` indexes and ``Table.nodes``."""
    if isinstance(name, str):
        # A plain ASCII name (every federated name: one per endpoint at publish)
        # without DNSLabel's IDNA codec and escape handling; anything else, and any
        # name the codec would refuse, through DNSLabel as before.
        if name.isascii() and "\\" not in name:
            if "." not in name:  # one label: every endpoint's own at publish
                if 0 < len(name) < 64:
                    return _LENGTH[len(name)] + name.encode().lower() + b"\0"
                if not name:
                    return b"\0"
            else:
                labels = name.encode().lower().split(b".")
                if labels[-1] == b"":
                    labels.pop()  # the root's empty label (a lone "." leaves one: below)
                key = b""
                for x in labels:
                    if not 0 < len(x) < 64:
                        break
                    key += _LENGTH[len(x)] + x
                else:
                    return key + b"\0"
        name = DNSLabel(name)
    out = bytearray()
    for label in name.label:
        out.append(len(label))
        out += label
    out.append(0)
    return bytes(out).lower()


def label_of(key: bytes) -> DNSLabel:
    labels = []
    pos = 0
    while key[pos]:
        ln = key[pos]
        labels.append(key[pos + 1 : pos + 1 + ln])
        pos += ln + 1
    return DNSLabel(labels)


def parent(key: bytes) -> bytes:
    return key[key[0] + 1 :]


def is_below_or_at(key: bytes, ancestor: bytes) -> bool:
    """True when ``key`` equals or is a descendant of ``ancestor`` (label-wise)."""
    if not key.endswith(ancestor):
        return False
    # The labels are walked by their lengths, no slice made: once per endpoint name
    # at a publish. The suffix is the ancestor only where a label begins there.
    at = len(key) - len(ancestor)
    pos = 0
    while pos < at:
        pos += key[pos] + 1
    return pos == at


WILDCARD = b"\x01*"


class Lazy:
    """A name's records kept compactly and made into ``RRset``s when asked for
    (``Zone.records``).

    Why: a federation has names by the hundred thousand (one per endpoint and
    per cluster of every service: ~110,000 at 10 clusters x 1,000 services x
    10 endpoints), and as ``RRset``s of dnslib objects each costs kilobytes
    and a full build seconds, for records most of which are never asked for.
    """

    __slots__ = ()

    def exists(self) -> bool:
        """False: the name has no records (it is removed, as by ``None``)."""
        raise NotImplementedError

    def rrsets(self, key: bytes) -> dict[int, RRset]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Addresses(Lazy):
    """A name with only A/AAAA records, as the plan's address strings (~100 bytes)."""

    ttl: int
    v4: tuple[str, ...]
    v6: tuple[str, ...]

    def exists(self) -> bool:
        return bool(self.v4 or self.v6)

    def rrsets(self, key: bytes) -> dict[int, RRset]:
        label = label_of(key)
        out: dict[int, RRset] = {}
        if self.v4:
            out[T_A] = RRset(label, T_A, self.ttl, tuple(A(a) for a in self.v4))
        if self.v6:
            out[T_AAAA] = RRset(label, T_AAAA, self.ttl, tuple(AAAA(a) for a in self.v6))
        return out


@dataclass
class Zone:
    """One zone's data. Built once per load or registry change, then read-only."""

    origin: DNSLabel
    okey: bytes
    # Owners and their RRsets by type; for a big zone file's plain names, the same
    # ``Packed`` as in ``lazy`` (``load_zone_file``'s ``compact_above``).
    data: dict[bytes, dict[int, RRset] | Packed]
    names: set[bytes] = field(default_factory=set)  # owners plus empty non-terminals
    cuts: set[bytes] = field(default_factory=set)  # delegation points (NS below apex)
    children: dict[bytes, int] = field(default_factory=dict)  # direct children in ``names``
    # Names whose A/AAAA/SRV are chosen per client (federated services). A CNAME
    # chain stops before them: RFC 7871 7.2.1 says to place only the CNAME, so a
    # resolver caches it with SCOPE 0 and asks for the target with ECS itself.
    tailored: set[bytes] = field(default_factory=set)
    cnames: set[bytes] = field(default_factory=set)  # owners of a CNAME (kept by update)
    # Address-only names kept compact (federated endpoint and cluster names):
    # names like those in ``data``, whose records ``records`` makes on demand.
    lazy: dict[bytes, Lazy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.reindex()

    def reindex(self) -> None:
        okey = self.okey
        # A Packed name has neither (load_zone_file compiles those names up front).
        full = [(k, types) for k, types in self.data.items() if not isinstance(types, Packed)]
        self.cnames = {k for k, types in full if T_CNAME in types}
        self.cuts = {k for k, types in full if T_NS in types and k != okey}
        names: set[bytes] = set()
        children: dict[bytes, int] = {}
        n = len(okey)
        for k in itertools.chain(self.data, self.lazy):
            while len(k) >= n and k not in names:
                names.add(k)
                if k == okey:
                    break
                p = k[k[0] + 1 :]
                children[p] = children.get(p, 0) + 1
                k = p
        self.names, self.children = names, children

    def update(self, changes: Mapping[bytes, dict[int, RRset] | Lazy | None]) -> set[bytes]:
        """Replace (or with None/{}/nothing lazy remove) names in place; return every
        name whose node may need rebuilding: the changed names and ancestors that
        became or stopped being empty non-terminals. Cost is per changed name."""
        affected: set[bytes] = set()
        # Read once: a first publish passes every endpoint's name through here.
        okey, data, lazy, names, children = self.okey, self.data, self.lazy, self.names, self.children
        cnames, cuts = self.cnames, self.cuts
        for k, types in changes.items():
            if k == okey or not is_below_or_at(k, okey):
                continue  # the apex (SOA/NS) only changes with the zone file
            affected.add(k)
            if isinstance(types, Lazy):
                if k in data:  # cnames and cuts only ever hold owners in data
                    del data[k]
                    cnames.discard(k)
                    cuts.discard(k)
                if types.exists():
                    lazy[k] = types
                else:
                    lazy.pop(k, None)
                    types = None
            elif types:
                lazy.pop(k, None)
                data[k] = types
                if T_CNAME in types:
                    cnames.add(k)
                else:
                    cnames.discard(k)
                if T_NS in types:
                    cuts.add(k)
                else:
                    cuts.discard(k)
            if types:
                a = k
                while a not in names:  # the apex is always there: this ends
                    names.add(a)
                    affected.add(a)
                    p = parent(a)
                    children[p] = children.get(p, 0) + 1
                    a = p
            else:
                data.pop(k, None)
                lazy.pop(k, None)
                cnames.discard(k)
                cuts.discard(k)
                a = k
                while (
                    a != okey
                    and a in names
                    and a not in data
                    and a not in lazy
                    and not children.get(a)
                ):
                    names.discard(a)
                    children.pop(a, None)
                    affected.add(a)
                    p = parent(a)
                    children[p] -= 1
                    a = p
                    affected.add(a)
        return affected

    # -- record access ------------------------------------------------------

    def records(self, key: bytes) -> dict[int, RRset] | None:
        """The RRsets owned by ``key`` per type; None for no owner (ENT or absent)."""
        types = self.data.get(key)
        if types is None:
            lazy = self.lazy.get(key)
            if lazy is not None:
                return lazy.rrsets(key)
        elif isinstance(types, Packed):
            return types.rrsets(key)
        return types

    @property
    def soa(self) -> RRset:
        return self.data[self.okey][T_SOA]

    def negative_soa(self) -> RRset:
        """The SOA for negative answers: TTL = min(SOA TTL, SOA MINIMUM) (RFC 2308 3)."""
        soa = self.soa
        minimum = soa.rdatas[0].times[4]
        return RRset(soa.name, T_SOA, min(soa.ttl, minimum), soa.rdatas)

    def cut_above(self, key: bytes) -> bytes | None:
        """The highest delegation point at or above ``key``, if any."""
        found = None
        k = key
        while len(k) > len(self.okey):
            if k in self.cuts:
                found = k
            k = parent(k)
        return found

    def closest_encloser(self, key: bytes) -> bytes:
        k = key
        while k not in self.names:
            k = parent(k)
        return k

    # -- resolution ---------------------------------------------------------

    def resolve(self, key: bytes, qtype: int, qname: DNSLabel | None = None) -> Resolution:
        """Answer ``qtype`` at ``key`` (must be at or below the origin)."""
        qname = qname if qname is not None else label_of(key)
        answer: list[RRset] = []
        seen: set[bytes] = set()
        owner = qname
        for _ in range(MAX_CNAME_CHAIN + 1):
            seen.add(key)
            cut = self.cut_above(key)
            if cut is not None and not (cut == key and qtype == T_DS):
                ref = self._referral(cut)
                if answer:
                    # A CNAME into a delegated child: the chain so far, then the
                    # referral, as RFC 1034 4.3.2 step 3b restarts into it (NSD too).
                    return Resolution(NOERROR, True, tuple(answer), ref.authority, ref.additional)
                return ref
            types = self.records(key)
            synthesized = False
            if types is None and key not in self.names:
                ce = self.closest_encloser(key)
                types = self.records(WILDCARD + ce)
                if types is None:
                    return Resolution(NXDOMAIN, True, tuple(answer), (self.negative_soa(),))
                synthesized = True  # RFC 4592: owner of synthesized records = qname
            if not types:  # empty non-terminal
                return Resolution(NOERROR, True, tuple(answer), (self.negative_soa(),))
            if qtype == T_ANY:
                # RFC 8482 4.1: answer ANY with one RRset rather than all of them.
                rtype = T_CNAME if T_CNAME in types else min(types)
                answer.append(types[rtype].renamed(owner) if synthesized else types[rtype])
                return Resolution(NOERROR, True, tuple(answer))
            hit = types.get(qtype)
            if hit is not None:
                rr = hit.renamed(owner) if synthesized else hit
                answer.append(rr)
                return Resolution(NOERROR, True, tuple(answer), (), self._additional(rr))
            cname = types.get(T_CNAME)
            if cname is None:
                return Resolution(NOERROR, True, tuple(answer), (self.negative_soa(),))
            answer.append(cname.renamed(owner) if synthesized else cname)
            target = cname.rdatas[0].label
            tkey = key_of(target)
            if tkey in seen or not is_below_or_at(tkey, self.okey) or tkey in self.tailored:
                return Resolution(NOERROR, True, tuple(answer))
            key, owner = tkey, target
        return Resolution(NOERROR, True, tuple(answer))

    def _referral(self, cut: bytes) -> Resolution:
        ns = self.data[cut][T_NS]
        return Resolution(NOERROR, False, (), (ns,), self._glue(ns, cut))

    def _glue(self, ns: RRset, cut: bytes) -> tuple[RRset, ...]:
        """Addresses of name servers that live at or below the cut (RFC 9471)."""
        out: list[RRset] = []
        for rd in ns.rdatas:
            tkey = key_of(rd.label)
            if is_below_or_at(tkey, cut):
                types = self.records(tkey) or {}
                out.extend(types[t] for t in (T_A, T_AAAA) if t in types)
        return tuple(out)

    def _additional(self, rrset: RRset) -> tuple[RRset, ...]:
        """In-zone addresses of NS, MX and SRV targets (RFC 1035 3.3, RFC 2782)."""
        if rrset.rtype == T_NS or rrset.rtype == T_MX:
            targets = [rd.label for rd in rrset.rdatas]
        elif rrset.rtype == T_SRV:
            targets = [rd.target for rd in rrset.rdatas]
        else:
            return ()
        out: list[RRset] = []
        seen: set[bytes] = set()
        for t in targets:
            tkey = key_of(t)
            if tkey in seen or not is_below_or_at(tkey, self.okey):
                continue
            seen.add(tkey)
            cut = self.cut_above(tkey)
            if cut is not None and not (rrset.rtype == T_NS and tkey.endswith(cut)):
                continue
            types = self.records(tkey) or {}
            out.extend(types[x] for x in (T_A, T_AAAA) if x in types)
        return tuple(out)


# -- loading ------------------------------------------------------------------

MAX_GENERATE = 65_536  # records one $GENERATE may make: a line must not ask for millions
# Zones with more names than this keep their plain names compact (``Packed``):
# compiled when first asked for, as federated names are, instead of all up front.
COMPACT_ABOVE = 10_000

_RR = struct.Struct(">HIH")  # type, TTL, rdata length: one record of a ``Packed``
_TXT, _RRSIG, _NSEC, _NSEC3, _KEY = 16, 46, 47, 50, 25
_PTR, _DNAME, _NXT = 12, 39, 30
# dnspython keeps one record of these, the last (``dns.rdatatype.is_singleton``);
# SOA and CNAME are refused instead, as NSD does.
_LAST_WINS = frozenset((_DNAME, _NSEC, _NXT))
# Types a CNAME may sit beside (RFC 4035 2.5, RFC 3007), as dnspython's node check.
_NEUTRAL = frozenset((_NSEC, _NSEC3, _KEY))
_EAGER_TYPES = frozenset((T_NS, T_CNAME, _DNAME))


def rdata_from_wire(rtype: int, raw: bytes) -> RD:
    """A dnslib rdata object from uncompressed rdata bytes (generic RD if unknown)."""
    try:
        cls = RDMAP.get(QTYPE.get(rtype), RD)
    except Exception:
        cls = RD
    return cls.parse(DNSBuffer(raw), len(raw))


class Packed(Lazy, Mapping[int, RRset]):
    """A zone file name's records as wire rdata, made into ``RRset``s when asked for.

    Why: as ``RRset``s of dnslib objects, with their compiled answers, a name
    costs kilobytes and a 1,000,000-record zone gigabytes and minutes to load;
    packed, about 150 bytes. ``wire`` is each record's type, TTL (the lowest of
    its RRset), rdata length and rdata, RRset after RRset. Never NS, CNAME or
    DNAME: names with those are compiled up front (``Zone.reindex`` relies on it).
    """

    __slots__ = ("key", "wire")

    def __init__(self, key: bytes, wire: bytes) -> None:
        self.key = key
        self.wire = wire

    def exists(self) -> bool:
        return True

    def _types(self) -> list[int]:
        wire = self.wire
        rtype, _, n = _RR.unpack_from(wire)
        if 8 + n == len(wire):
            return [rtype]  # most names: one record
        out: list[int] = []
        pos, end = 0, len(wire)
        while pos < end:
            rtype, _, n = _RR.unpack_from(wire, pos)
            if rtype not in out:
                out.append(rtype)
            pos += 8 + n
        return out

    def rrsets(self, key: bytes) -> dict[int, RRset]:
        label = label_of(key)
        found: dict[int, tuple[int, list[RD]]] = {}
        wire, pos, end = self.wire, 0, len(self.wire)
        while pos < end:
            rtype, ttl, n = _RR.unpack_from(wire, pos)
            pos += 8
            rd = rdata_from_wire(rtype, wire[pos : pos + n])
            pos += n
            have = found.get(rtype)
            if have is None:
                found[rtype] = (ttl, [rd])
            else:  # RRSIGs covering another type: one RRset of type RRSIG, as before
                have[1].append(rd)
                if ttl < have[0]:
                    found[rtype] = (ttl, have[1])
        return {t: RRset(label, t, ttl, tuple(rds)) for t, (ttl, rds) in found.items()}

    def __getitem__(self, rtype: int) -> RRset:
        return self.rrsets(self.key)[rtype]

    def __contains__(self, rtype: object) -> bool:
        wire, pos, end = self.wire, 0, len(self.wire)
        while pos < end:
            t, _, n = _RR.unpack_from(wire, pos)
            if t == rtype:
                return True
            pos += 8 + n
        return False

    def __iter__(self) -> Iterator[int]:
        return iter(self._types())

    def __len__(self) -> int:
        return len(self._types())


def load_zone_file(
    path: Path,
    origin: str,
    max_records: int = 1_000_000,
    compact_above: int | None = None,
) -> Zone:
    """Load an RFC 1035 master file. Raises ZoneError naming file, line and problem.

    ``max_records``: refuse a zone with more records (``limits.max_records``).
    ``compact_above``: with more names than this, keep plain names ``Packed`` in
    ``Zone.lazy`` (None: never); the ``Table`` serving the zone must then learn
    them, which its ``publish`` does.

    Plain lines (owner, TTL, class, type and the rdata of A, AAAA, TXT, CNAME,
    NS, PTR, MX or SRV on one line) are read here; anything else (directives,
    parentheses, escapes, other types) by dnspython, with the state they share.
    """
    records = _Records(origin, str(path), max_records)
    # What a load makes lives on (no garbage, no cycles), and the collector's passes
    # over a million new objects (and the serving ones) cost a tenth of a big load's
    # time, each holding the interpreter, which the serving UDP thread needs.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with path.open("rb") as f:
            _Reader(records).read_file(f)
        return records.zone(compact_above)
    except OSError as e:
        raise ZoneError(f"{path}: cannot read zone file: {e.strerror}") from e
    except dns.exception.SyntaxError as e:
        raise ZoneError(f"{e}") from None
    except dns.exception.DNSException as e:
        raise ZoneError(f"{path}: {e}") from None
    finally:
        if collecting:
            gc.enable()


class _Records:
    """What a master file says, per owner, checked as each record arrives.

    It is the transaction dnspython's ``Reader`` writes into (``add`` and the few
    calls it makes besides), and the fast path's (``put``). A name with one
    record is kept as that record's packed bytes; with more, as its RRsets in
    the order dnspython keeps them (first seen first, records in file order,
    duplicates dropped, the lowest TTL). ``line`` is the record's line, for errors.
    """

    def __init__(self, origin: str, source: str, max_records: int) -> None:
        self.origin = dns.name.from_text(origin)
        self.okey = _key(self.origin)
        self.source = source
        self.max_records = max_records
        self.count = 0
        self.line = 0
        self.soa_line = 0
        # owner key -> one packed record, or [[rtype, covers, ttl, [rdata...], canonical set]]
        self.names: dict[bytes, bytes | list[list[Any]]] = {}
        self.manager = self

    # -- what dnspython's Reader calls ---------------------------------------------

    def origin_information(self) -> tuple[dns.name.Name, bool, dns.name.Name]:
        return self.origin, False, self.origin

    def get_class(self) -> dns.rdataclass.RdataClass:
        return dns.rdataclass.IN

    def check_put_rdataset(self, check: object) -> None:
        """dnspython's CNAME check: ``put`` makes its own, naming the line."""

    def _set_origin(self, origin: object) -> None:
        """$ORIGIN: the reader keeps the current origin; the zone's stays."""

    def add_unicode(self, attribute: str) -> None:
        """$UNICODE: only the reader's name codec changes."""

    def add(self, name: dns.name.Name, ttl: int, rd: dns.rdata.Rdata) -> None:
        wire = rd.to_wire()
        assert wire is not None
        self.put(_key(name), int(rd.rdtype), ttl, wire)

    # -- records --------------------------------------------------------------------

    def fail(self, msg: str) -> ZoneError:
        return ZoneError(f"{self.source}:{self.line}: {msg}")

    def put(self, key: bytes, rtype: int, ttl: int, rdata: bytes) -> None:
        self.count += 1
        if self.count > self.max_records:
            raise self.fail(
                f"zone {self.origin} has more than {self.max_records:,} records "
                "(limits.max_records); raise limits.max_records in the config "
                "if the zone is meant to be this big"
            )
        if len(rdata) > 0xFFFF:
            raise self.fail(
                f"{len(rdata):,} bytes of record data; at most 65,535 fit in a record "
                "(RFC 1035 3.2.1)"
            )
        cur = self.names.get(key)
        if cur is None:
            if rtype == T_SOA:
                self._soa(key)
            self.names[key] = _RR.pack(rtype, ttl, len(rdata)) + rdata
            return
        if isinstance(cur, bytes):
            cur = self.names[key] = _unpack(cur)
        self._merge(key, cur, rtype, ttl, rdata)

    def _soa(self, key: bytes) -> None:
        if key != self.okey:
            raise self.fail(
                f"an SOA record at {label_of(key)}: it belongs at the zone's apex "
                f"{self.origin} only"
            )
        if self.soa_line:
            raise self.fail(
                f"a second SOA record for {self.origin} (the first is on line "
                f"{self.soa_line}); a zone has exactly one"
            )
        self.soa_line = self.line

    def _merge(
        self, key: bytes, groups: list[list[Any]], rtype: int, ttl: int, rdata: bytes
    ) -> None:
        covers = (rdata[0] << 8 | rdata[1]) if rtype == _RRSIG and len(rdata) >= 2 else 0
        kind = _kind(rtype, covers)
        if kind:
            for g in groups:
                other = _kind(g[0], g[1])
                if other and other != kind:
                    raise self.fail(
                        f"{label_of(key)} has a CNAME and other data; RFC 1034 3.6.2 forbids it"
                    )
        if rtype == T_SOA:
            self._soa(key)
        for g in groups:
            if g[0] != rtype or g[1] != covers:
                continue
            if rtype in _LAST_WINS:
                g[2:] = [ttl, [rdata], None]
                return
            seen = g[4]
            if seen is None:
                seen = g[4] = {_canonical(rtype, r) for r in g[3]}
            c = _canonical(rtype, rdata)
            if c not in seen:
                if rtype == T_CNAME:
                    raise self.fail(f"{label_of(key)} has more than one CNAME record")
                seen.add(c)
                g[3].append(rdata)
            g[2] = min(g[2], ttl)
            return
        groups.append([rtype, covers, ttl, [rdata], None])

    # -- the zone ---------------------------------------------------------------------

    def zone(self, compact_above: int | None) -> Zone:
        okey, where = self.okey, f"{self.source}: "
        apex = self.names.get(okey)
        types = _types_of(apex) if apex is not None else set()
        if T_SOA not in types:
            raise ZoneError(f"{where}zone {self.origin} has no SOA record at its apex")
        if T_NS not in types:
            raise ZoneError(f"{where}zone {self.origin} has no NS records at its apex")
        if T_CNAME in types:
            raise ZoneError(f"{where}the zone apex cannot be a CNAME")
        names = self.names
        compact = compact_above is not None and len(names) > compact_above
        # Compiled up front, as the answer table's walk up from a name that does
        # not exist must find them: the apex, delegations, CNAMEs (their chains are
        # rebuilt at every change), wildcards and the names that have them.
        eager = {okey}
        if compact:
            for k in names:
                if k.startswith(WILDCARD):
                    eager.update((k, k[len(WILDCARD) :]))
        data: dict[bytes, dict[int, RRset] | Packed] = {}
        lazy: dict[bytes, Lazy] = {}
        for k, v in names.items():
            if isinstance(v, bytes):
                p = Packed(k, v)
                plain = (v[0] << 8 | v[1]) not in _EAGER_TYPES
            else:
                p = Packed(k, _pack(v))
                plain = all(g[0] not in _EAGER_TYPES for g in v)
            if compact and plain and k not in eager:
                data[k] = lazy[k] = p
            else:
                data[k] = p.rrsets(k)
        self.names = {}
        return Zone(label_of(okey), okey, data, lazy=lazy)


def _key(name: dns.name.Name) -> bytes:
    """A dnspython name's lookup key (lowercased wire form)."""
    wire = name.canonicalize().to_wire()
    assert wire is not None  # an absolute name
    return wire


def _unpack(wire: bytes) -> list[list[Any]]:
    rtype, ttl, n = _RR.unpack_from(wire)
    rdata = wire[8 : 8 + n]
    covers = (rdata[0] << 8 | rdata[1]) if rtype == _RRSIG and n >= 2 else 0
    return [[rtype, covers, ttl, [rdata], None]]


def _pack(groups: list[list[Any]]) -> bytes:
    return b"".join(
        _RR.pack(rtype, ttl, len(rd)) + rd for rtype, _, ttl, rds, _ in groups for rd in rds
    )


def _types_of(v: bytes | list[list[Any]]) -> set[int]:
    return {_RR.unpack_from(v)[0]} if isinstance(v, bytes) else {g[0] for g in v}


def _kind(rtype: int, covers: int) -> int:
    """dnspython's node kinds: 0 neutral (may sit beside a CNAME), 1 CNAME, 2 other data."""
    t = covers if rtype == _RRSIG else rtype
    return 1 if t == T_CNAME else 0 if t in _NEUTRAL else 2


def _canonical(rtype: int, rdata: bytes) -> bytes:
    """The rdata as dnspython compares records (its canonical form, RFC 4034 6.2)."""
    if rtype in (T_A, T_AAAA, _TXT):
        return rdata
    if rtype in (T_NS, T_CNAME, _PTR):
        return rdata.lower()  # one name: its length octets are below 'A'
    if rtype == T_MX:
        return rdata[:2] + rdata[2:].lower()
    if rtype == T_SRV:
        return rdata[:6] + rdata[6:].lower()
    rd = dns.rdata.from_wire(dns.rdataclass.IN, rtype, rdata, 0, len(rdata))  # type: ignore[arg-type]
    return rd.to_digestable()


# -- the master file reader ---------------------------------------------------------

# The types whose one-line records are read without dnspython.
_FAST = {"A": T_A, "AAAA": T_AAAA, "TXT": _TXT, "CNAME": T_CNAME, "NS": T_NS, "PTR": _PTR,
         "MX": T_MX, "SRV": T_SRV}  # fmt: skip
# A line with one of these goes to dnspython whole (a ';' comment, or quotes in TXT data,
# are read here). Python's str.split() also splits at \v \f \x1c-\x1f; dnspython does not.
_SPECIAL = re.compile(r'[()\\";\r\x0b\x0c\x1c-\x1f]')
_TXT_TAIL = re.compile(r'[ \t]+|"([^"\\\r]*)"|([^ \t"();\\\r]+)|(;.*)')
_HEX6 = re.compile(r"[0-9A-Fa-f:]+")  # no embedded IPv4: libc and dnspython agree on these
_MAX_TTL = 2**32 - 1
_UINT16 = 65535
_NAMES_MEMO = 4096


class _Reader(dns.zonefile.Reader):
    """dnspython's master-file reader, with a fast path for plain lines, made to
    refuse what it would skip or silently take.

    ``read_file`` reads the file line by line: a plain line is parsed here; any
    other entry (with the lines its parentheses span) is given to dnspython's
    own loop, on the state both share (origin, last owner, TTLs). dnspython
    silently drops records whose owner is outside the zone, keeps the last of
    two SOA or CNAME records, and names the line after a record whose last
    token is bad; NSD refuses such zones naming the record's line; so do we.
    """

    def __init__(self, records: _Records) -> None:
        tok = dns.tokenizer.Tokenizer("", records.source)
        super().__init__(tok, dns.rdataclass.IN, records)  # type: ignore[arg-type]
        self.records = records
        self._implicit = getattr(self, "_implicit_ttl", None)  # dnspython >= 2.8
        self._owner = records.okey  # the last owner's key (dnspython's last_name, lowercased)
        self._owner_name: dns.name.Name | None = self.last_name  # last_name when _owner was set
        self._names: dict[str, bytes | None] = {}  # rdata names read, per current origin
        self._origin_of(self.current_origin)

    def _origin_of(self, origin: dns.name.Name | None) -> None:
        self._origin = origin
        wire = origin.to_wire() if origin is not None else None
        self._origin_wire = wire if wire is not None else b""
        self._origin_key = self._origin_wire.lower()
        # Relative owners then are in the zone (and no longer than 255 octets with
        # a first label of up to 63): no check needed per line.
        self._origin_in = (
            origin is not None
            and self.zone_origin is not None
            and origin.is_subdomain(self.zone_origin)
            and len(self._origin_wire) <= 255 - 64
        )
        self._names = {}

    # -- dnspython's hooks ------------------------------------------------------------

    def _eat_line(self) -> None:  # dnspython calls it only to skip an out-of-zone owner
        raise dns.exception.SyntaxError(
            f"owner {self.last_name} is outside the zone {self.zone_origin}"
        )

    def _rr_line(self) -> None:
        filename, line = self.tok.where()
        self.records.line = line
        try:
            super()._rr_line()
        except dns.exception.SyntaxError as e:
            raise ZoneError(f"{filename}:{line}: {e}") from None

    def _generate_line(self) -> None:
        self.records.line = self.tok.where()[1]
        token = self.tok.get()
        self.tok.unget(token)
        try:
            start, stop, step = dns.grange.from_text(token.value)
            n = len(range(start, stop + 1, step))
        except Exception:  # dnspython reports a bad range in its own words, below
            n = 0
        if n > MAX_GENERATE:
            raise dns.exception.SyntaxError(
                f"$GENERATE {token.value} would make {n:,} records; at most "
                f"{MAX_GENERATE:,} per $GENERATE: split the range into several"
            )
        super()._generate_line()

    # -- the file -----------------------------------------------------------------------

    def read_file(self, f: Iterable[bytes]) -> None:
        lineno = offset = 0
        lines = iter(f)
        plain = self._plain
        for raw in lines:
            lineno += 1
            try:
                line = raw.decode()
            except UnicodeDecodeError:
                line = self._raw_bytes(raw, lineno, offset)
            offset += len(raw)
            if plain(line, lineno):
                continue
            # Anything else is one entry for dnspython, with every line its
            # parentheses span.
            start, entry = lineno, [line]
            depth = _depth(line)
            while depth > 0:
                raw = next(lines, b"")
                if not raw:
                    break
                lineno += 1
                line = self._decode(raw, lineno, offset)
                offset += len(raw)
                entry.append(line)
                depth += _depth(line)
            lineno = self._dnspython("".join(entry), start) - 1

    def _decode(self, raw: bytes, lineno: int, offset: int) -> str:
        try:
            return raw.decode()
        except UnicodeDecodeError:
            return self._raw_bytes(raw, lineno, offset)

    def _raw_bytes(self, raw: bytes, lineno: int, offset: int) -> str:
        """A line that is not UTF-8: its bytes kept where the data is bytes (a quoted
        string, TXT data: RFC 1035 <character-string>s, as NSD reads them), written
        as the \\DDD escapes dnspython turns back into those bytes; elsewhere an error."""
        text = raw.decode("utf-8", "surrogateescape")
        out: list[str] = []
        pos = 0  # byte offset in the line
        quoted = escaped = comment = False
        for ch in text:
            size = len(ch.encode("utf-8", "surrogateescape"))
            if "\udc80" <= ch <= "\udcff":
                byte = ord(ch) - 0xDC00
                if comment:
                    out.append("?")
                elif quoted or _in_txt_data("".join(out)):
                    out.append(f"\\{byte:03d}")
                else:
                    raise ZoneError(
                        f"{self.records.source}:{lineno}: byte 0x{byte:02X} at offset "
                        f"{offset + pos} is not UTF-8; only quoted strings and TXT data "
                        f"may hold other bytes: write it as \\{byte:03d}, or save the "
                        "file as UTF-8"
                    )
                escaped = False
            else:
                out.append(ch)
                if escaped:
                    escaped = False
                elif ch == "\\":
                    escaped = True
                elif ch == '"' and not comment:
                    quoted = not quoted
                elif ch == ";" and not quoted:
                    comment = True
            pos += size
        return "".join(out)

    def _dnspython(self, text: str, line: int) -> int:
        """One entry read by dnspython; the number of the line after it."""
        if self._owner_name is None or self._owner != _key(self._owner_name):
            self.last_name = dns.name.from_wire(self._owner, 0)[0]
        codec = self.tok.idna_codec
        self.tok = dns.tokenizer.Tokenizer(text, self.records.source, codec)
        self.tok.line_number = line
        super().read()
        self._owner_name = self.last_name
        if self.last_name is not None:
            self._owner = _key(self.last_name)
        if self.current_origin is not self._origin:  # "==" ignores letter case
            self._origin_of(self.current_origin)
        return self.tok.line_number

    def _plain(self, line: str, lineno: int) -> bool:
        """Read one plain record line (or an empty or comment line); False to leave it
        to dnspython. Nothing changes before the whole line is known to be plain."""
        if line.endswith("\n"):
            line = line[:-2] if line.endswith("\r\n") else line[:-1]
        if not line.isascii():
            return False
        tail = ""
        m = _SPECIAL.search(line)
        if m is not None:
            c = m.group()
            if c == ";":
                line = line[: m.start()]
            elif c == '"':
                line, tail = line[: m.start()], line[m.start() :]
            else:
                return False
        words = line.split()
        if not words:
            return not tail
        if line[0] == " " or line[0] == "\t":
            key, i = self._owner, 0
        elif line[0] == "$":
            return False
        else:
            w = words[0]
            i = 1
            if self._origin_in and "." not in w and w != "@" and len(w) < 64:
                key = bytes((len(w),)) + w.lower().encode() + self._origin_key
            else:
                owner = self._name(w, False)
                if owner is None:
                    return False
                key = owner.lower()
                if not is_below_or_at(key, self.records.okey):
                    return False  # dnspython says what is wrong
        n = len(words)
        ttl: int | None = None
        if i < n and words[i].isdigit():
            ttl = int(words[i])
            i += 1
        if i < n and words[i].upper() == "IN":
            i += 1
            if ttl is None and i < n and words[i].isdigit():
                ttl = int(words[i])
                i += 1
        if i >= n:
            return False
        rtype = _FAST.get(words[i].upper())
        if rtype is None or (ttl is not None and ttl > _MAX_TTL) or (tail and rtype != _TXT):
            return False
        rdata = self._rdata(rtype, words[i + 1 :], tail)
        if rdata is None:
            return False
        explicit = ttl is not None
        if ttl is None:
            ttl = self._implicit() if self._implicit is not None else self._implicit_old()
            if ttl is None:
                return False
        if i:
            self._owner = key
        if explicit:
            self.last_ttl, self.last_ttl_known = ttl, True
        self.records.line = lineno
        self.records.put(key, rtype, ttl, rdata)
        return True

    def _implicit_old(self) -> int | None:
        """The TTL of a record without one, as dnspython before 2.8 chose it."""
        if self.default_ttl_known:
            return int(self.default_ttl)
        return int(self.last_ttl) if self.last_ttl_known else None

    def _rdata(self, rtype: int, words: list[str], tail: str) -> bytes | None:
        """The rdata of a plain line in wire form, as dnspython writes it; None if unsure."""
        n = len(words)
        try:
            if rtype == T_A:
                return socket.inet_pton(socket.AF_INET, words[0]) if n == 1 else None
            if rtype == T_AAAA:
                if n != 1 or _HEX6.fullmatch(words[0]) is None:
                    return None
                return socket.inet_pton(socket.AF_INET6, words[0])
        except OSError:
            return None
        if rtype == _TXT:
            return _txt(words, tail)
        if rtype == T_MX:
            if n != 2 or not _uint16(words[0]):
                return None
            target = self._name(words[1])
            return None if target is None else int(words[0]).to_bytes(2, "big") + target
        if rtype == T_SRV:
            if n != 4 or not (_uint16(words[0]) and _uint16(words[1]) and _uint16(words[2])):
                return None
            target = self._name(words[3])
            if target is None:
                return None
            return struct.pack(">HHH", int(words[0]), int(words[1]), int(words[2])) + target
        if n != 1:  # NS, CNAME, PTR
            return None
        return self._name(words[0])

    def _name(self, text: str, memo: bool = True) -> bytes | None:
        """A name's wire form, letter case kept, as dnspython reads it against the
        current origin; None for what dnspython should read (escapes, bad labels).
        ``memo``: remember it (names in rdata repeat; owners mostly do not)."""
        if memo:
            hit = self._names.get(text, b"")
            if hit != b"":
                return hit
        if text == "@":
            wire: bytes | None = self._origin_wire or None
        elif text == ".":
            wire = b"\x00"
        else:
            absolute = text.endswith(".")
            labels = (text[:-1] if absolute else text).split(".")
            if "" in labels or any(len(lb) > 63 for lb in labels):
                wire = None
            else:
                wire = b"".join(bytes((len(lb),)) + lb.encode() for lb in labels)
                if absolute:
                    wire += b"\x00"
                elif self._origin is not None:
                    wire += self._origin_wire
                else:
                    wire = None
                if wire is not None and len(wire) > 255:
                    wire = None
        if memo:
            if len(self._names) >= _NAMES_MEMO:
                self._names.clear()
            self._names[text] = wire
        return wire


def _uint16(word: str) -> bool:
    return word.isdigit() and int(word) <= _UINT16


def _txt(words: list[str], tail: str) -> bytes | None:
    """TXT rdata from its words before the first quote and the rest of the line."""
    out = bytearray()
    for w in words:
        if len(w) > 255:
            return None
        out.append(len(w))
        out += w.encode()
    pos, end = 0, len(tail)
    while pos < end:
        m = _TXT_TAIL.match(tail, pos)
        if m is None:
            return None  # parentheses, escapes: dnspython's
        if m.group(3) is not None:
            break  # a comment
        s = m.group(1) if m.group(1) is not None else m.group(2)
        if s is not None:
            if len(s) > 255:
                return None
            out.append(len(s))
            out += s.encode()
        pos = m.end()
    return bytes(out) if out else None


def _depth(line: str) -> int:
    """How many parentheses the line leaves open (quotes, escapes and comments as
    dnspython's tokenizer reads them)."""
    if "(" not in line and ")" not in line:
        return 0
    depth = 0
    quoted = escaped = False
    for ch in line:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif ch == ";":
            break
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
    return depth


def _in_txt_data(before: str) -> bool:
    """Whether text that follows ``before`` on its line is in a TXT (or SPF) record's data."""
    words = before.split()
    if before[:1] not in (" ", "\t"):
        words = words[1:]  # the owner
    return any(w.upper() in ("TXT", "SPF") for w in words)


def zone_from_rrsets(origin: str, rrsets: Iterable[RRset], source: str = "") -> Zone:
    """Check RFC consistency and build the zone. Raises ZoneError."""
    olabel = DNSLabel(origin)
    okey = key_of(olabel)
    data: dict[bytes, dict[int, RRset]] = {}
    where = f"{source}: " if source else ""
    for rs in rrsets:
        k = key_of(rs.name)
        if not is_below_or_at(k, okey):
            raise ZoneError(f"{where}{rs.name} is outside the zone {olabel}")
        types = data.setdefault(k, {})
        if rs.rtype in types:
            old = types[rs.rtype]
            rs = RRset(old.name, rs.rtype, min(old.ttl, rs.ttl), old.rdatas + rs.rdatas)
        types[rs.rtype] = rs
    apex = data.get(okey, {})
    if T_SOA not in apex:
        raise ZoneError(f"{where}zone {olabel} has no SOA record at its apex")
    if len(apex[T_SOA].rdatas) != 1:
        raise ZoneError(f"{where}zone {olabel} has more than one SOA record")
    if T_NS not in apex:
        raise ZoneError(f"{where}zone {olabel} has no NS records at its apex")
    for k, types in data.items():
        if T_CNAME in types:
            if len(types) > 1:
                others = ", ".join(sorted(_tname(t) for t in types if t != T_CNAME))
                raise ZoneError(
                    f"{where}{label_of(k)} has a CNAME and other data ({others}); RFC 1034 3.6.2 forbids it"
                )
            if len(types[T_CNAME].rdatas) != 1:
                raise ZoneError(f"{where}{label_of(k)} has more than one CNAME record")
            if k == okey:
                raise ZoneError(f"{where}the zone apex cannot be a CNAME")
    typed: dict[bytes, dict[int, RRset] | Packed] = dict(data)
    return Zone(olabel, okey, typed)


def _tname(t: int) -> str:
    return dns.rdatatype.to_text(t)  # type: ignore[arg-type]


__all__ = [
    "RRset",
    "Resolution",
    "Zone",
    "ZoneError",
    "key_of",
    "label_of",
    "load_zone_file",
    "wire",
    "zone_from_rrsets",
]
