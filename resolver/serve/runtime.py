"""What the transports of one serving process share: the table, its counters, the first sync.

The transports only move bytes: every decision is ``Table.respond``. A reply
is computed synchronously from precomputed bytes, so a slow client can never
hold up another.

Also here: the process's counters (``Stats``, with the table's ``Counts``: what
``/metrics`` shows, see ``metrics.py``), added up over workers by ``sum_stats``;
the answer latency histogram; and the sampled query log (``QueryLog``).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import structlog
from dnslib import QTYPE

from .. import logs
from ..config import Config
from ..dns.answers import Counts, Table, answer_index
from ..dns.cookies import INSTANCE_SECRET, Cookies
from ..dns.ecs import PRIVACY_PREFIX, ClientSubnet, parse_ecs
from ..dns.rrl import Limiter, describe_kind
from ..dns.wire import SERVFAIL, FormErr, header_only, parse_query

log = structlog.get_logger("fedns.serve")

# How the transports ask for one reply: (query, over TCP, the client's address).
Answer = Callable[[bytes, bool, Any], bytes | None]

# Answer latency histogram bounds (seconds): a reply takes microseconds, a batch
# of the UDP thread up to a few hundred of them.
LATENCY_BOUNDS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025,
                  0.1)
_BOUNDS_NS = tuple(round(b * 1e9) for b in LATENCY_BOUNDS)
# TCP and uvloop UDP time one query per this many seconds, counted once for each
# query of its transport since the last timed one: timing every query, or even a
# countdown to every 64th, cost 2-3 % of an answer (callgrind); this costs nothing
# per query (``Runtime._answer_timed``).
LATENCY_INTERVAL = 0.01

RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
          "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE")

# The Counts ints exported as they are (the lists are added up by ``Counts.tally``).
_COUNTS = tuple(f.name for f in fields(Counts) if f.type == "int" and not f.name.startswith("folded"))


@dataclass
class Stats:
    """Plain counters on the hot path; exported at scrape time (no locks per query).

    The mmsg thread counts its UDP queries while the loop thread counts TCP;
    replies are counted by the table (``Counts.answers``: UDP and TCP at their
    own indexes). A counter both threads bump at the same moment (a router memo
    hit, say) may, rarely, lose one increment. They are for monitoring."""

    udp_queries: int = 0
    tcp_queries: int = 0
    dropped: int = 0
    errors: int = 0
    tcp_connections: int = 0
    tcp_refused: int = 0
    udp_send_errors: int = 0
    query_log: int = 0  # query events logged (``log.query_sample``)
    # Replies by transport, type and RCODE; cache hits; cookies and rate limiting
    # (``cookie_*``, ``rrl_*``): counted by the table.
    guard: Counts = field(default_factory=Counts)
    # Answer latency per transport: counts per ``LATENCY_BOUNDS`` bucket (+Inf last)
    # and the sum in ns. The UDP thread writes "udp", the loop thread "tcp".
    latency: dict[str, list[int]] = field(
        default_factory=lambda: {t: [0] * (len(LATENCY_BOUNDS) + 1) for t in ("udp", "tcp")}
    )
    latency_ns: dict[str, int] = field(default_factory=lambda: {"udp": 0, "tcp": 0})
    # What the caches' entries counted, added up (``Runtime.tally``).
    tally: Callable[[], dict[str, Any]] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        g = self.guard
        d: dict[str, Any] = {
            k: getattr(self, k)
            for k in ("udp_queries", "tcp_queries", "dropped", "errors", "tcp_connections",
                      "tcp_refused", "udp_send_errors", "query_log")
        }
        d.update((k, getattr(g, k)) for k in _COUNTS)
        d["latency"] = {t: list(c) for t, c in self.latency.items()}
        d["latency_ns"] = dict(self.latency_ns)
        if self.tally is not None:
            d.update(self.tally())
        else:
            d["answers"] = [a + b for a, b in zip(g.answers, g.folded, strict=True)]
        return d

    def observe(self, transport: str, ns: int, weight: int) -> None:
        """``weight`` replies took ``ns`` nanoseconds each."""
        self.latency[transport][bisect.bisect_left(_BOUNDS_NS, ns)] += weight
        self.latency_ns[transport] += ns * weight


def sum_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Counters of several processes added up: numbers, lists item by item, mappings
    key by key (``workers``: how many there were)."""
    out: dict[str, Any] = {}
    for p in parts:
        _add(out, p)
    out["workers"] = len(parts)
    return out


