"""What a zone file says, read by dnspython: the independent source of expected data."""

from __future__ import annotations

from pathlib import Path

import dns.name
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.zone


class Oracle:
    """A zone file as dnspython loads it (not as fedns does)."""

    def __init__(self, path: Path, origin: str) -> None:
        self.origin = dns.name.from_text(origin)
        self.zone = dns.zone.from_file(str(path), origin=origin, relativize=False)

    def name(self, rel: str) -> dns.name.Name:
        return self.origin if rel == "@" else dns.name.from_text(rel, self.origin)

    def rdataset(
        self, owner: dns.name.Name | str, rdtype: str | int
    ) -> dns.rdataset.Rdataset | None:
        if isinstance(owner, str):
            owner = self.name(owner)
        node = self.zone.get_node(owner)
        if node is None:
            return None
        return node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype))

    def exists(self, owner: dns.name.Name) -> bool:
        return self.zone.get_node(owner) is not None

    def soa(self) -> dns.rdataset.Rdataset:
        rds = self.rdataset(self.origin, "SOA")
        assert rds is not None
        return rds

    def negative_ttl(self) -> int:
        """RFC 2308 section 3: min(SOA TTL, SOA MINIMUM)."""
        soa = self.soa()
        return min(soa.ttl, soa[0].minimum)
