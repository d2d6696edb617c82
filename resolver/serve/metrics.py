"""``/metrics``: the instance's counters as Prometheus families, made at scrape time.

Nothing here runs per query. The serving processes keep plain counters
(``runtime.Stats``, the table's ``Counts``); the control process adds its own
(services, clusters, config versions and reloads, probes) and, with
``--workers N``, the sum of the workers' reports (``runtime.sum_stats``). The
collector reads that one dict and renders it; a key that is absent (no
federation, no probes, no reloads yet) renders no samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from ..dns.answers import ANSWER_SLOTS, COUNTED_TYPES, ROUTED_BASE, TCP_BASE
from .runtime import LATENCY_BOUNDS, LATENCY_INTERVAL, RCODES

RELOAD_OUTCOMES = ("applied", "failed", "unchanged")
PROBE_RESULTS = ("ok", "fail", "timeout", "error")


def rcode_text(rcode: int) -> str:
    return RCODES[rcode] if rcode < len(RCODES) else str(rcode)


class StatsCollector:
    """Reads plain counters at scrape time, so the query path never takes a lock."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats()
        yield from _queries(s)
        yield from _caches(s)
        yield from _protocol(s)
        yield from _serving(s)
        yield from _clusters(s.get("clusters") or {})
        yield from _config(s)
        if isinstance(s.get("probes"), Mapping):
            yield from _probes(s["probes"])


def _queries(s: Mapping[str, Any]) -> Iterator[Metric]:
    q = CounterMetricFamily(
        "fedns_queries", "DNS queries received (every datagram or TCP message)",
        labels=["transport"],
    )
    q.add_metric(["udp"], s.get("udp_queries", 0))
    q.add_metric(["tcp"], s.get("tcp_queries", 0))
    yield q
    r = CounterMetricFamily(
        "fedns_responses",
        "DNS replies by transport, question type (" + ", ".join(COUNTED_TYPES[:-1])
        + "; every other type, and replies echoing no question, as other) and RCODE, "
        "as answered (rate limiting's slips and drops: fedns_rrl_limited_responses_total)",
        labels=["transport", "type", "rcode"],
    )
    answers = _answers(s)
    for base, transport in ((0, "udp"), (TCP_BASE, "tcp")):
        for t, type_name in enumerate(COUNTED_TYPES):
            for rcode in range(16):
                n = answers[base + (t << 4) + rcode]
                # NOERROR always, so every type has a series from the start (rate() needs two).
                if n or rcode == 0:
                    r.add_metric([transport, type_name, rcode_text(rcode)], n)
    yield r
    h = HistogramMetricFamily(
        "fedns_answer_duration_seconds",
        "Time from a query read to its reply ready to send. UDP (batched thread): every "
        "reply, each with its batch's time (a batch's replies leave together); TCP and "
        f"UDP on uvloop: sampled, one query per {LATENCY_INTERVAL * 1000:g} ms timed and "
        "counted once for each query of its transport since the last one timed",
        labels=["transport"],
    )
    latency: Mapping[str, Sequence[int]] = s.get("latency") or {}
    sums: Mapping[str, int] = s.get("latency_ns") or {}
    for transport in ("udp", "tcp"):
        counts = latency.get(transport) or [0] * (len(LATENCY_BOUNDS) + 1)
        h.add_metric(
            [transport],
            _cumulative(zip((*LATENCY_BOUNDS, math.inf), counts, strict=False)),
            sums.get(transport, 0) / 1e9,
        )
    yield h


def _answers(s: Mapping[str, Any]) -> list[int]:
    """Replies per transport, type and RCODE (``Counts.answers`` less the memo split)."""
    raw: Sequence[int] = s.get("answers") or ()
    raw = list(raw) + [0] * (ANSWER_SLOTS - len(raw))
    return [a + b for a, b in zip(raw[:ROUTED_BASE], raw[ROUTED_BASE:], strict=True)]


