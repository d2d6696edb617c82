"""Routing policies with live health changes: a real fedns fed by fake Kubernetes API servers.

Three fake API servers (``tests/fakekube.py``), one per cluster (east in
us-east, west in us-west, eu in eu-west), each with its own kubeconfig named
in the fedns config; fedns watches them with the unmodified
kubernetes-asyncio client. Readiness is flipped by rewriting EndpointSlices
on a fake server, and the test polls fedns over UDP, with a bounded
deadline, until the answer changes (no sleeps as assertions).

Clients are placed with ECS subnets against ``LOCALITIES``. Expected answers
are derived here from the same inputs: the nearest region comes from a
haversine written in this file over ``REGIONS`` (and ``prefer``), weights
from ``policies``; nothing is copied from fedns's own output.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import yaml
from dnsclient import make
from fakekube import FakeKube, endpoint, write_kubeconfig
from servers import FED_ORIGIN, FED_ZONE, FednsFactory, ServerProcess, free_port

ORIGIN, ZONE = FED_ORIGIN, FED_ZONE

CLUSTERS = {
    "east": ("us-east", "us-east-1a"),
    "west": ("us-west", "us-west-2a"),
    "eu": ("eu-west", "eu-west-1a"),
}
CLUSTER_WEIGHTS = {"east": 200, "west": 100, "eu": 100}

# name -> (lat, lon, prefer)
REGIONS: dict[str, tuple[float, float, tuple[str, ...]]] = {
    "us-east": (39.0, -77.5, ()),
    "us-west": (45.6, -121.2, ()),
    "eu-west": (53.3, -6.3, ()),
    "us-central": (41.2, -95.9, ()),  # no cluster here: the nearest region answers
    "ap-southeast": (1.35, 103.8, ()),
    "ap-northeast": (35.7, 139.7, ("eu-west",)),  # explicit preference beats distance
}

# Client subnets (ECS) -> (region, zone).
LOCALITIES: dict[str, tuple[str, str | None]] = {
    "10.1.0.0/16": ("us-east", "us-east-1a"),
    "10.12.0.0/16": ("us-east", "us-east-1b"),
    "10.2.0.0/16": ("us-west", "us-west-2a"),
    "10.3.0.0/16": ("eu-west", "eu-west-1a"),
    "10.4.0.0/16": ("us-central", None),
    "10.5.0.0/16": ("ap-southeast", None),
    "10.6.0.0/16": ("ap-northeast", None),
}
CLIENT = {  # one /24 per locality, for queries
    "us-east-1a": "10.1.7.0/24",
    "us-east-1b": "10.12.7.0/24",
    "us-west": "10.2.7.0/24",
    "eu-west": "10.3.7.0/24",
    "us-central": "10.4.7.0/24",
    "ap-southeast": "10.5.7.0/24",
    "ap-northeast": "10.6.7.0/24",
}


# -- the expected side: distances and region order, written independently -------------


def km(a: str, b: str) -> float:
    """Great-circle distance (haversine, mean Earth radius 6371 km)."""
    (la1, lo1, _), (la2, lo2, _) = REGIONS[a], REGIONS[b]
    p1, p2 = math.radians(la1), math.radians(la2)
    dp, dl = p2 - p1, math.radians(lo2 - lo1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def nearest_with_clusters(region: str, exclude: frozenset[str] = frozenset()) -> str:
    """The region with a cluster that a client in ``region`` should be sent to:
    its own, then its ``prefer`` list, then the nearest by distance."""
    have = {r for r, _ in CLUSTERS.values()} - exclude
    if region in have:
        return region
    for p in REGIONS[region][2]:
        if p in have:
            return p
    return min(have, key=lambda r: km(region, r))


def cluster_in(region: str) -> str:
    return next(c for c, (r, _) in CLUSTERS.items() if r == region)


# -- the world in the fake API servers ----------------------------------------------------


@dataclass
class Ep:
    host: str
    v4: str | None
    zone: str
    v6: str | None = None
    ready: bool = True


@dataclass
class Svc:
    namespace: str
    name: str
    endpoints: dict[str, list[Ep]]  # cluster -> endpoints
    annotations: dict[str, str] = field(default_factory=dict)
    ports: tuple[tuple[str, int, str], ...] = (("https", 8443, "TCP"),)

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{self.namespace}.{ORIGIN}"


def publish(kube: FakeKube, svc: Svc, cluster: str) -> None:
    """The Service and its EndpointSlices (one per address family, as Kubernetes
    splits a dual-stack Service; the pod name joins the halves)."""
    kube.put_service(
        svc.namespace,
        svc.name,
        ports=[(n, 443, p) for n, _, p in svc.ports],
        annotations=svc.annotations or None,
    )
    eps = svc.endpoints.get(cluster, [])
    for fam, attr in (("IPv4", "v4"), ("IPv6", "v6")):
        members = [
            endpoint(
                getattr(e, attr),
                ready=e.ready,
                hostname=e.host,
                zone=e.zone,
                pod=f"{svc.name}-{e.host}",
            )
            for e in eps
            if getattr(e, attr)
        ]
        if members or fam == "IPv4":
            kube.put_slice(
                svc.namespace,
                f"{svc.name}-{fam.lower()}",
                svc.name,
                members,
                ports=list(svc.ports),
                address_type=fam,
            )


@dataclass
class World:
    """A running fedns and the fake API servers feeding it."""

    server: ServerProcess
    kubes: dict[str, FakeKube]
    services: dict[str, Svc]
    admin: str

    @property
    def addr(self) -> tuple[str, int]:
        return self.server.addr

    def set_ready(self, svc: str, cluster: str, ready: bool, hosts: set[str] | None = None) -> None:
        s = self.services[svc]
        s.endpoints[cluster] = [
            replace(e, ready=ready) if hosts is None or e.host in hosts else e
            for e in s.endpoints[cluster]
        ]
        publish(self.kubes[cluster], s, cluster)

    async def query(
        self, name: str, qtype: str = "A", subnet: str | None = None
    ) -> dns.message.Message:
        opts = []
        if subnet is not None:
            n = ipaddress.ip_network(subnet)
            opts.append(dns.edns.ECSOption(str(n.network_address), n.prefixlen))
        q = make(name, qtype, edns=0, options=opts)
        return await dns.asyncquery.udp(q, self.addr[0], port=self.addr[1], timeout=3.0)

    async def addrs(self, svc: str, subnet: str | None, qtype: str = "A") -> frozenset[str]:
        r = await self.query(self.services[svc].fqdn, qtype, subnet)
        return frozenset(
            rd.to_text()
            for rrset in r.answer
            for rd in rrset
            if rrset.rdtype == dns.rdatatype.from_text(qtype)
        )


def config(
    tmp: Path,
    kubes: dict[str, FakeKube],
    policies: dict[str, Any],
    defaults: dict[str, Any] | None = None,
) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    clusters = []
    for name, kube in kubes.items():
        kc = write_kubeconfig(tmp / f"{name}.kubeconfig", {name: kube.url})
        region, zone = CLUSTERS[name]
        clusters.append(
            {
                "name": name,
                "kubeconfig": kc.name,
                "region": region,
                "zone": zone,
                "weight": CLUSTER_WEIGHTS[name],
            }
        )
    (tmp / "zone.db").write_text(ZONE)
    doc = {
        "zones": [{"origin": ORIGIN, "file": "zone.db"}],
        "federation": {
            "zone": ORIGIN,
            "clusters": clusters,
            "regions": [
                {"name": n, "lat": la, "lon": lo, **({"prefer": list(p)} if p else {})}
                for n, (la, lo, p) in REGIONS.items()
            ],
            "localities": [
                {"cidr": c, "region": r, **({"zone": z} if z else {})}
                for c, (r, z) in LOCALITIES.items()
            ],
            "defaults": {"policy": "locality", "ttl": 7, **(defaults or {})},
            "policies": policies,
        },
    }
    path = tmp / "fedns.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.asynccontextmanager
async def world(
    fedns_server: FednsFactory,
    tmp: Path,
    services: list[Svc],
    policies: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
) -> AsyncIterator[World]:
    kubes = {n: await FakeKube(n).start() for n in CLUSTERS}
    try:
        for svc in services:
            for cluster in svc.endpoints:
                publish(kubes[cluster], svc, cluster)
        cfg = config(tmp, kubes, policies or {}, defaults)
        admin = f"127.0.0.1:{free_port()}"
        # Started from a thread: this loop must keep serving the fake API servers meanwhile.
        sp = await asyncio.to_thread(fedns_server, cfg, extra_args=("--admin", admin))
        w = World(sp, kubes, {s.name: s for s in services}, f"http://{admin}")
        # Synced when every service answers something for someone.
        for s in services:
            await until(
                lambda s=s: w.query(s.fqdn),
                lambda r: r.rcode() == dns.rcode.NOERROR,
                f"{s.fqdn} answers",
            )
        yield w
    finally:
        # fedns first, so it does not log the fake servers going away.
        for sp in getattr(fedns_server, "started", []):
            await asyncio.to_thread(sp.stop)
        for k in kubes.values():
            await k.close()


async def until(
    probe: Callable[[], Awaitable[Any]],
    ok: Callable[[Any], bool] | Any,
    what: str = "",
    deadline_s: float = 10.0,
) -> Any:
    """Poll ``probe`` until ``ok(result)`` (or result == ok) within the deadline."""
    check = ok if callable(ok) else (lambda v: v == ok)
    end = time.monotonic() + deadline_s
    last: Any = None
    while True:
        last = await probe()
        if check(last):
            return last
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline_s}s: {what or ok!r}; last: {last!r}")
        await asyncio.sleep(0.02)


def scope_of(r: dns.message.Message) -> int | None:
    for o in r.options:
        if isinstance(o, dns.edns.ECSOption):
            return int(o.scopelen)
    return None


# -- services ---------------------------------------------------------------------------------


def cart() -> Svc:
    """Locality (default policy); dual-stack in east and west; two zones in us-east."""
    return Svc(
        "shop",
        "cart",
        {
            "east": [
                Ep("cart-a", "127.1.0.1", "us-east-1a", v6="fd00:1::1"),
                Ep("cart-b", "127.1.0.2", "us-east-1b", v6="fd00:1::2"),
            ],
            "west": [Ep("cart-a", "127.2.0.1", "us-west-2a", v6="fd00:2::1")],
            "eu": [Ep("cart-a", "127.3.0.1", "eu-west-1a")],
        },
    )


def addrs_in(svc: Svc, cluster: str, zone: str | None = None, family: str = "v4") -> frozenset[str]:
    return frozenset(
        getattr(e, family)
        for e in svc.endpoints[cluster]
        if e.ready and getattr(e, family) and (zone is None or e.zone == zone)
    )


# -- locality ---------------------------------------------------------------------------------


async def test_locality_nearest_tier_and_failover(
    fedns_server: FednsFactory, tmp_path: Path
) -> None:
    svc = cart()
    async with world(fedns_server, tmp_path, [svc]) as w:
        # Same zone first.
        assert await w.addrs("cart", CLIENT["us-east-1a"]) == addrs_in(svc, "east", "us-east-1a")
        assert await w.addrs("cart", CLIENT["us-east-1b"]) == addrs_in(svc, "east", "us-east-1b")
        assert await w.addrs("cart", CLIENT["us-west"]) == addrs_in(svc, "west")
        assert await w.addrs("cart", CLIENT["eu-west"]) == addrs_in(svc, "eu")
        # No cluster in the client's region: the nearest region by coordinates.
        for where in ("us-central", "ap-southeast"):
            near = cluster_in(nearest_with_clusters(where))
            assert await w.addrs("cart", CLIENT[where]) == addrs_in(svc, near), where
        # ap-northeast prefers eu-west although us-west is nearer: preference wins.
        assert (
            min(("us-east", "us-west", "eu-west"), key=lambda r: km("ap-northeast", r)) == "us-west"
        )
        assert await w.addrs("cart", CLIENT["ap-northeast"]) == addrs_in(svc, "eu")
        # AAAA from the same (dual-stack) endpoints.
        assert await w.addrs("cart", CLIENT["us-east-1a"], "AAAA") == addrs_in(
            svc, "east", "us-east-1a", "v6"
        )
        assert await w.addrs("cart", CLIENT["us-west"], "AAAA") == addrs_in(svc, "west", None, "v6")

        # The zone's only endpoint goes not-ready: the same region's other zone answers.
        w.set_ready("cart", "east", False, {"cart-a"})
        await until(
            lambda: w.addrs("cart", CLIENT["us-east-1a"]),
            addrs_in(svc, "east", "us-east-1b"),
            "us-east-1a falls back to us-east-1b",
        )
        # The whole region goes: the nearest other region with a cluster.
        w.set_ready("cart", "east", False)
        nxt = cluster_in(nearest_with_clusters("us-east", exclude=frozenset({"us-east"})))
        await until(
            lambda: w.addrs("cart", CLIENT["us-east-1a"]),
            addrs_in(svc, nxt),
            f"us-east falls over to {nxt}",
        )
        assert await w.addrs("cart", CLIENT["us-central"]) == addrs_in(svc, nxt)
        # Recovery: back to the nearest tier.
        w.set_ready("cart", "east", True)
        await until(
            lambda: w.addrs("cart", CLIENT["us-east-1a"]),
            addrs_in(svc, "east", "us-east-1a"),
            "us-east-1a recovers",
        )
        assert await w.addrs("cart", CLIENT["us-east-1b"]) == addrs_in(svc, "east", "us-east-1b")


async def test_min_healthy_fraction_spills_over(fedns_server: FednsFactory, tmp_path: Path) -> None:
    a = [Ep(f"a{i}", f"127.1.1.{i}", "us-east-1a") for i in range(1, 5)]
    b = [Ep(f"b{i}", f"127.1.2.{i}", "us-east-1b") for i in range(1, 3)]
    svc = Svc("shop", "spill", {"east": a + b, "west": [Ep("w", "127.2.1.1", "us-west-2a")]})
    pol = {"shop/spill": {"min_healthy_fraction": 0.5}}
    async with world(fedns_server, tmp_path, [svc], pol) as w:
        client = CLIENT["us-east-1a"]
        assert await w.addrs("spill", client) == addrs_in(svc, "east", "us-east-1a")
        # 2 of 4 healthy is not below 50 %: the zone still answers alone.
        w.set_ready("spill", "east", False, {"a1", "a2"})
        await until(
            lambda: w.addrs("spill", client), addrs_in(svc, "east", "us-east-1a"), "2/4 healthy"
        )
        assert len(addrs_in(svc, "east", "us-east-1a")) == 2
        # 1 of 4 is below: the next tier (same region, other zone) is added.
        w.set_ready("spill", "east", False, {"a3"})
        want = addrs_in(svc, "east", "us-east-1a") | addrs_in(svc, "east", "us-east-1b")
        await until(lambda: w.addrs("spill", client), want, "spill-over into us-east-1b")
        assert len(want) == 3
        # Recovery: back to the zone alone.
        w.set_ready("spill", "east", True)
        await until(
            lambda: w.addrs("spill", client), addrs_in(svc, "east", "us-east-1a"), "recovered"
        )


# -- failover -----------------------------------------------------------------------------------


def three(name: str, last: int, annotations: dict[str, str] | None = None) -> Svc:
    return Svc(
        "shop",
        name,
        {
            c: [Ep("x", f"127.{i}.0.{last}", CLUSTERS[c][1])]
            for i, c in ((1, "east"), (2, "west"), (3, "eu"))
        },
        annotations or {},
    )


async def test_failover_policy_from_config_and_annotations(
    fedns_server: FednsFactory, tmp_path: Path
) -> None:
    checkout = three("checkout", 10)  # policy from the config's `policies:`
    billing = three(
        "billing",
        11,
        {"fedns.io/policy": "failover", "fedns.io/failover": "eu,west,east", "fedns.io/ttl": "4"},
    )
    pol = {"shop/checkout": {"policy": "failover", "failover": ["west", "east", "eu"], "ttl": 3}}
    async with world(fedns_server, tmp_path, [checkout, billing], pol) as w:
        for name, order in (
            ("checkout", ["west", "east", "eu"]),
            ("billing", ["eu", "west", "east"]),
        ):
            svc = w.services[name]
            # Every client, wherever it is, gets the first cluster of the list.
            for where in ("us-east-1a", "us-west", "eu-west", "ap-southeast"):
                assert await w.addrs(name, CLIENT[where]) == addrs_in(svc, order[0]), (name, where)
            r = await w.query(svc.fqdn, "A", CLIENT["us-east-1a"])
            assert scope_of(r) == 0, "a failover answer does not depend on the client"
            w.set_ready(name, order[0], False)
            await until(
                lambda n=name: w.addrs(n, CLIENT["us-east-1a"]),
                addrs_in(svc, order[1]),
                f"{name}: {order[0]} -> {order[1]}",
            )
            w.set_ready(name, order[1], False)
            await until(
                lambda n=name: w.addrs(n, CLIENT["us-east-1a"]),
                addrs_in(svc, order[2]),
                f"{name}: {order[1]} -> {order[2]}",
            )
            w.set_ready(name, order[0], True)
            await until(
                lambda n=name: w.addrs(n, CLIENT["eu-west"]),
                addrs_in(svc, order[0]),
                f"{name}: back to {order[0]}",
            )
        # TTLs: config policy 3, annotation 4.
        for name, ttl in (("checkout", 3), ("billing", 4)):
            r = await w.query(w.services[name].fqdn, "A", CLIENT["us-west"])
            assert [rr.ttl for rr in r.answer] == [ttl], name


# -- weighted -----------------------------------------------------------------------------------


def v6_subnets(n: int) -> list[str]:
    """``n`` distinct /56 client subnets in the IPv6 documentation range."""
    return [str(ipaddress.IPv6Network((0x20010DB8 << 96 | i << 72, 56))) for i in range(1, n + 1)]


async def test_weighted_shares_and_stickiness(fedns_server: FednsFactory, tmp_path: Path) -> None:
    weights = {"east": 3, "west": 1, "eu": 1}
    ads = three("ads", 20)
    pol = {"shop/ads": {"policy": "weighted", "weights": weights}}
    async with world(fedns_server, tmp_path, [ads], pol) as w:
        owner = {next(iter(addrs_in(ads, c))): c for c in CLUSTERS}
        subnets = v6_subnets(2000)

        async def tally() -> tuple[Counter[str], dict[str, str]]:
            sem = asyncio.Semaphore(32)

            async def one(s: str) -> tuple[str, str]:
                async with sem:
                    got = await w.addrs("ads", s)
                assert len(got) == 1, (s, got)
                return s, owner[next(iter(got))]

            picks = dict(await asyncio.gather(*(one(s) for s in subnets)))
            return Counter(picks.values()), picks

        counts, picks = await tally()
        total = sum(weights.values())
        for c, wt in weights.items():
            share = counts[c] / len(subnets)
            # Binomial sd at n=2000 is about 1.1 %; 5 points is > 4 sd.
            assert abs(share - wt / total) < 0.05, (c, share, counts)
        # One subnet keeps its cluster across queries.
        s = subnets[0]
        seen = {owner[next(iter(await w.addrs("ads", s)))] for _ in range(20)}
        assert seen == {picks[s]}
        # The reply's SCOPE is the subnet the choice hashed: the whole /56.
        r = await w.query(ads.fqdn, "A", s)
        assert scope_of(r) == 56
        # A cluster goes down: only its clients move.
        east_client = next(x for x in subnets if picks[x] == "east")
        w.set_ready("ads", "east", False)
        await until(
            lambda: w.addrs("ads", east_client),
            lambda a: len(a) == 1 and owner[next(iter(a))] != "east",
            "east drained",
        )
        counts2, picks2 = await tally()
        assert counts2["east"] == 0
        assert all(picks2[x] == picks[x] for x in subnets if picks[x] != "east"), (
            "non-east clients moved"
        )


# -- all, fail-open, fail-closed, caps, TTL -----------------------------------------------------


async def test_all_fail_open_fail_closed_and_caps(
    fedns_server: FednsFactory, tmp_path: Path
) -> None:
    everyone = three("search", 30)
    dead = Svc(
        "shop",
        "dead",
        {
            c: [Ep("x", f"127.{i}.0.40", CLUSTERS[c][1], ready=False)]
            for i, c in ((1, "east"), (2, "west"))
        },
    )
    closed = Svc(
        "shop",
        "closed",
        {c: [Ep("x", f"127.{i}.0.50", CLUSTERS[c][1])] for i, c in ((1, "east"), (2, "west"))},
    )
    many = Svc(
        "shop", "many", {"east": [Ep(f"m{i}", f"127.1.3.{i}", "us-east-1a") for i in range(1, 7)]}
    )
    pol = {
        "shop/search": {"policy": "all"},
        "shop/closed": {"fail_open": False},
        "shop/many": {"max_answers": 3},
    }
    async with world(fedns_server, tmp_path, [everyone, dead, closed, many], pol) as w:
        every = frozenset().union(*(addrs_in(everyone, c) for c in CLUSTERS))
        for where in ("us-east-1a", "eu-west"):
            assert await w.addrs("search", CLIENT[where]) == every
        w.set_ready("search", "west", False)
        await until(
            lambda: w.addrs("search", CLIENT["us-east-1a"]),
            every - {"127.2.0.30"},
            "all: the unhealthy endpoint leaves",
        )

        # Nothing healthy anywhere: fail-open answers with every endpoint (TTL from defaults).
        r = await w.query(dead.fqdn, "A", CLIENT["us-east-1a"])
        assert {rd.to_text() for rrset in r.answer for rd in rrset} == {"127.1.0.40", "127.2.0.40"}
        assert [rr.ttl for rr in r.answer] == [7]

        # fail_open: false: NODATA (NOERROR, no answer, the SOA for negative caching).
        w.set_ready("closed", "east", False)
        w.set_ready("closed", "west", False)

        async def closed_reply() -> dns.message.Message:
            return await w.query(closed.fqdn, "A", CLIENT["us-east-1a"])

        r = await until(closed_reply, lambda m: not m.answer, "fail-closed NODATA")
        assert r.rcode() == dns.rcode.NOERROR
        assert [rr.rdtype for rr in r.authority] == [dns.rdatatype.SOA]
        w.set_ready("closed", "west", True)
        await until(
            lambda: w.addrs("closed", CLIENT["us-east-1a"]),
            frozenset({"127.2.0.50"}),
            "fail-closed service recovers",
        )

        # max_answers caps the answer at 3 of the 6 healthy endpoints.
        got = await w.addrs("many", CLIENT["us-east-1a"])
        assert len(got) == 3 and got <= addrs_in(many, "east")


# -- SRV ---------------------------------------------------------------------------------------


def srv_records(r: dns.message.Message) -> list[tuple[int, int, int, str]]:
    return sorted(
        (rd.priority, rd.weight, rd.port, rd.target.to_text().lower())
        for rrset in r.answer
        if rrset.rdtype == dns.rdatatype.SRV
        for rd in rrset
    )


async def test_srv_priorities_follow_tiers_and_weights(
    fedns_server: FednsFactory, tmp_path: Path
) -> None:
    svc = cart()
    everyone = Svc(
        "shop",
        "search",
        {
            "east": [Ep("e1", "127.1.0.31", "us-east-1a"), Ep("e2", "127.1.0.32", "us-east-1a")],
            "west": [Ep("w1", "127.2.0.31", "us-west-2a")],
            "eu": [Ep("u1", "127.3.0.31", "eu-west-1a")],
        },
    )
    pol = {"shop/search": {"policy": "all"}}
    async with world(fedns_server, tmp_path, [svc, everyone], pol) as w:
        # A client in us-east-1a: its zone, then its region, then regions nearest first.
        r = await w.query(f"_https._tcp.{svc.fqdn}", "SRV", CLIENT["us-east-1a"])
        recs = srv_records(r)
        assert recs and all(port == 8443 for _, _, port, _ in recs)
        by_prio: dict[int, set[str]] = {}
        for prio, _w, _p, target in recs:
            by_prio.setdefault(prio, set()).add(target)
        tiers = [by_prio[p] for p in sorted(by_prio)]
        others = sorted(("us-west", "eu-west"), key=lambda r: km("us-east", r))
        want = [{f"cart-a.east.{svc.fqdn}"}, {f"cart-b.east.{svc.fqdn}"}] + [
            {f"cart-a.{cluster_in(r)}.{svc.fqdn}"} for r in others
        ]
        assert tiers == want
        # Every target resolves to that endpoint's addresses.
        for cluster, eps in svc.endpoints.items():
            for e in eps:
                a = await w.query(f"{e.host}.{cluster}.{svc.fqdn}", "A")
                assert {rd.to_text() for rrset in a.answer for rd in rrset} == {e.v4}
        # A tier's weights split the traffic by cluster weight (east 200 : west 100 : eu 100).
        r = await w.query(f"_https._tcp.{everyone.fqdn}", "SRV", CLIENT["us-west"])
        recs = srv_records(r)
        assert len({p for p, *_ in recs}) == 1, "policy all: one tier"
        per_cluster: Counter[str] = Counter()
        for _p, weight, _port, target in recs:
            per_cluster[target.split(".")[1]] += weight
        total = sum(per_cluster.values())
        wsum = sum(CLUSTER_WEIGHTS.values())
        for c, wt in CLUSTER_WEIGHTS.items():
            assert abs(per_cluster[c] / total - wt / wsum) < 0.02, (per_cluster, c)
        # SRV TTL from the config defaults.
        assert [rr.ttl for rr in r.answer] == [7]


async def test_each_family_routes_on_its_own(fedns_server: FednsFactory, tmp_path: Path) -> None:
    """A cluster with IPv6 endpoints only does not take IPv4 clients into a void:
    A answers from the nearest tier that has IPv4 addresses, AAAA from the nearest
    with IPv6 (a single-stack cluster is common during a migration)."""
    svc = Svc(
        "shop",
        "mixed",
        {
            "east": [Ep("six", None, "us-east-1a", v6="fd00:1::30")],
            "west": [Ep("four", "127.2.0.30", "us-west-2a")],
        },
    )
    async with world(fedns_server, tmp_path, [svc]) as w:
        client = CLIENT["us-east-1a"]
        assert await w.addrs("mixed", client, "AAAA") == {"fd00:1::30"}
        assert await w.addrs("mixed", client, "A") == {"127.2.0.30"}
        # And the other way round for a client in us-west.
        assert await w.addrs("mixed", CLIENT["us-west"], "A") == {"127.2.0.30"}
        assert await w.addrs("mixed", CLIENT["us-west"], "AAAA") == {"fd00:1::30"}
        # Each reply's SCOPE is that of its own answer: the A answer is the same for
        # every client (one cluster has IPv4), so SCOPE 0.
        r = await w.query(svc.fqdn, "A", client)
        assert scope_of(r) == 0
