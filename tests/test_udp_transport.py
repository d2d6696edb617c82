"""The UDP transports (``dns: {udp: mmsg | uvloop}``) serve the same answers under load.

``mmsg`` is a thread batching datagrams with recvmmsg/sendmmsg (resolver/udp.py);
``uvloop`` is the event loop's datagram transport. Every test runs a real
server process in each mode and checks replies with dnspython against the
zone file as dnspython reads it, so a transport that loses, reorders within
a socket, mixes up addresses or cuts a reply fails here.
"""

from __future__ import annotations

import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from dnsclient import TIMEOUT_S, make, tcp_raw, udp_raw
from fakekube import ThreadedFakeKubes, endpoint, endpoint_slice, federation_config, service
from oracle import Oracle
from servers import (
    RICH_ORIGIN,
    RICH_ZONE,
    FednsFactory,
    ServerProcess,
    _spawn,
    fedns_argv,
    fedns_env,
    free_port,
    write_config,
)

ORACLE = Oracle(RICH_ZONE, RICH_ORIGIN)
MODES = ["mmsg", "uvloop"]
BATCH = 64  # resolver/udp.py's recvmmsg batch; bursts below are several times this
# Names with A records in the rich zone, and names that do not exist.
A_NAMES = ["ns1", "ns2", "mail", "web", "sip"]
BIG = f"big.{RICH_ORIGIN}"  # 40 TXT records, ~2.6 kB


def _mmsg_or_skip(mode: str) -> None:
    if mode == "mmsg" and not sys.platform.startswith("linux"):
        pytest.skip("recvmmsg/sendmmsg are Linux system calls")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    _mmsg_or_skip(request.param)
    return str(request.param)


def _serve(
    fedns_server: FednsFactory, mode: str, workers: int = 1, **dns_settings: object
) -> ServerProcess:
    return fedns_server({RICH_ORIGIN: RICH_ZONE}, {"dns": {"udp": mode, **dns_settings}}, workers)


def _client(rcvbuf: int = 1 << 22) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # A burst of replies must not overflow the client's own queue.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind(("127.0.0.1", 0))
    return s


def _query(i: int) -> tuple[dns.message.QueryMessage, str]:
    """Query number ``i`` of a mix: existing A names (some with EDNS) and nonexistent names."""
    if i % 4 == 3:
        name = f"nx{i}-{random.getrandbits(32):08x}.{RICH_ORIGIN}"
    else:
        name = f"{A_NAMES[i % len(A_NAMES)]}.{RICH_ORIGIN}"
    return make(name, "A", edns=0 if i % 2 else None, qid=i & 0xFFFF), name


def _check(reply: dns.message.Message, name: str) -> None:
    """The reply is the zone's answer for ``name`` A, per dnspython's reading of the zone."""
    assert reply.question[0].name == dns.name.from_text(name)
    assert reply.flags & dns.flags.AA
    expected = ORACLE.rdataset(name, "A")
    if expected is None:
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert not reply.answer
        assert [r.rdtype for r in reply.authority] == [dns.rdatatype.SOA]
    else:
        assert reply.rcode() == dns.rcode.NOERROR
        assert len(reply.answer) == 1 and set(reply.answer[0]) == set(expected)


def _collect(
    socks: list[socket.socket], want: int, deadline_s: float = 10.0
) -> dict[int, list[bytes]]:
    """Replies per socket (index into ``socks``) until ``want`` arrived or the deadline."""
    got: dict[int, list[bytes]] = {i: [] for i in range(len(socks))}
    fds = {s.fileno(): i for i, s in enumerate(socks)}
    n = 0
    end = time.monotonic() + deadline_s
    while n < want and time.monotonic() < end:
        ready, _, _ = select.select(list(fds), [], [], 0.2)
        for fd in ready:
            i = fds[fd]
            while True:
                try:
                    got[i].append(socks[i].recv(65535, socket.MSG_DONTWAIT))
                    n += 1
                except BlockingIOError:
                    break
    return got


