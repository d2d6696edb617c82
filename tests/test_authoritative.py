"""Authoritative behaviour over real UDP and TCP sockets.

The server is a real ``fedns serve`` process on ``tests/data/rich.example.test.zone``;
expected data comes from that file as dnspython reads it (``Oracle``) and from
the RFC rule each test names.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from dnsclient import make, tcp, tcp_raw, udp, udp_raw
from oracle import Oracle
from servers import RICH_ORIGIN, RICH_SETTINGS, RICH_ZONE, ServerProcess

Ask = Callable[[dns.message.Message], dns.message.Message]

ORACLE = Oracle(RICH_ZONE, RICH_ORIGIN)


def n(rel: str) -> str:
    return RICH_ORIGIN if rel == "@" else f"{rel}.{RICH_ORIGIN}"


@pytest.fixture(params=["udp", "tcp"])
def ask(request: pytest.FixtureRequest, rich_server: ServerProcess) -> Ask:
    """Send a dnspython query over the parametrized transport to the rich server."""
    send = udp if request.param == "udp" else tcp
    return lambda q: send(rich_server.addr, q)


def rtype(r: dns.rrset.RRset) -> str:
    return dns.rdatatype.to_text(r.rdtype)


def assert_rrset_is_zone_data(r: dns.rrset.RRset, owner: dns.name.Name | None = None) -> None:
    """``r`` holds exactly the records and TTL of (owner or r.name, type) in the zone file."""
    real = ORACLE.rdataset(owner or r.name, r.rdtype)
    assert real is not None, f"{r.name} {rtype(r)} is not in the zone"
    assert set(r) == set(real) and r.ttl == real.ttl


def assert_negative(m: dns.message.Message, rcode: int) -> None:
    """RFC 2308: the apex SOA in authority with TTL = min(SOA TTL, SOA MINIMUM)."""
    assert m.rcode() == rcode
    assert m.flags & dns.flags.AA
    assert len(m.authority) == 1
    soa = m.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa.name == ORACLE.origin
    assert set(soa) == set(ORACLE.soa())
    assert soa.ttl == ORACLE.negative_ttl() == 300  # the file's SOA: TTL 3600, MINIMUM 300


# -- header flags and zones --------------------------------------------------------


@pytest.mark.parametrize(
    "qname,qtype",
    [
        ("@", "SOA"),
        ("web", "A"),
        ("www", "AAAA"),
        ("nx", "A"),
        ("mail", "TXT"),
        ("host.wild", "A"),
        ("ent", "A"),
        ("child", "DS"),
    ],
)
def test_aa_on_in_zone_answers_ra_never(ask: Ask, qname: str, qtype: str) -> None:
    for rd in (False, True):
        q = make(n(qname), qtype)
        if rd:
            q.flags |= dns.flags.RD
        r = ask(q)
        assert r.flags & dns.flags.QR
        assert r.flags & dns.flags.AA, "in-zone answers are authoritative"
        assert not r.flags & dns.flags.RA, "an authoritative-only server never offers recursion"
        assert bool(r.flags & dns.flags.RD) == rd, "RD is copied from the query"
        assert r.id == q.id


@pytest.mark.parametrize(
    "qname", ["example.test.", "other.test.", ".", "rich.example.test.evil.", "example.test.rich."]
)
def test_refused_outside_our_zones(ask: Ask, qname: str) -> None:
    q = make(qname, "A")
    r = ask(q)
    assert r.rcode() == dns.rcode.REFUSED
    assert not r.flags & (dns.flags.AA | dns.flags.RA)
    assert not r.answer and not r.authority
    assert r.question == q.question


# -- negative answers --------------------------------------------------------------


@pytest.mark.parametrize("qname", ["nx", "a.nx", "zz.b.c.ent", "sub.mail", "nothere"])
def test_nxdomain_carries_soa_with_negative_ttl(ask: Ask, qname: str) -> None:
    r = ask(make(n(qname), "A"))
    assert_negative(r, dns.rcode.NXDOMAIN)
    assert not r.answer


@pytest.mark.parametrize(
    "qname,qtype", [("mail", "TXT"), ("@", "SRV"), ("web", "MX"), ("ns2", "AAAA")]
)
def test_nodata_at_existing_name(ask: Ask, qname: str, qtype: str) -> None:
    assert ORACLE.rdataset(n(qname), qtype) is None and ORACLE.exists(ORACLE.name(n(qname)))
    r = ask(make(n(qname), qtype))
    assert_negative(r, dns.rcode.NOERROR)
    assert not r.answer


@pytest.mark.parametrize(
    "qname", ["ent", "c.ent", "b.c.ent", "ent2.wild", "2.0.192.in-addr", "_udp"]
)
@pytest.mark.parametrize("qtype", ["A", "TXT", "ANY"])
def test_empty_non_terminal_is_nodata(ask: Ask, qname: str, qtype: str) -> None:
    """RFC 8020 / RFC 4592 2.2.2: a name with descendants exists, even with no records."""
    assert not ORACLE.exists(ORACLE.name(n(qname)))
    r = ask(make(n(qname), qtype))
    assert_negative(r, dns.rcode.NOERROR)
    assert not r.answer


# -- CNAME -------------------------------------------------------------------------


def test_cname_chain_followed_in_zone(ask: Ask) -> None:
    """RFC 1034 4.3.2: each CNAME, in chain order, then the target's RRset."""
    r = ask(make(n("alias1"), "A"))
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    expected_chain = ["alias1", "alias2", "alias3", "www"]
    assert [x.name for x in r.answer] == [ORACLE.name(n(x)) for x in [*expected_chain, "web"]]
    for x in r.answer[:-1]:
        assert x.rdtype == dns.rdatatype.CNAME
        assert_rrset_is_zone_data(x)
    assert r.answer[-1].rdtype == dns.rdatatype.A
    assert_rrset_is_zone_data(r.answer[-1])
    assert not r.authority


