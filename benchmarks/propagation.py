#!/usr/bin/env python3
"""Propagation through a real ``fedns serve``: watch event written -> DNS answer changed.

Fake Kubernetes API servers (``tests/fakekube.py``, real HTTP on loopback)
run in a child process, on their own event-loop thread
(``ThreadedFakeKubes``); this process drives them over a pipe and polls fedns
over UDP from its main thread, so neither the fakes nor the poller starve the
other of the GIL. fedns is the unmodified ``fedns serve -c CONFIG`` (one
process, or ``--workers 2``), watching the fakes through a kubeconfig.

Part 1, propagation: 3 clusters x 20 services x 4 endpoints, policy ``all``.
Each flip toggles one endpoint's readiness in one fake API server (a new
EndpointSlice version). The fake stamps the moment the watch event is written
to fedns's watch stream (CLOCK_MONOTONIC, shared by processes); the poller
asks ``<svc>.<ns>.<zone> A`` about every millisecond until the answer equals
the ready endpoints (the expected set is kept here, from the flips made).
With ``--workers 2`` each worker is polled through its own socket (SO_REUSEPORT
sends a source port to one worker; the socket -> worker map is found first,
from the workers' CPU time), so a flip counts as propagated when every
worker answers the new set.

Part 2, scale: 10 clusters x 1,000 services x 10 endpoints (the same
services in every cluster, 100,000 endpoints) served by one fedns instance
(1 worker, then 2 workers): from process start to every cluster's first list
in the registry and to the first full publish (fedns's own log lines), to
``/readyz`` 200 (served on the control loop, so it waits for table builds
too), and to a sample of names answering over DNS with the right addresses
from every worker; RSS (VmRSS, and PSS because forked workers share pages) of
all fedns processes; propagation of single endpoint flips
(``<cluster>.<svc>.<ns>.<zone> A``: that cluster's ready endpoints); fedns
CPU per change: utime+stime of all its processes over the flips, less the
idle rate (the same polling, no change, for 3 s) over the same wall time.

Bounded: a fedns that does not answer within ``--startup-deadline`` seconds is
reported as such, flips stop after 60 s per fedns, one flip waits 10 s at most.

Results print as they come and, for a full run, replace the tables of the
propagation section of benchmarks/RESULTS.md (analysis written by hand after
its ``<!-- propagation:notes -->`` line is kept).

Usage: python3 benchmarks/propagation.py [--quick] [--flips 200] [--scale-flips 50]
                                         [--only small,scale] [--workers 1,2]
                                         [--fedns-src DIR] [--workdir DIR] [--no-write]

``--fedns-src DIR`` runs fedns from another source tree (a before/after
comparison: ``git archive REV | tar -x -C DIR``); ``--workdir DIR`` keeps the
configs and fedns's logs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

import dns.message  # noqa: E402
import dns.rdatatype  # noqa: E402
from results import RESULTS, replace_section  # noqa: E402

NOTES = "<!-- propagation:notes -->"  # from here to END: analysis by hand, kept by runs
ORIGIN = "global.example.test."
ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 1209600 30
@       IN NS  ns1
ns1     IN A   127.0.0.53
"""
GOAL_P99_MS = 100.0
GOAL_SYNC_S = 15.0
GOAL_RSS_MB = 400.0
POLL_S = 0.001  # poll period per socket
TICK = os.sysconf("SC_CLK_TCK")


def say(msg: str) -> None:
    print(msg, flush=True)


# -- the world: names and addresses, shared by the fakes and the poller -----------------------


def ns_of(s: int) -> str:
    return f"ns{s % 20}"


def address(c: int, s: int, e: int, endpoints: int) -> str:
    """Loopback addresses only (nothing is ever sent to them): 127.<cluster+1>.x.y."""
    n = s * endpoints + e + 1
    return f"127.{c + 1}.{n // 256 % 256}.{n % 256}"


# -- child process: the fake API servers ----------------------------------------------------------


