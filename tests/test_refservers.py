"""The reference servers of ``refservers.py`` start and answer, and gdnsd agrees with us.

Smoke tests: gdnsd (geoip nets), PowerDNS (Lua record, shared and fresh
mode) and dnsdist (adding ECS in front of gdnsd) each start on loopback and
answer a locality-dependent name as their config says.

Agreement with gdnsd, the bar for ECS (issue 4): every ECS option in the
conformance table of ``test_ecs_unit`` gets FORMERR from gdnsd exactly when
``ecs.parse_ecs`` rejects it; and for one nets map, gdnsd's answer and SCOPE
equal ``LocalityMap``'s region and ``prefix_len`` for hundreds of subnets
(gdnsd merges equal neighbours into the widest supernet, as we do).
"""

from __future__ import annotations

import ipaddress
import random
import subprocess
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import pytest
from dnsclient import make, udp, udp_raw
from refservers import DNSDIST, GDNSD, PDNS, have, start_dnsdist, start_gdnsd, start_pdns
from test_ecs_unit import CASES

from resolver.dns.ecs import parse_ecs
from resolver.dns.wire import FormErr
from resolver.federation.locality import LocalityMap

pytestmark = pytest.mark.reference

ZONE = "geo.test."
ANSWERS = {"us-east": "192.0.2.1", "us-west": "192.0.2.2", "eu-west": "192.0.2.3"}
NETS = {
    "10.1.0.0/16": "us-east",
    "10.2.0.0/16": "us-west",
    "10.3.0.0/16": "eu-west",
    "127.1.0.0/16": "us-east",
    "127.2.0.0/16": "us-west",
    "127.3.0.0/16": "eu-west",
}

needs_gdnsd = pytest.mark.skipif(not have(GDNSD), reason="gdnsd not installed (apt: gdnsd)")
needs_pdns = pytest.mark.skipif(
    not have(PDNS), reason="pdns_server not installed (apt: pdns-server)"
)
needs_dnsdist = pytest.mark.skipif(not have(DNSDIST), reason="dnsdist not installed (apt: dnsdist)")


def ecs_query(name: str, cidr: str) -> dns.message.QueryMessage:
    net = ipaddress.ip_network(cidr)
    opt = dns.edns.ECSOption(str(net.network_address), net.prefixlen)
    return make(name, "A", edns=0, options=[opt])


def answer_and_scope(r: dns.message.Message) -> tuple[list[str], int | None]:
    addrs = sorted(rd.to_text() for rrset in r.answer for rd in rrset)
    scope = None
    for o in r.options:
        if isinstance(o, dns.edns.ECSOption):
            scope = o.scopelen
    return addrs, scope


@needs_gdnsd
def test_gdnsd_answers_by_ecs_and_source(tmp_path: Path) -> None:
    sp = start_gdnsd(tmp_path / "gdnsd", ZONE, NETS, ANSWERS, default="eu-west")
    try:
        for cidr, region in (("10.2.7.0/24", "us-west"), ("10.1.0.0/24", "us-east")):
            addrs, scope = answer_and_scope(udp(sp.addr, ecs_query("web." + ZONE, cidr)))
            assert addrs == [ANSWERS[region]]
            assert scope == 16  # the /16 net, nothing inside it
        # No ECS: the source (127.0.0.1, in no net) decides: the default.
        addrs, scope = answer_and_scope(udp(sp.addr, make("web." + ZONE, "A", edns=0)))
        assert addrs == [ANSWERS["eu-west"]] and scope is None
    finally:
        sp.stop()


@needs_pdns
@pytest.mark.parametrize("mode", ["shared", "fresh"])
def test_pdns_lua_record_answers_by_ecs(tmp_path: Path, mode: str) -> None:
    sp = start_pdns(tmp_path / "pdns", ZONE, NETS, ANSWERS, default="eu-west", lua_mode=mode)
    try:
        for cidr, region in (
            ("10.2.7.0/24", "us-west"),
            ("10.3.0.0/24", "eu-west"),
            ("10.9.0.0/24", "eu-west"),
        ):
            addrs, scope = answer_and_scope(udp(sp.addr, ecs_query("web." + ZONE, cidr)))
            assert addrs == [ANSWERS[region]]
            assert scope == 24  # PowerDNS: scope = source, whatever the answer depends on
    finally:
        sp.stop()


