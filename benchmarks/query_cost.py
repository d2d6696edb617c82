#!/usr/bin/env python3
"""What the serving paths cost per query, in instructions (callgrind): deterministic,
so it can run while the machine does other work, and it compares source trees.

Each path runs the real code in process on the demo config (``zones/demo.yaml``,
its static federation synced), under ``valgrind --tool=callgrind
--separate-threads=yes`` with ``PYTHONHASHSEED=0``, twice with different query
counts; the difference divided by the queries between them is the cost of one
query (start-up and the idle wait cancel out):

- ``udp-*``: ``MmsgServer``, the batched UDP thread, on a loopback socket whose
  receive queue is filled with the queries before the thread starts (so every
  ``recvmmsg`` takes a full batch of 64); its thread's instructions alone.
  ``udp-repeat``: one question again and again (the reply cache);
  ``udp-memo``: a federated name without ECS (its router's memo, by source);
  ``udp-below``: a new name below the zone each time (the negative cache).
- ``call-*``: ``Runtime.answer``, what TCP and uvloop UDP call per query, in a
  loop, as TCP asks (so from ``tcp_replies`` once asked): ``call-static`` a zone
  name, ``call-memo`` a federated one.

``--query-sample R`` sets ``log.query_sample`` (the query log); ``--baseline DIR``
runs the same in another source tree (``git archive REV | tar -x -C DIR``) and
prints the ratio. Prints a Markdown table; writes nothing.

Usage: python3 benchmarks/query_cost.py [--baseline DIR] [--query-sample R] [--paths P,...]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PATHS = {  # name: (mode, question name, fewer, more)
    "udp-repeat": ("mmsg", "www.global.example.test", 4160, 8256),
    "udp-memo": ("mmsg", "cart.shop.global.example.test", 4160, 8256),
    "udp-below": ("mmsg", "nx%d.global.example.test", 4160, 8256),
    "call-static": ("call", "www.global.example.test", 1, 20001),
    "call-memo": ("call", "cart.shop.global.example.test", 1, 20001),
}


def query(name: str, qid: int) -> bytes:
    from dnslib import EDNS0, DNSRecord

    q = DNSRecord.question(name.replace("%d", str(qid)) if "%d" in name else name, "A")
    q.add_ar(EDNS0(udp_len=1232))
    q.header.id = qid & 0xFFFF
    return bytes(q.pack())


async def serve(mode: str, n: int, name: str, config: str | None) -> None:
    """One run, in the process valgrind counts."""
    from resolver import logs
    from resolver.app import load_instance
    from resolver.config import load_config
    from resolver.federation.control import Control
    from resolver.serve.runtime import Runtime

    logs.setup("info", json=True)
    cfg = load_config(Path(config)) if config else load_config()
    inst = load_instance(cfg)
    rt = Runtime(inst.table, cfg)
    if inst.fed is not None:
        control = Control(inst.fed, inst.apply)
        await control.start()
        await control.registry.wait_synced(10)
        control.release()
        await asyncio.sleep(0.2)
    rt.mark_synced()
    if mode == "call":
        data = [query(name, i) for i in range(256)]
        addr = ("127.0.0.1", 5353)
        for i in range(n):
            rt.answer(data[i & 255], True, addr)
        return
    from resolver.serve.udp import MmsgServer

    so_rcvbufforce = 33  # <asm-generic/socket.h>: past rmem_max, so the queue holds them all
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (s, c):
        sock.setsockopt(socket.SOL_SOCKET, so_rcvbufforce, 64 << 20)
        sock.bind(("127.0.0.1", 0))
    for i in range(n):
        c.sendto(query(name, i), s.getsockname())
    srv = MmsgServer(rt, s)
    srv.start()
    while rt.stats.udp_queries < n:
        time.sleep(0.2)
    time.sleep(0.5)
    srv.close()


def instructions(tree: Path, mode: str, n: int, name: str, config: str | None, tmp: Path) -> int:
    out = tmp / f"cg.{os.getpid()}.{time.monotonic_ns()}"
    argv = ["valgrind", "--tool=callgrind", "--separate-threads=yes", f"--callgrind-out-file={out}",
            sys.executable, str(Path(__file__).resolve()), "--run", mode, str(n), name]
    if config:
        argv.append(config)
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
    subprocess.run(argv, env=env, cwd=tree, check=True, capture_output=True, timeout=3600)
    # Thread 1 is the main thread (the call paths), thread 2 the UDP thread.
    dump = Path(f"{out}-{'02' if mode == 'mmsg' else '01'}")
    m = re.search(r"^(?:summary|totals):\s+(\d+)", dump.read_text(errors="replace"), re.M)
    for f in tmp.glob(f"{out.name}*"):
        f.unlink()
    if m is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(m.group(1))


def per_query(tree: Path, path: str, config: str | None, tmp: Path) -> float:
    mode, name, fewer, more = PATHS[path]
    a = instructions(tree, mode, fewer, name, config, tmp)
    b = instructions(tree, mode, more, name, config, tmp)
    return (b - a) / (more - fewer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", type=Path, help="another source tree to compare with")
    ap.add_argument("--query-sample", type=float, help="log.query_sample for this tree's runs")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated: " + ", ".join(PATHS))
    ap.add_argument("--run", nargs="+", help=argparse.SUPPRESS)  # one run, under valgrind
    args = ap.parse_args(argv)
    if args.run:
        mode, n, name, *config = args.run
        asyncio.run(serve(mode, int(n), name, config[0] if config else None))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind not found (apt: valgrind)")
        return 2
    paths = [p for p in args.paths.split(",") if p]
    with tempfile.TemporaryDirectory(prefix="fedns-cost-") as d:
        tmp = Path(d)
        config = None
        if args.query_sample is not None:
            import yaml

            for f in (REPO / "zones").iterdir():
                shutil.copy(f, tmp / f.name)
            doc = yaml.safe_load((tmp / "demo.yaml").read_text())
            doc["log"] = {"query_sample": args.query_sample}
            (tmp / "demo.yaml").write_text(yaml.safe_dump(doc))
            config = str(tmp / "demo.yaml")
        rows = []
        for p in paths:
            now = per_query(REPO, p, config, tmp)
            base = per_query(args.baseline, p, None, tmp) if args.baseline else None
            rows.append((p, now, base))
            print(f"{p}: {now:,.0f}" + (f" (baseline {base:,.0f})" if base else ""), flush=True)
    cmd = "python3 benchmarks/query_cost.py" + (" --baseline BASELINE_TREE" if args.baseline else "")
    if args.query_sample is not None:
        cmd += f" --query-sample {args.query_sample:g}"
    print(f"\n`{cmd}` (user-space instructions per query, callgrind)\n")
    print("| path | this tree |" + (" baseline | ratio |" if args.baseline else ""))
    print("|---|---:|" + ("---:|---:|" if args.baseline else ""))
    for p, now, base in rows:
        extra = f" {base:,.0f} | {now / base:.3f}x |" if base else ""
        print(f"| {p} | {now:,.0f} |{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