def _add(into: dict[str, Any], part: dict[str, Any]) -> None:
    for k, v in part.items():
        have = into.get(k)
        if isinstance(v, dict):
            _add(into.setdefault(k, {}), v)
        elif isinstance(v, list):
            if not isinstance(have, list):
                into[k] = list(v)
            else:
                have.extend([0] * (len(v) - len(have)))
                for i, x in enumerate(v):
                    have[i] += x
        elif isinstance(v, int | float) and not isinstance(v, bool):
            into[k] = (have or 0) + v
        elif k not in into:
            into[k] = v


_NEVER = 1 << 62  # the gap to the next logged query when the query log is off


class QueryLog:
    """Sampled query events (``log.query_sample``): one ``query`` line per chosen reply.

    The serving paths decide which queries to log by counting down a gap drawn
    here (geometric, so every query has the same chance). With the log off the
    gap never ends: the UDP thread still compares each query's index with the
    one to log (one comparison), the loop's transports pay nothing (their
    answer function counts down only while the log is on). A chosen query is
    answered as any other, timed, and noted (bytes in and out, the client, its
    latency, whether a reply cache answered); its line is made after its batch
    is sent (UDP thread) or on the next loop iteration (TCP, uvloop UDP), never
    between a query and its reply.
    """

    def __init__(self, rt: Runtime, rate: float) -> None:
        self.rt = rt
        self.rate = rate
        self.version = 0  # bumped when the rate changes: the paths draw a new gap
        self.pending: deque[tuple[bytes, bytes, Any, bool, int, bool]] = deque()
        self._flushing = False
        self.log = logs.query_logger()

    def set_rate(self, rate: float) -> None:
        if rate != self.rate:
            self.rate = rate
            self.version += 1

    def gap(self) -> int:
        """How many queries from now the next one to log is (1: the next)."""
        r = self.rate
        if r <= 0:
            return _NEVER
        if r >= 1:
            return 1
        return 1 + int(math.log(1.0 - random.random()) / math.log(1.0 - r))

    def note(self, data: bytes, reply: bytes | None, addr: Any, tcp: bool, ns: int,
             cached: bool) -> None:
        if reply:
            self.pending.append((data, reply, addr, tcp, ns, cached))

    def later(self) -> None:
        """Flush on the next loop iteration (the loop thread's queries)."""
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flushing = False
        pending = self.pending
        while pending:
            try:
                rec = pending.popleft()
            except IndexError:  # the other thread took the last one
                return
            try:
                self.log.info("query", **self.fields(*rec))
            except Exception:  # a line that cannot be made must not cost the reply
                log.exception("query_log_failed")
            self.rt.stats.query_log += 1

    def fields(self, data: bytes, reply: bytes, addr: Any, tcp: bool, ns: int, cached: bool
               ) -> dict[str, Any]:
        """The event's fields: nothing but the question, the client's network (never
        its full address), the answer's outline and where it came from."""
        out: dict[str, Any] = {}
        cs: ClientSubnet | None = None
        table = self.rt.table
        question = _question(table, data)
        lname = None
        if question is not None:
            lname, qtype, ecs = question
            out["name"] = _name_text(lname)
            out["type"] = _type_text(qtype)
            if ecs is not None:
                try:
                    cs = parse_ecs(ecs)
                except FormErr:
                    cs = None
        out["subnet"] = _subnet_text(cs, addr)
        if lname is not None:
            node = table.nodes.get(lname)
            router = node.router if node is not None else None
            # The federation's routers place clients with their Locator (the dns
            # layer's Router protocol has no call for it).
            locator = getattr(router, "locator", None)
            if locator is not None:
                client, placement = locator.client(cs, addr)
                if placement is not None and client.region is not None:
                    out["region"] = client.region
                    if client.zone is not None:
                        out["zone"] = client.zone
        rcode = reply[3] & 0x0F
        out["rcode"] = RCODES[rcode] if rcode < len(RCODES) else str(rcode)
        out["answers"] = (reply[6] << 8) | reply[7] if len(reply) >= 12 else 0
        out["latency_us"] = round(ns / 1000, 1)
        out["cached"] = cached
        out["transport"] = "tcp" if tcp else "udp"
        out["worker"] = self.rt.worker
        return out


