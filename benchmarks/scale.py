#!/usr/bin/env python3
"""The federation at 2,000,000 endpoints, and what one endpoint costs in memory.

50 fake Kubernetes API servers (``tests/fakekube.py``, real HTTP on loopback, in
a child process: ``propagation.fake_servers``) hold the same 2,000 Services in 20
namespaces, each with one EndpointSlice of 20 endpoints (a pod targetRef, a zone
of 3 and a node of 500 per cluster, as the EndpointSlice controller writes
them): 2,000,000 endpoints. One unmodified ``fedns serve --workers 1`` watches
them through a kubeconfig with kubernetes-asyncio. ``dns.startup_wait`` is set
to ``--startup-wait`` (60 s, its maximum): every cluster's first list is then
published once, not re-planned at each list that arrives after the default 5 s.

Measured per size (``--sizes``: services per cluster, 0 = the clusters with
nothing in them), each with fakes of its own:

* how long the fakes take to fill, and the CPU they spend serving the first
  lists (so it is clear what is theirs and what is fedns's);
* from process start to every cluster's first list in the registry and to the
  first full publish (fedns's own log lines), to ``/readyz`` 200, and to 20
  sampled ``<cluster>.<svc>.<ns>.<zone> A`` answering with that cluster's ready
  endpoints over DNS (goal < 60 s at 2,000,000);
* RSS (and peak, and PSS) after sync (goal < 2 GB with 1 worker), and fedns's CPU;
* the memory cost of one endpoint: (RSS at N - RSS at 0) / N, at every size,
  and between the two largest sizes (the same figure when it is linear);
* at the largest size, ``--flips`` single endpoint changes (one readiness
  toggled in a fake, the watch event's write time to the first DNS answer with
  the new set, polled every ~1 ms; ``propagation.run_flips``): p50/p99 (goal
  p99 <= 100 ms) and fedns's CPU per change.

``--baseline DIR`` runs the same fedns measurements from another source tree
(``git archive REV | tar -x -C DIR``) against the same fakes, in the same run.

``--trace N`` adds where the memory and the CPU go, in-process (no sockets but
the fakes'): a fresh interpreter runs the registry, ``Control`` and the answer
table as ``fedns serve`` wires them. At each of ``--phase-shapes`` (default 50 x
1, 50 x 100 and 50 x 200 services x 20: the clusters' own cost, then two sizes
for what each endpoint adds) it times the CPU from start to the first publish
by phase (``time.process_time`` inside the list parse, the stripping, the
registry insert, the plans and the answer table; the rest of the sync is HTTP
and kubernetes-asyncio) and reads RSS, and projects both to 2,000,000
endpoints, linearly between the two largest. At ``--trace-shape`` (default 10 x
200 x 20: tracing makes it ~5x slower) it takes a ``tracemalloc`` snapshot after
the first publish and prints the bytes per endpoint by area (registry, plans,
control, answer table) and the N biggest allocating lines (attributed to the
innermost frame in ``resolver/``). With ``--baseline`` the baseline tree is
measured too. ``--in-process`` runs only that (the development loop: a minute
or two, not the ten of a full run).

Results print as they come and, for a full run (not ``--quick``, not
``--no-write``, not ``--in-process``), replace the ``scale`` section of
benchmarks/RESULTS.md (analysis after its ``<!-- scale:notes -->`` line is kept).

Usage: python3 benchmarks/scale.py [--clusters 50] [--sizes 0,1000,2000] [--endpoints 20]
                                   [--flips 50] [--baseline DIR] [--trace N]
                                   [--in-process] [--trace-shape 10,200,20]
                                   [--phase-shapes 50x1x20,50x100x20,50x200x20]
                                   [--quick] [--workdir DIR] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import linecache
import os
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO), str(HERE)]

import propagation as prop  # noqa: E402
from results import RESULTS, replace_section  # noqa: E402

NOTES = "<!-- scale:notes -->"  # from here to END: analysis by hand, kept by runs
GOAL_ANSWER_S = 60.0
GOAL_RSS_MB = 2048.0
GOAL_P99_MS = 100.0
SAMPLE = 20  # names checked over DNS before a run counts as answering


def say(msg: str) -> None:
    print(msg, flush=True)


def write_config(workdir: Path, fakes: prop.Fakes, startup_wait: float) -> Path:
    """propagation's config (the fakes' kubeconfig, the zone), with ``dns.startup_wait``."""
    path = prop.write_fedns_config(workdir, fakes)
    doc = yaml.safe_load(path.read_text())
    doc["dns"] = {"startup_wait": f"{startup_wait:g}s"}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sync_times(text: str, t0_wall: float) -> dict[str, Any]:
    """``propagation.log_times``, and whether the first publish came before every
    cluster was listed (``dns.startup_wait`` ran out)."""
    out: dict[str, Any] = dict(prop.log_times(text, t0_wall))
    out["early"] = "federation_published_before_sync" in text
    return out


def wait_ready(admin: str, sp: Any, t0: float, deadline_s: float) -> float:
    """Until ``/readyz`` says 200 (a size without services has no name to ask)."""
    while prop.http_status(f"http://{admin}/readyz") != 200:
        if not sp.alive():
            raise RuntimeError(f"fedns exited: {sp.output()[-3000:]}")
        if time.monotonic() - t0 > deadline_s:
            raise RuntimeError(f"/readyz not 200 within {deadline_s:.0f} s")
        time.sleep(0.02)
    return time.monotonic()


# -- one fedns against one set of fakes -----------------------------------------------------------


def run_fedns(
    args: argparse.Namespace,
    fakes: prop.Fakes,
    work: Path,
    src: Path | None,
    flips: int,
    label: str,
) -> dict[str, Any]:
    C, S = fakes.clusters, fakes.services
    cfg = write_config(work, fakes, args.startup_wait)
    admin = f"127.0.0.1:{prop.free_port()}"
    rng = random.Random(S)
    sample = [(rng.randrange(C), rng.randrange(S)) for _ in range(SAMPLE)] if S else []
    names = [
        (f"c{c}.svc{s}.{prop.ns_of(s)}.{prop.ORIGIN}", fakes.ready_in(c, s)) for c, s in sample
    ]
    fake_cpu0 = fakes.cpu()
    t0, t0_wall = time.monotonic(), time.time()
    with prop.fedns(cfg, work, 1, admin, src) as sp:
        poller = prop.Poller(sp.port)
        try:
            prop.serving(poller, sp, 1, deadline_s=args.startup_deadline)
            t_ready, t_answer = prop.wait_answers(
                poller, sp, names, args.startup_deadline, admin, t0
            )
            if t_ready is None:
                t_ready = wait_ready(admin, sp, t0, args.startup_deadline)
        except RuntimeError as e:
            say(f"   {label}GAVE UP: {str(e)[:300]}")
            lt = sync_times(sp.output(), t0_wall)
            poller.close()
            return {
                "failed": f"no answer within {args.startup_deadline:.0f} s (fedns log: every "
                f"cluster listed at {lt.get('clusters_synced', float('nan')):.1f} s, first full "
                f"publish at {lt.get('published', float('nan')):.1f} s)"
            }
        r: dict[str, Any] = {
            "ready_s": t_ready - t0,
            "answer_s": (t_answer if names else t_ready) - t0,
            "fake_cpu_sync_s": fakes.cpu() - fake_cpu0,
        }
        pids = [sp.proc.pid, *prop.children(sp.proc.pid)]
        r["cpu_start_s"] = prop.cpu_seconds(pids)
        time.sleep(1.0)  # settle (stats, the collector) before memory
        r["log"] = sync_times(sp.output(), t0_wall)
        r["mem"] = prop.memory_mb(pids)
        say(
            f"   {label}answering at {r['answer_s']:.1f} s (every cluster listed at "
            f"{r['log'].get('clusters_synced', float('nan')):.1f} s, published at "
            f"{r['log'].get('published', float('nan')):.1f} s"
            f"{', BEFORE every cluster was listed' if r['log']['early'] else ''}); "
            f"RSS {r['mem']['rss']:.0f} MB (peak {r['mem']['hwm']:.0f}), PSS {r['mem']['pss']:.0f} MB; "
            f"CPU {r['cpu_start_s']:.1f} s; the fakes' CPU meanwhile {r['fake_cpu_sync_s']:.1f} s"
        )
        if flips and S:
            r["flips"] = prop.run_flips(
                fakes,
                poller,
                flips,
                lambda g: (g.randrange(C), g.randrange(S), g.randrange(fakes.endpoints)),
                lambda c, s: f"c{c}.svc{s}.{prop.ns_of(s)}.{prop.ORIGIN}",
                fakes.ready_in,
                rng,
                cpu_pids=pids,
                label=label,
                alive=sp.alive,
            )
        poller.close()
    return r


def part_serve(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    C, E = args.clusters, args.endpoints
    trees: list[tuple[str, Path | None]] = [("this tree", args.fedns_src)]
    if args.baseline is not None:
        trees.append(("baseline", args.baseline))
    out: dict[str, Any] = {"shape": (C, E), "sizes": {}, "trees": [t for t, _ in trees]}
    for S in args.sizes:
        say(f"== {C} fake API servers x {S:,} services x {E} endpoints ({C * S * E:,} endpoints)")
        t = time.monotonic()
        with prop.fake_servers(C, S, E, placed=True) as fakes:
            say(
                f"   fakes filled in {fakes.populate_s:.1f} s (up after {time.monotonic() - t:.1f} s)"
            )
            size: dict[str, Any] = {"endpoints": C * S * E, "populate_s": fakes.populate_s}
            for name, src in trees:
                flips = args.flips if max(args.sizes) == S else 0
                size[name] = run_fedns(
                    args, fakes, tmp / f"{name[:4]}-{S}", src, flips, f"{name}: "
                )
            out["sizes"][S] = size
    return out


# -- in-process: where the memory goes ---------------------------------------------------------------


def area_of(filename: str) -> str:
    f = filename.replace(os.sep, "/")
    if "/resolver/federation/" in f:
        stem = f.rsplit("/", 1)[1]
        if "/sources/" in f or stem in ("registry.py", "model.py"):
            return "registry (stripped objects, caches)"
        if stem == "plan.py":
            return "plans (plan.py: candidates, labels)"
        if stem == "control.py":
            return "control (control.py: per-service state)"
        if stem == "router.py":
            return "answer table (router.py: names, Addresses)"
        return "federation, other"
    if "/resolver/dns/" in f:
        return "answer table (resolver/dns: zone index, entries)"
    return "other (interpreter, libraries)"


# CPU from start to the first publish, by phase: the functions each is timed in.
PHASES = {
    "parse": "list bodies parsed (json.loads)",
    "strip": "items stripped to the model's objects (strip_*)",
    "insert": "registry insert (Registry._replace)",
    "sync_rest": "rest of the sync: HTTP, kubernetes-asyncio, the event loop",
    "plan": "plans (Control.plan: snapshot, plan, health stamps)",
    "table": "answer table (the publish callback: Publisher.apply)",
    "publish_rest": "rest of the publish: Control bookkeeping",
}


class Phases:
    """``time.process_time`` spent inside a few functions, summed by phase (the
    functions are never nested in one another, so the phases add up)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = dict.fromkeys(PHASES, 0.0)

    def wrap(self, phase: str, fn: Any) -> Any:
        cpu = self.cpu

        def timed(*a: Any, **kw: Any) -> Any:
            t = time.process_time()
            try:
                return fn(*a, **kw)
            finally:
                cpu[phase] += time.process_time() - t

        return timed

    def install(self) -> None:
        """Wrap the functions (this process only: a probe runs in its own)."""
        from types import SimpleNamespace

        from resolver.federation import control, registry
        from resolver.federation.sources import kubernetes

        kubernetes.json = SimpleNamespace(loads=self.wrap("parse", json.loads))  # type: ignore[assignment]
        for name in ("strip_service", "strip_slice", "strip_export"):
            setattr(kubernetes, name, self.wrap("strip", getattr(kubernetes, name)))
        registry.Registry._replace = self.wrap("insert", registry.Registry._replace)  # type: ignore[method-assign]
        control.Control.plan = self.wrap("plan", control.Control.plan)  # type: ignore[method-assign]


