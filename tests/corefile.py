"""A checker for CoreDNS Corefiles, for configs in NOTES.txt and the guides.

CoreDNS is not packaged here, so its config cannot be loaded by CoreDNS itself in
the tests; this reads a Corefile the way CoreDNS does and reports what CoreDNS would
refuse at startup, for the parts our guides use:

* the lexer and the block structure of CoreDNS's Caddyfile dialect
  (github.com/coredns/caddy, ``caddyfile/lexer.go`` and ``parse.go``): tokens split
  on white space, ``"..."`` quoting with ``\\"`` the only escape, ``#`` to the end
  of the line, a server block is its keys on one line (a trailing comma continues
  them) then ``{ ... }``, a directive is the first token of a line and its
  arguments the rest of that line, ``{``/``}`` tokens nest;
* server block keys ``[SCHEME://]ZONE[:PORT]`` (CoreDNS's ``core/dnsserver``), the
  same zone and port defined twice;
* every directive named in CoreDNS's ``plugin.cfg`` (``PLUGINS`` below), and
  ``import`` of a snippet defined with ``(name) { ... }``;
* the arguments of ``forward`` (``plugin/forward/setup.go``: FROM and 1-15 TO
  addresses, the block's options) and ``cache`` (``plugin/cache/setup.go``: TTL,
  ``success``/``denial`` CAPACITY [TTL [MINTTL]], ``prefetch``, ``serve_stale``...),
  and that each of ``cache``, ``errors``, ``log`` appears once per block.

API: ``check_corefile(text) -> list[str]`` (problems, empty when fine) and
``parse_corefile(text) -> list[ServerBlock]`` (raises ``CorefileError``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

# CoreDNS's plugin.cfg (github.com/coredns/coredns, plugin.cfg at commit 4b26cce,
# CoreDNS 1.14.7): the directives a stock CoreDNS build knows, in execution order.
PLUGINS: tuple[str, ...] = (
    "root", "metadata", "geoip", "cancel", "proxyproto", "quic", "grpc_server", "https",
    "https3", "timeouts", "multisocket", "reload", "nsid", "bufsize", "bind", "debug", "trace",
    "ready", "health", "pprof", "shed", "prometheus", "errors", "log", "dnstap", "local",
    "dns64", "any", "chaos", "loadbalance", "tsig", "rewrite", "autopath", "acl", "cache",
    "header", "dnssec", "tls", "minimal", "template", "transfer", "hosts", "route53", "azure",
    "clouddns", "k8s_external", "kubernetes", "file", "auto", "secondary", "etcd", "loop",
    "forward", "grpc", "erratic", "whoami", "on", "sign", "view", "nomad",
)  # fmt: skip
_PLUGIN_SET = frozenset(PLUGINS)
# Schemes a server block key may carry (core/dnsserver/register.go and address.go).
SCHEMES = ("dns", "tls", "quic", "grpc", "https", "https3")
# The protocols forward can send to (forward/setup.go: allowedTrans).
FORWARD_SCHEMES = ("dns", "tls", "https")
FORWARD_MAX_TO = 15
FORWARD_OPTIONS = frozenset({
    "except", "force_tcp", "prefer_udp", "expire", "max_age", "max_idle_conns", "read_timeout",
    "max_fails", "max_connect_attempts", "doh_method", "tls", "tls_servername", "policy",
    "health_check", "max_concurrent", "next", "next_on_nodata", "failfast_all_unhealthy_upstreams",
    "failover", "source_address", "resolver",
})  # fmt: skip
CACHE_OPTIONS = frozenset({
    "success", "denial", "prefetch", "serve_stale", "serve_stale_policy", "servfail", "disable",
    "keepttl",
})  # fmt: skip
# Plugins that refuse a second stanza in one server block (plugin.ErrOnce).
ONCE = ("cache", "errors", "log", "health", "ready", "prometheus", "reload", "bind")
_LABEL = re.compile(r"^(\*|[A-Za-z0-9_]([-A-Za-z0-9_]{0,61}[A-Za-z0-9_])?)$")
_DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$")  # Go's time.ParseDuration


class CorefileError(ValueError):
    """A Corefile CoreDNS would not start with; the message names the line."""


@dataclass(frozen=True)
class Token:
    text: str
    line: int
    quoted: bool = False


@dataclass
class Directive:
    """One line of a block: a name, its arguments, and the lines of its own ``{ }`` block."""

    name: str
    args: list[str]
    line: int
    block: list[Directive] | None = None  # None: no braces; []: empty braces

    def sub(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]


@dataclass
class ServerBlock:
    keys: list[str]
    line: int
    directives: list[Directive] = field(default_factory=list)

    def plugin(self, name: str) -> list[Directive]:
        return [d for d in self.directives if d.name == name]


def tokenize(text: str) -> list[Token]:
    """The tokens of a Corefile, as caddyfile/lexer.go cuts them."""
    out: list[Token] = []
    i, n, line = 0, len(text), 1
    if text.startswith("\ufeff"):
        i = 1
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch.isspace():
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch == '"':
            start, i, buf = line, i + 1, []
            while True:
                if i >= n:
                    raise CorefileError(f"line {start}: quoted string never closed")
                c = text[i]
                if c == "\\" and i + 1 < n and text[i + 1] == '"':
                    buf.append('"')
                    i += 2
                    continue
                if c == '"':
                    i += 1
                    break
                if c == "\n":
                    line += 1
                buf.append(c)
                i += 1
            out.append(Token("".join(buf), start, quoted=True))
        else:
            buf = []
            # A '#' inside a word starts a comment too (the lexer checks every rune).
            while i < n and not text[i].isspace() and text[i] != "#":
                buf.append(text[i])
                i += 1
            out.append(Token("".join(buf), line))
    return out


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.t = tokens
        self.i = 0
        self.snippets: dict[str, list[Token]] = {}

    def peek(self) -> Token | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def blocks(self) -> list[ServerBlock]:
        out: list[ServerBlock] = []
        while self.peek() is not None:
            block = self.server_block()
            if block is not None:
                out.append(block)
        return out

    def server_block(self) -> ServerBlock | None:
        first = self.t[self.i]
        if first.text in ("{", "}"):
            raise CorefileError(f"line {first.line}: '{first.text}' where a server block's zone was expected")
        keys: list[str] = []
        more = False
        while True:
            tok = self.peek()
            if tok is None:
                if more:
                    raise CorefileError(f"line {first.line}: a server key ends in ',' at the end of the file")
                break
            if tok.text == "{":
                if more:
                    raise CorefileError(f"line {tok.line}: expected another address after ','")
                break
            if keys and not more and tok.line != self.t[self.i - 1].line:
                break
            text = tok.text
            more = text.endswith(",")
            if more:
                text = text[:-1]
            if text:
                keys.append(text)
            self.i += 1
        tok = self.peek()
        snippet = len(keys) == 1 and keys[0].startswith("(") and keys[0].endswith(")")
        if tok is None or tok.text != "{":
            if tok is None and not snippet:
                raise CorefileError(f"line {first.line}: server block {' '.join(keys)} has no body")
            # CoreDNS allows one brace-less block: the rest of the file is its body.
            body = self.directives(first.line, braced=False)
            return ServerBlock(keys, first.line, body)
        self.i += 1
        if snippet:
            self.snippets[keys[0][1:-1]] = self.raw_block(tok.line)
            return None
        return ServerBlock(keys, first.line, self.directives(tok.line, braced=True))

    def raw_block(self, open_line: int) -> list[Token]:
        depth = 1
        out: list[Token] = []
        while True:
            tok = self.peek()
            if tok is None:
                raise CorefileError(f"line {open_line}: '{{' is never closed")
            self.i += 1
            if tok.text == "{":
                depth += 1
            elif tok.text == "}":
                depth -= 1
                if depth == 0:
                    return out
            out.append(tok)

    def directives(self, open_line: int, braced: bool) -> list[Directive]:
        out: list[Directive] = []
        while True:
            tok = self.peek()
            if tok is None:
                if braced:
                    raise CorefileError(f"line {open_line}: '{{' is never closed")
                return out
            if tok.text == "}":
                self.i += 1
                if not braced:
                    raise CorefileError(f"line {tok.line}: '}}' without a matching '{{'")
                return out
            if tok.text == "{":
                raise CorefileError(f"line {tok.line}: '{{' where a directive was expected")
            if tok.text == "import":
                self.expand_import()
                continue
            out.append(self.directive())

    def expand_import(self) -> None:
        tok = self.t[self.i]
        nxt = self.t[self.i + 1] if self.i + 1 < len(self.t) else None
        if nxt is None or nxt.line != tok.line:
            raise CorefileError(f"line {tok.line}: import needs a snippet name or a file")
        if nxt.text not in self.snippets:
            raise CorefileError(
                f"line {tok.line}: import {nxt.text}: no snippet ({nxt.text}) defined above "
                "(file imports are not followed by this checker)"
            )
        # The snippet's tokens keep their own lines, as in Caddy: that is what ends a directive.
        self.t[self.i : self.i + 2] = self.snippets[nxt.text]

    def directive(self) -> Directive:
        head = self.t[self.i]
        self.i += 1
        args: list[str] = []
        block: list[Directive] | None = None
        while True:
            tok = self.peek()
            if tok is None or tok.line != head.line or tok.text == "}":
                break
            self.i += 1
            if tok.text == "{":
                block = self.directives(tok.line, braced=True)
                break
            args.append(tok.text)
        return Directive(head.text, args, head.line, block)


def parse_corefile(text: str) -> list[ServerBlock]:
    """The server blocks of a Corefile; ``CorefileError`` for what CoreDNS cannot parse."""
    return _Parser(tokenize(text)).blocks()


# -- checks ---------------------------------------------------------------------------------


def _port(text: str) -> int | None:
    return int(text) if text.isdigit() and 0 < int(text) < 65536 else None


def _domain(text: str) -> bool:
    if text == ".":
        return True
    labels = text.rstrip(".").split(".")
    return len(text) <= 254 and all(_LABEL.match(x) for x in labels)


def split_key(key: str) -> tuple[str, str, int | None]:
    """``tls://example.org.:853`` -> (scheme, zone, port); ValueError says what is wrong."""
    scheme, sep, rest = key.partition("://")
    if not sep:
        scheme, rest = "dns", key
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"scheme {scheme}:// is not one of {', '.join(SCHEMES)}")
    zone, port = rest, None
    if rest.count(":") == 1 and "/" not in rest.split(":")[1]:
        zone, port_s = rest.split(":")
        port = _port(port_s)
        if port is None:
            raise ValueError(f"port {port_s!r} is not 1-65535")
    if not zone:
        raise ValueError("no zone")
    if "/" in zone:  # a reverse zone written as a network
        try:
            ipaddress.ip_network(zone, strict=False)
        except ValueError:
            raise ValueError(f"{zone!r} is neither a domain nor a network") from None
    elif not _domain(zone):
        raise ValueError(f"{zone!r} is not a domain name")
    return scheme, zone, port


