"""Unit tests of resolver/federation/policy.py ``decide``: which endpoints answer.

Hand-built candidates and clients for each policy kind. The expected choices
follow the policies as the module documents them (tiers, spill-over below
``min_healthy_fraction``, failover order, fail-open); for ``weighted`` the
properties of weighted rendezvous hashing are checked over many client
subnets: stickiness, shares proportional to the weights, and minimal movement
when a weight or a cluster's health changes. ``policy_fields`` error messages
are deliberately not tested here. No sockets, no processes.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import pytest

from resolver.federation.policy import POLICIES, Candidate, Client, Decision, Policy, decide

# Regions nearest first, from each region (what a RegionGraph would say).
NEAREST = {
    "us-east": ("us-east", "us-west", "eu-west", "ap-south"),
    "us-west": ("us-west", "us-east", "ap-south", "eu-west"),
    "eu-west": ("eu-west", "us-east", "us-west", "ap-south"),
}


def nearest(region: str | None) -> Sequence[str]:
    return NEAREST.get(region or "", ())


def no_order(region: str | None) -> Sequence[str]:
    return ()


_seq = iter(range(1, 1 << 20))


def cand(
    cluster: str,
    region: str,
    zone: str,
    healthy: bool = True,
    weight: int = 100,
    name: str | None = None,
) -> Candidate:
    n = next(_seq)
    return Candidate(
        cluster=cluster,
        region=region,
        zone=zone,
        name=name or f"ep{n}",
        v4=(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}",),
        v6=(),
        healthy=healthy,
        health_reason="ready" if healthy else "not ready",
        weight=weight,
    )


def names(cs: Sequence[Candidate]) -> set[str]:
    return {c.name for c in cs}


def healthy(cs: Sequence[Candidate]) -> list[Candidate]:
    return [c for c in cs if c.healthy]


class World:
    """Four regions; us-east has two zones. Two endpoints per zone."""

    def __init__(self) -> None:
        self.e1a = [cand("east", "us-east", "us-east-1a") for _ in range(2)]
        self.e1b = [cand("east", "us-east", "us-east-1b") for _ in range(2)]
        self.west = [cand("west", "us-west", "us-west-2a") for _ in range(2)]
        self.eu = [cand("eu", "eu-west", "eu-west-1a") for _ in range(2)]
        self.ap = [cand("ap", "ap-south", "ap-south-1a") for _ in range(2)]

    def all(self) -> list[Candidate]:
        return [*self.e1a, *self.e1b, *self.west, *self.eu, *self.ap]

    def down(self, *groups: list[Candidate]) -> list[Candidate]:
        dead = {c.name for g in groups for c in g}
        return [replace(c, healthy=False) if c.name in dead else c for c in self.all()]


CLIENT_1A = Client("us-east", "us-east-1a", b"\x01")
LOCALITY = Policy(kind="locality")


# -- nothing to choose from ------------------------------------------------------


@pytest.mark.parametrize("kind", POLICIES)
def test_no_candidates_is_empty(kind: str) -> None:
    d = decide(Policy(kind=kind), [], CLIENT_1A, nearest)  # type: ignore[arg-type]
    assert d.empty and d.chosen == ()


@pytest.mark.parametrize("kind", POLICIES)
@pytest.mark.parametrize("fail_open", [True, False])
def test_nothing_healthy_fail_open_or_closed(kind: str, fail_open: bool) -> None:
    w = World()
    cands = [replace(c, healthy=False) for c in w.all()]
    pol = Policy(
        kind=kind,
        fail_open=fail_open,
        max_answers=64,  # type: ignore[arg-type]
        failover=("west", "east"),
        weights=(("east", 1), ("west", 1)),
    )
    d = decide(pol, cands, CLIENT_1A, nearest)
    if fail_open:
        # Every endpoint: a client that retries is better off than one told the service is gone.
        assert not d.empty
        assert names(d.chosen) == names(cands)
    else:
        assert d.empty and d.chosen == ()
    assert d.depends_on == "nothing"  # the same for every client


def test_fail_open_respects_max_answers() -> None:
    cands = [replace(c, healthy=False) for c in World().all()]
    d = decide(Policy(max_answers=3), cands, CLIENT_1A, nearest)
    assert len(d.chosen) == 3
    assert names(d.chosen) <= names(cands)


# -- locality ---------------------------------------------------------------------


def test_same_zone_first() -> None:
    w = World()
    d = decide(LOCALITY, w.all(), CLIENT_1A, nearest)
    assert names(d.chosen) == names(w.e1a)
    assert d.depends_on == "locality"
    # The tiers: same zone, rest of the region, then the other regions nearest first.
    assert [names(t) for t in d.tiers] == [
        names(w.e1a),
        names(w.e1b),
        names(w.west),
        names(w.eu),
        names(w.ap),
    ]


def test_same_region_when_the_zone_is_down() -> None:
    w = World()
    d = decide(LOCALITY, w.down(w.e1a), CLIENT_1A, nearest)
    assert names(d.chosen) == names(w.e1b)


def test_a_zone_half_down_still_answers_alone_without_min_fraction() -> None:
    w = World()
    d = decide(LOCALITY, w.down(w.e1a[:1]), CLIENT_1A, nearest)
    assert names(d.chosen) == {w.e1a[1].name}


@pytest.mark.parametrize("client_region", ["us-east", "eu-west", "us-west"])
def test_nearest_region_when_the_clients_region_is_down(client_region: str) -> None:
    w = World()
    by_region = {"us-east": w.e1a + w.e1b, "us-west": w.west, "eu-west": w.eu, "ap-south": w.ap}
    order = [r for r in NEAREST[client_region] if r != client_region]
    dead: list[Candidate] = list(by_region[client_region])
    client = Client(client_region, None)
    for r in order:  # take regions out one by one, nearest first: the next one answers
        d = decide(LOCALITY, w.down(dead), client, nearest)
        assert names(d.chosen) == names(by_region[r]), (client_region, r)
        dead += by_region[r]


def test_region_order_decides_which_region_is_next() -> None:
    w = World()
    cands = w.down(w.e1a, w.e1b)
    client = Client("us-east", "us-east-1a")
    to_eu = decide(LOCALITY, cands, client, lambda r: ("us-east", "eu-west", "us-west"))
    to_west = decide(LOCALITY, cands, client, lambda r: ("us-east", "us-west", "eu-west"))
    assert names(to_eu.chosen) == names(w.eu)
    assert names(to_west.chosen) == names(w.west)


def test_regions_not_in_the_order_come_last() -> None:
    w = World()
    client = Client("us-east", "us-east-1a")
    d = decide(LOCALITY, w.all(), client, lambda r: ("us-east", "ap-south"))
    assert [names(t) for t in d.tiers] == [
        names(w.e1a),
        names(w.e1b),
        names(w.ap),
        names(w.west) | names(w.eu),
    ]
    # With everything else down, those "other regions" still answer.
    d = decide(LOCALITY, w.down(w.e1a, w.e1b, w.ap), client, lambda r: ("us-east", "ap-south"))
    assert names(d.chosen) == names(w.west) | names(w.eu)


def test_client_with_a_region_only() -> None:
    w = World()
    d = decide(LOCALITY, w.all(), Client("us-east", None), nearest)
    assert names(d.chosen) == names(w.e1a) | names(w.e1b)


def test_client_in_a_region_without_endpoints() -> None:
    w = World()
    cands = w.west + w.eu + w.ap
    d = decide(LOCALITY, cands, Client("us-east", "us-east-1a"), nearest)
    assert names(d.chosen) == names(w.west)  # us-east's nearest


def test_unplaced_client_gets_every_healthy_endpoint() -> None:
    w = World()
    cands = w.down(w.west)
    d = decide(LOCALITY, cands, Client(None, None), nearest)
    assert names(d.chosen) == names(healthy(cands))


# -- min_healthy_fraction: spill-over ---------------------------------------------


def _zone_of(n_healthy: int, size: int) -> list[Candidate]:
    return [cand("east", "us-east", "us-east-1a", healthy=i < n_healthy) for i in range(size)]


@pytest.mark.parametrize(
    ("n_healthy", "size", "fraction"),
    [(1, 4, 0.5), (1, 4, 0.26), (2, 4, 0.75), (3, 4, 1.0), (1, 2, 0.51)],
)
def test_below_min_fraction_adds_the_next_tier(n_healthy: int, size: int, fraction: float) -> None:
    zone = _zone_of(n_healthy, size)
    region = [cand("east", "us-east", "us-east-1b") for _ in range(3)]
    far = [cand("west", "us-west", "us-west-2a") for _ in range(3)]
    assert n_healthy / size < fraction
    d = decide(Policy(min_healthy_fraction=fraction), zone + region + far, CLIENT_1A, nearest)
    # The zone's healthy endpoints, plus the whole next tier (which is fully healthy,
    # so it does not spill further).
    assert names(d.chosen) == names(healthy(zone)) | names(region)
    assert list(d.chosen[: len(healthy(zone))]) == healthy(zone)  # best tier first


@pytest.mark.parametrize(
    ("n_healthy", "size", "fraction"), [(1, 4, 0.25), (2, 4, 0.5), (3, 3, 1.0)]
)
def test_at_or_above_min_fraction_does_not_spill(
    n_healthy: int, size: int, fraction: float
) -> None:
    zone = _zone_of(n_healthy, size)
    region = [cand("east", "us-east", "us-east-1b") for _ in range(3)]
    assert not n_healthy / size < fraction
    d = decide(Policy(min_healthy_fraction=fraction), zone + region, CLIENT_1A, nearest)
    assert names(d.chosen) == names(healthy(zone))


def test_spill_over_goes_on_while_tiers_are_below() -> None:
    zone = _zone_of(1, 4)
    region = [cand("east", "us-east", "us-east-1b", healthy=i == 0) for i in range(4)]
    dead_region = [cand("west", "us-west", "us-west-2a", healthy=False) for _ in range(2)]
    eu = [cand("eu", "eu-west", "eu-west-1a") for _ in range(2)]
    ap = [cand("ap", "ap-south", "ap-south-1a") for _ in range(2)]
    pol = Policy(min_healthy_fraction=0.5, max_answers=64)
    d = decide(pol, zone + region + dead_region + eu + ap, CLIENT_1A, nearest)
    # 1/4, 1/4, 0/2 are below one half; eu-west (2/2) is not: ap-south is not needed.
    assert names(d.chosen) == names(healthy(zone)) | names(healthy(region)) | names(eu)


def test_every_tier_below_gives_every_healthy_endpoint() -> None:
    zone = _zone_of(1, 4)
    far = [cand("west", "us-west", "us-west-2a", healthy=i == 0) for i in range(4)]
    d = decide(Policy(min_healthy_fraction=0.9), zone + far, CLIENT_1A, nearest)
    assert names(d.chosen) == names(healthy(zone + far))


# -- max_answers --------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1, 3, 8])
def test_max_answers_keeps_the_best_tier_first(cap: int) -> None:
    zone = [cand("east", "us-east", "us-east-1a") for _ in range(2)]
    region = [cand("east", "us-east", "us-east-1b") for _ in range(10)]
    zone_dead = [cand("east", "us-east", "us-east-1a", healthy=False) for _ in range(6)]
    cands = region + zone_dead + zone  # the input order does not matter
    d = decide(Policy(min_healthy_fraction=0.5, max_answers=cap), cands, CLIENT_1A, nearest)
    # 2/8 healthy in the zone is below one half: the region's 10 are added, after them.
    assert len(d.chosen) == min(cap, len(zone) + len(region))
    best = min(cap, len(zone))
    assert names(d.chosen[:best]) <= names(zone)
    assert names(d.chosen[best:]) <= names(region)


@pytest.mark.parametrize("kind", ["all", "failover", "weighted", "locality"])
def test_max_answers_for_every_kind(kind: str) -> None:
    cands = [cand("east", "us-east", "us-east-1a") for _ in range(20)]
    d = decide(Policy(kind=kind, max_answers=5), cands, CLIENT_1A, nearest)  # type: ignore[arg-type]
    assert len(d.chosen) == 5
    assert all(c.healthy for c in d.chosen)


# -- failover -------------------------------------------------------------------------


def _clusters(*spec: tuple[str, int, int]) -> dict[str, list[Candidate]]:
    """cluster -> endpoints, from (cluster, healthy, unhealthy) counts."""
    return {
        name: [cand(name, f"r-{name}", f"z-{name}", healthy=i < up) for i in range(up + down)]
        for name, up, down in spec
    }


def test_failover_takes_the_first_listed_cluster_with_healthy_endpoints() -> None:
    cl = _clusters(("a", 2, 0), ("b", 2, 0), ("c", 2, 0))
    cands = [c for group in cl.values() for c in group]
    pol = Policy(kind="failover", failover=("c", "a", "b"))
    assert names(decide(pol, cands, CLIENT_1A, nearest).chosen) == names(cl["c"])
    down_c = [replace(c, healthy=False) if c.cluster == "c" else c for c in cands]
    assert names(decide(pol, down_c, CLIENT_1A, nearest).chosen) == names(cl["a"])
    down_ca = [replace(c, healthy=False) if c.cluster in "ca" else c for c in cands]
    assert names(decide(pol, down_ca, CLIENT_1A, nearest).chosen) == names(cl["b"])


def test_failover_ignores_where_the_client_is() -> None:
    cl = _clusters(("a", 2, 0), ("b", 2, 0))
    cands = [c for group in cl.values() for c in group]
    pol = Policy(kind="failover", failover=("b", "a"))
    answers = {
        frozenset(names(decide(pol, cands, client, nearest).chosen))
        for client in (
            Client(None, None),
            Client("r-a", "z-a", b"\x01"),
            Client("r-b", None, b"\x02"),
        )
    }
    assert answers == {frozenset(names(cl["b"]))}
    assert decide(pol, cands, CLIENT_1A, nearest).depends_on == "nothing"


def test_failover_unlisted_clusters_only_after_the_listed_ones() -> None:
    cl = _clusters(("a", 2, 0), ("b", 2, 0), ("z", 2, 0))
    cands = [c for group in cl.values() for c in group]
    pol = Policy(kind="failover", failover=("z", "ghost"))  # "ghost" has no endpoints
    assert names(decide(pol, cands, CLIENT_1A, nearest).chosen) == names(cl["z"])
    down = [replace(c, healthy=False) if c.cluster == "z" else c for c in cands]
    chosen = decide(pol, down, CLIENT_1A, nearest).chosen
    assert chosen and {c.cluster for c in chosen} in ({"a"}, {"b"})  # one cluster, healthy


def test_failover_spills_over_below_min_healthy_fraction() -> None:
    cl = _clusters(("a", 1, 3), ("b", 2, 0), ("c", 2, 0))
    cands = [c for group in cl.values() for c in group]
    pol = Policy(kind="failover", failover=("a", "b", "c"), min_healthy_fraction=0.5)
    d = decide(pol, cands, CLIENT_1A, nearest)
    assert names(d.chosen) == names(healthy(cl["a"])) | names(cl["b"])


# -- weighted ---------------------------------------------------------------------------


def subnet(i: int) -> bytes:
    """A /24 subnet key, one per client."""
    return bytes([1, 24]) + (0xC6000000 + (i << 8)).to_bytes(4, "big")[:3]


SUBNETS = [subnet(i) for i in range(4000)]


def picks(policy: Policy, cands: Sequence[Candidate]) -> list[str]:
    out = []
    for s in SUBNETS:
        d = decide(policy, cands, Client("us-east", "us-east-1a", s), nearest)
        (cluster,) = {c.cluster for c in d.chosen}
        out.append(cluster)
    return out


def shares(clusters: list[str]) -> dict[str, float]:
    n = len(clusters)
    return {k: v / n for k, v in Counter(clusters).items()}


def test_weighted_is_sticky_per_subnet() -> None:
    cl = _clusters(("a", 2, 0), ("b", 2, 0), ("c", 2, 0))
    cands = [c for group in cl.values() for c in group]
    pol = Policy(kind="weighted", weights=(("a", 1), ("b", 1), ("c", 1)))
    rnd = random.Random(5)
    for s in SUBNETS[:200]:
        first = decide(pol, cands, Client(None, None, s), nearest)
        assert first.depends_on == "subnet"
        (cluster,) = {c.cluster for c in first.chosen}
        assert names(first.chosen) == names(cl[cluster])  # all of that cluster's healthy ones
        shuffled = cands[:]
        rnd.shuffle(shuffled)
        # The same cluster for that subnet, whatever the client's locality or the input order.
        for client in (Client("us-east", "z", s), Client(None, None, s)):
            again = decide(pol, shuffled, client, nearest)
            assert {c.cluster for c in again.chosen} == {cluster}


def test_weighted_spreads_subnets_over_clusters() -> None:
    cl = _clusters(("a", 1, 0), ("b", 1, 0))
    cands = [c for group in cl.values() for c in group]
    got = Counter(picks(Policy(kind="weighted"), cands))
    assert set(got) == {"a", "b"}  # different subnets, different clusters


@pytest.mark.parametrize(
    "weights", [{"a": 3, "b": 1}, {"a": 1, "b": 1, "c": 2}, {"a": 5, "b": 3, "c": 1, "d": 1}]
)
def test_weighted_shares_are_proportional(weights: dict[str, int]) -> None:
    """Rendezvous hashing with -ln(u)/w scores: P(cluster wins) = w / sum(w)."""
    cl = _clusters(*((n, 2, 0) for n in weights))
    cands = [c for group in cl.values() for c in group]
    pol = Policy(kind="weighted", weights=tuple(weights.items()))
    got = shares(picks(pol, cands))
    total = sum(weights.values())
    for name, w in weights.items():
        # 4000 subnets: one standard deviation of a share is at most 0.8 %; allow 4 %.
        assert got.get(name, 0.0) == pytest.approx(w / total, abs=0.04), (name, got)


def test_weighted_uses_the_cluster_weight_of_the_candidates_by_default() -> None:
    cands = [cand("a", "r", "z", weight=300), cand("b", "r", "z", weight=100)]
    got = shares(picks(Policy(kind="weighted"), cands))
    assert got["a"] == pytest.approx(0.75, abs=0.04)
    # A policy weight overrides the cluster's.
    got = shares(picks(Policy(kind="weighted", weights=(("a", 100),)), cands))
    assert got["a"] == pytest.approx(0.5, abs=0.04)


def test_weight_change_moves_only_the_clients_it_must() -> None:
    cl = _clusters(("a", 1, 0), ("b", 1, 0), ("c", 1, 0))
    cands = [c for group in cl.values() for c in group]
    before = picks(Policy(kind="weighted", weights=(("a", 1), ("b", 1), ("c", 1))), cands)
    after = picks(Policy(kind="weighted", weights=(("a", 1), ("b", 1), ("c", 2))), cands)
    moved = [(x, y) for x, y in zip(before, after, strict=True) if x != y]
    assert moved and all(y == "c" for _, y in moved)  # only towards the heavier cluster
    # c's share goes from 1/3 to 1/2: a sixth of all clients move, no more.
    assert len(moved) / len(SUBNETS) == pytest.approx(1 / 2 - 1 / 3, abs=0.03)


def test_a_cluster_going_down_moves_only_its_clients() -> None:
    cl = _clusters(("a", 1, 0), ("b", 1, 0), ("c", 1, 0))
    cands = [c for group in cl.values() for c in group]
    pol = Policy(kind="weighted")
    before = picks(pol, cands)
    after = picks(pol, [replace(c, healthy=False) if c.cluster == "b" else c for c in cands])
    for x, y in zip(before, after, strict=True):
        assert y != "b"
        if x != "b":
            assert y == x
    assert Counter(x for x, y in zip(before, after, strict=True) if x != y) == Counter(
        x for x in before if x == "b"
    )


def test_weight_zero_is_never_picked_unless_all_are_zero() -> None:
    cl = _clusters(("a", 1, 0), ("b", 1, 0))
    cands = [c for group in cl.values() for c in group]
    assert set(picks(Policy(kind="weighted", weights=(("a", 0), ("b", 1))), cands)) == {"b"}
    # All zero: treated as equal, so both get clients.
    got = shares(picks(Policy(kind="weighted", weights=(("a", 0), ("b", 0))), cands))
    assert got["a"] == pytest.approx(0.5, abs=0.04)


def test_weighted_only_picks_healthy_endpoints_of_the_cluster() -> None:
    cl = _clusters(("a", 2, 3), ("b", 1, 1))
    cands = [c for group in cl.values() for c in group]
    for s in SUBNETS[:100]:
        d = decide(Policy(kind="weighted"), cands, Client(None, None, s), nearest)
        (cluster,) = {c.cluster for c in d.chosen}
        assert names(d.chosen) == names(healthy(cl[cluster]))


# -- all --------------------------------------------------------------------------------


def test_all_answers_every_healthy_endpoint_for_every_client() -> None:
    w = World()
    cands = w.down(w.e1a[:1], w.eu)
    want = names(healthy(cands))
    for client in (CLIENT_1A, Client(None, None), Client("eu-west", "eu-west-1a", b"\x09")):
        d: Decision = decide(Policy(kind="all", max_answers=64), cands, client, nearest)
        assert names(d.chosen) == want
        assert d.depends_on == "nothing"
        assert not d.empty


def test_decisions_do_not_depend_on_the_region_order_without_locality() -> None:
    w = World()
    for kind in ("all", "failover", "weighted"):
        pol = Policy(kind=kind, failover=("west",))  # type: ignore[arg-type]
        a = decide(pol, w.all(), CLIENT_1A, nearest)
        b = decide(pol, w.all(), CLIENT_1A, no_order)
        assert names(a.chosen) == names(b.chosen), kind