def probe(C: int, S: int, E: int, trace: int, deadline: float, wait: float) -> dict[str, Any]:
    """Sync and publish in this process as ``fedns serve`` does: RSS before and after,
    CPU by phase (``PHASES``), and with ``trace``, a tracemalloc snapshot after the
    first publish."""
    with prop.fake_servers(C, S, E, placed=True) as fakes, tempfile.TemporaryDirectory() as d:
        # Imported before RSS is first read: its ~35 MB are the same at any size.
        import kubernetes_asyncio.client  # noqa: F401

        from resolver.app import load_instance
        from resolver.config import load_config
        from resolver.federation.control import Control
        from resolver.logs import setup

        setup("warning")
        inst = load_instance(load_config(write_config(Path(d), fakes, wait)))
        assert inst.fed is not None
        phases = Phases()
        phases.install()

        async def run() -> dict[str, Any]:
            gc.collect()
            rss0 = _rss_mb()
            if trace:
                tracemalloc.start(6)
            t0, c0 = time.monotonic(), time.process_time()
            assert inst.fed is not None
            ctl = Control(inst.fed, phases.wrap("table", inst.apply))
            await ctl.start()
            synced = await ctl.registry.wait_synced(deadline)
            t1, c1 = time.monotonic(), time.process_time()
            ctl.release()
            t2, c2 = time.monotonic(), time.process_time()
            gc.collect()
            res: dict[str, Any] = {
                "endpoints": C * S * E,
                "synced": synced,
                "sync_s": t1 - t0,
                "publish_s": t2 - t1,
                "sync_cpu_s": c1 - c0,
                "publish_cpu_s": c2 - c1,
                "rss0": rss0,
                "rss": _rss_mb(),
                "hwm": _rss_mb("VmHWM"),
                "phases": phases.cpu,
            }
            cpu = phases.cpu
            cpu["sync_rest"] = c1 - c0 - cpu["parse"] - cpu["strip"] - cpu["insert"]
            cpu["publish_rest"] = c2 - c1 - cpu["plan"] - cpu["table"]
            if trace:
                res["trace"] = _breakdown(tracemalloc.take_snapshot(), C * S * E, trace)
                tracemalloc.stop()
            await ctl.stop()
            return res

        return asyncio.run(run())


