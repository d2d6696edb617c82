"""The admin API under bad and unusual input, against a live fedns with ``--admin``.

- Any record type is a DNS type (RFC 3597): ``TYPE666``, ``TYPE1000``, ``TYPE65535``,
  a bare number, mnemonics dnslib lacks: explain answers them with what a DNS
  query of the same name and type gets from the same process (dnspython), and
  ``fedns explain --type TYPE1000`` prints it.
- Invalid names (over 255 octets, a label over 63, ``%00`` and other raw control
  bytes, empty labels), unknown types, bad subnets and sources: 400 with a
  message that says what is wrong.
- Over-long URLs and headers (aiohttp's 8,190-byte line limit) and non-HTTP
  bytes: a 4xx, and no traceback in the log.
- A handler that raises (a bug): a JSON 500, never a traceback page.
- ``--admin :PORT`` and ``admin.listen: ":PORT"`` bind loopback only.

After each server's run its log (stdout and stderr) must hold no "Traceback".
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import dns.flags
import dns.message
import dns.query
import dns.rdatatype
import pytest
import structlog.testing
from servers import (
    LOOPBACK,
    ServerProcess,
    fedns_argv,
    fedns_env,
    free_port,
    start_fedns,
    write_config,
)

ORIGIN = "admin.example.test."
ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@    IN SOA ns1 hostmaster 1 3600 600 86400 30
     IN NS  ns1
ns1  IN A   127.0.0.53
www  IN A   127.0.0.80
alias IN CNAME www
odd  IN TYPE1000 \\# 4 0a000001
"""

Record = tuple[str, int, str, str]


@dataclass
class Live:
    sp: ServerProcess
    admin: tuple[str, int]
    config: Path


