"""What fedns does when things around it fail: the rows of docs/failure-modes.md.

Each test here runs a real ``fedns serve`` (JSON logs, admin API on) and breaks
one thing: a fake Kubernetes API server (tests/fakekube.py, driven through a
kubeconfig by the unmodified kubernetes-asyncio client) goes away, drops or
expires its watches, or loses an event; a probe target refuses or hangs; the
config or a zone file turns to garbage; the admin API is flooded; a worker is
killed; the disk is full; a flood of distinct names comes in. It then checks,
with dnspython and over the admin API, what the table in docs/failure-modes.md
says: what DNS answers, what ``/readyz``, ``/metrics``, the logs and
``/v1/explain`` show, and how it recovers. Rows whose behaviour another test
already asserts name that test instead; the last test here checks that every
test the table names exists.
"""

from __future__ import annotations

import ast
import contextlib
import http.client
import json
import os
import random
import re
import select
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.rcode
import dns.rdatatype
import pytest
import yaml
from dnsclient import make, udp
from fakekube import (
    ENDPOINTSLICES,
    SERVICES,
    FakeKube,
    ThreadedFakeKubes,
    endpoint,
    endpoint_slice,
    federation_config,
)
from prometheus_client.parser import text_string_to_metric_families
from servers import (
    FED_ORIGIN,
    LOOPBACK,
    REPO,
    RUNNING,
    ServerProcess,
    fedns_argv,
    fedns_env,
    free_port,
    start_fedns,
    udp_sockets_on,
)

ORIGIN = FED_ORIGIN
ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 1209600 30
@       IN NS  ns1
ns1     IN A   127.0.0.53
static  IN A   127.0.0.80
"""
STATIC = f"static.{ORIGIN}"
TABLE = REPO / "docs" / "failure-modes.md"

# What a name answers: its A addresses, or the RCODE name when it has none.
Answer = frozenset[str] | str


# -- a running fedns and what it shows ------------------------------------------------------


@dataclass
class Fedns:
    sp: ServerProcess
    admin: tuple[str, int]
    config: Path

    @property
    def addr(self) -> tuple[str, int]:
        return self.sp.addr

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            url = f"http://{self.admin[0]}:{self.admin[1]}{path}"
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, OSError) as e:  # not listening (yet)
            return 0, str(e)

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, (path, status, body)
        return json.loads(body)

    def metric(self, name: str, **labels: str) -> float | None:
        status, text = self.get("/metrics")
        assert status == 200, text
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return float(s.value)
        return None

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        """fedns's JSON log lines (``--log-format json``), of one event or all."""
        out = []
        for line in self.sp.output().splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict) and (event is None or ev.get("event") == event):
                    out.append(ev)
        return out

    def tracebacks(self) -> list[str]:
        return [ln for ln in self.sp.output().splitlines() if ln.startswith("Traceback")]

    def answer(self, name: str, qtype: str = "A", subnet: str | None = None) -> Answer:
        return answer_of(self.addr, name, qtype, subnet)

    def wait(self, name: str, want: Answer, within: float = 15.0, qtype: str = "A") -> None:
        until(
            lambda: self.answer(name, qtype) == want,
            within,
            lambda: f"{name} {qtype} answers {self.answer(name, qtype)}, want {want}",
        )

    def wait_ready(self, within: float = 20.0) -> None:
        until(
            lambda: self.get("/readyz")[0] == 200,
            within,
            lambda: f"/readyz {self.get('/readyz')}\n{self.sp.output()[-3000:]}",
        )


def answer_of(
    addr: tuple[str, int], name: str, qtype: str = "A", subnet: str | None = None
) -> Answer:
    opts = [dns.edns.ECSOption.from_text(subnet)] if subnet else []
    r = udp(addr, make(name, qtype, edns=0 if subnet else None, options=opts))
    got = frozenset(
        rd.to_text() for rr in r.answer if rr.rdtype == dns.rdatatype.from_text(qtype) for rd in rr
    )
    return got if got else dns.rcode.to_text(r.rcode()) + ("" if r.rcode() else "/NODATA")


def until(what: Callable[[], bool], within: float, why: Callable[[], str]) -> None:
    end = time.monotonic() + within
    while not what():
        if time.monotonic() > end:
            raise AssertionError(why())
        time.sleep(0.05)


