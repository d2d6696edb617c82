"""Admin HTTP API (aiohttp): health, readiness, metrics, registry and explain.

Loopback by default: it shows the service map and is not meant for the world.
It knows nothing of the federation: what it shows comes from the callables
the instance (``resolver.app``) gives it.

- ``GET /healthz``: the process is alive.
- ``GET /readyz``: 200 once this instance answers correctly (zones loaded, the startup
  wait for the first sync over); never 503 because a member cluster is unreachable.
- ``GET /metrics``: Prometheus text format.
- ``GET /v1/registry``: the federated services as the control side sees them.
- ``GET /v1/registry/snapshot``: the same services as ``federation.services`` entries
  (endpoints per cluster as the clusters report them), for ``fedns diff --server``.
- ``GET /v1/clusters``: per-cluster watch state (synced, last contact, stale).
- ``GET /v1/explain?name=&type=&subnet=``: the decision trail for one answer.
- ``GET /v1/config``, ``GET /v1/config/history``: the version serving, the last attempts.
- ``POST /v1/config/rollback`` (``?to=VERSION``), ``POST /v1/config/reload``: writes; they
  need ``Authorization: Bearer <admin.token_file>``, and are refused (403) without a token
  file. With ``admin.auth: all`` every endpoint needs it.

Bad input is a 4xx with a message, never a traceback: a bad name or type is
400 with what to send instead; a request line or header over aiohttp's limit
(8,190 bytes) or one that is not HTTP is aiohttp's 400, logged as one debug
line; an exception inside a handler (a bug) is a JSON 500 and one error line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..config import ConfigError, read_token
from .metrics import StatsCollector

# explain(name, type, subnet, source): the decision trail; ValueError for bad input.
Explain = Callable[[str, str | None, str | None, str | None], dict[str, Any]]

log = structlog.get_logger("fedns.admin")


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
        snapshot: Callable[[], dict[str, Any]] = dict,
        clusters: Callable[[], dict[str, Any]] = dict,
        ready: Callable[[], tuple[bool, str]] = lambda: (True, "ok"),
        config: Callable[[], dict[str, Any]] = dict,
        history: Callable[[], dict[str, Any]] = dict,
        rollback: Callable[[str | None], Awaitable[Any]] | None = None,
        reload: Callable[[], Awaitable[Any]] | None = None,
        token_file: Path | None = None,
        auth_all: bool = False,
    ) -> None:
        self.explain = explain
        self.stats = stats
        self.registry = registry
        self.snapshot = snapshot
        self.clusters = clusters
        self.ready = ready
        self.config = config
        self.history = history
        self.rollback = rollback
        self.reload = reload
        self.token = Token(token_file) if token_file is not None else None
        self.auth_all = auth_all
        self.prom = CollectorRegistry()
        self.prom.register(StatsCollector(self._all_stats))

    def _all_stats(self) -> dict[str, Any]:
        s = dict(self.stats())
        s["clusters"] = self.clusters()
        return s

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_errors, self._auth])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/registry", self.v1_registry)
        app.router.add_get("/v1/registry/snapshot", self.v1_registry_snapshot)
        app.router.add_get("/v1/clusters", self.v1_clusters)
        app.router.add_get("/v1/explain", self.v1_explain)
        app.router.add_get("/v1/config", self.v1_config)
        app.router.add_get("/v1/config/history", self.v1_config_history)
        app.router.add_post("/v1/config/rollback", self.v1_config_rollback)
        app.router.add_post("/v1/config/reload", self.v1_config_reload)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Writes need the bearer token; with ``admin.auth: all`` every request does."""
        if request.method in ("GET", "HEAD", "OPTIONS") and not self.auth_all:
            return await handler(request)
        if self.token is None:
            return _json(
                {"error": "writes are off: set admin.token_file (a file holding the bearer "
                          "token) to allow rollback and reload over the admin API"},
                status=403,
            )
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        try:
            ok = scheme.lower() == "bearer" and self.token.matches(given.strip())
        except OSError as e:
            log.error("admin_token_unreadable", file=str(self.token.path), error=e.strerror)
            return _json({"error": "the token file cannot be read; see the server log"}, 503)
        if not ok:
            log.warning("admin_unauthorized", path=request.path, method=request.method,
                        remote=request.remote, sent=bool(header))
            resp = _json(
                {"error": "send Authorization: Bearer <the token in admin.token_file>"}, status=401
            )
            resp.headers["WWW-Authenticate"] = 'Bearer realm="fedns"'
            return resp
        return await handler(request)

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

    async def v1_registry_snapshot(self, _req: web.Request) -> web.Response:
        return _json(self.snapshot())

    async def v1_clusters(self, _req: web.Request) -> web.Response:
        return _json(self.clusters())

    async def v1_explain(self, req: web.Request) -> web.Response:
        q = req.query
        try:
            data = self.explain(q.get("name", ""), q.get("type"), q.get("subnet"), q.get("source"))
        except ValueError as e:  # bad input; the message says what to send instead
            return _json({"error": str(e)}, status=400)
        return _json(data)


    async def v1_config(self, _req: web.Request) -> web.Response:
        return _json(self.config())

    async def v1_config_history(self, _req: web.Request) -> web.Response:
        return _json(self.history())

    async def v1_config_rollback(self, req: web.Request) -> web.Response:
        """``POST /v1/config/rollback`` (``?to=VERSION`` or a JSON body ``{"to": ...}``;
        neither: the version before the current one)."""
        if self.rollback is None:
            return _json({"error": "rollback is not available here"}, status=404)
        to = req.query.get("to")
        if to is None and req.can_read_body:
            try:
                body = await req.json()
            except ValueError:
                return _json({"error": 'the body must be JSON, e.g. {"to": "3f2a9c0d1e4b"}'}, 400)
            if body is not None and not isinstance(body, dict):
                return _json({"error": 'the body must be a JSON object, e.g. {"to": "..."}'}, 400)
            to = (body or {}).get("to")
        if to is not None and (not isinstance(to, str) or not to.isalnum() or len(to) > 64):
            return _json({"error": "to: give a version as /v1/config/history lists it"}, 400)
        try:
            entry = await self.rollback(to)
        except ValueError as e:  # no such version, none kept, no state_dir
            return _json({"error": str(e)}, status=409)
        return self._entry(entry)

    async def v1_config_reload(self, _req: web.Request) -> web.Response:
        """``POST /v1/config/reload``: as SIGHUP, answered with the attempt's outcome."""
        if self.reload is None:
            return _json({"error": "reload is not available here"}, status=404)
        return self._entry(await self.reload())

    @staticmethod
    def _entry(entry: Any) -> web.Response:
        d = entry.as_dict()
        return _json(d, status=200 if d.get("outcome") != "failed" else 422)


class Token:
    """The admin bearer token, read from its file again when the file changes (a
    rotated Secret), compared in constant time, and never logged."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._digest = b""

    def matches(self, given: str) -> bool:
        st = self.path.stat()
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                token = read_token(self.path)  # what ``fedns serve`` checked at start
            except ConfigError:
                token = ""  # emptied or cut short since: it guards nothing, nothing matches
            self._digest = hashlib.sha256(token.encode()).digest() if token else b""
            self._stamp = stamp
        # Digests of both, so the comparison takes the same time whatever is sent.
        got = hashlib.sha256(given.encode("utf-8", "replace")).digest()
        return bool(self._digest) and hmac.compare_digest(got, self._digest)


async def start_admin(admin: Admin, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(
        admin.app(), access_log=None, logger=_ServerLog(logging.getLogger("aiohttp.server"), {})
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
