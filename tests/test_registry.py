"""The registry's decisions: config, static services, reach modes, export control, coalescing.

Kubernetes data comes through the real client from fake API servers
(tests/fakekube.py); static data through the config file.
"""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import fakekube
import pytest
import yaml
from fakekube import (
    ENDPOINTSLICES,
    SERVICEEXPORTS,
    SERVICES,
    converge,
    endpoint,
    running_registry,
    until,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.config import ConfigError, load_config
from resolver.federation.config import federation_from_dict, parse_federation, parse_selector
from resolver.federation.model import (
    Cluster,
    Endpoint,
    Port,
    ServiceKey,
    ServiceObject,
    SliceObject,
)
from resolver.federation.registry import Registry, merge_endpoints
from resolver.federation.sources import build_sources

fake_kube = fakekube.fake_kube  # the fake API server factory fixture

CART = ServiceKey("shop", "cart")

DEMO_FED = {
    "zone": "Global.Example.Test",
    "clusters": [
        {"name": "east", "region": "us-east", "zone": "us-east-1a"},
        {"name": "west", "region": "us-west", "zone": "us-west-1a", "weight": 50},
        {
            "name": "edge",
            "reach": "gateway",
            "gateway": ["127.3.0.1", "::1"],
            "stale_policy": "drop",
        },
    ],
    "services": [
        {
            "namespace": "shop",
            "name": "cart",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP"}],
            "annotations": {"fedns.io/policy": "failover"},
            "endpoints": {
                "east": [
                    {
                        "addresses": ["127.1.0.1"],
                        "ready": True,
                        "hostname": "cart-0",
                        "zone": "us-east-1a",
                    },
                    {"addresses": ["127.1.0.2", "::1"], "ready": False},
                ],
                "west": [{"addresses": ["127.2.0.1"]}],
                "edge": [{"addresses": ["127.3.1.1"], "ready": False}],
            },
        }
    ],
    # Routing keys: parsed at load with the rest (Routing), their errors named there too.
    "localities": [{"cidr": "10.0.0.0/8", "region": "us-east"}],
    "regions": [{"name": "us-east"}],
    "policies": {"shop/cart": {"policy": "weighted", "weights": {"east": 3}}},
}


def test_config_file_to_federation(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cfg_path = tmp_path / "sub" / "fedns.yaml"
    fed_raw = {
        "zone": "global.example.test.",
        "clusters": [
            {"name": "east", "kubeconfig": "east.kubeconfig", "context": "ctx"},
            {"name": "in", "in_cluster": True},
        ],
        "export": {
            "mode": "selector",
            "selector": "fedns.io/export=true, tier in (web,api)",
            "namespaces": {"deny": ["kube-system"]},
        },
    }
    cfg_path.write_text(yaml.safe_dump({"federation": fed_raw}))
    fed = parse_federation(load_config(cfg_path))
    assert fed is not None
    east, inc = fed.clusters
    assert east.kubeconfig == tmp_path / "sub" / "east.kubeconfig" and east.context == "ctx"
    assert east.source == "kubernetes" and inc.source == "kubernetes" and inc.in_cluster
    assert east.stale_policy == "serve" and east.stale_after == 30.0 and east.reach == "pod"
    assert fed.export.mode == "selector"
    assert str(fed.export.selector) == "fedns.io/export=true,tier in (api,web)"
    assert not fed.export.namespace_allowed("kube-system") and fed.export.namespace_allowed("shop")


def test_demo_shaped_federation_parses() -> None:
    fed = federation_from_dict(DEMO_FED)
    assert fed.zone == "global.example.test."
    assert [c.name for c in fed.clusters] == ["east", "west", "edge"]
    assert fed.clusters[1].weight == 50 and fed.clusters[2].gateway == ("127.3.0.1", "::1")
    assert fed.routing.overrides == {"shop/cart": {"kind": "weighted", "weights": (("east", 3),)}}
    lm = fed.routing.locator.localities
    assert lm is not None and len(lm.rules) == 1
    (svc,) = fed.services
    assert svc.key == CART and svc.ports == (Port("https", 443, "TCP"),)
    assert dict(svc.annotations) == {"fedns.io/policy": "failover"}
    east = svc.endpoints_in("east")
    assert east is not None and east[0] == Endpoint(
        "east", ("127.1.0.1",), True, True, False, "us-east-1a", "cart-0", None
    )
    assert east[1].ready is False and east[1].serving is False


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"zone": None}, "federation.zone"),
        ({"bogus": 1}, "federation.bogus"),
        ({"clusters": [{"region": "x"}]}, "federation.clusters[0].name"),
        ({"clusters": [{"name": "Bad_Name"}]}, "federation.clusters[0].name"),
        ({"clusters": [{"name": "a"}, {"name": "a"}]}, "federation.clusters[1].name"),
        ({"clusters": [{"name": "a", "reach": "teleport"}]}, "federation.clusters[0].reach"),
        ({"clusters": [{"name": "a", "reach": "gateway"}]}, "federation.clusters[0].gateway"),
        (
            {"clusters": [{"name": "a", "reach": "gateway", "gateway": ["nope"]}]},
            "federation.clusters[0].gateway[0]",
        ),
        (
            {"clusters": [{"name": "a", "stale_policy": "maybe"}]},
            "federation.clusters[0].stale_policy",
        ),
        ({"clusters": [{"name": "a", "stale_after": -1}]}, "federation.clusters[0].stale_after"),
        ({"clusters": [{"name": "a", "weight": "heavy"}]}, "federation.clusters[0].weight"),
        ({"clusters": [{"name": "a", "context": "c"}]}, "federation.clusters[0].context"),
        (
            {"clusters": [{"name": "a", "kubeconfig": "k", "in_cluster": True}]},
            "federation.clusters[0].kubeconfig",
        ),
        ({"clusters": [{"name": "a", "reach": "loadbalancer"}]}, "federation.clusters[0].reach"),
        ({"export": {"mode": "some"}}, "federation.export.mode"),
        ({"policies": {"anything": ["goes", 1]}}, "federation.policies.anything"),
        ({"defaults": {"ttl": -1}}, "federation.defaults.ttl"),
        ({"localities": [{"cidr": "10.0.0.0/33", "region": "x"}]}, "federation.localities[0].cidr"),
        ({"export": {"mode": "selector"}}, "federation.export.selector"),
        ({"export": {"mode": "selector", "selector": "a=b,,c"}}, "federation.export.selector"),
        ({"export": {"mode": "selector", "selector": "bad key!=x"}}, "federation.export.selector"),
        ({"export": {"namespaces": {"allow": "shop"}}}, "federation.export.namespaces.allow"),
        (
            {"services": [{"namespace": "shop", "name": "cart", "endpoints": {"mars": []}}]},
            "federation.services[0].endpoints.mars",
        ),
        (
            {
                "services": [
                    {
                        "namespace": "shop",
                        "name": "cart",
                        "endpoints": {"east": [{"addresses": ["300.1.1.1"]}]},
                    }
                ]
            },
            "federation.services[0].endpoints.east[0].addresses[0]",
        ),
        (
            {"services": [{"namespace": "shop", "name": "cart", "ports": [{"port": 0}]}]},
            "federation.services[0].ports[0].port",
        ),
        (
            {
                "services": [
                    {
                        "namespace": "shop",
                        "name": "cart",
                        "ports": [{"port": 1, "protocol": "ICMP"}],
                    }
                ]
            },
            "federation.services[0].ports[0].protocol",
        ),
        (
            {"services": [{"namespace": "shop", "name": "cart", "annotations": {"other/x": "1"}}]},
            "federation.services[0].annotations.other/x",
        ),
        (
            {
                "services": [
                    {"namespace": "shop", "name": "cart"},
                    {"namespace": "shop", "name": "cart"},
                ]
            },
            "federation.services[1]",
        ),
    ],
)
def test_config_errors_name_the_key(patch: dict, where: str) -> None:
    raw = {"zone": "z.test.", "clusters": [{"name": "east"}]}
    raw.update(patch)
    if raw.get("zone") is None:
        del raw["zone"]
    with pytest.raises(ConfigError) as exc:
        federation_from_dict(raw, Path("conf/fedns.yaml"))
    assert f"conf/fedns.yaml: {where}:" in str(exc.value)


