"""``fedns diff OLD NEW``: which answers a config change moves, for which clients, and why.

Every test runs the real command (``resolver.cli.main``, what the ``fedns``
entry point calls) on configs written beside the demo zone, and checks its
report against the source of truth: values read back from the configs and the
zone file, and real fedns processes serving OLD and NEW, asked the same
questions by dnspython with each client bucket's subnet as ECS. The
``--server`` tests run a fedns that watches a fake Kubernetes API server whose
services are in neither config file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import ipaddress
import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import dns.zone
import pytest
import yaml
from fakekube import ThreadedFakeKubes, endpoint, federation_config
from servers import DEMO_CONFIG, LOOPBACK, ServerProcess, free_port, start_fedns, write_config

from resolver import cli
from resolver.app import load_instance
from resolver.config import load_config
from resolver.diff import summarize
from resolver.dns.zone import key_of
from resolver.federation.control import Control

ORIGIN = "global.example.test."
DEMO_ZONE = DEMO_CONFIG.parent / "global.example.test.zone"
Doc = dict[str, Any]


def base_doc() -> Doc:
    """The demo config, without ``dns:`` (the tests pick ports) and without its
    127.0.0.0/8 rule: a query sent from loopback with no ECS is then a client no
    rule places, which the diff's ``unplaced`` bucket stands for."""
    doc = yaml.safe_load(DEMO_CONFIG.read_text())
    doc.pop("dns", None)
    fed = doc["federation"]
    fed["localities"] = [r for r in fed["localities"] if r["cidr"] != "127.0.0.0/8"]
    return doc


def write(directory: Path, doc: Doc, zone: Path = DEMO_ZONE) -> Path:
    settings = {k: v for k, v in doc.items() if k != "zones"}
    return write_config(directory, {ORIGIN: zone}, settings)


@dataclass
class Run:
    rc: int
    out: str
    err: str

    @property
    def report(self) -> Doc:
        return dict(json.loads(self.out))


def fedns_diff(*args: str | Path) -> Run:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(["diff", *map(str, args)])
    return Run(rc, out.getvalue(), err.getvalue())


def services(doc: Doc) -> list[Doc]:
    return list(doc["federation"].get("services") or [])


def weighted(doc: Doc) -> frozenset[str]:
    """The names whose answers hash the client's subnet (weighted services)."""
    fed = doc["federation"]
    default = (fed.get("defaults") or {}).get("policy", "locality")
    policies = fed.get("policies") or {}
    return frozenset(name for svc, qs in service_names(doc).items()
                     if (policies.get(svc) or {}).get("policy", default) == "weighted"
                     for name, _ in qs)


def service_names(doc: Doc) -> dict[str, list[tuple[str, str]]]:
    """Per static service ("ns/name"), the per-client questions its names take
    (README "Names served"): the service name's A and AAAA, each port's SRV."""
    zone = doc["federation"]["zone"]
    out = {}
    for s in services(doc):
        base = f"{s['name']}.{s['namespace']}.{zone}"
        qs = [(base, "A"), (base, "AAAA")]
        qs += [(f"_{p['name']}._{p.get('protocol', 'TCP').lower()}.{base}", "SRV")
               for p in s.get("ports", [])]
        out[f"{s['namespace']}/{s['name']}"] = qs
    return out


# -- asking real servers -----------------------------------------------------------


Seen = tuple[str, tuple[str, ...]]  # (RCODE, sorted answer lines) as the diff reports them


def ask(server: ServerProcess, name: str, qtype: str, subnet: str | None) -> Seen:
    options: list[dns.edns.Option] = []
    if subnet is not None:
        net = ipaddress.ip_network(subnet)
        options.append(dns.edns.ECSOption(str(net.network_address), net.prefixlen))
    q = dns.message.make_query(name, qtype, use_edns=0, payload=1232, options=options)
    r = dns.query.udp(q, LOOPBACK, port=server.port, timeout=3)
    lines = sorted(line for rrset in r.answer for line in rrset.to_text().splitlines())
    return dns.rcode.to_text(r.rcode()), tuple(lines)


def seen(answer: Doc) -> Seen:
    """A reported answer in dnspython's presentation, as ``ask`` has it."""
    return answer["rcode"], tuple(sorted(canon(line) for line in answer["answer"]))