def run_fakes(clusters: int, services: int, endpoints: int, placed: bool = False) -> None:
    """Fake API servers on their own thread; flips come as JSON lines on stdin.

    ``placed``: every endpoint has a ``zone`` (3 per cluster) and a ``nodeName``
    (500 nodes per cluster), as the EndpointSlice controller fills them in."""
    import fakekube
    from fakekube import ENDPOINTSLICES, ThreadedFakeKubes, endpoint, endpoint_slice, service

    unready: dict[tuple[int, int], set[int]] = {}

    def slice_of(c: int, s: int) -> dict[str, Any]:
        down = unready.get((c, s), set())
        eps = [
            endpoint(
                address(c, s, e, endpoints),
                ready=e not in down,
                pod=f"svc{s}-{e}",
                zone=f"z-c{c}-{e % 3}" if placed else None,
                node=f"node-{c}-{(s * endpoints + e) % 500}" if placed else None,
            )
            for e in range(endpoints)
        ]
        return endpoint_slice(
            ns_of(s), f"svc{s}-abcde", f"svc{s}", eps, ports=[("http", 8080, "TCP")]
        )

    t0 = time.perf_counter()
    # Bookmarks about once a minute, as a real API server sends them.
    with ThreadedFakeKubes([f"c{c}" for c in range(clusters)], bookmark_interval=60.0) as fakes:
        written: dict[tuple[str, str], Any] = {}

        def instrument(kube: fakekube.FakeKube) -> None:
            plain = kube._line

            async def line(resp: Any, ev: dict[str, Any]) -> None:
                await plain(resp, ev)
                if ev.get("type") == "MODIFIED":
                    fut = written.pop(
                        (kube.name, ev["object"]["metadata"]["resourceVersion"]), None
                    )
                    if fut is not None and not fut.done():
                        fut.set_result(time.monotonic())

            kube._line = line

        def populate(c: int) -> None:
            k = fakes[f"c{c}"]
            for s in range(services):
                k.apply(
                    fakekube.SERVICES, service(ns_of(s), f"svc{s}", ports=[("http", 80, "TCP")])
                )
                k.apply(ENDPOINTSLICES, slice_of(c, s))
            k.history.clear()  # nobody watches from before now; keeps the child small
            instrument(k)

        for c in range(clusters):
            fakes.call(populate, c)
        print(
            json.dumps(
                {
                    "urls": {n: k.url for n, k in fakes.kubes.items()},
                    "populate_s": time.perf_counter() - t0,
                }
            ),
            flush=True,
        )

        async def flip(c: int, s: int, e: int) -> dict[str, Any]:
            import asyncio

            down = unready.setdefault((c, s), set())
            down.symmetric_difference_update({e})
            obj = fakes[f"c{c}"].apply(ENDPOINTSLICES, slice_of(c, s))
            t_apply = time.monotonic()
            fut = asyncio.get_running_loop().create_future()
            written[(f"c{c}", obj["metadata"]["resourceVersion"])] = fut
            try:
                t_written = await asyncio.wait_for(fut, 10.0)
            except TimeoutError:
                t_written = None  # nobody was watching
            return {"t_apply": t_apply, "t_written": t_written}

        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "flip":
                reply = fakes.run(flip(cmd["c"], cmd["s"], cmd["e"]))
            else:
                break
            print(json.dumps(reply), flush=True)


@dataclass
class Fakes:
    """The child process as seen from here."""

    proc: subprocess.Popen[str]
    urls: dict[str, str]
    populate_s: float
    clusters: int
    services: int
    endpoints: int
    unready: dict[tuple[int, int], set[int]] = field(default_factory=dict)

    def send_flip(self, c: int, s: int, e: int) -> None:
        assert self.proc.stdin is not None
        self.unready.setdefault((c, s), set()).symmetric_difference_update({e})
        self.proc.stdin.write(json.dumps({"op": "flip", "c": c, "s": s, "e": e}) + "\n")
        self.proc.stdin.flush()

    def reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake API servers' process went away")
        return dict(json.loads(line))

    def ready_in(self, c: int, s: int) -> frozenset[str]:
        """What ``<cluster>.<svc>.<ns>.Z`` must answer: ready endpoints, or all (fail-open)."""
        down = self.unready.get((c, s), set())
        every = [address(c, s, e, self.endpoints) for e in range(self.endpoints)]
        ready = [a for e, a in enumerate(every) if e not in down]
        return frozenset(ready or every)

    def ready_all(self, s: int) -> frozenset[str]:
        """What ``<svc>.<ns>.Z`` answers under policy ``all``: ready endpoints anywhere."""
        ready = {
            address(c, s, e, self.endpoints)
            for c in range(self.clusters)
            for e in range(self.endpoints)
            if e not in self.unready.get((c, s), set())
        }
        if ready:
            return frozenset(ready)
        return frozenset().union(*(self.ready_in(c, s) for c in range(self.clusters)))

    def cpu(self) -> float:
        return cpu_seconds([self.proc.pid])


@contextlib.contextmanager
def fake_servers(
    clusters: int, services: int, endpoints: int, placed: bool = False
) -> Iterator[Fakes]:
    argv = [sys.executable, __file__, "--fakes", str(clusters), str(services), str(endpoints)]
    argv += ["--placed"] if placed else []
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first:
            raise RuntimeError("the fake API servers did not start")
        hello = json.loads(first)
        yield Fakes(proc, hello["urls"], hello["populate_s"], clusters, services, endpoints)
    finally:
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- fedns ------------------------------------------------------------------------------------------


