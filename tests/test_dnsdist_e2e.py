"""End to end through resolver-side software from Debian: dnsdist and Unbound add ECS for their clients.

Clients send queries from different loopback source addresses (the socket is
bound to 127.10.1.5, 127.20.1.5, ...); the fedns locality map puts
127.10.0.0/16 in us-east and 127.20.0.0/16 in us-west. The resolver-side
component adds ECS from each client's address (/24) and forwards our zone to
fedns; each client must get its own locality's answer.

How the SCOPE is verified: dnsdist removes the ECS option it added before it
answers its client, so the client cannot see it. Between dnsdist (or
Unbound) and fedns sits ``Tap``, a plain UDP relay in this file that passes
every datagram through unchanged and keeps a copy: the test reads the ECS
option dnsdist sent and the SCOPE fedns returned *in that same exchange*.
A direct query to fedns with the same subnet must agree. Unbound with its
``subnetcache`` module then shows what the SCOPE is for: a second client in
the same /16 but another /24 is answered from Unbound's cache (no new query
reaches fedns), because fedns said the answer holds for the whole /16, while
a client in another /16 makes a new query.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
from dnsclient import make
from refservers import DNSDIST, _start, have, start_dnsdist, wait_zone
from servers import FED_ORIGIN, FED_ZONE, LOOPBACK, ServerProcess, start_fedns, write_config
from test_ecs_conformance import ecs_options

pytestmark = pytest.mark.reference

ORIGIN, ZONE = FED_ORIGIN, FED_ZONE
EAST, WEST = "127.1.0.1", "127.2.0.1"
FEDERATION: dict[str, Any] = {
    "zone": ORIGIN,
    "clusters": [
        {"name": "east", "region": "us-east", "zone": "us-east-1a"},
        {"name": "west", "region": "us-west", "zone": "us-west-2a"},
    ],
    "localities": [
        {"cidr": "127.10.0.0/16", "region": "us-east"},
        {"cidr": "127.20.0.0/16", "region": "us-west"},
    ],
    "defaults": {"ttl": 30},
    "services": [
        {
            "namespace": "shop",
            "name": "cart",
            "endpoints": {"east": [{"addresses": [EAST]}], "west": [{"addresses": [WEST]}]},
        },
    ],
}
CART = f"cart.shop.{ORIGIN}"
# Client source address -> the answer its locality must get. The 127.10/16 and
# 127.20/16 rules sit alone in 127/8 (whose unmapped rest is not a place, RFC 7871
# section 10): the answer holds for exactly the /16, so SCOPE 16.
CLIENTS = {"127.10.1.5": EAST, "127.20.1.5": WEST}
SCOPE = 16

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
needs_dnsdist = pytest.mark.skipif(not have(DNSDIST), reason="dnsdist not installed (apt: dnsdist)")
needs_unbound = pytest.mark.skipif(not have(UNBOUND), reason="unbound not installed (apt: unbound)")


# -- a recording UDP relay ---------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    query: bytes
    reply: bytes

    @property
    def qname(self) -> str:
        return dns.message.from_wire(self.query).question[0].name.to_text().lower()

    @property
    def query_ecs(self) -> bytes | None:
        opts = ecs_options(self.query)
        return opts[0] if opts else None

    @property
    def reply_ecs(self) -> bytes | None:
        opts = ecs_options(self.reply)
        return opts[0] if opts else None


class Tap:
    """Relays UDP between a resolver and fedns, unchanged, keeping every exchange."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(0.1)
        self.addr: tuple[str, int] = self.sock.getsockname()
        self.exchanges: list[Exchange] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.settimeout(2.0)
            up.bind((LOOPBACK, 0))
            while not self._stop.is_set():
                try:
                    data, peer = self.sock.recvfrom(65535)
                except TimeoutError:
                    continue
                up.sendto(data, self.upstream)
                try:
                    reply = up.recv(65535)
                except TimeoutError:
                    continue
                self.exchanges.append(Exchange(data, reply))
                self.sock.sendto(reply, peer)

    def for_name(self, name: str) -> list[Exchange]:
        return [e for e in list(self.exchanges) if e.qname == name.lower()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def ecs_bytes(cidr: str) -> bytes:
    n = ipaddress.ip_network(cidr)
    return (
        struct.pack(">HBB", 1, n.prefixlen, 0) + n.network_address.packed[: (n.prefixlen + 7) // 8]
    )


def ask_from(
    source: str, server: tuple[str, int], name: str, rd: bool = False
) -> dns.message.Message:
    q = make(name, "A", edns=0)
    if rd:
        q.flags |= dns.flags.RD
    return dns.query.udp(q, server[0], port=server[1], source=source, timeout=3.0)


def a_records(r: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset}


@pytest.fixture
def fedns_and_tap(tmp_path: Path) -> Iterator[tuple[ServerProcess, Tap]]:
    sp = start_fedns(
        write_config(tmp_path / "fedns", {ORIGIN: ZONE}, {"federation": FEDERATION}),
        tmp_path / "fedns",
    )
    tap = Tap(sp.addr)
    try:
        wait_zone(sp.addr, ORIGIN)
        yield sp, tap
    finally:
        tap.close()
        sp.stop()


@needs_dnsdist
def test_dnsdist_clients_get_their_locality_with_scope(
    fedns_and_tap: tuple[ServerProcess, Tap], tmp_path: Path
) -> None:
    fed, tap = fedns_and_tap
    dd = start_dnsdist(tmp_path / "dnsdist", tap.addr, ORIGIN, ecs_v4=24)
    try:
        for src, want in CLIENTS.items():
            r = ask_from(src, dd.addr, CART)
            assert a_records(r) == {want}, src
            assert not [o for o in r.options if isinstance(o, dns.edns.ECSOption)], (
                "dnsdist strips the ECS it added from its reply to the client"
            )
            subnet = str(ipaddress.ip_network(f"{src}/24", strict=False))
            sent = ecs_bytes(subnet)
            seen = [e for e in tap.for_name(CART) if e.query_ecs == sent]
            assert seen, (
                f"dnsdist did not send ECS {subnet} for {src}: {[e.query_ecs for e in tap.for_name(CART)]}"
            )
            echo = seen[-1].reply_ecs
            assert echo is not None, "fedns answered an ECS query without ECS"
            assert echo[:3] == sent[:3] and echo[4:] == sent[4:], "FAMILY/SOURCE/ADDRESS echoed"
            assert echo[3] == SCOPE, f"SCOPE {echo[3]} for {subnet}"
            # The same subnet asked directly: the same answer and SCOPE.
            direct = dns.query.udp(
                make(CART, "A", edns=0, options=[dns.edns.GenericOption(8, sent)]),
                fed.host,
                port=fed.port,
                timeout=3.0,
            )
            assert a_records(direct) == {want}
            assert [o.scopelen for o in direct.options if isinstance(o, dns.edns.ECSOption)] == [
                SCOPE
            ]
    finally:
        dd.stop()


# -- Unbound with the subnet cache ---------------------------------------------------------------


def start_unbound(workdir: Path, upstream: tuple[str, int], zone: str) -> ServerProcess:
    """Unbound on a free loopback port: ``subnetcache`` on, ECS sent to ``upstream``
    only, our zone stubbed to it, nothing else resolvable (no root hints used)."""
    workdir.mkdir(parents=True, exist_ok=True)
    uhost, uport = upstream

    def argv(port: int) -> list[str]:
        conf = workdir / "unbound.conf"
        conf.write_text(
            f"""server:
  interface: {LOOPBACK}@{port}
  port: {port}
  do-ip6: no
  do-daemonize: no
  use-syslog: no
  logfile: ""
  chroot: ""
  username: ""
  directory: "{workdir}"
  pidfile: "{workdir}/unbound.pid"
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  qname-minimisation: no
  module-config: "subnetcache iterator"
  send-client-subnet: {uhost}
  max-client-subnet-ipv4: 24
  verbosity: 1
  num-threads: 1
  local-zone: "." refuse
  local-zone: "{zone}" transparent
stub-zone:
  name: "{zone}"
  stub-addr: {uhost}@{uport}
remote-control:
  control-enable: no
"""
        )
        return [UNBOUND, "-d", "-c", str(conf)]

    return _start("unbound", argv, workdir)


@needs_unbound
def test_unbound_subnet_cache_honours_the_scope(
    fedns_and_tap: tuple[ServerProcess, Tap], tmp_path: Path
) -> None:
    _, tap = fedns_and_tap
    ub = start_unbound(tmp_path / "unbound", tap.addr, ORIGIN)
    try:
        wait_zone(ub.addr, ORIGIN)
        # First client in 127.10/16: Unbound asks fedns with ECS 127.10.1.0/24.
        assert a_records(ask_from("127.10.1.5", ub.addr, CART, rd=True)) == {EAST}
        first = tap.for_name(CART)
        assert [e.query_ecs for e in first] == [ecs_bytes("127.10.1.0/24")]
        assert first[0].reply_ecs is not None and first[0].reply_ecs[3] == SCOPE
        # Another /24 of the same /16: served from Unbound's cache (the SCOPE said /16).
        assert a_records(ask_from("127.10.99.5", ub.addr, CART, rd=True)) == {EAST}
        assert len(tap.for_name(CART)) == 1, "Unbound asked again inside the scope"
        # A client in 127.20/16 is outside that scope: a new query, another answer.
        assert a_records(ask_from("127.20.1.5", ub.addr, CART, rd=True)) == {WEST}
        later = tap.for_name(CART)
        assert [e.query_ecs for e in later[1:]] == [ecs_bytes("127.20.1.0/24")]
        assert later[1].reply_ecs is not None and later[1].reply_ecs[3] == SCOPE
    finally:
        ub.stop()
