"""ISC's DNS compliance tests (``genreport``), re-created with dnspython: fedns beside NSD.

``genreport`` (ISC's DNS-Compliance-Testing; its code does not belong here)
sends each of 100 queries to a server and grades the reply by the rules of
its ``process()``. Each case below is one of them, with the query built as
genreport builds it (``res_mkquery`` of the zone's apex, then the header
bits, the OPT record, a TSIG record set by the test) and the reply graded by
the same rules (``grade``): the tags genreport would print, "ok" when none
is a failure. The groups are genreport's: EDNS (its default), FULL, COMM,
TYPE (one query per type at the apex), and ``dnswkk`` (a query signed with
the well-known all-zero HMAC-SHA256 key named "."); its ``icmp`` test
(a ping) is not a DNS query and is not re-created.

Both servers serve the shipped demo zone (``zones/global.example.test.zone``):
fedns with its demo config, NSD (Debian ``nsd``) with that file. fedns must
pass every case NSD passes; the table of both is printed. Beside genreport,
two protocol corners are checked as the RFCs state them, against both: an
unknown opcode gets NOTIMP (RFC 1035 4.1.1, before the question count is
looked at, as NSD and Knot do), and a query signed with a key the server
does not hold gets NOTAUTH with TSIG error BADKEY, unsigned (RFC 8945 5.2.1).
"""

from __future__ import annotations

import base64
import shutil
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.tsig
import fuzzing
import pytest
from servers import DEMO_CONFIG, REPO, ServerProcess, start_fedns, start_nsd

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(shutil.which("nsd") is None, reason="NSD is not installed (apt nsd)"),
]

ZONE = "global.example.test."
ZONE_FILE = REPO / "zones" / "global.example.test.zone"
SOA, DNSKEY = 6, 48
BADVERS, BADCOOKIE, NOTAUTH, BADKEY = 16, 23, 9, 17
CLIENT_COOKIE = bytes(range(1, 9))  # genreport's 0102030405060708
# The well-known key of genreport's "dnswkk": name ".", 32 zero bytes, HMAC-SHA256.
WKK = dns.tsig.Key(dns.name.root, base64.b64encode(bytes(32)).decode(), dns.tsig.HMAC_SHA256)
TIMEOUT_S = 2.0


def opt(code: int, data: bytes = b"") -> dns.edns.Option:
    return dns.edns.GenericOption(code, data)


NSID, ECS, EXPIRE, COOKIE, ECHO = (
    opt(3),
    opt(8, b"\x00\x01\x00\x00"),  # 0.0.0.0/0
    opt(9),
    opt(10, CLIENT_COOKIE),
    opt(100),  # an unassigned option: never to be echoed
)


@dataclass(frozen=True)
class Case:
    """One genreport test (its ``opts[]`` row): what the query asks."""

    name: str
    group: str
    qtype: int = SOA
    udpsize: int = 0  # 0: no OPT record
    eflags: int = 0  # the OPT record's flags (DO = 0x8000)
    version: int = 0
    options: tuple[dns.edns.Option, ...] = ()
    tcp: bool = False
    cookie: bool = False  # the OPT record has genreport's client cookie
    ignore: bool = False  # a TC reply is graded as is, not retried over TCP
    tc: bool = False
    rd: bool = False
    ra: bool = False
    cd: bool = False
    ad: bool = False
    aa: bool = False
    z: bool = False
    opcode: int = 0
    tsig: bool = False
    dig: str = ""  # the dig command genreport's -D lists for it


