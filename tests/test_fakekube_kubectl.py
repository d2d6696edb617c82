"""The fake API server (tests/fakekube.py) checked against a second, independent client: kubectl.

kubectl (Debian ``kubernetes-client``; client-go, a different code base from the
kubernetes-asyncio that fedns uses) reaches the fake through a kubeconfig of its own:
discovery, lists as JSON and as server-side ``meta.k8s.io`` Tables, paging, field and
label selectors, watches. What it sees is compared with what fedns's own Kubernetes
source sees of the same server: ``KubernetesSource`` (resolver/federation/sources/
kubernetes.py, unmodified kubernetes-asyncio) feeding a recording sink, so every object
and every watch event fedns takes in is on record with the resourceVersion its
reflector holds after it.

kubectl runs with a kubeconfig, HOME and ``--cache-dir`` under the test's tmp dir, talks
to 127.0.0.1 only, has a short ``--request-timeout`` (which also caps a watch), and each
watch process is terminated at the end. Only kubectl features present in both 1.20 (what
Debian packages) and 1.32 are used; where the two differ (1.20 knows no aggregated
discovery), the assertions follow what kubectl asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import fakekube
import pytest
from fakekube import (
    ENDPOINTSLICES,
    SERVICES,
    FakeKube,
    endpoint,
    endpoint_slice,
    fast_timings,
    federation_config,
    service,
    until,
    write_kubeconfig,
)

from resolver.federation.config import federation_from_dict
from resolver.federation.model import Cluster, KubeObject, ServiceObject, SliceObject
from resolver.federation.sources.kubernetes import KubernetesSource

fake_kube = fakekube.fake_kube  # the fake API server factory fixture

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl not installed (apt: kubernetes-client)"
)
SVC_LABEL = "kubernetes.io/service-name"


# -- kubectl ---------------------------------------------------------------------------------------


class Kubectl:
    """kubectl with everything it reads or writes under ``home`` and one fake as its server."""

    def __init__(self, kube: FakeKube, home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.kubeconfig = write_kubeconfig(home / "kubeconfig", {kube.name: kube.url})
        self.cache = home / "cache"
        # No proxy variables, no real HOME: nothing but this kubeconfig and loopback.
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LANG": "C"}
        self.env["KUBECONFIG"] = str(self.kubeconfig)

    def argv(self, args: Iterable[str], timeout: str) -> list[str]:
        assert KUBECTL is not None
        return [KUBECTL, *args, f"--cache-dir={self.cache}", f"--request-timeout={timeout}"]

    async def run(self, *args: str, ok: bool = True) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *self.argv(args, "5s"),
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"kubectl {' '.join(args)} hung") from None
        rc = proc.returncode or 0
        if ok and rc != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({rc}): {err.decode()}")
        return rc, out.decode(), err.decode()

    async def json(self, *args: str) -> Any:
        return json.loads((await self.run(*args))[1])

    async def watch(self, *args: str) -> KubectlWatch:
        w = KubectlWatch(self, args)
        await w.start()
        return w


class KubectlWatch:
    """A ``kubectl get --watch`` process; stdout decoded as it arrives."""

    def __init__(self, kubectl: Kubectl, args: tuple[str, ...]) -> None:
        self.kubectl = kubectl
        self.args = args
        self.text = ""
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # The request timeout caps the watch too: a process we failed to stop still ends.
        self.proc = await asyncio.create_subprocess_exec(
            *self.kubectl.argv(self.args, "25s"),
            env=self.kubectl.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self.text += chunk.decode()

    def events(self) -> list[dict[str, Any]]:
        """The JSON watch events printed so far (kubectl pretty-prints or not, by version)."""
        dec, out, i = json.JSONDecoder(), [], 0
        while True:
            while i < len(self.text) and self.text[i].isspace():
                i += 1
            if i >= len(self.text):
                return out
            try:
                ev, i = dec.raw_decode(self.text, i)
            except ValueError:
                return out  # half an event: the rest is still in the pipe
            out.append(ev)

    def rows(self) -> list[list[str]]:
        """Table output: the rows after the header (service cells hold no spaces)."""
        lines = [ln.split() for ln in self.text.splitlines() if ln.strip()]
        return [ln for ln in lines if ln[0] != "EVENT"]

    async def exited(self, timeout: float) -> bool:
        assert self.proc is not None
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> str:
        """End the process (if it has not ended), return its stderr."""
        assert self.proc is not None and self._reader is not None
        if self.proc.returncode is None:
            self.proc.terminate()
            if not await self.exited(5):
                self.proc.kill()
                await self.proc.wait()
        await self._reader
        assert self.proc.stderr is not None
        return (await self.proc.stderr.read()).decode()


def watch_requests(kube: FakeKube, path: str) -> list[dict[str, Any]]:
    return [
        r
        for r in kube.request_log
        if r["path"] == path
        and r["query"].get("watch") in ("true", "1")
        and r["user_agent"].startswith("kubectl")
    ]


def kubectl_requests(kube: FakeKube, since: int, path: str) -> list[dict[str, Any]]:
    """kubectl's requests to ``path`` (fedns's source is talking to the same server)."""
    return [
        r
        for r in kube.request_log[since:]
        if r["path"] == path and r["user_agent"].startswith("kubectl")
    ]


def parse_table(text: str) -> list[dict[str, str]]:
    """kubectl's column output, cut at the header's column starts (cells may hold spaces)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    names = lines[0].split()
    return [
        {n: ln[a:b].strip() for n, a, b in zip(names, starts, [*starts[1:], None], strict=True)}
        for ln in lines[1:]
    ]


