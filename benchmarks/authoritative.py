#!/usr/bin/env python3
"""Authoritative benchmark: fedns (1 and 2 workers), NSD and Knot, one zone, one run.

Every server loads the same RFC 1035 zone file from a temporary directory and
listens on its own loopback port; this script starts it, measures it with
dnsperf, and stops it before the next one starts. Per server:

* positive answers, saturation: dnsperf with as many queries outstanding as
  it can keep (qps and average latency);
* positive answers, fixed offered load (``-Q``): the server's own CPU time per
  completed query, read from /proc/PID/stat (utime + stime, summed over the
  server's process tree) before and after;
* a random-subdomain flood (every query a different nonexistent name):
  saturation and CPU per query again, to show negative answers cost what
  positive ones do.

dnsperf shares the machine's cores with the server, so saturation measures
the pair; CPU per query at a load every server sustains is the fair per-server
comparison. Results print as they come and, for a full run, are written to
benchmarks/RESULTS.md (one section, replaced per run, plus a history row).

Usage: python3 benchmarks/authoritative.py [--quick] [--only fedns1,nsd] [--label TEXT]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import random
import re
import shlex
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FEDNS_SRC = REPO  # where fedns is run from; --fedns-src points it at another checkout
BASELINE: Path | None = None  # --baseline: an older tree served alongside, for before/after
ZONE_FILE = REPO / "zones" / "global.example.test.zone"
ORIGIN = "global.example.test."
RESULTS = REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- authoritative:begin -->", "<!-- authoritative:end -->"
HIST_BEGIN, HIST_END = "<!-- authoritative-history:begin -->", "<!-- authoritative-history:end -->"

# Positive answers from the demo zone: exact names, a CNAME chain, a wildcard,
# SRV and the apex types (NS with glue is the largest). All NOERROR with data.
POSITIVE = [
    ("web", "A"),
    ("web", "AAAA"),
    ("mail", "A"),
    ("ns1", "A"),
    ("ns2", "AAAA"),
    ("@", "SOA"),
    ("@", "NS"),
    ("@", "MX"),
    ("@", "TXT"),
    ("www", "A"),
    ("docs", "A"),
    ("_https._tcp.web", "SRV"),
    ("foo.apps", "A"),
    ("80.0.0.127.in-addr", "PTR"),
]

# Targets from issue 2, as ratios against NSD measured in the same run.
TARGET_SATURATION = 0.75  # fedns qps >= 0.75x NSD
TARGET_CPU = 1.6  # fedns CPU per query <= 1.6x NSD


# ---------------------------------------------------------------------------
# processes and /proc


def free_port() -> int:
    """A loopback port free for both UDP and TCP (servers listen on both)."""
    for _ in range(100):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            u.close()
            t.close()
        return port
    raise RuntimeError("no free loopback port")


def proc_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (threads are counted inside their process)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """(utime, stime) of the given processes (all their threads), in seconds."""
    user = system = 0
    for p in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
            # Fields after the parenthesised command name; utime and stime are 14 and 15.
            rest = stat[stat.rindex(")") + 2 :].split()
            user += int(rest[11])
            system += int(rest[12])
    return user / _TICK, system / _TICK


def dns_query(name: str, qtype: int = 6) -> bytes:
    wire = b"".join(bytes([len(x)]) + x.encode() for x in name.rstrip(".").split(".")) + b"\0"
    return struct.pack(">HHHHHH", 0x4242, 0, 1, 0, 0, 0) + wire + struct.pack(">HH", qtype, 1)


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Until the server answers a SOA query over UDP."""
    deadline = time.monotonic() + timeout
    q = dns_query(ORIGIN)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with code {proc.returncode}")
            s.sendto(q, ("127.0.0.1", port))
            with contextlib.suppress(OSError):
                data = s.recv(4096)
                if data[:2] == q[:2] and data[3] & 0x0F == 0:
                    return
            time.sleep(0.05)
    raise RuntimeError(f"server did not answer on 127.0.0.1:{port} within {timeout:.0f} s")