# genreport's TYPE tests: its names and the codes of its ns_t_* constants.
TYPES = {
    "A": 1, "NS": 2, "MD": 3, "MF": 4, "CNAME": 5, "SOA": 6, "MB": 7, "MG": 8, "MR": 9,
    "NULL": 10, "WKS": 11, "PTR": 12, "HINFO": 13, "MINFO": 14, "MX": 15, "TXT": 16, "RP": 17,
    "AFSDB": 18, "X25": 19, "ISDN": 20, "RT": 21, "NSAP": 22, "NSAP-PTR": 23, "SIG": 24,
    "KEY": 25, "PX": 26, "GPOS": 27, "AAAA": 28, "LOC": 29, "NXT": 30, "SRV": 33, "NAPTR": 35,
    "KX": 36, "CERT": 37, "A6": 38, "DNAME": 39, "APL": 42, "DS": 43, "SSHFP": 44,
    "IPSECKEY": 45, "RRSIG": 46, "NSEC": 47, "DNSKEY": 48, "DHCID": 49, "NSEC3": 50,
    "NSEC3PARAM": 51, "TLSA": 52, "SMIMEA": 53, "HIP": 55, "CDS": 59, "CDNSKEY": 60,
    "OPENPGPKEY": 61, "SPF": 99, "NID": 104, "L32": 105, "L64": 106, "LP": 107, "EUI48": 108,
    "EUI64": 109, "URI": 256, "CAA": 257, "AVC": 258, "DOA": 259, "DLV": 32769, "TYPE1000": 1000,
}  # fmt: skip

CASES: tuple[Case, ...] = (
    Case("dns", "EDNS", dig="+noedns +noad +norec SOA"),
    Case("aa", "FULL", aa=True, dig="+noedns +noad +norec +aaflag SOA"),
    Case("ad", "FULL", ad=True, dig="+noedns +ad +norec SOA"),
    Case("cd", "FULL", cd=True, dig="+noedns +noad +norec +cd SOA"),
    Case("ra", "FULL", ra=True, dig="+noedns +noad +norec +raflag SOA"),
    Case("rd", "FULL", rd=True, dig="+noedns +noad +rec SOA"),
    Case("tc", "FULL", tc=True, dig="+noedns +noad +norec +tcflag SOA"),
    Case("zflag", "FULL", z=True, dig="+noedns +noad +norec +zflag SOA"),
    Case("opcode", "FULL", qtype=0, opcode=15, dig="+noedns +header-only +opcode=15"),
    Case(
        "opcodeflg",
        "FULL",
        qtype=0,
        opcode=15,
        tc=True,
        rd=True,
        ra=True,
        cd=True,
        ad=True,
        aa=True,
        z=True,
        dig="+noedns +header-only +opcode=15 +tcflag +rec +raflag +cd +ad +aaflag +zflag",
    ),
    Case("type666", "FULL", qtype=666, dig="+noedns +noad +norec TYPE666"),
    Case("tcp", "FULL", tcp=True, dig="+noedns +noad +norec +tcp SOA"),
    Case("edns", "EDNS", udpsize=4096, dig="+edns=0 +nocookie +noad +norec SOA"),
    Case("edns1", "EDNS", udpsize=4096, version=1, dig="+edns=1 +noednsneg +nocookie SOA"),
    Case(
        "edns@512",
        "EDNS",
        qtype=DNSKEY,
        udpsize=512,
        ignore=True,
        dig="+edns=0 +nocookie +dnssec +ignoretc +bufsize=512 DNSKEY",
    ),
    Case("ednsopt", "EDNS", udpsize=4096, options=(ECHO,), dig="+edns=0 +ednsopt=100 SOA"),
    Case(
        "edns1opt",
        "EDNS",
        udpsize=4096,
        version=1,
        options=(ECHO,),
        dig="+edns=1 +noednsneg +ednsopt=100 SOA",
    ),
    Case("do", "EDNS", udpsize=4096, eflags=0x8000, dig="+edns=0 +nocookie +dnssec SOA"),
    Case("docd", "FULL", udpsize=4096, eflags=0x8000, cd=True, dig="+edns=0 +dnssec +cd SOA"),
    Case("edns1do", "FULL", udpsize=4096, eflags=0x8000, version=1, dig="+edns=1 +dnssec SOA"),
    Case("ednsflags", "EDNS", udpsize=4096, eflags=0x0080, dig="+edns=0 +ednsflags=0x0080 SOA"),
    Case(
        "optlist",
        "EDNS",
        udpsize=4096,
        options=(NSID, ECS, EXPIRE, COOKIE),
        cookie=True,
        dig="+edns=0 +nsid +subnet=0.0.0.0/0 +expire +cookie=0102030405060708 SOA",
    ),
    Case("ednsnsid", "FULL", udpsize=4096, options=(NSID,), dig="+edns=0 +nsid SOA"),
    Case(
        "ednscookie",
        "FULL",
        udpsize=4096,
        options=(COOKIE,),
        cookie=True,
        dig="+edns=0 +cookie=0102030405060708 SOA",
    ),
    Case("ednsexpire", "FULL", udpsize=4096, options=(EXPIRE,), dig="+edns=0 +expire SOA"),
    Case("ednssubnet", "FULL", udpsize=4096, options=(ECS,), dig="+edns=0 +subnet=0.0.0.0/0 SOA"),
    Case("edns1nsid", "FULL", udpsize=4096, version=1, options=(NSID,), dig="+edns=1 +nsid SOA"),
    Case(
        "edns1cookie",
        "FULL",
        udpsize=4096,
        version=1,
        options=(COOKIE,),
        cookie=True,
        dig="+edns=1 +cookie=0102030405060708 SOA",
    ),
    Case(
        "edns1expire", "FULL", udpsize=4096, version=1, options=(EXPIRE,), dig="+edns=1 +expire SOA"
    ),
    Case(
        "edns1subnet",
        "FULL",
        udpsize=4096,
        version=1,
        options=(ECS,),
        dig="+edns=1 +subnet=0.0.0.0/0 SOA",
    ),
    Case(
        "ednstcp",
        "EDNS",
        qtype=DNSKEY,
        udpsize=512,
        eflags=0x8000,
        tcp=True,
        dig="+edns=0 +dnssec +bufsize=512 +tcp DNSKEY",
    ),
    Case(
        "bind11",
        "COMM",
        udpsize=4096,
        eflags=0x8000,
        options=(COOKIE,),
        cookie=True,
        dig="+edns=0 +cookie=0102030405060708 +noad +norec +dnssec SOA",
    ),
    Case(
        "dig11",
        "COMM",
        udpsize=4096,
        options=(COOKIE,),
        cookie=True,
        rd=True,
        ad=True,
        dig="+edns=0 +cookie=0102030405060708 +ad +rec SOA",
    ),
    Case("dnswkk", "NONE", tsig=True, dig="+noedns +norec -y hmac-sha256:.:AAAA...= SOA"),
    *(Case(t, "TYPE", qtype=code, dig=f"+noedns +noad +norec {t}") for t, code in TYPES.items()),
)

