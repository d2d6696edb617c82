"""Where the registry's data comes from: one ``Source`` per cluster.

A source knows one cluster and writes what it learns into that cluster's
``ClusterSink`` (both protocols are in ``base.py``); ``Registry.run`` starts them.
See README.md in this directory for what is watched and how faults are handled.
"""

from __future__ import annotations

from typing import Any

from ..config import FederationConfig
from .base import ClusterSink, Source


def build_sources(fed: FederationConfig, **kube_options: Any) -> list[Source]:
    """One source per configured cluster: Kubernetes when it has a kubeconfig/in_cluster, else static.

    ``kube_options`` go to every ``KubernetesSource`` (e.g. ``timings=WatchTimings(...)``).
    """
    from .kubernetes import KubernetesSource
    from .static import StaticSource

    out: list[Source] = []
    for c in fed.clusters:
        if c.source == "kubernetes":
            out.append(KubernetesSource(c, fed.export, **kube_options))
        else:
            out.append(StaticSource(c, fed.services))
    return out


__all__ = ["ClusterSink", "Source", "build_sources"]