def get(admin: tuple[str, int], target: str, timeout: float = 5.0,
        headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """GET ``target`` exactly as given (no re-encoding): status, content type, body."""
    conn = http.client.HTTPConnection(*admin, timeout=timeout)
    try:
        conn.putrequest("GET", target, skip_accept_encoding=True)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.getheader("Content-Type", ""), r.read().decode(errors="replace")
    finally:
        conn.close()


def start_with_admin(workdir: Path, admin_arg: str | None = None,
                     settings: dict[str, Any] | None = None) -> tuple[ServerProcess, tuple[str, int]]:
    """fedns with the admin API on a free loopback port (``admin_arg`` formats it)."""
    last = ""
    for attempt in range(3):  # another process may take the port before fedns binds it
        port = free_port()
        cfg = dict(settings or {})
        extra: tuple[str, ...] = ()
        if "admin" in cfg:
            cfg["admin"] = {"listen": cfg["admin"]["listen"].format(port=port)}
        else:
            extra = ("--admin", (admin_arg or "127.0.0.1:{port}").format(port=port))
        d = workdir / f"try{attempt}"
        config = write_config(d, {ORIGIN: ZONE}, cfg)
        sp = start_fedns(config, d, extra_args=extra)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                if get((LOOPBACK, port), "/healthz", 0.5)[0] == 200:
                    return sp, (LOOPBACK, port)
            except OSError:
                pass
            if not sp.alive():
                break
            time.sleep(0.05)
        last = sp.output()[-3000:]
        sp.stop()
    raise RuntimeError(f"fedns with the admin API did not come up:\n{last}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    workdir = tmp_path_factory.mktemp("admin-input")
    sp, admin = start_with_admin(workdir)
    try:
        yield Live(sp, admin, Path(str(sp.extra["config"])))
        assert "Traceback" not in sp.output(), sp.output()[-4000:]
    finally:
        sp.stop()


def explain(live: Live, **params: str) -> tuple[int, dict[str, Any]]:
    status, ctype, body = get(live.admin, "/v1/explain?" + urllib.parse.urlencode(params))
    assert ctype.startswith("application/json"), (status, ctype, body[:300])
    return status, json.loads(body)


def records_of(section: list[Any]) -> set[Record]:
    return {
        (rrset.name.to_text().lower(), rrset.ttl, dns.rdatatype.to_text(rrset.rdtype), rd.to_text().lower())
        for rrset in section
        for rd in rrset
    }


def records_from_text(lines: list[str]) -> set[Record]:
    out = set()
    for line in lines:
        name, ttl, _cls, rtype, rdata = line.split(None, 4)
        out.add((name.lower(), int(ttl), rtype, " ".join(rdata.split()).lower()))
    return out


# Unknown to dnslib or to everyone, as numbers, in any case: each a type DNS answers.
TYPES = ["TYPE666", "TYPE1000", "TYPE65535", "1000", "type1000", "ZONEMD", "WALLET", "TYPE0", "A", "TXT"]
NAMES = [ORIGIN, f"www.{ORIGIN}", f"alias.{ORIGIN}", f"odd.{ORIGIN}", f"nx.{ORIGIN}", "elsewhere.example."]


def _rdtype(text: str) -> int:
    return int(text) if text.isdigit() else int(dns.rdatatype.from_text(text))


@pytest.mark.parametrize("qtype", TYPES)
def test_any_type_is_answered_as_dns_answers_it(live: Live, qtype: str) -> None:
    for name in NAMES:
        status, data = explain(live, name=name, type=qtype)
        assert status == 200, (name, qtype, data)
        q = dns.message.make_query(name, _rdtype(qtype))
        q.flags &= ~dns.flags.RD
        r = dns.query.tcp(q, live.sp.host, port=live.sp.port, timeout=5)
        assert data["type"] == dns.rdatatype.to_text(_rdtype(qtype)), data
        assert data["rcode"] == r.rcode(), (name, qtype, data)
        assert data["aa"] == bool(r.flags & dns.flags.AA), (name, qtype, data)
        assert records_from_text(data["answer"]) == records_of(r.answer), (name, qtype, data)
        assert records_from_text(data["authority"]) == records_of(r.authority), (name, qtype, data)


def test_cli_explain_type1000(live: Live) -> None:
    """``fedns explain --type TYPE1000``, from a running server and from the config alone."""
    want = f"odd.{ORIGIN} 300"
    for where in (["--server", f"http://{live.admin[0]}:{live.admin[1]}"], ["-c", str(live.config)]):
        p = subprocess.run(
            fedns_argv("explain", f"odd.{ORIGIN}", "--type", "TYPE1000", *where),
            env=fedns_env(), capture_output=True, text=True, timeout=60,
        )
        assert p.returncode == 0, p.stderr
        assert "Traceback" not in p.stderr
        assert "rcode: 0" in p.stdout and want in p.stdout and "\\# 4 0A000001" in p.stdout, p.stdout


LONG = ".".join(["a" * 60] * 10)  # 610 characters: past 255 octets
BAD_INPUT = [
    ({"name": "a" * 599}, "label longer than 63"),
    ({"name": LONG}, "longer than 255"),
    ({"name": "a" * 64 + f".{ORIGIN}"}, "label longer than 63"),
    ({"name": f"www..{ORIGIN}"}, "empty label"),
    ({"name": f".www.{ORIGIN}"}, "empty label"),
    ({"name": f"a\x00b.{ORIGIN}"}, "control character"),
    ({"name": f"a\x01b.{ORIGIN}"}, "control character"),
    ({"name": f"a b.{ORIGIN}"}, "control character or space"),
    ({"name": f"a\x7fb.{ORIGIN}"}, "control character"),
    ({"name": ""}, "name is required"),
    ({"name": f"www.{ORIGIN}", "type": "BOGUS"}, "unknown record type"),
    ({"name": f"www.{ORIGIN}", "type": "TYPE65536"}, "unknown record type"),
    ({"name": f"www.{ORIGIN}", "type": "TYPE-1"}, "unknown record type"),
    ({"name": f"www.{ORIGIN}", "type": "65536"}, "unknown record type"),
    ({"name": f"www.{ORIGIN}", "subnet": "10.0.0.0/99"}, "subnet"),
    ({"name": f"www.{ORIGIN}", "source": "not-an-address"}, "source"),
]


@pytest.mark.parametrize(
    ("params", "message"), BAD_INPUT, ids=[f"{i}-{m.split()[0]}" for i, (_, m) in enumerate(BAD_INPUT)]
)
def test_bad_input_is_400_with_a_message(live: Live, params: dict[str, str], message: str) -> None:
    status, data = explain(live, **params)
    assert status == 400, (params, data)
    assert message in data["error"], (params, data)
    assert len(data["error"]) < 400, data  # the input is quoted, cut short


def test_percent_00_in_the_url(live: Live) -> None:
    """``%00`` exactly as a client sends it (not re-encoded by a library)."""
    status, _, body = get(live.admin, f"/v1/explain?name=a%00b.{ORIGIN}&type=A")
    assert status == 400 and "control character" in json.loads(body)["error"], body


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/v1/explain?name=" + "a" * 9000, None),  # past aiohttp's 8,190-byte request line
        ("/" + "x" * 20000, None),
        ("/healthz", {"X-Long": "y" * 10000}),  # a header line past the limit
        ("/v1/explain?name=" + "%41" * 5000, None),
    ],
    ids=["long-query", "long-path", "long-header", "long-escaped-query"],
)
def test_over_long_requests_are_4xx_without_a_traceback(
    live: Live, target: str, headers: dict[str, str] | None
) -> None:
    status, _, body = get(live.admin, target, headers=headers)
    assert 400 <= status < 500, (status, body[:200])
    assert "Traceback" not in body
    assert get(live.admin, "/healthz")[0] == 200  # still serving
    assert "Traceback" not in live.sp.output()


