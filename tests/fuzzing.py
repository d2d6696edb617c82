"""Fuzz packets for fedns, the checks every reply must pass, and a live runner.

Shared by ``tests/test_fuzz_property.py`` (in process, against a ``Table``,
drawing from hypothesis' ``Random``), ``tests/test_fuzz_live.py`` (a short
run against real servers) and ``benchmarks/fuzz.py`` (the long run). Every
generator takes a ``random.Random`` and returns a ``Packet``: the bytes, the
kind of fuzz they are, and what a server must do with them when the
generator knows it (``FORMERR`` for a packet malformed by construction,
``CLEAN`` for a well-formed query, ``SILENT`` for a response or a packet too
short to hold a header).

What a reply must be is ``check_reply``: parsed by dnspython, the query's ID,
opcode and question, QR=1, RA=0, Z=0, AD=0, never SERVFAIL (fedns answers SERVFAIL
only when answering raised), no larger than the requester's UDP size, no
unknown EDNS option echoed; none at all to a response.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone
import yaml

# What a server must do with a packet (``Packet.expect``); None: anything well formed.
FORMERR = "formerr"  # malformed by construction, readable header: FORMERR
CLEAN = "clean"  # a well-formed query: answered, never FORMERR or SERVFAIL
SILENT = "silent"  # a response, or no readable header: no reply at all
BADVERS = "badvers"  # a well-formed query with EDNS version > 0 (RFC 6891 6.1.3)

OPT = 41
ECS = 8
COOKIE = 10
# Options a reply may carry (NSID, ECS, COOKIE, keepalive, padding, extended
# errors): any other code is one the query sent and the server must ignore,
# not echo (RFC 6891 6.1.2).
REPLY_OPTIONS = frozenset({3, 8, 10, 11, 12, 15})
TYPES = (1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 43, 46, 48, 52, 64, 65, 99, 255, 257)
# Question types with a meaning of their own: transfers, TSIG, OPT, MAILA/MAILB,
# reserved 0 and 65535, and some never assigned.
ODD_TYPES = (0, 3, 4, 41, 249, 250, 251, 252, 253, 254, 255, 666, 1000, 65280, 65535)
ODD_CLASSES = (0, 2, 3, 4, 254, 255, 256, 65280, 65535)
# Bytes that mean something in a name: the root, short and the longest labels,
# the reserved label types and a compression pointer.
INTERESTING = (0x00, 0x01, 0x02, 0x3F, 0x40, 0x7F, 0x80, 0xC0, 0xFF)


@dataclass(frozen=True)
class Packet:
    kind: str
    data: bytes
    expect: str | None = None


# -- names ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Names:
    """The names a zone set serves (wire form), and a probe whose answer is known
    from the zone file."""

    names: tuple[bytes, ...] = field(repr=False)
    probe: tuple[str, str]  # (name, type) of a static record
    probe_rrset: frozenset[str] = field(repr=False)  # its answer records, from the zone file

    def pick(self, rng: random.Random) -> bytes:
        """A served name, sometimes a name below it (new first label), sometimes one
        outside every zone; the case of its letters randomised (0x20)."""
        r = rng.random()
        if r < 0.1:
            name = rng.choice((b"\x07example\x03com\x00", b"\x04test\x00", b"\x00"))
        else:
            name = rng.choice(self.names)
            if r > 0.75:
                label = bytes(rng.choice(b"abcxyz0129-_*") for _ in range(rng.randrange(1, 20)))
                if len(label) + 1 + len(name) <= 255:
                    name = bytes((len(label),)) + label + name
        if rng.random() < 0.3:
            # Label lengths are at most 0x3F: only letters can match.
            name = bytes(
                c ^ 0x20 if 0x41 <= (c & 0xDF) <= 0x5A and rng.random() < 0.5 else c for c in name
            )
        return name


def _wire(name: str) -> bytes:
    return dns.name.from_text(name).to_wire()


def names_of_config(config: Path) -> Names:
    """Every name a fedns config serves, derived from its zone files and federation
    section (services, clusters, endpoints, SRV names) as the README says they are."""
    doc = yaml.safe_load(config.read_text())
    names: list[str] = []
    probe: tuple[str, str] | None = None
    rrset: frozenset[str] = frozenset()
    for z in doc["zones"]:
        path = Path(z["file"])
        if not path.is_absolute():
            path = config.parent / path
        zone = dns.zone.from_file(str(path), origin=z["origin"], relativize=False)
        cuts = [
            n
            for n, node in zone.nodes.items()
            if n != zone.origin and node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS)
        ]
        for name, node in zone.nodes.items():
            names.append(name.to_text())
            rds = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.A)
            # The probe: an A record the zone answers itself (not a wildcard, not glue
            # below a delegation, which gets a referral).
            delegated = any(name.is_subdomain(c) for c in cuts)
            if probe is None and rds is not None and not name.is_wild() and not delegated:
                probe = (name.to_text(), "A")
                rrset = frozenset(f"{name} {rds.ttl} IN A {rd}".lower() for rd in rds)
    fed = doc.get("federation") or {}
    zone_name = fed.get("zone", "")
    for svc in fed.get("services", ()):
        base = f"{svc['name']}.{svc['namespace']}.{zone_name}"
        names.append(base)
        for port in svc.get("ports", ()):
            names.append(f"_{port['name']}._{port.get('protocol', 'TCP').lower()}.{base}")
        for cluster, eps in (svc.get("endpoints") or {}).items():
            names.append(f"{cluster}.{base}")
            for ep in eps:
                host = ep.get("hostname") or ep["addresses"][0].replace(".", "-").replace(":", "-")
                names.append(f"{host}.{cluster}.{base}")
    assert probe is not None, f"{config}: no A record to probe with"
    return Names(tuple(_wire(n) for n in names), probe, rrset)


def config_with(config: Path, workdir: Path, **sections: object) -> Path:
    """A copy of ``config`` in ``workdir`` with top-level ``sections`` added (e.g.
    ``cookies={}``), its zone files still found where ``config`` has them."""
    doc = yaml.safe_load(config.read_text())
    for z in doc["zones"]:
        z["file"] = str((config.parent / z["file"]).resolve())
    doc.update(sections)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / config.name
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


# -- building blocks -----------------------------------------------------------------


def header(qid: int, flags: int = 0, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack(">HHHHHH", qid & 0xFFFF, flags & 0xFFFF, qd, an, ns, ar)


def option(code: int, data: bytes) -> bytes:
    return struct.pack(">HH", code, len(data)) + data


def opt_rr(
    payload: int = 1232, version: int = 0, do: bool = False, z: int = 0, options: bytes = b""
) -> bytes:
    """An OPT pseudo-RR (RFC 6891 6.1.2); ``z`` are the must-be-zero flag bits."""
    ttl = (version << 16) | (0x8000 if do else 0) | (z & 0x7FFF)
    return b"\x00" + struct.pack(">HHIH", OPT, payload, ttl, len(options)) + options


def ecs_data(family: int, source: int, scope: int, addr: bytes) -> bytes:
    return struct.pack(">HBB", family, source, scope) + addr


def ecs_valid(data: bytes) -> bool:
    """An ECS option a server must accept, per RFC 7871 6 and 7.2.1 (with gdnsd's
    reading of FAMILY): 4 bytes at least, FAMILY 1 or 2, SCOPE 0 in a query,
    SOURCE within the family, ADDRESS exactly ceil(SOURCE/8) bytes with no bit
    set past SOURCE."""
    if len(data) < 4:
        return False
    family, source, scope = struct.unpack(">HBB", data[:4])
    width = {1: 32, 2: 128}.get(family)
    if width is None or scope or source > width:
        return False
    addr = data[4:]
    if len(addr) != (source + 7) // 8:
        return False
    spare = len(addr) * 8 - source
    return not (addr and int.from_bytes(addr, "big") & ((1 << spare) - 1))


def cookie_valid(length: int) -> bool:
    """RFC 7873 5.2.2: a client cookie alone (8 bytes), or with a server cookie of 8 to
    32 bytes; any other length is a malformed option (FORMERR)."""
    return length == 8 or 16 <= length <= 40


def random_ecs(rng: random.Random) -> bytes:
    """ECS data, valid about half the time: odd families, prefixes past the family,
    address lengths off by one, bits set past the prefix, a non-zero scope."""
    family = rng.choice((1, 1, 1, 2, 2, 0, 3, rng.randrange(65536)))
    width = 128 if family == 2 else 32
    source = rng.choice((0, 8, 16, 20, 24, 25, 32, 48, 56, 64, 128, width, rng.randrange(256)))
    scope = 0 if rng.random() < 0.85 else rng.randrange(1, 256)
    need = (source + 7) // 8
    alen = need if rng.random() < 0.8 else max(0, need + rng.choice((-1, 1, 2, -need, 9)))
    addr = bytearray(rng.randbytes(alen))
    if addr and rng.random() < 0.8 and source < alen * 8:
        spare = alen * 8 - source
        keep = (int.from_bytes(addr, "big") >> spare) << spare if spare < alen * 8 else 0
        addr = bytearray(keep.to_bytes(alen, "big"))
    return ecs_data(family, source, scope, bytes(addr))


def random_options(rng: random.Random) -> tuple[bytes, bool, bool]:
    """EDNS options: ECS, COOKIE (0..50 bytes), NSID, padding, EXPIRE, keepalive,
    unknown codes. Returns (options, all valid, has a COOKIE option)."""
    out = []
    valid = True
    cookie = False
    ecs_count = 0
    for _ in range(rng.choice((0, 1, 1, 1, 2, 3, 5))):
        kind = rng.random()
        if kind < 0.35:
            data = random_ecs(rng)
            valid = valid and ecs_valid(data)
            ecs_count += 1
            out.append(option(ECS, data))
        elif kind < 0.6:
            n = rng.choice((8, 8, 16, 24, 40, rng.randrange(51)))
            valid = valid and cookie_valid(n)
            cookie = True
            out.append(option(COOKIE, rng.randbytes(n)))
        elif kind < 0.7:
            out.append(option(3, b""))  # NSID asked
        elif kind < 0.8:
            out.append(option(12, b"\x00" * rng.randrange(0, 64)))  # padding
        elif kind < 0.85:
            out.append(option(rng.choice((9, 11)), b""))  # EXPIRE, keepalive
        else:
            code = rng.choice((100, 65001, 65535, 0, 7, 13, 14, rng.randrange(65536)))
            if code in (ECS, COOKIE):
                code = 65000
            out.append(option(code, rng.randbytes(rng.randrange(0, 24))))
    # Two ECS options, or two cookies: not valid, not necessarily FORMERR either.
    if ecs_count > 1 or sum(o[:2] == b"\x00\x0a" for o in out) > 1:
        valid = False
    return b"".join(out), valid, cookie


def question(name: bytes, qtype: int, qclass: int = 1) -> bytes:
    return name + struct.pack(">HH", qtype, qclass)


# -- generators ----------------------------------------------------------------------


def valid_query(rng: random.Random, names: Names, edns: bool | None = None) -> Packet:
    """A well-formed query for a served (or below, or outside) name, of class IN and
    a common type, RD/CD at random, with an OPT record with valid options or none."""
    flags = (0x0100 if rng.random() < 0.3 else 0) | (0x0010 if rng.random() < 0.2 else 0)
    q = question(names.pick(rng), rng.choice(TYPES))
    if edns is None:
        edns = rng.random() < 0.7
    if not edns:
        return Packet("query", header(rng.randrange(65536), flags) + q, CLEAN)
    while True:
        opts, ok, _ = random_options(rng)
        if ok:
            break
    payload = rng.choice((0, 1, 511, 512, 513, 1232, 1400, 4096, 65535, rng.randrange(65536)))
    rr = opt_rr(payload, 0, rng.random() < 0.3, 0, opts)
    return Packet("edns", header(rng.randrange(65536), flags, ar=1) + q + rr, CLEAN)


def edns_query(rng: random.Random, names: Names) -> Packet:
    """A query whose OPT record is random: payload, version, DO, must-be-zero bits,
    options valid and not (ECS, COOKIE 0..50 bytes, unknown codes)."""
    opts, ok, _ = random_options(rng)
    version = 0 if rng.random() < 0.85 else rng.randrange(1, 256)
    z = 0 if rng.random() < 0.8 else rng.randrange(0x8000)
    payload = rng.choice((0, 1, 511, 512, 1232, 4096, 65535, rng.randrange(65536)))
    rr = opt_rr(payload, version, rng.random() < 0.5, z, opts)
    q = question(names.pick(rng), rng.choice(TYPES))
    expect: str | None = None
    if ok:
        # RFC 6891 6.1.3: a version the server does not implement gets BADVERS.
        expect = BADVERS if version else CLEAN
    return Packet("edns-options", header(rng.randrange(65536), 0, ar=1) + q + rr, expect)


def random_bytes(rng: random.Random) -> Packet:
    data = rng.randbytes(rng.choice((0, 1, 2, 11, 12, 13, 17, 30, 64, 200, rng.randrange(600))))
    if len(data) > 2 and rng.random() < 0.5:
        data = data[:2] + bytes((data[2] & 0x7F,)) + data[3:]
    return Packet("random", data, SILENT if len(data) < 12 or data[2] & 0x80 else None)


def header_then_random(rng: random.Random) -> Packet:
    """A plausible query header (QR=0, QUERY, counts 0..3) and a random body."""
    counts = [1] + [rng.choice((0, 0, 1, 2, 3)) for _ in range(3)]
    body = rng.randbytes(rng.randrange(0, 300))
    return Packet("header+random", header(rng.randrange(65536), 0, *counts) + body)


def mutated(rng: random.Random, names: Names) -> Packet:
    """A valid query with 1..6 mutations: bits flipped, bytes set to interesting
    values, cut, inserted, appended, the opcode or a count changed."""
    base = valid_query(rng, names).data
    data = bytearray(base)
    for _ in range(rng.randrange(1, 7)):
        op = rng.randrange(8)
        pos = rng.randrange(max(len(data), 1))
        if op == 0 and data:
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1 and data:
            data[pos] = rng.choice(INTERESTING)
        elif op == 2:
            del data[pos:]
        elif op == 3:
            data[pos:pos] = rng.randbytes(rng.randrange(1, 9))
        elif op == 4:
            data += rng.randbytes(rng.randrange(1, 40))
        elif op == 5 and len(data) > 2:
            data[2] = (data[2] & 0x87) | (rng.randrange(16) << 3)
        elif op == 6 and len(data) >= 12:
            i = rng.choice((4, 6, 8, 10))
            data[i : i + 2] = rng.choice((0, 1, 2, 3, 255, 65535)).to_bytes(2, "big")
        elif len(data) > 12:
            a = rng.randrange(12, len(data))
            data[a:a] = data[a : a + rng.randrange(1, 16)]  # a segment repeated
    data = bytes(data)
    return Packet("mutated", data, SILENT if len(data) < 12 or data[2] & 0x80 else None)


def malformed(rng: random.Random, names: Names) -> Packet:
    """A valid query made malformed in one known way, each to get FORMERR: cut after
    the header; bytes after its last record (as Knot and BIND answer them, and
    fedns chose to; NSD ignores them); a count larger than the records; QDCOUNT 0;
    several questions (RFC 9619: QDCOUNT is 1 for QUERY)."""
    base = valid_query(rng, names)
    data = base.data
    how = rng.randrange(5)
    if how == 0:
        out = data[: rng.randrange(12, len(data))]
    elif how == 1:
        out = data + rng.randbytes(rng.randrange(1, 30))
    elif how == 2:
        i = rng.choice((6, 8, 10))
        n = struct.unpack(">H", data[i : i + 2])[0] + rng.randrange(1, 4)
        out = data[:i] + struct.pack(">H", n) + data[i + 2 :]
    elif how == 3:
        out = data[:4] + b"\x00\x00" + data[6:12]  # QDCOUNT 0, nothing after the header
    else:
        extra = b"".join(
            question(names.pick(rng), rng.choice(TYPES)) for _ in range(rng.randrange(1, 4))
        )
        qd = 1 + _count_questions(extra)
        end = _first_name_end(data, 12)
        assert end is not None
        qend = end + 4
        out = data[:4] + struct.pack(">H", qd) + data[6:qend] + extra + data[qend:]
    return Packet("malformed", out, FORMERR)


def _count_questions(blob: bytes) -> int:
    n, pos = 0, 0
    while pos < len(blob):
        end = _first_name_end(blob, pos)
        assert end is not None
        pos = end + 4
        n += 1
    return n


def pointer_trick(rng: random.Random, names: Names) -> Packet:
    """Compression pointers that must be refused (FORMERR): in the question (which
    can only point into the header or at itself), loops, forward pointers,
    pointers past the end or into the header, reserved label types; or, as
    CLEAN, a legitimate backward pointer (an additional record owned by the
    question's name)."""
    qid = rng.randrange(65536)
    name = names.pick(rng)
    q = question(name, 1)
    qend = 12 + len(q)
    rr_tail = struct.pack(">HHIH", 1, 1, 0, 4) + b"\x7f\x00\x00\x01"
    how = rng.randrange(9)
    if how == 0:  # the question is a pointer
        target = rng.choice((0, 2, 4, 11, 12, 13, 200, 0x3FFF))
        return Packet(
            "pointer",
            header(qid) + struct.pack(">H", 0xC000 | target) + b"\x00\x01\x00\x01",
            FORMERR,
        )
    if how == 1:  # labels, then a pointer back to the question's start
        label = b"\x03abc"
        return Packet("pointer", header(qid) + label + b"\xc0\x0c" + b"\x00\x01\x00\x01", FORMERR)
    if how == 2:  # an owner that points at itself
        body = struct.pack(">H", 0xC000 | qend) + rr_tail
        return Packet("pointer", header(qid, ar=1) + q + body, FORMERR)
    if how == 3:  # two owners pointing at each other
        second = qend + 2 + len(rr_tail)
        body = (
            struct.pack(">H", 0xC000 | second)
            + rr_tail
            + struct.pack(">H", 0xC000 | qend)
            + rr_tail
        )
        return Packet("pointer", header(qid, an=1, ar=1) + q + body, FORMERR)
    if how == 4:  # forward pointer
        body = struct.pack(">H", 0xC000 | (qend + 2 + len(rr_tail))) + rr_tail + b"\x00" * 12
        return Packet("pointer", header(qid, an=1) + q + body, FORMERR)
    if how == 5:  # past the end of the packet
        body = struct.pack(">H", 0xC000 | rng.randrange(qend + 20, 0x4000)) + rr_tail
        return Packet("pointer", header(qid, ns=1) + q + body, FORMERR)
    if how == 6:  # into the header
        body = struct.pack(">H", 0xC000 | rng.randrange(0, 12)) + rr_tail
        return Packet("pointer", header(qid, ar=1) + q + body, FORMERR)
    if how == 7:  # reserved label types 0x40 and 0x80
        t = rng.choice((0x40, 0x80)) | rng.randrange(0x40)
        body = bytes((t, 0x0C)) + rr_tail
        return Packet("pointer", header(qid, ar=1) + q + body, FORMERR)
    # legitimate: an A record in the additional section owned by the question's name
    extra = b"\xc0\x0c" + rr_tail
    opt = opt_rr(1232) if rng.random() < 0.5 else b""
    return Packet("pointer-valid", header(qid, ar=1 + bool(opt)) + q + extra + opt, CLEAN)


def odd_question(rng: random.Random, names: Names) -> Packet:
    """One question of an odd class or type (CH, HS, NONE, ANY, reserved, unassigned;
    AXFR, IXFR, TSIG, OPT, MAILA...), opcode QUERY."""
    qtype = rng.choice(ODD_TYPES) if rng.random() < 0.7 else rng.randrange(65536)
    qclass = rng.choice((*ODD_CLASSES, 1, 1)) if rng.random() < 0.8 else rng.randrange(65536)
    edns = rng.random() < 0.5
    data = header(rng.randrange(65536), ar=int(edns)) + question(names.pick(rng), qtype, qclass)
    if edns:
        data += opt_rr()
    # OPT as a question type is refused as malformed (RFC 6891 6.1.1); the rest is answered.
    return Packet("odd-question", data, None if qtype == OPT else CLEAN)


def other_opcode(rng: random.Random, names: Names) -> Packet:
    """A query with an opcode other than QUERY, with or without its question, with
    flags at random (genreport's "opcode" and "opcodeflg")."""
    opcode = rng.choice((1, 2, 3, 4, 5, 6, 7, 15, rng.randrange(1, 16)))
    flags = (opcode << 11) | (rng.getrandbits(16) & 0x07F0 if rng.random() < 0.5 else 0)
    flags &= ~0x8000
    qd = rng.choice((0, 1, 1, 2))
    body = b"".join(question(names.pick(rng), rng.choice(TYPES)) for _ in range(qd))
    return Packet("opcode", header(rng.randrange(65536), flags, qd=qd) + body)


def response(rng: random.Random, names: Names) -> Packet:
    """A packet with QR=1: a valid query turned into a "response", or garbage."""
    data = bytearray(
        valid_query(rng, names).data if rng.random() < 0.7 else rng.randbytes(rng.randrange(3, 200))
    )
    data[2] |= 0x80
    return Packet("response", bytes(data), SILENT)


Generator = Callable[[random.Random, Names], Packet]

UDP_KINDS: dict[str, tuple[float, Generator]] = {
    # kind: (share of the packets, generator)
    "query": (0.10, lambda rng, names: valid_query(rng, names)),
    "edns-options": (0.14, edns_query),
    "random": (0.12, lambda rng, names: random_bytes(rng)),
    "header+random": (0.08, lambda rng, names: header_then_random(rng)),
    "mutated": (0.24, mutated),
    "malformed": (0.08, malformed),
    "pointer": (0.10, pointer_trick),
    "odd-question": (0.06, odd_question),
    "opcode": (0.04, other_opcode),
    "response": (0.04, response),
}


def pick_generator(rng: random.Random) -> Generator:
    r = rng.random()
    for share, gen in UDP_KINDS.values():
        r -= share
        if r < 0:
            return gen
    return UDP_KINDS["mutated"][1]


def any_packet(rng: random.Random, names: Names) -> Packet:
    return pick_generator(rng)(rng, names)


# -- what a reply must be ------------------------------------------------------------


def _first_name_end(data: bytes, pos: int) -> int | None:
    """Where an uncompressed name starting at ``pos`` ends; None on a pointer or overrun."""
    while pos < len(data):
        n = data[pos]
        if n == 0:
            return pos + 1
        if n & 0xC0:
            return None
        pos += n + 1
    return None


def _skip_name(data: bytes, pos: int) -> int | None:
    """Where the (possibly compressed) name at ``pos`` ends in the packet; None past it."""
    while pos < len(data):
        n = data[pos]
        if n & 0xC0 == 0xC0:
            return pos + 2 if pos + 2 <= len(data) else None
        if n == 0:
            return pos + 1
        pos += n + 1
    return None


def edns_options(data: bytes) -> list[tuple[int, bytes]]:
    """The (code, data) of every option of the first OPT record in the additional
    section, read from the bytes as they are (no option validated); [] without one."""
    if len(data) < 12:
        return []
    qd, an, ns, ar = struct.unpack(">HHHH", data[4:12])
    pos: int | None = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) if pos is not None else None
        pos = pos + 4 if pos is not None else None
    for i in range(an + ns + ar):
        pos = _skip_name(data, pos) if pos is not None else None
        if pos is None or pos + 10 > len(data):
            return []
        rtype = struct.unpack_from(">H", data, pos)[0]
        rdlen = struct.unpack_from(">H", data, pos + 8)[0]
        rdata = data[pos + 10 : pos + 10 + rdlen]
        pos += 10 + rdlen
        if i >= an + ns and rtype == OPT:
            out, o = [], 0
            while o + 4 <= len(rdata):
                code, n = struct.unpack(">HH", rdata[o : o + 4])
                out.append((code, rdata[o + 4 : o + 4 + n]))
                o += 4 + n
            return out
    return []


