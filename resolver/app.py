"""One fedns instance, wired: the only module that knows both the serving side and the federation.

``load_instance`` loads everything a config names (zones, the ``federation:``
section with its routing) and fails before anything is served. ``serve`` runs
it: one process, or a control process and ``--workers N`` serving ones. The
control side (``Supervisor``: the federation's ``Control``, reloads, the
admin API) runs once per instance whatever N is; what it publishes reaches
every serving table through ``Instance.apply``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from .config import Config, ConfigError, load_config
from .dns.answers import Table
from .dns.zone import COMPACT_ABOVE, Zone, key_of, load_zone_file
from .federation.config import FederationConfig, Routing, parse_federation
from .federation.control import Control
from .federation.explain import explain
from .federation.plan import PlanUpdate
from .federation.router import Publisher
from .serve.runtime import Runtime
from .serve.transports import bind_sockets, install_uvloop, run_transports
from .serve.udp import resolve_mode
from .serve.workers import Publish, Reload, Synced, WorkerPool

log = structlog.get_logger("fedns.app")


@dataclass
class Instance:
    """Everything loaded from one config, validated as a whole before it is used:
    the answer table, and (with a federation) how plans are published into it."""

    cfg: Config
    table: Table
    fed: FederationConfig | None
    publisher: Publisher | None

    @property
    def routing(self) -> Routing:
        return self.fed.routing if self.fed is not None else Routing()

    def waiting(self) -> tuple[bytes, ...]:
        """The zones whose not-yet-synced names are held at startup."""
        return (key_of(self.fed.zone),) if self.fed is not None else ()

    def apply(self, update: PlanUpdate) -> None:
        if self.publisher is not None:
            self.publisher.apply(update)

    def explain(
        self, name: str, qtype: str | None, subnet: str | None, source: str | None = None
    ) -> dict[str, Any]:
        return explain(self.table, self.routing.locator, name, qtype, subnet, source)


def load_instance(cfg: Config) -> Instance:
    """Load zones, federation and routing; any error raises before anything is served."""
    fed = parse_federation(cfg)
    zones: list[Zone] = [
        load_zone_file(z.file, z.origin, cfg.limits.max_records, COMPACT_ABOVE) for z in cfg.zones
    ]
    if fed is not None and not any(z.origin == fed.zone for z in cfg.zones):
        raise ConfigError(
            f"{cfg.path}: federation.zone: {fed.zone} is not one of the configured zones; "
            "add it under zones: with its SOA/NS zone file"
        )
    table = Table(zones, cfg.max_udp_payload, cfg.identity, cfg.version)
    # A big zone's plain names are compact (Zone.lazy), their answers compiled when
    # first asked for; the table learns which they are when it publishes, so it
    # publishes no change now.
    table.publish({}, {})
    publisher = Publisher(table, fed.routing.locator) if fed is not None else None
    return Instance(cfg, table, fed, publisher)


def reload_instance(cfg: Config) -> tuple[Config, Instance]:
    """The config read again from its file (the same one without a file), loaded."""
    new_cfg = load_config(cfg.path) if cfg.path else cfg
    return new_cfg, load_instance(new_cfg)


# The interpreter's switch interval while a reload loads beside serving threads.
RELOAD_SWITCH_INTERVAL = 0.0002


def reload_aside(cfg: Config) -> tuple[Config, Instance]:
    """``reload_instance``, for a thread beside the serving ones.

    A load is Python through and through, and the serving threads need the
    interpreter (the GIL) for every batch (mmsg UDP) or datagram (uvloop) they
    answer. A thread that waits for it gets it after the switch interval (5 ms
    by default) and gives it up at its next system call, so during a long load
    UDP got a batch per 5 ms: with a 400,000-record zone at 2,000 queries a
    second, 78 % (mmsg) and 21 % (uvloop) answered within 0.5 s while it loaded
    on the loop. Handed over every 0.2 ms, both answer all of them
    (tests/test_input_limits.py), and the load takes no measurably longer.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, RELOAD_SWITCH_INTERVAL))
    try:
        return reload_instance(cfg)
    finally:
        sys.setswitchinterval(before)


