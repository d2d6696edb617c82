"""The Helm chart (helm/fedns), rendered and linted with the Helm v4 SDK (helm-python-sdk),
every manifest checked against the Kubernetes OpenAPI schemas in strict mode
(kubernetes-validate), and the rendered fedns config run for real.

What a rendered release must be: RBAC exactly get/list/watch on what fedns watches; a
pod that Pod Security "restricted" admits; probes on /healthz and /readyz at the admin
port; the admin port on its own ClusterIP Service; a config that `fedns check` accepts
and that a fedns started from the pod's file layout serves; a CoreDNS block in NOTES.txt
that tests/corefile.py accepts and that forwards the zone to the DNS Service.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.zone
import jsonschema
import pytest
import yaml
from corefile import check_corefile, forwards, parse_corefile
from fakekube import ThreadedFakeKubes, endpoint, endpoint_slice, service, write_kubeconfig
from servers import LOOPBACK, REPO, fedns_argv, fedns_env, free_port, start_fedns

helm = pytest.importorskip("helm_python", reason="pip install helm-python-sdk (the Helm v4 SDK)")
kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="pip install kubernetes-validate"
)

CHART = REPO / "helm" / "fedns"
# The chart's kubeVersion floor (Chart.yaml) and the newest schemas kubernetes-validate has.
KUBE_VERSIONS = ("1.27.0", "1.37.0")
SERVICEMONITOR_SCHEMA = Path(__file__).parent / "data" / "servicemonitor-v1.schema.json"
READ_VERBS = {"get", "list", "watch"}
CORE_RULES = {("", "services"), ("discovery.k8s.io", "endpointslices")}
EXPORT_RULE = ("multicluster.x-k8s.io", "serviceexports")
POD_UID = 10053

# The value sets every structural test runs on; each names what it exercises.
REMOTES: list[dict[str, Any]] = [
    {"name": "local", "region": "us-east", "zone": "us-east-1a", "in_cluster": True},
    {"name": "west", "region": "us-west", "zone": "us-west-2a",
     "kubeconfigSecret": {"name": "fedns-west-kubeconfig", "key": "kubeconfig"}},
    {"name": "eu", "region": "eu-west", "zone": "eu-west-1a", "context": "eu",
     "kubeconfigSecret": {"name": "kc-eu", "key": "config"}, "stale_policy": "drop"},
]  # fmt: skip
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "loadbalancer-remotes": {
        "service": {
            "type": "LoadBalancer",
            "clusterIP": "10.96.0.53",
            "annotations": {"service.beta.kubernetes.io/aws-load-balancer-type": "nlb"},
            "loadBalancerSourceRanges": ["0.0.0.0/0"],
        },
        "federation": {
            "clusters": REMOTES,
            "regions": [
                {"name": "us-east", "lat": 39.0, "lon": -77.5, "prefer": ["us-west"]},
                {"name": "us-west", "lat": 45.6, "lon": -121.2},
                {"name": "eu-west", "lat": 53.3, "lon": -6.3},
            ],
            "localities": [{"cidr": "10.1.0.0/16", "region": "us-east", "zone": "us-east-1a"}],
            "defaults": {"policy": "locality", "ttl": 7},
            "policies": {"shop/checkout": {"policy": "failover", "failover": ["west", "local"]}},
        },
    },
    "monitoring-serviceexport": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "networkPolicy": {"enabled": True, "adminNamespaces": ["monitoring", "dns"]},
        "federation": {"export": {"mode": "serviceexport"}},
        "service": {"clusterIP": "10.96.0.10"},
    },
    "namespaced-rbac": {
        "rbac": {"namespaces": ["shop", "payments"]},
        "service": {"clusterIP": "10.96.0.11", "port": 5300},
        "workers": 1,
        "replicas": 3,
    },
    "zone-files-only": {"federation": {"zone": ""}, "service": {"clusterIP": "10.96.0.12"}},
    "member": {"mode": "member", "member": {"clusterName": "west"}},
    "member-namespaced-serviceexport": {
        "mode": "member",
        "member": {"clusterName": "eu"},
        "rbac": {"namespaces": ["shop"]},
        "federation": {"export": {"mode": "serviceexport"}},
    },
    "example-three-clusters": yaml.safe_load(
        (CHART / "examples" / "three-clusters.yaml").read_text()
    ),
    "example-member": yaml.safe_load((CHART / "examples" / "member.yaml").read_text()),
}
SERVER_SETS = [k for k, v in VALUE_SETS.items() if v.get("mode", "server") == "server"]
MEMBER_SETS = [k for k in VALUE_SETS if k not in SERVER_SETS]


@dataclass
class Release:
    values: dict[str, Any]  # merged with the chart's defaults, as an install sees them
    manifests: list[dict[str, Any]]
    notes: str
    namespace: str

    def kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [m for m in self.kind(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
        return found[0]

    @property
    def pod(self) -> dict[str, Any]:
        return dict(self.one("Deployment")["spec"]["template"]["spec"])

    @property
    def container(self) -> dict[str, Any]:
        (c,) = self.pod["containers"]
        return dict(c)

    @property
    def pod_annotations(self) -> dict[str, Any]:
        return dict(self.one("Deployment")["spec"]["template"]["metadata"].get("annotations") or {})

    def config(self) -> dict[str, Any]:
        return dict(yaml.safe_load(self.one("ConfigMap")["data"]["fedns.yaml"]))

    def block(self, marker: str) -> str:
        """A block of NOTES.txt between its ``# --- begin X ---`` / ``# --- end X ---`` lines."""
        m = re.search(rf"# --- begin {marker} ---\n(.*?)# --- end {marker} ---", self.notes, re.S)
        assert m, f"NOTES.txt has no {marker} block:\n{self.notes}"
        return m.group(1)