def test_cname_asked_for_itself(ask: Ask) -> None:
    r = ask(make(n("www"), "CNAME"))
    assert len(r.answer) == 1 and r.answer[0].rdtype == dns.rdatatype.CNAME
    assert_rrset_is_zone_data(r.answer[0])


def test_cname_out_of_zone_stops_at_the_cname(ask: Ask) -> None:
    r = ask(make(n("away"), "A"))
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert len(r.answer) == 1 and r.answer[0].rdtype == dns.rdatatype.CNAME
    assert not r.authority


def test_dangling_cname_is_nxdomain_with_the_cname(ask: Ask) -> None:
    """The target does not exist: NXDOMAIN (RFC 6604 2.1) with the CNAME and the SOA, as NSD."""
    r = ask(make(n("dangling"), "A"))
    assert_negative(r, dns.rcode.NXDOMAIN)
    assert len(r.answer) == 1 and r.answer[0].rdtype == dns.rdatatype.CNAME
    assert_rrset_is_zone_data(r.answer[0])


def test_cname_to_empty_non_terminal_is_nodata(ask: Ask) -> None:
    r = ask(make(n("toent"), "A"))
    assert_negative(r, dns.rcode.NOERROR)
    assert [x.rdtype for x in r.answer] == [dns.rdatatype.CNAME]


def test_cname_loop_terminates(ask: Ask) -> None:
    r = ask(make(n("loop1"), "A"))
    assert r.rcode() == dns.rcode.NOERROR
    names = [x.name for x in r.answer]
    assert names == [ORACLE.name(n("loop1")), ORACLE.name(n("loop2"))]


def test_cname_into_delegation_then_referral(ask: Ask) -> None:
    """RFC 1034 4.3.2 step 3b after the restart: the CNAME, then the child's NS and glue."""
    r = ask(make(n("tochild"), "A"))
    assert [x.rdtype for x in r.answer] == [dns.rdatatype.CNAME]
    assert [(x.name, x.rdtype) for x in r.authority] == [
        (ORACLE.name(n("child")), dns.rdatatype.NS)
    ]
    assert_rrset_is_zone_data(r.authority[0])


# -- question echo (0x20) ------------------------------------------------------------


@pytest.mark.parametrize(
    "qname,qtype",
    [
        ("wEb.RiCh.ExAmPlE.tEsT.", "A"),
        ("NX.rich.EXAMPLE.test.", "A"),
        ("HoSt.WiLd.rich.example.TEST.", "TXT"),
        ("WWW.CHILD.rich.example.test.", "A"),
        ("ExAmPlE.TeSt.", "A"),
        ("BiG.RiCh.ExAmPlE.TeSt.", "TXT"),
    ],
)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_question_echoed_with_original_case(
    rich_server: ServerProcess, qname: str, qtype: str, transport: str
) -> None:
    q = make(qname, qtype, edns=0)
    wire = bytes(q.to_wire())
    send = udp_raw if transport == "udp" else tcp_raw
    reply = send(rich_server.addr, wire)
    assert reply is not None
    qlen = len(dns.name.from_text(qname).to_wire() or b"") + 4
    assert reply[12 : 12 + qlen] == wire[12 : 12 + qlen], "question bytes differ from the query's"
    m = dns.message.from_wire(reply)
    for rrset in m.answer:  # owners point into the question: same case as asked
        if rrset.name == q.question[0].name:
            assert rrset.name.to_text() == qname


