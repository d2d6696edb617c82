"""Unit tests of resolver/dns/wire.py: the per-query parse and the hand-built records.

Queries are built by dnspython (``dns.message.make_query``) and read back by
dnspython too, so every field ``parse_query`` reports is checked against an
independent parser; malformed packets are built by hand from well-formed ones,
and where dnspython has an opinion (it refuses the same packets) that is
checked as well. No sockets, no processes.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.dns import wire
from resolver.dns.ecs import ecs_option
from resolver.dns.wire import FormErr, error_reply, header_only, opt_record, parse_query

HDR = struct.Struct(">HBBHHHH")


def query(
    name: str = "www.example.test.",
    rdtype: str | int = "A",
    rdclass: str | int = "IN",
    qid: int = 0x1234,
    **kw: object,
) -> bytes:
    m = dns.message.make_query(name, rdtype, rdclass, **kw)  # type: ignore[arg-type]
    m.id = qid
    return m.to_wire()


def with_counts(
    data: bytes,
    qd: int | None = None,
    an: int | None = None,
    ns: int | None = None,
    ar: int | None = None,
) -> bytes:
    """``data`` with some of its section counts replaced."""
    qid, f1, f2, q0, a0, n0, r0 = HDR.unpack_from(data)
    head = HDR.pack(
        qid,
        f1,
        f2,
        q0 if qd is None else qd,
        a0 if an is None else an,
        n0 if ns is None else ns,
        r0 if ar is None else ar,
    )
    return head + data[12:]


def raw_opt(payload: int = 1232, ttl: int = 0, rdata: bytes = b"", owner: bytes = b"\x00") -> bytes:
    """An OPT record as RFC 6891 6.1.2 lays it out (owner, TYPE 41, CLASS, TTL, RDLEN, RDATA)."""
    return owner + struct.pack(">HHIH", 41, payload, ttl, len(rdata)) + rdata


def edns_option(code: int, data: bytes) -> bytes:
    return struct.pack(">HH", code, len(data)) + data


def question_end(data: bytes) -> int:
    """Where the question ends, found by dnspython: the length of a message with only it."""
    m = dns.message.from_wire(data)
    bare = dns.message.Message(id=m.id)
    bare.flags = m.flags
    bare.question = list(m.question)
    return len(bare.to_wire())


def dnspython_refuses(data: bytes) -> bool:
    try:
        dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError, IndexError):
        return True
    return False


# -- well-formed queries: every field as dnspython sees it ------------------------

_LABEL = st.text(alphabet="abcXYZ019-_", min_size=1, max_size=20)
_NAMES = st.lists(_LABEL, min_size=0, max_size=5).map(lambda ls: ".".join(ls) + ".")
_TYPES = st.sampled_from(["A", "AAAA", "MX", "TXT", "SRV", "ANY", "NS", "SOA", "CAA", "DS", 65280])
_CLASSES = st.sampled_from(["IN", "CH", "ANY", 254])


@st.composite
def _queries(draw: st.DrawFn) -> bytes:
    name = draw(_NAMES)
    kw: dict[str, object] = {}
    edns = draw(st.sampled_from([-1, 0, 1]))
    if edns >= 0:
        kw["use_edns"] = edns
        kw["payload"] = draw(st.integers(0, 65535))
        kw["want_dnssec"] = draw(st.booleans())
        options: list[dns.edns.Option] = []
        if draw(st.booleans()):  # an option the parser must step over
            data = draw(st.binary(max_size=16))
            options.append(dns.edns.GenericOption(65001, data))  # local/experimental code
        if draw(st.booleans()):
            if draw(st.booleans()):
                a = draw(st.ip_addresses(v=4))
                options.append(dns.edns.ECSOption(str(a), draw(st.integers(0, 32))))
            else:
                a = draw(st.ip_addresses(v=6))
                options.append(dns.edns.ECSOption(str(a), draw(st.integers(0, 128))))
        if draw(st.booleans()):
            options.append(dns.edns.GenericOption(3, b""))  # NSID, empty in a query
        kw["options"] = options
    m = dns.message.make_query(name, draw(_TYPES), draw(_CLASSES), **kw)  # type: ignore[arg-type]
    m.id = draw(st.integers(0, 0xFFFF))
    m.flags = 0
    if draw(st.booleans()):
        m.flags |= dns.flags.RD
    if draw(st.booleans()):
        m.flags |= dns.flags.CD
    if draw(st.booleans()):
        m.flags |= dns.flags.AD
    m.set_opcode(draw(st.sampled_from([dns.opcode.QUERY, dns.opcode.NOTIFY, dns.opcode.STATUS])))
    return m.to_wire()


@settings(max_examples=300, deadline=None, database=None)
@given(_queries())
def test_parse_matches_dnspython(data: bytes) -> None:
    m = dns.message.from_wire(data)
    q = parse_query(data)
    qname = m.question[0].name
    assert q.qid == m.id
    assert q.opcode == m.opcode()
    assert bool(q.flags1 & wire.RD) == bool(m.flags & dns.flags.RD)
    assert bool(q.flags2 & wire.CD) == bool(m.flags & dns.flags.CD)
    assert q.qtype == m.question[0].rdtype
    assert q.qclass == m.question[0].rdclass
    # The question exactly as sent (letter case kept) and the lookup key lowercased.
    assert q.question == qname.to_wire() + struct.pack(">HH", q.qtype, q.qclass)
    assert q.question == data[12 : question_end(data)]
    assert q.lname == qname.canonicalize().to_wire()
    if m.edns < 0:
        assert q.edns is None
        return
    assert q.edns is not None
    assert q.edns.payload == m.payload
    assert q.edns.version == m.edns
    assert q.edns.do == bool(m.ednsflags & dns.flags.DO)
    ecs = [o for o in m.options if o.otype == dns.edns.OptionType.ECS]
    if ecs:
        assert q.edns.ecs == ecs[0].to_wire()
    else:
        assert q.edns.ecs is None


def test_header_fields_of_a_plain_query() -> None:
    data = query("Www.Example.Test.", "AAAA", qid=0xBEEF)
    q = parse_query(data)
    assert q.qid == 0xBEEF
    assert q.opcode == 0
    assert q.flags1 & wire.RD  # make_query asks for recursion by default
    assert q.qtype == dns.rdatatype.AAAA and q.qclass == dns.rdataclass.IN
    assert q.question[:-4] == dns.name.from_text("Www.Example.Test.").to_wire()
    assert q.lname == dns.name.from_text("www.example.test.").to_wire()
    assert q.edns is None


def test_the_root_as_question() -> None:
    q = parse_query(query(".", "NS"))
    assert q.lname == b"\x00"
    assert q.qtype == dns.rdatatype.NS


def test_edns_version_and_flags_as_sent() -> None:
    q = parse_query(query(use_edns=1, payload=4096, want_dnssec=True))
    assert q.edns is not None
    assert (q.edns.version, q.edns.payload, q.edns.do) == (1, 4096, True)
    q = parse_query(query(use_edns=0, payload=512))
    assert q.edns is not None
    assert (q.edns.version, q.edns.payload, q.edns.do, q.edns.ecs) == (0, 512, False, None)


def test_ecs_found_among_other_options() -> None:
    ecs = dns.edns.ECSOption("198.51.100.0", 24)
    opts = [dns.edns.GenericOption(10, b"\x01" * 8), ecs, dns.edns.GenericOption(12, b"\x00" * 5)]
    q = parse_query(query(use_edns=0, options=opts))
    assert q.edns is not None
    assert q.edns.ecs == ecs.to_wire()


def test_records_in_answer_and_authority_are_stepped_over() -> None:
    """A query may carry records in other sections (e.g. known answers); the OPT
    record after them is still found."""
    m = dns.message.make_query("www.example.test.", "A", use_edns=0, payload=1400)
    m.id = 7
    m.answer.append(dns.rrset.from_text("www.example.test.", 60, "IN", "A", "192.0.2.1"))
    m.authority.append(dns.rrset.from_text("example.test.", 60, "IN", "NS", "ns1.example.test."))
    m.additional.append(dns.rrset.from_text("ns1.example.test.", 60, "IN", "A", "192.0.2.53"))
    data = m.to_wire()  # dnspython compresses these owners against the question
    assert HDR.unpack_from(data)[4:] == (1, 1, 2)
    q = parse_query(data)
    assert q.edns is not None and q.edns.payload == 1400
    assert q.lname == dns.name.from_text("www.example.test.").to_wire()


def test_query_with_only_answer_records_has_no_edns() -> None:
    m = dns.message.make_query("www.example.test.", "A")
    m.answer.append(dns.rrset.from_text("www.example.test.", 60, "IN", "A", "192.0.2.1"))
    assert parse_query(m.to_wire()).edns is None


# -- FORMERR ----------------------------------------------------------------------

FULL = query(
    "www.example.test.",
    "A",
    use_edns=0,
    payload=1232,
    options=[dns.edns.GenericOption(10, b"\x02" * 8), dns.edns.ECSOption("192.0.2.0", 24)],
)


@pytest.mark.parametrize("data", [FULL, query(), query(use_edns=0)], ids=["ecs", "plain", "edns"])
def test_every_truncation_is_formerr(data: bytes) -> None:
    """Any prefix of a query that keeps the header is refused, as dnspython refuses it."""
    parse_query(data)  # the whole packet is fine
    for n in range(12, len(data)):
        assert dnspython_refuses(data[:n]), n
        with pytest.raises(FormErr):
            parse_query(data[:n])


@pytest.mark.parametrize("qd", [0, 2, 0xFFFF])
def test_question_count_must_be_one(qd: int) -> None:
    with pytest.raises(FormErr):
        parse_query(with_counts(query(), qd=qd))


# RFC 1035 4.1.4 / RFC 6891 label types: 00 = label, 11 = pointer, 01 and 10 reserved.
@pytest.mark.parametrize(
    "first",
    [
        b"\x40abc",  # 01: extended label type (RFC 6891 removed the only one defined)
        b"\x80abc",  # 10: reserved
        b"\xc0\x0c",  # a pointer to the question itself: it would have to point forward
        b"\xc0\x00",  # a pointer into the header
    ],
    ids=["0x40", "0x80", "pointer-to-self", "pointer-to-header"],
)
def test_bad_label_in_question(first: bytes) -> None:
    data = HDR.pack(1, 0, 0, 1, 0, 0, 0) + first + b"\x00\x00\x01\x00\x01"
    assert dnspython_refuses(data)
    with pytest.raises(FormErr):
        parse_query(data)


def test_bad_label_after_a_good_one_in_question() -> None:
    data = HDR.pack(1, 0, 0, 1, 0, 0, 0) + b"\x03www\x80abc\x00\x00\x01\x00\x01"
    with pytest.raises(FormErr):
        parse_query(data)


def _name(total: int) -> bytes:
    """A wire-form name of exactly ``total`` octets (root octet included)."""
    assert total != 2, "no name is 2 octets long"
    out = b""
    left = total - 1
    while left:
        n = min(63, left - 1)
        if left - (n + 1) == 1:  # a 1-octet rest cannot be a label
            n -= 1
        out += bytes([n]) + b"a" * n
        left -= n + 1
    return out + b"\x00"


def test_name_helper_agrees_with_dnspython() -> None:
    for total in (1, 3, 64, 65, 66, 67, 200, 254, 255):
        wire_name = _name(total)
        assert len(wire_name) == total
        assert len(dns.name.from_wire(wire_name, 0)[0].to_wire()) == total
    with pytest.raises(dns.name.NameTooLong):
        dns.name.from_wire(_name(256), 0)


def test_question_name_of_255_octets_is_accepted_256_refused() -> None:
    head = HDR.pack(1, 0, 0, 1, 0, 0, 0)
    ok = head + _name(255) + b"\x00\x01\x00\x01"
    q = parse_query(ok)
    assert len(q.lname) == wire.MAX_NAME == 255
    assert not dnspython_refuses(ok)
    bad = head + _name(256) + b"\x00\x01\x00\x01"
    assert dnspython_refuses(bad)
    with pytest.raises(FormErr):
        parse_query(bad)


def _with_answer_owner(owner: bytes, base: bytes | None = None) -> bytes:
    """``base`` (a plain query) with one A record in the answer section owned by ``owner``."""
    base = base if base is not None else query()
    rr = owner + struct.pack(">HHIH", 1, 1, 60, 4) + bytes([192, 0, 2, 1])
    return with_counts(base, an=1) + rr


def test_record_owner_of_255_octets_is_accepted_256_refused() -> None:
    parse_query(_with_answer_owner(_name(255)))
    assert not dnspython_refuses(_with_answer_owner(_name(255)))
    assert dnspython_refuses(_with_answer_owner(_name(256)))
    with pytest.raises(FormErr):
        parse_query(_with_answer_owner(_name(256)))


def test_name_length_counts_across_compression_pointers() -> None:
    """A compressed owner is as long as the labels plus the name the pointer ends with."""
    head = HDR.pack(1, 0, 0, 1, 0, 0, 0)
    qname = _name(200)
    base = head + qname + b"\x00\x01\x00\x01"
    for first_label, total in ((54, 255), (55, 256)):
        owner = bytes([first_label]) + b"b" * first_label + b"\xc0\x0c"
        data = _with_answer_owner(owner, base)
        assert (first_label + 1) + len(qname) == total
        if total <= 255:
            assert not dnspython_refuses(data)
            parse_query(data)
        else:
            assert dnspython_refuses(data)
            with pytest.raises(FormErr):
                parse_query(data)


def test_backward_pointer_in_a_record_is_followed() -> None:
    data = _with_answer_owner(b"\x04mail\xc0\x10")  # "mail." + the question's "example.test."
    assert dns.message.from_wire(data).answer[0].name == dns.name.from_text("mail.example.test.")
    parse_query(data)


@pytest.mark.parametrize(
    "owner",
    [
        b"\xc0\xff",  # forward, beyond the packet
        b"\x04mail\xc0\x00",  # into the header
        "self",  # a pointer to itself (a loop)
        "ahead",  # to the record's own next bytes
        "loop",  # two pointers that point at each other
    ],
)
def test_pointers_that_do_not_point_backwards_are_refused(owner: bytes | str) -> None:
    base = query()
    at = len(base)  # where the record's owner starts
    if owner == "self":
        owner = struct.pack(">H", 0xC000 | at)
    elif owner == "ahead":
        owner = b"\x01x" + struct.pack(">H", 0xC000 | (at + 4))
    elif owner == "loop":
        # label "x" at ``at``, then a pointer back to ``at``: each pass re-reads it.
        owner = b"\x01x" + struct.pack(">H", 0xC000 | at)
    assert isinstance(owner, bytes)
    data = _with_answer_owner(owner, base)
    assert dnspython_refuses(data)
    with pytest.raises(FormErr):
        parse_query(data)


def test_bad_label_type_in_a_record_owner() -> None:
    data = _with_answer_owner(b"\x41" + b"x" * 10 + b"\x00")
    with pytest.raises(FormErr):
        parse_query(data)


def test_two_opt_records() -> None:
    """RFC 6891 6.1.1: more than one OPT record is FORMERR."""
    plain = query()
    data = with_counts(plain, ar=2) + raw_opt() + raw_opt()
    assert dnspython_refuses(data)
    with pytest.raises(FormErr):
        parse_query(data)
    # One OPT after another additional record is fine.
    other = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + bytes(4)
    parse_query(with_counts(plain, ar=2) + other + raw_opt())


@pytest.mark.parametrize("owner", [b"\x01x\x00", b"\xc0\x0c"], ids=["label", "pointer"])
def test_opt_owner_must_be_the_root(owner: bytes) -> None:
    """RFC 6891 6.1.2: the OPT record's owner is the root."""
    data = with_counts(query(), ar=1) + raw_opt(owner=owner)
    assert dnspython_refuses(data)
    with pytest.raises(FormErr):
        parse_query(data)


