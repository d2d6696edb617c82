"""Property tests of the per-query path: any bytes in, a well-formed reply or silence out.

In process, against the ``Table`` that ``fedns serve`` builds from a config
(``resolver.app.load_instance``), with the federation published as ``fedns
explain`` does it (static clusters: one sync), and DNS cookies set up as a
serving process does (``Runtime``) when the config asks for them. The tables:
the shipped demo (``zones/demo.yaml``, federated names included), the rich
test zone, whose 2.6 kB and 900-byte RRsets make truncation happen, and each
of them with ``cookies: {}``. Packets come from
``tests/fuzzing.py`` driven by hypothesis' ``Random`` (random bytes, mutated
and malformed queries, OPT records with random options, ECS and COOKIE
options of every length, compression pointer tricks, several questions, odd
classes, types and opcodes), and every reply is checked by
``fuzzing.check_reply`` with dnspython: the query's ID, opcode and question,
QR=1, RA=0, no larger than the requester's UDP size, never SERVFAIL, FORMERR
for what is malformed by construction, no reply to QR=1.

The table is called directly, so an exception in it fails the test here (a
serving process would log it and answer SERVFAIL).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import fuzzing
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import DEMO_CONFIG, RICH_ORIGIN, RICH_SETTINGS, RICH_ZONE, write_config

from resolver.app import Instance, load_instance
from resolver.config import load_config
from resolver.dns.answers import ROUTED_BASE, Table
from resolver.federation.control import Control
from resolver.serve.runtime import Runtime

SOURCE = ("127.0.0.1", 40000)
# Sources in the demo's locality rules and outside them: without ECS, federated
# names are placed by the packet's source.
SOURCES = (
    SOURCE,
    ("198.51.100.7", 5353),
    ("203.0.113.9", 5353),
    ("192.0.2.1", 5353),
    ("10.9.8.7", 5353),
    ("2001:db8:e::1", 5353, 0, 0),
    ("::1", 5353, 0, 0),
)
sources = st.sampled_from(SOURCES)
FUZZ = settings(
    max_examples=700,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=False,
)
rngs = st.randoms(use_true_random=False)


@dataclass(frozen=True)
class Served:
    table: Table = field(repr=False)
    names: fuzzing.Names
    max_udp: int

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<{self.names.probe[0]} table>")  # a falsifying example stays readable


def _load(config: Path) -> Served:
    inst: Instance = load_instance(load_config(config))
    # What a serving process adds to the table it is given (DNS cookies, when the
    # config has a cookies section).
    Runtime(inst.table, inst.cfg)
    if inst.fed is not None:
        fed = inst.fed

        async def sync() -> None:
            control = Control(fed, inst.apply)
            await control.start()
            try:
                assert await control.registry.wait_synced(15), "the static clusters did not sync"
                control.release()
            finally:
                await control.stop()

        asyncio.run(sync())
    return Served(inst.table, fuzzing.names_of_config(config), inst.cfg.max_udp_payload)


@pytest.fixture(scope="module")
def demo() -> Served:
    return _load(DEMO_CONFIG)


@pytest.fixture(scope="module")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Served:
    workdir = tmp_path_factory.mktemp("rich-property")
    return _load(write_config(workdir, {RICH_ORIGIN: RICH_ZONE}, RICH_SETTINGS))


@pytest.fixture(scope="module")
def rich_cookies(tmp_path_factory: pytest.TempPathFactory) -> Served:
    workdir = tmp_path_factory.mktemp("rich-cookies")
    settings = {**RICH_SETTINGS, "cookies": {}}
    return _load(write_config(workdir, {RICH_ORIGIN: RICH_ZONE}, settings))


@pytest.fixture(scope="module")
def cookies(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """The demo with DNS cookies on (``cookies: {}``: a random secret)."""
    return _load(fuzzing.config_with(DEMO_CONFIG, tmp_path_factory.mktemp("cookies"), cookies={}))


@pytest.fixture(scope="module")
def tables(demo: Served, rich: Served, cookies: Served) -> tuple[Served, Served, Served]:
    """The demo, the rich zone, the demo with cookies: a test draws which."""
    return demo, rich, cookies


def faults_of(s: Served, p: fuzzing.Packet, tcp: bool, source: Any = SOURCE) -> list[str]:
    reply = s.table.respond(p.data, tcp, source)
    return [
        f"{f}\n  query {p.data.hex()}\n  reply {reply.hex() if reply else None}"
        for f in fuzzing.check_reply(p.data, reply, tcp, p.expect)
    ]


def assert_holds(s: Served, p: fuzzing.Packet, source: Any = SOURCE) -> None:
    faults = faults_of(s, p, False, source) + faults_of(s, p, True, source)
    assert not faults, f"[{p.kind}] " + "\n".join(faults)


# -- any bytes -----------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=600), which=st.integers(0, 2))
def test_any_bytes_get_silence_or_a_reply_that_parses(
    tables: tuple[Served, Served, Served], data: bytes, which: int
) -> None:
    s = tables[which]
    expect = fuzzing.SILENT if len(data) < 12 or data[2] & 0x80 else None
    assert_holds(s, fuzzing.Packet("random", data, expect))


@FUZZ
@given(rng=rngs, which=st.integers(0, 2), source=sources)
def test_every_kind_of_fuzz_gets_a_reply_that_holds(
    tables: tuple[Served, Served, Served], rng: random.Random, which: int, source: Any
) -> None:
    """Mutated, malformed, EDNS, pointer, odd-question, opcode and response packets."""
    s = tables[which]
    assert_holds(s, fuzzing.any_packet(rng, s.names), source)


@settings(FUZZ, max_examples=400)
@given(rng=rngs)
def test_responses_get_no_reply(demo: Served, rng: random.Random) -> None:
    p = fuzzing.response(rng, demo.names)
    for tcp in (False, True):
        assert demo.table.respond(p.data, tcp, SOURCE) is None, p.data.hex()


@settings(FUZZ, max_examples=500)
@given(rng=rngs, which=st.integers(0, 2))
def test_malformed_packets_get_formerr(
    tables: tuple[Served, Served, Served], rng: random.Random, which: int
) -> None:
    """Cut, extended, counts past the records, QDCOUNT 0, several questions (RFC
    9619), and compression pointers that loop, point forward, past the end,
    into the header or anywhere from the question: FORMERR with the query's ID."""
    s = tables[which]
    p = (
        fuzzing.malformed(rng, s.names)
        if rng.random() < 0.5
        else fuzzing.pointer_trick(rng, s.names)
    )
    assert_holds(s, p)


