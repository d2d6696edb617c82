"""The ``fedns`` command: serve, check."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__, logs
from .config import DEMO_CONFIG, ConfigError, load_config, parse_hostport
from .zone import ZoneError


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
        help="admin HTTP API ADDR:PORT, or PORT for 127.0.0.1:PORT (overrides admin.listen)",
    )
    s.add_argument("--log-format", choices=["json", "console"], default="json")
    c = sub.add_parser("check", help="validate a config and its zones, print a summary")
    c.add_argument("-c", "--config", type=Path, required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "check":
        return _check(args.config)
    return _serve(args)


def _check(path: Path) -> int:
    from .server import build_table

    try:
        cfg = load_config(path)
        table = build_table(cfg)
    except (ConfigError, ZoneError) as e:
        print(f"fedns check: {e}", file=sys.stderr)
        return 1
    print(f"config {path}: ok")
    for z in table.zones.values():
        rrsets = sum(len(t) for t in z.data.values())
        print(
            f"  zone {z.origin}: {len(z.data)} names, {rrsets} RRsets, "
            f"{len(z.cuts)} delegations, serial {z.soa.rdatas[0].times[0]}"
        )
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .server import serve

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
            text = args.admin if ":" in args.admin else f"127.0.0.1:{args.admin}"
            admin = parse_hostport(text, "--admin")
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
