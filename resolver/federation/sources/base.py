"""The two sides of the registry's intake, in one place: a ``Source`` writes into a ``ClusterSink``.

A source knows one cluster and feeds what it learns into the sink the registry
hands it for that cluster; the registry (``resolver.federation.registry``)
implements the sink and runs the sources. Neither side imports the other.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from ..model import Cluster, Kind, KubeObject


class ClusterSink(Protocol):
    """The write side of the registry for one cluster."""

    @property
    def cluster(self) -> Cluster: ...

    def upsert(self, obj: KubeObject) -> None:
        """An object was added or modified (a watch ADDED/MODIFIED event)."""

    def delete(self, kind: Kind, namespace: str, name: str) -> None:
        """An object was deleted (a watch DELETED event)."""

    def replace(self, kind: Kind, objects: Iterable[KubeObject], namespace: str | None = None) -> None:
        """A full list: objects not in it are deleted (synthetic deletes); marks ``kind`` synced.

        With ``namespace``, the list of that namespace only (a source watching
        ``export.namespaces.allow`` one by one): other namespaces are left alone,
        and ``kind`` is synced once every allowed namespace has been listed."""

    def contact(self) -> None:
        """The API server answered (a list, a watch line, a bookmark, a heartbeat)."""

    def error(self, message: str) -> None:
        """A failed request, for the status page (liveness is decided by ``contact`` alone)."""


class Source(Protocol):
    cluster: Cluster

    async def run(self, sink: ClusterSink) -> None:
        """Feed ``sink`` until cancelled (a static source may return once it has written)."""
