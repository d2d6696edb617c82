"""Response rate limiting (``rate_limit:``): the limiter alone, then a real fedns flooded.

The limiter (``resolver.dns.rrl.Limiter``) is pure: its tests give it the
time. The server tests flood a real ``fedns serve`` on loopback from many
addresses of one /24 (client sockets bound to 127.9.x.1-40, as spoofed
sources in one network look) and count what comes back with dnspython:
full answers, truncated ones (TC=1, the question, no records: "slipped"),
BADCOOKIE, and silence. The expected numbers come from the config: at most
``responses_per_second * window`` at once and ``responses_per_second`` a
second after that, and with ``slip: 2`` every second reply over the rate
slipped. A client in another /24, a TCP client and a client with a valid
server cookie (made here with the secret, RFC 9018) are not limited.
"""

from __future__ import annotations

import selectors
import socket
import struct
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import pytest
from dnsclient import frame, make, tcp_read
from prometheus_client.parser import text_string_to_metric_families
from servers import (
    RICH_ORIGIN,
    RICH_ZONE,
    ServerProcess,
    free_port,
    start_fedns,
    write_config,
)
from siphash24 import siphash24

from resolver.dns.rrl import ALLOW, DROP, LOG, SLIP, Limiter, Settings

# -- the limiter alone -------------------------------------------------------------------


def verdicts(lim: Limiter, n: int, now: float, net: int = 1, kind: object = "k") -> list[int]:
    return [lim.check(net, kind, now) for _ in range(n)]


def test_a_new_bucket_holds_rate_times_window_then_refills_at_the_rate() -> None:
    lim = Limiter(Settings(responses_per_second=10, window=2.0))
    t = 1000.0
    assert verdicts(lim, 20, t) == [ALLOW] * 20  # a bucket not seen before is full
    assert ALLOW not in verdicts(lim, 5, t)
    # One token per 1/rate seconds.
    assert [v == ALLOW for v in verdicts(lim, 2, t + 0.1)] == [True, False]
    assert verdicts(lim, 21, t + 10.0).count(ALLOW) == 20  # full again, and no fuller
    # Steady pressure (100 a second for 10 s) gets the rate, plus the bucket once.
    lim = Limiter(Settings(responses_per_second=10, window=2.0))
    allowed = sum(lim.check(1, "k", t + i / 100) == ALLOW for i in range(1000))
    assert 20 + 10 * 10 - 1 <= allowed <= 20 + 10 * 10 + 1


@pytest.mark.parametrize(
    "slip,pattern",
    [(2, [DROP, SLIP]), (1, [SLIP]), (0, [DROP]), (3, [DROP, DROP, SLIP])],
)
def test_every_slip_th_reply_over_the_rate_is_slipped(slip: int, pattern: list[int]) -> None:
    lim = Limiter(Settings(responses_per_second=1, window=1.0, slip=slip))
    assert verdicts(lim, 1, 5.0) == [ALLOW]
    over = verdicts(lim, 12, 5.0)
    assert over == (pattern * 12)[:12]


def test_log_only_says_what_it_would_do_and_records_when_limiting_starts() -> None:
    lim = Limiter(Settings(responses_per_second=1, window=1.0, log_only=True))
    assert verdicts(lim, 4, 7.0) == [ALLOW, LOG, LOG, LOG]
    events, lost = lim.drain()
    assert events == [(1, "k")] and lost == 0  # once, when it began
    assert lim.drain() == ([], 0)


def test_buckets_are_per_network_and_kind() -> None:
    lim = Limiter(Settings(responses_per_second=1, window=1.0))
    assert verdicts(lim, 2, 3.0, net=1, kind="a") == [ALLOW, DROP]
    assert verdicts(lim, 1, 3.0, net=1, kind="b") == [ALLOW]
    assert verdicts(lim, 1, 3.0, net=2, kind="a") == [ALLOW]


def test_the_table_of_buckets_is_bounded_and_keeps_the_busy_ones() -> None:
    lim = Limiter(Settings(responses_per_second=1, window=1.0, table_size=64))
    t = 9.0
    assert verdicts(lim, 2, t, kind="busy") == [ALLOW, DROP]
    for i in range(5000):
        lim.check(i, "one-off", t)
        lim.check(1, "busy", t)  # over the rate all along: kept at the fresh end
        assert len(lim.buckets) <= 64
    assert lim.check(1, "busy", t) != ALLOW  # not pushed out (which would refill it)
    assert lim.evicted >= 5000 - 64
    # A bucket pushed out comes back full.
    assert lim.check(0, "one-off", t) == ALLOW


def test_networks_by_prefix() -> None:
    lim = Limiter(Settings(ipv4_prefix=24, ipv6_prefix=56))
    net = lim.network
    assert net("127.9.9.1") == net("127.9.9.200") == net("::ffff:127.9.9.7")
    assert net("127.9.9.1") != net("127.9.10.1")
    assert net("2001:db8:0:1::1") == net("2001:db8:0:ff:ffff::1") != net("2001:db8:0:100::1")
    assert net("192.0.2.1") != net("::ffff:0:c000:201")  # an IPv6 address is not IPv4's
    assert lim.describe(net("198.51.100.77")) == "198.51.100.0/24"
    assert lim.describe(net("2001:db8:0:1::1")) == "2001:db8::/56"


