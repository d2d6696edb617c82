"""Reference servers for locality/ECS tests and benchmarks: gdnsd, PowerDNS, dnsdist.

Each helper writes its config into a temp dir, starts the Debian binary in the
foreground on a free loopback port and returns a ``servers.ServerProcess``
(stop it with ``.stop()``). Phone-home is off everywhere (dnsdist
``setSecurityPollSuffix("")``, PowerDNS ``security-poll-suffix=``; gdnsd has
none).

The two authoritative servers serve the same thing as a fedns locality map: a
zone with one name whose A record depends on where the client is, given as
``nets`` (CIDR -> region, longest prefix wins), ``answers`` (region -> IPv4
address) and ``default`` (the region for clients no net matches):

* gdnsd: plugin geoip, a map with that ``nets`` stanza and a ``DYNA`` record
  (gdnsd merges equal neighbours, so its ECS scope is the widest prefix with
  the same answer);
* PowerDNS: the bind backend and a ``LUA A`` record that tests ``netmask()``
  longest prefix first (PowerDNS answers with scope = the query's source);
  ``lua_mode="shared"`` (``enable-lua-records=shared``, one Lua state) or
  ``"fresh"`` (``=yes``, a new Lua state per query, the default behaviour).

dnsdist is the resolver-side component: it listens on loopback, adds an ECS
option from each client's source address (/24 and /56) and forwards only one
zone to an upstream (fedns or any of the above); everything else is REFUSED.
"""

from __future__ import annotations

import ipaddress
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
from servers import LOOPBACK, ServerProcess, _spawn, free_port

GDNSD = shutil.which("gdnsd") or "/usr/sbin/gdnsd"
PDNS = shutil.which("pdns_server") or "/usr/sbin/pdns_server"
DNSDIST = shutil.which("dnsdist") or "/usr/bin/dnsdist"


def have(binary: str) -> bool:
    return Path(binary).is_file() or shutil.which(binary) is not None


def _start(
    name: str, argv_for_port: Callable[[int], list[str]], workdir: Path, tries: int = 3
) -> ServerProcess:
    """Start on a free port, retrying if another process took it first."""
    last: Exception | None = None
    for _ in range(tries):
        port = free_port()
        argv = argv_for_port(port)
        sp = _spawn(name, argv, workdir, port)
        try:
            sp.wait_ready()
            return sp
        except RuntimeError as e:
            sp.stop()
            last = e
    raise RuntimeError(f"{name} did not start: {last}")


def _by_specificity(nets: Mapping[str, str]) -> list[tuple[str, str]]:
    """Nets longest prefix first (then by address), as an if-chain must test them."""
    parsed = [(ipaddress.ip_network(c), c, r) for c, r in nets.items()]
    parsed.sort(key=lambda t: (-t[0].prefixlen, t[0].version, int(t[0].network_address)))
    return [(c, r) for _n, c, r in parsed]


SOA = (
    "@ 30 IN SOA ns1 hostmaster 1 3600 600 1209600 30\n@ 300 IN NS ns1\nns1 300 IN A 127.0.0.53\n"
)


# -- gdnsd -----------------------------------------------------------------------------


def gdnsd_config(
    port: int,
    workdir: Path,
    nets: Mapping[str, str],
    answers: Mapping[str, str],
    default: str,
    threads: int = 1,
) -> str:
    dcs = [default] + [r for r in answers if r != default]
    nets_text = "\n".join(f"          {c} => {r}" for c, r in nets.items())
    dcmap = "\n".join(f"          {r} => {a}" for r, a in answers.items())
    return f"""options => {{
  listen => [ {LOOPBACK}:{port} ]
  run_dir => {workdir}/run
  state_dir => {workdir}/state
  udp_threads => {threads}
  tcp_threads => 1
}}
plugins => {{
  geoip => {{
    maps => {{
      loc => {{
        datacenters => [{", ".join(dcs)}]
        nets => {{
{nets_text}
        }}
      }}
    }}
    resources => {{
      svc => {{
        map => loc
        dcmap => {{
{dcmap}
        }}
      }}
    }}
  }}
}}
"""


