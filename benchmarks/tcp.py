#!/usr/bin/env python3
"""DNS over TCP: fedns (1 and 2 workers) against NSD and Knot, two client shapes, one run.

Every server loads the demo zone (the starters of benchmarks/authoritative.py)
and is measured over TCP in two shapes:

* pipelined: ``dnsperf -m tcp -c 8``, many queries outstanding on each of 8
  long-lived connections (CoreDNS ``force_tcp``, a resolver's pool);
* one query per connection: a load generator in this script (its own process,
  so its CPU is not counted as the server's) runs N clients, each of which
  connects, sends one query, reads the reply and closes (a resolver retrying
  a truncated answer). dnsperf keeps its connections open, so it cannot.

For each shape: saturation (qps; dnsperf or the generator as fast as it can)
and the server's CPU per query at a fixed load (utime+stime of all its
processes from /proc over the window / queries answered), and how much of that
CPU its busiest process spent (a multi-process server that answers everything
in one process batches like a single one). "uvloop floor" is
benchmarks/uvloop_floor.py: the event loop and transports fedns uses with no
DNS work at all, the cost any server on them pays first. Rounds interleave
the servers; every figure is the median over rounds. A full run replaces the
``tcp`` section of benchmarks/RESULTS.md; ``--no-write`` prints only.

Usage: python3 benchmarks/tcp.py [--quick] [--only fedns1,nsd] [--baseline OLD_TREE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import authoritative as bench  # the same server starters, /proc and dnsperf parsing
from authoritative import Perf, Server
from results import replace_section

SHAPES = ("pipelined", "per-connection")
# Targets of issue 13, against NSD (2 workers against NSD with server-count 2).
TARGET_SATURATION = 1.0
TARGET_CPU = 1.1
PIPELINED = ["-m", "tcp", "-c", "8", "-T", "1", "-q", "200"]


# ---------------------------------------------------------------------------
# the one-query-per-connection load generator (run as a child: --generate)


async def _generate(
    port: int, queries: list[bytes], clients: int, rate: float, seconds: float
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    frames = [struct.pack(">H", len(q)) + q for q in queries]
    start = loop.time()
    end = start + seconds
    nxt = start  # the next query's slot when the rate is fixed
    done = failed = 0
    latency = 0.0

    async def one(frame: bytes) -> None:
        nonlocal done, failed, latency
        t0 = loop.time()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            async with asyncio.timeout(5):
                await loop.sock_connect(s, ("127.0.0.1", port))
                await loop.sock_sendall(s, frame)
                got = b""
                while len(got) < 2 or len(got) < 2 + ((got[0] << 8) | got[1]):
                    chunk = await loop.sock_recv(s, 65536)
                    if not chunk:
                        raise ConnectionError("closed before the reply")
                    got += chunk
            done += 1
            latency += loop.time() - t0
        except (OSError, TimeoutError):
            failed += 1
        finally:
            s.close()

    async def client(i: int) -> None:
        nonlocal nxt
        k = i
        while True:
            now = loop.time()
            if rate:
                # A shared schedule: a client takes the next slot. Behind by more
                # than a moment (the server is slower than the rate), the
                # schedule restarts from now instead of bursting to catch up.
                if nxt < now - 0.1:
                    nxt = now
                slot, nxt = nxt, nxt + 1.0 / rate
                if slot >= end:
                    return
                if slot > now:
                    await asyncio.sleep(slot - now)
            elif now >= end:
                return
            await one(frames[k % len(frames)])
            k += clients

    await asyncio.gather(*(client(i) for i in range(clients)))
    wall = loop.time() - start
    return {
        "sent": done + failed,
        "completed": done,
        "lost": failed,
        "qps": done / wall,
        "latency_ms": 1000 * latency / done if done else 0.0,
        "wall_s": wall,
    }


def generate_main(argv: list[str]) -> int:
    port, clients, rate, seconds, qfile = argv
    queries = []
    for line in Path(qfile).read_text().splitlines():
        name, qtype = line.split()
        queries.append(bench.dns_query(name, _QTYPES[qtype]))
    with contextlib.suppress(ImportError):
        import uvloop  # the faster loop makes the generator less of a bottleneck

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    out = asyncio.run(_generate(int(port), queries, int(clients), float(rate), float(seconds)))
    print(json.dumps(out))
    return 0


_QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28,
           "SRV": 33}


# ---------------------------------------------------------------------------
# measuring


# The share of a run's CPU the server's busiest process spent, by the Perf it was
# measured for (Perf is shared with authoritative.py: kept beside it, not in it).
BUSIEST: dict[int, float] = {}


def measured(srv: Server, argv: list[str], seconds: float, parse: Callable[[str], Perf]) -> Perf:
    """Run a load generator against ``srv``; its result with the server's CPU time over it."""
    pids = bench.proc_tree(srv.proc.pid)
    before, t0 = [bench.cpu_seconds([p]) for p in pids], time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    after, t1 = [bench.cpu_seconds([p]) for p in pids], time.monotonic()
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({out.returncode}): {out.stderr or out.stdout}")
    perf = parse(out.stdout)
    spent = [(u1 - u0) + (s1 - s0) for (u0, s0), (u1, s1) in zip(before, after, strict=True)]
    perf.user_s = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    perf.sys_s = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    perf.wall_s = t1 - t0
    BUSIEST[id(perf)] = max(spent) / sum(spent) if sum(spent) > 0 else 1.0
    return perf


