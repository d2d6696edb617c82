"""Active health probes: TCP connect or HTTP GET against each endpoint.

Kubernetes readiness says what the kubelet sees from inside the cluster;
a probe from fedns says whether the endpoint answers from where fedns (and,
for a flat or gateway network, its clients) stand. An endpoint is healthy when
it is ready *and* its probe passes. Probes have hysteresis: ``fall``
consecutive failures mark an endpoint down, ``rise`` successes bring it back,
so one lost packet does not flap answers; with the defaults (0.5 s interval,
fall 2) a dead endpoint leaves answers in about a second, where cloud DNS
health checks take 30 s or more.

``ProbeState`` is the pure state machine; ``Prober`` runs one task per target
and reports flips through a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog

from ..config import NO_FILE, Reader
from .policy import bounded

log = structlog.get_logger("fedns.health")

ProbeKind = Literal["tcp", "http"]


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    kind: ProbeKind = "tcp"
    port: int | None = None  # None: the service's first port
    path: str = "/"
    interval: float = 0.5
    timeout: float = 0.4
    rise: int = 2
    fall: int = 2


@dataclass(frozen=True, slots=True)
class Target:
    address: str
    port: int
    kind: ProbeKind
    path: str = "/"


@dataclass(slots=True)
class ProbeState:
    """Hysteresis over probe results. Starts healthy: readiness is trusted until
    probes say otherwise, so a restart does not empty every answer."""

    rise: int
    fall: int
    healthy: bool = True
    streak: int = 0  # consecutive results disagreeing with ``healthy``
    since: float = field(default_factory=time.time)
    reason: str = "probe pending"

    def record(self, ok: bool, reason: str, now: float | None = None) -> bool:
        """Feed one result; True when the state flipped."""
        if ok == self.healthy:
            self.streak = 0
            self.reason = reason
            return False
        self.streak += 1
        if self.streak >= (self.rise if ok else self.fall):
            self.healthy = ok
            self.streak = 0
            self.since = time.time() if now is None else now
            self.reason = reason
            return True
        return False


async def probe_once(target: Target, timeout: float, session: Any = None) -> tuple[bool, str]:
    """One probe: (passed, reason)."""
    t0 = time.monotonic()
    try:
        if target.kind == "tcp":
            async with asyncio.timeout(timeout):
                _r, w = await asyncio.open_connection(target.address, target.port)
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()
            return True, f"tcp connect ok in {1000 * (time.monotonic() - t0):.0f} ms"
        import aiohttp

        host = f"[{target.address}]" if ":" in target.address else target.address
        url = f"http://{host}:{target.port}{target.path}"
        own = session is None
        s = session or aiohttp.ClientSession()
        try:
            async with s.get(
                url, timeout=aiohttp.ClientTimeout(total=timeout), allow_redirects=False
            ) as resp:
                ok = 200 <= resp.status < 400
                return ok, f"http {resp.status} in {1000 * (time.monotonic() - t0):.0f} ms"
        finally:
            if own:
                await s.close()
    except TimeoutError:
        return False, f"{target.kind} timeout after {timeout:.1f} s"
    except OSError as e:
        return False, f"{target.kind} error: {e.strerror or e}"
    except Exception as e:  # aiohttp client errors, bad responses
        return False, f"{target.kind} error: {type(e).__name__}: {e}"


class Prober:
    """Runs probes for a changing set of targets; calls ``on_flip(targets)``."""

    def __init__(self, on_flip: Callable[[set[Target]], None]) -> None:
        self.on_flip = on_flip
        self.states: dict[Target, ProbeState] = {}
        self._tasks: dict[Target, asyncio.Task[None]] = {}
        self._specs: dict[Target, ProbeSpec] = {}
        self._session: Any = None

    def result(self, target: Target) -> tuple[bool, str, float] | None:
        st = self.states.get(target)
        if st is None:
            return None
        return st.healthy, st.reason, st.since

    def set_targets(self, specs: Mapping[Target, ProbeSpec]) -> None:
        """Probe exactly these targets from now on."""
        for t in list(self._tasks):
            if t not in specs or specs[t] != self._specs.get(t):
                self._tasks.pop(t).cancel()
                self.states.pop(t, None)
                self._specs.pop(t, None)
        for t, spec in specs.items():
            if t not in self._tasks:
                self._specs[t] = spec
                self.states[t] = ProbeState(spec.rise, spec.fall)
                self._tasks[t] = asyncio.get_running_loop().create_task(
                    self._run(t, spec), name=f"fedns-probe-{t.address}:{t.port}"
                )

    async def _run(self, t: Target, spec: ProbeSpec) -> None:
        if t.kind == "http" and self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        while True:
            ok, reason = await probe_once(t, spec.timeout, self._session)
            st = self.states.get(t)
            if st is None:
                return
            if st.record(ok, reason):
                log.info("probe_flip", target=f"{t.kind}://{t.address}:{t.port}{t.path if t.kind == 'http' else ''}",
                         healthy=st.healthy, reason=reason)
                self.on_flip({t})
            await asyncio.sleep(spec.interval)

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def parse_probe(raw: Any, where: str, r: Reader = NO_FILE) -> ProbeSpec | None:
    """``{probe: tcp|http|none, port, path, interval, timeout, rise, fall}`` -> spec (None: off).

    Raises ``r.fail(key, problem)`` (a ConfigError) naming the offending key
    under ``where``; ``NO_FILE`` for the ``fedns.io/probe`` annotation, whose
    caller catches it."""
    if raw is None:
        return None
    if isinstance(raw, str):  # annotation shorthand: "tcp", "http", "http:8080/healthz", "none"
        kind, _, rest = raw.partition(":")
        raw = {"probe": kind}
        if rest:
            port_text, slash, path_text = rest.partition("/")
            raw["port"] = port_text
            if slash:
                raw["path"] = "/" + path_text
    if not isinstance(raw, dict):
        raise r.fail(where, "expected a mapping like {probe: tcp, port: 443}")
    r.known(raw, where, {"probe", "port", "path", "interval", "timeout", "rise", "fall"})
    kind = str(raw.get("probe", "tcp")).lower()
    if kind == "none":
        return None
    if kind not in ("tcp", "http"):
        raise r.fail(f"{where}.probe", f"{kind!r} is not one of tcp, http, none")

    def num(key: str, default: float, lo: float, hi: float, conv: Callable[[Any], float] = float) -> Any:
        return bounded(raw[key], f"{where}.{key}", conv, lo, hi, r) if key in raw else default

    port: int | None = num("port", 0, 1, 65535, int) if "port" in raw else None
    path = str(raw.get("path", "/"))
    if not path.startswith("/"):
        raise r.fail(f"{where}.path", f"{path!r} must start with /")
    spec = ProbeSpec(
        kind,  # type: ignore[arg-type]
        port,
        path,
        num("interval", 0.5, 0.1, 3600),
        num("timeout", 0.4, 0.05, 60),
        num("rise", 2, 1, 100, int),
        num("fall", 2, 1, 100, int),
    )
    if spec.timeout > spec.interval * 4:
        raise r.fail(f"{where}.timeout", f"{spec.timeout} s is far above the interval; lower it")
    return spec


def targets_for(spec: ProbeSpec, addresses: Iterable[str], ports: Iterable[int]) -> list[Target]:
    port = spec.port
    if port is None:
        port = next(iter(ports), None)
    if port is None:
        return []
    return [Target(a, port, spec.kind, spec.path) for a in addresses]
