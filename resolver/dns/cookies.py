"""DNS cookies (RFC 7873) with interoperable server cookies (RFC 9018).

A client sends an 8-byte client cookie, and the server cookie it got last
time; the server answers with the client cookie and a server cookie that
only it (or a replica with the same secret) can make for that client cookie
and address. A reply to a spoofed source cannot carry a server cookie the
real client knows, which is what lets rate limiting exempt such clients.

The server cookie is RFC 9018's, so every replica of an anycast set, fedns
or not (BIND, Knot, NSD, PowerDNS, Unbound), can check the others':

    Version (1) | Reserved (3 zero bytes) | Timestamp (32-bit seconds) | Hash (8)
    Hash = SipHash-2-4(Client Cookie | Version | Reserved | Timestamp | Client IP, Secret)

with the client's address as 4 (IPv4) or 16 (IPv6) bytes and a 16-byte secret.

Decisions (RFC 7873 5.2, RFC 9018 4.3):

* A server cookie is valid when its hash matches under the current secret, or
  under a previous one while the rotation's grace lasts, and its timestamp is
  at most an hour old and at most five minutes ahead.
* A valid cookie younger than half an hour, made with the current secret, is
  echoed as it came; any other valid one is replaced by a fresh one, as is an
  invalid one (wrong hash, too old, from the future, another format): an
  invalid cookie is treated as a client cookie alone (RFC 7873 5.2.3-5.2.4),
  so the query is answered normally. fedns does not require cookies; only the
  rate limiter answers BADCOOKIE, in place of a truncated reply.
* Without a configured secret a random one is made when this module is first
  imported: in the control process before workers fork, so every process of
  one instance shares it, across reloads too; a restart makes a new one.
  Replicas behind one address need a shared secret file (``cookies.secret_file``).
"""

from __future__ import annotations

import hmac
import os
import socket
import struct

from siphash24 import siphash24

from .wire import OPT_COOKIE

INSTANCE_SECRET = os.urandom(16)  # see the module's docstring

CLIENT_ONLY, VALID, INVALID = 0, 1, 2  # what a query's COOKIE option holds

MAX_AGE = 3600  # seconds a server cookie is accepted (RFC 9018 4.3)
MAX_AHEAD = 300  # seconds a timestamp may be ahead of ours (clock skew in an anycast set)
REFRESH_AGE = 1800  # older than this, a valid cookie is replaced by a fresh one

_VERSION = b"\x01\x00\x00\x00"  # version 1, reserved
_OPTION = struct.pack(">HH", OPT_COOKIE, 24)  # a reply's option: client (8) + server (16)
_PACKED_MAX = 1 << 16


def well_formed(option: bytes) -> bool:
    """RFC 7873 5.2.2: a client cookie alone (8 bytes), or with a server cookie of 8 to 32."""
    n = len(option)
    return n == 8 or 16 <= n <= 40


def server_cookie(client: bytes, ip: bytes, timestamp: int, secret: bytes) -> bytes:
    """RFC 9018's server cookie for a client cookie and address (4 or 16 bytes)."""
    head = _VERSION + struct.pack(">I", timestamp & 0xFFFFFFFF)
    return head + siphash24(client + head + ip, key=secret).digest()


class Cookies:
    """The server's secrets, and the COOKIE option of its reply to a query's.

    ``secrets[0]`` makes cookies; the others (the previous ones in a rotation)
    are accepted until ``accept_until`` (a Unix time). Pure: the time is an argument.
    """

    def __init__(self, secrets: tuple[bytes, ...], accept_until: float = 0.0) -> None:
        if not secrets or any(len(s) != 16 for s in secrets):
            raise ValueError("cookie secrets are 16 bytes each, and there is at least one")
        self.secrets = secrets
        self.accept_until = accept_until
        self._packed: dict[str, bytes] = {}

    def packed(self, host: str) -> bytes:
        """A source address as the hash takes it: 4 bytes for IPv4, 16 for IPv6."""
        ip = self._packed.get(host)
        if ip is None:
            h = host.partition("%")[0]  # an IPv6 zone index is not part of the address
            ip = socket.inet_pton(socket.AF_INET6 if ":" in h else socket.AF_INET, h)
            if len(self._packed) >= _PACKED_MAX:
                self._packed.clear()
            self._packed[host] = ip
        return ip

    def check(self, option: bytes, ip: bytes, now: float) -> int:
        """What a well-formed COOKIE option holds: CLIENT_ONLY, VALID or INVALID."""
        if len(option) == 8:
            return CLIENT_ONLY
        return VALID if self._valid(option, ip, int(now))[0] >= 0 else INVALID

    def answer(self, option: bytes, ip: bytes, now: float) -> tuple[int, bytes]:
        """(what the option holds, the whole COOKIE option for the reply)."""
        t = int(now)
        client = option[:8]
        if len(option) == 8:
            return CLIENT_ONLY, self._fresh(client, ip, t)
        used, age = self._valid(option, ip, t)
        if used < 0:
            return INVALID, self._fresh(client, ip, t)
        if used == 0 and age < REFRESH_AGE:
            return VALID, _OPTION + option
        return VALID, self._fresh(client, ip, t)

    def _fresh(self, client: bytes, ip: bytes, t: int) -> bytes:
        return _OPTION + client + server_cookie(client, ip, t, self.secrets[0])

    def _valid(self, option: bytes, ip: bytes, t: int) -> tuple[int, int]:
        """(the index of the secret that made the option's server cookie, or -1 if
        none did or it is not RFC 9018's or not current; its age in seconds)."""
        server = option[8:]
        if len(server) != 16 or server[0] != 1:
            return -1, 0  # another version or format: not ours to check
        # Timestamps are serial numbers (RFC 1982): the difference, signed.
        age = (t - int.from_bytes(server[4:8], "big")) & 0xFFFFFFFF
        if age >= 0x80000000:
            age -= 0x100000000
        if age > MAX_AGE or age < -MAX_AHEAD:
            return -1, age
        data = option[:8] + server[:8] + ip
        mac = server[8:]
        for i, secret in enumerate(self.secrets):
            if i and t > self.accept_until:
                break
            if hmac.compare_digest(siphash24(data, key=secret).digest(), mac):
                return i, age
        return -1, age


def parse_secrets(text: str) -> tuple[bytes, ...]:
    """Secrets from a secret file: one per line, 32 hex digits (16 bytes; ``0x`` allowed,
    as Knot writes them), the first the current one; blank lines and ``#`` comments
    ignored. ValueError says which line is wrong."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if not s:
            continue
        h = s[2:] if s[:2].lower() == "0x" else s
        try:
            secret = bytes.fromhex(h)
        except ValueError:
            secret = b""
        if len(secret) != 16:
            raise ValueError(
                f"line {n}: a secret is 32 hex digits (16 bytes), e.g. from `openssl rand -hex 16`"
            )
        out.append(secret)
    if not out:
        raise ValueError("no secret in the file; write one line of 32 hex digits")
    return tuple(out)
