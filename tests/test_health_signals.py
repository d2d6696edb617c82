"""Effective health from its signals, and the health-aware TTL, through a real ``fedns serve``.

Effective health = Kubernetes ready AND probe up AND the cluster kept by its stale
policy; with nothing healthy, ``fail_open`` decides between every endpoint and
NODATA. The table test runs every combination (ready x probe up/down/none x
cluster live/stale-serve/stale-drop x fail-open) as one service each, watched
through fake API servers (two of which go silent past ``stale_after``), probed
against real TCP listeners on loopback, and asks each row's name over UDP; the
expected answer and the explain inputs are computed from the row's signals.

The TTL test flips a probe target and reads the TTL of the service's names: it
drops to ``ttl_unstable`` and returns to the normal TTL after ``flap_window``.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

from fakekube import ThreadedFakeKubes, endpoint, federation_config
from healthkit import ORIGIN, Answer, HttpTargets, Reply, TcpTargets, running, static_service
from servers import fedns_argv, fedns_env

READY = (True, False)
PROBE = ("up", "down", "none")
CLUSTER = ("live", "stale-serve", "stale-drop")
FAIL_OPEN = (True, False)
ROWS = list(itertools.product(READY, PROBE, CLUSTER, FAIL_OPEN))
KUBE = {"live": "live", "stale-serve": "keep", "stale-drop": "gone"}  # row cluster -> fake


def expected(ready: bool, probe: str, cluster: str, fail_open: bool, address: str) -> Answer:
    """What DNS answers for a one-endpoint service with these signals."""
    if cluster == "stale-drop":
        return "NXDOMAIN"  # the cluster is left out, and the service is in no other
    if ready and probe != "down":
        return frozenset({address})
    return frozenset({address}) if fail_open else "NOERROR/NODATA"


def test_every_combination_of_ready_probe_stale_policy_and_fail_open(tmp_path: Path) -> None:
    address = {i: f"127.46.{i}.1" for i in range(len(ROWS))}
    listening = [address[i] for i, (_, probe, _, _) in enumerate(ROWS) if probe == "up"]
    t = TcpTargets(listening)  # "down" rows' addresses have nothing listening: refused
    try:
        with ThreadedFakeKubes(list(KUBE.values())) as fakes:
            for i, (ready, _, cluster, _) in enumerate(ROWS):
                k = fakes[KUBE[cluster]]
                fakes.call(lambda k=k, i=i, ready=ready: (
                    k.put_service("shop", f"r{i}", ports=[("tcp", t.port, "TCP")]),
                    k.put_slice("shop", f"r{i}-a", f"r{i}", [endpoint(address[i], ready=ready)],
                                ports=[("tcp", t.port, "TCP")]),
                ))
            fed = federation_config(fakes.kubes, tmp_path)
            for c in fed["clusters"]:
                c["stale_after"] = "30s" if c["name"] == "live" else "1s"
                c["stale_policy"] = "drop" if c["name"] == "gone" else "serve"
            fed["defaults"] = {"policy": "all"}
            fed["health"] = {"probe": "tcp", "interval": "100ms", "timeout": "300ms"}
            fed["policies"] = {
                f"shop/r{i}": {"fail_open": fo, **({"probe": "none"} if probe == "none" else {})}
                for i, (_, probe, _, fo) in enumerate(ROWS)
            }
            with running(tmp_path, {"federation": fed}) as f:
                # Every cluster live first: the drop rows answer as live ones do.
                for i, (ready, probe, _, fo) in enumerate(ROWS):
                    f.wait(f"r{i}.shop.{ORIGIN}", expected(ready, probe, "live", fo, address[i]))
                fakes.run(fakes["keep"].down())
                fakes.run(fakes["gone"].down())
                end = time.monotonic() + 15
                while time.monotonic() < end:
                    clusters = f.get("/v1/clusters")
                    if clusters["keep"]["stale"] and clusters["gone"]["stale"]:
                        break
                    time.sleep(0.1)
                assert clusters["keep"]["stale"] and clusters["gone"]["stale"], clusters
                assert not clusters["live"]["stale"]
                for i, row in enumerate(ROWS):
                    ready, probe, cluster, fo = row
                    name = f"r{i}.shop.{ORIGIN}"
                    f.wait(name, expected(*row, address[i]))
                    if cluster == "stale-drop":
                        continue
                    (cand,) = f.explain(name)["candidates"]
                    assert cand["healthy"] is (ready and probe != "down"), (row, cand)
                    inputs = {x["input"]: x for x in cand["inputs"]}
                    assert inputs["ready"]["ok"] is ready, (row, inputs)
                    assert inputs["probe"]["value"] == {"up": "up", "down": "down",
                                                        "none": "off"}[probe], (row, inputs)
                    assert inputs["cluster"]["value"] == ("stale" if cluster == "stale-serve"
                                                          else "live"), (row, inputs)
                assert not f.tracebacks()
    finally:
        t.close()


def test_ttl_drops_to_ttl_unstable_after_a_flip_and_returns_after_flap_window(
    tmp_path: Path,
) -> None:
    control, x = "127.47.0.1", "127.47.0.2"
    t = HttpTargets([control, x])
    try:
        fast = {"probe": "http", "interval": "100ms", "timeout": "300ms"}
        fed = {
            "zone": ORIGIN,
            "clusters": [{"name": "east"}],
            # web: the default ttl_unstable (the smaller of 5 s and its TTL).
            "defaults": {"policy": "all", "ttl": 30, "flap_window": "2s"},
            "health": fast,
            "policies": {"shop/exp": {"ttl": "1m", "ttl_unstable": "10s", "flap_window": "1500ms"}},
            "services": [
                static_service("web", t.port, {"east": [control, x]}),
                static_service("exp", t.port, {"east": [control, x]}),
            ],
        }
        normal = {"web": 30, "exp": 60}
        unstable = {"web": min(5, normal["web"]), "exp": 10}
        window = {"web": 2.0, "exp": 1.5}
        with running(tmp_path, {"federation": fed}) as f:

            def names(svc: str) -> list[str]:
                return [f"{svc}.shop.{ORIGIN}", f"east.{svc}.shop.{ORIGIN}"]

            for svc in normal:
                f.wait(names(svc)[0], frozenset({control, x}))
                # Starting up is not instability: the normal TTL from the first answer.
                assert [f.ttl(n) for n in names(svc)] == [normal[svc]] * 2
                assert f.explain(names(svc)[0])["ttl_now"]["unstable"] is False
            t.replies[x] = Reply(status=500)
            changed = {svc: f.wait(names(svc)[0], frozenset({control})) for svc in normal}
            for svc in normal:
                assert [f.ttl(n) for n in names(svc)] == [unstable[svc]] * 2, svc
                data = f.explain(names(svc)[0])
                now = data["ttl_now"]
                assert now["unstable"] and now["served"] == unstable[svc] == data["ttl"]
                assert now["normal"] == normal[svc]
                assert abs(now["unstable_until"] - now["answer_changed"] - window[svc]) < 1e-6
                assert data["policy"]["flap_window"] == window[svc]
            # fedns explain says the same.
            url = f"http://{f.admin[0]}:{f.admin[1]}"
            out = subprocess.run(
                fedns_argv("explain", names("web")[0], "--server", url), capture_output=True,
                text=True, env=fedns_env(), timeout=30, check=True,
            ).stdout
            assert f"ttl: {unstable['web']} (answer changed" in out, out
            assert "probe: probe=http" in out and "(from health: federation.health)" in out, out
            assert "      probe: down since" in out, out
            back: dict[str, float] = {}
            end = time.monotonic() + 15
            while len(back) < len(normal) and time.monotonic() < end:
                for svc in normal:
                    if svc not in back and f.ttl(names(svc)[0]) == normal[svc]:
                        back[svc] = time.monotonic()
                time.sleep(0.02)
            for svc in normal:
                assert svc in back, f"{svc}: TTL still {f.ttl(names(svc)[0])}"
                # Back only once the window is over (measured from when DNS changed).
                assert back[svc] - changed[svc] >= window[svc] - 0.1, (svc, back, changed)
                assert [f.ttl(n) for n in names(svc)] == [normal[svc]] * 2
                assert f.explain(names(svc)[0])["ttl_now"]["unstable"] is False
            assert f.answer(names("web")[0]) == {control}
            assert not f.tracebacks()
    finally:
        t.close()