def requester_limit(query: bytes, parsed: dns.message.Message | None = None) -> int:
    """The UDP size the requester allows: its OPT record's payload (at least 512,
    RFC 6891 6.2.5), or 512 without one (RFC 1035 4.2.1). The OPT record is found
    by dnspython (``parsed``: the query as it parsed it strictly), which otherwise
    keeps parsing past errors elsewhere in the packet."""
    m = parsed
    if m is None:
        try:
            m = dns.message.from_wire(query, continue_on_error=True, ignore_trailing=True)
        except (dns.exception.DNSException, ValueError, IndexError):
            return 512
    return max(512, m.payload) if m.edns >= 0 else 512


def parse_query(query: bytes) -> dns.message.Message | None:
    """The query as dnspython parses it, strictly; None when it cannot."""
    try:
        return dns.message.from_wire(query)
    except (dns.exception.DNSException, ValueError, IndexError, KeyError):
        return None


def check_reply(
    query: bytes,
    reply: bytes | None,
    tcp: bool,
    expect: str | None = None,
    silence_ok: bool = False,
) -> list[str]:
    """Every way ``reply`` fails what a reply to ``query`` must be (empty: it passes).

    ``silence_ok``: a missing reply is no fault (live UDP, where the kernel may drop).
    """
    faults: list[str] = []
    readable = len(query) >= 12 and not query[2] & 0x80
    if not readable or expect == SILENT:
        if reply is not None:
            faults.append("a reply to a response or to a packet without a header")
        return faults
    if reply is None:
        if not silence_ok:
            faults.append("no reply to a packet with a readable query header")
        return faults
    try:
        r = dns.message.from_wire(reply)
    except Exception as e:  # any failure to parse is the finding
        return [f"reply does not parse ({type(e).__name__}: {e})"]
    if r.id != struct.unpack(">H", query[:2])[0]:
        faults.append(f"reply ID {r.id} is not the query's")
    if not r.flags & dns.flags.QR:
        faults.append("QR=0 in the reply")
    if r.flags & dns.flags.RA:
        faults.append("RA=1 from an authoritative server")
    if reply[3] & 0x40:
        faults.append("Z bit set in the reply")
    if r.flags & dns.flags.AD:
        faults.append("AD=1: fedns serves no signed data (RFC 4035 3.2.3)")
    if (reply[2] >> 3) & 0x0F != (query[2] >> 3) & 0x0F:
        faults.append("reply opcode is not the query's")
    rcode = r.rcode()
    if rcode == dns.rcode.SERVFAIL:
        faults.append("SERVFAIL (answering raised)")
    q = parse_query(query)
    if not tcp and len(reply) > (limit := requester_limit(query, q)):
        faults.append(f"UDP reply of {len(reply)} bytes over the requester's {limit}")
    if r.opt is not None:
        codes = {o.otype for o in r.options}
        if codes - REPLY_OPTIONS:
            faults.append(f"unknown EDNS options echoed: {sorted(codes - REPLY_OPTIONS)}")
    if reply[4:6] != b"\x00\x00":
        # A question in the reply is the query's, byte for byte (case included).
        end = _first_name_end(reply, 12)
        if end is None or reply[12 : end + 4] != query[12 : end + 4]:
            faults.append("reply question is not the query's")
    if q is not None and q.opcode() == dns.opcode.QUERY and len(q.question) == 1:
        if reply[4:6] == b"\x00\x00" and rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            faults.append("an answer without the question")
        if bool(r.flags & dns.flags.RD) != bool(q.flags & dns.flags.RD):
            faults.append("RD not copied")
        if q.opt is not None and reply[4:6] != b"\x00\x00" and r.opt is None:
            faults.append("OPT in the query, none in the reply (RFC 6891 6.1.1)")
        asked = {o.otype: o for o in q.options}
        given = {o.otype: o for o in r.options} if r.opt is not None else {}
        if ECS in given and ECS not in asked:
            faults.append("ECS in the reply, none in the query")
        if COOKIE in given:
            # RFC 7873 5.2.1: a server cookie goes with the client cookie it answers.
            mine = asked[COOKIE].to_wire()[:8] if COOKIE in asked else None
            theirs = given[COOKIE].to_wire()
            if mine is None or theirs[:8] != mine or not 16 <= len(theirs) <= 40:
                faults.append("a COOKIE in the reply that is not the client's cookie + a server's")
    if expect == FORMERR:
        if rcode != dns.rcode.FORMERR:
            faults.append(f"{dns.rcode.to_text(rcode)} to a malformed packet, not FORMERR")
        if r.answer or r.authority:
            faults.append("records in a FORMERR reply")
    elif expect == CLEAN:
        if rcode in (dns.rcode.FORMERR, dns.rcode.SERVFAIL):
            faults.append(f"{dns.rcode.to_text(rcode)} to a well-formed query")
    elif expect == BADVERS and rcode != dns.rcode.BADVERS:
        faults.append(f"{dns.rcode.to_text(rcode)} to EDNS version > 0, not BADVERS")
    return faults