@pytest.mark.parametrize("workers", [1, 2])
def test_many_sockets_many_queries_all_answered(
    fedns_server: FednsFactory, mode: str, workers: int
) -> None:
    """48 sockets, 5 queries each, all sent before any reply is read: every query
    answered once, correctly, to the socket that asked. (240 in flight: within
    a default-sized server receive queue, so nothing here is lost by design.)"""
    srv = _serve(fedns_server, mode, workers)
    socks = [_client() for _ in range(48)]
    try:
        sent: dict[int, list[tuple[int, str]]] = {}
        for k, s in enumerate(socks):
            sent[k] = []
            for m in range(5):
                i = k * 5 + m
                q, name = _query(i)
                s.sendto(q.to_wire(), srv.addr)
                sent[k].append((q.id, name))
        got = _collect(socks, 48 * 5)
        for k, replies in got.items():
            assert len(replies) == len(sent[k]), f"socket {k}: {len(replies)} of {len(sent[k])}"
            # One socket's datagrams are answered in the order they were sent.
            for wire, (qid, name) in zip(replies, sent[k], strict=True):
                reply = dns.message.from_wire(wire)
                assert reply.id == qid
                _check(reply, name)
    finally:
        for s in socks:
            s.close()


def test_burst_from_one_socket_larger_than_a_batch(fedns_server: FednsFactory, mode: str) -> None:
    """Several batches' worth from one socket: all answered, in order, ids intact."""
    srv = _serve(fedns_server, mode)
    count = 3 * BATCH + 7
    with _client() as s:
        queries = [_query(i) for i in range(count)]
        for q, _ in queries:
            s.sendto(q.to_wire(), srv.addr)
        replies = _collect([s], count)[0]
    assert len(replies) == count
    for wire, (q, name) in zip(replies, queries, strict=True):
        reply = dns.message.from_wire(wire)
        assert reply.id == q.id
        _check(reply, name)


def test_large_answers_truncated_or_whole(fedns_server: FednsFactory, mode: str) -> None:
    """A 2.6 kB RRset: TC within 512 (no EDNS) and 1232 bytes; whole at a configured 4096."""
    srv = _serve(fedns_server, mode, max_udp_payload=4096)
    big = ORACLE.rdataset(BIG, "TXT")
    assert big is not None
    with _client() as s:
        s.settimeout(TIMEOUT_S)
        for payload, limit in ((None, 512), (1232, 1232), (4096, 4096)):
            q = make(BIG, "TXT", edns=0 if payload else None, payload=payload or 1232)
            s.sendto(q.to_wire(), srv.addr)
            wire = s.recv(65535)
            reply = dns.message.from_wire(wire)
            assert reply.id == q.id and len(wire) <= limit
            if payload == 4096:
                assert not reply.flags & dns.flags.TC
                assert len(wire) > 2000 and set(reply.answer[0]) == set(big)
            else:
                assert reply.flags & dns.flags.TC
                for rrset in reply.answer:  # RFC 2181 9: whole RRsets only
                    assert set(rrset) == set(big)


def test_malformed_packets_in_a_burst(fedns_server: FednsFactory, mode: str) -> None:
    """Bad datagrams mixed into one burst: FORMERR when the header is readable,
    silence otherwise (empty, short, QR=1), and every valid query around them answered."""
    srv = _serve(fedns_server, mode)
    good, _ = _query(0)
    header = struct.pack(">HBBHHHH", 0x4D4D, 0, 0, 1, 0, 0, 0)
    cases: list[tuple[bytes, int | None]] = [
        (b"", None),  # an empty datagram
        (b"\x12\x34\x00", None),  # shorter than a header
        (good.to_wire()[:2] + b"\x80" + good.to_wire()[3:], None),  # a response (QR=1)
        (header + b"\x3f" + b"a" * 10, dns.rcode.FORMERR),  # label runs past the end
        (header + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR),  # pointer in the question
        # A datagram far larger than any query, with garbage after the question.
        (header + good.to_wire()[12:] + os.urandom(60_000), dns.rcode.FORMERR),
    ]
    with _client() as s:
        # (id, FORMERR; or id, None and the name of a valid query)
        expect: list[tuple[int, int | None, str]] = []
        for rounds in range(3):
            for data, rcode in cases:
                s.sendto(data, srv.addr)
                if rcode is not None:
                    expect.append((0x4D4D, rcode, ""))
                q, name = _query(4 * rounds + 1)
                s.sendto(q.to_wire(), srv.addr)
                expect.append((q.id, None, name))
        replies = _collect([s], len(expect))[0]
        # Nothing more comes: the silent cases really were silent.
        s.settimeout(0.3)
        with pytest.raises(TimeoutError):
            replies.append(s.recv(65535))
    assert len(replies) == len(expect)
    for wire, (qid, rcode, name) in zip(replies, expect, strict=True):
        reply = dns.message.from_wire(wire, question_only=rcode is not None)
        assert reply.id == qid
        if rcode is None:
            _check(reply, name)
        else:
            assert reply.rcode() == rcode


