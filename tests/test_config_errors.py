"""A bad zone or config is refused at start, naming file, line or key path; a good one checks."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from servers import DEMO_CONFIG, fedns_argv, fedns_env, free_port

ORIGIN = "bad.example.test."
GOOD_HEAD = """$ORIGIN bad.example.test.
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 86400 60
        IN NS  ns1
ns1     IN A   192.0.2.1
"""  # five lines: errors appended below are on line 6 or later


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = fedns_env()
    return subprocess.run(
        fedns_argv(*args), capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def config_for(tmp_path: Path, zone_text: str | None, extra: str = "") -> Path:
    zone = tmp_path / "bad.example.test.zone"
    if zone_text is not None:
        zone.write_text(zone_text)
    cfg = tmp_path / "fedns.yaml"
    cfg.write_text(f"zones:\n  - origin: {ORIGIN}\n    file: {zone.name}\n{extra}")
    return cfg


# name -> (zone text, substrings the error must contain; "{zone}" = the zone file path)
ZONE_ERRORS = {
    "syntax error in an address": (
        GOOD_HEAD + "www     IN A   192.0.2.300\n",
        ["{zone}:6:"],
    ),
    "unknown record type": (
        GOOD_HEAD + "\n; comment line\nwww     IN BOGUS 1\n",
        ["{zone}:8:", "BOGUS"],
    ),
    "multi-line record broken": (
        GOOD_HEAD + "mx      IN MX  ( 10\n   )\n",
        ["{zone}:6:"],
    ),
    "CNAME and other data": (
        GOOD_HEAD + "www     IN A   192.0.2.2\nwww     IN CNAME ns1\n",
        ["{zone}:7:", "www.bad.example.test.", "CNAME and other data"],
    ),
    "CNAME after other data, other order": (
        GOOD_HEAD + 'www     IN CNAME ns1\nwww     IN TXT "x"\n',
        ["{zone}:7:", "CNAME"],
    ),
    "record outside the zone": (
        GOOD_HEAD + "www.elsewhere.test. IN A 192.0.2.2\n",
        ["{zone}:6:", "www.elsewhere.test.", "outside the zone"],
    ),
    "missing SOA": (
        "$ORIGIN bad.example.test.\n$TTL 300\n@ IN NS ns1\nns1 IN A 192.0.2.1\n",
        ["{zone}", "no SOA"],
    ),
    "missing NS": (
        "$ORIGIN bad.example.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n",
        ["{zone}", "no NS"],
    ),
    "missing file": (None, ["{zone}", "cannot read"]),
}

FED = f"""federation:
  zone: {ORIGIN}
  clusters: [{{name: east, region: us-east, zone: us-east-1a}}]