@settings(FUZZ, max_examples=500)
@given(rng=rngs, which=st.integers(0, 2))
def test_edns_options_valid_and_not(
    tables: tuple[Served, Served, Served], rng: random.Random, which: int
) -> None:
    """OPT with random payload, version, DO and must-be-zero bits, and options:
    ECS (valid and not: families, prefixes, address lengths), COOKIE, NSID,
    padding, unknown codes. Version > 0: BADVERS; all valid: answered and
    unknown options not echoed; an invalid ECS: FORMERR (RFC 7871 7.2.1)."""
    s = tables[which]
    p = fuzzing.edns_query(rng, s.names)
    assert_holds(s, p)
    reply = s.table.respond(p.data, False, SOURCE)
    assert reply is not None
    opts = fuzzing.edns_options(p.data)
    ecs = [data for code, data in opts if code == fuzzing.ECS]
    version = _opt_of(p.data)[6]
    cookies = [d for c, d in opts if c == fuzzing.COOKIE]
    cookies_ok = len(cookies) <= 1 and all(fuzzing.cookie_valid(len(d)) for d in cookies)
    if version == 0 and cookies_ok and len(ecs) == 1 and not fuzzing.ecs_valid(ecs[0]):
        r = dns.message.from_wire(reply)
        assert r.rcode() == dns.rcode.FORMERR, f"invalid ECS {ecs[0].hex()} answered {r}"
        assert r.opt is not None, f"{p.data.hex()}: FORMERR for a bad option, no OPT (RFC 6891 7)"


