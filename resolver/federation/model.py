"""The federation's data model: small frozen values, stripped of everything DNS does not use.

As CoreDNS's ``plugin/kubernetes/object`` does, a Kubernetes Service or
EndpointSlice is reduced on arrival to the few fields an answer needs, so a
registry of 100k endpoints stays small and every snapshot can be shared
between readers without copying. All types are frozen (hashable, safe to hand
to another task or pickle to a worker process) and use ``__slots__``.

What is kept per endpoint is what a federation of millions of them pays for
(benchmarks/scale.py): an ``Endpoint`` of four slots (its three conditions in
one small int, and its zone, hostname and node in one tuple shared by every
endpoint on the same node), its address strings exactly as the API server sent
them when they are canonical (``ip_text``: the plan and the answer table then
hold the same objects), and a slice's pod references packed into one string.
"""

from __future__ import annotations

import ipaddress
import itertools
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

Reach = Literal["pod", "loadbalancer", "gateway"]
StalePolicy = Literal["serve", "drop"]

REACH_MODES: tuple[Reach, ...] = ("pod", "loadbalancer", "gateway")
STALE_POLICIES: tuple[StalePolicy, ...] = ("serve", "drop")
ANNOTATION_PREFIX = "fedns.io/"


class FrozenMap(Mapping[str, str]):
    """A read-only, hashable, picklable str->str mapping (``MappingProxyType`` does not pickle)."""

    __slots__ = ("_d",)

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        self._d: dict[str, str] = dict(items or {})

    def __getitem__(self, key: str) -> str:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(frozenset(self._d.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._d == other._d
        return self._d == other if isinstance(other, dict) else NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMap, (self._d,))


_EMPTY = FrozenMap()
EMPTY_MAP: Final = _EMPTY  # one for every object without labels or annotations


@dataclass(frozen=True, slots=True)
class Cluster:
    """One member cluster and how clients reach the services in it.

    ``reach`` decides what a service's addresses are in this cluster: the pod
    IPs (flat network between clusters), the Service's LoadBalancer ingress
    IPs, or the fixed ``gateway`` addresses (an east-west gateway).

    ``stale_after``: seconds without any successful contact with the cluster's
    API server before its data is marked stale. ``stale_policy`` says what
    stale data means for answers: ``serve`` (default) keeps answering with the
    last-known endpoints, flagged stale; ``drop`` leaves the cluster out. The
    safe default is ``serve``: an unreachable *API server* says little about
    the workloads (control planes fail and get upgraded far more often than
    whole clusters), and answering with last-known data degrades gracefully,
    while dropping turns a control-plane blip into an outage of every service
    that lives only there. Health probing (not the API server) is what should
    take dead endpoints out; ``drop`` is for clusters whose API loss means the
    cluster is gone.
    """

    name: str
    region: str = ""
    zone: str = ""
    reach: Reach = "pod"
    gateway: tuple[str, ...] = ()
    stale_after: float = 30.0
    stale_policy: StalePolicy = "serve"
    weight: int = 100
    kubeconfig: Path | None = None
    context: str | None = None
    in_cluster: bool = False

    @property
    def source(self) -> Literal["static", "kubernetes"]:
        """Where this cluster's data comes from: its API server, or the config file."""
        return "kubernetes" if (self.kubeconfig is not None or self.in_cluster) else "static"


@dataclass(frozen=True, slots=True, order=True)
class ServiceKey:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class Port:
    name: str  # "" when the port is unnamed
    port: int
    protocol: str = "TCP"  # TCP, UDP or SCTP, as Kubernetes spells them


def ip_text(value: str) -> tuple[str, int] | None:
    """An IP address's canonical text (as ``str(ipaddress.ip_address(value))``) and
    its version, or None when ``value`` is not an address.

    ``value`` itself when it is canonical already, so an address kept from the API
    server's JSON is the one string the registry, the plan and the answer table
    share. A dotted quad that the C library reads and prints back unchanged is
    canonical (that text is exactly what ``ipaddress`` prints), checked at a tenth
    of the cost of ``ipaddress``; anything else goes through ``ipaddress``.
    """
    if ":" not in value:
        try:
            if socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, value)) == value:
                return value, 4
        except (OSError, ValueError, UnicodeError):
            pass
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return None
    text = str(ip)
    return (value if text == value else text), ip.version