def _rss_mb(key: str = "VmRSS") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def _breakdown(snap: tracemalloc.Snapshot, n: int, top: int) -> dict[str, Any]:
    """Bytes per endpoint by area and by line, each allocation charged to its innermost
    frame in ``resolver/`` (a dataclass's ``replace`` is charged to its caller)."""
    ours = str(REPO / "resolver")
    src = os.environ.get("FEDNS_SRC")
    roots = [ours] + ([str(Path(src) / "resolver")] if src else [])
    lines: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
    for tr in snap.traces:
        frames = list(tr.traceback)  # oldest first
        where = next(
            (f for f in reversed(frames) if f.filename.startswith(tuple(roots))), frames[-1]
        )
        cell = lines[(where.filename, where.lineno)]
        cell[0] += tr.size
        cell[1] += 1
    areas: dict[str, int] = defaultdict(int)
    for (fn, _), (size, _) in lines.items():
        areas[area_of(fn)] += size
    total = sum(areas.values())
    rows = []
    for (fn, ln), (size, count) in sorted(lines.items(), key=lambda kv: -kv[1][0])[:top]:
        short = fn
        for root in roots:
            short = short.replace(str(Path(root).parent) + os.sep, "")
        rows.append(
            {
                "where": f"{short}:{ln}",
                "code": linecache.getline(fn, ln).strip()[:90],
                "bytes_per_endpoint": size / max(1, n),
                "mb": size / 2**20,
                "blocks": count,
            }
        )
    return {
        "total_mb": total / 2**20,
        "bytes_per_endpoint": total / max(1, n),
        "areas": {a: s / max(1, n) for a, s in sorted(areas.items(), key=lambda kv: -kv[1])},
        "lines": rows,
    }


