#!/usr/bin/env python3
"""The floor under fedns's TCP figures: uvloop and asyncio transports with no DNS work.

A server of a few lines on the same event loop and transports fedns uses
(uvloop, ``asyncio.Protocol``): each TCP query (RFC 7766 framing, any number of
frames per read, split frames too) is answered with its own header and question
back, QR and AA set, no records; UDP the same (benchmarks wait for a UDP
answer). No limits, no timers, no table. Whatever this costs per query or per
connection, any server written on this loop pays before it does any DNS work:
``benchmarks/tcp.py`` measures it beside fedns and NSD ("uvloop floor").

Usage: python3 benchmarks/uvloop_floor.py PORT
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys

import uvloop

_LEN = struct.Struct(">H")


def echo(q: bytes) -> bytes:
    """The query's header and question, as a reply with no records (QR, AA, RD kept)."""
    if len(q) < 12:
        return b""
    return q[:2] + bytes(((q[2] & 0x01) | 0x84, 0)) + q[4:6] + b"\x00" * 6 + q[12:]


class Tcp(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.t: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        out = []
        pos = 0
        while len(buf) - pos >= 2:
            end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
            if end > len(buf):
                break
            r = echo(buf[pos + 2 : end])
            out.append(_LEN.pack(len(r)) + r)
            pos = end
        self.buf = buf[pos:]
        if out and self.t is not None:
            self.t.write(b"".join(out))


class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.t = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.t.sendto(echo(data), addr)  # type: ignore[attr-defined]


async def main(port: int) -> None:
    loop = asyncio.get_running_loop()
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(4096)
    await loop.create_server(Tcp, sock=ls)
    await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", port))
    await asyncio.Event().wait()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1])))