def pipelined(srv: Server, qfile: Path, seconds: float, qps: int | None) -> Perf:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(srv.port), "-d", str(qfile), *PIPELINED]
    argv += ["-l", f"{seconds:g}"] + (["-Q", str(qps)] if qps else [])
    return measured(srv, argv, seconds, bench.parse_dnsperf)


def per_connection(srv: Server, qfile: Path, seconds: float, rate: int | None, clients: int) -> Perf:
    argv = [sys.executable, __file__, "--generate", str(srv.port), str(clients), str(rate or 0),
            f"{seconds:g}", str(qfile)]

    def parse(text: str) -> Perf:
        d = json.loads(text.strip().splitlines()[-1])
        return Perf(int(d["sent"]), int(d["completed"]), int(d["lost"]), d["qps"],
                    d["latency_ms"], {})

    return measured(srv, argv, seconds, parse)


def start_floor(tmp: Path) -> Server:
    """benchmarks/uvloop_floor.py: the loop and transports fedns uses, no DNS work."""
    port = bench.free_port()
    here = Path(__file__).resolve().parent
    argv = [sys.executable, str(here / "uvloop_floor.py"), str(port)]
    return bench._spawn("floor", argv, tmp, port, here)


@dataclass
class Result:
    sat: dict[str, Perf] = field(default_factory=dict)
    fixed: dict[str, Perf] = field(default_factory=dict)
    busiest: dict[str, float] = field(default_factory=dict)  # at the fixed load, by shape


def bench_server(key: str, tmp: Path, qfile: Path, args: argparse.Namespace) -> Result:
    res = Result()
    s = args.seconds
    loads = {"pipelined": args.load, "per-connection": args.conn_load}
    with bench.running(key, tmp) as srv:
        print(f"  {key}: up on 127.0.0.1:{srv.port}", flush=True)
        warm = pipelined(srv, qfile, 1, None)  # warm-up: pages faulted in, lazy entries filled
        BUSIEST.pop(id(warm), None)
        for shape in SHAPES:
            for fixed in (False, True):
                load = loads[shape] if fixed else None
                if shape == "pipelined":
                    p = pipelined(srv, qfile, s, load)
                else:
                    p = per_connection(srv, qfile, s, load, args.clients)
                (res.fixed if fixed else res.sat)[shape] = p
                share = BUSIEST.pop(id(p), 1.0)
                if fixed:
                    res.busiest[shape] = share
                what = f"at {load}/s" if fixed else "saturation"
                print(
                    f"  {key:9} {shape:14} {what:12} {p.qps:8.0f} qps  latency "
                    f"{p.latency_ms:6.3f} ms  CPU {p.split} us/query  lost {p.lost}"
                    f"  ({(p.user_s + p.sys_s) / p.wall_s:4.0%} of a core)",
                    flush=True,
                )
    return res


def combine(rounds: list[Result]) -> Result:
    out = Result()
    for shape in SHAPES:
        out.sat[shape] = bench._median_perf([r.sat[shape] for r in rounds])
        out.fixed[shape] = bench._median_perf([r.fixed[shape] for r in rounds])
        out.busiest[shape] = statistics.median(r.busiest.get(shape, 1.0) for r in rounds)
    return out