def test_repeated_questions_get_their_own_ids(fedns_server: FednsFactory, mode: str) -> None:
    """The same few questions over and over (as from resolvers, answered from the
    replies remembered by the query's bytes) with a new ID each, some with RD/CD
    or EDNS, and silent packets between them so replies move to earlier slots of
    the batch: each reply carries its own query's ID, flags and answer."""
    srv = _serve(fedns_server, mode)
    silent = _query(0)[0].to_wire()
    silent = silent[:2] + b"\x80" + silent[3:]  # QR=1: dropped
    with _client() as s:
        expect: dict[int, tuple[str, bool, bool]] = {}
        for qid in range(1, 601):
            name = f"{A_NAMES[qid % 3]}.{RICH_ORIGIN}"
            q = make(name, "A", edns=0 if qid % 5 == 0 else None, qid=qid)
            rd, cd = qid % 2 == 0, qid % 7 == 0
            q.flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
            s.sendto(q.to_wire(), srv.addr)
            expect[qid] = (name, rd, cd)
            if qid % 3 == 0:
                s.sendto(silent, srv.addr)
        replies = _collect([s], len(expect))[0]
    assert len(replies) == len(expect)
    seen = set()
    for wire in replies:
        reply = dns.message.from_wire(wire)
        name, rd, cd = expect[reply.id]
        seen.add(reply.id)
        _check(reply, name)
        assert bool(reply.flags & dns.flags.RD) == rd and bool(reply.flags & dns.flags.CD) == cd
        assert (reply.edns >= 0) == (reply.id % 5 == 0)
    assert seen == set(expect)


def _flood_then_existing(origin: str, parents: list[str], existing: list[str]) -> list[bytes]:
    """Rounds of new names below ``parents`` (as a random-subdomain flood asks),
    each round followed by names that exist below the same parents and were not
    asked before, in other letter cases too, with and without EDNS."""
    rnd = random.Random(5)
    wires = []
    for r, real in enumerate(existing):
        for i in range(6 * len(parents)):
            parent = parents[i % len(parents)]
            label = f"r{rnd.getrandbits(40):010x}"[: rnd.randint(1, 10)]
            qname = f"{label}.{parent}{'.' if parent else ''}{origin}"
            for t in ("A", "TXT", "AAAA"):
                wires.append(make(qname, t, edns=0 if i % 2 else None, qid=len(wires)).to_wire())
        for t in ("A", "AAAA", "TXT", "MX"):
            for n in (real, real.upper()):
                wires.append(make(f"{n}.{origin}", t, edns=0 if r % 2 else None, qid=len(wires)).to_wire())
    return wires


