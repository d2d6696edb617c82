"""Unit tests of resolver/federation/plan.py and the record side of router.py.

``plan_from_snapshot`` is fed registry snapshots built from model.py's types;
``static_records`` is checked against the naming scheme router.py documents
(``<svc>.<ns>.Z``, ``<cluster>.<svc>.<ns>.Z``, ``<host>.<cluster>.<svc>.<ns>.Z``,
``_<port>._<proto>.<svc>.<ns>.Z``), with names and keys derived by dnspython;
``Publisher.apply`` runs on a real ``resolver.dns.answers.Table`` and the table
is asked with dnspython-built queries through ``Table.respond``. No sockets,
no processes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.zone
import pytest

from resolver.dns.answers import Table
from resolver.dns.wire import T_A, T_AAAA, T_SRV
from resolver.dns.zone import Lazy, load_zone_file
from resolver.federation.locality import Locator
from resolver.federation.model import (
    Cluster,
    ClusterService,
    Endpoint,
    FederatedService,
    FrozenMap,
    Port,
    ServiceKey,
)
from resolver.federation.plan import PlanUpdate, ServicePlan, plan_from_snapshot
from resolver.federation.policy import Policy
from resolver.federation.router import Publisher, static_records

FED = "fed.example.test."
EAST = Cluster("east", region="us-east", zone="us-east-1a", weight=300)
WEST = Cluster("west", region="us-west", zone="us-west-2a")
KEY = ServiceKey("Prod", "Web")


def k(name: str) -> bytes:
    return dns.name.from_text(name).canonicalize().to_wire()


def dashed(address: str) -> str:
    """An address as a DNS label: its canonical text with dashes for dots and colons."""
    return str(ipaddress.ip_address(address)).replace(".", "-").replace(":", "-")


def snapshot(*per_cluster: ClusterService, key: ServiceKey = KEY) -> FederatedService:
    return FederatedService(key, per_cluster)


def service(
    cluster: Cluster,
    *endpoints: Endpoint,
    ports: tuple[Port, ...] = (),
    stale: bool = False,
    annotations: dict[str, str] | None = None,
    key: ServiceKey = KEY,
) -> ClusterService:
    return ClusterService(cluster, key, ports, endpoints, FrozenMap(annotations or {}), stale)


# -- ports --------------------------------------------------------------------------


def test_ports_with_valid_labels_only() -> None:
    ports = (
        Port("http", 80, "TCP"),
        Port("", 8080, "TCP"),  # unnamed: no SRV name
        Port("HTTPS", 443, "TCP"),
        Port("dns", 53, "UDP"),
        Port("dns", 53, "TCP"),
        Port("sip", 5060, "SCTP"),
        Port("bad name", 1, "TCP"),
        Port("-lead", 2, "TCP"),
        Port("trail-", 3, "TCP"),
        Port("a.b", 4, "TCP"),
        Port("x" * 64, 5, "TCP"),
    )
    plan = plan_from_snapshot(FED, snapshot(service(EAST, ports=ports)), Policy())
    assert sorted((p.name, p.protocol, p.port) for p in plan.ports) == [
        ("dns", "tcp", 53),
        ("dns", "udp", 53),
        ("http", "tcp", 80),
        ("https", "tcp", 443),
        ("sip", "sctp", 5060),
    ]
    for p in plan.ports:  # RFC 2782 owner names: _Service._Proto.Name
        owner = dns.name.from_text(f"_{p.name}._{p.protocol}.{plan.base}")
        assert owner.labels[:2] == (f"_{p.name}".encode(), f"_{p.protocol}".encode())


def test_a_port_named_in_several_clusters_is_one_plan_port() -> None:
    fs = snapshot(
        service(EAST, ports=(Port("http", 80),)),
        service(WEST, ports=(Port("http", 8080), Port("metrics", 9090))),
    )
    plan = plan_from_snapshot(FED, fs, Policy())
    assert sorted(p.name for p in plan.ports) == ["http", "metrics"]


def test_a_62_octet_port_name_makes_a_63_octet_srv_label() -> None:
    name = "p" * 62
    plan = plan_from_snapshot(FED, snapshot(service(EAST, ports=(Port(name, 80),))), Policy())
    assert [p.name for p in plan.ports] == [name]
    owner = dns.name.from_text(f"_{name}._tcp.{plan.base}")
    assert len(owner.labels[0]) == 63


@pytest.mark.xfail(
    strict=True,
    reason="plan.py _LABEL_OK accepts a 63-octet port name, but its SRV label "
    "'_<name>' is 64 octets (RFC 1035 2.3.4 allows 63): static_records then "
    "raises UnicodeError from DNSLabel and Publisher.apply fails for the whole update",
)
def test_a_port_whose_srv_label_would_be_too_long_is_left_out() -> None:
    name = "p" * 63
    ep = Endpoint("east", ("10.0.0.1",))
    plan = plan_from_snapshot(FED, snapshot(service(EAST, ep, ports=(Port(name, 80),))), Policy())
    for p in plan.ports:
        dns.name.from_text(f"_{p.name}._{p.protocol}.{plan.base}")  # LabelTooLong if not
    assert static_records(plan)


# -- endpoints ------------------------------------------------------------------------


def test_endpoint_labels_from_hostname_or_address() -> None:
    eps = (
        Endpoint("east", ("10.0.0.1",), hostname="Web-0"),
        Endpoint("east", ("10.0.0.2",)),
        Endpoint("east", ("2001:DB8:0:0::7",)),
        Endpoint("east", ("10.0.0.3",), hostname="not.a.label"),
        Endpoint("east", ("10.0.0.4",), hostname="-bad"),
        Endpoint("east", ("10.0.0.5",), hostname="h" * 64),
        Endpoint("east", ("10.0.0.6",), hostname=""),
    )
    plan = plan_from_snapshot(FED, snapshot(service(EAST, *eps)), Policy())
    want = ["web-0"] + [dashed(e.addresses[0]) for e in eps[1:]]
    assert [c.name for c in plan.candidates] == want
    assert dashed("2001:DB8:0:0::7") == "2001-db8--7"
    base_labels = len(dns.name.from_text(plan.base).labels)
    for c in plan.candidates:  # each one label, valid in a name
        assert (
            len(dns.name.from_text(f"{c.name}.{c.cluster}.{plan.base}").labels) == base_labels + 2
        )


def test_addresses_split_by_family_and_bad_ones_dropped() -> None:
    eps = (
        Endpoint("east", ("10.0.0.1", "2001:db8::1")),
        Endpoint("east", ("not-an-ip", "10.0.0.2")),
        Endpoint("east", ("garbage",)),  # no address left: not a candidate
        Endpoint("east", ()),
    )
    plan = plan_from_snapshot(FED, snapshot(service(EAST, *eps)), Policy())
    assert [(c.v4, c.v6) for c in plan.candidates] == [
        (("10.0.0.1",), ("2001:db8::1",)),
        (("10.0.0.2",), ()),
    ]


def test_duplicate_labels_are_made_unique_within_a_cluster() -> None:
    fs = snapshot(
        service(
            EAST,
            Endpoint("east", ("10.0.0.1",), hostname="web"),
            Endpoint("east", ("10.0.0.2",), hostname="web"),
        ),
        service(WEST, Endpoint("west", ("10.1.0.1",), hostname="web")),
    )
    plan = plan_from_snapshot(FED, fs, Policy())
    assert len(plan.candidates) == 3
    east = [c for c in plan.candidates if c.cluster == "east"]
    assert len({c.name for c in east}) == 2
    assert {c.name for c in east} == {"web", dashed("10.0.0.2")}
    # Another cluster's endpoint may share a label: its names are under its cluster.
    assert [c.name for c in plan.candidates if c.cluster == "west"] == ["web"]
    owners = {(c.cluster, c.name) for c in plan.candidates}
    assert len(owners) == len(plan.candidates)


def test_readiness_and_termination() -> None:
    eps = (
        Endpoint("east", ("10.0.0.1",), ready=True),
        Endpoint("east", ("10.0.0.2",), ready=False, serving=False),
        Endpoint("east", ("10.0.0.3",), ready=False, serving=True, terminating=True),
        Endpoint("east", ("10.0.0.4",), ready=False, serving=False, terminating=True),
    )
    plan = plan_from_snapshot(FED, snapshot(service(EAST, *eps)), Policy())
    ready, not_ready, draining, gone = plan.candidates
    assert ready.healthy and ready.health_reason == "ready"
    assert not not_ready.healthy and "not ready" in not_ready.health_reason
    for c in (draining, gone):
        assert not c.healthy and "terminating" in c.health_reason
    assert all(c.since == 0.0 for c in plan.candidates)  # no probe: unknown


def test_a_probe_result_overrules_readiness() -> None:
    asked: list[tuple[str, str]] = []
    verdict = {
        "10.0.0.1": (False, "connection refused", 1700000000.0),
        "10.0.0.2": (True, "connected", 1700000001.0),
        "10.0.0.3": (True, "connected", 1700000002.0),
    }

    def health(cluster: str, address: str) -> tuple[bool, str, float] | None:
        asked.append((cluster, address))
        return verdict.get(address)

    eps = (
        Endpoint("east", ("10.0.0.1",)),
        Endpoint("east", ("10.0.0.2",)),
        Endpoint("east", ("10.0.0.3",), ready=False),  # a probe does not bring it back
        Endpoint("east", ("10.0.0.4",)),  # not probed: readiness stands
    )
    plan = plan_from_snapshot(FED, snapshot(service(EAST, *eps)), Policy(), health=health)
    down, up, not_ready, unprobed = plan.candidates
    assert not down.healthy and "connection refused" in down.health_reason
    assert down.since == 1700000000.0
    assert up.healthy and up.since == 1700000001.0
    assert not not_ready.healthy
    assert unprobed.healthy and unprobed.since == 0.0
    assert {a for _, a in asked} <= {"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"}
    assert {c for c, _ in asked} == {"east"}
    assert ("east", "10.0.0.1") in asked and ("east", "10.0.0.2") in asked


def test_a_dual_stack_endpoint_is_probed_at_one_of_its_addresses() -> None:
    asked: list[tuple[str, str]] = []

    def health(cluster: str, address: str) -> tuple[bool, str, float] | None:
        asked.append((cluster, address))
        return (False, "timeout", 5.0)

    ep = Endpoint("west", ("2001:db8::9", "10.1.0.9"))
    (c,) = plan_from_snapshot(FED, snapshot(service(WEST, ep)), Policy(), health=health).candidates
    assert not c.healthy
    assert asked and asked[0][0] == "west" and asked[0][1] in ep.addresses


def test_stale_cluster_is_marked_not_dropped() -> None:
    fs = snapshot(
        service(
            EAST,
            Endpoint("east", ("10.0.0.1",)),
            Endpoint("east", ("10.0.0.2",), ready=False),
            stale=True,
        ),
        service(WEST, Endpoint("west", ("10.1.0.1",))),
    )
    plan = plan_from_snapshot(FED, fs, Policy())
    east = [c for c in plan.candidates if c.cluster == "east"]
    west = [c for c in plan.candidates if c.cluster == "west"]
    assert [c.healthy for c in east] == [True, False]  # last-known health is kept
    assert all("stale" in c.health_reason for c in east)
    assert not any("stale" in c.health_reason for c in west)


def test_locality_and_weight_come_from_cluster_and_endpoint() -> None:
    fs = snapshot(
        service(
            EAST,
            Endpoint("east", ("10.0.0.1",), zone="us-east-1c"),
            Endpoint("east", ("10.0.0.2",)),
        ),
        service(WEST, Endpoint("west", ("10.1.0.1",))),
        service(Cluster("empty", region="eu-west")),
    )
    plan = plan_from_snapshot(FED, fs, Policy())
    assert [(c.cluster, c.region, c.zone, c.weight) for c in plan.candidates] == [
        ("east", "us-east", "us-east-1c", 300),  # the endpoint's zone wins
        ("east", "us-east", "us-east-1a", 300),
        ("west", "us-west", "us-west-2a", 100),
    ]
    assert plan.clusters == ("east", "west", "empty")  # all, in snapshot order
    assert (plan.namespace, plan.name) == ("prod", "web")
    assert plan.base == f"web.prod.{FED}"
    assert plan.ident == (FED, "prod", "web")


def test_policy_from_defaults_override_and_annotations() -> None:
    base = Policy(ttl=10)
    fs = snapshot(service(EAST, Endpoint("east", ("10.0.0.1",))))
    assert plan_from_snapshot(FED, fs, base).policy.ttl == 10
    assert plan_from_snapshot(FED, fs, base, override={"ttl": 20}).policy.ttl == 20
    fs = snapshot(
        service(
            EAST,
            Endpoint("east", ("10.0.0.1",)),
            annotations={
                "fedns.io/ttl": "30",
                "fedns.io/policy": "failover",
                "fedns.io/failover": "west,east",
                "other.io/ttl": "99",
            },
        ),
    )
    plan = plan_from_snapshot(FED, fs, base, override={"ttl": 20})
    assert (plan.policy.ttl, plan.policy.kind, plan.policy.failover) == (
        30,
        "failover",
        ("west", "east"),
    )
    assert plan.problems == ()


def test_a_bad_annotation_is_skipped_and_reported() -> None:
    fs = snapshot(
        service(
            EAST,
            Endpoint("east", ("10.0.0.1",)),
            annotations={"fedns.io/ttl": "soon", "fedns.io/max-answers": "3"},
        )
    )
    plan = plan_from_snapshot(FED, fs, Policy(ttl=10))
    assert plan.policy.ttl == 10 and plan.policy.max_answers == 3
    (problem,) = plan.problems
    assert problem.startswith("fedns.io/ttl=")  # names the annotation (the rest is policy's)


# -- static_records -------------------------------------------------------------------


def _plan(fail_open: bool = True, **kw: object) -> ServicePlan:
    fs = snapshot(
        service(
            EAST,
            Endpoint("east", ("10.0.0.1", "2001:db8::1"), hostname="web-0"),
            Endpoint("east", ("10.0.0.2",)),
            Endpoint("east", ("10.0.0.3",), ready=False),
            ports=(Port("http", 80), Port("dns", 53, "UDP")),
        ),
        service(WEST, Endpoint("west", ("10.1.0.1",)), Endpoint("west", ("10.1.0.2",))),
        service(Cluster("empty")),
    )
    return plan_from_snapshot(FED, fs, Policy(fail_open=fail_open, **kw))  # type: ignore[arg-type]


def existing(records: dict[bytes, Lazy]) -> set[bytes]:
    return {key for key, lazy in records.items() if lazy.exists()}


def addresses(records: dict[bytes, Lazy], name: str) -> tuple[set[str], set[str]]:
    key = k(name)
    rrsets = records[key].rrsets(key)
    v4 = {str(rd) for rd in rrsets[T_A].rdatas} if T_A in rrsets else set()
    v6 = (
        {str(ipaddress.ip_address(str(rd))) for rd in rrsets[T_AAAA].rdatas}
        if T_AAAA in rrsets
        else set()
    )
    return v4, v6


def test_static_records_names() -> None:
    plan = _plan()
    recs = static_records(plan)
    base = plan.base
    assert existing(recs) == {
        k(base),
        k(f"east.{base}"),
        k(f"web-0.east.{base}"),
        k(f"10-0-0-2.east.{base}"),
        k(f"west.{base}"),
        k(f"10-1-0-1.west.{base}"),
        k(f"10-1-0-2.west.{base}"),
        k(f"_http._tcp.{base}"),
        k(f"_dns._udp.{base}"),
    }
    # Known but without records (so absent from the zone): the unhealthy endpoint,
    # and the cluster the service has no endpoints in.
    assert k(f"10-0-0-3.east.{base}") in recs and k(f"empty.{base}") in recs


def test_static_records_addresses() -> None:
    plan = _plan()
    recs = static_records(plan)
    base = plan.base
    assert addresses(recs, base) == (
        {"10.0.0.1", "10.0.0.2", "10.1.0.1", "10.1.0.2"},
        {"2001:db8::1"},
    )
    assert addresses(recs, f"east.{base}") == ({"10.0.0.1", "10.0.0.2"}, {"2001:db8::1"})
    assert addresses(recs, f"west.{base}") == ({"10.1.0.1", "10.1.0.2"}, set())
    assert addresses(recs, f"web-0.east.{base}") == ({"10.0.0.1"}, {"2001:db8::1"})
    for key, lazy in recs.items():
        if lazy.exists():
            for rs in lazy.rrsets(key).values():
                assert rs.ttl == plan.policy.ttl


def test_srv_targets_are_existing_endpoint_names() -> None:
    """RFC 2782: an SRV target is a name with address records."""
    plan = _plan()
    recs = static_records(plan)
    live = existing(recs)
    for port in plan.ports:
        key = k(f"_{port.name}._{port.protocol}.{plan.base}")
        srv = recs[key].rrsets(key)[T_SRV]
        targets = {k(str(rd.target)) for rd in srv.rdatas}
        assert {rd.port for rd in srv.rdatas} == {port.port}
        assert targets <= live
        healthy = {k(f"{c.name}.{c.cluster}.{plan.base}") for c in plan.candidates if c.healthy}
        assert targets == healthy


@pytest.mark.parametrize("fail_open", [True, False])
def test_nothing_healthy_fail_open_on_cluster_names(fail_open: bool) -> None:
    plan = _plan(fail_open)
    plan = replace(plan, candidates=tuple(replace(c, healthy=False) for c in plan.candidates))
    recs = static_records(plan)
    base = plan.base
    everyone = {a for c in plan.candidates for a in c.v4}
    # The service name keeps every endpoint's records (its Router decides per client).
    assert addresses(recs, base)[0] == everyone
    # Cluster names: every member when failing open; no records at all when failing closed.
    if fail_open:
        assert addresses(recs, f"east.{base}")[0] == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
        assert recs[k(f"west.{base}")].exists()
    else:
        assert not recs[k(f"east.{base}")].exists()
        assert not recs[k(f"west.{base}")].exists()
    # An unhealthy endpoint's own name never has records.
    assert not any(recs[k(f"{c.name}.{c.cluster}.{base}")].exists() for c in plan.candidates)


# -- Publisher on a real Table ----------------------------------------------------------

ZONE = f"""$ORIGIN {FED}
$TTL 3600
@    IN SOA ns1 hostmaster 1 7200 600 86400 120
@    NS   ns1
ns1  A    192.0.2.53
"""


@pytest.fixture
def table(tmp_path: Path) -> Table:
    path = tmp_path / "fed.zone"
    path.write_text(ZONE)
    return Table([load_zone_file(path, FED)])


def ask(table: Table, name: str, rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    q.id = 0x2222
    reply = table.respond(q.to_wire(), False, ("192.0.2.10", 5300))
    assert reply
    m = dns.message.from_wire(reply)
    assert m.id == q.id and m.question == q.question
    return m


def answer_addresses(m: dns.message.Message) -> set[str]:
    return {rd.address for rrset in m.answer for rd in rrset if rrset.rdtype in (1, 28)}


def negative_ttl() -> int:
    soa = dns.zone.from_text(ZONE, FED).find_rdataset("@", "SOA")
    return min(soa.ttl, soa[0].minimum)  # RFC 2308 3


def assert_nxdomain(m: dns.message.Message) -> None:
    assert m.rcode() == dns.rcode.NXDOMAIN
    assert m.answer == []
    (soa,) = m.authority
    assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == negative_ttl()


def plan_names(plan: ServicePlan) -> set[str]:
    """The names a plan makes exist: its records' owners and their empty non-terminals."""
    base = plan.base
    out = {base, f"{plan.namespace}.{FED}"}
    for c in plan.candidates:
        if c.healthy:
            out |= {f"{c.cluster}.{base}", f"{c.name}.{c.cluster}.{base}"}
    for p in plan.ports:
        out |= {f"_{p.name}._{p.protocol}.{base}", f"_{p.protocol}.{base}"}
    return out


