"""Static source: services and endpoints declared in the config file (no cluster needed).

The declared endpoints are treated exactly as a Kubernetes cluster's
EndpointSlice endpoints would be, so reach modes (pod, gateway) apply the same.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..config import StaticService
from ..model import ENDPOINTSLICES, SERVICES, Cluster, ServiceObject, SliceObject
from .base import ClusterSink


class StaticSource:
    def __init__(self, cluster: Cluster, services: Iterable[StaticService]) -> None:
        self.cluster = cluster
        self.services = tuple(services)

    def objects(self) -> tuple[list[ServiceObject], list[SliceObject]]:
        svcs: list[ServiceObject] = []
        slices: list[SliceObject] = []
        for s in self.services:
            eps = s.endpoints_in(self.cluster.name)
            if eps is None:
                continue  # not declared in this cluster
            svcs.append(ServiceObject(s.key, s.ports, annotations=s.annotations))
            slices.append(
                SliceObject(
                    s.key.namespace, s.key.name, s.key.name, s.ports, eps, (None,) * len(eps)
                )
            )
        return svcs, slices

    async def run(self, sink: ClusterSink) -> None:
        svcs, slices = self.objects()
        sink.replace(SERVICES, svcs)
        sink.replace(ENDPOINTSLICES, slices)
        sink.contact()