def write_fedns_config(workdir: Path, fakes: Fakes, defaults: dict[str, Any] | None = None) -> Path:
    from fakekube import federation_config

    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "zone.db").write_text(ZONE)
    kubes = {n: SimpleNamespace(url=u) for n, u in fakes.urls.items()}
    fed = federation_config(kubes, workdir)
    if defaults:
        fed["defaults"] = defaults
    doc = {"zones": [{"origin": ORIGIN, "file": "zone.db"}], "federation": fed}
    path = workdir / "fedns.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
    return out


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes (all their threads), in seconds."""
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12])
    return total / TICK


def run_ns(pid: int) -> int:
    """Time on CPU of a process, all threads, in ns (/proc/PID/task/*/schedstat): fine
    grained enough to see which worker answered a short burst of queries."""
    total = 0
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
    return total


def memory_mb(pids: list[int]) -> dict[str, Any]:
    """Summed VmRSS, VmHWM and PSS (forked workers share pages: RSS counts them twice)."""
    out: dict[str, Any] = {"rss": 0.0, "hwm": 0.0, "pss": 0.0, "each": []}
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out["rss" if k == "VmRSS" else "hwm"] += int(v.split()[0]) / 1024
                    if k == "VmRSS":
                        out["each"].append(int(v.split()[0]) / 1024)
            private = 0.0
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out["pss"] += int(line.split()[1]) / 1024
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    private += int(line.split()[1]) / 1024
            out["private"] = [*out.get("private", []), private]
    return out


def log_times(text: str, t0_wall: float) -> dict[str, float]:
    """Seconds from ``t0_wall`` to fedns's own log events: the last cluster's first
    list in the registry, and the first full publish (``federation_synced``)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            ev = json.loads(line)
            t = (
                dt.datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
                - t0_wall
            )
            if ev["event"] == "cluster synced":
                out["clusters_synced"] = max(out.get("clusters_synced", 0.0), t)
            elif ev["event"] == "federation_synced":
                out.setdefault("published", t)
    return out


def http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


# -- the poller ----------------------------------------------------------------------------------


class Poller:
    """UDP sockets to fedns, one per worker when there are several."""

    def __init__(self, port: int) -> None:
        self.addr = ("127.0.0.1", port)
        self.socks: list[socket.socket] = []
        self.qid = 0
        self.queries: dict[str, bytes] = {}

    def new_socket(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.connect(self.addr)
        s.settimeout(1.0)
        return s

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []

    def ask(self, sock: socket.socket, name: str) -> frozenset[str] | None:
        """The A addresses of ``name`` (None: no answer within the timeout)."""
        q = self.queries.get(name)
        if q is None:
            q = self.queries[name] = dns.message.make_query(name, "A").to_wire()
        self.qid = (self.qid + 1) & 0xFFFF
        qid = self.qid.to_bytes(2, "big")
        try:
            sock.send(qid + q[2:])
        except OSError:
            return None
        while True:
            try:
                data = sock.recv(65535)
            except TimeoutError:
                return None
            except OSError:  # ICMP port unreachable: nothing listens (fedns gone)
                time.sleep(0.01)
                return None
            if data[:2] == qid:
                break
        m = dns.message.from_wire(data)
        return frozenset(
            rd.to_text() for rr in m.answer if rr.rdtype == dns.rdatatype.A for rd in rr
        )

    def map_workers(self, workers: list[int], name: str) -> None:
        """One socket per worker: a burst of queries from a socket shows up in one
        worker's CPU time (SO_REUSEPORT hashes the source port to one worker)."""
        if len(workers) <= 1:
            self.socks = [self.new_socket()]
            return
        owner: dict[int, socket.socket] = {}
        for _ in range(64):
            s = self.new_socket()
            before = {w: run_ns(w) for w in workers}
            for _ in range(300):
                self.ask(s, name)
            delta = {w: run_ns(w) - before[w] for w in workers}
            busiest = max(delta, key=lambda w: delta[w])
            others = max((d for w, d in delta.items() if w != busiest), default=0)
            if busiest not in owner and delta[busiest] > 3 * max(others, 1):
                owner[busiest] = s
            else:
                s.close()
            if len(owner) == len(workers):
                break
        if len(owner) != len(workers):
            raise RuntimeError(f"could not find a socket for every worker: {sorted(owner)}")
        self.socks = [owner[w] for w in workers]

    def until(
        self, name: str, want: frozenset[str], deadline_s: float, idle_name: str | None = None
    ) -> list[float | None]:
        """Poll every socket about every ``POLL_S`` until each answers ``want``; the
        monotonic time each socket (worker) first did, None past the deadline."""
        seen: list[float | None] = [None] * len(self.socks)
        end = time.monotonic() + deadline_s
        nxt = time.monotonic()
        while None in seen and time.monotonic() < end:
            for i, s in enumerate(self.socks):
                if seen[i] is None:
                    got = self.ask(s, name)
                    if got == want:
                        seen[i] = time.monotonic()
            nxt += POLL_S
            pause = nxt - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                nxt = time.monotonic()
        return seen

    def idle(self, name: str, seconds: float) -> None:
        """Poll as ``until`` does, for ``seconds`` (the idle baseline for CPU)."""
        end = time.monotonic() + seconds
        nxt = time.monotonic()
        while time.monotonic() < end:
            for s in self.socks:
                self.ask(s, name)
            nxt += POLL_S
            pause = nxt - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            else:
                nxt = time.monotonic()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def dist(xs: list[float]) -> dict[str, float]:
    return {
        "n": len(xs),
        "p50": pct(xs, 50),
        "p90": pct(xs, 90),
        "p99": pct(xs, 99),
        "max": max(xs),
    }


@dataclass
class FlipResult:
    first: list[float]  # ms, event written -> the first worker answers the new set
    every: list[float]  # ms, -> every worker does
    fake_ms: list[float]  # ms, apply in the fake -> event written
    timeouts: int
    made: int
    note: str = ""  # why the flips stopped early
    cpu_per_flip_ms: float | None = None
    fake_cpu_per_flip_ms: float | None = None


def run_flips(
    fakes: Fakes,
    poller: Poller,
    flips: int,
    pick: Callable[[random.Random], tuple[int, int, int]],
    name_of: Callable[[int, int], str],
    want_of: Callable[[int, int], frozenset[str]],
    rng: random.Random,
    cpu_pids: list[int] | None = None,
    label: str = "",
    budget_s: float = 60.0,
    alive: Callable[[], bool] | None = None,
) -> FlipResult:
    first: list[float] = []
    every: list[float] = []
    fake_ms: list[float] = []
    timeouts = 0
    idle_cpu_rate = 0.0
    idle_fake_rate = 0.0
    if cpu_pids:
        # The idle baseline: same polling, no change, for a few seconds.
        c, s, _ = pick(rng)
        span = 3.0
        c0, f0, t0 = cpu_seconds(cpu_pids), fakes.cpu(), time.monotonic()
        poller.idle(name_of(c, s), span)
        wall = time.monotonic() - t0
        idle_cpu_rate = (cpu_seconds(cpu_pids) - c0) / wall
        idle_fake_rate = (fakes.cpu() - f0) / wall
    c0, f0, t0 = cpu_seconds(cpu_pids or []), fakes.cpu(), time.monotonic()
    made = 0
    note = ""
    for i in range(flips):
        if time.monotonic() - t0 > budget_s:
            say(f"   {label}stopped after {made} flips: the {budget_s:.0f} s budget is spent")
            break
        made += 1
        c, s, e = pick(rng)
        fakes.send_flip(c, s, e)
        want = want_of(c, s)
        seen = poller.until(name_of(c, s), want, 10.0)
        r = fakes.reply()
        if None in seen or r["t_written"] is None:
            timeouts += 1
            if alive is not None and not alive():
                note = f"fedns exited after {made} flips"
                say(f"   {label}{note}")
                break
        else:
            done = [t for t in seen if t is not None]
            first.append((min(done) - r["t_written"]) * 1000)
            every.append((max(done) - r["t_written"]) * 1000)
            fake_ms.append((r["t_written"] - r["t_apply"]) * 1000)
        # A random pause (still polling) so flips do not line up with any timer.
        poller.idle(name_of(c, s), rng.uniform(0.005, 0.03))
        if (i + 1) % max(1, flips // 4) == 0 and every:
            say(
                f"   {label}{i + 1}/{flips} flips: p50 {pct(every, 50):.1f} ms, "
                f"p99 {pct(every, 99):.1f} ms, max {max(every):.1f} ms"
                + (f", {timeouts} timed out" if timeouts else "")
            )
    res = FlipResult(first, every, fake_ms, timeouts, made, note)
    if cpu_pids and made:
        wall = time.monotonic() - t0
        res.cpu_per_flip_ms = (cpu_seconds(cpu_pids) - c0 - idle_cpu_rate * wall) / made * 1000
        res.fake_cpu_per_flip_ms = (fakes.cpu() - f0 - idle_fake_rate * wall) / made * 1000
    return res


@contextlib.contextmanager
def fedns(config: Path, workdir: Path, workers: int, admin: str, src: Path | None) -> Iterator[Any]:
    """``fedns serve`` from this checkout (or ``src``), not yet answering on return."""
    from servers import LOOPBACK, _spawn, fedns_argv, free_port

    port = free_port()
    argv = fedns_argv(
        "serve", "-c", str(config), "--dns", f"{LOOPBACK}:{port}", "--workers", str(workers),
        "--admin", admin, "--log-format", "json",
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(src or REPO)}
    sp = _spawn("fedns", argv, workdir, port, env=env)
    try:
        yield sp
    finally:
        sp.stop()


def serving(poller: Poller, sp: Any, workers: int, deadline_s: float = 30.0) -> list[int]:
    """Wait for the DNS socket(s) (the apex answers from the zone file before any
    sync), then give every serving process its own socket; returns their pids."""
    end = time.monotonic() + deadline_s
    probe = poller.new_socket()
    probe.settimeout(0.2)
    try:
        while True:
            if not sp.alive():
                raise RuntimeError(f"fedns exited: {sp.output()[-3000:]}")
            procs = children(sp.proc.pid) if workers > 1 else [sp.proc.pid]
            with contextlib.suppress(OSError):
                if len(procs) == workers and poller.ask(probe, ORIGIN) is not None:
                    break
            if time.monotonic() > end:
                raise RuntimeError(f"fedns did not answer within {deadline_s:.0f} s")
            time.sleep(0.02)
    finally:
        probe.close()
    if workers > 1:
        from servers import wait_sockets

        wait_sockets(sp.port, workers)
    poller.map_workers(procs, ORIGIN)
    return procs


def wait_answers(
    poller: Poller,
    sp: Any,
    names: list[tuple[str, frozenset[str]]],
    deadline_s: float,
    admin: str | None = None,
    t0: float | None = None,
) -> tuple[float | None, float]:
    """Until every name answers its set over DNS from every worker: (when /readyz
    said 200, when all answered)."""
    t0 = time.monotonic() if t0 is None else t0
    pending = [(name, want, sock) for sock in poller.socks for name, want in names]
    total = len(pending)
    t_ready = None
    last_note = time.monotonic()
    for sock in poller.socks:
        sock.settimeout(0.2)
    try:
        while pending:
            if time.monotonic() - t0 > deadline_s:
                raise RuntimeError(
                    f"fedns did not answer {len(pending)} of {total} (name, worker) pairs within "
                    f"{deadline_s:.0f} s; log: {sp.output()[-2000:]}"
                )
            if not sp.alive():
                raise RuntimeError(f"fedns exited: {sp.output()[-3000:]}")
            if (
                admin is not None
                and t_ready is None
                and http_status(f"http://{admin}/readyz") == 200
            ):
                t_ready = time.monotonic()
                say(f"   /readyz 200 at {t_ready - t0:.2f} s")
            name, want, sock = pending[0]
            with contextlib.suppress(OSError):
                if poller.ask(sock, name) == want:
                    pending.pop(0)
                    continue
            if time.monotonic() - last_note > 3:
                last_note = time.monotonic()
                say(
                    f"   {last_note - t0:.0f} s: /readyz {'200' if t_ready else 'not yet'}, "
                    f"{total - len(pending)}/{total} (sample name, worker) pairs answering"
                )
            time.sleep(0.02)
    finally:
        for sock in poller.socks:
            sock.settimeout(1.0)
    return t_ready, time.monotonic()


# -- part 1: propagation latency ---------------------------------------------------------------


def part_small(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    C, S, E = 3, 20, 4
    say(f"== part 1: propagation, {C} fake API servers x {S} services x {E} endpoints, policy all")
    out: dict[str, Any] = {"shape": (C, S, E), "flips": args.flips}
    with fake_servers(C, S, E) as fakes:
        defaults = {"policy": "all", "max_answers": 16, "ttl": 5}
        for workers in args.workers:
            work = tmp / f"small-{workers}"
            cfg = write_fedns_config(work, fakes, defaults)
            admin = f"127.0.0.1:{free_port()}"
            with fedns(cfg, work, workers, admin, args.fedns_src) as sp:
                poller = Poller(sp.port)
                names = [(f"svc{s}.{ns_of(s)}.{ORIGIN}", fakes.ready_all(s)) for s in range(S)]
                t0 = time.monotonic()
                serving(poller, sp, workers)
                wait_answers(poller, sp, names, 60.0, admin)
                say(
                    f"   fedns --workers {workers}: all {S} services answering after "
                    f"{time.monotonic() - t0:.2f} s"
                )
                pids = [sp.proc.pid, *children(sp.proc.pid)]
                rng = random.Random(1000 + workers)
                res = run_flips(
                    fakes,
                    poller,
                    args.flips,
                    lambda r: (r.randrange(C), r.randrange(S), r.randrange(E)),
                    lambda _c, s: f"svc{s}.{ns_of(s)}.{ORIGIN}",
                    lambda _c, s: fakes.ready_all(s),
                    rng,
                    cpu_pids=pids,
                    label=f"{workers} worker{'s' if workers > 1 else ''}: ",
                    alive=sp.alive,
                )
                poller.close()
                out[f"w{workers}"] = res
    return out


# -- part 2: scale ------------------------------------------------------------------------------------


def part_scale(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    C, S, E = args.clusters, args.services, args.endpoints
    say(
        f"== part 2: scale, {C} fake API servers x {S:,} services x {E} endpoints "
        f"({C * S * E:,} endpoints)"
    )
    out: dict[str, Any] = {"shape": (C, S, E), "flips": args.scale_flips}
    t = time.monotonic()
    with fake_servers(C, S, E) as fakes:
        out["fake_populate_s"] = fakes.populate_s
        say(
            f"   fake servers populated in {fakes.populate_s:.2f} s (up after {time.monotonic() - t:.1f} s)"
        )
        rng = random.Random(7)
        for workers in args.workers:
            work = tmp / f"scale-{workers}"
            cfg = write_fedns_config(work, fakes)
            admin = f"127.0.0.1:{free_port()}"
            sample = [(rng.randrange(C), rng.randrange(S)) for _ in range(20)]
            names = [(f"c{c}.svc{s}.{ns_of(s)}.{ORIGIN}", fakes.ready_in(c, s)) for c, s in sample]
            say(f"-- fedns --workers {workers}")
            fake_cpu0 = fakes.cpu()
            t0, t0_wall = time.monotonic(), time.time()
            with fedns(cfg, work, workers, admin, args.fedns_src) as sp:
                poller = Poller(sp.port)
                serving(poller, sp, workers)
                try:
                    t_ready, t_answer = wait_answers(
                        poller, sp, names, args.startup_deadline, admin, t0
                    )
                except RuntimeError as e:
                    say(f"   GAVE UP: {str(e)[:300]}")
                    text = sp.output()
                    lt = log_times(text, t0_wall)
                    out[f"w{workers}"] = {
                        "failed": "not every worker answered the sample within "
                        f"{args.startup_deadline:.0f} s (fedns log: every cluster listed at "
                        f"{lt.get('clusters_synced', float('nan')):.1f} s, first full publish at "
                        f"{lt.get('published', float('nan')):.1f} s, "
                        f"{text.count('cluster stale')} 'cluster stale' and "
                        f"{text.count('worker_died')} 'worker_died' events)"
                    }
                    continue
                r: dict[str, Any] = {
                    "ready_s": None if t_ready is None else t_ready - t0,
                    "answer_s": t_answer - t0,
                    "fake_cpu_sync_s": fakes.cpu() - fake_cpu0,
                    "log": log_times(sp.output(), t0_wall),
                }
                say(
                    f"   sample of {len(names)} names answering (every worker) at {r['answer_s']:.2f} s"
                )
                time.sleep(1.0)  # let the workers settle (stats pipes, GC) before memory
                pids = [sp.proc.pid, *children(sp.proc.pid)]
                r["mem"] = memory_mb(pids)
                r["cpu_start_s"] = cpu_seconds(pids)
                say(
                    "   memory after sync: RSS {rss:.0f} MB (peak {hwm:.0f} MB), PSS {pss:.0f} MB, "
                    "over {n} process(es): RSS {each} MB, private {private} MB".format(
                        n=len(pids),
                        each=" + ".join(f"{m:.0f}" for m in r["mem"]["each"]),
                        private=" + ".join(f"{m:.0f}" for m in r["mem"].get("private", [])),
                        **{k: v for k, v in r["mem"].items() if k not in ("each", "private")},
                    )
                )
                res = run_flips(
                    fakes,
                    poller,
                    args.scale_flips,
                    lambda g: (g.randrange(C), g.randrange(S), g.randrange(E)),
                    lambda c, s: f"c{c}.svc{s}.{ns_of(s)}.{ORIGIN}",
                    fakes.ready_in,
                    rng,
                    cpu_pids=pids,
                    label=f"{workers} worker{'s' if workers > 1 else ''}: ",
                    alive=sp.alive,
                )
                poller.close()
                r["flips"] = res
                # Workers forked after the sync share the table's pages until changes
                # (and answering) write to them: what is still shared after the flips.
                after = r["mem_after_flips"] = memory_mb([sp.proc.pid, *children(sp.proc.pid)])
                say(f"   memory after {res.made} flips: "
                    f"RSS {after['rss']:.0f} MB, PSS {after['pss']:.0f} MB, private "
                    + " + ".join(f"{m:.0f}" for m in after.get("private", [])) + " MB")
                out[f"w{workers}"] = r
    return out


def free_port() -> int:
    from servers import free_port as fp

    return fp()


# -- report -----------------------------------------------------------------------------------------


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} CPUs ({cpu or platform.processor()}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def _fmt(d: dict[str, float]) -> str:
    return f"{d['p50']:.1f} / {d['p90']:.1f} / {d['p99']:.1f} / {d['max']:.1f}"


def _ok(v: float | None, goal: float) -> str:
    if v is None:
        return "n/a"
    return "met" if v < goal else "NOT met"


def report(small: dict[str, Any] | None, scale: dict[str, Any] | None, cmd: str, load: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Propagation: watch event -> DNS answer, and the federation at scale",
        "",
        f"- command: `{cmd}`",
        f"- date: {when}; machine: {machine()}; load average before the run: {load} "
        "(anything else running shares the cores with fedns, the fakes and the poller)",
        "- fake Kubernetes API servers (`tests/fakekube.py`, aiohttp) in a child process on their own "
        "thread; fedns is `fedns serve -c CONFIG --admin ...`, watching them through a kubeconfig "
        "with the unmodified kubernetes-asyncio client; this process polls over UDP every ~1 ms.",
        "- latency = from the moment the fake writes the watch event (MODIFIED EndpointSlice, one "
        "endpoint's readiness toggled) to fedns's stream, to the first poll whose answer equals the "
        "new set of ready endpoints; with 2 workers, every worker is polled through its own socket "
        "(socket -> worker found from the workers' CPU time) and *all workers* is when the last one "
        "answers it. Includes the registry's 5 ms coalescing window and ~1 ms polling granularity.",
        "",
    ]
    if small is not None:
        C, S, E = small["shape"]
        lines += [
            f"### Propagation latency ({C} clusters x {S} services x {E} endpoints, policy all, "
            f"`<svc>.<ns>.<zone> A`)",
            "",
            "| fedns | flips | p50 / p90 / p99 / max (ms) | goal p99 < 100 ms | fedns CPU per change |",
            "|---|---:|---:|---:|---:|",
        ]
        for w in (1, 2):
            res: FlipResult | None = small.get(f"w{w}")
            if res is None or not res.every:
                continue
            d = dist(res.every)
            cpu = f"{res.cpu_per_flip_ms:.1f} ms" if res.cpu_per_flip_ms is not None else ""
            who = "1 worker" if w == 1 else "2 workers, all workers"
            lines.append(
                f"| {who} | {d['n']}{f' ({res.timeouts} timed out)' if res.timeouts else ''}"
                f"{f' ({res.note})' if res.note else ''} | "
                f"{_fmt(d)} | {_ok(d['p99'], GOAL_P99_MS)} | {cpu} |"
            )
            if w == 2:
                lines.append(
                    f"| 2 workers, first worker | {d['n']} | {_fmt(dist(res.first))} | | |"
                )
        lines.append("")
    if scale is not None:
        C, S, E = scale["shape"]
        w1, w2 = scale.get("w1"), scale.get("w2")
        failed = [
            f"- fedns {'1 worker' if x is w1 else '2 workers'}: {x['failed']}"
            for x in (w1, w2)
            if x is not None and "failed" in x
        ]
        if w1 is not None and "failed" in w1:
            w1 = None
        if w2 is not None and "failed" in w2:
            w2 = None
        cols = [x for x in (w1, w2) if x is not None]

        def row(label: str, f: Callable[[dict[str, Any]], str], goal: str = "") -> str:
            return f"| {label} | " + " | ".join(f(x) for x in cols) + f" | {goal} |"

        head = " | ".join(h for h, x in (("1 worker", w1), ("2 workers", w2)) if x is not None)
        lines += [
            f"### Scale: {C} clusters x {S:,} services x {E} endpoints ({C * S * E:,} endpoints, "
            f"the same {S:,} services in every cluster), one fedns instance",
            "",
        ]
        table = [
            f"| measure | {head} | goal |",
            "|---|" + "---:|" * len(cols) + "---|",
            row(
                "start -> every cluster's first list in the registry (fedns log `cluster synced`)",
                lambda x: (
                    f"{x['log']['clusters_synced']:.2f} s"
                    if "clusters_synced" in x["log"]
                    else "n/a"
                ),
            ),
            row(
                "start -> answer table built (fedns log `federation_synced`)",
                lambda x: f"{x['log']['published']:.2f} s" if "published" in x["log"] else "n/a",
            ),
            row(
                "start -> `/readyz` 200 (polled every 20 ms)",
                lambda x: "n/a" if x["ready_s"] is None else f"{x['ready_s']:.2f} s",
            ),
            row(
                "start -> 20 sampled `<cluster>.<svc>.<ns>` names answer right over DNS",
                lambda x: f"{x['answer_s']:.2f} s",
                f"< {GOAL_SYNC_S:.0f} s: "
                + ", ".join(_ok(x["answer_s"], GOAL_SYNC_S) for x in cols),
            ),
            row(
                "memory after sync: RSS sum (peak) / PSS sum, all processes",
                lambda x: "{rss:.0f} ({hwm:.0f}) / {pss:.0f} MB".format(**x["mem"]),
                f"< {GOAL_RSS_MB:.0f} MB: "
                + ", ".join(_ok(x["mem"]["pss"], GOAL_RSS_MB) for x in cols)
                + " (PSS)",
            ),
            row("fedns CPU from start to sync", lambda x: f"{x['cpu_start_s']:.1f} s"),
            row(
                "one endpoint change, `<cluster>.<svc>.<ns>` on every worker: "
                "p50 / p90 / p99 / max ms (flips)",
                lambda x: (
                    f"{_fmt(dist(x['flips'].every))} ({len(x['flips'].every)}"
                    + (f", {x['flips'].timeouts} over 10 s" if x["flips"].timeouts else "")
                    + (f"; {x['flips'].note}" if x["flips"].note else "")
                    + ")"
                    if x["flips"].every
                    else "n/a"
                ),
            ),
            row(
                "fedns CPU per change (all processes, idle subtracted)",
                lambda x: (
                    f"{x['flips'].cpu_per_flip_ms:.1f} ms"
                    if x["flips"].cpu_per_flip_ms is not None
                    else "n/a"
                ),
            ),
            row(
                "the fakes: CPU serving the first lists / per change",
                lambda x: (
                    f"{x['fake_cpu_sync_s']:.2f} s / {x['flips'].fake_cpu_per_flip_ms or 0:.1f} ms"
                ),
            ),
            "",
        ]
        lines += table if cols else []
        lines += [
            *failed,
            f"- the fakes are filled with {C * S * 2:,} objects in {scale['fake_populate_s']:.1f} s "
            "(before fedns starts; not in any figure above).",
            "",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flips", type=int, default=200, help="flips per fedns in part 1")
    ap.add_argument("--scale-flips", type=int, default=50, help="flips per fedns in part 2")
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--startup-deadline", type=float, default=150.0)
    ap.add_argument("--only", default="small,scale", help="small, scale or both")
    ap.add_argument("--workers", default="1,2", help="fedns --workers values to run (default 1,2)")
    ap.add_argument(
        "--quick", action="store_true", help="< 1 min: 40 flips, 3 x 300 x 10; prints only"
    )
    ap.add_argument("--workdir", help="keep configs and fedns logs here (default: a temp dir)")
    ap.add_argument("--fedns-src", type=Path, help="run fedns from another source tree")
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    ap.add_argument("--fakes", nargs=3, type=int, help=argparse.SUPPRESS)
    ap.add_argument("--placed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.fakes:
        run_fakes(*args.fakes, placed=args.placed)
        return 0
    if args.quick:
        args.flips, args.scale_flips = 40, 10
        args.clusters, args.services, args.endpoints = 3, 300, 10
    parts = set(args.only.split(","))
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    say(f"load average now: {load}")
    args.workers = [int(w) for w in args.workers.split(",")]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedns-prop-") as d:
        tmp = Path(args.workdir) if args.workdir else Path(d)
        small = part_small(args, tmp) if "small" in parts else None
        scale = part_scale(args, tmp) if "scale" in parts else None
    defaults = (args.flips, args.scale_flips, args.clusters, args.services, args.endpoints)
    cmd = (
        "python3 benchmarks/propagation.py"
        + (" --quick" if args.quick else "")
        + (
            ""
            if args.quick or defaults == (200, 50, 10, 1000, 10)
            else f" --flips {args.flips} --scale-flips {args.scale_flips} --clusters {args.clusters}"
            f" --services {args.services} --endpoints {args.endpoints}"
        )
        + ("" if parts == {"small", "scale"} else f" --only {args.only}")
        + ("" if args.workers == [1, 2] else f" --workers {','.join(map(str, args.workers))}")
        + (f" --fedns-src {args.fedns_src}" if args.fedns_src else "")
    )
    text = report(small, scale, cmd, load)
    say(f"\n(total {time.monotonic() - started:.0f} s)\n")
    print(text)
    if not args.quick and not args.no_write:
        replace_section("propagation", text, keep_after=NOTES)
        say(f"(written to {RESULTS.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