def test_publish_a_plan(table: Table) -> None:
    zone = table.zones[k(FED)]
    before = set(zone.names)
    plan = _plan()
    rebuilt = Publisher(table, Locator()).apply(PlanUpdate((plan,)))
    new = zone.names - before
    assert new == {k(n) for n in plan_names(plan)}
    assert rebuilt == len(new)
    # The service answers with its healthy endpoints (no locality map: every one).
    m = ask(table, plan.base)
    assert m.rcode() == dns.rcode.NOERROR
    assert answer_addresses(m) == {"10.0.0.1", "10.0.0.2", "10.1.0.1", "10.1.0.2"}
    assert answer_addresses(ask(table, f"web-0.east.{plan.base}")) == {"10.0.0.1"}
    assert answer_addresses(ask(table, f"web-0.east.{plan.base}", "AAAA")) == {"2001:db8::1"}
    assert answer_addresses(ask(table, f"west.{plan.base}")) == {"10.1.0.1", "10.1.0.2"}
    srv = ask(table, f"_http._tcp.{plan.base}", "SRV")
    assert {rd.port for rrset in srv.answer for rd in rrset} == {80}
    # The namespace is an empty non-terminal: NOERROR without data.
    ns = ask(table, f"prod.{FED}")
    assert (ns.rcode(), ns.answer) == (dns.rcode.NOERROR, [])
    # The unhealthy endpoint and the cluster without endpoints do not exist.
    assert_nxdomain(ask(table, f"10-0-0-3.east.{plan.base}"))
    assert_nxdomain(ask(table, f"empty.{plan.base}"))


