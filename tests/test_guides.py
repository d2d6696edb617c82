"""The guides in docs/ hold: every configuration they show runs as written, for real.

A guide marks each block it stands behind with ``<!-- tested: NAME -->`` on the line
before the fence; ``guide_blocks`` reads them, and the tests below change nothing in
a block but fedns's address and port (the guides write the demo's ``127.0.0.1:5300``,
``127.0.0.1@5300`` in resolver syntax), adding only the resolver's own listening socket
and working directory around it:

- ``docs/resolvers.md``: fedns serves the demo (``zones/demo.yaml``); Unbound
  (``stub-zone``, ``forward-zone``) and Knot Resolver 5 (``policy.STUB``,
  ``policy.FORWARD``) run with the guide's blocks, and for questions derived from the
  demo zone file and config (static, CNAME, wildcard, federated, per-cluster,
  per-endpoint, SRV, NXDOMAIN, NODATA) each returns the RCODE and answer RRsets
  (TTLs aside) that fedns gives directly. Each gotcha line the guide explains is
  taken out once to show the failure it prevents. Nothing leaves loopback: Unbound
  may not query any address outside 127.0.0.0/8 (``do-not-query-address``) nor IPv6,
  kresd's modules that talk to the root at startup are unloaded and every name
  outside the guide's zone is refused.
- ``docs/locality.md``: fedns runs the guide's locality example; queries with ECS
  subnets inside and outside its rules (and longer than /24 and /56) get the
  endpoints and the SCOPE the guide promises, computed here from the config by an
  independent model (longest prefix, tiers, distances; SCOPE as the widest block with
  one answer, checked on every boundary inside it); explain (CLI and HTTP) agrees.
  ``fedns check`` refuses a rule one bit longer than /24 or /56.
- ``docs/coredns.md``: CoreDNS is not packaged for these machines (no Debian package,
  no image can be pulled), so its Corefile blocks are checked for syntax only, with
  ``tests/corefile.py``, and the ConfigMap with kubernetes-validate; the ConfigMap
  carries the guide's block, forwards only the zone, and the cache floor (MINTTL) is
  below every TTL fedns serves for federated names.
- ``docs/replicas.md``: the three-cluster config passes the real ``fedns check``; the
  PodDisruptionBudget passes kubernetes-validate; two fedns replicas watching three
  fake API servers (``tests/fakekube.py``) make only GETs, one list per resource and
  cluster, hold one watch each, and send the same reply bytes for the same questions.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
import yaml
from refservers import _start, have, wait_zone
from servers import (
    DEMO_CONFIG,
    FED_ORIGIN,
    LOOPBACK,
    REPO,
    ServerProcess,
    fedns_argv,
    fedns_env,
    free_port,
    start_fedns,
)

DOCS = REPO / "docs"
DEMO_ZONE = REPO / "zones" / "global.example.test.zone"
# What the resolver guides write for fedns's address: the demo's 127.0.0.1:5300.
FEDNS_RESOLVER_SYNTAX = "127.0.0.1@5300"

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
KRESD = shutil.which("kresd") or "/usr/sbin/kresd"
needs_unbound = pytest.mark.skipif(not have(UNBOUND), reason="unbound not installed (apt: unbound)")
needs_kresd = pytest.mark.skipif(not have(KRESD), reason="kresd not installed (apt: knot-resolver)")

_MARK = re.compile(r"<!--\s*tested:\s*([\w-]+)\s*-->\s*\n```[\w-]*\n(.*?)\n```", re.S)
# Every block the guides of this file mark, by guide; a new mark needs a test here.
GUIDES = {
    "locality.md": {"locality-config"},
    "coredns.md": {"corefile-stub", "coredns-configmap"},
    "resolvers.md": {"unbound-stub", "unbound-forward", "kresd-stub", "kresd-forward"},
    "replicas.md": {"replicas-config", "replicas-pdb"},
}


def guide_blocks(guide: str) -> dict[str, str]:
    """The marked blocks of ``docs/<guide>``, by name."""
    text = (DOCS / guide).read_text()
    found: dict[str, str] = {}
    for name, body in _MARK.findall(text):
        assert name not in found, f"{guide}: two blocks marked {name!r}"
        found[name] = body + "\n"
    return found


def at_fedns(block: str, fedns: ServerProcess) -> str:
    """The block with the guide's fedns address replaced by the running fedns's."""
    assert FEDNS_RESOLVER_SYNTAX in block, "the block does not name fedns's address"
    return block.replace(FEDNS_RESOLVER_SYNTAX, f"{fedns.host}@{fedns.port}")


def without(block: str, directive: str) -> str:
    """The block less the lines that contain ``directive`` (which must be there)."""
    lines = block.splitlines(keepends=True)
    kept = [ln for ln in lines if directive not in ln]
    assert len(kept) < len(lines), f"{directive!r} is not in the block"
    return "".join(kept)


def test_every_marked_block_is_tested() -> None:
    for guide, names in GUIDES.items():
        assert set(guide_blocks(guide)) == names, guide


# -- asking and comparing -----------------------------------------------------------------

Question = tuple[str, str]  # (name, type)
RRsets = frozenset[tuple[str, str, frozenset[str]]]


def ask(
    server: tuple[str, int],
    name: str,
    rdtype: str,
    recursive: bool,
    ecs: str | None = None,
) -> dns.message.Message:
    """One question over UDP (TCP after TC): with RD to a resolver, without to fedns."""
    options = []
    if ecs is not None:
        net = ipaddress.ip_network(ecs)
        options.append(dns.edns.ECSOption(str(net.network_address), net.prefixlen))
    q = dns.message.make_query(name, rdtype, use_edns=0, options=options)
    if not recursive:
        q.flags &= ~dns.flags.RD
    r, _ = dns.query.udp_with_fallback(q, server[0], port=server[1], timeout=3.0)
    return r


def answer_rrsets(r: dns.message.Message) -> RRsets:
    return frozenset(
        (
            rrset.name.to_text().lower(),
            dns.rdatatype.to_text(rrset.rdtype),
            frozenset(rd.to_text().lower() for rd in rrset),
        )
        for rrset in r.answer
    )


def addresses(r: dns.message.Message) -> frozenset[str]:
    return frozenset(
        rd.to_text()
        for rrset in r.answer
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
        for rd in rrset
    )


def demo_questions(fedns: ServerProcess) -> list[Question]:
    """Questions that cover what the demo serves, read from its zone file and config
    (per-endpoint names from the SRV targets fedns itself gives)."""
    origin = dns.name.from_text(FED_ORIGIN)
    zone = dns.zone.from_file(str(DEMO_ZONE), origin=origin, relativize=False)
    cuts = [
        n
        for n, node in zone.nodes.items()
        if n != origin and node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.NS)
    ]
    out: list[Question] = []
    for name, node in zone.nodes.items():
        if any(name.is_subdomain(c) for c in cuts):
            continue  # a delegation: its servers do not exist, a resolver would chase them
        text = name.to_text()
        if name.labels[0] == b"*":
            text = "fedns-probe." + name.parent().to_text()
        types = {dns.rdatatype.to_text(rds.rdtype) for rds in node}
        out += [(text, t) for t in sorted(types)]
        if "CNAME" in types:
            out += [(text, "A"), (text, "AAAA")]  # the chain, followed
        else:
            out.append((text, "NAPTR"))  # NODATA
        # Empty non-terminals between the name and the apex: NODATA too.
        parent = name.parent()
        while parent != origin and parent.is_subdomain(origin):
            if parent not in zone.nodes:
                out.append((parent.to_text(), "A"))
            parent = parent.parent()
    out.append((f"fedns-nxdomain-probe.{FED_ORIGIN}", "A"))
    out.append((f"nx.web.{FED_ORIGIN}", "AAAA"))
    fed = yaml.safe_load(DEMO_CONFIG.read_text())["federation"]
    srv: list[str] = []
    for svc in fed["services"]:
        base = f"{svc['name']}.{svc['namespace']}.{fed['zone']}"
        out += [(base, "A"), (base, "AAAA"), (base, "TXT")]
        out += [(f"{cluster}.{base}", t) for cluster in svc["endpoints"] for t in ("A", "AAAA")]
        for port in svc.get("ports", []):
            srv.append(f"_{port['name']}._{port['protocol'].lower()}.{base}")
    out += [(name, "SRV") for name in srv]
    for name in srv:
        for rrset in ask(fedns.addr, name, "SRV", False).answer:
            out += [(rd.target.to_text(), "A") for rd in rrset]
    return list(dict.fromkeys(out))


def differences(
    fedns: ServerProcess, resolver: ServerProcess, questions: list[Question]
) -> list[str]:
    out = []
    for name, rdtype in questions:
        direct = ask(fedns.addr, name, rdtype, False)
        try:
            via = ask(resolver.addr, name, rdtype, True)
        except dns.exception.Timeout:
            out.append(f"{name} {rdtype}: no answer from {resolver.name}")
            continue
        if (direct.rcode(), answer_rrsets(direct)) != (via.rcode(), answer_rrsets(via)):
            out.append(
                f"{name} {rdtype}: fedns {dns.rcode.to_text(direct.rcode())} {sorted(answer_rrsets(direct))}"
                f" / {resolver.name} {dns.rcode.to_text(via.rcode())} {sorted(answer_rrsets(via))}"
            )
    return out


def assert_covers_every_kind(fedns: ServerProcess, questions: list[Question]) -> None:
    """The questions include each kind of answer the guide promises to carry."""
    kinds = set()
    fed_names = {n for n, _ in questions if ".shop." in n}
    for name, rdtype in questions:
        r = ask(fedns.addr, name, rdtype, False)
        if r.rcode() == dns.rcode.NXDOMAIN:
            kinds.add("nxdomain")
        elif not r.answer:
            kinds.add("nodata")
        else:
            kinds.add(rdtype)
            kinds.add("federated" if name in fed_names else "static")
    assert {"nxdomain", "nodata", "SRV", "A", "AAAA", "CNAME", "federated", "static"} <= kinds, (
        kinds
    )


# -- resolvers.md: Unbound --------------------------------------------------------------------


def _outside_loopback() -> list[str]:
    everything, loopback = ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("127.0.0.0/8")
    return sorted(str(n) for n in everything.address_exclude(loopback))


def start_unbound(workdir: Path, block: str) -> ServerProcess:
    """Unbound on a free loopback port with the guide's ``block`` after a harness that
    sets where it listens and keeps every query on loopback. It also strips 127/8
    addresses from answers (``private-address``), as a resolver hardened against DNS
    rebinding does with private ranges: the guide's ``private-domain`` must undo it."""
    workdir.mkdir(parents=True, exist_ok=True)
    blocked = "".join(f"  do-not-query-address: {n}\n" for n in _outside_loopback())

    def argv(port: int) -> list[str]:
        conf = workdir / "unbound.conf"
        conf.write_text(
            f"""server:
  interface: {LOOPBACK}@{port}
  port: {port}
  do-ip6: no
  do-daemonize: no
  use-syslog: no
  logfile: ""
  chroot: ""
  username: ""
  directory: "{workdir}"
  pidfile: "{workdir}/unbound.pid"
  access-control: 127.0.0.0/8 allow
  num-threads: 1
  verbosity: 1
  private-address: 127.0.0.0/8
{blocked}
remote-control:
  control-enable: no

{block}"""
        )
        return [UNBOUND, "-d", "-c", str(conf)]

    return _start("unbound", argv, workdir)


