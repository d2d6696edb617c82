"""The server's settings: one YAML file, validated into frozen dataclasses.

Every error names the file and the key path (``zones[1].origin``) and says
what is expected, so an operator can fix it without reading code.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .dns.rrl import Settings
from .dns.wire import DEFAULT_UDP_PAYLOAD, MIN_UDP_PAYLOAD

UDP_MODES = ("auto", "mmsg", "uvloop")  # dns.udp; resolver/serve/udp.py picks for auto


def _demo_config() -> Path:
    """zones/demo.yaml: from the checkout, or as installed (package ``resolver.demo``)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "zones" / "demo.yaml", here / "demo" / "demo.yaml"):
        if candidate.is_file():
            return candidate
    from importlib.resources import files

    return Path(str(files("resolver.demo") / "demo.yaml"))


DEMO_CONFIG = _demo_config()


class ConfigError(ValueError):
    """A config that must not be served. The message says where and what to do."""


@dataclass(frozen=True, slots=True)
class ZoneConfig:
    origin: str  # absolute, lowercase, with the trailing dot
    file: Path


@dataclass(frozen=True, slots=True)
class TcpConfig:
    """``tcp:`` (RFC 7766 connections and their limits; resolver/serve/README.md)."""

    idle_timeout: float = 10.0  # RFC 7766 6.2.3: a few seconds; Knot 10, BIND 30, NSD 120
    message_timeout: float = 5.0  # one whole query, first byte to last (Knot's tcp-io-timeout)
    min_rate: int = 512  # bytes/s a query being read, or replies being sent, must keep up; 0: off
    max_connections: int = 1024  # in all; at the cap the least recently active gives way
    max_per_source: int = 64  # per IPv4 address or IPv6 /64; 0: no cap
    max_inflight: int = 64  # per connection; reading pauses beyond it


# ``rate_limit:`` is read into the limiter's own frozen settings (checked in ``_rate_limit``).
RateLimitConfig = Settings