def test_bytes_after_the_question() -> None:
    data = query() + b"\x00"
    assert dnspython_refuses(data)
    with pytest.raises(FormErr):
        parse_query(data)


def test_bytes_after_the_last_record() -> None:
    data = query(use_edns=0) + b"\x00\x00"
    assert dnspython_refuses(data)
    with pytest.raises(FormErr):
        parse_query(data)


@pytest.mark.parametrize(
    "rdata",
    [
        b"\x00\x08\x00",  # option header cut after 3 bytes
        edns_option(8, b"\x00\x01\x18\x00\xc0\x00\x02")[:-1],  # option data past the OPT rdata
        edns_option(10, b"x" * 8) + b"\x00",  # a trailing byte that is no option
    ],
    ids=["header", "data", "trailing"],
)
def test_malformed_edns_options(rdata: bytes) -> None:
    data = with_counts(query(), ar=1) + raw_opt(rdata=rdata)
    assert dnspython_refuses(data)
    with pytest.raises(FormErr):
        parse_query(data)


def test_two_ecs_options() -> None:
    """RFC 7871 7.1.2 (and gdnsd): one ECS option per query."""
    one = ecs_option(1, 24, 0, bytes([192, 0, 2]))
    data = with_counts(query(), ar=1) + raw_opt(rdata=one + one)
    with pytest.raises(FormErr):
        parse_query(data)
    ok = parse_query(with_counts(query(), ar=1) + raw_opt(rdata=one))
    assert ok.edns is not None and ok.edns.ecs == one[4:]


