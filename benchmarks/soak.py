#!/usr/bin/env python3
"""Soak: fedns for minutes at half its measured saturation, with registry churn and health flips.

The world is the demo's (``zones/demo.yaml``: its zone file, regions, localities,
policies and services) with one change: its three clusters (east, west, eu) are
fake Kubernetes API servers (``tests/fakekube.py``, real HTTP on loopback, on a
thread of this process), watched by an unmodified ``fedns serve`` through a
kubeconfig. The demo's services are put into them as Services and EndpointSlices
(dual-stack endpoints as an IPv4 and an IPv6 slice joined by their pod).

Besides them, a pool of 40 names ``s0`` .. ``s39`` in namespace ``soak``
(annotation ``fedns.io/policy: all``) churns every second (``--churn-interval``):
a service is created (its EndpointSlice, then the Service) in one random cluster,
the oldest of the pool deleted (Service, then slice), an endpoint added to or
removed from one service, and one endpoint's readiness toggled (a health flip).

The run:

1. the demo itself (``fedns serve`` of ``zones/demo.yaml``, static clusters) is
   asked every checked demo name once: those answers are the reference;
2. the soak fedns starts (``--workers N``, 1 by default) and must answer them alike;
3. saturation: ``dnsperf -c 4 -T 1 -q 200 -l 10`` over the query mix, churn off;
4. the soak: dnsperf at half that (``--qps`` to choose), in segments of
   ``--sample`` seconds, churn and flips on, while a checker in this process asks
   every churned and demo name in turn (``--check-qps``, dnspython) and compares
   each answer with the truth this script holds: a churned name must answer the
   ready endpoints of its service (all of them when none is ready: fail-open),
   NXDOMAIN when it has no service, as the truth was at some moment between
   ``--lag`` seconds before the query and its reply (NODATA is accepted too while a
   create or delete is in flight, whose two objects come on two watch streams);
   a demo name must answer what the demo answered;
5. RSS (VmRSS) of every fedns process at the start, after every segment and at
   the end; the warm-up (``--warmup`` seconds) ends at a sample, which is the
   baseline.

The query mix (a file for dnsperf): the zone's positive answers
(``authoritative.POSITIVE``), the demo's federated names (A, AAAA, SRV, per
cluster), the churned names, and 20,000 random nonexistent names.

It exits 1 on any error: a query lost (dnsperf's timeouts or the checker's), an
RCODE other than NOERROR and NXDOMAIN, a wrong answer, fedns dying, or the RSS of a
fedns process growing more than 10 % over its baseline after the warm-up.
Results print as they come and, for a run of at least 10 minutes, replace the
soak section of benchmarks/RESULTS.md.

Usage: python3 benchmarks/soak.py [--minutes 10] [--workers 1] [--qps N]
                                  [--warmup 60] [--sample 60] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdatatype  # noqa: E402
from authoritative import POSITIVE, git_rev, machine, parse_dnsperf, proc_tree  # noqa: E402
from results import replace_section  # noqa: E402

DEMO = REPO / "zones" / "demo.yaml"
ORIGIN = "global.example.test."
POOL = 40  # churned names s0 .. s39 in namespace soak
LIVE = (15, 30)  # the pool keeps between this many live services
FLOOD_NAMES = 20_000
RSS_GROWTH = 0.10


def say(msg: str) -> None:
    print(msg, flush=True)


# -- the truth about the churned names ------------------------------------------------------------


def expected(endpoints: list[tuple[str, bool]] | None) -> str | frozenset[str]:
    """What ``s<i>.soak.<zone> A`` answers under policy all: the ready endpoints, all of
    them when none is ready (fail-open), NODATA with none, NXDOMAIN without a service."""
    if endpoints is None:
        return "NXDOMAIN"
    ready = frozenset(a for a, ok in endpoints if ok)
    every = frozenset(a for a, _ in endpoints)
    return ready or every or "NODATA"


@dataclass
class Truth:
    """Per churned name, the history of what it should answer: (since, answer, churn op)."""

    history: dict[str, list[tuple[float, str | frozenset[str], bool]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, name: str, answer: str | frozenset[str], create_or_delete: bool) -> None:
        now = time.monotonic()
        with self.lock:
            h = self.history.setdefault(name, [])
            h.append((now, answer, create_or_delete))
            while len(h) > 2 and h[1][0] < now - 120:  # keep the state 2 minutes back
                h.pop(0)

    def acceptable(self, name: str, since: float, until: float) -> set[str | frozenset[str]]:
        """Every answer the name had at some moment in [since, until]."""
        with self.lock:
            h = list(self.history.get(name, []))
        ok: set[str | frozenset[str]] = set()
        before = [x for x in h if x[0] <= since]
        if before:
            ok.add(before[-1][1])
        for t, answer, moved in h:
            if since < t <= until:
                ok.add(answer)
                if moved:
                    ok.add("NODATA")
        return ok


# -- the fake clusters ---------------------------------------------------------------------------


class World:
    """The fake API servers and the churn over them. Every method runs on their loop."""

    def __init__(self, fakes: Any, truth: Truth, rng: random.Random) -> None:
        self.fakes, self.truth, self.rng = fakes, truth, rng
        self.clusters = list(fakes.kubes)
        self.live: dict[
            str, tuple[str, list[tuple[str, bool]]]
        ] = {}  # name -> (cluster, endpoints)
        self.order: list[str] = []  # live names, oldest first
        self.next_address = 0
        self.ops = {"created": 0, "deleted": 0, "endpoint changes": 0, "health flips": 0}

    def address(self, cluster: str) -> str:
        self.next_address += 1
        n = self.next_address % 65000 + 1
        return f"127.{10 + self.clusters.index(cluster)}.{n // 256}.{n % 256}"

    def fqdn(self, name: str) -> str:
        return f"{name}.soak.{ORIGIN}"

    def _slice(self, name: str) -> None:
        from fakekube import endpoint

        cluster, eps = self.live[name]
        self.fakes[cluster].put_slice(
            "soak",
            f"{name}-a",
            name,
            [endpoint(a, ready=ok, pod=f"{name}-{a}") for a, ok in eps],
            ports=[("http", 8080, "TCP")],
        )

    def _note(self, name: str, moved: bool = False) -> None:
        held = self.live.get(name)
        self.truth.record(self.fqdn(name), expected(held[1] if held else None), moved)

    def create(self, name: str | None = None) -> None:
        free = [f"s{i}" for i in range(POOL) if f"s{i}" not in self.live]
        name = name or self.rng.choice(free)
        cluster = self.rng.choice(self.clusters)
        eps = [
            (self.address(cluster), self.rng.random() < 0.7) for _ in range(self.rng.randint(1, 3))
        ]
        self.live[name] = (cluster, eps)
        self.order.append(name)
        self._slice(name)  # the slice first, so the Service arrives with endpoints
        self.fakes[cluster].put_service(
            "soak", name, annotations={"fedns.io/policy": "all"}, ports=[("http", 80, "TCP")]
        )
        self._note(name, moved=True)
        self.ops["created"] += 1

    def delete(self) -> None:
        from fakekube import ENDPOINTSLICES, SERVICES

        name = self.order.pop(0)
        cluster, _ = self.live.pop(name)
        self.fakes[cluster].delete(SERVICES, "soak", name)
        self.fakes[cluster].delete(ENDPOINTSLICES, "soak", f"{name}-a")
        self._note(name, moved=True)
        self.ops["deleted"] += 1

    def change_endpoints(self) -> None:
        name = self.rng.choice(self.order)
        cluster, eps = self.live[name]
        if len(eps) > 1 and (len(eps) >= 4 or self.rng.random() < 0.5):
            eps.pop(self.rng.randrange(len(eps)))
        else:
            eps.append((self.address(cluster), True))
        self._slice(name)
        self._note(name)
        self.ops["endpoint changes"] += 1

    def flip(self) -> None:
        name = self.rng.choice(self.order)
        _, eps = self.live[name]
        i = self.rng.randrange(len(eps))
        eps[i] = (eps[i][0], not eps[i][1])
        self._slice(name)
        self._note(name)
        self.ops["health flips"] += 1

    def tick(self) -> None:
        """One second of churn."""
        if len(self.live) < LIVE[1]:
            self.create()
        if len(self.live) > LIVE[0]:
            self.delete()
        self.change_endpoints()
        self.flip()

    def seed(self, demo: dict[str, Any]) -> None:
        """The demo's services, and the first live names of the pool."""
        from fakekube import endpoint

        for svc in demo["federation"]["services"]:
            ports = [(p["name"], p["port"], p["protocol"]) for p in svc.get("ports", [])]
            for cluster, eps in svc["endpoints"].items():
                k = self.fakes[cluster]
                k.put_service(
                    svc["namespace"], svc["name"], ports=ports, annotations=svc.get("annotations")
                )
                for family, v6 in (("IPv4", False), ("IPv6", True)):
                    slice_eps = [
                        endpoint(
                            a,
                            ready=e.get("ready", True),
                            hostname=e.get("hostname"),
                            zone=e.get("zone"),
                            pod=f"{svc['name']}-{i}",
                        )
                        for i, e in enumerate(eps)
                        for a in e["addresses"]
                        if (":" in a) == v6
                    ]
                    if slice_eps:
                        k.put_slice(
                            svc["namespace"],
                            f"{svc['name']}-{family.lower()}",
                            svc["name"],
                            slice_eps,
                            ports=ports,
                            address_type=family,
                        )
        for i in range(POOL):
            self._note(f"s{i}")  # NXDOMAIN until created
        for i in range((LIVE[0] + LIVE[1]) // 2):
            self.create(f"s{i}")


# -- fedns, dnsperf, /proc ---------------------------------------------------------------------------


def soak_config(work: Path, fakes: Any, demo: dict[str, Any]) -> Path:
    """The demo's config with its clusters replaced by the fake API servers."""
    from fakekube import federation_config

    doc = json.loads(json.dumps(demo))
    doc.pop("dns", None)
    zone = (DEMO.parent / doc["zones"][0]["file"]).resolve()
    doc["zones"][0]["file"] = str(zone)
    fed = federation_config(fakes.kubes, work)
    for c, mine in zip(doc["federation"]["clusters"], fed["clusters"], strict=True):
        c.update(kubeconfig=mine["kubeconfig"], context=mine["context"])
    doc["federation"].pop("services")
    path = work / "soak.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def demo_names(demo: dict[str, Any]) -> list[tuple[str, str]]:
    """Every demo name the checker asks: zone answers and the federated services."""
    names = [(ORIGIN if n == "@" else f"{n}.{ORIGIN}", t) for n, t in POSITIVE]
    for svc in demo["federation"]["services"]:
        base = f"{svc['name']}.{svc['namespace']}.{ORIGIN}"
        names += [(base, "A"), (base, "AAAA")]
        names += [(f"{c}.{base}", "A") for c in svc["endpoints"]]
        names += [(f"_{p['name']}._{p['protocol'].lower()}.{base}", "SRV") for p in svc["ports"]]
    return names


def reply_key(r: dns.message.Message) -> tuple[Any, ...]:
    """What must not change in a reply: RCODE and the records of each section, TTLs aside."""

    def section(rrsets: list[Any]) -> frozenset[str]:
        return frozenset(
            f"{rr.name} {dns.rdatatype.to_text(rr.rdtype)} {rd}" for rr in rrsets for rd in rr
        )

    return (r.rcode(), section(r.answer), section(r.authority))


def ask(
    port: int, name: str, qtype: str, timeout: float = 2.0, sock: socket.socket | None = None
) -> dns.message.Message:
    q = dns.message.make_query(name, qtype, use_edns=0)
    # A reply that comes after its timeout is skipped when the next query reads the socket.
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=timeout, sock=sock, ignore_errors=True)


