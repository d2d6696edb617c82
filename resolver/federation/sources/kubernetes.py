"""Kubernetes source: list+watch of one cluster's Services and EndpointSlices (and ServiceExports).

Per cluster: one kubernetes-asyncio ``Configuration`` and ``ApiClient``
(never the library's global default), and per resource a ``Reflector`` loop
shaped like client-go's:

* list with ``resourceVersion=0`` (served from the API server's watch cache),
  replace the cluster's cache with the stripped items;
* watch from the list's resourceVersion with ``allowWatchBookmarks`` and a
  random ``timeoutSeconds`` (5-10 min) so reconnects of many clients spread out;
* clean end of the stream -> watch again from the last resourceVersion seen
  (an event's or a bookmark's), no relist;
* ``410 Gone``/``Expired`` (an ERROR event, an HTTP 410, or a Status line) ->
  relist with ``resourceVersion=""`` (a consistent read, as client-go does
  after a 410) and diff it against the cache: what is gone gets a synthetic
  delete;
* 429, 5xx, refused/dropped connections, non-JSON bodies (a proxy's HTML 502),
  malformed events, a stalled stream -> jittered exponential backoff
  (0.8 s doubling to 30 s, ``Retry-After`` honoured) and watch again from the
  last resourceVersion.

The library's ``watch.Watch`` helper is not used: it deserializes every event
into OpenAPI models (slow and large at 100k endpoints, and we keep five
fields), builds an ``ApiClient`` from the global default configuration, and
its forever mode retries a 410 with the same resourceVersion and lets a
dropped connection escape. The generated API methods are called with
``watch=True, _preload_content=False`` instead and the newline-delimited JSON
is read here, with a type check on everything.

Stalls: the read timeout (``read_timeout``, > 60 s because API servers send a
bookmark about every minute) catches a silent stream; a stream still open
``stall_margin`` seconds after its ``timeoutSeconds`` is cut too. Liveness: a
cheap ``GET /version`` runs when nothing else reached the API server for a
while, so a quiet cluster is not mistaken for a dead one.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import structlog
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.kube_config import ConfigNode, KubeConfigLoader

from ..config import ExportConfig
from ..model import (
    EMPTY_MAP,
    ENDPOINTSLICES,
    SERVICEEXPORTS,
    SERVICES,
    Cluster,
    Endpoint,
    ExportObject,
    FrozenMap,
    Kind,
    KubeObject,
    Port,
    ServiceKey,
    ServiceObject,
    SliceObject,
    fedns_annotations,
    ip_text,
)
from .base import ClusterSink

log = structlog.get_logger("fedns.kube")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MCS_GROUP, MCS_VERSION, MCS_PLURAL = "multicluster.x-k8s.io", "v1alpha1", "serviceexports"
_MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True, slots=True)
class WatchTimings:
    """Every timing constant of the loop, so tests can run it fast."""

    watch_timeout_min: int = 300  # timeoutSeconds is drawn from [min, max]
    watch_timeout_max: int = 600
    connect_timeout: float = 10.0
    read_timeout: float = 90.0  # silence longer than this = stalled (bookmarks come ~every 60 s)
    stall_margin: float = 30.0  # stream open this long past its timeoutSeconds = stalled
    list_timeout: float = 120.0  # a whole list request
    backoff_initial: float = 0.8
    backoff_max: float = 30.0
    backoff_factor: float = 2.0
    backoff_jitter: float = 1.0  # up to +100%, as client-go's jitter factor 1.0
    short_watch: float = 1.0  # a watch ending cleanly this fast without events counts as a failure
    heartbeat: float | None = None  # GET /version interval; None: the cluster's stale_after / 3
    missing_retry: float = 30.0  # relist interval for a resource the server does not serve (404)


class Backoff:
    """Jittered exponential backoff (client-go's: 0.8 s doubling to a 30 s cap)."""

    def __init__(self, t: WatchTimings, rng: random.Random) -> None:
        self.t = t
        self.rng = rng
        self.failures = 0

    def next(self) -> float:
        base = min(
            self.t.backoff_max, self.t.backoff_initial * self.t.backoff_factor**self.failures
        )
        self.failures += 1
        return min(self.t.backoff_max, base * (1.0 + self.t.backoff_jitter * self.rng.random()))

    def reset(self) -> None:
        self.failures = 0


class _Expired(Exception):
    """410: the resourceVersion we hold is compacted away; relist."""


class _Transient(Exception):
    """Anything worth a backoff and a retry from the last resourceVersion."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _NotServed(Exception):
    """404 on a list: the resource (a CRD such as ServiceExport) is not installed."""


# -- stripping: raw JSON dicts -> the model's small objects (pure, type-checked) -------------


def _meta(obj: Any) -> tuple[str, str, dict[str, Any]] | None:
    if not isinstance(obj, dict):
        return None
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return None
    ns, name = meta.get("namespace"), meta.get("name")
    if not isinstance(ns, str) or not isinstance(name, str) or not ns or not name:
        return None
    return sys.intern(ns), name, meta


def _str_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict):
        return {}
    return {k: x for k, x in v.items() if isinstance(k, str) and isinstance(x, str)}


# A Service's or a slice's ports, shared: most services have one of a few sets.
# Cleared when full, which only ends sharing for objects stripped after that.
_PORTS: dict[tuple[Port, ...], tuple[Port, ...]] = {}
_PORTS_MAX = 4096


def _ports(raw: Any) -> tuple[Port, ...]:
    if not isinstance(raw, list):
        return ()
    out: set[Port] = set()
    for p in raw:
        if not isinstance(p, dict):
            continue
        port = p.get("port")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            continue
        name = p.get("name")
        proto = p.get("protocol")
        out.add(
            Port(
                sys.intern(name) if isinstance(name, str) else "",
                port,
                sys.intern(proto) if isinstance(proto, str) else "TCP",
            )
        )
    ports = tuple(sorted(out))
    shared = _PORTS.get(ports)
    if shared is not None:
        return shared
    if len(_PORTS) >= _PORTS_MAX:
        _PORTS.clear()
    _PORTS[ports] = ports
    return ports


def _ip(v: Any) -> str | None:
    """The canonical text of an address: the JSON's own string when it is (the one
    copy the plan and the answer table share, see ``model.ip_text``)."""
    t = ip_text(v) if isinstance(v, str) else None
    return None if t is None else t[0]


def strip_service(obj: Any, keep_labels: bool = False) -> ServiceObject | None:
    m = _meta(obj)
    if m is None:
        return None
    ns, name, meta = m
    spec = obj.get("spec")
    status = obj.get("status")
    ingress_ips: list[str] = []
    if isinstance(status, dict):
        lb = status.get("loadBalancer")
        ing = lb.get("ingress") if isinstance(lb, dict) else None
        if isinstance(ing, list):
            for i in ing:
                ip = _ip(i.get("ip")) if isinstance(i, dict) else None
                if ip is not None and ip not in ingress_ips:
                    ingress_ips.append(ip)  # hostname-only ingress cannot be an A/AAAA record
    labels = _str_map(meta.get("labels")) if keep_labels else {}
    return ServiceObject(
        key=ServiceKey(ns, name),
        ports=_ports(spec.get("ports") if isinstance(spec, dict) else None),
        labels=FrozenMap(labels) if labels else EMPTY_MAP,
        annotations=fedns_annotations(meta.get("annotations")),
        ingress_ips=tuple(ingress_ips),
    )


def strip_slice(obj: Any, cluster: str) -> SliceObject | None:
    """An EndpointSlice, or None when it is not one of a Service's IP slices."""
    m = _meta(obj)
    if m is None:
        return None
    ns, name, meta = m
    service = _str_map(meta.get("labels")).get(SERVICE_NAME_LABEL)
    if not service or obj.get("addressType") not in ("IPv4", "IPv6"):
        return None  # not owned by a Service, or FQDN slices (not addresses)
    eps: list[Endpoint] = []
    refs: list[str | None] = []
    intern = sys.intern
    raw_eps = obj.get("endpoints")
    for e in raw_eps if isinstance(raw_eps, list) else ():
        if not isinstance(e, dict):
            continue
        addrs_raw = e.get("addresses")
        if not isinstance(addrs_raw, list):
            continue
        if len(addrs_raw) == 1:  # nearly always (dual-stack pods are in two slices)
            raw = addrs_raw[0]
            t = ip_text(raw) if isinstance(raw, str) else None
            addrs: tuple[str, ...] = (t[0],) if t is not None else ()
        else:
            addrs = tuple(a for a in map(_ip, addrs_raw) if a)
        if not addrs:
            continue
        cond = e.get("conditions")
        cond = cond if isinstance(cond, dict) else {}
        # API semantics: unknown (null) ready/serving means ready; unknown terminating means not.
        ready = cond.get("ready")
        ready = ready if isinstance(ready, bool) else True
        serving = cond.get("serving")
        serving = serving if isinstance(serving, bool) else ready
        terminating = cond.get("terminating") is True
        ref = e.get("targetRef")
        ref_id = None
        if isinstance(ref, dict):
            pod = ref.get("name")
            if isinstance(pod, str):
                kind = ref.get("kind")
                ref_id = pod if kind in (None, "Pod") else f"{kind}/{pod}"
        hostname = e.get("hostname")
        zone, node = e.get("zone"), e.get("nodeName")  # interned: a few per cluster
        # Positional: a million endpoints are made at startup (keywords cost ~10 %).
        eps.append(
            Endpoint(
                cluster,
                addrs,
                ready,
                serving,
                terminating,
                intern(zone) if isinstance(zone, str) and zone else None,
                hostname.lower() if isinstance(hostname, str) and hostname else None,
                intern(node) if isinstance(node, str) and node else None,
            )
        )
        refs.append(ref_id)
    # In the order merge_endpoints gives a service's endpoints, so that a service
    # with one slice shares this tuple (and a reshuffle inside a slice is no change).
    order = sorted(range(len(eps)), key=lambda i: eps[i].addresses)
    return SliceObject(
        ns,
        name,
        sys.intern(service),
        _ports(obj.get("ports")),
        tuple(eps[i] for i in order),
        tuple(refs[i] for i in order),
    )


