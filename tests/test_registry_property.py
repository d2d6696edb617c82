"""Property: any sequence of API changes, interleaved with any faults, ends with registry == truth.

Two fake clusters; each step either changes objects in one of them or hurts
its API server (dropped/stalled streams, 410s, 5xx/429/HTML errors, compaction,
a short outage). After the sequence the faults stop being injected and the
registry must converge to exactly what the servers hold.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from fakekube import (
    ENDPOINTSLICES,
    SERVICES,
    FakeKube,
    converge,
    endpoint,
    running_registry,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CLUSTERS = ("east", "west")
NAMES = ("cart", "pay", "web")
NAMESPACES = ("shop", "ops")

name_st = st.tuples(st.sampled_from(NAMESPACES), st.sampled_from(NAMES))
endpoints_st = st.lists(
    st.tuples(st.integers(1, 6), st.sampled_from([True, False, None]), st.booleans()),
    max_size=4,
    unique_by=lambda t: t[0],
)
change_st = st.one_of(
    st.tuples(st.just("svc"), name_st, st.integers(0, 2)),
    st.tuples(st.just("delsvc"), name_st),
    st.tuples(st.just("slice"), name_st, st.integers(0, 1), endpoints_st),
    st.tuples(st.just("delslice"), name_st, st.integers(0, 1)),
)
fault_st = st.one_of(
    st.tuples(st.just("drop")),
    st.tuples(st.just("stall")),
    st.tuples(st.just("gone")),
    st.tuples(st.just("error500")),
    st.tuples(
        st.sampled_from(["http500", "http429", "html502", "http410"]),
        st.sampled_from(["watch", "list"]),
    ),
    st.tuples(st.just("compact")),
    st.tuples(st.just("blip")),
    st.tuples(st.just("pause")),
)
step_st = st.tuples(st.sampled_from(CLUSTERS), st.one_of(change_st, change_st, fault_st))


def apply_change(k: FakeKube, cluster: str, op: tuple[Any, ...]) -> None:
    kind, (ns, name) = op[0], op[1]
    octet = 1 if cluster == "east" else 2
    if kind == "svc":
        k.put_service(ns, name, ports=[("http", 80 + op[2], "TCP")])
    elif kind == "delsvc":
        k.delete(SERVICES, ns, name)
    elif kind == "slice":
        eps = [
            endpoint(f"127.{octet}.{NAMES.index(name)}.{i}", ready=ready, terminating=term or None)
            for i, ready, term in op[3]
        ]
        k.put_slice(ns, f"{name}-{op[2]}", name, eps)
    elif kind == "delslice":
        k.delete(ENDPOINTSLICES, ns, f"{name}-{op[2]}")


async def apply_fault(k: FakeKube, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "drop":
        k.drop_watches()
    elif kind == "stall":
        k.stall_watches()
    elif kind == "gone":
        k.error_watches(410)
    elif kind == "error500":
        k.error_watches(500)
    elif kind in ("http500", "http429", "html502", "http410"):
        k.inject(kind, op=op[1], retry_after=0)
        k.drop_watches()
    elif kind == "compact":
        k.compact()
    elif kind == "blip":
        await k.down()
        await asyncio.sleep(0.02)
        await k.up()
    elif kind == "pause":
        await asyncio.sleep(0.05)


async def scenario(steps: list[tuple[str, tuple[Any, ...]]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        kubes = {c: await FakeKube(c, bookmark_interval=0.1).start() for c in CLUSTERS}
        try:
            kubes["east"].put_service("shop", "cart")
            kubes["east"].put_slice("shop", "cart-0", "cart", [endpoint("127.1.0.1")])
            async with running_registry(kubes, Path(d)) as fed:
                for cluster, op in steps:
                    k = kubes[cluster]
                    if op[0] in ("svc", "delsvc", "slice", "delslice"):
                        apply_change(k, cluster, op)
                    else:
                        await apply_fault(k, op)
                    await asyncio.sleep(0)  # let the client run between some steps
                await converge(fed.registry, kubes, timeout=15)
        finally:
            for k in kubes.values():
                await k.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
@given(st.lists(step_st, min_size=3, max_size=30))
def test_random_events_and_faults_converge(steps: list[tuple[str, tuple[Any, ...]]]) -> None:
    asyncio.run(scenario(steps))