def reference(tmp: Path, names: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The demo's own answers (``fedns serve`` of zones/demo.yaml, static clusters)."""
    from servers import start_fedns

    sp = start_fedns(DEMO, tmp / "demo")
    try:
        return {(n, t): reply_key(ask(sp.port, n, t)) for n, t in names}
    finally:
        sp.stop()


def query_file(tmp: Path, names: list[tuple[str, str]], rng: random.Random) -> Path:
    # About half zone and demo answers, a sixth churned names, a quarter nonexistent.
    lines = [f"{n} {t}" for n, t in names] * (FLOOD_NAMES * 2 // len(names))
    lines += [f"s{i}.soak.{ORIGIN} A" for i in range(POOL)] * (FLOOD_NAMES * 2 // 3 // POOL)
    lines += [f"r{rng.getrandbits(40):010x}.{ORIGIN} A" for _ in range(FLOOD_NAMES)]
    rng.shuffle(lines)
    path = tmp / "queries.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def dnsperf(port: int, queries: Path, seconds: float, qps: int | None) -> dict[str, Any]:
    argv = [
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        str(port),
        "-d",
        str(queries),
        "-c",
        "4",
        "-T",
        "1",
        "-q",
        "200",
        "-l",
        f"{seconds:g}",
    ]
    if qps:
        argv += ["-Q", str(qps)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"dnsperf failed ({out.returncode}): {out.stderr or out.stdout}")
    p = parse_dnsperf(out.stdout)
    return {
        "sent": p.sent,
        "completed": p.completed,
        "lost": p.lost,
        "qps": p.qps,
        "latency_ms": p.latency_ms,
        "rcodes": p.rcodes,
    }


def rss_mb(pids: list[int]) -> dict[int, float]:
    out = {}
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[p] = int(line.split()[1]) / 1024
    return out


# -- the checker -----------------------------------------------------------------------------------


@dataclass
class Checked:
    asked: int = 0
    right: int = 0
    wrong: int = 0
    timeouts: int = 0
    samples: list[str] = field(default_factory=list)

    def bad(self, text: str) -> None:
        if len(self.samples) < 20:
            self.samples.append(text)


def a_answer(r: dns.message.Message) -> str | frozenset[str]:
    got = frozenset(rd.to_text() for rr in r.answer if rr.rdtype == dns.rdatatype.A for rd in rr)
    if got:
        return got
    return "NODATA" if r.rcode() == dns.rcode.NOERROR else dns.rcode.to_text(r.rcode())


def checker(
    port: int,
    world: World,
    truth: Truth,
    ref: dict[tuple[str, str], tuple[Any, ...]],
    qps: float,
    lag: float,
    stop: threading.Event,
    out: Checked,
) -> None:
    """Ask every churned and demo name in turn, ``qps`` a second; judge every answer."""
    demo = list(ref)
    pool = [world.fqdn(f"s{i}") for i in range(POOL)]
    # One socket throughout, as dnsperf's: a new source port per query would fill
    # fedns's bounded memo of client addresses (65,536) over the first minutes and
    # look like growth.
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    i = 0
    nxt = time.monotonic()
    while not stop.is_set():
        i += 1
        churned = i % 3 != 0
        name, qtype = (pool[i % POOL], "A") if churned else demo[i % len(demo)]
        t0 = time.monotonic()
        try:
            r = ask(port, name, qtype, sock=sock)
        except dns.exception.Timeout:
            out.asked += 1
            out.timeouts += 1
            out.bad(f"timeout: {name} {qtype}")
            continue
        t1 = time.monotonic()
        out.asked += 1
        if churned:
            got = a_answer(r)
            ok = truth.acceptable(name, t0 - lag, t1)
            if got in ok:
                out.right += 1
            else:
                out.wrong += 1
                out.bad(
                    f"{name} A answered {sorted(got) if isinstance(got, frozenset) else got}, "
                    f"truth in the window: {[sorted(x) if isinstance(x, frozenset) else x for x in ok]}"
                )
        elif reply_key(r) == ref[(name, qtype)]:
            out.right += 1
        else:
            out.wrong += 1
            out.bad(f"{name} {qtype} answered {reply_key(r)}, the demo {ref[(name, qtype)]}")
        nxt += 1 / qps
        pause = nxt - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        else:
            nxt = time.monotonic()
    sock.close()


# -- the run ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def churning(fakes: Any, world: World, interval: float) -> Iterator[threading.Event]:
    stop = threading.Event()

    def run() -> None:
        nxt = time.monotonic()
        while not stop.is_set():
            fakes.call(world.tick)
            nxt += interval
            stop.wait(max(0.0, nxt - time.monotonic()))

    t = threading.Thread(target=run, name="churn", daemon=True)
    t.start()
    try:
        yield stop
    finally:
        stop.set()
        t.join(30)


def converge(
    port: int, world: World, fakes: Any, ref: dict[tuple[str, str], Any], within: float
) -> list[str]:
    """After the churn: every churned name answers its last truth, every demo name the demo's."""
    end = time.monotonic() + within
    while True:
        live = fakes.call(lambda: {n: list(eps) for n, (_, eps) in world.live.items()})
        diffs = []
        for i in range(POOL):
            name = f"s{i}"
            want = expected(live.get(name))
            got = a_answer(ask(port, world.fqdn(name), "A"))
            if got != want:
                diffs.append(f"{name}: {got} != {want}")
        for (n, t), key in ref.items():
            if reply_key(ask(port, n, t)) != key:
                diffs.append(f"{n} {t} differs from the demo")
        if not diffs or time.monotonic() > end:
            return diffs
        time.sleep(0.2)


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from fakekube import ThreadedFakeKubes
    from servers import free_port, start_fedns

    demo = yaml.safe_load(DEMO.read_text())
    names = demo_names(demo)
    rng = random.Random(args.seed)
    res: dict[str, Any] = {"errors": []}
    say("== the demo's own answers (zones/demo.yaml, static clusters): the reference")
    ref = reference(tmp, names)
    clusters = [c["name"] for c in demo["federation"]["clusters"]]
    truth = Truth()
    # Bookmarks about once a minute, as a real API server sends them.
    with ThreadedFakeKubes(clusters, bookmark_interval=60.0) as fakes:
        world = World(fakes, truth, rng)
        fakes.call(world.seed, demo)
        cfg = soak_config(tmp, fakes, demo)
        queries = query_file(tmp, names, rng)
        admin = f"127.0.0.1:{free_port()}"
        say(f"== fedns --workers {args.workers}, watching {len(clusters)} fake API servers")
        sp = start_fedns(
            cfg, tmp, workers=args.workers, extra_args=("--admin", admin, "--log-format", "json")
        )
        try:
            end = time.monotonic() + 30
            while urllib_status(f"http://{admin}/readyz") != 200:
                if time.monotonic() > end:
                    raise RuntimeError(f"fedns not ready after 30 s:\n{sp.output()[-3000:]}")
                time.sleep(0.1)
            diffs = converge(sp.port, world, fakes, ref, 30)
            if diffs:
                raise RuntimeError(
                    "fedns fed by the fakes does not answer as the demo: " + "; ".join(diffs[:10])
                )
            pids = proc_tree(sp.proc.pid)
            res["pids"] = pids
            say(f"   answering as the demo; processes {pids}")

            if args.qps:
                res["saturation"] = None
                qps = args.qps
            else:
                say(
                    f"== saturation: dnsperf -c 4 -T 1 -q 200 -l {args.saturation_seconds:g}, churn off"
                )
                sat = dnsperf(sp.port, queries, args.saturation_seconds, None)
                res["saturation"] = sat
                qps = int(sat["qps"] / 2)
                say(
                    f"   {sat['qps']:,.0f} qps (lost {sat['lost']}); the soak runs at half: {qps:,} qps"
                )
            res["qps"] = qps

            samples: list[dict[str, Any]] = []
            start_rss = rss_mb(pids)
            samples.append({"t": 0.0, "rss": start_rss, "ops": dict(world.ops)})
            say(
                f"== soak: {args.minutes:g} min at {qps:,} qps, churn every {args.churn_interval:g} s; "
                f"RSS at start {fmt_rss(start_rss)}"
            )
            checked = Checked()
            stop = threading.Event()
            chk = threading.Thread(
                target=checker,
                args=(sp.port, world, truth, ref, args.check_qps, args.lag, stop, checked),
                daemon=True,
            )
            total = args.minutes * 60
            t0 = time.monotonic()
            segments = []
            with churning(fakes, world, args.churn_interval):
                chk.start()
                while (done := time.monotonic() - t0) < total - 1:
                    seg = dnsperf(sp.port, queries, min(args.sample, total - done), qps)
                    segments.append(seg)
                    s = {
                        "t": time.monotonic() - t0,
                        "rss": rss_mb(pids),
                        "ops": dict(world.ops),
                        "dnsperf": seg,
                        "checked": (checked.asked, checked.wrong, checked.timeouts),
                    }
                    samples.append(s)
                    say(
                        f"   {s['t']:6.0f} s: {seg['completed']:,} answers at {seg['qps']:,.0f} qps, "
                        f"lost {seg['lost']}, rcodes {seg['rcodes']}; checker {checked.asked:,} asked, "
                        f"{checked.wrong} wrong, {checked.timeouts} timeouts; RSS {fmt_rss(s['rss'])}"
                    )
                    if not sp.alive():
                        res["errors"].append(f"fedns exited: {sp.output()[-2000:]}")
                        break
                stop.set()
                chk.join(10)
            res["diffs"] = converge(sp.port, world, fakes, ref, 10)
            res.update(
                samples=samples,
                segments=segments,
                checked=checked,
                ops=dict(world.ops),
                seconds=time.monotonic() - t0,
                alive=sp.alive(),
                tracebacks=sp.output().count("Traceback"),
            )
        finally:
            sp.stop()
    judge(res, args)
    return res


def urllib_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return int(r.status)
    except OSError as e:
        return getattr(e, "code", None)


def fmt_rss(rss: dict[int, float]) -> str:
    return " + ".join(f"{v:.0f}" for v in rss.values()) + " MB"


def judge(res: dict[str, Any], args: argparse.Namespace) -> None:
    """Every reason the soak failed, into ``res['errors']``."""
    errors = res["errors"]
    segs = res.get("segments", [])
    lost = sum(s["lost"] for s in segs)
    if lost:
        errors.append(f"dnsperf: {lost} queries lost (timed out)")
    other = {}
    for s in segs:
        for rcode, n in s["rcodes"].items():
            if rcode not in ("NOERROR", "NXDOMAIN"):
                other[rcode] = other.get(rcode, 0) + n
    if other:
        errors.append(f"dnsperf: answers with {other}")
    c: Checked = res.get("checked", Checked())
    if c.wrong or c.timeouts:
        errors.append(f"checker: {c.wrong} wrong answers, {c.timeouts} timeouts of {c.asked}")
    if res.get("diffs"):
        errors.append("after the churn: " + "; ".join(res["diffs"][:10]))
    if res.get("tracebacks"):
        errors.append(f"fedns logged {res['tracebacks']} tracebacks")
    if not res.get("alive", False):
        errors.append("fedns was not running at the end")
    samples = res.get("samples", [])
    base = next((s for s in samples if s["t"] >= args.warmup - 1), None)
    res["baseline"] = base
    if base is None:
        errors.append(f"no RSS sample after the {args.warmup:g} s warm-up")
        return
    for s in samples:
        if s["t"] <= base["t"]:
            continue
        for pid, mb in s["rss"].items():
            b = base["rss"].get(pid)
            if b is None:
                errors.append(f"process {pid} appeared after the warm-up (a worker replaced?)")
            elif mb > b * (1 + RSS_GROWTH):
                errors.append(
                    f"RSS of {pid} grew {mb / b - 1:+.1%} after the warm-up "
                    f"({b:.1f} -> {mb:.1f} MB at {s['t']:.0f} s)"
                )


# -- report -----------------------------------------------------------------------------------------


def report(res: dict[str, Any], args: argparse.Namespace, cmd: str) -> str:
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    sat = res.get("saturation")
    c: Checked = res["checked"]
    segs = res["segments"]
    answers = sum(s["completed"] for s in segs)
    lost = sum(s["lost"] for s in segs)
    rcodes: dict[str, int] = {}
    for s in segs:
        for k, v in s["rcodes"].items():
            rcodes[k] = rcodes.get(k, 0) + v
    seeded = res["samples"][0]["ops"]  # the pool's first services, made before the soak
    ops = {k: v - seeded[k] for k, v in res["ops"].items()}
    per_s = {k: v / res["seconds"] for k, v in ops.items()}
    pids = res["pids"]
    lines = [
        "## Soak: minutes at half the saturation, with registry churn and health flips",
        "",
        f"- command: `{cmd}`",
        f"- date: {when}; fedns revision {git_rev()}; machine: {machine()}",
        "- world: the demo (`zones/demo.yaml`: zone file, regions, localities, policies, services) "
        "with its three clusters as fake Kubernetes API servers (`tests/fakekube.py`, in the "
        "script's process) watched by `fedns serve`; 40 more names in namespace `soak` churn "
        f"every {args.churn_interval:g} s: a service created and one deleted, an endpoint added "
        "or removed, a readiness toggled",
        "- load: dnsperf (`-c 4 -T 1 -q 200 -Q QPS`) over the demo's zone and federated names, the "
        f"churned names and {FLOOD_NAMES:,} random nonexistent ones; a checker asks every churned "
        f"and demo name in turn ({args.check_qps:g} qps) and judges each answer against the truth "
        f"(churned names: as it was at some moment from {args.lag:g} s before the query to its "
        "reply; demo names: what the demo itself answers)",
        f"- saturation (churn off, `-l {args.saturation_seconds:g}`): "
        + (
            f"{sat['qps']:,.0f} qps; the soak ran at half, {res['qps']:,} qps"
            if sat
            else f"not measured; `--qps {res['qps']}`"
        ),
        f"- fedns: `--workers {args.workers}`, processes " + ", ".join(f"`{p}`" for p in pids),
        "",
        "| time | RSS per process (MB) | dnsperf answers | qps | lost | checker asked / wrong / timeouts | churn so far (created, deleted, endpoint changes, flips) |",
        "|---:|---|---:|---:|---:|---|---|",
    ]
    for s in res["samples"]:
        d = s.get("dnsperf")
        chk = s.get("checked")
        o = {k: v - seeded[k] for k, v in s["ops"].items()}
        rss = " / ".join(f"{s['rss'].get(p, float('nan')):.1f}" for p in pids)
        lines.append(
            f"| {s['t'] / 60:.1f} min | {rss} | "
            + (f"{d['completed']:,} | {d['qps']:,.0f} | {d['lost']} | " if d else "start | | | ")
            + (f"{chk[0]:,} / {chk[1]} / {chk[2]} | " if chk else " | ")
            + f"{o['created']}, {o['deleted']}, {o['endpoint changes']}, {o['health flips']} |"
        )
    base = res.get("baseline")
    growth = ""
    if base is not None:
        last = res["samples"][-1]
        growth = ", ".join(
            f"{p}: {last['rss'][p] / base['rss'][p] - 1:+.1%}"
            for p in pids
            if p in last["rss"] and p in base["rss"]
        )
    lines += [
        "",
        f"- answers: {answers:,} from dnsperf ({', '.join(f'{k} {v:,}' for k, v in sorted(rcodes.items()))}), "
        f"{lost} lost; checker: {c.asked:,} asked, {c.right:,} right, {c.wrong} wrong, {c.timeouts} timeouts",
        f"- churn: {ops['created']} services created, {ops['deleted']} deleted, {ops['endpoint changes']} "
        f"endpoint changes, {ops['health flips']} health flips "
        f"({per_s['created'] + per_s['deleted'] + per_s['endpoint changes'] + per_s['health flips']:.1f} changes/s)",
        f"- RSS after the {args.warmup:g} s warm-up (the baseline, at {base['t'] / 60:.1f} min) to the end: {growth} "
        f"(limit +{RSS_GROWTH:.0%})"
        if base
        else "- RSS: no baseline",
        "- result: "
        + (
            "**pass**: zero errors, RSS within the limit"
            if not res["errors"]
            else "**FAIL**: " + "; ".join(res["errors"])
        ),
        "",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the soak (default 10)")
    ap.add_argument("--workers", type=int, default=1, help="fedns --workers (default 1)")
    ap.add_argument("--qps", type=int, help="offered load (default: half the measured saturation)")
    ap.add_argument("--saturation-seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline")
    ap.add_argument(
        "--sample", type=float, default=60.0, help="seconds per dnsperf segment and RSS sample"
    )
    ap.add_argument("--churn-interval", type=float, default=1.0)
    ap.add_argument(
        "--check-qps", type=float, default=200.0, help="the checker's queries per second"
    )
    ap.add_argument(
        "--lag", type=float, default=2.0, help="how late an answer may follow the truth"
    )
    ap.add_argument("--seed", type=int, default=20261202)
    ap.add_argument("--workdir", help="keep the configs and fedns's log here (default: a temp dir)")
    ap.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md alone")
    args = ap.parse_args()
    defaults = {
        "minutes": 10.0,
        "workers": 1,
        "qps": None,
        "saturation_seconds": 10.0,
        "warmup": 60.0,
        "sample": 60.0,
        "churn_interval": 1.0,
        "check_qps": 200.0,
        "lag": 2.0,
        "seed": 20261202,
    }
    cmd = "python3 benchmarks/soak.py" + "".join(
        f" --{k.replace('_', '-')} {v:g}"
        if isinstance(v, float)
        else f" --{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k in defaults and v != defaults[k]
    )
    with tempfile.TemporaryDirectory(prefix="fedns-soak-") as d:
        tmp = Path(args.workdir) if args.workdir else Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        res = run(args, tmp)
    text = report(res, args, cmd)
    print()
    print(text)
    c: Checked = res["checked"]
    for line in c.samples:
        say(f"   checker: {line}")
    if args.minutes >= 10 and not args.no_write:
        replace_section("soak", text)
        say("(written to benchmarks/RESULTS.md)")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