def _address(text: str) -> str | None:
    """None when ``text`` is a valid forward TO, else why not."""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "dns", text
    if scheme not in FORWARD_SCHEMES:
        return f"{scheme}:// is not a protocol forward sends to ({', '.join(FORWARD_SCHEMES)})"
    if not sep and rest.startswith("/"):
        return None  # a resolv.conf-style file
    host, port = rest, None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            return "'[' without ']'"
        host, tail = rest[1:end], rest[end + 1 :]
        if tail and (not tail.startswith(":") or _port(tail[1:]) is None):
            return f"bad port {tail!r}"
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            return f"{host!r} is not an IPv6 address"
        return None
    if rest.count(":") == 1:
        host, port_s = rest.split(":")
        port = _port(port_s)
        if port is None:
            return f"port {port_s!r} is not 1-65535"
    try:
        ipaddress.ip_address(host.split("%")[0])
        return None
    except ValueError:
        pass
    if scheme == "https" and "/" in host:
        return "paths are not allowed in HTTPS upstream addresses"
    if _domain(host) and not host.replace(".", "").isdigit() and host != ".":
        return None  # a hostname, resolved at startup
    return f"{text!r} is not an IP address, [IPv6]:port, hostname or file"


def _int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def _count(args: list[str]) -> int | None:
    """The one argument as a whole number >= 0, else None."""
    n = _int(args[0]) if len(args) == 1 else None
    return n if n is not None and n >= 0 else None


