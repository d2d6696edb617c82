"""Where a client is: from its ECS option or source address to a routing Client.

The glue between the wire (ECS, the packet's source) and routing
(``policy.Client``). ``locality.LocalityMap.place`` does the placing (privacy
clamp, RFC 7871 opt-out and private-address rules, memoized); this module adds
what routing needs and works without any locality map at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..dns.ecs import PRIVACY_PREFIX, ClientSubnet, clamp, mask
from .locality import LocalityMap, Placement, RegionGraph, parse_host, subnet_key
from .policy import Client

_UNKNOWN = Client(None, None, b"")


class Locator:
    """Places clients against a locality map (``None``: every client is unplaced)."""

    def __init__(self, localities: LocalityMap | None = None, regions: RegionGraph | None = None) -> None:
        self.localities = localities
        self.regions = regions
        self._clients: dict[int, Client] = {}

    def region_order(self, region: str | None) -> Sequence[str]:
        return self.regions.order(region) if self.regions is not None else ()

    def client(self, subnet: ClientSubnet | None, addr: Any) -> tuple[Client, Placement | None]:
        """The routing view of the client, and its placement (None without a map)."""
        lm = self.localities
        if lm is None:
            return _plain_client(subnet, addr), None
        p = lm.place(subnet, addr)
        c = self._clients.get(id(p))
        if c is None or c.subnet != p.subnet_key:
            c = Client(p.match.region, p.match.zone, p.subnet_key)
            if len(self._clients) > 65536:
                self._clients.clear()
            self._clients[id(p)] = c
        return c, p

    @staticmethod
    def source_free(subnet: ClientSubnet, placement: Placement | None) -> bool:
        """Whether ``client(subnet, addr)`` is the same for every ``addr``: an
        ECS subnet placed by its own address (not SOURCE 0, which opts out, nor
        an unmapped private address, both placed by the packet's source)."""
        return subnet.source > 0 and (placement is None or placement.basis == "ecs")

    def describe(self, subnet: ClientSubnet | None, addr: Any) -> dict[str, Any]:
        """The locality rule a client matched, for the explain API."""
        client, p = self.client(subnet, addr)
        out: dict[str, Any] = {"region": client.region, "zone": client.zone}
        if p is not None and self.localities is not None:
            out.update(p.explain())
            out["rule"] = self.localities.describe(p.subnet_key).get("rule")
        return out


def _plain_client(subnet: ClientSubnet | None, addr: Any) -> Client:
    """No locality map: only the subnet matters (for weighted stickiness)."""
    if subnet is not None and subnet.source:
        value, bits = clamp(subnet.family, subnet.network_int, subnet.source)
        return Client(None, None, subnet_key(subnet.family, bits, value))
    host = addr[0] if isinstance(addr, tuple) else addr
    parsed = parse_host(host) if isinstance(host, str) else None
    if parsed is None:
        return _UNKNOWN
    fam, value = parsed
    bits = PRIVACY_PREFIX[fam]
    return Client(None, None, subnet_key(fam, bits, mask(fam, value, bits)))
