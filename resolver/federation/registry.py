"""The federation registry: every cluster's services and endpoints, merged per service key.

Sources write into a per-cluster cache through a ``ClusterSink`` (upsert,
delete, replace-after-list, contact); readers take immutable
``FederatedService`` snapshots and subscribe to the keys that changed::

    registry = Registry(fed.clusters, fed.export)
    registry.subscribe(lambda keys: rebuild(keys))      # frozenset[ServiceKey]
    task = asyncio.create_task(registry.run(build_sources(fed)))
    await registry.wait_synced(10)
    snap = registry.snapshot(ServiceKey("shop", "cart"))  # FederatedService | None

Design points:

* Everything runs on one event loop; a write is a few dict operations, so a
  busy cluster cannot hold up another (there is no lock and no shared queue).
* A write that does not change the stripped object (status churn, a relist
  returning what we have) changes nothing and publishes nothing.
* Changed keys are coalesced: the first change arms a short timer
  (``coalesce`` seconds, default 5 ms); subscribers then get one frozenset.
* Per-(cluster, key) ``ClusterService`` values are built lazily on
  ``snapshot`` and cached until that key changes in that cluster, so a change
  rebuilds one service in one cluster.
* Liveness: each Kubernetes cluster's last successful contact with its API
  server is tracked; ``stale_after`` seconds after it, the cluster is marked
  stale (one timer per cluster, re-armed only when it fires), every key it
  holds is republished, and ``stale_policy`` applies in snapshots: ``serve``
  keeps the endpoints (``ClusterService.stale`` is true), ``drop`` leaves the
  cluster out. The first contact after that makes it live again. A timer that
  fires late (the loop was busy, e.g. publishing millions of endpoints) judges
  again later (``busy_grace``), once what the API server sent meanwhile has been
  read and the watches the busy loop let time out have reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from .config import ExportConfig, FederationConfig
from .model import (
    ENDPOINTSLICES,
    SERVICEEXPORTS,
    SERVICES,
    Cluster,
    ClusterService,
    Endpoint,
    ExportObject,
    FederatedService,
    Kind,
    KubeObject,
    Port,
    ServiceKey,
    ServiceObject,
    SliceObject,
)
from .sources.base import ClusterSink, Source

log = structlog.get_logger("fedns.registry")

Callback = Callable[[frozenset[ServiceKey]], None]
_MISSING: Any = object()
# A liveness timer that fires this late found the event loop busy; it looks again
# ``busy_grace`` later, after the loop has read what arrived meanwhile (see _check).
BUSY_LATE = 1.0
BUSY_GRACE = 1.0


def busy_grace(stale_after: float) -> float:
    """How long after a late liveness timer a cluster is judged again. A second is
    not enough after a long publish: the watch connections the busy loop let time
    out back off for about that long and 50 clusters reconnect at once (2,000,000
    endpoints: 32 of 50 were marked stale, then live, each round republishing all).
    Half of ``stale_after`` spans more than one heartbeat (every third of it), so a
    live server has been heard from by then; a dead one is marked stale that much
    later than its deadline, once, after a loop that could not listen."""
    return max(BUSY_GRACE, stale_after / 2)


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    """What the admin API shows per cluster."""

    name: str
    source: str  # "kubernetes" | "static"
    synced: bool  # the initial list of every watched resource is done
    stale: bool
    stale_policy: str
    stale_after: float
    last_contact: float | None  # unix time of the last successful API contact
    contact_age: float | None  # seconds since then
    services: int
    endpoints: int
    last_error: str | None
    errors: int
    # The lists not done yet: "services", or "services/pay" for a per-namespace watch.
    waiting_for: tuple[str, ...] = ()
    # The source's counters (a Kubernetes source's; a static one has none): watch
    # requests opened again, lists after the first, watch events applied.
    watch_restarts: int = 0
    relists: int = 0
    events: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _State:
    """One cluster's cache. Only the registry touches it."""

    __slots__ = (
        "built",
        "by_service",
        "cluster",
        "endpoints",
        "errors",
        "last_contact",
        "last_contact_wall",
        "last_error",
        "objects",
        "required",
        "stale",
        "synced_event",
        "synced_kinds",
        "timer",
    )

    def __init__(self, cluster: Cluster, required: frozenset[tuple[str, str | None]]) -> None:
        self.cluster = cluster
        self.objects: dict[str, dict[tuple[str, str], Any]] = {
            SERVICES: {},
            ENDPOINTSLICES: {},
            SERVICEEXPORTS: {},
        }
        self.by_service: dict[ServiceKey, dict[str, SliceObject]] = {}
        # Endpoints in the cluster's slices, kept as they change: /readyz asks for the
        # status, and a sum over every slice was 40 ms of the loop at 2,000,000.
        self.endpoints = 0
        self.built: dict[ServiceKey, ClusterService | None] = {}
        self.required = required
        # (kind, namespace) lists done; namespace None: all namespaces at once.
        self.synced_kinds: set[tuple[str, str | None]] = set()
        self.synced_event = asyncio.Event()
        self.last_contact: float | None = None
        self.last_contact_wall: float | None = None
        self.stale = False
        self.last_error: str | None = None
        self.errors = 0
        self.timer: asyncio.TimerHandle | None = None

    @property
    def dropped(self) -> bool:
        return self.stale and self.cluster.stale_policy == "drop"


