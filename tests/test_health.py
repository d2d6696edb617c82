"""Active health probes: hysteresis (pure), and a real server dropping an endpoint whose
port stops answering, then taking it back, over real sockets."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnsclient import make, udp
from servers import FednsFactory

from resolver.federation.health import ProbeSpec, ProbeState, Target, parse_probe, targets_for

ZONE = """$ORIGIN fed.example.test.
$TTL 60
@   IN SOA ns1 hostmaster 1 3600 600 86400 30
    IN NS  ns1
ns1 IN A   127.0.0.53
"""


def test_hysteresis_needs_fall_failures_and_rise_successes() -> None:
    st = ProbeState(rise=2, fall=3)
    assert st.healthy
    assert not st.record(False, "refused", now=1.0)
    assert not st.record(False, "refused", now=2.0)
    assert st.record(False, "refused", now=3.0)  # third failure flips
    assert not st.healthy and st.since == 3.0
    assert not st.record(True, "ok", now=4.0)
    assert not st.record(False, "refused", now=5.0)  # a failure resets the rise streak
    assert not st.record(True, "ok", now=6.0)
    assert st.record(True, "ok", now=7.0)
    assert st.healthy and st.since == 7.0


@pytest.mark.parametrize(
    ("raw", "spec"),
    [
        ("tcp", ProbeSpec("tcp")),
        ("http:8080/healthz", ProbeSpec("http", 8080, "/healthz")),
        ({"probe": "http", "path": "/ready", "fall": 3}, ProbeSpec("http", None, "/ready", fall=3)),
        ("none", None),
    ],
)
def test_parse_probe(raw: object, spec: ProbeSpec | None) -> None:
    assert parse_probe(raw, "federation.health") == spec


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"probe": "icmp"}, "federation.health.probe: 'icmp' is not one of tcp, http, none"),
        ({"probe": "tcp", "port": 70000}, "federation.health.port: 70000 is out of range"),
        ({"probe": "http", "path": "healthz"}, "federation.health.path: 'healthz' must start with /"),
        ({"probe": "tcp", "every": 1}, "federation.health.every: unknown key"),
    ],
)
def test_parse_probe_errors(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_probe(raw, "federation.health")


def test_targets_default_to_the_first_service_port() -> None:
    assert targets_for(ProbeSpec("tcp"), ["127.1.0.1"], [443, 80]) == [Target("127.1.0.1", 443, "tcp")]
    assert targets_for(ProbeSpec("tcp", 8443), ["127.1.0.1"], [443]) == [Target("127.1.0.1", 8443, "tcp")]
    assert targets_for(ProbeSpec("tcp"), ["127.1.0.1"], []) == []


class Listener:
    """A TCP port that accepts (up) or is closed (down), on one loopback address."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.sock: socket.socket | None = None
        self.port = 0

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        self.port = s.getsockname()[1]
        s.listen(64)
        self.sock = s

        def accept() -> None:
            while True:
                try:
                    c, _ = s.accept()
                except OSError:
                    return
                c.close()

        threading.Thread(target=accept, daemon=True).start()

    def down(self) -> None:
        if self.sock is not None:
            self.sock.shutdown(socket.SHUT_RDWR)
            self.sock.close()
            self.sock = None


@pytest.fixture
def listener() -> Iterator[Listener]:
    lis = Listener("127.1.0.1")
    lis.up()
    yield lis
    lis.down()


def _answer(addr: tuple[str, int]) -> set[str]:
    r = udp(addr, make("api.team.fed.example.test.", "A"))
    return {rd.to_text() for rrset in r.answer for rd in rrset}


def _until(addr: tuple[str, int], want: set[str], deadline_s: float = 10.0) -> None:
    end = time.monotonic() + deadline_s
    got: set[str] = set()
    while time.monotonic() < end:
        got = _answer(addr)
        if got == want:
            return
        time.sleep(0.05)
    raise AssertionError(f"answer stayed {sorted(got)}, wanted {sorted(want)}")


def test_probe_takes_a_dead_endpoint_out_and_back(
    fedns_server: FednsFactory, listener: Listener, tmp_path: Path
) -> None:
    # Two ready endpoints; only 127.1.0.1 has something listening on the service port.
    settings = {
        "federation": {
            "zone": "fed.example.test.",
            "clusters": [{"name": "east", "region": "r1"}, {"name": "west", "region": "r2"}],
            "defaults": {"policy": "all"},
            "health": {"probe": "tcp", "interval": 0.1, "timeout": 0.2, "rise": 2, "fall": 2},
            "services": [
                {
                    "namespace": "team",
                    "name": "api",
                    "ports": [{"name": "http", "port": listener.port, "protocol": "TCP"}],
                    "endpoints": {
                        "east": [{"addresses": ["127.1.0.1"]}],
                        "west": [{"addresses": ["127.2.0.1"]}],
                    },
                }
            ],
        }
    }
    srv = fedns_server({"fed.example.test.": ZONE}, settings)
    _until(srv.addr, {"127.1.0.1"})  # 127.2.0.1 refuses the port: probed out
    listener.down()
    # Nothing passes now: fail-open answers with every endpoint rather than none.
    _until(srv.addr, {"127.1.0.1", "127.2.0.1"})
    listener.up()
    _until(srv.addr, {"127.1.0.1"})
