"""The Kubernetes source under faults: every run ends with the registry equal to the servers' truth.

The unmodified kubernetes-asyncio client talks HTTP, through a kubeconfig, to
fake API servers (tests/fakekube.py); faults are injected into those servers.
"""

from __future__ import annotations

from pathlib import Path

import fakekube
from fakekube import (
    ENDPOINTSLICES,
    SERVICES,
    FakeKube,
    converge,
    endpoint,
    fast_timings,
    running_registry,
    until,
)

from resolver.federation.model import ServiceKey

fake_kube = fakekube.fake_kube  # the fake API server factory fixture

CART = ServiceKey("shop", "cart")


def seed(k: FakeKube, base: str = "127.1.0") -> None:
    k.put_service("shop", "cart", ports=[("https", 443, "TCP")])
    k.put_slice(
        "shop", "cart-a", "cart", [endpoint(f"{base}.1", hostname="cart-0"), endpoint(f"{base}.2")]
    )
    k.put_service("shop", "pay")
    k.put_slice("shop", "pay-a", "pay", [endpoint(f"{base}.10", ready=False)])


def churn(k: FakeKube, i: int, base: str = "127.1.0") -> None:
    """Changes of every kind: a flip, an add, a delete."""
    k.put_slice(
        "shop",
        "cart-a",
        "cart",
        [endpoint(f"{base}.1", ready=i % 2 == 0), endpoint(f"{base}.{20 + i}")],
    )
    k.put_service("shop", f"new{i}")
    k.delete(SERVICES, "shop", "pay")
    k.delete(ENDPOINTSLICES, "shop", "pay-a")


async def test_sync_events_and_protocol(fake_kube, tmp_path: Path) -> None:
    """Initial list, then ADDED/MODIFIED/DELETED; the requests are a reflector's."""
    k = await fake_kube("east")
    seed(k)
    async with running_registry({"east": k}, tmp_path) as fed:
        reg = fed.registry
        await converge(reg, {"east": k})
        snap = reg.snapshot(CART)
        assert snap is not None and [c.cluster.name for c in snap.per_cluster] == ["east"]
        cs = snap.per_cluster[0]
        # pod reach: the slice's target ports, not the service port
        assert [(p.name, p.port, p.protocol) for p in cs.ports] == [("http", 8080, "TCP")]
        assert cs.cluster.region == "r-east" and not cs.stale
        k.put_slice("shop", "cart-a", "cart", [endpoint("127.1.0.1", ready=False)])
        k.delete(SERVICES, "shop", "pay")
        k.put_service("web", "front")
        await converge(reg, {"east": k})

    lists = [q for _, p, q in k.requests if p.endswith("/services") and "watch" not in q]
    watches = [q for _, p, q in k.requests if p.endswith("/services") and "watch" in q]
    assert lists[0]["resourceVersion"] == "0"
    first = watches[0]
    assert first["watch"] in ("true", "True", "1") and first["allowWatchBookmarks"] in (
        "true",
        "True",
    )
    assert 1 <= int(first["timeoutSeconds"]) <= 2
    assert int(first["resourceVersion"]) >= 1
    slice_q = [q for _, p, q in k.requests if p.endswith("/endpointslices")]
    assert all(q["labelSelector"] == "kubernetes.io/service-name" for q in slice_q)


async def test_clean_end_rewatches_from_last_rv(fake_kube, tmp_path: Path) -> None:
    """timeoutSeconds ends streams cleanly: watch again from the last RV, never relist."""
    k = await fake_kube("east")
    seed(k)
    timings = fast_timings(watch_timeout_min=1, watch_timeout_max=1)
    async with running_registry({"east": k}, tmp_path, timings=timings) as fed:
        r = fed.reflector("east", SERVICES)
        await until(lambda: r.watches >= 2, "a second watch request")
        churn(k, 1)
        await converge(fed.registry, {"east": k})
        assert r.lists == 1
        rvs = [
            int(q["resourceVersion"])
            for _, p, q in k.requests
            if p.endswith("/services") and "watch" in q
        ]
        assert rvs == sorted(rvs)  # never back in time