def serve(tmp_path: Path, settings: Mapping[str, Any], workers: int = 1) -> Fedns:
    """``fedns serve`` of ``ZONE`` plus ``settings`` (a ``federation:`` mostly), ready."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "fed.zone").write_text(ZONE)
    doc = {"zones": [{"origin": ORIGIN, "file": "fed.zone"}], **settings}
    cfg = tmp_path / "fedns.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    admin = (LOOPBACK, free_port())
    sp = start_fedns(
        cfg,
        tmp_path,
        workers=workers,
        extra_args=("--admin", f"{admin[0]}:{admin[1]}", "--log-format", "json"),
    )
    f = Fedns(sp, admin, cfg)
    f.wait_ready()
    return f


@contextlib.contextmanager
def running(tmp_path: Path, settings: Mapping[str, Any], workers: int = 1) -> Iterator[Fedns]:
    f = serve(tmp_path, settings, workers)
    try:
        yield f
    finally:
        f.sp.stop()


def seed(k: FakeKube, name: str, addresses: list[str], ns: str = "shop", **svc: Any) -> None:
    k.put_service(ns, name, **svc)
    k.put_slice(
        ns, f"{name}-a", name, [endpoint(a, pod=f"{name}-{i}") for i, a in enumerate(addresses)]
    )


def list_requests(k: FakeKube, resource: str) -> int:
    """How many lists (not watches) of ``resource`` the fake has served."""
    return sum(1 for _, p, q in k.requests if p.endswith("/" + resource) and "watch" not in q)


# -- the Kubernetes side -------------------------------------------------------------------


def test_api_server_unreachable_marks_stale_then_serves_or_drops(tmp_path: Path) -> None:
    """Two API servers go away: past ``stale_after`` both are stale; ``serve`` keeps the
    last-known endpoints, ``drop`` leaves the cluster out and its services fail over;
    ready all along; back: live again, the new truth answers."""
    addr = {"up": "127.1.0.1", "keep": "127.2.0.1", "gone": "127.3.0.1"}
    with ThreadedFakeKubes(list(addr)) as fakes:
        failover = {"fedns.io/policy": "failover", "fedns.io/failover": "gone,up,keep"}
        for c, a in addr.items():
            fakes.call(seed, fakes[c], "cart", [a])
            pay = a.replace(".0.1", ".0.2")
            fakes.call(lambda k=fakes[c], pay=pay: seed(k, "pay", [pay], annotations=failover))
        fakes.call(seed, fakes["gone"], "solo", ["127.3.0.3"])  # a service in gone only
        fed = federation_config(fakes.kubes, tmp_path, stale_after=1)
        fed["clusters"][1]["stale_policy"] = "serve"
        fed["clusters"][2]["stale_policy"] = "drop"
        fed["defaults"] = {"policy": "all"}
        with running(tmp_path, {"federation": fed}) as f:
            cart = f"cart.shop.{ORIGIN}"
            pay = f"pay.shop.{ORIGIN}"
            f.wait(cart, frozenset(addr.values()))
            assert f.answer(pay) == {"127.3.0.2"}  # the first of its failover list
            fakes.run(fakes["keep"].down())
            fakes.run(fakes["gone"].down())
            # The truth moves on while nobody can see it.
            fakes.call(seed, fakes["keep"], "cart", ["127.2.0.9"])

            until(
                lambda: (
                    f.metric("fedns_cluster_stale", cluster="gone") == 1.0
                    and f.metric("fedns_cluster_stale", cluster="keep") == 1.0
                ),
                15,
                lambda: f.sp.output()[-3000:],
            )
            # serve: keep's last-known endpoint stays; drop: gone leaves every answer.
            f.wait(cart, frozenset({addr["up"], addr["keep"]}))
            f.wait(pay, frozenset({"127.1.0.2"}))  # failed over to the next in the list
            # A dropped cluster's names go: its own, and a service nobody else has.
            assert f.answer(f"solo.shop.{ORIGIN}") == "NXDOMAIN"
            assert f.answer(f"gone.cart.shop.{ORIGIN}") == "NXDOMAIN"
            assert f.answer(f"keep.cart.shop.{ORIGIN}") == {addr["keep"]}
            assert f.metric("fedns_cluster_stale", cluster="up") == 0.0
            assert f.metric("fedns_cluster_synced", cluster="keep") == 1.0  # listed, once
            contact = f.metric("fedns_cluster_last_contact_seconds", cluster="keep")
            time.sleep(0.5)
            assert f.metric("fedns_cluster_last_contact_seconds", cluster="keep") == contact
            stale = {e["cluster"]: e for e in f.events("cluster stale")}
            assert stale["keep"]["policy"] == "serve" and stale["gone"]["policy"] == "drop"
            status, why = f.get("/readyz")
            assert status == 200, why
            assert "cluster keep: no contact" in why and "marked stale" in why, why
            assert "cluster gone: no contact" in why and "left out of answers" in why, why
            lagging = {
                c["cluster"]: c for c in f.json(f"/v1/explain?name={cart}")["lagging_clusters"]
            }
            assert set(lagging) == {"keep", "gone"} and all(c["stale"] for c in lagging.values())
            clusters = f.json("/v1/clusters")
            assert clusters["keep"]["stale"] and clusters["keep"]["last_error"]
            assert not clusters["up"]["stale"]
            assert f.answer(STATIC) == {"127.0.0.80"}

            fakes.run(fakes["keep"].up())
            fakes.run(fakes["gone"].up())
            f.wait(cart, frozenset({addr["up"], "127.2.0.9", addr["gone"]}), within=30)
            f.wait(pay, frozenset({"127.3.0.2"}))
            f.wait(f"solo.shop.{ORIGIN}", frozenset({"127.3.0.3"}))
            until(lambda: f.get("/readyz") == (200, "ok\n"), 15, lambda: f.get("/readyz")[1])
            assert {e["cluster"] for e in f.events("cluster live again")} == {"keep", "gone"}
            assert not f.tracebacks()


# -- health probes ------------------------------------------------------------------------------


class Target:
    """An endpoint's port on one loopback address: it answers HTTP 200 (``ok``), accepts
    and then says nothing (``hang``), or is closed (``down``)."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.host, self.port = host, port
        self.mode = "ok"
        self.sock: socket.socket | None = None
        self.open: set[socket.socket] = set()  # connections held in hang mode
        self.lock = threading.Lock()
        self.accepted = 0

    def up(self, mode: str = "ok") -> None:
        self.mode = mode
        if self.sock is not None:
            return
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        self.port = s.getsockname()[1]
        s.listen(64)
        self.sock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        with c:
            c.settimeout(10)
            with contextlib.suppress(OSError):
                c.recv(4096)
                if self.mode == "ok":
                    c.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    )
                    return
                with self.lock:
                    self.open.add(c)
                # Hang: say nothing until the prober gives up and closes (recv sees EOF).
                while self.mode == "hang" and c.recv(4096):
                    pass
            with self.lock:
                self.open.discard(c)

    def holding(self) -> int:
        with self.lock:
            return len(self.open)

    def down(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def close(self) -> None:
        self.mode = "closed"
        self.down()


@contextlib.contextmanager
def targets(*hosts: str) -> Iterator[list[Target]]:
    """A listening ``Target`` per host, all on one port (the service's port)."""
    for _ in range(20):
        ts = [Target(h) for h in hosts]
        ts[0].up()
        try:
            for t in ts[1:]:
                t.port = ts[0].port
                t.up()
        except OSError:  # that port is taken on another address: try another
            for t in ts:
                t.close()
            continue
        try:
            yield ts
        finally:
            for t in ts:
                t.close()
        return
    raise OSError("no port free on every target address")


def static_federation(
    port: int, health: Mapping[str, Any], services: list[dict[str, Any]]
) -> dict[str, Any]:
    """Two static clusters, east (127.1.0.1) and west (127.2.0.1), probed on ``port``."""
    return {
        "federation": {
            "zone": ORIGIN,
            "clusters": [{"name": "east", "region": "r1"}, {"name": "west", "region": "r2"}],
            "health": dict(health),
            "services": [
                {
                    "namespace": "shop",
                    "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                    "endpoints": {
                        "east": [{"addresses": ["127.1.0.1"]}],
                        "west": [{"addresses": ["127.2.0.1"]}],
                    },
                    **s,
                }
                for s in services
            ],
        }
    }