def render(values: Mapping[str, Any], name: str = "fedns", namespace: str = "dns") -> Release:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(copy.deepcopy(dict(values)), name=name, namespace=namespace)
    notes = out.pop("fedns/templates/NOTES.txt", "")
    docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
    return Release(chart.merge_values(copy.deepcopy(dict(values))), docs, notes, namespace)


@pytest.fixture(scope="module")
def releases() -> dict[str, Release]:
    return {k: render(v) for k, v in VALUE_SETS.items()}


def _strict(schema: Any) -> Any:
    """A CRD's structural schema made strict the way kubernetes-validate's strict schemas are:
    an object with declared properties admits no other key (the API server's strict
    field validation), unless the schema says it keeps unknown fields."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get(
        "x-kubernetes-preserve-unknown-fields"
    ):
        out["additionalProperties"] = False
    return out


def _validate(doc: dict[str, Any]) -> None:
    if doc["kind"] == "ServiceMonitor":
        # A CRD: kubernetes-validate has no schema for it. Its spec is checked against the
        # Prometheus Operator's own CRD schema (strict as above), its metadata as the
        # ObjectMeta it is (kubernetes-validate, strict). CEL rules are not evaluated.
        assert doc["apiVersion"] == "monitoring.coreos.com/v1"
        schema = _strict(json.loads(SERVICEMONITOR_SCHEMA.read_text()))
        jsonschema.validate({k: v for k, v in doc.items() if k != "metadata"}, schema)
        meta = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
        for v in KUBE_VERSIONS:
            kubernetes_validate.validate(meta, v, strict=True)
        return
    for v in KUBE_VERSIONS:
        kubernetes_validate.validate(doc, v, strict=True)


# -- lint and schemas -------------------------------------------------------------------------


@pytest.mark.parametrize("vset", list(VALUE_SETS))
def test_lint_strict(vset: str) -> None:
    report = helm.lint(str(CHART), copy.deepcopy(VALUE_SETS[vset]), strict=True, namespace="dns")
    assert report["errors"] == [], report
    worse_than_info = [m for m in report["messages"] if m["severity"] >= 2]
    assert worse_than_info == [], report


@pytest.mark.parametrize("vset", list(VALUE_SETS))
def test_every_manifest_validates_strictly(releases: dict[str, Release], vset: str) -> None:
    r = releases[vset]
    assert r.manifests
    for doc in r.manifests:
        try:
            _validate(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            pytest.fail(f"{vset}: {doc['kind']} {doc['metadata']['name']}: {e}")
        if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"].get("namespace"), f"{doc['kind']} has no namespace"


def test_the_strict_checks_catch_an_unknown_field(releases: dict[str, Release]) -> None:
    """The validation above is not vacuous: a misspelt field fails it, CRD included."""
    dep = copy.deepcopy(releases["defaults"].one("Deployment"))
    dep["spec"]["template"]["spec"]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(dep)
    sm = copy.deepcopy(releases["monitoring-serviceexport"].one("ServiceMonitor"))
    sm["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        _validate(sm)


BAD_VALUES = [
    ({"workers": "two"}, "/workers"),
    ({"workers": 0}, "/workers"),
    ({"service": {"type": "Loadbalancer"}}, "/service/type"),
    ({"wrokers": 2}, "wrokers"),
    ({"mode": "agent"}, "/mode"),
    ({"image": {"repository": "fedns", "digest": "sha256:1234"}}, "/image/digest"),
    ({"federation": {"clusters": [{"name": "west", "kubeconfig": "west.kubeconfig"}]}}, "kubeconfig"),
    (
        {"federation": {"clusters": [{"name": "a", "in_cluster": True,
                                      "kubeconfigSecret": {"name": "kc"}}]}},
        "/federation/clusters/0/kubeconfigSecret",
    ),
    ({"federation": {"clusters": [{"name": "West_1", "in_cluster": True}]}}, "/federation/clusters/0/name"),
    ({"zones": [{"origin": "global.example.test", "file": "g.zone"}]}, "/zones/0/origin"),
    ({"zones": [{"origin": "a.test.", "file": "zones/a.zone"}]}, "/zones/0/file"),
    ({"admin": {"port": 5353}}, "/admin/port"),
    ({"rbac": {"namespaces": "shop"}}, "/rbac/namespaces"),
    ({"coredns": {"cache": {"minTTL": -1}}}, "/coredns/cache/minTTL"),
]  # fmt: skip


# Values the schema cannot judge alone: the templates refuse them, saying what to change.
INCONSISTENT = [
    (
        {"serviceMonitor": {"enabled": True}, "networkPolicy": {"enabled": True}},
        "networkPolicy.adminNamespaces",
    ),
    (
        {"rbac": {"namespaces": ["shop"]},
         "federation": {"export": {"namespaces": {"allow": ["shop", "pay"]}}}},
        "pay is not in rbac.namespaces",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("values", "needle"), INCONSISTENT, ids=[n for _, n in INCONSISTENT])
def test_inconsistent_values_fail_the_render(values: dict[str, Any], needle: str) -> None:
    with pytest.raises(helm.HelmError) as err:
        helm.Chart.load(str(CHART)).render(values, name="fedns", namespace="dns")
    assert needle in str(err.value), str(err.value)


def test_the_chart_takes_global_values_as_a_subchart() -> None:
    out = helm.Chart.load(str(CHART)).render({"global": {"imageRegistry": "x"}}, name="fedns")
    assert any(k.endswith("deployment.yaml") for k in out)


def test_cluster_scoped_rbac_is_named_per_namespace(releases: dict[str, Release]) -> None:
    r = releases["defaults"]
    for kind in ("ClusterRole", "ClusterRoleBinding"):
        assert r.one(kind)["metadata"]["name"].endswith(f"-{r.namespace}")
    assert r.one("ClusterRoleBinding")["roleRef"]["name"] == r.one("ClusterRole")["metadata"]["name"]


def test_an_ipv6_first_service_makes_fedns_listen_on_ipv6() -> None:
    r = render({"service": {"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "PreferDualStack"}})
    cfg = r.config()
    assert cfg["dns"]["listen"].startswith("[::]:") and cfg["admin"]["listen"].startswith("[::]:")


@pytest.mark.parametrize(("values", "key"), BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_schema_rejects_bad_values_naming_the_key(values: dict[str, Any], key: str) -> None:
    with pytest.raises(helm.HelmValuesError) as err:
        helm.Chart.load(str(CHART)).render(values, name="fedns", namespace="dns")
    assert key in str(err.value), str(err.value)
    report = helm.lint(str(CHART), values, strict=True)  # `helm lint` says the same
    assert any(key in e for e in report["errors"]), report


# -- RBAC -------------------------------------------------------------------------------------


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, URLs
        for g in rule["apiGroups"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    out.add((g, res, verb))
    return out


@pytest.mark.parametrize("vset", list(VALUE_SETS))
def test_rbac_is_exactly_read_only_on_what_fedns_watches(
    releases: dict[str, Release], vset: str
) -> None:
    r = releases[vset]
    v = r.values
    wanted = set(CORE_RULES)
    if v["federation"]["export"]["mode"] == "serviceexport":
        wanted.add(EXPORT_RULE)
    expected = {(g, res, verb) for g, res in wanted for verb in READ_VERBS}
    namespaces = v["rbac"]["namespaces"]
    roles = r.kind("Role") + r.kind("ClusterRole")
    bindings = r.kind("RoleBinding") + r.kind("ClusterRoleBinding")
    watches_own_cluster = bool(v["federation"]["zone"]) and any(
        c.get("in_cluster") for c in v["federation"]["clusters"]
    )
    if v["mode"] == "server" and not watches_own_cluster:
        assert not roles and not bindings, "no access asked for when nothing is watched in_cluster"
        return
    if namespaces:
        assert not r.kind("ClusterRole") and not r.kind("ClusterRoleBinding"), "nothing cluster-wide"
        assert sorted(x["metadata"]["namespace"] for x in r.kind("Role")) == sorted(namespaces)
    else:
        assert len(r.kind("ClusterRole")) == 1 and not r.kind("Role")
    assert roles and len(bindings) == len(roles)
    sa = r.one("ServiceAccount")["metadata"]
    for role in roles:
        assert _rules(role) == expected, f"{role['kind']} {role['metadata']['name']}"
    for b in bindings:
        role_kind = "Role" if b["kind"] == "RoleBinding" else "ClusterRole"
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind,
                                "name": roles[0]["metadata"]["name"]}  # fmt: skip
        assert b["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]
    if namespaces and vset in SERVER_SETS:
        # The Roles cover only those namespaces, so only those are exported.
        assert r.config()["federation"]["export"]["namespaces"]["allow"] == namespaces


def test_no_rbac_and_no_token_without_an_in_cluster_cluster() -> None:
    remotes = [c for c in REMOTES if not c.get("in_cluster")]
    r = render({"federation": {"clusters": remotes}})
    assert not r.kind("ClusterRole") and not r.kind("Role") and not r.kind("ClusterRoleBinding")
    assert r.pod["automountServiceAccountToken"] is False
    assert render({}).pod["automountServiceAccountToken"] is True  # in_cluster needs the token


# -- the pod ------------------------------------------------------------------------------------


@pytest.mark.parametrize("vset", SERVER_SETS)
def test_pod_meets_pod_security_restricted(releases: dict[str, Release], vset: str) -> None:
    pod, c = releases[vset].pod, releases[vset].container
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == POD_UID
    assert psc["runAsGroup"] == POD_UID
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert csc["runAsNonRoot"] is True and csc["runAsUser"] == POD_UID
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc.get("privileged", False) is False
    assert csc["capabilities"] == {"drop": ["ALL"]}, "all dropped, none added"
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert all("hostPort" not in p for p in c["ports"])
    assert {k for v in pod["volumes"] for k in v if k != "name"} <= {
        "configMap", "projected", "emptyDir", "secret"
    }, "only volume types the restricted profile allows"  # fmt: skip
    # No port below 1024 inside the pod: nothing needs NET_BIND_SERVICE.
    assert all(p["containerPort"] >= 1024 for p in c["ports"])


@pytest.mark.parametrize("vset", SERVER_SETS)
def test_probes_use_the_admin_port_the_config_listens_on(
    releases: dict[str, Release], vset: str
) -> None:
    r = releases[vset]
    c = r.container
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    admin_port = int(r.config()["admin"]["listen"].rsplit(":", 1)[1])
    dns_port = int(r.config()["dns"]["listen"].rsplit(":", 1)[1])
    assert ports["admin"] == admin_port and ports["dns-udp"] == ports["dns-tcp"] == dns_port
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}


@pytest.mark.parametrize("vset", SERVER_SETS)
def test_replicas_spread_and_survive_disruption(releases: dict[str, Release], vset: str) -> None:
    r = releases[vset]
    dep = r.one("Deployment")
    selector = dep["spec"]["selector"]["matchLabels"]
    assert dep["spec"]["replicas"] == r.values["replicas"]
    pod = r.pod
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == selector
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"] == selector
    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1
    assert r.container["resources"]["requests"] and r.container["resources"]["limits"]


def test_mounts_are_read_only_and_never_nested() -> None:
    r = render(VALUE_SETS["loadbalancer-remotes"])
    mounts = {m["name"]: m for m in r.container["volumeMounts"]}
    paths = [PurePosixPath(m["mountPath"]) for m in mounts.values()]
    for a in paths:
        for b in paths:
            assert a == b or not a.is_relative_to(b), f"{a} is inside {b}"
    assert mounts["config"]["readOnly"] is True and mounts["kubeconfigs"]["readOnly"] is True
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    sources = volumes["kubeconfigs"]["projected"]["sources"]
    want = [(c["kubeconfigSecret"]["name"], c["kubeconfigSecret"]["key"], f"{c['name']}.kubeconfig")
            for c in REMOTES if "kubeconfigSecret" in c]  # fmt: skip
    got = [(s["secret"]["name"], i["key"], i["path"]) for s in sources for i in s["secret"]["items"]]
    assert got == want, "one existing Secret per remote cluster"


# -- Services, monitoring, network policy --------------------------------------------------------


@pytest.mark.parametrize("vset", SERVER_SETS)
def test_admin_port_is_never_on_the_dns_service(releases: dict[str, Release], vset: str) -> None:
    r = releases[vset]
    v = r.values
    c = r.container
    by_name = {p["name"]: p for p in c["ports"]}
    dns_svc = r.one("Service", r.one("Deployment")["metadata"]["name"])
    admin_svc = r.one("Service", f"{dns_svc['metadata']['name']}-admin")
    assert len(r.kind("Service")) == 2
    ports = dns_svc["spec"]["ports"]
    assert sorted(p["protocol"] for p in ports) == ["TCP", "UDP"]
    for p in ports:
        assert p["port"] == v["service"]["port"]
        target = by_name[p["targetPort"]]
        assert target["containerPort"] == 5353 and target["protocol"] == p["protocol"]
    assert "admin" not in {p["targetPort"] for p in ports}
    assert v["admin"]["port"] not in {p["port"] for p in ports}
    assert dns_svc["spec"]["type"] == v["service"]["type"]
    assert admin_svc["spec"]["type"] == "ClusterIP"
    assert [p["targetPort"] for p in admin_svc["spec"]["ports"]] == ["admin"]
    assert dns_svc["spec"]["selector"] == admin_svc["spec"]["selector"]
    assert dns_svc["spec"]["selector"] == r.one("Deployment")["spec"]["selector"]["matchLabels"]
    if v["service"]["type"] == "LoadBalancer":
        assert dns_svc["spec"]["externalTrafficPolicy"] == "Local"
        assert dns_svc["metadata"]["annotations"] == v["service"]["annotations"]
        assert "annotations" not in admin_svc["metadata"], "no load balancer for the admin API"
    else:
        assert "externalTrafficPolicy" not in dns_svc["spec"]
    if v["service"]["clusterIP"]:
        assert dns_svc["spec"]["clusterIP"] == v["service"]["clusterIP"]


def test_servicemonitor_scrapes_the_admin_service(releases: dict[str, Release]) -> None:
    r = releases["monitoring-serviceexport"]
    sm = r.one("ServiceMonitor")
    admin = r.one("Service", "fedns-admin")
    labels = admin["metadata"]["labels"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= labels.items()
    dns_labels = r.one("Service", "fedns")["metadata"]["labels"]
    assert not sm["spec"]["selector"]["matchLabels"].items() <= dns_labels.items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["admin"]
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert not releases["defaults"].kind("ServiceMonitor")


def test_networkpolicy_dns_from_anywhere_admin_from_chosen_namespaces(
    releases: dict[str, Release],
) -> None:
    r = releases["monitoring-serviceexport"]
    np = r.one("NetworkPolicy")
    assert np["spec"]["podSelector"]["matchLabels"] == r.one("Deployment")["spec"]["selector"][
        "matchLabels"
    ]
    assert np["spec"]["policyTypes"] == ["Ingress"]
    dns_rule, admin_rule = np["spec"]["ingress"]
    assert "from" not in dns_rule, "DNS from anywhere"
    assert {(p["port"], p["protocol"]) for p in dns_rule["ports"]} == {(5353, "UDP"), (5353, "TCP")}
    assert admin_rule["ports"] == [{"port": r.values["admin"]["port"], "protocol": "TCP"}]
    (peer,) = admin_rule["from"]
    (expr,) = peer["namespaceSelector"]["matchExpressions"]
    assert expr == {"key": "kubernetes.io/metadata.name", "operator": "In",
                    "values": r.values["networkPolicy"]["adminNamespaces"]}  # fmt: skip
    assert not releases["defaults"].kind("NetworkPolicy")


# -- names, checksum ---------------------------------------------------------------------------


@pytest.mark.parametrize("release", ["fedns", "dns", "prod-fedns", "a-very-long-release-name-for-fedns-in-prod"])
def test_no_resource_name_repeats_the_chart_name(release: str) -> None:
    for vset in ("loadbalancer-remotes", "monitoring-serviceexport", "member"):
        r = render(VALUE_SETS[vset], name=release, namespace="dns")
        for m in r.manifests:
            name = m["metadata"]["name"]
            assert name.count("fedns") <= 1, f"{m['kind']} {name}"
            assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


def _checksum(values: Mapping[str, Any]) -> str:
    ann = render(values).one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    return str(ann["checksum/config"])


def test_checksum_follows_the_whole_configmap_zone_files_included() -> None:
    zone = (CHART / "files" / "global.example.test.zone").read_text()
    edited = zone.replace("127.0.0.25", "127.0.0.26")
    assert edited != zone
    base = _checksum({})
    assert _checksum({}) == base, "stable for the same values"
    assert _checksum({"replicas": 5}) == base, "not a function of unrelated values"
    only_zone = {"zones": [{"origin": "global.example.test.", "file": "global.example.test.zone",
                            "content": edited}]}  # fmt: skip
    assert _checksum(only_zone) != base
    assert _checksum({"dns": {"startup_wait": 9}}) != base


def test_in_place_reload_does_not_roll_the_pods() -> None:
    assert "checksum/config" not in render({"configReload": "inPlace"}).pod_annotations
    assert "checksum/config" in render({}).pod_annotations


def test_admin_token_secret_is_made_mounted_and_named_by_the_config(tmp_path: Path) -> None:
    r = render({})
    secret = r.one("Secret", "fedns-admin-token")
    token = base64.b64decode(secret["data"]["token"]).decode()
    assert len(token) >= 32 and token.isalnum()
    volumes = {v["name"]: v for v in r.pod["volumes"]}
    assert volumes["admin-token"]["secret"]["secretName"] == "fedns-admin-token"
    mount = {m["name"]: m for m in r.container["volumeMounts"]}["admin-token"]
    assert mount["readOnly"] is True
    cfg = materialise(r, tmp_path / "pod", {})
    # The config's relative token_file is the mounted file; state_dir is the emptyDir.
    assert (cfg.parent / r.config()["admin"]["token_file"]).resolve().read_text() == token
    state = (cfg.parent / r.config()["state_dir"]).resolve()
    assert state == (tmp_path / "pod" / "var/lib/fedns").resolve()
    assert "emptyDir" in volumes["state"]
    # An existing Secret: nothing made, that one mounted with its key.
    mine = render({"admin": {"token": {"existingSecret": "ops-token", "key": "bearer"}}})
    assert not mine.kind("Secret")
    vol = {v["name"]: v for v in mine.pod["volumes"]}["admin-token"]["secret"]
    assert vol["secretName"] == "ops-token" and vol["items"] == [{"key": "bearer", "path": "token"}]


def test_default_zone_is_the_shipped_demo_zone(releases: dict[str, Release]) -> None:
    """files/ links to zones/ (one copy to keep): what the ConfigMap carries is the demo zone."""
    shipped = (REPO / "zones" / "global.example.test.zone").read_text()
    data = releases["defaults"].one("ConfigMap")["data"]
    assert data["global.example.test.zone"].strip() == shipped.strip()


def test_readme_documents_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [k for k in values if f"`{k}" not in readme]
    assert not missing, f"helm/fedns/README.md does not document: {missing}"


# -- the rendered config, for real --------------------------------------------------------------


def materialise(r: Release, root: Path, secrets: Mapping[tuple[str, str], str]) -> Path:
    """The pod's view of its volumes, under ``root``: each mountPath becomes ``root/<path>``,
    filled from the rendered ConfigMap and from ``secrets`` ((name, key) -> text, the
    Secrets that exist in the cluster). Returns the config file the container is told to read."""
    pod, c = r.pod, r.container
    volumes = {v["name"]: v for v in pod["volumes"]}
    maps = {m["metadata"]["name"]: m["data"] for m in r.kind("ConfigMap")}
    # The Secrets the release creates itself (the admin token), as the kubelet decodes them.
    made = {
        (s["metadata"]["name"], k): base64.b64decode(v).decode()
        for s in r.kind("Secret") for k, v in (s.get("data") or {}).items()
    }
    for mount in c["volumeMounts"]:
        v = volumes[mount["name"]]
        d = root / mount["mountPath"].lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        if "configMap" in v:
            data = maps[v["configMap"]["name"]]
            for item in v["configMap"].get("items") or [{"key": k, "path": k} for k in data]:
                (d / item["path"]).write_text(data[item["key"]])
        if "secret" in v:
            name = v["secret"]["secretName"]
            for item in v["secret"]["items"]:
                key = (name, item["key"])
                (d / item["path"]).write_text(made[key] if key in made else secrets[key])
        for src in v.get("projected", {}).get("sources", []):
            sec = src["secret"]
            for item in sec["items"]:
                (d / item["path"]).write_text(secrets[(sec["name"], item["key"])])
    args = c["args"]
    return root / args[args.index("--config") + 1].lstrip("/")


def _secrets_for(values: Mapping[str, Any], servers: Mapping[str, str], tmp: Path) -> dict[tuple[str, str], str]:
    out = {}
    for cl in values["federation"]["clusters"]:
        ref = cl.get("kubeconfigSecret")
        if ref:
            ctx = cl.get("context", cl["name"])
            kc = write_kubeconfig(tmp / f"{cl['name']}.src", {ctx: servers.get(cl["name"], "http://127.0.0.1:9")})
            out[(ref["name"], ref.get("key", "kubeconfig"))] = kc.read_text()
    return out


@pytest.mark.parametrize("vset", SERVER_SETS)
def test_rendered_config_passes_fedns_check(
    releases: dict[str, Release], vset: str, tmp_path: Path
) -> None:
    r = releases[vset]
    cfg = materialise(r, tmp_path / "pod", _secrets_for(r.values, {}, tmp_path))
    run = subprocess.run(
        fedns_argv("check", "-c", str(cfg)), env=fedns_env(), capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert f"config {cfg}: ok" in run.stdout
    for z in r.values["zones"]:
        assert f"zone {z['origin']}" in run.stdout
    clusters = r.values["federation"]["clusters"]
    watched = sum(1 for c in clusters if c.get("in_cluster") or c.get("kubeconfigSecret"))
    if r.values["federation"]["zone"]:
        assert f"{len(clusters)} clusters ({watched} watched" in run.stdout
    else:
        assert "federation" not in run.stdout and "federation" not in r.config()
    # The kubeconfig paths the config names must be where the pod mounts the Secrets.
    raw = yaml.safe_load(cfg.read_text())
    for c in raw.get("federation", {}).get("clusters", []):
        if "kubeconfig" in c:
            path = (cfg.parent / c["kubeconfig"]).resolve()
            assert path.is_file() and "clusters:" in path.read_text(), c
            assert not Path(c["kubeconfig"]).is_absolute(), "relative: the same layout works anywhere"


def test_fedns_check_rejects_what_the_chart_cannot_know(tmp_path: Path) -> None:
    """The schema passes routing through; fedns check is what rejects it (the same test
    the pod's first start would be), naming the config key."""
    r = render({"federation": {"policies": {"shop/cart": {"policy": "sometimes"}}}})
    cfg = materialise(r, tmp_path, {})
    run = subprocess.run(fedns_argv("check", "-c", str(cfg)), env=fedns_env(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "federation.policies.shop/cart" in run.stderr, run.stderr


def _query(addr: tuple[str, int], name: str, rdtype: str) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    q.flags &= ~dns.flags.RD
    return dns.query.udp(q, addr[0], port=addr[1], timeout=2)


def _admin(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except (urllib.error.URLError, OSError) as e:  # not listening yet
        return 0, str(e)


def _wait_ready(admin_port: int, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while (status := _admin(admin_port, "/readyz"))[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status[0] == 200, status


def _zone_questions(zone: dns.zone.Zone) -> Iterator[tuple[str, str, set[str], int]]:
    """(name, type, rdata texts, ttl) for every authoritative RRset of a master file;
    wildcards asked as a name they cover, names at or below a delegation left out."""
    origin = zone.origin
    assert origin is not None
    cuts = [n for n, node in zone.nodes.items() if n != dns.name.empty and node.get_rdataset(
        dns.rdataclass.IN, dns.rdatatype.NS)]  # fmt: skip
    for rel, node in zone.nodes.items():
        if any(rel == c or rel.is_subdomain(c) for c in cuts):
            continue
        name = rel.derelativize(origin)
        if name.labels[0] == b"*":
            name = dns.name.Name((b"fedns-chart-test", *name.labels[1:]))
        for rds in node.rdatasets:
            texts = {rd.to_text(origin=origin, relativize=False) for rd in rds}
            yield name.to_text(), dns.rdatatype.to_text(rds.rdtype), texts, rds.ttl


def test_default_chart_config_serves_the_zone(tmp_path: Path) -> None:
    """A fedns started from the default release's files (paths as in the pod, the listen
    addresses moved to loopback by flag) answers every RRset of the zone file in the
    ConfigMap, and is ready although its in_cluster cluster cannot be reached here."""
    r = render({})
    cfg = materialise(r, tmp_path / "pod", {})
    raw = r.config()
    zone_cfg = raw["zones"][0]
    text = r.one("ConfigMap")["data"][zone_cfg["file"]]
    zone = dns.zone.from_text(text, origin=zone_cfg["origin"], relativize=True)
    admin = free_port()
    srv = start_fedns(cfg, tmp_path / "run", workers=raw["dns"]["workers"],
                      extra_args=("--admin", f"{LOOPBACK}:{admin}"))  # fmt: skip
    try:
        # /readyz: the startup wait for the first sync ends it, not the unreachable cluster.
        # Until then a name the zone only has by wildcard is held (it might be federated).
        _wait_ready(admin, raw["dns"]["startup_wait"] + 10)
        assert _admin(admin, "/healthz")[0] == 200
        asked = 0
        for name, rdtype, texts, ttl in _zone_questions(zone):
            resp = _query(srv.addr, name, rdtype)
            assert resp.flags & dns.flags.AA, (name, rdtype)
            (rrset,) = [x for x in resp.answer if x.name.to_text() == name and
                        dns.rdatatype.to_text(x.rdtype) == rdtype]  # fmt: skip
            assert {rd.to_text() for rd in rrset} == texts, (name, rdtype)
            assert rrset.ttl == ttl
            asked += 1
        assert asked >= 15
    finally:
        srv.stop()


def test_remote_clusters_from_secrets_are_watched(tmp_path: Path) -> None:
    """The LoadBalancer + remote clusters release, its kubeconfig Secrets materialised
    where the pod mounts them and pointing at fake API servers: fedns watches both
    remote clusters through the rendered relative paths (and contexts) and answers
    the per-cluster names with what each API server holds."""
    values = VALUE_SETS["loadbalancer-remotes"]
    remotes = [c["name"] for c in values["federation"]["clusters"] if "kubeconfigSecret" in c]
    with ThreadedFakeKubes(remotes) as fakes:
        want: dict[str, set[str]] = {}
        for i, cname in enumerate(remotes):
            addrs = [f"127.{10 + i}.0.{j}" for j in (1, 2)]
            want[cname] = set(addrs)
            kube = fakes[cname]
            fakes.call(lambda k=kube: k.apply("services", service("shop", "cart")))
            slice_ = endpoint_slice("shop", "cart-a", "cart", [endpoint(a) for a in addrs])
            fakes.call(lambda k=kube, s=slice_: k.apply("endpointslices", s))
        r = render(values)
        servers = {c: fakes[c].url for c in remotes}
        cfg = materialise(r, tmp_path / "pod", _secrets_for(r.values, servers, tmp_path))
        admin = free_port()
        srv = start_fedns(cfg, tmp_path / "run", workers=1, extra_args=("--admin", f"{LOOPBACK}:{admin}"))
        try:
            _wait_ready(admin, r.config()["dns"]["startup_wait"] + 10)
            zone = r.values["federation"]["zone"]
            for cname, expected in want.items():
                resp = _query(srv.addr, f"{cname}.cart.shop.{zone}", "A")
                got = {rd.to_text() for rrset in resp.answer for rd in rrset}
                assert got == expected, (cname, resp)
            status, body = _admin(admin, "/v1/clusters")
            assert status == 200
            synced = {name for name, c in json.loads(body).items() if c["synced"]}
            assert set(remotes) <= synced, body
        finally:
            srv.stop()


# -- NOTES.txt -----------------------------------------------------------------------------------


def _fed_ttls(config: dict[str, Any]) -> list[int]:
    fed = config.get("federation", {})
    ttls = [int(fed.get("defaults", {}).get("ttl", 10))]
    ttls += [int(p["ttl"]) for p in fed.get("policies", {}).values() if "ttl" in p]
    return ttls


@pytest.mark.parametrize("vset", SERVER_SETS)
def test_notes_corefile_forwards_the_zone_to_the_dns_service(
    releases: dict[str, Release], vset: str
) -> None:
    r = releases[vset]
    corefile = r.block("Corefile")
    svc = r.one("Service", r.one("Deployment")["metadata"]["name"])
    zone = r.values["federation"]["zone"] or r.values["zones"][0]["origin"]
    address = svc["spec"].get("clusterIP")
    if address is None:
        # Unknown until the Service exists: the placeholder is the one thing CoreDNS would
        # refuse, NOTES says how to get the address, and the block is valid once it is in.
        assert [p for p in check_corefile(corefile) if "<CLUSTER-IP>" not in p] == []
        assert check_corefile(corefile), "the placeholder is not silently accepted"
        assert f"get service {svc['metadata']['name']} -o jsonpath='{{.spec.clusterIP}}'" in r.notes
        address = "10.96.0.99"
        corefile = corefile.replace("<CLUSTER-IP>", address)
    assert check_corefile(corefile) == [], corefile
    port = svc["spec"]["ports"][0]["port"]
    target = address if port == 53 else f"{address}:{port}"
    assert forwards(corefile, zone) == [[target]]
    (block,) = parse_corefile(corefile)
    (cache,) = block.plugin("cache")
    ttls = _fed_ttls(r.config())
    for sub in ("success", "denial"):
        (d,) = cache.sub(sub)
        _capacity, max_ttl, min_ttl = (int(a) for a in d.args)
        assert min_ttl < 5, "below CoreDNS's default floor"
        assert min_ttl <= min(ttls) and max_ttl <= max(1, max(ttls)), (d.args, ttls)


def test_notes_delegation_records_match_the_zone(releases: dict[str, Release]) -> None:
    r = releases["example-three-clusters"]
    zone_cfg = r.values["zones"][0]
    zone = dns.zone.from_text(
        r.one("ConfigMap")["data"][zone_cfg["file"]], origin=zone_cfg["origin"], relativize=False
    )
    origin = dns.name.from_text(zone_cfg["origin"])
    parent = dns.zone.from_text(
        r.block("parent records"), origin=origin.parent(), relativize=False, check_origin=False
    )
    ns = parent.get_rdataset(origin, "NS")
    apex_ns = zone.get_rdataset(origin, "NS")
    assert ns is not None and apex_ns is not None
    assert {rd.target for rd in ns} == {rd.target for rd in apex_ns}, "the zone's own NS names"
    for rd in ns:
        glue = parent.get_rdataset(rd.target, "A")
        own = zone.get_rdataset(rd.target, "A")
        assert glue is not None and own is not None
        assert {g.address for g in glue} == {o.address for o in own}
    assert not releases["defaults"].notes.count("begin parent records")


def test_notes_say_what_namespaced_rbac_covers(releases: dict[str, Release]) -> None:
    # fedns watches each allowed namespace on its own (tests/test_registry.py proves a
    # server forbidding every cluster-wide request still syncs); the config says which.
    r = releases["namespaced-rbac"]
    assert "shop, payments" in r.notes and "each of them on its own" in r.notes
    assert sorted(r.config()["federation"]["export"]["namespaces"]["allow"]) == ["payments", "shop"]


# -- member mode --------------------------------------------------------------------------------


@pytest.mark.parametrize("vset", MEMBER_SETS)
def test_member_mode_renders_only_read_only_access(releases: dict[str, Release], vset: str) -> None:
    r = releases[vset]
    kinds = sorted(m["kind"] for m in r.manifests)
    if r.values["rbac"]["namespaces"]:
        n = len(r.values["rbac"]["namespaces"])
        assert kinds == sorted(["Secret", "ServiceAccount"] + ["Role", "RoleBinding"] * n)
    else:
        assert kinds == ["ClusterRole", "ClusterRoleBinding", "Secret", "ServiceAccount"]
    sa = r.one("ServiceAccount")["metadata"]["name"]
    token = r.one("Secret")
    assert token["type"] == "kubernetes.io/service-account-token"
    assert token["metadata"]["annotations"] == {"kubernetes.io/service-account.name": sa}
    commands = r.block("member kubeconfig commands")
    assert f"SECRET={token['metadata']['name']}" in commands
    name = r.values["member"]["clusterName"]
    assert f"fedns-{name}-kubeconfig" in r.notes and f"- name: {name}" in r.notes


def test_member_mode_needs_the_cluster_name() -> None:
    with pytest.raises(helm.HelmRenderError, match=r"member\.clusterName"):
        render({"mode": "member"})


class _MemberAPI(BaseHTTPRequestHandler):
    """Just enough of a member cluster's API server for kubectl to read one Secret:
    version, discovery of v1 secrets, and GET of the token Secret the chart renders."""

    secret: dict[str, Any] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, code: int, obj: Any) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        meta = self.secret["metadata"]
        docs: dict[str, Any] = {
            "/version": {"major": "1", "minor": "32", "gitVersion": "v1.32.0"},
            "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []},
            "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
            "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                {"name": "secrets", "singularName": "secret", "namespaced": True,
                 "kind": "Secret", "verbs": ["get"]}]},
            f"/api/v1/namespaces/{meta['namespace']}/secrets/{meta['name']}": self.secret,
        }  # fmt: skip
        if path in docs:
            self._json(200, docs[path])
        else:
            self._json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                             "code": 404, "reason": "NotFound"})  # fmt: skip


