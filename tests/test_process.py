"""The serving process: ``--workers N`` on one port (SO_REUSEPORT), and SIGHUP reload."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest
from dnsclient import make, tcp, udp
from servers import RICH_ORIGIN, RICH_ZONE, FednsFactory, ServerProcess, udp_sockets_on

QUESTIONS = [
    (f"web.{RICH_ORIGIN}", "A"),
    (f"nx.{RICH_ORIGIN}", "A"),
    (f"www.child.{RICH_ORIGIN}", "A"),
    (f"host.wild.{RICH_ORIGIN}", "TXT"),
    (f"big.{RICH_ORIGIN}", "TXT"),
    ("example.test.", "A"),
]


def _key(m: dns.message.Message) -> tuple[object, ...]:
    return (m.rcode(), m.flags, m.question, m.answer, m.authority, m.additional, m.edns)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


def test_workers_share_one_port(fedns_server: FednsFactory) -> None:
    one = fedns_server({RICH_ORIGIN: RICH_ZONE})
    two = fedns_server({RICH_ORIGIN: RICH_ZONE}, workers=2)
    assert udp_sockets_on(two.port) == 2, "two worker sockets bound to the same UDP port"
    assert len(_children(two.proc.pid)) == 2
    # Every query from a fresh socket (a new source port, so the kernel's
    # SO_REUSEPORT hash spreads them over both workers) gets the same answer as
    # from a single-process server.
    for i in range(60):
        qname, qtype = QUESTIONS[i % len(QUESTIONS)]
        send = udp if i % 3 else tcp
        expected = send(one.addr, make(qname, qtype, edns=0, qid=i))
        got = send(two.addr, make(qname, qtype, edns=0, qid=i))
        assert got.id == i and _key(got) == _key(expected)
    # Exactly two sockets in the group, and none of the 60 timed out: a socket
    # in the group that nobody reads (as the parent's inherited probe socket
    # once was) would have swallowed its hash share of them.


ZONE_V1 = """$ORIGIN reload.example.test.
$TTL 60
@    IN SOA ns1 hostmaster 1 3600 600 86400 30
     IN NS  ns1
ns1  IN A   192.0.2.1
www  IN A   192.0.2.10
old  IN TXT "only in version 1"
"""
ZONE_V2 = (
    ZONE_V1.replace(" 1 3600", " 2 3600")
    .replace("192.0.2.10", "192.0.2.20")
    .replace('old  IN TXT "only in version 1"', 'new  IN TXT "only in version 2"')
)
ZONE_BROKEN = ZONE_V2 + "www  IN CNAME ns1\n"  # CNAME and other data: must be refused
RELOAD_ORIGIN = "reload.example.test."


def _www(server: ServerProcess) -> set[str]:
    r = udp(server.addr, make(f"www.{RELOAD_ORIGIN}", "A"))
    return {rd.to_text() for rrset in r.answer for rd in rrset}


def _wait_for(cond: object, what: str, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_and_keeps_old_data_on_error(
    fedns_server: FednsFactory, workers: int
) -> None:
    server = fedns_server({RELOAD_ORIGIN: ZONE_V1}, workers=workers)
    zone_file = Path(str(server.extra["config"])).parent / f"{RELOAD_ORIGIN.rstrip('.')}.zone"
    assert zone_file.read_text() == ZONE_V1
    assert _www(server) == {"192.0.2.10"}

    zone_file.write_text(ZONE_V2)
    server.signal(signal.SIGHUP)
    # Every worker reloads: ask repeatedly from fresh sockets until all agree.
    _wait_for(lambda: all(_www(server) == {"192.0.2.20"} for _ in range(10)), "the new answer")
    gone = udp(server.addr, make(f"old.{RELOAD_ORIGIN}", "TXT"))
    assert gone.rcode() == dns.rcode.NXDOMAIN
    new = udp(server.addr, make(f"new.{RELOAD_ORIGIN}", "TXT"))
    assert new.rcode() == dns.rcode.NOERROR and new.answer

    failures_before = server.output().count("reload_failed")
    zone_file.write_text(ZONE_BROKEN)
    server.signal(signal.SIGHUP)
    _wait_for(
        lambda: server.output().count("reload_failed") > failures_before,
        "the reload failure to be logged",
    )
    assert server.alive()
    for _ in range(10):
        assert _www(server) == {"192.0.2.20"}, "a failed reload must keep the running data"
    soa = udp(server.addr, make(RELOAD_ORIGIN, "SOA"))
    assert soa.answer[0][0].serial == 2


def test_dead_worker_is_replaced(fedns_server: FednsFactory) -> None:
    """A worker killed with SIGKILL is replaced; the port keeps answering throughout."""
    two = fedns_server({RICH_ORIGIN: RICH_ZONE}, workers=2)
    before = _children(two.proc.pid)
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = _children(two.proc.pid)
        if len(now) == 2 and before[0] not in now and udp_sockets_on(two.port) == 2:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"worker not replaced: children {_children(two.proc.pid)}")
    assert two.alive()
    for i in range(30):  # fresh source ports: the kernel spreads them over both workers
        qname, qtype = QUESTIONS[i % len(QUESTIONS)]
        got = udp(two.addr, make(qname, qtype, edns=0, qid=i))
        assert got.id == i  # answered (udp() raises on a timeout)