def test_edns_version_and_do_from_the_ttl_field() -> None:
    """RFC 6891 6.1.3: TTL = EXTENDED-RCODE(8) VERSION(8) DO(1) Z(15)."""
    for version, do, z in ((0, False, 0), (1, True, 0), (255, False, 0x7FFF), (7, True, 0x1234)):
        ttl = (0xAB << 24) | (version << 16) | (0x8000 if do else 0) | z
        q = parse_query(with_counts(query(), ar=1) + raw_opt(payload=900, ttl=ttl))
        assert q.edns == wire.Edns(900, version, do, None)


# -- records written by hand ------------------------------------------------------


def _response_with_opt(opt: bytes, rcode_low: int = 0) -> dns.message.Message:
    head = HDR.pack(0x4242, wire.QR, rcode_low, 1, 0, 0, 1)
    return dns.message.from_wire(head + query()[12:] + opt)


@pytest.mark.parametrize("payload", [512, 1232, 4096, 65535])
@pytest.mark.parametrize("do", [False, True])
def test_opt_record_is_what_dnspython_writes(payload: int, do: bool) -> None:
    m = dns.message.make_response(dns.message.make_query("www.example.test.", "A"))
    m.use_edns(0, dns.flags.DO if do else 0, payload)
    built = m.to_wire()
    assert built.endswith(opt_record(payload, do))
    got = _response_with_opt(opt_record(payload, do))
    assert (got.edns, got.payload, bool(got.ednsflags & dns.flags.DO)) == (0, payload, do)


