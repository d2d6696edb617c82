"""RFC 7766 out-of-order completion, for real: a query that must wait (a federated name
while the cluster has not synced yet) completes after later pipelined queries on the
same TCP connection, and then with the synced data rather than a premature NXDOMAIN."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import dns.message
import dns.rcode
from fakekube import ThreadedFakeKubes, endpoint, endpoint_slice, federation_config, service
from servers import FednsFactory

ZONE = """$ORIGIN global.example.test.
$TTL 60
@    IN SOA ns1 hostmaster 1 3600 600 86400 30
     IN NS  ns1
ns1  IN A   127.0.0.53
www  IN A   127.0.0.80
"""


def _absolute(fed: dict, directory: Path) -> dict:  # type: ignore[type-arg]
    """The fake's kubeconfig path is relative to ``directory``; the server's config lives elsewhere."""
    for c in fed["clusters"]:
        c["kubeconfig"] = str(directory / c["kubeconfig"])
    return fed


def _frame(name: str, qid: int) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    wire = q.to_wire()
    return struct.pack(">H", len(wire)) + wire


def _read(sock: socket.socket) -> dns.message.Message:
    (n,) = struct.unpack(">H", sock.recv(2, socket.MSG_WAITALL))
    return dns.message.from_wire(sock.recv(n, socket.MSG_WAITALL))


def test_waiting_query_completes_after_later_ones(fedns_server: FednsFactory, tmp_path: Path) -> None:
    with ThreadedFakeKubes(["east"]) as fakes:
        east = fakes["east"]
        fakes.call(lambda: east.apply("services", service("shop", "cart")))
        fakes.call(
            lambda: east.apply(
                "endpointslices", endpoint_slice("shop", "cart-1", "cart", [endpoint("127.1.0.1")])
            )
        )
        fakes.run(east.down())  # fedns starts while the API server is unreachable
        fed = _absolute(federation_config(fakes.kubes, tmp_path), tmp_path)
        srv = fedns_server(
            {"global.example.test.": ZONE}, {"federation": fed, "dns": {"startup_wait": 20}}
        )
        with socket.create_connection(srv.addr, timeout=15) as s:
            s.sendall(_frame("cart.shop.global.example.test.", 1) + _frame("www.global.example.test.", 2))
            first = _read(s)  # the zone answer is not held behind the waiting query
            assert first.id == 2
            assert [rd.to_text() for rrset in first.answer for rd in rrset] == ["127.0.0.80"]
            time.sleep(0.3)
            fakes.run(east.up())
            second = _read(s)
        srv.stop()  # its watch streams end with it, so the fake can shut down promptly
        assert second.id == 1
        assert second.rcode() == dns.rcode.NOERROR, "no premature NXDOMAIN before the first sync"
        assert [rd.to_text() for rrset in second.answer for rd in rrset] == ["127.1.0.1"]


def test_waiting_is_bounded_by_startup_wait(fedns_server: FednsFactory, tmp_path: Path) -> None:
    with ThreadedFakeKubes(["east"]) as fakes:
        fakes.run(fakes["east"].down())  # and it never comes back
        fed = _absolute(federation_config(fakes.kubes, tmp_path), tmp_path)
        srv = fedns_server(
            {"global.example.test.": ZONE}, {"federation": fed, "dns": {"startup_wait": 1.0}}
        )
        with socket.create_connection(srv.addr, timeout=15) as s:
            s.sendall(_frame("cart.shop.global.example.test.", 7))
            reply = _read(s)
        assert reply.id == 7
        assert reply.rcode() == dns.rcode.NXDOMAIN  # after the bound, the zone's own answer


def test_inflight_cap_pauses_reading(fedns_server: FednsFactory, tmp_path: Path) -> None:
    """With tcp.max_inflight 2, two held queries stop the connection from reading more
    (RFC 7766 6.2.1.1), so a third query waits until one of them completes."""
    with ThreadedFakeKubes(["east"]) as fakes:
        east = fakes["east"]
        fakes.call(lambda: east.apply("services", service("shop", "cart")))
        fakes.run(east.down())
        fed = _absolute(federation_config(fakes.kubes, tmp_path), tmp_path)
        srv = fedns_server(
            {"global.example.test.": ZONE},
            {"federation": fed, "dns": {"startup_wait": 20}, "tcp": {"max_inflight": 2}},
        )
        with socket.create_connection(srv.addr, timeout=15) as s:
            s.sendall(
                _frame("a.shop.global.example.test.", 1)
                + _frame("b.shop.global.example.test.", 2)
                + _frame("www.global.example.test.", 3)
            )
            s.settimeout(0.8)
            try:
                early = s.recv(2)
            except TimeoutError:
                early = b""
            assert early == b"", "the third query was read and answered past the in-flight cap"
            s.settimeout(15)
            fakes.run(east.up())
            ids = sorted(_read(s).id for _ in range(3))
        srv.stop()
        assert ids == [1, 2, 3]