def test_non_http_bytes_are_4xx_without_a_traceback(live: Live) -> None:
    for junk in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64), b"\x00" * 64 + b"\r\n\r\n",
                 b"GET /healthz HTTP/9.9\r\n\r\n", b"GET " + b"/" * 10 + b" \x00\r\n\r\n"):
        with socket.create_connection(live.admin, timeout=5) as s:
            s.sendall(junk)
            reply = s.recv(4096)
        assert reply == b"" or re.match(rb"HTTP/1\.[01] 4\d\d ", reply), reply[:100]
    assert get(live.admin, "/healthz")[0] == 200
    assert "Traceback" not in live.sp.output()


def test_a_failing_handler_is_a_json_500() -> None:
    """A bug inside a handler (here an explain callable that raises) is a JSON 500,
    never aiohttp's traceback page, even for a browser asking for HTML."""
    from resolver.serve.admin import Admin, start_admin

    def broken(*_args: Any) -> dict[str, Any]:
        raise RuntimeError("boom")

    async def run() -> tuple[int, str, str]:
        port = free_port()
        runner = await start_admin(Admin(explain=broken, stats=dict), LOOPBACK, port)
        try:
            async with aiohttp.ClientSession() as s, s.get(
                f"http://{LOOPBACK}:{port}/v1/explain?name=x.", headers={"Accept": "text/html"}
            ) as r:
                return r.status, r.headers.get("Content-Type", ""), await r.text()
        finally:
            await runner.cleanup()

    with structlog.testing.capture_logs() as logged:
        status, ctype, body = asyncio.run(run())
    assert status == 500 and ctype.startswith("application/json"), (status, ctype, body)
    assert "error" in json.loads(body) and "Traceback" not in body and "boom" not in body
    failed = [e for e in logged if e["event"] == "admin_request_failed"]
    assert len(failed) == 1 and "boom" in failed[0]["error"], logged  # the details go to the log


def _listening(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp writes them) listening on ``port``."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                addr, port_hex = cols[1].rsplit(":", 1)
                if int(port_hex, 16) == port and cols[3] == "0A":  # LISTEN
                    out.add(addr)
    return out


@pytest.mark.parametrize("how", ["flag-colon", "flag-port", "config"])
def test_admin_port_alone_binds_loopback(tmp_path: Path, how: str) -> None:
    if how == "config":
        sp, admin = start_with_admin(tmp_path, settings={"admin": {"listen": ":{port}"}})
    else:
        sp, admin = start_with_admin(tmp_path, admin_arg=":{port}" if how == "flag-colon" else "{port}")
    try:
        assert _listening(admin[1]) == {"0100007F"}, _listening(admin[1])  # 127.0.0.1 only
    finally:
        sp.stop()
    assert "Traceback" not in sp.output()


def test_help_says_admin_binds_loopback() -> None:
    p = subprocess.run(fedns_argv("serve", "--help"), env=fedns_env(), capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0 and "loopback" in " ".join(p.stdout.split()), p.stdout