def health_of(f: Fedns, name: str) -> dict[str, tuple[bool, str]]:
    """cluster -> (healthy, reason) from ``/v1/explain``."""
    data = f.json(f"/v1/explain?name={name}")
    return {c["cluster"]: (c["healthy"], c["health"]) for c in data["candidates"]}


def test_a_clusters_endpoints_all_failing_probes_fail_over_then_fail_open(tmp_path: Path) -> None:
    """east's endpoints stop answering their probe: failover answers west; then west's too:
    fail_open answers with every endpoint, fail_open false with NODATA; back: east again."""
    with targets("127.1.0.1", "127.2.0.1") as (east, west):
        settings = static_federation(
            east.port,
            {"probe": "tcp", "interval": 0.1, "timeout": 0.3, "rise": 2, "fall": 2},
            [
                {
                    "name": "api",
                    "annotations": {
                        "fedns.io/policy": "failover",
                        "fedns.io/failover": "east,west",
                    },
                },
                {
                    "name": "strict",
                    "annotations": {
                        "fedns.io/policy": "failover",
                        "fedns.io/failover": "east,west",
                        "fedns.io/fail-open": "false",
                    },
                },
            ],
        )
        with running(tmp_path, settings) as f:
            api, strict = f"api.shop.{ORIGIN}", f"strict.shop.{ORIGIN}"
            f.wait(api, frozenset({"127.1.0.1"}))
            east.down()
            f.wait(api, frozenset({"127.2.0.1"}))
            f.wait(strict, frozenset({"127.2.0.1"}))
            healthy, why = health_of(f, api)["east"]
            assert not healthy and "probe down" in why and "tcp error" in why, why
            flips = [e for e in f.events("health_flip") if "127.1.0.1" in e["target"]]
            assert flips and flips[-1]["healthy"] is False, flips
            west.down()
            # Nothing passes: fail-open answers with every endpoint rather than none ...
            f.wait(api, frozenset({"127.1.0.1", "127.2.0.1"}))
            # ... and a service that chose fail_open: false answers NODATA.
            f.wait(strict, "NOERROR/NODATA")
            assert f.answer(STATIC) == {"127.0.0.80"}
            status, _ = f.get("/readyz")
            assert status == 200
            east.up()
            west.up()
            f.wait(api, frozenset({"127.1.0.1"}))
            f.wait(strict, frozenset({"127.1.0.1"}))
            assert health_of(f, api)["east"][0] is True
            assert not f.tracebacks()


def test_a_probe_target_that_hangs_is_timed_out(tmp_path: Path) -> None:
    """An endpoint that accepts the probe's connection and never answers is down after
    ``fall`` timeouts; the prober closes each hung connection and the other endpoints'
    probes go on; DNS answers throughout; when it answers again it is back."""
    timeout = 0.3
    with targets("127.1.0.1", "127.2.0.1") as (east, west):
        settings = static_federation(
            east.port,
            {
                "probe": "http",
                "path": "/healthz",
                "interval": 0.2,
                "timeout": timeout,
                "rise": 2,
                "fall": 2,
            },
            [{"name": "api", "annotations": {"fedns.io/policy": "all"}}],
        )
        with running(tmp_path, settings) as f:
            api = f"api.shop.{ORIGIN}"
            f.wait(api, frozenset({"127.1.0.1", "127.2.0.1"}))
            west.mode = "hang"
            started = time.monotonic()
            f.wait(api, frozenset({"127.1.0.1"}))
            # fall 2: two timeouts and an interval, not the connect timeout of a kernel.
            assert time.monotonic() - started < 10
            healthy, why = health_of(f, api)["west"]
            assert not healthy and f"http timeout after {timeout:.1f} s" in why, why
            # The hung probes are given up, not piled up: a second of probing at 0.2 s
            # intervals holds at most a couple of connections open at any time.
            seen = west.accepted
            peak = 0
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                peak = max(peak, west.holding())
                assert f.answer(STATIC) == {"127.0.0.80"}
                time.sleep(0.05)
            assert west.accepted >= seen + 3, "the prober kept probing the hung target"
            assert peak <= 2, peak
            assert health_of(f, api)["east"][0] is True
            west.mode = "ok"
            f.wait(api, frozenset({"127.1.0.1", "127.2.0.1"}))
            assert not f.tracebacks()


# -- watch streams ----------------------------------------------------------------------------


@contextlib.contextmanager
def one_cluster(
    tmp_path: Path, **cluster: Any
) -> Iterator[tuple[ThreadedFakeKubes, FakeKube, Fedns]]:
    """fedns watching one fake API server ``east`` that holds shop/cart with one endpoint."""
    with ThreadedFakeKubes(["east"]) as fakes:
        k = fakes["east"]
        fakes.call(seed, k, "cart", ["127.1.0.1"])
        fed = federation_config(fakes.kubes, tmp_path, **cluster)
        fed["defaults"] = {"policy": "all"}
        with running(tmp_path, {"federation": fed}) as f:
            f.wait(f"cart.shop.{ORIGIN}", frozenset({"127.1.0.1"}))
            yield fakes, k, f


def put_cart(k: FakeKube, addresses: list[str]) -> None:
    k.put_slice(
        "shop", "cart-a", "cart", [endpoint(a, pod=f"cart-{i}") for i, a in enumerate(addresses)]
    )


