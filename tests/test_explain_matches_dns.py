"""The explain API gives what DNS gives, for random questions against the shipped demo.

One real ``fedns serve`` on ``zones/demo.yaml`` (what a bare ``fedns serve``
loads) with an admin port, both on loopback. A fixed-seed generator draws
(name, type, subnet) triples from everything the demo serves -- the zone
file's names, every federated service, cluster, endpoint and SRV name, and
names below them and outside the zone -- with no ECS, or an ECS subnet from
the demo's locality ranges and from other documentation, private and special
ranges (IPv4 and IPv6, SOURCE PREFIX-LENGTH 0 included). Each triple is asked
over UDP from 127.0.0.1 and of ``GET /v1/explain`` with ``source=127.0.0.1``;
the two must agree on the RCODE, the AA bit, the answer records, the TTL
(explain's ``ttl``: the smallest answer TTL), the authority records and, when
ECS was sent, the SCOPE. Some triples repeat an earlier one, so DNS answers
them from its caches (``Table.replies``, ``Router.memo``) while explain
computes them again.

Nothing here is random at answer time: ``weighted`` picks by a hash of the
client subnet (the privacy-clamped ECS subnet, or the source's /24 without a
usable one), so one client always gets one cluster, and the demo has no probes or watches that could change
health between the two questions. So every triple is compared whole.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import random
import socket
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest
import yaml
from servers import DEMO_CONFIG, LOOPBACK, ServerProcess, free_port, start_fedns

SEED = 7871  # RFC 7871
TRIPLES = 640
MIN_COMPARED = 500

# Types to ask. Explain accepts ANY (``qtype_of`` knows it; the answer is one RRset
# as RFC 8482 recommends, from the same ``Node.answer`` as DNS), so it is drawn too.
TYPES = ("A", "AAAA", "SRV", "TXT", "MX", "CNAME", "NS", "SOA", "ANY", "CAA", "PTR")

Record = tuple[str, str, str]


# -- the server ----------------------------------------------------------------------


@dataclass
class Demo:
    dns: ServerProcess
    admin: tuple[str, int]


def _get(admin: tuple[str, int], path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(*admin, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """fedns on the demo config, DNS and admin on free loopback ports, synced."""
    last = ""
    for attempt in range(3):  # another process may take the admin port before fedns binds it
        admin = (LOOPBACK, free_port())
        sp = start_fedns(
            DEMO_CONFIG,
            tmp_path_factory.mktemp(f"explain-demo{attempt}"),
            extra_args=("--admin", f"{admin[0]}:{admin[1]}"),
        )
        end = time.monotonic() + 15
        while sp.alive() and time.monotonic() < end:
            try:
                status, _ = _get(admin, "/readyz", 0.5)
            except OSError:
                status = 0
            if status == 200 and _synced(sp):
                break
            time.sleep(0.05)
        else:
            last = sp.output()[-4000:]
            sp.stop()
            continue
        try:
            yield Demo(sp, admin)
        finally:
            sp.stop()
        return
    raise RuntimeError(f"fedns with --admin did not come up:\n{last}")


def _synced(sp: ServerProcess) -> bool:
    """Every static service is published (its name answers with records)."""
    for svc in DEMO["federation"]["services"]:
        q = dns.message.make_query(f"{svc['name']}.{svc['namespace']}.{FED}", "A")
        try:
            r = dns.query.udp(q, sp.host, port=sp.port, timeout=0.5)
        except (OSError, dns.exception.Timeout):
            return False
        if not r.answer:
            return False
    return True


# -- the questions ---------------------------------------------------------------------

DEMO: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text())
FED: str = DEMO["federation"]["zone"]


def _zone_names() -> list[str]:
    """Every owner name of the demo's zone file, and the empty non-terminals above them."""
    (entry,) = [z for z in DEMO["zones"] if z["origin"] == FED]
    path = Path(DEMO_CONFIG).parent / entry["file"]
    zone = dns.zone.from_file(str(path), origin=FED, relativize=False)
    origin = dns.name.from_text(FED)
    names: set[dns.name.Name] = set()
    for n in zone.nodes:
        while n != origin and n.is_subdomain(origin):
            names.add(n)
            n = n.parent()
    names.add(origin)
    return sorted(n.to_text() for n in names)


