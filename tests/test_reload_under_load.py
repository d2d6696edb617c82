"""Ten config changes while a client sends over 5,000 queries a second: none lost, none wrong.

The client paces UDP queries over ten sockets (so the kernel's SO_REUSEPORT
hash spreads them over every worker), parses every reply with dnspython and
keeps, per query, when it was sent and what it said. Two things are asked:
``www`` (A, from a zone file mounted ConfigMap-style, changed by swapping
``..data``) and ``id.server`` (CH TXT, from the config's ``server.identity``,
changed by renaming a new file over it, as editors and config tools do).
Two of the changes are invalid (a YAML syntax error, a zone with a CNAME
beside other data) and must leave the previous version serving.

Checked: every query answered; every answer one of the values the config
or zone had at some point up to then, and never older than the previous one;
each valid change served by every reply sent 1 s after it; each attempt in
``/v1/config/history`` with its outcome, the failures counted on ``/metrics``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import socket
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.rdataclass
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from servers import LOOPBACK, ServerProcess, free_port, start_fedns
from test_config_versions import _configmap_write, until

ORIGIN = "load.example.test."
RATE = 6000  # queries a second, both names together
SOCKETS = 10
SPACING = 1.5  # seconds between changes
VISIBLE_WITHIN = 1.0


def zone(v: int, broken: bool = False) -> str:
    text = (
        f"$ORIGIN {ORIGIN}\n$TTL 60\n@ IN SOA ns1 hostmaster {v} 3600 600 86400 30\n"
        f"  IN NS ns1\nns1 IN A 192.0.2.1\nwww IN A 192.0.2.{v}\n"
    )
    return text + ("www IN CNAME ns1\n" if broken else "")


def config(identity: str, zone_file: Path) -> str:
    return yaml.safe_dump({
        "zones": [{"origin": ORIGIN, "file": str(zone_file)}],
        "server": {"identity": identity},
        "state_dir": "state",
    })


def write_renamed(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Sent:
    at: float
    what: str  # "www" or "id"
    answer: str | None = None
    rcode: int | None = None


class Load:
    """A paced UDP client; ``sent[(socket, id)]`` fills in as replies arrive."""

    def __init__(self, addr: tuple[str, int], rate: int) -> None:
        self.addr, self.rate = addr, rate
        self.socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SOCKETS)]
        for s in self.socks:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
            s.connect(addr)
            s.setblocking(False)
        self.base = {
            "www": dns.message.make_query(f"www.{ORIGIN}", "A").to_wire(),
            "id": dns.message.make_query("id.server.", "TXT", rdclass=dns.rdataclass.CH).to_wire(),
        }
        self.sent: dict[tuple[int, int], Sent] = {}
        self.bad: list[str] = []
        self.unsent = 0
        self.stop = threading.Event()  # the sender stops
        self.sent_all = threading.Event()  # ... and has: the receiver drains, then stops
        self.lock = threading.Lock()

    def run_sender(self) -> None:
        n = 0
        start = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while n < due:
                i = n % SOCKETS
                qid = (n // SOCKETS) & 0xFFFF
                what = "www" if n % 2 else "id"
                with self.lock:
                    self.sent[(i, qid)] = Sent(time.monotonic(), what)
                try:
                    self.socks[i].send(qid.to_bytes(2, "big") + self.base[what][2:])
                except BlockingIOError:  # a full send buffer: lost, as it never gets an answer
                    self.unsent += 1
                n += 1
            time.sleep(0.0005)

    def run_receiver(self) -> None:
        import selectors

        sel = selectors.DefaultSelector()
        for i, s in enumerate(self.socks):
            sel.register(s, selectors.EVENT_READ, i)
        # Only once the sender is done: till then a burst it is still sending (its
        # loop sends what is due before it looks at ``stop``) may follow a moment
        # when every query so far was answered.
        while not self.sent_all.is_set() or self.outstanding():
            for key, _ in sel.select(0.2):
                s, i = key.fileobj, key.data
                while True:
                    try:
                        wire = s.recv(4096)  # type: ignore[union-attr]
                    except BlockingIOError:
                        break
                    self.record(i, wire)
            if self.sent_all.is_set() and time.monotonic() > self.drain_until:
                break

    drain_until = float("inf")

    def record(self, i: int, wire: bytes) -> None:
        try:
            m = dns.message.from_wire(wire)
        except Exception as e:
            self.bad.append(f"unparsable reply: {e}")
            return
        with self.lock:
            q = self.sent.get((i, m.id))
        if q is None or q.answer is not None:
            self.bad.append(f"a reply to no query (socket {i} id {m.id})")
            return
        q.rcode = m.rcode()
        q.answer = ",".join(sorted(rd.to_text() for rrset in m.answer for rd in rrset))

    def outstanding(self) -> int:
        with self.lock:
            return sum(1 for q in self.sent.values() if q.answer is None)


def udp_drops(ports: set[int]) -> dict[int, int]:
    """The kernel's count of datagrams dropped at each loopback UDP socket bound to
    one of ``ports`` (receive queue full), from /proc/net/udp; {} where there is none."""
    out: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
            f = line.split()
            port = int(f[1].split(":")[1], 16)
            if port in ports:
                out[port] = out.get(port, 0) + int(f[-1])
    return out


def scrape(admin: tuple[str, int]) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name + json.dumps(s.labels, sort_keys=True)] = s.value
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_ten_changes_under_load(tmp_path: Path, workers: int) -> None:
    mount = tmp_path / "zone"  # the ConfigMap volume holding the zone file
    mount.mkdir()
    _configmap_write(mount, {"www.zone": zone(1)}, 1)
    cfg = tmp_path / "fedns.yaml"
    cfg.write_text(config("v1", mount / "www.zone"))
    admin = (LOOPBACK, free_port())
    sp: ServerProcess = start_fedns(
        cfg, tmp_path, workers=workers, extra_args=("--admin", f"{admin[0]}:{admin[1]}")
    )
    until(lambda: _up(admin), 10, sp.output)
    failed_before = scrape(admin).get('fedns_config_reloads_total{"outcome": "failed"}', 0)

    # (what it does, the www and id values it leads to: None for an invalid change)
    steps: list[tuple[str, Any, tuple[str, str] | None]] = [
        ("zone v2 (..data)", lambda: _configmap_write(mount, {"www.zone": zone(2)}, 2),
         ("192.0.2.2", '"v1"')),
        ("identity v3", lambda: write_renamed(cfg, config("v3", mount / "www.zone")),
         ("192.0.2.2", '"v3"')),
        ("invalid YAML", lambda: write_renamed(cfg, "zones: [{origin: " + ORIGIN + ", file: \n"),
         None),
        ("identity v4", lambda: write_renamed(cfg, config("v4", mount / "www.zone")),
         ("192.0.2.2", '"v4"')),
        ("invalid zone (..data)", lambda: _configmap_write(mount, {"www.zone": zone(5, True)}, 3),
         None),
        ("zone v6 (..data)", lambda: _configmap_write(mount, {"www.zone": zone(6)}, 4),
         ("192.0.2.6", '"v4"')),
        ("identity v7", lambda: write_renamed(cfg, config("v7", mount / "www.zone")),
         ("192.0.2.6", '"v7"')),
        ("zone v8 (..data)", lambda: _configmap_write(mount, {"www.zone": zone(8)}, 5),
         ("192.0.2.8", '"v7"')),
        ("identity v9", lambda: write_renamed(cfg, config("v9", mount / "www.zone")),
         ("192.0.2.8", '"v9"')),
        ("zone v10 (..data)", lambda: _configmap_write(mount, {"www.zone": zone(10)}, 6),
         ("192.0.2.10", '"v9"')),
    ]
    load = Load(sp.addr, RATE)
    threads = [threading.Thread(target=load.run_sender), threading.Thread(target=load.run_receiver)]
    # The client must not be the one that drops: late in a full run this process
    # holds a large heap, and one pass of the collector over it (the sender makes a
    # Sent per query) held the GIL long enough for replies to overflow the
    # receiver's socket buffer. Nothing the load makes is cyclic.
    client_ports = {s.getsockname()[1] for s in load.socks}
    drops_before = udp_drops(client_ports | {sp.addr[1]})
    collecting = gc.isenabled()
    gc.disable()
    for t in threads:
        t.start()
    # (time of the change, the values before it, the values after it)
    timeline: list[tuple[float, tuple[str, str], tuple[str, str]]] = []
    changed: list[float] = []  # when each step was made
    current = ("192.0.2.1", '"v1"')
    try:
        time.sleep(1.0)
        for _what, do, after in steps:
            at = time.monotonic()
            changed.append(at)
            do()
            if after is not None:
                timeline.append((at, current, after))
                current = after
            time.sleep(SPACING)
    finally:
        load.stop.set()
        threads[0].join(30)
        load.drain_until = time.monotonic() + 2.0
        load.sent_all.set()
        threads[1].join(30)
        if collecting:
            gc.enable()
        for s in load.socks:
            s.close()
    try:
        sent = list(load.sent.values())
        duration = max(q.at for q in sent) - min(q.at for q in sent)
        assert len(sent) / duration >= 5000, f"only {len(sent) / duration:.0f} queries/s sent"
        assert not load.bad, load.bad[:5]
        lost = [q for q in sent if q.answer is None]
        if lost:
            # Where they fell (after which change, how long after) and whose kernel
            # queue overflowed: the server's sockets or this client's.
            drops = udp_drops(client_ports | {sp.addr[1]})
            gained = {p: n - drops_before.get(p, 0) for p, n in drops.items()}
            server = gained.pop(sp.addr[1], 0)
            starts = [(at, what) for (what, _, _), at in zip(steps, changed, strict=False)]
            where: dict[str, int] = {}
            for q in lost:
                before = [(at, what) for at, what in starts if at <= q.at]
                at, what = before[-1] if before else (q.at, "before the first change")
                key = f"{what} +{int((q.at - at) * 10) / 10:.1f}s"
                where[key] = where.get(key, 0) + 1
            time.sleep(1.2)  # the workers' counters reach the control process once a second
            m = scrape(admin)
            queries = sum(v for k, v in m.items() if k.startswith("fedns_queries_total"))
            answered = sum(v for k, v in m.items() if k.startswith("fedns_responses_total"))
            raise AssertionError(
                f"{len(lost)} of {len(sent)} queries got no answer; lost {where}; "
                f"{load.unsent} not sent (send buffer full); kernel drops at the server's "
                f"sockets {server}, at the client's {sum(gained.values())}; the server counted "
                f"{queries:.0f} queries and {answered:.0f} responses in all"
            )
        assert all(q.rcode == 0 for q in sent), "every reply is NOERROR"

        def allowed(q: Sent) -> set[str]:
            """What a query sent at ``q.at`` may see: the values in force then, and the
            ones before the last change for VISIBLE_WITHIN after it."""
            k = 0 if q.what == "www" else 1
            ok = {("192.0.2.1", '"v1"')[k]}
            for at, before, after in timeline:
                if q.at >= at:
                    ok = {after[k]} if q.at >= at + VISIBLE_WITHIN else {before[k], after[k]}
            return ok

        wrong = [(round(q.at, 3), q.what, q.answer) for q in sent if q.answer not in allowed(q)]
        assert not wrong, f"{len(wrong)} wrong answers, first: {wrong[:5]}"
        # Each valid change did show (every reply after its window says so, checked above).
        for at, _before, after in timeline:
            later = [q for q in sent if at + VISIBLE_WITHIN <= q.at]
            assert later and all(q.answer in after for q in later[:50]), after

        req = urllib.request.Request(f"http://{admin[0]}:{admin[1]}/v1/config/history")
        with urllib.request.urlopen(req, timeout=10) as r:
            h = json.load(r)["versions"]
        # Newest first; the start, then one entry per change that altered a file.
        outcomes = [(e["trigger"], e["outcome"]) for e in reversed(h)]
        assert outcomes[0] == ("start", "applied")
        assert outcomes[1:] == [("file", "failed" if a is None else "applied") for _, _, a in steps], (
            outcomes
        )
        errors = [e["error"] for e in reversed(h) if e["outcome"] == "failed"]
        assert "YAML" in errors[0] and "CNAME" in errors[1], errors
        failed = scrape(admin)['fedns_config_reloads_total{"outcome": "failed"}']
        assert failed - failed_before == 2
    finally:
        sp.stop()


def _up(admin: tuple[str, int]) -> bool:
    try:
        urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/healthz", timeout=1).close()
    except OSError:
        return False
    return True
