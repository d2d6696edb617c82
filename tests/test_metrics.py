"""``/metrics`` counts what the server did: queries by transport, responses by
RCODE, dropped packets, send errors, workers, and the federation, summed over
worker processes. Scraped from a real ``fedns serve --admin`` and read with
prometheus_client's own text parser."""

from __future__ import annotations

import struct
import time
import urllib.request

import pytest
from dnsclient import make, tcp, udp, udp_raw
from prometheus_client.parser import text_string_to_metric_families
from servers import RICH_ORIGIN, RICH_ZONE, FednsFactory, free_port


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_count_what_was_served(fedns_server: FednsFactory, workers: int) -> None:
    admin = f"127.0.0.1:{free_port()}"
    srv = fedns_server({RICH_ORIGIN: RICH_ZONE}, workers=workers, extra_args=("--admin", admin))
    url = f"http://{admin}"
    # The admin API comes up beside DNS (the control process imports aiohttp
    # only then): wait for it rather than race it.
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    # The start-up check's own queries, once every worker has reported them
    # (workers send their counters to the control process once a second).
    def counts() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {k: v for k, v in _scrape(url).items() if k[0].endswith("_total")}

    before = counts()
    while True:
        time.sleep(1.2)
        again = counts()
        if again == before:
            break
        before = again
    sent = {"udp": 0, "tcp": 0}
    for i in range(20):  # fresh sockets: with 2 workers the kernel spreads them
        assert udp(srv.addr, make(f"web.{RICH_ORIGIN}", "A", qid=i)).rcode() == 0
        sent["udp"] += 1
    for i in range(5):
        assert udp(srv.addr, make(f"nx{i}.{RICH_ORIGIN}", "A")).rcode() == 3
        sent["udp"] += 1
    for _ in range(2):
        assert udp(srv.addr, make("example.org.", "A")).rcode() == 5
        sent["udp"] += 1
    two_questions = struct.pack(">HHHHHH", 7, 0, 2, 0, 0, 0) + make("a.", "A").to_wire()[12:] * 2
    for _ in range(3):
        reply = udp_raw(srv.addr, two_questions)
        assert reply is not None and reply[3] & 0x0F == 1  # FORMERR
        sent["udp"] += 1
    response = make(f"web.{RICH_ORIGIN}", "A").to_wire()
    response = response[:2] + b"\x80" + response[3:]  # QR=1: dropped
    for _ in range(2):
        assert udp_raw(srv.addr, response, timeout=0.3) is None
        sent["udp"] += 1
    for _ in range(4):
        assert tcp(srv.addr, make(f"mail.{RICH_ORIGIN}", "MX")).rcode() == 0
        sent["tcp"] += 1
    added = {
        ("fedns_queries_total", (("transport", "udp"),)): sent["udp"],
        ("fedns_queries_total", (("transport", "tcp"),)): sent["tcp"],
        ("fedns_responses_total", (("rcode", "NOERROR"),)): 24,
        ("fedns_responses_total", (("rcode", "NXDOMAIN"),)): 5,
        ("fedns_responses_total", (("rcode", "REFUSED"),)): 2,
        ("fedns_responses_total", (("rcode", "FORMERR"),)): 3,
        ("fedns_dropped_queries_total", ()): 2,
        ("fedns_internal_errors_total", ()): 0,
        ("fedns_udp_send_errors_total", ()): 0,
        ("fedns_tcp_connections_total", ()): 4,
    }
    want = {k: before.get(k, 0) + v for k, v in added.items()}
    want[("fedns_workers", ())] = workers
    assert before[("fedns_internal_errors_total", ())] == 0
    assert before[("fedns_udp_send_errors_total", ())] == 0
    # Workers report their counters to the control process once a second.
    deadline = time.monotonic() + 10
    while True:
        got = _scrape(url)
        diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        if not diff or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not diff, diff
