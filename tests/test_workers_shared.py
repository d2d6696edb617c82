"""--workers 2: the serving workers are forked again once the federation has first
synced, and share the control process's table instead of each building a copy.

A real fedns watches fake API servers (one of them down, so the first sync waits
out ``dns.startup_wait`` and the switch comes while queries stream in). Checked
from outside: the processes under the control process (``/proc``), who holds the
slots' sockets, smaps_rollup, and dnspython queries from many source ports (so
SO_REUSEPORT reaches both slots; the query log says which slot answered).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
from fakekube import ThreadedFakeKubes, endpoint, federation_config
from servers import LOOPBACK, ServerProcess, free_port, start_fedns, write_config

ORIGIN = "global.example.test."
ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 1209600 30
@       IN NS  ns1
ns1     IN A   127.0.0.53
"""
STATIC = (f"ns1.{ORIGIN}", "127.0.0.53")  # from ZONE: answered from the first moment
SERVICES, ENDPOINTS = 2000, 5
STARTUP_WAIT = 2.0  # the down cluster holds the first sync this long


def addresses(s: int, gen: int = 0) -> list[str]:
    return [f"127.{1 + gen}.{s // 50}.{(s % 50) * ENDPOINTS + e + 1}" for e in range(ENDPOINTS)]


def put(fakes: ThreadedFakeKubes, s: int, gen: int = 0) -> None:
    eps = [endpoint(a, pod=f"svc{s}-{i}") for i, a in enumerate(addresses(s, gen))]
    fakes["east"].put_slice("shop", f"svc{s}-a", f"svc{s}", eps)


def fill(fakes: ThreadedFakeKubes) -> None:
    for s in range(SERVICES):
        fakes["east"].put_service("shop", f"svc{s}")
        put(fakes, s)


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.update(int(p) for p in f.read().split())
    return out


def socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def net_sockets(table: str) -> list[tuple[int, int, int]]:
    """(local port, remote port, inode) of every socket in /proc/net/<table>."""
    rows = []
    with open(f"/proc/net/{table}") as f:
        next(f)
        for line in f:
            cols = line.split()
            rows.append((int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16),
                         int(cols[9])))
    return rows


def memory(pid: int) -> dict[str, int]:
    """smaps_rollup, in kB."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                out[m[1]] = int(m[2])
    return out


def ask(sock: socket.socket, port: int, name: str, timeout: float = 2.0) -> frozenset[str] | None:
    """A addresses of ``name`` asked from ``sock`` (its source port picks the slot); None: no reply."""
    q = dns.message.make_query(name, "A")
    sock.settimeout(timeout)
    sock.sendto(q.to_wire(), (LOOPBACK, port))
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = dns.message.from_wire(sock.recv(65535))
        except TimeoutError:
            return None
        if r.id == q.id:
            return frozenset(rd.to_text() for rr in r.answer if rr.rdtype == dns.rdatatype.A for rd in rr)
        sock.settimeout(max(0.01, deadline - time.monotonic()))  # a late reply to an earlier query


def readyz(admin: tuple[str, int]) -> int:
    try:
        with urllib.request.urlopen(f"http://{admin[0]}:{admin[1]}/readyz", timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except urllib.error.URLError:
        return 0  # not listening yet: the admin API starts after the control side


def slots_answering(sp: ServerProcess, since: int, name: str) -> set[str]:
    """Which slots' query log lines (after offset ``since`` of the output) name ``name``."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", sp.output()[since:])  # the console format's colours
    return {m[1] for line in text.splitlines() if f"name={name}" in line
            for m in [re.search(r"worker=(\d+)", line)] if m}


