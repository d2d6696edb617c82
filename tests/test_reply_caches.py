"""The reply caches (``Table.replies``, ``tcp_replies``, ``below``) stay within their
bounds under a flood of new names and new questions, and are emptied when the
table changes. (That their replies equal fresh ones is checked over real
sockets in test_udp_transport.py.)"""

from __future__ import annotations

import random
from pathlib import Path

import dns.flags
import dns.message
import pytest
from servers import RICH_ORIGIN, RICH_ZONE

from resolver.dns import answers
from resolver.dns.answers import Table
from resolver.dns.zone import load_zone_file


def test_caches_are_bounded_and_emptied_on_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(answers, "_REPLIES_MAX", 50)
    table = Table([load_zone_file(Path(RICH_ZONE), RICH_ORIGIN)])
    rnd = random.Random(3)
    parents = ["", "wild.", "web.", "ent.", "child."]
    for i in range(2000):
        label = "x" * rnd.randint(1, 63)
        q = dns.message.make_query(f"{label}.{parents[i % 5]}{RICH_ORIGIN}", "A", use_edns=i % 2)
        assert table.respond(q.to_wire(), False, ("127.0.0.1", 53)) is not None
        # A resolver's 0x20 letter case: every question is another key.
        name = "".join(c.upper() if rnd.random() < 0.5 else c for c in f"web.{RICH_ORIGIN}")
        q = dns.message.make_query(name, rnd.choice(["A", "AAAA", "MX", "TXT"]))
        q.flags = rnd.getrandbits(16) & 0x0110  # RD and CD: other reply bytes
        table.respond(q.to_wire(), False, ("127.0.0.1", 53))
        assert len(table.replies) <= 50
        assert sum(len(b.bodies) for b in table.below.values()) <= 50
    assert table.replies and table.below
    table.publish({}, {})
    assert not table.replies and not table.below


def test_tcp_replies_are_cached_apart_from_udp(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TCP question is answered from ``tcp_replies`` once asked, never from the UDP
    cache (whose reply of the same question may be truncated), within the bound."""
    monkeypatch.setattr(answers, "_REPLIES_MAX", 50)
    table = Table([load_zone_file(Path(RICH_ZONE), RICH_ORIGIN)])
    big = dns.message.make_query(f"big.{RICH_ORIGIN}", "TXT", use_edns=False).to_wire()
    src = ("127.0.0.1", 53)
    udp, tcp = table.respond(big, False, src), table.respond(big, True, src)
    assert udp is not None and tcp is not None
    assert dns.message.from_wire(udp).flags & dns.flags.TC  # 512 bytes: truncated
    assert big[2:] in table.replies and big[2:] in table.tcp_replies
    assert table.respond(big, True, src) == tcp == table.general(big, True, src)
    counted = table.counts.tally(table.live())
    assert (counted["tcp_reply_hits"], counted["reply_hits"]) == (1, 0)
    assert not dns.message.from_wire(tcp).flags & dns.flags.TC
    assert table.respond(big, False, src) == udp
    assert table.cache_of(big, True) and table.cache_of(big, False)
    rnd = random.Random(5)
    for _ in range(300):
        name = "".join(c.upper() if rnd.random() < 0.5 else c for c in f"web.{RICH_ORIGIN}")
        q = dns.message.make_query(name, rnd.choice(["A", "AAAA", "MX", "TXT"])).to_wire()
        assert table.respond(q, True, src) == table.general(q, True, src)
        assert len(table.tcp_replies) <= 50
    table.publish({}, {})
    assert not table.tcp_replies and not table.replies