def _federated_names() -> tuple[list[str], list[str]]:
    """(names that exist, names below or beside them that do not) of the static services."""
    fed = DEMO["federation"]
    clusters = [c["name"] for c in fed["clusters"]]
    real: list[str] = []
    fake: list[str] = []
    for svc in fed["services"]:
        base = f"{svc['name']}.{svc['namespace']}.{FED}"
        real.append(base)
        fake += [f"{svc['name']}x.{svc['namespace']}.{FED}", f"nope.{base}"]
        for cluster in clusters:
            cbase = f"{cluster}.{base}"
            real.append(cbase)
            fake.append(f"x.{cbase}")
            for ep in svc["endpoints"].get(cluster, []):
                host = ep.get("hostname") or ep["addresses"][0].replace(".", "-").replace(":", "-")
                real.append(f"{host}.{cbase}")
                fake += [f"sub.{host}.{cbase}", f"{host}z.{cbase}"]
        fake += [f"nowhere.{base}", f"_0._tcp.{base}"]
        for p in svc.get("ports", []):
            proto = str(p.get("protocol", "TCP")).lower()
            real.append(f"_{p['name']}._{proto}.{base}")
            fake += [
                f"_{p['port']}._{proto}.{base}",
                f"_{p['name']}._udp.{base}",
                f"_{proto}.{base}",
                f"x._{p['name']}._{proto}.{base}",
            ]
        real.append(f"{svc['namespace']}.{FED}")  # an empty non-terminal
    return sorted(set(real)), sorted(set(fake) - set(real))


ZONE_NAMES = _zone_names()
FED_NAMES, FED_MISSING = _federated_names()
# The names whose A/AAAA (SRV) answer is chosen per client: services and their SRV names.
ROUTED = [n for n in FED_NAMES if n.count(".") == FED.count(".") + 2 or n.startswith("_")]
MISSING = [
    f"nxdomain.{FED}",
    f"a.b.c.{FED}",
    f"x.ent.chain.{FED}",
    f"host.team.{FED}",  # below a delegation: a referral
    f"a.b.apps.{FED}",  # below a wildcard's parent
    f"zz.apps.{FED}",
    f"other.ns.{FED}",
]
OUTSIDE = [
    "example.test.",
    "test.",
    "example.com.",
    "www.example.org.",
    f"{FED}evil.",
    "cart.shop.global.example.",
    "1.0.0.127.in-addr.arpa.",
]

# ECS subnets: an address drawn from one of these networks, sent with one of the
# SOURCE PREFIX-LENGTHs below (0 too: the client opts out, RFC 7871 7.1.2). The
# demo's locality ranges (zones/demo.yaml ``localities``), then others.
LOCALITY_NETS = [str(loc["cidr"]) for loc in DEMO["federation"]["localities"]]
OTHER_NETS = [
    "198.51.0.0/16",  # around a locality rule
    "203.0.0.0/8",
    "192.0.0.0/16",
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "233.252.0.0/24",  # MCAST-TEST-NET
    "10.0.0.0/8",  # RFC 1918, unmapped: placed by the source
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",  # CGN
    "169.254.0.0/16",
    "0.0.0.0/8",
    "2001:db8::/32",  # documentation, outside both v6 rules
    "2001:db8::/44",  # around the us-east v6 rule
    "2001:db8:e0::/44",
    "2001:db8:ee::/48",
    "3fff::/20",  # documentation (RFC 9637)
    "fd00::/8",  # unique local
    "fe80::/10",
    "::1/128",
]
V4_PREFIXES = (0, 8, 12, 16, 20, 23, 24, 25, 28, 32)
V6_PREFIXES = (0, 32, 40, 44, 48, 52, 56, 57, 64, 128)


def random_subnet(rng: random.Random) -> tuple[str, int] | None:
    """(an address in a chosen range, SOURCE PREFIX-LENGTH), or None for no ECS."""
    roll = rng.random()
    if roll < 0.2:
        return None
    nets = LOCALITY_NETS if roll < 0.6 else OTHER_NETS
    net = ipaddress.ip_network(rng.choice(nets))
    addr = net.network_address + rng.randrange(net.num_addresses)
    prefixes = V4_PREFIXES if net.version == 4 else V6_PREFIXES
    return str(addr), rng.choice(prefixes)


def random_name(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.30:
        name = rng.choice(ROUTED)
    elif roll < 0.45:
        name = rng.choice(FED_NAMES)
    elif roll < 0.65:
        name = rng.choice(ZONE_NAMES)
    elif roll < 0.80:
        name = rng.choice(FED_MISSING)
    elif roll < 0.90:
        name = rng.choice(MISSING)
    else:
        name = rng.choice(OUTSIDE)
    if rng.random() < 0.1:  # the case a resolver's 0x20 randomisation would send
        name = "".join(c.upper() if rng.random() < 0.5 else c for c in name)
    return name


def random_type(rng: random.Random, name: str) -> str:
    low = name.lower()
    if low.startswith("_") and rng.random() < 0.5:
        return "SRV"
    if low in ROUTED and rng.random() < 0.6:
        return rng.choice(("A", "AAAA"))  # the types answered per client, more often
    if low in FED_NAMES and rng.random() < 0.4:
        return rng.choice(("A", "AAAA"))
    return rng.choice(TYPES)


Triple = tuple[str, str, tuple[str, int] | None]


def triples(seed: int, n: int) -> list[Triple]:
    """``n`` questions; some repeat an earlier one, as the caches in front of the
    routers (``Table.replies``, ``Router.memo``) answer a repeat, not the routers."""
    rng = random.Random(seed)
    out: list[Triple] = []
    for _ in range(n):
        if out and rng.random() < 0.15:
            out.append(rng.choice(out))
            continue
        name = random_name(rng)
        out.append((name, random_type(rng, name), random_subnet(rng)))
    return out


# -- both sides ----------------------------------------------------------------------


def _canonical(rtype: str, rdata: str) -> str:
    """Rdata text as dnspython writes it (explain prints dnslib's text)."""
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), rdata)
    return str(rd.to_text()).lower()


