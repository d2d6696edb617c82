#!/usr/bin/env python3
"""TCP latency while UDP is saturated, per UDP transport (``dns.udp``).

With ``udp: mmsg`` a thread answers UDP and the event loop thread answers
TCP; both need the GIL. This measures what that costs a TCP client: fedns
(1 worker) serves the demo zone, dnsperf saturates it over UDP, and one
persistent TCP connection sends a query, waits for the reply, and repeats.
Printed per mode: TCP round trips p50 / p99 / max, and dnsperf's UDP qps.

Usage: python3 benchmarks/tcp_under_udp.py [--modes mmsg,uvloop] [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import authoritative as bench  # the same server starters and query files


def tcp_round_trips(port: int, stop: threading.Event, out: list[float]) -> None:
    q = bench.dns_query("web.global.example.test.", 1)
    frame = struct.pack(">H", len(q)) + q
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not stop.is_set():
            t = time.perf_counter()
            s.sendall(frame)
            (n,) = struct.unpack(">H", s.recv(2, socket.MSG_WAITALL))
            s.recv(n, socket.MSG_WAITALL)
            out.append(time.perf_counter() - t)
            time.sleep(0.002)  # a client asking now and then, not a second load


def one(mode: str, tmp: Path, files: dict[str, Path], seconds: float) -> tuple[list[float], float]:
    key = f"fedns1-{mode}"
    bench.SERVERS[key] = (key, bench.start_fedns(1, udp=mode))
    with bench.running(key, tmp) as srv:
        bench.run_dnsperf(srv, files["positive"], 1, None)  # warm-up
        rtts: list[float] = []
        stop = threading.Event()
        t = threading.Thread(target=tcp_round_trips, args=(srv.port, stop, rtts))
        perf = subprocess.Popen(
            bench.dnsperf_argv(srv.port, files["positive"], seconds, None),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(0.5)
        t.start()
        out, _ = perf.communicate(timeout=seconds + 30)
        stop.set()
        t.join()
    return rtts, bench.parse_dnsperf(out).qps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--modes", default="mmsg,uvloop")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()
    if shutil.which("dnsperf") is None:
        print("missing dnsperf: apt-get install dnsperf", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    got: dict[str, list[float]] = {m: [] for m in modes}
    qps: dict[str, list[float]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="fedns-tcplat-") as t:
        tmp = Path(t)
        shutil.copy(bench.ZONE_FILE, tmp / bench.ZONE_FILE.name)
        files = bench.write_queries(tmp, 1000)
        for r in range(args.rounds):
            for m in modes:  # interleaved, so drift on a shared machine hits every mode
                rtts, q = one(m, tmp, files, args.seconds)
                got[m] += rtts
                qps[m].append(q)
                print(f"[round {r + 1}] {m}: {len(rtts)} TCP queries, UDP {q:,.0f} qps", flush=True)
    print("\n| udp transport | UDP qps (dnsperf, saturating) | TCP queries | TCP p50 | p99 | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for m in modes:
        v = sorted(got[m])
        p50, p99 = (v[min(len(v) - 1, int(f * len(v)))] * 1e3 for f in (0.5, 0.99))
        print(
            f"| {m} | {statistics.median(qps[m]):,.0f} | {len(v)} | {p50:.2f} ms "
            f"| {p99:.2f} ms | {v[-1] * 1e3:.2f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