def strip_export(obj: Any) -> ExportObject | None:
    m = _meta(obj)
    return None if m is None else ExportObject(ServiceKey(m[0], m[1]))


def _rv(obj: Any) -> str | None:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return rv if isinstance(rv, str) and rv else None


def _status_error(status: int, body: bytes, retry_after: str | None = None) -> Exception:
    """Turn an HTTP error (JSON Status or not) into _Expired/_NotServed/_Transient."""
    text = body[:300].decode("utf-8", "replace")
    msg = f"HTTP {status}"
    try:
        st = json.loads(body)
    except ValueError:
        st = None
    if isinstance(st, dict):
        reason, message = st.get("reason"), st.get("message")
        msg = f"HTTP {status} {reason}: {message}"
    else:
        msg = f"HTTP {status} (non-JSON body: {' '.join(text.split())[:120]!r})"
    if status == 410:
        return _Expired(msg)
    if status == 404:
        return _NotServed(msg)
    delay = None
    if retry_after:
        try:
            delay = float(retry_after)
        except ValueError:
            delay = None
    return _Transient(msg, delay)


def _status_object_error(obj: Any) -> Exception:
    """An ERROR watch event's Status object (or a bare Status line)."""
    if not isinstance(obj, dict):
        return _Transient(f"malformed ERROR event: {obj!r:.120}")
    code = obj.get("code")
    msg = f"watch ERROR {code} {obj.get('reason')}: {obj.get('message')}"
    if code == 410 or obj.get("reason") in ("Expired", "Gone"):
        return _Expired(msg)
    details = obj.get("details")
    retry = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    return _Transient(msg, float(retry) if isinstance(retry, int | float) else None)


