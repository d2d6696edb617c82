"""A live fuzz run: a real ``fedns serve`` on the demo config, 1 and 2 workers
(and 1 worker with DNS cookies on, ``cookies: {}``).

Tens of thousands of UDP packets and some thousands of TCP messages from
``tests/fuzzing.py`` (random bytes, mutated and malformed queries, OPT
records with random ECS, COOKIE and unknown options, compression pointer
tricks, several questions, odd classes, types and opcodes, responses; over
TCP also framing faults: length prefixes longer and shorter than the
message, half messages, resets, a message a byte at a time, tiny frames,
a hundred queries in one segment). UDP goes out from eight loopback
addresses so that both workers get their share. After every batch the probe
(a static record of the zone file) must be answered with what the zone file
says, over UDP from the same socket (the batch's replies come before it) and
over TCP on a new connection.

Every reply that can be tied to its query (each packet of a batch has its
own ID) is checked by ``fuzzing.check_reply``. At the end the server is
alive, its workers are the ones it started with (none died and was
respawned), each worker did work, and the log has no traceback and no line
of an exception that escaped (``fuzzing.LOG_MARKERS``).

The long run (a million packets and more) is ``benchmarks/fuzz.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import fuzzing
import pytest
from servers import DEMO_CONFIG, ServerProcess, start_fedns

UDP_PACKETS = 20_000
TCP_MESSAGES = 3_000
SEED = 1035


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def settled_workers(sp: ServerProcess, workers: int, deadline_s: float = 20.0) -> list[int]:
    """The workers once the generation forked after the first sync serves alone (the
    first ones answer the federation too, until each is retired)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if "workers_forked" in sp.output():
            pids = children(sp.proc.pid)
            if len(pids) == workers:
                return pids
        time.sleep(0.05)
    raise AssertionError("the workers were not forked again after the first sync:\n"
                         + sp.output()[-4000:])


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])


@pytest.mark.parametrize(
    "workers,cookies",
    [(1, False), (2, False), (1, True)],
    ids=["1-worker", "2-workers", "1-worker-cookies"],
)
def test_live_fuzz(tmp_path: Path, workers: int, cookies: bool) -> None:
    """``cookies``: the demo config with ``cookies: {}`` (DNS cookies on, a random
    secret), so fuzzed COOKIE options reach the cookie code."""
    config = fuzzing.config_with(DEMO_CONFIG, tmp_path, cookies={}) if cookies else DEMO_CONFIG
    sp = start_fedns(config, tmp_path, workers=workers)
    try:
        names = fuzzing.names_of_config(config)
        fuzzing.wait_federated(sp.host, sp.port, names)
        served_by = settled_workers(sp, workers) if workers > 1 else [sp.proc.pid]
        assert len(served_by) == workers, f"worker processes: {served_by}"
        before = {pid: cpu_ticks(pid) for pid in served_by}
        with fuzzing.LiveFuzzer(sp.addr, names, seed=SEED + workers + 10 * cookies) as f:
            tally = fuzzing.run(f, UDP_PACKETS, TCP_MESSAGES, alive=sp.alive)
        after = {pid: cpu_ticks(pid) for pid in served_by}
        _report(tally, workers, cookies)

        assert sp.alive(), "fedns exited under fuzzing:\n" + sp.output()[-4000:]
        assert not tally.probe_failures, tally.probe_failures[:10]
        assert not tally.faults, "\n".join(tally.examples)
        assert not fuzzing.log_faults(sp.output()), fuzzing.log_excerpt(sp.output())
        if workers > 1:
            assert children(sp.proc.pid) == served_by, "a worker died and was replaced"
            idle = [pid for pid in served_by if after[pid] <= before[pid]]
            assert not idle, f"workers {idle} answered nothing: the fuzz reached one worker only"
        sent_tcp = fuzzing.tcp_sent(tally)
        sent_udp = sum(tally.sent.values()) - sent_tcp
        assert sent_udp >= UDP_PACKETS and sent_tcp >= TCP_MESSAGES, (sent_udp, sent_tcp)
        # UDP is best effort, but the batches fit the socket buffers: nearly every
        # query with a readable header must have had its reply checked.
        answerable = sum(tally.sent[k] for k in ("query", "edns", "malformed", "pointer"))
        answered = sum(tally.replies[k] for k in ("query", "edns", "malformed", "pointer"))
        assert answered >= 0.95 * answerable, (answered, answerable)
    finally:
        sp.stop()


def _report(t: fuzzing.Tally, workers: int, cookies: bool) -> None:
    on = ", cookies on" if cookies else ""
    print(f"\nfedns, {workers} worker(s){on}: packets sent and replies checked, per kind")
    for kind, sent, replies in fuzzing.summary_rows(t):
        print(f"  {kind:20} {sent:7} {replies:7}")
    print(f"  rcodes: {dict(t.rcodes)}; probes {t.probes} (retried {t.probe_retries})")
