"""Differential test: the same zone file served by fedns and by NSD, same queries, same answers.

NSD (Debian package ``nsd``) is the reference authoritative server. Both load
``tests/data/rich.example.test.zone``; several hundred queries generated from a
fixed seed go to both, over UDP and (a subset) over TCP. Per query, rcode, AA,
TC, the question as echoed, EDNS presence/version/DO and the answer section
(RRsets in order, records within an RRset as a set) must match exactly;
authority and additional are compared as sets of records. Every place where
the two may legitimately differ is a named ``Allowed`` below, with its reason;
anything else fails the test with the query and both replies.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
from dnsclient import make, tcp_raw, udp_raw
from oracle import Oracle
from servers import DATA, ServerProcess, start_fedns, start_nsd, write_config

pytestmark = [
    pytest.mark.reference,
    pytest.mark.skipif(shutil.which("nsd") is None, reason="NSD is not installed (apt nsd)"),
]

ORIGIN = "rich.example.test."
ZONE_FILE = DATA / "rich.example.test.zone"
SEED = 20240101

# Owner names (relative to ORIGIN; "@" is the apex) chosen to cover every rule.
EXISTING = [
    "@", "ns1", "ns2", "mail", "mixed", "www", "web", "alias1", "alias2", "away",
    "dangling", "loop1", "towild", "toent", "tochild", "exists.wild", "x.ent2.wild",
    "_sip._udp", "sip", "_http._tcp", "7.2.0.192.in-addr", "80.2.0.192.in-addr",
    "unknown", "big", "medium",
]  # fmt: skip
EMPTY_NON_TERMINALS = ["ent", "c.ent", "b.c.ent", "ent2.wild", "ent3", "2.0.192.in-addr", "_udp"]
NONEXISTENT = [
    "nx", "nothere", "a.nx", "zz.b.c.ent", "sub.exists.wild", "y.x.ent2.wild", "sub.mail",
    "wild", "srv", "cnamewild",
]  # fmt: skip
WILDCARD_COVERED = ["host.wild", "a.b.wild", "*.wild", "foo.cnamewild", "_443._tcp.srv", "q.srv"]
DELEGATED = [
    "child", "ns.child", "www.child", "a.b.child", "deep.ent3", "x.deep.ent3", "outside-ns",
    "y.outside-ns",
]  # fmt: skip
OUTSIDE = ["example.test.", "other.test.", "rich.example.test.evil.", "."]

TYPES = [
    "A", "AAAA", "MX", "TXT", "SRV", "NS", "SOA", "CAA", "PTR", "ANY", "TYPE65280", "CNAME", "DS",
]  # fmt: skip
# EDNS variants, cycled through: None = no OPT; else (UDP payload, DO bit).
EDNS_VARIANTS: list[tuple[int, bool] | None] = [
    None, (1232, False), (4096, False), (512, False), (600, True), (1400, False), None, (1232, True),
]  # fmt: skip


@dataclass(frozen=True)
class Allowed:
    """A named, reasoned difference between fedns and NSD."""

    name: str
    reason: str


# fedns puts in-zone A/AAAA of MX and SRV targets in the additional section; NSD
# with minimal-responses leaves them out. RFC 1035 3.3.9 (MX) and RFC 2782 (SRV)
# say servers may add them, so the client saves a lookup: both are correct.
TARGET_ADDRESSES = Allowed(
    "target-addresses",
    "fedns adds in-zone A/AAAA for MX/SRV targets in additional; NSD minimal-responses "
    "does not (RFC 1035 3.3.9, RFC 2782 permit either)",
)
# RFC 8482 4.1: a server may answer QTYPE=ANY with one RRset of its choice.
# NSD takes the first RRset in its own order; fedns the lowest type code. We
# check that each answers exactly one RRset, owned by the qname, that really
# is in the zone with those records and TTL.
ANY_CHOICE = Allowed(
    "any-choice",
    "RFC 8482 4.1: ANY is answered with one RRset the server picks; "
    "NSD and fedns pick different (both real) RRsets",
)

# QCLASS=ANY: NSD clears AA (an answer can't be authoritative for every class,
# RFC 6895 3.2), except when a CNAME chain ends in a referral, where its restart
# into the delegation sets AA again. fedns clears AA for every QCLASS=ANY answer.
CLASS_ANY_CNAME_REFERRAL_AA = Allowed(
    "class-any-cname-referral-aa",
    "QCLASS=ANY, CNAME into a delegation: NSD sets AA on the restart, fedns keeps AA "
    "clear as for every QCLASS=ANY answer (RFC 6895 3.2)",
)


def _rel(name: str) -> str:
    if name == "@":
        return ORIGIN
    return name if name.endswith(".") else f"{name}.{ORIGIN}"


def _mixed_case(rng: random.Random, text: str) -> str:
    # 0x20 (draft-vixie-dnsext-dns0x20): resolvers randomize qname case.
    return "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)


@dataclass(frozen=True)
class Case:
    qname: str
    qtype: str
    qclass: str
    edns: tuple[int, bool] | None
    tcp: bool
    group: str

    def wire(self, qid: int) -> bytes:
        if self.edns is None:
            q = make(self.qname, self.qtype, self.qclass, qid=qid)
        else:
            payload, do = self.edns
            q = make(self.qname, self.qtype, self.qclass, edns=0, payload=payload, do=do, qid=qid)
        return q.to_wire()

    def __str__(self) -> str:
        e = (
            "no-EDNS"
            if self.edns is None
            else f"EDNS({self.edns[0]}{',DO' if self.edns[1] else ''})"
        )
        return f"{self.qname} {self.qclass} {self.qtype} {e} {'TCP' if self.tcp else 'UDP'}"


def generate_cases() -> list[Case]:
    """The query set: every (name, type) pair once over UDP, then a TCP subset and extra classes."""
    rng = random.Random(SEED)
    groups = {
        "existing": EXISTING,
        "ent": EMPTY_NON_TERMINALS,
        "nonexistent": NONEXISTENT,
        "wildcard": WILDCARD_COVERED,
        "delegation": DELEGATED,
        "outside": OUTSIDE,
    }
    cases: list[Case] = []
    i = 0
    for group, names in groups.items():
        for n in names:
            for t in TYPES:
                qname = _mixed_case(rng, _rel(n)) if i % 3 else _rel(n)
                cases.append(
                    Case(qname, t, "IN", EDNS_VARIANTS[i % len(EDNS_VARIANTS)], False, group)
                )
                i += 1
    udp_cases = list(cases)
    # TCP: the same questions for one in five, so big answers are seen whole too.
    cases += [Case(c.qname, c.qtype, c.qclass, c.edns, True, c.group) for c in udp_cases[::5]]
    # Large RRsets at every payload size, and whole over TCP.
    for n in ("big", "medium", "@"):
        for size in (512, 700, 1000, 1232, 1400, 4096):
            cases.append(Case(_rel(n), "TXT", "IN", (size, False), False, "existing"))
        cases.append(Case(_rel(n), "TXT", "IN", None, False, "existing"))
        cases.append(Case(_rel(n), "TXT", "IN", None, True, "existing"))
    # QCLASS ANY and CH: answered as NSD does.
    for n in ("www", "web", "nx", "child", "x.deep.ent3", "ent", "@", "host.wild", "tochild",
              "dangling", "_sip._udp", "toent", "big"):  # fmt: skip
        for t in ("A", "NS", "SOA", "MX", "SRV", "TXT"):
            cases.append(Case(_rel(n), t, "ANY", None, False, "class-any"))
    for n, t in (("version.bind.", "TXT"), ("id.server.", "TXT"), ("hostname.bind.", "TXT"),
                 ("version.bind.", "A"), ("www.rich.example.test.", "A")):  # fmt: skip
        cases.append(Case(n, t, "CH", None, False, "class-ch"))
    return cases


# -- comparison -------------------------------------------------------------------


def _answer_key(m: dns.message.Message) -> list[tuple[str, int, int, int, frozenset[str]]]:
    return [
        (
            r.name.to_text().lower(),
            r.rdclass,
            r.rdtype,
            r.ttl,
            frozenset(x.to_text().lower() for x in r),
        )
        for r in m.answer
    ]


def _rr_set(section: list[dns.rrset.RRset]) -> set[tuple[str, int, int, int, str]]:
    return {
        (r.name.to_text().lower(), r.rdclass, r.rdtype, r.ttl, x.to_text().lower())
        for r in section
        for x in r
    }


def _header(m: dns.message.Message) -> tuple[str, bool, bool, bool, int, bool, int]:
    return (
        dns.rcode.to_text(m.rcode()),
        bool(m.flags & dns.flags.AA),
        bool(m.flags & dns.flags.TC),
        bool(m.flags & dns.flags.RA),
        m.edns,
        bool(m.ednsflags & dns.flags.DO),
        m.payload if m.edns >= 0 else 0,
    )


def _target_addresses(m: dns.message.Message) -> set[str]:
    """Lowercased owner names of MX/SRV targets named in the answer section."""
    out = set()
    for r in m.answer:
        for x in r:
            if r.rdtype in (dns.rdatatype.MX, dns.rdatatype.SRV):
                target = x.exchange if r.rdtype == dns.rdatatype.MX else x.target
                out.add(target.to_text().lower())
    return out


def compare(
    case: Case, fed: dns.message.Message, nsd: dns.message.Message, oracle: Oracle
) -> tuple[list[str], list[Allowed]]:
    """(problems, allowed differences used) for one query."""
    problems: list[str] = []
    used: list[Allowed] = []
    fh, nh = _header(fed), _header(nsd)
    if fh != nh:
        if (
            case.qclass == "ANY"
            and (fh[0], *fh[2:]) == (nh[0], *nh[2:])
            and not fh[1]
            and any(r.rdtype == dns.rdatatype.NS for r in nsd.authority)
            and any(r.rdtype == dns.rdatatype.CNAME for r in nsd.answer)
        ):
            used.append(CLASS_ANY_CNAME_REFERRAL_AA)
        else:
            problems.append(f"header fedns={fh} nsd={nh}")
    fq = [(q.name.to_text(), q.rdtype, q.rdclass) for q in fed.question]
    nq = [(q.name.to_text(), q.rdtype, q.rdclass) for q in nsd.question]
    if fq != nq:  # compared with case: both must echo the question as asked
        problems.append(f"question fedns={fq} nsd={nq}")

    if _answer_key(fed) != _answer_key(nsd):
        if dns.rdatatype.from_text(case.qtype) == dns.rdatatype.ANY and _any_ok(
            case, fed, nsd, oracle
        ):
            used.append(ANY_CHOICE)
        else:
            problems.append(f"answer fedns={_answer_key(fed)} nsd={_answer_key(nsd)}")

    if _rr_set(fed.authority) != _rr_set(nsd.authority):
        problems.append(f"authority fedns={_rr_set(fed.authority)} nsd={_rr_set(nsd.authority)}")

    fa, na = _rr_set(fed.additional), _rr_set(nsd.additional)
    if fa != na:
        extra = fa - na
        targets = _target_addresses(fed)
        if na <= fa and all(
            rr[0] in targets and rr[2] in (dns.rdatatype.A, dns.rdatatype.AAAA) for rr in extra
        ):
            used.append(TARGET_ADDRESSES)
        else:
            problems.append(f"additional fedns={fa} nsd={na}")
    return problems, used


def _any_ok(case: Case, fed: dns.message.Message, nsd: dns.message.Message, oracle: Oracle) -> bool:
    """Both replies hold one RRset at the qname, and each is the zone's real RRset."""
    qname = dns.name.from_text(case.qname)
    for m in (fed, nsd):
        if len(m.answer) != 1:
            return False
        r = m.answer[0]
        if r.name != qname:
            return False
        if qname.is_wild() or not oracle.exists(qname):
            return _is_wildcard_synthesis(r, oracle)
        real = oracle.rdataset(qname, r.rdtype)
        if real is None or real.ttl != r.ttl or set(real) != set(r):
            return False
    return True


