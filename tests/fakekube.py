"""A fake Kubernetes API server (aiohttp) that speaks the real list+watch protocol.

One ``FakeKube`` per simulated cluster. It serves, over plain HTTP on
loopback, what a client-go style reflector uses:

* ``GET /api/v1/services``, ``/api/v1/namespaces/{ns}/services``,
  ``/apis/discovery.k8s.io/v1/endpointslices`` (and namespaced),
  ``/apis/multicluster.x-k8s.io/v1alpha1/serviceexports`` (and namespaced),
  ``/version``;
* lists: ``{"kind": "ServiceList", "metadata": {"resourceVersion": N}, "items": [...]}``;
  ``labelSelector`` (=, ==, !=, in, notin, exists, !exists); ``resourceVersion`` "", "0" or N;
* watches (``watch=true|True|1``, Go's ParseBool): newline-delimited JSON
  events ADDED/MODIFIED/DELETED/BOOKMARK/ERROR over a chunked response;
  ``resourceVersion`` unset/"0" starts with synthetic ADDED events for the
  current state, N replays history after N; ``allowWatchBookmarks`` sends a
  BOOKMARK every ``bookmark_interval`` and just before the end;
  ``timeoutSeconds`` ends the stream cleanly; objects entering or leaving a
  label selection arrive as ADDED / DELETED, as the real watch cache does;
* one resourceVersion counter for all kinds (as etcd's revision) and a
  compaction point: watching from a version older than it gets the real
  server's answer, a 200 with one ``ERROR`` event carrying a 410 ``Expired``
  Status (or, with ``expired_as_http=True``, an HTTP 410).

Faults (``inject`` for the next matching request; ``drop_watches``,
``stall_watches``, ``error_watches`` for streams already open; ``down``/``up``
for the whole server): HTTP 500, 429 with Retry-After, an HTML 502 body, HTTP
410, a 410 ERROR event, a dropped connection (mid-line), a stalled stream,
an immediate clean close.

``write_kubeconfig`` writes a kubeconfig (``http://127.0.0.1:PORT``, no
auth) that the unmodified kubernetes-asyncio client loads.

The ``fake_kube`` pytest fixture is a factory: ``kube = await fake_kube("east")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

SERVICES = "services"
ENDPOINTSLICES = "endpointslices"
SERVICEEXPORTS = "serviceexports"

# resource -> (API prefix, apiVersion, kind)
RESOURCES: dict[str, tuple[str, str, str]] = {
    SERVICES: ("/api/v1", "v1", "Service"),
    ENDPOINTSLICES: ("/apis/discovery.k8s.io/v1", "discovery.k8s.io/v1", "EndpointSlice"),
    SERVICEEXPORTS: (
        "/apis/multicluster.x-k8s.io/v1alpha1",
        "multicluster.x-k8s.io/v1alpha1",
        "ServiceExport",
    ),
}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # Go strconv.ParseBool
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def status_object(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    st: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        st["details"] = details
    return st


# -- label selectors (written independently of resolver/fedconfig.py on purpose) -----------


def _selector(text: str | None) -> list[tuple[str, str, set[str]]] | None:
    if not text:
        return None
    reqs: list[tuple[str, str, set[str]]] = []
    for part in re.split(r",(?![^()]*\))", text):
        p = part.strip()
        m = re.fullmatch(r"([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)", p)
        if m:
            reqs.append((m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}))
        elif p.startswith("!"):
            reqs.append((p[1:].strip(), "!", set()))
        elif "!=" in p:
            k, v = p.split("!=", 1)
            reqs.append((k.strip(), "!=", {v.strip()}))
        elif "=" in p:
            k, v = re.split(r"==?", p, maxsplit=1)
            reqs.append((k.strip(), "=", {v.strip()}))
        elif re.fullmatch(r"[^\s!=(),]+", p):
            reqs.append((p, "exists", set()))
        else:
            raise ValueError(f"unable to parse requirement: {p!r}")
    return reqs


def _matches(sel: list[tuple[str, str, set[str]]] | None, obj: Mapping[str, Any] | None) -> bool:
    if obj is None:
        return False
    if sel is None:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for key, op, vals in sel:
        has = key in labels
        if op == "exists" and not has:
            return False
        if op == "!" and has:
            return False
        if op in ("=", "in") and not (has and labels[key] in vals):
            return False
        if op in ("!=", "notin") and has and labels[key] in vals:
            return False
    return True


# -- object builders -------------------------------------------------------------------------


def service(
    namespace: str,
    name: str,
    ports: Iterable[tuple[str, int, str]] = (("http", 80, "TCP"),),
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    lb_ips: Iterable[str] = (),
    type: str | None = None,
) -> dict[str, Any]:
    lb = list(lb_ips)
    svc: dict[str, Any] = {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {
            "type": type or ("LoadBalancer" if lb else "ClusterIP"),
            "clusterIP": "10.96.0.10",
            "ports": [
                {"name": n, "port": p, "protocol": proto, "targetPort": p} for n, p, proto in ports
            ],
            "selector": {"app": name},
        },
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb]} if lb else {}},
    }
    if labels:
        svc["metadata"]["labels"] = dict(labels)
    if annotations:
        svc["metadata"]["annotations"] = dict(annotations)
    return svc


def endpoint(
    address: str | Iterable[str],
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    hostname: str | None = None,
    zone: str | None = None,
    node: str | None = None,
    pod: str | None = None,
) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    if serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    ep: dict[str, Any] = {
        "addresses": [address] if isinstance(address, str) else list(address),
        "conditions": conditions,
    }
    if hostname:
        ep["hostname"] = hostname
    if zone:
        ep["zone"] = zone
    if node:
        ep["nodeName"] = node
    if pod:
        ep["targetRef"] = {"kind": "Pod", "namespace": "", "name": pod}
    return ep


def endpoint_slice(
    namespace: str,
    name: str,
    service_name: str | None,
    endpoints: Iterable[dict[str, Any]],
    ports: Iterable[tuple[str, int, str]] = (("http", 8080, "TCP"),),
    address_type: str = "IPv4",
) -> dict[str, Any]:
    labels = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    if service_name is not None:
        labels["kubernetes.io/service-name"] = service_name
    eps = []
    for e in endpoints:
        e = json.loads(json.dumps(e))
        if "targetRef" in e:
            e["targetRef"]["namespace"] = namespace
        eps.append(e)
    return {
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "addressType": address_type,
        "endpoints": eps,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }


def service_export(namespace: str, name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name}, "spec": {}}


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Fault:
    action: str  # http500 http429 html502 http410 gone drop stall close
    resource: str | None = None  # None: any
    op: str = "watch"  # watch | list | any
    times: int = 1
    after: int = 0  # drop/gone/close: after this many events of the stream
    retry_after: int = 1


@dataclass
class _Event:
    rv: int
    resource: str
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclass
class _Watcher:
    resource: str
    namespace: str | None
    selector: list[tuple[str, str, set[str]]] | None
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    delivered: int = 0  # every event of this resource up to here has been written

    def bookmark_rv(self, current: int) -> int:
        # Safe like the real watch cache: never past an event still queued for this stream.
        return current if self.queue.empty() else self.delivered


class FakeKube:
    def __init__(
        self,
        name: str = "fake",
        *,
        bookmark_interval: float = 0.2,
        expired_as_http: bool = False,
        serve_exports: bool = True,
        default_watch_timeout: float = 1800.0,
    ) -> None:
        self.name = name
        self.bookmark_interval = bookmark_interval
        self.expired_as_http = expired_as_http
        self.serve_exports = serve_exports
        self.default_watch_timeout = default_watch_timeout
        self.rv = 1
        self.compacted = 0  # watching from an RV below this is 410
        self.store: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in RESOURCES}
        self.history: list[_Event] = []
        self.faults: list[Fault] = []
        self.watchers: list[_Watcher] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.down_flag = False
        self._uid = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._streams: set[asyncio.Task[Any]] = set()  # handlers of open watches / stalled lists
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, port: int = 0) -> FakeKube:
        app = web.Application()
        app.router.add_get("/version", self._version)
        app.router.add_get("/version/", self._version)
        for res, (prefix, _, _) in RESOURCES.items():
            app.router.add_get(f"{prefix}/{res}", self._handler(res))
            app.router.add_get(f"{prefix}/namespaces/{{ns}}/{res}", self._handler(res))
            app.router.add_get(f"{prefix}/namespaces/{{ns}}/{res}/{{name}}", self._get_one(res))
        # The fake's own control API, for drivers in another process (benchmarks).
        app.router.add_post("/_fake/apply", self._ctl_apply)
        app.router.add_post("/_fake/delete", self._ctl_delete)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await self._listen(port)
        return self

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def close(self) -> None:
        self._cut_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def down(self) -> None:
        """The API server goes away: open connections cut, new ones refused."""
        self.down_flag = True
        self._cut_all()
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def up(self) -> None:
        """Back on the same port."""
        if self._site is None:
            await self._listen(self.port)
        self.down_flag = False

    def _cut_all(self) -> None:
        for t in list(self._transports):
            t.abort()
        for task in list(self._streams):
            task.cancel()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kubeconfig_entry(self) -> tuple[str, str]:
        return self.name, self.url

    # -- state changes ------------------------------------------------------------------

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def apply(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (as kubectl apply would); emits ADDED or MODIFIED."""
        _, api_version, kind = RESOURCES[resource]
        obj = json.loads(json.dumps(obj))
        meta = obj.setdefault("metadata", {})
        ident = (meta["namespace"], meta["name"])
        old = self.store[resource].get(ident)
        rv = self._bump()
        if old is None:
            self._uid += 1
            meta["uid"] = f"{self.name}-{self._uid:08d}"
            meta["creationTimestamp"] = "2024-01-01T00:00:00Z"
            meta["generation"] = 1
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        meta["resourceVersion"] = str(rv)
        obj["kind"], obj["apiVersion"] = kind, api_version
        self.store[resource][ident] = obj
        self._emit(_Event(rv, resource, "MODIFIED" if old else "ADDED", obj, old))
        return obj

    def delete(self, resource: str, namespace: str, name: str) -> bool:
        old = self.store[resource].pop((namespace, name), None)
        if old is None:
            return False
        rv = self._bump()
        gone = json.loads(json.dumps(old))
        gone["metadata"]["resourceVersion"] = str(rv)
        self._emit(_Event(rv, resource, "DELETED", gone, old))
        return True

    def compact(self) -> int:
        """Forget history: a watch from an RV before now gets 410 Expired."""
        self.compacted = self.rv
        self.history.clear()
        return self.compacted

    def _emit(self, ev: _Event) -> None:
        self.history.append(ev)
        for w in self.watchers:
            if w.resource == ev.resource:
                w.queue.put_nowait(ev)

    # conveniences
    def put_service(self, namespace: str, name: str, **kw: Any) -> dict[str, Any]:
        return self.apply(SERVICES, service(namespace, name, **kw))

    def put_slice(
        self,
        namespace: str,
        name: str,
        service_name: str | None,
        endpoints: Iterable[dict[str, Any]],
        **kw: Any,
    ) -> dict[str, Any]:
        return self.apply(
            ENDPOINTSLICES, endpoint_slice(namespace, name, service_name, endpoints, **kw)
        )

    def put_export(self, namespace: str, name: str) -> dict[str, Any]:
        return self.apply(SERVICEEXPORTS, service_export(namespace, name))

    def objects(self, resource: str) -> list[dict[str, Any]]:
        return [self.store[resource][k] for k in sorted(self.store[resource])]

    # -- faults ----------------------------------------------------------------------------

    def inject(
        self,
        action: str,
        resource: str | None = None,
        op: str = "watch",
        times: int = 1,
        after: int = 0,
        retry_after: int = 1,
    ) -> Fault:
        f = Fault(action, resource, op, times, after, retry_after)
        self.faults.append(f)
        return f

    def _take_fault(self, resource: str, op: str) -> Fault | None:
        for f in self.faults:
            if (f.resource in (None, resource)) and f.op in ("any", op):
                f.times -= 1
                if f.times <= 0:
                    self.faults.remove(f)
                return f
        return None

    def drop_watches(self, resource: str | None = None) -> int:
        return self._signal(("drop",), resource)

    def stall_watches(self, resource: str | None = None) -> int:
        return self._signal(("stall",), resource)

    def error_watches(self, code: int = 410, resource: str | None = None) -> int:
        return self._signal(("error", code), resource)

    def _signal(self, msg: tuple[Any, ...], resource: str | None) -> int:
        n = 0
        for w in self.watchers:
            if resource in (None, w.resource):
                w.queue.put_nowait(msg)
                n += 1
        return n

    def open_watches(self, resource: str | None = None) -> int:
        return sum(1 for w in self.watchers if resource in (None, w.resource))

    async def watching(
        self, n: int = 2, resource: str | None = None, timeout: float = 10.0
    ) -> None:
        """Wait until at least ``n`` watch streams are open (so faults on open streams hit them)."""
        end = time.monotonic() + timeout
        while self.open_watches(resource) < n:
            if time.monotonic() > end:
                raise AssertionError(f"{self.name}: fewer than {n} open watches")
            await asyncio.sleep(0.005)

    # -- HTTP ---------------------------------------------------------------------------------

    def _track(self, request: web.Request) -> asyncio.BaseTransport | None:
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
            task.add_done_callback(self._streams.discard)
        t = request.transport
        if t is not None:
            self._transports.add(t)
        return t

    async def _version(self, request: web.Request) -> web.StreamResponse:
        if self.down_flag:
            return self._abort(request)
        self.requests.append(("GET", request.path, dict(request.query)))
        return web.json_response(
            {
                "major": "1",
                "minor": "30",
                "gitVersion": "v1.30.0-fake",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z",
                "goVersion": "go1.22.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    def _abort(self, request: web.Request) -> web.StreamResponse:
        # A dead server says nothing: cut the connection; the response goes nowhere.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)

    def _handler(self, resource: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            if self.down_flag:
                return self._abort(request)
            if resource == SERVICEEXPORTS and not self.serve_exports:
                return _json(
                    404,
                    status_object(
                        404, "NotFound", "the server could not find the requested resource"
                    ),
                )
            q = request.query
            self.requests.append(("GET", request.path, dict(q)))
            w = q.get("watch")
            if w is not None and w not in _TRUE | _FALSE:
                return _json(400, status_object(400, "BadRequest", f"invalid watch value {w!r}"))
            try:
                sel = _selector(q.get("labelSelector"))
            except ValueError as e:
                return _json(400, status_object(400, "BadRequest", str(e)))
            ns = request.match_info.get("ns")
            if w in _TRUE:
                return await self._watch(request, resource, ns, sel)
            return await self._list(request, resource, ns, sel)

        return handle

    def _get_one(self, resource: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            obj = self.store[resource].get((request.match_info["ns"], request.match_info["name"]))
            if obj is None:
                return _json(
                    404,
                    status_object(
                        404, "NotFound", f'{resource} "{request.match_info["name"]}" not found'
                    ),
                )
            return _json(200, obj)

        return handle

    async def _fault_response(self, request: web.Request, f: Fault) -> web.StreamResponse | None:
        if f.action == "http500":
            return _json(
                500, status_object(500, "InternalError", "Internal error occurred: fake fault")
            )
        if f.action == "http429":
            r = _json(
                429,
                status_object(
                    429,
                    "TooManyRequests",
                    "too many requests, please try again later",
                    retryAfterSeconds=f.retry_after,
                ),
            )
            r.headers["Retry-After"] = str(f.retry_after)
            return r
        if f.action == "html502":
            return web.Response(status=502, body=HTML_502, content_type="text/html")
        if f.action == "http410":
            return _json(410, status_object(410, "Expired", "too old resource version: fake fault"))
        return None

    async def _list(
        self, request: web.Request, resource: str, ns: str | None, sel: Any
    ) -> web.StreamResponse:
        f = self._take_fault(resource, "list")
        if f is not None:
            r = await self._fault_response(request, f)
            if r is not None:
                return r
            if f.action == "drop":
                return self._abort(request)
            if f.action == "stall":
                with contextlib.suppress(ConnectionError):
                    await self._stall(self._track(request))
                return web.Response(status=503)  # nobody is listening any more
        _, api_version, kind = RESOURCES[resource]
        items = []
        for (ons, _), obj in sorted(self.store[resource].items()):
            if ns is not None and ons != ns:
                continue
            if not _matches(sel, obj):
                continue
            item = dict(obj)
            item.pop("kind", None)  # list items carry no kind/apiVersion
            item.pop("apiVersion", None)
            items.append(item)
        return _json(
            200,
            {
                "kind": f"{kind}List",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.rv)},
                "items": items,
            },
        )

    def _translate(self, w: _Watcher, ev: _Event) -> tuple[str, dict[str, Any]] | None:
        """What this watcher sees of an event: label selections turn into ADDED/DELETED."""
        ons = ev.obj["metadata"]["namespace"]
        if w.namespace is not None and ons != w.namespace:
            return None
        if ev.type == "DELETED":
            return ("DELETED", ev.obj) if _matches(w.selector, ev.old) else None
        now, before = _matches(w.selector, ev.obj), _matches(w.selector, ev.old)
        if now and before:
            return ("MODIFIED", ev.obj)
        if now:
            return ("ADDED", ev.obj)
        if before:
            return ("DELETED", ev.obj)
        return None

    async def _watch(
        self, request: web.Request, resource: str, ns: str | None, sel: Any
    ) -> web.StreamResponse:
        q = request.query
        f = self._take_fault(resource, "watch")
        if f is not None:
            r = await self._fault_response(request, f)
            if r is not None:
                return r
        bookmarks = q.get("allowWatchBookmarks", "false") in _TRUE
        try:
            timeout = float(q.get("timeoutSeconds", self.default_watch_timeout))
        except ValueError:
            return _json(400, status_object(400, "BadRequest", "invalid timeoutSeconds"))
        rv_s = q.get("resourceVersion", "")
        w = _Watcher(resource, ns, sel)
        backlog: list[tuple[str, dict[str, Any]]] = []
        expired = False
        if rv_s in ("", "0"):
            for (ons, _), obj in sorted(self.store[resource].items()):
                if (ns is None or ons == ns) and _matches(sel, obj):
                    backlog.append(("ADDED", obj))
        else:
            try:
                since = int(rv_s)
            except ValueError:
                return _json(
                    400, status_object(400, "BadRequest", f"invalid resourceVersion {rv_s!r}")
                )
            if since < self.compacted:
                expired = True
                if self.expired_as_http:
                    return _json(
                        410,
                        status_object(
                            410, "Expired", f"too old resource version: {since} ({self.compacted})"
                        ),
                    )
            else:
                for ev in self.history:
                    if ev.rv > since and ev.resource == resource:
                        t = self._translate(w, ev)
                        if t is not None:
                            backlog.append(t)
        # Registered in the same step as the backlog was taken: no event can fall between.
        if not expired:
            self.watchers.append(w)
            w.delivered = self.rv
        transport = self._track(request)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        sent = 0
        try:
            await resp.prepare(request)
            if expired:
                await self._line(
                    resp,
                    {
                        "type": "ERROR",
                        "object": status_object(
                            410, "Expired", f"too old resource version: {rv_s} ({self.compacted})"
                        ),
                    },
                )
                await resp.write_eof()
                return resp
            for typ, obj in backlog:
                if f is not None and f.action in ("drop", "gone", "close") and sent >= f.after:
                    break
                await self._line(resp, {"type": typ, "object": obj})
                sent += 1
            if f is not None and f.action == "stall":
                await self._stall(transport)  # headers sent, then silence: the client must notice
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                if f is not None and f.action in ("drop", "gone", "close") and sent >= f.after:
                    if f.action == "drop":
                        await self._drop(resp, transport)
                        return resp
                    if f.action == "gone":
                        await self._line(
                            resp,
                            {
                                "type": "ERROR",
                                "object": status_object(
                                    410, "Expired", "too old resource version: fake fault"
                                ),
                            },
                        )
                    break
                now = time.monotonic()
                if now >= deadline:
                    if bookmarks:
                        await self._bookmark(resp, w)
                    break
                wait = min(deadline, next_bookmark) - now if bookmarks else deadline - now
                try:
                    item = await asyncio.wait_for(w.queue.get(), timeout=max(0.0, wait))
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        await self._bookmark(resp, w)
                        next_bookmark = time.monotonic() + self.bookmark_interval
                    continue
                if isinstance(item, _Event):
                    w.delivered = item.rv
                    t = self._translate(w, item)
                    if t is not None:
                        await self._line(resp, {"type": t[0], "object": t[1]})
                        sent += 1
                elif item[0] == "drop":
                    await self._drop(resp, transport)
                    return resp
                elif item[0] == "stall":
                    await self._stall(transport)
                elif item[0] == "error":
                    code = item[1]
                    reason = "Expired" if code == 410 else "InternalError"
                    await self._line(
                        resp,
                        {
                            "type": "ERROR",
                            "object": status_object(code, reason, "fake fault during watch"),
                        },
                    )
                    break
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(ValueError):
                self.watchers.remove(w)
            if transport is not None:
                self._transports.discard(transport)
        return resp

    async def _stall(self, transport: asyncio.BaseTransport | None) -> None:
        """Say nothing until the client gives up on the connection."""
        while transport is not None and not transport.is_closing():
            await asyncio.sleep(0.02)
        raise ConnectionResetError("client went away from a stalled stream")

    async def _line(self, resp: web.StreamResponse, ev: dict[str, Any]) -> None:
        await resp.write(json.dumps(ev, separators=(",", ":")).encode() + b"\n")

    async def _bookmark(self, resp: web.StreamResponse, w: _Watcher) -> None:
        _, api_version, kind = RESOURCES[w.resource]
        rv = w.bookmark_rv(self.rv)
        await self._line(
            resp,
            {
                "type": "BOOKMARK",
                "object": {
                    "kind": kind,
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": str(rv)},
                },
            },
        )

    async def _drop(
        self, resp: web.StreamResponse, transport: asyncio.BaseTransport | None
    ) -> None:
        # Half a line, then the connection goes: the worst place to be cut.
        with contextlib.suppress(ConnectionError):
            await resp.write(b'{"type":"MODIFIED","object":{"metadata":{"na')
        await asyncio.sleep(0.01)
        if transport is not None:
            transport.abort()

    # -- control API for out-of-process drivers --------------------------------------------

    async def _ctl_apply(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        for item in body["items"]:
            self.apply(item["resource"], item["object"])
        return web.json_response({"rv": self.rv, "t": time.monotonic()})

    async def _ctl_delete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        ok = self.delete(body["resource"], body["namespace"], body["name"])
        return web.json_response({"deleted": ok, "rv": self.rv, "t": time.monotonic()})


def _json(status: int, obj: Any) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(obj).encode(), content_type="application/json"
    )


# -- kubeconfig -----------------------------------------------------------------------------------


def write_kubeconfig(path: Path, servers: Mapping[str, str], current: str | None = None) -> Path:
    """A kubeconfig with one context per (name -> http URL); no credentials."""
    import yaml

    names = list(servers)
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": n, "cluster": {"server": servers[n]}} for n in names],
        "users": [{"name": f"{n}-user", "user": {}} for n in names],
        "contexts": [{"name": n, "context": {"cluster": n, "user": f"{n}-user"}} for n in names],
        "current-context": current or names[0],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- the truth, for tests: what a registry fed from these servers must contain ------------------


def truth(
    kube: FakeKube, export_mode: str = "all"
) -> dict[tuple[str, str], frozenset[tuple[Any, ...]]]:
    """(namespace, service) -> the set of (addresses, ready, serving, terminating, hostname, zone, node)
    a pod-reach cluster publishes, computed straight from the server's objects (IP slices of
    single-stack endpoints, conditions defaulted as the API documents)."""
    out: dict[tuple[str, str], set[tuple[Any, ...]]] = {}
    exported = {k for k in kube.store[SERVICEEXPORTS]}
    for (ns, name), _svc in kube.store[SERVICES].items():
        if export_mode == "serviceexport" and (ns, name) not in exported:
            continue
        out[(ns, name)] = set()
    for (ns, _), sl in kube.store[ENDPOINTSLICES].items():
        svc = sl["metadata"].get("labels", {}).get("kubernetes.io/service-name")
        if (ns, svc) not in out or sl.get("addressType") not in ("IPv4", "IPv6"):
            continue
        for e in sl.get("endpoints") or []:
            c = e.get("conditions", {})
            ready = True if c.get("ready") is None else c["ready"]
            serving = ready if c.get("serving") is None else c["serving"]
            out[(ns, svc)].add(
                (
                    tuple(e["addresses"]),
                    ready,
                    serving,
                    bool(c.get("terminating")),
                    e.get("hostname"),
                    e.get("zone"),
                    e.get("nodeName"),
                )
            )
    return {k: frozenset(v) for k, v in out.items()}


def registry_view(registry: Any, cluster: str) -> dict[tuple[str, str], frozenset[tuple[Any, ...]]]:
    """The same shape as ``truth`` read from a registry's snapshots for one cluster."""
    out: dict[tuple[str, str], frozenset[tuple[Any, ...]]] = {}
    for key in sorted(registry.keys()):
        snap = registry.snapshot(key)
        cs = snap.cluster(cluster) if snap is not None else None
        if cs is None:
            continue
        out[(key.namespace, key.name)] = frozenset(
            (e.addresses, e.ready, e.serving, e.terminating, e.hostname, e.zone, e.node)
            for e in cs.endpoints
        )
    return out


async def converge(
    registry: Any, kubes: Mapping[str, FakeKube], timeout: float = 10.0, export_mode: str = "all"
) -> None:
    """Wait until the registry equals every fake server's truth; fail with the difference if not."""
    end = time.monotonic() + timeout
    while True:
        diffs = {}
        for cname, kube in kubes.items():
            want, got = truth(kube, export_mode), registry_view(registry, cname)
            if want != got:
                diffs[cname] = (want, got)
        if not diffs:
            return
        if time.monotonic() > end:
            lines = []
            for cname, (want, got) in diffs.items():
                for k in sorted(set(want) | set(got)):
                    if want.get(k) != got.get(k):
                        lines.append(
                            f"{cname} {k}: want {sorted(want.get(k, ()))} got {sorted(got.get(k, ()))}"
                        )
            raise AssertionError(
                "registry never converged to the API servers' truth:\n" + "\n".join(lines[:20])
            )
        await asyncio.sleep(0.02)


async def until(pred: Any, what: str, timeout: float = 10.0) -> None:
    """Wait (bounded) for a condition the system must reach; fail naming it."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


# -- fake servers on their own thread (for synchronous tests: a fedns subprocess + dnspython) ------


class ThreadedFakeKubes:
    """Fake API servers on a private event loop in a background thread.

    For tests that block (a ``fedns serve`` subprocess queried with dnspython)::

        with ThreadedFakeKubes(["east", "west"]) as fakes:
            fakes.call(lambda: fakes["east"].put_service("shop", "cart"))
            fed = federation_config(fakes.kubes, tmp_path)   # -> the config's federation:
            ...
            fakes.call(lambda: fakes["east"].put_slice(...))  # flip an endpoint
            fakes.run(fakes["east"].down())                   # coroutines too

    ``call`` runs a function on the servers' loop and returns its result, so the
    fakes are never touched from two threads.
    """

    def __init__(self, names: Iterable[str], **kw: Any) -> None:
        self.names = list(names)
        self.kw = kw
        self.kubes: dict[str, FakeKube] = {}
        self.loop = asyncio.new_event_loop()
        self._thread: Any = None

    def __getitem__(self, name: str) -> FakeKube:
        return self.kubes[name]

    def __enter__(self) -> ThreadedFakeKubes:
        import threading

        self._thread = threading.Thread(target=self.loop.run_forever, name="fakekube", daemon=True)
        self._thread.start()
        for n in self.names:
            self.kubes[n] = self.run(FakeKube(n, **self.kw).start())
        return self

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any, timeout: float = 30.0) -> Any:
        async def wrapper() -> Any:
            return fn(*args)

        return self.run(wrapper(), timeout)

    def __exit__(self, *exc: object) -> None:
        for k in self.kubes.values():
            self.run(k.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# -- pytest fixture -------------------------------------------------------------------------------


@pytest.fixture
async def fake_kube() -> AsyncIterator[Any]:
    """Factory: ``kube = await fake_kube("east", bookmark_interval=0.1)`` -> a started FakeKube."""
    started: list[FakeKube] = []

    async def make(name: str = "fake", **kw: Any) -> FakeKube:
        k = await FakeKube(name, **kw).start()
        started.append(k)
        return k

    yield make
    for k in started:
        await k.close()


# -- running a registry against fake servers ---------------------------------------------------


def fast_timings(**kw: Any) -> Any:
    """Watch timings for tests: sub-second timeouts and backoffs (same code paths as production)."""
    from resolver.federation.sources.kubernetes import WatchTimings

    base: dict[str, Any] = dict(
        watch_timeout_min=1,
        watch_timeout_max=2,
        connect_timeout=1.0,
        read_timeout=0.6,
        stall_margin=0.5,
        list_timeout=3.0,
        backoff_initial=0.02,
        backoff_max=0.2,
        short_watch=0.05,
        heartbeat=0.1,
        missing_retry=0.3,
    )
    base.update(kw)
    return WatchTimings(**base)


def federation_config(
    kubes: Mapping[str, FakeKube], directory: Path, **cluster_settings: Any
) -> dict[str, Any]:
    """A ``federation:`` mapping whose clusters are these fake servers (one kubeconfig, a context each).

    ``cluster_settings`` are added to every cluster entry (e.g. ``stale_after=0.5``); the
    kubeconfig path is relative, so put the config file in ``directory``.
    """
    kc = write_kubeconfig(directory / "clusters.kubeconfig", {n: k.url for n, k in kubes.items()})
    return {
        "zone": "global.example.test.",
        "clusters": [
            {
                "name": n,
                "kubeconfig": kc.name,
                "context": n,
                "region": f"r-{n}",
                "zone": f"z-{n}",
                **cluster_settings,
            }
            for n in kubes
        ],
    }


@dataclass
class Running:
    """A registry and the sources feeding it (for their reflectors' counters)."""

    registry: Any
    sources: dict[str, Any]

    def reflector(self, cluster: str, resource: str) -> Any:
        return self.sources[cluster].reflectors[resource]


@contextlib.asynccontextmanager
async def running_registry(
    kubes: Mapping[str, FakeKube],
    directory: Path,
    *,
    export: Mapping[str, Any] | None = None,
    timings: Any = None,
    clusters: Mapping[str, Mapping[str, Any]] | None = None,
    coalesce: float = 0.002,
) -> AsyncIterator[Running]:
    """A Registry fed by KubernetesSources for these fake servers, synced; cancelled on exit.

    ``clusters`` adds per-cluster settings (``{"east": {"stale_after": 0.5}}``).
    """
    from resolver.federation.config import federation_from_dict
    from resolver.federation.registry import Registry
    from resolver.federation.sources import build_sources

    raw = federation_config(kubes, directory)
    for c in raw["clusters"]:
        c.update((clusters or {}).get(c["name"], {}))
    if export:
        raw["export"] = dict(export)
    fed = federation_from_dict(raw, directory / "fedns.yaml")
    reg = Registry.from_config(fed, coalesce=coalesce)
    sources = build_sources(fed, timings=timings or fast_timings())
    task = asyncio.create_task(reg.run(sources))
    try:
        if not await reg.wait_synced(10):
            raise AssertionError(f"registry did not sync: {reg.cluster_status()}")
        yield Running(reg, {s.cluster.name: s for s in sources})
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reg.close()