def canon(line: str) -> str:
    name, ttl, rdclass, rdtype, rdata = line.split(None, 4)
    return str(dns.rrset.from_text(name, int(ttl), rdclass, rdtype, rdata).to_text())


def assert_matches_dns(report: Doc, old: ServerProcess, new: ServerProcess,
                       questions: list[tuple[str, str]], hashed: frozenset[str] = frozenset()
                       ) -> int:
    """For every question and client bucket of the report: the two servers answer
    differently exactly when the diff lists it, with what they answer. Returns how
    many differ.

    Left out: ``hashed`` names (weighted services) for a bucket whose ECS a side
    does not use (private space no rule maps): that side places those clients by
    the resolver's address, and a weighted answer hashes it; the diff's resolver is
    one no rule places, this test's is loopback."""
    reported = {(c["name"], c["type"], c["bucket"]): c for c in report["changes"]}
    differing = 0
    for name, qtype in questions:
        for b in report["buckets"]:
            if name in hashed and "resolver" in (b["before"]["by"], b["after"]["by"]):
                continue
            before = ask(old, name, qtype, b["subnet"])
            after = ask(new, name, qtype, b["subnet"])
            change = reported.get((name, qtype, b["bucket"]))
            if before == after:
                assert change is None, f"{name} {qtype} {b['bucket']} listed, but DNS agrees"
                continue
            differing += 1
            assert change is not None, (
                f"{name} {qtype} for {b['bucket']}: DNS moves {before} -> {after}, not listed")
            assert (seen(change["before"]), seen(change["after"])) == (before, after)
    return differing


@pytest.fixture(scope="module")
def old_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, ServerProcess]]:
    """The base config, served: OLD of every test that compares with DNS."""
    d = tmp_path_factory.mktemp("old")
    cfg = write(d, base_doc())
    sp = start_fedns(cfg, d)
    yield cfg, sp
    sp.stop()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Path], ServerProcess]]:
    started: list[ServerProcess] = []

    def start(cfg: Path) -> ServerProcess:
        sp = start_fedns(cfg, cfg.parent)
        started.append(sp)
        return sp

    yield start
    for sp in started:
        sp.stop()


# -- the kinds of change -------------------------------------------------------------


def test_a_policy_change_moves_exactly_what_dns_moves(
    tmp_path: Path, old_server: tuple[Path, ServerProcess], serve: Callable[[Path], ServerProcess]
) -> None:
    old_cfg, old = old_server
    doc = base_doc()
    order = ["eu", "west", "east"]
    doc["federation"]["policies"]["shop/cart"] = {"policy": "failover", "failover": order}
    new_cfg = write(tmp_path / "new", doc)
    run = fedns_diff(old_cfg, new_cfg, "--json")
    assert run.rc == 1, run.err
    report = run.report
    assert report["changes"]
    for c in report["changes"]:
        assert c["name"].endswith(f"cart.shop.{ORIGIN}"), c["name"]
        assert [r["kind"] for r in c["reasons"]] == ["policy"], c
        assert "locality -> failover" in c["reasons"][0]["detail"]
    # Failover answers every client with the first cluster in the order that has endpoints.
    cart = next(s for s in services(doc) if s["name"] == "cart")
    first = cart["endpoints"][order[0]]
    want = sorted(f"cart.shop.{ORIGIN} 10 IN A {e['addresses'][0]}" for e in first
                  if e.get("ready", True))
    a_after = [c["after"]["answer"] for c in report["changes"]
               if c["name"] == f"cart.shop.{ORIGIN}" and c["type"] == "A"]
    assert a_after and all(sorted(a) == want for a in a_after)
    # Every service's per-client names, the unchanged ones too (the diff does not
    # ask those: their answers are made from equal plans), against DNS.
    new = serve(new_cfg)
    questions = [q for qs in service_names(doc).values() for q in qs]
    assert assert_matches_dns(report, old, new, questions, weighted(doc)) == len(
        [c for c in report["changes"] if c["bucket"] != "all"])
    assert report["summary"]["unchanged_names"] > 0


