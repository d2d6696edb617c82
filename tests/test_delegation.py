"""The global zone delegated to fedns, followed as a resolver on the Internet follows it.

Everything runs in a fresh network namespace with only ``lo`` (so no query can leave
the machine, and port 53 on 127.0.0.x belongs to this test); it needs root:

- NSD on ``ROOT_ADDR`` serves a local root: ``.``, ``test.`` and ``asn.test.``, a
  Cymru-style ASN zone so that Zonemaster's AS lookups are answered here;
- NSD on ``PARENT_ADDR`` serves the parent ``example.test.``, whose delegation is
  the record block of ``docs/delegation.md`` with each address replaced by the one
  the shipped demo zone gives that name server;
- one ``fedns serve zones/demo.yaml`` on port 53 of every address of the demo zone's
  own NS names (read from the zone file with dnspython);
- Unbound with the local root as its root hints: what it resolves through the
  delegation must equal what fedns answers directly;
- ``zonemaster-cli --hints`` (the local root) on the delegated zone: no ERROR or
  CRITICAL except the findings every loopback set-up gets, allowed by tag below.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import dns.zonefile
import pytest
import yaml
from dnsclient import make
from servers import DEMO_CONFIG, NSD, REPO, ServerProcess, _spawn, fedns_argv, fedns_env

pytestmark = pytest.mark.reference

GUIDE = REPO / "docs" / "delegation.md"
DEMO: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text())
ORIGIN = dns.name.from_text(DEMO["federation"]["zone"])
ZONE_FILE = DEMO_CONFIG.parent / next(
    z["file"] for z in DEMO["zones"] if dns.name.from_text(z["origin"]) == ORIGIN
)
ZONE = dns.zone.from_file(str(ZONE_FILE), origin=ORIGIN, relativize=False)
PARENT = ORIGIN.parent()
TEST_TLD = dns.name.from_text("test.")
ASN_ZONE = dns.name.from_text("asn.test.")

# The local hierarchy's servers: loopback addresses the demo zone does not use
# (checked in ``ns_addresses``). Unbound listens on 127.0.0.1.
ROOT_ADDR, PARENT_ADDR, UNBOUND_ADDR = "127.0.0.11", "127.0.0.12", "127.0.0.1"
ROOT_NS = dns.name.from_text("a.root-servers.test.")
PARENT_NS = dns.name.from_text("ns", PARENT)
SOA_TAIL = "hostmaster.example.test. 1 14400 3600 1209600 300"
# Loopback belongs to no autonomous system; the local ASN zone puts all of it in one
# documentation AS (RFC 5398), which is what any single-machine set-up amounts to.
ASN = "64496"

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
ZONEMASTER = shutil.which("zonemaster-cli") or "/usr/bin/zonemaster-cli"
IP = shutil.which("ip") or "/usr/sbin/ip"

# Zonemaster ERROR/CRITICAL findings that every loopback delegation gets, by tag, each
# allowed only where its condition holds. Anything else fails the test.
ALLOWED: dict[str, Callable[[dict[str, Any]], bool]] = {
    # ADDRESS01: 127.0.0.0/8 and ::1 are special-purpose addresses (RFC 6890) that a
    # public delegation must not use; a test confined to loopback can use nothing else.
    "NAMESERVER_IP_PRIVATE_NETWORK": lambda m: ipaddress.ip_address(m["args"]["ns_ip"]).is_loopback,
}


def _allowed(msg: dict[str, Any]) -> bool:
    check = ALLOWED.get(msg["tag"])
    return check is not None and check(msg)


# -- what the zone file and the guide say ------------------------------------------------


def ns_addresses() -> dict[dns.name.Name, dict[int, list[str]]]:
    """The demo zone's apex NS names -> {A or AAAA: addresses}, from the zone file."""
    out: dict[dns.name.Name, dict[int, list[str]]] = {}
    apex_ns = ZONE.get_rdataset(ORIGIN, dns.rdatatype.NS)
    assert apex_ns is not None, f"{ZONE_FILE.name} has no apex NS records"
    for rd in apex_ns:
        assert rd.target.is_subdomain(ORIGIN), (
            f"NS {rd.target} is outside the zone; this test serves in-zone name servers only"
        )
        found: dict[int, list[str]] = {}
        for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            rds = ZONE.get_rdataset(rd.target, rdtype)
            if rds is not None:
                found[rdtype] = sorted(r.address for r in rds)
        assert found, f"NS {rd.target} has no address in {ZONE_FILE.name}"
        out[rd.target] = found
    for addrs in out.values():
        for a in (a for v in addrs.values() for a in v):
            assert ipaddress.ip_address(a).is_loopback, (
                f"{ZONE_FILE.name}: name server address {a} is not loopback; the test serves it"
            )
            assert a not in (ROOT_ADDR, PARENT_ADDR, UNBOUND_ADDR), f"{a} is taken by the test"
    return out


