"""Input limits: what a careless operator or an attacker may put in a config or zone file.

Each case runs the real ``fedns check`` or ``fedns serve`` and reads what an
operator would see: an error naming the file and line (or byte offset) and
what to change, never a traceback, in bounded time and memory.

- YAML aliases are bounded: a "billion laughs" config is refused at once, in
  little memory, naming the alias and line, without printing what it expands to.
- Config and zone files that are not UTF-8 are refused naming the byte and its
  offset; bytes inside TXT data are data (RFC 1035 <character-string>s), kept
  as bytes as NSD keeps them, and served as such (dnspython reads them back,
  NSD serves the same).
- A second SOA record, a $GENERATE past its cap, a zone past
  ``limits.max_records``: refused, naming the line (and NSD refuses the same
  zone where it has an opinion).
- A reload that would break a limit keeps serving what was loaded; a reload of
  a big zone loads in a thread, so UDP and TCP keep answering meanwhile.
- The fast path for plain lines reads every zone as dnspython's reader does
  (property test), and a big zone's compact names answer as compiled ones.
"""

from __future__ import annotations

import gzip
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.zone
import pytest
import yaml
from dnslib import DNSBuffer
from hypothesis import given, settings
from hypothesis import strategies as st
from servers import (
    RICH_ORIGIN,
    RICH_ZONE,
    ServerProcess,
    fedns_argv,
    fedns_env,
    free_port,
    start_fedns,
    start_nsd,
    wait_sockets,
)

from resolver.config import ALIAS_BUDGET
from resolver.dns.answers import Table
from resolver.dns.zone import MAX_GENERATE, ZoneError, load_zone_file

ORIGIN = "limits.example.test."
HEAD = f"""$ORIGIN {ORIGIN}
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 86400 60
        IN NS  ns1
ns1     IN A   192.0.2.1
"""  # three records on five lines
HEAD_RECORDS = 3

needs_nsd = pytest.mark.skipif(shutil.which("nsd") is None, reason="NSD is not installed (apt nsd)")


# -- helpers ------------------------------------------------------------------------


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fedns_argv(*args), capture_output=True, text=True, timeout=timeout, env=fedns_env(),
        check=False,
    )


