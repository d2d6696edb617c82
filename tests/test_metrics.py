"""``/metrics`` counts what the server did, scraped from real ``fedns serve --admin``
processes and read with prometheus_client's own text parser.

- Replies by transport, question type and RCODE, the reply caches' hits and
  misses, dropped packets, the answer latency histogram: every counter moves by
  exactly the queries a dnspython client sent (1 worker, and 2 once they have
  reported), the expected counts taken from the replies the client got.
- A federation (a fake Kubernetes API server and a static cluster, 2 workers):
  the per-cluster watch counters move with the watch events, restarts and
  relists the fake server causes (and ``/v1/clusters`` says the same); router
  memo hits and misses; every family the README's metrics table documents is in
  the scrape; every metric the Grafana dashboard (helm/fedns/dashboards) queries
  is in the scrape; one ``cluster synced`` event per cluster; and no log line of
  the run holds the kubeconfig's token or the admin token.
- The chart ships the dashboard as a ConfigMap for Grafana's sidecar when asked.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import struct
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml
from dnsclient import make, tcp
from fakekube import ThreadedFakeKubes, endpoint, federation_config
from prometheus_client.parser import text_string_to_metric_families
from servers import (
    FED_ORIGIN,
    FED_ZONE,
    LOOPBACK,
    REPO,
    RICH_ORIGIN,
    RICH_ZONE,
    FednsFactory,
    ServerProcess,
    free_port,
    start_fedns,
    write_config,
)

Key = tuple[str, tuple[tuple[str, str], ...]]  # (sample name, sorted labels)
README = REPO / "README.md"
DASHBOARD = REPO / "helm" / "fedns" / "dashboards" / "fedns.json"
# The question types fedns_responses_total names (resolver/dns/answers.py COUNTED_TYPES).
NAMED_TYPES = {"A", "AAAA", "SRV", "TXT", "NS", "SOA", "CNAME", "MX", "PTR", "HTTPS", "SVCB", "ANY"}


def scrape(url: str) -> dict[Key, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def wait_admin(url: str) -> None:
    """The admin API comes up beside DNS (the control process imports aiohttp only
    then): wait for it rather than race it."""
    deadline = time.monotonic() + 15
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def settled(url: str) -> dict[Key, float]:
    """A scrape once the counters stop moving (workers report once a second)."""
    def counters() -> dict[Key, float]:
        return {k: v for k, v in scrape(url).items() if k[0].endswith(("_total", "_count"))}

    before = counters()
    while True:
        time.sleep(1.2)
        again = counters()
        if again == before:
            return scrape(url)
        before = again


def until_counts(url: str, want: dict[Key, float], within: float = 10.0) -> dict[Key, float]:
    """Scrape until every key in ``want`` has its value (workers report once a second);
    the differences left when time is up."""
    deadline = time.monotonic() + within
    while True:
        got = scrape(url)
        diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
        if not diff or time.monotonic() > deadline:
            return diff
        time.sleep(0.2)


def counted_type(rdtype: int) -> str:
    text = dns.rdatatype.to_text(rdtype)
    return text if text in NAMED_TYPES else "other"


def responses(transport: str, qtype: str, rcode: str) -> Key:
    return ("fedns_responses_total", (("rcode", rcode), ("transport", transport), ("type", qtype)))


def one(name: str, **labels: str) -> Key:
    return (name, tuple(sorted(labels.items())))


# -- replies, caches, latency: exactly what was sent ---------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_counters_move_by_exactly_the_queries_sent(fedns_server: FednsFactory, workers: int) -> None:
    admin = f"127.0.0.1:{free_port()}"
    srv = fedns_server(
        {RICH_ORIGIN: RICH_ZONE}, workers=workers, extra_args=("--admin", admin, "--log-format", "json")
    )
    url = f"http://{admin}"
    wait_admin(url)
    before = settled(url)

    # UDP on one socket: one source port, so with 2 workers the kernel gives every
    # datagram to the same one, and which reply comes from a cache is known.
    got: Counter[Key] = Counter()
    sent = {"udp": 0, "tcp": 0}
    replies = {"udp": 0, "tcp": 0}
    repeats = 0  # replies of a question asked before: from the replies cache
    asked: set[tuple[str, str]] = set()
    udp_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp_sock.settimeout(3)

    def ask_udp(wire: bytes, expect_reply: bool = True) -> bytes | None:
        sent["udp"] += 1
        udp_sock.sendto(wire, srv.addr)
        if not expect_reply:
            udp_sock.settimeout(0.3)
            try:
                udp_sock.recv(65535)
            except TimeoutError:
                return None
            finally:
                udp_sock.settimeout(3)
            raise AssertionError("a reply to a packet fedns must drop")
        reply = udp_sock.recv(65535)
        replies["udp"] += 1
        return reply

    questions = [  # (name, type, times): every counted type, and one that is not (CAA)
        ("web", "A", 6), ("web", "AAAA", 2), ("@", "MX", 2), ("@", "TXT", 1), ("_sip._udp", "SRV", 3),
        ("@", "NS", 1), ("@", "SOA", 2), ("WWW", "CNAME", 1), ("7.2.0.192.in-addr", "PTR", 1),
        ("web", "HTTPS", 1), ("web", "SVCB", 1), ("@", "ANY", 1), ("@", "CAA", 2),
    ]  # fmt: skip
    for label, rdtype, times in questions:
        name = RICH_ORIGIN if label == "@" else f"{label}.{RICH_ORIGIN}"
        for i in range(times):
            q = make(name, rdtype, edns=0, qid=i)
            reply = dns.message.from_wire(ask_udp(q.to_wire()) or b"")
            got[responses("udp", counted_type(q.question[0].rdtype), dns.rcode.to_text(reply.rcode()))] += 1
            repeats += (name, rdtype) in asked
            asked.add((name, rdtype))
    # Names that do not exist, below the apex, all with a first label as long: the
    # first is made, the others come from the negative cache (``below``).
    for i in range(5):
        reply = dns.message.from_wire(ask_udp(make(f"nx{i}.{RICH_ORIGIN}", "TXT", edns=0).to_wire()) or b"")
        got[responses("udp", "TXT", dns.rcode.to_text(reply.rcode()))] += 1
    for _ in range(2):  # not our zone
        reply = dns.message.from_wire(ask_udp(make("example.org.", "A").to_wire()) or b"")
        got[responses("udp", "A", dns.rcode.to_text(reply.rcode()))] += 1
    # Two questions: FORMERR with no question echoed, so its type is "other".
    two = struct.pack(">HHHHHH", 7, 0, 2, 0, 0, 0) + make("a.", "A").to_wire()[12:] * 2
    for _ in range(3):
        raw = ask_udp(two)
        assert raw is not None and len(raw) == 12
        got[responses("udp", "other", dns.rcode.to_text(raw[3] & 0x0F))] += 1
    response = make(f"web.{RICH_ORIGIN}", "A").to_wire()
    for _ in range(2):  # QR=1: dropped
        ask_udp(response[:2] + b"\x80" + response[3:], expect_reply=False)
    udp_sock.close()
    for label, rdtype in (("mail", "MX"), ("mail", "A"), ("web", "AAAA"), ("@", "SOA")):
        name = RICH_ORIGIN if label == "@" else f"{label}.{RICH_ORIGIN}"
        reply = tcp(srv.addr, make(name, rdtype))
        sent["tcp"] += 1
        replies["tcp"] += 1
        got[responses("tcp", rdtype, dns.rcode.to_text(reply.rcode()))] += 1
    # One question twice on one connection (so one worker): the second from its TCP reply cache.
    with socket.create_connection(srv.addr, timeout=5) as conn:
        for _ in range(2):
            reply = dns.query.tcp(make(f"ns1.{RICH_ORIGIN}", "A"), srv.addr[0], timeout=5, sock=conn)
            sent["tcp"] += 1
            replies["tcp"] += 1
            got[responses("tcp", "A", dns.rcode.to_text(reply.rcode()))] += 1
    assert got[responses("udp", "other", "NOERROR")] == 2  # CAA
    assert got[responses("udp", "TXT", "NXDOMAIN")] == 5
    assert got[responses("udp", "A", "REFUSED")] == 2

    want: dict[Key, float] = {k: before.get(k, 0) + n for k, n in got.items()}
    for transport in ("udp", "tcp"):
        k = one("fedns_queries_total", transport=transport)
        want[k] = before[k] + sent[transport]
    hits, below_hits = one("fedns_reply_cache_hits_total", cache="replies"), one(
        "fedns_reply_cache_hits_total", cache="below"
    )
    tcp_hits = one("fedns_reply_cache_hits_total", cache="tcp_replies")
    misses = one("fedns_reply_cache_misses_total")
    want[hits] = before[hits] + repeats
    want[below_hits] = before[below_hits] + 4
    want[tcp_hits] = before[tcp_hits] + 1
    # Made afresh: each question's first reply, the first nx name, REFUSED, FORMERR.
    want[misses] = before[misses] + replies["udp"] + replies["tcp"] - repeats - 4 - 1
    want[one("fedns_dropped_queries_total")] = before[one("fedns_dropped_queries_total")] + 2
    for k in ("fedns_internal_errors_total", "fedns_udp_send_errors_total"):
        want[one(k)] = 0
    want[one("fedns_tcp_connections_total")] = before[one("fedns_tcp_connections_total")] + 5
    # The batched UDP thread times every reply (each with its batch's time).
    udp_count = one("fedns_answer_duration_seconds_count", transport="udp")
    want[udp_count] = before[udp_count] + replies["udp"]
    want[one("fedns_workers")] = workers
    diff = until_counts(url, want)
    assert not diff, diff

    after = scrape(url)
    # Every reply is in one series: no other (transport, type, rcode) moved.
    moved = {
        k for k, v in after.items()
        if k[0] == "fedns_responses_total" and v != before.get(k, 0) and k not in got
    }  # fmt: skip
    assert not moved, moved
    # TCP and uvloop UDP time one query in 10 ms; each stands for those since the last.
    tcp_count = one("fedns_answer_duration_seconds_count", transport="tcp")
    assert before[tcp_count] < after[tcp_count] <= after[one("fedns_queries_total", transport="tcp")]
    # Cumulative buckets end with +Inf = count, and are monotonic.
    buckets = sorted(
        (float(dict(k[1])["le"]), v) for k, v in after.items()
        if k[0] == "fedns_answer_duration_seconds_bucket" and dict(k[1])["transport"] == "udp"
    )  # fmt: skip
    assert buckets[-1] == (float("inf"), after[udp_count])
    assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))
    # log.query_sample defaults to 0: no query event in the whole run.
    lines = [json.loads(line) for line in srv.output().splitlines() if line.startswith("{")]
    assert lines and not [e for e in lines if e.get("event") == "query"]


# -- a federation: clusters, memos, documented families, the dashboard, no secrets --------------

SECRET = "kubeconfig-token-0f3c9a71d2b84e56"  # the fake cluster's bearer token
ADMIN_TOKEN = "admin-token-7d41e0b29c5a86f3"
STATIC_ADDR = "127.2.0.1"
EAST_ADDRS = ["127.1.0.1", "127.1.0.2"]


@contextmanager
def federation(tmp_path: Path, workers: int) -> Iterator[tuple[ThreadedFakeKubes, ServerProcess, str]]:
    """fedns watching a fake API server (east, with a bearer token in its kubeconfig)
    and a static cluster (west), both serving shop/cart; ``--admin`` with a token."""
    with ThreadedFakeKubes(["east"]) as fakes:
        fakes.call(fakes["east"].put_service, "shop", "cart")
        fakes.call(
            fakes["east"].put_slice, "shop", "cart-a", "cart",
            [endpoint(EAST_ADDRS[0], pod="cart-0")],
        )  # fmt: skip
        fed = federation_config(fakes.kubes, tmp_path, stale_after="30s")
        kubeconfig = tmp_path / fed["clusters"][0]["kubeconfig"]
        kc = yaml.safe_load(kubeconfig.read_text())
        kc["users"][0]["user"] = {"token": SECRET}
        kubeconfig.write_text(yaml.safe_dump(kc))
        fed["clusters"].append({"name": "west", "region": "r-west", "zone": "z-west"})
        fed["services"] = [{
            "namespace": "shop", "name": "cart", "ports": [{"name": "https", "port": 443}],
            "endpoints": {"west": [{"addresses": [STATIC_ADDR]}]},
        }]  # fmt: skip
        fed["localities"] = [{"cidr": "127.0.0.0/8", "region": "r-east", "zone": "z-east"}]
        (tmp_path / "admin.token").write_text(ADMIN_TOKEN + "\n")
        admin = f"{LOOPBACK}:{free_port()}"
        cfg = write_config(
            tmp_path,
            {FED_ORIGIN: FED_ZONE},
            {
                "federation": fed,
                "admin": {"listen": admin, "token_file": "admin.token"},
                "log": {"level": "debug"},
            },
        )
        sp = start_fedns(cfg, tmp_path, workers=workers, extra_args=("--log-format", "json"))
        try:
            url = f"http://{admin}"
            wait_admin(url)
            yield fakes, sp, url
        finally:
            sp.stop()


def a_records(addr: tuple[str, int], name: str, sock: socket.socket | None = None) -> set[str]:
    q = make(name, "A")
    r = dns.query.udp(q, addr[0], port=addr[1], timeout=3, sock=sock)
    return {rd.to_text() for rr in r.answer for rd in rr}


def until(what: Callable[[], bool], within: float, why: Callable[[], object]) -> None:
    end = time.monotonic() + within
    while not what():
        if time.monotonic() > end:
            raise AssertionError(why())
        time.sleep(0.05)


def documented_families() -> list[str]:
    """The metric families the README's metrics table lists (its first column)."""
    text = README.read_text()
    section = text[text.index("### Metrics") :]
    section = section[: section.index("\n### ", 1)]
    names = re.findall(r"^\| `(fedns_[a-z_]+)(?:\{[^`]*\})?` \|", section, re.M)
    assert len(names) > 20, "the README's metrics table is missing or unreadable"
    return names


PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads, parsed conservatively: strings,
    label matchers, grouping lists, durations and Grafana variables removed, an
    identifier followed by ``(`` is a function, the rest are metric names."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                exprs.append(t["expr"])

    walk(doc["panels"])
    for var in doc.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            q = q["query"] if isinstance(q, dict) else q
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", q)
            exprs.append(inner.group(1) if inner else q)
    return exprs


def test_promql_names_are_parsed_conservatively() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, transport) (rate(fedns_answer_duration_seconds_bucket'
        '{job=~"$job", transport="udp"}[$__rate_interval]))) / on(instance) group_left '
        "max(fedns_workers) + time() - fedns_cluster_last_contact_seconds{cluster=~\"$cluster\"}"
    )
    assert promql_metrics(expr) == {
        "fedns_answer_duration_seconds_bucket", "fedns_workers", "fedns_cluster_last_contact_seconds",
    }  # fmt: skip


def test_a_federation_counts_watches_memos_and_shows_every_documented_metric(tmp_path: Path) -> None:
    with federation(tmp_path, workers=2) as (fakes, sp, url):
        until(lambda: get_json(f"{url}/v1/clusters").get("east", {}).get("synced") is True,
              15, sp.output)
        name = f"cart.shop.{FED_ORIGIN}"
        until(lambda: a_records(sp.addr, name) == {EAST_ADDRS[0]}, 15, sp.output)
        east = fakes["east"]
        fakes.run(east.watching(2))
        clusters0 = get_json(f"{url}/v1/clusters")["east"]

        # Two watch events; a 410 on both watches (each relists and watches again); then
        # both streams dropped (each watches again, after a backoff).
        fakes.call(
            east.put_slice, "shop", "cart-a", "cart",
            [endpoint(EAST_ADDRS[0], pod="cart-0"), endpoint(EAST_ADDRS[1], pod="cart-1")],
        )  # fmt: skip
        fakes.call(lambda: east.put_service("shop", "cart", labels={"tier": "web"}))
        until(lambda: a_records(sp.addr, name) == set(EAST_ADDRS), 10, sp.output)
        assert fakes.call(east.error_watches, 410) == 2
        until(lambda: get_json(f"{url}/v1/clusters")["east"]["relists"] == clusters0["relists"] + 2,
              15, lambda: get_json(f"{url}/v1/clusters"))
        fakes.run(east.watching(2))
        assert fakes.call(east.drop_watches) == 2
        until(lambda: get_json(f"{url}/v1/clusters")["east"]["watch_restarts"]
              == clusters0["watch_restarts"] + 4, 15, lambda: get_json(f"{url}/v1/clusters"))
        clusters = get_json(f"{url}/v1/clusters")
        assert clusters["east"]["events"] == clusters0["events"] + 2, clusters
        assert clusters["west"] | {"watch_restarts": 0, "relists": 0, "events": 0} == clusters["west"]

        # Router memos (per source address without ECS): a source not used so far, one
        # socket, so one worker; the first answer is routed, the next four come from
        # the memo of that name's router.
        before = settled(url)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.2", 0))
            for _ in range(5):
                assert a_records(sp.addr, name, sock=s) == set(EAST_ADDRS)
        want = {
            one("fedns_router_memo_misses_total"): before[one("fedns_router_memo_misses_total")] + 1,
            one("fedns_router_memo_hits_total"): before[one("fedns_router_memo_hits_total")] + 4,
            responses("udp", "A", "NOERROR"): before[responses("udp", "A", "NOERROR")] + 5,
        }
        for cluster, info in clusters.items():
            for metric, key in (("fedns_cluster_watch_restarts_total", "watch_restarts"),
                                ("fedns_cluster_relists_total", "relists"),
                                ("fedns_cluster_events_total", "events")):
                want[one(metric, cluster=cluster)] = info[key]
        diff = until_counts(url, want)
        assert not diff, diff

        metrics = scrape(url)
        present = {k[0] for k in metrics}
        families = {re.sub(r"_(total|bucket|count|sum|info)$", "", n) for n in present}
        missing = [f for f in documented_families() if re.sub(r"_(total|info)$", "", f) not in families]
        assert not missing, f"documented in the README, not in /metrics: {missing}"
        unread = {q: promql_metrics(q) - present for q in dashboard_queries()}
        unread = {q: names for q, names in unread.items() if names}
        assert not unread, f"the dashboard queries metrics /metrics does not have: {unread}"
        assert metrics[one("fedns_workers")] == 2
        assert metrics[one("fedns_cluster_synced", cluster="east")] == 1
        assert metrics[one("fedns_cluster_synced", cluster="west")] == 1
        version = [k for k in metrics if k[0] == "fedns_config_info"]
        assert len(version) == 1 and dict(version[0][1])["version"], version
        output = sp.output()
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    synced = Counter(e["cluster"] for e in events if e.get("event") == "cluster synced")
    assert synced == {"east": 1, "west": 1}, synced
    assert all(e["state"] == "synced" for e in events if e.get("event") == "cluster synced")
    for secret in (SECRET, ADMIN_TOKEN):
        assert secret not in output, f"a log line holds {secret}"


# -- the chart ---------------------------------------------------------------------------------


def test_the_chart_ships_the_dashboard_for_grafanas_sidecar() -> None:
    helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (the Helm v4 SDK)")
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate"
    )
    chart = helm.Chart.load(str(REPO / "helm" / "fedns"))

    def configmaps(values: dict[str, Any]) -> list[dict[str, Any]]:
        out = chart.render(values, name="fedns", namespace="dns")
        docs = [d for k, text in out.items() if k.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
        return [d for d in docs if d["kind"] == "ConfigMap" and "fedns.json" in d.get("data", {})]

    assert configmaps({}) == []  # off by default
    (cm,) = configmaps({"dashboards": {"enabled": True, "annotations": {"grafana_folder": "DNS"}}})
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "DNS"}
    assert cm["metadata"]["namespace"] == "dns"
    assert json.loads(cm["data"]["fedns.json"]) == json.loads(DASHBOARD.read_text())
    for v in ("1.27.0", "1.37.0"):
        kubernetes_validate.validate(cm, v, strict=True)
    (cm,) = configmaps({"dashboards": {"enabled": True, "namespace": "monitoring",
                                       "labels": {"grafana_dashboard": "fedns"}}})
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "fedns"