def _opt_of(query: bytes) -> bytes:
    """The OPT record that ``fuzzing.edns_query`` puts at the end of its query."""
    end = fuzzing._first_name_end(query, 12)
    assert end is not None
    return query[end + 4 :]


@settings(FUZZ, max_examples=300)
@given(rng=rngs, family=st.sampled_from([1, 2]), source=st.integers(0, 140))
def test_ecs_echo(demo: Served, rng: random.Random, family: int, source: int) -> None:
    """A valid ECS option is echoed with its FAMILY, SOURCE and ADDRESS (RFC 7871
    7.2.1) and a SCOPE no longer than the family's address; an invalid one gets
    FORMERR. Three subnets of one SOURCE length ask one question in turn, so the
    later ones may be answered from a reply of another subnet's bucket
    (``Table.buckets``), their own ADDRESS patched in: the same bytes as
    ``Table.general``'s."""
    width = 32 if family == 1 else 128
    need = (source + 7) // 8
    name = rng.choice(demo.names.names)
    qtype = rng.choice((1, 28, 33))
    for _ in range(3):
        value = rng.getrandbits(need * 8) if need else 0
        spare = need * 8 - source
        if spare > 0 and rng.random() < 0.8:
            value = value >> spare << spare
        data = fuzzing.ecs_data(family, source, 0, value.to_bytes(need, "big"))
        wire = (
            fuzzing.header(7, ar=1)
            + fuzzing.question(name, qtype)
            + fuzzing.opt_rr(options=fuzzing.option(fuzzing.ECS, data))
        )
        reply = demo.table.respond(wire, False, SOURCE)
        assert reply is not None
        assert reply == demo.table.general(wire, False, SOURCE), f"{wire.hex()}"
        r = dns.message.from_wire(reply)
        if not fuzzing.ecs_valid(data):
            assert source > width or spare > 0
            assert r.rcode() == dns.rcode.FORMERR, f"{data.hex()}: {r}"
            continue
        assert r.rcode() != dns.rcode.FORMERR
        if r.rcode() == dns.rcode.REFUSED:
            continue
        echoed = [o for o in r.options if o.otype == fuzzing.ECS]
        assert len(echoed) == 1, f"{data.hex()}: no ECS echo in {r}"
        raw = echoed[0].to_wire()
        assert raw[:3] == data[:3] and raw[4:] == data[4:], f"{data.hex()} echoed as {raw.hex()}"
        assert raw[3] <= width


@settings(FUZZ, max_examples=400)
@given(
    rng=rngs,
    payload=st.integers(0, 4096),
    edns=st.booleans(),
    cookie=st.sampled_from([0, 8, 24, 40]),
    with_cookies=st.booleans(),
)
def test_udp_replies_fit_and_truncated_ones_are_whole(
    rich: Served,
    rich_cookies: Served,
    rng: random.Random,
    payload: int,
    edns: bool,
    cookie: int,
    with_cookies: bool,
) -> None:
    """The rich zone's big RRsets at every UDP size, with and without a COOKIE option
    (and cookies on or off): the reply fits the requester's size (and the server's
    own ``max_udp_payload``); with TC=1 it still parses, carries the question, and
    every RRset in its answer is whole (RFC 2181 9), equal to the one the
    untruncated TCP reply has."""
    rich = rich_cookies if with_cookies else rich
    names = [n for n in rich.names.names if n.startswith((b"\x03big", b"\x06medium"))]
    name = rng.choice(names or rich.names.names)
    qtype = rng.choice((16, 255, 1, 28))
    wire = fuzzing.header(rng.randrange(65536), ar=int(edns)) + fuzzing.question(name, qtype)
    if edns:
        options = fuzzing.option(fuzzing.COOKIE, rng.randbytes(cookie)) if cookie else b""
        wire += fuzzing.opt_rr(payload, do=rng.random() < 0.5, options=options)
    p = fuzzing.Packet("size", wire, fuzzing.CLEAN)
    assert_holds(rich, p)
    udp = rich.table.respond(wire, False, SOURCE)
    tcp = rich.table.respond(wire, True, SOURCE)
    assert udp is not None and tcp is not None
    limit = max(512, min(payload, rich.max_udp)) if edns else 512
    assert len(udp) <= limit, f"{len(udp)} bytes over {limit}"
    u, t = dns.message.from_wire(udp), dns.message.from_wire(tcp)
    assert not t.flags & dns.flags.TC, "a TCP reply is never truncated"
    if u.flags & dns.flags.TC:
        assert u.question == t.question
        for rrset in u.answer:
            whole = t.get_rrset(t.answer, rrset.name, rrset.rdclass, rrset.rdtype)
            assert whole is not None and set(whole) == set(rrset), (
                f"partial {rrset.name} {rrset.rdtype}"
            )
    else:
        assert u.answer == t.answer, "an untruncated UDP reply answers what TCP does"