@pytest.fixture
def resolvers() -> Iterator[list[ServerProcess]]:
    """The resolver processes a test starts, stopped at teardown."""
    started: list[ServerProcess] = []
    yield started
    for sp in started:
        sp.stop()


@needs_unbound
@pytest.mark.parametrize("block", ["unbound-stub", "unbound-forward"])
def test_unbound_answers_as_fedns(
    block: str, demo_server: ServerProcess, resolvers: list[ServerProcess], tmp_path: Path
) -> None:
    conf = at_fedns(guide_blocks("resolvers.md")[block], demo_server)
    ub = start_unbound(tmp_path / "unbound", conf)
    resolvers.append(ub)
    wait_zone(ub.addr, FED_ORIGIN)
    questions = demo_questions(demo_server)
    assert_covers_every_kind(demo_server, questions)
    assert differences(demo_server, ub, questions) == []


@needs_unbound
def test_unbound_passes_client_subnets_to_fedns(
    demo_server: ServerProcess, resolvers: list[ServerProcess], tmp_path: Path
) -> None:
    """With ``subnetcache`` a client's ECS reaches fedns: through Unbound, each demo
    locality's subnet gets what fedns answers that subnet directly."""
    conf = at_fedns(guide_blocks("resolvers.md")["unbound-stub"], demo_server)
    ub = start_unbound(tmp_path / "unbound", conf)
    resolvers.append(ub)
    wait_zone(ub.addr, FED_ORIGIN)
    name = demo_service_name()
    seen = set()
    for subnet in demo_public_subnets():
        direct = addresses(ask(demo_server.addr, name, "A", False, ecs=subnet))
        assert addresses(ask(ub.addr, name, "A", True, ecs=subnet)) == direct, subnet
        seen.add(direct)
    assert len(seen) > 1, "every subnet got the same answer: ECS made no difference"