# -- a real server, flooded ------------------------------------------------------------------

QNAME = f"www.{RICH_ORIGIN}"
RATE, WINDOW, SLIP_EVERY = 10, 2.0, 2
BURST = int(RATE * WINDOW)
SECRET = bytes.fromhex("c0c1c2c3c4c5c6c7c8c9cacbcccdcecf")


@dataclass
class Server:
    sp: ServerProcess
    admin: int

    def limited(self) -> dict[str, float]:
        """``fedns_rrl_limited_responses_total`` by action."""
        url = f"http://127.0.0.1:{self.admin}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        return {
            s.labels["action"]: s.value
            for fam in text_string_to_metric_families(text)
            if fam.name == "fedns_rrl_limited_responses"
            for s in fam.samples
        }


def launch(workdir: Path, rate_limit: dict[str, object]) -> Server:
    admin = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    secret = workdir / "cookie.secret"
    secret.write_text(SECRET.hex() + "\n")
    config = write_config(
        workdir,
        {RICH_ORIGIN: Path(RICH_ZONE)},
        {
            "rate_limit": rate_limit,
            "cookies": {"secret_file": str(secret)},
            "admin": {"listen": f"127.0.0.1:{admin}"},
        },
    )
    sp = start_fedns(config, workdir)
    srv = Server(sp, admin)
    deadline = time.monotonic() + 15
    while True:  # the admin API comes up just after DNS
        try:
            srv.limited()
            return srv
        except OSError:
            if time.monotonic() > deadline:
                sp.stop()
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = launch(
        tmp_path_factory.mktemp("rrl"),
        {"responses_per_second": RATE, "slip": SLIP_EVERY, "window": f"{WINDOW:g}s"},
    )
    yield srv
    srv.sp.stop()


@dataclass
class Flood:
    sent: int = 0
    sent_bytes: int = 0
    seconds: float = 0.0  # from the first query sent to the last
    full: list[dns.message.Message] = field(default_factory=list)
    slipped: list[tuple[dns.message.Message, bytes]] = field(default_factory=list)  # reply, query
    badcookie: list[dns.message.Message] = field(default_factory=list)
    reply_bytes: int = 0

    @property
    def answered(self) -> int:
        return len(self.full) + len(self.slipped) + len(self.badcookie)


def flood(
    srv: Server, network: str, queries: list[bytes], sources: int = 40, quiet: float = 1.0
) -> Flood:
    """Send ``queries`` in turn from ``network``.1 to .``sources`` as fast as they go;
    collect every reply until ``quiet`` seconds pass without one."""
    socks = []
    sel = selectors.DefaultSelector()
    for i in range(1, sources + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((f"{network}.{i}", 0))
        s.setblocking(False)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ)
    out = Flood()
    sent: dict[tuple[int, int], bytes] = {}  # (socket, id) -> query

    def drain(timeout: float) -> bool:
        got = False
        for key, _ in sel.select(timeout):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            while True:
                try:
                    wire = s.recv(65535)
                except BlockingIOError:
                    break
                got = True
                out.reply_bytes += len(wire)
                m = dns.message.from_wire(wire)
                q = sent[(s.fileno(), m.id)]
                if m.rcode() == dns.rcode.BADCOOKIE:
                    out.badcookie.append(m)
                elif m.flags & dns.flags.TC:
                    out.slipped.append((m, q))
                else:
                    out.full.append(m)
        return got

    try:
        t0 = time.monotonic()
        for i, data in enumerate(queries):
            s = socks[i % len(socks)]
            qid = i & 0xFFFF
            data = struct.pack(">H", qid) + data[2:]
            sent[(s.fileno(), qid)] = data
            s.sendto(data, srv.sp.addr)
            out.sent += 1
            out.sent_bytes += len(data)
            if i % 50 == 49:
                drain(0)  # keep the receive buffers from filling
        out.seconds = time.monotonic() - t0
        while drain(quiet):
            pass
    finally:
        for s in socks:
            sel.unregister(s)
            s.close()
    return out


def full_answer(m: dns.message.Message) -> bool:
    return m.rcode() == dns.rcode.NOERROR and not m.flags & dns.flags.TC and bool(m.answer)