# Tags genreport prints that say what it saw, not that anything failed.
INFO = frozenset({"nsid", "expire", "cookie", "cookie+badcookie", "subnet", "proxy"})


def query(case: Case, qid: int) -> dns.message.Message:
    """The query of ``case`` as genreport builds it."""
    if case.opcode:
        q = dns.message.Message(id=qid)  # header only: genreport zeroes QDCOUNT
        q.flags = dns.flags.Flag(dns.opcode.to_flags(dns.opcode.Opcode(case.opcode)))
    else:
        q = dns.message.make_query(ZONE, case.qtype, use_edns=False)
        q.id = qid
        q.flags = dns.flags.Flag(0)
    bits = (
        (case.tc, dns.flags.TC),
        (case.rd, dns.flags.RD),
        (case.ra, dns.flags.RA),
        (case.z, 0x0040),
        (case.ad, dns.flags.AD),
        (case.cd, dns.flags.CD),
        (case.aa, dns.flags.AA),
    )
    for on, bit in bits:
        if on:
            q.flags |= bit
    if case.udpsize:
        q.use_edns(case.version, case.eflags, case.udpsize, options=list(case.options))
    if case.tsig:
        q.use_tsig(WKK, fudge=300)
    return q


@dataclass
class Exchange:
    reply: bytes | None
    tcp: bool
    failure: str = ""  # genreport's tag for a transport failure: timeout, reset, eof