@settings(FUZZ, max_examples=500)
@given(rng=rngs, which=st.integers(0, 2), tcp=st.booleans(), source=sources)
def test_fast_path_and_caches_give_the_general_reply(
    tables: tuple[Served, Served, Served], rng: random.Random, which: int, tcp: bool, source: Any
) -> None:
    """``Table.respond`` (fast path, reply caches) gives, for any packet, the bytes
    ``Table.general`` gives, the second time too (from the caches)."""
    s = tables[which]
    p = fuzzing.any_packet(rng, s.names)
    if s.table.cookies is None and _cookie_options(p.data) > 1:
        return  # a known disagreement: test_two_cookie_options_with_cookies_off
    slow = _no_server_cookie(s.table.general(p.data, tcp, source))
    first = _no_server_cookie(s.table.respond(p.data, tcp, source))
    again = _no_server_cookie(s.table.respond(p.data, tcp, source))
    assert first == slow, f"{p.data.hex()}: fast {first!r} general {slow!r}"
    assert again == slow, f"{p.data.hex()}: cached {again!r} general {slow!r}"


def _cookie_options(data: bytes) -> int:
    return sum(code == fuzzing.COOKIE for code, _ in fuzzing.edns_options(data))


def _no_server_cookie(reply: bytes | None) -> bytes | None:
    """The reply with the data of its COOKIE option zeroed: a server cookie carries
    the time, so two replies a second apart differ in it (RFC 9018)."""
    if reply is None:
        return None
    try:
        m = dns.message.from_wire(reply, keyring=lambda _m, _n: False)
    except dns.exception.DNSException:
        return reply
    for o in m.options:
        if o.otype == fuzzing.COOKIE:
            data = o.to_wire()
            at = reply.rfind(fuzzing.option(fuzzing.COOKIE, data))
            if at >= 0:
                return reply[: at + 4] + bytes(len(data)) + reply[at + 4 + len(data) :]
    return reply


# -- many client subnets: the bucket cache (Table.buckets) --------------------------------


