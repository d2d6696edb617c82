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

import dns.exception
import dns.name
import dns.rdatatype
from dnslib import DNSRecord

from ..dns.answers import Table
from ..dns.ecs import ClientSubnet
from ..dns.entries import Entry
from .locality import Locator
from .policy import Candidate
from .router import Router

_AXFR, _IXFR, _OPT = 252, 251, 41


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
    """A record type: a mnemonic (any case), ``TYPEnnn`` (RFC 3597) or a number.

    Every value 0-65535 is a type DNS can be asked about, known or not."""
    t = (text or "A").strip()
    if t.isdigit():
        t = f"TYPE{t}"
    try:
        return int(dns.rdatatype.from_text(t))
    except (dns.exception.DNSException, ValueError):
        raise ExplainError(
            f"unknown record type {_shown(t)}; use A, AAAA, SRV, TXT, ... or TYPEnnn (0-65535)"
        ) from None


def type_text(qtype: int) -> str:
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))  # the mnemonic, else TYPEnnn


def parse_name(text: str) -> dns.name.Name:
    """A domain name as a resolver would ask it, or ExplainError saying what is wrong.

    Presentation format: octets that are not printable ASCII are written
    ``\\DDD``; a raw control byte or space (``%00`` in a URL) is refused, as is
    an empty label, a label over 63 octets or a name over 255 (RFC 1035 2.3.4)."""
    if not text:
        raise ExplainError("name is required, e.g. name=cart.shop.global.example.test")
    bad = next((ch for ch in text if ord(ch) < 0x21 or ord(ch) == 0x7F), None)
    if bad is not None:
        raise ExplainError(
            f"name {_shown(text)} has the control character or space {bad!r}; "
            "write such an octet as \\DDD (e.g. \\000)"
        )
    try:
        return dns.name.from_text(text)
    except dns.name.EmptyLabel:
        why = "has an empty label (two dots in a row, or a leading dot)"
    except dns.name.LabelTooLong:
        why = "has a label longer than 63 octets"
    except dns.name.NameTooLong:
        why = "is longer than 255 octets"
    except (dns.exception.DNSException, UnicodeError, ValueError) as e:
        why = f"is not a domain name ({e})"
    raise ExplainError(f"name {_shown(text)} {why}")


def _shown(text: str, limit: int = 80) -> str:
    """``text`` for an error message: quoted, and cut short (the input may be long)."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def explain(table: Table, locator: Locator, name: str, qtype_text: str | None,
            subnet_text: str | None, source: str | None = None) -> dict[str, Any]:
    """The decision trail for ``name`` and type, for a client with ECS ``subnet_text``
    and/or source address ``source``, as the table and ``locator`` serve it now."""
    parsed = parse_name(name)
    qname = parsed.to_text()
    qtype = qtype_of(qtype_text)
    subnet = parse_subnet(subnet_text)
    if source:
        try:
            ipaddress.ip_address(source)
        except ValueError:
            raise ExplainError(f"source {_shown(source)} is not an IP address like 10.244.1.7") from None
    out: dict[str, Any] = {"name": qname, "type": type_text(qtype), "time": time.time()}
    wire_name = parsed.to_wire()
    assert wire_name is not None  # None only when writing to a file
    lname = wire_name.lower()  # the table's key (``zone.key_of``): wire format, ASCII lowercased
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
            "flap_window": plan.policy.flap_window,
            "ttl_unstable": plan.policy.unstable_ttl,
        }
        # Health-aware TTL: what is served now, and why.
        out["ttl_now"] = {
            "served": plan.ttl,
            "normal": plan.policy.ttl,
            "unstable": bool(plan.unstable_until),
            "answer_changed": plan.changed or None,
            "unstable_until": plan.unstable_until or None,
        }
        out["probe"] = plan.probe.describe()
        out["problems"] = list(plan.problems)
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
                "inputs": health_inputs(c, plan.probe.spec is not None),
                "chosen": c in d.chosen,
            }
            for c in plan.candidates
        ]
        out["steps"] = list(d.steps)
    else:
        found = table.find(lname, qtype)
        # Whatever the table's own reply is: the zone data does not depend on the
        # client, so this is the answer DNS gives, for any type (RFC 3597),
        # including the ones refused outright.
        reply_wire = table.general(_query(wire_name, qtype), True, None)
        if found is None:
            out["source"] = "none"
            out["steps"] = ["the name is in none of our zones: REFUSED"]
            # No records and no ECS option, hence no SCOPE.
            out["scope"] = None
            out["depends_on"] = "nothing"
        else:
            out["source"] = "zone"
            out["scope"] = 0
            out["depends_on"] = "nothing"
            out["steps"] = ["records from the zone data: the answer does not depend on the client"]
            if qtype in (_AXFR, _IXFR):
                out["steps"].append("zone transfers (AXFR, IXFR) are not offered: REFUSED")
            elif qtype == _OPT:
                out["steps"].append("OPT is not a question type (RFC 6891 6.1.1): FORMERR")
        if reply_wire:
            _render(out, reply_wire)
            if qtype in (_AXFR, _IXFR, _OPT):
                out["scope"] = None  # an error reply: no ECS option
            return out
        if found is None:  # held for the first sync: not answered yet
            out.update(rcode=None, aa=None, answer=[], authority=[], ttl=None)
            return out
        entry = found
    _render(out, _reply_bytes(entry, wire_name, qtype))
    return out


def health_inputs(c: Candidate, probed: bool) -> list[dict[str, Any]]:
    """The inputs of a candidate's effective health (ready AND probe up AND its
    cluster kept), each with its value, whether it passes, since when, and why."""
    ready = c.condition == "ready"
    out: list[dict[str, Any]] = [
        {
            "input": "ready",
            "value": c.condition,
            "ok": ready,
            "since": c.ready_since,
            "reason": "its ready condition (EndpointSlice; the config for a static cluster)",
        }
    ]
    pv = c.probe
    if pv is not None:
        out.append({"input": "probe", "value": "up" if pv.up else "down", "ok": pv.up,
                    "since": pv.since, "reason": pv.reason})
    else:
        why = "no probe for this service" if not probed else "no probe target (no port)"
        out.append({"input": "probe", "value": "off", "ok": True, "since": None, "reason": why})
    out.append(
        {
            "input": "cluster",
            "value": "stale" if c.stale else "live",
            "ok": True,
            "since": c.stale_since,
            "reason": "no contact past stale_after; stale_policy serve keeps its last-known "
            "endpoints" if c.stale else "its data is current (stale_policy drop would leave "
            "a stale cluster out)",
        }
    )
    return out


def _render(out: dict[str, Any], reply_wire: bytes) -> None:
    reply = DNSRecord.parse(reply_wire)
    out["rcode"] = reply.header.rcode
    out["aa"] = bool(reply.header.aa)
    out["answer"] = [str(rr) for rr in reply.rr]
    out["authority"] = [str(rr) for rr in reply.auth]
    out["ttl"] = min((rr.ttl for rr in reply.rr), default=None)


def _query(wire_name: bytes, qtype: int) -> bytes:
    """A query as an authoritative server is asked: ID 0, no RD, no OPT, class IN."""
    return struct.pack(">6H", 0, 0, 1, 0, 0, 0) + wire_name + struct.pack(">HH", qtype, 1)


def _reply_bytes(entry: Entry, wire_name: bytes, qtype: int) -> bytes:
    question = wire_name + struct.pack(">HH", qtype, 1)
    head = struct.pack(">HBB", 0, entry.flags1, entry.rcode) + entry.counts
    return head + question + entry.body(len(question) - 4)
