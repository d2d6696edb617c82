"""Fixtures that start real servers: fedns (a factory, and a shared demo instance) and NSD.

Usage in a test::

    def test_x(fedns_server):
        srv = fedns_server({"example.test.": ZONE_TEXT}, settings={"tcp": {"idle_timeout": 0.5}})
        host, port = srv

A failing test shows the log of every server process still running.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from servers import (
    DEMO_CONFIG,
    RICH_ORIGIN,
    RICH_SETTINGS,
    RICH_ZONE,
    FednsFactory,
    ServerProcess,
    start_fedns,
    write_config,
)


@pytest.fixture
def fedns_server(tmp_path: Path) -> Iterator[FednsFactory]:
    """Factory: ``fedns_server(zones | config_path, settings=None, workers=1)`` -> running server.

    ``zones`` maps origin -> zone text or zone file Path (see ``servers.write_config``);
    a ``Path`` instead is used as the config file as is. Every server started
    is stopped at teardown.
    """
    started: list[ServerProcess] = []
    count = 0

    def start(
        zones: Mapping[str, str | Path] | Path,
        settings: Mapping[str, Any] | None = None,
        workers: int = 1,
        extra_args: tuple[str, ...] = (),
    ) -> ServerProcess:
        nonlocal count
        count += 1
        workdir = tmp_path / f"fedns{count}"
        workdir.mkdir()
        config = zones if isinstance(zones, Path) else write_config(workdir, zones, settings)
        sp = start_fedns(config, workdir, workers=workers, extra_args=extra_args)
        started.append(sp)
        return sp

    start.started = started  # type: ignore[attr-defined]  # for the failure report below
    yield start
    for sp in started:
        sp.stop()


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One fedns serving the shipped demo zone (``zones/demo.yaml``) for the whole session."""
    sp = start_fedns(DEMO_CONFIG, tmp_path_factory.mktemp("demo"))
    yield sp
    sp.stop()


@pytest.fixture(scope="session")
def rich_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One fedns serving ``tests/data/rich.example.test.zone`` (every record type and rule)."""
    workdir = tmp_path_factory.mktemp("rich")
    sp = start_fedns(write_config(workdir, {RICH_ORIGIN: RICH_ZONE}, RICH_SETTINGS), workdir)
    yield sp
    sp.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        for sp in _servers_of(item):
            rep.sections.append((f"{sp.name} on port {sp.port}", sp.output()[-6000:]))


def _servers_of(item: pytest.Item) -> list[ServerProcess]:
    """The server processes a test used (directly, through a fixture's tuple, or the factory)."""
    found: list[ServerProcess] = []
    for value in getattr(item, "funcargs", {}).values():
        values = value if isinstance(value, tuple) else (value,)
        values += tuple(getattr(value, "started", ()))
        found += [v for v in values if isinstance(v, ServerProcess) and v not in found]
    return found