@pytest.mark.parametrize("zone", ["rich", "federation"])
def test_remembered_replies_equal_fresh_ones(
    fedns_server: FednsFactory, tmp_path: Path, mode: str, zone: str
) -> None:
    """Replies from the UDP reply caches (a repeated question; a new name below an
    existing one) are byte for byte what the same server answers over TCP, where
    every query is answered afresh: names that exist but were never asked are not
    taken for members of the flood around them, in a static zone (wildcards, a
    delegation, empty non-terminals) and among compact federated names."""
    if zone == "rich":
        srv = _serve(fedns_server, mode)
        origin = RICH_ORIGIN
        parents = ["", "wild", "web", "ent", "child", "srv"]
        existing = ["mail", "exists.wild", "x.ent2.wild", "c.ent", "web", "ns.child", "sip", "ns1"]
    else:
        port = free_port()
        config = _fed_config(tmp_path, mode, f"127.0.0.1:{port}")
        srv = _spawn("fedns-fed", fedns_argv("serve", "-c", str(config)), tmp_path, port, fedns_env())
        srv.wait_ready()
        origin = "global.example.test."
        parents = ["cart.shop", "east.cart.shop", "shop", ""]
        existing = ["east.cart.shop", "west.cart.shop", "cart.shop", "_https._tcp.cart.shop"]
    wires = _flood_then_existing(origin, parents, existing)
    for _ in range(2):  # the second round is answered from what the first remembered
        for wire in wires:
            got, want = udp_raw(srv.addr, wire), tcp_raw(srv.addr, wire)
            assert got is not None and got == want, dns.message.from_wire(wire).question
    nx = sum(1 for w in wires if dns.message.from_wire(tcp_raw(srv.addr, w) or b"").rcode())
    assert 0 < nx < len(wires)


def test_tcp_answers_while_udp_is_loaded(fedns_server: FednsFactory, mode: str) -> None:
    """The event loop thread keeps serving TCP while UDP traffic is being answered."""
    srv = _serve(fedns_server, mode)
    stop = threading.Event()
    answered = [0]

    def load() -> None:
        with _client() as s:
            while not stop.is_set():
                for i in range(50):
                    s.sendto(_query(i)[0].to_wire(), srv.addr)
                answered[0] += sum(len(v) for v in _collect([s], 50, 2.0).values())

    t = threading.Thread(target=load)
    t.start()
    try:
        for i in range(20):
            q, name = _query(i * 4)
            reply = dns.query.tcp(q, srv.host, port=srv.port, timeout=TIMEOUT_S)
            assert reply.id == q.id
            _check(reply, name)
    finally:
        stop.set()
        t.join()
    assert answered[0] > 0


FED_ZONE = """$ORIGIN global.example.test.
$TTL 60
@    IN SOA ns1 hostmaster 1 3600 600 86400 30
     IN NS  ns1
ns1  IN A   127.0.0.53
www  IN A   127.0.0.80
"""


def _fed_config(workdir: Path, mode: str, listen: str) -> Path:
    """Two static clusters; IPv4 loopback clients are placed in east, IPv6 ones in west."""
    return write_config(
        workdir,
        {"global.example.test.": FED_ZONE},
        {
            "dns": {"udp": mode, "listen": listen},
            "federation": {
                "zone": "global.example.test.",
                "clusters": [
                    {"name": "east", "region": "r-east", "zone": "z-east"},
                    {"name": "west", "region": "r-west", "zone": "z-west"},
                ],
                "localities": [
                    {"cidr": "127.0.0.0/8", "region": "r-east", "zone": "z-east"},
                    {"cidr": "::/16", "region": "r-west", "zone": "z-west"},
                ],
                "defaults": {"policy": "locality", "ttl": 10},
                "services": [
                    {
                        "namespace": "shop",
                        "name": "cart",
                        "ports": [{"name": "https", "port": 443, "protocol": "TCP"}],
                        "endpoints": {
                            "east": [{"addresses": ["127.1.0.1"]}],
                            "west": [{"addresses": ["127.2.0.1"]}],
                        },
                    }
                ],
            },
        },
    )


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
def v6_server(tmp_path: Path, mode: str) -> Iterator[ServerProcess]:
    """fedns on [::1] (only): started here since the shared helpers serve IPv4."""
    if not _ipv6_loopback():
        pytest.skip("no IPv6 loopback")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as u:
        u.bind(("::1", 0))
        port = u.getsockname()[1]
    config = _fed_config(tmp_path, mode, f"[::1]:{port}")
    sp = _spawn("fedns6", fedns_argv("serve", "-c", str(config)), tmp_path, port, fedns_env())
    sp.host = "::1"
    try:
        sp.wait_ready()
        yield sp
    finally:
        sp.stop()