def _cumulative(buckets: Iterable[tuple[float, int]]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    n = 0
    for le, count in buckets:
        n += count
        out.append((floatToGoString(le), n))
    return out


def _caches(s: Mapping[str, Any]) -> Iterator[Metric]:
    raw: Sequence[int] = s.get("answers") or ()
    routed = sum(raw[ROUTED_BASE:])
    reply_hits, below_hits = s.get("reply_hits", 0), s.get("below_hits", 0)
    tcp_hits = s.get("tcp_reply_hits", 0)
    hits = CounterMetricFamily(
        "fedns_reply_cache_hits",
        "Replies sent from a reply cache: replies (UDP: the same question's bytes seen "
        "before), tcp_replies (the same over TCP), below (UDP: a new name under an "
        "existing one that does not exist)",
        labels=["cache"],
    )
    hits.add_metric(["replies"], reply_hits)
    hits.add_metric(["below"], below_hits)
    hits.add_metric(["tcp_replies"], tcp_hits)
    yield hits
    yield CounterMetricFamily(
        "fedns_reply_cache_misses", "Replies made afresh (found in no reply cache), UDP and TCP",
        value=max(0, sum(raw) - reply_hits - below_hits - tcp_hits),
    )
    yield CounterMetricFamily(
        "fedns_router_memo_hits",
        "Federated answers found in their router's memo (per client subnet or source)",
        value=max(0, routed - s.get("memo_misses", 0)),
    )
    yield CounterMetricFamily(
        "fedns_router_memo_misses", "Federated answers routed afresh (then remembered)",
        value=s.get("memo_misses", 0),
    )
    yield CounterMetricFamily(
        "fedns_answers_rebuilt",
        "Names whose answers were compiled again after a change (every serving process)",
        value=s.get("rebuilt", 0),
    )


def _protocol(s: Mapping[str, Any]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "fedns_dropped_queries", "Packets not answered (not a query, or unreadable header)",
        value=s.get("dropped", 0),
    )
    yield CounterMetricFamily(
        "fedns_internal_errors", "Queries that raised inside fedns (answered SERVFAIL)",
        value=s.get("errors", 0),
    )
    yield CounterMetricFamily(
        "fedns_udp_send_errors",
        "UDP replies the kernel refused to send (lost, as on the wire; e.g. full buffers)",
        value=s.get("udp_send_errors", 0),
    )
    yield CounterMetricFamily(
        "fedns_tcp_connections", "TCP connections accepted", value=s.get("tcp_connections", 0)
    )
    yield CounterMetricFamily(
        "fedns_tcp_refused",
        "TCP connections reset at the per-source cap or evicted at the total cap",
        value=s.get("tcp_refused", 0),
    )
    # rate_limit and cookies (the table's Counts: rrl_*, cookie_*).
    rrl = CounterMetricFamily(
        "fedns_rrl_limited_responses",
        "UDP replies over the rate limit, by what was done: sent truncated (slip), "
        "BADCOOKIE, dropped, sent anyway (log_only, or a valid server cookie)",
        labels=["action"],
    )
    for action, key in (("slip", "slipped"), ("badcookie", "badcookie"), ("drop", "dropped"),
                        ("log_only", "logged"), ("valid_cookie", "exempt")):
        rrl.add_metric([action], s.get(f"rrl_{key}", 0))
    yield rrl
    ck = CounterMetricFamily(
        "fedns_cookie_queries", "Queries with a DNS COOKIE option, by what it held",
        labels=["cookie"],
    )
    for kind in ("client_only", "valid", "invalid", "malformed"):
        ck.add_metric([kind], s.get(f"cookie_{kind}", 0))
    yield ck
    yield CounterMetricFamily(
        "fedns_query_log_events", "Query events logged (log.query_sample)",
        value=s.get("query_log", 0),
    )


def _serving(s: Mapping[str, Any]) -> Iterator[Metric]:
    g = GaugeMetricFamily("fedns_federated_services", "Federated services published")
    g.add_metric([], s.get("services", 0))
    yield g
    w = GaugeMetricFamily("fedns_workers", "Serving worker processes alive")
    w.add_metric([], s.get("workers", 1))
    yield w


def _clusters(clusters: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    synced = GaugeMetricFamily(
        "fedns_cluster_synced", "1 when the cluster's watch cache has synced", labels=["cluster"]
    )
    stale = GaugeMetricFamily(
        "fedns_cluster_stale", "1 when the cluster has been out of contact past its grace",
        labels=["cluster"],
    )
    contact = GaugeMetricFamily(
        "fedns_cluster_last_contact_seconds", "Unix time of the last successful contact",
        labels=["cluster"],
    )
    restarts = CounterMetricFamily(
        "fedns_cluster_watch_restarts",
        "Watch requests opened again (a stream's clean end after timeoutSeconds, an error, "
        "a relist), all resources of the cluster",
        labels=["cluster"],
    )
    relists = CounterMetricFamily(
        "fedns_cluster_relists",
        "Lists after the first (after 410 Gone, a resource not served), all resources",
        labels=["cluster"],
    )
    events = CounterMetricFamily(
        "fedns_cluster_events",
        "Watch events (ADDED, MODIFIED, DELETED) applied to the cluster's cache",
        labels=["cluster"],
    )
    for name, info in clusters.items():
        synced.add_metric([name], 1 if info.get("synced") else 0)
        stale.add_metric([name], 1 if info.get("stale") else 0)
        contact.add_metric([name], info.get("last_contact") or 0)
        restarts.add_metric([name], info.get("watch_restarts", 0))
        relists.add_metric([name], info.get("relists", 0))
        events.add_metric([name], info.get("events", 0))
    yield from (synced, stale, contact, restarts, relists, events)


def _config(s: Mapping[str, Any]) -> Iterator[Metric]:
    version = s.get("config_version")
    if isinstance(version, str):
        yield InfoMetricFamily(
            "fedns_config", "The config version serving (content hash of the config and its "
            "zone files)", value={"version": version},
        )
    applied = s.get("config_applied")
    if isinstance(applied, int | float):
        g = GaugeMetricFamily(
            "fedns_config_applied_timestamp_seconds", "Unix time the serving version was applied"
        )
        g.add_metric([], applied)
        yield g
    reloads = s.get("reloads")
    if isinstance(reloads, Mapping):
        c = CounterMetricFamily(
            "fedns_config_reloads",
            "Config reloads by outcome: applied (a new version serves), failed (the "
            "previous one kept serving), unchanged (the same version)",
            labels=["outcome"],
        )
        for outcome in dict.fromkeys((*RELOAD_OUTCOMES, *reloads)):
            c.add_metric([str(outcome)], reloads.get(outcome, 0))
        yield c


def _probes(p: Mapping[str, Any]) -> Iterator[Metric]:
    results = p.get("results")
    if isinstance(results, Mapping):
        c = CounterMetricFamily(
            "fedns_probes", "Active health probes by result", labels=["result"]
        )
        for result in dict.fromkeys((*PROBE_RESULTS, *results)):
            c.add_metric([str(result)], results.get(result, 0))
        yield c
    latency = p.get("latency")
    if isinstance(latency, Mapping) and latency.get("buckets"):
        h = HistogramMetricFamily(
            "fedns_probe_duration_seconds", "Time an active health probe took"
        )
        buckets = [(floatToGoString(le), n) for le, n in latency["buckets"]]
        if buckets[-1][0] != "+Inf":
            buckets.append(("+Inf", latency.get("count", buckets[-1][1])))
        h.add_metric([], buckets, latency.get("sum", 0))
        yield h
    if "targets" in p:
        g = GaugeMetricFamily(
            "fedns_probe_targets", "Distinct probe targets (address, port, probe settings)"
        )
        g.add_metric([], p["targets"])
        yield g
    flips = p.get("flips")
    if isinstance(flips, Mapping):
        f = CounterMetricFamily(
            "fedns_health_flips", "Endpoints whose probe health changed, by direction",
            labels=["direction"],
        )
        for direction in dict.fromkeys(("up", "down", *flips)):
            f.add_metric([str(direction)], flips.get(direction, 0))
        yield f
    endpoints = p.get("endpoints")
    if isinstance(endpoints, Mapping):
        e = GaugeMetricFamily(
            "fedns_endpoints",
            "Service endpoints per cluster by effective health (readiness, probe, stale policy)",
            labels=["cluster", "health"],
        )
        for cluster, counts in endpoints.items():
            for health in ("healthy", "unhealthy"):
                e.add_metric([cluster, health], counts.get(health, 0))
        yield e
