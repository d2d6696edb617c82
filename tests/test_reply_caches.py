"""The UDP reply caches (``Table.replies``, ``Table.below``) stay within their
bounds under a flood of new names and new questions, and are emptied when the
table changes. (That their replies equal fresh ones is checked over real
sockets in test_udp_transport.py.)"""

from __future__ import annotations

import random
from pathlib import Path

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
