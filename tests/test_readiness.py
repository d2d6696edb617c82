"""``/readyz`` means "this instance answers correctly", whatever a member cluster does.

A real ``fedns serve`` (1 and 2 workers) watches two fake API servers; one of
them is down from the start. The pod must be unready only for the startup
wait, then ready with the unreachable cluster named in the reason, in
``/v1/explain`` (``lagging_clusters``) and in the metrics, while static
records and the reachable cluster's services answer. When the cluster comes
back the reason clears and its services answer. A federation whose clusters
all answer is ready as soon as they have synced, long before the bound.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import yaml
from fakekube import ThreadedFakeKubes, endpoint, federation_config
from servers import LOOPBACK, ServerProcess, free_port, start_fedns, write_config

ORIGIN = "global.example.test."
ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 1209600 30
@       IN NS  ns1
ns1     IN A   127.0.0.53
static  IN A   127.0.0.80
"""
ADDRESS = {"east": "127.1.0.1", "west": "127.2.0.1"}


def get(admin: tuple[str, int], path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:  # not listening yet
        return 0, str(e)


def ask(port: int, name: str) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, "A"), LOOPBACK, port=port, timeout=5)


def a_records(port: int, name: str) -> set[str]:
    r = ask(port, name)
    return {rd.to_text() for rr in r.answer if rr.rdtype == dns.rdatatype.A for rd in rr}


def until(what: Callable[[], bool], within: float, why: Callable[[], str]) -> None:
    end = time.monotonic() + within
    while not what():
        if time.monotonic() > end:
            raise AssertionError(why())
        time.sleep(0.05)


@contextmanager
def federation(tmp_path: Path, startup_wait: float, workers: int, west_down: bool) -> Iterator[
    tuple[ThreadedFakeKubes, ServerProcess, tuple[str, int], Path]
]:
    with ThreadedFakeKubes(["east", "west"]) as fakes:
        for c, addr in ADDRESS.items():
            fakes.call(fakes[c].put_service, "shop", "cart")
            fakes.call(fakes[c].put_slice, "shop", "cart-a", "cart", [endpoint(addr, pod="cart-0")])
        if west_down:
            fakes.run(fakes["west"].down())
        fed = federation_config(fakes.kubes, tmp_path, stale_after=1)
        cfg = write_config(
            tmp_path, {ORIGIN: ZONE}, {"federation": fed, "dns": {"startup_wait": startup_wait}}
        )
        admin = (LOOPBACK, free_port())
        sp = start_fedns(
            cfg, tmp_path, workers=workers, extra_args=("--admin", f"{admin[0]}:{admin[1]}")
        )
        try:
            yield fakes, sp, admin, cfg
        finally:
            sp.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_an_unreachable_cluster_never_makes_the_instance_unready(
    tmp_path: Path, workers: int
) -> None:
    wait = 4.0
    with federation(tmp_path, wait, workers, west_down=True) as (fakes, sp, admin, cfg):
        started = time.monotonic()
        until(lambda: get(admin, "/readyz")[0] != 0, 5, lambda: sp.output()[-3000:])
        status, body = get(admin, "/readyz")
        # Within the startup wait: unready, and the reason names what it waits for.
        assert status == 503, body
        assert "west" in body and "startup_wait" in body, body

        until(lambda: get(admin, "/readyz")[0] == 200, wait + 10, lambda: sp.output()[-3000:])
        assert time.monotonic() - started >= wait * 0.5  # held for the bound, not released early
        status, body = get(admin, "/readyz")
        assert status == 200 and "cluster west" in body and "not listed yet" in body, body

        # What the pod serves meanwhile: the static zone and the reachable cluster.
        assert a_records(sp.port, f"static.{ORIGIN}") == {"127.0.0.80"}
        assert a_records(sp.port, f"east.cart.shop.{ORIGIN}") == {ADDRESS["east"]}
        assert a_records(sp.port, f"cart.shop.{ORIGIN}") == {ADDRESS["east"]}

        # The unreachable cluster is an explain entry and a metric, not a 503.
        status, body = get(admin, f"/v1/explain?name=cart.shop.{ORIGIN}&type=A")
        assert status == 200, body
        lagging = {c["cluster"]: c for c in json.loads(body)["lagging_clusters"]}
        assert set(lagging) == {"west"} and not lagging["west"]["synced"], lagging
        _, metrics = get(admin, "/metrics")
        assert 'fedns_cluster_synced{cluster="west"} 0.0' in metrics
        assert 'fedns_cluster_synced{cluster="east"} 1.0' in metrics

        # Back: the reason clears and its endpoints answer.
        fakes.run(fakes["west"].up())
        until(
            lambda: get(admin, "/readyz") == (200, "ok\n"),
            15,
            lambda: get(admin, "/readyz")[1] + sp.output()[-3000:],
        )
        until(
            lambda: a_records(sp.port, f"cart.shop.{ORIGIN}") == set(ADDRESS.values()),
            10,
            lambda: str(a_records(sp.port, f"cart.shop.{ORIGIN}")),
        )

        # Out of contact again: past stale_after it is marked stale, still ready.
        fakes.run(fakes["west"].down())
        until(
            lambda: "cluster west: no contact" in get(admin, "/readyz")[1],
            10,
            lambda: get(admin, "/readyz")[1],
        )
        # A reload that changes the clusters re-lists them (a new first sync) and
        # drops west: the instance stays ready all along, and west leaves the reason.
        doc = yaml.safe_load(cfg.read_text())
        doc["federation"]["clusters"] = [
            c for c in doc["federation"]["clusters"] if c["name"] == "east"
        ]
        cfg.write_text(yaml.safe_dump(doc))
        sp.signal(signal.SIGHUP)
        end = time.monotonic() + 10
        while get(admin, "/readyz") != (200, "ok\n"):
            assert get(admin, "/readyz")[0] == 200
            assert time.monotonic() < end, sp.output()[-3000:]
            time.sleep(0.02)
        assert "reloaded" in sp.output()
        assert sp.alive()


