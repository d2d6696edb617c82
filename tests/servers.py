"""Real server processes for tests: fedns itself and reference servers from apt.

Every server here is a separate process on a loopback port, started with its
own files in a temp dir and stopped at teardown. Tests then talk to it with an
independent client (dnspython, raw sockets), never by importing its code.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import yaml

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "zones" / "demo.yaml"
DATA = Path(__file__).resolve().parent / "data"
LOOPBACK = "127.0.0.1"

# The test zone with every record type and rule (the differential test's zone too).
# The federation zone of the routing/ECS tests: just SOA and NS, the names come from clusters.
FED_ORIGIN = "global.example.test."
FED_ZONE = f"""$ORIGIN {FED_ORIGIN}
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 1209600 30
@       IN NS  ns1
ns1     IN A   127.0.0.53
"""
RICH_ORIGIN = "rich.example.test."
RICH_ZONE = DATA / "rich.example.test.zone"
# CH-class answers are opt-in; the rich server configures both (the demo does not).
RICH_SETTINGS = {"server": {"version": "fedns-test-version", "identity": "fedns-test-1"}}

# Every server process started and not yet stopped; stopped at exit whatever happens.
RUNNING: list[ServerProcess] = []


@atexit.register
def _stop_all() -> None:
    for sp in list(RUNNING):
        sp.stop()


def free_port(host: str = LOOPBACK) -> int:
    """A port that is free for both UDP and TCP right now (the server binds both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((host, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((host, port))
                except OSError:
                    continue
                return int(port)
    raise OSError("no port free for both UDP and TCP")


def answers(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when something answers a DNS query on UDP and TCP at host:port."""
    q = dns.message.make_query(".", dns.rdatatype.SOA)
    try:
        dns.query.udp(q, host, port=port, timeout=timeout)
        dns.query.tcp(q, host, port=port, timeout=timeout)
    except (dns.exception.Timeout, OSError, EOFError):
        return False
    return True


@dataclass
class ServerProcess:
    """A DNS server subprocess on ``host:port`` whose stderr/stdout go to ``log``."""

    name: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    workdir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def addr(self) -> tuple[str, int]:
        return self.host, self.port

    def __iter__(self) -> Iterator[Any]:  # ``host, port = server``
        return iter(self.addr)

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait_ready(self, deadline_s: float = 15.0) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if not self.alive():
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before answering:\n"
                    + self.output()[-4000:]
                )
            if answers(self.host, self.port):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {deadline_s}s:\n" + self.output())

    def stop(self) -> None:
        if self.alive():
            # The process group: fedns --workers forks children, NSD forks too.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self in RUNNING:
            RUNNING.remove(self)


def _spawn(
    name: str,
    argv: list[str],
    workdir: Path,
    port: int,
    env: dict[str, str] | None = None,
    **extra: Any,
) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            start_new_session=True,  # own process group, so stop() reaches the workers
        )
    sp = ServerProcess(name, LOOPBACK, port, proc, log, workdir, dict(extra))
    RUNNING.append(sp)
    return sp


# -- fedns ----------------------------------------------------------------------

# The type of the ``fedns_server`` fixture (conftest.py): start a server, get it back running.
FednsFactory = Callable[..., "ServerProcess"]


def write_config(
    workdir: Path,
    zones: Mapping[str, str | Path],
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """A fedns YAML config in ``workdir``.

    ``zones`` maps an origin to either a zone file path or the master file text
    (written to ``<origin>zone`` beside the config). ``settings`` are extra
    top-level keys (``tcp``, ``server``, ``dns``...).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    entries = []
    for origin, src in zones.items():
        if isinstance(src, Path):
            path = src
        else:
            path = workdir / f"{origin.rstrip('.')}.zone"
            path.write_text(src)
        entries.append({"origin": origin, "file": str(path)})
    doc: dict[str, Any] = {"zones": entries}
    doc.update(settings or {})
    cfg = workdir / "fedns.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cfg


def fedns_argv(*args: str) -> list[str]:
    """The fedns command line, run by this interpreter (with ``fedns_env()``)."""
    return [sys.executable, "-m", "resolver.cli", *args]


def fedns_env(src: Path | None = None) -> dict[str, str]:
    """The environment for ``fedns_argv``: the resolver package of this checkout (or
    of the source tree ``src``, for before/after benchmarks), whatever is installed
    (an editable install may point at another clone)."""
    env = {**os.environ, "PYTHONPATH": str(src if src is not None else REPO)}
    # On a CI runner inside a pod, in_cluster: true would reach that cluster's API
    # server: tests talk to loopback only.
    for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "HTTPS_PROXY", "HTTP_PROXY",
              "https_proxy", "http_proxy"):
        env.pop(k, None)
    return env


def start_fedns(
    config: Path,
    workdir: Path,
    workers: int = 1,
    extra_args: tuple[str, ...] = (),
    ready: bool = True,
    src: Path | None = None,
) -> ServerProcess:
    """``fedns serve -c CONFIG --dns 127.0.0.1:PORT`` on a free port, answering on return
    (``src``: run the resolver package of that source tree instead of this checkout's)."""
    last: Exception | None = None
    for _ in range(3):  # another process may take the free port before we bind it
        port = free_port()
        argv = fedns_argv(
            "serve",
            "-c",
            str(config),
            "--dns",
            f"{LOOPBACK}:{port}",
            "--workers",
            str(workers),
            "--log-format",
            "console",
            *extra_args,
        )
        sp = _spawn("fedns", argv, workdir, port, env=fedns_env(src), config=config)
        if not ready:
            return sp
        try:
            sp.wait_ready()
        except RuntimeError as e:
            sp.stop()
            last = e
            if "cannot listen" in sp.output():
                continue
            raise
        if workers > 1:
            wait_sockets(port, workers)
        return sp
    raise RuntimeError(f"fedns could not bind a free port: {last}")


def udp_sockets_on(port: int) -> int:
    """How many UDP sockets are bound to ``port`` (from /proc/net/udp)."""
    n = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                local = line.split()[1]
                if int(local.rsplit(":", 1)[1], 16) == port:
                    n += 1
    return n


def wait_sockets(port: int, count: int, deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    while udp_sockets_on(port) < count and time.monotonic() < end:
        time.sleep(0.05)


# -- NSD ------------------------------------------------------------------------

NSD = shutil.which("nsd") or "/usr/sbin/nsd"


def start_nsd(workdir: Path, zones: Mapping[str, Path], extra_server: str = "") -> ServerProcess:
    """NSD in the foreground on a free loopback port, with every file in ``workdir``.

    Rate limiting off (``rrl-ratelimit: 0``) so a test's burst is answered, not
    slipped; ``minimal-responses: yes`` as the comparison baseline.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    last: Exception | None = None
    for _ in range(3):
        port = free_port()
        zone_cfg = "".join(
            f'zone:\n  name: "{origin}"\n  zonefile: "{path}"\n' for origin, path in zones.items()
        )
        conf = workdir / "nsd.conf"
        conf.write_text(
            f"""server:
  ip-address: {LOOPBACK}@{port}
  port: {port}
  server-count: 1
  username: ""
  chroot: ""
  database: ""
  zonesdir: "{workdir}"
  zonelistfile: "{workdir}/zone.list"
  xfrdfile: "{workdir}/xfrd.state"
  xfrdir: "{workdir}"
  pidfile: "{workdir}/nsd.pid"
  verbosity: 1
  do-ip6: no
  reuseport: no
  rrl-ratelimit: 0
  minimal-responses: yes
{extra_server}
remote-control:
  control-enable: no

{zone_cfg}"""
        )
        sp = _spawn("nsd", [NSD, "-d", "-c", str(conf)], workdir, port)
        try:
            sp.wait_ready()
            return sp
        except RuntimeError as e:
            last = e
            sp.stop()
    raise RuntimeError(f"nsd did not start: {last}")