def _question(table: Table, data: bytes) -> tuple[bytes, int, bytes | None] | None:
    """(lowercased wire name, type, ECS option data) of a query; None if unreadable.
    A query as the fast path reads it is read as it does (its OPT record as the
    table remembered it); any other is parsed in full."""
    if len(data) > 17 and data[4:11] == b"\x00\x01\x00\x00\x00\x00\x00" and data[11] < 2:
        z = data.find(0, 12)
        edns = table.edns_of(data[z + 5 :]) if data[11] else (None,)
        if z > 11 and edns is not None and (data[11] or len(data) == z + 5):
            return data[12 : z + 1].lower(), (data[z + 1] << 8) | data[z + 2], edns[0]
    try:
        q = parse_query(data)
    except (FormErr, IndexError, ValueError):
        return None
    return q.lname, q.qtype, q.edns.ecs if q.edns is not None else None


# Bytes a name's label shows as they are (the rest as \DDD, and "." and "\" escaped).
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in b".\\")
_PLAIN_LABEL = re.compile(rb"[!-\-/-\[\]-~]*")


def _name_text(lname: bytes) -> str:
    r"""A wire name as text (presentation format: ``\DDD`` for other bytes)."""
    labels = []
    i = 0
    while i < len(lname) and lname[i]:
        n = lname[i]
        raw = lname[i + 1 : i + 1 + n]
        if not _PLAIN_LABEL.fullmatch(raw):  # not all plain: escape byte by byte
            labels.append("".join(
                chr(b) if b in _PLAIN else "\\" + chr(b) if b in b".\\" else f"\\{b:03d}"
                for b in raw
            ))
        else:
            labels.append(raw.decode("ascii"))
        i += n + 1
    return ".".join(labels) + "."


def _type_text(qtype: int) -> str:
    name = QTYPE.get(qtype, None)
    return str(name) if name is not None and not str(name).isdigit() else f"TYPE{qtype}"


