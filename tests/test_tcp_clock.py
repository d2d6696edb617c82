"""The TCP connections' clock (``tcp.Connections.arm``): one wheel of ``TICK`` slots
and one loop timer, in place of a loop timer per connection.

Each deadline is checked no earlier than asked and at most a slot late; the
earliest deadline of a connection wins; a disarmed connection is never checked
and leaves nothing behind; a check that re-arms is checked again later. The
end-to-end behaviour (idle, slowloris, stalled readers) is in test_tcp.py and
test_tcp_abuse.py against a real server."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from resolver.serve.tcp import TICK, Connections


class Conn:
    """What the clock needs of a connection: its slot, and a check to call."""

    def __init__(self, conns: Connections, again: float | None = None) -> None:
        self.slot = 0
        self.conns = conns
        self.checked: list[float] = []
        self.again = again  # re-arm this long after a check, once

    def _check(self) -> None:
        now = self.conns.loop.time()
        self.checked.append(now)
        if self.again is not None:
            self.conns.arm(self, now + self.again)  # type: ignore[arg-type]
            self.again = None


def _conns() -> Connections:
    rt = SimpleNamespace(cfg=SimpleNamespace(tcp=SimpleNamespace(max_connections=10)))
    return Connections(rt, None)  # type: ignore[arg-type]


async def test_deadlines_are_checked_in_time_and_never_early() -> None:
    conns = _conns()
    loop = conns.loop
    t0 = loop.time()
    early, later, gone, moved = (Conn(conns) for _ in range(4))
    conns.arm(later, t0 + 0.25)  # type: ignore[arg-type]
    conns.arm(early, t0 + 0.1)  # type: ignore[arg-type]
    conns.arm(early, t0 + 0.4)  # type: ignore[arg-type]  # later than armed: the earlier stays
    conns.arm(gone, t0 + 0.15)  # type: ignore[arg-type]
    conns.disarm(gone)  # type: ignore[arg-type]
    conns.arm(moved, t0 + 0.35)  # type: ignore[arg-type]
    conns.arm(moved, t0 + 0.2)  # type: ignore[arg-type]  # earlier: moved
    await asyncio.sleep(0.6)
    for c, due in ((early, 0.1), (moved, 0.2), (later, 0.25)):
        assert len(c.checked) == 1, c.checked
        assert due <= c.checked[0] - t0 < due + TICK + 0.1
    assert gone.checked == [] and gone.slot == 0
    assert conns.wheel == {} and conns._tick is None  # nothing left: no timer armed
    assert conns._slots == []


async def test_a_check_that_re_arms_is_checked_again() -> None:
    """A check re-arming for later than another connection's deadline does not
    push that one back (the timer is armed for the earliest slot left)."""
    conns = _conns()
    t0 = conns.loop.time()
    c = Conn(conns, again=0.3)
    between, last = Conn(conns), Conn(conns)
    conns.arm(c, t0 + 0.05)  # type: ignore[arg-type]
    conns.arm(between, t0 + 0.15)  # type: ignore[arg-type]
    conns.arm(last, t0 + 0.6)  # type: ignore[arg-type]
    await asyncio.sleep(0.8)
    assert len(c.checked) == 2
    assert c.checked[1] - c.checked[0] >= 0.3
    assert len(between.checked) == 1 and 0.15 <= between.checked[0] - t0 < 0.15 + TICK + 0.1
    assert len(last.checked) == 1 and last.checked[0] - t0 >= 0.6
    assert conns.wheel == {}


async def test_many_connections_one_timer() -> None:
    conns = _conns()
    t0 = conns.loop.time()
    cs = [Conn(conns) for _ in range(500)]
    for i, c in enumerate(cs):
        conns.arm(c, t0 + 0.05 + (i % 5) * 0.05)  # type: ignore[arg-type]
    for c in cs[::2]:
        conns.disarm(c)  # type: ignore[arg-type]
    assert len(conns.wheel) <= 6  # slots, not connections
    await asyncio.sleep(0.5)
    assert all(len(c.checked) == 1 for c in cs[1::2])
    assert all(c.checked == [] for c in cs[::2])
    assert conns.wheel == {}


async def test_a_check_that_raises_does_not_stop_the_clock() -> None:
    """One connection's failing check must not leave the others unchecked."""
    conns = _conns()
    t0 = conns.loop.time()

    class Failing(Conn):
        def _check(self) -> None:
            super()._check()
            raise RuntimeError("boom")

    bad, same_slot, later = Failing(conns), Conn(conns), Conn(conns)
    conns.arm(bad, t0 + 0.1)  # type: ignore[arg-type]
    conns.arm(same_slot, t0 + 0.1)  # type: ignore[arg-type]
    conns.arm(later, t0 + 0.3)  # type: ignore[arg-type]
    await asyncio.sleep(0.5)
    assert len(bad.checked) == 1  # it raised (logged as tcp_check_failed)
    assert len(same_slot.checked) == 1 and len(later.checked) == 1
    conns.arm(bad, conns.loop.time() + 0.05)  # type: ignore[arg-type]  # and can be armed again
    await asyncio.sleep(0.2)
    assert len(bad.checked) == 2
    assert conns.wheel == {}


async def test_long_timeouts_keep_a_tick_cheap() -> None:
    """An hour's worth of slots: a tick looks at the due slots only."""
    conns = _conns()
    t0 = conns.loop.time()
    far = [Conn(conns) for _ in range(2000)]
    for i, c in enumerate(far):
        conns.arm(c, t0 + 60 + i * 1.7)  # type: ignore[arg-type]  # ~2,000 slots up to an hour
    soon = Conn(conns)
    conns.arm(soon, t0 + 0.05)  # type: ignore[arg-type]
    await asyncio.sleep(0.2)
    assert len(soon.checked) == 1
    assert all(not c.checked for c in far)
    assert conns._tick_slot == min(conns.wheel)  # the timer waits for the next slot
    for c in far:
        conns.disarm(c)  # type: ignore[arg-type]
    assert not any(conns.wheel.values())  # emptied slots wait to come up, holding no one
    assert len(conns._slots) == len(conns.wheel)  # each slot in the heap once


async def test_connections_coming_and_going_push_a_slot_once() -> None:
    """Short connections arm and leave the same slot in turn: it enters the heap once."""
    conns = _conns()
    t0 = conns.loop.time()
    for _ in range(1000):
        c = Conn(conns)
        conns.arm(c, t0 + 5.0)  # type: ignore[arg-type]
        conns.disarm(c)  # type: ignore[arg-type]
    assert len(conns._slots) == 1
    assert not any(conns.wheel.values())