def test_opt_record_with_ecs_and_extended_rcode() -> None:
    ecs = ecs_option(1, 24, 16, bytes([198, 51, 100]))
    got = _response_with_opt(opt_record(1232, True, dns.rcode.BADVERS >> 4, ecs))
    assert got.rcode() == dns.rcode.BADVERS  # extended RCODE high bits in the OPT TTL
    (opt,) = got.options
    assert isinstance(opt, dns.edns.ECSOption)
    assert (opt.address, opt.srclen, opt.scopelen) == ("198.51.100.0", 24, 16)


def _flag_variants() -> list[bytes]:
    out = []
    for opcode in (dns.opcode.QUERY, dns.opcode.NOTIFY, dns.opcode.UPDATE, 15):
        for flags in (
            0,
            dns.flags.RD,
            dns.flags.RD | dns.flags.CD | dns.flags.AD,
            dns.flags.AA | dns.flags.TC,
        ):
            data = bytearray(query(qid=0x5A5A))
            f = flags | dns.opcode.to_flags(opcode)
            data[2:4] = struct.pack(">H", f)
            out.append(bytes(data))
    return out


@pytest.mark.parametrize("data", _flag_variants())
def test_header_only_echoes_id_opcode_and_rd(data: bytes) -> None:
    for rcode in (dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP):
        reply = header_only(data, rcode)
        assert len(reply) == 12
        m = dns.message.from_wire(reply)
        flags = struct.unpack(">H", data[2:4])[0]
        assert m.id == 0x5A5A
        assert m.opcode() == dns.opcode.from_flags(flags)
        assert m.rcode() == rcode
        # Nothing else echoed or set: no AA, TC, RA, AD, CD (opcode and RCODE bits masked).
        assert m.flags & ~0x780F == dns.flags.QR | (flags & dns.flags.RD)
        assert (m.question, m.answer, m.authority, m.additional) == ([], [], [], [])
        assert m.edns == -1


