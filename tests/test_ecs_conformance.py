"""ECS (RFC 7871) conformance over real UDP: fedns, and gdnsd as the bar, asked the same table.

One fedns process serves a zone file plus federated services from static
clusters (east/us-east, west/us-west, eu/eu-west) with a locality map; gdnsd
(``tests/refservers.py``) serves the same names with an equivalent geoip
``nets`` map and a ``DYNA`` record for the tailored name. Every row of
``ROWS`` is sent, as raw option bytes, to both:

* malformed options (non-zero SCOPE in the query, bits beyond SOURCE, an
  extra ADDRESS byte, SOURCE > 32, unknown FAMILY, a short option) -> FORMERR;
* valid ones -> FAMILY, SOURCE and ADDRESS echoed byte for byte, and SCOPE =
  the prefix the answer depends on: the locality block widened to where the
  answer is the same (10.2/16 and 10.3/16 both us-west -> 15), longer than
  SOURCE where SOURCE was not specific enough (RFC 7871 7.2.1), 0 for /0,
  static records, NXDOMAIN/NODATA, SOA/NS and a service that answers
  everyone alike;
* no ECS in the query -> no ECS in the reply.

Expected answers and scopes are derived by hand from the maps below (the
comment on each row says how), not copied from a server's output; gdnsd must
agree with them except where a row names a deliberate difference.

CNAME into a tailored name (RFC 7871 7.2.1): "For the specific case of a
CNAME chain, the Authoritative Nameserver SHOULD only place the CNAME RR in
the Answer section to have it cached unambiguously and appropriately. Most
modern Recursive Resolvers restart the query with the canonical name". So
``alias CNAME svc.geo`` is answered with the CNAME alone, SCOPE 0 (the CNAME
does not depend on the client); the resolver then asks for ``svc.geo`` with
ECS and caches that answer per subnet. gdnsd does the same. A CNAME into a
static name keeps the in-zone chain (nothing in it depends on the client).
"""

from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import dataclass, replace
from typing import Any

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
from dnsclient import make, udp_raw
from refservers import GDNSD, have, start_gdnsd
from servers import ServerProcess, start_fedns, write_config

ORIGIN = "global.example.test."

