"""Where a client is: from its ECS option or source address to a routing Client.

The glue between the wire (ECS, the packet's source) and routing (``policy.Client``):
the locality map gives (region, zone) and the prefix the answer depends on,
which becomes the ECS SCOPE of the reply.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from .ecs import PRIVACY_PREFIX, ClientSubnet
from .policy import Client

_UNKNOWN = Client(None, None, b"")


class Locator:
    """Resolves clients against a locality map (``None``: every client is unplaced)."""

    def __init__(self, localities: Any = None, regions: Any = None) -> None:
        self.localities = localities
        self.regions = regions

    def region_order(self, region: str | None) -> Sequence[str]:
        if self.regions is None:
            return ()
        return self.regions.order(region)  # type: ignore[no-any-return]

    def client(self, subnet: ClientSubnet | None, addr: Any) -> tuple[Client, int, int]:
        """(client, scope for locality answers, scope for per-subnet answers)."""
        if subnet is not None and subnet.source > 0:
            family, value = subnet.family, subnet.network_int
            bits = min(subnet.source, PRIVACY_PREFIX[family])
        else:
            # SOURCE PREFIX 0 (RFC 7871 7.1.2): the client opted out; route on
            # the packet's source, and the reply's scope is 0 for such queries.
            if addr is None:
                return _UNKNOWN, 0, 0
            try:
                ip = ipaddress.ip_address(addr[0] if isinstance(addr, tuple) else addr)
            except ValueError:
                return _UNKNOWN, 0, 0
            family = 1 if ip.version == 4 else 2
            value = int(ip)
            bits = PRIVACY_PREFIX[family]
        width = 32 if family == 1 else 128
        value &= ~((1 << (width - bits)) - 1) & ((1 << width) - 1)
        subnet_key = bytes((family, bits)) + value.to_bytes(width // 8, "big")
        if self.localities is None:
            return Client(None, None, subnet_key), 0, bits
        m = self.localities.lookup(family, value, bits)
        if subnet is not None and subnet.source == 0:
            return Client(m.region, m.zone, subnet_key), 0, 0
        return Client(m.region, m.zone, subnet_key), m.prefix_len, bits

    def describe(self, subnet: ClientSubnet | None, addr: Any) -> dict[str, Any]:
        """The locality rule a client matched, for the explain API."""
        client, scope, _bits = self.client(subnet, addr)
        out: dict[str, Any] = {"region": client.region, "zone": client.zone, "scope": scope}
        if self.localities is not None and hasattr(self.localities, "describe"):
            out["rule"] = self.localities.describe(client.subnet)
        return out
