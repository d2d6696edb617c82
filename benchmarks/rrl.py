#!/usr/bin/env python3
"""Response rate limiting: what it costs fedns per query, and what a flood gets back.

fedns (1 worker, ``zones/global.example.test.zone``) in three setups, one
after the other, the order alternating between rounds:

* ``off``: no ``rate_limit``;
* ``on``: ``rate_limit`` with ``responses_per_second`` so high that nothing is
  limited: every reply is checked and none held back, which is what a server
  pays under normal load (many clients, each under the rate);
* ``flood``: the default ``rate_limit`` (20/s, slip 2, window 15 s), all
  queries from one address, as a spoofed flood aimed at one victim looks.

dnsperf sends the positive mix of ``benchmarks/authoritative.py`` (14
questions) at a fixed load (``-Q``). For ``off`` and ``on``: the server's CPU
time (utime + stime, all its threads) per query sent, the goal being ``on``
within 10 % of ``off``. For ``flood``: replies per query and the ratio of reply bytes to
query bytes (dnsperf's counts and average packet sizes; the goal: at most 1
with slip 2), and what the limiter did, from fedns's ``/metrics``.

CPU time on a shared 2-core machine scatters by 10-15 % between runs, so
``--callgrind`` also counts instructions, which do not depend on the rest of
the machine: the server runs under ``valgrind --tool=callgrind`` (the real
interpreter, ``PYTHONHASHSEED=0``), its counters are zeroed after a warm-up,
then dnsperf sends the mix ``--passes`` times at a low rate; user-space
instructions of the whole process divided by the queries answered, as counted
and less what the idle process runs in as long (timers, the UDP thread's
receive timeout), which a low rate spreads over few queries.

``--baseline DIR`` also serves, with no ``rate_limit``, from another source
tree (``git archive REV | tar -x -C DIR``): RRL off must cost what it did.

Usage: python3 benchmarks/rrl.py [--quick] [--rounds 3] [--load 20000] [--seconds 10]
                                 [--callgrind] [--passes 500] [--baseline DIR]
Prints a Markdown section for ``benchmarks/RESULTS.md``; writes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE)]

from authoritative import (  # noqa: E402
    ORIGIN,
    POSITIVE,
    ZONE_FILE,
    cpu_seconds,
    free_port,
    machine,
    parse_dnsperf,
    proc_tree,
    wait_ready,
)

SETUPS = {
    "baseline": None,  # only with --baseline DIR: fedns from that tree, no rate_limit
    "off": None,
    "on": {"responses_per_second": 1_000_000},
    "flood": {"responses_per_second": 20, "slip": 2, "window": "15s"},
}
GOAL_CPU = 1.10  # RRL on within 10 % of off
GOAL_BYTES = 1.0  # a flood gets back at most the bytes it sent (slip 2)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


BASELINE: Path | None = None  # --baseline


@contextlib.contextmanager
def running(setup: str, tmp: Path, callgrind: bool = False) -> Iterator[Server]:
    port, admin = free_port(), free_port()
    doc: dict[str, object] = {
        "zones": [{"origin": ORIGIN, "file": str(ZONE_FILE)}],
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "log": {"level": "warning"},
    }
    if SETUPS[setup] is not None:
        doc["rate_limit"] = SETUPS[setup]
    cfg = tmp / f"{setup}.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    argv = [sys.executable, "-m", "resolver.cli", "serve", "-c", str(cfg)]
    argv += ["--dns", f"127.0.0.1:{port}", "--workers", "1"]
    src = BASELINE if setup == "baseline" and BASELINE is not None else REPO
    env = {**os.environ, "PYTHONPATH": str(src)}
    if callgrind:
        # sys.executable is the interpreter itself (not a shim that execs it), so
        # valgrind counts the server, not a shell.
        dumps = f"--callgrind-out-file={tmp}/cg.{setup}.%p"
        argv = ["valgrind", "--tool=callgrind", dumps, *argv]
        env["PYTHONHASHSEED"] = "0"
    log = tmp / f"{setup}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv, env=env, cwd=tmp, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    srv = Server(proc, port, admin, log)
    try:
        wait_ready(port, proc, timeout=300 if callgrind else 20)
        wait_admin(srv, 300 if callgrind else 20)
        yield srv
    finally:
        srv.stop()


def wait_admin(srv: Server, timeout: float) -> None:
    """The admin API comes up just after DNS does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.admin}/healthz", timeout=5):
                return
        except OSError:
            if time.monotonic() > deadline or srv.proc.poll() is not None:
                raise
            time.sleep(0.1)


