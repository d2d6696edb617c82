"""EDNS Client Subnet (RFC 7871): parse and validate the option, build the echo."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .wire import OPT_ECS, FormErr

MAX_SOURCE = {1: 32, 2: 128}
PRIVACY_PREFIX = {1: 24, 2: 56}  # never use more of a client address than this


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    family: int  # 1 = IPv4, 2 = IPv6
    source: int  # SOURCE PREFIX-LENGTH as sent
    addr_bytes: bytes  # ADDRESS as sent (ceil(source / 8) bytes)
    network_int: int  # the address as an integer, full family width


def parse_ecs(data: bytes) -> ClientSubnet:
    """Validate an ECS option from a query. Raises FormErr (RFC 7871 7.1.2)."""
    if len(data) < 4:
        raise FormErr("ECS option shorter than 4 bytes")
    family = (data[0] << 8) | data[1]
    source, scope = data[2], data[3]
    width = MAX_SOURCE.get(family)
    if width is None:
        raise FormErr(f"ECS family {family} is not 1 (IPv4) or 2 (IPv6)")
    if source > width:
        raise FormErr(f"ECS source prefix {source} is longer than {width}")
    if scope != 0:
        raise FormErr("ECS scope prefix must be 0 in a query")
    addr = data[4:]
    if len(addr) != (source + 7) // 8:
        raise FormErr(f"ECS address has {len(addr)} bytes; source /{source} needs {(source + 7) // 8}")
    value = int.from_bytes(addr, "big") << (width - 8 * len(addr)) if addr else 0
    if value & ((1 << (width - source)) - 1):
        raise FormErr("ECS address has bits set beyond the source prefix")
    return ClientSubnet(family, source, bytes(addr), value)


def ecs_option(family: int, source: int, scope: int, addr_bytes: bytes) -> bytes:
    """The ECS option for a reply: FAMILY, SOURCE and ADDRESS echoed, our SCOPE."""
    return struct.pack(">HHHBB", OPT_ECS, 4 + len(addr_bytes), family, source, scope) + addr_bytes
