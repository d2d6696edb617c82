"""Serving worker processes on one port (SO_REUSEPORT), and the pipe between them and control.

The parent is the control process: it alone watches, probes and runs the
admin API, and sends every worker the same messages over a pipe (frozen
dataclasses, pickled once for all). Workers answer; once a second each sends
its counters back (``Report``). A worker that dies is replaced by a fork of
the parent, whose table is current, so it starts with every change applied.

Once the federation has first synced (its whole table published in the
parent), ``renew`` forks every worker again after ``gc.freeze()``: the new
ones share the parent's table copy-on-write instead of each holding a copy
built from the plans (at 10 clusters x 1,000 services x 10 endpoints, PSS of
parent + 2 workers 230 MB against 437 MB). Each new worker reads its slot's
sockets, which the parent bound once and keeps, and the one it replaces stops
reading them once it serves (``Retire``), so no query queued there is lost.
Later changes reach them as ``Publish`` messages as before.

This layer does not know what a change is: ``Publish.update`` is whatever the
instance's ``Served.apply`` takes (the federation's ``PlanUpdate``), typed
where it is made and where it is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
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
class Retire:
    """The worker of the next generation serves this slot's sockets: stop reading them,
    finish the TCP connections held, send a last ``Report`` and exit."""


@dataclass(frozen=True, slots=True)
class Report:
    """A worker's counters (``Stats.as_dict``), sent to the control process every second."""

    stats: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Serving:
    """A worker's first message: its transports read the slot's sockets."""


Message = Publish | Synced | Reload | Retire


# -- a worker -----------------------------------------------------------------------


