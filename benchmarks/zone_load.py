#!/usr/bin/env python3
"""Loading a big zone file: ``fedns check`` against NSD's ``nsd-checkzone``.

Generates one master file of N records (default 1,000,000: the SOA, NS and
glue at the apex, then one record per name, A, AAAA and TXT in turn, as a
big static zone has them), then runs each checker on it as a child process
and reports its wall time and peak RSS (``os.wait4``'s rusage of that child,
so nothing else on the machine counts). ``fedns check`` loads the zone as
``fedns serve`` does: parse, every record checked, the answer table built.

Goals (issue 10): a 1,000,000-record zone checks in under 20 s and under
1 GB; NSD is the yardstick.

Usage: python3 benchmarks/zone_load.py [--records 1000000] [--rounds 1]
                                       [--fedns-src DIR] [--keep DIR]

``--fedns-src DIR`` runs fedns from another source tree (before/after:
``git archive REV resolver zones | tar -x -C OLD_TREE``). It prints a table;
nothing is written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ORIGIN = "big.example.test."
GOAL_S = 20.0
GOAL_MB = 1024.0


def write_zone(path: Path, records: int) -> None:
    """``records`` records in all: three at the apex, then one per name."""
    with path.open("w") as f:
        f.write(
            f"$ORIGIN {ORIGIN}\n$TTL 300\n"
            "@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n"
            "@ IN NS ns1\nns1 IN A 192.0.2.53\n"
        )
        for i in range(records - 3):
            kind = i % 3
            if kind == 0:
                f.write(f"h{i} 300 IN A 10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}\n")
            elif kind == 1:
                f.write(f"h{i} 300 IN AAAA fd00::{i >> 16:x}:{i & 0xFFFF:x}\n")
            else:
                f.write(f'h{i} 300 IN TXT "record {i}"\n')


def run(argv: list[str], cwd: Path, env: dict[str, str] | None) -> tuple[float, float, int, str]:
    """(seconds, peak RSS in MB, exit code, output) of one child process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return seconds, usage.ru_maxrss / 1024, proc.returncode, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--fedns-src", type=Path, help="run fedns from this source tree")
    ap.add_argument("--keep", type=Path, help="write the zone and config here, and keep them")
    args = ap.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="fedns-zone-load-"))
    work.mkdir(parents=True, exist_ok=True)
    zone = work / "big.example.test.zone"
    t0 = time.monotonic()
    write_zone(zone, args.records)
    print(
        f"zone: {args.records:,} records, {zone.stat().st_size / 1e6:.1f} MB "
        f"(written in {time.monotonic() - t0:.1f} s)"
    )
    cfg = work / "fedns.yaml"
    cfg.write_text(
        f"zones:\n  - {{origin: {ORIGIN}, file: {zone.name}}}\n"
        f"limits: {{max_records: {max(args.records, 1_000_000)}}}\n"
    )
    src = args.fedns_src.resolve() if args.fedns_src else ROOT
    env = {**os.environ, "PYTHONPATH": str(src)}
    checkers: list[tuple[str, list[str], dict[str, str] | None]] = [
        ("fedns check", [sys.executable, "-m", "resolver.cli", "check", "-c", str(cfg)], env)
    ]
    nsd = shutil.which("nsd-checkzone")
    if nsd is None:
        print("nsd-checkzone not found (apt nsd): fedns only")
    else:
        checkers.append(("nsd-checkzone", [nsd, ORIGIN.rstrip("."), str(zone)], None))

    rows = []
    for name, argv, child_env in checkers:
        secs, mbs = [], []
        for _ in range(args.rounds):
            # In the work directory: ``python -m`` puts the current directory first
            # on the path, which would pick this checkout over ``--fedns-src``.
            s, mb, code, out = run(argv, work, child_env)
            if code != 0:
                print(f"{name} failed ({code}):\n{out}")
                return 1
            secs.append(s)
            mbs.append(mb)
        rows.append((name, statistics.median(secs), max(mbs)))
        print(f"{name}: {statistics.median(secs):.2f} s, {max(mbs):.0f} MB peak RSS")

    print()
    print("| checker | records | seconds | peak RSS (MB) |")
    print("|---|---|---|---|")
    for name, s, mb in rows:
        print(f"| {name} | {args.records:,} | {s:.2f} | {mb:.0f} |")
    fedns_s, fedns_mb = rows[0][1], rows[0][2]
    if args.records >= 1_000_000:
        ok = fedns_s < GOAL_S and fedns_mb < GOAL_MB
        print(
            f"\ngoal (< {GOAL_S:.0f} s, < {GOAL_MB:.0f} MB at 1,000,000 records): "
            f"{'met' if ok else 'NOT met'}"
        )
    print(f"command: python3 benchmarks/zone_load.py --records {args.records} --rounds {args.rounds}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
