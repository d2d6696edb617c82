"""What the registry keeps per endpoint: compact, and still the same values.

The stripped objects of ``resolver/federation/model.py`` are packed to keep a
federation of millions of endpoints in memory (benchmarks/scale.py): an
``Endpoint`` of four slots, a slice's pod references in one string, addresses
kept as the API server's own (canonical) strings and shared with the plans.
These tests check that the packed values behave exactly as the plain ones did
(property tests against the logical fields and against ``ipaddress``), that a
plan holds the registry's address tuples rather than copies, and, against a
real fake API server and the unmodified kubernetes-asyncio client, what one
more endpoint costs the registry: the bytes reachable from its caches at two
sizes (so every fixed cost cancels out), and that no list body stays referenced.
"""

from __future__ import annotations

import dataclasses
import gc
import ipaddress
import pickle
import sys
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import fakekube
import pytest
from fakekube import ENDPOINTSLICES, SERVICES, FakeKube, endpoint, running_registry
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.federation.model import Endpoint, ServiceKey, SliceObject, ip_text
from resolver.federation.plan import plan_from_snapshot
from resolver.federation.policy import Policy

fake_kube = fakekube.fake_kube  # the fake API server factory fixture

RESOLVER = str(Path(__file__).resolve().parent.parent / "resolver")
FIELDS = ("cluster", "addresses", "ready", "serving", "terminating", "zone", "hostname", "node")

opt_text = st.one_of(st.none(), st.text(max_size=12))
endpoint_args = st.tuples(
    st.text(max_size=8),
    st.lists(st.text(max_size=15), max_size=3).map(tuple),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    opt_text,
    opt_text,
    opt_text,
)


@settings(max_examples=300, deadline=None)
@given(endpoint_args, endpoint_args)
def test_an_endpoint_is_its_eight_fields(a: tuple[Any, ...], b: tuple[Any, ...]) -> None:
    ea, eb = Endpoint(*a), Endpoint(*b)
    assert tuple(getattr(ea, f) for f in FIELDS) == a
    assert Endpoint(**dict(zip(FIELDS, a, strict=True))) == ea
    assert (ea == eb) == (a == b)
    if a == b:
        assert hash(ea) == hash(eb)
    assert pickle.loads(pickle.dumps(ea)) == ea
    assert eval(repr(ea), {"Endpoint": Endpoint}) == ea
    with pytest.raises(dataclasses.FrozenInstanceError):
        ea.cluster = "other"  # type: ignore[misc]


refs_st = st.lists(st.one_of(st.none(), st.text(max_size=10)), max_size=6).map(tuple)


@settings(max_examples=300, deadline=None)
@given(refs_st, refs_st)
def test_a_slice_gives_back_its_refs(a: tuple[str | None, ...], b: tuple[str | None, ...]) -> None:
    sa, sb = (SliceObject("shop", "cart-1", "cart", (), (), r) for r in (a, b))
    assert sa.refs == a
    assert (sa == sb) == (a == b)
    assert pickle.loads(pickle.dumps(sa)) == sa and pickle.loads(pickle.dumps(sa)).refs == a


def _spellings(n: int, v6: bool) -> list[str]:
    ip = ipaddress.IPv6Address(n) if v6 else ipaddress.IPv4Address(n)
    out = [str(ip), ip.exploded, ip.exploded.upper()]
    if not v6:
        out += [".".join(f"{int(o):03d}" for o in str(ip).split(".")), f" {ip}", f"{ip}."]
    else:
        out.append(f"::ffff:{ipaddress.IPv4Address(n & 0xFFFFFFFF)}")
    return out


address_text = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.just(False)).map(lambda t: _spellings(*t)),
    st.tuples(st.integers(0, 2**128 - 1), st.just(True)).map(lambda t: _spellings(*t)),
    st.lists(st.text(alphabet="0123456789.:abcdefABCDEF%x ", max_size=20), min_size=1),
    st.lists(st.text(max_size=20), min_size=1),
)


@settings(max_examples=400, deadline=None)
@given(address_text)
def test_ip_text_is_what_ipaddress_prints(values: list[str]) -> None:
    for v in values:
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            assert ip_text(v) is None, v
            continue
        got = ip_text(v)
        assert got == (str(ip), ip.version), v
        if str(ip) == v:
            assert got[0] is v  # the caller's string itself, not a copy


def _world(k: FakeKube, services: int, per: int, base: int = 0) -> None:
    """``services`` Services in 4 namespaces with one slice of ``per`` endpoints
    each, on 50 nodes in 3 zones (as the EndpointSlice controller fills them in)."""
    for s in range(base, base + services):
        ns, name = f"ns{s % 4}", f"svc{s}"
        k.put_service(ns, name)
        eps = [
            endpoint(
                f"127.{1 + s // 250}.{s % 250}.{1 + e}",
                ready=e % 7 != 3,
                zone=f"z{e % 3}",
                node=f"node-{(s * per + e) % 50}",
                pod=f"{name}-{e}",
            )
            for e in range(per)
        ]
        k.put_slice(ns, f"{name}-abcde", name, eps)