# -- the reflector ------------------------------------------------------------------------------


ListFn = Callable[..., Awaitable[Any]]


class Reflector:
    """List+watch of one resource kind into one cluster's sink."""

    def __init__(
        self,
        kind: Kind,
        list_fn: ListFn,
        strip: Callable[[Any], KubeObject | None],
        sink: ClusterSink,
        timings: WatchTimings,
        rng: random.Random,
        label_selector: str | None = None,
        on_contact: Callable[[], None] | None = None,
        namespace: str | None = None,
        api_client: Any = None,
    ) -> None:
        self.kind = kind
        self.namespace = namespace  # None: every namespace in one list+watch
        self.list_fn = list_fn
        # The ApiClient list_fn calls through: it keeps the last response it
        # returned (``last_response``), and a list's holds the whole body.
        self.api_client = api_client
        self.strip = strip
        self.sink = sink
        self.t = timings
        self.rng = rng
        self.label_selector = label_selector
        self.on_contact = on_contact
        self.rv: str | None = None
        self.log = log.bind(cluster=sink.cluster.name, resource=kind)
        if namespace is not None:
            self.log = self.log.bind(namespace=namespace)
        # Counters, for tests and the status page (``KubernetesSource.counters``).
        self.lists = 0
        self.watches = 0
        self.events = 0  # every line of the stream, bookmarks included
        self.applied = 0  # ADDED, MODIFIED and DELETED events handed to the sink

    def _contact(self) -> None:
        self.sink.contact()
        if self.on_contact is not None:
            self.on_contact()

    def _kw(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"_preload_content": False}
        if self.label_selector:
            kw["label_selector"] = self.label_selector
        return kw

    async def run(self) -> None:
        backoff = Backoff(self.t, self.rng)
        relist, consistent = True, False
        while True:
            try:
                if relist:
                    await self._list(consistent)
                    relist, consistent = False, False
                got_events, lasted = await self._watch()
                if got_events or lasted >= self.t.short_watch:
                    backoff.reset()
                else:  # a server closing watches at once must not make us spin
                    await asyncio.sleep(backoff.next())
            except _Expired as e:
                # Our resourceVersion is older than the server's history: what
                # happened meanwhile is only knowable by listing again.
                self.log.info("resourceVersion expired; relisting", error=str(e), rv=self.rv)
                if relist:  # the list itself answered 410: relist, but never in a tight loop
                    await asyncio.sleep(backoff.next())
                relist, consistent = True, True
            except _NotServed as e:
                self.log.warning(
                    "resource not served (CRD not installed?); treating as empty", error=str(e)
                )
                if self.namespace is None:
                    self.sink.replace(self.kind, [])
                else:  # this namespace only: the others' lists stand
                    self.sink.replace(self.kind, [], namespace=self.namespace)
                self.sink.error(f"{self.kind}: {e}")
                relist = True
                await asyncio.sleep(self.t.missing_retry)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                retry_after = e.retry_after if isinstance(e, _Transient) else None
                delay = backoff.next()
                if retry_after is not None:
                    delay = min(self.t.backoff_max, max(delay, retry_after))
                msg = str(e) or type(e).__name__
                if not isinstance(e, _Transient):
                    msg = f"{type(e).__name__}: {msg}"
                self.log.warning(
                    "list/watch failed; backing off",
                    error=msg,
                    retry_in=round(delay, 3),
                    relist=relist,
                    rv=self.rv,
                )
                self.sink.error(f"{self.kind}: {msg}")
                await asyncio.sleep(delay)

    async def _list(self, consistent: bool) -> None:
        # "0": any recent state from the watch cache (cheap for the server);
        # "" after a 410: a consistent read, so we never go back in time.
        timeout = aiohttp.ClientTimeout(
            total=self.t.list_timeout,
            sock_connect=self.t.connect_timeout,
            sock_read=self.t.read_timeout,
        )
        # No limit/continue paging: a server only pages when asked to, and even
        # 10k objects are a few MB (client-go does not page RV=0 lists either).
        kw = self._kw()
        kw["resource_version"] = "" if consistent else "0"
        resp = await self.list_fn(**kw, _request_timeout=timeout)
        try:
            status = resp.status
            body = await resp.read()
            retry_after = resp.headers.get("Retry-After")
        finally:
            resp.release()
            # Else the body (tens of MB at 40,000 endpoints) stays referenced by the
            # ApiClient until this cluster's next request, minutes later.
            if getattr(self.api_client, "last_response", None) is resp:
                self.api_client.last_response = None
            del resp
        if status != 200:
            raise _status_error(status, body, retry_after)
        # From here to the end nothing awaits. Parsing and stripping a list makes
        # objects by the million at scale that either live on in the registry or
        # are freed by reference counting (no cycles); the collector's passes over
        # them, and over all the registry holds already, were half of the sync
        # time at 200,000 endpoints (benchmarks/scale.py).
        collecting = gc.isenabled()
        gc.disable()
        try:
            try:
                data = json.loads(body)
            except ValueError:
                raise _Transient(f"list: non-JSON body ({body[:80]!r})") from None
            kind = data.get("kind", "List") if isinstance(data, dict) else None
            if not isinstance(kind, str) or not kind.endswith("List"):
                raise _Transient(f"list: not a List object ({body[:80]!r})")
            items = data.get("items") or []  # Go encodes an empty list as null
            if not isinstance(items, list):
                raise _Transient(f"list: not a List object ({body[:80]!r})")
            rv = _rv(data)
            del body  # parsed: only the objects are needed from here on
            objs = [o for o in map(self.strip, items) if o is not None]
            self._contact()
            if self.namespace is None:
                self.sink.replace(self.kind, objs)
            else:
                self.sink.replace(self.kind, objs, namespace=self.namespace)
        finally:
            if collecting:
                gc.enable()
        self.rv = rv
        self.lists += 1
        self.log.debug("listed", items=len(items), kept=len(objs), rv=rv)

    async def _watch(self) -> tuple[bool, float]:
        """One watch request until its clean end; returns (any events?, seconds it lasted)."""
        t = self.t
        timeout_s = self.rng.randint(
            t.watch_timeout_min, max(t.watch_timeout_min, t.watch_timeout_max)
        )
        kw = self._kw()
        kw.update(
            watch=True,
            allow_watch_bookmarks=True,
            timeout_seconds=timeout_s,
            _request_timeout=aiohttp.ClientTimeout(
                sock_connect=t.connect_timeout, sock_read=t.read_timeout
            ),
        )
        if self.rv is not None:
            kw["resource_version"] = self.rv
        started = time.monotonic()
        self.watches += 1
        resp = await self.list_fn(**kw)
        got = False
        clean = False
        try:
            if resp.status != 200:
                body = await resp.content.read(_MAX_ERROR_BODY)
                raise _status_error(resp.status, body, resp.headers.get("Retry-After"))
            self._contact()
            try:
                async with asyncio.timeout(timeout_s + t.stall_margin):
                    while True:
                        line = await resp.content.readline()
                        if not line:
                            clean = True
                            return got, time.monotonic() - started
                        if line.strip():
                            self._handle(line)
                            got = True
            except TimeoutError:
                # Either aiohttp's read timeout (silence) or our watchdog fired.
                raise _Transient(
                    f"watch stalled (no data for {t.read_timeout}s or open past "
                    f"timeoutSeconds={timeout_s}+{t.stall_margin}s)"
                ) from None
            except aiohttp.ClientPayloadError as e:
                raise _Transient(f"watch stream broken: {e}") from None
        finally:
            if clean:
                resp.release()
            else:
                resp.close()  # a broken or stalled connection must not go back to the pool

    def _handle(self, line: bytes) -> None:
        try:
            ev = json.loads(line)
        except ValueError:
            raise _Transient(f"non-JSON line in watch stream: {line[:80]!r}") from None
        if not isinstance(ev, dict):
            raise _Transient(f"watch line is not an object: {line[:80]!r}")
        typ, obj = ev.get("type"), ev.get("object")
        if typ is None and (ev.get("kind") == "Status" or "code" in ev):
            raise _status_object_error(ev)
        if not isinstance(typ, str) or not isinstance(obj, dict):
            raise _Transient(f"malformed watch event: {line[:80]!r}")
        if typ == "ERROR":
            raise _status_object_error(obj)
        rv = _rv(obj)
        if typ in ("ADDED", "MODIFIED"):
            o = self.strip(obj)
            if o is not None:
                self.sink.upsert(o)
            else:  # no longer something we keep (e.g. lost its service-name label)
                m = _meta(obj)
                if m is not None:
                    self.sink.delete(self.kind, m[0], m[1])
            self.applied += 1
        elif typ == "DELETED":
            m = _meta(obj)
            if m is not None:
                self.sink.delete(self.kind, m[0], m[1])
            self.applied += 1
        elif typ != "BOOKMARK":
            self.log.debug("unknown watch event type ignored", type=typ)
        if rv is not None:
            self.rv = rv
        self.events += 1
        self._contact()