# ---------------------------------------------------------------------------
# reporting


def report(results: dict[str, Result], command: str, args: argparse.Namespace, rounds: int) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    loads = {"pipelined": args.load, "per-connection": args.conn_load}
    lines = [
        "## TCP: fedns vs NSD and Knot, pipelined and one query per connection",
        "",
        f"- date: {now}; fedns revision {bench.git_rev()}",
        f"- machine: {bench.machine()}",
        f"- servers: {bench._version(['nsd', '-v'])}; {bench._version(['knotd', '-V'])} "
        f"(1 TCP worker); dnsperf {bench._dnsperf_version()}",
        f"- command: `{command}`",
        f"- pipelined: `dnsperf {' '.join(PIPELINED)} -l {args.seconds:g}` (fixed load: "
        f"`-Q {args.load}`); per connection: {args.clients} clients of this script's generator "
        f"(its own process), each connecting, sending one query, reading the reply, closing, "
        f"as fast as they can (saturation) or at {args.conn_load} connections/s in all (fixed "
        "load)",
        f"- CPU = the server's utime+stime (all its processes) over the run / queries "
        f"answered, in us (user+sys); each figure the median of {rounds} rounds, the servers "
        "interleaved; queries: the 14 positive questions of authoritative.py",
        "",
        "| server | shape | saturation qps | latency | CPU us/query at saturation "
        "| fixed load | CPU us/query at fixed load | busiest process | qps vs NSD | CPU vs NSD |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def ref_of(key: str) -> Result | None:
        return results.get("nsd2" if key.endswith("2") and "nsd2" in results else "nsd")

    for key, r in results.items():
        ref = ref_of(key)
        for shape in SHAPES:
            s, f = r.sat[shape], r.fixed[shape]
            vs_q = bench._ratio(s.qps, ref.sat[shape].qps) if ref else "n/a"
            vs_c = bench._ratio(f.cpu_us_per_query, ref.fixed[shape].cpu_us_per_query) if ref else "n/a"
            lost = f" ({f.lost} lost)" if f.lost else ""
            lines.append(
                f"| {bench.SERVERS[key][0]} | {shape} | {s.qps:,.0f} | {s.latency_ms:.3f} ms "
                f"| {s.cpu_us_per_query:.2f} | {loads[shape]}/s{lost} | {f.split} "
                f"| {r.busiest.get(shape, 1.0):.0%} | {vs_q} | {vs_c} |"
            )
    lines += ["", "Targets (issue 13): saturation >= NSD's, CPU per query at the fixed load "
              f"<= {TARGET_CPU}x NSD's:", ""]
    for key, ref_key in (("fedns1", "nsd"), ("fedns2", "nsd2")):
        fr, ref = results.get(key), results.get(ref_key)
        if fr is None or ref is None:
            continue
        for shape in SHAPES:
            sat = fr.sat[shape].qps / ref.sat[shape].qps
            cpu = fr.fixed[shape].cpu_us_per_query / ref.fixed[shape].cpu_us_per_query
            lines.append(
                f"- {bench.SERVERS[key][0]} against {bench.SERVERS[ref_key][0]}, {shape}: "
                f"saturation {sat:.2f}x ({'meets' if sat >= TARGET_SATURATION else 'misses'}), "
                f"CPU/query {cpu:.2f}x ({'meets' if cpu <= TARGET_CPU else 'misses'})"
            )
    fl, ref = results.get("floor"), results.get("nsd")
    if fl is not None and ref is not None:
        for shape in SHAPES:
            cpu = fl.fixed[shape].cpu_us_per_query / ref.fixed[shape].cpu_us_per_query
            own = ""
            f1 = results.get("fedns1")
            if f1 is not None:
                extra = f1.fixed[shape].cpu_us_per_query - fl.fixed[shape].cpu_us_per_query
                own = f"; fedns, 1 worker, against the floor: {extra:+.2f} us/query"
            lines.append(
                f"- the uvloop floor (no DNS work) against {bench.SERVERS['nsd'][0]}, {shape}: "
                f"CPU/query {cpu:.2f}x{own}"
            )
    for key in ("fedns1", "fedns2"):
        fr, base = results.get(key), results.get("baseline" + key[-1])
        if fr is None or base is None:
            continue
        for shape in SHAPES:
            sat = fr.sat[shape].qps / base.sat[shape].qps
            cpu = fr.fixed[shape].cpu_us_per_query / base.fixed[shape].cpu_us_per_query
            lines.append(
                f"- {bench.SERVERS[key][0]} against the baseline tree, {shape}: "
                f"saturation {sat:.3f}x, CPU/query {cpu:.3f}x"
            )
    lines += [
        "",
        "The load generators share the 2 cores with the server, so saturation measures the "
        "pair: per connection, the Python generator (one process, uvloop) may be the "
        "bottleneck for the fastest server, which the CPU share printed per run shows. CPU "
        "per query at the fixed load is the per-server comparison.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        return generate_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 s runs, 1 round, prints only")
    ap.add_argument("--only", help="comma-separated subset of the servers")
    ap.add_argument("--seconds", type=float, help="duration of each timed run (default 10)")
    ap.add_argument("--load", type=int, default=10000, help="pipelined fixed load, qps")
    ap.add_argument("--conn-load", type=int, default=3000, help="per-connection fixed load, conn/s")
    ap.add_argument("--clients", type=int, default=16, help="concurrent per-connection clients")
    ap.add_argument("--rounds", type=int, help="repeat everything, report medians (default 3)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--baseline", type=Path,
                    help="also serve fedns (1 and 2 workers) from this older source tree")
    args = ap.parse_args()
    servers: dict[str, tuple[str, Callable[[Path], Server]]] = {
        "fedns1": ("fedns, 1 worker", bench.start_fedns(1)),
        "fedns2": ("fedns, 2 workers", bench.start_fedns(2)),
        "nsd": ("NSD, server-count 1", bench.start_nsd),
        "nsd2": ("NSD, server-count 2", lambda tmp: bench.start_nsd(tmp, 2)),
        "knot": ("Knot, 1 TCP worker", bench.start_knot),
        "floor": ("uvloop floor (no DNS work)", start_floor),
    }
    if args.baseline is not None:
        bench.BASELINE = args.baseline.resolve()
        if not (bench.BASELINE / "resolver" / "cli.py").exists():
            ap.error(f"--baseline {args.baseline}: no resolver/cli.py there")
        for n in (1, 2):
            servers[f"baseline{n}"] = (
                f"fedns, {n} worker{'s' if n > 1 else ''}, baseline `{bench.BASELINE.name}`",
                bench.start_fedns(n, True),
            )
    bench.SERVERS.clear()
    bench.SERVERS.update(servers)  # bench.running() starts servers by key from there
    keys = args.only.split(",") if args.only else list(servers)
    unknown = [k for k in keys if k not in servers]
    if unknown:
        ap.error(f"unknown server {unknown}; choose from {','.join(servers)}")
    missing = [b for b in ("dnsperf", "nsd", "knotd") if shutil.which(b) is None]
    if missing:
        print(f"missing {missing}: apt-get install dnsperf nsd knot", file=sys.stderr)
        return 2
    args.seconds = args.seconds or (2.0 if args.quick else 10.0)
    n_rounds = args.rounds or (1 if args.quick else 3)
    argv = [Path(a).name if Path(a).is_absolute() else a for a in sys.argv[1:]]
    command = shlex.join(["python3", "benchmarks/tcp.py", *argv])

    with tempfile.TemporaryDirectory(prefix="fedns-tcp-") as t:
        tmp = Path(t)
        shutil.copy(bench.ZONE_FILE, tmp / bench.ZONE_FILE.name)
        qfile = bench.write_queries(tmp, 1)["positive"]
        rounds: dict[str, list[Result]] = {k: [] for k in keys}
        for i in range(n_rounds):
            for k in keys:
                print(f"[round {i + 1}/{n_rounds}] {servers[k][0]}", flush=True)
                rounds[k].append(bench_server(k, tmp, qfile, args))
    results = {k: combine(v) for k, v in rounds.items()}
    section = report(results, command, args, n_rounds)
    print()
    print(section)
    if not args.no_write and not args.quick:
        replace_section("tcp", section)
        print("wrote benchmarks/RESULTS.md (## TCP)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
