#!/usr/bin/env python3
"""ECS benchmark: tailored answers from fedns, gdnsd (geoip nets) and PowerDNS (Lua), one run.

Every query asks for one locality-dependent name with the same EDNS Client
Subnet option (``dnsperf -E 8:<hex>``), so every answer is tailored to the
client's subnet. The servers answer the same thing:

* fedns, 1 and 2 workers: ``benchmarks/ecs-bench.yaml`` (a federated service
  in three regions and a locality map; ``web.bench.ecs.bench.``);
* gdnsd, 1 UDP thread: plugin geoip with a ``nets`` map made from the same
  localities, and a ``DYNA`` record;
* PowerDNS (bind backend, 1 receiver, 1 distributor thread): a ``LUA A``
  record testing ``netmask()`` longest prefix first, in ``shared`` mode
  (``enable-lua-records=shared``, one Lua state) and in the default ``fresh``
  mode (``=yes``, a new Lua state per query).

The gdnsd and PowerDNS configs are generated from ``ecs-bench.yaml`` (its
``localities`` and the address of each region's cluster), so the three agree
by construction; before measuring, one query per server checks the answer.

Per server: saturation (dnsperf with as many queries outstanding as it
keeps) and the server's CPU time per completed query at a fixed offered load
(``-Q``, default 40000 qps), read from /proc/PID/stat (utime + stime over the
server's process tree). dnsperf shares the 2 cores with the server, so
saturation measures the pair; CPU per query is the per-server comparison.

``--fedns HOST:PORT`` measures an already running fedns instead of starting
one (add ``--fedns-pid PID`` for its CPU). Results print as they come and,
for a full run, replace the ECS section of ``benchmarks/RESULTS.md``.

``--baseline DIR`` also serves the same config from an older source tree of
fedns (``baseline``, 1 worker), interleaved with the others, for before/after
comparisons in one run (``git worktree add DIR REV``).

Usage: python3 benchmarks/ecs.py [--quick] [--only fedns,fedns2,gdnsd,pdns-shared,pdns-fresh]
                                 [--load 40000] [--subnet 203.0.113.0/24] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests"), str(HERE)]

import dns.edns  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
from authoritative import Perf, _median_perf, cpu_seconds, parse_dnsperf, proc_tree  # noqa: E402
from refservers import start_gdnsd, start_pdns  # noqa: E402
from servers import start_fedns  # noqa: E402

CONFIG = HERE / "ecs-bench.yaml"
NAME = "web.bench"  # the service's name inside the zone
from results import replace_section  # noqa: E402

# Goals from issue 4, as ratios measured in the same run.
GOAL_CPU_VS_GDNSD = 1.5  # fedns CPU per tailored answer <= 1.5x gdnsd's
GOAL_FRESH_VS_FEDNS = 40  # PowerDNS fresh-state mode: about 40x fedns's CPU per answer


@dataclass(frozen=True)
class Setup:
    zone: str
    nets: dict[str, str]  # cidr -> region
    answers: dict[str, str]  # region -> IPv4 address
    default: str  # region of the /0 rule (clients no other rule places)
    ttl: int


def read_setup(path: Path) -> Setup:
    """The gdnsd/PowerDNS equivalent of the fedns benchmark config."""
    cfg = yaml.safe_load(path.read_text())
    fed = cfg["federation"]
    region_of = {c["name"]: c["region"] for c in fed["clusters"]}
    (svc,) = fed["services"]
    answers = {}
    for cluster, eps in svc["endpoints"].items():
        (ep,) = eps
        answers[region_of[cluster]] = ep["addresses"][0]
    nets = {str(loc["cidr"]): loc["region"] for loc in fed["localities"]}
    default = nets.pop("0.0.0.0/0")
    return Setup(fed["zone"], nets, answers, default, int(fed["defaults"]["ttl"]))


@dataclass
class Target:
    key: str
    label: str
    host: str
    port: int
    pid: int | None  # None: CPU not measured
    stop: Callable[[], None]


def ecs_hex(cidr: str) -> str:
    n = ipaddress.ip_network(cidr)
    fam = 1 if n.version == 4 else 2
    data = bytes((0, fam, n.prefixlen, 0)) + n.network_address.packed[: (n.prefixlen + 7) // 8]
    return data.hex()


def check_answer(t: Target, qname: str, cidr: str, want: str) -> int | None:
    """One query with the benchmark's ECS option: the answer must be ``want``.
    Returns the reply's ECS SCOPE."""
    n = ipaddress.ip_network(cidr)
    q = dns.message.make_query(qname, "A", use_edns=0)
    q.use_edns(0, options=[dns.edns.ECSOption(str(n.network_address), n.prefixlen)])
    r = dns.query.udp(q, t.host, port=t.port, timeout=3)
    got = sorted(rd.to_text() for rrset in r.answer for rd in rrset)
    if got != [want]:
        raise RuntimeError(f"{t.key}: {qname} for {cidr} answered {got}, expected [{want}]")
    scopes = [o.scopelen for o in r.options if isinstance(o, dns.edns.ECSOption)]
    return scopes[0] if scopes else None


