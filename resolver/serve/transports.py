"""The sockets of one serving process and the transports on them."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import structlog

from .runtime import Runtime
from .tcp import TcpProtocol
from .udp import MmsgServer, UdpProtocol, resolve_mode

log = structlog.get_logger("fedns.serve")


def _udp_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((host, port))
    s.setblocking(False)
    return s


def _tcp_socket(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind((host, port))
    s.listen(1024)
    s.setblocking(False)
    return s


def bind_sockets(host: str, port: int, reuse_port: bool) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP on the same address; port 0 picks one free for both."""
    if port != 0:
        return _udp_socket(host, port, reuse_port), _tcp_socket(host, port, reuse_port)
    for _ in range(50):
        u = _udp_socket(host, 0, reuse_port)
        try:
            t = _tcp_socket(host, u.getsockname()[1], reuse_port)
        except OSError:
            u.close()
            continue
        return u, t
    raise OSError("could not find a port free for both UDP and TCP")


async def run_transports(
    rt: Runtime, udp_sock: socket.socket, tcp_sock: socket.socket
) -> Callable[[], None]:
    """Serve UDP (mmsg thread or uvloop, per ``dns.udp``) and TCP; returns what stops them."""
    loop = asyncio.get_running_loop()
    conns: set[TcpProtocol] = set()
    close_udp: Callable[[], None]
    if resolve_mode(rt.cfg.udp) == "mmsg":
        mmsg = MmsgServer(rt, udp_sock)
        mmsg.start()
        close_udp = mmsg.close
    else:
        udp_transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpProtocol(rt), sock=udp_sock
        )
        close_udp = udp_transport.close
    tcp_server = await loop.create_server(lambda: TcpProtocol(rt, conns), sock=tcp_sock)

    def close() -> None:
        close_udp()
        tcp_server.close()
        for c in list(conns):
            if c.transport is not None:
                c.transport.close()

    return close


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        log.warning("uvloop_missing", hint="pip install uvloop; plain asyncio is ~4x slower")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