@pytest.mark.parametrize("edns", [-1, 0])
@pytest.mark.parametrize(
    "rcode", [dns.rcode.FORMERR, dns.rcode.SERVFAIL, dns.rcode.NOTIMP, dns.rcode.REFUSED]
)
@pytest.mark.parametrize("with_question", [True, False])
def test_error_reply_as_dnspython_reads_it(edns: int, rcode: int, with_question: bool) -> None:
    m = dns.message.make_query(
        "MiXeD.Example.Test.", "TXT", use_edns=edns, want_dnssec=edns >= 0, payload=4000
    )
    m.id = 0x0BAD
    m.flags |= dns.flags.CD
    data = m.to_wire()
    reply = dns.message.from_wire(error_reply(parse_query(data), rcode, 1232, with_question))
    assert reply.id == m.id
    assert reply.flags & dns.flags.QR
    assert reply.flags & dns.flags.RD and reply.flags & dns.flags.CD  # echoed
    assert not reply.flags & (dns.flags.AA | dns.flags.TC)
    assert reply.opcode() == m.opcode()
    assert reply.rcode() == rcode
    if with_question:
        assert reply.question == m.question
        assert reply.question[0].name.labels == m.question[0].name.labels  # case as asked
    else:
        assert reply.question == []
    assert reply.answer == [] and reply.authority == []
    if edns < 0:
        assert reply.edns == -1
    else:
        assert (reply.edns, reply.payload) == (0, 1232)
        assert reply.ednsflags & dns.flags.DO  # the query's DO, echoed