async def test_dropped_connection(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("east")
    seed(k)
    async with running_registry({"east": k}, tmp_path) as fed:
        for i in range(3):
            await k.watching(2)
            assert k.drop_watches() == 2
            churn(k, i)  # changes while the client reconnects
            await converge(fed.registry, {"east": k})
        # a drop mid-stream after some events of the replay
        k.inject("drop", after=1, times=2)
        k.drop_watches()
        churn(k, 7)
        k.put_service("shop", "late")
        await converge(fed.registry, {"east": k})
        assert fed.reflector("east", SERVICES).lists == 1  # re-watched from the last RV


async def test_stalled_stream(fake_kube, tmp_path: Path) -> None:
    """A stream that goes silent (no events, no bookmarks) is detected and replaced."""
    k = await fake_kube("east")
    seed(k)
    async with running_registry({"east": k}, tmp_path) as fed:
        r = fed.reflector("east", ENDPOINTSLICES)
        await k.watching(2)
        before = r.watches
        k.stall_watches()
        churn(k, 1)
        await converge(fed.registry, {"east": k})
        assert r.watches > before
        # a stall right after the headers of the next watch
        k.inject("stall", resource=ENDPOINTSLICES)
        k.drop_watches()
        churn(k, 2)
        await converge(fed.registry, {"east": k})


async def test_http_500_and_429(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("east")
    seed(k)
    async with running_registry({"east": k}, tmp_path) as fed:
        k.inject("http500", times=3)
        k.inject("http429", times=2, retry_after=0)
        k.drop_watches()
        churn(k, 1)
        await converge(fed.registry, {"east": k})
        assert not k.faults  # every fault was met
        status = fed.registry.cluster_status()["east"]
        assert status.errors >= 5 and status.last_error
        # 500 on a list too: the client keeps trying until it has one
        k.inject("http500", op="list", times=2)
        k.inject("gone", resource=SERVICES)
        k.drop_watches()
        churn(k, 2)
        await converge(fed.registry, {"east": k})
        assert not k.faults


async def test_html_502_body(fake_kube, tmp_path: Path) -> None:
    """A proxy's HTML error page (not JSON) on watch and on list."""
    k = await fake_kube("east")
    seed(k)
    async with running_registry({"east": k}, tmp_path) as fed:
        k.inject("html502", times=2)
        k.drop_watches()
        churn(k, 1)
        await converge(fed.registry, {"east": k})
        k.inject("html502", op="list")
        k.inject("http410", resource=SERVICES)
        k.drop_watches()
        churn(k, 2)
        await converge(fed.registry, {"east": k})
        assert not k.faults
        assert "502" in (fed.registry.cluster_status()["east"].last_error or "")


async def test_410_during_watch_relists_and_diffs(fake_kube, tmp_path: Path) -> None:
    """ERROR 410 (event) or HTTP 410: relist; what vanished meanwhile gets a synthetic delete."""
    k = await fake_kube("east")
    seed(k)
    async with running_registry({"east": k}, tmp_path) as fed:
        reg = fed.registry
        r = fed.reflector("east", SERVICES)
        assert r.lists == 1
        # The next watch answers 410 before replaying anything, so the deletion
        # of "pay" is only learnt from the relist.
        await k.watching(2)
        k.inject("gone", resource=SERVICES, after=0)
        k.drop_watches(SERVICES)
        k.delete(SERVICES, "shop", "pay")
        await converge(reg, {"east": k})
        assert r.lists == 2 and ServiceKey("shop", "pay") not in set(reg.keys())
        # 410 on a stream that is already open
        await k.watching(2)
        assert k.error_watches(410) == 2
        churn(k, 3)
        await converge(reg, {"east": k})
        assert r.lists == 3
        # HTTP 410 instead of an event
        k.inject("http410", resource=ENDPOINTSLICES, after=0)
        k.drop_watches(ENDPOINTSLICES)
        k.delete(ENDPOINTSLICES, "shop", "cart-a")
        await converge(reg, {"east": k})
        assert not reg.snapshot(CART).per_cluster[0].endpoints  # type: ignore[union-attr]
        # a plain 500 during a watch is not a relist
        await k.watching(1, SERVICES)
        k.error_watches(500, SERVICES)
        k.put_service("shop", "x")
        await converge(reg, {"east": k})
        assert r.lists == 3


async def test_410_on_rewatch_after_compaction(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("east")
    seed(k)
    async with running_registry({"east": k}, tmp_path) as fed:
        reg = fed.registry
        # Keep the client out while history is written and compacted away.
        k.inject("http500", times=4)
        k.drop_watches()
        k.delete(SERVICES, "shop", "pay")
        k.delete(ENDPOINTSLICES, "shop", "pay-a")
        k.put_slice("shop", "cart-a", "cart", [endpoint("127.1.0.99")])
        k.compact()
        await converge(reg, {"east": k})
        assert fed.reflector("east", SERVICES).lists == 2
        assert fed.reflector("east", ENDPOINTSLICES).lists == 2


async def test_410_as_http_status_on_compaction(fake_kube, tmp_path: Path) -> None:
    """Some servers (etcd-backed watches) answer a too-old RV with HTTP 410, not an event."""
    k = await fake_kube("east", expired_as_http=True)
    seed(k)
    async with running_registry({"east": k}, tmp_path) as fed:
        k.inject("http500", times=2)
        k.drop_watches()
        churn(k, 1)
        k.compact()
        await converge(fed.registry, {"east": k})
        assert fed.reflector("east", SERVICES).lists == 2


async def test_api_down_longer_than_grace(fake_kube, tmp_path: Path) -> None:
    """Down past stale_after: stale (serve keeps data, drop removes the cluster); back: live again."""
    east = await fake_kube("east")
    west = await fake_kube("west")
    seed(east, "127.1.0")
    seed(west, "127.2.0")
    settings = {
        "east": {"stale_after": 0.5, "stale_policy": "serve"},
        "west": {"stale_after": 0.5, "stale_policy": "drop"},
    }
    async with running_registry({"east": east, "west": west}, tmp_path, clusters=settings) as fed:
        reg = fed.registry
        changed: list[frozenset[ServiceKey]] = []
        reg.subscribe(changed.append)
        await east.down()
        await west.down()
        churn(east, 1)  # the truth moves on while we cannot see it
        churn(west, 1)
        await until(
            lambda: all(s.stale for s in reg.cluster_status().values()), "both clusters stale"
        )
        # The stale mark republishes the cluster's keys through the coalesced publish,
        # which runs a loop turn or more after the mark itself.
        await until(lambda: any(CART in c for c in changed), "the stale clusters republished")
        snap = reg.snapshot(CART)
        assert snap is not None and [c.cluster.name for c in snap.per_cluster] == ["east"]
        assert snap.per_cluster[0].stale and snap.per_cluster[0].endpoints  # last-known, flagged
        st = reg.cluster_status()["east"]
        assert st.synced and st.contact_age is not None and st.contact_age >= 0.5
        assert ServiceKey("shop", "pay") in set(reg.keys())  # east's last-known data still served
        await east.up()
        await west.up()
        await converge(reg, {"east": east, "west": west})
        await until(lambda: not any(s.stale for s in reg.cluster_status().values()), "both live")
        snap = reg.snapshot(CART)
        assert snap is not None and not any(c.stale for c in snap.per_cluster)
        assert [c.cluster.name for c in snap.per_cluster] == ["east", "west"]


async def test_faults_in_one_cluster_leave_the_other_untouched(fake_kube, tmp_path: Path) -> None:
    east = await fake_kube("east")
    west = await fake_kube("west")
    seed(east, "127.1.0")
    seed(west, "127.2.0")
    settings = {"east": {"stale_after": 0.5}, "west": {"stale_after": 0.5}}
    async with running_registry({"east": east, "west": west}, tmp_path, clusters=settings) as fed:
        reg = fed.registry
        await converge(reg, {"east": east, "west": west})
        west_lists = fed.reflector("west", SERVICES).lists
        await east.watching(2)
        east_before = {k: reg.snapshot(k).cluster("east") for k in set(reg.keys())}  # type: ignore[union-attr]
        # east: stalled, then erroring, then gone for longer than the grace
        east.stall_watches()
        east.inject("http500", op="any", times=1000)
        await east.down()
        for i in range(5):
            churn(west, i)
            await converge(reg, {"west": west})
        await until(lambda: reg.cluster_status()["east"].stale, "east stale")
        status = reg.cluster_status()
        assert not status["west"].stale and status["west"].errors == 0
        assert fed.reflector("west", SERVICES).lists == west_lists
        # east's last-known data is exactly what it was (only flagged stale)
        for key, cs in east_before.items():
            now = reg.snapshot(key)
            assert now is not None and cs is not None
            e = now.cluster("east")
            assert e is not None and e.stale and e.endpoints == cs.endpoints
        east.faults.clear()
        await east.up()
        await converge(reg, {"east": east, "west": west})