@dataclass(frozen=True, slots=True)
class CookieConfig:
    """``cookies:`` (DNS cookies, RFC 7873 / RFC 9018; off unless configured)."""

    secret_file: Path | None = None  # None: a random secret per instance (resolver.dns.cookies)
    grace: float = 3600.0  # the file's later secrets are accepted this long after it changed
    # Read from secret_file: the current secret first, then the previous ones.
    secrets: tuple[bytes, ...] = field(default=(), repr=False)
    rotated: float = 0.0  # the secret file's modification time (Unix): when the grace began


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``limits:`` (bounds on what input may make fedns load)."""

    max_records: int = 1_000_000


ADMIN_AUTH = ("writes", "all")  # admin.auth: what the token guards


@dataclass(frozen=True, slots=True)
class AdminAuth:
    """``admin.token_file`` and ``admin.auth`` (resolver/serve/admin.py)."""

    token_file: Path | None = None  # None: write endpoints are refused (403)
    auth: str = "writes"  # writes: rollback/reload need the token; all: every endpoint


HISTORY_SIZE = 50  # versions kept (``history_size``)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    listen: tuple[str, int] = ("127.0.0.1", 5300)
    max_udp_payload: int = DEFAULT_UDP_PAYLOAD
    workers: int = 1
    startup_wait: float = 5.0  # max seconds a query for a not-yet-synced federated name waits
    udp: str = "auto"  # UDP transport: auto (mmsg where available), mmsg, uvloop (see udp.py)
    tcp: TcpConfig = TcpConfig()
    zones: tuple[ZoneConfig, ...] = ()
    admin: tuple[str, int] | None = None
    admin_auth: AdminAuth = AdminAuth()
    state_dir: Path | None = None  # where versions and their files are kept (None: memory only)
    history_size: int = HISTORY_SIZE
    identity: str | None = None
    version: str | None = None
    log_level: str = "info"
    query_sample: float = 0.0  # log.query_sample: the share of queries logged (0 off, 1 all)
    federation: dict[str, Any] = field(default_factory=dict)
    rate_limit: RateLimitConfig | None = None  # None: off
    cookies: CookieConfig | None = None
    limits: LimitsConfig = LimitsConfig()


def parse_hostport(text: str, where: str, default_port: int | None = None) -> tuple[str, int]:
    """``127.0.0.1:53``, ``[::1]:53`` or ``:53`` -> (host, port).

    Errors name ``where`` (a key path, or a flag such as ``--dns``), not the file."""
    r = NO_FILE
    s = str(text).strip()
    host, port_s = s, None
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise r.fail(where, f"{text!r} has '[' without ']'; write [ADDR]:PORT")
        host, rest = s[1:end], s[end + 1 :]
        if rest.startswith(":"):
            port_s = rest[1:]
    elif s.count(":") == 1:
        host, port_s = s.split(":")
    if port_s is None:
        if default_port is None:
            raise r.fail(where, f"{text!r} needs a port, as ADDR:PORT")
        port = default_port
    else:
        try:
            port = int(port_s)
        except ValueError:
            raise r.fail(where, f"port {port_s!r} in {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise r.fail(where, f"port {port} is out of range 0-65535")
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise r.fail(where, f"{host!r} is not an IP address") from None
    return host, port


def parse_admin(text: Any, where: str) -> tuple[str, int]:
    """The admin API's address: as ``parse_hostport``, but ``PORT`` or ``:PORT`` alone
    is loopback (the API shows the service map; every address only when asked)."""
    s = str(text).strip()
    if s.isdigit():
        s = f":{s}"
    if s.startswith(":"):
        s = "127.0.0.1" + s
    return parse_hostport(s, where)


class Reader:
    """Reads the values of one config file, checking each against what is expected.

    An error is ``fail(key, message)``, raised by the caller: ``ConfigError(
    "<file>: <key.path>: <message>")``, so an operator sees where and what.
    Every section of the config is read through one (``config_from_dict``,
    ``federation.config``, ``federation.locality``, the policy and probe
    settings). Without a file (``NO_FILE``) the message is ``"<key.path>:
    <message>"``: for command-line flags, and for Service annotations (their
    errors are caught and reported as ignored values, never raised out).
    """

    __slots__ = ("path",)

    def __init__(self, path: Path | None = None) -> None:
        self.path = path

    def fail(self, key: str, msg: str) -> ConfigError:
        where = f"{self.path}: " if self.path else ""
        return ConfigError(f"{where}{key}: {msg}")

    def mapping(self, v: Any, key: str) -> dict[str, Any]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.fail(key, f"expected a mapping, got {type(v).__name__}")
        return v

    def sequence(self, v: Any, key: str, items: str) -> list[Any]:
        """A list (absent: empty); ``items`` says what it holds, for the error."""
        if v is None:
            return []
        if not isinstance(v, list):
            raise self.fail(key, f"expected a list of {items}")
        return v

    def known(self, d: dict[str, Any], key: str, allowed: set[str]) -> None:
        extra = sorted(set(d) - allowed)
        if extra:
            raise self.fail(
                f"{key}.{extra[0]}" if key else extra[0],
                f"unknown key; expected one of: {', '.join(sorted(allowed))}",
            )

    def integer(self, v: Any, key: str, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.fail(key, f"expected a whole number, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"{v} is out of range {lo}-{hi}")
        return v

    def number(self, v: Any, key: str, lo: float, hi: float) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(key, f"expected a number, got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"{v} is out of range {lo}-{hi}")
        return float(v)

    def string(self, v: Any, key: str) -> str:
        if not isinstance(v, str) or not v:
            raise self.fail(key, f"expected a non-empty string, got {v!r}")
        return v

    def duration(self, v: Any, key: str, lo: float, hi: float) -> float:
        """Seconds, from ``15s``, ``500ms``, ``2m``, ``1h`` (as Kubernetes and CoreDNS
        write them) or a plain number of seconds."""
        forms = "a number of seconds, or one with ms, s, m or h: 250ms, 2s, 1m, 1h"
        if isinstance(v, str):
            m = _DURATION.fullmatch(v.strip())
            if m is None:
                raise self.fail(key, f"{v!r} is not a duration; write {forms}")
            v = float(m.group(1)) * _UNITS[m.group(2)]
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise self.fail(key, f"expected a duration ({forms}), got {v!r}")
        if not lo <= v <= hi:
            raise self.fail(key, f"{v:g} s is out of range {lo:g}-{hi:g} s")
        return float(v)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


NO_FILE = Reader()  # for values that come from no file: flags, Service annotations


def absolute_name(text: str) -> str:
    t = text.strip().lower()
    return t if t.endswith(".") else t + "."


# Nodes the aliases of one config file may stand for, all together: a real config
# reuses a few blocks (``<<: *defaults``); nine aliases of nine aliases of ... (the
# "billion laughs") stand for billions, which PyYAML would build and print.
ALIAS_BUDGET = 100_000


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that fedns will not load (aliases past the budget, or recursive)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting what aliases stand for as it composes the
    node graph (before anything is built), so that a file whose aliases expand
    past ``ALIAS_BUDGET`` nodes is refused at once, naming the alias and line."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> nodes with its aliases expanded
        self._aliased = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if not self.check_event(yaml.AliasEvent):
            return super().compose_node(parent, index)
        event = self.peek_event()
        node = super().compose_node(parent, index)
        if isinstance(node, yaml.CollectionNode) and node.end_mark is None:
            problem = (
                f"alias *{event.anchor} is inside the node it names (a recursive alias); "
                "write the value out"
            )
            raise _Refused(None, None, problem, event.start_mark)
        self._aliased += self._size(node)
        if self._aliased > ALIAS_BUDGET:
            problem = (
                f"the aliases up to *{event.anchor} stand for more than {ALIAS_BUDGET:,} "
                "values (a 'billion laughs'?); fedns refuses such a file: write the values "
                "out or use fewer aliases"
            )
            raise _Refused(None, None, problem, event.start_mark)
        return node

    def _size(self, root: Any) -> int:
        """How many nodes ``root`` is with every alias in it expanded (the graph is
        walked once: each node's size is kept)."""
        sizes = self._sizes
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if id(node) in sizes:
                continue
            if isinstance(node, yaml.ScalarNode):
                sizes[id(node)] = 1
                continue
            if isinstance(node, yaml.MappingNode):
                kids = [x for kv in node.value for x in kv]
            else:
                kids = node.value
            if done:
                sizes[id(node)] = 1 + sum(sizes[id(k)] for k in kids)
            else:
                stack.append((node, True))
                stack.extend((k, False) for k in kids if id(k) not in sizes)
        return sizes[id(root)]


def load_config(path: Path | None = None) -> Config:
    """Read and validate a config file (the demo config when ``path`` is None)."""
    path = Path(path) if path is not None else DEMO_CONFIG
    return config_from_dict(read_yaml(path), path)


def read_yaml(path: Path) -> Any:
    """The config file's YAML as plain data; ``ConfigError`` (with the line) when unreadable."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from e
    try:
        text = data.decode()
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path}:{lineno}: byte 0x{data[e.start]:02X} at offset {e.start} is not UTF-8; "
            "save the file as UTF-8"
        ) from None
    try:
        raw = yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        what = "" if isinstance(e, _Refused) else "not valid YAML: "
        raise ConfigError(f"{path}{line}: {what}{problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    except ValueError as e:  # a value PyYAML cannot build, e.g. an integer of 5,000 digits
        raise ConfigError(f"{path}: a value cannot be read: {e}") from None
    return raw


def config_from_dict(raw: Any, path: Path | None = None) -> Config:
    r = Reader(path)
    top = r.mapping(raw, "(top level)")
    r.known(
        top,
        "",
        {"dns", "tcp", "zones", "admin", "server", "log", "federation", "rate_limit", "cookies",
         "limits", "state_dir", "history_size"},
    )
    base = path.parent if path is not None else Path.cwd()

    dns = r.mapping(top.get("dns"), "dns")
    r.known(dns, "dns", {"listen", "max_udp_payload", "workers", "startup_wait", "udp"})
    listen = parse_hostport(dns.get("listen", "127.0.0.1:5300"), "dns.listen", 53)
    max_udp = r.integer(
        dns.get("max_udp_payload", DEFAULT_UDP_PAYLOAD),
        "dns.max_udp_payload",
        MIN_UDP_PAYLOAD,
        65535,
    )
    workers = r.integer(dns.get("workers", 1), "dns.workers", 1, 64)
    startup_wait = r.duration(dns.get("startup_wait", 5.0), "dns.startup_wait", 0.0, 60.0)
    udp = dns.get("udp", "auto")
    if udp not in UDP_MODES:
        raise r.fail(
            "dns.udp",
            f"{udp!r} is not one of {', '.join(UDP_MODES)} (auto: batched recvmmsg/sendmmsg "
            "where the system has them, else uvloop)",
        )

    t = r.mapping(top.get("tcp"), "tcp")
    r.known(t, "tcp", set(TcpConfig.__slots__))
    td = TcpConfig()
    tcp = TcpConfig(
        idle_timeout=r.duration(t.get("idle_timeout", td.idle_timeout), "tcp.idle_timeout", 0.1, 3600),
        message_timeout=r.duration(
            t.get("message_timeout", td.message_timeout), "tcp.message_timeout", 0.1, 600
        ),
        min_rate=r.integer(t.get("min_rate", td.min_rate), "tcp.min_rate", 0, 1 << 30),
        max_connections=r.integer(
            t.get("max_connections", td.max_connections), "tcp.max_connections", 1, 1_000_000
        ),
        max_per_source=r.integer(
            t.get("max_per_source", td.max_per_source), "tcp.max_per_source", 0, 1_000_000
        ),
        max_inflight=r.integer(t.get("max_inflight", td.max_inflight), "tcp.max_inflight", 1, 65535),
    )

    zl = r.sequence(top.get("zones"), "zones", "{origin: NAME, file: PATH}")
    zones: list[ZoneConfig] = []
    seen: set[str] = set()
    for i, z in enumerate(zl):
        key = f"zones[{i}]"
        z = r.mapping(z, key)
        r.known(z, key, {"origin", "file"})
        if "origin" not in z:
            raise r.fail(
                f"{key}.origin", "missing; give the zone's name, e.g. global.example.test."
            )
        if "file" not in z:
            raise r.fail(f"{key}.file", "missing; give the path of the zone's master file")
        origin = absolute_name(r.string(z["origin"], f"{key}.origin"))
        if origin in seen:
            raise r.fail(f"{key}.origin", f"zone {origin} is listed twice")
        seen.add(origin)
        f = Path(r.string(z["file"], f"{key}.file"))
        zones.append(ZoneConfig(origin, f if f.is_absolute() else base / f))
    fed = r.mapping(top.get("federation"), "federation")
    if not zones and not fed:
        raise r.fail("zones", "no zones configured; add at least one {origin, file}")

    admin = None
    a = r.mapping(top.get("admin"), "admin")
    r.known(a, "admin", {"listen", "token_file", "auth"})
    if "listen" in a:
        admin = parse_admin(a["listen"], "admin.listen")
    admin_auth = _admin_auth(r, a, base)
    state_dir = None
    if top.get("state_dir") is not None:
        sd = Path(r.string(top["state_dir"], "state_dir")).expanduser()
        state_dir = sd if sd.is_absolute() else base / sd
    history_size = r.integer(top.get("history_size", HISTORY_SIZE), "history_size", 1, 10_000)

    s = r.mapping(top.get("server"), "server")
    r.known(s, "server", {"identity", "version"})
    identity = s.get("identity")
    version = s.get("version")
    for k, v in (("identity", identity), ("version", version)):
        if v is not None and not isinstance(v, str):
            raise r.fail(f"server.{k}", "expected a string, or omit it to stay silent")

    lg = r.mapping(top.get("log"), "log")
    r.known(lg, "log", {"level", "query_sample"})
    level = str(lg.get("level", "info")).lower()
    if level not in {"debug", "info", "warning", "error"}:
        raise r.fail("log.level", f"{level!r} is not one of debug, info, warning, error")
    query_sample = r.number(lg.get("query_sample", 0), "log.query_sample", 0.0, 1.0)

    rate_limit = _rate_limit(r, top.get("rate_limit"))
    cookies = _cookies(r, top.get("cookies"), base)
    limits = _limits(r, top.get("limits"))

    return Config(
        path=path,
        listen=listen,
        max_udp_payload=max_udp,
        workers=workers,
        startup_wait=startup_wait,
        udp=udp,
        tcp=tcp,
        zones=tuple(zones),
        admin=admin,
        admin_auth=admin_auth,
        state_dir=state_dir,
        history_size=history_size,
        identity=identity,
        version=version,
        log_level=level,
        query_sample=query_sample,
        federation=fed,
        rate_limit=rate_limit,
        cookies=cookies,
        limits=limits,
    )


def _admin_auth(r: Reader, a: dict[str, Any], base: Path) -> AdminAuth:
    auth = a.get("auth", "writes")
    if auth not in ADMIN_AUTH:
        raise r.fail(
            "admin.auth",
            f"{auth!r} is not one of writes (the token guards rollback and reload), "
            "all (every endpoint, /healthz, /readyz and /metrics too)",
        )
    token_file = None
    if a.get("token_file") is not None:
        f = Path(r.string(a["token_file"], "admin.token_file")).expanduser()
        token_file = f if f.is_absolute() else base / f
    elif auth == "all":
        raise r.fail("admin.auth", "all needs admin.token_file (the bearer token every request sends)")
    return AdminAuth(token_file, auth)


def read_token(path: Path) -> str:
    """The admin bearer token: the file's first line, stripped (a Secret's key, as mounted)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"admin.token_file: cannot read {path}: {e.strerror}") from None
    try:
        token = raw.decode("utf-8").strip().splitlines()[0].strip() if raw.strip() else ""
    except UnicodeDecodeError:
        raise ConfigError(f"admin.token_file: {path} is not UTF-8 text") from None
    if len(token) < 16:
        raise ConfigError(
            f"admin.token_file: {path} holds {'no' if not token else 'a short'} token; write one "
            "of at least 16 characters, e.g. `openssl rand -hex 32 > FILE`"
        )
    return token