def test_workers_forked_after_the_first_sync_share_the_table(tmp_path: Path) -> None:
    with ThreadedFakeKubes(["east", "west"], bookmark_interval=60.0) as fakes:
        fakes.call(fill, fakes)
        fed = federation_config(fakes.kubes, tmp_path)
        fakes.run(fakes["west"].down())  # the first sync waits out startup_wait for it
        api_ports = {k.port for k in fakes.kubes.values()}
        cfg = write_config(tmp_path, {ORIGIN: ZONE}, {
            "federation": fed, "dns": {"startup_wait": STARTUP_WAIT},
            "log": {"query_sample": 1},
        })
        admin = (LOOPBACK, free_port())
        sp = start_fedns(cfg, tmp_path, workers=2, extra_args=("--admin", f"{admin[0]}:{admin[1]}"))
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(24)]
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            parent = sp.proc.pid
            first = children(parent)
            assert len(first) == 2, first
            # A TCP connection opened before the switch is served to its end by the
            # worker that accepted it (which retires only once it is closed).
            held.settimeout(5)
            held.connect((LOOPBACK, sp.port))
            q = dns.message.make_query(STATIC[0], "A")
            dns.query.send_tcp(held, q)
            assert dns.query.receive_tcp(held, time.time() + 5)[0].id == q.id
            tcp_after_switch = False
            # A steady stream of static questions across the switch: every one answered.
            sent = lost = 0
            statuses: list[tuple[int, frozenset[int]]] = []
            end = time.monotonic() + 20
            switched_at: float | None = None
            while time.monotonic() < end:
                for s in socks:
                    sent += 1
                    if ask(s, sp.port, STATIC[0]) != {STATIC[1]}:
                        lost += 1
                code = readyz(admin)
                now = children(parent)  # after: a 200 must already see the new workers
                statuses.append((code, frozenset(now)))
                if not tcp_after_switch and statuses[-1][0] == 200:
                    q = dns.message.make_query(STATIC[0], "A")
                    dns.query.send_tcp(held, q)
                    r = dns.query.receive_tcp(held, time.time() + 5)[0]
                    assert r.id == q.id and r.answer[0][0].to_text() == STATIC[1]
                    held.close()
                    tcp_after_switch = True
                if switched_at is None and now and not now & first:
                    switched_at = time.monotonic()
                if switched_at is not None and time.monotonic() - switched_at > 1.0:
                    break
            assert switched_at is not None, f"workers never replaced: {first} -> {children(parent)}"
            assert lost == 0, f"{lost} of {sent} queries unanswered across the switch"
            assert tcp_after_switch
            # New TCP connections reach both slots' listeners (still open after the old
            # workers closed their copies).
            for _ in range(8):
                r = dns.query.tcp(dns.message.make_query(STATIC[0], "A"), LOOPBACK, port=sp.port,
                                  timeout=5)
                assert r.answer[0][0].to_text() == STATIC[1]
            second = children(parent)
            assert len(second) == 2 and not second & first, (first, second)
            # /readyz went 200 only once the new generation was there.
            codes = [code for code, _ in statuses if code]
            assert codes[0] == 503 and codes[-1] == 200, codes
            first_ok = next(kids for code, kids in statuses if code == 200)
            assert len(first_ok - first) == 2, (first, first_ok)
            # The new workers hold the slots' sockets (the old ones are gone, their
            # descriptors with them); the parent holds them too, and reads none.
            udp = {inode for port, _, inode in net_sockets("udp") if port == sp.port}
            assert len(udp) == 2
            for pid in second:
                assert len(socket_inodes(pid) & udp) == 1, pid

            # Every slot answers the federated names with what the API server holds.
            mark = len(sp.output())
            for svc in range(0, SERVICES, 397):
                for s in socks:
                    assert ask(s, sp.port, f"east.svc{svc}.shop.{ORIGIN}") == frozenset(addresses(svc))
            time.sleep(0.3)  # query log lines are flushed on the next loop iteration
            assert slots_answering(sp, mark, f"east.svc0.shop.{ORIGIN}") == {"1", "2"}

            # A later change reaches every worker.
            fakes.call(put, fakes, 7, 1)
            name = f"east.svc7.shop.{ORIGIN}"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                got = {ask(s, sp.port, name) for s in socks}
                if got == {frozenset(addresses(7, 1))}:
                    break
                time.sleep(0.1)
            assert got == {frozenset(addresses(7, 1))}, got

            # Shared: most of a worker's resident pages are the parent's (PSS well
            # below RSS), and its private pages are a fraction of the parent's.
            parent_mem = memory(parent)
            for pid in second:
                m = memory(pid)
                private = m["Private_Clean"] + m["Private_Dirty"]
                assert m["Pss"] < 0.6 * m["Rss"], (pid, m)
                assert private < 0.5 * parent_mem["Rss"], (pid, m, parent_mem)

            # No worker talks to the API servers; the parent does.
            tcp = net_sockets("tcp") + net_sockets("tcp6")
            to_api = {inode for _, remote, inode in tcp if remote in api_ports}
            assert socket_inodes(parent) & to_api, "the parent holds no watch connection?"
            for pid in second:
                assert not socket_inodes(pid) & to_api, f"worker {pid} holds an API connection"

            # A worker killed is replaced (forked from the running parent) and answers.
            victim = min(second)
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and (victim in children(parent) or len(children(parent)) < 2):
                time.sleep(0.05)
            third = children(parent)
            assert victim not in third and len(third) == 2, third
            for s in socks:
                assert ask(s, sp.port, name, timeout=5) == frozenset(addresses(7, 1))
            assert sp.alive()
        finally:
            held.close()
            for s in socks:
                s.close()
            sp.stop()
