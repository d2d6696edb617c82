"""Locality map, client placement, regions and their config (``resolver/locality.py``).

Pure and fast. The longest-prefix match and the widened ECS scope are checked
by hypothesis against a brute-force reference written with ``ipaddress``: the
deciding rule is the longest network containing the address, and the scope
block must hold one locality everywhere (checked at every rule boundary
inside it) while its parent block must not. ``test_refservers`` checks the
same scopes against gdnsd. The MaxMind test builds its database with
``mmdb-writer``, an independent writer, and reads it through ``maxminddb``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.config import ConfigError
from resolver.dns.ecs import PRIVACY_PREFIX, SPECIAL_BLOCKS, parse_ecs
from resolver.federation.locality import (
    Locality,
    LocalityMap,
    Region,
    RegionGraph,
    great_circle_km,
    parse_localities,
    parse_regions,
)

REGIONS = ["us-east", "us-west", "eu-west"]
ZONES = [None, "a", "b"]


def ecs(cidr: str) -> bytes:
    """ECS option data for a CIDR, built with ipaddress (RFC 7871 6)."""
    n = ipaddress.ip_network(cidr)
    fam = 1 if n.version == 4 else 2
    return bytes((0, fam, n.prefixlen, 0)) + n.network_address.packed[: (n.prefixlen + 7) // 8]


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


# -- brute-force reference -----------------------------------------------------------


class Reference:
    """Longest prefix by scanning every rule; what a block's 'key' is, per RFC 7871 10."""

    def __init__(self, rules: list[tuple[str, str, str | None]], family: int) -> None:
        self.family = family
        self.width = 32 if family == 1 else 128
        self.rules = [
            (ipaddress.ip_network(c), region, zone, i)
            for i, (c, region, zone) in enumerate(rules)
            if ipaddress.ip_network(c).version == (4 if family == 1 else 6)
        ]
        clamp = PRIVACY_PREFIX[family]
        self.specials = [
            ipaddress.ip_network((net, plen))
            for fam, net, plen, _t in SPECIAL_BLOCKS
            if fam == family and plen <= clamp
        ]

    def _addr(self, v: int) -> Any:
        return ipaddress.IPv4Address(v) if self.family == 1 else ipaddress.IPv6Address(v)

    def decider(self, v: int) -> tuple[Any, str, str | None, int] | None:
        a = self._addr(v)
        best = None
        for r in self.rules:
            if a in r[0] and (best is None or r[0].prefixlen > best[0].prefixlen):
                best = r
        return best

    def key(self, v: int) -> Any:
        d = self.decider(v)
        a = self._addr(v)
        for s in self.specials:
            if a in s and (d is None or d[0].prefixlen < s.prefixlen):
                return ("fallback", str(s))  # an ECS address here is not used
        return ("loc", d[1], d[2]) if d else ("loc", None, None)

    def points(self, block: Any) -> list[int]:
        """Every address in ``block`` where the key can change, and its start."""
        lo, hi = int(block.network_address), int(block.broadcast_address)
        pts = {lo}
        for n in [r[0] for r in self.rules] + self.specials:
            for p in (int(n.network_address), int(n.broadcast_address) + 1):
                if lo <= p <= hi:
                    pts.add(p)
        return sorted(pts)

    def constant(self, block: Any) -> bool:
        keys = {self.key(p) for p in self.points(block)}
        return len(keys) == 1


def check_lookup(lmap: LocalityMap, ref: Reference, v: int, bits: int) -> None:
    m = lmap.lookup(ref.family, v, bits)
    b = min(bits, PRIVACY_PREFIX[ref.family])
    masked = (v >> (ref.width - b)) << (ref.width - b) if b else 0
    d = ref.decider(masked)
    assert m.rule_id == (d[3] if d else -1)
    assert (m.region, m.zone) == ((d[1], d[2]) if d else (None, None))
    block = ipaddress.ip_network((masked, ref.width)).supernet(new_prefix=m.prefix_len)
    assert (m.network, m.family) == (int(block.network_address), ref.family)
    assert ref.constant(block), f"locality not constant over {block}"
    if m.prefix_len:
        parent = block.supernet()
        assert not ref.constant(parent), f"{block} is not the widest: {parent} is constant too"


