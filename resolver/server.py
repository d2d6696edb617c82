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
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog

from .answers import Table
from .config import Config, ConfigError, load_config
from .control import Control
from .fedconfig import FederationConfig, parse_federation
from .routing import Routing, parse_routing
from .udp import MmsgServer, resolve_mode
from .wire import SERVFAIL, header_only
from .zone import Zone, key_of, load_zone_file

log = structlog.get_logger("fedns.server")

_LEN = struct.Struct(">H")


@dataclass
class Instance:
    """Everything loaded from one config: validated as a whole before it is used."""

    table: Table
    fed: FederationConfig | None
    routing: Routing


def load_instance(cfg: Config) -> Instance:
    """Load zones, federation and routing; any error raises before anything is served."""
    fed = parse_federation(cfg)
    routing = parse_routing(fed.routing if fed else None, cfg.path)
    zones: list[Zone] = [load_zone_file(z.file, z.origin) for z in cfg.zones]
    if fed is not None and not any(z.origin == fed.zone for z in cfg.zones):
        raise ConfigError(
            f"{cfg.path}: federation.zone: {fed.zone} is not one of the configured zones; "
            "add it under zones: with its SOA/NS zone file"
        )
    table = Table(zones, cfg.max_udp_payload, cfg.identity, cfg.version, routing.locator)
    if fed is not None and cfg.startup_wait > 0:
        table.waiting = (key_of(fed.zone),)
    return Instance(table, fed, routing)


@dataclass
class Stats:
    """Plain counters on the hot path; exported at scrape time (no locks per query)."""

    udp_queries: int = 0
    tcp_queries: int = 0
    dropped: int = 0
    errors: int = 0
    tcp_connections: int = 0
    tcp_refused: int = 0
    udp_send_errors: int = 0
    rcodes: list[int] = field(default_factory=lambda: [0] * 16)


class Runtime:
    """What the transports read: the current table, swapped whole on change."""

    def __init__(self, table: Table, cfg: Config) -> None:
        self.table = table
        self.cfg = cfg
        self.stats = Stats()
        # Held by the mmsg UDP thread while it answers a batch, and by the loop
        # thread while it changes the table in place: no query sees half an update.
        self.lock = threading.Lock()
        self.synced = asyncio.Event()
        if table.waiting:
            # Never wait longer than this for the first sync, whatever happens.
            asyncio.get_running_loop().call_later(cfg.startup_wait, self.mark_synced)
        else:
            self.synced.set()

    def mark_synced(self) -> None:
        self.table.waiting = ()
        self.synced.set()

    def apply_plans(self, plans: Sequence[Any], removed: Sequence[Any]) -> None:
        with self.lock:
            self.table.apply_plans(plans, removed)

    def set_table(self, table: Table, cfg: Config) -> None:
        if self.synced.is_set():
            table.waiting = ()
        self.table, self.cfg = table, cfg

    def answer(self, data: bytes, tcp: bool, addr: Any = None) -> bytes | None:
        """The reply, None to stay silent, or WAIT (b"") to ask again after the first sync."""
        try:
            resp = self.table.respond(data, tcp, addr)
        except Exception:  # never let one packet take the loop down
            resp = self.failed(data)
        if resp:
            self.stats.rcodes[resp[3] & 0x0F] += 1
        elif resp is None:
            self.stats.dropped += 1
        return resp

    def failed(self, data: bytes) -> bytes | None:
        """The reply when answering raised: SERVFAIL if the header is readable."""
        self.stats.errors += 1
        log.exception("query_failed", size=len(data))
        return header_only(data, SERVFAIL) if len(data) >= 12 and not data[2] & 0x80 else None

    async def answer_after_sync(self, data: bytes, tcp: bool, addr: Any) -> bytes | None:
        await self.synced.wait()
        return self.answer(data, tcp, addr) or None


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        rt = self.rt
        rt.stats.udp_queries += 1
        resp = rt.answer(data, False, addr)
        if resp:
            if self.transport is not None:
                self.transport.sendto(resp, addr)
        elif resp is not None:  # WAIT: answered once the federation has synced
            task = asyncio.get_running_loop().create_task(rt.answer_after_sync(data, False, addr))
            task.add_done_callback(lambda t: self._late(t, addr))

    def _late(self, task: asyncio.Task[bytes | None], addr: Any) -> None:
        resp = None if task.cancelled() or task.exception() else task.result()
        if resp and self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(resp, addr)

    def error_received(self, exc: Exception) -> None:
        # A reply the kernel would not send (an unconnected socket reports nothing else).
        self.rt.stats.udp_send_errors += 1
        log.debug("udp_error", error=str(exc))


