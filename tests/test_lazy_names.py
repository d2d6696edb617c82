"""Compact federated names (``Zone.lazy``) answer exactly as fully built ones.

Cluster and endpoint names, a service's own name and its SRV names are kept
as compact records and compiled when first asked for (resolver/zone.py
``Lazy``). The reference here is the same plans applied with every name
expanded to its RRsets up front, the way names were held before: for many
questions (each federated name and type, names below them, ANY, CNAME chains
and MX/SRV additional processing from the static zone into them, wildcards
under them, health flips, removals, and the bound on built nodes) the two
tables must give the same reply bytes. Queries are built by dnspython.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import dns.edns
import dns.message
import dns.rdatatype
import pytest

from resolver.dns import answers
from resolver.dns.answers import Table
from resolver.dns.zone import Lazy, load_zone_file
from resolver.federation import router
from resolver.federation.locality import Locator
from resolver.federation.plan import PlanId, PlanPort, PlanUpdate, ServicePlan
from resolver.federation.policy import Candidate, Policy
from resolver.federation.router import Publisher, static_records

ORIGIN = "fed.example.test."

ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@ IN SOA ns1 hostmaster 1 3600 600 86400 30
  IN NS ns1
ns1 IN A 127.0.0.53
; static names that lead into federated ones
to-host IN CNAME ep1.c0.svc0.prod
to-cluster IN CNAME c1.svc0.prod
to-service IN CNAME svc1.prod
to-srv IN CNAME _http._tcp.svc0.prod
mx IN MX 10 ep2.c1.svc1.prod
_db._tcp IN SRV 0 0 5432 ep0.c2.svc2.prod
; wildcards under a compact cluster name and under a service name
*.c2.svc1.prod IN TXT "under a cluster"
*.svc2.prod IN A 127.0.0.99
"""

CLUSTERS = ("c0", "c1", "c2")
TYPES = ("A", "AAAA", "ANY", "TXT", "MX", "SRV", "NS", "SOA", "CNAME")


def _plans(seed: int) -> list[ServicePlan]:
    rnd = random.Random(seed)
    plans = []
    for s in range(4):
        cands = []
        for ci, c in enumerate(CLUSTERS):
            for e in range(4):
                v4 = (f"127.{ci + 1}.{s}.{e + 1}",) if rnd.random() < 0.9 else ()
                v6 = (f"fd00::{ci + 1}:{s}:{e + 1}",) if rnd.random() < 0.4 or not v4 else ()
                cands.append(
                    Candidate(c, f"r{ci}", f"r{ci}a", f"ep{e}", v4, v6, rnd.random() < 0.7, "ready")
                )
        plans.append(
            ServicePlan(
                ORIGIN,
                "prod",
                f"svc{s}",
                Policy(kind="all", fail_open=s != 3),
                (PlanPort("http", 80, "tcp"), PlanPort("dns", 53, "udp")),
                tuple(cands),
                CLUSTERS,
            )
        )
    return plans


def _eager(plan: ServicePlan) -> dict[bytes, object]:
    """``static_records`` as names were held before: every record built now."""
    return {
        k: (v.rrsets(k) if v.exists() else {}) if isinstance(v, Lazy) else v
        for k, v in static_records(plan).items()
    }


class _Published(Table):
    """A table with its federation publisher, as a serving process holds them."""

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch | None = None) -> None:
        super().__init__([load_zone_file(path, ORIGIN)])
        self.publisher = Publisher(self, Locator())
        self.monkeypatch = monkeypatch  # set: every record built up front (the reference)

    def apply_plans(self, plans: list[ServicePlan], removed: list[PlanId] | tuple[()] = ()) -> None:
        update = PlanUpdate(tuple(plans), tuple(removed))
        if self.monkeypatch is None:
            self.publisher.apply(update)
            return
        with self.monkeypatch.context() as m:
            m.setattr(router, "static_records", _eager)
            self.publisher.apply(update)


def _tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[_Published, _Published]:
    path = tmp_path / "fed.zone"
    path.write_text(ZONE)
    return _Published(path), _Published(path, monkeypatch)


