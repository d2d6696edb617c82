"""DNS cookies (RFC 7873) with interoperable server cookies (RFC 9018), from the outside.

fedns serves ``tests/data/rich.example.test.zone`` with ``cookies:`` set; the
client is dnspython (and ``dig``/``kdig`` where installed). The server
cookie is checked by this file's own RFC 9018 code (``siphash24``), never by
fedns's: version 1, three zero bytes, a 32-bit timestamp, and SipHash-2-4 of
client cookie | version | reserved | timestamp | client address, keyed by the
16-byte secret of the secret file.

Which server cookies fedns took as valid is read from ``/metrics``
(``fedns_cookie_queries_total{cookie=...}``) and from what comes back: a
valid cookie younger than half an hour is echoed as it came, any other gets
a fresh one (RFC 9018 4.3; RFC 7873 5.2.3-5.2.4: an invalid one is treated
as a client cookie alone, and answered normally: fedns does not require
cookies, so BADCOOKIE comes only from the rate limiter, see test_rrl.py).
Knot DNS (``apt knot``), another RFC 9018 implementation, shares the secret
to show the cookies are interoperable.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import pytest
from dnsclient import make, tcp, udp, udp_raw
from prometheus_client.parser import text_string_to_metric_families
from servers import RICH_ORIGIN, RICH_ZONE, ServerProcess, free_port, start_fedns, write_config
from siphash24 import siphash24

QNAME = f"www.{RICH_ORIGIN}"
CLIENT = bytes.fromhex("0102030405060708")
CURRENT = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
PREVIOUS = bytes.fromhex("b0b1b2b3b4b5b6b7b8b9babbbcbdbebf")
LOOPBACK = socket.inet_aton("127.0.0.1")  # the address the hash covers: ours, as fedns sees it


def server_cookie(secret: bytes, ts: int, client: bytes = CLIENT, ip: bytes = LOOPBACK) -> bytes:
    """RFC 9018 4.2."""
    head = b"\x01\x00\x00\x00" + struct.pack(">I", ts & 0xFFFFFFFF)
    return head + siphash24(client + head + ip, key=secret).digest()


def made_by(cookie: bytes, secret: bytes, client: bytes = CLIENT) -> bool:
    """Whether ``cookie`` is an RFC 9018 server cookie made with ``secret`` for us."""
    ts = struct.unpack(">I", cookie[4:8])[0]
    return len(cookie) == 16 and cookie == server_cookie(secret, ts, client)


def stamp(cookie: bytes) -> int:
    return struct.unpack(">I", cookie[4:8])[0]


def ask(srv: ServerProcess, option: dns.edns.Option | None) -> dns.message.Message:
    q = make(QNAME, "A", edns=0, options=[option] if option is not None else [])
    return udp(srv.addr, q)


def cookie_of(r: dns.message.Message) -> dns.edns.CookieOption:
    opts = [o for o in r.options if o.otype == dns.edns.OptionType.COOKIE]
    assert len(opts) == 1, f"no single COOKIE option in the reply: {r.options}"
    opt = opts[0]
    assert isinstance(opt, dns.edns.CookieOption)
    return opt


def counters(admin: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name == "fedns_cookie_queries":
            for s in fam.samples:
                out[s.labels["cookie"]] = s.value
    return out


def secret_file(path: Path, *secrets: bytes, age: float = 0.0) -> Path:
    path.write_text("".join(s.hex() + "\n" for s in secrets))
    t = time.time() - age
    os.utime(path, (t, t))
    return path


def launch(workdir: Path, cookies: dict[str, object]) -> tuple[ServerProcess, int]:
    """A fedns with ``cookies:``, and its admin port for ``/metrics``."""
    admin = free_port()
    config = write_config(
        workdir,
        {RICH_ORIGIN: Path(RICH_ZONE)},
        {"cookies": cookies, "admin": {"listen": f"127.0.0.1:{admin}"}},
    )
    sp = start_fedns(config, workdir)
    deadline = time.monotonic() + 15
    while True:  # the admin API comes up just after DNS
        try:
            counters(admin)
            return sp, admin
        except OSError:
            if time.monotonic() > deadline:
                sp.stop()
                raise
            time.sleep(0.05)


Start = Callable[[dict[str, object]], tuple[ServerProcess, int]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    """Start fedns instances of this test's own; all stopped at its end."""
    started: list[ServerProcess] = []

    def run(cookies: dict[str, object]) -> tuple[ServerProcess, int]:
        sp, admin = launch(tmp_path / f"fedns{len(started)}", cookies)
        started.append(sp)
        return sp, admin

    yield run
    for sp in started:
        sp.stop()


