"""The federation's data model: small frozen values, stripped of everything DNS does not use.

As CoreDNS's ``plugin/kubernetes/object`` does, a Kubernetes Service or
EndpointSlice is reduced on arrival to the few fields an answer needs, so a
registry of 100k endpoints stays small and every snapshot can be shared
between readers without copying. All types are frozen (hashable, safe to hand
to another task or pickle to a worker process) and use ``__slots__``.
"""

from __future__ import annotations

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


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One reachable backend of a service in one cluster.

    ``addresses`` holds every address of the backend (IPv4 and IPv6 of a
    dual-stack pod are one endpoint). Conditions follow EndpointSlice
    semantics: ``ready`` is serving and not terminating; ``serving`` is ready
    regardless of termination; ``terminating`` is being shut down.
    """

    cluster: str
    addresses: tuple[str, ...]
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    zone: str | None = None
    hostname: str | None = None
    node: str | None = None


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


@dataclass(frozen=True, slots=True)
class SliceObject:
    """A ``discovery.k8s.io/v1`` EndpointSlice, stripped.

    ``refs`` runs parallel to ``endpoints``: the endpoint's targetRef (the pod
    name), which is what joins a dual-stack pod's IPv4 and IPv6 slices into one
    endpoint. ``service`` is the ``kubernetes.io/service-name`` label.
    """

    namespace: str
    name: str
    service: str
    ports: tuple[Port, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    refs: tuple[str | None, ...] = ()

    @property
    def ident(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    @property
    def key(self) -> ServiceKey:
        return ServiceKey(self.namespace, self.service)


@dataclass(frozen=True, slots=True)
class ExportObject:
    """A Multi-Cluster Services ``ServiceExport``: its existence exports the same-named Service."""

    key: ServiceKey

    @property
    def ident(self) -> tuple[str, str]:
        return (self.key.namespace, self.key.name)


KubeObject = ServiceObject | SliceObject | ExportObject