# -- the live runner -----------------------------------------------------------------

# Lines of a fedns log that mean an exception escaped or a process died.
LOG_MARKERS = (
    "Traceback",
    "query_failed",
    "udp_batch_failed",
    "worker_died",
    "worker_crash_loop",
    "Exception in callback",
    "exception was never retrieved",
    "Unhandled exception",
)


def log_faults(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(m in line for m in LOG_MARKERS)]


def log_excerpt(text: str) -> str:
    """The log around its first fault line (a traceback follows it), or ""."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if any(m in line for m in LOG_MARKERS):
            return "\n".join(lines[max(0, i - 2) : i + 30])
    return ""


@dataclass
class Tally:
    """What a live run sent and got, per kind of packet."""

    sent: Counter[str] = field(default_factory=Counter)
    replies: Counter[str] = field(default_factory=Counter)
    rcodes: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # the first faults, with the bytes
    probes: int = 0
    probe_retries: int = 0
    probe_failures: list[str] = field(default_factory=list)

    def fault(self, kind: str, what: str, query: bytes, reply: bytes | None) -> None:
        self.faults[what] += 1
        if len(self.examples) < 20:
            self.examples.append(
                f"[{kind}] {what}: query {query.hex()} reply {reply.hex() if reply else None}"
            )


def probe_ok(reply: bytes | None, names: Names, qid: int) -> str | None:
    """None when ``reply`` is the right answer to the probe, else what is wrong."""
    if reply is None:
        return "no reply"
    try:
        r = dns.message.from_wire(reply)
    except dns.exception.DNSException as e:
        return f"unparsable: {e}"
    if r.id != qid or r.rcode() != dns.rcode.NOERROR or not r.flags & dns.flags.AA:
        return f"id {r.id} rcode {dns.rcode.to_text(r.rcode())} flags {dns.flags.to_text(r.flags)}"
    got = {line.lower() for rrset in r.answer for line in rrset.to_text().splitlines()}
    if got != names.probe_rrset:
        return f"answer {sorted(got)} is not the zone file's {sorted(names.probe_rrset)}"
    return None


def probe_query(names: Names, qid: int) -> bytes:
    q = dns.message.make_query(names.probe[0], names.probe[1], use_edns=False)
    q.flags = 0
    q.id = qid
    return q.to_wire()


def frame(msg: bytes) -> bytes:
    return struct.pack(">H", len(msg) & 0xFFFF) + msg


def _tcp_replies(buf: bytes) -> tuple[list[bytes], bytes]:
    out = []
    while len(buf) >= 2:
        n = struct.unpack(">H", buf[:2])[0]
        if len(buf) < 2 + n:
            break
        out.append(buf[2 : 2 + n])
        buf = buf[2 + n :]
    return out, buf


class LiveFuzzer:
    """Fires fuzz packets at a DNS server on loopback, checks every reply it can tie
    to its query (each packet of a batch gets its own ID), and after every batch
    asks the probe and checks the answer against the zone file.

    UDP goes out from several sockets on different loopback addresses, so that
    with SO_REUSEPORT every worker gets its share; each socket's packets are
    answered in order by one worker, so the probe's reply closes the batch.
    """

    def __init__(
        self, addr: tuple[str, int], names: Names, seed: int, sources: int = 8, timeout: float = 3.0
    ) -> None:
        self.addr = addr
        self.names = names
        self.rng = random.Random(seed)
        self.timeout = timeout
        self.tally = Tally()
        self.socks: list[socket.socket] = []
        for i in range(sources):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            s.bind((f"127.0.{i // 250}.{2 + i % 250}", 0))
            s.setblocking(False)
            self.socks.append(s)
        self._turn = 0

    def close(self) -> None:
        for s in self.socks:
            s.close()

    def __enter__(self) -> LiveFuzzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- UDP --

    def udp_batch(self, size: int = 400) -> None:
        which = self._turn % len(self.socks)
        s = self.socks[which]
        # This socket's batches alternate between two ID ranges: a late reply to the
        # last one cannot be taken for a reply to this one.
        base = 0x8000 * ((self._turn // len(self.socks)) % 2)
        self._turn += 1
        assert size < 0x7FFF
        sent: dict[int, Packet] = {}
        got: set[int] = set()
        for i in range(size):
            p = any_packet(self.rng, self.names)
            qid = base + i
            data = struct.pack(">H", qid) + p.data[2:] if len(p.data) >= 2 else p.data
            p = Packet(p.kind, data, p.expect)
            if len(data) >= 2:
                sent[qid] = p
            self.tally.sent[p.kind] += 1
            try:
                s.sendto(data, self.addr)
            except BlockingIOError:
                select.select([], [s], [], 1.0)
                with contextlib.suppress(BlockingIOError):
                    s.sendto(data, self.addr)
            if i % 64 == 63:
                self._drain(s, sent, got)
        pid = base + 0x7FFF
        probe = probe_query(self.names, pid)
        self.tally.probes += 1
        for attempt in range(4):
            s.sendto(probe, self.addr)
            end = time.monotonic() + self.timeout
            while time.monotonic() < end:
                select.select([s], [], [], max(0.0, end - time.monotonic()))
                reply = self._drain(s, sent, got, probe_id=pid)
                if reply is not None:
                    why = probe_ok(reply, self.names, pid)
                    if why:
                        self.tally.probe_failures.append(f"UDP probe: {why}")
                    return
            self.tally.probe_retries += attempt < 3
        self.tally.probe_failures.append(f"UDP probe: no reply in {4 * self.timeout:.0f} s")

    def _drain(
        self, s: socket.socket, sent: dict[int, Packet], got: set[int], probe_id: int = -1
    ) -> bytes | None:
        """Read and check every reply waiting; the probe's reply if it came."""
        probe = None
        while True:
            try:
                reply = s.recv(65535)
            except BlockingIOError:
                return probe
            if len(reply) < 2:
                self.tally.fault("?", "a reply shorter than an ID", b"", reply)
                continue
            qid = struct.unpack(">H", reply[:2])[0]
            if qid == probe_id:
                probe = reply
                continue
            if qid & 0x7FFF == 0x7FFF:
                continue  # the last batch's probe, answered after we sent it again
            p = sent.get(qid)
            if p is None:
                self.tally.fault("?", "a reply with no query of that ID", b"", reply)
                continue
            if qid in got:
                self.tally.fault(p.kind, "two replies to one query", p.data, reply)
                continue
            got.add(qid)
            self._check(p.kind, p, reply, tcp=False)

    def _check(self, kind: str, p: Packet, reply: bytes, tcp: bool) -> None:
        self.tally.replies[kind] += 1
        if len(reply) >= 4:
            self.tally.rcodes[dns.rcode.to_text(reply[3] & 0x0F)] += 1
        for what in check_reply(p.data, reply, tcp, p.expect, silence_ok=True):
            self.tally.fault(f"{kind}/{p.kind}", what, p.data, reply)

    # -- TCP --

    def tcp_probe(self) -> None:
        self.tally.probes += 1
        pid = 0x7FFF
        try:
            with socket.create_connection(
                self.addr, timeout=self.timeout, source_address=("127.0.2.1", 0)
            ) as c:
                c.sendall(frame(probe_query(self.names, pid)))
                replies = self._read_all(c, want=1)
        except OSError as e:
            self.tally.probe_failures.append(f"TCP probe: {e}")
            return
        why = probe_ok(replies[0] if replies else None, self.names, pid)
        if why:
            self.tally.probe_failures.append(f"TCP probe: {why}")

    def _read_all(self, c: socket.socket, want: int | None, limit: float = 3.0) -> list[bytes]:
        """Framed replies until ``want`` of them came, the peer closed, or ``limit`` s."""
        buf = b""
        out: list[bytes] = []
        end = time.monotonic() + limit
        while (want is None or len(out) < want) and time.monotonic() < end:
            c.settimeout(max(0.01, end - time.monotonic()))
            try:
                chunk = c.recv(65535)
            except OSError:  # a timeout, or the server hung up
                break
            if not chunk:
                break
            buf += chunk
            more, buf = _tcp_replies(buf)
            out += more
        return out

    def tcp_case(self, case: TcpCase) -> None:
        """Run one TCP case and check every reply it gets against its query."""
        plan = case(self)
        kind = "tcp-" + case.__name__.lstrip("_")
        self.tally.sent[kind] += len(plan.packets) or 1
        by_id = {p.data[:2]: p for p in plan.packets}
        want = sum(1 for p in plan.packets if p.expect != SILENT)
        # From loopback addresses in turn: the connections a case leaves closing must
        # not add up against a per-source connection cap.
        source = (f"127.0.1.{1 + self.rng.randrange(250)}", 0)
        try:
            c = socket.create_connection(self.addr, timeout=self.timeout, source_address=source)
        except OSError as e:
            self.tally.fault(kind, f"cannot connect: {e}", b"", None)
            return
        replies: list[bytes] = []
        # From here on the server may hang up on what it was sent: no fault in
        # itself, but the replies a complete plan expects must have come first.
        with c, contextlib.suppress(OSError):
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for step in plan.steps:
                if isinstance(step, float):
                    time.sleep(step)
                else:
                    c.sendall(step)
            if plan.complete:
                replies += self._read_all(c, want)
            if plan.end == "reset":
                # SO_LINGER 0: close() sends RST, with the message half sent.
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif plan.end == "half-close":
                c.shutdown(socket.SHUT_WR)
                replies += self._read_all(c, None)
        answered = set()
        for reply in replies:
            p = by_id.get(reply[:2])
            if p is None:
                if plan.strict_ids:
                    self.tally.fault(kind, "a TCP reply with no query of that ID", b"", reply)
                continue
            answered.add(reply[:2])
            self._check(kind, p, reply, tcp=True)
        if plan.complete:
            for p in plan.packets:
                if p.expect != SILENT and p.data[:2] not in answered:
                    self.tally.fault(kind, "a TCP query left unanswered", p.data, None)

    def numbered(self, gen: Callable[[], Packet], n: int, start: int = 1) -> list[Packet]:
        """``n`` packets from ``gen`` with the IDs start, start + 1, ... (at least 2 bytes)."""
        out = []
        for i in range(n):
            p = gen()
            if len(p.data) >= 2:
                out.append(Packet(p.kind, struct.pack(">H", start + i) + p.data[2:], p.expect))
        return out