def many_subnets(path: Path, qname: str, count: int, seed: int = 1) -> None:
    """``count`` queries for ``qname`` A, each with the ECS option of another
    client /24 (public unicast, drawn at random), as dnsperf ``-B`` reads them:
    every message behind its 2-byte length. A resolver fleet's view: many
    clients, so neither side can answer from one remembered reply."""
    rnd = random.Random(seed)
    nets: set[int] = set()
    while len(nets) < count:
        first = rnd.randrange(1, 224)
        if first in (10, 100, 127, 169, 172, 192, 198, 203):  # private, special, the map's own
            continue
        nets.add((first << 16) | rnd.randrange(1 << 16))
    out = bytearray()
    for n in sorted(nets, key=lambda _: rnd.random()):
        q = dns.message.make_query(qname, "A", use_edns=0)
        addr = str(ipaddress.IPv4Address(n << 8))
        q.use_edns(0, options=[dns.edns.ECSOption(addr, 24)])
        wire = q.to_wire()
        out += len(wire).to_bytes(2, "big") + wire
    path.write_bytes(bytes(out))


def dnsperf(
    t: Target, datafile: Path, option: str | None, seconds: float, qps: int | None
) -> Perf:
    """``option``: every query's ECS option (hex); None: ``datafile`` is a ``-B`` file."""
    argv = ["dnsperf", "-s", t.host, "-p", str(t.port), "-d", str(datafile)]
    argv += ["-E", f"8:{option}"] if option is not None else ["-B"]
    argv += ["-c", "4", "-T", "1", "-q", "200", "-l", f"{seconds:g}"]
    if qps:
        argv += ["-Q", str(qps)]
    pids = proc_tree(t.pid) if t.pid else []
    (u0, s0), t0 = cpu_seconds(pids), time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    (u1, s1), t1 = cpu_seconds(pids), time.monotonic()
    if out.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({out.returncode}): {out.stderr or out.stdout}")
    perf = parse_dnsperf(out.stdout)
    perf.user_s, perf.sys_s, perf.wall_s = u1 - u0, s1 - s0, t1 - t0
    bad = {k: v for k, v in perf.rcodes.items() if k != "NOERROR"}
    if bad or perf.completed == 0:
        raise RuntimeError(f"{t.key}: unexpected response codes {perf.rcodes}")
    return perf


# -- servers -------------------------------------------------------------------------------


def _from_sp(key: str, label: str, sp: Any) -> Target:
    return Target(key, label, sp.host, sp.port, sp.proc.pid, sp.stop)


def start(
    key: str,
    setup: Setup,
    tmp: Path,
    fedns_at: str | None,
    fedns_pid: int | None,
    baseline: Path | None = None,
) -> Target:
    if key == "fedns" and fedns_at:
        host, port = fedns_at.rsplit(":", 1)
        return Target(key, f"fedns at {fedns_at}", host, int(port), fedns_pid, lambda: None)
    if key == "baseline":
        assert baseline is not None
        sp = start_fedns(CONFIG, tmp / key, workers=1, src=baseline)
        return _from_sp(key, f"fedns, 1 worker, baseline `{baseline.name}`", sp)
    if key in ("fedns", "fedns2"):
        workers = 2 if key == "fedns2" else 1
        sp = start_fedns(CONFIG, tmp / key, workers=workers)
        time.sleep(0.5 if workers > 1 else 0)  # let every worker's table settle
        return _from_sp(key, f"fedns, {workers} worker{'s' if workers > 1 else ''}", sp)
    if key == "gdnsd":
        sp = start_gdnsd(
            tmp / "gdnsd",
            setup.zone,
            setup.nets,
            setup.answers,
            setup.default,
            name=NAME,
            ttl=setup.ttl,
            threads=1,
        )
        return _from_sp(key, "gdnsd 3, geoip nets, 1 UDP thread", sp)
    mode = key.split("-", 1)[1]
    sp = start_pdns(
        tmp / key,
        setup.zone,
        setup.nets,
        setup.answers,
        setup.default,
        name=NAME,
        ttl=setup.ttl,
        lua_mode=mode,
        extra_args=("--receiver-threads=1", "--distributor-threads=1"),
    )
    flag = "shared" if mode == "shared" else "yes"
    return _from_sp(key, f"PowerDNS 4, LUA record, enable-lua-records={flag}", sp)