def send(addr: tuple[str, int], wire: bytes, tcp: bool) -> Exchange:
    if not tcp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(TIMEOUT_S / 2)
            for _ in range(3):  # genreport resends a UDP query that got nothing
                s.sendto(wire, addr)
                try:
                    while True:
                        reply = s.recv(65535)
                        if reply[:2] == wire[:2]:
                            return Exchange(reply, False)
                except TimeoutError:
                    continue
        return Exchange(None, False, "timeout")
    try:
        with socket.create_connection(addr, timeout=TIMEOUT_S) as s:
            s.sendall(struct.pack(">H", len(wire)) + wire)
            head = _recv(s, 2)
            if len(head) < 2:
                return Exchange(None, True, "eof")
            body = _recv(s, struct.unpack(">H", head)[0])
            return Exchange(body, True)
    except ConnectionResetError:
        return Exchange(None, True, "reset")
    except TimeoutError:
        return Exchange(None, True, "timeout")


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def ask(addr: tuple[str, int], case: Case, qid: int) -> tuple[dns.message.Message, Exchange]:
    """Send as genreport does: over TCP if the case says so, else UDP, and a TC reply
    again over TCP unless the case grades it as is."""
    q = query(case, qid)
    wire = q.to_wire()
    ex = send(addr, wire, case.tcp)
    truncated = ex.reply is not None and not ex.tcp and len(ex.reply) > 2 and ex.reply[2] & 0x02
    if truncated and not case.ignore:
        ex = send(addr, wire, True)
    return q, ex


def _rcode_text(rcode: int) -> str:
    return {4: "notimp", 9: "notauth", 16: "badvers", 23: "badcookie"}.get(
        rcode, dns.rcode.to_text(rcode).lower() if rcode < 16 else f"rcode{rcode}"
    )


def grade(case: Case, q: dns.message.Message, ex: Exchange) -> list[str]:
    """The tags genreport's ``process()`` gives this reply ("ok" first when none fails)."""
    if ex.reply is None:
        return [ex.failure]
    buf = ex.reply
    if len(buf) < 12:
        return ["malformed"]
    tags: list[str] = []
    ok = True

    def bad(tag: str) -> None:
        nonlocal ok
        tags.append(tag)
        ok = False

    opcode = (buf[2] >> 3) & 0x0F
    aa, rd = buf[2] & 0x04, buf[2] & 0x01
    ra, z, ad, cd = buf[3] & 0x80, buf[3] & 0x40, buf[3] & 0x20, buf[3] & 0x10
    qd, an, ns, ar = struct.unpack(">HHHH", buf[4:12])
    try:
        # A TSIG record is read but not verified here (keyring: no key); below it is.
        r = dns.message.from_wire(buf, keyring=lambda _m, _n: False)
    except dns.exception.DNSException:
        return ["malformed"]
    if case.opcode and qd:
        bad("non-empty-question-section")
    elif qd and (
        r.question[0].name != dns.name.from_text(ZONE) or r.question[0].rdtype != case.qtype
    ):
        return ["mismatch"]
    if case.opcode and an:
        bad("non-empty-answer-section")
    if case.opcode and ns:
        bad("non-empty-authority-section")
    if case.opcode and ar:
        bad("non-empty-additional-section")
    seensoa = any(x.rdtype == SOA and x.name == dns.name.from_text(ZONE) for x in r.answer)
    seenrrsig = any(x.rdtype == dns.rdatatype.RRSIG for x in r.answer)
    seenopt = r.opt is not None
    ednsttl = r.opt.ttl if r.opt is not None else 0
    codes = {int(o.otype): o for o in r.options}
    seennsid = 3 in codes and bool(codes[3].to_wire())
    seenecs, seenecho = 8 in codes, 100 in codes
    seenexpire = 9 in codes and len(codes[9].to_wire()) == 4
    seencookie = goodcookie = False
    if 10 in codes and 16 <= len(codes[10].to_wire()) <= 40:
        seencookie = True
        goodcookie = codes[10].to_wire()[:8] == CLIENT_COOKIE
        if not goodcookie and case.cookie:
            ok = False
    rcode = (buf[3] & 0x0F) + ((ednsttl >> 24) << 4)
    addrcode = True
    if case.opcode != opcode:
        bad(
            {0: "query", 1: "iquery", 2: "status", 4: "notify", 5: "update"}.get(
                opcode, f"opcode{opcode}"
            )
        )
    if case.version == 0:
        if case.opcode == 0 and rcode and (not case.cookie or rcode != BADCOOKIE or not seencookie):
            bad(_rcode_text(rcode))
            addrcode = False
        if case.opcode and rcode != 4:
            bad(_rcode_text(rcode))
            addrcode = False
    tsig = r.tsig[0] if r.tsig else None
    if tsig is not None and tsig.error:
        if addrcode and rcode != NOTAUTH:
            bad(_rcode_text(rcode))
        bad({16: "badsig", 17: "badkey", 18: "badtime"}.get(tsig.error, f"tsigerror{tsig.error}"))
    if case.tsig and tsig is None:
        bad("notsig")
    if tsig is not None and not tsig.error:
        try:  # genreport's own HMAC check of a signed reply
            dns.message.from_wire(buf, keyring=WKK, request_mac=q.mac)
        except dns.exception.DNSException:
            bad("tsig-bad-sig")
    if case.version and rcode != BADVERS:
        bad(_rcode_text(rcode))
    ednsvers = (ednsttl >> 16) & 0xFF
    if seenopt and ednsvers:
        bad("version-not-zero")
    if seenopt and (
        (ednsvers < case.version and rcode != BADVERS)
        or (ednsvers >= case.version and rcode == BADVERS)
    ):
        bad("badversion")
    if not seenopt and case.udpsize:
        bad("noopt")
    if seenopt and not case.udpsize:
        bad("opt")
    if case.qtype == SOA:
        if case.version == 0 and not case.ignore and not seensoa and rcode == 0:
            bad("nosoa")
        if seensoa and (case.version or rcode):
            bad("soa")
    if seenecho:
        bad("echoed")
    if seenopt and case.eflags & 0x8000 and not ednsttl & 0x8000 and seenrrsig:
        bad("nodo")
    if seenopt and case.eflags & 0x8000 and case.cd and ednsttl & 0x8000 and not cd and seenrrsig:
        bad("nocd")
    if not aa and case.version == 0 and rcode == 0 and case.opcode == 0:
        bad("noaa")
    if aa and case.opcode:
        bad("aa")
    if ra and case.opcode:
        bad("ra")
    if rd and (case.opcode or not case.rd):
        bad("rd")
    if not rd and case.rd and case.opcode == 0:
        bad("nord")
    if ad and (case.opcode or (not case.ad and not case.eflags & 0x8000)):
        bad("ad")
    if cd and (case.opcode or not case.cd):
        bad("cd")
    if z:
        bad("z")
    if ednsttl & 0x7FFF:
        bad("mbz")
    if case.ignore and len(buf) > (case.udpsize or 512):
        bad("toobig")
    if seennsid:
        tags.append("nsid")
    if seenexpire:
        tags.append("expire")
    if seencookie and case.cookie:
        tags.append(
            ("cookie" if goodcookie else "cookie-mismatch")
            + ("+badcookie" if rcode == BADCOOKIE else "")
        )
    elif seencookie:
        tags.append("cookie")
    if seenecs:
        tags.append("subnet")
    return (["ok"] if ok else []) + tags