def dnsperf(srv: Server, queries: Path, load: int, seconds: float = 0, passes: int = 0) -> str:
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(srv.port), "-d", str(queries)]
    # As many outstanding as a second's load: a dropped query holds its slot until
    # the 1 s timeout, and with -q 200 a flood's drops would throttle dnsperf itself.
    argv += ["-c", "4", "-T", "1", "-q", str(max(200, load)), "-t", "1", "-Q", str(load)]
    argv += ["-n", str(passes)] if passes else ["-l", f"{seconds:g}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({out.returncode}): {out.stderr or out.stdout}")
    return out.stdout


def metrics(srv: Server) -> dict[str, float]:
    """fedns's ``fedns_rrl_limited_responses`` counters, by action."""
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'^fedns_rrl_limited_responses_total\{action="(\w+)"\} (\S+)$', text, re.M
        )
    }


@dataclass
class Run:
    cpu_us: float  # per query sent
    sent: int
    completed: int
    request_bytes: float  # dnsperf's average sizes
    response_bytes: float
    actions: dict[str, float]

    @property
    def byte_ratio(self) -> float:
        return (self.completed * self.response_bytes) / (self.sent * self.request_bytes)


def measure(setup: str, tmp: Path, queries: Path, load: int, seconds: float) -> Run:
    with running(setup, tmp) as srv:
        if setup != "flood":  # a warm-up would empty the flood's buckets before it starts
            dnsperf(srv, queries, 2000, seconds=1)  # every answer compiled once
        before = metrics(srv)
        pids = proc_tree(srv.proc.pid)
        u0, s0 = cpu_seconds(pids)
        text = dnsperf(srv, queries, load, seconds=seconds)
        u1, s1 = cpu_seconds(pids)
        after = metrics(srv)
    perf = parse_dnsperf(text)
    sizes = re.search(r"Average packet size:\s+request (\d+), response (\d+)", text)
    req, resp = (float(sizes.group(1)), float(sizes.group(2))) if sizes else (0.0, 0.0)
    # Per query sent: a flood's dropped queries cost CPU too.
    cpu = 1e6 * ((u1 - u0) + (s1 - s0)) / max(perf.sent, 1)
    actions = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return Run(cpu, perf.sent, perf.completed, req, resp, actions)


