"""The sockets of one serving process and the transports on them."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket

try:
    import resource
except ImportError:  # pragma: no cover - not on Linux/macOS: no limit to raise
    resource = None  # type: ignore[assignment]

import structlog

from .runtime import Runtime
from .tcp import SNDBUF, Connections, TcpProtocol
from .udp import MmsgServer, UdpProtocol, resolve_mode

log = structlog.get_logger("fedns.serve")

# File descriptors kept for everything but TCP clients: sockets, zone files, the
# admin API and Kubernetes watches of a single process, a pipe per worker.
FD_RESERVE = 128
# Connections the kernel completes before fedns accepts them (capped by
# net.core.somaxconn): a burst of clients reconnecting at once must not lose SYNs.
LISTEN_BACKLOG = 4096


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
    # Accepted connections inherit the listener's send buffer: set once here,
    # not per connection (tcp.py says why it is fixed).
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
    s.bind((host, port))
    s.listen(LISTEN_BACKLOG)
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


class Transports:
    """The running transports of one process: call it to stop them, or ``retire``."""

    def __init__(
        self, rt: Runtime, udp_sock: socket.socket, mmsg: MmsgServer | None,
        udp_transport: asyncio.BaseTransport | None, tcp_server: asyncio.AbstractServer,
        conns: Connections,
    ) -> None:
        self.rt, self.udp_sock, self.mmsg = rt, udp_sock, mmsg
        self.udp_transport, self.tcp_server, self.conns = udp_transport, tcp_server, conns

    def __call__(self) -> None:
        if self.mmsg is not None:
            self.mmsg.close()
        elif self.udp_transport is not None:
            self.udp_transport.close()
        self.tcp_server.close()
        self.conns.close_all()

    async def retire(self) -> None:
        """Stop reading the sockets, which another process goes on reading (a worker
        of the next generation inherited the same ones): what is queued in them is
        its to answer. No shutdown(): that would end the socket for everyone. The
        TCP connections held here are served until their clients close them or
        ``tcp.idle_timeout`` does (bounded by it plus ``message_timeout``)."""
        loop = asyncio.get_running_loop()
        if self.mmsg is not None:
            # The thread sees ``stopping`` at its next batch or receive timeout
            # (0.5 s); the socket itself is left open.
            self.mmsg.stopping = True
            await loop.run_in_executor(None, self.mmsg.thread.join, 2.0)
        elif self.udp_transport is not None:
            self.udp_transport.close()  # this process's descriptor only
        self.tcp_server.close()  # likewise: the listener lives on in the others
        tcp = self.rt.cfg.tcp
        deadline = loop.time() + tcp.idle_timeout + tcp.message_timeout + 1.0
        while len(self.conns) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.conns.close_all()


async def run_transports(
    rt: Runtime, udp_sock: socket.socket, tcp_sock: socket.socket
) -> Transports:
    """Serve UDP (mmsg thread or uvloop, per ``dns.udp``) and TCP; returns what stops them."""
    loop = asyncio.get_running_loop()
    conns = Connections(rt, fd_room(rt.cfg.tcp.max_connections))
    mmsg: MmsgServer | None = None
    udp_transport: asyncio.BaseTransport | None = None
    if resolve_mode(rt.cfg.udp) == "mmsg":
        mmsg = MmsgServer(rt, udp_sock)
        mmsg.start()
    else:
        udp_transport, _ = await loop.create_datagram_endpoint(
            lambda: UdpProtocol(rt), sock=udp_sock
        )
    # A partial, not a lambda: no Python frame per accepted connection.
    tcp_server = await loop.create_server(
        functools.partial(TcpProtocol, rt, conns), sock=tcp_sock, backlog=LISTEN_BACKLOG
    )
    return Transports(rt, udp_sock, mmsg, udp_transport, tcp_server, conns)


def fd_room(max_connections: int) -> int | None:
    """How many TCP clients this process's file descriptor limit allows.

    The soft ``RLIMIT_NOFILE`` is often 1,024, below ``tcp.max_connections``;
    when it is too low it is raised to the hard limit (any process may; Go's
    runtime does so for every program). If even that is too low, the cap
    becomes what fits, with a warning, rather than accept() failing with EMFILE
    under load (Knot likewise defaults its cap to half the limit).
    None: no limit to honour."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < need:
        # An unlimited hard limit cannot be the soft one (the kernel's nr_open caps it).
        for target in (hard, need) if hard != resource.RLIM_INFINITY else (need,):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            except (ValueError, OSError):
                continue
            soft = target
            break
    if soft == resource.RLIM_INFINITY:
        return None
    room = max(1, soft - FD_RESERVE)
    if room < max_connections:
        log.warning(
            "tcp_fd_limit",
            max_connections=max_connections,
            nofile=soft,
            effective=room,
            hint="raise the hard limit (ulimit -Hn, systemd LimitNOFILE=) or lower tcp.max_connections",
        )
    return room


def install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a hard dependency
        log.warning("uvloop_missing", hint="pip install uvloop; plain asyncio is ~4x slower")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
