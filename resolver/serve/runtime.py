"""What the transports of one serving process share: the table, its counters, the first sync.

The transports only move bytes: every decision is ``Table.respond``. A reply
is computed synchronously from precomputed bytes, so a slow client can never
hold up another.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import structlog

from ..config import Config
from ..dns.answers import Counts, Table
from ..dns.cookies import INSTANCE_SECRET, Cookies
from ..dns.rrl import Limiter, describe_kind
from ..dns.wire import SERVFAIL, header_only

log = structlog.get_logger("fedns.serve")


@dataclass
class Stats:
    """Plain counters on the hot path; exported at scrape time (no locks per query).

    The mmsg thread counts its UDP queries and rcodes while the loop thread
    counts TCP: an rcode both bump at the same moment may, rarely, lose one
    increment. They are for monitoring."""

    udp_queries: int = 0
    tcp_queries: int = 0
    dropped: int = 0
    errors: int = 0
    tcp_connections: int = 0
    tcp_refused: int = 0
    udp_send_errors: int = 0
    rcodes: list[int] = field(default_factory=lambda: [0] * 16)
    # Cookies and rate limiting (``cookie_*``, ``rrl_*``), counted by the table.
    guard: Counts = field(default_factory=Counts)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("guard"))
        return d


def sum_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters of several processes added up (``workers``: how many there were)."""
    out: dict[str, Any] = {"rcodes": [0] * 16}
    for p in parts:
        for k, v in p.items():
            if k == "rcodes":
                out["rcodes"] = [a + b for a, b in zip(out["rcodes"], v, strict=False)]
            elif isinstance(v, int):
                out[k] = out.get(k, 0) + v
    out["workers"] = len(parts)
    return out


class FirstSync:
    """Whether this serving process has been told that the federation synced once.

    Until then the table holds (answers ``WAIT`` for) names not there *yet*
    under the federation zones, so a restart does not seed resolvers with
    negative answers, and the transports answer those queries once ``done``.
    The control side decides when (every cluster listed, or ``dns.startup_wait``
    passed); this is where a serving process keeps it. Never longer than
    ``bound`` seconds, whatever happens to the control side.
    """

    def __init__(self, zones: tuple[bytes, ...], bound: float) -> None:
        self.zones = zones if bound > 0 else ()
        self.event = asyncio.Event()
        if self.zones:
            asyncio.get_running_loop().call_later(bound, self.event.set)
        else:
            self.event.set()

    @property
    def done(self) -> bool:
        return self.event.is_set()

    def holding(self) -> tuple[bytes, ...]:
        """The zones a table must hold answers for now (``Table.waiting``)."""
        return () if self.done else self.zones


class Runtime:
    """What the transports read: the current table, swapped whole on change."""

    def __init__(self, table: Table, cfg: Config, waiting: tuple[bytes, ...] = ()) -> None:
        self.table = table
        self.cfg = cfg
        self.stats = Stats()
        # Held by the mmsg UDP thread while it answers a batch, and by the loop
        # thread while it changes the table in place: no query sees half an update.
        self.lock = threading.Lock()
        self.sync = FirstSync(waiting, cfg.startup_wait)
        table.waiting = self.sync.holding()
        # Tasks in flight, held here: the loop keeps only weak references to tasks.
        self._tasks: set[asyncio.Task[None]] = set()
        if not self.sync.done:
            self._keep(asyncio.get_running_loop().create_task(self._release_when_synced()))
        # The rate limiter outlives tables (a reload keeps what it has counted),
        # unless the reload changes its settings.
        self.limiter: Limiter | None = None
        self._reporting: asyncio.Task[None] | None = None
        self.serve = table.respond  # what the transports call per query
        self._guard(table, cfg)
        if cfg.cookies is not None and cfg.cookies.secret_file is None:
            log.warning(
                "cookie_secret_per_instance",
                hint="cookies.secret_file unset: a random secret, so replicas behind one "
                "address reject each other's server cookies (clients then get fresh ones)",
            )

    def _guard(self, table: Table, cfg: Config) -> None:
        """Give ``table`` the cookie secrets and the limiter ``cfg`` asks for; set ``serve``."""
        c = cfg.cookies
        cookies = None
        if c is not None:
            cookies = Cookies(c.secrets or (INSTANCE_SECRET,), c.rotated + c.grace)
        settings = cfg.rate_limit
        if settings is None:
            self.limiter = None
        elif self.limiter is None or self.limiter.settings != settings:
            self.limiter = Limiter(settings)
            if self._reporting is None:
                task = asyncio.get_running_loop().create_task(self._report())
                self._reporting = self._keep(task)
        table.guard(cookies, self.limiter, self.stats.guard)
        self.serve = table.respond_limited if self.limiter is not None else table.respond

    async def _report(self) -> None:
        """Log each (network, kind of reply) the limiter starts limiting, once a second."""
        while True:
            await asyncio.sleep(1.0)
            limiter = self.limiter
            if limiter is None:
                continue
            events, lost = limiter.drain()
            log_only = limiter.settings.log_only
            for net, kind in events:
                log.warning(
                    "rrl_would_limit" if log_only else "rrl_limiting",
                    network=limiter.describe(net),
                    responses=describe_kind(kind),
                    rate=limiter.settings.responses_per_second,
                )
            if lost:
                log.warning("rrl_limiting_more", buckets=lost, hint="not logged one by one")

    def _keep(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _release_when_synced(self) -> None:
        await self.sync.event.wait()
        self.table.waiting = ()

    def mark_synced(self) -> None:
        self.sync.event.set()
        self.table.waiting = ()

    def update(self, change: Callable[[Table], object]) -> None:
        """Change the table in place, with no batch of the UDP thread in between."""
        with self.lock:
            change(self.table)

    def set_table(self, table: Table, cfg: Config, hold: tuple[bytes, ...] = ()) -> None:
        """Serve ``table`` from now on; ``hold``: zones whose missing names it holds
        until ``mark_synced`` (a reload's swap, before its plans are published)."""
        table.waiting = hold or self.sync.holding()
        self._guard(table, cfg)
        self.table, self.cfg = table, cfg

    def answer(self, data: bytes, tcp: bool, addr: Any = None) -> bytes | None:
        """The reply, None to stay silent, or WAIT (b"") to ask again after the first sync."""
        try:
            resp = self.serve(data, tcp, addr)
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

    def later(self, data: bytes, tcp: bool, addr: Any, send: Callable[[bytes], None]) -> asyncio.Task[None]:
        """Answer a query that got WAIT once the first sync is done: ``send`` gets the reply."""

        async def run() -> None:
            await self.sync.event.wait()
            resp = self.answer(data, tcp, addr)
            if resp:
                send(resp)

        return self._keep(asyncio.get_running_loop().create_task(run()))
