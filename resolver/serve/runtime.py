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
from ..dns.answers import Table
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    def set_table(self, table: Table, cfg: Config) -> None:
        table.waiting = self.sync.holding()
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

    def later(self, data: bytes, tcp: bool, addr: Any, send: Callable[[bytes], None]) -> asyncio.Task[None]:
        """Answer a query that got WAIT once the first sync is done: ``send`` gets the reply."""

        async def run() -> None:
            await self.sync.event.wait()
            resp = self.answer(data, tcp, addr)
            if resp:
                send(resp)

        return self._keep(asyncio.get_running_loop().create_task(run()))