@dataclass
class Shared:
    """The module's fedns (secret file: CURRENT, then PREVIOUS), and its counters
    as they were when the test began."""

    srv: ServerProcess
    admin: int
    base: dict[str, float]

    def counted(self) -> dict[str, float]:
        """What ``fedns_cookie_queries_total`` counted during this test, by kind."""
        now = counters(self.admin)
        return {k: v - self.base.get(k, 0) for k, v in now.items()}


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    d = tmp_path_factory.mktemp("cookies")
    path = secret_file(d / "cookie.secret", CURRENT, PREVIOUS)
    sp, admin = launch(d, {"secret_file": str(path), "grace": "1h"})
    yield sp, admin
    sp.stop()


@pytest.fixture
def shared(shared_server: tuple[ServerProcess, int]) -> Shared:
    srv, admin = shared_server
    return Shared(srv, admin, counters(admin))


# -- what a client gets ------------------------------------------------------------------


def test_client_cookie_alone_gets_a_server_cookie_per_rfc_9018(
    shared: Shared,
) -> None:
    srv = shared.srv
    before = time.time()
    r = ask(srv, dns.edns.CookieOption(CLIENT, b""))
    plain = ask(srv, None)
    c = cookie_of(r)
    assert c.client == CLIENT
    assert made_by(c.server, CURRENT)
    assert int(before) - 1 <= stamp(c.server) <= time.time() + 1
    # Answered as without the option: the same records.
    assert r.rcode() == dns.rcode.NOERROR and r.answer == plain.answer and r.answer
    assert shared.counted()["client_only"] == 1


def test_a_valid_server_cookie_is_accepted_and_echoed(
    shared: Shared,
) -> None:
    srv = shared.srv
    sent = server_cookie(CURRENT, int(time.time()) - 600)  # ten minutes old: still fresh
    r = ask(srv, dns.edns.CookieOption(CLIENT, sent))
    assert cookie_of(r).server == sent  # a fresh one would carry the time of now
    assert r.rcode() == dns.rcode.NOERROR and r.answer
    assert shared.counted()["valid"] == 1


def test_a_valid_cookie_older_than_half_an_hour_is_renewed(
    shared: Shared,
) -> None:
    srv = shared.srv
    sent = server_cookie(CURRENT, int(time.time()) - 2400)
    got = cookie_of(ask(srv, dns.edns.CookieOption(CLIENT, sent))).server
    assert got != sent and made_by(got, CURRENT) and abs(stamp(got) - time.time()) <= 2
    assert shared.counted()["valid"] == 1


@pytest.mark.parametrize(
    "make_bad",
    [
        lambda now: server_cookie(CURRENT, now)[:8] + bytes(8),  # the hash is wrong
        lambda now: server_cookie(CURRENT, now - 3700),  # older than an hour
        lambda now: server_cookie(CURRENT, now + 600),  # ten minutes ahead of us
        lambda now: server_cookie(bytes(16), now),  # another secret
        lambda now: b"\x02" + server_cookie(CURRENT, now)[1:],  # version 2
        lambda now: bytes(8),  # 8 bytes: not RFC 9018's format
        lambda now: bytes(32),  # 32 bytes: the longest a server cookie may be
    ],
    ids=["hash", "too-old", "future", "other-secret", "version", "short-format", "32-bytes"],
)
def test_an_invalid_server_cookie_gets_a_fresh_one_and_an_answer(
    shared: Shared, make_bad: Callable[[int], bytes]
) -> None:
    srv = shared.srv
    bad = make_bad(int(time.time()))
    r = ask(srv, dns.edns.CookieOption(CLIENT, bad))
    assert r.rcode() == dns.rcode.NOERROR and r.answer  # RFC 7873 5.2.3: as a client cookie alone
    got = cookie_of(r)
    assert got.client == CLIENT and got.server != bad and made_by(got.server, CURRENT)
    assert shared.counted()["invalid"] == 1


def test_a_timestamp_a_little_ahead_is_accepted(shared: Shared) -> None:
    """RFC 9018 4.3: up to five minutes ahead, for clocks in an anycast set that differ."""
    srv = shared.srv
    sent = server_cookie(CURRENT, int(time.time()) + 120)
    assert cookie_of(ask(srv, dns.edns.CookieOption(CLIENT, sent))).server == sent
    assert shared.counted()["valid"] == 1


