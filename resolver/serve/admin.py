"""Admin HTTP API (aiohttp): health, readiness, metrics, registry and explain.

Loopback by default: it shows the service map and is not meant for the world.
It knows nothing of the federation: what it shows comes from the callables
the instance (``resolver.app``) gives it.

- ``GET /healthz``: the process is alive.
- ``GET /readyz``: 200 once this instance answers correctly (zones loaded, the startup
  wait for the first sync over); never 503 because a member cluster is unreachable.
- ``GET /metrics``: Prometheus text format.
- ``GET /v1/registry``: the federated services as the control side sees them.
- ``GET /v1/clusters``: per-cluster watch state (synced, last contact, stale).
- ``GET /v1/explain?name=&type=&subnet=``: the decision trail for one answer.

Bad input is a 4xx with a message, never a traceback: a bad name or type is
400 with what to send instead; a request line or header over aiohttp's limit
(8,190 bytes) or one that is not HTTP is aiohttp's 400, logged as one debug
line; an exception inside a handler (a bug) is a JSON 500 and one error line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

# explain(name, type, subnet, source): the decision trail; ValueError for bad input.
Explain = Callable[[str, str | None, str | None, str | None], dict[str, Any]]

RCODES = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"]

log = structlog.get_logger("fedns.admin")


class StatsCollector:
    """Reads plain counters at scrape time, so the query path never takes a lock."""

    def __init__(self, stats: Callable[[], dict[str, Any]]) -> None:
        self.stats = stats

    def collect(self) -> Any:
        s = self.stats()
        q = CounterMetricFamily("fedns_queries", "DNS queries received", labels=["transport"])
        q.add_metric(["udp"], s.get("udp_queries", 0))
        q.add_metric(["tcp"], s.get("tcp_queries", 0))
        yield q
        r = CounterMetricFamily("fedns_responses", "DNS responses sent by RCODE", labels=["rcode"])
        for i, n in enumerate(s.get("rcodes", [])):
            if n or i < len(RCODES):
                r.add_metric([RCODES[i] if i < len(RCODES) else str(i)], n)
        yield r
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
        # rate_limit and cookies (resolver.serve.runtime.Stats.guard: rrl_*, cookie_*).
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
        g = GaugeMetricFamily("fedns_federated_services", "Federated services published")
        g.add_metric([], s.get("services", 0))
        yield g
        w = GaugeMetricFamily("fedns_workers", "Serving worker processes reporting")
        w.add_metric([], s.get("workers", 1))
        yield w
        c = GaugeMetricFamily(
            "fedns_cluster_synced", "1 when the cluster's watch cache has synced", labels=["cluster"]
        )
        st = GaugeMetricFamily(
            "fedns_cluster_stale", "1 when the cluster has been out of contact past its grace",
            labels=["cluster"],
        )
        lc = GaugeMetricFamily(
            "fedns_cluster_last_contact_seconds", "Unix time of the last successful contact",
            labels=["cluster"],
        )
        for name, info in s.get("clusters", {}).items():
            c.add_metric([name], 1 if info.get("synced") else 0)
            st.add_metric([name], 1 if info.get("stale") else 0)
            lc.add_metric([name], info.get("last_contact") or 0)
        yield c
        yield st
        yield lc


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        text=json.dumps(data, indent=2, default=str) + "\n",
        status=status,
        content_type="application/json",
    )


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A handler's unexpected exception: a JSON 500 and one log line, not aiohttp's page."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise  # 404, 405, ...: aiohttp's own answers
    except Exception as e:
        log.error("admin_request_failed", path=request.path, error=f"{type(e).__name__}: {e}",
                  exc_info=True)
        return _json({"error": "internal error; the server log has the details"}, status=500)


class _ServerLog(logging.LoggerAdapter):
    """aiohttp's server logger, for what reaches it before any handler.

    A malformed request, or a URL or header over aiohttp's limit, is the
    client's error (aiohttp answers 400): one debug line, no traceback. Anything
    else is logged as aiohttp would, traceback included."""

    def exception(self, msg: Any, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else sys.exc_info()[1]
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500:
            log.debug("admin_bad_request", status=exc.code,
                      error=" ".join(str(exc.message).split())[:200])
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kw)


class Admin:
    """The admin app. ``state`` callbacks keep it independent of process layout."""

    def __init__(
        self,
        explain: Explain,
        stats: Callable[[], dict[str, Any]],
        registry: Callable[[], dict[str, Any]] = dict,
        clusters: Callable[[], dict[str, Any]] = dict,
        ready: Callable[[], tuple[bool, str]] = lambda: (True, "ok"),
    ) -> None:
        self.explain = explain
        self.stats = stats
        self.registry = registry
        self.clusters = clusters
        self.ready = ready
        self.prom = CollectorRegistry()
        self.prom.register(StatsCollector(self._all_stats))

    def _all_stats(self) -> dict[str, Any]:
        s = dict(self.stats())
        s["clusters"] = self.clusters()
        return s

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/registry", self.v1_registry)
        app.router.add_get("/v1/clusters", self.v1_clusters)
        app.router.add_get("/v1/explain", self.v1_explain)
        return app

    async def healthz(self, _req: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _req: web.Request) -> web.Response:
        ok, why = self.ready()
        return web.Response(text=why + "\n", status=200 if ok else 503)

    async def metrics(self, _req: web.Request) -> web.Response:
        body = generate_latest(self.prom)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def v1_registry(self, _req: web.Request) -> web.Response:
        return _json(self.registry())

    async def v1_clusters(self, _req: web.Request) -> web.Response:
        return _json(self.clusters())

    async def v1_explain(self, req: web.Request) -> web.Response:
        q = req.query
        try:
            data = self.explain(q.get("name", ""), q.get("type"), q.get("subnet"), q.get("source"))
        except ValueError as e:  # bad input; the message says what to send instead
            return _json({"error": str(e)}, status=400)
        return _json(data)


async def start_admin(admin: Admin, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(
        admin.app(), access_log=None, logger=_ServerLog(logging.getLogger("aiohttp.server"), {})
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