# -- fedns's side: its real Kubernetes source, into a sink that keeps a record ----------------------


class Recorder:
    """A ``ClusterSink`` that records what fedns's source delivers, with its reflector's RV.

    The sink is told "upsert" for ADDED and MODIFIED alike; which one it was is what the
    sink's own state says (new key: ADDED), exactly what fedns's registry concludes.
    """

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster
        self.source: KubernetesSource | None = None
        self.objects: dict[str, dict[tuple[str, str], KubeObject]] = {
            SERVICES: {},
            ENDPOINTSLICES: {},
        }
        self.lists: list[str] = []
        self.events: list[tuple[str, str, str, str, str]] = []  # kind, type, ns, name, rv
        self.errors: list[str] = []
        self._pending: tuple[str, str, tuple[str, str]] | None = None

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    @staticmethod
    def _kind(obj: KubeObject) -> str:
        return SERVICES if isinstance(obj, ServiceObject) else ENDPOINTSLICES

    def upsert(self, obj: KubeObject) -> None:
        kind = self._kind(obj)
        typ = "MODIFIED" if obj.ident in self.objects[kind] else "ADDED"
        self.objects[kind][obj.ident] = obj
        self._pending = (kind, typ, obj.ident)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.objects[kind].pop((namespace, name), None)
        self._pending = (kind, "DELETED", (namespace, name))

    def replace(self, kind: str, objects: Iterable[KubeObject]) -> None:
        self.objects[kind] = {o.ident: o for o in objects}
        self.lists.append(kind)

    def contact(self) -> None:
        # The reflector calls this right after taking an event's resourceVersion.
        if self._pending is None or self.source is None:
            return
        kind, typ, (ns, name) = self._pending
        self._pending = None
        rv = self.source.reflectors[kind].rv
        assert rv is not None
        self.events.append((kind, typ, ns, name, rv))

    def error(self, message: str) -> None:
        self.errors.append(message)

    def seen(self, kind: str) -> list[tuple[str, str, str, str]]:
        return [(t, ns, n, rv) for k, t, ns, n, rv in self.events if k == kind]


@contextlib.asynccontextmanager
async def fedns_source(kube: FakeKube, directory: Path) -> Any:
    """fedns's KubernetesSource for this fake (its own kubeconfig), synced, cancelled on exit."""
    fed = federation_from_dict(
        federation_config({kube.name: kube}, directory), directory / "fedns.yaml"
    )
    rec = Recorder(fed.clusters[0])
    source = KubernetesSource(fed.clusters[0], fed.export, timings=fast_timings())
    rec.source = source
    task = asyncio.create_task(source.run(rec))
    try:
        await until(lambda: {SERVICES, ENDPOINTSLICES} <= set(rec.lists), "fedns listed")
        yield rec
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# -- the comparison: fedns's stripped objects against kubectl's JSON ----------------------------------