def _subnet_text(cs: ClientSubnet | None, addr: Any) -> str | None:
    """The client's network at most /24 (IPv4) or /56 (IPv6): from ECS when the query
    has it (and SOURCE is not 0), else from the packet's source."""
    if cs is not None and cs.source:
        bits = min(cs.source, PRIVACY_PREFIX[cs.family])
        family, size = (socket.AF_INET, 4) if cs.family == 1 else (socket.AF_INET6, 16)
        packed = (cs.network_int >> (size * 8 - bits) << (size * 8 - bits)).to_bytes(size, "big")
        return f"{socket.inet_ntop(family, packed)}/{bits}"
    host = addr[0] if isinstance(addr, tuple) else addr
    if not isinstance(host, str):
        return None
    host = host.split("%", 1)[0]
    try:
        if ":" not in host:
            return socket.inet_ntop(socket.AF_INET, socket.inet_aton(host)[:3] + b"\0") + "/24"
        packed = socket.inet_pton(socket.AF_INET6, host)
    except OSError:
        return None
    return socket.inet_ntop(socket.AF_INET6, packed[:7] + bytes(9)) + "/56"


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

    def __init__(
        self, table: Table, cfg: Config, waiting: tuple[bytes, ...] = (), worker: int = 0
    ) -> None:
        self.table = table
        self.cfg = cfg
        self.worker = worker  # which serving process (1..N with --workers N; 0: the only one)
        self.stats = Stats()
        self.stats.tally = self.tally
        self.querylog = QueryLog(self, cfg.query_sample)
        # What the loop thread's transports call per query (TCP, uvloop UDP, and held
        # queries once synced): ``_answer``, or ``_answer_logged`` while queries are
        # logged; for one query every LATENCY_INTERVAL, ``_answer_timed``. Swapping
        # the callable costs the other queries nothing, not even a comparison.
        self._plain: Answer = self._answer if cfg.query_sample <= 0 else self._answer_logged
        self.answer: Answer = self._answer_timed
        self._log_left = self.querylog.gap()  # queries until the next one logged
        self._timed_at = {"udp": 0, "tcp": 0}  # each transport's count at its last timed query
        self._arming: asyncio.TimerHandle | None = None
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
        old = self.table
        # Once a batch of the UDP thread still answering from the old table is done,
        # what its reply caches sent is kept in the counters they share.
        with self.lock:
            self.table, self.cfg = table, cfg
            old.empty_caches()
        if cfg.query_sample != self.querylog.rate:
            self.querylog.set_rate(cfg.query_sample)
            self._log_left = self.querylog.gap()
            self._plain = self._answer if cfg.query_sample <= 0 else self._answer_logged
            if self.answer != self._answer_timed:
                self.answer = self._plain

    def tally(self) -> dict[str, Any]:
        """The table's counts of replies and cache hits, added up (for ``Stats.as_dict``)."""
        with self.lock:  # the caches' entries as they are between two UDP batches
            live = self.table.live()
        return self.stats.guard.tally(live)

    def _answer(self, data: bytes, tcp: bool, addr: Any = None) -> bytes | None:
        """The reply, None to stay silent, or WAIT (b"") to ask again after the first sync."""
        try:
            resp = self.serve(data, tcp, addr)
        except Exception:  # never let one packet take the loop down
            resp = self.failed(data, tcp)
        if resp is None:
            self.stats.dropped += 1
        return resp

    def _answer_logged(self, data: bytes, tcp: bool, addr: Any = None) -> bytes | None:
        """``_answer``, counting down to the next query to log (``log.query_sample``)."""
        self._log_left -= 1
        if self._log_left:
            return self._answer(data, tcp, addr)
        self._log_left = self.querylog.gap()
        cached = self.table.cache_of(data, tcp)
        t = time.perf_counter_ns()
        resp = self._answer(data, tcp, addr)
        self.querylog.note(data, resp, addr, tcp, time.perf_counter_ns() - t, cached)
        self.querylog.later()
        return resp

    def _answer_timed(self, data: bytes, tcp: bool, addr: Any = None) -> bytes | None:
        """``answer`` for one query, timed for ``fedns_answer_duration_seconds`` and
        counted once for each query of its transport since the last one timed."""
        self.answer = self._plain
        if self._arming is None:
            self._arming = asyncio.get_running_loop().call_later(LATENCY_INTERVAL, self._arm)
        t = time.perf_counter_ns()
        resp = self._plain(data, tcp, addr)
        ns = time.perf_counter_ns() - t
        if resp:
            transport = "tcp" if tcp else "udp"
            n = self.stats.tcp_queries if tcp else self.stats.udp_queries
            weight = max(1, n - self._timed_at[transport])
            self._timed_at[transport] = n
            self.stats.observe(transport, ns, weight)
        return resp

    def _arm(self) -> None:
        self._arming = None
        self.answer = self._answer_timed

    def sampled_udp(
        self, respond: Answer, data: bytes, addr: Any) -> bytes | None:
        """The UDP thread's query chosen for the query log: answered by ``respond``
        (the table its batch answers from), timed and noted."""
        cached = self.table.cache_of(data)
        t = time.perf_counter_ns()
        resp = respond(data, False, addr)
        self.querylog.note(data, resp, addr, False, time.perf_counter_ns() - t, cached)
        return resp

    def failed(self, data: bytes, tcp: bool = False) -> bytes | None:
        """The reply when answering raised: SERVFAIL if the header is readable."""
        self.stats.errors += 1
        log.exception("query_failed", size=len(data))
        if len(data) < 12 or data[2] & 0x80:
            return None
        reply = header_only(data, SERVFAIL)
        self.stats.guard.answers[answer_index(reply, tcp)] += 1
        return reply

    def later(self, data: bytes, tcp: bool, addr: Any, send: Callable[[bytes], None]) -> asyncio.Task[None]:
        """Answer a query that got WAIT once the first sync is done: ``send`` gets the reply."""

        async def run() -> None:
            await self.sync.event.wait()
            resp = self.answer(data, tcp, addr)
            if resp:
                send(resp)

        return self._keep(asyncio.get_running_loop().create_task(run()))