def test_static_services_in_kubernetes_clusters_are_refused() -> None:
    raw = {
        "zone": "z.test.",
        "clusters": [{"name": "east", "kubeconfig": "k"}],
        "services": [{"namespace": "a", "name": "b", "endpoints": {"east": []}}],
    }
    with pytest.raises(
        ConfigError, match=r"services\[0\]\.endpoints\.east: .*watched through its API server"
    ):
        federation_from_dict(raw)


def test_selector_semantics() -> None:
    sel = parse_selector("app=web,tier!=db,env in (prod, stage),!legacy,team")
    assert sel.matches({"app": "web", "env": "prod", "team": "x"})
    assert sel.matches({"app": "web", "tier": "api", "env": "stage", "team": ""})
    assert not sel.matches({"app": "web", "env": "prod", "team": "x", "legacy": "1"})
    assert not sel.matches({"app": "web", "env": "dev", "team": "x"})
    assert not sel.matches({"app": "web", "tier": "db", "env": "prod", "team": "x"})
    assert not sel.matches({"app": "web", "env": "prod"})


async def test_static_source_reach_modes_and_snapshots() -> None:
    fed = federation_from_dict(DEMO_FED)
    reg = Registry.from_config(fed)
    await reg.run(build_sources(fed))  # static sources write once and return
    assert reg.is_synced() and reg.keys() == frozenset({CART})
    snap = reg.snapshot(CART)
    assert snap is not None
    east, west, edge = snap.per_cluster
    # pod reach: the declared endpoints as they are (canonical order by address)
    assert [e.addresses for e in east.endpoints] == [("127.1.0.1",), ("127.1.0.2", "::1")]
    assert [e.ready for e in east.endpoints] == [True, False] and east.endpoints[
        0
    ].hostname == "cart-0"
    assert east.ports == (Port("https", 443, "TCP"),) and east.annotations == {
        "fedns.io/policy": "failover"
    }
    assert west.cluster.weight == 50 and west.endpoints[0].zone is None
    # gateway reach: one endpoint per gateway address, ready only if a backend is
    assert [e.addresses for e in edge.endpoints] == [("127.3.0.1",), ("::1",)]
    assert not any(e.ready for e in edge.endpoints)
    assert not any(s.stale for s in reg.cluster_status().values())  # static data never goes stale
    assert reg.snapshot(ServiceKey("shop", "nope")) is None
    # snapshots are plain immutable values: hashable, picklable, equal across calls
    assert pickle.loads(pickle.dumps(snap)) == snap and hash(snap) == hash(reg.snapshot(CART))