@dataclass(frozen=True)
class TcpPlan:
    """One TCP connection's worth of fuzz: what to send (bytes, or a pause in
    seconds), the messages whose replies come back (unique IDs), how our side
    ends ("wait": read the replies, "half-close": shut down writing first,
    "reset": RST), and whether every readable query must have been answered."""

    steps: list[bytes | float]
    packets: list[Packet] = field(default_factory=list)
    end: str = "wait"
    complete: bool = True
    strict_ids: bool = True  # False: a reply may answer a frame we did not list


TcpCase = Callable[[LiveFuzzer], TcpPlan]


def _readable(p: Packet) -> bool:
    return len(p.data) >= 12 and not p.data[2] & 0x80


def _pipeline(f: LiveFuzzer) -> TcpPlan:
    """Many queries, valid and fuzzed (headers kept readable), in one segment."""
    ps = [
        p
        for p in f.numbered(lambda: any_packet(f.rng, f.names), f.rng.randrange(5, 60))
        if _readable(p)
    ]
    return TcpPlan([b"".join(frame(p.data) for p in ps)], ps)


def _many_valid(f: LiveFuzzer) -> TcpPlan:
    """A hundred well-formed queries in one segment: a hundred answers."""
    ps = f.numbered(lambda: valid_query(f.rng, f.names), 100)
    return TcpPlan([b"".join(frame(p.data) for p in ps)], ps)