def demo_service_name() -> str:
    """The demo's first service under the default (locality) policy."""
    fed = yaml.safe_load(DEMO_CONFIG.read_text())["federation"]
    tailored = {k for k, v in fed.get("policies", {}).items() if "policy" in v}
    svc = next(s for s in fed["services"] if f"{s['namespace']}/{s['name']}" not in tailored)
    return f"{svc['name']}.{svc['namespace']}.{fed['zone']}"


def demo_public_subnets() -> list[str]:
    """A /24 of each IPv4 locality rule of the demo outside loopback."""
    fed = yaml.safe_load(DEMO_CONFIG.read_text())["federation"]
    nets = [ipaddress.ip_network(r["cidr"]) for r in fed["localities"]]
    return [
        str(next(n.subnets(new_prefix=24)) if n.prefixlen < 24 else n)
        for n in nets
        if n.version == 4 and not n.is_loopback
    ]


@needs_unbound
@pytest.mark.parametrize(
    "line, symptom",
    [
        ('local-zone: "test." nodefault', "nxdomain from Unbound's own test. zone"),
        ("do-not-query-localhost: no", "servfail"),
        ("private-domain:", "addresses stripped"),
    ],
)
def test_unbound_fails_without_the_gotcha_lines(
    line: str,
    symptom: str,
    demo_server: ServerProcess,
    resolvers: list[ServerProcess],
    tmp_path: Path,
) -> None:
    conf = at_fedns(without(guide_blocks("resolvers.md")["unbound-stub"], line), demo_server)
    ub = start_unbound(tmp_path / "unbound", conf)
    resolvers.append(ub)
    name, rdtype = demo_service_name(), "A"
    assert addresses(ask(demo_server.addr, name, rdtype, False)), "fedns itself answers"
    r = ask(ub.addr, name, rdtype, True)
    if symptom.startswith("nxdomain"):
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert [rr.name.to_text() for rr in r.authority] == ["test."]
    elif symptom == "servfail":
        assert r.rcode() == dns.rcode.SERVFAIL
    else:
        assert r.rcode() == dns.rcode.NOERROR and not addresses(r)


# -- resolvers.md: Knot Resolver ------------------------------------------------------------------

# Loaded by kresd by default, and each asks the root servers on its own at startup
# (priming, trust-anchor refresh and signalling, time-skew check): the test has no
# Internet and must not try.
_KRESD_TALKERS = ("priming", "ta_update", "ta_signal_query", "detect_time_skew")


def start_kresd(workdir: Path, block: str) -> ServerProcess:
    """kresd (``-n``, its rundir in ``workdir``) on a free loopback port with the guide's
    ``block``; every name the block does not route is refused, so nothing is iterated."""
    workdir.mkdir(parents=True, exist_ok=True)
    unload = "".join(f"modules.unload('{m}')\n" for m in _KRESD_TALKERS)

    def argv(port: int) -> list[str]:
        conf = workdir / "kresd.conf"
        conf.write_text(
            f"""net.listen('{LOOPBACK}', {port}, {{ kind = 'dns' }})
{unload}cache.size = 10 * MB
{block}
policy.add(policy.all(policy.REFUSE))
"""
        )
        return [KRESD, "-n", "-c", str(conf), str(workdir)]

    return _start("kresd", argv, workdir)