_READY, _SERVING, _TERMINATING = 1, 2, 4
_Where = tuple[str | None, str | None, str | None]  # (zone, hostname, node)
# The one (zone, None, node) tuple shared by the endpoints on a node, its own key;
# hostnames are one per pod, so a tuple holding one is not shared. Cleared when
# full, which only ends sharing for endpoints made after that.
_WHERE: dict[_Where, _Where] = {}
_WHERE_MAX = 1 << 16


def _where(zone: str | None, hostname: str | None, node: str | None) -> _Where | None:
    if hostname is not None:
        return (zone, hostname, node)
    if zone is None and node is None:
        return None
    w = (zone, None, node)
    shared = _WHERE.get(w)
    if shared is not None:
        return shared
    if len(_WHERE) >= _WHERE_MAX:
        _WHERE.clear()
    _WHERE[w] = w
    return w


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Endpoint:
    """One reachable backend of a service in one cluster.

    ``addresses`` holds every address of the backend (IPv4 and IPv6 of a
    dual-stack pod are one endpoint). Conditions follow EndpointSlice
    semantics: ``ready`` is serving and not terminating; ``serving`` is ready
    regardless of termination; ``terminating`` is being shut down.

    Built and read as ``Endpoint(cluster, addresses, ready, serving, terminating,
    zone, hostname, node)``; stored in four slots (64 bytes, against 96 for eight).
    """

    cluster: str
    addresses: tuple[str, ...]
    _flags: int
    _where: _Where | None

    def __init__(
        self,
        cluster: str,
        addresses: tuple[str, ...],
        ready: bool = True,
        serving: bool = True,
        terminating: bool = False,
        zone: str | None = None,
        hostname: str | None = None,
        node: str | None = None,
    ) -> None:
        put = object.__setattr__
        put(self, "cluster", cluster)
        put(self, "addresses", addresses)
        put(
            self,
            "_flags",
            (_READY if ready else 0) | (_SERVING if serving else 0) | (_TERMINATING if terminating else 0),
        )
        put(self, "_where", _where(zone, hostname, node))

    @property
    def ready(self) -> bool:
        return bool(self._flags & _READY)

    @property
    def serving(self) -> bool:
        return bool(self._flags & _SERVING)

    @property
    def terminating(self) -> bool:
        return bool(self._flags & _TERMINATING)

    @property
    def zone(self) -> str | None:
        return None if self._where is None else self._where[0]

    @property
    def hostname(self) -> str | None:
        return None if self._where is None else self._where[1]

    @property
    def node(self) -> str | None:
        return None if self._where is None else self._where[2]

    def _args(self) -> tuple[Any, ...]:
        return (
            self.cluster,
            self.addresses,
            self.ready,
            self.serving,
            self.terminating,
            self.zone,
            self.hostname,
            self.node,
        )

    def __repr__(self) -> str:
        names = ("cluster", "addresses", "ready", "serving", "terminating", "zone", "hostname", "node")
        return "Endpoint(" + ", ".join(f"{n}={v!r}" for n, v in zip(names, self._args(), strict=True)) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Endpoint, self._args())