def start_gdnsd(
    workdir: Path,
    zone: str,
    nets: Mapping[str, str],
    answers: Mapping[str, str],
    default: str,
    name: str = "web",
    ttl: int = 30,
    threads: int = 1,
    extra_zone: str = "",
) -> ServerProcess:
    """gdnsd serving ``name.zone`` as ``DYNA geoip!svc`` over the ``nets`` map."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "zones").mkdir(exist_ok=True)
    origin = zone.rstrip(".")
    (workdir / "zones" / origin).write_text(
        f"$TTL 300\n{SOA}{name} {ttl} DYNA geoip!svc\n{extra_zone}"
    )

    def argv(port: int) -> list[str]:
        (workdir / "config").write_text(
            gdnsd_config(port, workdir, nets, answers, default, threads)
        )
        return [GDNSD, "-c", str(workdir), "start"]

    return _start("gdnsd", argv, workdir)


# -- PowerDNS -----------------------------------------------------------------------------


def pdns_lua(nets: Mapping[str, str], answers: Mapping[str, str], default: str) -> str:
    """The Lua body of an A record equivalent to a longest-prefix locality map."""
    parts = []
    for i, (cidr, region) in enumerate(_by_specificity(nets)):
        kw = "if" if i == 0 else "elseif"
        parts.append(f"{kw} netmask({{'{cidr}'}}) then return '{answers[region]}'")
    body = " ".join(parts)
    tail = f"return '{answers[default]}'"
    return f";{body} else {tail} end" if parts else f";{tail}"


def start_pdns(
    workdir: Path,
    zone: str,
    nets: Mapping[str, str],
    answers: Mapping[str, str],
    default: str,
    name: str = "web",
    ttl: int = 30,
    lua_mode: str = "shared",
    extra_args: Sequence[str] = (),
    extra_zone: str = "",
) -> ServerProcess:
    """pdns_server (bind backend) with ``name.zone`` as a ``LUA A`` record.

    ``lua_mode``: "shared" (one Lua state for all queries) or "fresh" (a new
    state per query, PowerDNS's default for ``enable-lua-records=yes``).
    """
    if lua_mode not in ("shared", "fresh"):
        raise ValueError("lua_mode is 'shared' or 'fresh'")
    workdir.mkdir(parents=True, exist_ok=True)
    origin = zone.rstrip(".")
    zfile = workdir / f"{origin}.zone"
    lua = pdns_lua(nets, answers, default).replace('"', '\\"')
    zfile.write_text(f'$TTL 300\n{SOA}{name} {ttl} IN LUA A "{lua}"\n{extra_zone}')
    named = workdir / "named.conf"
    named.write_text(f'zone "{origin}" {{ type master; file "{zfile}"; }};\n')

    def argv(port: int) -> list[str]:
        return [
            PDNS,
            "--no-config",
            "--daemon=no",
            "--guardian=no",
            "--disable-syslog",
            "--write-pid=no",
            f"--socket-dir={workdir}",
            "--launch=bind",
            f"--bind-config={named}",
            f"--local-address={LOOPBACK}",
            f"--local-port={port}",
            f"--enable-lua-records={'shared' if lua_mode == 'shared' else 'yes'}",
            "--edns-subnet-processing=yes",
            "--security-poll-suffix=",
            "--loglevel=4",
            *extra_args,
        ]

    return _start("pdns", argv, workdir)


# -- dnsdist ------------------------------------------------------------------------------


def dnsdist_config(
    listen: tuple[str, int],
    upstream: tuple[str, int],
    zone: str,
    ecs_v4: int = 24,
    ecs_v6: int = 56,
) -> str:
    host, port = listen
    uhost, uport = upstream
    origin = zone if zone.endswith(".") else zone + "."
    return f"""-- written by tests/refservers.py
setSecurityPollSuffix("")
setLocal("{host}:{port}")
setACL({{"127.0.0.0/8", "::1/128"}})
setECSSourcePrefixV4({ecs_v4})
setECSSourcePrefixV6({ecs_v6})
newServer{{address="{uhost}:{uport}", useClientSubnet=true, pool="zone", checkName="{origin}", checkType="SOA", checkInterval=1}}
addAction({{"{origin}"}}, PoolAction("zone"))
addAction(AllRule(), RCodeAction(DNSRCode.REFUSED))
"""


def start_dnsdist(
    workdir: Path,
    upstream: tuple[str, int],
    zone: str,
    ecs_v4: int = 24,
    ecs_v6: int = 56,
) -> ServerProcess:
    """dnsdist on a free loopback port adding ECS and forwarding ``zone`` to ``upstream``.

    Clients query it from any 127/8 source address (``dig -b 127.1.0.1``); the
    upstream sees ECS ``127.1.0.0/24``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "dnsdist.conf"

    def argv(port: int) -> list[str]:
        conf.write_text(dnsdist_config((LOOPBACK, port), upstream, zone, ecs_v4, ecs_v6))
        return [DNSDIST, "--supervised", "--disable-syslog", "-C", str(conf)]

    sp = _start("dnsdist", argv, workdir)
    wait_zone(sp.addr, zone)  # until its health check has marked the upstream up
    return sp


def wait_zone(addr: tuple[str, int], zone: str, deadline_s: float = 10.0) -> None:
    """Wait until ``addr`` answers the zone's SOA with NOERROR."""
    q = dns.message.make_query(zone, "SOA")
    end = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < end:
        try:
            r = dns.query.udp(q, addr[0], port=addr[1], timeout=0.3)
        except (dns.exception.Timeout, OSError) as e:
            last = repr(e)
        else:
            if r.rcode() == dns.rcode.NOERROR:
                return
            last = dns.rcode.to_text(r.rcode())
        time.sleep(0.1)
    raise RuntimeError(f"{addr} did not answer {zone} SOA within {deadline_s}s: {last}")