def test_watch_streams_dropped_repeatedly(tmp_path: Path) -> None:
    """Every watch cut mid-line, three times over, with a change each time: fedns watches
    again from the last resourceVersion (no relist), answers the last-known data meanwhile,
    and converges to the truth each time; never stale, never unready."""
    with one_cluster(tmp_path) as (fakes, k, f):
        cart = f"cart.shop.{ORIGIN}"
        for i in range(3):
            fakes.run(k.watching(2))
            assert fakes.call(k.drop_watches) == 2
            want = [f"127.1.0.{j}" for j in range(1, i + 3)]
            fakes.call(put_cart, k, want)
            # While it reconnects (backoff 0.8 s doubling, jittered), the last-known data answers.
            assert f.answer(cart) in (frozenset(want), frozenset(want[:-1]))
            f.wait(cart, frozenset(want), within=30)
            assert f.get("/readyz") == (200, "ok\n")
        assert fakes.call(list_requests, k, SERVICES) == 1
        assert fakes.call(list_requests, k, ENDPOINTSLICES) == 1
        status = f.json("/v1/clusters")["east"]
        assert status["errors"] >= 6 and not status["stale"], status
        assert "watch stream broken" in (status["last_error"] or ""), status
        backoffs: dict[str, list[float]] = {}
        for e in f.events("list/watch failed; backing off"):
            backoffs.setdefault(e["resource"], []).append(e["retry_in"])
        # 0.8 s doubling per failure, each with up to +100 % jitter: never shorter than the last.
        for resource, waits in backoffs.items():
            assert len(waits) == 3 and 0.8 <= waits[0] <= 1.6, (resource, waits)
            assert waits == sorted(waits) and waits[-1] <= 6.4, (resource, waits)
        assert f.metric("fedns_cluster_stale", cluster="east") == 0.0
        assert not f.tracebacks()


def test_a_410_storm_relists_every_time_and_never_serves_a_partial_view(tmp_path: Path) -> None:
    """Forty watches in a row answered with ERROR 410 Expired: each one is followed by a
    consistent relist; every answer meanwhile is the old or the new truth, never a mix,
    never empty; then it settles on the truth."""
    storm = 20
    with one_cluster(tmp_path) as (fakes, k, f):
        cart = f"cart.shop.{ORIGIN}"
        old, new = frozenset({"127.1.0.1"}), frozenset({"127.1.0.7", "127.1.0.8"})
        fakes.run(k.watching(2))
        lists0 = fakes.call(list_requests, k, ENDPOINTSLICES)
        for resource in (SERVICES, ENDPOINTSLICES):
            fakes.call(lambda r=resource: k.inject("gone", resource=r, times=storm, after=0))
        fakes.call(k.error_watches, 410)
        started = time.monotonic()
        seen: set[Answer] = set()
        changed = False
        end = started + 30
        while fakes.call(lambda: bool(k.faults)) or not changed:
            assert time.monotonic() < end, f"the storm did not pass: {fakes.call(lambda: k.faults)}"
            if not changed and fakes.call(list_requests, k, ENDPOINTSLICES) >= lists0 + storm // 2:
                fakes.call(put_cart, k, sorted(new))  # in the middle of the storm
                changed = True
            seen.add(f.answer(cart))
            time.sleep(0.01)
        # No backoff between a watch's 410 and its relist: forty relists take about a
        # second (with even the first backoff step between them they would take 30 s).
        assert time.monotonic() - started < 15
        f.wait(cart, new)
        assert seen <= {old, new}, seen
        assert fakes.call(list_requests, k, ENDPOINTSLICES) >= lists0 + storm
        assert len(f.events("resourceVersion expired; relisting")) >= 2 * storm
        assert f.get("/readyz") == (200, "ok\n")
        assert f.metric("fedns_cluster_stale", cluster="east") == 0.0
        assert not f.tracebacks()


def lose_events(k: FakeKube) -> None:
    """Change the store behind every watcher's back: no event, no history (a lost event).
    The cart slice gets a new endpoint and the pay service and its slice vanish."""
    k.rv += 1
    obj = endpoint_slice("shop", "cart-a", "cart", [endpoint("127.1.0.1"), endpoint("127.1.0.9")])
    old = k.store[ENDPOINTSLICES][("shop", "cart-a")]["metadata"]
    obj["metadata"].update(
        uid=old["uid"], creationTimestamp=old["creationTimestamp"], resourceVersion=str(k.rv)
    )
    obj["kind"], obj["apiVersion"] = "EndpointSlice", "discovery.k8s.io/v1"
    k.store[ENDPOINTSLICES][("shop", "cart-a")] = obj
    del k.store[SERVICES][("shop", "pay")]
    del k.store[ENDPOINTSLICES][("shop", "pay-a")]


def test_a_lost_event_is_repaired_by_the_next_relist(tmp_path: Path) -> None:
    """Events that never reach fedns leave it answering the old data (there is no periodic
    resync) until the next relist: after a 410 the consistent list is diffed against the
    cache, the changed slice is replaced and the vanished service gets a synthetic delete."""
    with one_cluster(tmp_path) as (fakes, k, f):
        cart, pay = f"cart.shop.{ORIGIN}", f"pay.shop.{ORIGIN}"
        fakes.call(seed, k, "pay", ["127.1.0.2"])
        f.wait(pay, frozenset({"127.1.0.2"}))
        fakes.run(k.watching(2))
        fakes.call(lose_events, k)
        # Bookmarks keep coming (the fake sends one every 0.2 s): fedns is in contact,
        # and has no way to know; for a while it answers the old data.
        time.sleep(1.5)
        assert f.answer(cart) == {"127.1.0.1"}
        assert f.answer(pay) == {"127.1.0.2"}
        assert fakes.call(k.error_watches, 410) == 2
        f.wait(cart, frozenset({"127.1.0.1", "127.1.0.9"}))
        f.wait(pay, "NXDOMAIN")
        assert f.events("resourceVersion expired; relisting")
        registry = {s["name"] for s in f.json("/v1/registry")["services"]}
        assert registry == {"cart"}, registry
        assert f.get("/readyz") == (200, "ok\n")
        assert not f.tracebacks()


# -- bad input on reload -------------------------------------------------------------------------

# Bytes no YAML or master-file parser can read: binary noise with an invalid UTF-8 start.
GARBAGE = b"\xff\xfe\x00\x9c" + random.Random(10).randbytes(4000) + b"\n: [unclosed {\n"


