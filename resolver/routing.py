"""The routing part of ``federation:``: policy defaults, per-service policies, localities.

::

    federation:
      defaults: {policy: locality, ttl: 10, max_answers: 8, min_healthy_fraction: 0.0, fail_open: true}
      policies:
        shop/cart: {policy: failover, failover: [east, west]}
        shop/ads: {policy: weighted, weights: {east: 3, west: 1}}
      localities: [{cidr: 10.1.0.0/16, region: us-east, zone: us-east-1a}, ...]
      regions: [{name: us-east, lat: 39.0, lon: -77.5, prefer: [us-west]}, ...]
      health: {probe: tcp, port: 443, interval: 0.5, timeout: 0.4, rise: 2, fall: 2}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError
from .health import ProbeSpec, parse_probe
from .locator import Locator
from .policy import Policy, policy_fields, with_fields

DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Routing:
    defaults: Policy = DEFAULT_POLICY
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    locator: Locator = field(default_factory=Locator)
    probe: ProbeSpec | None = None  # default active probe for every federated service


def parse_routing(routing: Any, path: Path | None) -> Routing:
    where = f"{path}: " if path else ""
    raw = dict(routing or {})
    try:
        defaults = with_fields(DEFAULT_POLICY, policy_fields(raw.get("defaults") or {}, "federation.defaults"))
        overrides: dict[str, dict[str, Any]] = {}
        pol = raw.get("policies") or {}
        if not isinstance(pol, dict):
            raise ValueError("federation.policies: expected a mapping of 'namespace/name' to settings")
        for svc, settings in pol.items():
            if not isinstance(svc, str) or svc.count("/") != 1:
                raise ValueError(f"federation.policies.{svc}: key must be 'namespace/name'")
            overrides[svc.lower()] = policy_fields(settings, f"federation.policies.{svc}")
        probe = parse_probe(raw.get("health"), "federation.health")
    except ValueError as e:
        raise ConfigError(f"{where}{e}") from None
    return Routing(defaults, overrides, build_locator(raw, path), probe)


def build_locator(raw: dict[str, Any], path: Path | None) -> Locator:
    if not any(k in raw for k in ("localities", "regions", "mmdb")):
        return Locator()
    from . import locality

    regions = locality.parse_regions(raw, path)
    lmap = locality.parse_localities(raw, path, regions)
    return Locator(lmap, regions)
