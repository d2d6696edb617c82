"""ECS option handling (``resolver/ecs.py``), pure and fast.

The conformance table below is written from RFC 7871 section 6 by hand (the
bytes are spelled out); ``test_refservers`` sends the same table to gdnsd and
checks that it rejects exactly the same options. Valid options are also
checked against dnspython's independent ECS parser, and the reply option we
build is parsed back by dnspython.
"""

from __future__ import annotations

import ipaddress

import dns.edns
import dns.wire
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resolver.dns.ecs import (
    MAX_SOURCE,
    PRIVACY_PREFIX,
    clamp,
    ecs_option,
    mask,
    parse_ecs,
    reply_option,
    special_block,
)
from resolver.dns.wire import FormErr
from resolver.federation.locality import LocalityMap

# (label, option data, valid?)
CASES: list[tuple[str, bytes, bool]] = [
    ("valid IPv4 /24", bytes.fromhex("0001 18 00 c63364".replace(" ", "")), True),
    ("valid IPv4 /0 (opt-out)", bytes.fromhex("0001 00 00".replace(" ", "")), True),
    ("valid IPv6 /0 (opt-out)", bytes.fromhex("0002 00 00".replace(" ", "")), True),
    ("valid IPv6 /56", bytes.fromhex("0002 38 00 20010db8000100".replace(" ", "")), True),
    ("valid IPv4 /32", bytes.fromhex("0001 20 00 c6336401".replace(" ", "")), True),
    ("valid IPv4 /17, last bit in use", bytes.fromhex("0001 11 00 0a0180".replace(" ", "")), True),
    (
        "valid IPv6 /128",
        bytes.fromhex("0002 80 00 20010db8000000000000000000000001".replace(" ", "")),
        True,
    ),
    ("non-zero scope in query", bytes.fromhex("0001 18 10 c63364".replace(" ", "")), False),
    ("bits set beyond /23", bytes.fromhex("0001 17 00 c63365".replace(" ", "")), False),
    ("bits set beyond /20", bytes.fromhex("0001 14 00 0a0108".replace(" ", "")), False),
    ("extra address byte", bytes.fromhex("0001 18 00 c6336400".replace(" ", "")), False),
    ("address byte missing", bytes.fromhex("0001 18 00 c633".replace(" ", "")), False),
    ("address bytes with /0", bytes.fromhex("0001 00 00 00".replace(" ", "")), False),
    ("source /33 for IPv4", bytes.fromhex("0001 21 00 c633640100".replace(" ", "")), False),
    (
        "source /129 for IPv6",
        bytes.fromhex("0002 81 00 20010db800000000000000000000000100".replace(" ", "")),
        False,
    ),
    ("unknown family 3", bytes.fromhex("0003 18 00 c63364".replace(" ", "")), False),
    ("family 0 with /0", bytes.fromhex("0000 00 00".replace(" ", "")), False),
    ("short option, 3 bytes", bytes.fromhex("000118"), False),
    ("short option, 0 bytes", b"", False),
]


def ecs_from_wire(data: bytes) -> dns.edns.ECSOption:
    """dnspython's reading of ECS option data."""
    opt = dns.edns.ECSOption.from_wire_parser(dns.edns.OptionType.ECS, dns.wire.Parser(data))
    assert isinstance(opt, dns.edns.ECSOption)
    return opt


@pytest.mark.parametrize("label,data,ok", CASES, ids=[c[0] for c in CASES])
def test_conformance_table(label: str, data: bytes, ok: bool) -> None:
    if not ok:
        with pytest.raises(FormErr):
            parse_ecs(data)
        return
    cs = parse_ecs(data)
    # dnspython's parser, an independent implementation, reads the same subnet.
    theirs = ecs_from_wire(data)
    assert cs.family == theirs.family
    assert cs.source == theirs.srclen
    net = ipaddress.ip_network(f"{theirs.address}/{theirs.srclen}")
    assert cs.network_int == int(net.network_address)
    assert cs.addr_bytes == data[4:]


