"""Malformed packets: FORMERR when the header is readable, silence otherwise, and never a crash.

Each case sends its bad packet and then, from the same socket, a valid probe
query. The server handles datagrams from one socket in order, so whatever
arrives before the probe's reply is the reply to the bad packet, and the
probe's reply proves the server still answers afterwards.
"""

from __future__ import annotations

import socket
import struct

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import pytest
from dnsclient import TIMEOUT_S, frame, make, tcp_connect, tcp_raw, tcp_read, udp_raw
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from servers import RICH_ORIGIN, ServerProcess

PROBE_ID = 0xBEEF
PROBE = make(f"web.{RICH_ORIGIN}", "A", qid=PROBE_ID).to_wire()
VALID = make(f"www.{RICH_ORIGIN}", "A", qid=0x1234).to_wire()
VALID_EDNS = make(f"www.{RICH_ORIGIN}", "A", edns=0, qid=0x1234).to_wire()
QEND = len(VALID)  # the question ends the plain query
HEADER = VALID[:12]


def send_then_probe(addr: tuple[str, int], data: bytes) -> list[bytes]:
    """Replies that arrive for ``data`` before the probe's reply (asserts the probe is answered)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT_S)
        s.sendto(data, addr)
        s.sendto(PROBE, addr)
        before: list[bytes] = []
        while True:
            try:
                reply = s.recv(65535)
            except TimeoutError:
                raise AssertionError(
                    "the server stopped answering after a malformed packet"
                ) from None
            if reply[:2] == PROBE[:2] and reply[12 : len(PROBE)] == PROBE[12:]:
                return before
            before.append(reply)


def with_counts(qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, qid: int = 0x1234) -> bytes:
    return struct.pack(">HBBHHHH", qid, 0, 0, qd, an, ns, ar)


def opt(payload: int = 1232, ttl: int = 0, rdata: bytes = b"", owner: bytes = b"\x00") -> bytes:
    return owner + struct.pack(">HHIH", 41, payload, ttl, len(rdata)) + rdata


QUESTION = VALID[12:]

# Header readable, body not: FORMERR with the query's ID.
FORMERR_CASES = {
    "name cut inside a label": HEADER + QUESTION[:7],
    "name without its root label": HEADER + QUESTION[:-5],
    "qtype cut": HEADER + QUESTION[:-3],
    "qclass cut": HEADER + QUESTION[:-1],
    "header only, qdcount 1": HEADER,
    "label length past the end": HEADER + b"\x3f" + b"a" * 10,
    "pointer in question": HEADER + b"\xc0\x0c\x00\x01\x00\x01",
    "pointer to itself in question": HEADER + b"\xc0\x0c",
    "extended label type 0x40": HEADER + b"\x41a\x00\x00\x01\x00\x01",
    "reserved label type 0x80": HEADER + b"\x81a\x00\x00\x01\x00\x01",
    "name longer than 255": HEADER + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01",
    "pointer loop in additional": with_counts(ar=1)
    + QUESTION
    + struct.pack(">H", 0xC000 | QEND)
    + struct.pack(">HHIH", 1, 1, 0, 4)
    + b"\x7f\x00\x00\x01",
    "two-pointer loop in additional": with_counts(ar=2)
    + QUESTION
    + struct.pack(">H", 0xC000 | (QEND + 16))
    + struct.pack(">HHIH", 1, 1, 0, 4)
    + b"\x7f\x00\x00\x01"
    + struct.pack(">H", 0xC000 | QEND)
    + struct.pack(">HHIH", 1, 1, 0, 4)
    + b"\x7f\x00\x00\x01",
    "forward pointer in answer": with_counts(an=1)
    + QUESTION
    + struct.pack(">H", 0xC000 | (QEND + 20))
    + struct.pack(">HHIH", 1, 1, 0, 4)
    + b"\x7f\x00\x00\x01"
    + b"\x00" * 8,
    "pointer into the header": with_counts(ar=1)
    + QUESTION
    + b"\xc0\x02"
    + struct.pack(">HHIH", 1, 1, 0, 4)
    + b"\x7f\x00\x00\x01",
    "ancount 1 without a record": with_counts(an=1) + QUESTION,
    "record cut in additional": with_counts(ar=1) + QUESTION + b"\x00\x00\x29\x04",
    "two OPT records": with_counts(ar=2) + QUESTION + opt() + opt(),
    "OPT with a non-root owner": with_counts(ar=1) + QUESTION + opt(owner=b"\x01a\x00"),
    "OPT owner a pointer to the question": with_counts(ar=1) + QUESTION + opt(owner=b"\xc0\x0c"),
    "OPT rdata past the packet": with_counts(ar=1)
    + QUESTION
    + b"\x00"
    + struct.pack(">HHIH", 41, 1232, 0, 40)
    + b"\x00\x0a\x00\x02ab",
    "EDNS option length overrun": with_counts(ar=1)
    + QUESTION
    + opt(rdata=struct.pack(">HH", 65001, 10) + b"ab"),
    "EDNS option header cut": with_counts(ar=1) + QUESTION + opt(rdata=b"\xfd\xe9\x00"),
    "trailing garbage after the question": VALID + b"\x00\x01\x02",
    "trailing garbage after OPT": VALID_EDNS + b"\xff",
    "qdcount 0": with_counts(qd=0),
    "qdcount 2 with one question": with_counts(qd=2) + QUESTION,
}


@pytest.mark.parametrize("case", sorted(FORMERR_CASES))
def test_formerr_when_header_readable(rich_server: ServerProcess, case: str) -> None:
    data = FORMERR_CASES[case]
    replies = send_then_probe(rich_server.addr, data)
    assert len(replies) == 1, f"{case}: expected one FORMERR, got {len(replies)} replies"
    m = dns.message.from_wire(replies[0])
    assert m.rcode() == dns.rcode.FORMERR, f"{case}: {dns.rcode.to_text(m.rcode())}"
    assert m.id == struct.unpack(">H", data[:2])[0]
    assert m.flags & dns.flags.QR
    assert not m.answer and not m.authority


SILENT_CASES = {
    **{f"{n}-byte header": VALID[:n] for n in (0, 1, 2, 5, 11)},
    "response bit set": bytes((VALID[0], VALID[1], VALID[2] | 0x80)) + VALID[3:],
    "response bit set, garbage body": bytes((1, 2, 0x80, 0)) + b"\xff" * 30,
}


@pytest.mark.parametrize("case", sorted(SILENT_CASES))
def test_silence_when_header_unreadable_or_a_response(
    rich_server: ServerProcess, case: str
) -> None:
    assert send_then_probe(rich_server.addr, SILENT_CASES[case]) == []


@pytest.mark.parametrize(
    "case", ["pointer in question", "two OPT records", "trailing garbage after the question"]
)
def test_formerr_over_tcp_and_connection_goes_on(rich_server: ServerProcess, case: str) -> None:
    with tcp_connect(rich_server.addr) as s:
        s.sendall(frame(FORMERR_CASES[case]) + frame(PROBE))
        first, second = tcp_read(s), tcp_read(s)
    assert first is not None and second is not None
    assert dns.message.from_wire(first).rcode() == dns.rcode.FORMERR
    assert dns.message.from_wire(second).id == PROBE_ID


def test_zero_length_tcp_frame(rich_server: ServerProcess) -> None:
    """A zero-length message has no header: no reply to it; the next query is answered."""
    with tcp_connect(rich_server.addr) as s:
        s.sendall(b"\x00\x00" + frame(b"\x12") + frame(PROBE))
        wire = tcp_read(s)
    assert wire is not None
    assert dns.message.from_wire(wire).id == PROBE_ID, "something answered the empty frame"


def test_short_tcp_frames_and_responses_get_no_reply(rich_server: ServerProcess) -> None:
    response = bytes((VALID[0], VALID[1], VALID[2] | 0x80)) + VALID[3:]
    with tcp_connect(rich_server.addr) as s:
        frames = [frame(VALID[:n]) for n in range(1, 12)] + [frame(response)]
        s.sendall(b"".join(frames) + frame(PROBE))
        wire = tcp_read(s)
    assert wire is not None and dns.message.from_wire(wire).id == PROBE_ID


# -- fuzzing --------------------------------------------------------------------------

SEEDS = [VALID, VALID_EDNS, *(FORMERR_CASES[k] for k in sorted(FORMERR_CASES))]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid or malformed query with random bytes flipped, cut, inserted or appended."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "append", "opcode", "count"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "opcode" and len(data) > 2:
            data[2] = (data[2] & 0x87) | (draw(st.integers(0, 15)) << 3)
        elif op == "count" and len(data) >= 12:
            i = draw(st.sampled_from([4, 6, 8, 10]))
            data[i : i + 2] = draw(st.integers(0, 3)).to_bytes(2, "big")
        elif op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0x01, 0x29, 0x3F, 0x40, 0x80, 0xC0, 0xFF]))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            data += draw(st.binary(max_size=64))
    # Keep QR clear most of the time: responses are dropped before any parsing.
    if len(data) > 2 and draw(st.booleans()):
        data[2] &= 0x7F
    return bytes(data)


def check_reply(data: bytes, replies: list[bytes]) -> None:
    assert len(replies) <= 1, "one query, more than one reply"
    if len(data) < 12 or data[2] & 0x80:
        assert not replies, "a reply to a packet without a readable query header"
        return
    for reply in replies:
        try:
            m = dns.message.from_wire(reply)
        except dns.exception.DNSException as e:
            raise AssertionError(f"unparsable reply {reply.hex()} to {data.hex()}: {e}") from e
        assert m.id == struct.unpack(">H", data[:2])[0]
        assert m.flags & dns.flags.QR


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.one_of(mutated(), st.binary(max_size=300)))
def test_fuzz_never_crashes_and_replies_parse(rich_server: ServerProcess, data: bytes) -> None:
    check_reply(data, send_then_probe(rich_server.addr, data))


PARENTS = [b"", b"\x04wild", b"\x03web", b"\x03ent", b"\x05child", b"\x05mixed"]
ORIGIN_WIRE = b"".join(bytes((len(p),)) + p.encode() for p in RICH_ORIGIN.rstrip(".").split(".")) + b"\x00"


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    label=st.binary(min_size=1, max_size=63),
    parent=st.sampled_from(PARENTS),
    qtype=st.sampled_from([1, 16, 28, 255]),
    edns=st.booleans(),
)
def test_any_first_label_below_a_name_is_answered_as_afresh(
    rich_server: ServerProcess, label: bytes, parent: bytes, qtype: int, edns: bool
) -> None:
    """A name below an existing one, its first label any bytes at all (dots,
    zero octets, capitals, bytes that look like pointers): over UDP it may be
    answered from the negative replies remembered per parent (``Table.below``),
    and must be exactly what the server answers over TCP, where every query is
    answered afresh. Asked twice over UDP, so the second may come from memory."""
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" if edns else b""
    wire = (
        struct.pack(">HHHHHH", 0x4242, 0, 1, 0, 0, 1 if edns else 0)
        + bytes((len(label),))
        + label
        + parent
        + ORIGIN_WIRE
        + struct.pack(">HH", qtype, 1)
        + opt
    )
    fresh = tcp_raw(rich_server.addr, wire)
    for _ in range(2):
        assert udp_raw(rich_server.addr, wire) == fresh