@pytest.mark.parametrize(("broken", "workers"), [("config", 2), ("zone", 1)])
def test_a_bad_reload_keeps_the_last_good_state(tmp_path: Path, broken: str, workers: int) -> None:
    """SIGHUP with the config file (or the zone file) replaced by garbage: the reload
    fails and is logged, every process keeps answering what it had (zone and federated
    names), ready throughout; the next good file and SIGHUP load."""
    settings = {
        "federation": {
            "zone": ORIGIN,
            "clusters": [{"name": "east", "region": "r1"}],
            "services": [
                {
                    "namespace": "shop",
                    "name": "cart",
                    "endpoints": {"east": [{"addresses": ["127.1.0.1"]}]},
                }
            ],
        }
    }
    f = serve(tmp_path, settings, workers=workers)
    try:
        cart = f"cart.shop.{ORIGIN}"
        target = f.config if broken == "config" else tmp_path / "fed.zone"
        good = target.read_bytes()
        target.write_bytes(GARBAGE)
        f.sp.signal(signal.SIGHUP)
        until(lambda: f.events("reload_failed"), 15, lambda: f.sp.output()[-3000:])
        error = f.events("reload_failed")[0]["error"]
        assert f"{target.name}:" in error and "not UTF-8" in error, error  # names file and place
        assert f.sp.alive()
        for i in range(20):  # fresh sockets: with 2 workers the kernel spreads them over both
            assert f.answer(STATIC) == {"127.0.0.80"}, i
            assert f.answer(cart) == {"127.1.0.1"}, i
        assert f.get("/readyz") == (200, "ok\n")
        assert f.metric("fedns_workers") == workers
        assert not f.events("reloaded")
        # The operator fixes the file: the next SIGHUP loads it.
        fixed = (
            good.replace(b"127.0.0.80", b"127.0.0.81")
            if broken == "zone"
            else good.replace(b"127.1.0.1", b"127.1.0.2")
        )
        target.write_bytes(fixed)
        f.sp.signal(signal.SIGHUP)
        until(lambda: f.events("reloaded"), 15, lambda: f.sp.output()[-3000:])
        name, want = (STATIC, {"127.0.0.81"}) if broken == "zone" else (cart, {"127.1.0.2"})
        until(
            lambda: all(f.answer(name) == want for _ in range(10)),
            15,
            lambda: f"{name} answers {f.answer(name)}",
        )
        assert not f.tracebacks()
    finally:
        f.sp.stop()


# -- the admin API flooded -----------------------------------------------------------------------

FLOOD_PATHS = [
    "/metrics",
    "/v1/registry",
    "/v1/clusters",
    "/readyz",
    "/healthz",
    f"/v1/explain?name=cart.shop.{ORIGIN}&type=A&subnet=10.1.2.0/24",
    f"/v1/explain?name=nothing.{ORIGIN}",
    "/no/such/path",
]


def flood_admin(admin: tuple[str, int], stop: threading.Event, counts: list[int]) -> None:
    """Keep-alive HTTP requests as fast as one thread can send them."""
    conn = http.client.HTTPConnection(*admin, timeout=10)
    i = 0
    while not stop.is_set():
        try:
            conn.request("GET", FLOOD_PATHS[i % len(FLOOD_PATHS)])
            conn.getresponse().read()
            counts[0] += 1
        except (OSError, http.client.HTTPException):
            counts[1] += 1
            conn.close()
            conn = http.client.HTTPConnection(*admin, timeout=10)
        i += 1
    conn.close()


def test_a_flooded_admin_api_leaves_dns_answering(tmp_path: Path) -> None:
    """Sixteen clients hammer the admin API (metrics, registry, explain, 404s) of a
    single-process fedns, where admin and DNS share one interpreter: every DNS query is
    still answered, and right."""
    settings = {
        "federation": {
            "zone": ORIGIN,
            "clusters": [{"name": "east", "region": "r1"}, {"name": "west", "region": "r2"}],
            "localities": [{"cidr": "10.1.0.0/16", "region": "r1"}],
            "services": [
                {
                    "namespace": "shop",
                    "name": "cart",
                    "endpoints": {
                        "east": [{"addresses": ["127.1.0.1"]}],
                        "west": [{"addresses": ["127.2.0.1"]}],
                    },
                }
            ],
        }
    }
    with running(tmp_path, settings) as f:
        cart = f"cart.shop.{ORIGIN}"
        want = {STATIC: f.answer(STATIC), cart: f.answer(cart)}
        assert want[STATIC] == {"127.0.0.80"} and want[cart] == {"127.1.0.1", "127.2.0.1"}
        stop = threading.Event()
        counts = [[0, 0] for _ in range(16)]
        threads = [
            threading.Thread(target=flood_admin, args=(f.admin, stop, c), daemon=True)
            for c in counts
        ]
        for t in threads:
            t.start()
        try:
            time.sleep(0.5)  # the flood is on
            for i in range(300):
                name = STATIC if i % 2 else cart
                assert f.answer(name) == want[name], (i, name)  # udp() raises on a timeout
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        served = sum(c[0] for c in counts)
        assert served >= 300, f"the admin API was hardly flooded: {served} requests"
        assert f.sp.alive() and f.get("/healthz") == (200, "ok\n")
        assert not f.tracebacks()


# -- a worker killed ---------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(x) for x in fh.read().split()]


class Clients:
    """UDP client sockets with fixed source ports: SO_REUSEPORT sends each one's queries
    to one worker for as long as the group of sockets stays the same."""

    def __init__(self, addr: tuple[str, int], n: int) -> None:
        self.socks = []
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((LOOPBACK, 0))
            s.connect(addr)
            self.socks.append(s)
        self.query = make(STATIC, "A").to_wire()
        self.qid = 0

    def ask_all(self, timeout: float) -> list[bool]:
        """One query from every socket at once; which of them got its reply in time."""
        ids = []
        for s in self.socks:
            self.qid = (self.qid + 1) & 0xFFFF
            ids.append(struct.pack(">H", self.qid))
            s.send(ids[-1] + self.query[2:])
        got = [False] * len(self.socks)
        index = {s: i for i, s in enumerate(self.socks)}
        end = time.monotonic() + timeout
        while not all(got) and (left := end - time.monotonic()) > 0:
            readable, _, _ = select.select(
                [s for s in self.socks if not got[index[s]]], [], [], left
            )
            for s in readable:
                i = index[s]
                with contextlib.suppress(ConnectionRefusedError):
                    data = s.recv(4096)
                    got[i] = data[:2] == ids[i] and dns.message.from_wire(data).answer != []
        return got

    def drain(self) -> None:
        for s in self.socks:
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
                while s.recv(4096):
                    pass
            s.setblocking(True)

    def close(self) -> None:
        for s in self.socks:
            s.close()


