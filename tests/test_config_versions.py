"""Config versions, history, rollback, reload on file change, and the admin API's bearer token.

Real ``fedns serve`` processes queried with dnspython; the admin API over HTTP
with urllib; ``fedns rollback`` as operators run it. The ConfigMap case builds
the kubelet's atomic-writer layout (timestamped directory, ``..data`` symlink,
file symlinks through it) and swaps it as the kubelet does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml
from fakekube import ThreadedFakeKubes, endpoint, federation_config
from servers import LOOPBACK, ServerProcess, fedns_argv, fedns_env, free_port, start_fedns

from resolver import versions

ORIGIN = "versions.example.test."


def zone(addr: str, serial: int, ttl: int = 60) -> str:
    return (
        f"$ORIGIN {ORIGIN}\n$TTL {ttl}\n"
        f"@ IN SOA ns1 hostmaster {serial} 3600 600 86400 30\n"
        "  IN NS ns1\nns1 IN A 192.0.2.1\n"
        f"www IN A {addr}\n"
    )


TOKEN = "5f0c3a9e2b7d41c8a6e0f9b3d2c1a4e7"  # what `openssl rand -hex 16` prints


def www(sp: ServerProcess, tcp: bool = False) -> set[str]:
    q = dns.message.make_query(f"www.{ORIGIN}", "A")
    r = (dns.query.tcp if tcp else dns.query.udp)(q, sp.host, port=sp.port, timeout=2)
    return {rd.to_text() for rrset in r.answer for rd in rrset}


def every_worker_answers(sp: ServerProcess, addr: str) -> bool:
    # Fresh sockets (new source ports) spread over the SO_REUSEPORT group.
    return all(www(sp) == {addr} for _ in range(12)) and www(sp, tcp=True) == {addr}


def until(what: Callable[[], bool], within: float, why: Callable[[], str]) -> float:
    start = time.monotonic()
    while not what():
        if time.monotonic() - start > within:
            raise AssertionError(why())
        time.sleep(0.02)
    return time.monotonic() - start


def http(
    admin: tuple[str, int], path: str, method: str = "GET", token: str | None = None,
    body: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(f"http://{admin[0]}:{admin[1]}{path}", data=data, method=method)
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw, status, headers = r.read().decode(), r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, headers = e.read().decode(), e.code, dict(e.headers)
    try:
        return status, json.loads(raw), headers
    except ValueError:
        return status, raw, headers


def layout(tmp: Path, addr: str, serial: int, **top: Any) -> tuple[Path, Path]:
    """A config (state_dir, token, admin) and its zone file in ``tmp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "token").write_text(TOKEN + "\n")
    zf = tmp / "versions.zone"
    zf.write_text(zone(addr, serial))
    doc = {
        "zones": [{"origin": ORIGIN, "file": "versions.zone"}],
        "admin": {"token_file": "token"},
        "state_dir": "state",
        **top,
    }
    cfg = tmp / "fedns.yaml"
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    return cfg, zf


def serve(cfg: Path, tmp: Path, workers: int = 1) -> tuple[ServerProcess, tuple[str, int]]:
    admin = (LOOPBACK, free_port())
    sp = start_fedns(cfg, tmp, workers=workers, extra_args=("--admin", f"{admin[0]}:{admin[1]}"))

    def listening() -> bool:
        try:
            http(admin, "/healthz")
        except urllib.error.URLError:
            return False
        return True

    # With workers the DNS port answers before the control process's admin API is up.
    until(listening, 10, sp.output)
    return sp, admin


def history(admin: tuple[str, int], token: str | None = None) -> list[dict[str, Any]]:
    status, body, _ = http(admin, "/v1/config/history", token=token)
    assert status == 200 and isinstance(body, dict), body
    return list(body["versions"])


# -- the version itself ------------------------------------------------------------------------