@pytest.mark.parametrize("length", [0, 1, 7, 9, 15, 41])
def test_a_malformed_cookie_option_is_formerr(shared: Shared, length: int) -> None:
    """RFC 7873 5.2.2: a COOKIE option of 8 bytes, or 16 to 40, or FORMERR."""
    srv = shared.srv
    r = ask(srv, dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(range(length))))
    assert r.rcode() == dns.rcode.FORMERR and r.edns == 0
    assert shared.counted()["malformed"] == 1


def test_the_cookie_rides_on_any_reply(
    shared: Shared,
) -> None:
    """The cookie rides on whatever the reply is: NXDOMAIN, REFUSED, with ECS, over TCP."""
    srv = shared.srv
    opt = dns.edns.CookieOption(CLIENT, b"")
    for qname, options, rcode in (
        (f"nx.{RICH_ORIGIN}", [opt], dns.rcode.NXDOMAIN),
        ("example.org.", [opt], dns.rcode.REFUSED),
        (QNAME, [opt, dns.edns.ECSOption("198.51.100.0", 24)], dns.rcode.NOERROR),
    ):
        r = udp(srv.addr, make(qname, "A", edns=0, options=options))
        assert r.rcode() == rcode and made_by(cookie_of(r).server, CURRENT)
    r = tcp(srv.addr, make(QNAME, "A", edns=0, options=[opt]))
    assert made_by(cookie_of(r).server, CURRENT) and r.answer


def test_a_reply_with_the_cookie_stays_within_a_small_payload(
    shared: Shared,
) -> None:
    """The option adds 28 bytes: a reply that just fit 512 bytes comes truncated instead."""
    srv = shared.srv
    for qname, qtype in (
        (f"big.{RICH_ORIGIN}", "TXT"),
        (f"medium.{RICH_ORIGIN}", "TXT"),
        (QNAME, "A"),
    ):
        q = make(qname, qtype, edns=0, payload=512, options=[dns.edns.CookieOption(CLIENT, b"")])
        wire = udp_raw(srv.addr, q.to_wire())
        assert wire is not None and len(wire) <= 512
        assert made_by(cookie_of(dns.message.from_wire(wire)).server, CURRENT)


# -- rotation: the previous secret during the grace ----------------------------------------


def test_the_previous_secret_is_accepted_during_the_grace_only(
    tmp_path: Path, start: Start
) -> None:
    path = secret_file(tmp_path / "cookie.secret", CURRENT, PREVIOUS)  # rotated just now
    srv, admin = start({"secret_file": str(path), "grace": "1h"})
    old = server_cookie(PREVIOUS, int(time.time()) - 60)
    got = cookie_of(ask(srv, dns.edns.CookieOption(CLIENT, old))).server
    assert counters(admin) == {"client_only": 0, "valid": 1, "invalid": 0, "malformed": 0}
    assert made_by(got, CURRENT)  # accepted, and replaced by one of the current secret

    # The same file, rotated two hours ago: the grace is over. Reloaded (SIGHUP).
    secret_file(path, CURRENT, PREVIOUS, age=7200)
    srv.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while True:
        got = cookie_of(ask(srv, dns.edns.CookieOption(CLIENT, old))).server
        if counters(admin)["invalid"] >= 1:
            break
        assert time.monotonic() < deadline, "the reload never made the previous secret invalid"
        time.sleep(0.2)
    assert made_by(got, CURRENT)
    # The current secret's cookies are unaffected by the end of the grace.
    fresh = server_cookie(CURRENT, int(time.time()) - 60)
    assert cookie_of(ask(srv, dns.edns.CookieOption(CLIENT, fresh))).server == fresh


# -- anycast: replicas sharing the secret ---------------------------------------------------


def test_instances_sharing_a_secret_file_accept_each_others_cookies(
    tmp_path: Path, start: Start
) -> None:
    path = secret_file(tmp_path / "cookie.secret", CURRENT)
    a, _ = start({"secret_file": str(path)})
    b, b_admin = start({"secret_file": str(path)})
    other = secret_file(tmp_path / "other.secret", PREVIOUS)
    c, _ = start({"secret_file": str(other)})
    from_a = cookie_of(ask(a, dns.edns.CookieOption(CLIENT, b""))).server
    time.sleep(1.1)  # a cookie made now would carry a later timestamp than A's
    assert cookie_of(ask(b, dns.edns.CookieOption(CLIENT, from_a))).server == from_a
    assert counters(b_admin)["valid"] == 1
    from_c = cookie_of(ask(c, dns.edns.CookieOption(CLIENT, from_a))).server
    assert from_c != from_a and stamp(from_c) > stamp(from_a) and made_by(from_c, PREVIOUS)


