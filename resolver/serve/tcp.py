"""DNS over TCP (RFC 7766): 2-byte length framing, pipelining, idle timeout, bounded buffers.

TCP flow control (pause reading while the peer does not read) bounds what one
connection can have in flight; queries held for the first sync complete out
of order, behind later ones (RFC 7766 7).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from .runtime import Runtime

_LEN = struct.Struct(">H")


class TcpProtocol(asyncio.Protocol):
    """RFC 7766: 2-byte length framing, pipelining, idle timeout, bounded buffers."""

    def __init__(self, rt: Runtime, conns: set[TcpProtocol]) -> None:
        self.rt = rt
        self.conns = conns
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.idle: asyncio.TimerHandle | None = None
        self.peer: Any = None
        self.pending = 0  # queries waiting for the first federation sync
        self.last = 0.0
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.peer = transport.get_extra_info("peername")
        tcp = self.rt.cfg.tcp
        if len(self.conns) >= tcp.max_connections:
            self.rt.stats.tcp_refused += 1
            transport.close()
            return
        self.conns.add(self)
        self.rt.stats.tcp_connections += 1
        # Bound what a peer that does not read can make us buffer: past this,
        # writes pause reading, so no new queries are taken from it.
        transport.set_write_buffer_limits(high=tcp.max_inflight * 1024)  # type: ignore[attr-defined]
        self.last = self.loop.time()
        self.idle = self.loop.call_later(tcp.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        timeout = self.rt.cfg.tcp.idle_timeout
        left = self.last + timeout - self.loop.time()
        if left > 0 or self.pending:
            self.idle = self.loop.call_later(max(left, 0.1), self._check_idle)
        elif self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.last = self.loop.time()
        self.buf += data
        self._drain()

    def _drain(self) -> None:
        """Answer every complete frame in the buffer, up to the in-flight cap."""
        buf = self.buf
        out = []
        rt = self.rt
        cap = rt.cfg.tcp.max_inflight
        while len(buf) >= 2 and self.pending < cap:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + n:
                if len(buf) > 2 + 65535:  # cannot happen with a valid peer; never grow unbounded
                    assert self.transport is not None
                    self.transport.close()
                    return
                break
            msg = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            rt.stats.tcp_queries += 1
            resp = rt.answer(msg, True, self.peer)
            if resp:
                out.append(_LEN.pack(len(resp)) + resp)
            elif resp is not None:
                # WAIT: this one completes later, out of order (RFC 7766 7); the
                # queries behind it are answered now.
                self._defer(msg)
        if out and self.transport is not None:
            # One write per batch: the length prefix and message go out together.
            self.transport.write(b"".join(out))

    def _defer(self, msg: bytes) -> None:
        self.pending += 1
        if self.pending >= self.rt.cfg.tcp.max_inflight and self.transport is not None:
            self.transport.pause_reading()  # RFC 7766 6.2.1.1: bound in-flight queries
        task = self.rt.later(msg, True, self.peer, self._send)
        task.add_done_callback(self._deferred_done)

    def _send(self, resp: bytes) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(_LEN.pack(len(resp)) + resp)

    def _deferred_done(self, _task: asyncio.Task[None]) -> None:
        self.pending -= 1
        t = self.transport
        if t is None or t.is_closing():
            return
        if self.pending == self.rt.cfg.tcp.max_inflight - 1:
            self._drain()  # frames read before the cap was reached
            if self.pending < self.rt.cfg.tcp.max_inflight:
                t.resume_reading()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns.discard(self)
        if self.idle is not None:
            self.idle.cancel()