def _check_forward(d: Directive, where: str) -> list[str]:
    p: list[str] = []
    if not d.args:
        return [f"{where}: forward needs FROM and at least one TO"]
    frm, to = d.args[0], d.args[1:]
    if not (_domain(frm) or "/" in frm):
        p.append(f"{where}: forward FROM {frm!r} is not a domain")
    if not to:
        p.append(f"{where}: forward {frm} has no TO address")
    if len(to) > FORWARD_MAX_TO:
        p.append(f"{where}: forward has {len(to)} TO addresses, at most {FORWARD_MAX_TO}")
    for a in to:
        why = _address(a)
        if why:
            p.append(f"{where}: forward TO {a!r}: {why}")
    for o in d.block or []:
        if o.name not in FORWARD_OPTIONS:
            p.append(f"line {o.line}: forward: unknown option {o.name!r}")
        elif o.name in ("force_tcp", "prefer_udp", "failfast_all_unhealthy_upstreams") and o.args:
            p.append(f"line {o.line}: forward {o.name} takes no arguments")
        elif o.name in ("expire", "max_age", "read_timeout") and (
            len(o.args) != 1 or not _DURATION.match(o.args[0])
        ):
            p.append(f"line {o.line}: forward {o.name} needs one duration, e.g. 10s")
        elif o.name in ("max_fails", "max_concurrent", "max_idle_conns", "max_connect_attempts") and (
            _count(o.args) is None
        ):
            p.append(f"line {o.line}: forward {o.name} needs one whole number, 0 or more")
        elif o.name == "policy" and o.args not in (["random"], ["round_robin"], ["sequential"]):
            p.append(f"line {o.line}: forward policy is random, round_robin or sequential")
    return p