class TcpProtocol(asyncio.Protocol):
    """RFC 7766: 2-byte length framing, pipelining, idle timeout, bounded buffers."""

    def __init__(self, rt: Runtime, conns: set[TcpProtocol]) -> None:
        self.rt = rt
        self.conns = conns
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.peer: Any = None
        self.pending = 0  # queries waiting for the first federation sync
        self.last = 0.0
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        tcp = self.rt.cfg.tcp
        if len(self.conns) >= tcp.max_connections:
            self.rt.stats.tcp_refused += 1
            transport.close()
            return
        self.conns.add(self)
        self.rt.stats.tcp_connections += 1
        # Bound what a peer that does not read can make us buffer: past this,
        # writes pause reading, so no new queries are taken from it.
        transport.set_write_buffer_limits(high=tcp.max_inflight * 1024)  # type: ignore[attr-defined]
        self.last = self.loop.time()
        self.idle = self.loop.call_later(tcp.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        timeout = self.rt.cfg.tcp.idle_timeout
        left = self.last + timeout - self.loop.time()
        if left > 0 or self.pending:
            self.idle = self.loop.call_later(max(left, 0.1), self._check_idle)
        elif self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        self.buf += data
        self._drain()

    def _drain(self) -> None:
        """Answer every complete frame in the buffer, up to the in-flight cap."""
        buf = self.buf
        out = []
        rt = self.rt
        cap = rt.cfg.tcp.max_inflight
        while len(buf) >= 2 and self.pending < cap:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + n:
                if len(buf) > 2 + 65535:  # cannot happen with a valid peer; never grow unbounded
                    assert self.transport is not None
                    self.transport.close()
                    return
                break
            msg = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            rt.stats.tcp_queries += 1
            resp = rt.answer(msg, True, self.peer)
            if resp:
                out.append(_LEN.pack(len(resp)) + resp)
            elif resp is not None:
                # WAIT: this one completes later, out of order (RFC 7766 7); the
                # queries behind it are answered now.
                self._defer(msg)
        if out and self.transport is not None:
            # One write per batch: the length prefix and message go out together.
            self.transport.write(b"".join(out))

    def _defer(self, msg: bytes) -> None:
        self.pending += 1
        if self.pending >= self.rt.cfg.tcp.max_inflight and self.transport is not None:
            self.transport.pause_reading()  # RFC 7766 6.2.1.1: bound in-flight queries
        task = self.loop.create_task(self.rt.answer_after_sync(msg, True, self.peer))
        task.add_done_callback(self._deferred_done)

    def _deferred_done(self, task: asyncio.Task[bytes | None]) -> None:
        self.pending -= 1
        resp = None if task.cancelled() or task.exception() else task.result()
        t = self.transport
        if t is None or t.is_closing():
            return
        if resp:
            t.write(_LEN.pack(len(resp)) + resp)
        if self.pending == self.rt.cfg.tcp.max_inflight - 1:
            self._drain()  # frames read before the cap was reached
            if self.pending < self.rt.cfg.tcp.max_inflight:
                t.resume_reading()

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



def _stats_dict(stats: Stats) -> dict[str, Any]:
    return {
        "udp_queries": stats.udp_queries,
        "tcp_queries": stats.tcp_queries,
        "dropped": stats.dropped,
        "errors": stats.errors,
        "tcp_connections": stats.tcp_connections,
        "tcp_refused": stats.tcp_refused,
        "udp_send_errors": stats.udp_send_errors,
        "rcodes": list(stats.rcodes),
    }


def _sum_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"rcodes": [0] * 16}
    for p in parts:
        for k, v in p.items():
            if k == "rcodes":
                out["rcodes"] = [a + b for a, b in zip(out["rcodes"], v, strict=False)]
            elif isinstance(v, int):
                out[k] = out.get(k, 0) + v
    out["workers"] = len(parts)
    return out