def _is_wildcard_synthesis(r: dns.rrset.RRset, oracle: Oracle) -> bool:
    wild = dns.name.Name((b"*", *r.name.parent().labels))
    real = oracle.rdataset(wild, r.rdtype)
    return real is not None and real.ttl == r.ttl and set(real) == set(r)


# -- the test -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    tmp = tmp_path_factory.mktemp("differential")
    nsd = start_nsd(tmp / "nsd", {ORIGIN: ZONE_FILE}, "  hide-version: yes\n  hide-identity: yes\n")
    try:
        cfg = write_config(tmp / "fedns", {ORIGIN: ZONE_FILE})
        fed = start_fedns(cfg, tmp / "fedns")
    except BaseException:
        nsd.stop()
        raise
    yield fed, nsd
    fed.stop()
    nsd.stop()


def _ask(sp: ServerProcess, case: Case, qid: int) -> dns.message.Message:
    send: Callable[..., bytes | None] = tcp_raw if case.tcp else udp_raw
    wire = send(sp.addr, case.wire(qid))
    if wire is None:
        wire = send(sp.addr, case.wire(qid))  # one retry: UDP on a loaded machine
    assert wire is not None, f"{sp.name} did not answer {case}"
    m = dns.message.from_wire(wire)
    assert m.id == qid, f"{sp.name} answered {case} with ID {m.id}, asked {qid}"
    return m