def test_removed_plan_names_are_gone(table: Table) -> None:
    zone = table.zones[k(FED)]
    before = set(zone.names)
    pub = Publisher(table, Locator())
    plan = _plan()
    other = plan_from_snapshot(
        FED,
        snapshot(
            service(WEST, Endpoint("west", ("10.1.9.9",)), key=ServiceKey("prod", "api")),
            key=ServiceKey("prod", "api"),
        ),
        Policy(),
    )
    pub.apply(PlanUpdate((plan, other)))
    for name in (plan.base, f"web-0.east.{plan.base}", f"_http._tcp.{plan.base}"):
        assert ask(table, name, "SRV" if name.startswith("_") else "A").rcode() == dns.rcode.NOERROR
    with_both = set(zone.names)
    rebuilt = pub.apply(PlanUpdate((), (plan.ident,)))
    gone = with_both - zone.names
    assert gone == {k(n) for n in plan_names(plan)} - {k(f"prod.{FED}")}  # api keeps prod
    assert rebuilt >= len(gone)
    assert not any(key.endswith(k(plan.base)) for key in zone.names)
    assert not any(key.endswith(k(plan.base)) for key in table.nodes)
    for name in (
        plan.base,
        f"east.{plan.base}",
        f"web-0.east.{plan.base}",
        f"_http._tcp.{plan.base}",
        f"_tcp.{plan.base}",
    ):
        assert_nxdomain(ask(table, name))
    assert answer_addresses(ask(table, other.base)) == {"10.1.9.9"}
    # The last service of the namespace goes: so does the namespace.
    pub.apply(PlanUpdate((), (other.ident,)))
    assert zone.names == before
    assert_nxdomain(ask(table, f"prod.{FED}"))


