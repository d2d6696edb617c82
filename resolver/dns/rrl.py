"""Response rate limiting (RRL) as BIND and Knot do it: the decision, without sockets.

A spoofed query makes a server send its reply to the victim; RRL bounds how
many similar replies one network gets per second. ``Limiter.check(net,
kind, now)`` says what to do with one reply: send it, drop it, or "slip" a
truncated one (TC=1, no records) so that a real client behind that network
retries over TCP, which a spoofer cannot.

- ``net``: the source network (``Limiter.network``: /24 of IPv4, /56 of IPv6
  by default), never an ECS subnet, which the sender writes.
- ``kind``: what was answered. The caller (``answers.Table.respond_limited``)
  passes the name and type for an answer of an existing name, the zone for
  NXDOMAIN and for answers synthesized below a name (wildcards, referrals),
  so a flood of random names shares one budget, and one key for all errors.

Each (net, kind) has a token bucket, kept as the time its next token is due
(GCRA, the generic cell rate algorithm: one float, not a count and a time), with
how many replies went over the rate and when the last did: refilled at
``responses_per_second``, holding at most ``responses_per_second * window``
(a bucket not seen before is full). Over the rate, every ``slip``-th reply of
a bucket is slipped and the others are dropped (``slip: 0`` drops all, ``1``
slips all); ``log_only`` answers all and counts what it would have done.

The buckets live in one LRU table of ``table_size`` entries (about 230 bytes
each: 15 MB at the default 65,536); a bucket pushed out is as good as full,
which is what a network that has been quiet for a while has anyway. A bucket
moves to the fresh end when it is over the rate, so a flood of new networks
cannot push out the ones being limited.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass
from typing import Any

from dnslib import QTYPE

ALLOW, SLIP, DROP, LOG = 0, 1, 2, 3  # verdicts; LOG: over the rate, answered (log_only)
ERRORS = -1  # the kind of every error reply (``answers.Table._kind``)

_NETS_MAX = 1 << 16  # source addresses remembered with their network; cleared when full
EVENTS_MAX = 100  # buckets that began limiting, kept between two ``drain`` calls


@dataclass(frozen=True, slots=True)
class Settings:
    """``rate_limit:`` (``config.RateLimitConfig`` is this class; its values are checked there)."""

    responses_per_second: int = 20
    slip: int = 2
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    window: float = 15.0
    table_size: int = 65536
    log_only: bool = False


class Limiter:
    """Token buckets per (source network, kind of reply), in a bounded LRU table."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.interval = 1.0 / settings.responses_per_second  # seconds per token
        # How far ahead of now the next token may be due: a full bucket's worth (less
        # half a token, so that rounding never takes the last one away).
        self.tolerance = max(settings.window - self.interval / 2, 0.0)
        self.slip = settings.slip
        self.size = settings.table_size
        self.over = LOG if settings.log_only else DROP
        # (net, kind) -> bucket (``_new``), in LRU order: a plain dict, in the order of
        # insertion, refreshed by inserting again.
        self.buckets: dict[tuple[Any, Any], list[float]] = {}
        self.nets: dict[str, int] = {}
        self._v4 = 32 - settings.ipv4_prefix
        self._v6 = 128 - settings.ipv6_prefix
        self.events: list[tuple[Any, Any]] = []  # (net, kind) that began limiting
        self.events_lost = 0
        self.evicted = 0

    def network(self, host: str) -> int:
        """The source network of an address as a key: an int, IPv6 ones above 2**32."""
        net = self.nets.get(host)
        if net is None:
            ip = ipaddress.ip_address(host.partition("%")[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped  # an IPv4 client on a dual-stack socket
            v4 = ip.version == 4
            net = int(ip) >> self._v4 if v4 else (1 << 128) | (int(ip) >> self._v6)
            if len(self.nets) >= _NETS_MAX:
                self.nets.clear()
            self.nets[host] = net
        return net

    def describe(self, net: int) -> str:
        """A network key as text, e.g. ``192.0.2.0/24``."""
        s = self.settings
        if net < 1 << 32:
            return str(ipaddress.IPv4Network((net << self._v4, s.ipv4_prefix)))
        return str(ipaddress.IPv6Network(((net & ((1 << 128) - 1)) << self._v6, s.ipv6_prefix)))

    def check(self, net: Any, kind: Any, now: float) -> int:
        """The verdict for one reply of ``kind`` to network ``net`` at time ``now``
        (seconds, monotonic): ALLOW, SLIP, DROP, or LOG (log_only)."""
        b = self.buckets.get((net, kind))
        if b is None:
            return self._new((net, kind), now)
        due = b[0]  # when the bucket's next token comes: past, or at most a full bucket ahead
        if due < now:
            b[0] = now + self.interval
        elif due - now <= self.tolerance:
            b[0] = due + self.interval
        else:
            return self._over((net, kind), b, now)
        return ALLOW

    def _new(self, key: tuple[Any, Any], now: float) -> int:
        buckets = self.buckets
        if len(buckets) >= self.size:
            self._evict()
        # [next token due, replies over the rate, when the last one was]
        buckets[key] = [now + self.interval, 0, 0.0]
        return ALLOW

    def _evict(self) -> None:
        """Drop the least recently used buckets: a sixteenth of the table at once, so
        that the walk past the front of the dict's order is paid once per many."""
        buckets = self.buckets
        old = list(itertools.islice(buckets, max(1, self.size // 16)))
        for k in old:
            buckets.pop(k, None)  # pop: the other serving thread may have taken it
        self.evicted += len(old)

    def _over(self, key: tuple[Any, Any], b: list[float], now: float) -> int:
        """A reply over the rate. Its bucket moves to the end of the LRU order (one
        under the rate does not move: pushed out, it would be refilled anyway)."""
        buckets = self.buckets
        buckets.pop(key, None)
        buckets[key] = b
        if now - b[2] > 1.0:  # the first over the rate for a second: it starts limiting
            if len(self.events) < EVENTS_MAX:
                self.events.append(key)
            else:
                self.events_lost += 1
        b[2] = now
        n = b[1] = b[1] + 1
        if self.over == LOG:
            return LOG
        slip = self.slip
        return SLIP if slip and n % slip == 0 else DROP

    def drain(self) -> tuple[list[tuple[Any, Any]], int]:
        """The buckets that began limiting since the last call, and how many more did."""
        events, self.events = self.events, []
        lost, self.events_lost = self.events_lost, 0
        return events, lost


def describe_kind(kind: Any) -> str:
    """A kind key as ``answers.Table.respond_limited`` makes it, as text."""
    if isinstance(kind, tuple):
        name, qtype = kind
        return f"{_text(name)} {QTYPE.get(qtype, f'TYPE{qtype}') if qtype else 'NODATA'}"
    if isinstance(kind, bytes):
        return f"NXDOMAIN and synthesized answers in {_text(kind)}"
    return "errors"  # ERRORS


def _text(wire: bytes) -> str:
    labels = []
    i = 0
    while i < len(wire) and wire[i]:
        labels.append(wire[i + 1 : i + 1 + wire[i]].decode("ascii", "backslashreplace"))
        i += wire[i] + 1
    return ".".join(labels) + "."