def test_badvers_goes_in_the_opt_record() -> None:
    """RFC 6891 6.1.3: BADVERS (16) does not fit the header's 4 bits; the reply is version 0."""
    data = query(use_edns=1)
    q = parse_query(data)
    assert q.edns is not None and q.edns.version == 1
    raw = error_reply(q, wire.BADVERS, 1232)
    assert raw[3] & 0x0F == wire.BADVERS & 0x0F
    reply = dns.message.from_wire(raw)
    assert reply.rcode() == dns.rcode.BADVERS == wire.BADVERS
    assert reply.edns == 0


def test_rcode_constants_match_dnspython() -> None:
    assert (
        wire.NOERROR,
        wire.FORMERR,
        wire.SERVFAIL,
        wire.NXDOMAIN,
        wire.NOTIMP,
        wire.REFUSED,
    ) == (
        dns.rcode.NOERROR,
        dns.rcode.FORMERR,
        dns.rcode.SERVFAIL,
        dns.rcode.NXDOMAIN,
        dns.rcode.NOTIMP,
        dns.rcode.REFUSED,
    )
    for name in (
        "A",
        "NS",
        "CNAME",
        "SOA",
        "PTR",
        "MX",
        "TXT",
        "AAAA",
        "SRV",
        "OPT",
        "DS",
        "IXFR",
        "AXFR",
        "ANY",
        "CAA",
    ):
        assert getattr(wire, f"T_{name}") == dns.rdatatype.from_text(name)
    assert (wire.C_IN, wire.C_CH, wire.C_ANY) == (
        dns.rdataclass.IN,
        dns.rdataclass.CH,
        dns.rdataclass.ANY,
    )
    assert wire.OPT_ECS == dns.edns.OptionType.ECS