@dataclass
class Server:
    """A started server: its process, port and where its log went."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    extra_ready: float = 0.0  # seconds to let workers settle after the first answer

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                # Its own session (start_new_session): the group holds only this server.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _spawn(name: str, argv: list[str], tmp: Path, port: int, cwd: Path) -> Server:
    log = tmp / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return Server(name, proc, port, log)


def start_fedns(
    workers: int, baseline: bool = False, udp: str | None = None
) -> Callable[[Path], Server]:
    def start(tmp: Path) -> Server:
        port = free_port()
        name = f"{'baseline' if baseline else 'fedns'}{workers}" + (f"-{udp}" if udp else "")
        cfg = tmp / f"{name}.yaml"
        cfg.write_text(
            f"dns:\n  listen: 127.0.0.1:{port}\n  workers: {workers}\n"
            + (f"  udp: {udp}\n" if udp else "")
            + f"log:\n  level: warning\n"
            f"zones:\n  - origin: {ORIGIN}\n    file: {tmp / ZONE_FILE.name}\n"
        )
        argv = [sys.executable, "-m", "resolver.cli", "serve", "-c", str(cfg)]
        src = BASELINE if baseline and BASELINE is not None else FEDNS_SRC
        srv = _spawn(name, argv, tmp, port, src)
        srv.extra_ready = 0.5 if workers > 1 else 0.0
        return srv

    return start


def start_nsd(tmp: Path, count: int = 1) -> Server:
    port = free_port()
    d = tmp / f"nsd{count}"
    d.mkdir(exist_ok=True)
    conf = d / "nsd.conf"
    conf.write_text(
        f"""server:
  ip-address: 127.0.0.1@{port}
  port: {port}
  server-count: {count}
  username: ""
  chroot: ""
  database: ""
  zonesdir: "{tmp}"
  pidfile: "{d}/nsd.pid"
  xfrdfile: "{d}/xfrd.state"
  xfrdir: "{d}"
  zonelistfile: "{d}/zone.list"
  logfile: "{d}/nsd.log"
  verbosity: 0
  rrl-ratelimit: 0
  minimal-responses: yes
  refuse-any: no
  hide-version: no
remote-control:
  control-enable: no
zone:
  name: "{ORIGIN}"
  zonefile: "{ZONE_FILE.name}"
"""
    )
    srv = _spawn(f"nsd{count}", ["nsd", "-d", "-c", str(conf)], tmp, port, tmp)
    srv.extra_ready = 0.5 if count > 1 else 0.0  # every server process up
    return srv


def start_knot(tmp: Path) -> Server:
    port = free_port()
    d = tmp / "knot"
    d.mkdir(exist_ok=True)
    conf = d / "knot.conf"
    conf.write_text(
        f"""server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{d}"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{tmp}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: "{ORIGIN}"
    file: "{ZONE_FILE.name}"
