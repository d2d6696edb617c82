#!/usr/bin/env python3
"""Health probing through a real ``fedns serve``: how fast a failing probe reaches DNS,
and what probing 10,000 targets costs.

The targets are loopback addresses 127.50.x.y served by one aiohttp process (a
child of this script, on uvloop, one ``TCPSite`` per address, all on one port),
which answers ``GET /healthz`` with 200, or 503 for an address told to fail, and
counts the connections it accepts. It takes commands on stdin (``fail I``,
``heal I``, ``stats``) and answers each on stdout, a failure with the
CLOCK_MONOTONIC time (shared by every process) at which it took effect.

Part 1, reaction (``--only reaction``): a static service with two endpoints, one
stable, one that fails and heals ``--flips`` times; probes ``--kind`` (http:
503, tcp: the listener closed, so connections are refused) every ``--interval``
seconds, ``--fall``/``--rise`` 2. This process asks ``<svc>.<ns>.<zone> A`` over UDP
about every millisecond and takes the first answer without (with) the endpoint.
Latency = that moment less the moment the target began failing (healing); each
flip waits a random part of an interval first, so the failures land at every
phase of the probe schedule. Goal (issue 12): p99 of failure -> answer
<= interval x fall + 100 ms.

Part 2, CPU (``--only cpu``): ``--targets`` endpoints (``--services`` services of
equal size, one cluster), fedns 1 worker, in three setups one after the other:
no probes; TCP probes; HTTP probes (``GET /healthz``), every ``--probe-interval``
seconds (timeout 1 s). For each: fedns's utime+stime (all its threads, from
/proc) over ``--seconds`` with no DNS load, less the same for the setup without
probes, is the prober's cost in cores; the connections the targets accepted in
that window are the probes made. Then dnsperf at a fixed ``--load`` (one name
per service, in turn) for ``--seconds`` more: the CPU of serving per query is
the CPU over that window less the prober's (its rate times the window), divided
by the queries answered, beside the same without probes, and dnsperf's average
latency. Goals (issue 12): under 0.25 core for TCP, under 0.5 core for HTTP, and
serving CPU per query within 10 % of the setup without probes.

Everything is on loopback and each process runs in a temporary directory; the
kernel's TCP work on both ends of a loopback connection is billed to whichever
process is running when it happens, so fedns's CPU here includes part of the
targets' side of every handshake: real targets on other hosts cost it less.

A full run replaces the ``health`` section of benchmarks/RESULTS.md
(``--no-write``: print only); ``--quick`` is a smoke run at tiny scale that writes
nothing.

Usage: python3 benchmarks/health.py [--quick] [--only reaction,cpu] [--flips 60]
                                    [--interval 0.5] [--fall 2] [--kind http|tcp]
                                    [--targets 10000] [--services 100]
                                    [--probe-interval 2] [--seconds 20] [--load 10000]
                                    [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import errno
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE)]

from authoritative import (  # noqa: E402
    cpu_seconds,
    free_port,
    git_rev,
    machine,
    parse_dnsperf,
    proc_tree,
)
from results import replace_section  # noqa: E402

ORIGIN = "global.example.test."
ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 1209600 30
@       IN NS  ns1
ns1     IN A   127.0.0.53
"""
GOAL_CPU = {"tcp": 0.25, "http": 0.5}  # cores, at 10,000 targets every 2 s
GOAL_SERVING = 1.10  # serving CPU per query with probes / without


def say(msg: str) -> None:
    print(msg, flush=True)


def target_address(i: int) -> str:
    """The i-th target: 127.50.0.1 ... (250 a /24)."""
    return f"127.50.{i // 250}.{i % 250 + 1}"


# -- the targets process ----------------------------------------------------------------------


