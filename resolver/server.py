"""UDP and TCP transports (uvloop), worker processes and reload.

The transports only move bytes: every decision is ``Table.respond``. A reply
is computed synchronously from precomputed bytes, so a slow client can never
hold up another; TCP flow control (pause reading while the peer does not
read) bounds what one connection can have in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from .answers import Table
from .config import Config, load_config
from .wire import SERVFAIL, header_only
from .zone import Zone, load_zone_file

log = structlog.get_logger("fedns.server")

_LEN = struct.Struct(">H")


def build_table(cfg: Config) -> Table:
    """Load every zone of the config; any error raises before anything is served."""
    zones: list[Zone] = [load_zone_file(z.file, z.origin) for z in cfg.zones]
    return Table(zones, cfg.max_udp_payload, cfg.identity, cfg.version)


@dataclass
class Stats:
    """Plain counters on the hot path; exported at scrape time (no locks per query)."""

    udp_queries: int = 0
    tcp_queries: int = 0
    dropped: int = 0
    errors: int = 0
    tcp_connections: int = 0
    tcp_refused: int = 0
    rcodes: list[int] = field(default_factory=lambda: [0] * 16)


class Runtime:
    """What the transports read: the current table, swapped whole on change."""

    def __init__(self, table: Table, cfg: Config) -> None:
        self.table = table
        self.cfg = cfg
        self.stats = Stats()

    def answer(self, data: bytes, tcp: bool) -> bytes | None:
        try:
            resp = self.table.respond(data, tcp)
        except Exception:  # never let one packet take the loop down
            self.stats.errors += 1
            log.exception("query_failed", size=len(data))
            resp = header_only(data, SERVFAIL) if len(data) >= 12 and not data[2] & 0x80 else None
        if resp is None:
            self.stats.dropped += 1
        else:
            self.stats.rcodes[resp[3] & 0x0F] += 1
        return resp


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        rt = self.rt
        rt.stats.udp_queries += 1
        resp = rt.answer(data, False)
        if resp is not None and self.transport is not None:
            self.transport.sendto(resp, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp_error", error=str(exc))


class TcpProtocol(asyncio.Protocol):
    """RFC 7766: 2-byte length framing, pipelining, idle timeout, bounded buffers."""

    def __init__(self, rt: Runtime, conns: set[TcpProtocol]) -> None:
        self.rt = rt
        self.conns = conns
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.last = 0.0
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        tcp = self.rt.cfg.tcp
        if len(self.conns) >= tcp.max_connections:
            self.rt.stats.tcp_refused += 1
            transport.close()
            return
        self.conns.add(self)
        self.rt.stats.tcp_connections += 1
        # Bound what a peer that does not read can make us buffer: past this,
        # writes pause reading, so no new queries are taken from it.
        self.transport.set_write_buffer_limits(high=tcp.max_inflight * 1024)
        self.last = self.loop.time()
        self.idle = self.loop.call_later(tcp.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        timeout = self.rt.cfg.tcp.idle_timeout
        left = self.last + timeout - self.loop.time()
        if left > 0:
            self.idle = self.loop.call_later(left, self._check_idle)
        elif self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        buf = self.buf
        buf += data
        out = []
        rt = self.rt
        while len(buf) >= 2:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + n:
                break
            msg = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            rt.stats.tcp_queries += 1
            resp = rt.answer(msg, True)
            if resp is not None:
                out.append(_LEN.pack(len(resp)) + resp)
        if len(buf) > 2 + 65535:  # cannot happen with a valid peer; never grow without bound
            assert self.transport is not None
            self.transport.close()
            return
        if out and self.transport is not None:
            # One write per batch: the length prefix and message go out together.
            self.transport.write(b"".join(out))

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        if self.idle is not None:
            self.idle.cancel()


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
    loop = asyncio.get_running_loop()
    conns: set[TcpProtocol] = set()
    udp_transport, _ = await loop.create_datagram_endpoint(lambda: UdpProtocol(rt), sock=udp_sock)
    tcp_server = await loop.create_server(lambda: TcpProtocol(rt, conns), sock=tcp_sock)

    def close() -> None:
        udp_transport.close()
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


async def serve_worker(
    cfg: Config,
    table: Table,
    udp_sock: socket.socket,
    tcp_sock: socket.socket,
    ready: Callable[[], None] | None = None,
) -> None:
    """One serving process: transports, SIGHUP reload, SIGTERM/SIGINT stop."""
    rt = Runtime(table, cfg)
    close = await run_transports(rt, udp_sock, tcp_sock)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        # Safe reload: the new config and zones are loaded fully off to the
        # side; on any error the running table stays and the error is logged.
        try:
            new_cfg = load_config(cfg.path) if cfg.path else cfg
            new_table = build_table(new_cfg)
        except Exception as e:
            log.error("reload_failed", error=str(e), hint="fix the file and send SIGHUP again")
            return
        rt.table = new_table
        rt.cfg = new_cfg
        log.info("reloaded", zones=[z.origin for z in new_cfg.zones])

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    if ready is not None:
        ready()
    await stop.wait()
    close()


def _worker_main(cfg: Config, table: Table, host: str, port: int) -> None:
    install_uvloop()
    udp_sock, tcp_sock = bind_sockets(host, port, True)
    asyncio.run(serve_worker(cfg, table, udp_sock, tcp_sock))


def serve(cfg: Config, host: str, port: int, workers: int) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit code."""
    table = build_table(cfg)
    install_uvloop()
    if workers <= 1:
        udp_sock, tcp_sock = bind_sockets(host, port, False)
        bound = udp_sock.getsockname()[1]
        log.info("serving", dns=f"{host}:{bound}", zones=[z.origin for z in cfg.zones], workers=1)
        asyncio.run(serve_worker(cfg, table, udp_sock, tcp_sock))
        return 0
    # SO_REUSEPORT: every worker binds the same address and the kernel spreads
    # queries over them. A probe bind first resolves port 0 and catches errors
    # in the parent, before any worker starts.
    probe_u, probe_t = bind_sockets(host, port, True)
    port = probe_u.getsockname()[1]
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_worker_main, args=(cfg, table, host, port), daemon=True)
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    probe_u.close()
    probe_t.close()
    log.info("serving", dns=f"{host}:{port}", zones=[z.origin for z in cfg.zones], workers=workers)

    stopping = False

    def forward(sig: int, _frame: Any) -> None:
        nonlocal stopping
        if sig != signal.SIGHUP:
            stopping = True
        for p in procs:
            if p.pid is not None and p.is_alive():
                os.kill(p.pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = 0
    for p in procs:
        while p.is_alive():
            p.join(0.5)
        if p.exitcode and not stopping:
            code = 1
    return code