def test_a_weight_change_is_reported_as_weights_for_the_clients_dns_moves(
    tmp_path: Path, old_server: tuple[Path, ServerProcess], serve: Callable[[Path], ServerProcess]
) -> None:
    old_cfg, old = old_server
    doc = base_doc()
    weights = {"east": 1, "west": 3, "eu": 1}
    doc["federation"]["policies"]["shop/ads"]["weights"] = weights
    new_cfg = write(tmp_path / "new", doc)
    run = fedns_diff(old_cfg, new_cfg, "--json")
    report = run.report
    assert run.rc == 1 and report["changes"], run.out
    for c in report["changes"]:
        assert c["name"].endswith(f"ads.shop.{ORIGIN}")
        assert [r["kind"] for r in c["reasons"]] == ["weights"]
        shown = ", ".join(f"{k}={weights[k]}" for k in sorted(weights))
        assert c["reasons"][0]["detail"].endswith(f"-> {shown}")
    # Every client bucket was asked with the same subnet at both sides: the ones
    # that change are exactly those whose hash now lands elsewhere, as DNS says.
    new = serve(new_cfg)
    questions = [q for qs in service_names(doc).values() for q in qs]
    assert assert_matches_dns(report, old, new, questions, weighted(doc)) > 0


def test_a_ttl_change_shows_the_new_ttl_on_every_federated_answer(tmp_path: Path) -> None:
    doc = base_doc()
    old_cfg = write(tmp_path / "old", doc)
    before = doc["federation"]["defaults"]["ttl"]
    doc["federation"]["defaults"]["ttl"] = after = before * 3
    new_cfg = write(tmp_path / "new", doc)
    report = fedns_diff(old_cfg, new_cfg, "--json").report
    changed = {(c["name"], c["type"]) for c in report["changes"]}
    for qs in service_names(doc).values():
        assert {q for q in qs if q[1] != "AAAA"} <= changed  # (not every service has IPv6)
    for c in report["changes"]:
        assert [r["kind"] for r in c["reasons"]] == ["ttl"], c
        assert c["before"]["ttl"] == before and c["after"]["ttl"] == after
        assert [line.replace(f" {after} IN ", f" {before} IN ") for line in c["after"]["answer"]] \
            == c["before"]["answer"]
    # The zone file's own names keep their TTLs: none of them is listed.
    zone = dns.zone.from_file(str(DEMO_ZONE), ORIGIN, relativize=False)
    assert not {str(n) for n in zone.nodes} & {c["name"] for c in report["changes"]}


def test_a_static_record_change_in_the_zone_file_and_in_a_static_service(tmp_path: Path) -> None:
    doc = base_doc()
    old_cfg = write(tmp_path / "old", doc)
    zone = dns.zone.from_file(str(DEMO_ZONE), ORIGIN, relativize=False)
    web = f"web.{ORIGIN}"
    old_web = zone.find_rdataset(web, "A")[0].address
    new_web = "127.0.0.88"
    text = DEMO_ZONE.read_text().replace(old_web, new_web)
    (tmp_path / "new").mkdir()
    new_zone = tmp_path / "new" / "global.example.test.zone"
    new_zone.write_text(text)
    cart = next(s for s in services(doc) if s["name"] == "cart")
    ep = cart["endpoints"]["west"][0]
    old_ep, ep["addresses"] = ep["addresses"][0], ["127.2.0.9"]
    new_cfg = write(tmp_path / "new", doc, new_zone)
    report = fedns_diff(old_cfg, new_cfg, "--json").report

    by_name: dict[tuple[str, str, str], Doc] = {
        (c["name"], c["type"], c["bucket"]): c for c in report["changes"]}
    w = by_name.pop((web, "A", "all"))
    assert old_web in w["before"]["answer"][0] and new_web in w["after"]["answer"][0]
    assert w["reasons"] == [{"kind": "record",
                             "detail": f"{web} A: records changed in the zone file"}]
    host = f"{ep['hostname']}.west.cart.shop.{ORIGIN}"
    h = by_name[(host, "A", "all")]
    assert h["before"]["answer"] == [f"{host} 10 IN A {old_ep}"]
    assert h["after"]["answer"] == [f"{host} 10 IN A 127.2.0.9"]
    for c in by_name.values():  # the rest: cart's names, for the endpoint's change
        assert "cart.shop." in c["name"]
        assert [r["kind"] for r in c["reasons"]] == ["record"]
        assert old_ep in c["reasons"][0]["detail"] and "127.2.0.9" in c["reasons"][0]["detail"]


