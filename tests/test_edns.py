"""EDNS (RFC 6891) and message size: OPT echo, DO, BADVERS, payload clamping, truncation."""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnsclient import make, tcp, tcp_raw, udp, udp_raw
from oracle import Oracle
from servers import RICH_ORIGIN, RICH_ZONE, FednsFactory, ServerProcess

ORACLE = Oracle(RICH_ZONE, RICH_ORIGIN)
BIG = f"big.{RICH_ORIGIN}"  # 40 TXT records, about 2.6 kB: fits no UDP size we allow
MEDIUM = f"medium.{RICH_ORIGIN}"  # 12 TXT records, about 900 bytes: more than 512, less than 1232


def test_zone_rrsets_have_the_sizes_the_tests_rely_on() -> None:
    big = ORACLE.rdataset(BIG, "TXT")
    medium = ORACLE.rdataset(MEDIUM, "TXT")
    assert big is not None and medium is not None
    big_wire = sum(len(rd.to_wire()) + 2 + 10 for rd in big)
    medium_wire = sum(len(rd.to_wire()) + 2 + 10 for rd in medium)
    assert big_wire > 1232 + 200
    assert 512 + 100 < medium_wire < 1232 - 200


QUERIES = [
    (f"web.{RICH_ORIGIN}", "A", dns.rcode.NOERROR),
    (f"nx.{RICH_ORIGIN}", "A", dns.rcode.NXDOMAIN),
    ("example.test.", "A", dns.rcode.REFUSED),
    (f"www.child.{RICH_ORIGIN}", "A", dns.rcode.NOERROR),
]


@pytest.mark.parametrize("qname,qtype,rcode", QUERIES)
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_opt_echoed_only_when_asked(
    rich_server: ServerProcess, qname: str, qtype: str, rcode: int, transport: str
) -> None:
    send = udp if transport == "udp" else tcp
    plain = send(rich_server.addr, make(qname, qtype))
    assert plain.rcode() == rcode
    assert plain.edns == -1 and plain.opt is None, "no OPT in the query: none in the reply"
    with_opt = send(rich_server.addr, make(qname, qtype, edns=0))
    assert with_opt.rcode() == rcode
    assert with_opt.edns == 0
    assert with_opt.payload == 1232, "the server advertises its own UDP size"


@pytest.mark.parametrize("do", [False, True])
def test_do_bit_copied(rich_server: ServerProcess, do: bool) -> None:
    for qname, qtype, _ in QUERIES:
        r = udp(rich_server.addr, make(qname, qtype, edns=0, do=do))
        assert bool(r.ednsflags & dns.flags.DO) == do


def test_unknown_options_ignored_and_not_echoed(rich_server: ServerProcess) -> None:
    options = [
        dns.edns.GenericOption(dns.edns.OptionType.make(65001), b"experimental"),
        dns.edns.GenericOption(dns.edns.NSID, b""),
        dns.edns.GenericOption(dns.edns.COOKIE, b"\x01\x02\x03\x04\x05\x06\x07\x08"),
        dns.edns.GenericOption(dns.edns.OptionType.make(65534), b""),
    ]
    q = make(f"web.{RICH_ORIGIN}", "A", edns=0, options=options)
    r = udp(rich_server.addr, q)
    assert r.rcode() == dns.rcode.NOERROR and r.answer
    assert r.edns == 0 and r.options == ()


@pytest.mark.parametrize("version", [1, 2, 255])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_unknown_edns_version_is_badvers(
    rich_server: ServerProcess, version: int, transport: str
) -> None:
    """RFC 6891 6.1.3: BADVERS (extended rcode 16), the reply's OPT at version 0, no answer."""
    q = make(f"web.{RICH_ORIGIN}", "A", edns=version)
    r = (udp if transport == "udp" else tcp)(rich_server.addr, q)
    assert r.rcode() == dns.rcode.BADVERS
    assert r.edns == 0
    assert not r.answer


def _udp_size(
    server: ServerProcess, qname: str, payload: int | None, qtype: str = "TXT"
) -> tuple[int, dns.message.Message]:
    q = make(qname, qtype, edns=0, payload=payload) if payload else make(qname, qtype)
    wire = udp_raw(server.addr, q.to_wire())
    assert wire is not None
    return len(wire), dns.message.from_wire(wire)


