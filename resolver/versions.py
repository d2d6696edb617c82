"""Config versions: what was applied, when, why and with what outcome; the files kept for rollback.

A version is a content hash over the config and every file it names for
answers (zone files, the MaxMind DB): the YAML as data, canonically (sorted
keys, no comments or whitespace), so reformatting the YAML keeps the
version, and each named file's SHA-256. Credentials (kubeconfigs, the cookie
secret, the admin token) are not part of it and are never copied: a version
says what fedns answers from, not who it talks to.

``History`` keeps the last ``history_size`` attempts, applied or not, in
memory and, with ``state_dir``, in ``state_dir/history.json``, so the history
survives restarts. Each applied version's files are copied to
``state_dir/versions/<version>/`` (``manifest.json`` says which is which);
``restore`` reads a version back from there as a ``Config`` whose zone files
are those copies: a rollback serves exactly the bytes that were served.
Paths the kept config names for anything else (kubeconfigs, secrets) are the
original ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from .config import Config, ConfigError, config_from_dict, read_yaml

log = structlog.get_logger("fedns.versions")

TRIGGERS = ("start", "sighup", "file", "rollback", "api")
OUTCOMES = ("applied", "failed", "unchanged")
VERSION_LEN = 12  # hex digits shown (as a short git hash); the full digest is kept too


@dataclass(frozen=True, slots=True)
class FileRecord:
    """One file a version is made of."""

    role: str  # "config", "zones[0]" (global.example.test.), "federation.mmdb.path"
    path: str  # where the config named it (absolute)
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A config's version, computed from its files as they are now."""

    digest: str  # SHA-256, hex
    files: tuple[FileRecord, ...]

    @property
    def version(self) -> str:
        return self.digest[:VERSION_LEN]


@dataclass(frozen=True, slots=True)
class Entry:
    """One attempt to apply a config (``/v1/config/history``)."""

    version: str
    digest: str
    unix: float
    trigger: str
    outcome: str  # applied, failed, unchanged
    error: str | None = None
    files: tuple[FileRecord, ...] = ()
    changes: dict[str, Any] | None = None  # the reload's diff summary (resolver.diff)
    kept: bool = False  # its files are in state_dir: it can be rolled back to

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.unix))
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Entry:
        files = tuple(FileRecord(**f) for f in d.get("files", ()))
        return cls(
            version=str(d["version"]), digest=str(d.get("digest", d["version"])),
            unix=float(d["unix"]), trigger=str(d["trigger"]), outcome=str(d["outcome"]),
            error=d.get("error"), files=files, changes=d.get("changes"), kept=bool(d.get("kept")),
        )


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def named_files(cfg: Config) -> Iterator[tuple[str, Path]]:
    """(role, path) of every file a config serves answers from."""
    for i, z in enumerate(cfg.zones):
        yield f"zones[{i}]", z.file
    mmdb = cfg.federation.get("mmdb") if isinstance(cfg.federation, dict) else None
    if isinstance(mmdb, dict) and isinstance(mmdb.get("path"), str):
        p = Path(mmdb["path"])
        if not p.is_absolute() and cfg.path is not None:
            p = cfg.path.parent / p
        yield "federation.mmdb.path", p


def canonical(raw: Any) -> bytes:
    """The YAML's data in one spelling: whitespace, comments, key order and quoting
    of the file do not change it."""
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str).encode()


def fingerprint(cfg: Config, raw: Any) -> Fingerprint:
    """The version of ``cfg`` (read from ``raw``) with its files as they are now.
    An unreadable named file is part of the version as missing (loading it fails anyway)."""
    h = hashlib.sha256(canonical(raw))
    files = []
    if cfg.path is not None:
        digest, size = _sha256_file(cfg.path)
        files.append(FileRecord("config", str(cfg.path), digest, size))
    for role, path in named_files(cfg):
        try:
            digest, size = _sha256_file(path)
        except OSError:
            digest, size = "missing", 0
        files.append(FileRecord(role, str(path), digest, size))
        h.update(f"\0{role}\0{digest}".encode())
    return Fingerprint(h.hexdigest(), tuple(files))