@needs_kresd
@pytest.mark.parametrize("block", ["kresd-stub", "kresd-forward"])
def test_kresd_answers_as_fedns(
    block: str, demo_server: ServerProcess, resolvers: list[ServerProcess], tmp_path: Path
) -> None:
    conf = at_fedns(guide_blocks("resolvers.md")[block], demo_server)
    kr = start_kresd(tmp_path / "kresd", conf)
    resolvers.append(kr)
    wait_zone(kr.addr, FED_ORIGIN)
    questions = demo_questions(demo_server)
    assert_covers_every_kind(demo_server, questions)
    assert differences(demo_server, kr, questions) == []


@needs_kresd
def test_kresd_sends_no_client_subnet(
    demo_server: ServerProcess, resolvers: list[ServerProcess], tmp_path: Path
) -> None:
    """A client's own ECS option does not get through kresd: every client gets the
    answer for kresd's address (loopback), as the guide says."""
    conf = at_fedns(guide_blocks("resolvers.md")["kresd-stub"], demo_server)
    kr = start_kresd(tmp_path / "kresd", conf)
    resolvers.append(kr)
    wait_zone(kr.addr, FED_ORIGIN)
    name = demo_service_name()
    own = addresses(ask(demo_server.addr, name, "A", False))
    differs = 0
    for subnet in demo_public_subnets():
        assert addresses(ask(kr.addr, name, "A", True, ecs=subnet)) == own, subnet
        differs += addresses(ask(demo_server.addr, name, "A", False, ecs=subnet)) != own
    assert differs, "no demo subnet is answered differently from loopback: nothing shown"


@needs_kresd
def test_kresd_forward_fails_without_the_negative_trust_anchor(
    demo_server: ServerProcess, resolvers: list[ServerProcess], tmp_path: Path
) -> None:
    block = without(guide_blocks("resolvers.md")["kresd-forward"], "trust_anchors.set_insecure")
    kr = start_kresd(tmp_path / "kresd", at_fedns(block, demo_server))
    resolvers.append(kr)
    r = ask(kr.addr, demo_service_name(), "A", True)
    assert r.rcode() == dns.rcode.SERVFAIL


# -- locality.md ------------------------------------------------------------------------------------

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
PRIVACY = {4: 24, 6: 56}  # RFC 7871 11.1, as the guide states: never more of an address
# RFC 7871 section 10's blocks as the guide lists them (those no longer than the limit).
SPECIAL = [
    ipaddress.ip_network(n)
    for n in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "fe80::/10",
    )
]  # fmt: skip


def haversine_km(a: dict[str, float], b: dict[str, float]) -> float:
    import math

    p1, p2 = math.radians(a["lat"]), math.radians(b["lat"])
    dp, dl = p2 - p1, math.radians(b["lon"] - a["lon"])
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