def _split(f: LiveFuzzer) -> TcpPlan:
    """A query in two segments cut anywhere, the next one cut inside its length."""
    ps = f.numbered(lambda: valid_query(f.rng, f.names), 2)
    a, b = frame(ps[0].data), frame(ps[1].data)
    cut = f.rng.randrange(1, len(a))
    return TcpPlan([a[:cut], 0.01, a[cut:] + b[:1], 0.01, b[1:]], ps)


def _byte_by_byte(f: LiveFuzzer) -> TcpPlan:
    ps = f.numbered(lambda: valid_query(f.rng, f.names, edns=False), 1)
    return TcpPlan([bytes((c,)) for c in frame(ps[0].data)], ps)


def _tiny_frames(f: LiveFuzzer) -> TcpPlan:
    """Frames of 0..11 bytes (no header: no reply), then a valid query."""
    junk = b"".join(
        frame(f.rng.randbytes(f.rng.randrange(0, 12))) for _ in range(f.rng.randrange(1, 10))
    )
    ps = f.numbered(lambda: valid_query(f.rng, f.names), 1, start=0x4000)
    return TcpPlan([junk + frame(ps[0].data)], ps)


def _long_length(f: LiveFuzzer) -> TcpPlan:
    """A length prefix larger than what follows, then our side closes."""
    p = valid_query(f.rng, f.names).data
    return TcpPlan([struct.pack(">H", len(p) + f.rng.randrange(1, 5000)) + p], end="half-close")