def _check_cache(d: Directive, where: str) -> list[str]:
    p: list[str] = []
    args = list(d.args)
    ttl = _int(args[0]) if args else None
    if ttl is not None:
        if ttl <= 0:
            p.append(f"{where}: cache TTL can not be zero or negative: {ttl}")
        args = args[1:]
    for z in args:
        if not _domain(z):
            p.append(f"{where}: cache zone {z!r} is not a domain (or TTL not a number)")
    for o in d.block or []:
        at = f"line {o.line}: cache {o.name}"
        if o.name not in CACHE_OPTIONS:
            p.append(f"line {o.line}: cache: unknown option {o.name!r}")
        elif o.name in ("success", "denial"):
            nums = [n for n in map(_int, o.args) if n is not None]
            if not o.args or len(o.args) > 3:
                p.append(f"{at}: CAPACITY [TTL [MINTTL]]: 1 to 3 numbers, got {len(o.args)}")
            elif len(nums) != len(o.args):
                p.append(f"{at}: CAPACITY [TTL [MINTTL]] must be whole numbers: {o.args}")
            else:
                if len(nums) > 1 and nums[1] <= 0:
                    p.append(f"{at}: TTL can not be zero or negative: {nums[1]}")
                if len(nums) > 2 and nums[2] < 0:
                    p.append(f"{at}: MINTTL can not be negative: {nums[2]}")
        elif o.name == "prefetch":
            if not 1 <= len(o.args) <= 3 or _count(o.args[:1]) is None:
                p.append(f"{at}: AMOUNT [DURATION [PERCENTAGE%]]")
            elif len(o.args) > 1 and not _DURATION.match(o.args[1]):
                p.append(f"{at}: {o.args[1]!r} is not a duration")
            elif len(o.args) > 2 and not re.fullmatch(r"([1-8][0-9]|90)%", o.args[2]):
                p.append(f"{at}: percentage must be 10%-90%, got {o.args[2]!r}")
        elif o.name == "serve_stale" and (
            len(o.args) > 5
            or (o.args and not _DURATION.match(o.args[0]))
            or (len(o.args) > 1 and o.args[1].lower() not in ("immediate", "verify"))
        ):
            p.append(f"{at}: [DURATION] [immediate|verify ...]")
        elif o.name == "servfail" and (len(o.args) != 1 or not _DURATION.match(o.args[0])):
            p.append(f"{at}: needs one duration")
        elif o.name == "disable" and (not o.args or o.args[0] not in ("success", "denial")):
            p.append(f"{at}: success|denial [ZONES...]")
        elif o.name == "keepttl" and o.args:
            p.append(f"{at}: takes no arguments")
    return p


