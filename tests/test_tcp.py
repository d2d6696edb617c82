"""DNS over TCP (RFC 7766): framing, pipelining, partial writes, idle timeout, connection cap."""

from __future__ import annotations

import socket
import struct
import time

import dns.flags
import dns.message
import dns.rcode
import pytest
from dnsclient import closed_by_peer, frame, make, tcp_connect, tcp_raw, tcp_read
from servers import RICH_ORIGIN, RICH_ZONE, FednsFactory, ServerProcess

# A mix that exercises every kind of answer, including one much larger than a UDP reply.
MIX = [
    ("web", "A"), ("big", "TXT"), ("nx", "A"), ("www.child", "A"), ("host.wild", "TXT"),
    ("ent", "A"), ("alias1", "AAAA"), ("@", "SOA"), ("_sip._udp", "SRV"), ("medium", "TXT"),
]  # fmt: skip


def _queries(count: int) -> list[dns.message.Message]:
    out: list[dns.message.Message] = []
    for i in range(count):
        rel, qtype = MIX[i % len(MIX)]
        qname = RICH_ORIGIN if rel == "@" else f"{rel}.{RICH_ORIGIN}"
        out.append(make(qname, qtype, edns=0 if i % 2 else None, qid=1000 + i))
    return out


def _same_reply(a: dns.message.Message, b: dns.message.Message) -> bool:
    return (
        a.id == b.id
        and a.rcode() == b.rcode()
        and a.flags == b.flags
        and a.question == b.question
        and a.answer == b.answer
        and a.authority == b.authority
        and a.additional == b.additional
        and a.edns == b.edns
    )


def test_length_framing(rich_server: ServerProcess) -> None:
    q = make(f"web.{RICH_ORIGIN}", "A")
    with tcp_connect(rich_server.addr) as s:
        s.sendall(frame(q.to_wire()))
        head = s.recv(2, socket.MSG_WAITALL)
        (length,) = struct.unpack(">H", head)
        body = s.recv(length, socket.MSG_WAITALL)
        assert len(body) == length
        m = dns.message.from_wire(body)  # parses exactly: no byte more or less
        assert m.id == q.id and m.answer
        # The connection stays open for further queries (RFC 7766 6.2.1).
        s.sendall(frame(q.to_wire()))
        again = tcp_read(s)
        assert again is not None and dns.message.from_wire(again).id == q.id


def test_pipelined_queries_in_one_write(rich_server: ServerProcess) -> None:
    """100 queries in one write; replies matched by ID, in whatever order they come."""
    queries = _queries(100)
    alone = {
        q.id: dns.message.from_wire(tcp_raw(rich_server.addr, q.to_wire()) or b"") for q in queries
    }
    with tcp_connect(rich_server.addr) as s:
        s.sendall(b"".join(frame(q.to_wire()) for q in queries))
        got: dict[int, dns.message.Message] = {}
        for _ in queries:
            wire = tcp_read(s)
            assert wire is not None, f"connection closed after {len(got)} replies"
            m = dns.message.from_wire(wire)
            assert m.id not in got, f"two replies with ID {m.id}"
            got[m.id] = m
    assert set(got) == {q.id for q in queries}
    for q in queries:
        r = got[q.id]
        assert r.question == q.question
        assert _same_reply(r, alone[q.id]), (
            f"pipelined reply to {q.question} differs from the one alone"
        )
        assert not r.flags & dns.flags.TC


def test_pipelined_queries_across_connections(rich_server: ServerProcess) -> None:
    """Several connections, each with queries outstanding, interleaved."""
    conns = [tcp_connect(rich_server.addr) for _ in range(4)]
    try:
        batches = [_queries(20) for _ in conns]
        for i in range(0, 20, 5):
            for s, batch in zip(conns, batches, strict=True):
                s.sendall(b"".join(frame(q.to_wire()) for q in batch[i : i + 5]))
        for s, batch in zip(conns, batches, strict=True):
            ids = set()
            for _ in batch:
                wire = tcp_read(s)
                assert wire is not None
                ids.add(dns.message.from_wire(wire).id)
            assert ids == {q.id for q in batch}
    finally:
        for s in conns:
            s.close()


@pytest.mark.parametrize("cuts", [[1], [2], [5, 20], [2, 3, 4, 30]])
def test_query_split_across_writes(rich_server: ServerProcess, cuts: list[int]) -> None:
    """Length prefix and message may arrive in pieces, split anywhere (incl. inside the prefix)."""
    q = make(f"mail.{RICH_ORIGIN}", "A", edns=0)
    data = frame(q.to_wire())
    with tcp_connect(rich_server.addr) as s:
        start = 0
        for c in [*cuts, len(data)]:
            s.sendall(data[start:c])
            start = c
            time.sleep(0.02)
        wire = tcp_read(s)
    assert wire is not None
    m = dns.message.from_wire(wire)
    assert m.id == q.id and m.rcode() == dns.rcode.NOERROR and m.answer


def test_two_queries_one_byte_at_a_time(rich_server: ServerProcess) -> None:
    qs = _queries(2)
    data = b"".join(frame(q.to_wire()) for q in qs)
    with tcp_connect(rich_server.addr) as s:
        for i in range(len(data)):
            s.sendall(data[i : i + 1])
            time.sleep(0.002)
        ids = set()
        for _ in qs:
            wire = tcp_read(s)
            assert wire is not None
            ids.add(dns.message.from_wire(wire).id)
    assert ids == {q.id for q in qs}


def test_query_and_next_query_in_one_segment_boundary(rich_server: ServerProcess) -> None:
    """One write ends in the middle of the second query's length prefix."""
    qs = _queries(2)
    data = b"".join(frame(q.to_wire()) for q in qs)
    split = len(frame(qs[0].to_wire())) + 1
    with tcp_connect(rich_server.addr) as s:
        s.sendall(data[:split])
        first = tcp_read(s)
        assert first is not None and dns.message.from_wire(first).id == qs[0].id
        s.sendall(data[split:])
        second = tcp_read(s)
        assert second is not None and dns.message.from_wire(second).id == qs[1].id


@pytest.fixture
def short_idle_server(fedns_server: FednsFactory) -> ServerProcess:
    return fedns_server({RICH_ORIGIN: RICH_ZONE}, settings={"tcp": {"idle_timeout": 0.5}})


def test_idle_connection_closed(short_idle_server: ServerProcess) -> None:
    with tcp_connect(short_idle_server.addr) as s:
        s.sendall(frame(make(f"web.{RICH_ORIGIN}", "A").to_wire()))
        assert tcp_read(s) is not None
        assert closed_by_peer(s, within=5.0), "an idle connection must be closed (RFC 7766 6.2.3)"
    with tcp_connect(short_idle_server.addr) as s:  # a silent client is closed too
        assert closed_by_peer(s, within=5.0)


def test_active_connection_kept_past_the_idle_timeout(short_idle_server: ServerProcess) -> None:
    """Each query restarts the idle timer: a connection used every 0.1 s outlives 0.5 s."""
    with tcp_connect(short_idle_server.addr) as s:
        end = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < end:
            q = make(f"web.{RICH_ORIGIN}", "A", qid=n)
            s.sendall(frame(q.to_wire()))
            wire = tcp_read(s)
            assert wire is not None, f"closed after {n} queries though never idle"
            assert dns.message.from_wire(wire).id == n
            n += 1
            time.sleep(0.1)


# The total cap (the least recently active connection gives way) is asserted by
# tests/test_tcp_abuse.py::test_total_cap_evicts_the_least_recently_active.