def rule_sets(family: int) -> st.SearchStrategy[list[tuple[str, str, str | None]]]:
    width, clamp = (32, 24) if family == 1 else (128, 56)
    anchors = (
        [0, ip("10.0.0.0"), ip("198.51.0.0")]
        if family == 1
        else [0, ip("2001:db8::"), ip("fd00::")]
    )

    def one(t: tuple[int, int, int, str, str | None]) -> tuple[int, int, str, str | None]:
        anchor, noise, plen, region, zone = t
        value = noise << (width - clamp)
        if anchor:  # near the anchor: keep its first 8 (IPv4) or 32 (IPv6) bits
            low = width - (8 if family == 1 else 32)
            value = ((anchor >> low) << low) | (value & ((1 << low) - 1))
        net = ipaddress.ip_network((value, width)).supernet(new_prefix=plen)
        return int(net.network_address), plen, region, zone

    rule = st.tuples(
        st.sampled_from(anchors),
        st.integers(0, (1 << clamp) - 1),
        st.integers(0, clamp),
        st.sampled_from(REGIONS),
        st.sampled_from(ZONES),
    ).map(one)

    def to_text(rs: list[tuple[int, int, str, str | None]]) -> list[tuple[str, str, str | None]]:
        seen: dict[tuple[int, int], tuple[str, str, str | None]] = {}
        for net, plen, region, zone in rs:
            seen.setdefault((net, plen), (str(ipaddress.ip_network((net, plen))), region, zone))
        return list(seen.values())

    return st.lists(rule, max_size=12).map(to_text)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_longest_prefix_and_widest_scope_ipv4(data: st.DataObject) -> None:
    rules = data.draw(rule_sets(1))
    lmap = LocalityMap.from_rules(rules)
    ref = Reference(rules, 1)
    edges = [int(ipaddress.ip_network(c).network_address) for c, _r, _z in rules]
    edges += [int(ipaddress.ip_network(c).broadcast_address) + 1 for c, _r, _z in rules]
    for _ in range(12):
        v = data.draw(
            st.one_of(
                st.integers(0, 2**32 - 1),
                st.integers(ip("10.0.0.0"), ip("10.255.255.255")),
                st.sampled_from(edges or [0]).map(lambda e: e % 2**32),
            )
        )
        bits = data.draw(st.sampled_from([0, 8, 16, 20, 24, 32]))
        check_lookup(lmap, ref, v, bits)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_longest_prefix_and_widest_scope_ipv6(data: st.DataObject) -> None:
    rules = data.draw(rule_sets(2))
    lmap = LocalityMap.from_rules(rules)
    ref = Reference(rules, 2)
    edges = [int(ipaddress.ip_network(c).network_address) for c, _r, _z in rules]
    for _ in range(8):
        v = data.draw(
            st.one_of(
                st.integers(0, 2**128 - 1),
                st.integers(ip("2001:db8::"), ip("2001:db8:ffff:ffff::")),
                st.integers(ip("fd00::"), ip("fdff::")),
                st.sampled_from(edges or [0]),
            )
        )
        bits = data.draw(st.sampled_from([0, 32, 48, 56, 64, 128]))
        check_lookup(lmap, ref, v, bits)


# -- placement: ECS, source, opt-out, private space --------------------------------------

RULES = [
    ("10.1.0.0/16", "us-east", "us-east-1a"),
    ("10.2.0.0/16", "us-west", "us-west-1a"),
    ("198.51.100.0/24", "us-west", None),
    ("0.0.0.0/0", "eu-west", None),
    ("2001:db8:1::/48", "us-east", None),
]


@pytest.fixture(scope="module")
def lmap() -> LocalityMap:
    return LocalityMap.from_rules(RULES)