class LocalityModel:
    """What the guide says fedns answers, computed from a config (not from fedns):
    longest-prefix rules within /24 and /56, the RFC 7871 section 10 fallback, tiers
    (zone, region, preferred, nearest by great circle), every healthy endpoint for a
    client no rule places."""

    def __init__(self, fed: dict, source: str) -> None:
        self.fed = fed
        self.rules = [
            (ipaddress.ip_network(r["cidr"]), r["region"], r.get("zone"))
            for r in fed.get("localities", [])
        ]
        self.regions = {r["name"]: r for r in fed.get("regions", [])}
        self.cluster = {c["name"]: c for c in fed["clusters"]}
        self.cap = fed.get("defaults", {}).get("max_answers", 8)
        self.source = ipaddress.ip_network(f"{source}/{PRIVACY[4]}", strict=False)

    def rule(self, net: Net) -> tuple[Net, str, str | None] | None:
        inside = [r for r in self.rules if r[0].version == net.version and net.subnet_of(r[0])]  # type: ignore[arg-type]
        return max(inside, key=lambda r: r[0].prefixlen, default=None)

    def special(self, net: Net) -> Net | None:
        return next(
            (s for s in SPECIAL if s.version == net.version and net.subnet_of(s)),
            None,  # type: ignore[arg-type]
        )

    def place(self, net: Net) -> tuple[tuple[str | None, str | None], Net | None]:
        """(region, zone) of a /24 or /56, and the special block it fell back from."""
        r, s = self.rule(net), self.special(net)
        if s is not None and (r is None or r[0].prefixlen < s.prefixlen):
            src = self.rule(self.source)
            return ((src[1], src[2]) if src else (None, None)), s
        return ((r[1], r[2]) if r else (None, None)), None

    def candidates(self, svc: dict, family: int | None) -> list[dict]:
        out = []
        for name, eps in svc["endpoints"].items():
            cl = self.cluster[name]
            for ep in eps:
                addrs = [
                    a
                    for a in ep["addresses"]
                    if family is None or ipaddress.ip_address(a).version == family
                ]
                if addrs:
                    out.append(
                        {
                            "cluster": name,
                            "region": cl["region"],
                            "zone": ep.get("zone", cl.get("zone")),
                            "name": ep.get("hostname"),
                            "addresses": addrs,
                            "healthy": ep.get("ready", True),
                        }
                    )
        order = list(self.cluster)
        return sorted(out, key=lambda c: order.index(c["cluster"]))  # stable: slice order kept

    def region_order(self, region: str) -> list[str]:
        me = self.regions[region]
        out = [region, *me.get("prefer", [])]
        rest = [n for n in self.regions if n not in out]
        names = list(self.regions)

        def dist(n: str) -> tuple[float, int]:
            other = self.regions[n]
            d = haversine_km(me, other) if "lat" in me and "lat" in other else float("inf")
            return d, names.index(n)

        return out + sorted(rest, key=dist)

    def tiers(
        self, svc: dict, where: tuple[str | None, str | None], family: int | None
    ) -> list[list[dict]]:
        cands = self.candidates(svc, family)
        region, zone = where
        if region is None and zone is None:
            return [cands]
        tiers: list[list[dict]] = []
        used: set[int] = set()

        def take(pred: Callable[[dict], bool]) -> None:
            group = [c for i, c in enumerate(cands) if i not in used and pred(c)]
            used.update(i for i, c in enumerate(cands) if pred(c))
            if group:
                tiers.append(group)

        if zone:
            take(lambda c: c["zone"] == zone)
        if region:
            take(lambda c: c["region"] == region)
            for r in self.region_order(region)[1:]:
                take(lambda c, r=r: c["region"] == r)
        take(lambda c: True)
        return tiers

    def chosen(
        self, svc: dict, where: tuple[str | None, str | None], family: int | None
    ) -> list[dict]:
        tiers = self.tiers(svc, where, family)
        if where == (None, None):
            return [c for c in tiers[0] if c["healthy"]][: self.cap] if tiers else []
        for tier in tiers:
            healthy = [c for c in tier if c["healthy"]]
            if healthy:
                return healthy[: self.cap]
        return []

    def addresses(
        self, svc: dict, where: tuple[str | None, str | None], family: int
    ) -> frozenset[str]:
        return frozenset(a for c in self.chosen(svc, where, family) for a in c["addresses"])

    def varies(self, svc: dict, family: int) -> bool:
        """Whether the answer depends on the locality at all (else SCOPE 0 everywhere)."""
        places = {(None, None)} | {(r[1], r[2]) for r in self.rules}
        return len({self.addresses(svc, w, family) for w in places}) > 1

    def key(self, svc: dict, net: Net, family: int) -> object:
        """What is the same all over a SCOPE block: the answer, or for an unmapped
        private ECS address the block it fell back from (the answer then follows the
        resolver's address, whatever it is)."""
        where, fell = self.place(net)
        if fell is not None and self.varies(svc, family):
            return ("fallback", fell)
        return self.addresses(svc, where, family)

    def srv_groups(self, svc: dict, where: tuple[str | None, str | None]) -> list[set[str]]:
        """SRV targets by priority, lowest first: the chosen tier, then each tier's
        other healthy endpoints."""
        base = f"{svc['name']}.{svc['namespace']}.{self.fed['zone']}"
        chosen = self.chosen(svc, where, None)
        seen = {(c["cluster"], c["name"]) for c in chosen}
        groups = [chosen]
        for tier in self.tiers(svc, where, None):
            rest = [c for c in tier if c["healthy"] and (c["cluster"], c["name"]) not in seen]
            seen.update((c["cluster"], c["name"]) for c in rest)
            groups.append(rest)
        return [{f"{c['name']}.{c['cluster']}.{base}" for c in g} for g in groups if g]

    def boundaries(self, block: Net) -> list[Net]:
        """A /24 (/56) in each stretch of ``block`` where no rule or special block
        starts or ends: between them the longest matching rule cannot change."""
        size = PRIVACY[block.version]
        points = {int(block.network_address)}
        for n in [r[0] for r in self.rules] + SPECIAL:
            if n.version == block.version and n.subnet_of(block) and n != block:  # type: ignore[arg-type]
                points.add(int(n.network_address))
                after = int(n.broadcast_address) + 1
                if after <= int(block.broadcast_address):
                    points.add(after)
        return [ipaddress.ip_network((p, size)) for p in sorted(points)]  # type: ignore[arg-type]


def lookup_net(subnet: str) -> Net:
    """The /24 or /56 whose place fedns gives an ECS subnet: that of its zero-padded
    ADDRESS (rules are never longer, so every address in it has the same place)."""
    net = ipaddress.ip_network(subnet)
    return ipaddress.ip_network((net.network_address, PRIVACY[net.version]), strict=False)


def locality_probes(model: LocalityModel) -> list[str]:
    """ECS subnets to ask with: per rule its first and last /24 (/56), a longer SOURCE
    inside it (/32, /64, /128) and the rule itself as SOURCE (shorter than /24 for most:
    a SCOPE longer than SOURCE where a rule lies inside); and subnets no rule covers,
    public and private."""
    out: list[str] = []
    for net, _, _ in model.rules:
        size = PRIVACY[net.version]
        first = next(net.subnets(new_prefix=size)) if net.prefixlen < size else net
        last = ipaddress.ip_network(
            (
                int(net.broadcast_address)
                >> (net.max_prefixlen - size)
                << (net.max_prefixlen - size),
                size,
            )
        )
        host = ipaddress.ip_address(int(first.network_address) + 7)
        longer = (32,) if net.version == 4 else (64, 128)
        out += [str(first), str(last), str(net)]
        out += [str(ipaddress.ip_network(f"{host}/{n}", strict=False)) for n in longer]
    out += ["8.8.8.0/24", "10.99.0.0/24", "192.168.1.0/24", "100.64.1.0/24"]
    out += ["2001:db8:ffff::/56", "fd99::/56"]
    return list(dict.fromkeys(out))