class Supervisor:
    """Owns the control side of an instance: config reloads, the federation
    control loop, the first sync and the admin API. ``publish`` fans updates out
    to whoever serves; ``on_synced`` tells them the first sync is done."""

    def __init__(
        self,
        inst: Instance,
        publish: Callable[[Instance, PlanUpdate], None],
        on_reload: Callable[[Instance], None],
        stats: Callable[[], dict[str, Any]],
        on_synced: Callable[[], None],
        serving: Callable[[], int] = lambda: 1,
    ) -> None:
        self.inst = inst
        self._publish = publish
        self._on_reload = on_reload
        self._stats = stats
        self._on_synced = on_synced
        self._serving = serving
        self._sync_task: asyncio.Task[None] | None = None
        # Set once and kept: a reload that re-lists clusters must not flip every
        # replica out of its Service at the same moment.
        self.first_sync_over = False
        self._reloading = asyncio.Lock()
        self.control: Control | None = None
        self.admin_runner: Any = None

    @property
    def cfg(self) -> Config:
        return self.inst.cfg

    def publish(self, update: PlanUpdate) -> None:
        self._publish(self.inst, update)

    async def start(self, admin: tuple[str, int] | None) -> None:
        await self._start_control()
        if admin is not None:
            # Imported only when asked for: aiohttp and prometheus-client add some
            # 16,000 objects that every full garbage collection of a serving
            # process would otherwise walk (a few % of CPU per query at load).
            from .serve.admin import Admin, start_admin

            app = Admin(
                explain=self.explain,
                stats=self.stats,
                registry=lambda: self.control.registry_view() if self.control else {"services": []},
                clusters=lambda: self.control.clusters_view() if self.control else {},
                ready=self.ready,
            )
            self.admin_runner = await start_admin(app, *admin)
            log.info("admin_listening", admin=f"{admin[0]}:{admin[1]}")

    def ready(self) -> tuple[bool, str]:
        """``/readyz``: this instance answers correctly. Its zones are loaded (there
        is no Supervisor before), a serving process is up, and the startup wait for
        the first sync is over. A member cluster that cannot be reached is never a
        reason: it would take every replica out of the Service and the whole zone,
        static records included, dark. It shows in the reason, the metrics, the
        logs, stale markings and explain instead."""
        if self._serving() == 0:
            return False, "no serving process is up (see the worker_died log lines)"
        if not self.first_sync_over:
            waiting = [c["cluster"] for c in self.control.lagging()] if self.control else []
            return False, (
                f"startup: waiting for the first sync of {', '.join(waiting) or 'the federation'}"
                f" (at most dns.startup_wait = {self.cfg.startup_wait:g} s)"
            )
        lagging = self.control.lagging() if self.control else []
        if not lagging:
            return True, "ok"
        return True, "ok; " + "; ".join(f"cluster {c['cluster']}: {c['effect']}" for c in lagging)

    def explain(
        self, name: str, qtype: str | None, subnet: str | None, source: str | None = None
    ) -> dict[str, Any]:
        out = self.inst.explain(name, qtype, subnet, source)
        lagging = self.control.lagging() if self.control else []
        if lagging:
            out["lagging_clusters"] = lagging
        return out

    def stats(self) -> dict[str, Any]:
        s = self._stats()
        s["services"] = len(self.control.plans) if self.control else 0
        return s

    async def _start_control(self) -> None:
        fed = self.inst.fed
        if fed is None:
            self.first_sync_over = True
            return
        control = self.control = Control(fed, self.publish)
        await control.start()

        async def first_sync() -> None:
            # Every cluster listed, or the startup bound passed (a cluster that is
            # down must not keep the others' services unpublished).
            wait = self.cfg.startup_wait
            registry = control.registry
            synced = await registry.wait_synced(wait) if wait > 0 else registry.is_synced()
            if self.control is control:
                control.release()
                log.info(
                    "federation_synced" if synced else "federation_published_before_sync",
                    clusters=len(fed.clusters),
                    services=len(control.plans),
                    waiting=[n for n, st in registry.cluster_status().items() if not st.synced],
                )
                self._on_synced()
                self.first_sync_over = True

        self._sync_task = asyncio.get_running_loop().create_task(first_sync())

    async def reload(self) -> None:
        """Safe reload: the new config, zones and federation are loaded whole
        off to the side; on any error the running state stays and is logged.

        Make before break: with other clusters, the new watches list (up to
        ``dns.startup_wait``) while the old instance keeps serving; only then
        does the new table serve. Across the swap the serving side holds the
        federated names (answers them once the plans are in), so no query ever
        sees the new table without them: an NXDOMAIN there would be cached by
        resolvers for the SOA minimum."""
        async with self._reloading:  # one at a time: a second SIGHUP waits for the first
            await self._reload()

    async def _reload(self) -> None:
        try:
            # In a thread: this loop (TCP, uvloop UDP, the admin API, the watches) keeps
            # running while a big zone loads.
            loop = asyncio.get_running_loop()
            _, new_inst = await loop.run_in_executor(None, reload_aside, self.cfg)
        except Exception as e:
            log.error("reload_failed", error=str(e), hint="fix the file and send SIGHUP again")
            return
        old_fed, old_control = self.inst.fed, self.control
        if old_control is not None and new_inst.fed is not None and old_fed == new_inst.fed:
            # Same clusters: keep the watches, republish what they know into the new table.
            self._swap(new_inst)
            old_control.set_routing(new_inst.fed.routing)
            old_control.republish()
            self._on_synced()
        else:
            control = None
            if new_inst.fed is not None:
                # Publishes nothing until released (Control.holding), so nothing
                # reaches the old table from the new watches.
                control = Control(new_inst.fed, lambda u: self._publish(new_inst, u))
                await control.start()
                wait = new_inst.cfg.startup_wait
                if wait > 0:
                    await control.registry.wait_synced(wait)
            if self._sync_task is not None:
                self._sync_task.cancel()  # a startup sync still pending belongs to the old control
            self._swap(new_inst)
            self.control = control
            if control is not None:
                control.release()
            self._on_synced()
            self.first_sync_over = True
            if old_control is not None:
                await old_control.stop()
        log.info("reloaded", zones=[z.origin for z in new_inst.cfg.zones])

    def _swap(self, new_inst: Instance) -> None:
        self.inst = new_inst
        self._on_reload(new_inst)

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
        if self.control is not None:
            await self.control.stop()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()