def _rate_limit(r: Reader, raw: Any) -> RateLimitConfig | None:
    if raw is None:
        return None
    d = r.mapping(raw, "rate_limit")
    r.known(d, "rate_limit", set(RateLimitConfig.__slots__))
    dflt = RateLimitConfig()
    log_only = d.get("log_only", dflt.log_only)
    if not isinstance(log_only, bool):
        raise r.fail("rate_limit.log_only", f"expected true or false, got {log_only!r}")
    return RateLimitConfig(
        responses_per_second=r.integer(
            d.get("responses_per_second", dflt.responses_per_second),
            "rate_limit.responses_per_second",
            1,
            1_000_000,
        ),
        # As BIND: 0 drops every reply over the rate, N slips every Nth, at most 10.
        slip=r.integer(d.get("slip", dflt.slip), "rate_limit.slip", 0, 10),
        ipv4_prefix=r.integer(
            d.get("ipv4_prefix", dflt.ipv4_prefix), "rate_limit.ipv4_prefix", 0, 32
        ),
        ipv6_prefix=r.integer(
            d.get("ipv6_prefix", dflt.ipv6_prefix), "rate_limit.ipv6_prefix", 0, 128
        ),
        window=r.duration(d.get("window", dflt.window), "rate_limit.window", 1.0, 3600.0),
        table_size=r.integer(
            d.get("table_size", dflt.table_size), "rate_limit.table_size", 1, 16_777_216
        ),
        log_only=log_only,
    )