@pytest.fixture(scope="module")
def locality_guide(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, int, LocalityModel, Path]]:
    """fedns running the guide's example beside the demo zone file; its admin port; the
    model of what it should answer (clients without ECS come from 127.0.0.1)."""
    workdir = tmp_path_factory.mktemp("locality")
    config = workdir / "fedns.yaml"
    config.write_text(guide_blocks("locality.md")["locality-config"])
    shutil.copy(DEMO_ZONE, workdir / DEMO_ZONE.name)
    admin = free_port()
    sp = start_fedns(config, workdir, extra_args=("--admin", f"{LOOPBACK}:{admin}"))
    wait_zone(sp.addr, FED_ORIGIN)
    fed = yaml.safe_load(config.read_text())["federation"]
    yield sp, admin, LocalityModel(fed, LOOPBACK), config
    sp.stop()


def ecs_of(r: dns.message.Message) -> list[dns.edns.ECSOption]:
    return [o for o in r.options if isinstance(o, dns.edns.ECSOption)]


def scope_problems(
    model: LocalityModel, svc: dict, subnet: str, family: int, scope: int
) -> list[str]:
    """Where the SCOPE is not the widest block around the client with one answer."""
    here = lookup_net(subnet)
    want = model.key(svc, here, family)
    limit = PRIVACY[here.version]
    if scope > limit:
        return [f"SCOPE {scope} is longer than /{limit}"]
    block = ipaddress.ip_network((here.network_address, scope), strict=False)
    out = [
        f"{p} in {block} answers otherwise"
        for p in model.boundaries(block)
        if model.key(svc, p, family) != want
    ]
    if scope > 0:
        wider = block.supernet()
        if all(model.key(svc, p, family) == want for p in model.boundaries(wider)):
            out.append(f"the answer holds for all of {wider}: SCOPE {scope} is too narrow")
    return out


def test_locality_answers_and_scopes(
    locality_guide: tuple[ServerProcess, int, LocalityModel, Path],
) -> None:
    sp, _, model, _ = locality_guide
    problems: list[str] = []
    asked = 0
    for svc in model.fed["services"]:
        name = f"{svc['name']}.{svc['namespace']}.{model.fed['zone']}"
        for subnet in locality_probes(model):
            where, _ = model.place(lookup_net(subnet))
            for rdtype, family in (("A", 4), ("AAAA", 6)):
                r = ask(sp.addr, name, rdtype, False, ecs=subnet)
                asked += 1
                want = model.addresses(svc, where, family)
                if addresses(r) != want:
                    problems.append(
                        f"{name} {rdtype} {subnet}: {sorted(addresses(r))}, want {sorted(want)}"
                    )
                echo = ecs_of(r)
                net = ipaddress.ip_network(subnet)
                if [(o.address, o.srclen) for o in echo] != [
                    (str(net.network_address), net.prefixlen)
                ]:
                    problems.append(f"{name} {rdtype} {subnet}: ECS echoed as {echo}")
                    continue
                problems += [
                    f"{name} {rdtype} {subnet}: {p}"
                    for p in scope_problems(model, svc, subnet, family, echo[0].scopelen)
                ]
    assert problems == [], f"{len(problems)} of {asked} answers"


def test_locality_srv_lists_the_tiers(
    locality_guide: tuple[ServerProcess, int, LocalityModel, Path],
) -> None:
    sp, _, model, _ = locality_guide
    for svc in model.fed["services"]:
        for port in svc.get("ports", []):
            name = f"_{port['name']}._{port['protocol'].lower()}.{svc['name']}.{svc['namespace']}.{model.fed['zone']}"
            for subnet in locality_probes(model):
                where, _ = model.place(lookup_net(subnet))
                r = ask(sp.addr, name, "SRV", False, ecs=subnet)
                by_prio: dict[int, set[str]] = {}
                for rrset in r.answer:
                    for rd in rrset:
                        by_prio.setdefault(rd.priority, set()).add(rd.target.to_text())
                got = [by_prio[p] for p in sorted(by_prio)]
                assert got == model.srv_groups(svc, where), f"{name} {subnet}"


def test_locality_without_ecs_uses_the_source_address(
    locality_guide: tuple[ServerProcess, int, LocalityModel, Path],
) -> None:
    """No ECS, or SOURCE 0: the packet's source (127.0.0.1 here) places the client;
    SOURCE 0 gets SCOPE 0 and no ECS gets no option. A SCOPE in a query is FORMERR."""
    sp, _, model, _ = locality_guide
    where = model.place(model.source)[0]
    for svc in model.fed["services"]:
        name = f"{svc['name']}.{svc['namespace']}.{model.fed['zone']}"
        plain = ask(sp.addr, name, "A", False)
        assert addresses(plain) == model.addresses(svc, where, 4) and not ecs_of(plain)
        opted_out = ask(sp.addr, name, "A", False, ecs="0.0.0.0/0")
        assert addresses(opted_out) == model.addresses(svc, where, 4)
        assert [o.scopelen for o in ecs_of(opted_out)] == [0]
    q = dns.message.make_query(
        name, "A", use_edns=0, options=[dns.edns.ECSOption("192.0.2.0", 24, 24)]
    )
    assert dns.query.udp(q, sp.host, port=sp.port, timeout=3.0).rcode() == dns.rcode.FORMERR