def _kind_of(obj: KubeObject) -> Kind:
    if isinstance(obj, ServiceObject):
        return SERVICES
    if isinstance(obj, SliceObject):
        return ENDPOINTSLICES
    if isinstance(obj, ExportObject):
        return SERVICEEXPORTS
    raise TypeError(f"not a stripped Kubernetes object: {type(obj).__name__}")


def _key_of(obj: Any) -> ServiceKey:
    key: ServiceKey = obj.key
    return key


class _Sink:
    """The write side of the registry for one cluster (``sources.base.ClusterSink``)."""

    __slots__ = ("_reg", "_st")

    def __init__(self, registry: Registry, state: _State) -> None:
        self._reg = registry
        self._st = state

    @property
    def cluster(self) -> Cluster:
        return self._st.cluster

    def upsert(self, obj: KubeObject) -> None:
        """An object was added or modified (a watch ADDED/MODIFIED event)."""
        self._reg._put(self._st, obj)

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        """An object was deleted (a watch DELETED event)."""
        self._reg._drop(self._st, kind, (namespace, name))

    def replace(self, kind: Kind, objects: Iterable[KubeObject], namespace: str | None = None) -> None:
        """A full list (of one namespace, with ``namespace``): see ``ClusterSink.replace``."""
        self._reg._replace(self._st, kind, objects, namespace)

    def contact(self) -> None:
        """The API server answered (a list, a watch line, a bookmark, a heartbeat)."""
        self._reg._contact(self._st)

    def error(self, message: str) -> None:
        """A failed request, for the status page (liveness is decided by ``contact`` alone)."""
        self._st.last_error = message
        self._st.errors += 1