def test_fedns_matches_nsd(servers: tuple[ServerProcess, ServerProcess]) -> None:
    fed, nsd = servers
    oracle = Oracle(ZONE_FILE, ORIGIN)
    cases = generate_cases()
    assert len(cases) >= 500
    counts: Counter[str] = Counter()
    failures: list[str] = []
    for i, case in enumerate(cases):
        qid = (i * 7919 + 1) & 0xFFFF
        f, n = _ask(fed, case, qid), _ask(nsd, case, qid)
        problems, used = compare(case, f, n, oracle)
        counts[f"group {case.group}"] += 1
        counts["TCP" if case.tcp else "UDP"] += 1
        counts[f"rcode {dns.rcode.to_text(n.rcode())}"] += 1
        if n.flags & dns.flags.TC:
            counts["TC"] += 1
        if problems:
            counts["MISMATCH"] += 1
            failures.append(f"{case}:\n    " + "\n    ".join(problems))
        elif used:
            for a in used:
                counts[f"allowed {a.name}"] += 1
        else:
            counts["identical"] += 1
    print(f"\ndifferential fedns vs NSD: {len(cases)} queries")
    for k in sorted(counts):
        print(f"  {k:36} {counts[k]}")
    assert not failures, f"{len(failures)} of {len(cases)} differ:\n" + "\n".join(failures[:40])
    # The query set really reaches the interesting paths on both servers.
    assert counts["TC"] > 0 and counts["rcode NXDOMAIN"] > 0 and counts["rcode REFUSED"] > 0