"""

# name -> (extra top-level YAML, substrings the error must contain)
CONFIG_ERRORS = {
    "unknown top-level key": ("zonez: []\n", ["zonez", "unknown key"]),
    "unknown nested key": ("tcp:\n  idle_timout: 1\n", ["tcp.idle_timout", "unknown key"]),
    "port out of range": ("dns:\n  listen: 127.0.0.1:99999\n", ["dns.listen", "99999", "range"]),
    "port not a number": ("dns:\n  listen: 127.0.0.1:dns\n", ["dns.listen", "not a number"]),
    "wrong value type": ("tcp:\n  max_connections: many\n", ["tcp.max_connections", "many"]),
    "not YAML": ("server: [unclosed\n", ["fedns.yaml:", "YAML"]),
    # names that would silently never match: a cluster or region that is not defined
    "failover names an undefined cluster": (
        FED + "  policies: {shop/checkout: {policy: failover, failover: [east, west]}}\n",
        ["federation.policies.shop/checkout.failover[1]", "unknown cluster 'west'", "east"],
    ),
    "failover lists a cluster twice": (
        FED + "  policies: {shop/checkout: {policy: failover, failover: [east, east]}}\n",
        ["federation.policies.shop/checkout.failover[1]", "listed twice"],
    ),
    "weights name an undefined cluster": (
        FED + "  policies: {shop/ads: {policy: weighted, weights: {east: 3, eest: 1}}}\n",
        ["federation.policies.shop/ads.weights.eest", "unknown cluster 'eest'"],
    ),
    "default failover names an undefined cluster": (
        FED + "  defaults: {failover: [eu]}\n",
        ["federation.defaults.failover[0]", "unknown cluster 'eu'"],
    ),
    "failover names are case-insensitive like cluster names, but still checked": (
        FED + "  policies: {shop/checkout: {policy: failover, failover: [EAST, West]}}\n",
        ["federation.policies.shop/checkout.failover[1]", "unknown cluster 'west'"],
    ),
    "allow exports no namespace": (
        FED + "  export: {namespaces: {allow: [shop], deny: [shop]}}\n",
        ["federation.export.namespaces.allow", "nothing would be exported"],
    ),
    "prefer names an undefined region": (
        FED + "  regions: [{name: us-east, lat: 39.0, lon: -77.5, prefer: [us-west]}]\n",
        ["federation.regions[0].prefer[0]", "us-west"],
    ),
}


def _expect(result: subprocess.CompletedProcess[str], needles: list[str], zone: Path) -> None:
    assert result.returncode != 0
    for needle in needles:
        assert needle.format(zone=zone) in result.stderr, f"{needle!r} not in: {result.stderr}"
    assert "Traceback" not in result.stderr, "an error message, not a crash"
    assert "ok" not in result.stdout


@pytest.mark.parametrize("case", sorted(ZONE_ERRORS))
def test_check_refuses_bad_zone(tmp_path: Path, case: str) -> None:
    text, needles = ZONE_ERRORS[case]
    cfg = config_for(tmp_path, text)
    _expect(run("check", "-c", str(cfg)), needles, tmp_path / "bad.example.test.zone")


@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_check_refuses_bad_config(tmp_path: Path, case: str) -> None:
    extra, needles = CONFIG_ERRORS[case]
    cfg = config_for(tmp_path, GOOD_HEAD, extra)
    _expect(run("check", "-c", str(cfg)), needles, tmp_path / "bad.example.test.zone")


@pytest.mark.parametrize(
    "kind,case",
    [
        ("zone", "syntax error in an address"),
        ("zone", "CNAME and other data"),
        ("zone", "record outside the zone"),
        ("zone", "missing NS"),
        ("config", "unknown nested key"),
        ("config", "port out of range"),
    ],
)
def test_serve_refuses_to_start(tmp_path: Path, kind: str, case: str) -> None:
    """Nothing starts half-loaded: serve exits non-zero with the same message, before binding."""
    if kind == "zone":
        text, needles = ZONE_ERRORS[case]
        cfg = config_for(tmp_path, text)
    else:
        extra, needles = CONFIG_ERRORS[case]
        cfg = config_for(tmp_path, GOOD_HEAD, extra)
    result = run("serve", "-c", str(cfg), "--dns", f"127.0.0.1:{free_port()}")
    _expect(result, needles, tmp_path / "bad.example.test.zone")


def test_serve_refuses_bad_dns_flag(tmp_path: Path) -> None:
    cfg = config_for(tmp_path, GOOD_HEAD)
    result = run("serve", "-c", str(cfg), "--dns", "127.0.0.1:70000")
    assert result.returncode != 0 and "--dns" in result.stderr and "70000" in result.stderr


def test_check_demo_prints_summary() -> None:
    result = run("check", "-c", str(DEMO_CONFIG))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    assert "global.example.test." in result.stdout
    assert "delegations" in result.stdout and "serial 2026112501" in result.stdout


def test_check_good_zone(tmp_path: Path) -> None:
    result = run("check", "-c", str(config_for(tmp_path, GOOD_HEAD)))
    assert result.returncode == 0, result.stderr
    assert ORIGIN in result.stdout


def test_check_warns_of_credentials_serve_could_not_load(tmp_path: Path) -> None:
    """Warnings, not errors: a chart's kubeconfig Secrets exist only in the pod."""
    fed = (
        f"federation:\n  zone: {ORIGIN}\n  clusters:\n"
        "    - {name: east, kubeconfig: missing.kubeconfig}\n"
        "    - {name: west, kubeconfig: broken.kubeconfig, context: west}\n"
        "    - {name: eu, in_cluster: true}\n"
    )
    (tmp_path / "broken.kubeconfig").write_text("apiVersion: v1\nkind: Config\n")
    result = run("check", "-c", str(config_for(tmp_path, GOOD_HEAD, fed)))
    assert result.returncode == 0, result.stderr
    warnings = [ln for ln in result.stdout.splitlines() if "warning:" in ln]
    assert len(warnings) == 2, result.stdout
    assert "cluster east: kubeconfig" in warnings[0] and "not found" in warnings[0]
    assert "cluster west: cannot load" in warnings[1] and "context west" in warnings[1]