"""
    )
    return _spawn("knot", ["knotd", "-c", str(conf)], tmp, port, tmp)


SERVERS: dict[str, tuple[str, Callable[[Path], Server]]] = {
    "fedns1": ("fedns, 1 worker", start_fedns(1)),
    "fedns2": ("fedns, 2 workers", start_fedns(2)),
    "nsd": ("NSD, server-count 1", start_nsd),
    # Like for like with 2 fedns workers: two serving processes sharing the load.
    "nsd2": ("NSD, server-count 2", lambda tmp: start_nsd(tmp, 2)),
    "knot": ("Knot, 1 UDP worker", start_knot),
}


@contextlib.contextmanager
def running(key: str, tmp: Path) -> Iterator[Server]:
    srv = SERVERS[key][1](tmp)
    try:
        try:
            wait_ready(srv.port, srv.proc)
        except RuntimeError as e:
            tail = srv.log.read_text(errors="replace")[-2000:] if srv.log.exists() else ""
            raise RuntimeError(f"{key}: {e}\n--- log tail ---\n{tail}") from None
        time.sleep(srv.extra_ready)
        yield srv
    finally:
        srv.stop()


# ---------------------------------------------------------------------------
# dnsperf


@dataclass
class Perf:
    sent: int
    completed: int
    lost: int
    qps: float
    latency_ms: float
    rcodes: dict[str, int]
    user_s: float = 0.0  # the server's CPU time during the run, user and kernel
    sys_s: float = 0.0
    wall_s: float = 0.0

    def per_query(self, seconds: float) -> float:
        return 1e6 * seconds / self.completed if self.completed else float("nan")

    @property
    def cpu_us_per_query(self) -> float:
        return self.per_query(self.user_s + self.sys_s)

    @property
    def split(self) -> str:
        """CPU per query as 'total (user+sys)' in microseconds."""
        u, s = self.per_query(self.user_s), self.per_query(self.sys_s)
        return f"{u + s:.2f} ({u:.1f}+{s:.1f})"


def _num(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    if not m:
        raise RuntimeError(f"dnsperf output lacks {pattern!r}:\n{text}")
    return float(m.group(1))


def parse_dnsperf(text: str) -> Perf:
    rcodes = {m.group(1): int(m.group(2)) for m in re.finditer(r"\b([A-Z]+) (\d+) \(", text)}
    return Perf(
        sent=int(_num(r"Queries sent:\s+(\d+)", text)),
        completed=int(_num(r"Queries completed:\s+(\d+)", text)),
        lost=int(_num(r"Queries lost:\s+(\d+)", text)),
        qps=_num(r"Queries per second:\s+([\d.]+)", text),
        latency_ms=1000 * _num(r"Average Latency \(s\):\s+([\d.]+)", text),
        rcodes=rcodes,
    )


def dnsperf_argv(port: int, datafile: Path, seconds: float, qps: int | None) -> list[str]:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(datafile)]
    argv += ["-c", "4", "-T", "1", "-q", "200", "-l", f"{seconds:g}"]
    if qps:
        argv += ["-Q", str(qps)]
    return argv


def run_dnsperf(srv: Server, datafile: Path, seconds: float, qps: int | None) -> Perf:
    pids = proc_tree(srv.proc.pid)
    (u0, s0), t0 = cpu_seconds(pids), time.monotonic()
    out = subprocess.run(
        dnsperf_argv(srv.port, datafile, seconds, qps),
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    (u1, s1), t1 = cpu_seconds(pids), time.monotonic()
    if out.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({out.returncode}): {out.stderr or out.stdout}")
    perf = parse_dnsperf(out.stdout)
    perf.user_s, perf.sys_s, perf.wall_s = u1 - u0, s1 - s0, t1 - t0
    return perf


# ---------------------------------------------------------------------------
# the run


@dataclass
class Result:
    """Per server, per workload: saturation and fixed-load measurements."""

    sat: dict[str, Perf] = field(default_factory=dict)
    fixed: dict[str, Perf] = field(default_factory=dict)


WORKLOADS = ("positive", "flood")


def write_queries(tmp: Path, flood_lines: int) -> dict[str, Path]:
    pos = tmp / "positive.txt"
    pos.write_text(
        "".join(f"{ORIGIN if n == '@' else n + '.' + ORIGIN} {t}\n" for n, t in POSITIVE)
    )
    # Every line a different nonexistent name directly under the apex: the
    # NXDOMAIN case a random-subdomain attack produces. Random labels, seeded
    # so runs are comparable.
    rnd = random.Random(20261125)
    flood = tmp / "flood.txt"
    with open(flood, "w") as f:
        for i in range(flood_lines):
            f.write(f"r{rnd.getrandbits(48):012x}{i:x}.{ORIGIN} A\n")
    return {"positive": pos, "flood": flood}


def bench_server(
    key: str, tmp: Path, files: dict[str, Path], sat_s: float, fixed_s: float, load: int
) -> Result:
    res = Result()
    with running(key, tmp) as srv:
        pids = proc_tree(srv.proc.pid)
        print(f"  {key}: up on 127.0.0.1:{srv.port}, pids {pids}", flush=True)
        # Warm-up: lets every server fault in its pages and fedns fill its
        # lazily compiled entries (CNAME chains, wildcard types) before timing.
        run_dnsperf(srv, files["positive"], 1, None)
        for w in WORKLOADS:
            p = run_dnsperf(srv, files[w], sat_s, None)
            res.sat[w] = p
            print(
                f"  {key:7} {w:8} saturation  {p.qps:9.0f} qps  latency {p.latency_ms:6.3f} ms"
                f"  CPU {p.split} us/query  lost {p.lost}  rcodes {p.rcodes}",
                flush=True,
            )
            p = run_dnsperf(srv, files[w], fixed_s, load)
            res.fixed[w] = p
            print(
                f"  {key:7} {w:8} -Q {load:<6}   {p.qps:9.0f} qps  latency {p.latency_ms:6.3f} ms"
                f"  CPU {p.split} us/query"
                f" ({(p.user_s + p.sys_s) / p.wall_s:4.0%} of a core)",
                flush=True,
            )
    return res


def _median_perf(perfs: list[Perf]) -> Perf:
    """Over rounds: median qps and latency; CPU from the round with the median CPU/query."""
    by_cpu = sorted(perfs, key=lambda p: p.cpu_us_per_query)[len(perfs) // 2]
    scale = statistics.median(p.completed for p in perfs) / by_cpu.completed
    return Perf(
        int(statistics.median(p.sent for p in perfs)),
        int(statistics.median(p.completed for p in perfs)),
        int(statistics.median(p.lost for p in perfs)),
        statistics.median(p.qps for p in perfs),
        statistics.median(p.latency_ms for p in perfs),
        by_cpu.rcodes,
        user_s=by_cpu.user_s * scale,
        sys_s=by_cpu.sys_s * scale,
        wall_s=by_cpu.wall_s,
    )


def combine(rounds: list[Result]) -> Result:
    out = Result()
    for w in WORKLOADS:
        out.sat[w] = _median_perf([r.sat[w] for r in rounds])
        out.fixed[w] = _median_perf([r.fixed[w] for r in rounds])
    return out


# ---------------------------------------------------------------------------
# reporting


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def _dnsperf_version() -> str:
    out = subprocess.run(["dnsperf", "-h"], capture_output=True, text=True, check=False)
    m = re.search(r"Version ([\w.]+)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), Linux {platform.release()}, Python {platform.python_version()}"


def git_rev() -> str:
    """The revision fedns ran from (with a note when it is not this checkout's HEAD)."""
    if FEDNS_SRC != REPO:
        return f"`{FEDNS_SRC.name}` (--fedns-src)"
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "resolver"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "?"
    return (rev or "?") + (" + uncommitted changes" if dirty else "")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def report(
    results: dict[str, Result],
    command: str,
    label: str,
    load: int,
    sat_s: float,
    fixed_s: float,
    rounds: int,
) -> tuple[str, str]:
    """(the markdown section, one history row)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rev = git_rev()
    nsd = results.get("nsd")
    lines = [
        BEGIN,
        "## Authoritative serving: fedns vs NSD and Knot",
        "",
        f"- date: {now}; fedns revision {rev}" + (f"; label: {label}" if label else ""),
        f"- machine: {machine()}",
        f"- servers: {_version(['nsd', '-v'])}; {_version(['knotd', '-V'])}; "
        f"load generator dnsperf {_dnsperf_version()}",
        f"- command: `{command}`",
        f"- saturation: `dnsperf -c 4 -T 1 -q 200 -l {sat_s:g}`; fixed load: the same with "
        f"`-Q {load} -l {fixed_s:g}`; CPU = the server's utime+stime (all its processes) "
        f"over the run / queries completed; each figure the median of {rounds} rounds",
        f"- zone: `zones/{ZONE_FILE.name}`, loaded by every server from the same file; "
        f"positive mix: {len(POSITIVE)} questions (A, AAAA, SOA, NS+glue, MX, TXT, CNAME "
        "chain, wildcard, SRV, PTR); flood: every query `r<random>.global.example.test. A` "
        "(NXDOMAIN)",
        "",
        "| server | workload | saturation qps | latency | CPU us/query at saturation "
        f"| CPU us/query at -Q {load} (user+sys) | latency at -Q | qps vs NSD | CPU vs NSD |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, r in results.items():
        for w in WORKLOADS:
            s, f = r.sat[w], r.fixed[w]
            vs_q = _ratio(s.qps, nsd.sat[w].qps) if nsd else "n/a"
            vs_c = _ratio(f.cpu_us_per_query, nsd.fixed[w].cpu_us_per_query) if nsd else "n/a"
            lines.append(
                f"| {SERVERS[key][0]} | {w} | {s.qps:,.0f} | {s.latency_ms:.3f} ms | "
                f"{s.cpu_us_per_query:.2f} | {f.split} | {f.latency_ms:.3f} ms | {vs_q} | {vs_c} |"
            )
    lines += ["", "Targets (issue 2), fedns against NSD in this run:", ""]
    for key, ref_key in (("fedns1", "nsd"), ("fedns2", "nsd"), ("fedns2", "nsd2")):
        fr, ref = results.get(key), results.get(ref_key)
        if fr is None or ref is None:
            continue
        sat = fr.sat["positive"].qps / ref.sat["positive"].qps
        cpu = fr.fixed["positive"].cpu_us_per_query / ref.fixed["positive"].cpu_us_per_query
        fl_q = fr.sat["flood"].qps / fr.sat["positive"].qps
        fl_c = fr.fixed["flood"].cpu_us_per_query / fr.fixed["positive"].cpu_us_per_query
        lines.append(
            f"- {SERVERS[key][0]} against {SERVERS[ref_key][0]}: saturation {sat:.2f}x "
            f"({'meets' if sat >= TARGET_SATURATION else 'misses'} >= {TARGET_SATURATION}x); "
            f"CPU/query {cpu:.2f}x ({'meets' if cpu <= TARGET_CPU else 'misses'} "
            f"<= {TARGET_CPU}x); flood vs positive: {fl_q:.2f}x qps, {fl_c:.2f}x CPU/query"
        )
    fr, base = results.get("fedns1"), results.get("baseline1")
    if fr is not None and base is not None:
        lines += ["", "Against the baseline tree (fedns 1 worker, same run; goal: within 5 %):", ""]
        for w in ("positive", "flood"):
            sat = fr.sat[w].qps / base.sat[w].qps
            cpu = fr.fixed[w].cpu_us_per_query / base.fixed[w].cpu_us_per_query
            lines.append(f"- {w}: saturation {sat:.3f}x, CPU/query {cpu:.3f}x")
    lines += [
        "",
        "dnsperf runs on the same cores as the server, so saturation qps measures the pair "
        "(on 2 cores it takes one of them); CPU per query is the per-server cost.",
        END,
    ]

    def cell(key: str, attr: str) -> str:
        r = results.get(key)
        if r is None:
            return "-"
        if attr == "qps":
            return f"{r.sat['positive'].qps / 1000:.0f}k"
        if attr == "flood":
            return f"{r.sat['flood'].qps / 1000:.0f}k"
        return f"{r.fixed['positive'].cpu_us_per_query:.1f}"

    row = (
        f"| {now[:10]} | {rev} | {label or '-'} | "
        + " | ".join(
            f"{cell(k, 'qps')} / {cell(k, 'flood')} / {cell(k, 'cpu')}"
            for k in ("fedns1", "fedns2", "nsd", "knot")
        )
        + " |"
    )
    return "\n".join(lines), row


def update_results(path: Path, section: str, row: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if BEGIN in text and END in text:
        a, b = text.index(BEGIN), text.index(END) + len(END)
        text = text[:a] + section + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    if HIST_BEGIN not in text:
        text = (
            text.rstrip("\n")
            + "\n\n"
            + "\n".join(
                [
                    "### History: authoritative serving",
                    "",
                    "One row per full run; each cell is positive qps / flood qps / CPU us per "
                    "positive query.",
                    "",
                    HIST_BEGIN,
                    "| date | revision | label | fedns 1 worker | fedns 2 workers | NSD | Knot |",
                    "|---|---|---|---|---|---|---|",
                    HIST_END,
                ]
            )
            + "\n"
        )
    text = text.replace(HIST_END, row + "\n" + HIST_END)
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="smoke run: 2 s runs, 1 round, writes no results"
    )
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(SERVERS))
    ap.add_argument("--seconds", type=float, help="duration of each timed dnsperf run")
    ap.add_argument("--load", type=int, default=40000, help="fixed offered load for CPU/query")
    ap.add_argument("--rounds", type=int, help="repeat everything, report medians (default 3)")
    ap.add_argument("--label", default="", help="note for the history row (e.g. 'before')")
    ap.add_argument("--results", type=Path, help=f"markdown file to update (default {RESULTS})")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument(
        "--fedns-src",
        type=Path,
        help="run fedns from this source tree instead (e.g. `git archive REV | tar -x -C DIR`)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="also serve fedns (1 worker) from this older source tree, interleaved with the "
        "others: a before/after comparison under the same conditions",
    )
    ap.add_argument(
        "--udp",
        help="comma-separated UDP transports (dns.udp: mmsg, uvloop): adds servers "
        "fedns1-MODE and fedns2-MODE, e.g. --udp mmsg,uvloop --only fedns1-mmsg,fedns1-uvloop",
    )
    args = ap.parse_args()
    global FEDNS_SRC, BASELINE
    if args.fedns_src is not None:
        FEDNS_SRC = args.fedns_src.resolve()
        if not (FEDNS_SRC / "resolver" / "cli.py").exists():
            ap.error(f"--fedns-src {args.fedns_src}: no resolver/cli.py there")

    if args.baseline is not None:
        BASELINE = args.baseline.resolve()
        if not (BASELINE / "resolver" / "cli.py").exists():
            ap.error(f"--baseline {args.baseline}: no resolver/cli.py there")
        SERVERS["baseline1"] = (
            f"fedns, 1 worker, baseline `{BASELINE.name}`",
            start_fedns(1, True),
        )
    for mode in args.udp.split(",") if args.udp else ():
        for n in (1, 2):
            SERVERS[f"fedns{n}-{mode}"] = (
                f"fedns, {n} worker{'s' if n > 1 else ''}, udp: {mode}",
                start_fedns(n, udp=mode),
            )
    keys = args.only.split(",") if args.only else list(SERVERS)
    unknown = [k for k in keys if k not in SERVERS]
    if unknown:
        ap.error(f"unknown server {unknown}; choose from {','.join(SERVERS)}")
    need = (
        {"dnsperf"}
        | ({"nsd"} if {"nsd", "nsd2"} & set(keys) else set())
        | ({"knotd"} if "knot" in keys else set())
    )
    missing = [b for b in sorted(need) if shutil.which(b) is None]
    if missing:
        print(f"missing {missing}: apt-get install dnsperf nsd knot", file=sys.stderr)
        return 2
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    n_rounds = args.rounds or (1 if args.quick else 3)
    flood_lines = 50_000 if args.quick else 400_000
    # Paths of this machine stay out of RESULTS.md: a tree given by path is named by its last part.
    argv = [Path(a).name if Path(a).is_absolute() else a for a in sys.argv[1:]]
    command = shlex.join(["python3", "benchmarks/authoritative.py", *argv])

    with tempfile.TemporaryDirectory(prefix="fedns-bench-") as t:
        tmp = Path(t)
        shutil.copy(ZONE_FILE, tmp / ZONE_FILE.name)
        files = write_queries(tmp, flood_lines)
        rounds: dict[str, list[Result]] = {k: [] for k in keys}
        # Rounds interleave the servers, so slow drift on a shared machine
        # spreads over all of them instead of landing on one.
        for i in range(n_rounds):
            for k in keys:
                print(f"[round {i + 1}/{n_rounds}] {SERVERS[k][0]}", flush=True)
                rounds[k].append(bench_server(k, tmp, files, seconds, seconds, args.load))
    results = {k: combine(v) for k, v in rounds.items()}
    section, row = report(
        results, command.strip(), args.label, args.load, seconds, seconds, n_rounds
    )
    print()
    print(section.replace(BEGIN + "\n", "").replace("\n" + END, ""))
    write = not args.no_write and (not args.quick or args.results is not None)
    if write:
        path = args.results or RESULTS
        update_results(path, section, row)
        print(f"\nwrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