# The one locality map, as fedns rules and as gdnsd nets (region per CIDR).
NETS: dict[str, str] = {
    "10.1.0.0/16": "us-east",
    "10.2.0.0/16": "us-west",
    "10.3.0.0/16": "us-west",  # same answer as its sibling 10.2/16: they merge into 10.2/15
    "127.0.0.0/8": "us-west",  # where the test's queries come from (RFC 7871 /0 and no-ECS rows)
    "198.51.100.0/24": "us-east",
    "2001:db8:1::/48": "us-east",
    "2001:db8:2::/48": "us-west",
}
DEFAULT = "eu-west"  # everything else: a /0 rule in fedns, the first datacenter in gdnsd
ADDR = {"us-east": "127.1.0.1", "us-west": "127.2.0.1", "eu-west": "127.3.0.1"}

ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 1209600 30
@       IN NS  ns1
ns1     IN A   127.0.0.53
static  IN A   127.0.0.80
alias   IN CNAME svc.geo
salias  IN CNAME static
"""

FEDERATION: dict[str, Any] = {
    "zone": ORIGIN,
    "clusters": [
        {"name": "east", "region": "us-east", "zone": "us-east-1a"},
        {"name": "west", "region": "us-west", "zone": "us-west-2a"},
        {"name": "eu", "region": "eu-west", "zone": "eu-west-1a"},
    ],
    "regions": [
        {"name": "us-east", "lat": 39.0, "lon": -77.5},
        {"name": "us-west", "lat": 45.6, "lon": -121.2},
        {"name": "eu-west", "lat": 53.3, "lon": -6.3},
    ],
    "localities": [{"cidr": c, "region": r} for c, r in NETS.items()]
    + [{"cidr": "0.0.0.0/0", "region": DEFAULT}, {"cidr": "::/0", "region": DEFAULT}],
    "defaults": {"policy": "locality", "ttl": 30},
    "services": [
        {
            "namespace": "geo",
            "name": "svc",
            "endpoints": {
                "east": [{"addresses": [ADDR["us-east"]]}],
                "west": [{"addresses": [ADDR["us-west"]]}],
                "eu": [{"addresses": [ADDR["eu-west"]]}],
            },
        },
        # Runs in one cluster: every client gets the same answer.
        {"namespace": "geo", "name": "solo", "endpoints": {"east": [{"addresses": ["127.1.0.9"]}]}},
    ],
}

GDNSD_ZONE = (
    "static 300 A 127.0.0.80\nalias 300 CNAME svc.geo\nsalias 300 CNAME static\n"
    "solo.geo 300 A 127.1.0.9\n"
)


# -- option bytes (RFC 7871 section 6), spelled out -------------------------------------------


def ecs(cidr: str) -> bytes:
    """A valid option's data for ``cidr``: FAMILY, SOURCE, SCOPE 0, ceil(SOURCE/8) bytes."""
    n = ipaddress.ip_network(cidr)
    return (
        struct.pack(">HBB", 1 if n.version == 4 else 2, n.prefixlen, 0)
        + (n.network_address.packed[: (n.prefixlen + 7) // 8])
    )


def raw(family: int, source: int, scope: int, address: bytes) -> bytes:
    return struct.pack(">HBB", family, source, scope) + address


# -- reading the reply's ECS option as bytes (dnspython would normalize it) --------------


def _skip_name(buf: bytes, i: int) -> int:
    while True:
        n = buf[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += n + 1


def ecs_options(wire: bytes) -> list[bytes]:
    """The data of every ECS option in the reply's OPT record, exactly as sent."""
    qd, an, ns, ar = struct.unpack(">HHHH", wire[4:12])
    i = 12
    for _ in range(qd):
        i = _skip_name(wire, i) + 4
    out = []
    for _ in range(an + ns + ar):
        i = _skip_name(wire, i)
        rtype, _cls, _ttl, rdlen = struct.unpack(">HHIH", wire[i : i + 10])
        rdata = wire[i + 10 : i + 10 + rdlen]
        i += 10 + rdlen
        if rtype == 41:
            j = 0
            while j + 4 <= len(rdata):
                code, ln = struct.unpack(">HH", rdata[j : j + 4])
                if code == 8:
                    out.append(rdata[j + 4 : j + 4 + ln])
                j += 4 + ln
    return out


@dataclass(frozen=True)
class Reply:
    rcode: int
    answer: tuple[tuple[str, str, str], ...]  # (owner, type, rdata), sorted
    authority_types: tuple[str, ...]
    ecs: tuple[bytes, ...]


def ask(addr: tuple[str, int], name: str, qtype: str, option: bytes | None) -> Reply:
    opts = [dns.edns.GenericOption(8, option)] if option is not None else []
    wire = udp_raw(addr, make(name, qtype, edns=0, options=opts).to_wire())
    assert wire is not None, f"no reply to {name} {qtype}"
    msg = dns.message.from_wire(wire)
    answer = tuple(
        sorted(
            (
                rrset.name.to_text().lower(),
                dns.rdatatype.to_text(rrset.rdtype),
                rd.to_text().lower(),
            )
            for rrset in msg.answer
            for rd in rrset
        )
    )
    auth = tuple(sorted(dns.rdatatype.to_text(r.rdtype) for r in msg.authority))
    return Reply(msg.rcode(), answer, auth, tuple(ecs_options(wire)))


# -- the table -------------------------------------------------------------------------------

SVC = f"svc.geo.{ORIGIN}"


def a(name: str, *addrs: str) -> tuple[tuple[str, str, str], ...]:
    return tuple(sorted((name, "A", x) for x in addrs))


@dataclass(frozen=True)
class Row:
    label: str
    name: str
    qtype: str
    option: bytes | None
    rcode: int = dns.rcode.NOERROR
    answer: tuple[tuple[str, str, str], ...] | None = None  # None: not checked (FORMERR rows)
    scope: int | None = None  # None: no ECS option expected in the reply
    # A deliberate difference from gdnsd: why, and what gdnsd answers instead.
    gdnsd: str = ""
    gdnsd_answer: tuple[tuple[str, str, str], ...] | None = None
    gdnsd_scope: int | None = None


FORMERR = dns.rcode.FORMERR

ROWS: list[Row] = [
    # 10.2.7.0/24 is in 10.2/16 (us-west); 10.3/16 is us-west too, 10.0/15 is not: scope 15.
    Row(
        "valid /24, rule /16 merged with its equal sibling",
        SVC,
        "A",
        ecs("10.2.7.0/24"),
        answer=a(SVC, ADDR["us-west"]),
        scope=15,
    ),
    # 10.1/16 us-east; its sibling 10.0/16 is default eu-west: scope 16.
    Row(
        "valid /24 in a /16 rule",
        SVC,
        "A",
        ecs("10.1.200.0/24"),
        answer=a(SVC, ADDR["us-east"]),
        scope=16,
    ),
    # 198.51.0.0/16 zero-padded is 198.51.0.0: default region over 198.51.0.0/18, whose
    # sibling /18 holds the 198.51.100/24 rule: the source /16 was not specific enough.
    Row(
        "SCOPE longer than SOURCE",
        SVC,
        "A",
        ecs("198.51.0.0/16"),
        answer=a(SVC, ADDR[DEFAULT]),
        scope=18,
    ),
    # /32 is used as /24 (privacy); the /24 rule decides: scope 24, SOURCE 32 echoed.
    Row(
        "source /32 used as /24",
        SVC,
        "A",
        ecs("198.51.100.7/32"),
        answer=a(SVC, ADDR["us-east"]),
        scope=24,
    ),
    # 203.0.113.0 lies in 200.0.0.0/5, which holds no rule; 192.0.0.0/4 holds 198.51.100/24.
    Row(
        "valid /24 in the default region",
        SVC,
        "A",
        ecs("203.0.113.0/24"),
        answer=a(SVC, ADDR[DEFAULT]),
        scope=5,
    ),
    # 2001:db8:2::/48 us-west; 2001:db8:3::/48 default: scope 48.
    Row(
        "valid IPv6 /56",
        SVC,
        "A",
        ecs("2001:db8:2:100::/56"),
        answer=a(SVC, ADDR["us-west"]),
        scope=48,
    ),
    # Default over 2001:db8:8000::/33; the other half of 2001:db8::/32 holds the /48 rules.
    Row(
        "valid IPv6 /56 in the default region",
        SVC,
        "A",
        ecs("2001:db8:ff00::/56"),
        answer=a(SVC, ADDR[DEFAULT]),
        scope=33,
    ),
    # SOURCE 0: the client opted out; the server uses the address it sees (127.0.0.1,
    # in 127/8 -> us-west) and answers SCOPE 0 (RFC 7871 7.1.2).
    Row("/0 (opt-out)", SVC, "A", raw(1, 0, 0, b""), answer=a(SVC, ADDR["us-west"]), scope=0),
    Row("IPv6 /0 (opt-out)", SVC, "A", raw(2, 0, 0, b""), answer=a(SVC, ADDR["us-west"]), scope=0),
    Row("no ECS: by source, no ECS in the reply", SVC, "A", None, answer=a(SVC, ADDR["us-west"])),
    Row("non-zero SCOPE in the query", SVC, "A", raw(1, 24, 16, bytes([10, 2, 7])), FORMERR),
    Row("bits set beyond SOURCE", SVC, "A", raw(1, 20, 0, bytes([10, 2, 15])), FORMERR),
    Row(
        "trailing bits in the last byte (/23)", SVC, "A", raw(1, 23, 0, bytes([10, 2, 7])), FORMERR
    ),
    Row("extra address byte", SVC, "A", raw(1, 24, 0, bytes([10, 2, 7, 0])), FORMERR),
    Row("address byte missing", SVC, "A", raw(1, 24, 0, bytes([10, 2])), FORMERR),
    Row("source /33 for IPv4", SVC, "A", raw(1, 33, 0, bytes([10, 2, 7, 1, 0])), FORMERR),
    Row("source /129 for IPv6", SVC, "A", raw(2, 129, 0, bytes(17)), FORMERR),
    Row("unknown family 3", SVC, "A", raw(3, 24, 0, bytes([10, 2, 7])), FORMERR),
    Row("short option (3 bytes)", SVC, "A", bytes([0, 1, 24]), FORMERR),
    Row("empty option", SVC, "A", b"", FORMERR),
    # Location-independent answers: SCOPE 0 whatever the subnet.
    Row(
        "static record",
        f"static.{ORIGIN}",
        "A",
        ecs("10.2.7.0/24"),
        answer=a(f"static.{ORIGIN}", "127.0.0.80"),
        scope=0,
    ),
    Row(
        "NXDOMAIN",
        f"nothere.{ORIGIN}",
        "A",
        ecs("10.2.7.0/24"),
        dns.rcode.NXDOMAIN,
        answer=(),
        scope=0,
    ),
    Row(
        "NODATA at a static name", f"static.{ORIGIN}", "TXT", ecs("10.2.7.0/24"), answer=(), scope=0
    ),
    Row("NODATA at the tailored name", SVC, "TXT", ecs("10.2.7.0/24"), answer=(), scope=0),
    Row(
        "SOA",
        ORIGIN,
        "SOA",
        ecs("10.2.7.0/24"),
        answer=((ORIGIN, "SOA", f"ns1.{ORIGIN} hostmaster.{ORIGIN} 1 3600 600 1209600 30"),),
        scope=0,
    ),
    Row("NS", ORIGIN, "NS", ecs("10.2.7.0/24"), answer=((ORIGIN, "NS", f"ns1.{ORIGIN}"),), scope=0),
    Row(
        "CNAME into the tailored name: the CNAME only",
        f"alias.{ORIGIN}",
        "A",
        ecs("10.2.7.0/24"),
        answer=((f"alias.{ORIGIN}", "CNAME", SVC),),
        scope=0,
    ),
    Row(
        "CNAME chain to a static name",
        f"salias.{ORIGIN}",
        "A",
        ecs("10.2.7.0/24"),
        answer=tuple(
            sorted(
                [
                    (f"salias.{ORIGIN}", "CNAME", f"static.{ORIGIN}"),
                    (f"static.{ORIGIN}", "A", "127.0.0.80"),
                ]
            )
        ),
        scope=0,
        gdnsd="gdnsd 3 never follows a CNAME inside its zone: the CNAME alone",
        gdnsd_answer=((f"salias.{ORIGIN}", "CNAME", f"static.{ORIGIN}"),),
        gdnsd_scope=0,
    ),
    # A service running in one cluster answers every client alike: SCOPE 0, so one
    # resolver cache entry serves everyone (gdnsd: a static record of the same address).
    Row(
        "federated service with one answer everywhere",
        f"solo.geo.{ORIGIN}",
        "A",
        ecs("10.2.7.0/24"),
        answer=a(f"solo.geo.{ORIGIN}", "127.1.0.9"),
        scope=0,
    ),
    # RFC 7871 section 10: a shared/private ADDRESS (100.64/10) no rule maps says nothing about
    # where the client is: fedns places it by the resolver's address (127.0.0.1 -> us-west)
    # with a SCOPE covering the whole block; gdnsd uses the address (default region).
    Row(
        "carrier-NAT address (RFC 7871 section 10)",
        SVC,
        "A",
        ecs("100.70.1.0/24"),
        answer=a(SVC, ADDR["us-west"]),
        scope=10,
        gdnsd="gdnsd has no RFC 7871 section 10 handling: it uses the address",
        # 96.0.0.0/4 holds no net, 96.0.0.0/3 holds 127/8: the default region, scope 4.
        gdnsd_answer=a(SVC, ADDR[DEFAULT]),
        gdnsd_scope=4,
    ),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("ecs")
    fed = start_fedns(
        write_config(tmp / "fedns", {ORIGIN: ZONE}, {"federation": FEDERATION}), tmp / "fedns"
    )
    gd: ServerProcess | None = None
    if have(GDNSD):
        gd = start_gdnsd(
            tmp / "gdnsd",
            ORIGIN,
            NETS,
            ADDR,
            default=DEFAULT,
            name="svc.geo",
            extra_zone=GDNSD_ZONE,
        )
    try:
        wait_synced(fed)
        yield fed, gd
    finally:
        fed.stop()
        if gd is not None:
            gd.stop()


def wait_synced(sp: ServerProcess, deadline_s: float = 10.0) -> None:
    """Until the federated name answers (static clusters sync at once; bounded anyway)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if ask(sp.addr, SVC, "A", None).answer:
            return
        time.sleep(0.05)
    raise AssertionError("the federated name never answered")


def check(row: Row, got: Reply, who: str) -> None:
    where = f"{who}: {row.label}"
    assert got.rcode == row.rcode, f"{where}: rcode {dns.rcode.to_text(got.rcode)}"
    if row.rcode == FORMERR:
        return
    if row.answer is not None:
        assert got.answer == row.answer, where
    if row.rcode == dns.rcode.NXDOMAIN or (row.answer == () and row.rcode == dns.rcode.NOERROR):
        assert got.authority_types == ("SOA",), f"{where}: negative answer without SOA"
    if row.option is None:
        assert got.ecs == (), f"{where}: ECS in the reply to a query without it"
        return
    assert len(got.ecs) == 1, f"{where}: {len(got.ecs)} ECS options in the reply"
    echo = got.ecs[0]
    # FAMILY, SOURCE and ADDRESS byte for byte as sent; SCOPE ours.
    assert echo[:3] == row.option[:3] and echo[4:] == row.option[4:], f"{where}: echo {echo.hex()}"
    assert echo[3] == row.scope, f"{where}: SCOPE {echo[3]}, expected {row.scope}"


@pytest.mark.parametrize("row", ROWS, ids=[r.label for r in ROWS])
def test_ecs_table(servers: tuple[ServerProcess, ServerProcess | None], row: Row) -> None:
    fed, gd = servers
    check(row, ask(fed.addr, row.name, row.qtype, row.option), "fedns")
    if gd is None:
        return
    theirs = ask(gd.addr, row.name, row.qtype, row.option)
    if row.gdnsd:
        row = replace(row, answer=row.gdnsd_answer, scope=row.gdnsd_scope)
    check(row, theirs, "gdnsd")


def test_scope_is_true_for_the_whole_scope_block(
    servers: tuple[ServerProcess, ServerProcess | None],
) -> None:
    """A resolver may reuse a reply for every client in ADDRESS/SCOPE: so every /24
    inside the announced block must get the same answer (sampled at the block's ends
    and middle), and the enclosing block one bit wider must not."""
    fed, _ = servers
    for cidr in ("10.2.7.0/24", "10.1.200.0/24", "198.51.0.0/16", "203.0.113.0/24"):
        got = ask(fed.addr, SVC, "A", ecs(cidr))
        scope = got.ecs[0][3]
        block = ipaddress.ip_network(f"{cidr.split('/')[0]}/{scope}", strict=False)
        first = int(block.network_address)
        last = int(block.broadcast_address) & ~0xFF
        for v in (first, (first + last) // 2 & ~0xFF, last):
            sub = f"{ipaddress.IPv4Address(v)}/24"
            assert ask(fed.addr, SVC, "A", ecs(sub)).answer == got.answer, (cidr, block, sub)
        if scope:
            wider = block.supernet()
            answers = {
                ask(
                    fed.addr,
                    SVC,
                    "A",
                    ecs(f"{ipaddress.IPv4Address(int(wider.network_address) + off)}/24"),
                ).answer
                for off in _boundaries(wider)
            }
            assert len(answers) > 1, f"{block} is not the widest block with one answer"


def _boundaries(block: ipaddress.IPv4Network) -> list[int]:
    """Offsets of every rule edge inside ``block`` (where the answer can change)."""
    offs = {0}
    lo, hi = int(block.network_address), int(block.broadcast_address)
    for c in NETS:
        n = ipaddress.ip_network(c)
        if n.version != 4:
            continue
        for p in (int(n.network_address), int(n.broadcast_address) + 1):
            if lo <= p <= hi:
                offs.add((p - lo) & ~0xFF)
    return sorted(o for o in offs if lo + o <= hi)
