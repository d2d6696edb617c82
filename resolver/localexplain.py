"""``fedns explain`` without a running server: load the config, sync once, explain."""

from __future__ import annotations

import asyncio
from typing import Any

from .config import Config
from .control import Control
from .explain import explain
from .server import load_instance


def explain_locally(cfg: Config, name: str, qtype: str, subnet: str | None, timeout: float = 15.0) -> dict[str, Any]:
    inst = load_instance(cfg)
    inst.table.waiting = ()

    async def run() -> dict[str, Any]:
        if inst.fed is not None:
            r = inst.routing
            def publish(plans: Any, removed: Any) -> None:
                inst.table.apply_plans(plans, removed)

            control = Control(inst.fed, r.defaults, r.overrides, publish, probe=r.probe)
            await control.start()
            try:
                if not await control.registry.wait_synced(timeout):
                    status = control.ready()[1]
                    raise TimeoutError(f"{status} after {timeout:.0f} s; is the cluster reachable?")
                control.release()
            finally:
                await control.stop()
        return explain(inst.table, name, qtype, subnet)

    return asyncio.run(run())