def test_a_killed_worker_is_respawned_and_no_query_is_lost_on_the_others(tmp_path: Path) -> None:
    """SIGKILL one of two workers while every client keeps asking: the clients the kernel
    sends to the other worker lose nothing, the dead worker's clients lose at most the
    query in flight, and a new worker is forked from the current table."""
    f = serve(tmp_path, {}, workers=2)
    clients = Clients(f.addr, 24)
    try:
        victim, survivor = children(f.sp.proc.pid)
        # Which clients the kernel sends to the victim: stop it, see who goes unanswered.
        for _attempt in range(3):
            os.kill(victim, signal.SIGSTOP)
            try:
                to_victim = [not ok for ok in clients.ask_all(timeout=1.5)]
            finally:
                os.kill(victim, signal.SIGCONT)
            time.sleep(0.3)
            clients.drain()
            if any(to_victim) and not all(to_victim):
                break
            clients.close()
            clients = Clients(f.addr, 24)
        assert any(to_victim) and not all(to_victim), (
            f"unanswered while the victim was stopped: {sum(to_victim)} of 24 clients"
        )

        lost = [0] * len(clients.socks)
        rounds = 0

        def ask_round() -> None:
            nonlocal rounds
            rounds += 1
            for i, ok in enumerate(clients.ask_all(timeout=2.0)):
                lost[i] += not ok

        for _ in range(20):
            ask_round()
        assert not any(lost), "lost before the kill"
        os.kill(victim, signal.SIGKILL)
        respawned = time.monotonic() + 15
        while True:
            ask_round()
            now = children(f.sp.proc.pid)
            if len(now) == 2 and victim not in now and udp_sockets_on(f.sp.port) == 2:
                break
            assert time.monotonic() < respawned, f"no new worker: {now}"
        for _ in range(20):
            ask_round()
        on_survivor = [n for n, v in zip(lost, to_victim, strict=True) if not v]
        on_victim = [n for n, v in zip(lost, to_victim, strict=True) if v]
        assert sum(on_survivor) == 0, f"{on_survivor} lost over {rounds} rounds"
        assert max(on_victim) <= 1, f"{on_victim} lost over {rounds} rounds"
        died = f.events("worker_died")
        assert [e["pid"] for e in died] == [victim] and died[0]["exitcode"] == -signal.SIGKILL
        until(lambda: f.metric("fedns_workers") == 2.0, 10, lambda: str(f.metric("fedns_workers")))
        assert f.get("/readyz") == (200, "ok\n")
        assert survivor in children(f.sp.proc.pid)
    finally:
        clients.close()
        f.sp.stop()


def test_a_crash_loop_stops_fedns_rather_than_flap(tmp_path: Path) -> None:
    """Workers that keep dying (more than 5 deaths in a minute) make fedns exit 1, so the
    orchestrator sees a failed pod instead of one that flaps."""
    f = serve(tmp_path, {}, workers=2)
    try:
        end = time.monotonic() + 30
        killed: set[int] = set()
        while f.sp.alive():
            assert time.monotonic() < end, f"still up after killing {len(killed)} workers"
            with contextlib.suppress(OSError):
                for pid in set(children(f.sp.proc.pid)) - killed:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
            time.sleep(0.05)
        assert f.sp.proc.wait(10) == 1
        assert len(f.events("worker_died")) == 6, f.events("worker_died")
        assert f.events("worker_crash_loop")
    finally:
        f.sp.stop()


# -- a full disk ---------------------------------------------------------------------------------

