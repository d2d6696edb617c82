"""Sampled query logs (``log.query_sample``) from a real ``fedns serve --workers 2``.

With ``query_sample: 1`` every reply is one JSON line (event ``query``) with the
question, the client's network cut to /24 or /56 (from ECS, else the source
address), where the client was placed (for a federated name), the RCODE and
answer count as the client got them, the latency, whether a reply cache
answered, the transport and the worker. Each line is checked against the reply
dnspython received for that query; every line of the run's log is JSON.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
from dnsclient import make
from servers import FED_ORIGIN, FED_ZONE, fedns_argv, fedns_env, start_fedns, write_config

CART = f"cart.shop.{FED_ORIGIN}"
REGIONS = {"east": ("r-east", "z-east"), "west": ("r-west", "z-west"), "eu": ("r-eu", "z-eu")}
ADDRS = {"east": "127.1.0.1", "west": "127.2.0.1", "eu": "127.3.0.1"}
# Where clients are: the first rule holds the loopback sources the test sends from.
LOCALITIES = {"east": "127.0.0.0/8", "west": "198.51.100.0/24", "eu": "2001:db8:e0::/48"}


def settings(sample: float) -> dict[str, Any]:
    return {
        "federation": {
            "zone": FED_ORIGIN,
            "clusters": [{"name": c, "region": r, "zone": z} for c, (r, z) in REGIONS.items()],
            "localities": [
                {"cidr": cidr, "region": REGIONS[c][0], "zone": REGIONS[c][1]}
                for c, cidr in LOCALITIES.items()
            ],
            "services": [
                {
                    "namespace": "shop",
                    "name": "cart",
                    "ports": [{"name": "https", "port": 443}],
                    "endpoints": {c: [{"addresses": [a]}] for c, a in ADDRS.items()},
                }
            ],
        },
        "log": {"query_sample": sample},
    }


def ecs(cidr: str) -> dns.edns.ECSOption:
    net = ipaddress.ip_network(cidr, strict=False)
    return dns.edns.ECSOption(str(cidr.split("/")[0]), net.prefixlen)


def answers(reply: dns.message.Message) -> int:
    return sum(len(rrset) for rrset in reply.answer)


def test_every_sampled_query_is_a_json_line_with_its_fields(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {FED_ORIGIN: FED_ZONE}, settings(1))
    srv = start_fedns(cfg, tmp_path, workers=2, extra_args=("--log-format", "json"))
    host, port = srv.addr
    sent: list[dict[str, Any]] = []  # what each line must say, from the reply received

    def ask(q: dns.message.Message, want: dict[str, Any], tcp: bool = False,
            sock: socket.socket | None = None) -> dns.message.Message:
        if tcp:
            r = dns.query.tcp(q, host, port=port, timeout=3)
        else:
            r = dns.query.udp(q, host, port=port, timeout=3, sock=sock)
        question = q.question[0]
        sent.append({
            "name": question.name.to_text().lower(), "type": dns.rdatatype.to_text(question.rdtype),
            "rcode": dns.rcode.to_text(r.rcode()), "answers": answers(r),
            "transport": "tcp" if tcp else "udp", **want,
        })  # fmt: skip
        return r

    # A federated name: placed by the source address (no ECS), by an IPv4 ECS subnet
    # longer than /24, by an IPv6 one longer than /56; over TCP too.
    r = ask(make(CART, "A"), {"subnet": "127.0.0.0/24", "region": "r-east", "zone": "z-east"})
    assert [rd.to_text() for rr in r.answer for rd in rr] == [ADDRS["east"]]
    r = ask(make(CART, "A", edns=0, options=[ecs("198.51.100.7/32")]),
            {"subnet": "198.51.100.0/24", "region": "r-west", "zone": "z-west"})
    assert [rd.to_text() for rr in r.answer for rd in rr] == [ADDRS["west"]]
    ask(make(CART, "AAAA", edns=0, options=[ecs("2001:db8:e0:1:2::/64")]),
        {"subnet": "2001:db8:e0::/56", "region": "r-eu", "zone": "z-eu"})
    ask(make(CART, "A"), {"subnet": "127.0.0.0/24", "region": "r-east"}, tcp=True)
    # A zone record, twice on one socket (one worker): the second reply is the first's.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.5", 0))
        for cached in (False, True):
            ask(make(f"ns1.{FED_ORIGIN}", "A"), {"subnet": "127.0.0.0/24", "cached": cached}, sock=s)
    ask(make(f"nothere.{FED_ORIGIN}", "TXT"), {"subnet": "127.0.0.0/24"})
    ask(make("example.org.", "A", edns=0, options=[ecs("203.0.113.77/32")]),
        {"subnet": "203.0.113.0/24"})
    srv.stop()

    lines = srv.output().splitlines()
    events = [json.loads(line) for line in lines]  # every line of the run is JSON
    logged = [e for e in events if e["event"] == "query" and e.get("name") != "."]
    assert len(logged) == len(sent), (logged, sent)
    fields = {"name", "type", "subnet", "rcode", "answers", "latency_us", "cached", "transport",
              "worker"}
    for want in sent:
        match = [e for e in logged if all(e.get(k) == v for k, v in want.items())]
        assert len(match) >= 1, (want, logged)
        e = match[0]
        logged.remove(e)
        assert fields <= e.keys(), e
        assert e["level"] == "info" and e["timestamp"]
        assert e["worker"] in (1, 2)
        assert isinstance(e["latency_us"], int | float) and e["latency_us"] > 0
        if "region" not in want:
            assert "region" not in e and "zone" not in e, e  # not placed
    # A client's address is never logged whole (nor the ECS one).
    queries = [json.dumps(e) for e in events if e["event"] == "query"]
    for addr in ("127.0.0.1", "127.0.0.5", "198.51.100.7", "203.0.113.77", "2001:db8:e0:1:"):
        assert not [q for q in queries if addr in q], addr


def test_query_sample_is_checked(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, {FED_ORIGIN: FED_ZONE}, {"log": {"query_sample": 2}})
    out = subprocess.run(
        fedns_argv("check", "-c", str(cfg)), env=fedns_env(), capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert out.returncode != 0
    assert "log.query_sample: 2 is out of range 0.0-1.0" in out.stderr + out.stdout