# -- header checks ---------------------------------------------------------------------


def test_response_bit_set_is_dropped(rich_server: ServerProcess) -> None:
    q = make(n("web"), "A")
    q.flags |= dns.flags.QR
    assert udp_raw(rich_server.addr, q.to_wire(), timeout=0.5) is None


@pytest.mark.parametrize("qdcount", [0, 2, 3])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_qdcount_not_one_is_formerr(
    rich_server: ServerProcess, qdcount: int, transport: str
) -> None:
    wire = make(n("web"), "A", qid=4242).to_wire()
    header, question = bytearray(wire[:12]), wire[12:]
    header[4:6] = qdcount.to_bytes(2, "big")
    send = udp_raw if transport == "udp" else tcp_raw
    reply = send(rich_server.addr, bytes(header) + question * qdcount)
    assert reply is not None
    m = dns.message.from_wire(reply)
    assert m.id == 4242 and m.rcode() == dns.rcode.FORMERR and m.flags & dns.flags.QR


@pytest.mark.parametrize("opcode", [1, 2, 3, 4, 5, 6, 9, 15])
def test_unimplemented_opcode_is_notimp(ask: Ask, opcode: int) -> None:
    """Only QUERY is served: IQUERY, STATUS, NOTIFY, UPDATE and unassigned codes get NOTIMP."""
    q = make(n("web"), "A")
    q.set_opcode(dns.opcode.Opcode.make(opcode))
    r = ask(q)
    assert r.rcode() == dns.rcode.NOTIMP
    assert r.opcode() == opcode and r.id == q.id
    assert not r.answer


# -- ANY, zone transfers ------------------------------------------------------------------


@pytest.mark.parametrize("qname", ["@", "web", "mail", "mixed", "www", "host.wild", "_sip._udp"])
def test_any_answered_with_one_rrset(ask: Ask, qname: str) -> None:
    """RFC 8482 4.1: one RRset of the name (not all of them), with AA."""
    r = ask(make(n(qname), "ANY"))
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert len(r.answer) == 1
    owner = ORACLE.name(n(qname))
    assert r.answer[0].name == owner
    if qname == "host.wild":
        assert_rrset_is_zone_data(r.answer[0], ORACLE.name(n("*.wild")))
    else:
        assert_rrset_is_zone_data(r.answer[0])


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_zone_transfer_refused(rich_server: ServerProcess, qtype: str, transport: str) -> None:
    q = make(RICH_ORIGIN, qtype)
    send = udp_raw if transport == "udp" else tcp_raw
    reply = send(rich_server.addr, q.to_wire())
    assert reply is not None
    m = dns.message.from_wire(reply)
    assert m.rcode() == dns.rcode.REFUSED and not m.answer and m.id == q.id


# -- classes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "qname,setting",
    [
        ("version.bind.", "version"),
        ("version.server.", "version"),
        ("id.server.", "identity"),
        ("hostname.bind.", "identity"),
        ("VERSION.Bind.", "version"),
    ],
)
def test_chaos_txt_when_configured(ask: Ask, qname: str, setting: str) -> None:
    r = ask(make(qname, "TXT", "CH"))
    assert r.rcode() == dns.rcode.NOERROR
    assert len(r.answer) == 1
    rr = r.answer[0]
    assert rr.rdclass == dns.rdataclass.CH and rr.rdtype == dns.rdatatype.TXT
    assert [s.decode() for s in rr[0].strings] == [RICH_SETTINGS["server"][setting]]


@pytest.mark.parametrize(
    "qname,qtype",
    [
        ("version.bind.", "A"),
        ("authors.bind.", "TXT"),
        (RICH_ORIGIN, "SOA"),
        ("web." + RICH_ORIGIN, "A"),
    ],
)
def test_chaos_other_questions_refused(ask: Ask, qname: str, qtype: str) -> None:
    r = ask(make(qname, qtype, "CH"))
    assert r.rcode() == dns.rcode.REFUSED and not r.answer