def test_formerr_reasons_name_the_fault() -> None:
    reasons = {}
    for label, data, ok in CASES:
        if not ok:
            with pytest.raises(FormErr) as e:
                parse_ecs(data)
            reasons[label] = str(e.value)
    assert "SCOPE" in reasons["non-zero scope in query"]
    assert "beyond" in reasons["bits set beyond /23"]
    assert "needs exactly 3" in reasons["extra address byte"]
    assert "needs exactly 3" in reasons["address byte missing"]
    assert "longer than 32" in reasons["source /33 for IPv4"]
    assert "FAMILY 3" in reasons["unknown family 3"]
    assert "at least 4" in reasons["short option, 3 bytes"]


def _encode(family: int, source: int, value: int) -> bytes:
    """An ECS option as RFC 7871 6 describes it, from ipaddress (not our code)."""
    width = MAX_SOURCE[family]
    net = ipaddress.ip_network((value, width)).supernet(new_prefix=source)
    nbytes = (source + 7) // 8
    return bytes((0, family, source, 0)) + net.network_address.packed[:nbytes]


@given(
    st.sampled_from([1, 2]).flatmap(
        lambda f: st.tuples(
            st.just(f),
            st.integers(0, MAX_SOURCE[f]),
            st.integers(0, (1 << MAX_SOURCE[f]) - 1),
        )
    )
)
def test_valid_options_round_trip(t: tuple[int, int, int]) -> None:
    family, source, value = t
    data = _encode(family, source, value)
    cs = parse_ecs(data)
    width = MAX_SOURCE[family]
    want = ipaddress.ip_network((value, width)).supernet(new_prefix=source)
    assert (cs.family, cs.source, cs.network_int) == (family, source, int(want.network_address))
    # The reply echoes FAMILY, SOURCE and ADDRESS; dnspython reads our option back.
    opt = ecs_option(cs.family, cs.source, 7, cs.addr_bytes)
    assert opt[:2] == b"\x00\x08" and int.from_bytes(opt[2:4], "big") == len(opt) - 4
    back = ecs_from_wire(opt[4:])
    assert (back.family, back.srclen, back.scopelen) == (family, source, 7)
    assert ipaddress.ip_address(back.address) == want.network_address