@pytest.mark.parametrize(
    "option,source,basis,region,zone,scope,subnet_scope",
    [
        # A rule inside 10/8 maps this private space: the ECS address is used.
        ("10.1.7.0/24", "203.0.113.9", "ecs", "us-east", "us-east-1a", 16, 24),
        # Private space no rule inside 10/8 maps (only the /0 covers it): placed by
        # the source (198.51.100.7 is us-west); the scope covers the widest block
        # around 10.9/16 inside 10/8 that avoids the mapped /16s: 10.8.0.0/13.
        ("10.9.0.0/24", "198.51.100.7", "ecs-private", "us-west", None, 13, 13),
        (
            "172.20.0.0/16",
            "198.51.100.7",
            "ecs-private",
            "us-west",
            None,
            12,
            12,
        ),  # all of 172.16/12
        ("fd12:3456::/48", "198.51.100.7", "ecs-private", "us-west", None, 7, 7),  # all of fc00::/7
        # A public subnet under the default: widest block that keeps off 10/8: 8.0.0.0/7.
        ("8.8.8.0/24", "198.51.100.7", "ecs", "eu-west", None, 7, 24),
        # SOURCE shorter than a rule inside it: the zero-padded address lies in
        # 198.51.0.0/18, the widest block avoiding 198.51.100.0/24; scope > source.
        ("198.51.0.0/16", "203.0.113.9", "ecs", "eu-west", None, 18, 16),
        # Never more than /24 of an IPv4 address, /56 of IPv6.
        ("198.51.100.77/32", "203.0.113.9", "ecs", "us-west", None, 24, 24),
        ("2001:db8:1:ff01::/64", "203.0.113.9", "ecs", "us-east", None, 48, 56),
        # SOURCE PREFIX-LENGTH 0: opted out; the source decides, scope 0.
        ("0.0.0.0/0", "198.51.100.7", "ecs-opt-out", "us-west", None, 0, 0),
        ("::/0", "10.2.9.9", "ecs-opt-out", "us-west", "us-west-1a", 0, 0),
    ],
)
def test_place_with_ecs(
    lmap: LocalityMap,
    option: str,
    source: str,
    basis: str,
    region: str,
    zone: str | None,
    scope: int,
    subnet_scope: int,
) -> None:
    p = lmap.place(parse_ecs(ecs(option)), (source, 53000))
    assert (p.basis, p.region, p.zone, p.scope, p.subnet_scope) == (
        basis,
        region,
        zone,
        scope,
        subnet_scope,
    )
    assert p.explain()["from"] == basis


@pytest.mark.parametrize(
    "source,region,zone,subnet",
    [
        ("10.2.3.4", "us-west", "us-west-1a", "10.2.3.0/24"),
        ("::ffff:10.2.3.4", "us-west", "us-west-1a", "10.2.3.0/24"),  # dual-stack socket view
        ("2001:db8:1:2:3::1", "us-east", None, "2001:db8:1::/56"),
        ("127.0.0.1", "eu-west", None, "127.0.0.0/24"),  # a source is used as is, private or not
    ],
)
def test_place_by_source(
    lmap: LocalityMap, source: str, region: str, zone: str | None, subnet: str
) -> None:
    p = lmap.place(None, (source, 1))
    assert (p.basis, p.region, p.zone) == ("source", region, zone)
    n = ipaddress.ip_network(subnet)
    assert p.subnet_key[2:] == n.network_address.packed and p.subnet_key[1] == n.prefixlen


def test_place_without_any_address(lmap: LocalityMap) -> None:
    p = lmap.place(None, None)
    assert (p.basis, p.region, p.zone, p.scope) == ("unknown", None, None, 0)
    assert lmap.place(parse_ecs(ecs("0.0.0.0/0")), None).region is None


def test_placements_are_memoized_and_stable(lmap: LocalityMap) -> None:
    cs = parse_ecs(ecs("10.1.7.0/24"))
    assert lmap.place(cs, ("1.2.3.4", 1)) is lmap.place(
        parse_ecs(ecs("10.1.7.0/24")), ("5.6.7.8", 2)
    )
    priv = parse_ecs(ecs("10.9.0.0/24"))
    a = lmap.place(priv, ("10.1.0.1", 1))
    b = lmap.place(priv, ("10.2.0.1", 1))
    assert (a.zone, b.zone) == ("us-east-1a", "us-west-1a")  # the source matters here