@dataclass(frozen=True, slots=True)
class ClusterService:
    """A service as one cluster contributes it, endpoints already reduced per ``cluster.reach``.

    ``stale`` is true while the cluster's API server has not been heard from
    for longer than ``cluster.stale_after`` (the data is last-known, not live).
    """

    cluster: Cluster
    key: ServiceKey
    ports: tuple[Port, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    annotations: Mapping[str, str] = _EMPTY
    stale: bool = False


@dataclass(frozen=True, slots=True)
class FederatedService:
    """An immutable snapshot of one service across all clusters, in configured cluster order.

    Clusters where the service does not exist (or is not exported) are absent;
    stale clusters with ``stale_policy: drop`` are absent too.
    """

    key: ServiceKey
    per_cluster: tuple[ClusterService, ...]

    def cluster(self, name: str) -> ClusterService | None:
        for cs in self.per_cluster:
            if cs.cluster.name == name:
                return cs
        return None


def fedns_annotations(annotations: object) -> Mapping[str, str]:
    """Only the ``fedns.io/`` annotations of an object (the rest is not ours to keep)."""
    if not isinstance(annotations, dict) or not annotations:
        return _EMPTY
    kept = {
        k: v
        for k, v in annotations.items()
        if isinstance(k, str) and k.startswith(ANNOTATION_PREFIX) and isinstance(v, str)
    }
    return FrozenMap(kept) if kept else _EMPTY


# -- stripped Kubernetes objects: what sources hand to the registry -------------------

Kind = Literal["services", "endpointslices", "serviceexports"]
SERVICES: Final = "services"
ENDPOINTSLICES: Final = "endpointslices"
SERVICEEXPORTS: Final = "serviceexports"


@dataclass(frozen=True, slots=True)
class ServiceObject:
    """A ``v1`` Service, stripped: what export control and the reach modes need."""

    key: ServiceKey
    ports: tuple[Port, ...] = ()
    labels: Mapping[str, str] = _EMPTY
    annotations: Mapping[str, str] = _EMPTY  # only fedns.io/ keys
    ingress_ips: tuple[str, ...] = ()  # status.loadBalancer.ingress[].ip

    @property
    def ident(self) -> tuple[str, str]:
        return (self.key.namespace, self.key.name)


_REF_SEP, _REF_NONE = "\x00", "\x01"  # never in a Kubernetes object name


def _pack_refs(refs: tuple[str | None, ...]) -> str | tuple[str | None, ...]:
    """One string for a slice's pod references (~10 bytes each, against ~70 for a
    string of its own in a tuple); the tuple itself when a name could not be told
    apart in the string (empty, or holding a separator)."""
    if not refs or any(r is not None and (not r or _REF_SEP in r or _REF_NONE in r) for r in refs):
        return refs
    return _REF_SEP.join(_REF_NONE if r is None else r for r in refs)


@dataclass(frozen=True, slots=True, init=False)
class SliceObject:
    """A ``discovery.k8s.io/v1`` EndpointSlice, stripped.

    ``refs`` runs parallel to ``endpoints``: the endpoint's targetRef (the pod
    name), which is what joins a dual-stack pod's IPv4 and IPv6 slices into one
    endpoint. ``service`` is the ``kubernetes.io/service-name`` label. Built as
    ``SliceObject(namespace, name, service, ports, endpoints, refs)``; the refs are
    kept packed (``_pack_refs``) and unpacked when read. ``alone`` says that the
    slice, as the only one of its service, is its service's endpoints as they are:
    in address order, no two joined by a shared targetRef (``merge_endpoints``).
    """

    namespace: str
    name: str
    service: str
    ports: tuple[Port, ...]
    endpoints: tuple[Endpoint, ...]
    _refs: str | tuple[str | None, ...]
    alone: bool

    def __init__(
        self,
        namespace: str,
        name: str,
        service: str,
        ports: tuple[Port, ...] = (),
        endpoints: tuple[Endpoint, ...] = (),
        refs: tuple[str | None, ...] = (),
    ) -> None:
        put = object.__setattr__
        put(self, "namespace", namespace)
        put(self, "name", name)
        put(self, "service", service)
        put(self, "ports", ports)
        put(self, "endpoints", endpoints)
        refs = tuple(refs)
        put(self, "_refs", _pack_refs(refs))
        # The keys merge_endpoints groups by: the targetRef, else the endpoint itself.
        keys: list[object] = [id(e) if r is None else r for e, r in zip(endpoints, refs, strict=False)]
        keys = keys if refs else list(map(id, endpoints))
        put(
            self,
            "alone",
            len(refs) in (0, len(endpoints))
            and len(set(keys)) == len(endpoints)
            and all(a.addresses <= b.addresses for a, b in itertools.pairwise(endpoints)),
        )

    @property
    def refs(self) -> tuple[str | None, ...]:
        packed = self._refs
        if not isinstance(packed, str):
            return packed
        return tuple(None if r == _REF_NONE else r for r in packed.split(_REF_SEP))

    @property
    def ident(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def key(self) -> ServiceKey:
        return ServiceKey(self.namespace, self.service)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SliceObject, (self.namespace, self.name, self.service, self.ports, self.endpoints, self.refs))


@dataclass(frozen=True, slots=True)
class ExportObject:
    """A Multi-Cluster Services ``ServiceExport``: its existence exports the same-named Service."""

    key: ServiceKey

    @property
    def ident(self) -> tuple[str, str]:
        return (self.key.namespace, self.key.name)


KubeObject = ServiceObject | SliceObject | ExportObject