def _questions(plans: list[ServicePlan]) -> list[str]:
    names = {ORIGIN, f"prod.{ORIGIN}", f"nope.prod.{ORIGIN}"}
    for n in ("to-host", "to-cluster", "to-service", "to-srv", "mx", "_db._tcp"):
        names.add(f"{n}.{ORIGIN}")
    for p in plans:
        names.update((p.base, f"x.{p.base}", f"_http._tcp.{p.base}", f"_dns._udp.{p.base}"))
        names.add(f"_nope._tcp.{p.base}")
        for c in CLUSTERS:
            names.update((f"{c}.{p.base}", f"x.{c}.{p.base}", f"a.b.{c}.{p.base}"))
            for e in range(5):  # ep4 does not exist
                names.update((f"ep{e}.{c}.{p.base}", f"x.ep{e}.{c}.{p.base}"))
    # Letter case is echoed from the question; the answers must not depend on it.
    return sorted(names) + [n.upper() for n in sorted(names)[::7]]


def _compare(lazy: _Published, eager: _Published, plans: list[ServicePlan]) -> int:
    compared = 0
    for name in _questions(plans):
        for t in TYPES:
            for edns in (-1, 0):
                q = dns.message.make_query(name, dns.rdatatype.from_text(t), use_edns=edns)
                q.id = 4321
                wire = q.to_wire()
                for tcp in (False, True):
                    got = lazy.respond(wire, tcp, ("127.0.0.1", 5353))
                    want = eager.respond(wire, tcp, ("127.0.0.1", 5353))
                    assert got == want, (name, t, edns, tcp)
                    compared += 1
    return compared


def test_compact_names_answer_as_fully_built_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lazy, eager = _tables(tmp_path, monkeypatch)
    plans = _plans(1)
    lazy.apply_plans(plans)
    eager.apply_plans(plans)
    # Compact indeed: no endpoint or cluster name is built before it is asked for.
    zone = lazy.zones[b"\x03fed\x07example\x04test\x00"]
    assert len(zone.lazy) > 40
    assert not any(k in lazy.nodes for k in zone.lazy if b"\x03ep" in k)
    assert _compare(lazy, eager, plans) > 5_000
    # Health flips and a changed cluster list, then a removed service: the same again.
    rnd = random.Random(7)
    changed = []
    for p in plans[:3]:
        cands = tuple(dataclasses.replace(c, healthy=rnd.random() < 0.5) for c in p.candidates)
        changed.append(dataclasses.replace(p, candidates=cands, clusters=CLUSTERS[:2]))
    for t in (lazy, eager):
        t.apply_plans(changed, removed=[plans[3].ident])
    _compare(lazy, eager, changed)


def test_bound_on_built_compact_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answers, "_LAZY_NODES_MAX", 16)
    lazy, eager = _tables(tmp_path, monkeypatch)
    plans = _plans(2)
    lazy.apply_plans(plans)
    eager.apply_plans(plans)
    _compare(lazy, eager, plans)
    zone = lazy.zones[b"\x03fed\x07example\x04test\x00"]
    built = [k for k in zone.lazy if k in lazy.nodes and lazy.nodes[k].router is None]
    assert 0 < len(built) <= 16


def test_route_memos_are_bounded_across_routers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What routers remember per client subnet is bounded for the whole table, not
    per router, and answers do not change when it is cleared."""
    lazy, eager = _tables(tmp_path, monkeypatch)
    plans = _plans(3)
    lazy.apply_plans(plans)
    eager.apply_plans(plans)
    monkeypatch.setattr(answers, "_ROUTES_MAX", 8)
    routers = {k: n.router for k, n in lazy.nodes.items() if n.router is not None}
    assert len(routers) >= 8
    for i in range(40):
        for p in plans:
            for name, t in ((p.base, "A"), (p.base, "AAAA"), (f"_http._tcp.{p.base}", "SRV")):
                ecs = dns.edns.ECSOption(f"198.51.{i}.0", 24)
                q = dns.message.make_query(name, t, use_edns=0, options=[ecs])
                q.id = i
                wire = q.to_wire()
                got = lazy.respond(wire, False, ("127.0.0.1", 5353))
                assert got == eager.respond(wire, False, ("127.0.0.1", 5353)), (name, t, i)
                assert sum(len(r.memo) for r in routers.values()) <= 8