def test_a_locality_map_change_lists_exactly_the_moved_subnets(
    tmp_path: Path, old_server: tuple[Path, ServerProcess], serve: Callable[[Path], ServerProcess]
) -> None:
    old_cfg, old = old_server
    doc = base_doc()
    rules = doc["federation"]["localities"]
    rules[1] = {**rules[1], "region": "eu-west", "zone": "eu-west-1a"}  # moved
    del rules[2]  # removed: its clients become unplaced
    rules.append({"cidr": "10.9.0.0/16", "region": "us-west", "zone": "us-west-2a"})  # added
    new_cfg = write(tmp_path / "new", doc)
    report = fedns_diff(old_cfg, new_cfg, "--json").report

    def placed(d: Doc) -> dict[str, tuple[str, str | None]]:
        return {r["cidr"]: (r["region"], r.get("zone")) for r in d["federation"]["localities"]}

    # None of these rules overlaps another, so what moves is the rules that differ.
    was, now = placed(base_doc()), placed(doc)
    expected = {c for c in was.keys() | now.keys() if was.get(c) != now.get(c)}
    moves = {m["cidr"]: m for m in report["locality_moves"]}
    assert set(moves) == expected
    for cidr, m in moves.items():
        assert (m["before"]["region"], m["before"]["zone"]) == was.get(cidr, (None, None))
        assert (m["after"]["region"], m["after"]["zone"]) == now.get(cidr, (None, None))
    for c in report["changes"]:
        assert c["bucket"] in expected, c  # no other client moves
        assert c.get("moved_subnets") == [c["bucket"]]
        assert [r["kind"] for r in c["reasons"]] == ["locality"]
    text = fedns_diff(old_cfg, new_cfg).out
    assert all(f"  {cidr}: " in text for cidr in expected), text
    new = serve(new_cfg)
    questions = [q for qs in service_names(doc).values() for q in qs]
    assert assert_matches_dns(report, old, new, questions, weighted(doc)) > 0


def test_subnets_from_a_file_are_buckets_of_their_own(
    tmp_path: Path, old_server: tuple[Path, ServerProcess], serve: Callable[[Path], ServerProcess]
) -> None:
    old_cfg, old = old_server
    doc = base_doc()
    doc["federation"]["policies"]["shop/ads"]["weights"] = {"east": 1, "west": 1, "eu": 5}
    new_cfg = write(tmp_path / "new", doc)
    listed = [f"11.{i}.7.9" for i in range(0, 256, 16)] + ["2001:db8:77::1", "11.200.0.0/16"]
    subnets = tmp_path / "subnets.txt"
    subnets.write_text("# resolvers' client subnets\n" + "\n".join(
        f"{s}   # site {i}" if i % 2 else s for i, s in enumerate(listed)) + "\n\n")
    report = fedns_diff(old_cfg, new_cfg, "--subnets", subnets, "--json").report
    # An address stands for its /24 (/56): as much of it as fedns uses.
    want = {str(ipaddress.ip_network(s if "/" in s else f"{s}/{24 if '.' in s else 56}",
                                     strict=False)) for s in listed}
    from_file = {b["bucket"] for b in report["buckets"] if b["from"] == "--subnets"}
    assert from_file == want
    assert {c["bucket"] for c in report["changes"]} & from_file  # some of them move
    new = serve(new_cfg)
    assert assert_matches_dns(report, old, new, service_names(doc)["shop/ads"], weighted(doc)) > 0

    bad = tmp_path / "bad.txt"
    bad.write_text("10.0.0.0/8\n# fine so far\n10.0.0.300\n")
    run = fedns_diff(old_cfg, new_cfg, "--subnets", bad)
    assert run.rc == 2 and f"{bad}:3: '10.0.0.300'" in run.err, run.err


