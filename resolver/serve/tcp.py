"""DNS over TCP (RFC 7766): framing, pipelining, out-of-order completion, and the
limits that keep slow, idle and greedy clients from holding the port.

Every connection is on one clock, checked lazily at its earliest deadline
(re-armed when checked, so reading a byte costs no timer work). The deadlines
sit in one wheel of ``TICK`` slots per process with one loop timer for the
earliest, not a loop timer per connection: a client that connects, asks once
and closes (a resolver retrying a truncated answer) costs a dict entry, not a
timer set up and torn down (a fifth of such a connection's instructions).

- a query must arrive whole within ``message_timeout`` of its first byte, and
  from ``GRACE`` on at ``min_rate`` bytes/s on average: a client sending a
  byte a second (slowloris), or a length prefix and never the body, is cut
  off at its message's deadline, which later bytes cannot move;
- once the kernel's send buffer (fixed at ``SNDBUF``) takes no more of our
  replies, no more queries are read; replies the peer does not take must
  drain at ``min_rate`` (at least a byte per ``message_timeout`` when it is 0);
- a connection pipelining many queries gets ``_TURN`` of them answered per turn
  of the event loop, behind every other connection: it cannot hold the loop,
  or the GIL the UDP thread needs;
- a connection with no query in progress, none in flight and nothing to send
  is closed ``idle_timeout`` after its last message (RFC 7766 6.2.3);
- at most ``max_per_source`` connections per IPv4 address or IPv6 /64 (more are
  reset at once), ``max_connections`` in all. At the total cap a new
  connection is taken and the least recently active one gives way (idle,
  slow and non-reading ones come first: only a complete message read counts
  as activity), so connections held open by an attacker cannot lock
  legitimate clients out.

Queries held for the first sync complete out of order, behind later ones
(RFC 7766 7); at most ``max_inflight`` of them per connection.
"""

from __future__ import annotations

import asyncio
import heapq
import ipaddress
import struct
import time
from collections import deque
from typing import Any

import structlog

from .runtime import Runtime

log = structlog.get_logger("fedns.tcp")

_LEN = struct.Struct(">H")
# From this long after a message's first byte (or a reply backlog's start) on,
# the data must keep up with ``min_rate``: a query normally arrives in one segment.
GRACE = 1.0
_HELD_INFLIGHT = 1  # why reading is paused: max_inflight queries held for the first sync,
_HELD_WRITE = 2  # the peer does not read our replies,
_HELD_TURN = 4  # or whole frames read already wait for their turn
# Bytes the kernel may hold unsent per connection (it doubles this): room for a
# few maximum-size replies in flight, not the megabytes Linux autotunes to. Set
# on the listening socket (transports.py), which accepted connections inherit it from.
SNDBUF = 32 * 1024
_VICTIM_SCAN = 64  # connections looked at for one to evict (the rest are more recent)
# Frames answered per connection per turn: a connection pipelining thousands
# waits for its next turn, behind every other one that has frames waiting.
_TURN = 16
# Frames answered in all per iteration of the event loop. libuv accepts one
# connection per iteration, so a flood of pipelined queries must not make an
# iteration long: new clients would wait seconds to be accepted.
_BUDGET = 256
_WARN_EVERY = 60.0  # s between two warnings of one kind: an attack must not flood the log
# The clock's resolution: a deadline is checked at most this late (the smallest
# timeout a config may set is 0.1 s). Slots are numbered by ``int(when / TICK)``.
TICK = 0.05


def source_of(peer: Any) -> object:
    """What ``max_per_source`` counts by: an IPv4 address (also v4-mapped), or the /64
    of an IPv6 one, since a single host is routinely given a whole /64."""
    host = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    if ":" not in host:
        return host
    try:
        addr = ipaddress.IPv6Address(host.split("%", 1)[0])
    except ValueError:
        return host
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return addr.packed[:8]


