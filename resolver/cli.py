"""The ``fedns`` command: serve, check, explain, diff, rollback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from . import __version__, logs
from .config import DEMO_CONFIG, ConfigError, load_config, parse_admin, parse_hostport
from .dns.zone import ZoneError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedns", description=__doc__)
    p.add_argument("--version", action="version", version=f"fedns {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve DNS (the demo zone when no -c is given)")
    s.add_argument("-c", "--config", type=Path, help=f"YAML config (default: {DEMO_CONFIG.name})")
    s.add_argument("--dns", help="ADDR:PORT for UDP and TCP (overrides dns.listen)")
    s.add_argument("--workers", type=int, help="serving processes sharing the port (SO_REUSEPORT)")
    s.add_argument(
        "--admin",
        help="admin HTTP API ADDR:PORT; PORT or :PORT alone binds loopback (127.0.0.1:PORT), "
        "other addresses only when given, e.g. 0.0.0.0:8053 (overrides admin.listen)",
    )
    s.add_argument("--log-format", choices=["json", "console"], default="json")
    c = sub.add_parser("check", help="validate a config and its zones, print a summary")
    c.add_argument("-c", "--config", type=Path, required=True)
    e = sub.add_parser("explain", help="why a name answers as it does for a client")
    e.add_argument("name")
    e.add_argument(
        "--type", default="A", help="record type: a mnemonic, TYPEnnn or a number (default A)"
    )
    e.add_argument("--subnet", help="client subnet as a resolver would send it in ECS, e.g. 10.1.2.0/24")
    e.add_argument(
        "--source",
        help="the asking resolver's address, placing the client when there is no ECS "
        "(e.g. a CoreDNS pod's address), e.g. 10.244.1.7",
    )
    e.add_argument("--server", help="admin URL of a running fedns, e.g. http://127.0.0.1:8053")
    e.add_argument("-c", "--config", type=Path, help="without --server: load this config locally")
    e.add_argument("--json", action="store_true", help="print the raw JSON")
    d = sub.add_parser(
        "diff",
        help="which answers a config change moves, per client locality, and why "
        "(exit 0: none, 1: some, 2: error)",
    )
    d.add_argument("old", type=Path, metavar="OLD.yaml", help="the config now (e.g. the one serving)")
    d.add_argument("new", type=Path, metavar="NEW.yaml", help="the config to compare it with")
    d.add_argument(
        "--subnets", type=Path, metavar="FILE",
        help="client subnets to ask for too: one CIDR or address a line, # comments",
    )
    d.add_argument(
        "--server", metavar="ADMIN_URL",
        help="admin URL of a running fedns: its clusters' services stand for the watched "
        "clusters of both configs, e.g. http://127.0.0.1:8053",
    )
    d.add_argument("--json", action="store_true", help="JSON for CI instead of text")
    r = sub.add_parser("rollback", help="re-apply an earlier config version on a running fedns")
    r.add_argument("--server", required=True, help="admin URL, e.g. http://127.0.0.1:8053")
    r.add_argument("--to", help="the version (from GET /v1/config/history; default: the one "
                   "before the current one)")
    r.add_argument("--token-file", type=Path,
                   help="file holding the admin token (default: $FEDNS_ADMIN_TOKEN)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "check":
            return _check(args.config)
        if args.cmd == "explain":
            return _explain(args)
        if args.cmd == "diff":
            return _diff(args)
        if args.cmd == "rollback":
            return _rollback(args)
        return _serve(args)
    except BrokenPipeError:  # `fedns explain ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _explain(args: argparse.Namespace) -> int:
    import json

    logs.setup("warning", json=False)  # stdout is the answer; keep logs out of it

    if args.server:
        import urllib.error
        import urllib.parse
        import urllib.request

        q = {"name": args.name, "type": args.type}
        if args.subnet:
            q["subnet"] = args.subnet
        if args.source:
            q["source"] = args.source
        url = args.server.rstrip("/") + "/v1/explain?" + urllib.parse.urlencode(q)
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                data = json.load(r)
        except urllib.error.HTTPError as err:
            body = err.read().decode(errors="replace")
            try:
                why = json.loads(body).get("error", body)
            except (ValueError, AttributeError):
                why = body.strip() or str(err)  # not fedns's JSON (a proxy, or aiohttp's 400)
            print(f"fedns explain: HTTP {err.code}: {why}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError) as err:
            print(f"fedns explain: cannot reach {args.server}: {err}; is fedns running with --admin?",
                  file=sys.stderr)
            return 1
    else:
        from .app import explain_locally
        from .federation.explain import ExplainError

        try:
            data = explain_locally(
                load_config(args.config), args.name, args.type, args.subnet, args.source
            )
        except (ConfigError, ZoneError, ExplainError) as err:
            print(f"fedns explain: {err}", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(render_explain(data))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    token = os.environ.get("FEDNS_ADMIN_TOKEN", "")
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as e:
            print(f"fedns rollback: cannot read {args.token_file}: {e.strerror}", file=sys.stderr)
            return 2
    url = args.server.rstrip("/") + "/v1/config/rollback"
    body = json.dumps({"to": args.to} if args.to else {}).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            d = json.load(resp)
    except urllib.error.HTTPError as err:
        raw = err.read().decode(errors="replace")
        try:
            d = json.loads(raw)
        except ValueError:
            d = {"error": raw.strip() or str(err)}
        if err.code == 422:  # the version was tried and failed to load: its entry says why
            print(f"fedns rollback: version {d.get('version')} failed: {d.get('error')}",
                  file=sys.stderr)
        else:
            hint = " (give --token-file or set FEDNS_ADMIN_TOKEN)" if err.code == 401 else ""
            print(f"fedns rollback: HTTP {err.code}: {d.get('error', d)}{hint}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as err:
        print(f"fedns rollback: cannot reach {args.server}: {err}; is fedns running with --admin?",
              file=sys.stderr)
        return 2
    print(f"rolled back to {d['version']} at {d['time']} (files kept in state_dir: {d['kept']})")
    for f in d.get("files", []):
        print(f"  {f['role']}: {f['path']} sha256:{f['sha256'][:16]}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    """``fedns diff OLD NEW``: both configs loaded whole, as ``check`` does; the
    comparison itself is ``resolver.diff``'s."""
    import json
    import urllib.error
    import urllib.request

    from . import diff
    from .app import load_instance

    logs.setup("warning", json=False)  # stdout is the diff; keep logs out of it
    try:
        old = load_instance(load_config(args.old))
        new = load_instance(load_config(args.new))
        subnets: list[diff.Bucket] = []
        if args.subnets is not None:
            try:
                text = args.subnets.read_text()
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"{args.subnets}: cannot read: {e}") from None
            subnets = diff.parse_subnets(text, str(args.subnets))
        snapshot = None
        if args.server:
            url = args.server.rstrip("/") + "/v1/registry/snapshot"
            req = urllib.request.Request(url)
            token = os.environ.get("FEDNS_ADMIN_TOKEN")
            if token:  # admin.auth: all guards reads too
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    snapshot = json.load(r)
            except urllib.error.HTTPError as err:
                print(f"fedns diff: {url}: HTTP {err.code}: "
                      f"{err.read().decode(errors='replace').strip()[:300]}", file=sys.stderr)
                return 2
            except (urllib.error.URLError, OSError, ValueError) as err:
                print(f"fedns diff: cannot read {url}: {err}; is fedns running with --admin?",
                      file=sys.stderr)
                return 2
            if not isinstance(snapshot, dict) or not isinstance(snapshot.get("services"), list):
                print(f"fedns diff: {url} gave no registry snapshot (a fedns without "
                      "GET /v1/registry/snapshot?)", file=sys.stderr)
                return 2
        report = diff.compare(old, new, subnets, snapshot, (str(args.old), str(args.new)),
                              args.server)
    except (ConfigError, ZoneError) as e:
        print(f"fedns diff: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(diff.render_text(report))
    return 1 if report.changed else 0


def render_explain(d: dict[str, Any]) -> str:
    import time

    def _ago(t: float | None) -> str:
        """A unix time as explain shows it: how long ago (or from now)."""
        if not t:
            return "-"
        delta = time.time() - t
        return f"{delta:.1f} s ago" if delta >= 0 else f"in {-delta:.1f} s"

    out = [f"{d['name']} {d['type']}: {d.get('source')}"]
    c = d.get("client") or {}
    out.append(f"client: from {c.get('from')} subnet={c.get('subnet')} region={c.get('region')} zone={c.get('zone')}")
    loc = d.get("locality")
    if loc:
        out.append(f"locality: rule={loc.get('rule')} block={loc.get('same_locality_block')} {loc.get('note') or ''}".rstrip())
    if "policy" in d:
        p = d["policy"]
        out.append(f"policy: {p['kind']} ttl={p['ttl']} max_answers={p['max_answers']} fail_open={p['fail_open']}")
    t = d.get("ttl_now")
    if t:
        when = (f"answer changed {_ago(t['answer_changed'])}, until {_ago(t['unstable_until'])}"
                if t["unstable"] else "stable")
        pol = d.get("policy") or {}
        out.append(f"ttl: {t['served']} ({when}; ttl_unstable={pol.get('ttl_unstable')} "
                   f"flap_window={pol.get('flap_window')})")
    pr = d.get("probe")
    if pr:
        spec = pr.get("settings")
        what = "off" if spec is None else " ".join(
            f"{k}={v}" for k, v in spec.items() if v not in (None, "")
        )
        out.append(f"probe: {what} (from {pr['source']}{': ' + pr['key'] if pr.get('key') else ''})")
    for problem in d.get("problems", []):
        out.append(f"problem: {problem}")
    for cand in d.get("candidates", []):
        mark = "*" if cand["chosen"] else " "
        out.append(
            f" {mark} {cand['cluster']}/{cand['endpoint']} {','.join(cand['addresses'])} "
            f"[{cand['region']}/{cand['zone']}] {cand['health']}"
        )
        for i in cand.get("inputs", []):
            since = f" since {_ago(i['since'])}" if i.get("since") else ""
            out.append(f"      {i['input']}: {i['value']}{since} ({i['reason']})")
    for step in d.get("steps", []):
        out.append(f"  - {step}")
    out.append(f"scope: {d.get('scope')} (depends on {d.get('depends_on')})")
    out.append(f"rcode: {d.get('rcode')} aa={d.get('aa')} ttl={d.get('ttl')}")
    out.extend(f"  {rr}" for rr in d.get("answer", []))
    out.extend(f"  {rr}" for rr in d.get("authority", []))
    return "\n".join(out)


def _check(path: Path) -> int:
    from .app import load_instance

    try:
        cfg = load_config(path)
        inst = load_instance(cfg)
    except (ConfigError, ZoneError) as e:
        print(f"fedns check: {e}", file=sys.stderr)
        return 1
    table = inst.table
    from .versions import read_config

    print(f"config {path}: ok (version {read_config(path)[1].version})")
    fed = inst.fed
    if fed is not None:
        kube = sum(1 for c in fed.clusters if c.source == "kubernetes")
        lm = inst.routing.locator.localities
        print(
            f"  federation under {fed.zone}: {len(fed.clusters)} clusters ({kube} watched, "
            f"{len(fed.clusters) - kube} static), {len(fed.services)} static services, "
            f"{len(lm.rules) if lm is not None else 0} locality rules, "
            f"default policy {inst.routing.defaults.kind}"
        )
    for z in table.zones.values():
        rrsets = sum(len(t) for t in z.data.values())
        print(
            f"  zone {z.origin}: {len(z.data)} names, {rrsets} RRsets, "
            f"{len(z.cuts)} delegations, serial {z.soa.rdatas[0].times[0]}"
        )
    if fed is not None:
        for warning in _credential_warnings(fed):
            print(f"  warning: {warning}")
    return 0


def _credential_warnings(fed: Any) -> list[str]:
    """Kubeconfigs the watch could not load, read by the loader ``serve`` uses.

    Warnings, not errors: the config may be checked away from where it runs
    (a chart's Secrets exist only in the pod). ``serve`` would log the same
    error, retry, and leave the cluster unsynced."""
    import asyncio

    from .federation.sources.kubernetes import KubernetesSource

    out: list[str] = []
    for c in fed.clusters:
        if c.kubeconfig is None:  # static, or in_cluster: only the pod has its credentials
            continue
        if not c.kubeconfig.is_file():
            out.append(
                f"cluster {c.name}: kubeconfig {c.kubeconfig} not found; "
                "serve would retry and leave the cluster unsynced"
            )
            continue
        try:
            # Bounded: exec and OIDC auth plugins may do network I/O or wait for a person.
            asyncio.run(
                asyncio.wait_for(KubernetesSource(c, fed.export).load_configuration(), 10)
            )
        except TimeoutError:
            out.append(f"cluster {c.name}: loading {c.kubeconfig} took over 10 s (an auth plugin?)")
        except Exception as e:
            out.append(
                f"cluster {c.name}: cannot load {c.kubeconfig}"
                f"{f' (context {c.context})' if c.context else ''}: {type(e).__name__}: {e}; "
                "serve would retry and leave the cluster unsynced"
            )
    return out


def _serve(args: argparse.Namespace) -> int:
    from .app import serve

    try:
        cfg = load_config(args.config)
        host, port = cfg.listen
        if args.dns:
            host, port = parse_hostport(args.dns, "--dns", 53)
        workers = args.workers if args.workers is not None else cfg.workers
        if workers < 1:
            raise ConfigError("--workers: must be at least 1")
        admin = cfg.admin
        if args.admin:
            admin = parse_admin(args.admin, "--admin")
        logs.setup(cfg.log_level, json=args.log_format == "json")
        return serve(cfg, host, port, workers, admin)
    except (ConfigError, ZoneError) as e:
        print(f"fedns: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"fedns: cannot listen: {e}; pick another --dns ADDR:PORT", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