def run_probe(
    args: argparse.Namespace, shape: tuple[int, int, int], src: Path | None, trace: int
) -> dict[str, Any]:
    """``probe`` in a fresh interpreter (a clean RSS, and ``src``'s resolver package)."""
    C, S, E = shape
    argv = [sys.executable, __file__, "--probe", f"{C},{S},{E}", "--trace", str(trace),
            "--startup-deadline", str(args.startup_deadline), "--startup-wait", str(args.startup_wait)]  # fmt: skip
    done = subprocess.run(argv, env=_env(src), capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"probe {shape} failed: {done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _env(src: Path | None) -> dict[str, str]:
    from servers import fedns_env

    env = fedns_env(src)
    env["FEDNS_SRC"] = str(src) if src is not None else ""
    return env


def part_trace(args: argparse.Namespace) -> dict[str, Any]:
    C, S, E = args.trace_shape
    out: dict[str, Any] = {"shape": (C, S, E), "trees": {}}
    trees: list[tuple[str, Path | None]] = [("this tree", args.fedns_src)]
    if args.baseline is not None:
        trees.append(("baseline", args.baseline))
    shapes = list(dict.fromkeys([*args.phase_shapes, (C, S, E)]))
    out["shapes"] = shapes
    for name, src in trees:
        runs: dict[tuple[int, int, int], dict[str, Any]] = {}
        for shape in shapes:
            say(f"== in-process, {name}: {' x '.join(f'{x:,}' for x in shape)}, untraced")
            r = runs[shape] = run_probe(args, shape, src, 0)
            n = r["endpoints"]
            say(
                f"   CPU to the first publish {r['sync_cpu_s'] + r['publish_cpu_s']:.2f} s "
                f"({(r['sync_cpu_s'] + r['publish_cpu_s']) * 1e6 / n:.1f} us per endpoint); RSS "
                f"{r['rss0']:.0f} -> {r['rss']:.0f} MB (peak {r['hwm']:.0f}): "
                f"{(r['rss'] - r['rss0']) * 2**20 / n:.0f} B per endpoint"
            )
            say("   " + "; ".join(f"{k} {v:.2f} s" for k, v in r["phases"].items()))
        say(f"== in-process, {name}: {C} x {S:,} x {E} ({C * S * E:,} endpoints), traced")
        plain = runs[(C, S, E)]
        traced = run_probe(args, (C, S, E), src, max(1, args.trace))
        n = plain["endpoints"]
        say(
            f"   sync {plain['sync_s']:.2f} s ({plain['sync_cpu_s']:.2f} s CPU), publish "
            f"{plain['publish_s']:.2f} s ({plain['publish_cpu_s']:.2f} s CPU); RSS "
            f"{plain['rss0']:.0f} -> {plain['rss']:.0f} MB (peak {plain['hwm']:.0f}): "
            f"{(plain['rss'] - plain['rss0']) * 2**20 / n:.0f} B per endpoint; traced "
            f"{traced['trace']['bytes_per_endpoint']:.0f} B per endpoint"
        )
        for area, b in traced["trace"]["areas"].items():
            say(f"   {b:7.0f} B/endpoint  {area}")
        for row in traced["trace"]["lines"]:
            say(
                f"   {row['bytes_per_endpoint']:7.1f} B/endpoint {row['mb']:7.2f} MB "
                f"{row['blocks']:8d} blocks  {row['where']}  {row['code']}"
            )
        out["trees"][name] = {"plain": plain, "traced": traced, "runs": runs}
    return out


def projection(runs: dict[tuple[int, int, int], dict[str, Any]], n: int) -> dict[str, float]:
    """CPU to the first publish and RSS at ``n`` endpoints, linear between the two
    largest shapes with the most clusters: what grows with the endpoints, on top of
    what the clusters cost whatever they hold (a client each: ~0.9 MB and ~20 ms)."""
    most = max(c for c, _, _ in runs)
    pts = sorted(
        (r["endpoints"], r["sync_cpu_s"] + r["publish_cpu_s"], r["rss"])
        for (c, _, _), r in runs.items()
        if c == most
    )
    n2, c2, m2 = pts[-1]
    n1, c1, m1 = pts[-2] if len(pts) > 1 else (0, 0.0, runs[max(runs)]["rss0"])
    cpu_per, mem_per = (c2 - c1) / (n2 - n1), (m2 - m1) / (n2 - n1)
    return {
        "cpu_s": c2 + cpu_per * (n - n2),
        "rss_mb": m2 + mem_per * (n - n2),
        "cpu_us_per_endpoint": cpu_per * 1e6,
        "bytes_per_endpoint": mem_per * 2**20,
        "from": (n1, n2),
    }


# -- report -------------------------------------------------------------------------------------------


def _ok(v: float | None, goal: float) -> str:
    return "n/a" if v is None else ("met" if v < goal else "NOT met")


def per_endpoint(serve: dict[str, Any], tree: str) -> list[str]:
    """(RSS at N - RSS at 0) / N at each size, and between the two largest."""
    sizes = serve["sizes"]
    base = sizes.get(0, {}).get(tree)
    if not base or "failed" in base:
        return []
    rows = []
    ok = [
        (s["endpoints"], s[tree]) for k, s in sorted(sizes.items()) if k and "failed" not in s[tree]
    ]
    for n, r in ok:
        rows.append(
            f"{(r['mem']['rss'] - base['mem']['rss']) * 2**20 / n:,.0f} B at {n:,} "
            f"(PSS {(r['mem']['pss'] - base['mem']['pss']) * 2**20 / n:,.0f})"
        )
    if len(ok) >= 2:
        (n1, r1), (n2, r2) = ok[-2], ok[-1]
        rows.append(
            f"{(r2['mem']['rss'] - r1['mem']['rss']) * 2**20 / (n2 - n1):,.0f} B from "
            f"{n1:,} to {n2:,}"
        )
    return rows


def _cell(r: dict[str, Any], f: Any) -> str:
    if "failed" in r:
        return "failed"
    try:
        return str(f(r))
    except (KeyError, TypeError):
        return "n/a"


def _sec(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} s"


def _flips(r: dict[str, Any]) -> str:
    if "flips" not in r or not r["flips"].every:
        return ""
    f = r["flips"]
    more = f", {f.timeouts} over 10 s" if f.timeouts else ""
    return f"{prop._fmt(prop.dist(f.every))} ({len(f.every)}{more})"


def serve_table(serve: dict[str, Any]) -> list[str]:
    C, E = serve["shape"]
    trees, sizes = serve["trees"], serve["sizes"]
    top = max(sizes)
    cols = [(S, t) for S in sizes for t in trees]
    done = [sizes[top][t] for t in trees if "failed" not in sizes[top][t]]
    flipped = [r for r in done if _flips(r)]

    def row(label: str, f: Any, goal: str = "") -> str:
        return f"| {label} | " + " | ".join(_cell(sizes[S][t], f) for S, t in cols) + f" | {goal} |"

    head = " | ".join(f"{C} x {S:,} x {E} = {sizes[S]['endpoints']:,}, {t}" for S, t in cols)
    out = [
        f"### {C} clusters x services x {E} endpoints, 1 worker (columns: clusters x services x "
        "endpoints = endpoints, source tree)",
        "",
        f"| measure | {head} | goal (at {sizes[top]['endpoints']:,}) |",
        "|---|" + "---:|" * len(cols) + "---|",
        "| the fakes: filled in (before fedns starts) | "
        + " | ".join(f"{sizes[S]['populate_s']:.1f} s" for S, _ in cols)
        + " | |",
        row(
            "start -> every cluster's first list in the registry (log `cluster synced`)",
            lambda r: _sec(r["log"].get("clusters_synced")),
        ),
        row(
            "start -> first full publish (log `federation_synced`)",
            lambda r: (
                _sec(r["log"].get("published"))
                + (" (before every list was in)" if r["log"]["early"] else "")
            ),
        ),
        row("start -> `/readyz` 200", lambda r: _sec(r["ready_s"])),
        row(
            f"start -> {SAMPLE} sampled `<cluster>.<svc>.<ns>` names answer right over DNS",
            lambda r: _sec(r["answer_s"]),
            f"< {GOAL_ANSWER_S:.0f} s: "
            + ", ".join(_ok(r["answer_s"], GOAL_ANSWER_S) for r in done),
        ),
        row(
            "RSS after sync (peak) / PSS",
            lambda r: "{rss:,.0f} ({hwm:,.0f}) / {pss:,.0f} MB".format(**r["mem"]),
            f"RSS < {GOAL_RSS_MB:,.0f} MB: "
            + ", ".join(_ok(r["mem"]["rss"], GOAL_RSS_MB) for r in done),
        ),
        row("fedns CPU from start to answering", lambda r: _sec(r["cpu_start_s"])),
        row(
            "the fakes' CPU meanwhile (serving the first lists)",
            lambda r: _sec(r["fake_cpu_sync_s"]),
        ),
        row(
            "one endpoint change, `<cluster>.<svc>.<ns>` answered: p50 / p90 / p99 / max ms (flips)",
            _flips,
            f"p99 <= {GOAL_P99_MS:.0f} ms: "
            + ", ".join(
                "met" if prop.dist(r["flips"].every)["p99"] <= GOAL_P99_MS else "NOT met"
                for r in flipped
            ),
        ),
        row(
            "fedns CPU per change (idle subtracted)",
            lambda r: (
                f"{r['flips'].cpu_per_flip_ms:.1f} ms"
                if "flips" in r and r["flips"].cpu_per_flip_ms is not None
                else ""
            ),
        ),
        "",
    ]
    for t in trees:
        pe = per_endpoint(serve, t)
        if pe:
            out.append(f"- memory per endpoint, {t}: (RSS at N - RSS at 0) / N = " + "; ".join(pe))
    for S, size in sizes.items():
        out += [f"- {S:,} services, {t}: {size[t]['failed']}" for t in trees if "failed" in size[t]]
    return [*out, ""]


def trace_table(traced: dict[str, Any]) -> list[str]:
    C, S, E = traced["shape"]
    names = list(traced["trees"])
    plain = {n: traced["trees"][n]["plain"] for n in names}
    trace = {n: traced["trees"][n]["traced"]["trace"] for n in names}

    def row(label: str, f: Any) -> str:
        return f"| {label} | " + " | ".join(f(n) for n in names) + " |"

    out = [
        f"### Where the memory goes: in-process, {C} x {S:,} x {E} ({C * S * E:,} endpoints), "
        "after the first publish",
        "",
        "The registry, `Control` and the answer table run in the benchmark's own process (as "
        "`fedns serve` wires them, without sockets): RSS before and after, and a `tracemalloc` "
        "snapshot, each block charged to its innermost frame in `resolver/`.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        row(
            "sync / first publish: wall (CPU)",
            lambda n: (
                f"{plain[n]['sync_s']:.2f} ({plain[n]['sync_cpu_s']:.2f}) / "
                f"{plain[n]['publish_s']:.2f} ({plain[n]['publish_cpu_s']:.2f}) s"
            ),
        ),
        row(
            "RSS per endpoint: (after - before) / N",
            lambda n: (
                f"{(plain[n]['rss'] - plain[n]['rss0']) * 2**20 / plain[n]['endpoints']:,.0f} B"
            ),
        ),
        row("traced per endpoint", lambda n: f"{trace[n]['bytes_per_endpoint']:,.0f} B"),
    ]
    areas: list[str] = []
    for n in names:
        areas += [a for a in trace[n]["areas"] if a not in areas]
    out += [row(a, lambda n, a=a: f"{trace[n]['areas'].get(a, 0):,.0f} B") for a in areas]
    out += [
        "",
        f"Biggest lines ({names[0]}):",
        "",
        "| B per endpoint | blocks | where | code |",
        "|---:|---:|---|---|",
    ]
    for r in trace[names[0]]["lines"]:
        code = r["code"].replace("|", "\\|")
        out.append(
            f"| {r['bytes_per_endpoint']:.1f} | {r['blocks']:,} | `{r['where']}` | `{code}` |"
        )
    runs = {n: traced["trees"][n].get("runs", {}) for n in names}
    shapes = [tuple(x) for x in traced.get("shapes", [])]
    if shapes and all(runs.values()):
        out += [
            "",
            "CPU seconds (`time.process_time`) from start to the first publish, by phase, "
            "and RSS, untraced (each shape in a fresh interpreter, fakes of its own):",
            "",
            "| | "
            + " | ".join(f"{'x'.join(map(str, sh))}, {n}" for sh in shapes for n in names)
            + " |",
            "|---|" + "---:|" * (len(shapes) * len(names)),
        ]

        def cell(sh: tuple[int, ...], n: str, f: Any) -> str:
            r = runs[n].get(sh)
            return "n/a" if r is None else f(r)

        def prow(label: str, f: Any) -> str:
            return (
                f"| {label} | " + " | ".join(cell(sh, n, f) for sh in shapes for n in names) + " |"
            )

        for key, label in PHASES.items():
            out.append(prow(label, lambda r, key=key: f"{r['phases'].get(key, 0.0):.2f}"))
        out += [
            prow(
                "CPU to the first publish",
                lambda r: f"{r['sync_cpu_s'] + r['publish_cpu_s']:.2f} s",
            ),
            prow(
                "per endpoint",
                lambda r: f"{(r['sync_cpu_s'] + r['publish_cpu_s']) * 1e6 / r['endpoints']:.1f} us",
            ),
            prow(
                "RSS: before -> after (peak); per endpoint",
                lambda r: (
                    f"{r['rss0']:.0f} -> {r['rss']:.0f} ({r['hwm']:.0f}) MB; "
                    f"{(r['rss'] - r['rss0']) * 2**20 / r['endpoints']:,.0f} B"
                ),
            ),
            "",
        ]
        for n in names:
            pr = projection(runs[n], 2_000_000)
            lo, hi = pr["from"]
            out.append(
                f"- {n}, projected to 2,000,000 endpoints (linear from {lo:,} to {hi:,} "
                f"endpoints: {pr['cpu_us_per_endpoint']:.1f} us and "
                f"{pr['bytes_per_endpoint']:,.0f} B per endpoint): {pr['cpu_s']:.0f} s of CPU "
                f"to the first publish, RSS {pr['rss_mb']:,.0f} MB"
            )
    return [*out, ""]