def test_a_reachable_federation_is_ready_once_synced_not_at_the_bound(tmp_path: Path) -> None:
    wait = 60.0
    with federation(tmp_path, wait, 1, west_down=False) as (_fakes, sp, admin, _cfg):
        until(lambda: get(admin, "/readyz") == (200, "ok\n"), 15, lambda: sp.output()[-3000:])
        assert a_records(sp.port, f"cart.shop.{ORIGIN}") == set(ADDRESS.values())
        r = ask(sp.port, f"nothing.shop.{ORIGIN}")
        assert r.rcode() == dns.rcode.NXDOMAIN


def test_without_a_federation_ready_means_zones_loaded(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {ORIGIN: ZONE})
    admin = (LOOPBACK, free_port())
    sp = start_fedns(cfg, tmp_path, extra_args=("--admin", f"{admin[0]}:{admin[1]}"))
    try:
        until(lambda: get(admin, "/readyz") == (200, "ok\n"), 10, lambda: sp.output()[-3000:])
        assert get(admin, "/healthz") == (200, "ok\n")
        assert a_records(sp.port, f"static.{ORIGIN}") == {"127.0.0.80"}
    finally:
        sp.stop()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_reload_that_changes_the_federation_never_answers_nxdomain(
    tmp_path: Path, workers: int
) -> None:
    """Make before break: the new watches sync before the new table serves, so a
    federated name answers (or is held) all through a reload, never NXDOMAIN,
    which resolvers would cache for the SOA minimum."""
    with federation(tmp_path, 3.0, workers, west_down=True) as (_fakes, sp, admin, cfg):
        until(lambda: get(admin, "/readyz")[0] == 200, 15, lambda: sp.output()[-3000:])
        name = f"cart.shop.{ORIGIN}"
        assert a_records(sp.port, name) == {ADDRESS["east"]}
        doc = yaml.safe_load(cfg.read_text())
        for c in doc["federation"]["clusters"]:
            c["stale_after"] = 2  # a change of the clusters: new watches, west still down
        cfg.write_text(yaml.safe_dump(doc))
        reloads = sp.output().count("reloaded")
        sp.signal(signal.SIGHUP)
        rcodes: dict[str, int] = {}
        end = time.monotonic() + 12
        while sp.output().count("reloaded") == reloads or time.monotonic() < end - 6:
            assert time.monotonic() < end, sp.output()[-3000:]
            r = ask(sp.port, name)
            rcodes[dns.rcode.to_text(r.rcode())] = rcodes.get(dns.rcode.to_text(r.rcode()), 0) + 1
            if r.rcode() == dns.rcode.NOERROR:
                assert a_records(sp.port, name) <= set(ADDRESS.values())
        assert set(rcodes) == {"NOERROR"}, rcodes
        assert a_records(sp.port, name) == {ADDRESS["east"]}


def test_the_first_sync_freezes_the_heap_once_and_changes_still_apply(tmp_path: Path) -> None:
    # One process serves and watches: what the first sync made is moved out of the
    # collector's sight (app.freeze_heap), so no collection walks it on the loop later.
    with federation(tmp_path, 60.0, 1, west_down=False) as (fakes, sp, admin, _cfg):
        until(lambda: get(admin, "/readyz") == (200, "ok\n"), 15, lambda: sp.output()[-3000:])

        def frozen() -> list[int]:
            plain = re.sub(r"\x1b\[[0-9;]*m", "", sp.output())  # the console renderer's colours
            return [int(n) for n in re.findall(r"heap_frozen\s.*?objects=(\d+)", plain)]

        until(lambda: bool(frozen()), 5, lambda: sp.output()[-3000:])
        (objects,) = frozen()
        assert objects > 10_000, objects  # the interpreter's, the libraries' and the table's

        # The frozen table still changes: a new endpoint is answered.
        fakes.call(fakes["east"].put_slice, "shop", "cart-a", "cart",
                   [endpoint(ADDRESS["east"], pod="cart-0"), endpoint("127.1.0.2", pod="cart-1")])
        until(
            lambda: a_records(sp.port, f"east.cart.shop.{ORIGIN}") == {ADDRESS["east"], "127.1.0.2"},
            10,
            lambda: str(a_records(sp.port, f"east.cart.shop.{ORIGIN}")),
        )
        # A reload keeps the watches and republishes; it does not freeze again.
        sp.signal(signal.SIGHUP)
        until(lambda: "reloaded" in sp.output(), 10, lambda: sp.output()[-3000:])
        assert len(frozen()) == 1
        assert a_records(sp.port, f"east.cart.shop.{ORIGIN}") == {ADDRESS["east"], "127.1.0.2"}
        assert sp.alive()