async def test_changes_are_coalesced_per_key() -> None:
    c = Cluster("east")
    reg = Registry([c], coalesce=0.01)
    got: list[frozenset[ServiceKey]] = []
    unsubscribe = reg.subscribe(got.append)
    sink = reg.sink("east")
    for i in range(200):
        sink.upsert(ServiceObject(ServiceKey("ns", f"s{i % 20}"), (Port("p", 1000 + i, "TCP"),)))
    await asyncio.sleep(0.05)
    assert got == [frozenset(ServiceKey("ns", f"s{i}") for i in range(20))]
    # writing what is already there publishes nothing
    sink.upsert(ServiceObject(ServiceKey("ns", "s0"), (Port("p", 1180, "TCP"),)))
    await asyncio.sleep(0.05)
    assert len(got) == 1
    sink.delete(SERVICES, "ns", "s1")
    await asyncio.sleep(0.05)
    assert got[-1] == frozenset({ServiceKey("ns", "s1")})
    unsubscribe()
    sink.delete(SERVICES, "ns", "s2")
    await asyncio.sleep(0.05)
    assert len(got) == 2
    reg.close()


async def test_reach_modes_dual_stack_and_annotations(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("lb")
    g = await fake_kube("gw")
    p = await fake_kube("pod")
    for kube in (k, g, p):
        kube.put_service(
            "shop",
            "cart",
            ports=[("https", 443, "TCP")],
            lb_ips=["127.9.0.1", "::1"],
            annotations={
                "fedns.io/weight": "3",
                "kubectl.kubernetes.io/last-applied-configuration": "{...}",
            },
        )
        kube.put_slice(
            "shop",
            "cart-v4",
            "cart",
            [
                endpoint("127.1.0.1", pod="cart-0", hostname="cart-0"),
                endpoint("127.1.0.2", ready=False, pod="cart-1"),
            ],
        )
        kube.put_slice(
            "shop",
            "cart-v6",
            "cart",
            [endpoint("::2", pod="cart-0"), endpoint("::3", pod="cart-1")],
            address_type="IPv6",
        )
        kube.put_slice("shop", "cart-fqdn", "cart", [endpoint("127.1.0.9")], address_type="FQDN")
        kube.put_slice("shop", "orphan", None, [endpoint("127.1.0.8")])
    settings = {
        "lb": {"reach": "loadbalancer"},
        "gw": {"reach": "gateway", "gateway": ["127.7.0.1"]},
    }
    async with running_registry({"lb": k, "gw": g, "pod": p}, tmp_path, clusters=settings) as fed:
        reg = fed.registry
        snap = reg.snapshot(CART)
        assert snap is not None
        lb, gw, pod = (snap.cluster(n) for n in ("lb", "gw", "pod"))
        assert lb is not None and gw is not None and pod is not None
        # pod: one endpoint per pod with both families; a half-ready pod is not ready
        assert [(e.addresses, e.ready, e.hostname) for e in pod.endpoints] == [
            (("127.1.0.1", "::2"), True, "cart-0"),
            (("127.1.0.2", "::3"), False, None),
        ]
        assert pod.ports == (Port("http", 8080, "TCP"),)
        assert dict(pod.annotations) == {"fedns.io/weight": "3"}
        # loadbalancer: one endpoint per ingress IP, service ports, ready since cart-0 is
        assert [(e.addresses, e.ready) for e in lb.endpoints] == [
            (("127.9.0.1",), True),
            (("::1",), True),
        ]
        assert lb.ports == (Port("https", 443, "TCP"),) and lb.endpoints[0].zone == "z-lb"
        assert [(e.addresses, e.ready) for e in gw.endpoints] == [(("127.7.0.1",), True)]
        # every backend goes unready: the front addresses stay but are not ready
        for kube in (k, g):
            kube.put_slice(
                "shop", "cart-v4", "cart", [endpoint("127.1.0.1", ready=False, pod="cart-0")]
            )
            kube.put_slice("shop", "cart-v6", "cart", [endpoint("::2", ready=False, pod="cart-0")])
        changed: list[frozenset[ServiceKey]] = []
        reg.subscribe(changed.append)
        await until(
            lambda: changed and not reg.snapshot(CART).cluster("gw").endpoints[0].ready,
            "gateway endpoint not ready",
        )
        snap = reg.snapshot(CART)
        assert snap is not None and not any(
            e.ready for c in ("lb", "gw") for e in snap.cluster(c).endpoints
        )  # type: ignore[union-attr]
        # the LoadBalancer loses its ingress: no front addresses
        k.put_service("shop", "cart", ports=[("https", 443, "TCP")])
        await until(
            lambda: not reg.snapshot(CART).cluster("lb").endpoints, "no LoadBalancer endpoints"
        )


async def test_export_by_selector(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("east")
    k.put_service("shop", "cart", labels={"fedns.io/export": "true"})
    k.put_service("shop", "pay")
    k.put_service("kube-system", "dns", labels={"fedns.io/export": "true"})
    export = {
        "mode": "selector",
        "selector": "fedns.io/export=true",
        "namespaces": {"deny": ["kube-system"]},
    }
    async with running_registry({"east": k}, tmp_path, export=export) as fed:
        reg = fed.registry
        assert reg.keys() == frozenset({CART})
        k.put_service("shop", "pay", labels={"fedns.io/export": "true"})  # enters the selection
        k.put_service(
            "shop", "cart", labels={"fedns.io/export": "false"}
        )  # leaves it: server sends DELETED
        await until(lambda: reg.keys() == {ServiceKey("shop", "pay")}, "only shop/pay exported")
        assert reg.cluster_status()["east"].services == 1  # the denied namespace is not even stored
    q = [q for _, p, q in k.requests if p.endswith("/services")]
    assert all(x["labelSelector"] == "fedns.io/export=true" for x in q)  # filtered by the server


async def test_export_by_serviceexport(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("east")
    k.put_service("shop", "cart")
    k.put_slice("shop", "cart-a", "cart", [endpoint("127.1.0.1")])
    k.put_service("shop", "pay")
    k.put_export("shop", "cart")
    k.put_export("shop", "ghost")  # exported but no Service: nothing
    async with running_registry(
        {"east": k}, tmp_path, export={"mode": "serviceexport", "namespaces": {"allow": ["shop"]}}
    ) as fed:
        reg = fed.registry
        await converge(reg, {"east": k}, export_mode="serviceexport")
        assert reg.keys() == frozenset({CART})
        k.put_export("shop", "pay")
        k.delete(SERVICEEXPORTS, "shop", "cart")
        k.put_service("other", "x")
        k.put_export("other", "x")  # namespace not allowed
        await until(lambda: reg.keys() == {ServiceKey("shop", "pay")}, "only shop/pay exported")
        k.inject("gone", resource=SERVICEEXPORTS, after=0)
        await k.watching(1, SERVICEEXPORTS)
        k.drop_watches(SERVICEEXPORTS)
        k.delete(SERVICEEXPORTS, "shop", "pay")
        await until(lambda: not reg.keys(), "nothing exported")
        assert fed.reflector("east", SERVICEEXPORTS).lists == 2


async def test_serviceexport_crd_missing(fake_kube, tmp_path: Path) -> None:
    """No ServiceExport CRD (404): the cluster still syncs, exports nothing, keeps looking."""
    k = await fake_kube("east", serve_exports=False)
    k.put_service("shop", "cart")
    async with running_registry({"east": k}, tmp_path, export={"mode": "serviceexport"}) as fed:
        reg = fed.registry
        assert reg.is_synced() and reg.keys() == frozenset()
        assert "404" in (reg.cluster_status()["east"].last_error or "")
        k.serve_exports = True
        k.put_export("shop", "cart")
        await until(lambda: reg.keys() == {CART}, "shop/cart exported")


async def test_unusable_objects_are_skipped(fake_kube, tmp_path: Path) -> None:
    """Malformed or foreign objects (no service label, garbage addresses) never reach answers."""
    k = await fake_kube("east")
    k.put_service("shop", "cart")
    k.put_slice(
        "shop", "cart-a", "cart", [endpoint("127.1.0.1"), endpoint("not-an-ip"), endpoint([])]
    )
    async with running_registry({"east": k}, tmp_path) as fed:
        reg = fed.registry
        snap = reg.snapshot(CART)
        assert snap is not None and [e.addresses for e in snap.per_cluster[0].endpoints] == [
            ("127.1.0.1",)
        ]
        # a slice losing its service-name label leaves the service
        k.apply(
            ENDPOINTSLICES,
            {
                **k.store[ENDPOINTSLICES][("shop", "cart-a")],
                "metadata": {"namespace": "shop", "name": "cart-a", "labels": {}},
            },
        )
        await until(
            lambda: not reg.snapshot(CART).per_cluster[0].endpoints, "cart has no endpoints"
        )


async def test_allowed_namespaces_are_watched_one_by_one_under_namespaced_rbac(
    fake_kube, tmp_path: Path
) -> None:
    """``export.namespaces.allow``: one list+watch per namespace, which Roles in those
    namespaces permit (the chart's ``rbac.namespaces``); a server that forbids
    every cluster-wide request still syncs, and each namespace's relist leaves
    the others alone."""
    k = await fake_kube("east", rbac_namespaces=["shop", "pay"])
    for ns in ("shop", "pay", "other"):
        k.put_service(ns, "cart")
        k.put_slice(ns, "cart-a", "cart", [endpoint(f"127.1.0.{len(ns)}")])
    export = {"mode": "all", "namespaces": {"allow": ["shop", "pay"]}}
    async with running_registry({"east": k}, tmp_path, export=export) as fed:
        reg = fed.registry
        assert reg.keys() == frozenset({ServiceKey("shop", "cart"), ServiceKey("pay", "cart")})
        assert set(fed.sources["east"].reflectors) == {
            "services/pay", "services/shop", "endpointslices/pay", "endpointslices/shop"
        }
        # A 410 makes one namespace's reflector relist: the other namespace stays.
        k.put_service("pay", "ledger")
        k.put_slice("pay", "ledger-a", "ledger", [endpoint("127.1.0.9")])
        k.compact()
        k.error_watches(410)
        await until(
            lambda: reg.snapshot(ServiceKey("pay", "ledger")) is not None, "pay/ledger after relists"
        )
        assert reg.snapshot(ServiceKey("shop", "cart")).cluster("east").endpoints
    paths = {p for _, p, _ in k.requests}
    assert paths and all("/namespaces/shop/" in p or "/namespaces/pay/" in p for p in paths), paths
    assert reg.cluster_status()["east"].last_error is None


async def test_the_fake_forbids_what_namespaced_rbac_forbids(fake_kube, tmp_path: Path) -> None:
    """The control for the test above: watching all namespaces under Roles fails (403)."""
    k = await fake_kube("east", rbac_namespaces=["shop"])
    k.put_service("shop", "cart")
    from resolver.federation.config import federation_from_dict

    fed = federation_from_dict(fakekube.federation_config({"east": k}, tmp_path), tmp_path / "f.yaml")
    reg = Registry.from_config(fed)
    task = asyncio.create_task(reg.run(build_sources(fed, timings=fakekube.fast_timings())))
    try:
        assert not await reg.wait_synced(1.0)
        await until(lambda: reg.cluster_status()["east"].last_error is not None, "an error")
        assert "forbidden" in (reg.cluster_status()["east"].last_error or "").lower()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


_SLICE_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.sampled_from("ab"), st.integers(0, 3), st.integers(0, 4)),
        st.tuples(st.just("delete"), st.sampled_from("ab"), st.integers(0, 3), st.just(0)),
        st.tuples(st.just("replace"), st.sampled_from(["a", "b", None]), st.integers(0, 3),
                  st.integers(0, 4)),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(_SLICE_OPS)
def test_endpoint_count_follows_every_write(ops: list[tuple[str, str | None, int, int]]) -> None:
    """The status's endpoint count, kept as slices come and go, is the sum over the
    slices stored, whatever the order of upserts, deletes and (per-namespace) lists."""
    reg = Registry([Cluster("east")])
    sink = reg.sink("east")
    model: dict[tuple[str, str], int] = {}  # (namespace, slice) -> endpoints

    def sl(ns: str, i: int, n: int) -> SliceObject:
        eps = tuple(Endpoint("east", (f"127.1.{i}.{j + 1}",)) for j in range(n))
        return SliceObject(ns, f"s{i}", f"svc{i % 2}", (), eps)

    for op, ns, i, n in ops:
        if op == "upsert" and ns is not None:
            sink.upsert(sl(ns, i, n))
            model[(ns, f"s{i}")] = n
        elif op == "delete" and ns is not None:
            sink.delete(ENDPOINTSLICES, ns, f"s{i}")
            model.pop((ns, f"s{i}"), None)
        else:  # a list: slices 0..i with n endpoints each, of one namespace or all ("a")
            fresh = [sl(ns or "a", k, n) for k in range(i + 1)]
            sink.replace(ENDPOINTSLICES, fresh, namespace=ns)
            for key in [k for k in model if ns is None or k[0] == ns]:
                del model[key]
            model.update({(s.namespace, s.name): n for s in fresh})
        assert reg.cluster_status()["east"].endpoints == sum(model.values())
    reg.close()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.sampled_from(["127.1.0.1", "127.1.0.2", "127.1.0.3", "::1"]), max_size=2),
            st.one_of(st.none(), st.sampled_from(["pod-a", "pod-b", "pod-c", "pod-d"])),
            st.booleans(),  # ready
            st.booleans(),  # the previous endpoint object again
        ),
        max_size=6,
    ),
    st.booleans(),  # refs given at all
    st.booleans(),  # sorted as a source sorts them
)
def test_a_lone_slice_merges_as_the_general_path_does(
    rows: list[tuple[list[str], str | None, bool, bool]], with_refs: bool, in_order: bool
) -> None:
    """``merge_endpoints`` hands back a lone slice's own tuple only when joining by
    targetRef and sorting would give exactly that."""
    eps: list[Endpoint] = []
    refs: list[str | None] = []
    for addrs, ref, ready, again in rows:
        eps.append(eps[-1] if again and eps else Endpoint("east", tuple(addrs), ready))
        refs.append(ref)
    if in_order:
        pairs = sorted(zip(eps, refs, strict=True), key=lambda p: p[0].addresses)
        eps, refs = [p[0] for p in pairs], [p[1] for p in pairs]
    sl = SliceObject("ns", "s", "svc", (), tuple(eps), tuple(refs) if with_refs else ())
    fast = merge_endpoints([sl])
    general = SliceObject("ns", "s", "svc", (), tuple(eps), tuple(refs) if with_refs else ())
    object.__setattr__(general, "alone", False)  # the path every other shape takes
    assert fast == merge_endpoints([general])
    if sl.alone:
        assert fast is sl.endpoints