# -- the source --------------------------------------------------------------------------------

# Parsed kubeconfig files, by path: (mtime, size) and the document. Member clusters
# often share one file with a context each, which kubernetes-asyncio parses whole
# (pure-Python YAML) for every cluster: 1.1 s of CPU at start for 50 clusters.
_KUBECONFIGS: dict[str, tuple[tuple[int, int], Any]] = {}
_NAMED = ("clusters", "contexts", "users")


def _kubeconfig_node(path: str, context: str | None) -> ConfigNode | None:
    """What ``load_kube_config`` reads of one kubeconfig file for one context: the
    context, its cluster and its user (each list's first entry of a name, as the
    library's merge keeps), parsed once per file version. The node carries the
    file's path, against which the library resolves relative certificate paths.
    None when the file is not one plain kubeconfig (missing, several paths, not a
    mapping, no such context): the library's own loading then says what is wrong."""
    if os.pathsep in path:
        return None
    try:
        st = os.stat(path)
        version = (st.st_mtime_ns, st.st_size)
        cached = _KUBECONFIGS.get(path)
        if cached is not None and cached[0] == version:
            doc = cached[1]
        else:
            with open(path, encoding="utf-8") as f:
                doc = yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
            _KUBECONFIGS[path] = (version, doc)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if not isinstance(doc, dict):
        return None
    named: dict[str, dict[str, Any]] = {}
    for kind in _NAMED:
        items = doc.get(kind) or []
        if not isinstance(items, list):
            return None
        first: dict[str, Any] = {}
        for item in items:
            if not isinstance(item, dict) or "name" not in item:
                return None
            first.setdefault(item["name"], item)
        named[kind] = first
    name = context if context is not None else doc.get("current-context")
    if not isinstance(name, str):
        return None
    ctx = named["contexts"].get(name)
    body = ctx.get("context") if ctx is not None else None
    if not isinstance(body, dict):
        return None
    mini = {
        "current-context": name,
        "contexts": [ctx],
        "clusters": [c for n, c in named["clusters"].items() if n == body.get("cluster")],
        "users": [u for n, u in named["users"].items() if n == body.get("user")],
    }
    # A copy: the loader writes refreshed tokens into what it is given.
    return ConfigNode(path, copy.deepcopy(mini), path)


