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
import gc
import ipaddress
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from . import versions
from .config import Config, ConfigError, read_token
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


# The interpreter's switch interval while a reload loads beside serving threads.
RELOAD_SWITCH_INTERVAL = 0.0002


def load_aside(cfg: Config) -> tuple[Config, Instance]:
    """``load_instance``, for a thread beside the serving ones.

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
        return cfg, load_instance(cfg)
    finally:
        sys.setswitchinterval(before)


def start_version(cfg: Config) -> versions.Fingerprint:
    """The version of the config ``serve`` starts with (read again for its YAML as data)."""
    if cfg.path is None:
        return versions.failed_version(None)
    try:
        return versions.read_config(cfg.path)[1]
    except (ConfigError, OSError):
        # Changed under us since it was loaded: the next file event reloads it.
        return versions.failed_version(cfg.path)


def admin_is_open(cfg: Config, admin: tuple[str, int] | None) -> None:
    """Refuse an admin API reachable from other hosts without a token to guard it."""
    if admin is None or cfg.admin_auth.token_file is not None:
        return
    host = admin[0]
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(
            f"admin.listen {host}:{admin[1]} is reachable from other hosts and admin.token_file "
            "is not set: anyone could roll the config back. Set admin.token_file (a file holding "
            "a token, e.g. `openssl rand -hex 32 > FILE`) or listen on 127.0.0.1"
        )


class Supervisor:
    """Owns the control side of an instance: config versions and reloads, the
    federation control loop, the first sync and the admin API. ``publish`` fans
    updates out to whoever serves; ``on_synced`` tells them the first sync is done."""

    # Changes of watched files are gathered until none came for STEP ms (at most
    # DEBOUNCE ms): an editor's save, or a ConfigMap's ..data swap, is one reload.
    WATCH_STEP_MS = 100
    WATCH_DEBOUNCE_MS = 1000

    def __init__(
        self,
        inst: Instance,
        publish: Callable[[Instance, PlanUpdate], None],
        on_reload: Callable[[Instance], None],
        stats: Callable[[], dict[str, Any]],
        on_synced: Callable[[], None],
        serving: Callable[[], int] = lambda: 1,
        version: versions.Fingerprint | None = None,
        pending: Callable[[], str | None] = lambda: None,
    ) -> None:
        self.inst = inst
        self._publish = publish
        self._on_reload = on_reload
        self._stats = stats
        self._on_synced = on_synced
        self._serving = serving
        self._pending = pending  # why serving is not yet as it should be (workers starting)
        self._sync_task: asyncio.Task[None] | None = None
        # Set once and kept: a reload that re-lists clusters must not flip every
        # replica out of its Service at the same moment.
        self.first_sync_over = False
        self._reloading = asyncio.Lock()
        self.control: Control | None = None
        self.admin_runner: Any = None
        # The operator's config file: what SIGHUP and file changes read again. A
        # rollback serves kept copies (inst.cfg.path stays this same path).
        self.source = inst.cfg.path
        self.history = versions.History(inst.cfg.history_size, inst.cfg.state_dir)
        self._start_fp = version
        self._watched = self._files_of(inst.cfg)
        self._rewatch = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[Any]] = set()  # reloads under way (SIGHUP)

    @property
    def cfg(self) -> Config:
        return self.inst.cfg

    def publish(self, update: PlanUpdate) -> None:
        self._publish(self.inst, update)

    async def start(self, admin: tuple[str, int] | None, watch: bool = True) -> None:
        fp = self._start_fp or start_version(self.cfg)
        kept = await asyncio.get_running_loop().run_in_executor(
            None, self.history.keep_files, self.cfg, fp
        )
        self.history.record(versions.entry(fp, "start", "applied", kept=kept))
        log.info("config_loaded", version=fp.version, trigger="start", kept=kept)
        await self._start_control()
        if watch and self.source is not None:
            self._watch_task = asyncio.get_running_loop().create_task(self._watch())
        if admin is not None:
            # Imported only when asked for: aiohttp and prometheus-client add some
            # 16,000 objects that every full garbage collection of a serving
            # process would otherwise walk (a few % of CPU per query at load).
            from .serve.admin import Admin, start_admin

            auth = self.cfg.admin_auth
            app = Admin(
                explain=self.explain,
                stats=self.stats,
                registry=lambda: self.control.registry_view() if self.control else {"services": []},
                snapshot=lambda: self.control.snapshot() if self.control else {"services": []},
                clusters=lambda: self.control.clusters_view() if self.control else {},
                ready=self.ready,
                config=self.config_view,
                history=self.history.view,
                rollback=self.rollback,
                reload=lambda: self.reload("api"),
                token_file=auth.token_file,
                auth_all=auth.auth == "all",
            )
            self.admin_runner = await start_admin(app, *admin)
            log.info("admin_listening", admin=f"{admin[0]}:{admin[1]}", auth=auth.auth,
                     token=auth.token_file is not None)

    def ready(self) -> tuple[bool, str]:
        """``/readyz``: this instance answers correctly. Its zones are loaded (there
        is no Supervisor before), a serving process is up, and the startup wait for
        the first sync is over. A member cluster that cannot be reached is never a
        reason: it would take every replica out of the Service and the whole zone,
        static records included, dark. It shows in the reason, the metrics, the
        logs, stale markings and explain instead."""
        if self._serving() == 0:
            return False, "no serving process is up (see the worker_died log lines)"
        pending = self._pending()
        if pending is not None:
            return False, pending
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
        cur = self.history.current
        if cur is not None:
            s["config_version"] = cur.version
            s["config_applied"] = cur.unix
        s["reloads"] = dict(self.history.counts)
        probe_stats = getattr(self.control, "probe_stats", None)
        if probe_stats is not None:
            s["probes"] = probe_stats()
        return s

    def config_view(self) -> dict[str, Any]:
        """``GET /v1/config``: the version serving now."""
        cur = self.history.current
        out: dict[str, Any] = cur.as_dict() if cur is not None else {}
        out["config_path"] = str(self.source) if self.source is not None else None
        out["state_dir"] = str(self.cfg.state_dir) if self.cfg.state_dir is not None else None
        out["watching"] = sorted(str(p) for p in self._watched)
        out["rollback_to"] = self.history.previous()
        return out

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

    # -- versions: reload, rollback ------------------------------------------------

    async def reload(self, trigger: str = "sighup") -> versions.Entry:
        """Safe reload of the config file (and the files it names): the new config,
        zones and federation are loaded whole off to the side; on any error the
        running state stays, and the attempt is in the history as failed.

        Make before break: with other clusters, the new watches list (up to
        ``dns.startup_wait``) while the old instance keeps serving; only then
        does the new table serve. Across the swap the serving side holds the
        federated names (answers them once the plans are in), so no query ever
        sees the new table without them: an NXDOMAIN there would be cached by
        resolvers for the SOA minimum."""
        async with self._reloading:  # one at a time: a second SIGHUP waits for the first
            return await self._apply(trigger, None)

    async def rollback(self, to: str | None = None) -> versions.Entry:
        """Apply a kept version again (the one before the current one by default).
        ``ConfigError`` when there is none such."""
        async with self._reloading:
            target = to or self.history.previous()
            if target is None:
                raise ConfigError(
                    "no earlier version to roll back to"
                    + ("" if self.cfg.state_dir is not None else " (set state_dir to keep them)")
                )
            self.history.restore(target)  # fails here, before anything is loaded, on a bad version
            return await self._apply("rollback", target)

    def _load(self, trigger: str, to: str | None) -> tuple[versions.Fingerprint, Config, Instance | None]:
        """In a thread: the config and its version; its instance unless unchanged."""
        if to is not None:
            cfg, fp = self.history.restore(to)
        elif self.source is not None:
            cfg, fp = versions.read_config(self.source)
        else:  # a config built in code: the same one again
            cfg, fp = self.cfg, versions.failed_version(None)
        cur = self.history.current
        if trigger == "file" and cur is not None and cur.digest == fp.digest:
            return fp, cfg, None  # a touch, a kubelet resync, an edit undone: nothing to do
        _, inst = load_aside(cfg)
        return fp, cfg, inst

    async def _apply(self, trigger: str, to: str | None) -> versions.Entry:
        loop = asyncio.get_running_loop()
        try:
            # In a thread: this loop (TCP, uvloop UDP, the admin API, the watches) keeps
            # running while a big zone loads.
            fp, new_cfg, new_inst = await loop.run_in_executor(None, self._load, trigger, to)
        except Exception as e:
            fp = versions.failed_version(self.source) if to is None else versions.failed_version(None)
            entry = self.history.record(versions.entry(fp, trigger, "failed", error=str(e)))
            log.error("reload_failed", version=fp.version, trigger=trigger, error=str(e),
                      serving=self.history.current.version if self.history.current else None,
                      hint="fix the file: fedns reloads on its next change (or send SIGHUP)")
            return entry
        if new_inst is None:
            self.history.counts["unchanged"] += 1
            log.debug("config_unchanged", version=fp.version, trigger=trigger)
            return versions.entry(fp, trigger, "unchanged")
        old_inst = self.inst
        snapshot = self.control.snapshot() if self.control is not None else None
        await self._swap_in(new_inst)
        kept = await loop.run_in_executor(None, self.history.keep_files, new_cfg, fp)
        entry = self.history.record(versions.entry(fp, trigger, "applied", kept=kept))
        if to is None:
            files = self._files_of(new_cfg)
            if files != self._watched:
                self._watched = files
                self._rewatch.set()
        log.info("reloaded", version=fp.version, trigger=trigger, kept=kept,
                 zones=[z.origin for z in new_inst.cfg.zones])
        # After the swap: what the change moved is for the log and the history, and
        # working it out (every name for every client bucket, both sides) takes
        # seconds for thousands of services; the new answers must not wait for it.
        changes = await loop.run_in_executor(None, _summarize, old_inst, new_inst, snapshot)
        entry = self.history.amend(entry, changes)
        log.info("reload_changes", version=fp.version, changes=changes)
        return entry

    async def _swap_in(self, new_inst: Instance) -> None:
        old_fed, old_control = self.inst.fed, self.control
        if old_control is not None and new_inst.fed is not None and old_fed == new_inst.fed:
            # Same clusters: keep the watches, republish what they know into the new table.
            self._swap(new_inst)
            old_control.set_routing(new_inst.fed.routing)
            old_control.republish()
            self._on_synced()
            return
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

    def _swap(self, new_inst: Instance) -> None:
        self.inst = new_inst
        self._on_reload(new_inst)

    # -- reload on change ------------------------------------------------------------

    def _files_of(self, cfg: Config) -> frozenset[Path]:
        if self.source is None:
            return frozenset()
        return frozenset([self.source, *(p for _, p in versions.named_files(cfg))])

    async def _watch(self) -> None:
        """Reload when the config file or a file it names changes (inotify, via watchfiles).

        A Kubernetes ConfigMap volume changes by swapping the ``..data`` symlink
        in the mounted directory (the files themselves are links through it and
        never change): an event on ``..data`` there counts as a change of every
        file. The directories are watched, not the files: an editor or the kubelet
        replaces a file by renaming a new one over it."""
        import logging

        from watchfiles import awatch

        logging.getLogger("watchfiles").setLevel(logging.WARNING)  # its per-batch info lines
        while True:
            self._rewatch.clear()
            files = self._watched
            names = {os.path.abspath(p) for p in files} | {os.path.realpath(p) for p in files}
            dirs = sorted({os.path.dirname(n) for n in names if os.path.isdir(os.path.dirname(n))})

            def wanted(_change: Any, path: str, names: set[str] = names) -> bool:
                return path in names or os.path.basename(path) == "..data"

            try:
                async for _changes in awatch(
                    *dirs, watch_filter=wanted, step=self.WATCH_STEP_MS,
                    debounce=self.WATCH_DEBOUNCE_MS, recursive=False, stop_event=self._rewatch,
                ):
                    await self.reload("file")
                    if self._rewatch.is_set():
                        break
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a directory gone, inotify limits: SIGHUP still works
                log.error("config_watch_failed", error=str(e), dirs=dirs,
                          hint="reload with SIGHUP; fedns retries watching in 5 s")
                await asyncio.sleep(5)

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self._sync_task is not None:
            self._sync_task.cancel()
        if self.control is not None:
            await self.control.stop()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()


# Up to these (old + new) each reload is summarized: beyond, the summary would cost
# seconds to minutes of a core after every reload (``resolver.diff.summarize``).
SUMMARY_MAX_NAMES = 20_000
SUMMARY_MAX_SERVICES = 2_000


def _summarize(
    old: Instance, new: Instance, snapshot: dict[str, Any] | None
) -> dict[str, Any] | None:
    """What the change moved, in summary (``fedns diff``'s counts and first names),
    in a thread beside the serving ones (hence the switch interval, as ``load_aside``)."""
    from .diff import summarize

    names = sum(len(z.data) for inst in (old, new) for z in inst.table.zones.values())
    services = sum(len(inst.fed.services) if inst.fed is not None else 0 for inst in (old, new))
    services += 2 * len((snapshot or {}).get("services", ()))
    if services > SUMMARY_MAX_SERVICES:
        return {"skipped": f"{services:,} services on both sides, more than the "
                           f"{SUMMARY_MAX_SERVICES:,} a reload summary plans; run fedns diff"}
    if names > SUMMARY_MAX_NAMES:
        # Each name is asked of both sides per client bucket: a 400,000-record zone
        # would keep a core busy for minutes after every reload.
        return {"skipped": f"{names:,} zone names on both sides, more than the "
                           f"{SUMMARY_MAX_NAMES:,} a reload summary asks; run fedns diff",
                "services": services}
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, RELOAD_SWITCH_INTERVAL))
    try:
        return summarize(old, new, snapshot)
    except Exception as e:  # a summary is for the log; it never undoes a valid change
        log.warning("config_diff_failed", error=f"{type(e).__name__}: {e}")
        return None
    finally:
        sys.setswitchinterval(before)


def _install_signals(sup: Supervisor) -> asyncio.Event:
    """SIGHUP reloads, SIGTERM/SIGINT set the returned event. Installed before the
    control side starts: the serving side answers from the first moment, so a
    SIGTERM may come while it starts (and must stop fedns cleanly, workers too)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        t = loop.create_task(sup.reload("sighup"))
        sup.tasks.add(t)  # the loop keeps only weak references to tasks
        t.add_done_callback(sup.tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    return stop


def freeze_heap() -> None:
    """Move every object there is now out of the collector's sight (``gc.freeze``).

    A full sync makes the registry and the table, tens of millions of objects at
    2,000,000 endpoints, with the collector off (``Control.on_change``, the list
    parse). Left in the youngest generation, the first collection after it
    would walk them all: a pause of a second on the loop that serves, at some
    moment soon after (found as one endpoint change answered 1 s late in
    ``benchmarks/scale.py``), and again as they age into the older generations.
    Frozen, they are still freed when their last reference goes; only a cycle
    among them is never collected, and the last milliseconds before a sync leave
    few (no ``gc.collect()`` first: that is the very pause). The workers' parent
    does the same before it forks them (``WorkerPool.renew``)."""
    gc.freeze()
    log.info("heap_frozen", objects=gc.get_freeze_count())


async def _serve_single(
    inst: Instance, udp_sock: Any, tcp_sock: Any, admin: tuple[str, int] | None,
    version: versions.Fingerprint,
) -> None:
    rt = Runtime(inst.table, inst.cfg, inst.waiting())
    close = await run_transports(rt, udp_sock, tcp_sock)

    def publish(target: Instance, update: PlanUpdate) -> None:
        rt.update(lambda _table: target.apply(update))  # the table the UDP thread may be reading

    def on_reload(new: Instance) -> None:
        rt.set_table(new.table, new.cfg, hold=new.waiting())  # released by rt.mark_synced

    frozen = False

    def on_synced() -> None:
        nonlocal frozen
        rt.mark_synced()
        if not frozen and sup.inst.fed is not None:
            # The first full sync only: a reload's old watches, stopped after this,
            # hold cycles (tasks, sessions) that frozen would never be collected.
            frozen = True
            freeze_heap()

    sup = Supervisor(
        inst, publish, on_reload, lambda: rt.stats.as_dict() | {"workers": 1}, on_synced,
        version=version,
    )
    stop = _install_signals(sup)
    await sup.start(admin)
    await stop.wait()
    close()
    await sup.stop()


async def _serve_parent(
    inst: Instance, pool: WorkerPool, admin: tuple[str, int] | None, version: versions.Fingerprint
) -> int:
    loop = asyncio.get_running_loop()
    pool.listen()

    def publish(target: Instance, update: PlanUpdate) -> None:
        # Workers first, so they rebuild while the parent does its own copy (nothing can
        # run in between here: no explain answered, no worker respawned from a stale table).
        pool.send(Publish(update))
        target.apply(update)  # the parent's copy answers explain, and seeds respawns

    def on_reload(new: Instance) -> None:
        pool.cfg = new.cfg
        # The config the parent validated, not its file read again: the file may have
        # changed since (and a rollback's is a kept copy).
        pool.send(Reload(new.cfg))

    def on_synced() -> None:
        pool.send(Synced())  # the queries the current workers hold are answered
        if not pool.renewed and sup.inst.fed is not None:
            # Fork the workers again, now that the table holds the whole federation:
            # they share its pages with this process instead of each building a copy
            # from the plans (each old worker retires once its successor serves).
            # Without a federation the first workers already share the zones, and a
            # reload's workers load their own (the history records it first).
            pool.renewed = True
            pool.renew(sup.inst)

    sup = Supervisor(
        inst, publish, on_reload, pool.stats, on_synced, pool.alive,
        version=version, pending=pool.pending,
    )
    stop = _install_signals(sup)
    await sup.start(admin)
    waiter = loop.create_task(stop.wait())
    code = 0
    while not waiter.done():
        await asyncio.wait([waiter], timeout=0.25)
        if not waiter.done() and not pool.respawn_dead(sup.inst, sup.inst.waiting()):
            code = 1
            break
        grown = pool.grown(loop.time())
        if grown is not None:
            log.info("workers_renewed", grown_mb=round(grown / 1024),
                     why="shared pages had become the workers' own (changes, reloads)")
            pool.renew(sup.inst)
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
    admin_is_open(cfg, admin)
    if cfg.admin_auth.token_file is not None:
        read_token(cfg.admin_auth.token_file)  # unreadable or empty: refuse now, not at a request
    version = start_version(cfg)
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
        asyncio.run(_serve_single(inst, udp_sock, tcp_sock, admin, version))
        return 0
    # SO_REUSEPORT: the control process binds one UDP socket and one TCP listener
    # per worker slot (errors reported here, port 0 resolved) and keeps them; each
    # worker serves its slot's. The first workers fork before the parent's event
    # loop exists, and answer the static zones while the federation first syncs.
    pool = WorkerPool(cfg, host, port, load_aside, workers)
    port = pool.port
    for slot in range(workers):
        pool.spawn(inst, inst.waiting(), slot)
    log.info("serving", dns=f"{host}:{port}", zones=zones, workers=workers, udp=udp_mode)
    return asyncio.run(_serve_parent(inst, pool, admin, version))


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