# A block the test reads is marked as in the other guides: <!-- tested: NAME --> before it.
_MARK = re.compile(r"<!--\s*tested:\s*([\w-]+)\s*-->\s*\n```[\w-]*\n(.*?)\n```", re.S)
BLOCKS = {"delegation-records", "route53-change-batch", "gcloud-records"}


def guide_block(name: str) -> str:
    found = dict(_MARK.findall(GUIDE.read_text()))
    assert set(found) == BLOCKS, f"{GUIDE.name}: marked blocks {sorted(found)}, not {sorted(BLOCKS)}"
    return found[name] + "\n"


def guide_records() -> list[dns.rrset.RRset]:
    """The parent-zone records of the guide, as written (its example addresses)."""
    block = guide_block("delegation-records")
    return dns.zonefile.read_rrsets(block, rdclass=None, origin=dns.name.root, relativize=False)


def parent_delegation() -> list[dns.rrset.RRset]:
    """The guide's delegation with each glue address replaced by the demo zone's own."""
    records = guide_records()
    zone_ns = {rd.target for rd in ZONE.get_rdataset(ORIGIN, dns.rdatatype.NS) or ()}
    addrs = ns_addresses()
    out: list[dns.rrset.RRset] = []
    glue_types: dict[dns.name.Name, set[int]] = {}
    for rrset in records:
        if rrset.rdtype == dns.rdatatype.NS:
            assert rrset.name == ORIGIN, f"the guide delegates {rrset.name}, not {ORIGIN}"
            assert {rd.target for rd in rrset} == zone_ns, (
                "the guide's NS names are not the demo zone's apex NS names"
            )
            out.append(rrset)
        elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            assert rrset.name in addrs, f"the guide has glue for {rrset.name}, not a name server"
            glue_types.setdefault(rrset.name, set()).add(rrset.rdtype)
            real = addrs[rrset.name].get(rrset.rdtype, [])
            rdtype = dns.rdatatype.to_text(rrset.rdtype)
            out.append(dns.rrset.from_text_list(rrset.name, rrset.ttl, "IN", rdtype, real))
        else:
            pytest.fail(f"unexpected record in the guide's delegation: {rrset}")
    assert [r for r in out if r.rdtype == dns.rdatatype.NS], "the guide's block has no NS records"
    assert glue_types == {n: set(a) for n, a in addrs.items()}, (
        "the guide's glue must have the record types the zone gives each name server: "
        f"guide {glue_types}, zone {addrs}"
    )
    return out