def passed(tags: list[str]) -> bool:
    return bool(tags) and tags[0] == "ok"


# -- the servers and the run -----------------------------------------------------------


@dataclass
class Pair:
    fedns: ServerProcess
    nsd: ServerProcess
    results: dict[str, dict[str, list[str]]]  # case -> server -> tags


# The columns: fedns as shipped, fedns with DNS cookies on (``cookies: {}``), NSD.
FEDNS = ("fedns", "fedns+cookies")


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started: list[ServerProcess] = []
    try:
        started.append(start_fedns(DEMO_CONFIG, tmp_path_factory.mktemp("compliance-fedns")))
        work = tmp_path_factory.mktemp("compliance-cookies")
        started.append(start_fedns(fuzzing.config_with(DEMO_CONFIG, work, cookies={}), work))
        nsd_dir = tmp_path_factory.mktemp("compliance-nsd")
        started.append(start_nsd(nsd_dir, {ZONE: Path(ZONE_FILE)}))
        results: dict[str, dict[str, list[str]]] = {}
        for i, case in enumerate(CASES):
            results[case.name] = {}
            for label, sp in zip((*FEDNS, "nsd"), started, strict=True):
                q, ex = ask(sp.addr, case, 0x1000 + i)
                results[case.name][label] = grade(case, q, ex)
        yield Pair(started[0], started[2], results)
    finally:
        for sp in started:
            sp.stop()




@pytest.mark.parametrize("server", FEDNS)
@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name) for c in CASES],
)
def test_fedns_passes_what_nsd_passes(pair: Pair, case: Case, server: str) -> None:
    got = pair.results[case.name]
    if passed(got["nsd"]):
        assert passed(got[server]), (
            f"genreport {case.name} ({case.group}; dig {case.dig}): NSD {','.join(got['nsd'])}, "
            f"{server} {','.join(got[server])}"
        )


