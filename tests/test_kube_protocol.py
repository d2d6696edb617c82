"""The fake API server is faithful: the library's own typed API and ``watch.Watch`` accept it.

kubernetes-asyncio deserializes lists into OpenAPI models (with client-side
validation of required fields) and its ``Watch`` turns ERROR events into
``ApiException``; if the fake's objects or events were shaped wrong these
would fail. That is what lets the fault tests stand in for a real cluster.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import fakekube
import pytest
from fakekube import (
    SERVICES,
    FakeKube,
    endpoint,
    write_kubeconfig,
)
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

fake_kube = fakekube.fake_kube  # the fake API server factory fixture


async def api_for(k: FakeKube, tmp_path: Path, context: str | None = None) -> client.ApiClient:
    cfg = client.Configuration()
    kc = write_kubeconfig(tmp_path / "kc", {k.name: k.url})
    await config.load_kube_config(
        config_file=str(kc),
        context=context or k.name,
        client_configuration=cfg,
        persist_config=False,
    )
    return client.ApiClient(configuration=cfg)


async def test_typed_lists_deserialize(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("east")
    k.put_service("shop", "cart", ports=[("https", 443, "TCP")], lb_ips=["127.1.0.200"])
    k.put_slice(
        "shop",
        "cart-x1",
        "cart",
        [
            endpoint("127.1.0.1", hostname="cart-0", zone="z1", node="n1", pod="cart-0"),
            endpoint("127.1.0.2", ready=False, terminating=True),
        ],
    )
    async with await api_for(k, tmp_path) as api:
        svcs = await client.CoreV1Api(api).list_service_for_all_namespaces()
        assert isinstance(svcs, client.V1ServiceList)
        assert svcs.metadata.resource_version == str(k.rv)
        (svc,) = svcs.items
        assert (svc.metadata.namespace, svc.metadata.name) == ("shop", "cart")
        assert (
            svc.spec.ports[0].port == 443
            and svc.status.load_balancer.ingress[0].ip == "127.1.0.200"
        )
        ns_svcs = await client.CoreV1Api(api).list_namespaced_service("shop")
        assert [s.metadata.name for s in ns_svcs.items] == ["cart"]
        assert (await client.CoreV1Api(api).list_namespaced_service("other")).items == []
        slices = await client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces()
        (sl,) = slices.items
        assert (
            sl.address_type == "IPv4" and sl.metadata.labels["kubernetes.io/service-name"] == "cart"
        )
        e0, e1 = sl.endpoints
        assert (
            e0.addresses == ["127.1.0.1"] and e0.conditions.ready and e0.target_ref.name == "cart-0"
        )
        assert e1.conditions.ready is False and e1.conditions.terminating is True
        version = await client.VersionApi(api).get_code()
        assert version.major == "1"


async def test_library_watch_sees_events_bookmarks_and_timeout(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("east", bookmark_interval=0.05)
    k.put_service("shop", "cart")
    async with await api_for(k, tmp_path) as api:
        v1 = client.CoreV1Api(api)
        rv = (await v1.list_service_for_all_namespaces()).metadata.resource_version
        seen: list[tuple[str, object]] = []

        async def mutate() -> None:
            await k.watching(1)
            k.put_service("shop", "cart", labels={"v": "2"})
            k.put_service("shop", "pay")
            k.delete(SERVICES, "shop", "cart")

        task = asyncio.create_task(mutate())
        w = watch.Watch()
        # timeout_seconds: the server ends the stream and the library's iterator stops
        async for ev in w.stream(
            v1.list_service_for_all_namespaces,
            resource_version=rv,
            timeout_seconds=1,
            allow_watch_bookmarks=True,
        ):
            obj = ev["object"]
            seen.append((ev["type"], obj if isinstance(obj, dict) else obj.metadata.name))
        await task
        await w.close()
    kinds = [t for t, _ in seen]
    assert [x for x in seen if x[0] != "BOOKMARK"] == [
        ("MODIFIED", "cart"),
        ("ADDED", "pay"),
        ("DELETED", "cart"),
    ]
    assert "BOOKMARK" in kinds
    bm = next(o for t, o in seen if t == "BOOKMARK")
    assert isinstance(bm, dict) and int(bm["metadata"]["resourceVersion"]) >= int(rv)
    assert w.resource_version == str(k.rv)  # the library tracked RVs from our events


async def test_library_raises_410_for_compacted_rv(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("east")
    k.put_service("shop", "cart")
    old = str(k.rv)
    k.put_service("shop", "pay")
    k.compact()
    async with await api_for(k, tmp_path) as api:
        v1 = client.CoreV1Api(api)
        w = watch.Watch()
        with pytest.raises(ApiException) as exc:
            async for _ in w.stream(
                v1.list_service_for_all_namespaces, resource_version=old, timeout_seconds=1
            ):
                pass
        assert exc.value.status == 410
        await w.close()
        # from the current RV it is fine
        w = watch.Watch()
        async for _ in w.stream(
            v1.list_service_for_all_namespaces, resource_version=str(k.rv), timeout_seconds=1
        ):
            pass
        await w.close()


async def test_label_selector_transitions(fake_kube, tmp_path: Path) -> None:
    """Objects entering/leaving a selection are ADDED/DELETED for a selecting watch."""
    k = await fake_kube("east")
    k.put_service("shop", "a", labels={"export": "yes", "tier": "web"})
    k.put_service("shop", "b", labels={"export": "no"})
    k.put_service("shop", "c")
    async with await api_for(k, tmp_path) as api:
        v1 = client.CoreV1Api(api)
        for sel, names in [
            ("export=yes", ["a"]),
            ("export==yes", ["a"]),
            ("export!=yes", ["b", "c"]),
            ("export", ["a", "b"]),
            ("!export", ["c"]),
            ("export in (yes,no),tier notin (db)", ["a", "b"]),
            ("export=yes,tier=db", []),
        ]:
            got = await v1.list_service_for_all_namespaces(label_selector=sel)
            assert [s.metadata.name for s in got.items] == names, sel
        rv = (
            await v1.list_service_for_all_namespaces(label_selector="export=yes")
        ).metadata.resource_version

        async def mutate() -> None:
            await k.watching(1)
            k.put_service("shop", "b", labels={"export": "yes"})  # enters
            k.put_service("shop", "a", labels={"export": "no"})  # leaves
            k.put_service("shop", "b", labels={"export": "yes", "x": "1"})  # stays
            k.delete(SERVICES, "shop", "c")  # never selected: nothing

        task = asyncio.create_task(mutate())
        w = watch.Watch()
        seen = []
        async for ev in w.stream(
            v1.list_service_for_all_namespaces,
            resource_version=rv,
            label_selector="export=yes",
            timeout_seconds=1,
        ):
            seen.append((ev["type"], ev["object"].metadata.name))
        await task
        await w.close()
    assert seen == [("ADDED", "b"), ("DELETED", "a"), ("MODIFIED", "b")]


@pytest.mark.parametrize("flag", ["true", "True", "1"])
async def test_watch_flag_spellings(fake_kube, flag: str) -> None:
    k = await fake_kube("east")
    k.put_service("shop", "cart")
    async with aiohttp.ClientSession() as s:
        url = f"{k.url}/api/v1/services?watch={flag}&timeoutSeconds=1&resourceVersion=0"
        async with s.get(url) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("application/json")
            events = [json.loads(await r.content.readline())]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "cart")]
    assert events[0]["object"]["kind"] == "Service" and events[0]["object"]["apiVersion"] == "v1"


async def test_kubeconfig_contexts_pick_the_cluster(fake_kube, tmp_path: Path) -> None:
    east = await fake_kube("east")
    west = await fake_kube("west")
    east.put_service("shop", "only-east")
    west.put_service("shop", "only-west")
    kc = write_kubeconfig(tmp_path / "kc", {"east": east.url, "west": west.url})
    for ctx, want in (("east", "only-east"), ("west", "only-west")):
        cfg = client.Configuration()
        await config.load_kube_config(
            config_file=str(kc), context=ctx, client_configuration=cfg, persist_config=False
        )
        async with client.ApiClient(configuration=cfg) as api:
            got = await client.CoreV1Api(api).list_service_for_all_namespaces()
            assert [s.metadata.name for s in got.items] == [want]
    # the library's global default configuration was never touched
    assert client.Configuration.get_default_copy().host not in (east.url, west.url)


def test_threaded_fakes_for_blocking_tests(tmp_path: Path) -> None:
    """The fakes on their own thread answer a blocking client (as a fedns subprocess would be)."""
    import urllib.request

    with fakekube.ThreadedFakeKubes(["east", "west"]) as fakes:
        fakes.call(fakes["east"].put_service, "shop", "cart")
        fed = fakekube.federation_config(fakes.kubes, tmp_path)
        assert [c["context"] for c in fed["clusters"]] == ["east", "west"]
        assert (tmp_path / fed["clusters"][0]["kubeconfig"]).exists()
        with urllib.request.urlopen(f"{fakes['east'].url}/api/v1/services", timeout=5) as r:
            body = json.loads(r.read())
        assert [i["metadata"]["name"] for i in body["items"]] == ["cart"]
        fakes.run(fakes["west"].down())
        fakes.run(fakes["west"].up())
        with urllib.request.urlopen(f"{fakes['west'].url}/api/v1/services", timeout=5) as r:
            assert json.loads(r.read())["items"] == []
