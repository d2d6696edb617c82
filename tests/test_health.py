"""Active health probes against real targets, through a real ``fedns serve``.

The targets are aiohttp servers (``tests/healthkit.py``) on loopback addresses
127.40-45.x.y that go down, hang, answer 500 or the wrong body, want a Host
header, or serve HTTPS with a self-signed CA given by ``ca_file``; each counts
what reaches it. fedns is queried over UDP (dnspython) and through
``/v1/explain``; what each endpoint should be is derived from its target's
behaviour and its service's probe. Also here: hysteresis and the probe
settings (pure), ``fedns check`` refusing a bad probe spec with its key path,
the three-level precedence and ``probe: none``, ``initial: down``, a deleted
endpoint getting no further connection (watched through a fake API server),
1,000 targets under the concurrency bound (measured at the targets), and the
probe counters behind ``/metrics``.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fakekube import ThreadedFakeKubes, endpoint, federation_config
from healthkit import ORIGIN, HttpTargets, Reply, TcpTargets, make_ca, running, static_service
from prometheus_client.parser import text_string_to_metric_families
from servers import fedns_argv, fedns_env

from resolver.config import ConfigError, Reader
from resolver.federation.config import federation_from_dict
from resolver.federation.control import Control
from resolver.federation.health import ProbeSpec, ProbeState, Target, parse_probe, targets_for

# -- the state machine and the settings (pure) --------------------------------------------------


def test_hysteresis_needs_fall_failures_and_rise_successes() -> None:
    st = ProbeState(rise=2, fall=3)
    assert st.healthy
    assert not st.record(False, "refused", now=1.0)
    assert not st.record(False, "refused", now=2.0)
    assert st.record(False, "refused", now=3.0)  # third failure flips
    assert not st.healthy and st.since == 3.0 and st.reason == "refused"
    assert not st.record(True, "ok", now=4.0)
    assert not st.record(False, "refused", now=5.0)  # a failure resets the rise streak
    assert not st.record(True, "ok", now=6.0)
    assert st.record(True, "ok", now=7.0)
    assert st.healthy and st.since == 7.0


def test_initial_down_is_out_until_the_first_success() -> None:
    spec = ProbeSpec("http", 80, rise=3, initial="down")
    st = ProbeState.initial(spec, now=1.0)
    assert not st.healthy and "initial: down" in st.reason
    assert not st.record(False, "500", now=2.0)
    assert st.record(True, "200", now=3.0)  # the first success, not rise of them
    assert st.healthy and st.since == 3.0
    assert not st.record(False, "500", now=4.0)  # from here on: fall failures (2)
    assert st.record(False, "500", now=5.0)
    up = ProbeState.initial(ProbeSpec("tcp", 80))
    assert up.healthy and "initial: ready" in up.reason


@pytest.mark.parametrize(
    ("raw", "spec"),
    [
        ("tcp", ProbeSpec("tcp")),
        ("http:8080/healthz", ProbeSpec("http", 8080, "/healthz")),
        ("https:8443/ready", ProbeSpec("http", 8443, "/ready", scheme="https")),
        ("{probe: http, port: 81, interval: 2s, timeout: 250ms}",
         ProbeSpec("http", 81, interval=2.0, timeout=0.25)),
        ({"probe": "http", "path": "/ready", "fall": 3}, ProbeSpec("http", None, "/ready", fall=3)),
        ({"probe": "tcp", "interval": "1m", "timeout": 5, "send": "PING\r\n", "expect": "+PONG"},
         ProbeSpec("tcp", interval=60.0, timeout=5.0, send=b"PING\r\n", expect=b"+PONG")),
        ({"probe": "http", "expect_status": "200,204,300-302", "expect_body": "up", "host": "a.b"},
         ProbeSpec("http", expect_status=((200, 200), (204, 204), (300, 302)), expect_body="up",
                   host="a.b")),
        ({"probe": "http", "initial": "down", "interval": "1h", "timeout": "1s"},
         ProbeSpec("http", initial="down", interval=3600.0, timeout=1.0)),
        ("none", None),
        ({"probe": "none"}, None),
    ],
)
def test_parse_probe(raw: object, spec: ProbeSpec | None) -> None:
    assert parse_probe(raw, "federation.health") == spec


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"probe": "icmp"}, "federation.health.probe: 'icmp' is not one of tcp, http, https, none"),
        ({"probe": "tcp", "port": 70000}, "federation.health.port: 70000 is out of range"),
        ({"probe": "http", "path": "healthz"}, "federation.health.path: 'healthz' must start with /"),
        ({"probe": "http", "path": "/a b"}, "federation.health.path: '/a b' must start with /"),
        ({"probe": "tcp", "every": 1}, "federation.health.every: unknown key"),
        ({"probe": "tcp", "path": "/x"}, "federation.health.path: only used with probe: http"),
        ({"probe": "http", "send": "x"}, "federation.health.send: only used with probe: tcp"),
        ({"probe": "http", "interval": "soon"},
         "federation.health.interval: 'soon' is not a duration; write"),
        ({"probe": "http", "interval": "50ms"}, "federation.health.interval: 0.05 s is out of range"),
        ({"probe": "http", "interval": "1s", "timeout": "5s"},
         "federation.health.timeout: 5 s is over 4 times the interval"),
        ({"probe": "http", "expect_status": "2xx"}, "federation.health.expect_status: '2xx'"),
        ({"probe": "http", "expect_status": "399-200"}, "federation.health.expect_status: '399-200'"),
        ({"probe": "http", "initial": "up"}, "federation.health.initial: 'up' is not one of"),
        ({"probe": "http", "tls_verify": False}, "federation.health.tls_verify: only used with"),
        ({"probe": "https", "ca_file": "/nonexistent/ca.pem"}, "federation.health.ca_file: cannot load"),
        ({"probe": "none", "port": 80}, "federation.health.port: probe: none takes no other"),
    ],
)
def test_parse_probe_errors(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_probe(raw, "federation.health", _FILE)
    assert message in str(e.value), str(e.value)


# As for a config file: ca_file is read from files only, not from annotations.
_FILE = Reader(Path("fedns.yaml"))


def test_annotations_cannot_name_files_and_targets_share_a_spec() -> None:
    with pytest.raises(ConfigError, match="only read from the config file"):
        parse_probe("{probe: https, ca_file: /etc/passwd}", "annotation")
    spec = ProbeSpec("tcp")
    assert targets_for(spec, ["127.1.0.1"], [443, 80]) == [
        Target("127.1.0.1", ProbeSpec("tcp", 443))
    ]
    assert targets_for(ProbeSpec("tcp", 8443), ["127.1.0.1"], [443])[0].port == 8443
    assert targets_for(spec, ["127.1.0.1"], []) == []
    # Two services probing one address alike probe one target.
    a = targets_for(ProbeSpec("http", None, "/h"), ["127.1.0.1"], [80])
    b = targets_for(ProbeSpec("http", 80, "/h"), ["127.1.0.1"], [443])
    assert a == b


@pytest.mark.parametrize(
    ("federation", "needles"),
    [
        ({"policies": {"shop/web": {"probe": {"probe": "http", "timeout": "9s", "interval": "1s"}}}},
         ["federation.policies.shop/web.probe.timeout", "over 4 times the interval"]),
        ({"policies": {"shop/web": {"probe": {"probe": "http", "interval": "2 weeks"}}}},
         ["federation.policies.shop/web.probe.interval", "'2 weeks' is not a duration",
          "250ms", "1h"]),
        ({"policies": {"shop/web": {"probe": None}}},
         ["federation.policies.shop/web.probe", "empty"]),
        ({"policies": {"shop/web": {"prob": "none"}}},
         ["federation.policies.shop/web.prob", "unknown key", "probe"]),
        ({"defaults": {"flap_window": "forever"}}, ["federation.defaults.flap_window"]),
        ({"defaults": {"ttl_unstable": "1.5s"}},
         ["federation.defaults.ttl_unstable", "not a whole number of seconds"]),
        ({"probes": {"concurrency": 0}}, ["federation.probes.concurrency", "out of range"]),
        ({"clusters": [{"name": "east", "stale_after": "30sec"}, {"name": "west"}]},
         ["federation.clusters[0].stale_after", "not a duration"]),
    ],
)
def test_check_refuses_a_bad_probe_spec_with_its_key_path(
    tmp_path: Path, federation: dict[str, Any], needles: list[str]
) -> None:
    fed = {"zone": ORIGIN, "clusters": [{"name": "east"}, {"name": "west"}], **federation}
    (tmp_path / "fed.zone").write_text(_ZONE)
    cfg = tmp_path / "fedns.yaml"
    cfg.write_text(yaml.safe_dump({"zones": [{"origin": ORIGIN, "file": "fed.zone"}],
                                   "federation": fed}))
    cmds = [("check", "-c", str(cfg))]
    if "timeout" in needles[0]:  # serve reads the config the same way: once is enough
        cmds.append(("serve", "-c", str(cfg), "--dns", "127.0.0.1:0"))
    for cmd in cmds:
        r = subprocess.run(fedns_argv(*cmd), capture_output=True, text=True, env=fedns_env(),
                           timeout=30, check=False)
        assert r.returncode != 0, (cmd, r.stdout)
        for needle in needles:
            assert needle in r.stderr, (needle, r.stderr)
        assert "Traceback" not in r.stderr


_ZONE = f"""$ORIGIN {ORIGIN}
$TTL 300
@ IN SOA ns1 hostmaster 1 3600 600 1209600 30
@ IN NS ns1
ns1 IN A 127.0.0.53
"""


# -- HTTP(S) targets and what DNS answers -------------------------------------------------------


def _passes(reply: Reply, spec: dict[str, Any]) -> bool:
    """Would a probe with these settings pass against this reply? (The targets' side of
    the contract: expect_status 200-399 by default, the body substring, the Host.)"""
    if reply.hang:
        return False
    if spec.get("scheme") == "https" and spec.get("tls_verify", True) and not spec.get("ca_file"):
        return False  # the test CA is in no system store
    if reply.host is not None and spec.get("host") != reply.host:
        return False
    if reply.paths is not None and spec.get("path", "/") not in reply.paths:
        return False
    if not 200 <= reply.status <= 399:
        return False
    return spec.get("expect_body") is None or spec["expect_body"] in reply.body


def _want(targets: HttpTargets, spec: dict[str, Any], addrs: list[str], fail_open: bool) -> Any:
    up = frozenset(a for a in addrs if _passes(targets.replies[a], spec))
    if up:
        return up
    return frozenset(addrs) if fail_open else "NOERROR/NODATA"


HTTP = "127.40.0"
HTTPS = "127.41.0"


def test_http_targets_leave_after_fall_and_return_after_rise(tmp_path: Path) -> None:
    """Each service has a control endpoint that always passes and one under test: it goes
    down, hangs, answers 500 or the wrong body, or needs a Host header; HTTPS with the
    CA in ca_file, without it (verification fails) and with tls_verify false."""
    ca_file, server_tls = make_ca(tmp_path, ["web.example.test", f"{HTTPS}.1", f"{HTTPS}.2"])
    plain = HttpTargets([f"{HTTP}.{i}" for i in range(1, 8)])
    tls = HttpTargets([f"{HTTPS}.1", f"{HTTPS}.2"], tls=server_tls)
    try:
        control, flap, down, hang, body, vhost, novhost = plain.addresses
        for a in plain.addresses:
            plain.replies[a] = Reply(body="status: healthy")
        plain.replies[body] = Reply(body="status: degraded")
        plain.replies[vhost] = plain.replies[novhost] = Reply(body="healthy", host="web.example.test")
        base = {"probe": "http", "path": "/healthz", "interval": "100ms", "timeout": "300ms"}
        https = {**base, "scheme": "https", "ca_file": str(ca_file)}
        services: dict[str, tuple[dict[str, Any], str, bool]] = {
            # name: (probe, tested address, fail_open)
            "flap": ({**base, "rise": 2, "fall": 3}, flap, True),
            "down": (base, down, True),
            "hang": ({**base, "interval": "200ms", "fall": 2}, hang, True),
            "body": ({**base, "expect_body": "healthy"}, body, True),
            "vhost": ({**base, "host": "web.example.test"}, vhost, True),
            "novhost": (base, novhost, True),
            "tls": (https, f"{HTTPS}.2", True),
            "tls-sni": ({**https, "host": "web.example.test"}, f"{HTTPS}.2", True),
            "tls-noca": ({k: v for k, v in https.items() if k != "ca_file"}, f"{HTTPS}.2", False),
            "tls-noverify": ({**base, "scheme": "https", "tls_verify": False}, f"{HTTPS}.2", True),
        }

        def members(name: str) -> tuple[HttpTargets, list[str]]:
            t = tls if name.startswith("tls") else plain
            return t, [t.addresses[0], services[name][1]]

        fed = {
            "zone": ORIGIN,
            "clusters": [{"name": "east"}],
            "defaults": {"policy": "all"},
            "policies": {
                f"shop/{n}": {"probe": spec, "fail_open": fo} for n, (spec, _, fo) in services.items()
            },
            "services": [
                static_service(n, members(n)[0].port, {"east": members(n)[1]}) for n in services
            ],
        }
        with running(tmp_path / "fedns", {"federation": fed}) as f:

            def name(n: str) -> str:
                return f"{n}.shop.{ORIGIN}"

            def want(n: str) -> Any:
                t, addrs = members(n)
                return _want(t, services[n][0], addrs, services[n][2])

            for n in services:
                f.wait(name(n), want(n))
            why = {n: f.candidates(name(n))[services[n][1]]["health"] for n in services}
            assert "without 'healthy'" in why["body"], why
            assert "http 421" in why["novhost"], why
            assert "certificate verify failed" in why["tls-noca"], why
            for n in ("tls", "tls-sni", "tls-noverify"):
                assert "probe up" in why[n], why

            # 500: out after exactly `fall` failing probes, back after `rise` passing ones.
            spec = services["flap"][0]
            plain.replies[flap] = Reply(status=500, body="status: healthy")
            t0 = time.monotonic()
            seen = f.wait(name("flap"), want("flap"))
            failed = plain.served(flap, since=t0, status=500)
            # The next probe is 100 ms later: one more may land before this poll sees it.
            assert spec["fall"] <= failed <= spec["fall"] + 2, failed
            assert plain.served(flap, since=t0) == failed  # every probe since was a failure
            plain.replies[flap] = Reply(body="status: healthy")
            t1 = time.monotonic()
            f.wait(name("flap"), want("flap"))
            passed = plain.served(flap, since=t1, status=200)
            assert spec["rise"] <= passed <= spec["rise"] + 2, passed
            assert seen > t0

            # Down (connection refused), then back.
            plain.down(down)
            f.wait(name("down"), frozenset({control}))
            assert "Connection refused" in f.candidates(name("down"))[down]["health"]
            plain.up(down)
            f.wait(name("down"), want("down"))

            # A target that accepts and never answers counts as failed at the timeout.
            plain.replies[hang] = Reply(hang=True)
            f.wait(name("hang"), want("hang"))
            cand = f.candidates(name("hang"))[hang]
            assert not cand["healthy"] and "http timeout after 0.3 s" in cand["health"], cand
            held = list(plain.hung)
            # Held from the handler's start, which lags the prober's send (and so the
            # start of its 0.3 s timeout) by however long this process took to read
            # the request: 0.289 s in one CI run. Giving up at once would be ~0.
            assert len(held) >= 2 and all(0.2 <= h < 2.0 for h in held), held
            plain.replies[hang] = Reply(body="status: healthy")
            f.wait(name("hang"), want("hang"))

            # The explain trail names where each probe came from, and every input.
            data = f.explain(name("flap"))
            assert data["probe"]["source"] == "policies"
            assert data["probe"]["key"] == "federation.policies.shop/flap.probe"
            assert data["probe"]["settings"]["fall"] == 3
            inputs = {i["input"]: i for i in f.candidates(name("flap"))[flap]["inputs"]}
            assert inputs["ready"]["ok"] and inputs["probe"]["value"] == "up"
            assert "http 200" in inputs["probe"]["reason"] and inputs["probe"]["since"] > 0
            assert inputs["cluster"]["value"] == "live"

            # One log event per flip, none per probe.
            flips = f.events("health_flip")
            assert {(e["target"], e["direction"]) for e in flips} >= {
                (f"http://{flap}:{plain.port}/healthz", "down"),
                (f"http://{flap}:{plain.port}/healthz", "up"),
            }
            assert all(e["level"] == "info" and e["reason"] for e in flips)
            lines = len(f.sp.output().splitlines())
            time.sleep(1.0)  # some 60 probes
            assert len(f.sp.output().splitlines()) == lines
            assert not f.tracebacks()
    finally:
        plain.close()
        tls.close()


# -- precedence, probe: none, a bad annotation, initial: down -------------------------------------


PRE = "127.42.0"


def test_probe_precedence_none_bad_annotation_and_initial_down(tmp_path: Path) -> None:
    """Each tested endpoint answers 200 only on the path of the probe that should apply,
    so DNS shows which of annotation > policies entry > federation.health won."""
    names = ["ann", "pol", "dflt", "none", "badann", "initdown", "initready"]
    t = HttpTargets([f"{PRE}.1"] + [f"{PRE}.{i + 2}" for i in range(len(names))])
    try:
        control = t.addresses[0]
        x = dict(zip(names, t.addresses[1:], strict=True))
        t.replies[x["ann"]] = Reply(paths=frozenset({"/ann"}))
        t.replies[x["pol"]] = Reply(paths=frozenset({"/pol"}))
        t.replies[x["dflt"]] = Reply(paths=frozenset({"/health"}))
        t.replies[x["none"]] = Reply(status=500)  # would fail any probe
        t.replies[x["badann"]] = Reply(paths=frozenset({"/pol"}))
        t.replies[x["initdown"]] = t.replies[x["initready"]] = Reply(status=503)
        fast = {"interval": "100ms", "timeout": "300ms"}
        pol = {"probe": "http", "path": "/pol", **fast}
        annotations = {
            "ann": {"fedns.io/probe": "{probe: http, path: /ann, interval: 100ms}"},
            "badann": {"fedns.io/probe": "http:notaport"},
        }
        policies = {
            "shop/ann": {"probe": pol},
            "shop/pol": {"probe": pol},
            "shop/none": {"probe": "none"},
            "shop/badann": {"probe": pol},
            "shop/initdown": {"probe": {**pol, "path": "/slow", "initial": "down", "rise": 3},
                              "fail_open": False},
            "shop/initready": {"probe": {**pol, "path": "/slow", "fall": 100}},
        }
        fed = {
            "zone": ORIGIN,
            "clusters": [{"name": "east"}],
            "defaults": {"policy": "all"},
            "health": {"probe": "http", "path": "/health", **fast},
            "policies": policies,
            "services": [
                static_service(n, t.port, {"east": [control, x[n]]},
                               **({"annotations": annotations[n]} if n in annotations else {}))
                for n in names
            ],
        }
        both = {n: frozenset({control, x[n]}) for n in names}
        with running(tmp_path, {"federation": fed}) as f:
            # initial: down is out from the first answer on (its control endpoint too, until
            # its first probe passes: NODATA, as fail_open is off); initial: ready is in.
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                got = f.answer(f"initdown.shop.{ORIGIN}")
                assert got in ({control}, "NOERROR/NODATA"), got
            for n in ("ann", "pol", "dflt", "none", "badann", "initready"):
                f.wait(f"{n}.shop.{ORIGIN}", both[n])
            sources = {n: f.explain(f"{n}.shop.{ORIGIN}")["probe"] for n in names}
            assert sources["ann"]["source"] == "annotation" and sources["ann"]["key"] == "fedns.io/probe"
            assert sources["pol"]["source"] == "policies"
            assert sources["dflt"]["source"] == "health" and sources["dflt"]["key"] == "federation.health"
            assert sources["none"]["source"] == "policies" and sources["none"]["settings"] is None
            assert sources["badann"]["source"] == "policies"
            time.sleep(0.5)
            for n, path in (("ann", "/ann"), ("pol", "/pol"), ("dflt", "/health")):
                hits = {p: c for (a, p), c in t.requests.items() if a == x[n]}
                assert set(hits) == {path}, (n, hits)
            assert not any(a == x["none"] for a, _ in t.requests), "probe: none probes nothing"
            # The bad annotation: ignored, shown in explain, logged once however often the
            # service is planned again (its control endpoint flips twice here).
            problems = f.explain(f"badann.shop.{ORIGIN}")["problems"]
            assert problems == ["fedns.io/probe='http:notaport' ignored: port: 'notaport' is not a number"]
            t.replies[control] = Reply(status=500)
            f.wait(f"badann.shop.{ORIGIN}", frozenset({x["badann"]}))
            t.replies[control] = Reply()
            f.wait(f"badann.shop.{ORIGIN}", both["badann"])
            logged = [e for e in f.events("annotation_ignored") if e["service"] == "shop/badann"]
            assert len(logged) == 1, logged
            # initial: down: in at the first success, not after rise (3) of them.
            f.wait(f"initdown.shop.{ORIGIN}", frozenset({control}))
            t.replies[x["initdown"]] = Reply(paths=frozenset({"/slow"}))
            t0 = time.monotonic()
            f.wait(f"initdown.shop.{ORIGIN}", both["initdown"])
            assert 1 <= t.served(x["initdown"], since=t0, status=200) <= 2
            assert not f.tracebacks()
    finally:
        t.close()


# -- endpoints that appear and go, through a watched cluster ----------------------------------


def test_probes_start_when_an_endpoint_appears_and_stop_when_it_goes(tmp_path: Path) -> None:
    addrs = ["127.43.0.1", "127.43.0.2", "127.43.0.3"]
    t = TcpTargets(addrs)
    try:
        with ThreadedFakeKubes(["east"]) as fakes:
            k = fakes["east"]

            def put(live: list[str]) -> None:
                k.put_service("shop", "api", ports=[("http", t.port, "TCP")])
                k.put_slice("shop", "api-a", "api", [endpoint(a) for a in live],
                            ports=[("http", t.port, "TCP")])

            fakes.call(put, addrs[:2])
            fed = federation_config(fakes.kubes, tmp_path)
            fed["defaults"] = {"policy": "all"}
            fed["health"] = {"probe": "tcp", "interval": "100ms", "timeout": "300ms"}
            with running(tmp_path, {"federation": fed}) as f:
                name = f"api.shop.{ORIGIN}"
                f.wait(name, frozenset(addrs[:2]))
                assert t.connections[addrs[2]] == 0
                fakes.call(put, addrs)
                f.wait(name, frozenset(addrs))
                end = time.monotonic() + 3
                while t.connections[addrs[2]] == 0 and time.monotonic() < end:
                    time.sleep(0.01)
                assert t.connections[addrs[2]] > 0, "a new endpoint is probed at once"
                fakes.call(put, [addrs[0], addrs[2]])
                f.wait(name, frozenset({addrs[0], addrs[2]}))
                time.sleep(0.1)  # a connection already under way when it went may land
                gone = t.connections[addrs[1]]
                kept = t.connections[addrs[0]]
                time.sleep(1.0)  # ten intervals
                assert t.connections[addrs[1]] == gone, "a deleted endpoint got a connection"
                assert t.connections[addrs[0]] >= kept + 5
                assert not f.tracebacks()
    finally:
        t.close()


# -- 1,000 targets and the concurrency bound --------------------------------------------------


def test_a_thousand_targets_never_exceed_the_concurrency_bound(tmp_path: Path) -> None:
    bound = 16
    addrs = [f"127.44.{i // 250}.{i % 250 + 1}" for i in range(1000)]
    t = HttpTargets(addrs)
    try:
        for a in addrs:
            # Slow enough that 1,000 targets every 0.5 s want ~100 probes in flight.
            t.replies[a] = Reply(delay=0.05)
        fed = {
            "zone": ORIGIN,
            "clusters": [{"name": "east"}],
            "defaults": {"policy": "all", "max_answers": 8},
            "health": {"probe": "http", "interval": "500ms", "timeout": "2s"},
            "probes": {"concurrency": bound},
            "services": [static_service("many", t.port, {"east": addrs})],
        }
        with running(tmp_path, {"federation": fed}) as f:
            end = time.monotonic() + 30
            while time.monotonic() < end:
                probed = {a for a, _ in t.requests}
                if len(probed) == len(addrs):
                    break
                time.sleep(0.1)
            assert len({a for a, _ in t.requests}) == len(addrs), "every target was probed"
            assert bound // 2 <= t.peak <= bound, t.peak
            assert len(f.answer(f"many.shop.{ORIGIN}")) == 8
            assert not f.tracebacks()
    finally:
        t.close()


# -- the probe counters (Control.probe_stats, rendered on /metrics) ---------------------------


async def test_probe_stats_count_results_latency_flips_and_endpoints() -> None:
    ok, bad, hung, refused = (f"127.45.0.{i}" for i in range(1, 5))
    t = HttpTargets([ok, bad, hung])
    try:
        t.replies[bad] = Reply(status=500)
        t.replies[hung] = Reply(hang=True)
        fed = federation_from_dict({
            "zone": ORIGIN,
            "clusters": [{"name": "east"}, {"name": "west"}],
            "health": {"probe": "http", "interval": "100ms", "timeout": "200ms", "fall": 2},
            "services": [
                static_service("api", t.port, {"east": [ok, bad, hung, refused]}),
                # The same address and probe in another service: one target, probed once.
                static_service("www", t.port, {"east": [ok]}),
            ],
        })
        control = Control(fed, lambda _u: None)
        await control.start()
        try:
            control.release()
            await asyncio.sleep(0.3)
            before = t.served(ok)
            await asyncio.sleep(1.2)
            s = control.probe_stats()
            during = t.served(ok) - before
        finally:
            await control.stop()
        assert 1 <= during <= 15, during  # at most 12 intervals of 100 ms (-10 %), not twice
        res = s["results"]
        assert set(res) == {"ok", "fail", "timeout", "error"} and all(res.values()), res
        lat = s["latency"]
        assert lat["count"] == sum(res.values()) and lat["sum"] > 0
        counts = [n for _, n in lat["buckets"]]
        assert counts == sorted(counts) and counts[-1] == lat["count"]
        assert lat["buckets"][-1][0] == float("inf")
        assert s["targets"] == 4
        assert s["flips"] == {"up": 0, "down": 3}  # 500, hang, refused: down once each
        assert s["endpoints"] == {"east": {"healthy": 2, "unhealthy": 3},
                                  "west": {"healthy": 0, "unhealthy": 0}}
    finally:
        t.close()


def test_probe_takes_a_dead_endpoint_out_and_back(tmp_path: Path) -> None:
    """TCP probes: an endpoint whose port stops answering leaves the answer, and comes
    back when it answers again; with nothing passing, fail-open answers every endpoint."""
    live, dead = "127.45.1.1", "127.45.1.2"
    t = HttpTargets([live])  # nothing listens on `dead`'s address: refused
    try:
        fed = {
            "zone": ORIGIN,
            "clusters": [{"name": "east", "region": "r1"}, {"name": "west", "region": "r2"}],
            "defaults": {"policy": "all"},
            "health": {"probe": "tcp", "interval": 0.1, "timeout": 0.2, "rise": 2, "fall": 2},
            "services": [static_service("api", t.port, {"east": [live], "west": [dead]})],
        }
        with running(tmp_path, {"federation": fed}) as f:
            name = f"api.shop.{ORIGIN}"
            f.wait(name, frozenset({live}))
            t.down(live)
            # Nothing passes now: fail-open answers with every endpoint rather than none.
            f.wait(name, frozenset({live, dead}))
            t.up(live)
            f.wait(name, frozenset({live}))
            assert not f.tracebacks()
    finally:
        t.close()


def test_metrics_show_probes_flips_targets_and_endpoints(tmp_path: Path) -> None:
    """``/metrics`` of a real fedns, read with prometheus_client's parser: results by
    outcome, the latency histogram, targets, flips, endpoints by effective health."""
    ok, bad, refused = "127.45.2.1", "127.45.2.2", "127.45.2.3"
    t = HttpTargets([ok, bad])
    try:
        t.replies[bad] = Reply(status=500)
        fed = {
            "zone": ORIGIN,
            "clusters": [{"name": "east"}, {"name": "west"}],
            "health": {"probe": "http", "interval": "100ms", "timeout": "300ms", "fall": 2},
            "services": [static_service("api", t.port, {"east": [ok, bad], "west": [refused]})],
        }
        with running(tmp_path, {"federation": fed}) as f:
            f.wait(f"api.shop.{ORIGIN}", frozenset({ok}))

            def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
                return {
                    (s.name, tuple(sorted(s.labels.items()))): s.value
                    for fam in text_string_to_metric_families(f.get("/metrics"))
                    for s in fam.samples
                }

            m = scrape()
            results = {r: m[("fedns_probes_total", (("result", r),))] for r in
                       ("ok", "fail", "timeout", "error")}
            assert results["ok"] > 0 and results["fail"] > 0 and results["error"] > 0, results
            assert m[("fedns_probe_duration_seconds_count", ())] >= sum(results.values())
            assert m[("fedns_probe_targets", ())] == 3
            assert m[("fedns_health_flips_total", (("direction", "down"),))] == 2  # bad, refused
            assert m[("fedns_health_flips_total", (("direction", "up"),))] == 0
            health = {(c, h): m[("fedns_endpoints", (("cluster", c), ("health", h)))]
                      for c in ("east", "west") for h in ("healthy", "unhealthy")}
            assert health == {("east", "healthy"): 1, ("east", "unhealthy"): 1,
                              ("west", "healthy"): 0, ("west", "unhealthy"): 1}, health
            t.replies[bad] = Reply()
            f.wait(f"api.shop.{ORIGIN}", frozenset({ok, bad}))
            m = scrape()
            assert m[("fedns_health_flips_total", (("direction", "up"),))] == 1
            assert m[("fedns_endpoints", (("cluster", "east"), ("health", "healthy")))] == 2
    finally:
        t.close()
