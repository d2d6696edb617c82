"""Probe targets for the health tests: real servers on loopback addresses that go down,
hang, answer 500 or the wrong body, want a Host header, or speak HTTPS, and count what
reaches them.

``HttpTargets`` is one aiohttp application on an event loop of its own (a thread),
listening on any number of loopback addresses (one ``TCPSite`` each, all on one
port: the service's), each with a ``Reply`` the test sets and may change at any time.
``TcpTargets`` is a plain asyncio server counting connections (what a deleted
endpoint must no longer get). ``make_ca`` writes a self-signed CA and a server
certificate signed by it (``cryptography``; ``trustme`` is not installed here).
``serve``/``running`` start a ``fedns serve`` with JSON logs and the admin API, and
``Fedns`` reads what it answers, explains and logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import ipaddress
import json
import random
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rdatatype
import yaml
from aiohttp import web
from dnsclient import make, udp
from servers import LOOPBACK, ServerProcess, free_port, start_fedns


@dataclass
class Reply:
    """What an address answers: ``status`` and ``body``; ``hang``: never answers;
    ``host``: only requests with this Host get ``status`` (others 421); ``paths``:
    only these paths get ``status`` (others 500); ``delay``: seconds before answering."""

    status: int = 200
    body: str = "ok"
    hang: bool = False
    host: str | None = None
    paths: frozenset[str] | None = None
    delay: float = 0.0


class _Loop:
    """An event loop on a thread of its own, for servers a blocking test talks to."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="targets", daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _pick_port(bind: Callable[[int], None], first: str) -> int:
    """A port free on every address ``bind`` binds (it raises OSError EADDRINUSE if not)."""
    for _ in range(50):
        port = random.randint(20000, 39999)
        try:
            bind(port)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            continue
        return port
    raise OSError(f"no port free on {first} and the others")


class HttpTargets:
    """HTTP(S) targets on loopback addresses, one port for all."""

    def __init__(self, addresses: Iterable[str], tls: ssl.SSLContext | None = None) -> None:
        self.addresses = list(addresses)
        self.tls = tls
        self.replies: dict[str, Reply] = {a: Reply() for a in self.addresses}
        self.requests: Counter[tuple[str, str]] = Counter()  # (address, path)
        self.times: dict[str, list[tuple[float, int]]] = {a: [] for a in self.addresses}
        self.hung: list[float] = []  # how long each hung request was held before the client left
        self.in_flight = 0
        self.peak = 0
        self._loop = _Loop()
        self._sites: dict[str, web.TCPSite] = {}
        self._release = asyncio.Event()
        self.port = 0
        self._loop.run(self._start())

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        for _ in range(50):
            port = random.randint(20000, 39999)
            try:
                await self._bind_all(port)
            except OSError as e:
                if e.errno != errno.EADDRINUSE:
                    raise
                continue
            self.port = port
            return
        raise OSError("no port free on every target address")

    async def _bind_all(self, port: int) -> None:
        done: list[web.TCPSite] = []
        try:
            for a in self.addresses:
                site = web.TCPSite(self._runner, a, port, ssl_context=self.tls, reuse_address=True)
                await site.start()
                done.append(site)
        except OSError:
            for site in done:
                await site.stop()
            raise
        self._sites = {a: s for a, s in zip(self.addresses, done, strict=True)}

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        address = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        path = request.path
        self.requests[(address, path)] += 1
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            reply = self.replies.get(address, Reply())
            if reply.hang:
                t0 = time.monotonic()
                try:
                    await self._release.wait()
                finally:
                    self.hung.append(time.monotonic() - t0)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            status = reply.status
            if reply.host is not None and request.host != reply.host:
                status = 421
            if reply.paths is not None and path not in reply.paths:
                status = 500
            self.times[address].append((time.monotonic(), status))
            return web.Response(status=status, text=reply.body)
        finally:
            self.in_flight -= 1

    def served(self, address: str, since: float = 0.0, status: int | None = None) -> int:
        """Requests ``address`` answered since ``since`` (monotonic), of ``status`` if given."""
        return sum(
            1 for t, s in list(self.times[address]) if t >= since and (status is None or s == status)
        )

    def down(self, address: str) -> None:
        """Stop listening there: connections are refused."""
        site = self._sites.pop(address)
        self._loop.run(site.stop())

    def up(self, address: str) -> None:
        async def start() -> None:
            site = web.TCPSite(self._runner, address, self.port, ssl_context=self.tls,
                               reuse_address=True)
            await site.start()
            self._sites[address] = site

        self._loop.run(start())

    def close(self) -> None:
        self._loop.loop.call_soon_threadsafe(self._release.set)
        with contextlib.suppress(Exception):
            self._loop.run(self._runner.cleanup(), timeout=15)
        self._loop.stop()


class _Counting(asyncio.Protocol):
    def __init__(self, owner: TcpTargets) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        address = transport.get_extra_info("sockname")[0]
        self.owner.connections[address] += 1
        self.owner.last[address] = time.monotonic()
        transport.close()