def _mapped_config(workdir: Path) -> Path:
    """The demo with more locality rules: its own, a private block that is mapped
    (10.1.0.0/16, inside RFC 1918 space), and rules of several lengths in both
    families, drawn once so the blocks nest and neighbour in many ways."""
    doc = yaml.safe_load(DEMO_CONFIG.read_text())
    fed = doc["federation"]
    regions = [c["region"] for c in fed["clusters"]]
    zones = {c["region"]: c["zone"] for c in fed["clusters"]}
    rnd = random.Random(13)
    rules = [*fed["localities"], {"cidr": "10.1.0.0/16", "region": "us-west"}]
    for _ in range(24):
        v4 = rnd.random() < 0.6
        plen = rnd.randint(4, 24) if v4 else rnd.randint(16, 56)
        net = ipaddress.ip_network(
            (rnd.getrandbits(32) if v4 else (0x2001 << 112) | rnd.getrandbits(112), plen),
            strict=False,
        )
        region = rnd.choice(regions)
        rule = {"cidr": str(net), "region": region}
        if rnd.random() < 0.5:
            rule["zone"] = zones[region]
        rules.append(rule)
    rules.append({"cidr": "0.0.0.0/0", "region": regions[-1]})
    fed["localities"] = list({r["cidr"]: r for r in rules}.values())
    return fuzzing.config_with(DEMO_CONFIG, workdir, federation=fed)


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> Served:
    return _load(_mapped_config(tmp_path_factory.mktemp("mapped")))


def _routed(s: Served) -> list[bytes]:
    """The table's names whose answers depend on the client (locality, failover and
    weighted services, their SRV names)."""
    return sorted(k for k, node in s.table.nodes.items() if node.router is not None)


def _rules(s: Served) -> list[tuple[int, int, int]]:
    """(family, network, prefix length) of the table's locality rules, as loaded."""
    router = next(n.router for n in s.table.nodes.values() if n.router is not None)
    lm = router.locator.localities  # type: ignore[attr-defined]
    return [(r.family, r.network, r.prefix_len) for r in lm.rules] if lm is not None else []


def _near(rng: random.Random, s: Served, family: int) -> int:
    """An address of ``family`` (as an int of its width): inside a locality rule of the
    table (so blocks of every rule are met), else anywhere."""
    rules = [r for r in _rules(s) if r[0] == family]
    width = 32 if family == 1 else 128
    if rules and rng.random() < 0.7:
        _, net, plen = rng.choice(rules)
        return net | (rng.getrandbits(width - plen) if plen < width else 0)
    return rng.getrandbits(width)


def _mixed_case(rng: random.Random, name: bytes) -> bytes:
    return bytes(c ^ 0x20 if 0x41 <= (c & 0xDF) <= 0x5A and rng.random() < 0.5 else c
                 for c in name)


def _ecs_query(rng: random.Random, name: bytes, qtype: int, flags: int, family: int,
               source: int, value: int, payload: int, do: bool) -> bytes:
    """A query with one ECS option of ``value`` cut to ``source`` bits (now and then a
    bit past SOURCE set: FORMERR)."""
    width = 32 if family == 1 else 128
    need = (source + 7) // 8
    value = value >> (width - source) << (width - source) if source else 0
    addr = (value >> (width - need * 8)).to_bytes(need, "big")
    if need and rng.random() < 0.05:
        addr = addr[:-1] + bytes((addr[-1] | 1,))
    return (
        fuzzing.header(rng.randrange(65536), flags, ar=1)
        + fuzzing.question(name, qtype)
        + fuzzing.opt_rr(payload, do=do, options=fuzzing.option(
            fuzzing.ECS, fuzzing.ecs_data(family, source, 0, addr)))
    )


