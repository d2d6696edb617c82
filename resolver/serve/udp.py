"""DNS over UDP: batched in a thread (``recvmmsg``/``sendmmsg``), or one datagram at a time on uvloop.

Why: with one ``recvmsg`` and one ``sendmsg`` per packet (the uvloop
transport) the per-packet system-call and event-loop cost is as large as
answering itself. Linux's ``recvmmsg(2)`` takes up to a batch of datagrams in
one call and ``sendmmsg(2)`` sends all the replies of that batch in one, as
NSD, Knot and gdnsd do. Python's socket module has neither, so they are
called through ctypes (libc), on preallocated buffers, from a thread that
blocks in ``recvmmsg`` with the GIL released (ctypes drops it around foreign
calls) while the event loop thread keeps TCP, the admin API and control.

Threads share one rule with the event loop: a batch is answered under
``Runtime.lock``, which the loop thread also holds while it changes the
table in place (``Runtime.update``), so a query never sees a half-applied update,
as it could not when everything ran on the loop thread.

Replies reuse the receive buffers: the query is copied out to ``bytes``
first (``Table.respond`` needs bytes), then the reply is written back into
slot ``j`` (``j <= i``: the replies of a batch are packed in order, drops and
deferred queries leave no gap), with the sender's address copied alongside.
The ``sendmmsg`` vector therefore never changes except for each reply's
length. Addresses are formatted into Python tuples only through a memo keyed
by the raw ``sockaddr`` (routing reads ``addr[0]``), which is an int read and
a dict lookup per packet.

The counters in ``Runtime.stats`` stay plain ints: the UDP counts are only
written here (the table counts replies, UDP and TCP at their own indexes),
and one both threads bump at the same moment may, rarely, lose an increment;
they are for monitoring. Per batch, not per query: the answer latency (every
reply of a batch is sent with the batch, so the batch's time is each one's)
and the query log's pick (``QueryLog``: one comparison per query).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import mmap
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any

import structlog

from .runtime import Runtime

log = structlog.get_logger("fedns.udp")

BATCH = 64  # datagrams per recvmmsg: NSD uses 32-64; more only adds latency to the last
SLOT = 1 << 16  # per datagram: any UDP payload fits (65,507), so nothing is ever truncated
_NAME = 32  # sockaddr room per datagram: sockaddr_in6 is 28 bytes
_MSG_WAITFORONE = 0x10000  # <linux/socket.h>: block for the first datagram only
_RCV_TIMEOUT_S = 0.5  # a backstop: the thread checks for stop at least this often
_MEMO_MAX = 65536

# Lost datagrams, as on the wire; anything else is logged once per kind.
_SEND_DROP = {
    errno.EAGAIN,
    errno.ENOBUFS,
    errno.EMSGSIZE,
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EPERM,
    errno.EACCES,
    errno.EINVAL,
}


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    # glibc's layout; musl's int fields with zeroed padding read the same on
    # little-endian 64-bit.
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_STRIDE = ctypes.sizeof(_MMsgHdr)
_libc: Any = None
_unavailable: str | None = None


def _load() -> str | None:
    """Why the batched calls cannot be used here, or None when they can."""
    global _libc, _unavailable
    if _libc is not None or _unavailable is not None:
        return _unavailable
    if not sys.platform.startswith("linux"):
        _unavailable = f"recvmmsg/sendmmsg are Linux calls; this is {sys.platform}"
    elif ctypes.sizeof(ctypes.c_void_p) != 8 or sys.byteorder != "little":
        _unavailable = "the msghdr layout here is only checked on little-endian 64-bit"
    elif _STRIDE % 4 or _MMsgHdr.msg_len.offset % 4:
        _unavailable = "unexpected struct mmsghdr layout"
    else:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.recvmmsg  # noqa: B018 - lookups raise AttributeError when missing
            libc.sendmmsg  # noqa: B018
        except (OSError, AttributeError) as e:
            _unavailable = f"libc has no recvmmsg/sendmmsg ({e})"
        else:
            _libc = libc
    return _unavailable


def unavailable() -> str | None:
    """None when the mmsg transport works on this system, else why not."""
    return _load()


def resolve_mode(setting: str) -> str:
    """``auto`` -> mmsg where available, else uvloop. ``mmsg`` where it is not: an error."""
    if setting == "uvloop":
        return "uvloop"
    why = unavailable()
    if why is None:
        return "mmsg"
    if setting == "mmsg":
        raise OSError(f"dns.udp: mmsg is not available: {why}; use udp: auto or uvloop")
    return "uvloop"


def _format(family: int, raw: bytes) -> tuple[Any, ...]:
    """The address as Python's socket module gives it."""
    port = (raw[2] << 8) | raw[3]
    if family == socket.AF_INET:
        return (socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
    host = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    flowinfo, scope = struct.unpack_from(">I", raw, 4)[0], struct.unpack_from("=I", raw, 24)[0]
    if scope:
        with contextlib.suppress(OSError):
            host = f"{host}%{socket.if_indextoname(scope)}"
    return (host, port, flowinfo, scope)


class MmsgServer:
    """Serves one UDP socket from a dedicated thread; ``close()`` stops it."""

    def __init__(self, rt: Runtime, sock: socket.socket, batch: int = BATCH) -> None:
        if _load() is not None:
            raise OSError(_unavailable)
        self.rt = rt
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.batch = batch
        self.family = sock.family
        self.namelen = 16 if sock.family == socket.AF_INET else 28
        self.stopping = False
        self._memo: dict[Any, tuple[Any, ...]] = {}
        self._failed: set[int] = set()
        # Anonymous mappings: pages are committed only when a datagram that
        # large arrives, so 64 slots of 64 KiB cost about 64 pages in practice.
        self._data = mmap.mmap(-1, batch * SLOT)
        self._names = mmap.mmap(-1, max(batch * _NAME, mmap.PAGESIZE))
        self._rhdr = mmap.mmap(-1, max(batch * _STRIDE, mmap.PAGESIZE))
        self._shdr = mmap.mmap(-1, max(batch * _STRIDE, mmap.PAGESIZE))
        self._iov = mmap.mmap(-1, max(2 * batch * ctypes.sizeof(_IoVec), mmap.PAGESIZE))
        data = ctypes.addressof(ctypes.c_char.from_buffer(self._data))
        names = ctypes.addressof(ctypes.c_char.from_buffer(self._names))
        # Send iovecs first (iov_len of reply j at 8-byte word 2*j + 1), then receive ones.
        siov = (_IoVec * batch).from_buffer(self._iov)
        riov = (_IoVec * batch).from_buffer(self._iov, batch * ctypes.sizeof(_IoVec))
        rhdr = (_MMsgHdr * batch).from_buffer(self._rhdr)
        shdr = (_MMsgHdr * batch).from_buffer(self._shdr)
        for i in range(batch):
            riov[i].iov_base = siov[i].iov_base = data + i * SLOT
            riov[i].iov_len = SLOT
            for hdr, iov in ((rhdr[i].msg_hdr, riov), (shdr[i].msg_hdr, siov)):
                hdr.msg_name = names + i * _NAME
                hdr.msg_namelen = self.namelen
                hdr.msg_iov = ctypes.addressof(iov) + i * ctypes.sizeof(_IoVec)
                hdr.msg_iovlen = 1
        # Drop the ctypes views (they pin the mappings): the hot path uses memoryviews.
        del siov, riov, rhdr, shdr
        self._rhdr_p = ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(self._rhdr)))
        self._shdr_base = ctypes.addressof(ctypes.c_char.from_buffer(self._shdr))
        self._mv = memoryview(self._data)
        self._names_mv = memoryview(self._names)
        self._names_q = self._names_mv.cast("Q")
        self._rlen = memoryview(self._rhdr).cast("I")
        self._slen = memoryview(self._iov).cast("Q")
        # The socket blocks (the thread sleeps in recvmmsg) with a receive
        # timeout so a missed wake-up still ends the thread on stop.
        sock.setblocking(True)
        sock.setsockopt(
            socket.SOL_SOCKET,
            socket.SO_RCVTIMEO,
            struct.pack("@ll", int(_RCV_TIMEOUT_S), int(_RCV_TIMEOUT_S % 1 * 1e6)),
        )
        self.thread = threading.Thread(target=self._run, name="fedns-udp", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        """Stop the thread (a shutdown wakes its recvmmsg) and close the socket."""
        self.stopping = True
        with contextlib.suppress(OSError):
            # On an unconnected UDP socket this reports ENOTCONN but still wakes
            # a blocked receiver, which then sees ``stopping``.
            self.sock.shutdown(socket.SHUT_RD)
        self.thread.join(2 * _RCV_TIMEOUT_S + 1.0)
        if not self.thread.is_alive():  # else leave the fd: the thread may still use it
            self.sock.close()

    # -- the serving thread ---------------------------------------------------------

    def _run(self) -> None:
        # Signals go to the event loop thread, whose handlers act on them.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        while not self.stopping:
            try:
                self._loop()
                return  # stopped, or the socket is gone
            except Exception:  # a bug here must not leave a process that serves no UDP
                self.rt.stats.errors += 1
                log.exception("udp_batch_failed")
                time.sleep(0.1)  # a bug that repeats is logged ten times a second, no more

    def _loop(self) -> None:
        """Receive a batch, answer it, send the replies; until ``close()``.

        One function with every name bound to a local once: the per-batch and
        per-packet Python is the cost this transport exists to cut.
        """
        rt = self.rt
        stats = rt.stats
        lock = rt.lock
        perf_ns = time.perf_counter_ns
        observe = stats.observe
        # The query log: ``pick`` is the index in this batch of the next query to log
        # (beyond the batch, or never, when none is due: one comparison per query).
        qlog = rt.querylog
        sampled = rt.sampled_udp
        version = qlog.version
        left = qlog.gap()
        recvmmsg, sendmmsg = _libc.recvmmsg, _libc.sendmmsg
        fd = ctypes.c_int(self.sock.fileno())
        rhdrs = self._rhdr_p
        shdrs = ctypes.c_void_p(self._shdr_base)
        count = ctypes.c_uint(self.batch)
        flags = ctypes.c_int(_MSG_WAITFORONE)
        get_errno = ctypes.get_errno
        mv = self._mv
        names = self._names_mv
        rlen = self._rlen
        names_q = self._names_q
        slen = self._slen
        memo = self._memo
        nl = self.namelen
        v4 = nl == 16
        at = _MMsgHdr.msg_len.offset // 4
        step = _STRIDE // 4
        qstep = _NAME // 8
        defer = self._defer
        call_soon = self.loop.call_soon_threadsafe
        while not self.stopping:
            n = recvmmsg(fd, rhdrs, count, flags, None)
            # A batch received as ``stopping`` is set is still answered: a retiring
            # worker's socket lives on (its successor reads it), and no one else
            # would answer these.
            if n <= 0:
                if not self.stopping and n < 0 and self._recv_failed(get_errno()):
                    break
                continue
            began = perf_ns()
            lens = rlen[at : at + n * step : step].tolist()
            keys = names_q[: n * qstep : qstep].tolist() if v4 else None
            j = 0
            if qlog.version != version:
                version, left = qlog.version, qlog.gap()
            pick = left - 1
            with lock:
                respond = rt.serve  # the table's respond: swapped whole on reload
                for i in range(n):
                    off = i * SLOT
                    data = mv[off : off + lens[i]].tobytes()
                    if keys is not None:
                        key: Any = keys[i]
                    else:
                        key = names[i * _NAME : i * _NAME + nl].tobytes()
                    addr = memo.get(key)
                    if addr is None:
                        addr = self._addr(key, i)
                    try:
                        if i != pick:
                            resp = respond(data, False, addr)
                        else:
                            pick = i + qlog.gap()
                            resp = sampled(respond, data, addr)
                    except Exception:  # never let one packet take the thread down
                        resp = rt.failed(data)
                    if resp:
                        # A reply is at most 65,535 bytes (UDP payloads are clamped
                        # lower still), so it fits the slot it reuses.
                        size = len(resp)
                        o = j * SLOT
                        mv[o : o + size] = resp
                        slen[2 * j + 1] = size
                        if j != i:
                            names[j * _NAME : j * _NAME + nl] = names[i * _NAME : i * _NAME + nl]
                        j += 1
                    elif resp is None:
                        stats.dropped += 1
                    else:  # WAIT: the loop answers it once the federation has synced
                        call_soon(defer, data, addr)
            left = pick - n + 1
            stats.udp_queries += n
            if j:
                # Every reply of a batch leaves with its last: the batch's time is each one's.
                observe("udp", perf_ns() - began, j)
                sent = sendmmsg(fd, shdrs, j, 0)
                if sent != j:
                    self._send_rest(max(sent, 0), j, get_errno() if sent < 0 else 0)
            if qlog.pending:
                qlog.flush()  # after the batch is sent: a log line never delays a reply

    def _recv_failed(self, err: int) -> bool:
        """Log a receive error once per kind; True when the socket is gone."""
        if err in (errno.EINTR, errno.EAGAIN, errno.EWOULDBLOCK):
            return False
        if err not in self._failed:
            self._failed.add(err)
            log.error("udp_recv_failed", error=errno.errorcode.get(err, str(err)))
        return err in (errno.EBADF, errno.ENOTSOCK)

    def _addr(self, key: Any, i: int) -> tuple[Any, ...]:
        raw = self._names_mv[i * _NAME : i * _NAME + self.namelen].tobytes()
        addr = _format(self.family, raw)
        if len(self._memo) >= _MEMO_MAX:
            self._memo.clear()
        self._memo[key] = addr
        return addr

    def _send_rest(self, start: int, count: int, err: int) -> None:
        """sendmmsg stopped at ``start``: the datagram there failed (``err``; 0 when
        the call returned early without one). It is lost, as it could be on the
        wire; the rest of the batch still goes out."""
        sendmmsg = _libc.sendmmsg
        fd = self.sock.fileno()
        while start < count:
            if err == 0:
                sent = sendmmsg(
                    fd, ctypes.c_void_p(self._shdr_base + start * _STRIDE), count - start, 0
                )
                if sent > 0:
                    start += sent
                    continue
                err = ctypes.get_errno() if sent < 0 else errno.EIO
            if err != errno.EINTR:
                self.rt.stats.udp_send_errors += 1
                if err not in _SEND_DROP and err not in self._failed:
                    self._failed.add(err)
                    log.error("udp_send_failed", error=errno.errorcode.get(err, str(err)))
                start += 1
            err = 0

    # -- on the event loop thread ---------------------------------------------------

    def _defer(self, data: bytes, addr: Any) -> None:
        self.rt.later(data, False, addr, lambda r: self._late(r, addr))

    def _late(self, resp: bytes, addr: Any) -> None:
        if not self.stopping:
            try:
                self.sock.sendto(resp, addr)
            except OSError:
                self.rt.stats.udp_send_errors += 1


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        rt = self.rt
        rt.stats.udp_queries += 1
        resp = rt.answer(data, False, addr)
        if resp:
            if self.transport is not None:
                self.transport.sendto(resp, addr)
        elif resp is not None:  # WAIT: answered once the federation has synced
            rt.later(data, False, addr, lambda r: self._late(r, addr))

    def _late(self, resp: bytes, addr: Any) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(resp, addr)

    def error_received(self, exc: Exception) -> None:
        # A reply the kernel would not send (an unconnected socket reports nothing else).
        self.rt.stats.udp_send_errors += 1
        log.debug("udp_error", error=str(exc))