def test_a_version_is_the_data_not_the_spelling(tmp_path: Path) -> None:
    cfg, zf = layout(tmp_path, "192.0.2.10", 1)
    _, v1 = versions.read_config(cfg)
    # The same data written differently: comments, flow style, key order, quoting, blank lines.
    cfg.write_text(
        "# production\n\nstate_dir: 'state'\nadmin:\n  token_file: \"token\"\n"
        f"zones:\n  - file: versions.zone   # the zone\n    origin: {ORIGIN}\n"
    )
    _, same = versions.read_config(cfg)
    assert same.version == v1.version
    zf.write_text(zone("192.0.2.11", 1))  # one byte of a named file
    _, other = versions.read_config(cfg)
    assert other.version != v1.version
    (tmp_path / "token").write_text("a-new-token-that-is-long-enough\n")
    assert versions.read_config(cfg)[1].version == other.version, "credentials are not the version"
    assert {f.role for f in other.files} == {"config", "zones[0]"}


# -- history, rollback, restart ----------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_change_rollback_and_history_across_a_restart(tmp_path: Path, workers: int) -> None:
    cfg, zf = layout(tmp_path, "192.0.2.10", 1)
    sp, admin = serve(cfg, tmp_path, workers)
    try:
        assert every_worker_answers(sp, "192.0.2.10")
        v1 = http(admin, "/v1/config")[1]
        assert isinstance(v1, dict) and v1["trigger"] == "start" and v1["kept"]

        zf.write_text(zone("192.0.2.20", 2))  # no SIGHUP: the file change reloads
        took = until(lambda: every_worker_answers(sp, "192.0.2.20"), 5, sp.output)
        assert took < 1.5, f"a zone file change took {took:.2f} s to answer"
        v2 = http(admin, "/v1/config")[1]
        assert isinstance(v2, dict) and v2["trigger"] == "file" and v2["version"] != v1["version"]
        assert [f["sha256"] for f in v2["files"] if f["role"] == "zones[0]"] == [
            versions._sha256_file(zf)[0]
        ]

        # The rollback CLI, with the token from a file.
        token_file = tmp_path / "token"
        out = subprocess.run(
            fedns_argv("rollback", "--server", f"http://{admin[0]}:{admin[1]}",
                       "--token-file", str(token_file)),
            env=fedns_env(), capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert v1["version"] in out.stdout
        until(lambda: every_worker_answers(sp, "192.0.2.10"), 5, sp.output)
        h = history(admin)
        assert [(e["trigger"], e["version"]) for e in h[:3]] == [
            ("rollback", v1["version"]), ("file", v2["version"]), ("start", v1["version"])
        ]
        assert all(e["outcome"] == "applied" for e in h[:3])
        # The operator's file still says v2: the rollback serves the kept copy.
        assert "192.0.2.20" in zf.read_text()
    finally:
        sp.stop()

    # A restart keeps the history (state_dir) and can roll forward to a kept version.
    sp, admin = serve(cfg, tmp_path, workers)
    try:
        h = history(admin)
        assert h[0]["trigger"] == "start" and h[0]["version"] == v2["version"]
        assert [e["trigger"] for e in h[1:4]] == ["rollback", "file", "start"]
        status, entry, _ = http(admin, f"/v1/config/rollback?to={v1['version'][:8]}", "POST", TOKEN)
        assert status == 200 and isinstance(entry, dict) and entry["version"] == v1["version"]
        until(lambda: every_worker_answers(sp, "192.0.2.10"), 5, sp.output)
        status, err, _ = http(admin, "/v1/config/rollback", "POST", TOKEN, {"to": "ffffffff"})
        assert status == 409 and isinstance(err, dict) and "is not a kept version" in err["error"]
        assert every_worker_answers(sp, "192.0.2.10"), "a refused rollback changes nothing"
    finally:
        sp.stop()
    kept = {p.name for p in (tmp_path / "state" / "versions").iterdir()}
    assert kept == {v1["version"], v2["version"]}
    assert TOKEN not in "".join(p.read_text(errors="replace") for p in (tmp_path / "state").rglob("*")
                                if p.is_file())


def test_history_is_bounded(tmp_path: Path) -> None:
    cfg, zf = layout(tmp_path, "192.0.2.1", 1, history_size=4)
    sp, admin = serve(cfg, tmp_path)
    try:
        for i in range(2, 8):
            zf.write_text(zone(f"192.0.2.{i}", i))
            until(lambda i=i: www(sp) == {f"192.0.2.{i}"}, 5, sp.output)  # type: ignore[misc]
        h = history(admin)
        assert len(h) == 4 and h[0]["outcome"] == "applied"
    finally:
        sp.stop()
    # Kept: the files of the applied versions still in the history, no others. (A write
    # seen half done is a failed attempt, in the history with nothing kept.)
    kept = {e["version"] for e in h if e["kept"]}
    assert {p.name for p in (tmp_path / "state" / "versions").iterdir()} == kept


# -- a ConfigMap volume --------------------------------------------------------------------


def plain(log: str) -> str:
    """The console log without its colours."""
    return re.sub(r"\x1b\[[0-9;]*m", "", log)


def _configmap_write(mount: Path, files: dict[str, str], n: int) -> None:
    """What the kubelet's atomic writer does on a ConfigMap update: a new timestamped
    directory, ``..data_tmp`` pointing at it renamed over ``..data``, the old one removed;
    the user-visible names are symlinks through ``..data`` and never change."""
    new = mount / f"..2026_12_02_00_00_{n:02d}.{n:09d}"
    new.mkdir()
    for name, text in files.items():
        (new / name).write_text(text)
    old = os.readlink(mount / "..data") if (mount / "..data").is_symlink() else None
    os.symlink(new.name, mount / "..data_tmp")
    os.rename(mount / "..data_tmp", mount / "..data")
    for name in files:
        if not (mount / name).is_symlink():
            os.symlink(f"..data/{name}", mount / name)
    if old is not None:
        for p in sorted((mount / old).iterdir()):
            p.unlink()
        (mount / old).rmdir()


def test_a_configmap_update_is_exactly_one_reload(tmp_path: Path) -> None:
    mount = tmp_path / "config"
    mount.mkdir()
    conf = yaml.safe_dump({"zones": [{"origin": ORIGIN, "file": "versions.zone"}]})
    _configmap_write(mount, {"fedns.yaml": conf, "versions.zone": zone("192.0.2.10", 1)}, 1)
    sp, _admin = serve(mount / "fedns.yaml", tmp_path)
    try:
        assert www(sp) == {"192.0.2.10"}
        _configmap_write(mount, {"fedns.yaml": conf, "versions.zone": zone("192.0.2.20", 2)}, 2)
        until(lambda: www(sp) == {"192.0.2.20"}, 5, sp.output)
        time.sleep(2.5)  # longer than the debounce: late events would reload again by now
        reloads = re.findall(r"\breloaded\b.*", plain(sp.output()))
        assert len(reloads) == 1 and "trigger=file" in reloads[0], sp.output()
        # The kubelet's periodic resync rewrites the same content: no reload at all.
        _configmap_write(mount, {"fedns.yaml": conf, "versions.zone": zone("192.0.2.20", 2)}, 3)
        time.sleep(2.0)
        assert len(re.findall(r"\breloaded\b", plain(sp.output()))) == 1
    finally:
        sp.stop()


# -- the admin API's token ----------------------------------------------------------------------


def test_writes_need_the_token(tmp_path: Path) -> None:
    cfg, _ = layout(tmp_path, "192.0.2.10", 1)
    sp, admin = serve(cfg, tmp_path)
    try:
        for path in ("/v1/config/rollback", "/v1/config/reload"):
            for token in (None, "wrong-" + TOKEN, TOKEN[:-1]):
                status, body, headers = http(admin, path, "POST", token)
                assert status == 401, (path, token, status, body)
                assert headers.get("WWW-Authenticate", "").startswith("Bearer")
        status, entry, _ = http(admin, "/v1/config/reload", "POST", TOKEN)
        assert status == 200 and isinstance(entry, dict) and entry["trigger"] == "api"
        # Reads stay open: kubelet probes and Prometheus send no token.
        for path in ("/healthz", "/readyz", "/metrics", "/v1/config", "/v1/config/history"):
            assert http(admin, path)[0] == 200, path
        # A rotated Secret: the new token works at once, the old one no more.
        (tmp_path / "token").write_text("rotated-" + TOKEN + "\n")
        assert http(admin, "/v1/config/reload", "POST", TOKEN)[0] == 401
        assert http(admin, "/v1/config/reload", "POST", "rotated-" + TOKEN)[0] == 200
    finally:
        sp.stop()


def test_auth_all_guards_reads_too(tmp_path: Path) -> None:
    cfg, _ = layout(tmp_path, "192.0.2.10", 1, admin={"token_file": "token", "auth": "all"})
    sp, admin = serve(cfg, tmp_path)
    try:
        for path in ("/healthz", "/readyz", "/metrics", "/v1/config", "/v1/config/history",
                     "/v1/registry", f"/v1/explain?name=www.{ORIGIN}"):
            assert http(admin, path)[0] == 401, path
            assert http(admin, path, token=TOKEN)[0] == 200, path
    finally:
        sp.stop()


def test_writes_are_off_without_a_token_file(tmp_path: Path) -> None:
    cfg, _ = layout(tmp_path, "192.0.2.10", 1, admin={})
    sp, admin = serve(cfg, tmp_path)
    try:
        status, body, _ = http(admin, "/v1/config/rollback", "POST", TOKEN)
        assert status == 403 and isinstance(body, dict) and "admin.token_file" in body["error"]
    finally:
        sp.stop()


@pytest.mark.parametrize(
    ("admin", "token", "message"),
    [
        ("0.0.0.0:{port}", None, "is reachable from other hosts and admin.token_file is not set"),
        ("[::]:{port}", None, "is reachable from other hosts and admin.token_file is not set"),
        ("127.0.0.1:{port}", "", "holds no token"),
        ("127.0.0.1:{port}", "short", "holds a short token"),
    ],
)
def test_serve_refuses_an_unguarded_admin(
    tmp_path: Path, admin: str, token: str | None, message: str
) -> None:
    cfg, _ = layout(tmp_path, "192.0.2.10", 1, admin={} if token is None else {"token_file": "t"})
    if token is not None:
        (tmp_path / "t").write_text(token)
    out = subprocess.run(
        fedns_argv("serve", "-c", str(cfg), "--dns", f"127.0.0.1:{free_port()}",
                   "--admin", admin.format(port=free_port())),
        env=fedns_env(), capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_no_secret_reaches_a_log(tmp_path: Path) -> None:
    """A run with a token and a kubeconfig holding credentials, wrong tokens sent,
    reloads and a rollback: no log line, history or kept file holds a secret."""
    kube_token = "kube-bearer-" + "c0ffee" * 8
    with ThreadedFakeKubes(["east"]) as fakes:
        fakes.call(fakes["east"].put_service, "shop", "cart")
        fakes.call(fakes["east"].put_slice, "shop", "cart-a", "cart", [endpoint("127.1.0.1")])
        fed = federation_config(fakes.kubes, tmp_path)
        kc = tmp_path / "clusters.kubeconfig"
        doc = yaml.safe_load(kc.read_text())
        for u in doc["users"]:
            u["user"] = {"token": kube_token}
        kc.write_text(yaml.safe_dump(doc))
        zone_text = zone("192.0.2.10", 1).replace(ORIGIN, "global.example.test.")
        (tmp_path / "g.zone").write_text(zone_text)
        (tmp_path / "token").write_text(TOKEN)
        cfg = tmp_path / "fedns.yaml"
        cfg.write_text(yaml.safe_dump({
            "zones": [{"origin": "global.example.test.", "file": "g.zone"}],
            "federation": fed, "admin": {"token_file": "token"}, "state_dir": "state",
            "log": {"level": "debug"},
        }))
        sp, admin = serve(cfg, tmp_path, workers=2)
        try:
            for token in ("nope", TOKEN + "x", None):
                assert http(admin, "/v1/config/reload", "POST", token)[0] == 401
            assert http(admin, "/v1/config/reload", "POST", TOKEN)[0] == 200
            (tmp_path / "g.zone").write_text(zone_text.replace(" 1 3600", " 2 3600"))
            until(lambda: len(history(admin)) >= 3, 5, sp.output)
            assert http(admin, "/v1/config/rollback", "POST", TOKEN)[0] == 200
            for path in ("/v1/config", "/v1/config/history", "/v1/clusters", "/v1/registry",
                         "/metrics"):
                status, body, _ = http(admin, path)
                assert status == 200 and TOKEN not in str(body) and kube_token not in str(body)
        finally:
            sp.stop()
    logs = sp.output()
    assert "reloaded" in logs and "admin_unauthorized" in logs  # the run did log those events
    for secret in (TOKEN, kube_token, TOKEN + "x"):
        assert secret not in logs, f"a secret is in the log: {secret[:6]}..."
        for p in (tmp_path / "state").rglob("*"):
            assert not p.is_file() or secret not in p.read_text(errors="replace"), p
