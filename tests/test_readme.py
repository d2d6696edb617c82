"""What the README shows a user to copy works as shown.

The Configuration section's YAML sample is extracted from README.md and run
through the real ``fedns check``: a sample that names an undefined region or
cluster, or a key fedns does not know, fails here before it fails a user.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from pathlib import Path

import yaml
from fakekube import write_kubeconfig
from servers import REPO, fedns_argv, fedns_env


def section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_configuration_sample_passes_fedns_check(tmp_path: Path) -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", section("Configuration"), re.S)
    assert blocks, "the Configuration section has a ```yaml sample"
    sample = blocks[0]
    doc = yaml.safe_load(sample)
    # The files it names, laid out as the sample expects them (beside the config).
    for z in doc["zones"]:
        shutil.copy(REPO / "zones" / z["file"], tmp_path / z["file"])
    for c in doc["federation"]["clusters"]:
        if "kubeconfig" in c:
            write_kubeconfig(tmp_path / c["kubeconfig"], {c["context"]: "https://127.0.0.1:6443"})
    if "cookies" in doc:  # a shared secret, as `openssl rand -hex 16` writes it
        (tmp_path / doc["cookies"]["secret_file"]).write_text(secrets.token_hex(16) + "\n")
    cfg = tmp_path / "fedns.yaml"
    cfg.write_text(sample)
    result = subprocess.run(
        fedns_argv("check", "-c", str(cfg)),
        capture_output=True, text=True, env=fedns_env(), timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stdout, result.stdout  # its kubeconfig loads
    clusters = len(doc["federation"]["clusters"])
    assert f"{clusters} clusters" in result.stdout, result.stdout
    for z in doc["zones"]:
        assert f"zone {z['origin']}" in result.stdout, result.stdout