@contextlib.contextmanager
def running(key: str, setup: Setup, tmp: Path, args: argparse.Namespace) -> Iterator[Target]:
    t = start(key, setup, tmp, args.fedns, args.fedns_pid, args.baseline)
    try:
        yield t
    finally:
        t.stop()


# -- the run --------------------------------------------------------------------------------

SERVERS = ("fedns", "fedns2", "gdnsd", "pdns-shared", "pdns-fresh")


@dataclass
class Row:
    key: str
    label: str
    scope: int | None
    sat: Perf
    fixed: Perf
    many: Perf | None = None  # at -Q, every query another client /24 (``--subnets``)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="short runs, RESULTS.md untouched")
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(SERVERS))
    ap.add_argument("--load", type=int, default=40000, help="offered qps for the CPU measurement")
    ap.add_argument("--subnet", default="203.0.113.0/24", help="the ECS subnet every query carries")
    ap.add_argument(
        "--fedns", help="HOST:PORT of a running fedns serving benchmarks/ecs-bench.yaml"
    )
    ap.add_argument("--fedns-pid", type=int, help="its PID, to measure its CPU")
    ap.add_argument(
        "--subnets",
        type=int,
        default=50_000,
        help="also measure CPU/query at -Q with this many distinct client /24s (0: skip)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="repeat, interleaved; report medians")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="an older fedns source tree, served too (as 'baseline', 1 worker) for before/after",
    )
    args = ap.parse_args(argv)
    servers = SERVERS + (("baseline",) if args.baseline else ())
    if args.baseline is not None:
        args.baseline = args.baseline.resolve()
        if not (args.baseline / "resolver" / "cli.py").is_file():
            ap.error(f"--baseline {args.baseline}: no resolver/cli.py there")
    keys = [k.strip() for k in args.only.split(",")] if args.only else list(servers)
    unknown = set(keys) - set(servers)
    if unknown:
        ap.error(f"unknown server(s) {sorted(unknown)}; pick from {', '.join(servers)}")
    sat_s, fixed_s = (3.0, 3.0) if args.quick else (10.0, 10.0)

    setup = read_setup(CONFIG)
    qname = f"{NAME}.{setup.zone}"
    lmap_region = _region_for(setup, args.subnet)
    want = setup.answers[lmap_region]
    option = ecs_hex(args.subnet)
    rounds = 1 if args.quick else max(1, args.rounds)
    per_round: dict[str, list[Row]] = {k: [] for k in keys}
    with tempfile.TemporaryDirectory(prefix="fedns-ecs-bench-") as d:
        tmp = Path(d)
        datafile = tmp / "queries.txt"
        datafile.write_text(f"{qname} A\n")
        manyfile = tmp / "many.bin"
        if args.subnets:
            many_subnets(manyfile, qname, args.subnets)
        for r in range(rounds):
            # Every other round in reverse, so no server always runs right after
            # the same one (the order showed in before/after comparisons).
            for key in keys if r % 2 == 0 else keys[::-1]:
                print(f"[round {r + 1}/{rounds}] {key}", flush=True)
                with running(key, setup, tmp, args) as t:
                    scope = check_answer(t, qname, args.subnet, want)
                    time.sleep(0.3)
                    sat = dnsperf(t, datafile, option, sat_s, None)
                    fixed = dnsperf(t, datafile, option, fixed_s, args.load)
                    many = dnsperf(t, manyfile, None, fixed_s, args.load) if args.subnets else None
                per_round[key].append(Row(key, t.label, scope, sat, fixed, many))
                cpu = f"{fixed.cpu_us_per_query:.2f} us" if t.pid else "n/a"
                print(
                    f"  {key:12s} scope /{scope}  saturation {sat.qps:9.0f} qps"
                    f"  at -Q {args.load}: {fixed.qps:8.0f} qps, CPU/query {cpu}"
                    + (f"; {args.subnets} subnets: {many.cpu_us_per_query:.2f} us" if many else ""),
                    flush=True,
                )
    rows = [
        Row(
            k,
            rs[0].label,
            rs[0].scope,
            _median_perf([x.sat for x in rs]),
            _median_perf([x.fixed for x in rs]),
            _median_perf([x.many for x in rs if x.many]) if rs[0].many else None,
        )
        for k, rs in per_round.items()
    ]
    report = render(rows, args, setup, want)
    print()
    print(report)
    if not args.quick and not args.only and not args.fedns:
        replace_section("ecs", report)
    return 0