# -- answer-level scope ------------------------------------------------------------------


def test_scope_widens_to_where_the_answer_is_constant() -> None:
    m = LocalityMap.from_rules(
        [
            ("198.51.0.0/17", "us-east", "a"),
            ("198.51.128.0/17", "us-east", "b"),
            ("0.0.0.0/0", "eu-west", None),
        ]
    )
    p = m.place(parse_ecs(ecs("198.51.7.0/24")), None)
    assert (p.zone, p.scope) == ("a", 17)  # zones differ: the /17
    by_region = m.scope_table(lambda loc: loc.region)
    assert not by_region.constant
    assert by_region.scope(p) == 16  # both /17s are us-east: one answer for the /16
    assert m.widest_equivalent(p.match, lambda loc: loc.region) == 16
    same = m.scope_table(lambda loc: "one answer")
    assert same.constant and same.scope(p) == 0
    # A static split: us-east clients get X, the rest Y: 198.51/16 is us-east.
    assert m.scope_table(lambda loc: loc.region == "us-east").scope(p) == 16
    # Private fallback and opt-out keep their own scopes.
    priv = m.place(parse_ecs(ecs("10.9.0.0/24")), ("198.51.1.1", 1))
    assert by_region.scope(priv) == priv.scope == 8
    assert by_region.scope(m.place(parse_ecs(ecs("0.0.0.0/0")), ("198.51.1.1", 1))) == 0


def test_scope_table_matches_brute_force() -> None:
    rules = [
        ("10.1.0.0/16", "us-east", "a"),
        ("10.1.4.0/22", "us-east", "b"),
        ("10.0.0.0/8", "eu-west", None),
    ]
    m = LocalityMap.from_rules(rules)
    t = m.scope_table(lambda loc: loc.region)
    ref = Reference(rules, 1)

    def regions_in(block: Any) -> set[Any]:
        return {(k[1] if k[0] == "loc" else k) for k in map(ref.key, ref.points(block))}

    want = {"10.1.5.0": 16, "10.1.200.0": 16, "10.7.0.0": 14, "10.200.0.0": 9}
    for addr, scope in want.items():
        sc = t.scope_of(m.lookup(1, ip(addr), 24))
        assert sc == scope, addr
        block = ipaddress.ip_network((ip(addr), 32)).supernet(new_prefix=sc)
        assert len(regions_in(block)) == 1 and len(regions_in(block.supernet())) > 1


# -- MaxMind DB --------------------------------------------------------------------------


def write_mmdb(path: Path) -> None:
    mw = pytest.importorskip("mmdb_writer", reason="mmdb-writer (pip) builds the test MaxMind DB")
    netaddr = pytest.importorskip("netaddr")
    w = mw.MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)

    def put(cidr: str, country: str, continent: str) -> None:
        w.insert_network(
            netaddr.IPSet([cidr]),
            {"country": {"iso_code": country}, "continent": {"code": continent}},
        )

    put("198.51.100.0/24", "DE", "EU")
    put("203.0.112.0/23", "US", "NA")
    put("192.0.2.0/25", "AF", "AS")  # Afghanistan: "AF" is also Africa's continent code
    put("2001:db8:1::/48", "JP", "AS")
    w.to_db_file(str(path))


