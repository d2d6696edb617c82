#!/usr/bin/env python3
"""Registry at scale: N clusters x S services x E endpoints from fake Kubernetes API servers.

A child process runs one fake API server per cluster (tests/fakekube.py,
real HTTP on loopback), each holding S Services and S EndpointSlices of E
endpoints. This process runs the production code path: one
kubernetes-asyncio ApiClient per cluster, list+watch reflectors, the
registry. Measured here:

* time to first full sync: from starting the sources until every cluster's
  initial lists are in the registry (goal < 15 s at 10 x 1,000 x 10);
* memory: this process's RSS (VmRSS, and the VmHWM peak) after sync and after
  every service's snapshot was built (goal < 400 MB);
* one endpoint change: a readiness flip is applied in a fake server (the
  control call returns the monotonic time it was emitted to the watch
  streams; CLOCK_MONOTONIC is shared by processes) until the registry's
  subscriber callback sees that key, p50/p99 over the changes; and the
  CPU this process spends per change (HTTP read, JSON, strip, registry
  update, coalesced publish), plus the cost of the ``snapshot`` a consumer
  takes for the changed key.

Results print as they come and, for a full run, replace the registry section
of benchmarks/RESULTS.md.

Usage: python3 benchmarks/registry.py [--clusters 10] [--services 1000]
                                      [--endpoints 10] [--changes 300] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from results import RESULTS, replace_section  # noqa: E402

GOAL_SYNC_S = 15.0
GOAL_RSS_MB = 400.0


def slice_of(
    ns: str, svc: str, cluster_idx: int, svc_idx: int, n: int, unready: int = -1
) -> dict[str, Any]:
    from fakekube import endpoint, endpoint_slice

    eps = [
        endpoint(
            f"10.{cluster_idx}.{(svc_idx * n + i) // 256 % 256}.{(svc_idx * n + i) % 256}",
            ready=i != unready,
            zone=f"zone-{i % 3}",
            node=f"node-{(svc_idx + i) % 50}",
            pod=f"{svc}-{i}",
        )
        for i in range(n)
    ]
    return endpoint_slice(ns, f"{svc}-abcde", svc, eps, ports=[("http", 8080, "TCP")])


# -- the child: fake API servers ---------------------------------------------------------------


async def serve(clusters: int, services: int, endpoints: int) -> None:
    import fakekube

    kubes = []
    for c in range(clusters):
        k = fakekube.FakeKube(f"c{c}", bookmark_interval=60.0)
        for s in range(services):
            ns = f"ns{s % 20}"
            name = f"svc{s}"
            k.apply(fakekube.SERVICES, fakekube.service(ns, name, ports=[("http", 80, "TCP")]))
            k.apply(fakekube.ENDPOINTSLICES, slice_of(ns, name, c, s, endpoints))
        k.history.clear()  # keep the child small; nobody watches from before now
        await k.start()
        kubes.append(k)
    print(json.dumps({k.name: k.url for k in kubes}), flush=True)
    # Changes come as JSON lines on stdin (so the parent spends no CPU on HTTP
    # to drive them); each is answered with the monotonic time it was emitted.
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        cmd = json.loads(line)
        k = kubes[cmd["cluster"]]
        obj = slice_of(
            cmd["namespace"], cmd["name"], cmd["cluster"], cmd["index"], endpoints, cmd["unready"]
        )
        k.apply(fakekube.ENDPOINTSLICES, obj)
        print(json.dumps({"t": time.monotonic()}), flush=True)


# -- the parent: the registry under test ------------------------------------------------------


def rss_mb() -> tuple[float, float]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    import structlog
    from fakekube import write_kubeconfig

    from resolver.federation.config import ExportConfig
    from resolver.federation.model import Cluster, ServiceKey
    from resolver.federation.registry import Registry
    from resolver.federation.sources.kubernetes import KubernetesSource

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    base_rss, _ = rss_mb()
    print(
        f"== starting {args.clusters} fake API servers ({args.services} services x {args.endpoints} endpoints each)",
        flush=True,
    )
    t0 = time.monotonic()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        "--clusters",
        str(args.clusters),
        "--services",
        str(args.services),
        "--endpoints",
        str(args.endpoints),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        urls: dict[str, str] = json.loads(await child.stdout.readline())
        print(f"   servers up in {time.monotonic() - t0:.1f} s", flush=True)
        with tempfile.TemporaryDirectory() as d:
            kc = write_kubeconfig(Path(d) / "kc", urls)
            clusters = [Cluster(name, kubeconfig=kc, context=name) for name in urls]
            reg = Registry(clusters, ExportConfig())
            sources = [KubernetesSource(c, reg.export) for c in clusters]
            print("== first full sync", flush=True)
            t_start = time.monotonic()
            task = asyncio.create_task(reg.run(sources))
            done = 0
            while done < len(clusters):
                await asyncio.wait(
                    [asyncio.ensure_future(reg.synced(c.name).wait()) for c in clusters],
                    timeout=1.0,
                )
                now_done = sum(reg.synced(c.name).is_set() for c in clusters)
                if now_done != done:
                    done = now_done
                    print(
                        f"   {done}/{len(clusters)} clusters synced at {time.monotonic() - t_start:.2f} s",
                        flush=True,
                    )
                if time.monotonic() - t_start > 120:
                    raise SystemExit("sync did not finish in 120 s")
            sync_s = time.monotonic() - t_start
            status = reg.cluster_status()
            n_eps = sum(s.endpoints for s in status.values())
            n_svcs = sum(s.services for s in status.values())
            rss_sync, _ = rss_mb()
            print(
                f"   synced {n_svcs} services, {n_eps} endpoints in {sync_s:.2f} s; RSS {rss_sync:.0f} MB",
                flush=True,
            )

            t1 = time.perf_counter()
            keys = reg.keys()
            for k in keys:
                reg.snapshot(k)
            build_all_s = time.perf_counter() - t1
            rss_built, hwm = rss_mb()
            print(
                f"   all {len(keys)} snapshots built in {build_all_s * 1000:.0f} ms; RSS {rss_built:.0f} MB (peak {hwm:.0f} MB)",
                flush=True,
            )

            # -- endpoint changes, one at a time
            print(f"== {args.changes} endpoint readiness flips", flush=True)
            await asyncio.sleep(0.5)
            seen: dict[ServiceKey, float] = {}
            waiter: dict[ServiceKey, asyncio.Future[float]] = {}

            def on_change(changed: frozenset[ServiceKey]) -> None:
                t = time.monotonic()
                for k in changed:
                    fut = waiter.pop(k, None)
                    if fut is not None and not fut.done():
                        fut.set_result(t)
                    seen[k] = t

            reg.subscribe(on_change)
            rng = random.Random(7)
            lat: list[float] = []
            snap_cost: list[float] = []
            cpu0 = time.process_time()
            for i in range(args.changes):
                c = rng.randrange(args.clusters)
                s = rng.randrange(args.services)
                key = ServiceKey(f"ns{s % 20}", f"svc{s}")
                fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
                waiter[key] = fut
                cmd = {
                    "cluster": c,
                    "namespace": key.namespace,
                    "name": key.name,
                    "index": s,
                    "unready": i % args.endpoints,
                }
                child.stdin.write(json.dumps(cmd).encode() + b"\n")
                sent = json.loads(await child.stdout.readline())["t"]
                got = await asyncio.wait_for(fut, 10)
                lat.append((got - sent) * 1000)
                t2 = time.perf_counter()
                snap = reg.snapshot(key)
                snap_cost.append((time.perf_counter() - t2) * 1e6)
                assert snap is not None
                cs = snap.cluster(f"c{c}")
                assert cs is not None and sum(not e.ready for e in cs.endpoints) == 1
                if (i + 1) % max(1, args.changes // 5) == 0:
                    print(
                        f"   {i + 1}/{args.changes}: p50 {statistics.median(lat):.2f} ms",
                        flush=True,
                    )
            cpu = time.process_time() - cpu0
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            reg.close()
    finally:
        if child.stdin:
            child.stdin.close()
        if child.returncode is None:
            child.terminate()
        await child.wait()
    return {
        "clusters": args.clusters,
        "services": args.services,
        "endpoints": args.endpoints,
        "n_svcs": n_svcs,
        "n_eps": n_eps,
        "sync_s": sync_s,
        "base_rss": base_rss,
        "rss_sync": rss_sync,
        "rss_built": rss_built,
        "hwm": hwm,
        "build_all_ms": build_all_s * 1000,
        "changes": args.changes,
        "lat_p50": pct(lat, 50),
        "lat_p99": pct(lat, 99),
        "lat_max": max(lat),
        "cpu_per_change_us": cpu / args.changes * 1e6,
        "snap_p50_us": pct(snap_cost, 50),
        "snap_p99_us": pct(snap_cost, 99),
    }


def report(r: dict[str, Any], cmd: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    host = f"{platform.node() or 'host'} ({os.cpu_count()} CPUs)"
    ok_sync = "met" if r["sync_s"] < GOAL_SYNC_S else "NOT met"
    ok_rss = "met" if r["hwm"] < GOAL_RSS_MB else "NOT met"
    return (
        "## Registry: list+watch at scale\n\n"
        f"`{cmd}` — {when}, {host}. {r['clusters']} fake API servers (aiohttp, one child process) x "
        f"{r['services']:,} Services x {r['endpoints']} endpoints (one EndpointSlice each); "
        "this process runs the production path (kubernetes-asyncio, one ApiClient per cluster, reflectors, registry).\n\n"
        "| measure | result | goal |\n|---|---:|---:|\n"
        f"| first full sync ({r['n_svcs']:,} services, {r['n_eps']:,} endpoints) | {r['sync_s']:.2f} s | < {GOAL_SYNC_S:.0f} s ({ok_sync}) |\n"
        f"| RSS after sync / after all snapshots built / peak | {r['rss_sync']:.0f} / {r['rss_built']:.0f} / {r['hwm']:.0f} MB "
        f"(interpreter + imports: {r['base_rss']:.0f} MB) | < {GOAL_RSS_MB:.0f} MB ({ok_rss}) |\n"
        f"| build every service's snapshot once | {r['build_all_ms']:.0f} ms | |\n"
        f"| one endpoint change: event emitted -> subscriber callback, p50 / p99 / max ({r['changes']} flips) | "
        f"{r['lat_p50']:.2f} / {r['lat_p99']:.2f} / {r['lat_max']:.2f} ms | |\n"
        f"| one endpoint change: CPU in this process (HTTP, JSON, strip, registry, publish) | {r['cpu_per_change_us']:.0f} us | |\n"
        f"| `snapshot(key)` of the changed service, p50 / p99 | {r['snap_p50_us']:.0f} / {r['snap_p99_us']:.0f} us | |\n\n"
        "- The latency includes the registry's 5 ms coalescing window (changes are published in batches) and the "
        "loopback HTTP of the watch stream; the DNS-level propagation (watch event -> DNS answer changed) is the "
        "lead's integration benchmark.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=300)
    ap.add_argument(
        "--quick", action="store_true", help="2 x 100 x 10, 50 changes; RESULTS.md untouched"
    )
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.clusters, args.services, args.endpoints))
        return
    if args.quick:
        args.clusters, args.services, args.changes = 2, 100, 50
    try:
        import uvloop

        uvloop.install()  # what fedns serve runs on
    except ImportError:
        pass
    r = asyncio.run(measure(args))
    cmd = "python3 benchmarks/registry.py" + (
        ""
        if (args.clusters, args.services, args.endpoints, args.changes) == (10, 1000, 10, 300)
        else f" --clusters {args.clusters} --services {args.services} --endpoints {args.endpoints} --changes {args.changes}"
    )
    text = report(r, cmd)
    print()
    print(text)
    if not args.quick:
        replace_section("registry", text)
        print(f"(written to {RESULTS.relative_to(ROOT)})")


if __name__ == "__main__":
    main()
