"""EDNS Client Subnet (RFC 7871): validate the option, clamp it, build the echo.

Pure functions on bytes; ``parse_ecs`` runs for every query that carries the
option, so valid options are memoized by their bytes (resolvers repeat the
same few subnets) and the per-query cost is one dict lookup.

Decisions, with gdnsd 3 as the bar (its ``handle_edns_client_subnet``, and
the behaviour of the Debian gdnsd 3.8 binary, which ``tests/refservers.py``
can start):

* FORMERR (RFC 7871 6 and 7.2.1) for: an option shorter than 4 bytes; a
  FAMILY other than 1 (IPv4) or 2 (IPv6) -- also FAMILY 0, which RFC 7871
  7.1.2 lets a stub send to its *recursive* resolver; no resolver forwards it
  to an authoritative server and gdnsd 3 rejects it too; a non-zero SCOPE
  PREFIX-LENGTH in the query; a SOURCE PREFIX-LENGTH longer than the family
  (32/128); ADDRESS not exactly ceil(SOURCE/8) bytes (too few, or an extra
  byte); ADDRESS bits set beyond SOURCE. The checks run in gdnsd's order, so
  a packet with several faults is reported for the same one.
* SOURCE PREFIX-LENGTH 0 is valid: the client opts out of ECS. RFC 7871 7.1.2
  says the server then uses the address it sees (the resolver's) "in lieu of
  an option", and the reply carries SCOPE 0 so that the answer is cached like
  one without ECS. gdnsd does exactly that (lookup on the packet's source,
  scope 0); so does ``locality.LocalityMap.place``.
* Privacy (RFC 7871 11.1): never more than /24 of IPv4 or /56 of IPv6 is
  used for a lookup, whatever SOURCE says; ``clamp`` masks the rest.
* Private and special-purpose addresses (RFC 7871 10): see ``special_block``
  and ``locality.LocalityMap.place``. An ECS ADDRESS in RFC 1918 / RFC 4193
  space (and loopback, link-local, CGN shared space, "this network") says
  nothing about where the client is, *unless the operator mapped that space*:
  fedns is often authoritative for private networks, where 10.1.0.0/16 is a
  real place. So a private ADDRESS is used when a locality rule lying inside
  that private block matches it; otherwise fedns does what RFC 7871 10 says
  an authoritative server SHOULD do: ignore ADDRESS, place the client by the
  packet's source (the resolver), and return a SCOPE that covers the whole
  private block (10.1.2.0/24 -> scope 8), narrowed only where mapped rules
  inside the block would otherwise be covered too. Documentation ranges
  (192.0.2.0/24, 2001:db8::/32, ...) are *not* special here: examples and
  tests use them as stand-ins for public addresses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .wire import OPT_ECS, FormErr

FAMILY_IPV4, FAMILY_IPV6 = 1, 2
MAX_SOURCE = {FAMILY_IPV4: 32, FAMILY_IPV6: 128}
PRIVACY_PREFIX = {FAMILY_IPV4: 24, FAMILY_IPV6: 56}  # never use more of a client address

_MEMO: dict[bytes, ClientSubnet] = {}
_MEMO_MAX = 1 << 16  # distinct valid options remembered; cleared whole when full


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """A validated ECS option from a query."""

    family: int  # 1 = IPv4, 2 = IPv6
    source: int  # SOURCE PREFIX-LENGTH as sent
    addr_bytes: bytes  # ADDRESS as sent (ceil(source / 8) bytes): echoed in the reply
    network_int: int  # the address as an integer of the family's full width
    # The option data as received: a cheap, hash-cached key for per-subnet memos.
    raw: bytes = field(default=b"", compare=False, repr=False)


def parse_ecs(data: bytes) -> ClientSubnet:
    """Validate the data of an ECS option from a query; raises ``wire.FormErr``."""
    hit = _MEMO.get(data)
    if hit is not None:
        return hit
    cs = _parse(data)
    if len(_MEMO) >= _MEMO_MAX:
        _MEMO.clear()
    _MEMO[cs.raw] = cs
    return cs


def _parse(data: bytes) -> ClientSubnet:
    n = len(data)
    if n < 4:
        raise FormErr(f"ECS option is {n} bytes; it needs at least 4 (FAMILY, SOURCE, SCOPE)")
    family = (data[0] << 8) | data[1]
    source, scope = data[2], data[3]
    if scope:
        raise FormErr(f"ECS SCOPE PREFIX-LENGTH is {scope} in a query; it must be 0")
    width = MAX_SOURCE.get(family)
    if width is None:
        raise FormErr(f"ECS FAMILY {family} is not 1 (IPv4) or 2 (IPv6)")
    if source > width:
        raise FormErr(f"ECS SOURCE PREFIX-LENGTH {source} is longer than {width}")
    need = (source + 7) >> 3
    if n - 4 != need:
        raise FormErr(f"ECS ADDRESS is {n - 4} bytes; SOURCE /{source} needs exactly {need}")
    raw = bytes(data)
    addr = raw[4:]
    value = int.from_bytes(addr, "big") if need else 0
    if value & ((1 << (need * 8 - source)) - 1):
        raise FormErr(f"ECS ADDRESS has bits set beyond SOURCE PREFIX-LENGTH /{source}")
    return ClientSubnet(family, source, addr, value << (width - need * 8), raw)


def ecs_option(family: int, source: int, scope: int, addr_bytes: bytes) -> bytes:
    """The whole ECS option (code, length, data) for a reply: FAMILY, SOURCE and
    ADDRESS echoed as the query sent them (RFC 7871 7.2.1), SCOPE ours."""
    return struct.pack(">HHHBB", OPT_ECS, 4 + len(addr_bytes), family, source, scope) + addr_bytes


_REPLY: dict[tuple[bytes, int], bytes] = {}


def reply_option(cs: ClientSubnet, scope: int) -> bytes:
    """The reply's ECS option for a query's subnet and our scope: the one builder
    of the echo (``answers.Table``, both paths), memoized by the option's bytes."""
    if not cs.raw:  # not from parse_ecs (no bytes to key on): build it
        return ecs_option(cs.family, cs.source, scope, cs.addr_bytes)
    key = (cs.raw, scope)
    hit = _REPLY.get(key)
    if hit is None:
        hit = ecs_option(cs.family, cs.source, scope, cs.addr_bytes)
        if len(_REPLY) >= _MEMO_MAX:
            _REPLY.clear()
        _REPLY[key] = hit
    return hit