def test_scores(pair: Pair) -> None:
    """The table, and fedns passing at least as many cases as NSD."""
    print(f"\ngenreport's cases re-created ({len(CASES)}; its icmp ping is not a DNS query):")
    print(f"  {'test':12} {'group':5} {'fedns':28} {'fedns+cookies':28} nsd")
    for case in CASES:
        got = pair.results[case.name]
        row = "".join(f"{','.join(got[s]):28} " for s in FEDNS)
        print(f"  {case.name:12} {case.group:5} {row}{','.join(got['nsd'])}")
    servers = (*FEDNS, "nsd")
    score = {s: sum(passed(pair.results[c.name][s]) for c in CASES) for s in servers}
    print("  passed: " + ", ".join(f"{s} {score[s]}/{len(CASES)}" for s in servers))
    for s in FEDNS:
        assert score[s] >= score["nsd"], score


# -- the two protocol corners, as the RFCs state them -----------------------------------


@pytest.mark.parametrize("server", ["fedns", "nsd"])
@pytest.mark.parametrize("qd", [0, 1, 2])
@pytest.mark.parametrize("opcode", [1, 2, 3, 6, 7, 15])
def test_unknown_opcode_gets_notimp(
    pair: Pair, request: pytest.FixtureRequest, server: str, qd: int, opcode: int
) -> None:
    """RFC 1035 4.1.1: NOTIMP for an opcode not implemented, whatever the sections
    hold (QDCOUNT 0, 1 or 2); the opcode echoed. (4 NOTIFY and 5 UPDATE have an
    answer of their own in NSD.)"""
    sp = pair.fedns if server == "fedns" else pair.nsd
    q = dns.message.Message(id=0x4000 + opcode)
    q.flags = dns.flags.Flag(dns.opcode.to_flags(dns.opcode.Opcode(opcode)))
    wire = bytearray(q.to_wire())
    body = dns.message.make_query(ZONE, "SOA").to_wire()[12:] if qd else b""
    wire[4:6] = struct.pack(">H", qd)
    ex = send(sp.addr, bytes(wire) + body * min(qd, 2), False)
    assert ex.reply is not None, f"{server}: no reply to opcode {opcode}"
    r = dns.message.from_wire(ex.reply, question_only=True)
    assert r.rcode() == dns.rcode.NOTIMP, f"{server}: {dns.rcode.to_text(r.rcode())}"
    assert r.opcode() == opcode
    assert r.flags & dns.flags.QR


@pytest.mark.parametrize("server", ["fedns", "nsd"])
@pytest.mark.parametrize("key", [".", "fedns-unknown-key.", "k.global.example.test."])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_tsig_with_an_unknown_key_gets_notauth_badkey(
    pair: Pair, request: pytest.FixtureRequest, server: str, key: str, transport: str
) -> None:
    """RFC 8945 5.2.1: a key the server does not recognise: RCODE NOTAUTH, a TSIG
    record with error BADKEY, unsigned (MAC size 0), the Original ID echoed."""
    sp = pair.fedns if server == "fedns" else pair.nsd
    k = dns.tsig.Key(key, base64.b64encode(b"fedns" * 8).decode(), dns.tsig.HMAC_SHA256)
    q = dns.message.make_query(f"web.{ZONE}", "A", use_edns=0)
    q.flags = dns.flags.Flag(0)
    q.use_tsig(k, fudge=300)
    wire = q.to_wire()
    ex = send(sp.addr, wire, transport == "tcp")
    assert ex.reply is not None, f"{server}: no reply to a signed query"
    r = dns.message.from_wire(ex.reply, keyring=lambda _m, _n: False)
    assert r.rcode() == NOTAUTH, f"{server}: {dns.rcode.to_text(r.rcode())}"
    assert r.tsig, f"{server}: no TSIG record in the reply"
    rd = r.tsig[0]
    assert rd.error == BADKEY, f"{server}: TSIG error {rd.error}"
    assert rd.mac == b"", "a BADKEY reply is unsigned"
    assert rd.original_id == q.id
    assert r.tsig.name == dns.name.from_text(key)
    assert abs(rd.time_signed - time.time()) < 600
