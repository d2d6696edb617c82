"""A small DNS client for tests: dnspython messages plus raw bytes over UDP and TCP.

dnspython builds and parses messages (an independent implementation); raw
helpers send exactly the bytes a test made, including malformed ones, and
say "silence" instead of raising when nothing comes back.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterable, Sequence

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype

Addr = tuple[str, int]

# Long enough for a loaded 2-core machine, short enough that silence is cheap.
SILENCE_S = 0.4
TIMEOUT_S = 3.0


def make(
    name: str,
    rdtype: str | int = "A",
    rdclass: str | int = "IN",
    *,
    edns: int | None = None,
    payload: int = 1232,
    do: bool = False,
    options: Sequence[dns.edns.Option] = (),
    qid: int | None = None,
) -> dns.message.QueryMessage:
    """A query as a stub would send it; ``edns=None`` means no OPT record."""
    q = dns.message.make_query(
        name,
        dns.rdatatype.RdataType.make(rdtype),
        dns.rdataclass.RdataClass.make(rdclass),
        use_edns=edns if edns is not None else False,
        payload=payload,
        want_dnssec=do,
        options=list(options) if edns is not None else None,
    )
    if edns is None:
        q.use_edns(False)
    q.flags &= ~dns.flags.RD  # an authoritative server is asked without RD
    if qid is not None:
        q.id = qid
    return q


def udp_raw(addr: Addr, data: bytes, timeout: float = TIMEOUT_S) -> bytes | None:
    """Send one datagram; the first reply, or None after ``timeout`` of silence."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(data, addr)
        try:
            return s.recv(65535)
        except TimeoutError:
            return None


def udp(addr: Addr, q: dns.message.Message, timeout: float = TIMEOUT_S) -> dns.message.Message:
    """Send a query over UDP; the parsed reply (raises on silence)."""
    wire = udp_raw(addr, q.to_wire(), timeout)
    if wire is None:
        raise TimeoutError(f"no UDP reply from {addr} to {q.question}")
    return dns.message.from_wire(wire)


def frame(msg: bytes) -> bytes:
    """RFC 1035 4.2.2 / RFC 7766: a two-byte length, then the message."""
    return struct.pack(">H", len(msg)) + msg


def tcp_connect(addr: Addr, timeout: float = TIMEOUT_S) -> socket.socket:
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes | None:
    """``n`` bytes, or None if the peer closed first."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def tcp_read(s: socket.socket) -> bytes | None:
    """One framed message, or None when the connection was closed."""
    head = recv_exact(s, 2)
    if head is None:
        return None
    (n,) = struct.unpack(">H", head)
    return recv_exact(s, n)


def tcp_raw(addr: Addr, data: bytes, timeout: float = TIMEOUT_S) -> bytes | None:
    """One framed exchange on a fresh connection."""
    with tcp_connect(addr, timeout) as s:
        s.sendall(frame(data))
        return tcp_read(s)


def tcp(addr: Addr, q: dns.message.Message, timeout: float = TIMEOUT_S) -> dns.message.Message:
    wire = tcp_raw(addr, q.to_wire(), timeout)
    if wire is None:
        raise ConnectionError(f"TCP connection to {addr} closed without a reply")
    return dns.message.from_wire(wire)


def closed_by_peer(s: socket.socket, within: float) -> bool:
    """True if the peer closes ``s`` (EOF or reset) within ``within`` seconds."""
    s.settimeout(within)
    end = time.monotonic() + within
    try:
        while time.monotonic() < end:
            data = s.recv(65535)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def rrsets_text(sections: Iterable[dns.rrset.RRset]) -> set[str]:
    """Each RR as one lowercased line, for set comparisons."""
    out = set()
    for rrset in sections:
        for line in rrset.to_text().splitlines():
            out.add(line.lower())
    return out


def name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)
