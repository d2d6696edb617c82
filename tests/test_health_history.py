"""When each endpoint's health inputs last changed, across changes and reloads, and the
kubeconfig each cluster is watched with.

fedns runs with ``--admin``, fed by fake Kubernetes API servers (the routing test's
world). Explain lists every candidate with ``since`` (its effective health) and
each input's ``since`` (ready, probe, cluster), as this instance saw them change:

* a readiness flip of one endpoint moves that endpoint's ready and health times,
  and no other time of it or of any other endpoint;
* a reload that keeps the clusters (a routing change: every plan is published
  again, into a new answer table, by the same watches) keeps every time, and the
  new setting is what DNS answers with.

The kubeconfig part loads one shared multi-context file per cluster both through
fedns's source and through kubernetes-asyncio's own ``load_kube_config``, and the
two client configurations must agree field by field (server, token, the CA file
a relative path names, TLS settings), and a context the file lacks fails the same.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import dns.message
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio import config as kconfig
from servers import FednsFactory
from test_explain import explain
from test_routing import CLIENT, World, cart, config, until, world

from resolver.federation.config import ExportConfig
from resolver.federation.model import Cluster
from resolver.federation.sources.kubernetes import KubernetesSource

Times = dict[str, Any]  # "since" and each input's since


def times_of(data: dict[str, Any]) -> dict[tuple[str, str], Times]:
    """(cluster, endpoint) -> its health time and each input's, from explain."""
    return {
        (c["cluster"], c["endpoint"]): {
            "since": c["since"],
            **{f"{i['input']}_since": i["since"] for i in c["inputs"]},
        }
        for c in data["candidates"]
    }


async def explained(w: World, name: str) -> dict[str, Any]:
    status, data = await explain(w, name=name, type="A", subnet=CLIENT["us-east-1a"])
    assert status == 200, data
    return data


def answer_ttl(r: dns.message.Message) -> int | None:
    return min((rr.ttl for rr in r.answer), default=None)


async def test_times_follow_changes_and_survive_a_reload(
    fedns_server: FednsFactory, tmp_path: Path
) -> None:
    svc = cart()
    async with world(fedns_server, tmp_path, [svc]) as w:
        first = times_of(await explained(w, svc.fqdn))
        assert set(first) == {(cl, e.host) for cl, eps in svc.endpoints.items() for e in eps}
        now = time.time()
        for t in first.values():
            assert now - 120 < t["since"] <= now + 1
            assert t["since"] == t["ready_since"] == t["cluster_since"]  # first seen together
            assert t["probe_since"] is None  # this world has no probes

        # One endpoint turns not ready: its ready and health times move, nothing else.
        flipped = ("east", "cart-a")
        await asyncio.sleep(0.05)  # a later time than the first plan's, on any clock
        w.set_ready("cart", "east", False, {"cart-a"})

        async def flipped_health() -> bool:
            data = await explained(w, svc.fqdn)
            return not next(
                c["healthy"] for c in data["candidates"] if (c["cluster"], c["endpoint"]) == flipped
            )

        await until(flipped_health, True, "cart-a in east not healthy in explain")
        second = times_of(await explained(w, svc.fqdn))
        assert set(second) == set(first)
        moved = second[flipped]
        assert moved["since"] > first[flipped]["since"]
        assert moved["ready_since"] == moved["since"]
        assert moved["cluster_since"] == first[flipped]["cluster_since"]
        for k, t in second.items():
            if k != flipped:
                assert t == first[k], k

        # A reload that keeps the clusters: new TTLs for every answer, the same times.
        # The flip made the service unstable (within the default 60 s flap window),
        # so DNS answers with the unstable TTL.
        ttl, unstable = 11, 3
        assert answer_ttl(await w.query(svc.fqdn, "A", CLIENT["eu-west"])) != unstable
        config(tmp_path, w.kubes, {}, {"ttl": ttl, "ttl_unstable": unstable})
        w.server.signal(signal.SIGHUP)
        await until(
            lambda: w.query(svc.fqdn, "A", CLIENT["eu-west"]),
            lambda r: answer_ttl(r) == unstable,
            f"answers with the reloaded unstable ttl {unstable}",
        )
        data = await explained(w, svc.fqdn)
        assert data["policy"]["ttl"] == ttl and data["ttl_now"]["unstable"] is True
        assert times_of(data) == second
        assert "reloaded" in w.server.output()