def check_measured(cfg: Path, timeout: float = 60) -> tuple[int, str, float]:
    """``fedns check -c CFG``: (exit code, stderr, the child's peak RSS in MB, from the
    rusage ``wait4`` gives for exactly that child)."""
    proc = subprocess.Popen(
        fedns_argv("check", "-c", str(cfg)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env=fedns_env(),
    )
    assert proc.stderr is not None
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
        proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err, usage.ru_maxrss / 1024


def write_cfg(tmp_path: Path, zone: Path, extra: dict[str, object] | None = None) -> Path:
    cfg = tmp_path / "fedns.yaml"
    doc: dict[str, object] = {"zones": [{"origin": ORIGIN, "file": zone.name}], **(extra or {})}
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cfg


def write_zone(tmp_path: Path, body: bytes | str, name: str = "limits.zone") -> Path:
    zone = tmp_path / name
    data = body.encode() if isinstance(body, str) else body
    zone.write_bytes(HEAD.encode() + data)
    return zone


def line_of(data: bytes, needle: bytes, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` occurrence of ``needle`` in ``data``."""
    pos = -1
    for _ in range(nth):
        pos = data.index(needle, pos + 1)
    return data.count(b"\n", 0, pos) + 1


def refused(result: subprocess.CompletedProcess[str] | tuple[int, str], *needles: str) -> str:
    code, err = (result.returncode, result.stderr) if not isinstance(result, tuple) else result
    assert code != 0, "refused"
    assert "Traceback" not in err, f"an error message, not a crash:\n{err}"
    for n in needles:
        assert n in err, f"{n!r} not in: {err}"
    return err


def ask(server: ServerProcess, name: str, rdtype: str, tcp: bool = False) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(q, server.host, port=server.port, timeout=5)
    return dns.query.udp(q, server.host, port=server.port, timeout=5)


def wait_log(server: ServerProcess, needle: str, after: int, deadline_s: float = 60) -> str:
    """The server's log from offset ``after`` once ``needle`` is in it."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        tail = server.output()[after:]
        if needle in tail:
            return tail
        assert server.alive(), server.output()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} not logged within {deadline_s} s:\n{server.output()[-3000:]}")


def start(cfg: Path, workdir: Path, workers: int = 1) -> ServerProcess:
    """``fedns serve``, answering DNS and handling SIGHUP (which it does once its admin
    API answers: the handlers go in right after the API starts, before the loop runs on)."""
    admin = free_port()
    sp = start_fedns(
        cfg, workdir, workers, extra_args=("--admin", f"127.0.0.1:{admin}"), ready=False
    )
    sp.wait_ready(90)  # a big zone loads first
    wait_sockets(sp.port, workers)
    end = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=2) as r:
                if r.status == 200:
                    return sp
        except OSError:
            if time.monotonic() > end:
                raise
        time.sleep(0.05)


# -- YAML aliases ---------------------------------------------------------------------

LAUGH = "lolololol"


def laughs(merge: bool) -> str:
    """Nine levels of nine aliases of the level before: 9**9 copies of LAUGH once expanded
    (with ``merge``, mappings merged nine times over by ``<<``, which copies their keys)."""
    if merge:
        first = "{" + ", ".join(f"k{j}: {LAUGH}" for j in range(9)) + "}"
        levels = [f"&l0 {first}"]
        levels += [f"&l{i} {{<<: [{', '.join([f'*l{i - 1}'] * 9)}]}}" for i in range(1, 9)]
    else:
        levels = [f"&l0 [{', '.join([LAUGH] * 9)}]"]
        levels += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "[" + ", ".join(levels) + "]"


@pytest.mark.parametrize("merge", [False, True], ids=["sequences", "merge-keys"])
def test_billion_laughs_config_is_refused_at_once(tmp_path: Path, merge: bool) -> None:
    zone = write_zone(tmp_path, "")
    cfg = write_cfg(tmp_path, zone)
    # Under a key whose error message would print the value: before, fedns built it
    # and printed it (40 s and 3.3 GB, then a MemoryError).
    cfg.write_text(cfg.read_text() + f"dns:\n  udp: {laughs(merge)}\n")
    line = line_of(cfg.read_bytes(), b"udp:")
    code, err, rss = check_measured(cfg)
    refused((code, err), f"{cfg}:{line}:", "alias", f"{ALIAS_BUDGET:,}")
    assert LAUGH not in err, "the message does not print the expanded value"
    assert len(err) < 600, err
    # Refused while composing the node graph: what Python and fedns's modules need
    # (about 40 MB here), nothing of the expansion.
    assert rss < 250, f"peak RSS {rss:.0f} MB"
    # serve reads the config the same way, before it binds anything
    result = run("serve", "-c", str(cfg), "--dns", "127.0.0.1:0")
    refused(result, f"{cfg}:{line}:", "alias")
    assert LAUGH not in result.stderr


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    zone = write_zone(tmp_path, "")
    cfg = tmp_path / "fedns.yaml"
    cfg.write_text(f"zones:\n  - &z {{origin: {ORIGIN}, file: {zone.name}, more: [*z]}}\n")
    line = line_of(cfg.read_bytes(), b"*z")
    refused(run("check", "-c", str(cfg)), f"{cfg}:{line}:", "recursive alias")


def test_a_few_aliases_are_fine(tmp_path: Path) -> None:
    zone = write_zone(tmp_path, "")
    cfg = tmp_path / "fedns.yaml"
    cfg.write_text(
        f"zones:\n  - &zone {{origin: {ORIGIN}, file: {zone.name}}}\n"
        "tcp: &tcp {idle_timeout: 5}\n"
    )
    result = run("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr


# -- bytes that are not UTF-8 ----------------------------------------------------------


def test_config_with_garbage_bytes_names_file_and_offset(tmp_path: Path) -> None:
    zone = write_zone(tmp_path, "")
    cfg = write_cfg(tmp_path, zone)
    data = cfg.read_bytes() + b"server: {version: \"fedns \xff\xfe\"}\n"
    cfg.write_bytes(data)
    bad = b"\xff"
    offset, line = data.index(bad), line_of(data, bad)
    err = refused(run("check", "-c", str(cfg)), f"{cfg}:{line}:")
    assert f"offset {offset}" in err and "0xFF" in err and "UTF-8" in err


def test_zone_with_garbage_bytes_names_file_line_and_offset(tmp_path: Path) -> None:
    body = b"ok      IN A   192.0.2.2\nh\xe9llo   IN A   192.0.2.3\n"
    zone = write_zone(tmp_path, body)
    data, bad = zone.read_bytes(), b"\xe9"
    err = refused(
        run("check", "-c", str(write_cfg(tmp_path, zone))),
        f"{zone}:{line_of(data, bad)}:",
        f"offset {data.index(bad)}",
        "0xE9",
    )
    assert "\\233" in err, "says how to write the byte if it is meant"


def test_zone_file_that_is_binary_is_refused(tmp_path: Path) -> None:
    """The operator pointed at the compressed file."""
    data = gzip.compress(HEAD.encode() * 50)
    zone = tmp_path / "limits.zone"
    zone.write_bytes(data)
    with pytest.raises(UnicodeDecodeError) as bad:
        data.decode()
    first = bad.value.start
    line = data.count(b"\n", 0, first) + 1
    refused(
        run("check", "-c", str(write_cfg(tmp_path, zone))),
        f"{zone}:{line}:",
        f"offset {first}",
        f"0x{data[first]:02X}",
    )


LATIN1_TXT = b'quoted  IN TXT  "caf\xe9 cr\xe8me"\nbare    IN TXT  na\xefve "and more"\n'


def _txt_strings(reply: dns.message.Message) -> list[bytes]:
    (rrset,) = reply.answer
    return [s for rd in rrset for s in rd.strings]


@needs_nsd
def test_latin1_txt_loads_and_is_served_as_bytes_like_nsd(tmp_path: Path) -> None:
    zone = write_zone(tmp_path, LATIN1_TXT)
    cfg = write_cfg(tmp_path, zone)
    check = run("check", "-c", str(cfg))
    assert check.returncode == 0, check.stderr
    fedns = start(cfg, tmp_path / "fedns")
    nsd = start_nsd(tmp_path / "nsd", {ORIGIN: zone})
    try:
        for owner, line in zip(("quoted", "bare"), LATIN1_TXT.splitlines(), strict=True):
            want = [w.strip(b'"') for w in re.findall(rb'"[^"]*"|\S+', line.split(b"TXT", 1)[1])]
            for tcp in (False, True):
                got = _txt_strings(ask(fedns, f"{owner}.{ORIGIN}", "TXT", tcp))
                assert got == want, (owner, tcp)
                assert got == _txt_strings(ask(nsd, f"{owner}.{ORIGIN}", "TXT", tcp))
    finally:
        fedns.stop()
        nsd.stop()


# -- duplicate SOA, $GENERATE, max_records ---------------------------------------------


@pytest.mark.parametrize("serial", ["2", "1"], ids=["another-soa", "the-same-soa-twice"])
def test_second_soa_is_refused_naming_its_line(tmp_path: Path, serial: str) -> None:
    body = f"www     IN A   192.0.2.2\n@       IN SOA ns1 hostmaster {serial} 3600 600 86400 60\n"
    zone = write_zone(tmp_path, body)
    data = zone.read_bytes()
    refused(
        run("check", "-c", str(write_cfg(tmp_path, zone))),
        f"{zone}:{line_of(data, b'IN SOA', 2)}:",
        f"line {line_of(data, b'IN SOA', 1)}",
        "SOA",
    )
    if shutil.which("nsd-checkzone"):  # the reference refuses it too
        nsd = subprocess.run(
            ["nsd-checkzone", ORIGIN.rstrip("."), str(zone)], capture_output=True, check=False
        )
        assert nsd.returncode != 0


def test_generate_past_the_cap_is_refused(tmp_path: Path) -> None:
    zone = write_zone(tmp_path, f"$GENERATE 0-{MAX_GENERATE} host$ IN A 10.0.0.1\n")
    err = refused(
        run("check", "-c", str(write_cfg(tmp_path, zone))),
        f"{zone}:{line_of(zone.read_bytes(), b'$GENERATE')}:",
        f"{MAX_GENERATE + 1:,} records",
        f"{MAX_GENERATE:,} per $GENERATE",
    )
    assert "split" in err


def test_generate_up_to_the_cap_loads(tmp_path: Path) -> None:
    zone = write_zone(tmp_path, f"$GENERATE 1-{MAX_GENERATE} host$ IN A 10.9.0.1\n")
    check = run("check", "-c", str(write_cfg(tmp_path, zone)))
    assert check.returncode == 0, check.stderr
    assert f"{MAX_GENERATE + 2} names" in check.stdout  # and the apex and ns1


def test_generate_counts_toward_max_records(tmp_path: Path) -> None:
    limit = 50
    zone = write_zone(tmp_path, "$GENERATE 1-100 host$ IN A 10.0.0.1\n")
    refused(
        run("check", "-c", str(write_cfg(tmp_path, zone, {"limits": {"max_records": limit}}))),
        f"{zone}:{line_of(zone.read_bytes(), b'$GENERATE')}:",
        "limits.max_records",
        f"{limit:,} records",
    )


def _records(n: int, prefix: str = "r") -> str:
    return "".join(f"{prefix}{i}    IN A   10.1.{i // 256}.{i % 256}\n" for i in range(n))


def test_max_records_is_the_most_a_zone_may_hold(tmp_path: Path) -> None:
    limit = 40
    at = write_zone(tmp_path, _records(limit - HEAD_RECORDS), "at.zone")
    result = run("check", "-c", str(write_cfg(tmp_path, at, {"limits": {"max_records": limit}})))
    assert result.returncode == 0, result.stderr

    past = write_zone(tmp_path, _records(limit - HEAD_RECORDS + 1), "past.zone")
    cfg = write_cfg(tmp_path, past, {"limits": {"max_records": limit}})
    data = past.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[1]
    for result in (run("check", "-c", str(cfg)), run("serve", "-c", str(cfg), "--dns", "127.0.0.1:0")):
        err = refused(result, f"{past}:{line_of(data, last)}:", "limits.max_records", f"{limit:,}")
        assert "raise" in err, "says what to change"


def test_max_records_must_be_a_count(tmp_path: Path) -> None:
    zone = write_zone(tmp_path, "")
    refused(
        run("check", "-c", str(write_cfg(tmp_path, zone, {"limits": {"max_records": "lots"}}))),
        "limits.max_records",
    )


# -- reloads ----------------------------------------------------------------------------


def test_reload_past_a_limit_keeps_serving_the_old_zone(tmp_path: Path) -> None:
    limit = 30
    zone = write_zone(tmp_path, _records(10, "old"))
    cfg = write_cfg(tmp_path, zone, {"limits": {"max_records": limit}})
    server = start(cfg, tmp_path / "fedns")
    try:
        assert ask(server, f"old1.{ORIGIN}", "A").rcode() == dns.rcode.NOERROR
        zone.write_bytes(HEAD.encode() + _records(limit, "new").encode())  # 3 + 30 > 30
        mark = len(server.output())
        server.signal(signal.SIGHUP)
        log = wait_log(server, "reload_failed", mark)
        assert "limits.max_records" in log and str(zone) in log
        for tcp in (False, True):
            assert ask(server, f"old1.{ORIGIN}", "A", tcp).answer, "the old zone still serves"
            assert ask(server, f"new1.{ORIGIN}", "A", tcp).rcode() == dns.rcode.NXDOMAIN
        # Fixed, the next reload takes it.
        zone.write_bytes(HEAD.encode() + _records(limit - HEAD_RECORDS, "new").encode())
        mark = len(server.output())
        server.signal(signal.SIGHUP)
        wait_log(server, "reloaded", mark)
        assert ask(server, f"new1.{ORIGIN}", "A").answer
        assert ask(server, f"old1.{ORIGIN}", "A").rcode() == dns.rcode.NXDOMAIN
    finally:
        server.stop()


BIG = 400_000  # records: loading them takes a second or more here
# A reply later than this after its query does not count: a resolver would have given
# up on it or asked again (and a socket buffer would hide a stalled server otherwise).
LATE_S = 0.5


def _big_zone(tmp_path: Path) -> Path:
    lines = [f"h{i} IN A 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}\n" for i in range(BIG)]
    return write_zone(tmp_path, "".join(lines))


class _UdpLoad:
    """Queries at a steady rate from one socket; a query counts as answered when its
    reply comes within ``LATE_S``."""

    def __init__(self, server: ServerProcess, qname: str, rate: int) -> None:
        self.wire = dns.message.make_query(qname, "A").to_wire()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.connect(server.addr)
        self.rate = rate
        self.sent: dict[int, float] = {}  # query ID -> when sent
        self.answered = 0

    def run(self, until: threading.Event, max_s: float) -> None:
        t0 = time.monotonic()
        qid = 0
        while not until.is_set() and time.monotonic() - t0 < max_s and qid < 65535:
            while qid < (time.monotonic() - t0) * self.rate and qid < 65535:
                qid += 1
                try:
                    self.sock.send(qid.to_bytes(2, "big") + self.wire[2:])
                    self.sent[qid] = time.monotonic()
                except BlockingIOError:
                    pass  # not sent, so not counted
            self._receive(0.002)
        end = time.monotonic() + LATE_S
        while time.monotonic() < end:
            self._receive(0.05)
        self.sock.close()

    def _receive(self, wait: float) -> None:
        ready, _, _ = select.select([self.sock], [], [], wait)
        while ready:
            try:
                data = self.sock.recv(4096)
            except (BlockingIOError, ConnectionRefusedError):
                return
            sent = self.sent.pop(int.from_bytes(data[:2], "big"), None)
            if sent is not None and time.monotonic() - sent <= LATE_S:
                self.answered += 1
            elif sent is not None:
                self.sent[int.from_bytes(data[:2], "big")] = -1.0  # late: asked, not answered

    @property
    def asked(self) -> int:
        return self.answered + len(self.sent)


def _tcp_probes(server: ServerProcess, qname: str, until: threading.Event, out: list[bool]) -> None:
    q = dns.message.make_query(qname, "A")
    while not until.is_set():
        t = time.monotonic()
        try:
            out.append(bool(dns.query.tcp(q, server.host, port=server.port, timeout=LATE_S).answer))
        except (dns.exception.Timeout, OSError, EOFError):
            out.append(False)
        time.sleep(max(0.0, 0.05 - (time.monotonic() - t)))


def _reloaded_everywhere(server: ServerProcess, qname: str, times: int = 20) -> None:
    """Until ``times`` questions in a row find ``qname`` (with workers, each question
    goes to one of them: all have loaded the new zone then)."""
    end, row = time.monotonic() + 120, 0
    while row < times:
        assert time.monotonic() < end, server.output()[-3000:]
        try:
            row = row + 1 if ask(server, qname, "TXT").answer else 0
        except dns.exception.Timeout:
            row = 0


@pytest.mark.parametrize(
    ("udp", "workers"), [("auto", 1), ("uvloop", 1), ("auto", 2)], ids=["mmsg", "uvloop", "2-workers"]
)
def test_reload_of_a_big_zone_keeps_answering(tmp_path: Path, udp: str, workers: int) -> None:
    """A reload loads in a thread, the interpreter handed over every 0.2 ms meanwhile
    (``app.reload_aside``). Loaded on the loop, TCP and uvloop UDP stopped for the
    whole load and mmsg UDP lost a fifth of the queries; with workers, each worker
    loads in a thread too. Counted from SIGHUP until every worker serves the new zone."""
    zone = _big_zone(tmp_path)
    cfg = write_cfg(tmp_path, zone, {"dns": {"udp": udp}})
    server = start(cfg, tmp_path / "fedns", workers)
    try:
        with zone.open("a") as f:
            f.write('marker IN TXT "reloaded"\n')
        load = _UdpLoad(server, f"h1.{ORIGIN}", rate=2000)
        done = threading.Event()
        probes: list[bool] = []
        mark = len(server.output())
        server.signal(signal.SIGHUP)
        tcp = threading.Thread(target=_tcp_probes, args=(server, f"h2.{ORIGIN}", done, probes))
        tcp.start()
        udp_thread = threading.Thread(target=load.run, args=(done, 120.0))
        udp_thread.start()
        t0 = time.monotonic()
        try:
            wait_log(server, "reloaded", mark, deadline_s=120)
            _reloaded_everywhere(server, f"marker.{ORIGIN}")
        finally:
            window = time.monotonic() - t0
            done.set()
            udp_thread.join()
            tcp.join()
        sent, answered = load.asked, load.answered
        assert sent >= 1000, f"only {sent} queries in {window:.1f} s: the reload was too quick to tell"
        assert answered >= 0.9 * sent, f"UDP: {answered} of {sent} answered during the reload"
        assert len(probes) >= 5 and sum(probes) >= 0.8 * len(probes), (
            f"TCP: {sum(probes)} of {len(probes)} answered within {LATE_S} s during the reload"
        )
    finally:
        server.stop()


# -- the loader itself --------------------------------------------------------------------


class _Uncompressed(DNSBuffer):
    def encode_name(self, name: object) -> None:
        self.encode_name_nocompress(name)


# owner key -> type -> (TTL, rdata in wire form, in order)
Records = dict[bytes, dict[int, tuple[int, list[bytes]]]]


def _as_loaded(path: Path, origin: str, compact_above: int | None) -> Records:
    zone = load_zone_file(path, origin, compact_above=compact_above)
    out: Records = {}
    for key in zone.data:
        for rtype, rrset in (zone.records(key) or {}).items():
            wires = []
            for rd in rrset.rdatas:
                buf = _Uncompressed()
                rd.pack(buf)
                wires.append(bytes(buf.data))
            out.setdefault(key, {})[rtype] = (rrset.ttl, wires)
    return out


def _as_dnspython_reads(text: str, origin: str) -> Records:
    """Every owner's RRsets as dnspython's own reader makes them (RRSIGs in one set)."""
    dz = dns.zone.from_text(text, origin, relativize=False, check_origin=False)
    out: Records = {}
    for name, node in dz.nodes.items():
        key = name.canonicalize().to_wire()
        assert key is not None
        for rds in node.rdatasets:
            rtype = int(rds.rdtype)
            ttl, wires = out.setdefault(key, {}).get(rtype, (rds.ttl, []))
            more = [w for w in (rd.to_wire() for rd in rds) if w is not None]
            out[key][rtype] = (min(ttl, rds.ttl), [*wires, *more])
    return out


_OWNERS = ["a", "B", "a.b", "x.limits.example.test.", "@", "*.w", "_s._tcp", " ", "\t"]
_RDATA = {
    "A": ["192.0.2.1", "10.0.0.1", "0.0.0.0", "01.2.3.4", "1.2.3"],
    "AAAA": ["::1", "fd00::1", "2001:DB8::A", "::ffff:1.2.3.4", "1::2::3"],
    "TXT": ['x', '"a b"', 'one two', '"" x', '"semi;colon"', 'a"b"', '"q" ; c', '"es\\"cape"',
            '( "multi"\n "line" )', '"\\200"'],
    "MX": ["10 mx", "0 .", "65535 MX.LIMITS.EXAMPLE.TEST.", "5 @", "70000 mx"],
    "NS": ["ns1", "ns.Other.test."],
    "CNAME": ["a", "target.limits.example.test.", "Z.elsewhere."],
    "PTR": ["a", "p.limits.example.test."],
    "SRV": ["0 0 0 .", "1 2 3 tgt", "10 20 5060 sip.LIMITS.EXAMPLE.TEST."],
    "CAA": ['0 issue "ca.example"'],
}  # fmt: skip
_DIRECTIVES = ["$TTL 99", f"$ORIGIN sub.{ORIGIN}", f"$ORIGIN {ORIGIN.upper()}", ""]


@st.composite
def _zone_lines(draw: st.DrawFn) -> list[str]:
    """Records as people write them: owner or none, TTL and class in either order or
    left out, any letter case, comments, good and bad data, now and then a directive."""
    lines = []
    for _ in range(draw(st.integers(1, 10))):
        rtype = draw(st.sampled_from(sorted(_RDATA)))
        owner = draw(st.sampled_from(_OWNERS))
        ttl = draw(st.sampled_from(["", "0", "60", "3600", "1h"]))
        cls = draw(st.sampled_from(["", "IN", "in"]))
        head = [x for x in ((ttl, cls) if draw(st.booleans()) else (cls, ttl)) if x]
        sep = draw(st.sampled_from([" ", "\t", "  "]))
        words = [*head, rtype.lower() if draw(st.booleans()) else rtype]
        line = (owner + sep if owner.strip() else owner) + sep.join(words)
        line += sep + draw(st.sampled_from(_RDATA[rtype]))
        lines.append(line + (" ; comment" if draw(st.booleans()) else ""))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(_DIRECTIVES)))
    return lines


@settings(max_examples=150, deadline=None)
@given(_zone_lines())
def test_plain_lines_are_read_as_dnspython_reads_them(lines: list[str]) -> None:
    """The fast path for plain lines and dnspython for the rest give what dnspython's own
    reader gives, record for record (owner, type, TTL, rdata bytes in order); where
    dnspython refuses a zone, so does fedns (which also refuses what dnspython drops or
    keeps one of: an owner outside the zone, a second CNAME)."""
    text = HEAD + "\n".join(lines) + "\n"
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "z.zone"  # per example: pytest's tmp_path is per test
        path.write_text(text)
        try:
            want = _as_dnspython_reads(text, ORIGIN)
        except (dns.exception.DNSException, ValueError):
            with pytest.raises(ZoneError):
                _as_loaded(path, ORIGIN, None)
            return
        try:
            got = _as_loaded(path, ORIGIN, None)
        except ZoneError as e:
            assert "outside the zone" in str(e) or "more than one CNAME" in str(e), e
            return
        assert got == want
        assert _as_loaded(path, ORIGIN, 0) == want, "compact names hold the same records"


def test_compact_names_answer_as_compiled_ones() -> None:
    """A zone with more than ``COMPACT_ABOVE`` names keeps its plain names packed and
    compiles them when asked for. Here the rich zone (every rule the NSD differential
    test checks) is loaded both ways and every name and type, and names below them,
    gets the same reply bytes from both tables, over UDP and TCP, with and without EDNS."""
    compact = Table([load_zone_file(RICH_ZONE, RICH_ORIGIN, compact_above=0)])
    compact.publish({}, {})
    eager = Table([load_zone_file(RICH_ZONE, RICH_ORIGIN)])
    zone = next(iter(compact.zones.values()))
    assert zone.lazy, "names kept compact"
    owners = [dns.name.from_wire(k, 0)[0].to_text() for k in zone.names]
    names = [*owners, *(f"nx.{o}" for o in owners), *(f"a.b.{o}" for o in owners)]
    types = ["A", "AAAA", "MX", "TXT", "SRV", "NS", "SOA", "CAA", "PTR", "ANY", "CNAME", "DS", "TYPE65280"]
    compared = 0
    for name in names:
        for t in types:
            for edns in (-1, 0):
                q = dns.message.make_query(name, t, use_edns=edns)
                q.id = 4242
                wire = q.to_wire()
                for tcp in (False, True):
                    assert compact.respond(wire, tcp) == eager.respond(wire, tcp), (name, t, edns, tcp)
                    compared += 1
    assert compared > 1000