def ports_of(raw: Iterable[Mapping[str, Any]]) -> set[tuple[str, int, str]]:
    return {(p.get("name", ""), p["port"], p.get("protocol", "TCP")) for p in raw}


def kubectl_services(items: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Any]:
    out = {}
    for s in items:
        m = s["metadata"]
        ingress = ((s.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        out[(m["namespace"], m["name"])] = (
            ports_of(s["spec"].get("ports") or []),
            {i["ip"] for i in ingress if "ip" in i},
            {k: v for k, v in (m.get("annotations") or {}).items() if k.startswith("fedns.io/")},
        )
    return out


def fedns_services(rec: Recorder) -> dict[tuple[str, str], Any]:
    return {
        ident: (
            {(p.name, p.port, p.protocol) for p in o.ports},
            set(o.ingress_ips),
            dict(o.annotations),
        )
        for ident, o in rec.objects[SERVICES].items()
        if isinstance(o, ServiceObject)
    }


def kubectl_slices(items: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Any]:
    """Per slice: its service, ports and endpoints, conditions defaulted as the API documents."""
    out = {}
    for sl in items:
        m = sl["metadata"]
        eps = set()
        for e in sl.get("endpoints") or []:
            c = e.get("conditions") or {}
            ready = True if c.get("ready") is None else c["ready"]
            serving = ready if c.get("serving") is None else c["serving"]
            eps.add(
                (
                    tuple(e["addresses"]),
                    ready,
                    serving,
                    bool(c.get("terminating")),
                    e.get("hostname"),
                    e.get("zone"),
                    e.get("nodeName"),
                )
            )
        service_name = (m.get("labels") or {}).get(SVC_LABEL)
        out[(m["namespace"], m["name"])] = (service_name, ports_of(sl.get("ports") or []), eps)
    return out


def fedns_slices(rec: Recorder) -> dict[tuple[str, str], Any]:
    out = {}
    for ident, o in rec.objects[ENDPOINTSLICES].items():
        assert isinstance(o, SliceObject)
        eps = {
            (e.addresses, e.ready, e.serving, e.terminating, e.hostname, e.zone, e.node)
            for e in o.endpoints
        }
        out[ident] = (o.service, {(p.name, p.port, p.protocol) for p in o.ports}, eps)
    return out


def more(items: list[str]) -> str:
    """The Table's list cell: three shown, then "+ N more..." (printers.go listWithMoreString)."""
    ret = ",".join(items[:3])
    if len(items) > 3:
        return f"{ret} + {len(items) - 3} more..."
    return ret or "<unset>"


# -- what the fake holds ----------------------------------------------------------------------------


def seed(k: FakeKube) -> None:
    """Every Table cell kind: LoadBalancer, NodePort, headless, external IPs, >3 endpoints."""
    k.put_service(
        "shop",
        "cart",
        ports=[("https", 443, "TCP"), ("http", 80, "TCP")],
        annotations={"fedns.io/policy": "failover"},
        labels={"tier": "web"},
    )
    k.put_service(
        "shop",
        "pay",
        ports=[("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")],
        lb_ips=["127.1.0.201", "127.1.0.200"],
    )
    headless = service("shop", "db", ports=[("pg", 5432, "TCP")])
    headless["spec"]["clusterIP"] = "None"
    k.apply(SERVICES, headless)
    node_port = service("web", "front", type="NodePort")
    node_port["spec"]["ports"][0]["nodePort"] = 30080
    k.apply(SERVICES, node_port)
    external = service("web", "api")
    external["spec"]["externalIPs"] = ["127.1.0.250"]
    k.apply(SERVICES, external)
    k.put_slice(
        "shop",
        "cart-a",
        "cart",
        [
            endpoint("127.1.0.1", hostname="cart-0", zone="z1", node="n1", pod="cart-0"),
            endpoint("127.1.0.2", ready=False, serving=True, terminating=True),
            endpoint("127.1.0.3", ready=None),
            endpoint("127.1.0.4", zone="z2"),
            endpoint("127.1.0.5"),
        ],
        ports=[("https", 8443, "TCP"), ("http", 8080, "TCP")],
    )
    k.put_slice("shop", "cart-v6", "cart", [endpoint("fd00::1")], address_type="IPv6")
    k.put_slice("shop", "pay-a", "pay", [endpoint("127.1.0.10")], ports=[("dns", 53, "UDP")])
    k.put_slice("shop", "orphan", None, [endpoint("127.1.0.99")])  # no service-name label
    k.apply(ENDPOINTSLICES, endpoint_slice("web", "front-a", "front", [], ports=[]))


# -- lists, Tables, paging, selectors -----------------------------------------------------------------


async def test_lists_and_tables_match_fedns(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("east")
    seed(k)
    kc = Kubectl(k, tmp_path / "kubectl")
    async with fedns_source(k, tmp_path) as rec:
        svcs = (await kc.json("get", "services", "-A", "-o", "json"))["items"]
        slices = (await kc.json("get", "endpointslices", "-A", "-o", "json"))["items"]

        # kubectl decodes exactly what the fake stores: every field, resourceVersions included.
        assert svcs == k.objects(SERVICES)
        assert slices == k.objects(ENDPOINTSLICES)
        # The same objects fedns took in: names, namespaces, ports, ingress, endpoints.
        assert kubectl_services(svcs) == fedns_services(rec)
        selected = [s for s in slices if SVC_LABEL in (s["metadata"].get("labels") or {})]
        assert kubectl_slices(selected) == fedns_slices(rec)
        labelled = await kc.json("get", "endpointslices", "-A", "-l", SVC_LABEL, "-o", "json")
        assert labelled["items"] == selected  # the label selector fedns uses, through kubectl

        # One namespace; and the list's resourceVersion, which fedns watches from.
        shop = (await kc.json("get", "svc", "-n", "shop", "-o", "json"))["items"]
        assert {s["metadata"]["name"] for s in shop} == {
            n for ns, n in fedns_services(rec) if ns == "shop"
        }
        raw = await kc.json("get", "--raw", "/api/v1/services")
        assert raw["kind"] == "ServiceList" and raw["items"] == [
            {x: v for x, v in s.items() if x not in ("kind", "apiVersion")} for s in svcs
        ]
        assert raw["metadata"]["resourceVersion"] == str(k.rv)
        await until(
            lambda: (
                rec.source is not None
                and rec.source.reflectors[SERVICES].rv == raw["metadata"]["resourceVersion"]
            ),
            "fedns holds the list's resourceVersion",
        )

        # Paged (limit/continue): the same items as one read, in three requests.
        n0 = len(k.request_log)
        paged = (await kc.json("get", "svc", "-A", "-o", "json", "--chunk-size=2"))["items"]
        assert paged == svcs
        pages = [r["query"] for r in kubectl_requests(k, n0, "/api/v1/services")]
        assert [q.get("limit") for q in pages] == ["2", "2", "2"]
        assert "continue" not in pages[0] and all(q.get("continue") for q in pages[1:])

        # Field selectors, as kubectl sends them, select what the unselected list says.
        lb = await kc.json(
            "get", "svc", "-A", "--field-selector", "spec.type=LoadBalancer", "-o", "json"
        )
        assert [s["metadata"]["name"] for s in lb["items"]] == [
            s["metadata"]["name"] for s in svcs if s["spec"]["type"] == "LoadBalancer"
        ]
        not_shop = await kc.json(
            "get", "svc", "-A", "--field-selector", "metadata.namespace!=shop", "-o", "json"
        )
        assert {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in not_shop["items"]} == {
            key for key in fedns_services(rec) if key[0] != "shop"
        }
        rc, _, err = await kc.run("get", "svc", "-A", "--field-selector", "spec.ports=1", ok=False)
        assert rc != 0 and "field label not supported: spec.ports" in err

        # Plain table output: kubectl asks for a server-side Table and prints its columns.
        n0 = len(k.request_log)
        _, text, _ = await kc.run("get", "svc", "-A")
        asked = kubectl_requests(k, n0, "/api/v1/services")
        assert asked and "as=Table" in asked[0]["accept"] and "g=meta.k8s.io" in asked[0]["accept"]
        rows = {(r["NAMESPACE"], r["NAME"]): r for r in parse_table(text)}
        assert set(rows) == set(fedns_services(rec))
        by_key = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in svcs}
        for key, (ports, ingress, _) in fedns_services(rec).items():
            row, spec = rows[key], by_key[key]["spec"]
            assert row["TYPE"] == spec["type"]
            assert row["CLUSTER-IP"] == spec["clusterIP"]  # "None" for the headless one
            cell_ports = {re.sub(r":\d+/", "/", p) for p in row["PORT(S)"].split(",")}
            assert cell_ports == {f"{port}/{proto}" for _, port, proto in ports}
            if spec["type"] == "LoadBalancer":
                assert row["EXTERNAL-IP"] == ",".join(sorted(ingress))
            else:
                assert row["EXTERNAL-IP"] == ",".join(spec.get("externalIPs") or ["<none>"])
        assert rows[("web", "front")]["PORT(S)"] == "80:30080/TCP"
        # -o wide shows the priority-1 column the server sent along.
        _, wide, _ = await kc.run("get", "svc", "-A", "-o", "wide")
        for row in parse_table(wide):
            selector = by_key[(row["NAMESPACE"], row["NAME"])]["spec"]["selector"]
            assert row["SELECTOR"] == ",".join(f"{a}={b}" for a, b in sorted(selector.items()))

        _, text, _ = await kc.run("get", "endpointslices", "-A")
        rows = {(r["NAMESPACE"], r["NAME"]): r for r in parse_table(text)}
        assert set(rows) == {(s["metadata"]["namespace"], s["metadata"]["name"]) for s in slices}
        for key, (_, ports, eps) in fedns_slices(rec).items():
            raw_slice = next(
                s for s in slices if (s["metadata"]["namespace"], s["metadata"]["name"]) == key
            )
            assert rows[key]["ADDRESSTYPE"] == raw_slice["addressType"]
            addresses = [a for e in raw_slice["endpoints"] for a in e["addresses"]]
            assert sorted(addresses) == sorted(a for e in eps for a in e[0])
            assert rows[key]["ENDPOINTS"] == more(addresses)
            assert rows[key]["PORTS"] == more([str(p["port"]) for p in raw_slice["ports"]])
            assert {int(p) for p in rows[key]["PORTS"].split(",") if p.isdigit()} <= {
                port for _, port, _ in ports
            }
        assert rows[("shop", "cart-a")]["ENDPOINTS"] == "127.1.0.1,127.1.0.2,127.1.0.3 + 2 more..."
        assert rows[("web", "front-a")]["ENDPOINTS"] == "<unset>"

        # Not found. kubectl >= 1.2x then asks for the namespace, to say which one is missing.
        rc, _, err = await kc.run("get", "svc", "nope", "-n", "shop", ok=False)
        assert rc != 0 and 'services "nope" not found' in err
        n0 = len(k.request_log)
        rc, _, err = await kc.run("get", "svc", "cart", "-n", "ghost", ok=False)
        missing = (
            'namespaces "ghost" not found'
            if kubectl_requests(k, n0, "/api/v1/namespaces/ghost")
            else 'services "cart" not found'
        )
        assert rc != 0 and missing in err
        assert not rec.errors  # fedns's source had no complaint all along


async def test_discovery_legacy_and_aggregated(fake_kube, tmp_path: Path) -> None:
    """A pre-1.26 server (legacy discovery only) and a 1.30 one: kubectl works with both."""
    for aggregated in (False, True):
        k = await fake_kube(f"disc{int(aggregated)}", aggregated_discovery=aggregated)
        seed(k)
        kc = Kubectl(k, tmp_path / f"kubectl-{aggregated}")  # a fresh discovery cache
        svcs = (await kc.json("get", "svc", "-A", "-o", "json"))["items"]
        assert svcs == k.objects(SERVICES)
        _, text, _ = await kc.run("get", "endpointslices", "-A")
        assert {r["NAME"] for r in parse_table(text)} == {
            s["metadata"]["name"] for s in k.objects(ENDPOINTSLICES)
        }
        _, names, _ = await kc.run("api-resources", "-o", "name")
        assert {"services", "endpointslices.discovery.k8s.io"} <= set(names.split())
        log = {r["path"]: r["accept"] for r in k.request_log}
        asked_aggregated = "g=apidiscovery.k8s.io" in log["/api"]  # kubectl >= 1.26 does
        if aggregated and asked_aggregated:
            # One round trip for all groups and resources: no per-group-version requests.
            assert "/api/v1" not in log and "/apis/discovery.k8s.io/v1" not in log
        else:
            # The legacy walk: group list, then each group-version's resource list.
            assert {"/api", "/apis", "/api/v1", "/apis/discovery.k8s.io/v1"} <= set(log)


# -- watches ---------------------------------------------------------------------------------------


async def post(kube: FakeKube, path: str, body: Mapping[str, Any]) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{kube.url}{path}", json=body) as r:
        assert r.status == 200, await r.text()


async def apply(kube: FakeKube, resource: str, obj: dict[str, Any]) -> None:
    """Through the fake's control API, as a driver in another process would."""
    await post(kube, "/_fake/apply", {"items": [{"resource": resource, "object": obj}]})


async def delete(kube: FakeKube, resource: str, namespace: str, name: str) -> None:
    await post(kube, "/_fake/delete", {"resource": resource, "namespace": namespace, "name": name})


def kubectl_seen(w: KubectlWatch, after: int) -> list[tuple[str, str, str, str]]:
    """(type, namespace, name, resourceVersion) of the JSON events past resourceVersion ``after``."""
    out = []
    for ev in w.events():
        m = ev["object"].get("metadata", {})
        rv = m.get("resourceVersion", "")
        if ev["type"] != "ERROR" and int(rv) > after:
            out.append((ev["type"], m.get("namespace", ""), m.get("name", ""), rv))
    return out


async def settle(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for ``pred``, then let the caller's assertion show what differs if it never held."""
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        await asyncio.sleep(0.02)


async def test_watch_events_match_fedns_and_410(fake_kube, tmp_path: Path) -> None:
    k = await fake_kube("east")
    seed(k)
    kc = Kubectl(k, tmp_path / "kubectl")
    base = k.rv
    async with fedns_source(k, tmp_path) as rec:
        watches = {
            "svc": await kc.watch(
                "get", "svc", "-A", "--watch", "-o", "json", "--output-watch-events"
            ),
            "slices": await kc.watch(
                "get",
                "endpointslices",
                "-A",
                "-l",
                SVC_LABEL,
                "--watch",
                "-o",
                "json",
                "--output-watch-events",
            ),
            # Table watch: events come as one-row Tables, column definitions on the first.
            "table": await kc.watch("get", "svc", "-A", "--watch-only", "--output-watch-events"),
            # One named object: kubectl watches it with fieldSelector=metadata.name.
            "cart": await kc.watch(
                "get", "svc", "cart", "-n", "shop", "--watch", "-o", "json", "--output-watch-events"
            ),
        }
        try:
            await until(
                lambda: (
                    len(watch_requests(k, "/api/v1/services")) >= 2
                    and len(watch_requests(k, "/api/v1/namespaces/shop/services")) == 1
                    and len(watch_requests(k, "/apis/discovery.k8s.io/v1/endpointslices")) == 1
                ),
                "kubectl's watches are open",
                timeout=15,
            )
            assert k.rv == base  # nothing changed between kubectl's lists and its watches
            for r in watch_requests(k, "/api/v1/services") + watch_requests(
                k, "/apis/discovery.k8s.io/v1/endpointslices"
            ):
                assert r["query"]["resourceVersion"] == str(base)  # from the list, not "0"
                assert "allowWatchBookmarks" not in r["query"]  # so no BOOKMARK may come
            (named,) = watch_requests(k, "/api/v1/namespaces/shop/services")
            assert named["query"]["fieldSelector"] == "metadata.name=cart"

            cart = service("shop", "cart", ports=[("grpc", 9090, "TCP")])
            await apply(k, SERVICES, cart)  # MODIFIED
            await apply(k, SERVICES, service("shop", "new"))  # ADDED
            await apply(
                k, ENDPOINTSLICES, endpoint_slice("shop", "new-a", "new", [endpoint("127.1.0.30")])
            )
            await apply(
                k,
                ENDPOINTSLICES,
                endpoint_slice("shop", "cart-a", "cart", [endpoint("127.1.0.1", ready=False)]),
            )
            await apply(
                k, ENDPOINTSLICES, endpoint_slice("shop", "stray", None, [endpoint("127.1.0.31")])
            )
            # Losing the service-name label leaves the selection: a DELETED for selecting watches.
            await apply(
                k, ENDPOINTSLICES, endpoint_slice("shop", "cart-v6", None, [endpoint("fd00::1")])
            )
            await delete(k, SERVICES, "shop", "cart")
            await apply(k, SERVICES, cart)  # ADDED again, a new uid
            await delete(k, ENDPOINTSLICES, "shop", "new-a")
            # Gaining it enters the selection: ADDED.
            await apply(
                k, ENDPOINTSLICES, endpoint_slice("shop", "stray", "new", [endpoint("127.1.0.31")])
            )
            await apply(k, SERVICES, service("web", "api", labels={"v": "2"}))

            def svc_events() -> list[tuple[str, str, str, str]]:
                return rec.seen(SERVICES)

            await settle(
                lambda: (
                    kubectl_seen(watches["svc"], base) == svc_events()
                    and len(svc_events()) == 5
                    and kubectl_seen(watches["slices"], base) == rec.seen(ENDPOINTSLICES)
                    and len(rec.seen(ENDPOINTSLICES)) == 5
                    and len(watches["table"].rows()) == 5
                    and len(kubectl_seen(watches["cart"], base)) == 3
                )
            )
            # The same sequence, event for event: type, object, resourceVersion.
            assert kubectl_seen(watches["svc"], base) == svc_events()
            assert [t for t, *_ in svc_events()] == [
                "MODIFIED",
                "ADDED",
                "DELETED",
                "ADDED",
                "MODIFIED",
            ]
            assert kubectl_seen(watches["slices"], base) == rec.seen(ENDPOINTSLICES)
            assert [(t, n) for t, _, n, _ in rec.seen(ENDPOINTSLICES)] == [
                ("ADDED", "new-a"),
                ("MODIFIED", "cart-a"),
                ("DELETED", "cart-v6"),
                ("DELETED", "new-a"),
                ("ADDED", "stray"),
            ]
            assert kubectl_seen(watches["cart"], base) == [
                e for e in svc_events() if e[1:3] == ("shop", "cart")
            ]
            table_rows = watches["table"].rows()
            assert [(r[0], r[1], r[2]) for r in table_rows] == [e[:3] for e in svc_events()]
            assert table_rows[0][6] == "9090/TCP"  # the server's Port(s) cell of the new cart
            # Final state: the last object kubectl saw of each is what fedns holds.
            last: dict[tuple[str, str], Any] = {}
            for ev in watches["svc"].events():
                key = (ev["object"]["metadata"]["namespace"], ev["object"]["metadata"]["name"])
                last[key] = None if ev["type"] == "DELETED" else ev["object"]
            assert kubectl_services(o for o in last.values() if o) == fedns_services(rec)
            last = {}
            for ev in watches["slices"].events():
                key = (ev["object"]["metadata"]["namespace"], ev["object"]["metadata"]["name"])
                last[key] = None if ev["type"] == "DELETED" else ev["object"]
            assert kubectl_slices(o for o in last.values() if o) == fedns_slices(rec)
            assert not any(ev["type"] == "BOOKMARK" for w in watches.values() for ev in w.events())

            # 410: history compacted and every open watch told its resourceVersion is too old.
            lists_before = len(rec.lists)
            n_req = len(k.request_log)
            await k.watching(6)  # kubectl's four and fedns's two (which it renews every 1-2 s)
            k.compact()
            assert k.error_watches(410) == 6
            for name in ("svc", "slices", "cart"):
                w = watches[name]
                assert await w.exited(10), f"kubectl {name} watch did not end on a 410"
                (err,) = [ev for ev in w.events() if ev["type"] == "ERROR"]
                assert err["object"]["code"] == 410 and err["object"]["reason"] == "Expired"
            # fedns relists, consistently (resourceVersion ""), and still agrees with kubectl.
            await until(lambda: len(rec.lists) >= lists_before + 2, "fedns relisted after the 410")
            relists = [
                r["query"]
                for r in k.request_log[n_req:]
                if r["path"] == "/api/v1/services"
                and "watch" not in r["query"]
                and not r["user_agent"].startswith("kubectl")
            ]
            assert relists and relists[0].get("resourceVersion", "") == ""
            svcs = (await kc.json("get", "svc", "-A", "-o", "json"))["items"]
            slices = await kc.json("get", "endpointslices", "-A", "-l", SVC_LABEL, "-o", "json")
            assert kubectl_services(svcs) == fedns_services(rec)
            assert kubectl_slices(slices["items"]) == fedns_slices(rec)
        finally:
            for w in watches.values():
                await w.stop()


# -- resourceVersion semantics of lists: paging snapshots, Exact reads, validation ------------------


async def test_paging_is_a_snapshot(fake_kube, tmp_path: Path) -> None:
    """A paged list is consistent at its first page's resourceVersion, as etcd serves it."""
    k = await fake_kube("east")
    seed(k)
    kc = Kubectl(k, tmp_path / "kubectl")
    async with fedns_source(k, tmp_path) as rec:
        before = fedns_services(rec)
        first = await kc.json("get", "--raw", "/api/v1/services?limit=2")
        rv = first["metadata"]["resourceVersion"]
        assert rv == str(k.rv) and first["metadata"]["remainingItemCount"] == len(before) - 2
        # Change the rest while the client pages: delete one, add one, modify one.
        rest = [(s["metadata"]["namespace"], s["metadata"]["name"]) for s in k.objects(SERVICES)][
            2:
        ]
        k.delete(SERVICES, *rest[0])
        k.put_service("zzz", "late")
        k.put_service(*rest[1], ports=[("changed", 1, "TCP")])
        items, token = list(first["items"]), first["metadata"]["continue"]
        while token:
            page = await kc.json("get", "--raw", f"/api/v1/services?limit=2&continue={token}")
            assert page["metadata"]["resourceVersion"] == rv
            items += page["items"]
            token = page["metadata"].get("continue")
        assert kubectl_services(items) == before  # what fedns had listed at rv, nothing newer
        # An Exact read at rv says the same; a fresh paged read sees the changes, as fedns does.
        exact = await kc.json(
            "get", "--raw", f"/api/v1/services?resourceVersion={rv}&resourceVersionMatch=Exact"
        )
        assert kubectl_services(exact["items"]) == before
        await settle(lambda: fedns_services(rec) == kubectl_services(k.objects(SERVICES)))
        now = (await kc.json("get", "svc", "-A", "-o", "json", "--chunk-size=2"))["items"]
        assert kubectl_services(now) == fedns_services(rec) != before
        # resourceVersion=0 is served from the watch cache, which does not page.
        cached = await kc.json("get", "--raw", "/api/v1/services?limit=2&resourceVersion=0")
        assert len(cached["items"]) == len(now) and "continue" not in cached["metadata"]

        # Compacted under a pager: 410 Expired, for the continue token and for the Exact read.
        first = await kc.json("get", "--raw", "/api/v1/services?limit=2")
        k.put_service("zzz", "later")
        k.compact()
        rc, _, err = await kc.run(
            "get",
            "--raw",
            f"/api/v1/services?limit=2&continue={first['metadata']['continue']}",
            ok=False,
        )
        assert rc != 0 and "(Expired)" in err and "continue parameter is too old" in err
        rc, _, err = await kc.run(
            "get",
            "--raw",
            f"/api/v1/services?resourceVersion={rv}&resourceVersionMatch=Exact",
            ok=False,
        )
        assert rc != 0 and "(Expired)" in err
        # ListOptions validation: 422 Invalid, with the real server's wording.
        rc, _, err = await kc.run(
            "get", "--raw", "/api/v1/services?resourceVersionMatch=Exact", ok=False
        )
        assert (
            rc != 0
            and "resourceVersionMatch is forbidden unless resourceVersion is provided" in err
        )
        assert not rec.errors