def test_ipv6_socket_answers_and_places_the_client_by_its_address(
    v6_server: ServerProcess,
) -> None:
    """Over IPv6 every query gets its answer back, and the source address the
    transport hands to routing is the client's (::1, placed in west)."""
    host, port = v6_server.addr
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT_S)
        queries = [make("cart.shop.global.example.test.", "A", qid=i) for i in range(3 * BATCH)]
        for q in queries:
            s.sendto(q.to_wire(), (host, port))
        for q in queries:
            reply = dns.message.from_wire(s.recv(65535))
            assert reply.id == q.id and reply.rcode() == dns.rcode.NOERROR
            assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ["127.2.0.1"]


def test_ipv4_client_is_placed_by_its_address(
    fedns_server: FednsFactory, tmp_path: Path, mode: str
) -> None:
    srv = fedns_server(_fed_config(tmp_path, mode, "127.0.0.1:53"))  # --dns overrides listen
    with _client() as s:
        s.settimeout(TIMEOUT_S)
        for i in range(10):
            q = make("cart.shop.global.example.test.", "A", qid=i)
            s.sendto(q.to_wire(), srv.addr)
            reply = dns.message.from_wire(s.recv(65535))
            assert [rd.to_text() for rrset in reply.answer for rd in rrset] == ["127.1.0.1"]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_stops_promptly(fedns_server: FednsFactory, mode: str, workers: int) -> None:
    """The UDP thread wakes from its blocking receive and the process exits cleanly."""
    srv = _serve(fedns_server, mode, workers)
    with _client() as s:
        s.settimeout(TIMEOUT_S)
        q, name = _query(1)
        s.sendto(q.to_wire(), srv.addr)
        _check(dns.message.from_wire(s.recv(65535)), name)
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(5) == 0


def test_unknown_udp_mode_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path, {RICH_ORIGIN: RICH_ZONE}, {"dns": {"udp": "epoll"}})
    out = subprocess.run(
        [sys.executable, "-m", "resolver.cli", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=fedns_env(),
    )
    assert out.returncode != 0
    assert "dns.udp" in out.stderr + out.stdout and "'epoll'" in out.stderr + out.stdout


def test_waiting_query_is_answered_after_the_first_sync(
    fedns_server: FednsFactory, tmp_path: Path, mode: str
) -> None:
    """A federated name asked before the cluster synced is held (not NXDOMAIN) and
    answered once it has; a zone name asked after it is answered meanwhile."""
    with ThreadedFakeKubes(["east"]) as fakes:
        east = fakes["east"]
        fakes.call(lambda: east.apply("services", service("shop", "cart")))
        fakes.call(
            lambda: east.apply(
                "endpointslices", endpoint_slice("shop", "cart-1", "cart", [endpoint("127.1.0.1")])
            )
        )
        fakes.run(east.down())  # fedns starts while the API server is unreachable
        fed = federation_config(fakes.kubes, tmp_path)
        for c in fed["clusters"]:
            c["kubeconfig"] = str(tmp_path / c["kubeconfig"])
        srv = fedns_server(
            {"global.example.test.": FED_ZONE},
            {"federation": fed, "dns": {"startup_wait": 20, "udp": mode}},
        )
        with _client() as s:
            s.settimeout(15)
            held = make("cart.shop.global.example.test.", "A", qid=1)
            s.sendto(held.to_wire(), srv.addr)
            s.sendto(make("www.global.example.test.", "A", qid=2).to_wire(), srv.addr)
            first = dns.message.from_wire(s.recv(65535))
            assert first.id == 2
            assert [rd.to_text() for rrset in first.answer for rd in rrset] == ["127.0.0.80"]
            time.sleep(0.3)
            fakes.run(east.up())
            second = dns.message.from_wire(s.recv(65535))
        srv.stop()  # its watch streams end with it, so the fake can shut down promptly
    assert second.id == 1 and second.rcode() == dns.rcode.NOERROR
    assert [rd.to_text() for rrset in second.answer for rd in rrset] == ["127.1.0.1"]