def _region_for(setup: Setup, cidr: str) -> str:
    n = ipaddress.ip_network(cidr)
    best, region = -1, setup.default
    for c, r in setup.nets.items():
        net = ipaddress.ip_network(c)
        if net.version == n.version and n.subnet_of(net) and net.prefixlen > best:  # type: ignore[arg-type]
            best, region = net.prefixlen, r
    return region


def render(rows: list[Row], args: argparse.Namespace, setup: Setup, want: str) -> str:
    by = {r.key: r for r in rows}
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## ECS: tailored answers (fedns vs gdnsd vs PowerDNS Lua)",
        "",
        f"`python3 benchmarks/ecs.py{' --baseline ' + args.baseline.name if args.baseline else ''}` "
        f"— {when}, {platform.node()} ({_cpus()} CPUs), "
        f"every query `{NAME}.{setup.zone} A` with ECS {args.subnet} "
        f"(`dnsperf -E 8:{ecs_hex(args.subnet)}`), answer {want}. "
        f"Saturation: `dnsperf -c 4 -q 200`; CPU per query: the server's utime+stime "
        f"at `-Q {args.load}`; many subnets: the same load, every query with another of "
        f"{args.subnets:,} client /24s (`dnsperf -B`, a file of queries). Medians of "
        f"{1 if args.quick else args.rounds} interleaved rounds.",
        "",
        "| server | ECS scope | saturation qps | qps at -Q | CPU us/query (user+sys) "
        "| many subnets: CPU us/query |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        many = r.many.split if r.many else "-"
        lines.append(
            f"| {r.label} | /{r.scope} | {r.sat.qps:,.0f} | {r.fixed.qps:,.0f} | {r.fixed.split} "
            f"| {many} |"
        )
    lines.append("")
    f, g, ps, pf = (
        r if r is not None and r.fixed.cpu_us_per_query > 0 else None
        for r in (by.get(k) for k in ("fedns", "gdnsd", "pdns-shared", "pdns-fresh"))
    )
    if f and g:
        ratio = f.fixed.cpu_us_per_query / g.fixed.cpu_us_per_query
        ok = "met" if ratio <= GOAL_CPU_VS_GDNSD else "NOT met"
        lines.append(
            f"- fedns CPU per tailored answer = {ratio:.2f}x gdnsd's "
            f"(goal <= {GOAL_CPU_VS_GDNSD}x: {ok}); saturation {f.sat.qps / g.sat.qps:.2f}x gdnsd's."
        )
    if f and ps:
        ahead = f.sat.qps > ps.sat.qps and f.fixed.cpu_us_per_query < ps.fixed.cpu_us_per_query
        lines.append(
            f"- vs PowerDNS Lua shared: saturation {f.sat.qps / ps.sat.qps:.2f}x, CPU per answer "
            f"{ps.fixed.cpu_us_per_query / f.fixed.cpu_us_per_query:.2f}x lower "
            f"(goal: ahead on both: {'met' if ahead else 'NOT met'})."
        )
    if f and pf:
        lines.append(
            f"- PowerDNS Lua fresh-state mode uses {pf.fixed.cpu_us_per_query / f.fixed.cpu_us_per_query:.0f}x "
            f"fedns's CPU per answer (issue 4 expects about {GOAL_FRESH_VS_FEDNS}x)."
        )
    if f and g and f.many and g.many:
        lines.append(
            f"- Many subnets: fedns {f.many.cpu_us_per_query:.2f} us per answer, "
            f"{f.many.cpu_us_per_query / g.many.cpu_us_per_query:.2f}x gdnsd's. One subnet "
            "repeated is answered from the reply remembered for that query's bytes (a dict "
            "lookup; resolvers repeat their clients' questions). "
            f"{args.subnets:,} subnets in turn are more than those replies hold (16,384): "
            "each is answered from the reply remembered for its locality bucket (the query's "
            "bytes up to the ECS ADDRESS, and the bucket from one longest-prefix lookup), "
            "with its ADDRESS patched in (issue 13; the tree before routed each subnet once "
            "and kept a per-subnet memo, bounded at 65,536)."
        )
    b = by.get("baseline")
    if f and b and b.fixed.cpu_us_per_query > 0:
        line = (
            f"- Against the baseline tree (same run): CPU per tailored answer "
            f"{f.fixed.cpu_us_per_query / b.fixed.cpu_us_per_query:.3f}x, saturation "
            f"{f.sat.qps / b.sat.qps:.3f}x"
        )
        if f.many and b.many:
            line += f", many subnets CPU {f.many.cpu_us_per_query / b.many.cpu_us_per_query:.3f}x"
        lines.append(line + ".")
    lines.append(
        "- ECS scope: gdnsd and fedns return the widest prefix with the same answer; "
        "PowerDNS returns the query's source prefix (one resolver cache entry per /24)."
    )
    return "\n".join(lines) + "\n"


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