def check_corefile(text: str) -> list[str]:
    """What CoreDNS would refuse in ``text``, one human-readable line each; empty when fine."""
    try:
        blocks = parse_corefile(text)
    except CorefileError as e:
        return [str(e)]
    problems: list[str] = []
    if not blocks:
        return ["no server block"]
    seen: dict[tuple[str, str, int], int] = {}
    for b in blocks:
        if not b.keys:
            problems.append(f"line {b.line}: a server block without a zone")
        for key in b.keys:
            try:
                scheme, zone, port = split_key(key)
            except ValueError as e:
                problems.append(f"line {b.line}: server key {key!r}: {e}")
                continue
            ident = (scheme, zone.lower().rstrip(".") + ".", port or 53)
            if ident in seen:
                problems.append(
                    f"line {b.line}: {key} is already defined on line {seen[ident]} "
                    "(CoreDNS: cannot serve it multiple times)"
                )
            seen[ident] = b.line
        counts: dict[str, int] = {}
        for d in b.directives:
            where = f"line {d.line}"
            if d.name not in _PLUGIN_SET:
                problems.append(f"{where}: unknown directive {d.name!r} (not in CoreDNS's plugin.cfg)")
                continue
            counts[d.name] = counts.get(d.name, 0) + 1
            if d.name in ONCE and counts[d.name] == 2:
                problems.append(f"{where}: {d.name} can only be used once per server block")
            if d.name == "forward":
                problems.extend(_check_forward(d, where))
            elif d.name == "cache":
                problems.extend(_check_cache(d, where))
    return problems


def forwards(text: str, zone: str) -> list[list[str]]:
    """The TO lists of the ``forward .`` stanzas in the server blocks for ``zone``."""
    want = zone.lower().rstrip(".") + "."
    out: list[list[str]] = []
    for b in parse_corefile(text):
        zones = set()
        for k in b.keys:
            try:
                zones.add(split_key(k)[1].lower().rstrip(".") + ".")
            except ValueError:
                continue
        if want in zones:
            out.extend(d.args[1:] for d in b.plugin("forward") if d.args and d.args[0] == ".")
    return out


__all__ = [
    "PLUGINS",
    "CorefileError",
    "Directive",
    "ServerBlock",
    "Token",
    "check_corefile",
    "forwards",
    "parse_corefile",
    "split_key",
    "tokenize",
]