def test_no_change_exits_0_and_json_parses(tmp_path: Path) -> None:
    doc = base_doc()
    old_cfg = write(tmp_path / "old", doc)
    # Same settings, written otherwise (flow style, other key order, comments).
    (tmp_path / "new").mkdir()
    new_cfg = tmp_path / "new" / "fedns.yaml"
    new_cfg.write_text("# the same, reformatted\n" + yaml.safe_dump(
        {"federation": doc["federation"], "zones": [{"file": str(DEMO_ZONE), "origin": ORIGIN}]},
        default_flow_style=True, width=60))
    run = fedns_diff(old_cfg, new_cfg, "--json")
    assert run.rc == 0, run.out
    report = run.report
    assert report["changed"] is False and report["changes"] == []
    assert report["summary"]["answers"] == 0 and report["summary"]["questions"] > 0
    # One bucket per locality rule, and one for the clients no rule places.
    cidrs = [r["cidr"] for r in doc["federation"]["localities"]]
    assert [b["bucket"] for b in report["buckets"]] == [*cidrs, "unplaced"]
    text = fedns_diff(old_cfg, new_cfg)
    assert text.rc == 0 and "0 answers change" in text.out


def test_a_probe_change_is_a_change_not_evaluated(tmp_path: Path) -> None:
    doc = base_doc()
    old_cfg = write(tmp_path / "old", doc)
    doc["federation"]["health"] = {"probe": "http", "port": 8080, "path": "/healthz"}
    new_cfg = write(tmp_path / "new", doc)
    run = fedns_diff(old_cfg, new_cfg, "--json")
    report = run.report
    # Probes start out trusting readiness: no answer moves now, but which will depends
    # on the probes' results, so the diff exits 1 and says so.
    assert run.rc == 1 and report["changes"] == []
    assert {(u["kind"], u["subject"]) for u in report["not_evaluated"]} == {
        ("probe", k) for k in service_names(doc)}
    # The probe each plan chose, where it came from, and the settings written.
    for u in report["not_evaluated"]:
        assert u["detail"].startswith("probe none -> federation.health "), u["detail"]
        assert all(f'"{k}": {json.dumps(v)}' in u["detail"]
                   for k, v in doc["federation"]["health"].items()), u["detail"]


def test_an_invalid_config_exits_2_with_the_key_path(tmp_path: Path) -> None:
    doc = base_doc()
    old_cfg = write(tmp_path / "old", doc)
    bad = copy.deepcopy(doc)
    bad["federation"]["localities"][1]["cidr"] = "203.0.113.0/33"
    new_cfg = write(tmp_path / "new", bad)
    run = fedns_diff(old_cfg, new_cfg, "--json")
    assert run.rc == 2 and run.out == ""
    assert run.err.startswith(f"fedns diff: {new_cfg}: federation.localities[1].cidr: "), run.err
    missing = fedns_diff(old_cfg, tmp_path / "nope.yaml")
    assert missing.rc == 2 and "nope.yaml" in missing.err
    nobody = f"http://{LOOPBACK}:{free_port()}"
    unreachable = fedns_diff(old_cfg, old_cfg, "--server", nobody)
    assert unreachable.rc == 2 and f"cannot read {nobody}/v1/registry/snapshot" in unreachable.err


async def test_summarize_of_a_serving_instance_is_the_diff_in_brief(tmp_path: Path) -> None:
    """What the reload path logs: ``summarize`` of the instance serving (its table
    holds the published services) and the new one says what ``fedns diff`` says."""
    doc = base_doc()
    old_cfg = write(tmp_path / "old", doc)
    doc["federation"]["policies"]["shop/checkout"]["failover"] = ["eu", "east", "west"]
    doc["federation"]["defaults"]["ttl"] = 20
    new_cfg = write(tmp_path / "new", doc)
    report = fedns_diff(old_cfg, new_cfg, "--json").report
    serving = load_instance(load_config(old_cfg))
    assert serving.fed is not None
    control = Control(serving.fed, serving.apply)
    await control.start()
    try:
        assert await control.registry.wait_synced(5)
        control.release()
        assert serving.table.nodes.get(key_of(f"cart.shop.{ORIGIN}")) is not None
        summary = summarize(serving, load_instance(load_config(new_cfg)))
    finally:
        await control.stop()
    assert summary == report["summary"]
    assert summary["by_reason"].keys() == {"policy", "ttl"}
    assert summary["names"] == list(dict.fromkeys(c["name"] for c in report["changes"]))[:5]


# -- --server: the services a running instance learned from its clusters -----------


SHOP, BLOG = ("shop", "search", "127.1.0.40"), ("blog", "posts", "127.1.0.50")


