"""Active health probes: TCP connect (optionally send/expect bytes) or HTTP(S) GET.

Kubernetes readiness says what the kubelet sees from inside the cluster; a
probe from fedns says whether the endpoint answers from where fedns (and, for
a flat or gateway network, its clients) stand. An endpoint is healthy when it
is ready *and* its probe passes (and its cluster's stale policy keeps it).
Probes have hysteresis: ``fall`` consecutive failures mark a target down,
``rise`` successes bring it back, so one lost packet does not flap answers;
with the defaults (0.5 s interval, fall 2) a dead endpoint leaves answers in
about a second, where cloud DNS health checks take 30 s or more.

``ProbeState`` is the pure state machine. ``Prober`` probes a changing set of
``Target``s for their owners (services): a target that several services point
at with the same probe settings is probed once; it starts the moment its
first owner assigns it and stops (its connection in flight closed, no further
one opened) when its last owner lets go. All targets share one bound on
probes in flight (``federation.probes.concurrency``); each target's first probe
comes at a random offset within its interval and each later one
``interval`` ±10 % after the previous one started, so 10,000 targets never
fire together.

The probes run as callbacks on the event loop (connect, send, read: no task
or coroutine per probe, which would cost several times the CPU at 5,000
probes a second); HTTPS, rare and dominated by its TLS handshake, takes an
asyncio stream in a task.
"""

from __future__ import annotations

import asyncio
import bisect
import errno
import http.client
import io
import math
import os
import random
import re
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import structlog
import yaml

from ..config import NO_FILE, Reader
from .policy import ProbeView, bounded, seconds

log = structlog.get_logger("fedns.health")

ProbeKind = Literal["tcp", "http"]
Outcome = Literal["ok", "fail", "timeout", "error"]
OUTCOMES: tuple[Outcome, ...] = ("ok", "fail", "timeout", "error")
DEFAULT_CONCURRENCY = 256
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close with RST
TICK = 0.01  # seconds: probes start and time out on these ticks (see Prober)
BODY_LIMIT = 4096  # expect_body looks at this much of the body, TCP expect at this much
_HEADER_LIMIT = 16384  # a response whose headers run past this is not one we judge
# Probe latency histogram bounds (seconds), Prometheus's default buckets from 1 ms.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
_KEYS = {
    "probe", "port", "path", "scheme", "host", "expect_status", "expect_body", "tls_verify",
    "ca_file", "send", "expect", "interval", "timeout", "rise", "fall", "initial",
}
_HTTP_ONLY = ("path", "scheme", "host", "expect_status", "expect_body", "tls_verify", "ca_file")
_TCP_ONLY = ("send", "expect")
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?)(:\d{1,5})?$")
_PATH = re.compile(r"^/[\x21-\x7e]*$")  # no spaces or control bytes: it goes into a request line


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """How to probe a service's endpoints (``federation.health``, a ``federation.policies``
    entry's ``probe``, or the ``fedns.io/probe`` annotation)."""

    kind: ProbeKind = "tcp"
    port: int | None = None  # None: the service's first port
    path: str = "/"
    interval: float = 0.5
    timeout: float = 0.4
    rise: int = 2
    fall: int = 2
    initial: Literal["ready", "down"] = "ready"  # before the first result: trust readiness, or out
    scheme: Literal["http", "https"] = "http"
    host: str | None = None  # Host header and TLS SNI (and the name the certificate must have)
    expect_status: tuple[tuple[int, int], ...] = ((200, 399),)
    expect_body: str | None = None  # a substring of the first 4 KiB of the body
    tls_verify: bool = True
    ca_file: str | None = None
    send: bytes = b""  # tcp: written once connected
    expect: bytes = b""  # tcp: must appear in the first 4 KiB read back

    def status_ok(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.expect_status)

    @property
    def status_text(self) -> str:
        return ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in self.expect_status)

    def describe(self) -> dict[str, Any]:
        """The settings as explain shows them."""
        out: dict[str, Any] = {
            "probe": self.kind,
            "port": self.port,
            "interval": self.interval,
            "timeout": self.timeout,
            "rise": self.rise,
            "fall": self.fall,
            "initial": self.initial,
        }
        if self.kind == "http":
            out.update(
                scheme=self.scheme,
                path=self.path,
                host=self.host,
                expect_status=self.status_text,
                expect_body=self.expect_body,
            )
            if self.scheme == "https":
                out.update(tls_verify=self.tls_verify, ca_file=self.ca_file)
        else:
            out.update(send=self.send.decode(errors="replace"), expect=self.expect.decode(errors="replace"))
        return out