UNSHARE = shutil.which("unshare")


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path -> (size, mtime in ns)."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("state_dir", [None, "state"])
def test_fedns_writes_nothing_so_a_full_disk_changes_nothing(
    tmp_path: Path, state_dir: str | None
) -> None:
    """Without ``state_dir`` fedns keeps everything in memory and logs to stderr.
    Run it, with 2 workers, in a mount namespace where every filesystem is read-only but
    one with no space left (a tmpfs, filled) that holds its config and zone and is its
    working directory: it serves, reloads on SIGHUP, answers the admin API, logs no
    error, and not one file there is created or changed. With ``state_dir`` on that
    full disk it does all the same; the history and the kept files cannot be written,
    which it logs (and nothing half written is left there)."""
    if UNSHARE is None:
        pytest.skip("unshare not found (apt package util-linux)")
    if subprocess.run([UNSHARE, "--mount", "true"], capture_output=True, check=False).returncode:
        pytest.skip(
            "cannot make a mount namespace here (needs CAP_SYS_ADMIN, as for test_delegation)"
        )
    src, disk = tmp_path / "src", tmp_path / "disk"
    disk.mkdir()
    settings = {
        "federation": {
            "zone": ORIGIN,
            "clusters": [{"name": "east", "region": "r1"}],
            "services": [
                {
                    "namespace": "shop",
                    "name": "cart",
                    "endpoints": {"east": [{"addresses": ["127.1.0.1"]}]},
                }
            ],
        }
    }
    # The config as ``serve`` would write it, then moved onto the full disk by the namespace.
    src.mkdir()
    (src / "fed.zone").write_text(ZONE)
    if state_dir is not None:
        settings["state_dir"] = state_dir  # type: ignore[assignment]
    (src / "fedns.yaml").write_text(
        yaml.safe_dump(
            {"zones": [{"origin": ORIGIN, "file": "fed.zone"}], **settings}, sort_keys=False
        )
    )
    port, admin = free_port(), (LOOPBACK, free_port())
    argv = fedns_argv(
        "serve",
        "-c",
        str(disk / "fedns.yaml"),
        "--dns",
        f"{LOOPBACK}:{port}",
        "--workers",
        "2",
        "--admin",
        f"{admin[0]}:{admin[1]}",
        "--log-format",
        "json",
    )
    d, q = shlex.quote(str(disk)), shlex.quote
    script = " && ".join(
        [
            "set -e",
            # Every other filesystem read-only (in this mount namespace only) ...
            "mount -o remount,bind,ro /",
            "for m in $(awk '$5 !~ \"^/(proc|sys)\" {print $5}' /proc/self/mountinfo);"
            ' do mount -o remount,bind,ro "$m" 2>/dev/null || true; done',
            # ... and the config's directory, the working directory, a full one.
            f"mount -t tmpfs -o size=1m tmpfs {d}",
            f"cp {q(str(src))}/* {d}/",
            f"{{ dd if=/dev/zero of={d}/filler bs=4k 2>/dev/null || true; }}",
            f"cd {d}",
            f"exec {shlex.join(argv)}",
        ]
    )
    log = tmp_path / "fedns.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [UNSHARE, "--mount", "--", "sh", "-c", script],
            env=fedns_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            start_new_session=True,
        )
    sp = ServerProcess("fedns", LOOPBACK, port, proc, log, tmp_path)
    RUNNING.append(sp)
    try:
        sp.wait_ready()
        f = Fedns(sp, admin, disk / "fedns.yaml")
        f.wait_ready()
        # The filesystems as fedns sees them, through its own mount namespace.
        mounts = {
            line.split()[4]: line.split()[5].split(",")
            for line in Path(f"/proc/{proc.pid}/mountinfo").read_text().splitlines()
        }
        assert "ro" in mounts["/"] and "rw" in mounts[str(disk)], mounts
        seen = Path(f"/proc/{proc.pid}/root") / disk.relative_to("/")
        st = os.statvfs(seen)
        assert st.f_bavail == 0, "the disk is not full"
        assert (seen / "filler").stat().st_size > 0
        before = tree(seen)
        # With state_dir, its directory (made at start: a tmpfs directory needs no block).
        assert set(before) - {state_dir} == {"fed.zone", "fedns.yaml", "filler"}, before
        assert f.answer(STATIC) == {"127.0.0.80"}
        assert f.answer(f"cart.shop.{ORIGIN}") == {"127.1.0.1"}
        f.sp.signal(signal.SIGHUP)
        until(lambda: f.events("reloaded"), 15, lambda: f.sp.output()[-3000:])
        for path in ("/metrics", "/v1/registry", f"/v1/explain?name=cart.shop.{ORIGIN}"):
            assert f.get(path)[0] == 200, path
        for i in range(20):
            assert f.answer(STATIC if i % 2 else f"cart.shop.{ORIGIN}") != "SERVFAIL"
        assert not f.events("reload_failed") and not f.tracebacks()
        errors = [e for e in f.events() if e.get("level") == "error"]
        if state_dir is None:
            assert tree(seen) == before
            assert not errors, errors
        else:
            after = tree(seen)
            made = {k: v for k, v in after.items() if k not in before}
            # Directories at most (a tmpfs gives them without blocks), no file, no byte.
            assert all(k.startswith(state_dir) and (seen / k).is_dir() for k in made), made
            assert {k: v for k, v in after.items() if k in before and k != state_dir} == {
                k: v for k, v in before.items() if k != state_dir
            }
            assert errors and {e["event"] for e in errors} <= {"history_not_saved", "version_not_kept"}
            assert all("hint" in e for e in errors)
    finally:
        sp.stop()


# -- memory pressure: a flood of distinct questions --------------------------------------------

# Questions per phase: 80 % of them from new client subnets, so that each phase
# passes the largest bound (65,536 subnets) once.
PHASE = 83_000


def qname_wire(labels: list[bytes]) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\0"


def case_variant(name: str, rnd: random.Random) -> list[bytes]:
    """The name in a random letter case (0x20): other bytes, the same name."""
    return [
        bytes(c ^ 0x20 if 97 <= c <= 122 and rnd.random() < 0.5 else c for c in label.encode())
        for label in name.rstrip(".").split(".")
    ]


def ecs_opt(i: int) -> bytes:
    """An OPT record with an ECS option for the i-th distinct IPv4 /24 (1.0.0.0/24 on)."""
    addr = struct.pack(">I", (1 << 24) + (i << 8))[:3]
    option = struct.pack(">HBB", 1, 24, 0) + addr
    return (
        b"\0"
        + struct.pack(">HHIH", 41, 1232, 0, 4 + len(option))
        + struct.pack(">HH", 8, len(option))
        + option
    )


def distinct_questions(phase: int, n: int) -> list[tuple[bytes, int]]:
    """``n`` queries (wire less the ID, expected RCODE), every one a question not asked
    before: a new name below an existing one (NXDOMAIN: ``Table.below``), an existing
    name in a new letter case (``Table.replies``), the federated name from a new
    client /24 in ECS (the EDNS memo, the subnets, the routers' memo)."""
    rnd = random.Random(phase)
    out = []
    head = struct.pack(">HHHHH", 0, 0, 1, 0, 0)  # ID, flags, one question; then ARCOUNT
    ecs_head = (
        head + b"\0\x01" + qname_wire(case_variant(f"cart.shop.{ORIGIN}", rnd)) + b"\0\x01\0\x01"
    )
    for i in range(n):
        kind = i % 20
        if kind < 3:
            first = "".join(rnd.choices("abcdefghij0123456789", k=rnd.randint(1, 40))).encode()
            name, rcode = [first, *case_variant(STATIC, rnd)], 3
        elif kind < 4:
            name, rcode = case_variant(rnd.choice([STATIC, ORIGIN, f"ns1.{ORIGIN}"]), rnd), 0
        else:
            out.append((ecs_head + ecs_opt(phase * n + i), 0))
            continue
        out.append((head + b"\0\0" + qname_wire(name) + b"\0\x01\0\x01", rcode))
    return out