def test_locality_explain_shows_the_place(
    locality_guide: tuple[ServerProcess, int, LocalityModel, Path],
) -> None:
    """/v1/explain with a source address (what fedns sees from CoreDNS) names the rule's
    place; ``fedns explain --subnet`` gives what DNS answers, SCOPE included."""
    import json
    import subprocess
    import urllib.parse
    import urllib.request

    sp, admin, model, _ = locality_guide
    svc = model.fed["services"][0]
    name = f"{svc['name']}.{svc['namespace']}.{model.fed['zone']}"
    for net, _, _ in model.rules:
        source = str(net.network_address + 53)
        # A source address is placed by its rule, private or not (no ECS, no fallback).
        rule = model.rule(lookup_net(f"{source}/{net.max_prefixlen}"))
        where = (rule[1], rule[2]) if rule else (None, None)
        url = f"http://{LOOPBACK}:{admin}/v1/explain?" + urllib.parse.urlencode(
            {"name": name, "source": source}
        )
        with urllib.request.urlopen(url, timeout=5) as resp:
            data = json.load(resp)
        assert (data["client"]["from"], data["client"]["region"], data["client"]["zone"]) == (
            "source",
            *where,
        ), source
    for subnet in locality_probes(model)[:3]:
        out = subprocess.run(
            fedns_argv(
                "explain",
                name,
                "--subnet",
                subnet,
                "--server",
                f"http://{LOOPBACK}:{admin}",
                "--json",
            ),
            env=fedns_env(),
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        data = json.loads(out.stdout)
        r = ask(sp.addr, name, "A", False, ecs=subnet)
        assert data["scope"] == ecs_of(r)[0].scopelen
        assert {rr.split()[-1] for rr in data["answer"]} == addresses(r)


@pytest.mark.parametrize("family", [4, 6])
def test_locality_rules_longer_than_the_privacy_limit_are_refused(
    family: int, locality_guide: tuple[ServerProcess, int, LocalityModel, Path], tmp_path: Path
) -> None:
    import subprocess

    _, _, _, config = locality_guide
    doc = yaml.safe_load(config.read_text())
    rules = doc["federation"]["localities"]
    i, rule = next(
        (i, r) for i, r in enumerate(rules) if ipaddress.ip_network(r["cidr"]).version == family
    )
    limit = PRIVACY[family]
    longer = next(ipaddress.ip_network(rule["cidr"]).subnets(new_prefix=limit + 1))
    rules[i] = {**rule, "cidr": str(longer)}
    bad = config.parent / f"longer-{family}.yaml"
    bad.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = subprocess.run(
        fedns_argv("check", "-c", str(bad)),
        env=fedns_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1
    assert f"federation.localities[{i}].cidr: {longer} is longer than /{limit}" in out.stderr


# -- coredns.md ---------------------------------------------------------------------------------------
# CoreDNS is not packaged for these machines and no image can be pulled: the Corefile
# is checked for syntax (tests/corefile.py, written from CoreDNS's sources), not run.


def _lines(text: str) -> list[str]:
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def federated_ttls() -> set[int]:
    """Every TTL the demo config gives federated answers (defaults and per service)."""
    fed = yaml.safe_load(DEMO_CONFIG.read_text())["federation"]
    ttls = {int(fed.get("defaults", {}).get("ttl", 10))}
    ttls |= {int(p["ttl"]) for p in fed.get("policies", {}).values() if "ttl" in p}
    return ttls


def test_coredns_blocks_are_corefiles_that_forward_only_the_zone() -> None:
    from corefile import check_corefile, forwards

    blocks = guide_blocks("coredns.md")
    stub = blocks["corefile-stub"]
    cm = yaml.safe_load(blocks["coredns-configmap"])
    full = cm["data"]["Corefile"]
    assert check_corefile(stub) == []
    assert check_corefile(full) == []
    # The ConfigMap carries the server block exactly as the guide shows it.
    s, f = _lines(stub), _lines(full)
    assert any(f[i : i + len(s)] == s for i in range(len(f))), "the ConfigMap's block differs"
    targets = forwards(stub, FED_ORIGIN)
    assert len(targets) == 1 and len(targets[0]) == 1
    ipaddress.ip_address(targets[0][0])  # fedns's Service ClusterIP, not a name
    assert forwards(full, FED_ORIGIN) == targets
    assert forwards(full, ".") == [["/etc/resolv.conf"]], "the cluster's own block is untouched"


def test_coredns_configmap_is_a_valid_manifest() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate"
    )
    cm = yaml.safe_load(guide_blocks("coredns.md")["coredns-configmap"])
    kubernetes_validate.validate(cm, kubernetes_validate.latest_version(), strict=True)
    assert (cm["kind"], cm["metadata"]["namespace"], cm["metadata"]["name"]) == (
        "ConfigMap", "kube-system", "coredns",
    )  # fmt: skip


def test_coredns_cache_floor_is_below_the_ttls_fedns_serves() -> None:
    """CoreDNS keeps an answer at least MINTTL (5 s by default): the guide's floor must
    be below every federated TTL, for answers and for denials alike."""
    from corefile import parse_corefile

    (block,) = parse_corefile(guide_blocks("coredns.md")["corefile-stub"])
    (cache,) = block.plugin("cache")
    lowest = min(federated_ttls())
    for kind in ("success", "denial"):
        (line,) = cache.sub(kind)
        assert len(line.args) == 3, f"{kind}: the floor (MINTTL) is left at CoreDNS's 5 s"
        assert int(line.args[2]) < lowest, f"{kind} MINTTL {line.args[2]} >= fedns TTL {lowest}"


# -- replicas.md --------------------------------------------------------------------------------------


def test_replicas_config_passes_fedns_check(tmp_path: Path) -> None:
    import subprocess

    config_dir = tmp_path / "config"  # the chart's layout: ../kubeconfigs beside it
    config_dir.mkdir()
    config = config_dir / "fedns.yaml"
    config.write_text(guide_blocks("replicas.md")["replicas-config"])
    shutil.copy(DEMO_ZONE, config_dir / DEMO_ZONE.name)
    out = subprocess.run(
        fedns_argv("check", "-c", str(config)),
        env=fedns_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    clusters = yaml.safe_load(config.read_text())["federation"]["clusters"]
    watched = sum(1 for c in clusters if c.get("kubeconfig") or c.get("in_cluster"))
    assert len(clusters) == 3 and watched == 3
    assert f"{len(clusters)} clusters ({watched} watched, 0 static)" in out.stdout


def test_replicas_manifests_are_valid() -> None:
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate"
    )
    pdb = yaml.safe_load(guide_blocks("replicas.md")["replicas-pdb"])
    kubernetes_validate.validate(pdb, kubernetes_validate.latest_version(), strict=True)
    assert pdb["kind"] == "PodDisruptionBudget" and pdb["spec"]["maxUnavailable"] == 1


REPLICA_CLUSTERS = {"east": "127.1.0.1", "west": "127.2.0.1", "eu": "127.3.0.1"}
HTTPS = (("https", 443, "TCP"),)


def _wait(ok: Callable[[], bool], what: str, within: float = 15.0) -> None:
    end = time.monotonic() + within
    while not ok():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def _reads_of_one_replica(log: list[dict[str, Any]]) -> list[str]:
    """What is wrong with one replica's requests to one API server: anything but a
    GET, anything but one list per resource from the watch cache, no watch."""
    problems = [f"{r['method']} {r['path']}" for r in log if r["method"] != "GET"]
    lists, watches = [], []
    for r in log:
        if str(r["path"]).endswith(("/services", "/endpointslices")):
            watching = r["query"].get("watch") in ("true", "True", "1")
            (watches if watching else lists).append(r)
    if sorted(str(r["path"]).rsplit("/", 1)[1] for r in lists) != ["endpointslices", "services"]:
        problems.append(f"lists: {[r['path'] for r in lists]}")
    problems += [
        f"list not from the watch cache: {r['query']}"
        for r in lists
        if r["query"].get("resourceVersion") != "0"
    ]
    if {str(r["path"]).rsplit("/", 1)[1] for r in watches} != {"endpointslices", "services"}:
        problems.append(f"watches: {[r['path'] for r in watches]}")
    return problems


def test_two_replicas_watch_every_cluster_read_only_and_agree(tmp_path: Path) -> None:
    """Two fedns replicas with one config, three (fake) member API servers: each replica
    makes only GETs, lists each resource of each cluster once (resourceVersion=0, from
    the watch cache) and holds one watch per resource; their replies are the same
    bytes, the ID aside, with and without ECS."""
    from dnsclient import udp_raw
    from fakekube import ThreadedFakeKubes, endpoint, federation_config
    from servers import FED_ZONE, write_config

    with ThreadedFakeKubes(list(REPLICA_CLUSTERS)) as fakes:
        for cluster, addr in REPLICA_CLUSTERS.items():
            kube = fakes[cluster]
            fakes.call(lambda k=kube: k.put_service("shop", "cart", ports=HTTPS))
            fakes.call(
                lambda k=kube, c=cluster, a=addr: k.put_slice(
                    "shop", f"cart-{c}", "cart", [endpoint(a, pod="cart-0")], ports=HTTPS
                )
            )
        fed = federation_config(fakes.kubes, tmp_path)
        fed["localities"] = [
            {"cidr": f"198.51.{i}.0/24", "region": c["region"]}
            for i, c in enumerate(fed["clusters"])
        ]
        config = write_config(tmp_path, {FED_ORIGIN: FED_ZONE}, {"federation": fed})
        cart = f"cart.shop.{FED_ORIGIN}"
        everyone = set(REPLICA_CLUSTERS.values())
        replicas: list[ServerProcess] = []
        try:
            for n in range(1, 3):
                marks = {
                    c: fakes.call(lambda k=k: len(k.request_log)) for c, k in fakes.kubes.items()
                }
                sp = start_fedns(config, tmp_path / f"replica{n}")
                replicas.append(sp)
                for c, k in fakes.kubes.items():
                    # Two watched resources per replica.
                    _wait(lambda k=k, n=n: fakes.call(k.open_watches) >= 2 * n, f"{c} watches")
                _wait(lambda sp=sp: addresses(ask(sp.addr, cart, "A", False)) == everyone, "sync")
                for c, k in fakes.kubes.items():
                    log = fakes.call(lambda k=k, m=marks[c]: list(k.request_log[m:]))
                    assert _reads_of_one_replica(log) == [], (n, c)
            questions = [(cart, t) for t in ("A", "AAAA", "TXT")]
            questions += [(f"{c}.{cart}", "A") for c in REPLICA_CLUSTERS]
            questions += [(f"_https._tcp.{cart}", "SRV"), (f"nx.{FED_ORIGIN}", "A")]
            subnets = [None, *(r["cidr"] for r in fed["localities"]), "192.0.2.0/24"]
            seen = set()
            for name, rdtype in questions:
                for subnet in subnets:
                    opts = [] if subnet is None else [dns.edns.ECSOption(subnet.split("/")[0], 24)]
                    q = dns.message.make_query(name, rdtype, use_edns=0, options=opts)
                    q.flags &= ~dns.flags.RD
                    replies = [udp_raw(sp.addr, q.to_wire()) for sp in replicas]
                    assert all(replies) and len({r[2:] for r in replies if r}) == 1, (name, subnet)
                    seen.add(replies[0])
            assert len({addresses(dns.message.from_wire(r)) for r in seen if r}) > 2, "answers vary"
        finally:
            for sp in replicas:
                sp.stop()