def _short_length(f: LiveFuzzer) -> TcpPlan:
    """A length prefix shorter than the message: the frame is a query cut short
    (FORMERR if its header is whole), and its tail reads as the next frame."""
    p = valid_query(f.rng, f.names)
    n = f.rng.randrange(0, len(p.data))
    cut = Packet(p.kind, p.data[:n], FORMERR if n >= 12 else SILENT)
    packets = [cut] if n >= 2 else []
    # What follows the cut may happen to frame a message with a header: its reply
    # answers no query we listed.
    return TcpPlan([struct.pack(">H", n) + p.data], packets, end="half-close", strict_ids=False)


def _half_message(f: LiveFuzzer) -> TcpPlan:
    p = frame(valid_query(f.rng, f.names).data)
    return TcpPlan([p[: f.rng.randrange(1, len(p))]], end="half-close")


def _garbage(f: LiveFuzzer) -> TcpPlan:
    """Random bytes as a stream: whatever frames they happen to hold may be answered
    (each reply checked against its frame when the frames' IDs are distinct)."""
    stream = f.rng.randbytes(f.rng.randrange(1, 3000))
    frames, pos = [], 0
    while pos + 2 <= len(stream):
        n = struct.unpack(">H", stream[pos : pos + 2])[0]
        if pos + 2 + n > len(stream):
            break
        body = stream[pos + 2 : pos + 2 + n]
        frames.append(Packet("garbage", body, SILENT if not _readable(Packet("", body)) else None))
        pos += 2 + n
    ids = [p.data[:2] for p in frames if len(p.data) >= 2]
    unique = len(ids) == len(set(ids))
    listed = [p for p in frames if len(p.data) >= 2] if unique else []
    return TcpPlan([stream], listed, end="half-close", complete=False, strict_ids=unique)