def targets_main(n: int) -> None:
    """Serve ``n`` loopback addresses with aiohttp; obey commands from stdin."""
    import uvloop
    from aiohttp import web

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    class Counting(web.Server):  # type: ignore[misc]
        connections = 0

        def connection_made(self, handler: Any, transport: Any) -> None:
            Counting.connections += 1
            super().connection_made(handler, transport)

    failing: set[str] = set()
    requests = 0

    async def handle(request: web.BaseRequest) -> web.Response:
        nonlocal requests
        requests += 1
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        if sock is not None and sock[0] in failing:
            return web.Response(status=503, text="failing")
        return web.Response(text="ok")

    async def main() -> None:
        runner = web.ServerRunner(Counting(handle), access_log=None)
        await runner.setup()
        addrs = [target_address(i) for i in range(n)]
        sites: dict[str, web.TCPSite] = {}
        port = 0
        for _ in range(50):
            port = random.randint(20000, 39999)
            try:
                for a in addrs:
                    site = web.TCPSite(runner, a, port, reuse_address=True, backlog=512)
                    await site.start()
                    sites[a] = site
                break
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                for s in sites.values():
                    await s.stop()
                sites.clear()
        print(f"ready {port}", flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := (await reader.readline()).decode().split():
            cmd = line[0]
            if cmd == "stats":
                print(f"stats {Counting.connections} {requests}", flush=True)
                continue
            a = target_address(int(line[1]))
            tcp = len(line) > 2 and line[2] == "tcp"
            if cmd == "fail":
                if tcp:
                    await sites.pop(a).stop()
                else:
                    failing.add(a)
            elif cmd == "heal":
                if tcp:
                    sites[a] = web.TCPSite(runner, a, port, reuse_address=True)
                    await sites[a].start()
                else:
                    failing.discard(a)
            print(f"ok {time.monotonic():.6f}", flush=True)
        await runner.cleanup()

    uvloop.run(main())


class Targets:
    """The targets process, from this side."""

    def __init__(self, n: int, tmp: Path) -> None:
        self.n = n
        self.log = tmp / "targets.log"
        with open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, "--targets-process", str(n)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError(f"targets did not start: {self.log.read_text()[-2000:]}")
        self.port = int(line[1])

    def _ask(self, cmd: str) -> list[str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().split()

    def fail(self, i: int, kind: str) -> float:
        return float(self._ask(f"fail {i} {kind}")[1])

    def heal(self, i: int, kind: str) -> float:
        return float(self._ask(f"heal {i} {kind}")[1])

    def connections(self) -> int:
        return int(self._ask("stats")[1])

    def cpu(self) -> float:
        u, s = cpu_seconds([self.proc.pid])
        return u + s

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


# -- fedns ----------------------------------------------------------------------------------------


@dataclass
class Fedns:
    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    log: Path

    def cpu(self) -> float:
        u, s = cpu_seconds(proc_tree(self.proc.pid))
        return u + s

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/metrics", timeout=10) as r:
            return r.read().decode()


def config(tmp: Path, name: str, services: dict[str, list[str]], port: int,
           health: dict[str, Any] | None) -> Path:
    (tmp / "fed.zone").write_text(ZONE)
    fed: dict[str, Any] = {
        "zone": ORIGIN,
        "clusters": [{"name": "east", "region": "r1"}],
        "defaults": {"policy": "all", "max_answers": 8},
        "probes": {"concurrency": 256},
        "services": [
            {
                "namespace": "shop",
                "name": svc,
                "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
                "endpoints": {"east": [{"addresses": [a]} for a in addrs]},
            }
            for svc, addrs in services.items()
        ],
    }
    if health is not None:
        fed["health"] = health
    doc = {
        "zones": [{"origin": ORIGIN, "file": "fed.zone"}],
        "log": {"level": "warning"},
        "dns": {"startup_wait": 5},
        "federation": fed,
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@contextlib.contextmanager
def fedns(cfg: Path, tmp: Path, name: str) -> Iterator[Fedns]:
    port, admin = free_port(), free_port()
    log = tmp / f"{name}.log"
    argv = [sys.executable, "-m", "resolver.cli", "serve", "-c", str(cfg),
            "--dns", f"127.0.0.1:{port}", "--workers", "1", "--admin", f"127.0.0.1:{admin}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    srv = Fedns(proc, port, admin, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fedns did not get ready: {log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield srv
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


class Poller:
    """Asks one name over UDP and returns its A addresses."""

    def __init__(self, port: int, name: str) -> None:
        import dns.message
        import dns.rdatatype

        self._dns = dns
        self.addr = ("127.0.0.1", port)
        q = dns.message.make_query(name, dns.rdatatype.A)
        q.flags = 0
        self.query = q.to_wire()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.5)

    def answer(self) -> frozenset[str] | None:
        self.sock.sendto(self.query, self.addr)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        r = self._dns.message.from_wire(data)
        return frozenset(rd.to_text() for rr in r.answer for rd in rr)

    def until(self, want: frozenset[str], timeout: float, period: float = 0.001) -> float | None:
        """Poll until the answer is ``want``; the monotonic time it first was."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.answer() == want:
                return time.monotonic()
            time.sleep(period)
        return None


# -- part 1: reaction -------------------------------------------------------------------------


@dataclass
class Reaction:
    kind: str
    interval: float
    fall: int
    rise: int
    down: list[float]  # seconds, failure -> answer without the endpoint
    up: list[float]  # healing -> answer with it again
    missed: int

    def pct(self, xs: list[float], p: float) -> float:
        if not xs:
            return float("nan")
        s = sorted(xs)
        return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def reaction(args: argparse.Namespace, tmp: Path) -> Reaction:
    kind, interval = args.kind, args.interval
    targets = Targets(2, tmp)
    try:
        stable, flap = target_address(0), target_address(1)
        health = {"probe": kind, "interval": interval, "timeout": min(0.4, interval * 0.8),
                  "fall": args.fall, "rise": args.rise}
        if kind == "http":
            health["path"] = "/healthz"
        cfg = config(tmp, "reaction", {"flap": [stable, flap]}, targets.port, health)
        down: list[float] = []
        up: list[float] = []
        missed = 0
        with fedns(cfg, tmp, "reaction") as srv:
            poll = Poller(srv.port, f"flap.shop.{ORIGIN}")
            both, one = frozenset({stable, flap}), frozenset({stable})
            if poll.until(both, 30) is None:
                raise RuntimeError("the service never answered with both endpoints")
            for i in range(args.flips):
                time.sleep(random.uniform(0, interval))
                t0 = targets.fail(1, kind)
                t1 = poll.until(one, 10)
                if t1 is None:
                    missed += 1
                else:
                    down.append(t1 - t0)
                time.sleep(random.uniform(0, interval))
                t2 = targets.heal(1, kind)
                t3 = poll.until(both, 10)
                if t3 is None:
                    missed += 1
                    poll.until(both, 30)
                else:
                    up.append(t3 - t2)
                if (i + 1) % 10 == 0:
                    say(f"  {i + 1} flips: down p50 {1000 * statistics.median(down):.0f} ms, "
                        f"up p50 {1000 * statistics.median(up):.0f} ms")
        return Reaction(kind, interval, args.fall, args.rise, down, up, missed)
    finally:
        targets.stop()


# -- part 2: CPU ----------------------------------------------------------------------------------


@dataclass
class Cost:
    setup: str  # "none", "tcp", "http"
    idle_cpu: float  # fedns CPU seconds per second, no DNS load
    probes_per_s: float  # connections the targets accepted, per second
    targets_cpu: float  # the targets process, CPU seconds per second
    load_cpu: float  # fedns CPU seconds over the loaded window
    seconds: float
    completed: int
    latency_ms: float
    lost: int


def cost(setup: str, args: argparse.Namespace, tmp: Path, targets: Targets,
         services: dict[str, list[str]], queries: Path) -> Cost:
    health = None
    if setup != "none":
        health = {"probe": setup, "interval": args.probe_interval, "timeout": 1.0}
        if setup == "http":
            health["path"] = "/healthz"
    cfg = config(tmp, setup, services, targets.port, health)
    with fedns(cfg, tmp, setup) as srv:
        # Every target probed a few times, and the start-up work done.
        time.sleep(max(2 * args.probe_interval, 1.0))
        c0, k0, t0, w0 = srv.cpu(), targets.connections(), targets.cpu(), time.monotonic()
        time.sleep(args.seconds)
        c1, k1, t1, w1 = srv.cpu(), targets.connections(), targets.cpu(), time.monotonic()
        wall = w1 - w0
        argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(srv.port), "-d", str(queries),
                "-c", "4", "-T", "1", "-q", "200", "-l", f"{args.seconds:g}", "-Q", str(args.load)]
        c2 = srv.cpu()
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
        c3 = srv.cpu()
        if out.returncode != 0:
            raise RuntimeError(f"dnsperf failed: {out.stderr or out.stdout}")
        perf = parse_dnsperf(out.stdout)
    return Cost(setup, (c1 - c0) / wall, (k1 - k0) / wall, (t1 - t0) / wall, c3 - c2,
                args.seconds, perf.completed, perf.latency_ms, perf.lost)


def costs(args: argparse.Namespace, tmp: Path) -> list[Cost]:
    n, per = args.targets, max(1, args.targets // args.services)
    targets = Targets(n, tmp)
    try:
        addrs = [target_address(i) for i in range(n)]
        services = {f"svc{s}": addrs[s * per:(s + 1) * per] for s in range((n + per - 1) // per)}
        queries = tmp / "queries.txt"
        queries.write_text("".join(f"{svc}.shop.{ORIGIN} A\n" for svc in services))
        out = []
        for setup in ("none", "tcp", "http"):
            c = cost(setup, args, tmp, targets, services, queries)
            say(f"  {setup}: fedns {c.idle_cpu:.3f} cores idle, {c.probes_per_s:,.0f} probes/s, "
                f"targets {c.targets_cpu:.2f} cores; at -Q {args.load}: "
                f"{1e6 * c.load_cpu / max(c.completed, 1):.1f} us/query all in, "
                f"latency {c.latency_ms:.3f} ms, lost {c.lost}")
            out.append(c)
        return out
    finally:
        targets.stop()


# -- report -------------------------------------------------------------------------------------


def render(args: argparse.Namespace, react: Reaction | None, cpu: list[Cost]) -> str:
    parts = set(args.only.split(","))
    opts: list[tuple[str, object]] = [("only", args.only)]
    if "reaction" in parts:
        opts += [("flips", args.flips), ("interval", args.interval), ("fall", args.fall),
                 ("rise", args.rise), ("kind", args.kind)]
    if "cpu" in parts:
        opts += [("targets", args.targets), ("services", args.services),
                 ("probe-interval", args.probe_interval), ("seconds", args.seconds),
                 ("load", args.load)]
    cmd = "python3 benchmarks/health.py" + (" --quick" if args.quick else "") + "".join(
        f" --{k} {v}" for k, v in opts
    )
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Health: probe failure -> DNS answer, and the prober's CPU",
        "",
        f"- date: {when}; fedns revision {git_rev()}",
        f"- machine: {machine()}",
        f"- command: `{cmd}`",
    ]
    if react is not None:
        r = react
        goal = r.interval * r.fall + 0.1
        p99 = r.pct(r.down, 99)
        lines += [
            "",
            f"### Reaction: a failing {r.kind} target -> its endpoint out of the answer",
            "",
            f"One service, two endpoints (policy all), `{r.kind}` probes every {r.interval:g} s, "
            f"fall {r.fall}, rise {r.rise}; {len(r.down)} failures and {len(r.up)} recoveries, "
            f"each after a random part of an interval; `flap.shop.{ORIGIN} A` asked over UDP "
            f"every ~1 ms.",
            "",
            "| direction | flips | p50 | p99 | max | goal |",
            "|---|---:|---:|---:|---:|---|",
            f"| failure -> out | {len(r.down)} | {1000 * r.pct(r.down, 50):.0f} ms | "
            f"{1000 * p99:.0f} ms | {1000 * max(r.down, default=0):.0f} ms | p99 <= interval x "
            f"fall + 100 ms = {1000 * goal:.0f} ms: {'met' if p99 <= goal else 'missed'} |",
            f"| recovery -> in | {len(r.up)} | {1000 * r.pct(r.up, 50):.0f} ms | "
            f"{1000 * r.pct(r.up, 99):.0f} ms | {1000 * max(r.up, default=0):.0f} ms | |",
        ]
        if r.missed:
            lines.append(f"\n{r.missed} flips did not show in DNS within 10 s.")
    if cpu:
        base = next(c for c in cpu if c.setup == "none")
        serving_base = 1e6 * base.load_cpu / max(base.completed, 1)
        lines += [
            "",
            f"### Prober CPU: {args.targets:,} targets every {args.probe_interval:g} s",
            "",
            f"{args.targets:,} endpoints in {args.services} static services, each a loopback "
            f"address of one aiohttp process; fedns 1 worker; CPU = utime+stime over "
            f"{args.seconds:g} s. Prober = fedns's CPU with no DNS load, less the same without "
            f"probes. Serving = fedns's CPU during dnsperf `-Q {args.load}` less the prober's "
            f"over as long, per query answered.",
            "",
            "| probes | fedns idle (cores) | prober (cores) | probes/s | targets process (cores) "
            "| serving CPU us/query | vs no probes | dnsperf latency | lost | goal |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for c in cpu:
            prober = c.idle_cpu - base.idle_cpu
            serving = 1e6 * (c.load_cpu - c.idle_cpu * c.seconds) / max(c.completed, 1)
            if c.setup == "none":
                serving, verdict = serving_base, ""
            else:
                ok = prober < GOAL_CPU[c.setup] and serving <= serving_base * GOAL_SERVING
                verdict = (f"prober < {GOAL_CPU[c.setup]:g} core, serving <= "
                           f"{GOAL_SERVING:.2f}x: {'met' if ok else 'missed'}")
            lines.append(
                f"| {c.setup} | {c.idle_cpu:.3f} | {prober:.3f} | {c.probes_per_s:,.0f} | "
                f"{c.targets_cpu:.2f} | {serving:.1f} | {serving / serving_base:.2f}x | "
                f"{c.latency_ms:.3f} ms | {c.lost} | {verdict} |"
            )
        lines += [
            "",
            "On loopback the kernel's work for both ends of each probe's TCP handshake is "
            "billed to whichever process is running, mostly fedns: against targets on other "
            "hosts the prober costs less than shown.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--targets-process", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="smoke run at tiny scale; writes nothing")
    ap.add_argument("--only", default="reaction,cpu", help="reaction, cpu, or both")
    ap.add_argument("--flips", type=int, default=60, help="failures (and recoveries) measured")
    ap.add_argument("--interval", type=float, default=0.5, help="reaction: probe interval, s")
    ap.add_argument("--fall", type=int, default=2)
    ap.add_argument("--rise", type=int, default=2)
    ap.add_argument("--kind", choices=("http", "tcp"), default="http", help="reaction: probe kind")
    ap.add_argument("--targets", type=int, default=10000, help="cpu: endpoints probed")
    ap.add_argument("--services", type=int, default=100, help="cpu: services they form")
    ap.add_argument("--probe-interval", type=float, default=2.0, help="cpu: probe interval, s")
    ap.add_argument("--seconds", type=float, default=20.0, help="cpu: each measured window, s")
    ap.add_argument("--load", type=int, default=10000, help="cpu: dnsperf -Q, queries/s")
    ap.add_argument("--no-write", action="store_true", help="print the section only")
    args = ap.parse_args(argv)
    if args.targets_process is not None:
        targets_main(args.targets_process)
        return 0
    if args.quick:
        args.flips, args.interval, args.targets, args.services = 3, 0.2, 100, 5
        args.probe_interval, args.seconds, args.load = 0.5, 1.0, 1000
    parts = set(args.only.split(","))
    if "cpu" in parts and shutil.which("dnsperf") is None:
        say("dnsperf not found (apt: dnsperf)")
        return 2
    with tempfile.TemporaryDirectory(prefix="fedns-health-") as d:
        tmp = Path(d)
        react = None
        cpu: list[Cost] = []
        if "reaction" in parts:
            say(f"reaction: {args.flips} flips, {args.kind} probes every {args.interval:g} s")
            react = reaction(args, tmp)
        if "cpu" in parts:
            say(f"cpu: {args.targets:,} targets every {args.probe_interval:g} s")
            cpu = costs(args, tmp)
    text = render(args, react, cpu)
    print()
    print(text)
    if not args.quick and not args.no_write:
        replace_section("health", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