def test_mmdb_fills_in_where_no_rule_matches(tmp_path: Path) -> None:
    db = tmp_path / "geo.mmdb"
    write_mmdb(db)
    raw = {
        "localities": [{"cidr": "203.0.113.0/24", "region": "us-west"}],
        "mmdb": {
            "path": "geo.mmdb",
            "regions": {
                "DE": "eu-west",
                "continent:NA": "us-east",
                "country:AF": "eu-west",
                "AS": "ap-south",
            },
        },
    }
    m = parse_localities(raw, tmp_path / "fedns.yaml")
    cases = {
        "198.51.100.0": ("eu-west", "mmdb", 24),  # country DE
        "203.0.113.0": ("us-west", "rule", 24),  # a rule beats the DB
        # US is not mapped, its continent NA is; the DB's /23 is cut to the /24 beside the rule.
        "203.0.112.0": ("us-east", "mmdb", 24),
        "192.0.2.0": ("eu-west", "mmdb", 24),  # country AF before continent AS; DB /25, cut to /24
        "8.8.8.0": (None, "none", None),
    }
    for addr, (region, via, scope) in cases.items():
        match = m.lookup(1, ip(addr), 24)
        assert (match.region, match.via) == (region, via), addr
        if scope is not None:
            assert match.prefix_len == scope, addr
    v6 = m.lookup(2, ip("2001:db8:1:ff00::"), 56)
    assert (v6.region, v6.via, v6.prefix_len) == ("ap-south", "mmdb", 48)
    assert "MaxMind" in v6.note
    t = m.scope_table(lambda loc: loc.region)
    assert t.scope_of(m.lookup(1, ip("198.51.100.0"), 24)) == 24  # DB answers are never widened


# -- regions --------------------------------------------------------------------------------


def test_great_circle_distance() -> None:
    # New York - London is about 5570 km along a great circle.
    d = great_circle_km(Region("nyc", 40.7128, -74.0060), Region("lon", 51.5074, -0.1278))
    assert d is not None and 5540 < d < 5600
    assert great_circle_km(Region("a", 1, 2), Region("b")) is None


def test_region_order_by_distance_and_preference() -> None:
    east = Region("us-east", 38.9, -77.0)  # Washington
    west = Region("us-west", 37.4, -122.1)  # Bay Area: ~3900 km from us-east
    eu = Region("eu-west", 53.3, -6.3)  # Dublin: ~5450 km
    ap = Region("ap-south", 19.1, 72.9)  # Mumbai: ~13000 km
    nowhere = Region("lab")  # no coordinates: after every placed region
    g = RegionGraph([ap, eu, east, nowhere, west])
    assert g.order("us-east") == ("us-east", "us-west", "eu-west", "ap-south", "lab")
    g2 = RegionGraph([ap, eu, Region("us-east", 38.9, -77.0, prefer=("ap-south",)), nowhere, west])
    assert g2.order("us-east") == ("us-east", "ap-south", "us-west", "eu-west", "lab")
    assert g.order(None) == ("ap-south", "eu-west", "us-east", "lab", "us-west")  # config order
    assert g.order("mars") == g.order(None)


def test_parse_regions() -> None:
    g = parse_regions(
        {
            "regions": [
                {"name": "us-east", "lat": 38.9, "lon": -77.0, "prefer": ["eu-west"]},
                {"name": "us-west", "lat": 37.4, "lon": -122.1},
                {"name": "eu-west", "lat": 53.3, "lon": -6.3},
            ]
        }
    )
    assert g.order("us-east") == ("us-east", "eu-west", "us-west")
    assert g.order("us-west") == ("us-west", "us-east", "eu-west")
    assert parse_regions({}).order("x") == ()


