"""DNS wire format: the per-query parse and the few records fedns writes by hand.

Everything here runs per query, so it works on ``bytes`` directly and returns
plain tuples; dnslib is used where answers are built, never here.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# Header flag bits (RFC 1035 4.1.1), as they sit in the two flag bytes.
QR = 0x80  # first byte
AA = 0x04  # first byte
TC = 0x02  # first byte
RD = 0x01  # first byte
CD = 0x10  # second byte

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
NOTAUTH = 9  # RFC 8945: the TSIG key is not known
BADVERS = 16
BADKEY = 17  # the TSIG record's error field (RFC 8945 5.2), not an RCODE of the header
BADCOOKIE = 23  # RFC 7873 8: extended RCODE, in the OPT record

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_MX, T_TXT = 1, 2, 5, 6, 12, 15, 16
T_AAAA, T_SRV, T_OPT, T_DS, T_IXFR, T_AXFR, T_ANY, T_CAA = 28, 33, 41, 43, 251, 252, 255, 257
T_TSIG = 250
C_IN, C_CH, C_ANY = 1, 3, 255

OPT_ECS = 8
OPT_COOKIE = 10  # RFC 7873
DEFAULT_UDP_PAYLOAD = 1232  # DNS flag day 2020: avoids IP fragmentation
MIN_UDP_PAYLOAD = 512
MAX_NAME = 255  # octets of a name in wire form (RFC 1035 3.1)

_HDR = struct.Struct(">HBBHHHH")
_OPT_FIXED = struct.Struct(">HHIH")


class FormErr(Exception):
    """The packet's header is readable but the rest is not a valid query.

    ``query``: the query as far as it was read, when the fault is in the OPT
    record's options (its reply is a FORMERR with an OPT record, RFC 6891 7)."""

    query: Query | None = None


@dataclass(frozen=True, slots=True)
class Edns:
    """What the query's OPT record asked for (RFC 6891)."""

    payload: int  # requester's UDP payload size, as sent
    version: int
    do: bool
    ecs: bytes | None  # raw ECS option data (RFC 7871), validated by locality code
    cookie: bytes | None = None  # raw COOKIE option data (RFC 7873), any length
    # More than one COOKIE option (the first is the one above): FORMERR where cookies
    # are answered; a server without them ignores the option (RFC 7873 5.2.1).
    repeated_cookie: bool = False
    # Where in the packet the COOKIE option starts (its code) and where the OPT
    # record's RDLEN is: what taking the option out of the query needs. Places,
    # not what was asked: left out of comparisons.
    cookie_at: int = field(default=-1, compare=False)
    rdlen_at: int = field(default=-1, compare=False)


@dataclass(frozen=True, slots=True)
class Tsig:
    """A query's TSIG record (RFC 8945), as much of it as a BADKEY reply echoes."""

    key: bytes  # the key's name in wire form, uncompressed and lowercased
    algorithm: bytes  # likewise
    signed: bytes  # Time Signed (48 bits) and Fudge (16 bits), as sent
    original_id: bytes  # 16 bits, as sent


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
    tsig: Tsig | None = None


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
    edns = tsig = None
    if an or ns or ar:
        try:
            edns, tsig = _parse_additional(data, qend, an + ns, ar)
        except _OptionErr as e:
            err = FormErr(str(e))
            err.query = Query(qid, f1, f2, opcode, data[12:qend], lname, qtype, qclass, e.edns)
            raise err from None
    elif qend != end:
        raise FormErr("bytes after the question")  # as Knot and BIND; NSD ignores them
    return Query(qid, f1, f2, opcode, question, lname, qtype, qclass, edns, tsig)


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


def _read_name(data: bytes, pos: int) -> bytes:
    """The name at ``pos`` (checked by ``_skip_name``) in wire form, pointers
    followed, lowercased."""
    out = bytearray()
    while True:
        ln = data[pos]
        if ln == 0:
            out.append(0)
            return bytes(out).lower()
        if ln & 0xC0:
            pos = ((ln & 0x3F) << 8) | data[pos + 1]
            continue
        out += data[pos : pos + ln + 1]
        pos += ln + 1


def _parse_tsig(data: bytes, owner: int, pos: int, rend: int) -> Tsig:
    """The TSIG record whose owner name is at ``owner`` and RDATA at ``pos``..``rend``."""
    start, pos = pos, _skip_name(data, pos)
    algorithm = _read_name(data, start)
    # Time Signed (6), Fudge (2), MAC Size (2), MAC, Original ID (2), Error (2),
    # Other Len (2), Other Data: all of it must be there and fill the RDATA exactly.
    if pos + 10 > rend:
        raise FormErr("TSIG RDATA truncated")
    signed = data[pos : pos + 8]
    pos += 10 + ((data[pos + 8] << 8) | data[pos + 9])
    if pos + 6 > rend:
        raise FormErr("TSIG RDATA truncated")
    original_id = data[pos : pos + 2]
    pos += 6 + ((data[pos + 4] << 8) | data[pos + 5])
    if pos != rend:
        raise FormErr("TSIG RDATA length does not match its fields")
    return Tsig(_read_name(data, owner), algorithm, signed, original_id)