class Supervisor:
    """Owns the control side of an instance: config reloads, the federation
    control loop and the admin API. ``publish`` fans plans out to whoever serves."""

    def __init__(
        self,
        cfg: Config,
        inst: Instance,
        publish: Callable[[Table, Sequence[Any], Sequence[Any]], None],
        on_reload: Callable[[Config, Instance], None],
        stats: Callable[[], dict[str, Any]],
        on_synced: Callable[[], None],
    ) -> None:
        self.cfg = cfg
        self.inst = inst
        self._publish = publish
        self._on_reload = on_reload
        self._stats = stats
        self._on_synced = on_synced
        self._sync_task: asyncio.Task[None] | None = None
        self.control: Control | None = None
        self.admin_runner: Any = None

    def publish(self, plans: Sequence[Any], removed: Sequence[Any]) -> None:
        self._publish(self.inst.table, plans, removed)

    async def start(self, admin: tuple[str, int] | None) -> None:
        await self._start_control()
        if admin is not None:
            from .admin import Admin, start_admin

            app = Admin(
                table=lambda: self.inst.table,
                stats=self.stats,
                registry=lambda: self.control.registry_view() if self.control else {"services": []},
                clusters=lambda: self.control.clusters_view() if self.control else {},
                ready=lambda: self.control.ready() if self.control else (True, "ok"),
            )
            self.admin_runner = await start_admin(app, *admin)
            log.info("admin_listening", admin=f"{admin[0]}:{admin[1]}")

    def stats(self) -> dict[str, Any]:
        s = self._stats()
        s["services"] = len(self.control.plans) if self.control else 0
        return s

    async def _start_control(self) -> None:
        fed = self.inst.fed
        if fed is None:
            return
        r = self.inst.routing
        control = self.control = Control(fed, r.defaults, r.overrides, self.publish, probe=r.probe)
        await control.start()

        async def first_sync() -> None:
            # Every cluster listed, or the startup bound passed (a cluster that is
            # down must not keep the others' services unpublished).
            wait = self.cfg.startup_wait
            synced = await control.registry.wait_synced(wait) if wait > 0 else control.registry.is_synced()
            if self.control is control:
                control.release()
                log.info(
                    "federation_synced" if synced else "federation_published_before_sync",
                    clusters=len(fed.clusters),
                    services=len(control.plans),
                    waiting=[n for n, st in control.registry.cluster_status().items() if not st.synced],
                )
                self._on_synced()

        self._sync_task = asyncio.get_running_loop().create_task(first_sync())

    async def reload(self) -> None:
        """Safe reload: the new config, zones and federation are loaded whole
        off to the side; on any error the running state stays and is logged."""
        try:
            new_cfg = load_config(self.cfg.path) if self.cfg.path else self.cfg
            new_inst = load_instance(new_cfg)
        except Exception as e:
            log.error("reload_failed", error=str(e), hint="fix the file and send SIGHUP again")
            return
        old_fed = self.inst.fed
        self.cfg, self.inst = new_cfg, new_inst
        self._on_reload(new_cfg, new_inst)
        if self.control is not None and old_fed == new_inst.fed:
            # Same clusters: keep the watches, republish what they know into the new table.
            r = new_inst.routing
            self.control.defaults, self.control.overrides = r.defaults, r.overrides
            self.control.plans.clear()
            self.control.on_change(self.control.registry.keys())
        else:
            if self.control is not None:
                await self.control.stop()
                self.control = None
            await self._start_control()
        log.info("reloaded", zones=[z.origin for z in new_cfg.zones])

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
        if self.control is not None:
            await self.control.stop()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()