def records_of(section: list[dns.rrset.RRset]) -> set[Record]:
    """One section of a DNS reply."""
    return {
        (
            rrset.name.to_text().lower(),
            dns.rdatatype.to_text(rrset.rdtype),
            str(rd.to_text()).lower(),
        )
        for rrset in section
        for rd in rrset
    }


def records_from_text(lines: list[str]) -> set[Record]:
    """Explain's answer lines (``name ttl class type rdata``)."""
    out = set()
    for line in lines:
        name, _ttl, _cls, rtype, rdata = line.split(None, 4)
        out.add((name.lower(), rtype, _canonical(rtype, rdata)))
    return out


def scope_of(msg: dns.message.Message) -> int | None:
    for o in msg.options:
        if isinstance(o, dns.edns.ECSOption):
            return int(o.scopelen)
    return None


class Explainer:
    """``GET /v1/explain`` over one kept-alive connection."""

    def __init__(self, admin: tuple[str, int]) -> None:
        self.conn = http.client.HTTPConnection(*admin, timeout=5)

    def __call__(self, **params: str) -> dict[str, Any]:
        self.conn.request("GET", "/v1/explain?" + urllib.parse.urlencode(params))
        r = self.conn.getresponse()
        body = r.read()
        assert r.status == 200, (params, r.status, body[:500])
        data: dict[str, Any] = json.loads(body)
        return data

    def close(self) -> None:
        self.conn.close()


def test_explain_matches_dns_for_random_questions(demo: Demo) -> None:
    explain = Explainer(demo.admin)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))  # every query from 127.0.0.1: explain's ``source``
    compared = 0
    seen_scopes: set[int] = set()
    seen_rcodes: set[int] = set()
    seen_sources: set[str] = set()
    seen_policies: set[str] = set()
    failures: list[str] = []
    try:
        for name, rtype, sub in triples(SEED, TRIPLES):
            q = dns.message.make_query(name, rtype, use_edns=0, payload=1232)
            q.flags &= ~dns.flags.RD
            params = {"name": name, "type": rtype, "source": LOOPBACK}
            if sub is not None:
                addr, plen = sub
                q.use_edns(0, 0, 1232, options=[dns.edns.ECSOption(addr, plen)])
                params["subnet"] = f"{addr}/{plen}"
            r = dns.query.udp(q, demo.dns.host, port=demo.dns.port, timeout=2, sock=sock)
            data = explain(**params)
            what = f"{name} {rtype} subnet={params.get('subnet')}"
            assert not r.flags & dns.flags.TC, what  # the demo's answers all fit: whole answers
            seen_sources.add(str(data.get("source")))
            seen_rcodes.add(r.rcode())
            if "policy" in data:
                seen_policies.add(data["policy"]["kind"])
            got: dict[str, object] = {
                "rcode": data.get("rcode"),
                "aa": data.get("aa"),
                "answer": records_from_text(data.get("answer", [])),
                "ttl": data.get("ttl"),
                "authority": records_from_text(data.get("authority", [])),
            }
            want: dict[str, object] = {
                "rcode": r.rcode(),
                "aa": bool(r.flags & dns.flags.AA),
                "answer": records_of(r.answer),
                "ttl": min((rr.ttl for rr in r.answer), default=None),
                "authority": records_of(r.authority),
            }
            if sub is not None:
                # fedns's REFUSED (``wire.error_reply``) has no ECS option: then
                # explain's scope must be None too.
                scope = scope_of(r)
                got["scope"], want["scope"] = data.get("scope"), scope
                if scope is not None:
                    seen_scopes.add(scope)
            if got != want:
                diff = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
                failures.append(f"{what}: explain vs DNS {diff}; steps {data.get('steps')}")
            compared += 1
    finally:
        sock.close()
        explain.close()
    assert not failures, f"{len(failures)} of {compared} disagree:\n" + "\n".join(failures[:40])
    assert compared >= MIN_COMPARED
    # The draw reached what it is meant to: zone and federated answers, every
    # policy of the demo, positive and negative answers, refusals, several scopes.
    assert {"zone", "federation", "none"} <= seen_sources, seen_sources
    assert {"locality", "failover", "weighted"} <= seen_policies, seen_policies
    assert {dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.REFUSED} <= seen_rcodes
    assert len(seen_scopes) >= 4, seen_scopes