# -- a private network namespace for this thread and its children ----------------------------

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ns_call(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@contextlib.contextmanager
def private_network() -> Iterator[None]:
    """Move this thread (and so every process it starts from now on) into a new network
    namespace with only ``lo`` up; back to the original one on exit."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        _ns_call(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        try:
            subprocess.run([IP, "link", "set", "lo", "up"], check=True)
            yield
        finally:
            _ns_call(_libc.setns(home, CLONE_NEWNET), "setns back")
            # Later tests must run where they started, not in an emptied namespace.
            assert os.stat("/proc/thread-self/ns/net").st_ino == os.fstat(home).st_ino
    finally:
        os.close(home)


# -- servers on fixed addresses, port 53 -------------------------------------------------


def _on(sp: ServerProcess, host: str) -> ServerProcess:
    sp.host = host  # _spawn records 127.0.0.1; these listen on an address of their own
    return sp


def write_zone(path: Path, origin: dns.name.Name, records: str) -> Path:
    ns = ROOT_NS if origin != PARENT else PARENT_NS
    path.write_text(f"$TTL 3600\n{origin} IN SOA {ns} {SOA_TAIL}\n{records}")
    return path


def start_nsd(workdir: Path, addr: str, zones: dict[dns.name.Name, Path]) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    zone_cfg = "".join(f'zone:\n  name: "{o}"\n  zonefile: "{p}"\n' for o, p in zones.items())
    conf = workdir / "nsd.conf"
    conf.write_text(
        f"""server:
  ip-address: {addr}@53
  port: 53
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
  rrl-ratelimit: 0
remote-control:
  control-enable: no
{zone_cfg}"""
    )
    return _on(_spawn("nsd", [NSD, "-d", "-c", str(conf)], workdir, 53), addr)


def start_fedns(workdir: Path, addr: str) -> ServerProcess:
    listen = f"[{addr}]:53" if ":" in addr else f"{addr}:53"
    argv = fedns_argv("serve", "-c", str(DEMO_CONFIG), "--dns", listen, "--log-format", "console")
    return _on(_spawn("fedns", argv, workdir, 53, env=fedns_env()), addr)


def start_unbound(workdir: Path, hints: Path) -> ServerProcess:
    """Unbound iterating from the local root: nothing stubbed or forwarded, so it must
    find fedns through the referrals of the root, test. and example.test."""
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "unbound.conf"
    conf.write_text(
        f"""server:
  interface: {UNBOUND_ADDR}@53
  port: 53
  do-daemonize: no
  use-syslog: no
  logfile: ""
  chroot: ""
  username: ""
  directory: "{workdir}"
  pidfile: "{workdir}/unbound.pid"
  access-control: 127.0.0.0/8 allow
  root-hints: "{hints}"
  do-not-query-localhost: no
  local-zone: "test." nodefault
  module-config: "iterator"
  num-threads: 1
  verbosity: 1
remote-control:
  control-enable: no
"""
    )
    return _on(_spawn("unbound", [UNBOUND, "-d", "-c", str(conf)], workdir, 53), UNBOUND_ADDR)


@dataclass
class Delegation:
    workdir: Path
    hints: Path
    parent: ServerProcess
    fedns: list[ServerProcess]
    unbound: ServerProcess
    started: list[ServerProcess]  # every server, for conftest's log dump on failure


def _needs() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: port 53 on loopback addresses in a private network namespace")
    tools = ((NSD, "nsd"), (UNBOUND, "unbound"), (ZONEMASTER, "zonemaster-cli"), (IP, "iproute2"))
    for binary, pkg in tools:
        if not Path(binary).is_file():
            pytest.skip(f"{binary} not installed (apt: {pkg})")


@pytest.fixture(scope="module")
def delegation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delegation]:
    _needs()
    work = tmp_path_factory.mktemp("delegation")
    addrs = ns_addresses()
    delegated = "".join(r.to_text() + "\n" for r in parent_delegation())
    root_glue = f"{ROOT_NS} IN A {ROOT_ADDR}\n"
    root = write_zone(
        work / "root.zone", dns.name.root, f". IN NS {ROOT_NS}\ntest. IN NS {ROOT_NS}\n{root_glue}"
    )
    tld = write_zone(
        work / "test.zone",
        TEST_TLD,
        f"test. IN NS {ROOT_NS}\n{root_glue}{PARENT} IN NS {PARENT_NS}\n"
        f"{PARENT_NS} IN A {PARENT_ADDR}\n{ASN_ZONE} IN NS {ROOT_NS}\n",
    )
    asn = write_zone(
        work / "asn.zone",
        ASN_ZONE,
        f"{ASN_ZONE} IN NS {ROOT_NS}\n"
        f'*.origin.{ASN_ZONE} IN TXT "{ASN} | 127.0.0.0/8 | ZZ | test | 1970-01-01"\n'
        f'*.origin6.{ASN_ZONE} IN TXT "{ASN} | ::1/128 | ZZ | test | 1970-01-01"\n',
    )
    parent = write_zone(
        work / "parent.zone",
        PARENT,
        f"{PARENT} IN NS {PARENT_NS}\n{PARENT_NS} IN A {PARENT_ADDR}\n{delegated}",
    )
    hints = work / "root.hints"
    hints.write_text(f". 3600000 NS {ROOT_NS}\n{ROOT_NS} 3600000 A {ROOT_ADDR}\n")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(private_network())
        except OSError as e:
            pytest.skip(f"cannot make a private network namespace ({e}); needs CAP_SYS_ADMIN")
        started: list[ServerProcess] = []

        @stack.callback
        def _stop() -> None:  # before leaving the namespace (the stack unwinds backwards)
            for sp in reversed(started):
                sp.stop()

        every = sorted({a for v in addrs.values() for a2 in v.values() for a in a2})
        started += [
            start_nsd(work / "root", ROOT_ADDR, {dns.name.root: root, TEST_TLD: tld, ASN_ZONE: asn}),
            start_nsd(work / "parent", PARENT_ADDR, {PARENT: parent}),
        ]
        fedns = [start_fedns(work / f"fedns-{a.replace(':', '_')}", a) for a in every]
        started += fedns
        for sp in started:  # started together, waited for together: fedns takes a second
            sp.wait_ready()
        unbound = start_unbound(work / "unbound", hints)
        started.append(unbound)
        unbound.wait_ready()
        for sp in fedns:  # the static clusters of the demo have synced
            wait_answer(sp, federated_names()[0])
        yield Delegation(work, hints, started[1], fedns, unbound, started)


def wait_answer(sp: ServerProcess, name: str) -> None:
    for _ in range(100):
        r = ask(sp, name, "A")
        if r.rcode() == dns.rcode.NOERROR and r.answer:
            return
        time.sleep(0.05)
    pytest.fail(f"{sp.name} on {sp.host} never answered {name} A:\n{sp.output()[-3000:]}")


def ask(sp: ServerProcess, name: str | dns.name.Name, rdtype: str, rd: bool = False) -> dns.message.Message:
    q = make(str(name), rdtype, edns=0)
    if rd:
        q.flags |= dns.flags.RD
    return dns.query.udp(q, sp.host, port=sp.port, timeout=3.0)


# -- the names to compare ------------------------------------------------------------------


def federated_names() -> list[str]:
    return [f"{s['name']}.{s['namespace']}.{ORIGIN}" for s in DEMO["federation"]["services"]]


def questions() -> list[tuple[str, str]]:
    """(name, type) pairs from the zone file and the demo config: every static RRset
    outside delegations (a wildcard through a name it covers, an alias also by A), a
    NODATA type at each name and empty non-terminal, NXDOMAIN names; per federated
    service its namespace, A, AAAA, a NODATA type, an unknown and every cluster's
    name, and SRV per port."""
    out: list[tuple[str, str]] = []
    ns = dns.rdatatype.NS
    cuts = [n for n, node in ZONE.nodes.items() if n != ORIGIN and node.get_rdataset(dns.rdataclass.IN, ns)]
    names = [n for n in sorted(ZONE.nodes) if not any(n.is_subdomain(c) for c in cuts)]
    for name in names:
        node = ZONE.nodes[name]
        qname = dns.name.from_text("probe", name.parent()) if name.is_wild() else name
        present = {rds.rdtype for rds in node}
        out += [(qname.to_text(), dns.rdatatype.to_text(t)) for t in sorted(present)]
        if dns.rdatatype.CNAME in present:  # and what the alias leads to
            out.append((qname.to_text(), "A"))
        else:
            missing = next(
                (t for t in ("TXT", "MX", "AAAA", "A") if dns.rdatatype.from_text(t) not in present),
                None,
            )
            if missing:
                out.append((qname.to_text(), missing))
    ents = {
        p
        for n in names
        for p in (n.split(i)[1] for i in range(len(ORIGIN) + 1, len(n)))
        if p not in ZONE.nodes
    }
    out += [(e.to_text(), "A") for e in sorted(ents)]
    for nx in ("no-such-name", "nx.mail"):
        name = dns.name.from_text(nx, ORIGIN)
        assert ZONE.get_node(name) is None
        out.append((name.to_text(), "A"))
    for s in DEMO["federation"]["services"]:
        namespace = f"{s['namespace']}.{ORIGIN}"
        svc = f"{s['name']}.{namespace}"
        if (namespace, "A") not in out:  # an empty non-terminal of federated names
            out.append((namespace, "A"))
        out += [(svc, "A"), (svc, "AAAA"), (svc, "TXT"), (f"no-such-cluster.{svc}", "A")]
        out += [(f"{c}.{svc}", "A") for c in s.get("endpoints", {})]
        for p in s.get("ports", []):
            out.append((f"_{p['name']}._{p.get('protocol', 'TCP').lower()}.{svc}", "SRV"))
    return out


Section = set[tuple[str, str, frozenset[str]]]


def section(rrsets: list[dns.rrset.RRset], rdtype: int | None = None) -> Section:
    return {
        (r.name.to_text().lower(), dns.rdatatype.to_text(r.rdtype), frozenset(x.to_text() for x in r))
        for r in rrsets
        if rdtype is None or r.rdtype == rdtype
    }


def same_answer(via: dns.message.Message, direct: dns.message.Message) -> str | None:
    """Why ``via`` (Unbound's answer) differs from ``direct`` (fedns's), or None."""
    if via.rcode() != direct.rcode():
        return f"rcode {dns.rcode.to_text(via.rcode())} != {dns.rcode.to_text(direct.rcode())}"
    if section(via.answer) != section(direct.answer):
        return f"answer {section(via.answer)} != {section(direct.answer)}"
    ttls = {(r.name, r.rdtype): r.ttl for r in direct.answer}
    for r in via.answer:
        if r.ttl > ttls[(r.name, r.rdtype)]:
            return f"{r.name} {dns.rdatatype.to_text(r.rdtype)}: TTL {r.ttl} > fedns's"
    if not direct.answer:  # negative: the same SOA says how long to cache it
        soa = dns.rdatatype.SOA
        if section(via.authority, soa) != section(direct.authority, soa):
            return f"negative SOA {section(via.authority, soa)} != {section(direct.authority, soa)}"
    return None


# -- the tests ------------------------------------------------------------------------------


def test_guide_cloud_forms_say_the_records_of_its_block() -> None:
    """The Route 53 change batch and the gcloud commands are the tested block, record
    for record (same names, types, TTLs and values)."""
    want = section(guide_records())
    ttls = {(r.name.to_text(), dns.rdatatype.to_text(r.rdtype)): r.ttl for r in guide_records()}
    batch = json.loads(guide_block("route53-change-batch"))
    r53 = [c["ResourceRecordSet"] for c in batch["Changes"]]
    assert {(r["Name"], r["Type"], frozenset(v["Value"] for v in r["ResourceRecords"])) for r in r53} == want
    assert {(r["Name"], r["Type"]): r["TTL"] for r in r53} == ttls
    gcloud = guide_block("gcloud-records").replace("\\\n", " ")
    cmds = [shlex.split(line) for line in gcloud.splitlines() if line.startswith("gcloud")]
    got, got_ttls = set(), {}
    for argv in cmds:
        opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--"))
        key = (argv[argv.index("create") + 1], opts["type"])
        got.add((*key, frozenset(opts["rrdatas"].split(","))))
        got_ttls[key] = int(opts["ttl"])
    assert got == want and got_ttls == ttls


def test_parent_refers_to_the_zones_own_name_servers(delegation: Delegation) -> None:
    """The parent (NSD) answers a name below the cut with a referral whose NS and glue
    are the demo zone's NS names and addresses."""
    r = ask(delegation.parent, f"www.{ORIGIN}", "A")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and not r.flags & dns.flags.AA
    want_ns = {x.to_text() for x in ZONE.get_rdataset(ORIGIN, dns.rdatatype.NS) or ()}
    assert section(r.authority) == {(ORIGIN.to_text(), "NS", frozenset(want_ns))}
    glue = {(n.to_text(), dns.rdatatype.to_text(t), frozenset(a)) for n, v in ns_addresses().items() for t, a in v.items()}
    assert section(r.additional) == glue


def test_every_fedns_instance_answers_alike(delegation: Delegation) -> None:
    first, *others = delegation.fedns
    assert others, "the demo zone's NS records give fewer than two addresses"
    for name, rdtype in questions():
        a = ask(first, name, rdtype)
        for sp in others:
            why = same_answer(ask(sp, name, rdtype), a)
            assert why is None, f"{name} {rdtype}: {sp.host} vs {first.host}: {why}"


def test_unbound_resolves_through_the_delegation_as_fedns_answers(delegation: Delegation) -> None:
    direct_server = delegation.fedns[0]
    asked = questions()
    # The SRV targets (per-endpoint names) are asked too, as a client would next.
    for name, rdtype in list(asked):
        if rdtype == "SRV":
            srv = ask(direct_server, name, "SRV")
            asked += sorted({(rd.target.to_text(), "A") for r in srv.answer for rd in r})
    federated = set(federated_names())
    kinds = set()
    for name, rdtype in asked:
        via = ask(delegation.unbound, name, rdtype, rd=True)
        direct = ask(direct_server, name, rdtype)
        why = same_answer(via, direct)
        assert why is None, f"{name} {rdtype}: Unbound vs fedns: {why}"
        assert via.flags & dns.flags.RA and not via.flags & dns.flags.AA
        if direct.rcode() == dns.rcode.NXDOMAIN:
            kinds.add("nxdomain")
        elif not direct.answer:
            kinds.add("nodata")
        else:
            kinds |= {dns.rdatatype.to_text(r.rdtype) for r in direct.answer}
            kinds |= {"federated"} if name in federated else set()
    assert {"nxdomain", "nodata", "federated", "A", "AAAA", "CNAME", "SRV"} <= kinds, kinds


@pytest.fixture(scope="module")
def zonemaster(delegation: Delegation) -> list[dict[str, Any]]:
    """One Zonemaster run on the delegated zone: its messages (INFO and up)."""
    profile = delegation.workdir / "zonemaster-profile.json"
    # AS lookups go to the local asn.test. zone; short timeouts, as every server is local.
    profile.write_text(
        json.dumps(
            {
                "asn_db": {"style": "cymru", "sources": {"cymru": [ASN_ZONE.to_text(True)]}},
                "resolver": {"defaults": {"timeout": 2, "retry": 2}},
            }
        )
    )
    argv = [
        ZONEMASTER, "--hints", str(delegation.hints), "--profile", str(profile),
        "--json-stream", "--json-translate", "--level", "INFO", "--no-progress",
        ORIGIN.to_text(True),
    ]  # fmt: skip
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, f"zonemaster-cli failed:\n{run.stderr}\n{run.stdout[-3000:]}"
    msgs = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert msgs, f"zonemaster-cli said nothing:\n{run.stderr}"
    (delegation.workdir / "zonemaster.jsonl").write_text(run.stdout)
    return msgs


def _show(msgs: list[dict[str, Any]]) -> str:
    return "\n".join(f"  {m['level']} {m['testcase']} {m['tag']}: {m.get('message', m['args'])}" for m in msgs)


def test_zonemaster_finds_no_error_but_loopback(zonemaster: list[dict[str, Any]]) -> None:
    bad = [m for m in zonemaster if m["level"] in ("ERROR", "CRITICAL") and not _allowed(m)]
    below = sorted({(m["level"], m["tag"]) for m in zonemaster if m["level"] in ("WARNING", "NOTICE")})
    print("Zonemaster WARNING/NOTICE tags:", ", ".join(f"{lvl} {tag}" for lvl, tag in below))
    assert not bad, "Zonemaster found, besides the loopback findings:\n" + _show(bad)


def test_zonemaster_checked_the_delegation(zonemaster: list[dict[str, Any]]) -> None:
    """No error must mean the tests ran: the parent was found, the delegation and the
    zone agree, every server answered, and AS lookups reached the local ASN zone."""
    tags = {m["tag"] for m in zonemaster}
    want = {
        "HAS_PARENT",  # BASIC01, parent example.test (below)
        "ENOUGH_NS_DEL",  # DELEGATION01
        "ENOUGH_NS_CHILD",
        "NAMES_MATCH",  # DELEGATION07: parent NS names == zone NS names
        "ADDRESSES_MATCH",  # CONSISTENCY05: glue == the zone's addresses
        "ARE_AUTHORITATIVE",  # DELEGATION04
        "ONE_SOA_SERIAL",  # CONSISTENCY01, across every fedns instance
        "ONE_NS_SET",  # CONSISTENCY04
        "EDNS0_SUPPORT",  # NAMESERVER02
        "NO_RECURSOR",  # NAMESERVER01
        "CASE_QUERIES_RESULTS_OK",  # NAMESERVER09
    }
    assert want <= tags, f"missing {sorted(want - tags)}:\n{_show(zonemaster)}"
    parents = {m["args"]["pname"] for m in zonemaster if m["tag"] == "HAS_PARENT"}
    assert parents == {PARENT.to_text(True)}
    asns = {m["args"].get("asn") for m in zonemaster if m["tag"].endswith("_ONE_ASN")}
    assert asns == {ASN}, f"AS lookups did not reach the local ASN zone:\n{_show(zonemaster)}"
