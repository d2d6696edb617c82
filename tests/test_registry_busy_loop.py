"""A busy event loop is not a silent API server.

At 2,000,000 endpoints the first publish keeps fedns's event loop busy for longer
than ``stale_after``; the liveness timer then fired before the watch lines and
heartbeat answers that had arrived meanwhile were read, marked every cluster
stale, and each stale cluster republished all its services, which kept the loop
busy for as long again (benchmarks/scale.py). The registry now looks again once
the loop has caught up (``busy_grace``). Against a real fake API server (HTTP on loopback, the
unmodified kubernetes-asyncio client): a loop blocked past ``stale_after`` with
the server up marks nothing stale and republishes nothing; with the server down
it still marks the cluster stale, a moment later.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import fakekube
from fakekube import running_registry, until

from resolver.federation.model import ServiceKey
from resolver.federation.registry import BUSY_LATE, busy_grace

fake_kube = fakekube.fake_kube  # the fake API server factory fixture

STALE_AFTER = 0.5
# Long enough that the liveness timer fires more than BUSY_LATE after its time.
BLOCK = STALE_AFTER + BUSY_LATE + 1.0


async def _synced_world(fake_kube: Any) -> Any:
    k = await fake_kube("east", bookmark_interval=0.1)
    k.put_service("shop", "cart")
    k.put_slice("shop", "cart-1", "cart", [fakekube.endpoint("127.1.0.1", pod="cart-0")])
    return k


async def test_a_busy_loop_marks_nothing_stale(fake_kube: Any, tmp_path: Path) -> None:
    k = await _synced_world(fake_kube)
    clusters = {"east": {"stale_after": STALE_AFTER}}
    async with running_registry({"east": k}, tmp_path, clusters=clusters) as run:
        reg = run.registry
        published: list[frozenset[Any]] = []
        reg.subscribe(published.append)
        await asyncio.sleep(STALE_AFTER)  # a healthy cluster stays live on its own
        assert not reg.cluster_status()["east"].stale
        published.clear()  # the initial lists' (coalesced) publish
        time.sleep(BLOCK)  # the loop is busy (a long publish), the server is fine
        await asyncio.sleep(busy_grace(STALE_AFTER) + STALE_AFTER)
        st = reg.cluster_status()["east"]
        assert not st.stale, st
        assert st.contact_age is not None and st.contact_age < STALE_AFTER
        assert published == []  # no stale -> live round, so nothing republished


async def test_a_dead_server_behind_a_busy_loop_is_still_stale(
    fake_kube: Any, tmp_path: Path
) -> None:
    k = await _synced_world(fake_kube)
    clusters = {"east": {"stale_after": STALE_AFTER}}
    async with running_registry({"east": k}, tmp_path, clusters=clusters) as run:
        reg = run.registry
        await k.down()
        blocked_at = time.monotonic()
        time.sleep(BLOCK)
        await until(lambda: reg.cluster_status()["east"].stale, "east stale", timeout=5.0)
        # Judged again busy_grace after the late timer, not later.
        assert time.monotonic() - blocked_at < BLOCK + busy_grace(STALE_AFTER) + 1.0
        snap = reg.snapshot(ServiceKey("shop", "cart"))
        assert snap is not None and snap.per_cluster[0].stale  # last-known data, flagged