async def _wait_signals(sup: Supervisor) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloading: set[asyncio.Task[None]] = set()

    def reload() -> None:
        t = loop.create_task(sup.reload())
        reloading.add(t)
        t.add_done_callback(reloading.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()


async def _serve_single(
    inst: Instance, udp_sock: Any, tcp_sock: Any, admin: tuple[str, int] | None
) -> None:
    rt = Runtime(inst.table, inst.cfg, inst.waiting())
    close = await run_transports(rt, udp_sock, tcp_sock)

    def publish(target: Instance, update: PlanUpdate) -> None:
        rt.update(lambda _table: target.apply(update))  # the table the UDP thread may be reading

    def on_reload(new: Instance) -> None:
        rt.set_table(new.table, new.cfg, hold=new.waiting())  # released by rt.mark_synced

    sup = Supervisor(
        inst, publish, on_reload, lambda: rt.stats.as_dict() | {"workers": 1}, rt.mark_synced
    )
    await sup.start(admin)
    await _wait_signals(sup)
    close()
    await sup.stop()


async def _serve_parent(inst: Instance, pool: WorkerPool, admin: tuple[str, int] | None) -> int:
    loop = asyncio.get_running_loop()
    pool.listen()

    def publish(target: Instance, update: PlanUpdate) -> None:
        # Workers first, so they rebuild while the parent does its own copy (nothing can
        # run in between here: no explain answered, no worker respawned from a stale table).
        pool.send(Publish(update))
        target.apply(update)  # the parent's copy answers explain, and seeds respawns

    def on_reload(new: Instance) -> None:
        pool.cfg = new.cfg
        pool.send(Reload())

    sup = Supervisor(
        inst, publish, on_reload, pool.stats, lambda: pool.send(Synced()), pool.alive
    )
    await sup.start(admin)
    waiter = loop.create_task(_wait_signals(sup))
    code = 0
    while not waiter.done():
        await asyncio.wait([waiter], timeout=0.25)
        if not waiter.done() and not pool.respawn_dead(sup.inst, sup.inst.waiting()):
            code = 1
            break
    await sup.stop()
    pool.stop()
    return code


def serve(
    cfg: Config, host: str, port: int, workers: int, admin: tuple[str, int] | None = None
) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit code."""
    # Until the loop handles it: a SIGHUP while a big zone loads at startup must not
    # kill fedns (the default action). One sent then is lost; fedns reads the files
    # it is starting with, and the next SIGHUP reloads.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    inst = load_instance(cfg)
    try:
        udp_mode = resolve_mode(cfg.udp)
    except OSError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None
    install_uvloop()
    zones = [z.origin for z in cfg.zones]
    if workers <= 1:
        udp_sock, tcp_sock = bind_sockets(host, port, False)
        bound = udp_sock.getsockname()[1]
        log.info("serving", dns=f"{host}:{bound}", zones=zones, workers=1, udp=udp_mode)
        asyncio.run(_serve_single(inst, udp_sock, tcp_sock, admin))
        return 0
    # SO_REUSEPORT: every worker binds the same address and the kernel spreads
    # queries over them. A probe bind resolves port 0 and reports errors here,
    # before any worker starts. Workers fork before the parent's event loop exists.
    probe_u, probe_t = bind_sockets(host, port, True)
    port = probe_u.getsockname()[1]
    # Closed before forking: a child would inherit the probe, which stays in the
    # SO_REUSEPORT group unread and swallows its share of the queries.
    probe_u.close()
    probe_t.close()
    pool = WorkerPool(cfg, host, port, reload_aside)
    for _ in range(workers):
        pool.spawn(inst, inst.waiting())
    log.info("serving", dns=f"{host}:{port}", zones=zones, workers=workers, udp=udp_mode)
    return asyncio.run(_serve_parent(inst, pool, admin))


def explain_locally(
    cfg: Config,
    name: str,
    qtype: str,
    subnet: str | None,
    source: str | None = None,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """``fedns explain`` without a running server: load the config, sync once, explain."""
    inst = load_instance(cfg)

    async def run() -> dict[str, Any]:
        if inst.fed is not None:
            control = Control(inst.fed, inst.apply)
            await control.start()
            try:
                if not await control.registry.wait_synced(timeout):
                    waiting = ", ".join(c["cluster"] for c in control.lagging() if not c["synced"])
                    raise TimeoutError(
                        f"no first sync of {waiting} after {timeout:.0f} s; is the cluster reachable?"
                    )
                control.release()
            finally:
                await control.stop()
        return inst.explain(name, qtype, subnet, source)

    return asyncio.run(run())
