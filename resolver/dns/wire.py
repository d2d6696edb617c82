"""DNS wire format: the per-query parse and the few records fedns writes by hand.

Everything here runs per query, so it works on ``bytes`` directly and returns
plain tuples; dnslib is used where answers are built, never here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Header flag bits (RFC 1035 4.1.1), as they sit in the two flag bytes.
QR = 0x80  # first byte
AA = 0x04  # first byte
TC = 0x02  # first byte
RD = 0x01  # first byte
CD = 0x10  # second byte

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_MX, T_TXT = 1, 2, 5, 6, 12, 15, 16
T_AAAA, T_SRV, T_OPT, T_DS, T_IXFR, T_AXFR, T_ANY, T_CAA = 28, 33, 41, 43, 251, 252, 255, 257
C_IN, C_CH, C_ANY = 1, 3, 255

OPT_ECS = 8
DEFAULT_UDP_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation
MIN_UDP_PAYLOAD = 512
MAX_NAME = 255  # octets of a name in wire form (RFC 1035 3.1)

_HDR = struct.Struct(">HBBHHHH")
_OPT_FIXED = struct.Struct(">HHIH")


class FormErr(Exception):
    """The packet's header is readable but the rest is not a valid query."""


@dataclass(frozen=True, slots=True)
class Edns:
    """What the query's OPT record asked for (RFC 6891)."""

    payload: int  # requester's UDP payload size, as sent
    version: int
    do: bool
    ecs: bytes | None  # raw ECS option data (RFC 7871), validated by locality code


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query. ``question`` is the raw question as asked (original case)."""

    qid: int
    flags1: int
    flags2: int
    opcode: int
    question: bytes  # QNAME + QTYPE + QCLASS exactly as received
    lname: bytes  # QNAME in wire form, ASCII-lowercased: the lookup key
    qtype: int
    qclass: int
    edns: Edns | None


def parse_query(data: bytes) -> Query:
    """Parse a query. Raises FormErr for a readable header with a bad body.

    The caller must already have checked ``len(data) >= 12`` and QR == 0.
    """
    qid, f1, f2, qd, an, ns, ar = _HDR.unpack_from(data)
    opcode = (f1 >> 3) & 0x0F
    if qd != 1:
        raise FormErr("QDCOUNT must be 1")
    end = len(data)
    pos = 12
    while True:
        if pos >= end:
            raise FormErr("question name runs past the packet")
        ln = data[pos]
        if ln == 0:
            pos += 1
            break
        if ln & 0xC0:
            # A question is the first name in the message: a pointer can only
            # point into the header, so it is never valid here.
            raise FormErr("compression pointer or bad label type in question")
        pos += ln + 1
    if pos - 12 > MAX_NAME:
        raise FormErr("question name longer than 255 octets")
    if pos + 4 > end:
        raise FormErr("question truncated")
    qtype = (data[pos] << 8) | data[pos + 1]
    qclass = (data[pos + 2] << 8) | data[pos + 3]
    lname = data[12:pos].lower()
    qend = pos + 4
    question = data[12:qend]
    edns = None
    if an or ns or ar:
        edns = _parse_additional(data, qend, an + ns, ar)
    elif qend != end:
        raise FormErr("bytes after the question")  # as Knot and BIND; NSD ignores them
    return Query(qid, f1, f2, opcode, question, lname, qtype, qclass, edns)


def _skip_name(data: bytes, pos: int) -> int:
    """The end of the name at ``pos``; FormErr unless the name is well formed.

    Records in a query's other sections are rare (OPT has the root as owner),
    so their pointers are followed, to refuse loops as NSD does: each pointer
    must point before the labels it ends (RFC 1035 4.1.4, "a prior
    occurrence"), which also guarantees the walk ends.
    """
    end = len(data)
    after = -1
    segment = pos
    size = 0
    while True:
        if pos >= end:
            raise FormErr("name runs past the packet")
        ln = data[pos]
        if ln == 0:
            return pos + 1 if after < 0 else after
        if ln & 0xC0 == 0xC0:
            if pos + 2 > end:
                raise FormErr("truncated compression pointer")
            target = ((ln & 0x3F) << 8) | data[pos + 1]
            if target < 12 or target >= segment:
                raise FormErr("compression pointer does not point backwards")
            if after < 0:
                after = pos + 2
            pos = segment = target
            continue
        if ln & 0xC0:
            raise FormErr("unknown label type")
        size += ln + 1
        if size >= MAX_NAME:  # with the root octet: longer than MAX_NAME
            raise FormErr("name longer than 255 octets")
        pos += ln + 1


def _parse_additional(data: bytes, pos: int, skip: int, ar: int) -> Edns | None:
    end = len(data)
    for _ in range(skip):
        pos = _skip_name(data, pos)
        if pos + 10 > end:
            raise FormErr("record truncated")
        rdlen = (data[pos + 8] << 8) | data[pos + 9]
        pos += 10 + rdlen
        if pos > end:
            raise FormErr("rdata runs past the packet")
    edns: Edns | None = None
    for _ in range(ar):
        owner = pos
        pos = _skip_name(data, pos)
        if pos + 10 > end:
            raise FormErr("additional record truncated")
        rtype, rclass, ttl, rdlen = _OPT_FIXED.unpack_from(data, pos)
        pos += 10
        rend = pos + rdlen
        if rend > end:
            raise FormErr("rdata runs past the packet")
        if rtype == T_OPT:
            if edns is not None:
                raise FormErr("more than one OPT record")  # RFC 6891 6.1.1
            if data[owner] != 0:
                raise FormErr("OPT owner must be the root")
            ecs = None
            opos = pos
            while opos < rend:
                if opos + 4 > rend:
                    raise FormErr("EDNS option header truncated")
                code = (data[opos] << 8) | data[opos + 1]
                olen = (data[opos + 2] << 8) | data[opos + 3]
                opos += 4
                if opos + olen > rend:
                    raise FormErr("EDNS option runs past the OPT record")
                if code == OPT_ECS:
                    if ecs is not None:
                        raise FormErr("more than one ECS option")
                    ecs = data[opos : opos + olen]
                opos += olen
            edns = Edns(rclass, (ttl >> 16) & 0xFF, bool(ttl & 0x8000), ecs)
        pos = rend
    if pos != end:
        raise FormErr("bytes after the last record")
    return edns


def opt_record(payload: int, do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """An OPT pseudo-RR (version 0) as it goes at the end of a response."""
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + _OPT_FIXED.pack(T_OPT, payload, ttl, len(options)) + options


def header_only(data: bytes, rcode: int) -> bytes:
    """A reply that echoes ID, opcode and RD with no sections (for unparsable bodies)."""
    return bytes((data[0], data[1], QR | (data[2] & 0x79), rcode & 0x0F)) + b"\x00" * 8


def error_reply(q: Query, rcode: int, payload: int, with_question: bool = True) -> bytes:
    """A reply with RCODE (extended RCODEs go in the OPT record) and the question."""
    ext, low = rcode >> 4, rcode & 0x0F
    opt = b""
    if q.edns is not None:
        opt = opt_record(payload, q.edns.do, ext)
    head = struct.pack(
        ">HBBHHHH",
        q.qid,
        QR | (q.flags1 & 0x79),
        (q.flags2 & CD) | low,
        1 if with_question else 0,
        0,
        0,
        1 if opt else 0,
    )
    return head + (q.question if with_question else b"") + opt