def test_a_flood_from_one_network_gets_the_rate_and_slipped_replies(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    before = server.limited()
    q = make(QNAME, "A", edns=0).to_wire()
    n = 600
    f = flood(server, "127.9.9", [q] * n, quiet=2.0)
    after = server.limited()
    # Nothing lost on loopback: every query was answered, slipped or dropped.
    assert f.sent == n and not f.badcookie
    assert all(full_answer(m) for m in f.full)
    full, slipped = len(f.full), len(f.slipped)
    # At most the bucket plus the rate over the flood (and a second of slack);
    # at least the bucket: it started full.
    assert BURST <= full <= BURST + RATE * (f.seconds + 1.0), (full, f.seconds)
    limited = n - full
    assert slipped == limited // SLIP_EVERY  # every second reply over the rate, exactly
    for m, sent in f.slipped:  # truncated: the question as asked, no records, the OPT record
        assert m.flags & dns.flags.TC and m.rcode() == dns.rcode.NOERROR
        assert m.question == dns.message.from_wire(sent).question
        assert (m.answer, m.authority) == ([], []) and m.edns == 0
    assert after["slip"] - before["slip"] == slipped
    assert after["drop"] - before["drop"] == limited - slipped
    ratio = f.reply_bytes / f.sent_bytes
    with capsys.disabled():
        print(
            f"\nRRL flood: {n} queries from 40 addresses of 127.9.9.0/24 in {f.seconds:.2f} s: "
            f"{full} answered, {slipped} slipped (TC), {n - f.answered} dropped; "
            f"reply bytes / query bytes = {f.reply_bytes}/{f.sent_bytes} = {ratio:.3f}"
        )
    assert ratio <= 1.0  # the point of slip 2: a flood gets back less than it sent


def test_other_networks_tcp_and_valid_cookies_are_not_limited(server: Server) -> None:
    q = make(QNAME, "A", edns=0).to_wire()
    f = flood(server, "127.9.11", [q] * 300, quiet=0.3)
    assert len(f.full) < 300  # limited now
    # Another /24, the same question: answered in full.
    other = flood(server, "127.9.12", [q] * 10, sources=5)
    assert len(other.full) == 10
    # TCP from the limited network: answered in full (a spoofer cannot do TCP).
    for _ in range(10):
        with socket.create_connection(
            server.sp.addr, timeout=5, source_address=("127.9.11.77", 0)
        ) as s:
            s.sendall(frame(q))
            wire = tcp_read(s)
        assert wire is not None and full_answer(dns.message.from_wire(wire))
    # A valid server cookie from the limited network (RFC 9018, made with the secret
    # for the one address ``flood`` sends from).
    client = bytes(range(8))
    head = b"\x01\x00\x00\x00" + struct.pack(">I", int(time.time()))
    cookie = head + siphash24(client + head + socket.inet_aton("127.9.11.1"), key=SECRET).digest()
    with_cookie = make(QNAME, "A", edns=0, options=[dns.edns.CookieOption(client, cookie)])
    valid = flood(server, "127.9.11", [with_cookie.to_wire()] * 20, sources=1)
    assert len(valid.full) == 20, "a client with a valid cookie was limited"


def test_a_limited_client_with_a_cookie_gets_badcookie_then_is_let_through(server: Server) -> None:
    """As BIND: a slipped reply to a client that sends cookies is BADCOOKIE with a fresh
    server cookie (RFC 7873 5.2.3), and with that cookie the client is exempt."""
    plain = make(QNAME, "A", edns=0).to_wire()
    flood(server, "127.9.13", [plain] * 300, quiet=0.3)  # the network is over the rate
    client = bytes(range(8, 16))
    wrong = b"\x01\x00\x00\x00" + struct.pack(">I", int(time.time())) + bytes(8)
    q = make(QNAME, "A", edns=0, options=[dns.edns.CookieOption(client, wrong)]).to_wire()
    f = flood(server, "127.9.13", [q] * 20, sources=1)
    # Every second one over the rate is BADCOOKIE (which of each pair depends on where
    # the plain flood left the bucket's count), none truncated; a token that came
    # meanwhile (10 a second) lets one through in full.
    assert not f.slipped and f.badcookie
    over = 20 - len(f.full)
    assert len(f.full) <= RATE * (f.seconds + 0.5) and len(f.badcookie) in (
        over // 2,
        (over + 1) // 2,
    )
    fresh = [o for o in f.badcookie[-1].options if o.otype == dns.edns.OptionType.COOKIE]
    assert len(fresh) == 1 and isinstance(fresh[0], dns.edns.CookieOption)
    opt = fresh[0]
    head = opt.server[:8]
    assert opt.client == client
    assert (
        opt.server[8:]
        == siphash24(client + head + socket.inet_aton("127.9.13.1"), key=SECRET).digest()
    )
    again = make(QNAME, "A", edns=0, options=[opt]).to_wire()
    f = flood(server, "127.9.13", [again] * 20, sources=1)
    assert len(f.full) == 20


def test_log_only_answers_everything_and_counts(tmp_path: Path) -> None:
    srv = launch(
        tmp_path, {"responses_per_second": RATE, "window": f"{WINDOW:g}s", "log_only": True}
    )
    try:
        before = srv.limited()
        f = flood(srv, "127.9.14", [make(QNAME, "A", edns=0).to_wire()] * 200)
        assert len(f.full) == 200 and all(full_answer(m) for m in f.full)
        counted = srv.limited()["log_only"] - before["log_only"]
        assert 200 - BURST - RATE * (f.seconds + 1.0) <= counted <= 200 - BURST
        deadline = time.monotonic() + 5  # logged once a second
        while "rrl_would_limit" not in srv.sp.output():
            assert time.monotonic() < deadline, srv.sp.output()
            time.sleep(0.1)
        assert "127.9.14.0/24" in srv.sp.output()
    finally:
        srv.sp.stop()