def test_without_a_secret_file_one_instance_accepts_its_own(start: Start) -> None:
    srv, admin = start({})
    first = cookie_of(ask(srv, dns.edns.CookieOption(CLIENT, b""))).server
    time.sleep(1.1)
    assert cookie_of(ask(srv, dns.edns.CookieOption(CLIENT, first))).server == first
    assert counters(admin)["valid"] == 1
    assert "cookie_secret_per_instance" in srv.output()


# -- other implementations --------------------------------------------------------------------


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """Knot DNS with mod-cookies and fedns's secret, serving the same zone."""
    if shutil.which("knotd") is None:
        pytest.skip("knotd is not installed (apt knot)")
    d = tmp_path / "knot"
    d.mkdir()
    shutil.copy(RICH_ZONE, d / "rich.zone")
    port = free_port()
    conf = d / "knot.conf"
    conf.write_text(
        f"""server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
database:
    storage: "{d}"
log:
  - target: stderr
    any: warning
mod-cookies:
  - id: shared
    secret: 0x{CURRENT.hex()}
template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    journal-content: none
    global-module: mod-cookies/shared
zone:
  - domain: "{RICH_ORIGIN}"
    file: "rich.zone"
"""
    )
    log = (d / "knot.log").open("wb")
    proc = subprocess.Popen(["knotd", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                udp(("127.0.0.1", port), make(QNAME, "A"), timeout=0.3)
                break
            except (TimeoutError, OSError):
                assert proc.poll() is None and time.monotonic() < deadline, "knotd did not start"
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_knot_and_fedns_accept_each_others_cookies(shared: Shared, knot: tuple[str, int]) -> None:
    srv = shared.srv
    # Knot answers a client cookie alone with BADCOOKIE and a server cookie.
    r = udp(knot, make(QNAME, "A", edns=0, options=[dns.edns.CookieOption(CLIENT, b"")]))
    from_knot = cookie_of(r).server
    assert made_by(from_knot, CURRENT)  # Knot makes RFC 9018 cookies, as this file checks them
    time.sleep(1.1)
    assert cookie_of(ask(srv, dns.edns.CookieOption(CLIENT, from_knot))).server == from_knot
    assert shared.counted()["valid"] == 1
    from_fedns = cookie_of(ask(srv, dns.edns.CookieOption(CLIENT, b""))).server
    r = udp(knot, make(QNAME, "A", edns=0, options=[dns.edns.CookieOption(CLIENT, from_fedns)]))
    assert r.rcode() == dns.rcode.NOERROR and r.answer  # Knot took fedns's cookie
    bad = from_fedns[:8] + bytes(8)
    r = udp(knot, make(QNAME, "A", edns=0, options=[dns.edns.CookieOption(CLIENT, bad)]))
    assert r.rcode() == dns.rcode.BADCOOKIE  # and would have said so if it were not good


@pytest.mark.parametrize("tool", ["dig", "kdig"])
def test_dig_and_kdig_cookies(shared: Shared, tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(
            f"{tool} is not installed (apt {'bind9-dnsutils' if tool == 'dig' else 'knot-dnsutils'})"
        )
    srv = shared.srv
    host, port = srv.addr
    base = [tool, f"@{host}", "-p", str(port), QNAME, "A", "+norec"]
    out = subprocess.run(
        [*base, f"+cookie={CLIENT.hex()}"], capture_output=True, text=True, timeout=15
    ).stdout
    m = re.search(r"COOKIE: ([0-9A-Fa-f]+)", out)
    assert m is not None, out
    cookie = bytes.fromhex(m.group(1))
    assert cookie[:8] == CLIENT and made_by(cookie[8:], CURRENT), out
    assert "NOERROR" in out
    if tool == "dig":
        assert "(good)" in out  # dig's own check that its client cookie came back
    # Sent back with the server cookie, as the client would next time: echoed.
    out = subprocess.run(
        [*base, f"+cookie={cookie.hex()}"], capture_output=True, text=True, timeout=15
    ).stdout
    m = re.search(r"COOKIE: ([0-9A-Fa-f]+)", out)
    assert m is not None and bytes.fromhex(m.group(1)) == cookie, out
