"""Authoritative semantics of one zone: which records answer a (name, type).

Pure decisions, no sockets and no wire bytes: ``Zone.resolve`` says what the
answer, authority and additional sections hold; ``entries.py`` turns that into
bytes once per name. Names are keys in lowercased wire form (``b"\\x03www..."``)
so that lookups never build label objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.tokenizer
import dns.zone
import dns.zonefile
from dnslib import AAAA, RD, RDMAP, RR, A, DNSBuffer, DNSLabel

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


def key_of(name: DNSLabel | str) -> bytes:
    if isinstance(name, str):
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
    k = key
    while len(k) > len(ancestor):
        k = parent(k)
    return k == ancestor


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
    data: dict[bytes, dict[int, RRset]]
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
        self.names = set()
        self.cuts = set()
        self.children = {}
        self.cnames = {k for k, types in self.data.items() if T_CNAME in types}
        for k in (*self.data, *self.lazy):
            if k != self.okey and T_NS in self.data.get(k, ()):
                self.cuts.add(k)
            while len(k) >= len(self.okey) and k not in self.names:
                self.names.add(k)
                if k == self.okey:
                    break
                p = parent(k)
                self.children[p] = self.children.get(p, 0) + 1
                k = p

    def update(self, changes: Mapping[bytes, dict[int, RRset] | Lazy | None]) -> set[bytes]:
        """Replace (or with None/{}/nothing lazy remove) names in place; return every
        name whose node may need rebuilding: the changed names and ancestors that
        became or stopped being empty non-terminals. Cost is per changed name."""
        affected: set[bytes] = set()
        for k, types in changes.items():
            if not is_below_or_at(k, self.okey) or k == self.okey:
                continue  # the apex (SOA/NS) only changes with the zone file
            affected.add(k)
            if isinstance(types, Lazy):
                self.data.pop(k, None)
                self.cnames.discard(k)
                self.cuts.discard(k)
                if types.exists():
                    self.lazy[k] = types
                else:
                    self.lazy.pop(k, None)
                    types = None
            elif types:
                self.lazy.pop(k, None)
                self.data[k] = types
                if T_CNAME in types:
                    self.cnames.add(k)
                else:
                    self.cnames.discard(k)
                if T_NS in types:
                    self.cuts.add(k)
                else:
                    self.cuts.discard(k)
            if types:
                a = k
                while a not in self.names:  # the apex is always there: this ends
                    self.names.add(a)
                    affected.add(a)
                    p = parent(a)
                    self.children[p] = self.children.get(p, 0) + 1
                    a = p
            else:
                self.data.pop(k, None)
                self.lazy.pop(k, None)
                self.cnames.discard(k)
                self.cuts.discard(k)
                a = k
                while (
                    a != self.okey
                    and a in self.names
                    and a not in self.data
                    and a not in self.lazy
                    and not self.children.get(a)
                ):
                    self.names.discard(a)
                    self.children.pop(a, None)
                    affected.add(a)
                    p = parent(a)
                    self.children[p] -= 1
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
                types = self.data.get(WILDCARD + ce)
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


def rdata_from_wire(rtype: int, raw: bytes) -> RD:
    """A dnslib rdata object from uncompressed rdata bytes (generic RD if unknown)."""
    try:
        from dnslib import QTYPE

        cls = RDMAP.get(QTYPE.get(rtype), RD)
    except Exception:
        cls = RD
    return cls.parse(DNSBuffer(raw), len(raw))


def load_zone_file(path: Path, origin: str) -> Zone:
    """Load an RFC 1035 master file. Raises ZoneError naming file, line and problem."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ZoneError(f"{path}: cannot read zone file: {e.strerror}") from e
    try:
        dz = dns.zone.Zone(dns.name.from_text(origin), dns.rdataclass.IN, relativize=False)
        with dz.writer(True) as txn:
            _StrictReader(dns.tokenizer.Tokenizer(text, str(path)), dns.rdataclass.IN, txn).read()
        dz.check_origin()
    except dns.zone.NoSOA as e:
        raise ZoneError(f"{path}: zone {origin} has no SOA record at its apex") from e
    except dns.zone.NoNS as e:
        raise ZoneError(f"{path}: zone {origin} has no NS records at its apex") from e
    except dns.exception.SyntaxError as e:
        raise ZoneError(f"{e}") from e
    except dns.exception.DNSException as e:
        raise ZoneError(f"{path}: {e}") from e
    return zone_from_rrsets(origin, _rrsets_of(dz), source=str(path))


class _StrictReader(dns.zonefile.Reader):
    """dnspython's master-file reader, made to refuse what it would skip.

    dnspython silently drops records whose owner is outside the zone, reports
    CNAME-and-other-data without a line, and names the line after a record
    whose last token is bad. NSD refuses such zones naming the record's line;
    so do we.
    """

    def _eat_line(self) -> None:  # dnspython calls it only to skip an out-of-zone owner
        raise dns.exception.SyntaxError(
            f"owner {self.last_name} is outside the zone {self.zone_origin}"
        )

    def _rr_line(self) -> None:
        filename, line = self.tok.where()
        try:
            super()._rr_line()
        except dns.zonefile.CNAMEAndOtherData:
            raise ZoneError(
                f"{filename}:{line}: {self.last_name} has a CNAME and other data; "
                "RFC 1034 3.6.2 forbids it"
            ) from None
        except dns.exception.SyntaxError as e:
            raise ZoneError(f"{filename}:{line}: {e}") from None


def _rrsets_of(dz: dns.zone.Zone) -> Iterable[RRset]:
    for name, node in dz.nodes.items():
        label = DNSLabel([lb.lower() for lb in name.labels if lb])
        for rds in node.rdatasets:
            if rds.rdclass != dns.rdataclass.IN:
                continue
            rdatas = tuple(rdata_from_wire(int(rds.rdtype), rd.to_wire()) for rd in rds)
            yield RRset(label, int(rds.rdtype), int(rds.ttl), rdatas)


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
    return Zone(olabel, okey, data)


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