def test_member_notes_commands_make_the_kubeconfig_secret(
    releases: dict[str, Release], tmp_path: Path
) -> None:
    """The commands member mode prints, run by bash with a real kubectl against a stub of
    the member's API server holding the rendered token Secret (as the token controller
    fills it in): they produce the kubeconfig Secret the main release mounts, with the
    member's server, CA and token, and fedns's Kubernetes client loads it. The last
    command runs with --dry-run=client: kubectl sends protobuf, which the stub does not speak."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl missing: apt-get install kubernetes-client")
    r = releases["member"]
    token, ca = "fedns-test-token", "-----BEGIN CERTIFICATE-----\nMIIBfedns\n-----END CERTIFICATE-----\n"
    secret = copy.deepcopy(r.one("Secret"))
    secret["data"] = {"token": base64.b64encode(token.encode()).decode(),
                      "ca.crt": base64.b64encode(ca.encode()).decode()}  # fmt: skip
    handler = type("Handler", (_MemberAPI,), {"secret": secret})
    httpd = ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    server = f"http://{LOOPBACK}:{httpd.server_address[1]}"
    try:
        write_kubeconfig(tmp_path / "kubeconfig", {"member": server, "main": server}, "member")
        script = r.block("member kubeconfig commands")
        create = next(line for line in script.splitlines() if "create secret generic" in line)
        script = script.replace(create, f"{create} --dry-run=client -o json > created.json")
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "kubeconfig"),
               "MAIN_CONTEXT": "main", "MAIN_NS": "dns"}  # fmt: skip
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
    created = json.loads((tmp_path / "created.json").read_text())
    name = r.values["member"]["clusterName"]
    assert created["kind"] == "Secret" and created["metadata"]["namespace"] == "dns"
    assert created["metadata"]["name"] == f"fedns-{name}-kubeconfig"
    assert not (tmp_path / f"{name}-ca.crt").exists(), "the CA file is cleaned up"
    text = base64.b64decode(created["data"]["kubeconfig"]).decode()
    kc = yaml.safe_load(text)
    assert kc["current-context"] == name
    (cluster,) = kc["clusters"]
    assert cluster["cluster"]["server"] == server
    assert base64.b64decode(cluster["cluster"]["certificate-authority-data"]).decode() == ca
    (user,) = kc["users"]
    assert user["user"] == {"token": token}
    # What fedns does with it (resolver/federation/sources/kubernetes.py): load it with
    # kubernetes-asyncio, the named context or the current one.
    from kubernetes_asyncio import client, config

    (tmp_path / "west.kubeconfig").write_text(text)
    cfg = client.Configuration()
    asyncio.run(config.load_kube_config(config_file=str(tmp_path / "west.kubeconfig"),
                                        client_configuration=cfg, persist_config=False))  # fmt: skip
    assert cfg.host == server
    assert cfg.api_key == {"BearerToken": f"Bearer {token}"}