def report(serve: dict[str, Any] | None, traced: dict[str, Any] | None, cmd: str, load: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Scale: 2,000,000 endpoints from fake API servers, and the memory of one endpoint",
        "",
        f"- command: `{cmd}`",
        f"- date: {when}; machine: {prop.machine()}; load average before the run: {load}",
        "- fake Kubernetes API servers (`tests/fakekube.py`) in a child process, one per cluster, "
        "each with the same Services (20 namespaces) and one EndpointSlice of E endpoints per "
        "Service (pod targetRef, zone, nodeName); fedns is `fedns serve --workers 1` with "
        "`dns.startup_wait: 60s`, watching them with kubernetes-asyncio through a kubeconfig.",
        "",
    ]
    if serve is not None:
        lines += serve_table(serve)
    if traced is not None:
        lines += trace_table(traced)
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", type=int, default=50)
    ap.add_argument("--sizes", default="0,1000,2000", help="services per cluster, one run each")
    ap.add_argument("--endpoints", type=int, default=20, help="endpoints per service and cluster")
    ap.add_argument("--flips", type=int, default=50, help="endpoint changes at the largest size")
    ap.add_argument("--startup-wait", type=float, default=60.0, help="dns.startup_wait, seconds")
    ap.add_argument("--startup-deadline", type=float, default=300.0)
    ap.add_argument("--baseline", type=Path, help="also run fedns from this source tree")
    ap.add_argument("--fedns-src", type=Path, help="run 'this tree' from another source tree")
    ap.add_argument("--trace", type=int, default=0, help="the memory breakdown, N top lines")
    ap.add_argument("--trace-shape", default="10,200,20", help="clusters,services,endpoints")
    ap.add_argument(
        "--phase-shapes",
        default="50x1x20,50x100x20,50x200x20",
        help="in-process shapes (CxSxE, comma-separated) timed by phase, untraced, with --trace",
    )
    ap.add_argument("--in-process", action="store_true", help="only the in-process part")
    ap.add_argument("--quick", action="store_true", help="10 clusters, sizes 0,100,200, 10 flips")
    ap.add_argument("--workdir", help="keep configs and fedns logs here (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.trace_shape = tuple(_ints(args.trace_shape))
    args.phase_shapes = [
        tuple(int(x) for x in sh.split("x")) for sh in args.phase_shapes.split(",") if sh.strip()
    ]
    if args.probe:
        src = os.environ.get("FEDNS_SRC")
        if src:  # propagation put this checkout first; the probed tree goes before it
            sys.path.insert(0, src)
        assert "resolver" not in sys.modules
        C, S, E = _ints(args.probe)
        print(json.dumps(probe(C, S, E, args.trace, args.startup_deadline, args.startup_wait)))
        return 0
    if args.quick:
        args.clusters, args.sizes, args.flips = 10, "0,100,200", 10
    args.sizes = _ints(args.sizes)
    if args.in_process and not args.trace:
        args.trace = 25
    # fedns runs in a work directory of its own: a relative tree must not be read from there.
    for opt in ("baseline", "fedns_src"):
        tree = getattr(args, opt)
        if tree is not None:
            setattr(args, opt, tree.resolve())
            if not (tree / "resolver" / "cli.py").exists():
                ap.error(f"--{opt.replace('_', '-')} {tree}: no resolver/cli.py there (a source tree of fedns?)")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    say(f"load average now: {load}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedns-scale-") as d:
        tmp = Path(args.workdir) if args.workdir else Path(d)
        serve = None if args.in_process else part_serve(args, tmp)
        traced = part_trace(args) if args.trace else None
    cmd = " ".join(["python3 benchmarks/scale.py", *sys.argv[1:]])
    text = report(serve, traced, cmd, load)
    say(f"\n(total {time.monotonic() - started:.0f} s)\n")
    print(text)
    if not (args.quick or args.no_write or args.in_process):
        replace_section("scale", text, keep_after=NOTES)
        say(f"(written to {RESULTS.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