async def test_a_plan_holds_the_registry_addresses(fake_kube: Any, tmp_path: Path) -> None:
    k = await fake_kube("east")
    _world(k, 3, 5)
    # One dual-stack pod (two slices joined by its targetRef) and an address the
    # API server sent in a non-canonical spelling.
    k.put_service("ns0", "dual")
    k.put_slice("ns0", "dual-v4", "dual", [endpoint("127.9.0.1", pod="dual-0")])
    k.put_slice(
        "ns0",
        "dual-v6",
        "dual",
        [endpoint("2001:DB8:0::1", pod="dual-0"), endpoint("2001:db8::2", pod="dual-1")],
        address_type="IPv6",
    )
    async with running_registry({"east": k}, tmp_path) as run:
        reg = run.registry
        assert gc.isenabled()  # lists are parsed with the collector off, and it is back on
        shared = 0
        for key in sorted(reg.keys()):
            snap = reg.snapshot(key)
            assert snap is not None
            (cs,) = snap.per_cluster
            plan = plan_from_snapshot("fed.example.test.", snap, Policy())
            by_name = {c.name: c for c in plan.candidates}
            for ep in cs.endpoints:
                want = tuple(str(ipaddress.ip_address(a)) for a in ep.addresses)
                assert ep.addresses == want  # canonical, whatever the server sent
                (cand,) = (c for c in by_name.values() if set(c.v4 + c.v6) == set(want))
                if len({":" in a for a in want}) == 1:
                    assert (cand.v4 or cand.v6) is ep.addresses  # the same tuple, not a copy
                    shared += 1
        dual = reg.snapshot(ServiceKey("ns0", "dual"))
        assert dual is not None
        joined = [e.addresses for e in dual.per_cluster[0].endpoints]
        assert joined == sorted([("127.9.0.1", "2001:db8::1"), ("2001:db8::2",)])
        assert shared == 3 * 5 + 1


def held(roots: Iterable[object]) -> int:
    """The bytes of everything reachable from ``roots``, each object once, rounded up to
    the allocator's 16-byte steps (classes and modules are not data)."""
    seen: set[int] = set()
    stack = list(roots)
    total = 0
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, type | types.ModuleType):
            continue
        seen.add(id(o))
        total += (sys.getsizeof(o) + 15) & ~15
        stack.extend(gc.get_referents(o))
    return total


async def _registry_bytes(k: FakeKube, tmp_path: Path) -> tuple[int, int]:
    """What the registry holds once synced with every service built, and the endpoints
    in it. Checks on the way that no list response (its body) is kept."""
    tmp_path.mkdir()
    async with running_registry({k.name: k}, tmp_path) as run:
        reg = run.registry
        for key in sorted(reg.keys()):
            reg.snapshot(key)  # the built per-cluster views are part of what it holds
        for r in run.sources[k.name].reflectors.values():
            # The ApiClient keeps its last response (and a list's whole body) until
            # its next request; a watch or a heartbeat may be that one, a list not.
            last = r.api_client.last_response
            assert last is None or last.url.query.get("watch") == "true" or (
                last.url.path.startswith("/version")
            ), last.url
        caches = [c for st in reg._states for c in (st.objects, st.by_service, st.built)]
        endpoints = sum(st.endpoints for st in reg.cluster_status().values())
        return held(caches), endpoints


async def test_what_one_more_endpoint_costs_the_registry(fake_kube: Any, tmp_path: Path) -> None:
    small = await fake_kube("small")
    _world(small, 50, 20)
    big = await fake_kube("big")
    _world(big, 150, 20)
    b0, n0 = await _registry_bytes(small, tmp_path / "small")
    b1, n1 = await _registry_bytes(big, tmp_path / "big")
    assert (n0, n1) == (1000, 3000)
    assert len(big.store[SERVICES]) == len(big.store[ENDPOINTSLICES]) == 150
    per = (b1 - b0) / (n1 - n0)
    # An Endpoint (64 B), its address tuple (48 B) and string (64 B, the JSON's own),
    # its pod reference in the slice's one string (~10 B), a slot in the slice's
    # tuple, and its share of its slice and Service (~50 B with 20 endpoints each):
    # ~250 B. Before the packing (8-slot Endpoints, a string per pod reference, the
    # built snapshots' own tuples) it was ~370 B.
    assert per < 260, f"{per:.0f} B per endpoint"