@settings(FUZZ, max_examples=150)
@given(rng=rngs, which=st.integers(0, 2))
def test_many_subnets_give_the_general_reply(
    demo: Served, mapped: Served, cookies: Served, rng: random.Random, which: int
) -> None:
    """Queries for the routed names, each with another client subnet (both families,
    every SOURCE length, public, mapped and unmapped private space, now and then
    host bits set), DO or not, any UDP size, from several sources: every reply,
    the first time and again, is the bytes ``Table.general`` gives. Subnets of one
    locality block share a reply in ``Table.buckets`` with the ADDRESS patched in;
    later ones of one question share it too."""
    s = (demo, mapped, cookies)[which]
    names = _routed(s)

    def ask() -> tuple[bytes, int, int]:
        # The name's letter case (0x20) and RD/CD flags are part of the question.
        name = _mixed_case(rng, rng.choice(names))
        return name, rng.choice((1, 28, 33, 16)), rng.choice((0, 0x0100, 0x0010, 0x0110))

    question = ask()
    for _ in range(12):
        if rng.random() < 0.3:
            question = ask()
        family = rng.choice((1, 2))
        width = 32 if family == 1 else 128
        source = rng.choice((24, 24, 56, rng.randint(0, width), rng.randint(1, 24)))
        source = min(source, width)
        if rng.random() < 0.15:  # private space: mapped (10.1/16 in ``mapped``) or not
            value = rng.choice((0x0A01 << 16, 0x0A09 << 16, 0xC0A8 << 16, 0xFD << 120))
            family, width = (2, 128) if value >> 32 else (1, 32)
            source = min(source, width)
            value |= rng.getrandbits(16)
        else:
            value = _near(rng, s, family)
        payload = rng.choice((1232, 1232, 512, rng.randint(0, 1400)))
        wire = _ecs_query(rng, *question, family, source, value, payload, rng.random() < 0.3)
        addr = rng.choice(SOURCES)
        slow = s.table.general(wire, False, addr)
        first = s.table.respond(wire, False, addr)
        again = s.table.respond(wire, False, addr)
        assert first == slow, f"{wire.hex()} from {addr}: fast {first!r} general {slow!r}"
        assert again == slow, f"{wire.hex()} from {addr}: cached {again!r} general {slow!r}"


def test_one_reply_per_bucket_not_per_subnet(mapped: Served) -> None:
    """Subnets of one locality block, each asked once: the first is routed (a memo
    miss), the rest come from ``Table.buckets``, counted as routed answers their
    router's memo did not route again, their OPT records not memoized; each reply
    is the one ``Table.general`` gives, its own ADDRESS echoed."""
    t = mapped.table
    t.empty_caches()
    # The routers' memos outlive the caches, and the fixture's earlier examples may
    # have routed one of these very subnets (they draw addresses inside the rules).
    t._clear_route_memos()
    name = next(n for n in _routed(mapped) if n.startswith(b"\x04cart"))
    # A rule of the demo: every address of its /24 is in one block, whatever the others.
    net = int(ipaddress.IPv4Address("198.51.100.0"))
    # One rng state for all: the same ID, and no host bit set; only the ADDRESS differs.
    wires = [_ecs_query(random.Random(0), name, 1, 0x0100, 1, 32, net | i, 1232, False)
             for i in range(40)]
    misses, routed = t.counts.memo_misses, sum(t.counts.answers[ROUTED_BASE:])
    for w in wires:
        reply = t.respond(w, False, SOURCE)
        assert reply == t.general(w, False, SOURCE)
        assert reply is not None and reply.endswith(w[-4:]), "the query's ADDRESS not echoed"
    assert t.counts.memo_misses - misses == 1, "subnets of one block routed afresh"
    assert sum(t.counts.answers[ROUTED_BASE:]) - routed == len(wires)
    assert len(t.buckets) == 1
    assert sum(w[w.find(b"\x00\x00\x29", 12):] in t._edns_memo for w in wires) == 1


# -- opcodes before counts, cookies ----------------------------------------------------


@settings(FUZZ, max_examples=300)
@given(rng=rngs)
def test_other_opcodes_get_notimp_whatever_the_sections(demo: Served, rng: random.Random) -> None:
    """An opcode fedns does not implement gets NOTIMP (RFC 1035 4.1.1; NSD and Knot)
    before its sections are read, however many questions it has, with the
    opcode echoed and no section (genreport's "opcode" test)."""
    p = fuzzing.other_opcode(rng, demo.names)
    for tcp in (False, True):
        reply = demo.table.respond(p.data, tcp, SOURCE)
        assert reply is not None
        r = dns.message.from_wire(reply)
        assert r.rcode() == dns.rcode.NOTIMP, f"{p.data.hex()}: {dns.rcode.to_text(r.rcode())}"
        assert (reply[2] >> 3) & 0x0F == (p.data[2] >> 3) & 0x0F
        assert reply[4:12] == b"\x00" * 8, "sections in a NOTIMP reply"