# -- the kubeconfig each cluster is watched with --------------------------------------------------


def shared_kubeconfig(path: Path) -> dict[str, str]:
    """One file, a context per cluster: a token user, a relative CA file, a TLS server
    name, an insecure one, and a duplicate cluster name (the first one counts, as the
    library's merge keeps it). Returns context -> the server it must name."""
    (path.parent / "certs").mkdir(exist_ok=True)
    ca = path.parent / "certs" / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot parsed here\n-----END CERTIFICATE-----\n")
    servers = {f"c{i}": f"https://127.0.0.{i + 1}:6443" for i in range(6)}
    clusters: list[dict[str, Any]] = []
    for i, (name, url) in enumerate(servers.items()):
        body: dict[str, Any] = {"server": url}
        if i % 3 == 0:
            body["certificate-authority"] = "certs/ca.pem"  # relative to the kubeconfig
        elif i % 3 == 1:
            body["insecure-skip-tls-verify"] = True
        else:
            body["tls-server-name"] = f"api.{name}.example.test"
        clusters.append({"name": name, "cluster": body})
    clusters.append({"name": "c0", "cluster": {"server": "https://127.0.0.99:6443"}})
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "users": [{"name": f"{n}-user", "user": {"token": f"token-{n}"}} for n in servers],
        "contexts": [{"name": n, "context": {"cluster": n, "user": f"{n}-user"}} for n in servers],
        "current-context": "c3",
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return servers


async def reference(path: Path, context: str | None) -> client.Configuration:
    cfg = client.Configuration()
    await kconfig.load_kube_config(
        config_file=str(path), context=context, client_configuration=cfg, persist_config=False
    )
    return cfg


async def ours(path: Path, context: str | None) -> client.Configuration:
    cluster = Cluster(context or "current", kubeconfig=path, context=context)
    return await KubernetesSource(cluster, ExportConfig()).load_configuration()


def settings(cfg: client.Configuration) -> dict[str, Any]:
    # The loggers are per Configuration object, not settings.
    return {k: v for k, v in vars(cfg).items() if not k.startswith(("logger", "_Configuration"))}


async def test_kubeconfig_loads_as_the_library_does(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    servers = shared_kubeconfig(path)
    for context in [*servers, None]:
        mine, theirs = await ours(path, context), await reference(path, context)
        assert mine.host == servers[context or "c3"]
        assert settings(mine) == settings(theirs), context
    c0, c1, c2 = [await ours(path, c) for c in ("c0", "c1", "c2")]
    assert c0.ssl_ca_cert == str(tmp_path / "certs" / "ca.pem")
    assert c0.api_key["BearerToken"] == "Bearer token-c0"
    assert c1.verify_ssl is False and c2.tls_server_name == "api.c2.example.test"

    # The file changes: the next load reads the new version.
    doc = yaml.safe_load(path.read_text())
    doc["clusters"][1]["cluster"]["server"] = "https://127.0.0.42:6443"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    assert (await ours(path, "c1")).host == "https://127.0.0.42:6443"
    assert (await reference(path, "c1")).host == "https://127.0.0.42:6443"

    # A context the file lacks: the library's own error, from both.
    errors = []
    for load in (ours(path, "nope"), reference(path, "nope")):
        try:
            await load
        except Exception as e:  # the two must fail alike, whatever the type
            errors.append((type(e), str(e)))
    assert len(errors) == 2 and errors[0] == errors[1], errors