def _cookies(r: Reader, raw: Any, base: Path) -> CookieConfig | None:
    if raw is None:
        return None
    from .dns.cookies import parse_secrets

    d = r.mapping(raw, "cookies")
    r.known(d, "cookies", {"secret_file", "grace"})
    grace = r.duration(d.get("grace", 3600.0), "cookies.grace", 0.0, 30 * 86400.0)
    if d.get("secret_file") is None:
        return CookieConfig(grace=grace)
    f = Path(r.string(d["secret_file"], "cookies.secret_file"))
    f = f if f.is_absolute() else base / f
    try:
        text = f.read_text(encoding="ascii")
        rotated = f.stat().st_mtime
    except OSError as e:
        raise r.fail("cookies.secret_file", f"cannot read {f}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise r.fail("cookies.secret_file", f"{f}: not text; write 32 hex digits a line") from None
    try:
        secrets = parse_secrets(text)
    except ValueError as e:
        raise r.fail("cookies.secret_file", f"{f}: {e}") from None
    return CookieConfig(secret_file=f, grace=grace, secrets=secrets, rotated=rotated)


def _limits(r: Reader, raw: Any) -> LimitsConfig:
    d = r.mapping(raw, "limits")
    r.known(d, "limits", set(LimitsConfig.__slots__))
    return LimitsConfig(
        max_records=r.integer(d.get("max_records", 1_000_000), "limits.max_records", 1, 100_000_000)
    )