@settings(FUZZ, max_examples=300)
@given(rng=rngs, length=st.integers(0, 50))
def test_cookie_option_of_every_length(cookies: Served, rng: random.Random, length: int) -> None:
    """With cookies on, a COOKIE option of 8 bytes (client cookie) or 16..40 (with a
    server cookie) is answered, and the reply's cookie starts with the client's
    (RFC 7873 5.2); any other length is malformed: FORMERR (RFC 7873 5.2.2) with
    an OPT record (RFC 6891 7)."""
    cookie = rng.randbytes(length)
    wire = (
        fuzzing.header(9, ar=1)
        + fuzzing.question(rng.choice(cookies.names.names), 1)
        + fuzzing.opt_rr(options=fuzzing.option(fuzzing.COOKIE, cookie))
    )
    for tcp in (False, True):
        reply = cookies.table.respond(wire, tcp, SOURCE)
        assert reply is not None
        r = dns.message.from_wire(reply)
        assert r.opt is not None
        if not fuzzing.cookie_valid(length):
            assert r.rcode() == dns.rcode.FORMERR, f"COOKIE of {length} bytes: {r}"
            continue
        assert r.rcode() not in (dns.rcode.FORMERR, dns.rcode.SERVFAIL), f"{length}: {r}"
        echoed = [o for o in r.options if o.otype == fuzzing.COOKIE]
        assert len(echoed) == 1, f"no COOKIE in the reply to a {length}-byte cookie"
        raw = echoed[0].to_wire()
        assert raw[:8] == cookie[:8] and 16 <= len(raw) <= 40, raw.hex()


# -- bugs the fuzzing found (fixed): duplicated options -----------------------------------

WEB = b"\x03web\x06global\x07example\x04test\x00"
ECS_24 = fuzzing.option(fuzzing.ECS, fuzzing.ecs_data(1, 24, 0, bytes((198, 51, 100))))
COOKIE_8 = fuzzing.option(fuzzing.COOKIE, bytes(range(1, 9)))


def _with_options(options: bytes) -> bytes:
    return fuzzing.header(0x1234, ar=1) + fuzzing.question(WEB, 1) + fuzzing.opt_rr(options=options)


@pytest.mark.parametrize("tcp", [False, True])
def test_two_cookie_options_with_cookies_off(demo: Served, tcp: bool) -> None:
    """``Table.respond`` and ``Table.general`` must give one reply for one packet."""
    wire = _with_options(COOKIE_8 + COOKIE_8)
    assert demo.table.respond(wire, tcp, SOURCE) == demo.table.general(wire, tcp, SOURCE)


BAD_OPTIONS = {
    "ECS with SCOPE 1": (
        fuzzing.option(fuzzing.ECS, fuzzing.ecs_data(1, 24, 1, b"\xc6\x33\x64")),
        False,
    ),
    "COOKIE of 5 bytes": (fuzzing.option(fuzzing.COOKIE, b"\x01" * 5), True),
    "two ECS options": (ECS_24 + ECS_24, False),
    "two COOKIE options": (COOKIE_8 + COOKIE_8, True),
}
@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_formerr_for_a_bad_option_carries_opt(demo: Served, cookies: Served, case: str) -> None:
    """RFC 6891 7: a FORMERR for a problem in the OPT record's options includes an OPT
    record (so the requester tells it from a server without EDNS)."""
    options, needs_cookies = BAD_OPTIONS[case]
    s = cookies if needs_cookies else demo
    for tcp in (False, True):
        reply = s.table.respond(_with_options(options), tcp, SOURCE)
        assert reply is not None
        r = dns.message.from_wire(reply)
        assert r.rcode() == dns.rcode.FORMERR, f"{case}: {dns.rcode.to_text(r.rcode())}"
        assert r.opt is not None, f"{case}: FORMERR without OPT: {reply.hex()}"
