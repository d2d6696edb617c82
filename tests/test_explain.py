"""The explain API (``GET /v1/explain``) and ``fedns explain --server``, against a live fedns.

fedns runs with ``--admin`` and takes its services from fake Kubernetes API
servers (the routing test's world). For each question the decision trail must
agree with what a DNS query with the same ECS subnet gets from the same
process at the same time: the same records, TTL and SCOPE; the locality rule
is the one the config maps the subnet to; every candidate endpoint is listed
with its health, the reason and when it last changed; a readiness flip shows
up in the trail. Bad input gets HTTP 400 with a message that says what to
send; the CLI prints the same trail and fails with that message.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import dns.message
import dns.rdatatype
from servers import FednsFactory, fedns_argv, fedns_env
from test_routing import CLIENT, LOCALITIES, Ep, Svc, World, cart, scope_of, three, until, world

Record = tuple[str, int, str, str]


def records_of(msg: dns.message.Message) -> set[Record]:
    return {
        (
            rrset.name.to_text().lower(),
            rrset.ttl,
            dns.rdatatype.to_text(rrset.rdtype),
            rd.to_text().lower(),
        )
        for rrset in msg.answer
        for rd in rrset
    }


def records_from_text(lines: list[str]) -> set[Record]:
    """Master-file lines (``name ttl class type rdata``) as explain prints them."""
    out = set()
    for line in lines:
        name, ttl, _cls, rtype, rdata = line.split(None, 4)
        out.add((name.lower(), int(ttl), rtype, " ".join(rdata.split()).lower()))
    return out


async def explain(w: World, **params: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{w.admin}/v1/explain", params=params) as r:
        body = await r.text()
    try:
        return r.status, json.loads(body)
    except ValueError:
        return r.status, {"error": f"not JSON: {body[:300]!r}"}


def rule_for(subnet: str) -> str:
    """The locality rule the config maps ``subnet`` to (longest prefix), computed here."""
    net = ipaddress.ip_network(subnet)
    hits = [c for c in LOCALITIES if net.subnet_of(ipaddress.ip_network(c))]  # type: ignore[arg-type]
    return max(hits, key=lambda c: ipaddress.ip_network(c).prefixlen)


async def consistent(w: World, name: str, qtype: str, subnet: str) -> dict[str, Any]:
    """Explain and a DNS query for the same question agree; the explain data."""
    status, data = await explain(w, name=name, type=qtype, subnet=subnet)
    assert status == 200, data
    r = await w.query(name, qtype, subnet)
    assert data["rcode"] == r.rcode()
    assert records_from_text(data["answer"]) == records_of(r), (data["answer"], r.answer)
    assert data["ttl"] == (min(rr.ttl for rr in r.answer) if r.answer else None)
    assert data["scope"] == scope_of(r)
    return data


async def test_explain_agrees_with_dns_and_follows_health(
    fedns_server: FednsFactory, tmp_path: Path
) -> None:
    svc = cart()
    ads = three("ads", 20)
    pol = {"shop/ads": {"policy": "weighted", "weights": {"east": 3, "west": 1, "eu": 1}}}
    async with world(fedns_server, tmp_path, [svc, ads], pol) as w:
        subnet = CLIENT["us-east-1a"]
        data = await consistent(w, svc.fqdn, "A", subnet)
        # The locality trail: the rule the config maps the subnet to, and the scope.
        loc = data["locality"]
        assert loc["rule"]["cidr"] == rule_for(subnet)
        assert (loc["region"], loc["zone"]) == LOCALITIES[rule_for(subnet)]
        assert loc["scope"] == data["scope"] == 16
        assert data["policy"]["kind"] == "locality" and data["policy"]["ttl"] == 7
        # Every endpoint of every cluster is a candidate, with its health and when it changed.
        cands = {(c["cluster"], c["endpoint"]): c for c in data["candidates"]}
        assert set(cands) == {(cl, e.host) for cl, eps in svc.endpoints.items() for e in eps}
        now = time.time()
        for c in cands.values():
            assert c["healthy"] is True and c["health"] == "ready"
            assert now - 120 < c["since"] <= now + 1
        chosen = {k for k, c in cands.items() if c["chosen"]}
        assert chosen == {("east", "cart-a")}
        assert data["steps"] and any("us-east-1a" in s for s in data["steps"])
        for qtype in ("AAAA", "SRV"):
            name = svc.fqdn if qtype == "AAAA" else f"_https._tcp.{svc.fqdn}"
            await consistent(w, name, qtype, subnet)

        # A readiness flip shows in the trail: the endpoint, its reason, a later time, the step.
        before = cands[("east", "cart-a")]["since"]
        w.set_ready("cart", "east", False, {"cart-a"})
        await until(
            lambda: w.addrs("cart", subnet), frozenset({"127.1.0.2"}), "failover to us-east-1b"
        )
        data = await consistent(w, svc.fqdn, "A", subnet)
        cands = {(c["cluster"], c["endpoint"]): c for c in data["candidates"]}
        flipped = cands[("east", "cart-a")]
        assert flipped["healthy"] is False and "not ready" in flipped["health"]
        assert flipped["since"] > before and not flipped["chosen"]
        assert cands[("east", "cart-b")]["chosen"]
        assert any("no healthy endpoint" in s for s in data["steps"]), data["steps"]

        # Weighted: the scope is the client's subnet, and the pick matches DNS.
        v6 = "2001:db8:0:100::/56"
        data = await consistent(w, ads.fqdn, "A", v6)
        assert data["depends_on"] == "subnet" and data["scope"] == 56
        assert data["policy"]["weights"] == {"east": 3, "west": 1, "eu": 1}

        # A zone name: from the zone data, scope 0.
        data = await consistent(w, f"ns1.{svc.fqdn.split('.', 2)[2]}", "A", subnet)
        assert data["source"] == "zone" and data["scope"] == 0

        # The CLI against the same server prints the same trail.
        out = await run_cli(
            "explain", svc.fqdn, "--type", "A", "--subnet", subnet, "--server", w.admin, "--json"
        )
        assert out[0] == 0, out
        cli = json.loads(out[1])
        _, http = await explain(w, name=svc.fqdn, type="A", subnet=subnet)
        for key in ("answer", "scope", "ttl", "locality", "steps", "policy", "rcode"):
            assert cli[key] == http[key], key
        code, text, _ = await run_cli("explain", svc.fqdn, "--subnet", subnet, "--server", w.admin)
        assert code == 0
        assert "scope: 16" in text and "127.1.0.2" in text and "not ready" in text

        # No ECS (behind CoreDNS): the asking resolver's address places the client.
        out = await run_cli(
            "explain", svc.fqdn, "--source", "127.0.0.1", "--server", w.admin, "--json"
        )
        assert out[0] == 0, out
        cli = json.loads(out[1])
        _, http = await explain(w, name=svc.fqdn, type="A", source="127.0.0.1")
        for key in ("answer", "scope", "locality", "steps"):
            assert cli[key] == http[key], key
        assert cli["locality"]["from"] == "source", cli["locality"]


BAD = [
    ({"type": "A"}, "name"),
    ({"name": "", "type": "A"}, "name"),
    ({"name": "cart.shop.global.example.test", "type": "BOGUS"}, "type"),
    ({"name": "cart.shop.global.example.test", "type": "TYPE70000"}, "type"),
    ({"name": "cart.shop.global.example.test", "subnet": "10.1.2.0/33"}, "subnet"),
    ({"name": "cart.shop.global.example.test", "subnet": "not-a-net"}, "subnet"),
    ({"name": "a..b.global.example.test"}, "name"),
]


async def test_explain_rejects_bad_input(fedns_server: FednsFactory, tmp_path: Path) -> None:
    svc = Svc("shop", "cart", {"east": [Ep("a", "127.1.0.1", "us-east-1a")]})
    async with world(fedns_server, tmp_path, [svc]) as w:
        for params, needle in BAD:
            status, data = await explain(w, **params)
            assert status == 400, (params, data)
            assert needle in data["error"].lower(), (params, data)
            if params.get("name"):
                args = ["explain", params["name"], "--server", w.admin]
                args += ["--type", params["type"]] if "type" in params else []
                args += ["--subnet", params["subnet"]] if "subnet" in params else []
                code, out, err = await run_cli(*args)
                assert code != 0 and not out and data["error"] in err, (params, err)


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *fedns_argv(*args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=fedns_env(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()