@pytest.mark.parametrize(
    "qname", ["version.bind.", "id.server.", "hostname.bind.", "version.server."]
)
def test_chaos_refused_when_not_configured(demo_server: ServerProcess, qname: str) -> None:
    """The demo config has no ``server:`` section: fedns does not tell who or what it is."""
    for send in (udp, tcp):
        r = send(demo_server.addr, make(qname, "TXT", "CH"))
        assert r.rcode() == dns.rcode.REFUSED and not r.answer


def test_class_any_answers_in_data_without_aa(ask: Ask) -> None:
    """QCLASS=ANY (as NSD): the IN records, AA clear; negative answers carry no SOA."""
    pos = ask(make(n("web"), "A", "ANY"))
    assert pos.rcode() == dns.rcode.NOERROR and not pos.flags & dns.flags.AA
    assert len(pos.answer) == 1
    assert_rrset_is_zone_data(pos.answer[0])
    neg = ask(make(n("nx"), "A", "ANY"))
    assert neg.rcode() == dns.rcode.NXDOMAIN and not neg.flags & dns.flags.AA
    assert not neg.answer and not neg.authority
    ref = ask(make(n("www.child"), "A", "ANY"))
    assert [x.rdtype for x in ref.authority] == [dns.rdatatype.NS]
    out = ask(make("example.test.", "A", "ANY"))
    assert out.rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("qclass", ["HS", "NONE", 42])
def test_other_classes_refused(ask: Ask, qclass: str | int) -> None:
    r = ask(make(n("web"), "A", qclass))
    assert r.rcode() == dns.rcode.REFUSED and not r.answer


# -- wildcards (RFC 4592) ----------------------------------------------------------------------


@pytest.mark.parametrize("qname", ["host.wild", "a.b.wild", "x-1.wild"])
@pytest.mark.parametrize("qtype", ["A", "TXT", "MX"])
def test_wildcard_synthesizes_with_qname_as_owner(ask: Ask, qname: str, qtype: str) -> None:
    r = ask(make(n(qname), qtype))
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert len(r.answer) == 1
    assert r.answer[0].name == ORACLE.name(n(qname))
    assert_rrset_is_zone_data(r.answer[0], ORACLE.name(n("*.wild")))


def test_wildcard_nodata(ask: Ask) -> None:
    """A wildcard that matches but has no record of the type: NODATA, not NXDOMAIN."""
    r = ask(make(n("host.wild"), "AAAA"))
    assert_negative(r, dns.rcode.NOERROR)
    assert not r.answer


@pytest.mark.parametrize("qname", ["exists.wild", "ent2.wild"])
def test_existing_names_and_ents_block_the_wildcard(ask: Ask, qname: str) -> None:
    """RFC 4592 2.2.1: the wildcard applies only to names that do not exist (ENTs exist)."""
    r = ask(make(n(qname), "A"))
    assert_negative(r, dns.rcode.NOERROR)
    assert not r.answer


@pytest.mark.parametrize("qname", ["sub.exists.wild", "y.x.ent2.wild", "q.ent2.wild"])
def test_no_wildcard_below_a_blocking_name(ask: Ask, qname: str) -> None:
    """The closest encloser is the existing name, which has no ``*`` child: NXDOMAIN."""
    r = ask(make(n(qname), "A"))
    assert_negative(r, dns.rcode.NXDOMAIN)


def test_wildcard_cname_is_followed(ask: Ask) -> None:
    r = ask(make(n("anything.cnamewild"), "A"))
    assert r.rcode() == dns.rcode.NOERROR
    assert [(x.name, x.rdtype) for x in r.answer] == [
        (ORACLE.name(n("anything.cnamewild")), dns.rdatatype.CNAME),
        (ORACLE.name(n("web")), dns.rdatatype.A),
    ]
    assert_rrset_is_zone_data(r.answer[1])


def test_literal_asterisk_query_gets_wildcard_records(ask: Ask) -> None:
    r = ask(make(n("*.wild"), "TXT"))
    assert len(r.answer) == 1 and r.answer[0].name == ORACLE.name(n("*.wild"))
    assert_rrset_is_zone_data(r.answer[0])


# -- delegations -------------------------------------------------------------------------------


