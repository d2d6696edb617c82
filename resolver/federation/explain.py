"""Why an answer is what it is: the decision trail for one (name, type, client).

Used by ``GET /v1/explain`` and ``fedns explain``. It calls the code the hot
path runs (``Router.route`` for the reply and its SCOPE, ``Locator.client``
and ``Router.decision`` for the trail; the table's entries) and renders the
reply with dnslib, so what it shows is what a client would get.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from typing import Any

from dnslib import QTYPE, DNSError, DNSRecord

from ..dns.answers import Table
from ..dns.ecs import ClientSubnet
from ..dns.entries import Entry
from ..dns.wire import REFUSED
from ..dns.zone import key_of
from .locality import Locator
from .router import Router


class ExplainError(ValueError):
    """Bad explain input; the message says what to send instead."""


def parse_subnet(text: str | None) -> ClientSubnet | None:
    if not text:
        return None
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ExplainError(f"subnet {text!r} is not a network like 10.1.2.0/24 or 2001:db8::/56") from None
    family = 1 if net.version == 4 else 2
    nbytes = (net.prefixlen + 7) // 8
    addr = net.network_address.packed[:nbytes]
    return ClientSubnet(family, net.prefixlen, addr, int(net.network_address))


def qtype_of(text: str | None) -> int:
    t = (text or "A").upper()
    num = t[4:] if t.startswith("TYPE") else t
    if num.isdigit() and int(num) <= 65535:
        return int(num)
    try:
        val = int(getattr(QTYPE, t))
    except (AttributeError, DNSError):  # dnslib raises DNSError for unknown names
        val = -1
    if not 0 <= val <= 65535:
        raise ExplainError(f"unknown record type {text!r}; use A, AAAA, SRV, TXT, ... or TYPEnnn")
    return val


def explain(table: Table, locator: Locator, name: str, qtype_text: str | None,
            subnet_text: str | None, source: str | None = None) -> dict[str, Any]:
    """The decision trail for ``name`` and type, for a client with ECS ``subnet_text``
    and/or source address ``source``, as the table and ``locator`` serve it now."""
    if not name:
        raise ExplainError("name is required, e.g. name=cart.shop.global.example.test")
    qname = name if name.endswith(".") else name + "."
    qtype = qtype_of(qtype_text)
    subnet = parse_subnet(subnet_text)
    out: dict[str, Any] = {"name": qname, "type": QTYPE.get(qtype), "time": time.time()}
    try:
        lname = key_of(qname)
    except Exception:
        raise ExplainError(f"{name!r} is not a valid domain name") from None
    node = table.nodes.get(lname)
    router = node.router if node is not None else None
    if router is not None and not isinstance(router, Router):
        raise TypeError(f"explain knows federation routers only, not {type(router).__name__}")
    client, placement = (router.locator if router is not None else locator).client(subnet, source)
    out["client"] = {
        "from": placement.basis if placement is not None else ("ecs" if subnet else "source address"),
        "subnet": subnet_text,
        "region": client.region,
        "zone": client.zone,
    }
    if router is not None and router.handles(qtype):
        plan = router.plan
        # The reply and its SCOPE from the very call the answer table makes per
        # query (placement, answer, scope); the decision again for its trail.
        entry, scope, _ = router.route(qtype, subnet, source)
        d = router.decision(client, qtype)
        out["source"] = "federation"
        out["service"] = {"namespace": plan.namespace, "name": plan.name, "zone": plan.zone}
        out["policy"] = {
            "kind": plan.policy.kind,
            "ttl": plan.policy.ttl,
            "max_answers": plan.policy.max_answers,
            "min_healthy_fraction": plan.policy.min_healthy_fraction,
            "fail_open": plan.policy.fail_open,
            "failover": list(plan.policy.failover),
            "weights": dict(plan.policy.weights),
        }
        out["locality"] = router.locator.describe(subnet, source)
        out["scope"] = scope
        out["depends_on"] = d.depends_on
        out["candidates"] = [
            {
                "cluster": c.cluster,
                "region": c.region,
                "zone": c.zone,
                "endpoint": c.name,
                "addresses": list(c.v4 + c.v6),
                "healthy": c.healthy,
                "health": c.health_reason,
                "since": c.since,
                "chosen": c in d.chosen,
            }
            for c in plan.candidates
        ]
        out["steps"] = list(d.steps)
    else:
        found = table.find(lname, qtype)
        if found is None:
            out["source"] = "none"
            out["steps"] = ["the name is in none of our zones: REFUSED"]
            # What ``Table.general`` sends (``wire.error_reply``): REFUSED, not
            # authoritative, no records and no ECS option, hence no SCOPE.
            out["scope"] = None
            out["depends_on"] = "nothing"
            out["rcode"] = REFUSED
            out["aa"] = False
            out["answer"] = []
            out["authority"] = []
            out["ttl"] = None
            return out
        entry = found
        out["source"] = "zone"
        out["scope"] = 0
        out["depends_on"] = "nothing"
        out["steps"] = ["records from the zone data: the answer does not depend on the client"]
    reply = DNSRecord.parse(_reply_bytes(entry, qname, qtype))
    out["rcode"] = reply.header.rcode
    out["aa"] = bool(reply.header.aa)
    out["answer"] = [str(rr) for rr in reply.rr]
    out["authority"] = [str(rr) for rr in reply.auth]
    out["ttl"] = min((rr.ttl for rr in reply.rr), default=None)
    return out


def _reply_bytes(entry: Entry, qname: str, qtype: int) -> bytes:
    q = DNSRecord.question(qname, QTYPE.get(qtype)).pack()
    question = q[12:]
    head = struct.pack(">HBB", 0, entry.flags1, entry.rcode) + entry.counts
    return head + question + entry.body(len(question) - 4)