def instructions(
    setup: str, tmp: Path, queries: Path, passes: int, load: int
) -> tuple[float, float]:
    """User-space instructions of the server per query answered (callgrind): as
    counted, and less what the process runs idle in as long (timers, the receive
    timeout of the UDP thread), which a low load spreads over few queries."""
    with running(setup, tmp, callgrind=True) as srv:
        dnsperf(srv, queries, load, passes=max(passes // 10, 20))  # warm-up
        pid = str(srv.proc.pid)

        def counted(run: Callable[[], object]) -> tuple[int, float]:
            subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
            t0 = time.monotonic()
            run()
            wall = time.monotonic() - t0
            before = set(tmp.glob(f"cg.{setup}.{pid}.*"))
            subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
            deadline = time.monotonic() + 60
            while not (set(tmp.glob(f"cg.{setup}.{pid}.*")) - before):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no callgrind dump for {setup}")
                time.sleep(0.2)
            time.sleep(1)  # written whole
            (dump,) = set(tmp.glob(f"cg.{setup}.{pid}.*")) - before
            m = re.search(r"^(?:summary|totals):\s+(\d+)", dump.read_text(errors="replace"), re.M)
            if m is None:
                raise RuntimeError(f"no totals in {dump}")
            return int(m.group(1)), wall

        perfs = []

        def load_run() -> None:
            perfs.append(parse_dnsperf(dnsperf(srv, queries, load, passes=passes)))

        busy, wall = counted(load_run)
        idle, idle_wall = counted(lambda: time.sleep(wall))
    done = max(perfs[0].completed, 1)
    return busy / done, (busy - idle * wall / idle_wall) / done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 round, 2 s, low load")
    ap.add_argument("--rounds", type=int, default=3, help="0: callgrind only")
    ap.add_argument("--load", type=int, default=20000, help="dnsperf -Q, queries per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--callgrind", action="store_true", help="also count instructions per query")
    ap.add_argument("--passes", type=int, default=500, help="callgrind: times through the mix")
    ap.add_argument("--callgrind-load", type=int, default=500, help="callgrind: dnsperf -Q")
    ap.add_argument(
        "--baseline",
        type=Path,
        help="also serve from this source tree (no rate_limit), e.g. `git archive REV | tar -x -C DIR`",
    )
    args = ap.parse_args(argv)
    global BASELINE
    BASELINE = args.baseline
    if args.quick:
        args.rounds, args.seconds, args.load, args.passes = 1, 2.0, 2000, 20
    for tool in ("dnsperf", *(("valgrind", "callgrind_control") if args.callgrind else ())):
        if shutil.which(tool) is None:
            print(f"{tool} not found (apt: {'dnsperf' if tool == 'dnsperf' else 'valgrind'})")
            return 2
    with tempfile.TemporaryDirectory(prefix="fedns-rrl-") as d:
        tmp = Path(d)
        queries = tmp / "positive.txt"
        queries.write_text(
            "".join(f"{ORIGIN if n == '@' else n + '.' + ORIGIN} {t}\n" for n, t in POSITIVE)
        )
        # A reflection flood repeats one question with a large answer: the apex's NS
        # records with their addresses.
        flood = tmp / "flood.txt"
        flood.write_text(f"{ORIGIN} NS\n")
        setups = [s for s in SETUPS if s != "baseline" or BASELINE is not None]
        runs: dict[str, list[Run]] = {s: [] for s in setups}
        for r in range(args.rounds):
            order = setups if r % 2 == 0 else list(reversed(setups))
            for setup in order:
                mix = flood if setup == "flood" else queries
                run = measure(setup, tmp, mix, args.load, args.seconds)
                runs[setup].append(run)
                print(
                    f"round {r + 1} {setup}: {run.cpu_us:.2f} us/query, sent {run.sent}, "
                    f"answered {run.completed}, bytes out/in {run.byte_ratio:.3f}",
                    flush=True,
                )
        ir: dict[str, tuple[float, float]] = {}
        if args.callgrind:
            for setup in [s for s in setups if s != "flood"]:
                ir[setup] = instructions(setup, tmp, queries, args.passes, args.callgrind_load)
                print(
                    f"callgrind {setup}: {ir[setup][0]:,.0f} instructions/query, "
                    f"{ir[setup][1]:,.0f} less the idle process's",
                    flush=True,
                )
    print()
    print(render(runs, ir, args))
    return 0


def render(
    runs: dict[str, list[Run]], ir: dict[str, tuple[float, float]], args: argparse.Namespace
) -> str:
    cmd = "python3 benchmarks/rrl.py" + (" --quick" if args.quick else "")
    if not args.quick:
        cmd += f" --rounds {args.rounds} --load {args.load} --seconds {args.seconds:g}"
    if args.callgrind:
        cmd += f" --callgrind --passes {args.passes} --callgrind-load {args.callgrind_load}"
    if args.baseline:
        cmd += " --baseline BASELINE_TREE"
    lines = [
        "## Response rate limiting: cost per query, and a flood's bytes",
        "",
        f"- machine: {machine()}",
        f"- command: `{cmd}`",
    ]
    if ir:
        counted = ", ".join(f"{k} {v[0]:,.0f}" for k, v in ir.items())
        busy = ", ".join(f"{k} {v[1]:,.0f}" for k, v in ir.items())
        lines.append(
            f"- user-space instructions per query (callgrind, the mix {args.passes} times at "
            f"`-Q {args.callgrind_load}`): {counted}; less what the idle process runs in as "
            f"long: {busy}"
        )
        ratios = [f"on / off {ir['on'][1] / ir['off'][1]:.3f}x"]
        if "baseline" in ir:
            ratios.append(f"off / baseline {ir['off'][1] / ir['baseline'][1]:.3f}x")
        lines.append(f"- instructions, less idle: {'; '.join(ratios)}")
    if not args.rounds:
        return "\n".join(lines) + "\n"
    med = {s: statistics.median(r.cpu_us for r in rs) for s, rs in runs.items()}
    ratio = med["on"] / med["off"]
    flood = runs["flood"][len(runs["flood"]) // 2]
    lines += [
        f"- load: dnsperf `-Q {args.load}` for {args.seconds:g} s from one address: the "
        f"14-question positive mix (off, on), `{ORIGIN} NS` (flood); median of "
        f"{args.rounds} rounds",
        "",
        "| setup | CPU us per query sent | answered / sent |",
        "|---|---:|---:|",
    ]
    for s, rs in runs.items():
        r = rs[len(rs) // 2]
        lines.append(f"| {s} | {med[s]:.2f} | {r.completed:,} / {r.sent:,} |")
    verdict = "meets" if ratio <= GOAL_CPU else "misses"
    lines += [
        "",
        f"- RRL on (nothing limited) vs off: CPU per query {ratio:.3f}x ({verdict} <= {GOAL_CPU}x)",
    ]
    if "baseline" in med:
        lines.append(
            f"- off vs the baseline tree: CPU per query {med['off'] / med['baseline']:.3f}x"
        )
    b = flood.byte_ratio
    acts = ", ".join(f"{k} {v:,.0f}" for k, v in flood.actions.items() if v)
    lines.append(
        f"- flood (20/s, slip 2, window 15 s): {flood.completed:,} replies to {flood.sent:,} "
        f"queries; reply bytes / query bytes {b:.3f} ({'meets' if b <= GOAL_BYTES else 'misses'} "
        f"<= {GOAL_BYTES:g}); limiter: {acts or 'nothing limited'}"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