@pytest.mark.parametrize("qname", ["www.child", "a.b.child", "child", "ns.child"])
@pytest.mark.parametrize("qtype", ["A", "NS", "MX"])
def test_referral_without_aa_with_glue(ask: Ask, qname: str, qtype: str) -> None:
    """Below a cut the parent is not authoritative: NS in authority, in-bailiwick glue in additional."""
    r = ask(make(n(qname), qtype))
    assert r.rcode() == dns.rcode.NOERROR
    assert not r.flags & dns.flags.AA
    assert not r.answer
    assert len(r.authority) == 1
    ns = r.authority[0]
    assert ns.name == ORACLE.name(n("child")) and ns.rdtype == dns.rdatatype.NS
    assert_rrset_is_zone_data(ns)
    glue = {(x.name, x.rdtype) for x in r.additional}
    child = ORACLE.name(n("child"))
    expected = {
        (target, t)
        for rd in ns
        if (target := rd.target).is_subdomain(child)
        for t in (dns.rdatatype.A, dns.rdatatype.AAAA)
        if ORACLE.rdataset(target, t) is not None
    }
    assert glue == expected and expected  # ns.child A+AAAA, ns2.child A; not the outside NS
    for x in r.additional:
        assert_rrset_is_zone_data(x)


def test_referral_below_an_empty_non_terminal(ask: Ask) -> None:
    r = ask(make(n("x.deep.ent3"), "A"))
    assert not r.flags & dns.flags.AA and not r.answer
    assert [x.name for x in r.authority] == [ORACLE.name(n("deep.ent3"))]
    assert {x.name for x in r.additional} == {ORACLE.name(n("ns.deep.ent3"))}


def test_referral_to_out_of_zone_servers_has_no_glue(ask: Ask) -> None:
    r = ask(make(n("y.outside-ns"), "A"))
    assert not r.flags & dns.flags.AA
    assert [x.rdtype for x in r.authority] == [dns.rdatatype.NS] and not r.additional


def test_ds_at_the_cut_is_answered_by_the_parent(ask: Ask) -> None:
    """RFC 4035 3.1.4.1: the DS RRset lives on the parent side of the cut, with AA."""
    r = ask(make(n("child"), "DS"))
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert len(r.answer) == 1 and r.answer[0].rdtype == dns.rdatatype.DS
    assert_rrset_is_zone_data(r.answer[0])
    nodata = ask(make(n("deep.ent3"), "DS"))  # a cut without DS: authoritative NODATA
    assert_negative(nodata, dns.rcode.NOERROR)


def test_apex_ns_with_in_zone_addresses(ask: Ask) -> None:
    r = ask(make(RICH_ORIGIN, "NS"))
    assert r.flags & dns.flags.AA and len(r.answer) == 1
    assert_rrset_is_zone_data(r.answer[0])
    names = {x.name for x in r.additional}
    assert names == {ORACLE.name(n("ns1")), ORACLE.name(n("ns2"))}
    for x in r.additional:
        assert_rrset_is_zone_data(x)


# -- every record type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "qname,qtype",
    [
        ("@", "SOA"),
        ("@", "NS"),
        ("@", "A"),
        ("@", "AAAA"),
        ("@", "MX"),
        ("@", "TXT"),
        ("@", "CAA"),
        ("_sip._udp", "SRV"),
        ("7.2.0.192.in-addr", "PTR"),
        ("unknown", "TYPE65280"),
        ("mixed", "A"),
        ("MiXeD", "TXT"),
        ("web", "AAAA"),
    ],
)
def test_record_types_served_as_in_the_file(ask: Ask, qname: str, qtype: str) -> None:
    r = ask(make(n(qname), qtype))
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA
    assert len(r.answer) == 1
    assert r.answer[0].name == ORACLE.name(n(qname))
    assert_rrset_is_zone_data(r.answer[0])


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed (apt bind9-dnsutils)")
def test_demo_zone_answers_dig(demo_server: ServerProcess) -> None:
    """The shipped demo zone, asked by BIND's dig: an authoritative answer, no recursion."""
    host, port = demo_server.addr
    out = subprocess.run(
        ["dig", f"@{host}", "-p", str(port), "+norec", "+time=3", "+tries=2",
         "web.global.example.test.", "A"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert "status: NOERROR" in out
    flags = out.split("flags:", 1)[1].split(";", 1)[0].split()
    assert "aa" in flags and "ra" not in flags
    assert "127.0.0.80" in out  # web's A record in zones/global.example.test.zone