class _OptionErr(FormErr):
    """A fault in the OPT record's options, with the record as far as it was read."""

    def __init__(self, message: str, edns: Edns) -> None:
        super().__init__(message)
        self.edns = edns


def _parse_additional(data: bytes, pos: int, skip: int, ar: int) -> tuple[Edns | None, Tsig | None]:
    end = len(data)
    for _ in range(skip):
        pos = _skip_name(data, pos)
        if pos + 10 > end:
            raise FormErr("record truncated")
        if data[pos] == 0 and data[pos + 1] == T_TSIG:
            raise FormErr("TSIG outside the additional section")  # RFC 8945 5.1
        rdlen = (data[pos + 8] << 8) | data[pos + 9]
        pos += 10 + rdlen
        if pos > end:
            raise FormErr("rdata runs past the packet")
    edns: Edns | None = None
    tsig: Tsig | None = None
    for i in range(ar):
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
            ecs = cookie = None
            cookie_at = -1
            repeated_cookie = False
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
                    if ecs is not None:  # RFC 7871 7.1.2 (and gdnsd): which one is meant?
                        do = bool(ttl & 0x8000)
                        raise _OptionErr("more than one ECS option", Edns(rclass, 0, do, None))
                    ecs = data[opos : opos + olen]
                elif code == OPT_COOKIE:
                    if cookie is not None:
                        repeated_cookie = True
                    else:
                        cookie, cookie_at = data[opos : opos + olen], opos - 4
                opos += olen
            edns = Edns(
                rclass,
                (ttl >> 16) & 0xFF,
                bool(ttl & 0x8000),
                ecs,
                cookie,
                repeated_cookie,
                cookie_at,
                pos - 2,
            )
        elif rtype == T_TSIG:
            # RFC 8945 5.1: one TSIG, the last record, class ANY, TTL 0.
            if i != ar - 1 or rclass != C_ANY or ttl != 0:
                raise FormErr("TSIG not the last record, or not class ANY and TTL 0")
            tsig = _parse_tsig(data, owner, pos, rend)
        pos = rend
    if pos != end:
        raise FormErr("bytes after the last record")
    return edns, tsig


def opt_record(payload: int, do: bool, ext_rcode: int = 0, options: bytes = b"") -> bytes:
    """An OPT pseudo-RR (version 0) as it goes at the end of a response."""
    ttl = (ext_rcode << 24) | (0x8000 if do else 0)
    return b"\x00" + _OPT_FIXED.pack(T_OPT, payload, ttl, len(options)) + options


def header_only(data: bytes, rcode: int) -> bytes:
    """A reply that echoes ID, opcode and RD with no sections (for unparsable bodies)."""
    return bytes((data[0], data[1], QR | (data[2] & 0x79), rcode & 0x0F)) + b"\x00" * 8


def tsig_error(q: Query, payload: int) -> bytes:
    """The reply to a query signed with a key fedns does not hold (it holds none):
    NOTAUTH, and an unsigned TSIG record with error BADKEY (RFC 8945 5.2, 5.3.2).
    As NSD writes it: no question, the OPT record if the query had one, the
    TSIG record's Time Signed, Fudge and Original ID echoed."""
    assert q.tsig is not None
    t = q.tsig
    opt = b"" if q.edns is None else opt_record(payload, q.edns.do)
    head = struct.pack(
        ">HBBHHHH",
        q.qid,
        QR | (q.flags1 & 0x79),
        (q.flags2 & CD) | NOTAUTH,
        0,
        0,
        0,
        2 if opt else 1,
    )
    # MAC Size 0 (unsigned), Original ID, Error BADKEY, Other Len 0.
    rdata = t.algorithm + t.signed + b"\x00\x00" + t.original_id + struct.pack(">HH", BADKEY, 0)
    rr = t.key + struct.pack(">HHIH", T_TSIG, C_ANY, 0, len(rdata)) + rdata
    return head + opt + rr


def error_reply(
    q: Query, rcode: int, payload: int, with_question: bool = True, options: bytes = b""
) -> bytes:
    """A reply with RCODE (extended RCODEs go in the OPT record) and the question;
    ``options`` for the OPT record, if the query had one."""
    ext, low = rcode >> 4, rcode & 0x0F
    opt = b""
    if q.edns is not None:
        opt = opt_record(payload, q.edns.do, ext, options)
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