def read_config(path: Path) -> tuple[Config, Fingerprint]:
    """The config at ``path`` and its version. ``ConfigError`` on a bad config."""
    raw = read_yaml(path)
    cfg = config_from_dict(raw, path)
    return cfg, fingerprint(cfg, raw)


def failed_version(path: Path | None) -> Fingerprint:
    """A version for a config that could not be read as one: its file's bytes."""
    if path is None:
        return Fingerprint("0" * 64, ())
    try:
        digest, size = _sha256_file(path)
    except OSError:
        return Fingerprint("0" * 64, ())
    return Fingerprint(digest, (FileRecord("config", str(path), digest, size),))


class History:
    """The last ``size`` attempts, newest last; with ``state_dir`` also on disk."""

    def __init__(self, size: int, state_dir: Path | None) -> None:
        self.size = size
        self.state_dir = state_dir
        self.entries: list[Entry] = []
        self.current: Entry | None = None  # the version serving now
        self.counts = dict.fromkeys(OUTCOMES, 0)
        if state_dir is not None:
            self._load()

    # -- on disk ------------------------------------------------------------------

    @property
    def _file(self) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "history.json"

    def _dir(self, version: str) -> Path:
        assert self.state_dir is not None
        return self.state_dir / "versions" / version

    def _load(self) -> None:
        try:
            data = json.loads(self._file.read_text())
            self.entries = [Entry.from_dict(d) for d in data.get("versions", [])][-self.size :]
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as e:
            # Never a reason not to serve: start a new history, keep the old file aside.
            log.warning("history_unreadable", file=str(self._file), error=str(e),
                        hint="a new history starts; the old file is kept as history.json.bad")
            with contextlib.suppress(OSError):
                self._file.replace(self._file.with_suffix(".json.bad"))
            self.entries = []

    def _save(self) -> None:
        if self.state_dir is None:
            return
        tmp = None
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            body = json.dumps({"versions": [e.as_dict() for e in self.entries]}, indent=1)
            fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".history.")
            with os.fdopen(fd, "w") as f:
                f.write(body + "\n")
            os.replace(tmp, self._file)  # atomic: a crash leaves the old history or the new one
            tmp = None
            self._prune()
        except OSError as e:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)  # a full disk: leave nothing half written behind
            log.error("history_not_saved", state_dir=str(self.state_dir), error=str(e),
                      hint="check that state_dir is writable; the history stays in memory")

    def _prune(self) -> None:
        """Kept files of versions that left the history go."""
        root = self.state_dir / "versions" if self.state_dir is not None else None
        if root is None or not root.is_dir():
            return
        keep = {e.version for e in self.entries if e.kept}
        if self.current is not None:
            keep.add(self.current.version)
        for d in root.iterdir():
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)

    def keep_files(self, cfg: Config, fp: Fingerprint) -> bool:
        """Copy the files of an applied version into ``state_dir`` (once per version).
        False when there is no state_dir or the files changed while being copied."""
        if self.state_dir is None or cfg.path is None:
            return False
        dest = self._dir(fp.version)
        if (dest / "manifest.json").is_file():
            return True
        tmp: Path | None = None
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=self.state_dir, prefix=".version."))
            names: dict[str, str] = {}
            manifest = {"version": fp.version, "digest": fp.digest, "config": str(cfg.path), "files": names}
            sources = [("config", cfg.path), *named_files(cfg)]
            by_role = {f.role: f for f in fp.files}
            for n, (role, src) in enumerate(sources):
                name = f"{n}-{src.name}"
                shutil.copyfile(src, tmp / name)
                digest, _ = _sha256_file(tmp / name)
                if role in by_role and digest != by_role[role].sha256:
                    shutil.rmtree(tmp, ignore_errors=True)
                    log.warning("version_not_kept", version=fp.version, file=str(src),
                                reason="the file changed while it was copied; the next reload keeps it")
                    return False
                names[role] = name
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
            return True
        except OSError as e:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            log.error("version_not_kept", version=fp.version, error=str(e),
                      hint="check that state_dir is writable and has room; rollback to it "
                           "is not possible")
            return False

    def restore(self, version: str) -> tuple[Config, Fingerprint]:
        """The config of a kept version, its zone files (and MaxMind DB) being the kept copies."""
        if self.state_dir is None:
            raise ConfigError("rollback needs state_dir: the files of each version are kept there")
        matches = [e for e in self.entries if e.kept and e.version.startswith(version)] if version else []
        versions = {e.version for e in matches}
        if len(versions) != 1:
            kept = sorted({e.version for e in self.entries if e.kept})
            what = "matches several" if versions else "is not a kept version"
            raise ConfigError(f"version {version!r} {what}; kept: {', '.join(kept) or 'none'}")
        (v,) = versions
        d = self._dir(v)
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError) as e:
            raise ConfigError(f"version {v}: its kept files cannot be read ({e})") from None
        files = manifest["files"]
        original = Path(manifest["config"])
        raw = read_yaml(d / files["config"])
        # The version is the data as the operator wrote it, before the paths change below.
        digest_before = canonical(raw)
        if isinstance(raw, dict):
            for i, z in enumerate(raw.get("zones") or []):
                if isinstance(z, dict) and f"zones[{i}]" in files:
                    z["file"] = str(d / files[f"zones[{i}]"])
            mmdb = (raw.get("federation") or {}).get("mmdb")
            if isinstance(mmdb, dict) and "federation.mmdb.path" in files:
                mmdb["path"] = str(d / files["federation.mmdb.path"])
        cfg = config_from_dict(raw, original)
        fp = fingerprint(replace(cfg, path=None), json.loads(digest_before))
        digest, size = _sha256_file(d / files["config"])
        rec = [FileRecord("config", str(original), digest, size)]
        rec += [replace(f, path=self._original_path(v, f.role) or f.path) for f in fp.files]
        return cfg, Fingerprint(fp.digest, tuple(rec))

    def _original_path(self, version: str, role: str) -> str | None:
        for e in self.entries:
            if e.version == version:
                for f in e.files:
                    if f.role == role:
                        return f.path
        return None

    # -- in memory ------------------------------------------------------------------

    def record(self, entry: Entry) -> Entry:
        self.counts[entry.outcome] = self.counts.get(entry.outcome, 0) + 1
        if entry.outcome == "applied":
            self.current = entry
        self.entries.append(entry)
        del self.entries[: -self.size]
        self._save()
        return entry

    def amend(self, entry: Entry, changes: dict[str, Any] | None) -> Entry:
        """``entry`` (recorded) with what it changed, once that is known."""
        new = replace(entry, changes=changes)
        for i in range(len(self.entries) - 1, -1, -1):
            if self.entries[i] is entry:
                self.entries[i] = new
                if self.current is entry:
                    self.current = new
                self._save()
                break
        return new

    def previous(self) -> str | None:
        """The applied version before the current one (what a rollback goes back to)."""
        cur = self.current.version if self.current is not None else None
        for e in reversed(self.entries):
            if e.outcome == "applied" and e.kept and e.version != cur:
                return e.version
        return None

    def view(self) -> dict[str, Any]:
        return {"versions": [e.as_dict() for e in reversed(self.entries)], "size": self.size,
                "state_dir": str(self.state_dir) if self.state_dir is not None else None}


def entry(fp: Fingerprint, trigger: str, outcome: str, **kw: Any) -> Entry:
    return Entry(fp.version, fp.digest, time.time(), trigger, outcome, files=fp.files, **kw)