class TcpTargets:
    """Plain TCP listeners on loopback addresses, one port, counting connections."""

    def __init__(self, addresses: Iterable[str]) -> None:
        self.addresses = list(addresses)
        self.connections: Counter[str] = Counter()
        self.last: dict[str, float] = {}
        self._loop = _Loop()
        self._servers: list[asyncio.base_events.Server] = []

        def bind(port: int) -> None:
            self._loop.run(self._bind(port))

        self.port = _pick_port(bind, self.addresses[0])

    async def _bind(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        made = []
        try:
            for a in self.addresses:
                made.append(await loop.create_server(lambda: _Counting(self), a, port,
                                                     reuse_address=True))
        except OSError:
            for s in made:
                s.close()
            raise
        self._servers = made

    def close(self) -> None:
        async def stop() -> None:
            for s in self._servers:
                s.close()
                await s.wait_closed()

        with contextlib.suppress(Exception):
            self._loop.run(stop(), timeout=15)
        self._loop.stop()


def make_ca(directory: Path, names: Iterable[str]) -> tuple[Path, ssl.SSLContext]:
    """A self-signed CA (``ca.pem`` in ``directory``) and a server context whose
    certificate, signed by it, holds ``names`` (DNS names or IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedns test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "target")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    (directory / "server.pem").write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    (directory / "server.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(directory / "server.pem", directory / "server.key")
    return ca_file, ctx


# -- a fedns serving a federation, and what it shows ------------------------------------------

ORIGIN = "global.example.test."
ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 1209600 30
@       IN NS  ns1
ns1     IN A   127.0.0.53
"""

# What a name answers: its A addresses, or the RCODE (``NOERROR/NODATA`` when empty).
Answer = frozenset[str] | str


@dataclass
class Fedns:
    """A ``fedns serve`` (JSON logs, admin API on) and the views tests read."""

    sp: ServerProcess
    admin: tuple[str, int]

    @property
    def addr(self) -> tuple[str, int]:
        return self.sp.addr

    def query(self, name: str, qtype: str = "A") -> dns.message.Message:
        return udp(self.addr, make(name, qtype))

    def answer(self, name: str, qtype: str = "A") -> Answer:
        r = self.query(name, qtype)
        got = frozenset(
            rd.to_text() for rr in r.answer if rr.rdtype == dns.rdatatype.from_text(qtype) for rd in rr
        )
        return got if got else dns.rcode.to_text(r.rcode()) + ("" if r.rcode() else "/NODATA")

    def ttl(self, name: str) -> int | None:
        r = self.query(name)
        return min((rr.ttl for rr in r.answer), default=None)

    def get(self, path: str) -> Any:
        url = f"http://{self.admin[0]}:{self.admin[1]}{path}"
        with urllib.request.urlopen(url, timeout=5) as r:
            body = r.read().decode()
        return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def explain(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.get(f"/v1/explain?name={name}")
        return data

    def candidates(self, name: str) -> dict[str, dict[str, Any]]:
        """address -> the explain candidate holding it."""
        return {a: c for c in self.explain(name)["candidates"] for a in c["addresses"]}

    def events(self, event: str | None = None) -> list[dict[str, Any]]:
        out = []
        for line in self.sp.output().splitlines():
            with contextlib.suppress(ValueError):
                ev = json.loads(line)
                if isinstance(ev, dict) and (event is None or ev.get("event") == event):
                    out.append(ev)
        return out

    def tracebacks(self) -> list[str]:
        return [ln for ln in self.sp.output().splitlines() if ln.startswith("Traceback")]

    def wait(self, name: str, want: Answer, within: float = 15.0) -> float:
        """Poll until ``name`` answers ``want``; the monotonic time it first did."""
        end = time.monotonic() + within
        got: Answer = ""
        while time.monotonic() < end:
            got = self.answer(name)
            if got == want:
                return time.monotonic()
            time.sleep(0.01)
        raise AssertionError(f"{name} answers {got}, want {want}\n{self.sp.output()[-3000:]}")


def serve(workdir: Path, settings: dict[str, Any]) -> Fedns:
    """``fedns serve`` of ``ZONE`` plus ``settings`` (a ``federation:``), answering."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "fed.zone").write_text(ZONE)
    doc = {"zones": [{"origin": ORIGIN, "file": "fed.zone"}], **settings}
    cfg = workdir / "fedns.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    admin = (LOOPBACK, free_port())
    sp = start_fedns(
        cfg, workdir, extra_args=("--admin", f"{admin[0]}:{admin[1]}", "--log-format", "json")
    )
    f = Fedns(sp, admin)
    end = time.monotonic() + 15
    while True:
        try:
            f.get("/healthz")
            break
        except OSError:
            if time.monotonic() > end:
                sp.stop()
                raise
            time.sleep(0.05)
    return f


@contextlib.contextmanager
def running(workdir: Path, settings: dict[str, Any]) -> Iterator[Fedns]:
    f = serve(workdir, settings)
    try:
        yield f
    finally:
        f.sp.stop()


def static_service(
    name: str, port: int, endpoints: dict[str, list[str]], **extra: Any
) -> dict[str, Any]:
    """A ``federation.services`` entry in namespace ``shop`` with one port ``http``."""
    return {
        "namespace": "shop",
        "name": name,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": {c: [{"addresses": [a]} for a in addrs] for c, addrs in endpoints.items()},
        **extra,
    }