@given(st.binary(max_size=20))
def test_any_bytes_parse_or_formerr(data: bytes) -> None:
    """Arbitrary option data never raises anything but FormErr; what is accepted
    obeys every rule of RFC 7871 6 (checked here from the bytes)."""
    try:
        cs = parse_ecs(data)
    except FormErr:
        return
    family, source, scope = int.from_bytes(data[:2], "big"), data[2], data[3]
    assert family in (1, 2) and scope == 0
    assert source <= MAX_SOURCE[family]
    assert len(data) == 4 + (source + 7) // 8
    width = MAX_SOURCE[family]
    full = int.from_bytes(data[4:] + bytes(width // 8 - len(data) + 4), "big")
    assert full == cs.network_int
    assert full & ((1 << (width - source)) - 1) == 0


def test_privacy_clamp() -> None:
    v4 = int(ipaddress.IPv4Address("198.51.100.77"))
    assert clamp(1, v4, 32) == (int(ipaddress.IPv4Address("198.51.100.0")), 24)
    assert clamp(1, v4, 20) == (int(ipaddress.IPv4Address("198.51.96.0")), 20)
    v6 = int(ipaddress.IPv6Address("2001:db8:1:2345:6789::1"))
    assert clamp(2, v6, 128) == (int(ipaddress.IPv6Address("2001:db8:1:2300::")), 56)
    assert clamp(2, v6, 0) == (0, 0)
    assert PRIVACY_PREFIX == {1: 24, 2: 56}
    assert mask(1, v4, 0) == 0 and mask(1, v4, 32) == v4


@pytest.mark.parametrize(
    "cidr,block",
    [
        ("10.1.2.0/24", "10.0.0.0/8"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.0.0.0/7", None),  # wider than the private block: not inside it
        ("172.20.0.0/16", "172.16.0.0/12"),
        ("192.168.7.0/24", "192.168.0.0/16"),
        ("127.0.0.0/24", "127.0.0.0/8"),
        ("100.64.3.0/24", "100.64.0.0/10"),
        ("169.254.1.0/24", "169.254.0.0/16"),
        ("fd00:1:2::/56", "fc00::/7"),
        ("fe80::/56", "fe80::/10"),
        ("::1/128", "::1/128"),
        ("::/56", None),  # contains ::1 and ::, is neither
        ("192.0.2.0/24", None),  # documentation ranges stand for public space
        ("2001:db8::/56", None),
        ("8.8.8.0/24", None),
    ],
)
def test_special_blocks(cidr: str, block: str | None) -> None:
    n = ipaddress.ip_network(cidr)
    got = special_block(1 if n.version == 4 else 2, int(n.network_address), n.prefixlen)
    if block is None:
        assert got is None
    else:
        b = ipaddress.ip_network(block)
        assert got is not None and got[:2] == (int(b.network_address), b.prefixlen)


def test_reply_option_echoes_the_query() -> None:
    data = bytes.fromhex("00011600c63364")  # 198.51.100.0/22
    cs = parse_ecs(data)
    opt = reply_option(cs, 20)
    assert opt == b"\x00\x08\x00\x07" + data[:3] + bytes([20]) + data[4:]
    assert reply_option(parse_ecs(data), 20) is opt


# -- the locality bucket of a subnet (LocalityMap.block_of) ----------------------------

_RULE = st.tuples(st.booleans(), st.integers(0, (1 << 128) - 1), st.integers(0, 56),
                  st.sampled_from(("a", "b", "c")))


def _lmap(rules: list[tuple[bool, int, int, str]]) -> LocalityMap:
    out = []
    for v4, value, plen, region in rules:
        width = 32 if v4 else 128
        bits = min(plen, 24 if v4 else 56)
        net = ipaddress.ip_network(((value >> (128 - width)) if v4 else value, bits), strict=False)
        out.append((str(net), region, None))
    return LocalityMap.from_rules(list({r[0]: r for r in out}.values()))


@given(
    rules=st.lists(_RULE, max_size=30),
    family=st.sampled_from((1, 2)),
    source=st.integers(1, 128),
    value=st.integers(0, (1 << 128) - 1),
    private=st.sampled_from((None, "10.1.0.0", "192.168.7.0", "fd00::")),
)
def test_block_of_is_the_block_place_uses(
    rules: list[tuple[bool, int, int, str]], family: int, source: int, value: int,
    private: str | None,
) -> None:
    """``block_of`` finds, for any rules and any valid subnet, the partition block
    whose Match ``place`` gives (one bisect in a slice of the blocks, not over all);
    None exactly where ``place`` falls back to the packet's source (unmapped
    private space)."""
    if private is not None:
        ip = ipaddress.ip_address(private)
        family = 1 if ip.version == 4 else 2
        value = (int(ip) << (128 - ip.max_prefixlen)) | (value >> 104)
    width = MAX_SOURCE[family]
    source = min(source, width)
    need = (source + 7) // 8
    v = (value >> (128 - width)) >> (width - source) << (width - source)
    addr = (v >> (width - need * 8)).to_bytes(need, "big")
    lm = _lmap(rules)
    placed = lm.place(parse_ecs(ecs_option(family, source, 0, addr)[4:]), ("192.0.2.1", 53))
    i = lm.block_of(family, addr, source)
    if placed.basis != "ecs":
        assert i is None
        return
    assert i is not None
    assert lm.blocks(family)[i][1] is placed.match
    starts = [int(ipaddress.ip_network(c).network_address) for c, _ in lm.blocks(family)]
    assert starts[i] <= placed.value and (i + 1 == len(starts) or placed.value < starts[i + 1])
