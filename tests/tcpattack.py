"""Abusive TCP clients for tests, in their own process: ``python tcpattack.py HOST PORT KIND N``.

A separate process, so its own CPU and GIL do not slow the test's measuring
clients, as a real attacker's would not. It opens ``N`` connections from the
loopback addresses given with ``--sources`` (round robin; the per-source cap
counts by address), each behaving as ``KIND``:

- ``slow``: a valid query, one byte a second (slowloris), again and again;
- ``idle``: connects and sends nothing;
- ``noread``: sends queries as fast as the server takes them, never reads a reply
  (a small receive buffer, so the server's send side backs up soon);
- ``prefix``: a length prefix, never the message.

Each connection the server closes is counted (with how long it lived) and, with
``--reopen``, opened again after a short pause, so the pressure stays on. On
stdin, ``report`` prints the counters as one JSON line; ``stop`` (or EOF)
closes everything and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import socket
import struct
import sys
import time
from typing import Any

import dns.message
import dns.rdatatype


class Attack:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.addr = (args.host, args.port)
        self.sources: list[str] = args.sources.split(",")
        q = dns.message.make_query(args.qname, dns.rdatatype.from_text(args.qtype))
        q.use_edns(False)
        wire = q.to_wire()
        self.query = struct.pack(">H", len(wire)) + wire
        self.open = 0  # connected now
        self.opened = 0
        self.failed = 0  # connects that failed or were reset at once
        self.closed = 0  # closed by the server after connecting
        self.lifetimes: list[float] = []
        self.errors: dict[str, int] = {}  # how the server's closes showed
        self.tasks: list[asyncio.Task[None]] = []

    def report(self) -> dict[str, Any]:
        life = sorted(self.lifetimes)
        return {
            "open": self.open,
            "opened": self.opened,
            "failed": self.failed,
            "closed": self.closed,
            "median_life": life[len(life) // 2] if life else None,
            "max_life": life[-1] if life else None,
            "errors": self.errors,
        }

    async def connect(self, src: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.args.kind == "noread":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        try:
            s.bind((src, 0))
            await asyncio.get_running_loop().sock_connect(s, self.addr)
        except OSError:
            s.close()
            raise
        return s

    async def one(self, i: int) -> None:
        loop = asyncio.get_running_loop()
        src = self.sources[i % len(self.sources)]
        while True:
            try:
                s = await self.connect(src)
            except OSError:
                self.failed += 1
                await asyncio.sleep(self.args.reopen or 1.0)
                continue
            self.opened += 1
            self.open += 1
            start = time.monotonic()
            try:
                await self.behave(loop, s)
            except OSError as e:
                self.errors[type(e).__name__] = self.errors.get(type(e).__name__, 0) + 1
            finally:
                self.open -= 1
                s.close()
            self.closed += 1
            self.lifetimes.append(time.monotonic() - start)
            if not self.args.reopen:
                return
            await asyncio.sleep(self.args.reopen)

    async def behave(self, loop: asyncio.AbstractEventLoop, s: socket.socket) -> None:
        """Returns (or raises) once the server has closed the connection."""
        kind = self.args.kind
        if kind == "idle":
            await self._until_closed(loop, s)
        elif kind == "prefix":
            await loop.sock_sendall(s, self.query[:2])
            await self._until_closed(loop, s)
        elif kind == "slow":
            watch = loop.create_task(self._until_closed(loop, s))
            try:
                while not watch.done():
                    for b in self.query:
                        await loop.sock_sendall(s, bytes((b,)))
                        await asyncio.wait([watch], timeout=1.0)
                        if watch.done():
                            break
            finally:
                watch.cancel()
        else:  # noread: the server resets it once its replies back up
            burst = self.query * 64
            while True:
                await loop.sock_sendall(s, burst)
                # Far more than the server answers in all (1,000 connections x
                # 1,280 queries a second), at little cost to this process's CPU,
                # which the test machine shares with the server.
                await asyncio.sleep(0.05)

    async def _until_closed(self, loop: asyncio.AbstractEventLoop, s: socket.socket) -> None:
        while await loop.sock_recv(s, 65536):
            pass  # replies to the slow queries, if one ever completed

    async def run(self) -> None:
        self.tasks = [asyncio.create_task(self.one(i)) for i in range(self.args.n)]
        reader = asyncio.StreamReader()
        await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
        )
        while True:
            line = (await reader.readline()).decode().strip()
            if line == "report":
                print(json.dumps(self.report()), flush=True)
            elif line in ("stop", ""):
                break
        for t in self.tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks, return_exceptions=True)


def main() -> None:
    # One descriptor per connection: the default soft limit (often 1,024) is too low.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 16 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    p = argparse.ArgumentParser()
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("kind", choices=["slow", "idle", "noread", "prefix"])
    p.add_argument("n", type=int)
    p.add_argument("--sources", default="127.0.0.1")
    p.add_argument("--reopen", type=float, default=0.0, help="seconds before reopening")
    p.add_argument("--qname", default=".")
    p.add_argument("--qtype", default="SOA")
    asyncio.run(Attack(p.parse_args()).run())


if __name__ == "__main__":
    main()
