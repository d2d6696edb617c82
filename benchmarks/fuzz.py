#!/usr/bin/env python3
"""The long fuzz run: a million packets and more at fedns, with 1 and 2 workers.

The generators, checks and runner of the suite's short run
(``tests/test_fuzz_live.py``), from ``tests/fuzzing.py``, at length: per
worker count, ``fedns serve`` on the demo config (``zones/demo.yaml``) on a
free loopback port gets ``--packets`` packets, ``--tcp-share`` of them as
TCP messages (framing faults included), the rest over UDP from eight
loopback addresses; after every batch of 400 UDP packets, and after every
run of TCP cases, the probe (a static record) must be answered as the zone
file says. Every reply that can be tied to its query is checked
(``fuzzing.check_reply``: dnspython parses it; ID, opcode, question, QR=1,
RA=0, size within the requester's, FORMERR for what is malformed, nothing
to a response).

Reported per worker count: packets sent and replies checked per kind, reply
faults, probe failures, crashes (the server or a worker exited: the process
gone, a ``worker_died`` log line or a worker replaced), tracebacks and other
unhandled-exception lines in its log. Exit status 1 if any of those is not 0.

A full run (``--packets`` at least 1,000,000, the default) writes its
section of RESULTS.md unless ``--no-write``; a smaller one prints only.

``--cookies`` serves the demo with ``cookies: {}`` (DNS cookies on), so the
fuzzed COOKIE options reach the cookie code; its section is ``fuzz-cookies``.

Usage: python3 benchmarks/fuzz.py [--packets 1000000] [--workers 1,2]
       [--tcp-share 0.05] [--seed 7766] [--cookies] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(Path(__file__).resolve().parent)]

import fuzzing  # noqa: E402
from results import replace_section  # noqa: E402
from servers import DEMO_CONFIG, start_fedns  # noqa: E402

FULL = 1_000_000


@dataclass
class Outcome:
    workers: int
    tally: fuzzing.Tally
    seconds: float
    crashes: int
    tracebacks: int
    exception_lines: int
    excerpt: str  # the log around its first traceback or exception line, if any


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def one(
    workers: int, packets: int, tcp_share: float, seed: int, tmp: Path, cookies: bool
) -> Outcome:
    workdir = tmp / f"fedns{workers}"
    config = fuzzing.config_with(DEMO_CONFIG, workdir, cookies={}) if cookies else DEMO_CONFIG
    sp = start_fedns(config, workdir, workers=workers)
    try:
        names = fuzzing.names_of_config(config)
        fuzzing.wait_federated(sp.host, sp.port, names, 20.0)
        started = children(sp.proc.pid) if workers > 1 else [sp.proc.pid]
        tcp = int(packets * tcp_share)
        t0 = time.monotonic()
        last = [t0]

        def progress(t: fuzzing.Tally) -> None:
            now = time.monotonic()
            if now - last[0] >= 15:
                last[0] = now
                sent = sum(t.sent.values())
                print(
                    f"  {workers} worker(s): {sent:,} sent, {sum(t.replies.values()):,} replies, "
                    f"{sum(t.faults.values())} faults, {sent / (now - t0):,.0f} packets/s",
                    flush=True,
                )

        with fuzzing.LiveFuzzer(sp.addr, names, seed=seed + workers) as f:
            tally = fuzzing.run(f, packets - tcp, tcp, alive=sp.alive, progress=progress)
        seconds = time.monotonic() - t0
        log = sp.output()
        crashes = log.count("worker_died") + (0 if sp.alive() else 1)
        if workers > 1 and sp.alive() and children(sp.proc.pid) != started:
            crashes = max(crashes, 1)
        return Outcome(
            workers,
            tally,
            seconds,
            crashes,
            log.count("Traceback"),
            len(fuzzing.log_faults(log)),
            fuzzing.log_excerpt(log),
        )
    finally:
        sp.stop()


def markdown(outcomes: list[Outcome], argv: list[str]) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    rev = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = [
        "## Fuzzing (benchmarks/fuzz.py)" + (", DNS cookies on" if "--cookies" in argv else ""),
        "",
        f"`{shlex.join(['python3', 'benchmarks/fuzz.py', *argv])}` at {rev or '?'}, {when}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores. fedns on the "
        "demo config; packets from tests/fuzzing.py; every reply tied to its query checked "
        "by dnspython; the probe answered after every batch.",
        "",
        "| workers | packets | UDP | TCP messages | replies checked | reply faults "
        "| probe failures | crashes | tracebacks | exception lines | packets/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        t = o.tally
        tcp = fuzzing.tcp_sent(t)
        sent = sum(t.sent.values())
        lines.append(
            f"| {o.workers} | {sent:,} | {sent - tcp:,} | {tcp:,} | {sum(t.replies.values()):,} "
            f"| {sum(t.faults.values())} | {len(t.probe_failures)} | {o.crashes} "
            f"| {o.tracebacks} | {o.exception_lines} | {sent / o.seconds:,.0f} |"
        )
    kinds = list(dict.fromkeys(k for o in outcomes for k, _, _ in fuzzing.summary_rows(o.tally)))
    head = " | ".join(f"{o.workers} worker(s): sent / replies" for o in outcomes)
    lines += ["", f"| kind | {head} |", "|---|" + "---|" * len(outcomes)]
    for k in kinds:
        cells = " | ".join(f"{o.tally.sent[k]:,} / {o.tally.replies[k]:,}" for o in outcomes)
        lines.append(f"| {k} | {cells} |")
    rcodes = " ".join(
        f"{o.workers}w: " + ", ".join(f"{k} {v:,}" for k, v in o.tally.rcodes.most_common())
        for o in outcomes
    )
    lines += ["", f"Reply RCODEs: {rcodes}.", ""]
    for o in outcomes:
        for e in o.tally.examples[:10] + o.tally.probe_failures[:10]:
            lines.append(f"- {o.workers} worker(s): `{e}`")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packets", type=int, default=FULL, help="per worker count (UDP + TCP)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--tcp-share", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=7766)
    ap.add_argument(
        "--cookies", action="store_true", help="the demo with cookies: {} (DNS cookies on)"
    )
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = ap.parse_args()
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="fedns-fuzz-") as t:
        for w in (int(x) for x in args.workers.split(",")):
            print(f"fedns, {w} worker(s): {args.packets:,} packets", flush=True)
            outcomes.append(one(w, args.packets, args.tcp_share, args.seed, Path(t), args.cookies))
    text = markdown(outcomes, sys.argv[1:])
    print()
    print(text)
    for o in outcomes:
        if o.excerpt:
            print(f"fedns log, {o.workers} worker(s), at its first fault:\n{o.excerpt}\n")
    if args.packets >= FULL and not args.no_write:
        replace_section("fuzz-cookies" if args.cookies else "fuzz", text)
        print("written to benchmarks/RESULTS.md")
    bad = any(
        o.crashes or o.tracebacks or o.exception_lines or o.tally.faults or o.tally.probe_failures
        for o in outcomes
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