@needs_gdnsd
@needs_dnsdist
def test_dnsdist_adds_ecs_from_each_client_address(tmp_path: Path) -> None:
    auth = start_gdnsd(tmp_path / "gdnsd", ZONE, NETS, ANSWERS, default="eu-west")
    dd = None
    try:
        dd = start_dnsdist(tmp_path / "dnsdist", auth.addr, ZONE)
        for src, region in (
            ("127.1.0.1", "us-east"),
            ("127.2.0.9", "us-west"),
            ("127.3.0.1", "eu-west"),
        ):
            out = subprocess.run(
                [
                    "dig",
                    "+short",
                    "+tries=1",
                    "+time=2",
                    "-b",
                    src,
                    "-p",
                    str(dd.port),
                    "@127.0.0.1",
                    "web." + ZONE,
                ],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.split()
            assert out == [ANSWERS[region]], (src, out)
        # Names outside the zone are refused, not forwarded anywhere.
        r = udp(dd.addr, make("example.com.", "A"))
        assert r.rcode() == dns.rcode.REFUSED
    finally:
        if dd is not None:
            dd.stop()
        auth.stop()


def _rcode(reply: bytes | None) -> int | None:
    return None if reply is None else reply[3] & 0x0F


@needs_gdnsd
def test_ecs_validation_matches_gdnsd(tmp_path: Path) -> None:
    sp = start_gdnsd(tmp_path / "gdnsd", ZONE, NETS, ANSWERS, default="eu-west")
    try:
        for label, data, ok in CASES:
            q = make(
                "web." + ZONE,
                "A",
                edns=0,
                options=[dns.edns.GenericOption(dns.edns.OptionType.ECS, data)],
            )
            theirs = _rcode(udp_raw(sp.addr, q.to_wire()))
            try:
                parse_ecs(data)
                ours = dns.rcode.NOERROR
            except FormErr:
                ours = dns.rcode.FORMERR
            assert theirs == ours, f"{label}: gdnsd says {theirs}, we say {ours}"
            assert (ours == dns.rcode.NOERROR) == ok, label
    finally:
        sp.stop()


# Every special-purpose IPv4 block mapped (a rule inside the block honours
# ECS addresses there), so our RFC 7871 section 10 handling and gdnsd, which has
# none, must agree everywhere.
SPECIAL_MAPPED = {
    "0.0.0.0/8": "us-west",
    "10.0.0.0/8": "us-east",
    "100.64.0.0/10": "eu-west",
    "127.0.0.0/8": "us-west",
    "169.254.0.0/16": "us-east",
    "172.16.0.0/12": "eu-west",
    "192.168.0.0/16": "us-west",
}


@needs_gdnsd
def test_scope_matches_gdnsd_merged_nets(tmp_path: Path) -> None:
    rnd = random.Random(7)
    nets = dict(SPECIAL_MAPPED)
    nets.update(NETS)
    # Adjacent nets with one region merge; a /24 inside a /16 splits it.
    nets.update(
        {
            "198.51.100.0/24": "us-east",
            "198.51.101.0/24": "us-east",
            "203.0.113.0/24": "eu-west",
            "203.0.0.0/16": "us-west",
            "192.0.2.0/24": "us-west",
            "64.0.0.0/3": "eu-west",
            "96.0.0.0/4": "eu-west",
        }
    )
    lmap = LocalityMap.from_rules([(c, r, None) for c, r in nets.items()])
    sp = start_gdnsd(tmp_path / "gdnsd", ZONE, nets, ANSWERS, default="us-east")
    try:
        probes = [c.split("/")[0] for c in nets] + ["8.8.8.0", "203.0.114.0", "198.51.102.0"]
        probes += [str(ipaddress.IPv4Address(rnd.getrandbits(24) << 8)) for _ in range(150)]
        for addr in probes:
            cidr = f"{addr}/24"
            addrs, scope = answer_and_scope(udp(sp.addr, ecs_query("web." + ZONE, cidr)))
            m = lmap.lookup(1, int(ipaddress.IPv4Address(addr)), 24)
            want = ANSWERS[m.region] if m.region else ANSWERS["us-east"]
            assert addrs == [want], cidr
            assert scope == m.prefix_len, f"{cidr}: gdnsd scope {scope}, ours {m.prefix_len}"
    finally:
        sp.stop()