@dataclass
class Live:
    doc: Doc
    config: Path
    server: ServerProcess
    admin: str


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A fedns watching one fake API server (cluster east), beside the demo's static
    west and eu; the cluster's two services are in no config file."""
    d = tmp_path_factory.mktemp("live")
    with ThreadedFakeKubes(["east"]) as fakes:
        kube = fakes["east"]
        for ns, name, addr in (SHOP, BLOG):
            fakes.call(kube.put_service, ns, name)
            fakes.call(kube.put_slice, ns, f"{name}-a", name, [endpoint(addr, pod=f"{name}-0")])
        doc = base_doc()
        fed = doc["federation"]
        east = federation_config(fakes.kubes, d)["clusters"][0]
        fed["clusters"][0] = {**east, "region": "us-east", "zone": "us-east-1a"}
        for s in fed["services"]:
            s["endpoints"].pop("east", None)
        cfg = write(d, doc)
        port = free_port()
        sp = start_fedns(cfg, d, extra_args=("--admin", f"{LOOPBACK}:{port}"))
        admin = f"http://{LOOPBACK}:{port}"
        try:
            snap = wait_for_snapshot(admin, {f"{ns}/{name}" for ns, name, _ in (SHOP, BLOG)})
            assert snap["clusters"]["east"]["source"] == "kubernetes"
            yield Live(doc, cfg, sp, admin)
        finally:
            sp.stop()


def wait_for_snapshot(admin: str, keys: set[str], within: float = 15) -> Doc:
    end = time.monotonic() + within
    got: Doc = {}
    while time.monotonic() < end:
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(admin + "/v1/registry/snapshot", timeout=2) as r:
                got = json.load(r)
            if keys <= {f"{s['namespace']}/{s['name']}" for s in got.get("services", [])}:
                return got
        time.sleep(0.1)
    raise AssertionError(f"GET /v1/registry/snapshot never listed {keys} (Admin given "
                         f"snapshot= by app.Supervisor.start?): {got}")


def test_server_snapshot_stands_for_the_watched_cluster(live: Live, tmp_path: Path) -> None:
    doc = copy.deepcopy(live.doc)
    ns, name, addr = BLOG
    ttl = 42
    doc["federation"]["policies"][f"{ns}/{name}"] = {"ttl": ttl}
    new_cfg = write(tmp_path / "new", doc)
    base = f"{name}.{ns}.{ORIGIN}"

    # From the files alone the cluster's services are unknown: nothing to compare.
    offline = fedns_diff(live.config, new_cfg, "--json")
    assert offline.rc == 0, offline.out
    assert any("east" in n and "--server" in n for n in offline.report["notes"])

    run = fedns_diff(live.config, new_cfg, "--server", live.admin, "--json")
    assert run.rc == 1, run.err
    report = run.report
    assert report["server"] == live.admin
    assert {c["name"] for c in report["changes"]} >= {base, f"east.{base}"}
    for c in report["changes"]:
        assert c["name"].endswith(base), c["name"]
        assert [r["kind"] for r in c["reasons"]] == ["ttl"]
        assert c["after"]["ttl"] == ttl
        if c["name"] == base and c["type"] == "A":
            assert c["after"]["answer"] == [f"{base} {ttl} IN A {addr}"]
        # Before is what the running instance answers now.
        assert seen(c["before"]) == ask(live.server, c["name"], c["type"], c["subnet"])


def test_server_export_change_drops_the_namespace_it_no_longer_exports(
    live: Live, tmp_path: Path
) -> None:
    doc = copy.deepcopy(live.doc)
    ns, name, _ = BLOG
    doc["federation"]["export"] = {"namespaces": {"deny": [ns]}}
    new_cfg = write(tmp_path / "new", doc)
    run = fedns_diff(live.config, new_cfg, "--server", live.admin, "--json")
    assert run.rc == 1, run.err
    report = run.report
    base = f"{name}.{ns}.{ORIGIN}"
    assert report["changes"]
    for c in report["changes"]:
        assert c["name"].endswith(base), c["name"]  # the shop namespace stays as it is
        assert c["after"]["rcode"] == "NXDOMAIN"
        assert seen(c["before"]) == ask(live.server, c["name"], c["type"], c["subnet"])
        assert [r["kind"] for r in c["reasons"]] == ["export"]
        assert f"namespace {ns}" in c["reasons"][0]["detail"]
    assert (base, "A") in {(c["name"], c["type"]) for c in report["changes"]}
    assert report["not_evaluated"] == []