def mask(family: int, value: int, bits: int) -> int:
    """``value`` with every bit after the first ``bits`` cleared."""
    width = MAX_SOURCE[family]
    return (value >> (width - bits)) << (width - bits) if bits else 0


def clamp(family: int, value: int, bits: int) -> tuple[int, int]:
    """(masked value, bits used): at most /24 of IPv4 and /56 of IPv6 (RFC 7871 11.1)."""
    b = min(bits, PRIVACY_PREFIX[family])
    return mask(family, value, b), b


def _net(text: str) -> tuple[int, int, int, str]:
    import ipaddress

    n = ipaddress.ip_network(text)
    fam = FAMILY_IPV4 if n.version == 4 else FAMILY_IPV6
    return fam, int(n.network_address), n.prefixlen, text


# Address space that cannot say where a client is on the public Internet
# (RFC 7871 10 names RFC 1918 and RFC 4193; the rest are of the same kind).
SPECIAL_BLOCKS: tuple[tuple[int, int, int, str], ...] = tuple(
    _net(t)
    for t in (
        "0.0.0.0/8",  # "this network" (RFC 791)
        "10.0.0.0/8",  # RFC 1918
        "100.64.0.0/10",  # shared address space behind carrier NAT (RFC 6598)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local
        "172.16.0.0/12",  # RFC 1918
        "192.168.0.0/16",  # RFC 1918
        "::/128",  # unspecified
        "::1/128",  # loopback
        "fc00::/7",  # unique local (RFC 4193)
        "fe80::/10",  # link-local
    )
)


def special_block(family: int, value: int, bits: int) -> tuple[int, int, str] | None:
    """The special-purpose block that contains the subnet value/bits, as
    (network, prefix length, text), or None. A subnet wider than the block
    (``::/56`` against ``::1/128``) is not inside it."""
    width = MAX_SOURCE[family]
    for fam, net, plen, text in SPECIAL_BLOCKS:
        if fam == family and plen <= bits and (value >> (width - plen)) == (net >> (width - plen)):
            return net, plen, text
    return None