def _die_with_parent() -> None:
    """SIGTERM this worker when the control process dies, however it dies (a SIGKILL
    or an early signal leaves no time to stop the workers; the pipe's EOF may never
    come while another worker holds a copy of its end)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


# What a fork inherits from the control process and must not keep: its watches and
# probes (sockets to API servers and targets), the admin listener, the other slots'
# sockets and pipes, its event loop's epoll and inotify descriptors.
_NOT_OURS = ("socket:", "anon_inode:[eventpoll]", "anon_inode:inotify")


def _drop_inherited(keep: set[int]) -> None:
    """Point every inherited descriptor of ``_NOT_OURS`` but ``keep`` at /dev/null.

    Not close(): the control process's objects live on in this copy of its heap,
    and one freed later (a socket's finalizer) would close whatever this process
    opened under the same number since; /dev/null keeps the number taken. The
    connections themselves end here for this process only (the parent holds its
    own descriptors). libuv's own pipes (its signal lock, re-made at fork) are
    pipes, not sockets, and stay."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:  # not Linux: nothing to go by
        return
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in fds:
            if fd <= 2 or fd == null or fd in keep:
                continue
            try:
                target = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                continue  # listdir's own descriptor, closed since
            if target.startswith(_NOT_OURS):
                os.dup2(null, fd)
    finally:
        os.close(null)


def _worker_main(
    cfg: Config,
    served: Served,
    load: Load,
    waiting: tuple[bytes, ...],
    udp_sock: socket.socket,
    tcp_sock: socket.socket,
    conn: Any,
    index: int = 1,
) -> None:
    """A serving process: transports on its slot's sockets (inherited, shared with the
    control process and with whichever worker of the slot comes next) plus the pipe
    from the control process. ``index``: which worker (1..N), as its query log lines say."""
    # The control process's loop left its signal wake-up descriptor and handlers set:
    # a signal now would be written to the parent's loop (and handled there).
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until this process's loop handles it
    _drop_inherited({udp_sock.fileno(), tcp_sock.fileno(), conn.fileno()})
    _die_with_parent()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the parent coordinates reloads
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us
    install_uvloop()
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
    transports = await run_transports(rt, udp_sock, tcp_sock)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    current = served
    reloading: set[asyncio.Task[None]] = set()  # the loop keeps only weak references
    retiring: set[asyncio.Task[None]] = set()

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
        elif isinstance(msg, Retire) and not retiring:
            retiring.add(loop.create_task(retire()))

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

    async def retire() -> None:
        # Changes keep coming in meanwhile: the TCP connections still served here
        # answer what the new worker does.
        await transports.retire()
        with contextlib.suppress(OSError):
            conn.send(Report(rt.stats.as_dict()))
        stop.set()

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
    conn.send(Serving())
    reporter = loop.create_task(report())
    await stop.wait()
    reporter.cancel()
    if not retiring:
        transports()


# -- the pool, in the control process ------------------------------------------------


def _memory_kb(pid: int) -> tuple[int, int] | None:
    """(RSS, private) of a process in kB, from /proc/PID/smaps_rollup; None without it."""
    rss = private = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key == "Rss":
                    rss = int(rest.split()[0])
                elif key in ("Private_Clean", "Private_Dirty"):
                    private += int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return rss, private


@dataclass(eq=False)
class _Worker:
    """One serving process as the control process sees it."""

    proc: Any
    conn: Any
    slot: int
    serving: bool = False  # its Serving came
    baseline: int | None = None  # its private memory (kB) when first looked at
    stats: dict[str, Any] | None = None
    replaces: _Worker | None = None  # retired once this one serves


class WorkerPool:
    """N serving processes on one port, one per slot; a crash loop (too many deaths
    in a minute) stops fedns.

    The control process binds each slot's UDP socket and TCP listener once
    (SO_REUSEPORT, so the kernel spreads flows over the slots) and keeps them,
    never reading them; each worker inherits its slot's pair. A worker that
    replaces another (``renew``, after the first sync) reads the very sockets the
    old one did, so nothing queued in them is lost and no flow moves to another
    slot: closing a SO_REUSEPORT socket drops its queue, and one joining the
    group re-hashes flows over the members."""

    MAX_RESTARTS_PER_MINUTE = 5
    # Shared pages become a worker's own as changes (and reloads, which build a
    # table per worker) write to them; once a worker's own memory has grown by
    # this share of the parent's RSS (and at least the minimum), forking again
    # shares them anew. Looked at every RENEW_CHECK_S seconds (smaps_rollup).
    RENEW_CHECK_S = 30.0
    RENEW_SHARE = 0.25
    RENEW_MIN_KB = 32 << 10

    def __init__(self, cfg: Config, host: str, port: int, load: Load, n: int = 1) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("fork")
        self.cfg, self.host, self.load = cfg, host, load
        self.sockets: list[tuple[socket.socket, socket.socket]] = []
        for _ in range(n):
            self.sockets.append(bind_sockets(host, port, True))
            port = self.sockets[0][0].getsockname()[1]  # port 0: the one the first got
        self.port = port
        self.workers: list[_Worker | None] = [None] * n
        self.leaving: list[_Worker] = []  # retired, finishing their TCP connections
        self.deaths: list[float] = []
        self.synced = False  # Synced sent: new workers start released
        self.renewed = False  # forked again once the first sync was published
        self.settled = False  # ... and those workers all served
        self._retired: dict[str, Any] = {}  # counters of workers gone: totals never go down
        self._checked = 0.0  # when the workers' memory was last looked at

    def spawn(
        self, served: Served, waiting: tuple[bytes, ...], slot: int, replaces: _Worker | None = None
    ) -> _Worker:
        """Fork the worker of ``slot`` serving ``served`` (before the parent's event
        loop exists, or from it: a respawn, a new generation)."""
        parent_end, child_end = self.ctx.Pipe()
        held = () if self.synced else waiting
        udp_sock, tcp_sock = self.sockets[slot]
        p = self.ctx.Process(
            target=_worker_main,
            args=(self.cfg, served, self.load, held, udp_sock, tcp_sock, child_end, slot + 1),
            daemon=True,
        )
        p.start()
        child_end.close()
        w = _Worker(p, parent_end, slot, replaces=replaces)
        self.workers[slot] = w
        with contextlib.suppress(RuntimeError):  # no loop yet: ``listen`` reads them all
            self._read(asyncio.get_running_loop(), w)
        return w

    def renew(self, served: Served) -> None:
        """Replace every worker by a fork of the control process as it is now, whose
        table the new workers share copy-on-write (after ``gc.freeze``, so no
        collection in any of them writes to the pages of what is there now). Each
        old worker is retired once its successor serves."""
        began = time.perf_counter()
        gc.collect()
        gc.freeze()
        collected = time.perf_counter()
        for slot, was in enumerate(self.workers):
            if was is not None:
                self.leaving.append(was)
            self.spawn(served, (), slot, replaces=was)
        log.info("workers_forked", workers=len(self.workers), frozen=gc.get_freeze_count(),
                 collect_ms=round((collected - began) * 1e3),
                 fork_ms=round((time.perf_counter() - collected) * 1e3))

    def grown(self, now: float) -> int | None:
        """kB by which the worker whose own memory grew most since it was first looked
        at has grown, when that is enough to renew; None otherwise (or not time yet)."""
        if not self.renewed or self.leaving or now - self._checked < self.RENEW_CHECK_S:
            return None
        current = [w for w in self.workers if w is not None]
        if any(not w.serving for w in current):
            return None
        self._checked = now
        parent = _memory_kb(os.getpid())
        if parent is None:
            return None  # not Linux: nothing to go by
        most = 0
        for w in current:
            own = _memory_kb(w.proc.pid)
            if own is None:
                continue
            if w.baseline is None:
                w.baseline = own[1]
            most = max(most, own[1] - w.baseline)
        return most if most > max(self.RENEW_SHARE * parent[0], self.RENEW_MIN_KB) else None

    def pending(self) -> str | None:
        """Why ``/readyz`` must wait: the first renewal's workers are not all serving yet
        (later renewals and respawns do not count: the old workers serve till then)."""
        if not self.renewed or self.settled:
            return None
        starting = sum(1 for w in self.workers if w is not None and not w.serving)
        return f"starting {starting} serving worker(s) forked after the first sync"

    def listen(self) -> None:
        """Read every worker's messages, on the running loop."""
        loop = asyncio.get_running_loop()
        for w in self.workers:
            if w is not None:
                self._read(loop, w)

    def _read(self, loop: asyncio.AbstractEventLoop, w: _Worker) -> None:
        c = w.conn

        def read() -> None:
            try:
                msg = c.recv()
            except (EOFError, OSError):
                loop.remove_reader(c.fileno())
                self._gone(w)
                return
            if isinstance(msg, Report):
                w.stats = msg.stats
            elif isinstance(msg, Serving):
                w.serving = True
                if self.renewed and all(x is None or x.serving for x in self.workers):
                    self.settled = True
                old, w.replaces = w.replaces, None
                if old is not None:
                    with contextlib.suppress(OSError):
                        old.conn.send(Retire())
                    log.info("worker_retired", slot=w.slot + 1, old=old.proc.pid, new=w.proc.pid)

        loop.add_reader(c.fileno(), read)
        os.set_blocking(c.fileno(), True)  # as in _worker: sends of big plans must not fail half way

    def _gone(self, w: _Worker) -> None:
        """Keep the counters of a worker that exited (or died) in the totals, once."""
        if w.stats is not None:
            dead, w.stats = w.stats, None
            self._retired = sum_stats([self._retired, dead]) if self._retired else dead
            self._retired.pop("workers", None)
        if w in self.leaving and not w.proc.is_alive():  # reaped (else at the next round)
            self.leaving.remove(w)
            w.conn.close()

    def send(self, msg: Message) -> None:
        from multiprocessing.reduction import ForkingPickler

        if isinstance(msg, Synced):
            self.synced = True
        buf = ForkingPickler.dumps(msg)  # once for all workers (what Connection.send does each time)
        for w in self._all():
            # A dead worker's pipe fails here; the watchdog notices the death.
            with contextlib.suppress(OSError):
                w.conn.send_bytes(buf)

    def _all(self) -> list[_Worker]:
        """Every worker still answering: the current ones and those retiring."""
        return [w for w in self.workers if w is not None] + self.leaving

    def stats(self) -> dict[str, Any]:
        parts = [w.stats for w in self._all() if w.stats is not None]
        s = sum_stats([*parts, self._retired] if self._retired else parts)
        s["workers"] = self.alive()
        return s

    def alive(self) -> int:
        """How many serving processes (of the current generation) are up now."""
        return sum(1 for w in self.workers if w is not None and w.proc.is_alive())

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w is not None]

    def respawn_dead(self, served: Served, waiting: tuple[bytes, ...]) -> bool:
        """Replace every worker that died; False on a crash loop (then stop fedns)."""
        loop = asyncio.get_running_loop()
        for old in self.leaving[:]:
            if not old.proc.is_alive():  # a retired worker exited: reap it
                with contextlib.suppress(OSError, ValueError):
                    loop.remove_reader(old.conn.fileno())
                self._gone(old)
        for w in self.workers:
            if w is None or w.proc.is_alive():
                continue
            p = w.proc
            now = loop.time()
            self.deaths = [t for t in self.deaths if now - t < 60] + [now]
            log.error(
                "worker_died", pid=p.pid, exitcode=p.exitcode, restarts_last_minute=len(self.deaths)
            )
            if len(self.deaths) > self.MAX_RESTARTS_PER_MINUTE:
                log.error("worker_crash_loop", hint="see the errors above; fedns stops rather than flap")
                return False
            with contextlib.suppress(OSError, ValueError):
                loop.remove_reader(w.conn.fileno())
            self._gone(w)
            w.conn.close()
            # A worker that died before serving leaves its predecessor to retire.
            self.spawn(served, waiting, w.slot, replaces=w.replaces)
        return True

    def stop(self) -> None:
        procs = [w.proc for w in self._all()]
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(5)