class KubernetesSource:
    """One cluster: its own Configuration + ApiClient, one Reflector per resource, a heartbeat."""

    def __init__(
        self,
        cluster: Cluster,
        export: ExportConfig,
        *,
        timings: WatchTimings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if cluster.source != "kubernetes":
            raise ValueError(f"cluster {cluster.name} has no kubeconfig/in_cluster")
        self.cluster = cluster
        self.export = export
        self.timings = timings or WatchTimings()
        self.rng = rng or random.Random()
        self.reflectors: dict[str, Reflector] = {}
        self._last_contact = 0.0
        self.log = log.bind(cluster=cluster.name)

    async def load_configuration(self) -> client.Configuration:
        cfg = client.Configuration()  # a fresh one: never the process-wide default
        if self.cluster.in_cluster:
            config.load_incluster_config(client_configuration=cfg)
        else:
            path = str(self.cluster.kubeconfig)
            node = _kubeconfig_node(path, self.cluster.context)
            if node is None:  # not one plain file: the library reads (and merges) it
                await config.load_kube_config(
                    config_file=path,
                    context=self.cluster.context,
                    client_configuration=cfg,
                    persist_config=False,  # never rewrite the operator's kubeconfig
                )
            else:
                loader = KubeConfigLoader(
                    config_dict=node, active_context=self.cluster.context, config_base_path=None
                )
                await loader.load_and_set(cfg)
        return cfg

    def _touch(self) -> None:
        self._last_contact = time.monotonic()

    def counters(self) -> dict[str, int]:
        """Over every resource watched: watch requests after each one's first (a
        stream's clean end, an error, a relist), lists after each one's first, and
        watch events applied (for ``/v1/clusters`` and ``/metrics``)."""
        rs = self.reflectors.values()
        return {
            "watch_restarts": sum(max(0, r.watches - 1) for r in rs),
            "relists": sum(max(0, r.lists - 1) for r in rs),
            "events": sum(r.applied for r in rs),
        }

    async def run(self, sink: ClusterSink) -> None:
        backoff = Backoff(self.timings, self.rng)
        while True:
            try:
                cfg = await self.load_configuration()
                break
            except asyncio.CancelledError:
                raise
            except Exception as e:
                delay = backoff.next()
                self.log.error(
                    "cannot load cluster credentials",
                    error=f"{type(e).__name__}: {e}",
                    retry_in=round(delay, 2),
                )
                sink.error(f"credentials: {type(e).__name__}: {e}")
                await asyncio.sleep(delay)
        # Every watch holds one pooled connection for minutes: a pool smaller than
        # the reflectors (aiohttp's default is 100) leaves the extra ones waiting,
        # silently, for a watch to end. Per-namespace watches can exceed it.
        watched = self.export.watched_namespaces
        per_scope = 3 if self.export.mode == "serviceexport" else 2
        cfg.connection_pool_maxsize = max(
            cfg.connection_pool_maxsize or 0, per_scope * len(watched or (None,)) + 4
        )
        async with client.ApiClient(configuration=cfg) as api:
            self.reflectors = self._reflectors(api, sink)
            self.log.info("watching", host=cfg.host, resources=list(self.reflectors))
            async with asyncio.TaskGroup() as tg:
                for name, r in self.reflectors.items():
                    tg.create_task(r.run(), name=f"fedns-watch-{self.cluster.name}-{name}")
                tg.create_task(self._heartbeat(api, sink))

    def _reflectors(self, api: client.ApiClient, sink: ClusterSink) -> dict[str, Reflector]:
        core = client.CoreV1Api(api)
        disc = client.DiscoveryV1Api(api)
        mode = self.export.mode
        selector = (
            str(self.export.selector) if mode == "selector" and self.export.selector else None
        )
        mk = partial(
            Reflector,
            sink=sink,
            timings=self.timings,
            rng=self.rng,
            on_contact=self._touch,
            api_client=api,
        )
        custom = client.CustomObjectsApi(api)
        # With export.namespaces.allow, one list+watch per allowed namespace instead
        # of one across all: what namespaced Roles permit (least privilege, the
        # chart's rbac.namespaces), and less for the API server to send.
        watched = self.export.watched_namespaces
        scopes: list[str | None] = [*watched] if watched is not None else [None]
        out: dict[str, Reflector] = {}
        for ns in scopes:
            suffix = "" if ns is None else f"/{ns}"
            out[SERVICES + suffix] = mk(
                SERVICES,
                core.list_service_for_all_namespaces
                if ns is None
                else partial(core.list_namespaced_service, ns),
                partial(strip_service, keep_labels=mode == "selector"),
                label_selector=selector,  # filtered by the server; leaving the selection is a DELETED
                namespace=ns,
            )
            out[ENDPOINTSLICES + suffix] = mk(
                ENDPOINTSLICES,
                disc.list_endpoint_slice_for_all_namespaces
                if ns is None
                else partial(disc.list_namespaced_endpoint_slice, ns),
                partial(strip_slice, cluster=sys.intern(self.cluster.name)),
                label_selector=SERVICE_NAME_LABEL,  # only slices that belong to a Service
                namespace=ns,
            )
            if mode == "serviceexport":
                out[SERVICEEXPORTS + suffix] = mk(
                    SERVICEEXPORTS,
                    partial(custom.list_cluster_custom_object, MCS_GROUP, MCS_VERSION, MCS_PLURAL)
                    if ns is None
                    else partial(
                        custom.list_namespaced_custom_object, MCS_GROUP, MCS_VERSION, ns, MCS_PLURAL
                    ),
                    strip_export,
                    namespace=ns,
                )
        return out

    async def _heartbeat(self, api: client.ApiClient, sink: ClusterSink) -> None:
        """GET /version when nothing else reached the API server lately (quiet clusters)."""
        interval = self.timings.heartbeat or max(0.05, self.cluster.stale_after / 3)
        version = client.VersionApi(api)
        while True:
            await asyncio.sleep(interval * (0.9 + 0.2 * self.rng.random()))
            if time.monotonic() - self._last_contact < interval:
                continue
            try:
                resp: Any = await version.get_code(
                    _preload_content=False,
                    _request_timeout=aiohttp.ClientTimeout(total=max(interval, 1.0)),
                )
                ok = resp.status == 200
                resp.release()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.log.debug("heartbeat failed", error=f"{type(e).__name__}: {e}")
                continue
            if ok:
                self._touch()
                sink.contact()