class Connections:
    """The TCP connections of one serving process, least recently active first."""

    def __init__(self, rt: Runtime, fd_room: int | None = None) -> None:
        self.rt = rt
        self.loop = asyncio.get_running_loop()
        # Least recently active first: a plain dict, in insertion order, where a
        # connection moves to the end by leaving and coming back (an OrderedDict's
        # insert and delete cost three times a dict's, once per connection each).
        self.lru: dict[TcpProtocol, None] = {}
        self.sources: dict[object, int] = {}
        # File descriptors this process can give connections (RLIMIT_NOFILE less a
        # reserve); None: no limit known. A cap above it would fail in accept().
        self.fd_room = fd_room
        self._warned: dict[str, float] = {}
        # Connections with whole frames waiting (reading paused), served in turn.
        self.ready: deque[TcpProtocol] = deque()
        self.budget = _BUDGET  # frames this iteration of the loop may still answer
        self._scheduled = False
        # The clock: slot -> connections to check then (``TcpProtocol.slot``), and
        # the one loop timer, armed for the earliest slot with any.
        self.wheel: dict[int, dict[TcpProtocol, None]] = {}
        # The slots in order (a heap; a slot emptied before its time stays in it
        # until it comes up): a tick looks at the due ones, not at every slot.
        self._slots: list[int] = []
        self._tick_slot = 0
        self._tick: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self.lru)

    def cap(self) -> int:
        n = self.rt.cfg.tcp.max_connections
        return n if self.fd_room is None else min(n, self.fd_room)

    def admit(self, c: TcpProtocol) -> bool:
        """Take ``c`` in, evicting the least recently active at the cap; False: refuse it."""
        tcp = self.rt.cfg.tcp
        n = self.sources.get(c.source, 0)
        if tcp.max_per_source and n >= tcp.max_per_source:
            self.rt.stats.tcp_refused += 1
            self._warn("tcp_source_cap", source=str(c.peer[0]) if isinstance(c.peer, tuple) else "?",
                       max_per_source=tcp.max_per_source)
            return False
        cap = self.cap()
        while len(self.lru) >= cap:
            victim = self._victim()
            self.drop(victim)
            victim.shut("evicted")
            self.rt.stats.tcp_refused += 1
            self._warn("tcp_connection_cap", max_connections=cap,
                       action="closing the least recently active connections")
        self.lru[c] = None
        self.sources[c.source] = n + 1
        return True

    def _victim(self) -> TcpProtocol:
        """The least recently active connection, passing over (among the first
        few) one accepted a moment ago that has not been read from yet: its
        query may be waiting for its first turn."""
        now = self.loop.time()
        first = None
        for i, c in enumerate(self.lru):
            if first is None:
                first = c
            if c.heard or now - c.last >= GRACE or i >= _VICTIM_SCAN:
                return c
        assert first is not None
        return first

    def busy(self) -> bool:
        """Others wait for their turn, or this iteration's share is spent."""
        return bool(self.ready) or self.budget <= 0

    def spend(self, frames: int) -> None:
        # Renewed only by ``_run`` (at most once an iteration), which is scheduled
        # once the budget is spent or a connection waits: not a callback per read.
        self.budget -= frames

    def queue(self, c: TcpProtocol) -> None:
        """Serve ``c``'s waiting frames in turn; a connection not answered yet goes
        first (at most one a loop iteration is accepted, so this cannot starve
        the others), so a new client waits for no backlog."""
        if c.held & _HELD_TURN:
            return
        c._hold(_HELD_TURN)
        if c.answered:
            self.ready.append(c)
        else:
            self.ready.appendleft(c)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        self.budget = _BUDGET
        ready = self.ready
        while ready and self.budget > 0:
            ready.popleft()._turn()
        if ready:
            self._schedule()

    def touch(self, c: TcpProtocol) -> None:
        lru = self.lru
        if lru.pop(c, 1) is None:  # it was there (a value is None): to the end
            lru[c] = None

    # -- the clock -------------------------------------------------------------------

    def arm(self, c: TcpProtocol, when: float) -> None:
        """Check ``c`` at ``when`` at the latest (within ``TICK``; the earliest wins)."""
        slot = int(when / TICK) + 1  # slot k is checked at k * TICK: never early
        old = c.slot
        if old:
            if old <= slot:
                return
            self._unslot(c, old)
        c.slot = slot
        w = self.wheel.get(slot)
        if w is not None:
            w[c] = None
            return
        self.wheel[slot] = {c: None}
        heapq.heappush(self._slots, slot)
        if not self._tick_slot or slot < self._tick_slot:
            self._arm_tick(slot)

    def disarm(self, c: TcpProtocol) -> None:
        if c.slot:
            self._unslot(c, c.slot)
            c.slot = 0

    def _unslot(self, c: TcpProtocol, slot: int) -> None:
        # An emptied slot stays until it comes up (or is the earliest): deleted and
        # made again by the next connection, it would go into the heap once for each.
        w = self.wheel.get(slot)
        if w is not None:
            w.pop(c, None)

    def _arm_tick(self, slot: int) -> None:
        if self._tick is not None:
            self._tick.cancel()
        self._tick_slot = slot
        self._tick = self.loop.call_at(slot * TICK, self._on_tick)

    def _on_tick(self) -> None:
        # While the due slots are checked, re-arming arms no timer (-1 is below
        # every slot): the timer is armed once, after, for the earliest left.
        self._tick, self._tick_slot = None, -1
        wheel, slots = self.wheel, self._slots
        try:
            # A hair of slack: the timer fires at slot * TICK, and the division
            # back must not round that slot away.
            now = int(self.loop.time() / TICK + 1e-6)
            while slots and slots[0] <= now:
                slot = heapq.heappop(slots)
                for c in wheel.pop(slot, ()):
                    if c.slot == slot:  # not shut by a check before it meanwhile
                        c.slot = 0
                        try:
                            c._check()  # re-arms it, for a later slot
                        except Exception:  # one connection's failure is not the others'
                            log.exception("tcp_check_failed")
        finally:
            # Even if a check raised: the clock keeps going for the others.
            self._tick_slot = 0
            while slots and not wheel.get(slots[0]):  # gone, or emptied: no tick for it
                wheel.pop(heapq.heappop(slots), None)
            if slots:
                self._arm_tick(slots[0])

    def drop(self, c: TcpProtocol) -> None:
        if self.lru.pop(c, 1) is None:
            left = self.sources[c.source] - 1
            if left:
                self.sources[c.source] = left
            else:
                del self.sources[c.source]

    def close_all(self) -> None:
        for c in list(self.lru):
            c.shut("stopping")

    def _warn(self, event: str, **kw: Any) -> None:
        now = time.monotonic()
        if now - self._warned.get(event, -_WARN_EVERY) >= _WARN_EVERY:
            self._warned[event] = now
            log.warning(event, **kw)