async def _serve_single(
    cfg: Config, inst: Instance, udp_sock: socket.socket, tcp_sock: socket.socket,
    admin: tuple[str, int] | None,
) -> None:
    rt = Runtime(inst.table, cfg)
    close = await run_transports(rt, udp_sock, tcp_sock)

    def publish(table: Table, plans: Sequence[Any], removed: Sequence[Any]) -> None:
        with rt.lock:  # the table the UDP thread may be reading
            table.apply_plans(plans, removed)

    def on_reload(new_cfg: Config, new_inst: Instance) -> None:
        rt.set_table(new_inst.table, new_cfg)

    sup = Supervisor(
        cfg, inst, publish, on_reload, lambda: _stats_dict(rt.stats) | {"workers": 1}, rt.mark_synced
    )
    await sup.start(admin)
    await _wait_signals(sup)
    close()
    await sup.stop()


async def _wait_signals(sup: Supervisor) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloading: set[asyncio.Task[None]] = set()

    def reload() -> None:
        t = loop.create_task(sup.reload())
        reloading.add(t)
        t.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()


# -- several serving workers ------------------------------------------------------


def _worker_main(cfg: Config, table: Table, host: str, port: int, conn: Any) -> None:
    """A serving process: transports plus the pipe from the control process."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent coordinates reloads
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    install_uvloop()
    udp_sock, tcp_sock = bind_sockets(host, port, True)
    asyncio.run(_worker(cfg, table, udp_sock, tcp_sock, conn))


async def _worker(
    cfg: Config, table: Table, udp_sock: socket.socket, tcp_sock: socket.socket, conn: Any
) -> None:
    rt = Runtime(table, cfg)
    close = await run_transports(rt, udp_sock, tcp_sock)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_message() -> None:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            stop.set()  # the control process is gone: so are we
            return
        kind = msg[0]
        if kind == "plans":
            rt.apply_plans(msg[1], msg[2])
        elif kind == "synced":
            rt.mark_synced()
        elif kind == "reload":
            try:
                new_cfg = load_config(cfg.path) if cfg.path else cfg
                rt.set_table(load_instance(new_cfg).table, new_cfg)
            except Exception as e:  # the parent validated it; keep serving what we have
                log.error("worker_reload_failed", error=str(e))

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                conn.send(("stats", _stats_dict(rt.stats)))
            except OSError:
                stop.set()
                return

    loop.add_reader(conn.fileno(), on_message)
    # uvloop's add_reader turns the fd non-blocking, and Connection.recv/send of a
    # message bigger than the socket buffer (plans for thousands of services) then
    # fail half way (BlockingIOError) and leave the stream unreadable: keep it blocking.
    os.set_blocking(conn.fileno(), True)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    reporter = loop.create_task(report())
    await stop.wait()
    reporter.cancel()
    close()


class WorkerPool:
    """N serving processes on one port. A worker that dies is replaced by a fork
    of the parent, whose table is current, so the new worker starts with every
    plan already applied. A crash loop (too many deaths in a minute) stops fedns."""

    MAX_RESTARTS_PER_MINUTE = 5

    def __init__(self, cfg: Config, host: str, port: int) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("fork")
        self.cfg, self.host, self.port = cfg, host, port
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.deaths: list[float] = []
        self.on_spawn: Callable[[int], None] = lambda _i: None

    def spawn(self, table: Table, slot: int | None = None) -> int:
        parent_end, child_end = self.ctx.Pipe()
        p = self.ctx.Process(
            target=_worker_main, args=(self.cfg, table, self.host, self.port, child_end), daemon=True
        )
        p.start()
        child_end.close()
        if slot is None:
            self.procs.append(p)
            self.conns.append(parent_end)
            slot = len(self.procs) - 1
        else:
            self.procs[slot], self.conns[slot] = p, parent_end
        self.on_spawn(slot)
        return slot

    def send(self, msg: Any) -> None:
        from multiprocessing.reduction import ForkingPickler

        buf = ForkingPickler.dumps(msg)  # once for all workers (what Connection.send does each time)
        for c in self.conns:
            # A dead worker's pipe fails here; the watchdog notices the death.
            with contextlib.suppress(OSError):
                c.send_bytes(buf)

    def stop(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(5)


async def _serve_parent(
    cfg: Config, inst: Instance, pool: WorkerPool, admin: tuple[str, int] | None
) -> int:
    loop = asyncio.get_running_loop()
    worker_stats: dict[int, dict[str, Any]] = {}
    retired: dict[str, Any] = {}  # counters of workers that died, so totals never go down

    def publish(table: Table, plans: Sequence[Any], removed: Sequence[Any]) -> None:
        # Workers first, so they rebuild while the parent does its own copy (nothing can
        # run in between here: no explain answered, no worker respawned from a stale table).
        pool.send(("plans", list(plans), list(removed)))
        table.apply_plans(plans, removed)  # the parent's copy answers explain, and seeds respawns

    def on_reload(new_cfg: Config, _inst: Instance) -> None:
        pool.cfg = new_cfg
        pool.send(("reload",))

    def watch(i: int) -> None:
        c = pool.conns[i]

        def read() -> None:
            try:
                msg = c.recv()
            except (EOFError, OSError):
                loop.remove_reader(c.fileno())
                return
            if msg[0] == "stats":
                worker_stats[i] = msg[1]

        loop.add_reader(c.fileno(), read)
        os.set_blocking(c.fileno(), True)  # as in _worker: sends of big plans must not fail half way

    for i in range(len(pool.conns)):
        watch(i)
    pool.on_spawn = watch

    def on_synced() -> None:
        sup.inst.table.waiting = ()
        pool.send(("synced",))

    def stats() -> dict[str, Any]:
        s = _sum_stats([*worker_stats.values(), retired] if retired else list(worker_stats.values()))
        s["workers"] = sum(1 for p in pool.procs if p.is_alive())
        return s

    sup = Supervisor(cfg, inst, publish, on_reload, stats, on_synced)
    await sup.start(admin)
    waiter = loop.create_task(_wait_signals(sup))
    code = 0
    while not waiter.done():
        await asyncio.wait([waiter], timeout=0.25)
        if waiter.done():
            break
        for i, p in enumerate(pool.procs):
            if p.is_alive():
                continue
            now = loop.time()
            pool.deaths = [t for t in pool.deaths if now - t < 60] + [now]
            log.error("worker_died", pid=p.pid, exitcode=p.exitcode, restarts_last_minute=len(pool.deaths))
            if len(pool.deaths) > pool.MAX_RESTARTS_PER_MINUTE:
                log.error("worker_crash_loop", hint="see the errors above; fedns stops rather than flap")
                code = 1
                break
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(pool.conns[i].fileno())
            pool.conns[i].close()
            if i in worker_stats:
                retired = _sum_stats([retired, worker_stats.pop(i)]) if retired else worker_stats.pop(i)
                retired.pop("workers", None)
            pool.spawn(sup.inst.table, i)
            if not sup.inst.table.waiting:
                with contextlib.suppress(OSError):
                    pool.conns[i].send(("synced",))
        if code:
            break
    await sup.stop()
    pool.stop()
    return code


def serve(
    cfg: Config, host: str, port: int, workers: int, admin: tuple[str, int] | None = None
) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit code."""
    inst = load_instance(cfg)
    try:
        udp_mode = resolve_mode(cfg.udp)
    except OSError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None
    install_uvloop()
    zones = [z.origin for z in cfg.zones]
    if workers <= 1:
        udp_sock, tcp_sock = bind_sockets(host, port, False)
        bound = udp_sock.getsockname()[1]
        log.info("serving", dns=f"{host}:{bound}", zones=zones, workers=1, udp=udp_mode)
        asyncio.run(_serve_single(cfg, inst, udp_sock, tcp_sock, admin))
        return 0
    # SO_REUSEPORT: every worker binds the same address and the kernel spreads
    # queries over them. A probe bind resolves port 0 and reports errors here,
    # before any worker starts. Workers fork before the parent's event loop exists.
    probe_u, probe_t = bind_sockets(host, port, True)
    port = probe_u.getsockname()[1]
    # Closed before forking: a child would inherit the probe, which stays in the
    # SO_REUSEPORT group unread and swallows its share of the queries.
    probe_u.close()
    probe_t.close()
    pool = WorkerPool(cfg, host, port)
    for _ in range(workers):
        pool.spawn(inst.table)
    log.info("serving", dns=f"{host}:{port}", zones=zones, workers=workers, udp=udp_mode)
    return asyncio.run(_serve_parent(cfg, inst, pool, admin))