@dataclass(frozen=True, slots=True)
class Target:
    """One thing probed: an address and the probe (its port resolved). Services whose
    endpoints share an address and probe settings share the target."""

    address: str
    spec: ProbeSpec

    @property
    def port(self) -> int:
        assert self.spec.port is not None
        return self.spec.port

    @property
    def kind(self) -> ProbeKind:
        return self.spec.kind

    def __str__(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        if self.spec.kind == "tcp":
            return f"tcp://{host}:{self.port}"
        via = f" (host {self.spec.host})" if self.spec.host else ""
        return f"{self.spec.scheme}://{host}:{self.port}{self.spec.path}{via}"


def target(address: str, spec: ProbeSpec, port: int) -> Target:
    return Target(address, spec if spec.port == port else replace(spec, port=port))


@dataclass(slots=True)
class ProbeState:
    """Hysteresis over probe results.

    ``initial: ready`` starts up (readiness is trusted until probes say otherwise,
    so a restart does not empty every answer); ``initial: down`` starts down, and
    the first passing probe brings the target in (it has no history to be
    hysteretic about). ``reason`` and ``since`` say why the state is what it is:
    the result that flipped it, or the initial state."""

    rise: int
    fall: int
    healthy: bool = True
    streak: int = 0  # consecutive results disagreeing with ``healthy``
    since: float = field(default_factory=time.time)
    reason: str = "initial: ready (readiness trusted until probes disagree)"
    waiting: bool = False  # initial: down, and no passing probe yet
    _view: ProbeView | None = None

    @classmethod
    def initial(cls, spec: ProbeSpec, now: float | None = None) -> ProbeState:
        up = spec.initial == "ready"
        return cls(
            spec.rise,
            spec.fall,
            healthy=up,
            since=time.time() if now is None else now,
            reason="initial: ready (readiness trusted until probes disagree)"
            if up
            else "initial: down (out until the first passing probe)",
            waiting=not up,
        )

    def record(self, ok: bool, reason: str, now: float | None = None) -> bool:
        """Feed one result; True when the state flipped."""
        if ok == self.healthy:
            self.streak = 0
            return False
        self.streak += 1
        if self.streak >= (self.rise if ok else self.fall) or self.waiting:
            self.healthy = ok
            self.streak = 0
            self.waiting = False
            self.since = time.time() if now is None else now
            self.reason = reason
            self._view = None
            return True
        return False

    def view(self) -> ProbeView:
        """The state as plans carry it (one shared object until the next flip)."""
        v = self._view
        if v is None:
            v = self._view = ProbeView(self.healthy, self.since, self.reason)
        return v


# -- config ------------------------------------------------------------------------------------


def parse_probe(
    raw: Any, where: str, r: Reader = NO_FILE, base: Path | None = None
) -> ProbeSpec | None:
    """A probe's settings -> spec (None: ``probe: none``, probing off).

    ``{probe: tcp|http|https|none, port, interval, timeout, rise, fall, initial}``
    plus, for HTTP, ``scheme, path, host, expect_status, expect_body, tls_verify,
    ca_file`` and, for TCP, ``send, expect``. The ``fedns.io/probe`` annotation
    also takes ``tcp``, ``http:8080/healthz``, ``https:8443/healthz``, ``none`` or
    a YAML flow mapping (``{probe: http, port: 8080, path: /healthz}``).

    Raises ``r.fail(key, problem)`` (a ConfigError) naming the offending key
    under ``where``; ``NO_FILE`` for the annotation, whose caller catches it.
    ``base``: the directory a relative ``ca_file`` is read from."""
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = _annotation(raw, where, r)
    if not isinstance(raw, dict):
        raise r.fail(where, "expected a mapping like {probe: tcp, port: 443}")
    r.known(raw, where, _KEYS)
    kind = str(raw.get("probe", "tcp")).lower()
    if kind == "none":
        extra = sorted(set(raw) - {"probe"})
        if extra:
            raise r.fail(f"{where}.{extra[0]}", "probe: none takes no other settings")
        return None
    scheme_default = "http"
    if kind == "https":
        kind, scheme_default = "http", "https"
    if kind not in ("tcp", "http"):
        raise r.fail(f"{where}.probe", f"{kind!r} is not one of tcp, http, https, none")
    for k in _HTTP_ONLY if kind == "tcp" else _TCP_ONLY:
        if k in raw:
            other = "tcp" if kind == "http" else "http"
            raise r.fail(f"{where}.{k}", f"only used with probe: {other} (this is probe: {kind})")

    def num(key: str, default: int, lo: int, hi: int) -> int:
        return int(bounded(raw[key], f"{where}.{key}", int, lo, hi, r)) if key in raw else default

    def dur(key: str, default: float, lo: float, hi: float) -> float:
        return seconds(raw[key], f"{where}.{key}", lo, hi, r) if key in raw else default

    port = num("port", 0, 1, 65535) if "port" in raw else None
    interval = dur("interval", 0.5, 0.1, 3600)
    timeout = dur("timeout", min(0.4, interval), 0.05, 60)
    if timeout > interval * 4:
        raise r.fail(
            f"{where}.timeout", f"{timeout:g} s is over 4 times the interval ({interval:g} s); lower it"
        )
    initial = str(raw.get("initial", "ready")).lower()
    if initial not in ("ready", "down"):
        raise r.fail(f"{where}.initial", f"{initial!r} is not one of ready, down")
    spec = ProbeSpec(
        kind,  # type: ignore[arg-type]
        port,
        interval=interval,
        timeout=timeout,
        rise=num("rise", 2, 1, 100),
        fall=num("fall", 2, 1, 100),
        initial=initial,  # type: ignore[arg-type]
    )
    if kind == "tcp":
        send = _bytes(raw.get("send", ""), f"{where}.send", r, 65536)
        expect = _bytes(raw.get("expect", ""), f"{where}.expect", r, BODY_LIMIT)
        return replace(spec, send=send, expect=expect)
    path = str(raw.get("path", "/"))
    if not _PATH.match(path):
        raise r.fail(f"{where}.path", f"{path!r} must start with / and hold no spaces or control characters")
    scheme = str(raw.get("scheme", scheme_default)).lower()
    if scheme not in ("http", "https"):
        raise r.fail(f"{where}.scheme", f"{scheme!r} is not one of http, https")
    host = None
    if raw.get("host") is not None:
        host = str(raw["host"])
        if not _HOST.match(host):
            raise r.fail(f"{where}.host", f"{host!r} is not a host name (or address), with an optional :port")
    expect_status = _status(raw.get("expect_status", "200-399"), f"{where}.expect_status", r)
    body = None
    if raw.get("expect_body") is not None:
        body = str(raw["expect_body"])
        if not body or len(body.encode()) > BODY_LIMIT:
            raise r.fail(f"{where}.expect_body", f"expected 1 to {BODY_LIMIT} bytes of text")
    verify = raw.get("tls_verify", True)
    if isinstance(verify, str) and verify.lower() in ("true", "false"):
        verify = verify.lower() == "true"
    if not isinstance(verify, bool):
        raise r.fail(f"{where}.tls_verify", f"expected true or false, got {verify!r}")
    ca_file = None
    if raw.get("ca_file") is not None:
        if r is NO_FILE:
            raise r.fail(f"{where}.ca_file", "only read from the config file, not from an annotation")
        if scheme != "https":
            raise r.fail(f"{where}.ca_file", "only used with scheme: https")
        p = Path(r.string(raw["ca_file"], f"{where}.ca_file")).expanduser()
        if not p.is_absolute() and base is not None:
            p = base / p
        try:
            ssl.create_default_context(cafile=str(p))
        except (OSError, ssl.SSLError) as e:
            raise r.fail(f"{where}.ca_file", f"cannot load {p} as PEM CA certificates: {e}") from None
        ca_file = str(p)
    if (scheme != "https") and "tls_verify" in raw:
        raise r.fail(f"{where}.tls_verify", "only used with scheme: https")
    return replace(
        spec,
        path=path,
        scheme=scheme,  # type: ignore[arg-type]
        host=host,
        expect_status=expect_status,
        expect_body=body,
        tls_verify=verify,
        ca_file=ca_file,
    )


def _annotation(text: str, where: str, r: Reader) -> Any:
    """The annotation's text: a flow mapping (read by PyYAML) or ``kind[:port[/path]]``."""
    s = text.strip()
    if s.startswith("{"):
        try:
            return yaml.safe_load(s)
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise r.fail(where, f"not a YAML mapping: {problem}") from None
    kind, _, rest = s.partition(":")
    out: dict[str, Any] = {"probe": kind}
    if rest:
        port_text, slash, path_text = rest.partition("/")
        out["port"] = port_text
        if slash:
            out["path"] = "/" + path_text
    return out


def _bytes(v: Any, key: str, r: Reader, limit: int) -> bytes:
    if not isinstance(v, str):
        raise r.fail(key, f"expected a string, got {v!r}")
    b = v.encode()
    if len(b) > limit:
        raise r.fail(key, f"{len(b)} bytes; at most {limit}")
    return b


def _status(v: Any, key: str, r: Reader) -> tuple[tuple[int, int], ...]:
    """``200``, ``200-399``, ``"200,204,300-399"`` or a list of those -> ranges."""
    items = v if isinstance(v, list) else str(v).split(",")
    out: list[tuple[int, int]] = []
    for item in items:
        text = str(item).strip()
        lo_s, dash, hi_s = text.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if dash else lo
        except ValueError:
            raise r.fail(key, f"{text!r} is not a status code or range like 200-399") from None
        if not 100 <= lo <= hi <= 599:
            raise r.fail(key, f"{text!r}: status codes are 100-599, low to high")
        out.append((lo, hi))
    if not out:
        raise r.fail(key, "expected a status code or range like 200-399")
    return tuple(out)


def targets_for(spec: ProbeSpec, addresses: Iterable[str], ports: Iterable[int]) -> list[Target]:
    """The targets of ``addresses`` under ``spec`` (its port, else the first of ``ports``)."""
    port = spec.port
    if port is None:
        port = next(iter(ports), None)
    if port is None:
        return []
    return [target(a, spec, port) for a in addresses]


# -- probing -------------------------------------------------------------------------------------


class _Bytes:
    """What ``http.client.HTTPResponse`` reads a response from: bytes already received."""

    __slots__ = ("_f",)

    def __init__(self, data: bytes) -> None:
        self._f = io.BytesIO(data)

    def makefile(self, *_a: Any, **_k: Any) -> io.BytesIO:
        return self._f


def judge_http(spec: ProbeSpec, data: bytes, ms: float) -> tuple[Outcome, str]:
    """A response's verdict under ``spec``: (outcome, reason). http.client reads it."""
    name = spec.scheme
    if not data:
        return "error", f"{name} error: connection closed without a response"
    if spec.expect_body is None:
        # The status line is all a status check needs: read here, it costs a tenth
        # of http.client's parse of the whole header (20 us, 0.1 core at 5,000 probes/s).
        eol = data.find(b"\r\n")
        line = data[:eol] if eol >= 0 else data
        version, _, rest = line.partition(b" ")
        code = rest[:3]
        if not (version.startswith(b"HTTP/1.") and code.isdigit() and rest[3:4] in (b"", b" ")):
            return "error", f"{name} error: not an HTTP response ({bytes(line[:40])!r})"
        status = int(code)
        if status < 200 and status != 101:  # an interim response: the final one follows
            return _judge_parsed(spec, data, ms)
        if not spec.status_ok(status):
            return "fail", f"{name} {status} (expected {spec.status_text}) in {ms:.0f} ms"
        return "ok", f"{name} {status} in {ms:.0f} ms"
    return _judge_parsed(spec, data, ms)


def _judge_parsed(spec: ProbeSpec, data: bytes, ms: float) -> tuple[Outcome, str]:
    name = spec.scheme
    resp = http.client.HTTPResponse(_Bytes(data))  # type: ignore[arg-type]
    try:
        resp.begin()
    except (http.client.HTTPException, ValueError) as e:
        return "error", f"{name} error: not an HTTP response ({type(e).__name__})"
    status = resp.status
    if not spec.status_ok(status):
        return "fail", f"{name} {status} (expected {spec.status_text}) in {ms:.0f} ms"
    if spec.expect_body is not None:
        try:
            body = resp.read(BODY_LIMIT)
        except http.client.IncompleteRead as e:
            body = e.partial[:BODY_LIMIT]
        except (http.client.HTTPException, ValueError):
            body = b""
        if spec.expect_body.encode() not in body:
            return "fail", f"{name} {status} without {spec.expect_body!r} in the first 4 KiB of its body"
    return "ok", f"{name} {status} in {ms:.0f} ms"


def _http_request(t: Target) -> bytes:
    spec = t.spec
    host = spec.host
    if host is None:
        host = f"[{t.address}]" if ":" in t.address else t.address
        if t.port != (443 if spec.scheme == "https" else 80):
            host = f"{host}:{t.port}"
    return (
        f"GET {spec.path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fedns-probe\r\n"
        "Accept: */*\r\nConnection: close\r\n\r\n"
    ).encode("ascii")


def _sni(t: Target) -> str:
    """The TLS server name: ``host`` without a port (or brackets), else the address."""
    host = t.spec.host
    if host is None:
        return t.address
    if host.startswith("["):
        return host[1 : host.index("]")]
    return host.split(":", 1)[0]


def _http_complete(data: bytearray, want_body: bool) -> bool:
    """Enough of a response to judge: its headers (the status is all a status check
    needs), and with ``expect_body`` the body's first 4 KiB or all of a shorter one
    (by Content-Length, or the last chunk); otherwise the end of the stream decides."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) > _HEADER_LIMIT
    if not want_body:
        return True
    body = len(data) - end - 4
    if body >= BODY_LIMIT + 1024:  # room for chunk-size lines
        return True
    head = bytes(data[:end]).lower()
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head)
    if m is not None:
        return body >= int(m.group(1))
    return b"chunked" in head and data.endswith(b"\r\n0\r\n\r\n")


class _Job:
    """One target being probed: its state, owners and schedule."""

    __slots__ = ("attempt", "due", "owners", "request", "started", "state", "stopped", "target")

    def __init__(self, t: Target, state: ProbeState) -> None:
        self.target = t
        self.state = state
        self.owners: set[Hashable] = set()
        self.due = 0  # the tick of its next probe (0: none scheduled)
        self.attempt: _Attempt | asyncio.Task[Any] | None = None
        self.started = 0.0
        self.stopped = False
        self.request = _http_request(t) if t.spec.kind == "http" else t.spec.send


class _Expiry:
    """The attempts that time out on one tick, and its timer (cancelled once all are done)."""

    __slots__ = ("attempts", "handle", "open", "tick")

    def __init__(self, tick: int, handle: asyncio.TimerHandle) -> None:
        self.tick = tick
        self.handle = handle
        self.attempts: list[_Attempt] = []
        self.open = 0


class _Attempt:
    """One plain probe as event-loop callbacks: connect, send, read, judge."""

    __slots__ = (
        "buf", "connected", "expiry", "fd", "job", "loop", "prober", "sent", "sock", "t0",
        "writing",
    )

    def __init__(self, prober: Prober, job: _Job) -> None:
        self.prober = prober
        self.job = job
        self.loop = prober.loop
        self.buf = bytearray()
        self.sent = 0
        self.connected = self.writing = False
        self.expiry: _Expiry | None = None

    def start(self) -> None:
        t = self.job.target
        self.t0 = self.loop.time()
        try:
            sock = self.sock = socket.socket(
                socket.AF_INET6 if ":" in t.address else socket.AF_INET, socket.SOCK_STREAM
            )
        except OSError as e:  # out of file descriptors: a failed probe, not a crashed prober
            self.prober._done(self.job, "error", f"{self._name} error: no socket: {e.strerror}", 0.0)
            return
        sock.setblocking(False)
        if t.spec.kind == "tcp" and (t.spec.expect or not t.spec.send):
            # Closed with a reset: no FIN exchange and no TIME_WAIT left here, per probe.
            # (Not after a send with nothing to wait for: a reset would drop unsent bytes.)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self.fd = sock.fileno()
        err = sock.connect_ex((t.address, t.port))
        if err in (errno.EINPROGRESS, errno.EAGAIN):
            try:
                # Often done already (a target on this host): go on without waiting
                # for the loop to say so, a wake-up per probe saved.
                sock.getpeername()
                err = 0
            except OSError:
                self.writing = True
                self.loop.add_writer(self.fd, self._writable)
                return
        if err == 0:
            self._connected()
        else:
            self._finish("error", f"{self._name} error: {os.strerror(err)}")

    @property
    def open(self) -> bool:
        return self.sock.fileno() >= 0

    @property
    def _name(self) -> str:
        return self.job.target.spec.scheme if self.job.target.kind == "http" else "tcp"

    def _writable(self) -> None:
        if not self.connected:
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._finish("error", f"{self._name} error: {os.strerror(err)}")
                return
            self._connected()
            return
        self._send()

    def _connected(self) -> None:
        self.connected = True
        spec = self.job.target.spec
        if spec.kind == "tcp" and not spec.send and not spec.expect:
            self._finish("ok", None)  # the reason is written only if it flips the state
            return
        self._send()

    def _send(self) -> None:
        data = self.job.request
        try:
            while self.sent < len(data):
                self.sent += self.sock.send(data[self.sent :] if self.sent else data)
        except BlockingIOError:
            if not self.writing:
                self.writing = True
                self.loop.add_writer(self.fd, self._writable)
            return
        except OSError as e:
            self._finish("error", f"{self._name} error: {e.strerror or e}")
            return
        if self.writing:
            self.writing = False
            self.loop.remove_writer(self.fd)
        spec = self.job.target.spec
        if spec.kind == "tcp" and not spec.expect:
            ms = 1000 * (self.loop.time() - self.t0)
            self._finish("ok", f"tcp connect and send ok in {ms:.0f} ms")
            return
        self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as e:
            if self.buf and self.job.target.kind == "http":
                self._judge()  # a reset after the response: judge what came
                return
            self._finish("error", f"{self._name} error: {e.strerror or e}")
            return
        spec = self.job.target.spec
        if chunk:
            self.buf += chunk
            if spec.kind == "tcp":
                if spec.expect in self.buf or len(self.buf) >= BODY_LIMIT:
                    self._judge()
            elif _http_complete(self.buf, spec.expect_body is not None):
                self._judge()
            return
        self._judge()  # end of stream

    def _judge(self) -> None:
        spec = self.job.target.spec
        ms = 1000 * (self.loop.time() - self.t0)
        if spec.kind == "http":
            outcome, reason = judge_http(spec, bytes(self.buf), ms)
        elif spec.expect in self.buf[:BODY_LIMIT]:
            outcome, reason = "ok", f"tcp got {spec.expect!r} in {ms:.0f} ms"
        else:
            outcome, reason = "fail", f"tcp reply lacks {spec.expect!r} (got {bytes(self.buf[:40])!r})"
        self._finish(outcome, reason)

    def expire(self) -> None:
        """The timeout passed (the prober checks its attempts' deadlines)."""
        self._finish("timeout", f"{self._name} timeout after {self.job.target.spec.timeout:g} s")

    def _close(self) -> None:
        bucket = self.expiry
        if bucket is not None:
            self.expiry = None
            bucket.open -= 1
            if not bucket.open:
                self.prober._expired(bucket)
        if self.writing:
            self.loop.remove_writer(self.fd)
        if self.connected:
            self.loop.remove_reader(self.fd)
        self.sock.close()

    def _finish(self, outcome: Outcome, reason: str | None) -> None:
        if not self.open:
            return
        self._close()
        self.prober._done(self.job, outcome, reason, self.loop.time() - self.t0)

    def cancel(self) -> None:
        """Stop without a result (the target went away)."""
        if self.open:
            self._close()


class Prober:
    """Probes a changing set of targets for their owners.

    ``assign(owner, targets)`` says which targets an owner (a service) needs now;
    a flip calls ``on_flip(owners)`` with the owners of the flipped target.
    """

    def __init__(
        self, on_flip: Callable[[set[Hashable]], None], concurrency: int = DEFAULT_CONCURRENCY
    ) -> None:
        self.on_flip = on_flip
        self.concurrency = concurrency
        self.loop = asyncio.get_running_loop()
        self._jobs: dict[Target, _Job] = {}
        self._owned: dict[Hashable, frozenset[Target]] = {}
        self._waiting: deque[_Job] = deque()
        self._in_flight = 0
        self._draining = False
        self._tls: dict[tuple[bool, str | None], ssl.SSLContext] = {}
        self._closed = False
        # Probes start, and time out, on ticks of TICK seconds: one timer per tick
        # for all that are due in it rather than one per probe, and the connects of
        # one tick come back to the loop together.
        self._starts: dict[int, list[_Job]] = {}
        self._expiries: dict[int, _Expiry] = {}
        # Counters for probe_stats: results by outcome, latency histogram, flips.
        self.results: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.flips = {"up": 0, "down": 0}
        self.peak_in_flight = 0

    # -- owners and targets ------------------------------------------------------------------

    def state(self, t: Target) -> ProbeState:
        """The target's state; a new target gets its initial state (``assign`` starts it)."""
        job = self._jobs.get(t)
        if job is None:
            job = self._jobs[t] = _Job(t, ProbeState.initial(t.spec))
        return job.state

    def result(self, t: Target) -> tuple[bool, str, float] | None:
        job = self._jobs.get(t)
        if job is None:
            return None
        st = job.state
        return st.healthy, st.reason, st.since

    def assign(self, owner: Hashable, targets: frozenset[Target]) -> None:
        """``owner`` needs exactly ``targets`` from now on (empty: none)."""
        old = self._owned.get(owner, frozenset())
        if old == targets:
            return
        if targets:
            self._owned[owner] = targets
        else:
            self._owned.pop(owner, None)
        for t in old - targets:
            job = self._jobs.get(t)
            if job is not None:
                job.owners.discard(owner)
                if not job.owners:
                    self._stop(job)
        for t in targets - old:
            self.state(t)
            job = self._jobs[t]
            job.owners.add(owner)
            if not job.due and job.attempt is None and not self._closed:
                # A random first offset within the interval: targets that appear
                # together (a start, a big list) do not fire together.
                self._at(job, self.loop.time() + random.random() * t.spec.interval)

    def _stop(self, job: _Job) -> None:
        job.stopped = True
        job.due = 0
        if job.attempt is not None:
            job.attempt.cancel()
            job.attempt = None
            self._in_flight -= 1
            self._next()
        self._jobs.pop(job.target, None)

    @property
    def targets(self) -> int:
        return sum(1 for j in self._jobs.values() if j.owners)

    def set_concurrency(self, n: int) -> None:
        self.concurrency = n
        self._next()

    # -- the schedule --------------------------------------------------------------------------

    def _at(self, job: _Job, when: float) -> None:
        """Probe ``job`` at loop time ``when`` (on the tick that holds it)."""
        tick = math.ceil(when / TICK)
        job.due = tick
        jobs = self._starts.get(tick)
        if jobs is None:
            jobs = self._starts[tick] = []
            self.loop.call_at(tick * TICK, self._tick, tick)
        jobs.append(job)

    def _tick(self, tick: int) -> None:
        for job in self._starts.pop(tick, ()):
            if job.due != tick or job.stopped or self._closed:
                continue  # stopped since
            job.due = 0
            if self._in_flight >= self.concurrency:
                self._waiting.append(job)
            else:
                self._start(job)

    def _expire(self, tick: int) -> None:
        bucket = self._expiries.pop(tick, None)
        if bucket is not None:
            for attempt in bucket.attempts:
                attempt.expire()  # a no-op for one that finished

    def _start(self, job: _Job) -> None:
        self._in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        job.started = self.loop.time()
        spec = job.target.spec
        if spec.kind == "http" and spec.scheme == "https":
            task = self.loop.create_task(self._https(job))
            job.attempt = task
        else:
            attempt = job.attempt = _Attempt(self, job)
            attempt.start()  # may finish (and clear job.attempt) at once
            if job.attempt is attempt:
                tick = math.ceil((job.started + spec.timeout) / TICK)
                bucket = self._expiries.get(tick)
                if bucket is None:
                    handle = self.loop.call_at(tick * TICK, self._expire, tick)
                    bucket = self._expiries[tick] = _Expiry(tick, handle)
                bucket.attempts.append(attempt)
                bucket.open += 1
                attempt.expiry = bucket

    def _expired(self, bucket: _Expiry) -> None:
        """Every attempt of ``bucket`` finished: its timer need not wake the loop."""
        bucket.handle.cancel()
        if self._expiries.get(bucket.tick) is bucket:
            del self._expiries[bucket.tick]

    def _next(self) -> None:
        if self._draining:  # a probe that finished inside _start below: the loop goes on
            return
        self._draining = True
        try:
            while self._waiting and self._in_flight < self.concurrency:
                job = self._waiting.popleft()
                if not job.stopped:
                    self._start(job)
        finally:
            self._draining = False

    def _done(self, job: _Job, outcome: Outcome, reason: str | None, elapsed: float) -> None:
        if job.attempt is None:  # already stopped
            return
        job.attempt = None
        self._in_flight -= 1
        self.results[outcome] += 1
        self.latency_sum += elapsed
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, elapsed)] += 1
        st = job.state
        ok = outcome == "ok"
        if reason is None:
            reason = f"tcp connect ok in {1000 * elapsed:.0f} ms" if ok != st.healthy else ""
        if st.record(ok, reason):
            direction = "up" if st.healthy else "down"
            self.flips[direction] += 1
            log.info(
                "health_flip",
                target=str(job.target),
                direction=direction,
                healthy=st.healthy,
                reason=reason,
                services=len(job.owners),
            )
            self.on_flip(set(job.owners))
        if not job.stopped and not self._closed:
            # Start to start, ±10 %; while the results disagree with the state, at most
            # one interval, so that a flip takes at most fall (or rise) intervals
            # after the first disagreeing result.
            jitter = 0.9 + random.random() * (0.1 if st.streak else 0.2)
            self._at(job, job.started + job.target.spec.interval * jitter)
        self._next()

    async def _https(self, job: _Job) -> None:
        t = job.target
        spec = t.spec
        t0 = self.loop.time()
        outcome: Outcome
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(spec.timeout):
                sock = socket.socket(
                    socket.AF_INET6 if ":" in t.address else socket.AF_INET, socket.SOCK_STREAM
                )
                sock.setblocking(False)
                try:
                    await self.loop.sock_connect(sock, (t.address, t.port))
                except BaseException:
                    sock.close()
                    raise
                reader, writer = await asyncio.open_connection(
                    sock=sock, ssl=self._context(spec), server_hostname=_sni(t)
                )
                writer.write(job.request)
                buf = bytearray()
                while not _http_complete(buf, spec.expect_body is not None):
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    buf += chunk
            outcome, reason = judge_http(spec, bytes(buf), 1000 * (self.loop.time() - t0))
        except TimeoutError:
            outcome, reason = "timeout", f"https timeout after {spec.timeout:g} s"
        except ssl.SSLCertVerificationError as e:
            outcome, reason = "error", f"https error: certificate verify failed: {e.verify_message}"
        except (OSError, ssl.SSLError, EOFError) as e:
            outcome, reason = "error", f"https error: {getattr(e, 'strerror', None) or e}"
        finally:
            if writer is not None:
                writer.transport.abort()
        self._done(job, outcome, reason, self.loop.time() - t0)

    def _context(self, spec: ProbeSpec) -> ssl.SSLContext:
        key = (spec.tls_verify, spec.ca_file)
        ctx = self._tls.get(key)
        if ctx is None:
            ctx = ssl.create_default_context(cafile=spec.ca_file)
            if not spec.tls_verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            self._tls[key] = ctx
        return ctx

    # -- views -----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        cumulative = []
        n = 0
        for le, count in zip((*LATENCY_BUCKETS, math.inf), self.buckets, strict=True):
            n += count
            cumulative.append([le, n])
        return {
            "results": dict(self.results),
            "latency": {"buckets": cumulative, "sum": self.latency_sum, "count": n},
            "targets": self.targets,
            "flips": dict(self.flips),
        }

    @staticmethod
    def empty_stats() -> dict[str, Any]:
        """``stats()`` of a prober that has probed nothing."""
        return {
            "results": dict.fromkeys(OUTCOMES, 0),
            "latency": {"buckets": [[le, 0] for le in (*LATENCY_BUCKETS, math.inf)], "sum": 0.0,
                        "count": 0},
            "targets": 0,
            "flips": {"up": 0, "down": 0},
        }

    async def close(self) -> None:
        self._closed = True
        for job in list(self._jobs.values()):
            self._stop(job)
        self._waiting.clear()
        await asyncio.sleep(0)


def probe_settings(raw: Any, r: Reader) -> int:
    """``federation.probes: {concurrency: N}`` -> the bound on probes in flight."""
    d = r.mapping(raw, "federation.probes")
    r.known(d, "federation.probes", {"concurrency"})
    return r.integer(d.get("concurrency", DEFAULT_CONCURRENCY), "federation.probes.concurrency", 1, 65536)