class Registry:
    def __init__(
        self,
        clusters: Sequence[Cluster],
        export: ExportConfig | None = None,
        *,
        coalesce: float = 0.005,
    ) -> None:
        self.export = export or ExportConfig()
        self.coalesce = coalesce
        self._states: list[_State] = []
        self._by_name: dict[str, _State] = {}
        for c in clusters:
            if c.name in self._by_name:
                raise ValueError(f"cluster {c.name!r} given twice")
            kinds = [SERVICES, ENDPOINTSLICES]
            if c.source == "kubernetes" and self.export.mode == "serviceexport":
                kinds.append(SERVICEEXPORTS)
            # A Kubernetes source lists allowed namespaces one by one (see
            # sources/kubernetes.py): synced once each of them is listed.
            watched = self.export.watched_namespaces
            scopes: list[str | None] = (
                [*watched] if c.source == "kubernetes" and watched is not None else [None]
            )
            st = _State(c, frozenset((k, ns) for k in kinds for ns in scopes))
            self._states.append(st)
            self._by_name[c.name] = st
        self._subs: list[Callback] = []
        self._pending: set[ServiceKey] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._started_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sources: dict[str, Source] = {}  # by cluster, while ``run`` runs them

    @classmethod
    def from_config(cls, fed: FederationConfig, **kw: Any) -> Registry:
        return cls(fed.clusters, fed.export, **kw)

    # -- reading ----------------------------------------------------------------

    @property
    def clusters(self) -> tuple[Cluster, ...]:
        return tuple(st.cluster for st in self._states)

    def snapshot(self, key: ServiceKey) -> FederatedService | None:
        """The service across clusters, or None when no (non-dropped) cluster publishes it."""
        per: list[ClusterService] = []
        for st in self._states:
            if st.dropped:
                continue
            cs = st.built.get(key, _MISSING)
            if cs is _MISSING:
                cs = self._build(st, key)
                st.built[key] = cs
            if cs is not None:
                per.append(cs)
        return FederatedService(key, tuple(per)) if per else None

    def keys(self) -> frozenset[ServiceKey]:
        """Every key ``snapshot`` returns a service for."""
        out: set[ServiceKey] = set()
        for st in self._states:
            if st.dropped:
                continue
            for svc in st.objects[SERVICES].values():
                if self._exported(st, svc):
                    out.add(svc.key)
        return frozenset(out)

    def subscribe(self, callback: Callback) -> Callable[[], None]:
        """Call ``callback(changed_keys)`` after changes (coalesced); returns an unsubscribe function."""
        self._subs.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._subs.remove(callback)

        return unsubscribe

    def cluster_status(self) -> dict[str, ClusterStatus]:
        now = time.monotonic()
        out: dict[str, ClusterStatus] = {}
        for st in self._states:
            c = st.cluster
            # A source may count what it did (KubernetesSource.counters); the
            # Source protocol does not ask it to.
            counted = getattr(self._sources.get(c.name), "counters", None)
            counters: dict[str, int] = counted() if callable(counted) else {}
            out[c.name] = ClusterStatus(
                name=c.name,
                source=c.source,
                synced=st.synced_event.is_set(),
                stale=st.stale,
                stale_policy=c.stale_policy,
                stale_after=c.stale_after,
                last_contact=st.last_contact_wall,
                contact_age=None if st.last_contact is None else round(now - st.last_contact, 3),
                services=len(st.objects[SERVICES]),
                endpoints=st.endpoints,
                last_error=st.last_error,
                errors=st.errors,
                waiting_for=tuple(
                    sorted(k if ns is None else f"{k}/{ns}" for k, ns in st.required - st.synced_kinds)
                ),
                watch_restarts=counters.get("watch_restarts", 0),
                relists=counters.get("relists", 0),
                events=counters.get("events", 0),
            )
        return out

    def synced(self, cluster: str) -> asyncio.Event:
        """Set once the cluster's initial lists are done (and stays set)."""
        return self._by_name[cluster].synced_event

    def is_synced(self) -> bool:
        return all(st.synced_event.is_set() for st in self._states)

    async def wait_synced(self, timeout: float | None = None) -> bool:
        """Wait until every cluster has synced; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                for st in self._states:
                    await st.synced_event.wait()
        except TimeoutError:
            return False
        return True

    # -- running -----------------------------------------------------------------

    def sink(self, cluster: str) -> ClusterSink:
        return _Sink(self, self._by_name[cluster])

    def start(self) -> None:
        """Arm liveness timers (needs the running loop; ``run`` calls it)."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._started_at = time.monotonic()
        for st in self._states:
            if st.cluster.source == "kubernetes":
                self._arm(st)

    async def run(self, sources: Iterable[Source]) -> None:
        """Run the sources (each feeding its cluster's sink) until cancelled or all return."""
        self.start()
        sources = list(sources)
        self._sources.update((src.cluster.name, src) for src in sources)
        tasks = [
            asyncio.create_task(self._guard(src), name=f"fedns-source-{src.cluster.name}")
            for src in sources
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _guard(self, src: Source) -> None:
        try:
            await src.run(self.sink(src.cluster.name))
        except asyncio.CancelledError:
            raise
        except Exception:  # a source bug must not take the others down
            log.exception("source crashed", cluster=src.cluster.name)

    def close(self) -> None:
        for st in self._states:
            if st.timer is not None:
                st.timer.cancel()
                st.timer = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._loop = None

    # -- writes (through ClusterSink) -------------------------------------------

    def _allowed(self, st: _State, namespace: str) -> bool:
        return st.cluster.source == "static" or self.export.namespace_allowed(namespace)

    def _put(self, st: _State, obj: KubeObject) -> None:
        kind = _kind_of(obj)
        ident = obj.ident
        if not self._allowed(st, ident[0]):
            return
        store = st.objects[kind]
        old = store.get(ident)
        if old == obj:
            return
        store[ident] = obj
        if isinstance(obj, SliceObject):
            st.endpoints += len(obj.endpoints)
            if old is not None:
                st.endpoints -= len(old.endpoints)
                self._unindex(st, old)
            st.by_service.setdefault(obj.key, {})[obj.name] = obj
        self._changed(st, _key_of(obj))
        if old is not None and _key_of(old) != _key_of(obj):
            self._changed(st, _key_of(old))

    def _drop(self, st: _State, kind: str, ident: tuple[str, str]) -> None:
        old = st.objects[kind].pop(ident, None)
        if old is None:
            return
        if isinstance(old, SliceObject):
            st.endpoints -= len(old.endpoints)
            self._unindex(st, old)
        self._changed(st, _key_of(old))

    def _unindex(self, st: _State, sl: SliceObject) -> None:
        group = st.by_service.get(sl.key)
        if group is not None:
            group.pop(sl.name, None)
            if not group:
                del st.by_service[sl.key]

    def _replace(
        self, st: _State, kind: Kind, objects: Iterable[KubeObject], namespace: str | None = None
    ) -> None:
        fresh: dict[tuple[str, str], KubeObject] = {}
        for o in objects:
            if _kind_of(o) != kind:
                raise TypeError(f"replace({kind!r}) got a {type(o).__name__}")
            if namespace is not None and o.ident[0] != namespace:
                raise ValueError(f"replace({kind!r}, namespace={namespace!r}) got {o.ident}")
            fresh[o.ident] = o
        gone = [
            i
            for i in st.objects[kind]
            if i not in fresh and (namespace is None or i[0] == namespace)
        ]
        for ident in gone:
            self._drop(st, kind, ident)
        for o in fresh.values():
            self._put(st, o)
        done = (
            {m for m in st.required if m[0] == kind} | {(kind, None)}
            if namespace is None
            else {(kind, namespace)}
        )
        if not done <= st.synced_kinds:
            st.synced_kinds |= done
            if st.required <= st.synced_kinds and not st.synced_event.is_set():
                st.synced_event.set()
                log.info(
                    "cluster synced",
                    cluster=st.cluster.name,
                    state="synced",
                    services=len(st.objects[SERVICES]),
                )

    def _changed(self, st: _State, key: ServiceKey) -> None:
        st.built.pop(key, None)
        self._pending.add(key)
        self._schedule()

    def _schedule(self) -> None:
        if self._flush_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): publish at once
            self._flush()
            return
        self._flush_handle = loop.call_later(self.coalesce, self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._pending:
            return
        keys = frozenset(self._pending)
        self._pending.clear()
        for cb in list(self._subs):
            try:
                cb(keys)
            except Exception:
                log.exception("registry subscriber failed", keys=len(keys))

    # -- liveness ----------------------------------------------------------------

    def _contact(self, st: _State) -> None:
        st.last_contact = time.monotonic()
        st.last_contact_wall = time.time()
        if st.stale:
            st.stale = False
            log.info("cluster live again", cluster=st.cluster.name, state="live")
            self._republish(st)
        self._arm(st)

    def _arm(self, st: _State) -> None:
        if st.timer is not None or self._loop is None or st.cluster.source != "kubernetes":
            return
        ref = st.last_contact if st.last_contact is not None else self._started_at
        assert ref is not None
        delay = max(0.0, ref + st.cluster.stale_after - time.monotonic())
        st.timer = self._loop.call_later(delay, self._check, st)

    def _check(self, st: _State) -> None:
        fired, st.timer = st.timer, None
        ref = st.last_contact if st.last_contact is not None else self._started_at
        assert ref is not None
        age = time.monotonic() - ref
        if age + 1e-3 < st.cluster.stale_after:
            self._arm(st)  # contact happened since the timer was armed
            return
        loop = self._loop
        late = loop.time() - fired.when() if fired is not None and loop is not None else 0.0
        if late > BUSY_LATE and not st.stale and loop is not None:
            # No evidence of silence: this loop was busy past the deadline (a publish
            # of millions of endpoints takes longer than stale_after), and what the
            # API server sent meanwhile is unread yet. Marking every cluster stale
            # here republished everything, which kept the loop busy for as long
            # again: judge once the lines and the heartbeat due by now are read.
            st.timer = loop.call_later(busy_grace(st.cluster.stale_after), self._check, st)
            return
        if not st.stale:
            st.stale = True
            log.warning(
                "cluster stale",
                cluster=st.cluster.name,
                state="stale",
                seconds_without_contact=round(age, 3),
                policy=st.cluster.stale_policy,
                effect="endpoints kept, marked stale"
                if st.cluster.stale_policy == "serve"
                else "cluster left out of answers",
                last_error=st.last_error,
            )
            self._republish(st)

    def _republish(self, st: _State) -> None:
        st.built.clear()
        for svc in st.objects[SERVICES].values():
            self._pending.add(svc.key)
        if self._pending:
            self._schedule()

    # -- building one cluster's view of a service --------------------------------

    def _exported(self, st: _State, svc: ServiceObject) -> bool:
        if st.cluster.source == "static":
            return True
        mode = self.export.mode
        if mode == "all":
            return True
        if mode == "selector":
            sel = self.export.selector
            return sel is None or sel.matches(svc.labels)
        return svc.ident in st.objects[SERVICEEXPORTS]

    def _build(self, st: _State, key: ServiceKey) -> ClusterService | None:
        svc: ServiceObject | None = st.objects[SERVICES].get((key.namespace, key.name))
        if svc is None or not self._exported(st, svc):
            return None
        slices = st.by_service.get(key)
        backends = merge_endpoints(slices.values()) if slices else ()
        c = st.cluster
        if c.reach == "pod":
            # Pods are reached directly: the slices' (target) ports, not the Service's.
            ports: tuple[Port, ...] = (
                tuple(sorted({p for sl in slices.values() for p in sl.ports})) if slices else ()
            )
            endpoints = backends
        else:
            # One endpoint per front address; it is as ready as the best backend
            # behind it (the load balancer/gateway routes to any ready pod).
            addrs = svc.ingress_ips if c.reach == "loadbalancer" else c.gateway
            ready = any(b.ready for b in backends)
            serving = any(b.serving for b in backends)
            zone = c.zone or None
            endpoints = tuple(
                Endpoint(c.name, (a,), ready, serving, False, zone, None, None) for a in addrs
            )
            ports = svc.ports
        return ClusterService(c, key, ports, endpoints, svc.annotations, st.stale)


def merge_endpoints(slices: Iterable[SliceObject]) -> tuple[Endpoint, ...]:
    """All endpoints of a service's slices, dual-stack halves joined, in a canonical order.

    A dual-stack pod is in one IPv4 and one IPv6 slice; joined by targetRef it
    becomes one endpoint with both addresses. Joined conditions are
    conservative: ready/serving only if every half says so. The order is by
    address, so a reshuffle of endpoints between slices changes nothing.
    """
    ordered = sorted(slices, key=lambda s: s.name)
    if len(ordered) == 1 and ordered[0].alone:  # nearly every service, at every plan
        return ordered[0].endpoints
    groups: dict[Any, list[Endpoint]] = {}
    for sl in ordered:
        for ep, ref in zip(sl.endpoints, sl.refs or (None,) * len(sl.endpoints), strict=False):
            groups.setdefault(ref if ref is not None else id(ep), []).append(ep)
    out: list[Endpoint] = []
    for members in groups.values():
        if len(members) == 1:
            out.append(members[0])
            continue
        addrs: list[str] = []
        for m in members:
            addrs.extend(a for a in m.addresses if a not in addrs)
        addrs.sort(key=lambda a: (":" in a, a))  # IPv4 first
        first = members[0]
        out.append(
            Endpoint(
                cluster=first.cluster,
                addresses=tuple(addrs),
                ready=all(m.ready for m in members),
                serving=all(m.serving for m in members),
                terminating=any(m.terminating for m in members),
                zone=next((m.zone for m in members if m.zone), None),
                hostname=next((m.hostname for m in members if m.hostname), None),
                node=next((m.node for m in members if m.node), None),
            )
        )
    out.sort(key=lambda e: e.addresses)
    if len(ordered) == 1:
        # One slice, nothing joined, already in order (the common case): its own
        # tuple, not a second one per service and cluster.
        mine = ordered[0].endpoints
        if len(mine) == len(out) and all(map(operator.is_, mine, out)):
            return mine
    return tuple(out)
