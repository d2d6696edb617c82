"""--workers 2 with a federation whose first sync is one big plans message.

The control process pipes ``ServicePlan`` batches to the serving workers. At
a few thousand endpoints one batch is megabytes, far more than a socket
buffer: the pipe must carry it whole (a regression: uvloop's ``add_reader``
had made both ends non-blocking, so ``Connection.send``/``recv`` failed half
way, the workers died and were respawned until fedns gave up).

A real fedns watches two fake API servers; every worker must then answer
every sampled name with the addresses the fake servers hold (queried from
many source ports, so SO_REUSEPORT reaches every worker).
"""

from __future__ import annotations

import socket
from pathlib import Path

import dns.message
import dns.rdatatype
from fakekube import ThreadedFakeKubes, endpoint, federation_config
from servers import start_fedns, udp_sockets_on, write_config

ORIGIN = "global.example.test."
ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 1209600 30
@       IN NS  ns1
ns1     IN A   127.0.0.53
"""
SERVICES, ENDPOINTS = 1000, 5
CLUSTERS = {"east": 1, "west": 2}


def addresses(cluster: str, s: int) -> list[str]:
    c = CLUSTERS[cluster]
    return [f"127.{c}.{s // 50}.{(s % 50) * ENDPOINTS + e + 1}" for e in range(ENDPOINTS)]


def fill(fakes: ThreadedFakeKubes, cluster: str) -> None:
    kube = fakes[cluster]
    for s in range(SERVICES):
        kube.put_service("shop", f"svc{s}")
        eps = [endpoint(a, pod=f"svc{s}-{i}") for i, a in enumerate(addresses(cluster, s))]
        kube.put_slice("shop", f"svc{s}-a", f"svc{s}", eps)


def ask(port: int, name: str, timeout: float = 20.0) -> frozenset[str]:
    """A addresses of ``name`` from a fresh socket (a new source port each time)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(dns.message.make_query(name, "A").to_wire(), ("127.0.0.1", port))
        r = dns.message.from_wire(s.recv(65535))
    return frozenset(rd.to_text() for rr in r.answer if rr.rdtype == dns.rdatatype.A for rd in rr)


def test_workers_take_a_first_sync_bigger_than_the_pipe(tmp_path: Path) -> None:
    with ThreadedFakeKubes(list(CLUSTERS), bookmark_interval=60.0) as fakes:
        for cluster in CLUSTERS:
            fakes.call(fill, fakes, cluster)
        fed = federation_config(fakes.kubes, tmp_path)
        # startup_wait 60: a query for a federated name is held until the first sync
        # (a worker busy building its table answers when done), so the first answer
        # each worker gives is the synced one.
        cfg = write_config(
            tmp_path, {ORIGIN: ZONE}, {"federation": fed, "dns": {"startup_wait": 60}}
        )
        sp = start_fedns(cfg, tmp_path, workers=2)
        try:
            assert udp_sockets_on(sp.port) == 2
            for s in range(0, SERVICES, 97):
                for cluster in CLUSTERS:
                    name = f"{cluster}.svc{s}.shop.{ORIGIN}"
                    for _ in range(12):  # 12 source ports: both workers, but for 2**-11
                        assert ask(sp.port, name) == frozenset(addresses(cluster, s)), name
            assert sp.alive()
            assert "worker_died" not in sp.output(), sp.output()[-3000:]
        finally:
            sp.stop()
