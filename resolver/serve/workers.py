"""Serving worker processes on one port (SO_REUSEPORT), and the pipe between them and control.

The parent is the control process: it alone watches, probes and runs the
admin API, and sends every worker the same messages over a pipe (frozen
dataclasses, pickled once for all). Workers answer; once a second each sends
its counters back (``Report``). A worker that dies is replaced by a fork of
the parent, whose table is current, so it starts with every change applied.

This layer does not know what a change is: ``Publish.update`` is whatever the
instance's ``Served.apply`` takes (the federation's ``PlanUpdate``), typed
where it is made and where it is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from ..config import Config
from ..dns.answers import Table
from .runtime import Runtime, sum_stats
from .transports import bind_sockets, install_uvloop, run_transports

log = structlog.get_logger("fedns.workers")


class Served(Protocol):
    """What one serving process serves: a table and how published changes reach it."""

    @property
    def table(self) -> Table: ...

    def apply(self, update: Any) -> None:
        """Apply one published change to ``table`` (under the runtime's lock)."""

    def waiting(self) -> tuple[bytes, ...]:
        """The zones whose names not published yet are held (answered once synced)."""


# Load what a config names (its zone files...): the config and what it serves.
Load = Callable[[Config], tuple[Config, Served]]


# -- messages (control -> workers, and Report back) ---------------------------------


@dataclass(frozen=True, slots=True)
class Publish:
    """A change for every serving table."""

    update: Any


@dataclass(frozen=True, slots=True)
class Synced:
    """The federation has synced once (or the startup bound passed): stop holding."""


@dataclass(frozen=True, slots=True)
class Reload:
    """Serve this config (loaded from its files again); the control process has validated it."""

    cfg: Config


@dataclass(frozen=True, slots=True)
class Report:
    """A worker's counters (``Stats.as_dict``), sent to the control process every second."""

    stats: dict[str, Any]


Message = Publish | Synced | Reload


# -- a worker -----------------------------------------------------------------------


def _die_with_parent() -> None:
    """SIGTERM this worker when the control process dies, however it dies (a SIGKILL
    or an early signal leaves no time to stop the workers; the pipe's EOF may never
    come while another worker holds a copy of its end)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def _worker_main(
    cfg: Config,
    served: Served,
    load: Load,
    waiting: tuple[bytes, ...],
    host: str,
    port: int,
    conn: Any,
    index: int = 1,
) -> None:
    """A serving process: transports plus the pipe from the control process.
    ``index``: which worker (1..N), as its query log lines say."""
    _die_with_parent()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent coordinates reloads
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    install_uvloop()
    udp_sock, tcp_sock = bind_sockets(host, port, True)
    asyncio.run(_worker(cfg, served, load, waiting, udp_sock, tcp_sock, conn, index))


async def _worker(
    cfg: Config,
    served: Served,
    load: Load,
    waiting: tuple[bytes, ...],
    udp_sock: socket.socket,
    tcp_sock: socket.socket,
    conn: Any,
    index: int = 1,
) -> None:
    rt = Runtime(served.table, cfg, waiting, worker=index)
    close = await run_transports(rt, udp_sock, tcp_sock)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    current = served
    reloading: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    def on_message() -> None:
        nonlocal current
        try:
            msg: Message = conn.recv()
        except (EOFError, OSError):
            stop.set()  # the control process is gone: so are we
            return
        if isinstance(msg, Publish):
            serving = current
            rt.update(lambda _table: serving.apply(msg.update))
        elif isinstance(msg, Synced):
            rt.mark_synced()
        elif isinstance(msg, Reload):
            # Loaded in a thread, so this loop keeps serving; the messages after it
            # (what is published into the new table) wait in the pipe till then.
            loop.remove_reader(conn.fileno())
            reloading.add(loop.create_task(reload(msg.cfg)))

    async def reload(cfg: Config) -> None:
        nonlocal current
        try:
            new_cfg, new = await loop.run_in_executor(None, load, cfg)
            current = new
            # Held until the control process sends Synced after publishing into it.
            rt.set_table(new.table, new_cfg, hold=new.waiting())
        except Exception as e:  # the parent validated it; keep serving what we have
            log.error("worker_reload_failed", error=str(e))
        finally:
            reloading.clear()
            loop.add_reader(conn.fileno(), on_message)
            os.set_blocking(conn.fileno(), True)

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                conn.send(Report(rt.stats.as_dict()))
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


# -- the pool, in the control process ------------------------------------------------


class WorkerPool:
    """N serving processes on one port. A crash loop (too many deaths in a minute) stops fedns."""

    MAX_RESTARTS_PER_MINUTE = 5

    def __init__(self, cfg: Config, host: str, port: int, load: Load) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("fork")
        self.cfg, self.host, self.port, self.load = cfg, host, port, load
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        self.deaths: list[float] = []
        self.synced = False  # Synced sent: new workers start released
        self._stats: dict[int, dict[str, Any]] = {}
        self._retired: dict[str, Any] = {}  # counters of workers that died: totals never go down

    def spawn(self, served: Served, waiting: tuple[bytes, ...], slot: int | None = None) -> int:
        """Fork a worker serving ``served`` (before the parent's event loop exists, or a respawn)."""
        parent_end, child_end = self.ctx.Pipe()
        held = () if self.synced else waiting
        index = (len(self.procs) if slot is None else slot) + 1
        p = self.ctx.Process(
            target=_worker_main,
            args=(self.cfg, served, self.load, held, self.host, self.port, child_end, index),
            daemon=True,
        )
        p.start()
        child_end.close()
        if slot is None:
            self.procs.append(p)
            self.conns.append(parent_end)
            slot = len(self.procs) - 1
        else:
            self.procs[slot], self.conns[slot] = p, parent_end
        with contextlib.suppress(RuntimeError):  # no loop yet: ``listen`` reads them all
            self._read(asyncio.get_running_loop(), slot)
        return slot

    def listen(self) -> None:
        """Read every worker's reports, on the running loop."""
        loop = asyncio.get_running_loop()
        for i in range(len(self.conns)):
            self._read(loop, i)

    def _read(self, loop: asyncio.AbstractEventLoop, i: int) -> None:
        c = self.conns[i]

        def read() -> None:
            try:
                msg = c.recv()
            except (EOFError, OSError):
                loop.remove_reader(c.fileno())
                return
            if isinstance(msg, Report):
                self._stats[i] = msg.stats

        loop.add_reader(c.fileno(), read)
        os.set_blocking(c.fileno(), True)  # as in _worker: sends of big plans must not fail half way

    def send(self, msg: Message) -> None:
        from multiprocessing.reduction import ForkingPickler

        if isinstance(msg, Synced):
            self.synced = True
        buf = ForkingPickler.dumps(msg)  # once for all workers (what Connection.send does each time)
        for c in self.conns:
            # A dead worker's pipe fails here; the watchdog notices the death.
            with contextlib.suppress(OSError):
                c.send_bytes(buf)

    def stats(self) -> dict[str, Any]:
        parts = list(self._stats.values())
        s = sum_stats([*parts, self._retired] if self._retired else parts)
        s["workers"] = self.alive()
        return s

    def alive(self) -> int:
        """How many serving processes are up now."""
        return sum(1 for p in self.procs if p.is_alive())

    def respawn_dead(self, served: Served, waiting: tuple[bytes, ...]) -> bool:
        """Replace every worker that died; False on a crash loop (then stop fedns)."""
        loop = asyncio.get_running_loop()
        for i, p in enumerate(self.procs):
            if p.is_alive():
                continue
            now = loop.time()
            self.deaths = [t for t in self.deaths if now - t < 60] + [now]
            log.error(
                "worker_died", pid=p.pid, exitcode=p.exitcode, restarts_last_minute=len(self.deaths)
            )
            if len(self.deaths) > self.MAX_RESTARTS_PER_MINUTE:
                log.error("worker_crash_loop", hint="see the errors above; fedns stops rather than flap")
                return False
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(self.conns[i].fileno())
            self.conns[i].close()
            if i in self._stats:
                dead = self._stats.pop(i)
                self._retired = sum_stats([self._retired, dead]) if self._retired else dead
                self._retired.pop("workers", None)
            self.spawn(served, waiting, i)
        return True

    def stop(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(5)