# -- config errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fed,where,hint",
    [
        ({"localities": {"cidr": "10.0.0.0/8"}}, "federation.localities", "expected a list"),
        (
            {"localities": [{"cidr": "10.1.0.0/33", "region": "r"}]},
            "federation.localities[0].cidr",
            "is not a network",
        ),
        (
            {
                "localities": [
                    {"cidr": "10.1.0.0/16", "region": "r"},
                    {"cidr": "10.1.2.3/16", "region": "r"},
                ]
            },
            "federation.localities[1].cidr",
            "host bits set; the network is 10.1.0.0/16",
        ),
        (
            {"localities": [{"cidr": "10.1.2.0/28", "region": "r"}]},
            "federation.localities[0].cidr",
            "longer than /24",
        ),
        (
            {"localities": [{"cidr": "2001:db8::/64", "region": "r"}]},
            "federation.localities[0].cidr",
            "use 2001:db8::/56 or shorter",
        ),
        (
            {"localities": [{"cidr": "10.1.2.3", "region": "r"}]},
            "federation.localities[0].cidr",
            "no prefix length",
        ),
        (
            {
                "localities": [
                    {"cidr": "10.1.0.0/16", "region": "r"},
                    {"cidr": "10.1.0.0/16", "region": "s"},
                ]
            },
            "federation.localities[1].cidr",
            "already mapped by federation.localities[0]",
        ),
        ({"localities": [{"cidr": "10.1.0.0/16"}]}, "federation.localities[0].region", "missing"),
        (
            {"localities": [{"cidr": "10.1.0.0/16", "region": "r", "zonee": "z"}]},
            "federation.localities[0].zonee",
            "unknown key",
        ),
        (
            {
                "regions": [{"name": "us-east"}],
                "localities": [{"cidr": "10.1.0.0/16", "region": "us-est"}],
            },
            "federation.localities[0].region",
            "not in federation.regions (us-east)",
        ),
        (
            {"regions": [{"name": "a", "prefer": ["b"]}]},
            "federation.regions[0].prefer[0]",
            "unknown region 'b'",
        ),
        (
            {"regions": [{"name": "a", "prefer": ["a"]}]},
            "federation.regions[0].prefer[0]",
            "prefer itself",
        ),
        (
            {"regions": [{"name": "a", "lat": 10}]},
            "federation.regions[0].lon",
            "give both lat and lon",
        ),
        (
            {"regions": [{"name": "a", "lat": 91, "lon": 0}]},
            "federation.regions[0].lat",
            "out of range",
        ),
        (
            {"regions": [{"name": "a"}, {"name": "a"}]},
            "federation.regions[1].name",
            "already defined",
        ),
        ({"mmdb": {"regions": {"US": "r"}}}, "federation.mmdb.path", "missing"),
        (
            {"mmdb": {"path": "x.mmdb", "regions": {"USA": "r"}}},
            "federation.mmdb.regions.USA",
            "two-letter",
        ),
        (
            {"mmdb": {"path": "nope.mmdb", "regions": {"US": "r"}}},
            "federation.mmdb.path",
            "cannot open",
        ),
    ],
)
def test_config_errors_name_the_key_and_the_fix(
    tmp_path: Path, fed: dict[str, Any], where: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as e:
        parse_localities(fed, tmp_path / "fedns.yaml")
    msg = str(e.value)
    assert f"fedns.yaml: {where}:" in msg
    assert hint in msg


def test_parse_localities_builds_the_map(tmp_path: Path) -> None:
    m = parse_localities(
        {
            "regions": [{"name": "us-east"}, {"name": "eu-west"}],
            "localities": [
                {"cidr": "10.1.0.0/16", "region": "us-east", "zone": "us-east-1a"},
                {"cidr": "2001:db8:1::/48", "region": "eu-west"},
            ],
        },
        tmp_path / "fedns.yaml",
    )
    assert m.lookup(1, ip("10.1.2.0"), 24).zone == "us-east-1a"
    assert m.lookup(2, ip("2001:db8:1::"), 56).region == "eu-west"
    assert Locality("us-east", "us-east-1a") in m.localities
    d = m.describe(m.place(None, ("10.1.2.3", 1)).subnet_key)
    assert d["rule"] == {
        "index": 0,
        "cidr": "10.1.0.0/16",
        "region": "us-east",
        "zone": "us-east-1a",
    }


def test_private_space_mapped_as_a_whole_is_honoured() -> None:
    m = LocalityMap.from_rules([("10.0.0.0/8", "us-east", None), ("0.0.0.0/0", "eu-west", None)])
    p = m.place(parse_ecs(ecs("10.9.0.0/24")), ("198.51.100.7", 1))
    assert (p.basis, p.region, p.scope) == ("ecs", "us-east", 8)
    # 172.16/12 is not mapped by a rule inside it: the source decides there.
    q = m.place(parse_ecs(ecs("172.16.5.0/24")), ("10.1.1.1", 1))
    assert (q.basis, q.region, q.scope) == ("ecs-private", "us-east", 12)