class TcpProtocol(asyncio.Protocol):
    """One client connection: RFC 7766 framing and pipelining under the limits above."""

    # One of these per connection: slots make it smaller and quicker to set up.
    __slots__ = (
        "alive",
        "answered",
        "buf",
        "conns",
        "heard",
        "held",
        "last",
        "loop",
        "msg_bytes",
        "msg_start",
        "peer",
        "pending",
        "rt",
        "slot",
        "source",
        "transport",
        "wmark",
        "written",
        "wstart",
    )

    def __init__(self, rt: Runtime, conns: Connections) -> None:
        self.rt = rt
        self.conns = conns
        self.loop = conns.loop  # not get_running_loop(): that asks the kernel for the pid
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.source: object = None
        self.alive = False
        self.heard = False  # any byte received yet
        self.answered = False  # any frame answered yet
        self.pending = 0  # queries waiting for the first federation sync
        self.held = 0  # _HELD_* bits: why we paused reading
        self.last = 0.0  # when the last whole message came in (or a reply went out)
        self.msg_start: float | None = None  # first byte of the message in progress
        self.msg_bytes = 0  # its bytes so far
        self.written = 0  # bytes handed to the transport
        self.wstart: float | None = None  # a reply backlog's current window: start ...
        self.wmark = 0  # ... and bytes sent by then
        self.slot = 0  # the clock's slot it is checked at (Connections.arm); 0: none

    # -- life cycle ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = t = transport  # type: ignore[assignment]
        self.peer = peer = t.get_extra_info("peername")
        host = peer[0] if type(peer) is tuple else None
        # An IPv4 address is its own source: no call for the common case.
        self.source = source = host if type(host) is str and ":" not in host else source_of(peer)
        conns = self.conns
        rt = self.rt
        tcp = rt.cfg.tcp
        lru = conns.lru
        n = conns.sources.get(source, 0)
        held = len(lru)
        room = conns.fd_room
        if (
            (n < tcp.max_per_source or not tcp.max_per_source)
            and held < tcp.max_connections
            and (room is None or held < room)
        ):
            # ``admit``'s usual outcome, without its call: below every cap.
            lru[self] = None
            conns.sources[source] = n + 1
        elif not conns.admit(self):
            t.abort()  # type: ignore[attr-defined]  # a reset: nothing was said yet
            return
        self.alive = True
        rt.stats.tcp_connections += 1
        # Once the kernel takes no more of our replies, reading pauses (high=0):
        # no new queries are taken from a peer that does not read, until it does.
        # A fixed kernel send buffer (``SNDBUF``, Linux would grow it to
        # megabytes) makes that soon, and bounds what such a peer costs.
        t.set_write_buffer_limits(0)  # type: ignore[attr-defined]  # high: positional is quicker
        self.last = now = self.loop.time()
        # ``conns.arm``'s usual outcome, without its call: a slot already there.
        when = now + tcp.idle_timeout
        slot = int(when / TICK) + 1
        w = conns.wheel.get(slot)
        if w is not None:
            self.slot = slot
            w[self] = None
        else:
            conns.arm(self, when)

    def shut(self, why: str) -> None:
        """Close at a limit: gracefully when idle (RFC 7766 6.2.3), else a reset, so a
        peer that does not read cannot keep the socket open with unsent data."""
        self.conns.drop(self)
        t = self.transport
        if not self.alive or t is None:
            return
        self.alive = False
        self.conns.disarm(self)
        if why in ("idle", "evicted", "stopping") and not self.buf and not t.get_write_buffer_size():
            t.close()
        else:
            t.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        # ``conns.drop`` and ``conns.disarm``, inline: once per connection.
        self.alive = False
        conns = self.conns
        if conns.lru.pop(self, 1) is None:
            sources = conns.sources
            left = sources[self.source] - 1
            if left:
                sources[self.source] = left
            else:
                del sources[self.source]
        slot = self.slot
        if slot:
            self.slot = 0
            w = conns.wheel.get(slot)
            if w is not None:
                w.pop(self, None)

    # -- reading -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.heard = True
        buf = self.buf
        n = len(data)
        conns = self.conns
        if (
            not buf
            and n > 2
            and n == 2 + ((data[0] << 8) | data[1])
            and not self.held
            and not conns.ready
            and conns.budget > 0
        ):
            # The usual read: one whole query and nothing else, nothing buffered
            # before it, no other connection waiting for its turn. ``_drain`` and
            # ``_settle`` for it, inline: for a client that connects, asks once and
            # closes, this is most of what fedns itself does per connection.
            rt = self.rt
            rt.stats.tcp_queries += 1  # before answering: a timed answer weighs in the count
            msg = data[2:]
            resp = rt.answer(msg, True, self.peer)
            self.answered = True
            conns.budget -= 1
            if resp:
                t = self.transport
                if t is not None:
                    self.written += 2 + len(resp)
                    t.write(_LEN.pack(len(resp)) + resp)
            elif resp is not None:
                self._defer(msg)
            self.last = self.loop.time()
            lru = conns.lru
            if lru.pop(self, 1) is None:
                lru[self] = None
            self.msg_start = None
            return
        partial = bool(buf)
        buf += data
        if self.held:  # read before the pause took effect: kept for its turn
            return
        if self._whole() and self.conns.busy():
            self.conns.queue(self)
            return
        self._settle(self._drain(), partial, len(data))

    def _whole(self) -> bool:
        buf = self.buf
        return len(buf) >= 2 and len(buf) >= 2 + ((buf[0] << 8) | buf[1])

    def _settle(self, done: int, partial: bool, added: int) -> None:
        """After answering ``done`` frames: the activity clock, the message clock."""
        now = 0.0
        if done:
            self.last = now = self.loop.time()
            self.conns.touch(self)
        buf = self.buf
        if not buf or self.held:
            # Nothing, or whole frames waiting for their turn: no message of the
            # peer's in progress until they are answered.
            self.msg_start = None
        elif done or not partial or self.msg_start is None:
            # A new message begins: its clock starts now and only its
            # completion, never a further byte, stops it.
            self.msg_start = now or self.loop.time()
            self.msg_bytes = len(buf)
            tcp = self.rt.cfg.tcp
            self._arm(self.msg_start + (min(GRACE, tcp.message_timeout) if tcp.min_rate else tcp.message_timeout))
        else:
            self.msg_bytes += added

    def _drain(self) -> int:
        """Answer complete frames in the buffer, a turn's share; how many.

        A client pipelining thousands of queries in one segment gets ``_TURN``
        answered (the rest of the budget when no other waits), then waits
        (reading paused) for its next turn behind every other connection with
        frames waiting, and no iteration of the loop answers more than
        ``_BUDGET``: no client can hold the loop, or the GIL the UDP thread
        needs, and new connections are accepted meanwhile."""
        buf = self.buf
        out = []
        rt = self.rt
        conns = self.conns
        # A turn's share while others wait; alone, what is left of the budget.
        limit = min(_TURN, conns.budget) if conns.ready else conns.budget
        done = pos = 0
        size = len(buf)
        # Each query copied out once, the buffer cut once per batch (a view
        # held on it forbids resizing it, so it is released first).
        with memoryview(buf) as view:
            while done < limit and not self.held and size - pos >= 2:
                n = (buf[pos] << 8) | buf[pos + 1]
                end = pos + 2 + n
                if end > size:
                    break
                msg = bytes(view[pos + 2 : end])
                pos = end
                done += 1
                rt.stats.tcp_queries += 1  # before answering: a timed answer weighs in the count
                resp = rt.answer(msg, True, self.peer)
                if resp:
                    out.append(_LEN.pack(len(resp)))
                    out.append(resp)
                elif resp is not None:
                    # WAIT: this one completes later, out of order (RFC 7766 7); the
                    # queries behind it are answered now.
                    self._defer(msg)
        if pos:
            del buf[:pos]
        if done:
            self.answered = True
            conns.spend(done)
        t = self.transport
        if out and t is not None:
            # One write per batch: the length prefixes and messages go out together.
            data = b"".join(out)
            self.written += len(data)
            # What the kernel does not take calls pause_writing (high=0), which
            # arms the drain watch: no buffer check here.
            t.write(data)
        if not self.held and self._whole():
            conns.queue(self)
        return done

    def _turn(self) -> None:
        """Its turn (``Connections._run``): the next share of the frames read already."""
        self.held &= ~_HELD_TURN
        t = self.transport
        if not self.alive or t is None or self.held:
            return  # closed, or still held: the release queues it again
        self._settle(self._drain(), False, 0)
        if not self.held:
            t.resume_reading()

    def _hold(self, why: int) -> None:
        if not self.held and self.transport is not None:
            self.transport.pause_reading()
        self.held |= why

    def _release(self, why: int) -> None:
        if not self.held & why:
            return
        self.held &= ~why
        t = self.transport
        if self.held or not self.alive or t is None:
            return
        if self._whole():
            self.conns.queue(self)  # frames read meanwhile first; reading resumes after
            return
        self._settle(0, False, 0)
        t.resume_reading()

    def _defer(self, msg: bytes) -> None:
        self.pending += 1
        if self.pending >= self.rt.cfg.tcp.max_inflight:
            self._hold(_HELD_INFLIGHT)  # RFC 7766 6.2.1.1: bound in-flight queries
        task = self.rt.later(msg, True, self.peer, self._send)
        task.add_done_callback(self._deferred_done)

    def _send(self, resp: bytes) -> None:
        t = self.transport
        if self.alive and t is not None and not t.is_closing():
            data = _LEN.pack(len(resp)) + resp
            self.written += len(data)
            t.write(data)
            self.last = self.loop.time()
            self.conns.touch(self)

    def _deferred_done(self, _task: asyncio.Task[None]) -> None:
        self.pending -= 1
        if self.pending < self.rt.cfg.tcp.max_inflight:
            self._release(_HELD_INFLIGHT)

    # -- writing -------------------------------------------------------------------

    def pause_writing(self) -> None:
        self._hold(_HELD_WRITE)
        self._arm(self.loop.time() + GRACE)

    def resume_writing(self) -> None:
        self._release(_HELD_WRITE)

    # -- the clock -----------------------------------------------------------------

    def _arm(self, when: float) -> None:
        """Check at ``when`` at the latest (an earlier check re-arms itself)."""
        self.conns.arm(self, when)

    def _check(self) -> None:
        t = self.transport
        if not self.alive or t is None:
            return
        tcp = self.rt.cfg.tcp
        now = self.loop.time()
        due = now + tcp.idle_timeout
        unsent = t.get_write_buffer_size()
        if unsent:
            sent = self.written - unsent
            if self.wstart is None:
                self.wstart, self.wmark = now, sent
            else:
                window = GRACE if tcp.min_rate else tcp.message_timeout
                elapsed = now - self.wstart
                if elapsed >= window:
                    need = max(1.0, tcp.min_rate * elapsed)
                    if sent - self.wmark < need:
                        self.shut("write_stalled")
                        return
                    self.wstart, self.wmark = now, sent
            due = min(due, self.wstart + (GRACE if tcp.min_rate else tcp.message_timeout))
        else:
            self.wstart = None
        if self.msg_start is not None and not self.held:
            limit = tcp.message_timeout
            if tcp.min_rate:
                limit = min(limit, GRACE + self.msg_bytes / tcp.min_rate)
            deadline = self.msg_start + limit
            if deadline <= now:
                self.shut("message_timeout")
                return
            due = min(due, deadline)
        elif not self.buf and not self.pending and not unsent:
            deadline = self.last + tcp.idle_timeout
            if deadline <= now:
                self.shut("idle")
                return
            due = min(due, deadline)
        else:
            # Waiting on us, not on the peer: queries read and queued for their
            # turn, or held for the first sync (bounded by dns.startup_wait).
            due = min(due, now + GRACE)
        self._arm(max(due, now + 0.01))