def ask_many(
    addr: tuple[str, int], questions: list[tuple[bytes, int]], window: int = 128
) -> tuple[int, int]:
    """Send every question (``window`` in flight); (answered with the expected RCODE, others)."""
    ok = bad = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for start in range(0, len(questions), window):
            batch = questions[start : start + window]
            want = {}
            for j, (q, rcode) in enumerate(batch):
                qid = (start + j) & 0xFFFF
                want[qid] = rcode
                s.send(struct.pack(">H", qid) + q[2:])
            s.settimeout(2.0)
            while want:
                try:
                    data = s.recv(4096)
                except TimeoutError:
                    break
                rcode = want.pop(struct.unpack(">H", data[:2])[0], None)
                if rcode is None:
                    continue
                if data[3] & 0x0F == rcode:
                    ok += 1
                else:
                    bad += 1
    return ok, bad


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_flood_of_distinct_questions_keeps_memory_bounded(tmp_path: Path) -> None:
    """166,000 questions never asked before (a million distinct names, scaled to run in
    about 15 s), in two phases: new names below an existing one (15 %), existing names in
    new letter cases (5 %), and the federated name from a new client /24 in ECS (80 %).
    The first phase fills the caches to their bounds (``Table.replies`` and ``Table.below``
    16,384 entries each; the new subnets fill no per-subnet memo, as they are answered
    from ``Table.buckets``, one reply per locality bucket, and enter ``replies`` only when
    asked again), which costs what full caches cost; from then on each cache is emptied
    whole when full, so the second phase, as many new questions again, must not grow
    the process: by less than a tenth of what the first filling took."""
    settings = {
        "federation": {
            "zone": ORIGIN,
            "clusters": [{"name": "east", "region": "r1"}, {"name": "west", "region": "r2"}],
            "regions": [{"name": "r1"}, {"name": "r2"}],
            "localities": [
                {"cidr": "0.0.0.0/1", "region": "r1"},
                {"cidr": "128.0.0.0/1", "region": "r2"},
            ],
            "services": [
                {
                    "namespace": "shop",
                    "name": "cart",
                    "endpoints": {
                        "east": [{"addresses": ["127.1.0.1"]}],
                        "west": [{"addresses": ["127.2.0.1"]}],
                    },
                }
            ],
        }
    }
    with running(tmp_path, settings) as f:
        pid = f.sp.proc.pid
        assert f.answer(f"cart.shop.{ORIGIN}", subnet="1.2.3.0/24") == {"127.1.0.1"}
        start = rss_mb(pid)
        peaks = []
        answered = wrong = 0
        for phase in range(2):
            questions = distinct_questions(phase, PHASE)
            peak = 0.0
            for part in range(0, PHASE, PHASE // 10):
                ok, bad = ask_many(f.addr, questions[part : part + PHASE // 10])
                answered, wrong = answered + ok, wrong + bad
                peak = max(peak, rss_mb(pid))
            peaks.append(peak)
        assert wrong == 0, f"{wrong} replies with another RCODE"
        assert answered >= 0.99 * 2 * PHASE, f"only {answered} of {2 * PHASE} answered"
        fill = peaks[0] - start
        trail = f"RSS {start:.0f} MB at start, peaks per phase {[round(p) for p in peaks]} MB"
        assert fill > 5, f"were the caches filled? {trail}"
        # (3 MB: the allocator's own slack in a ~100 MB process, now that the ECS
        # subnets no longer fill per-subnet memos and the filling itself is small.)
        assert peaks[1] - peaks[0] < max(0.1 * fill, 3.0), trail
        assert f.answer(f"cart.shop.{ORIGIN}", subnet="200.2.3.0/24") == {"127.2.0.1"}
        assert f.answer(STATIC) == {"127.0.0.80"}
        print(
            f"RSS at start {start:.1f} MB; peak per phase of {PHASE:,} new questions:",
            ", ".join(f"{p:.1f}" for p in peaks),
            "MB",
        )


# -- the table itself ----------------------------------------------------------------------------

NODE_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def table_rows() -> list[list[str]]:
    """The cells of every row of the one table in docs/failure-modes.md."""
    lines = [ln for ln in TABLE.read_text().splitlines() if ln.startswith("|")]
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in lines]
    header, rule, *body = rows
    assert all(set(c) <= {"-", ":"} for c in rule), rule
    assert header[0] == "Failure" and header[-1] == "Asserted by", header
    assert all(len(r) == len(header) for r in body), [r[0] for r in body if len(r) != len(header)]
    return body


def test_every_row_names_a_passing_test() -> None:
    """Each row of docs/failure-modes.md names at least one test by node id, and every
    named test is a test function in that file: the suite runs them all, so the
    suite passing means each row's tests pass."""
    rows = table_rows()
    assert len(rows) >= 12
    defined: dict[str, set[str]] = {}
    for row in rows:
        named = NODE_ID.findall(row[-1])
        assert named, f"row {row[0]!r} names no test"
        for path, name in named:
            if path not in defined:
                assert (REPO / path).is_file(), f"row {row[0]!r}: no {path}"
                tree_ = ast.parse((REPO / path).read_text())
                defined[path] = {
                    n.name
                    for n in tree_.body
                    if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                }
            assert name.startswith("test_") and name in defined[path], (
                f"row {row[0]!r}: no {path}::{name}"
            )
    # Every failure the issue lists has its row.
    failures = " ".join(r[0].lower() for r in rows)
    for words in (
        "api server unreachable",
        "failing their probes",
        "hangs",
        "dropped repeatedly",
        "410 storm",
        "lost event",
        "config file",
        "zone file",
        "admin api flooded",
        "worker process killed",
        "full disk",
        "memory pressure",
    ):
        assert words in failures, words
    # And every test of this file is named by a row.
    here = {
        n
        for p, n in (m for r in rows for m in NODE_ID.findall(r[-1]))
        if p == "tests/test_failure_modes.py"
    }
    mine = {
        n.name
        for n in ast.parse(Path(__file__).read_text()).body
        if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")
    }
    assert mine - here == {"test_every_row_names_a_passing_test"}, mine - here