def _assert_whole_rrsets(m: dns.message.Message) -> None:
    """RFC 2181 9: a truncated reply drops whole RRsets, never part of one."""
    for section in (m.answer, m.authority, m.additional):
        for r in section:
            real = ORACLE.rdataset(r.name, r.rdtype)
            assert real is not None and set(r) == set(real)


@pytest.mark.parametrize("payload", [4096, 1232, 1400, 65535])
def test_payload_clamped_to_1232_and_big_rrset_truncated(
    rich_server: ServerProcess, payload: int
) -> None:
    size, m = _udp_size(rich_server, BIG, payload)
    assert size <= 1232
    assert m.flags & dns.flags.TC
    assert m.question[0].name.to_text() == BIG and m.edns == 0
    _assert_whole_rrsets(m)


@pytest.mark.parametrize("payload", [600, 700, 800, 900])
def test_smaller_payload_honoured(rich_server: ServerProcess, payload: int) -> None:
    size, m = _udp_size(rich_server, MEDIUM, payload)
    assert size <= payload
    assert m.flags & dns.flags.TC
    _assert_whole_rrsets(m)


@pytest.mark.parametrize("payload", [1, 100, 511])
def test_payload_below_512_means_512(rich_server: ServerProcess, payload: int) -> None:
    """RFC 6891 6.2.5: values below 512 are treated as 512."""
    size, m = _udp_size(rich_server, f"web.{RICH_ORIGIN}", payload, "A")
    assert m.rcode() == dns.rcode.NOERROR and m.answer and not m.flags & dns.flags.TC
    assert size <= 512


def test_medium_rrset_fits_in_1232(rich_server: ServerProcess) -> None:
    size, m = _udp_size(rich_server, MEDIUM, 1232)
    assert 512 < size <= 1232
    assert not m.flags & dns.flags.TC
    assert len(m.answer) == 1
    _assert_whole_rrsets(m)


def test_no_edns_means_512_bytes(rich_server: ServerProcess) -> None:
    size, m = _udp_size(rich_server, MEDIUM, None)
    assert size <= 512
    assert m.flags & dns.flags.TC
    assert m.edns == -1
    _assert_whole_rrsets(m)


@pytest.mark.parametrize("qname", [BIG, MEDIUM])
@pytest.mark.parametrize("edns", [None, 0])
def test_tcp_carries_the_full_answer(
    rich_server: ServerProcess, qname: str, edns: int | None
) -> None:
    q = make(qname, "TXT", edns=edns, payload=512)
    wire = tcp_raw(rich_server.addr, q.to_wire())
    assert wire is not None
    m = dns.message.from_wire(wire)
    assert not m.flags & dns.flags.TC
    assert len(m.answer) == 1
    real = ORACLE.rdataset(qname, "TXT")
    assert real is not None and set(m.answer[0]) == set(real)
    if qname == BIG:
        assert len(wire) > 1232


def test_opt_is_last_and_counted(rich_server: ServerProcess) -> None:
    """The OPT record goes at the end of additional and ARCOUNT counts it."""
    q = make(f"{RICH_ORIGIN}", "MX", edns=0)
    wire = udp_raw(rich_server.addr, q.to_wire())
    assert wire is not None
    arcount = struct.unpack(">H", wire[10:12])[0]
    m = dns.message.from_wire(wire)
    assert arcount == sum(len(r) for r in m.additional) + 1
    assert wire.endswith(
        b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    )  # root, OPT, 1232, v0, no opts


@pytest.fixture
def small_payload_server(fedns_server: FednsFactory) -> ServerProcess:
    return fedns_server({RICH_ORIGIN: RICH_ZONE}, settings={"dns": {"max_udp_payload": 800}})


def test_configured_max_udp_payload(small_payload_server: ServerProcess) -> None:
    size, m = _udp_size(small_payload_server, MEDIUM, 4096)
    assert size <= 800 and m.flags & dns.flags.TC
    assert m.payload == 800
    size, m = _udp_size(small_payload_server, MEDIUM, 700)
    assert size <= 700