def _reset(f: LiveFuzzer) -> TcpPlan:
    """Half a message, then a reset instead of a close."""
    p = frame(valid_query(f.rng, f.names).data)
    return TcpPlan([p[: len(p) // 2]], end="reset")


TCP_CASES: tuple[TcpCase, ...] = (
    _pipeline,
    _pipeline,
    _many_valid,
    _split,
    _byte_by_byte,
    _tiny_frames,
    _long_length,
    _short_length,
    _half_message,
    _garbage,
    _reset,
)


def tcp_sent(t: Tally) -> int:
    return sum(n for k, n in t.sent.items() if k.startswith("tcp-"))


def run(
    fuzzer: LiveFuzzer,
    udp_packets: int,
    tcp_messages: int,
    batch: int = 400,
    alive: Callable[[], bool] = lambda: True,
    progress: Callable[[Tally], None] | None = None,
) -> Tally:
    """UDP batches, each followed by as many TCP cases as keep the TCP messages sent
    in proportion, until both budgets are spent (or the server is gone)."""
    t = fuzzer.tally
    udp_done = 0
    while udp_done < udp_packets or tcp_sent(t) < tcp_messages:
        if udp_done < udp_packets:
            n = min(batch, udp_packets - udp_done)
            fuzzer.udp_batch(n)
            udp_done += n
        share = tcp_messages * min(1.0, udp_done / max(udp_packets, 1))
        cases = 0
        while tcp_sent(t) < share:
            fuzzer.tcp_case(fuzzer.rng.choice(TCP_CASES))
            cases += 1
        if cases:
            fuzzer.tcp_probe()
        if not alive():
            t.probe_failures.append("the server process exited")
            break
        if progress is not None:
            progress(t)
    return t


def kinds() -> Iterator[str]:
    yield "query"
    yield "edns"  # valid_query's queries with an OPT record
    yield from UDP_KINDS
    yield "pointer-valid"
    for case in TCP_CASES:
        yield "tcp-" + case.__name__.lstrip("_")


def summary_rows(t: Tally, order: Iterable[str] | None = None) -> list[tuple[str, int, int]]:
    keys: Sequence[str] = list(dict.fromkeys([*(order or kinds()), *t.sent]))
    return [(k, t.sent[k], t.replies[k]) for k in keys if t.sent[k]]


def wait_federated(host: str, port: int, names: Names, deadline_s: float = 15.0) -> None:
    """Until a federated service answers with records (the first sync is over)."""
    svc = next(n for n in names.names if n.startswith(b"\x04cart\x04shop"))
    q = dns.message.make_query(dns.name.from_wire(svc, 0)[0], "A")
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            r = dns.query.udp(q, host, port=port, timeout=0.5)
            if r.rcode() == dns.rcode.NOERROR and r.answer:
                return
        except dns.exception.Timeout:
            pass
        time.sleep(0.05)
    raise AssertionError(f"the demo's services were not published in {deadline_s} s")