def test_a_changed_endpoint_rebuilds_only_what_changed(table: Table) -> None:
    pub = Publisher(table, Locator())
    plan = _plan()
    pub.apply(PlanUpdate((plan,)))
    base = plan.base
    untouched = [f"west.{base}", f"10-1-0-1.west.{base}", f"10-0-0-2.east.{base}"]
    for name in [*untouched, f"web-0.east.{base}", f"east.{base}"]:
        ask(table, name)  # compact names get their node when first asked for
    nodes = {name: table.nodes[k(name)] for name in untouched}
    # web-0 moves to a new address (its name, from its hostname, stays).
    cands = tuple(replace(c, v4=("10.0.0.9",)) if c.name == "web-0" else c for c in plan.candidates)
    changed = replace(plan, candidates=cands)
    rebuilt = pub.apply(PlanUpdate((changed,)))
    # The endpoint, its cluster and the service name hold its address; the SRV names
    # are answered per client (their routers are replaced with the plan). Nothing else.
    assert rebuilt == 3 + len(plan.ports)
    for name in untouched:
        assert table.nodes.get(k(name)) is nodes[name], name
    assert answer_addresses(ask(table, f"web-0.east.{base}")) == {"10.0.0.9"}
    assert answer_addresses(ask(table, f"web-0.east.{base}", "AAAA")) == {"2001:db8::1"}
    assert answer_addresses(ask(table, f"east.{base}")) == {"10.0.0.9", "10.0.0.2"}
    assert "10.0.0.9" in answer_addresses(ask(table, base))
    assert "10.0.0.1" not in answer_addresses(ask(table, base))
    # The same plan again changes nothing but the routed names.
    assert pub.apply(PlanUpdate((changed,))) == 1 + len(plan.ports)


def test_an_endpoint_going_unhealthy_removes_its_name(table: Table) -> None:
    pub = Publisher(table, Locator())
    plan = _plan()
    pub.apply(PlanUpdate((plan,)))
    base = plan.base
    cands = tuple(replace(c, healthy=False) if c.name == "web-0" else c for c in plan.candidates)
    pub.apply(PlanUpdate((replace(plan, candidates=cands),)))
    assert_nxdomain(ask(table, f"web-0.east.{base}"))
    assert answer_addresses(ask(table, f"east.{base}")) == {"10.0.0.2"}
    assert answer_addresses(ask(table, base)) == {"10.0.0.2", "10.1.0.1", "10.1.0.2"}


def test_a_plan_for_a_zone_not_served_is_ignored(table: Table) -> None:
    zone = table.zones[k(FED)]
    before = set(zone.names)
    plan = replace(_plan(), zone="other.example.")
    assert Publisher(table, Locator()).apply(PlanUpdate((plan,))) == 0
    assert zone.names == before
