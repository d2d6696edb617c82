"""Routing policies: which endpoints answer for a service, for one client place.

Pure decisions (no I/O, no wire format): ``decide`` takes the candidates with
their health, the policy and where the client is, and returns the tiers, the
chosen endpoints and a human-readable trail of steps for the explain API.

Policies (per service, from config or ``fedns.io/*`` Service annotations):
- ``locality`` (default): tiers are same zone, same region, then other regions
  nearest first. The first tier with a healthy endpoint answers; when its
  healthy fraction is below ``min_healthy_fraction`` the next tier is added
  (spill-over), so a half-dead zone does not take all of its clients' load.
- ``failover``: an ordered list of clusters; the first with healthy endpoints.
- ``weighted``: per-cluster weights; the cluster is picked by weighted
  rendezvous hashing of the client subnet, so one client keeps its cluster
  while weights hold, and a weight change moves only the clients it must.
- ``all``: every healthy endpoint.
When nothing is healthy anywhere, ``fail_open`` answers with every endpoint
(a client that retries is better off than one told the service is gone).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import NO_FILE, Reader

PolicyKind = Literal["locality", "failover", "weighted", "all"]
POLICIES: tuple[str, ...] = ("locality", "failover", "weighted", "all")


@dataclass(frozen=True, slots=True)
class Policy:
    kind: PolicyKind = "locality"
    failover: tuple[str, ...] = ()  # cluster order for kind == "failover"
    weights: tuple[tuple[str, int], ...] = ()  # per-cluster weights for kind == "weighted"
    min_healthy_fraction: float = 0.0
    max_answers: int = 8
    fail_open: bool = True
    ttl: int = 10
    # Health-aware TTL: a name whose answer set changed within the last
    # ``flap_window`` seconds is served with ``ttl_unstable`` (None: the smaller
    # of 5 s and ``ttl``), so resolvers come back soon while it is unstable.
    flap_window: float = 60.0
    ttl_unstable: int | None = None

    @property
    def unstable_ttl(self) -> int:
        """The TTL while unstable: never above the normal one."""
        return min(self.ttl, 5 if self.ttl_unstable is None else self.ttl_unstable)

    def weight_of(self, cluster: str, default: int) -> int:
        for c, w in self.weights:
            if c == cluster:
                return w
        return default


@dataclass(frozen=True, slots=True)
class ProbeView:
    """A probe target's state as a plan carries it: up or down, since when, and why
    (the result that flipped it, or its initial state). One object per target and
    state, shared by every candidate probed there."""

    up: bool
    since: float  # unix time
    reason: str


# (health_reason, weight, condition, stale): a few combinations per federation, one
# tuple each, shared by every candidate that has it (its own key). Cleared when
# full, which only ends sharing for candidates made after that.
_Info = tuple[str, int, str, bool]
_INFO: dict[_Info, _Info] = {}
_INFO_MAX = 1 << 12
Stamps = tuple[float, float, float]  # (since, ready_since, stale_since)
_NO_STAMPS: Stamps = (0.0, 0.0, 0.0)
_DEFAULT_INFO: _Info = ("", 100, "ready", False)
_KEEP: Any = object()  # a packed value not given: its default, or kept by ``replace``


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Candidate:
    """One endpoint as routing sees it.

    ``healthy`` is the effective health: Kubernetes ready (``condition``) AND the
    probe up (``probe``, None when not probed) AND its cluster kept by the stale
    policy (a cluster whose policy drops it has no candidates at all; ``stale``
    marks last-known data kept by ``serve``). Each input carries when it last
    changed as this instance saw it (unix time; 0 = unknown).

    Built and read as ``Candidate(cluster, region, zone, name, v4, v6, healthy,
    health_reason, weight=100, since=0.0, condition="ready", ready_since=0.0,
    probe=None, stale=False, stale_since=0.0)``, and ``dataclasses.replace`` works
    as on any dataclass. A plan holds one per endpoint, so what routing reads at
    every publish has a slot of its own and the rest is packed into two tuples,
    shared (10 slots, 112 bytes, against 152 for 15).
    ``stamps=(since, ready_since, stale_since)`` passes the three times as one
    tuple, kept as it is (a plan's endpoints that changed together share it).
    """

    cluster: str
    region: str
    zone: str
    name: str  # the endpoint's DNS label (hostname, or the address with dashes)
    v4: tuple[str, ...]
    v6: tuple[str, ...]
    healthy: bool
    probe: ProbeView | None
    _info: _Info
    _stamps: Stamps

    def __init__(
        self,
        cluster: str,
        region: str,
        zone: str,
        name: str,
        v4: tuple[str, ...],
        v6: tuple[str, ...],
        healthy: bool,
        health_reason: str = _KEEP,  # e.g. "ready", "not ready", "cluster stale", "probe failed"
        weight: int = _KEEP,  # the cluster's weight (100)
        since: float = _KEEP,  # when the effective health last changed
        condition: str = _KEEP,  # "ready", "not ready" or "terminating"
        ready_since: float = _KEEP,
        probe: ProbeView | None = None,
        stale: bool = _KEEP,
        stale_since: float = _KEEP,
        stamps: Stamps | None = None,
        _info: _Info | None = None,
        _stamps: Stamps | None = None,
    ) -> None:
        # ``_info`` and ``_stamps`` come from ``dataclasses.replace``, which passes
        # every field: the packed values not given again are kept from them.
        put = object.__setattr__
        put(self, "cluster", cluster)
        put(self, "region", region)
        put(self, "zone", zone)
        put(self, "name", name)
        put(self, "v4", v4)
        put(self, "v6", v6)
        put(self, "healthy", healthy)
        put(self, "probe", probe)
        old = _info or _DEFAULT_INFO
        info = (
            old[0] if health_reason is _KEEP else health_reason,
            old[1] if weight is _KEEP else weight,
            old[2] if condition is _KEEP else condition,
            old[3] if stale is _KEEP else stale,
        )
        shared = _INFO.get(info)
        if shared is None:
            if len(_INFO) >= _INFO_MAX:
                _INFO.clear()
            _INFO[info] = shared = info
        put(self, "_info", shared)
        if stamps is None:
            t = _stamps or _NO_STAMPS
            if since is _KEEP and ready_since is _KEEP and stale_since is _KEEP:
                stamps = t
            else:
                stamps = (
                    t[0] if since is _KEEP else since,
                    t[1] if ready_since is _KEEP else ready_since,
                    t[2] if stale_since is _KEEP else stale_since,
                )
                if stamps == _NO_STAMPS:
                    stamps = _NO_STAMPS
        put(self, "_stamps", stamps)

    @property
    def health_reason(self) -> str:
        return self._info[0]

    @property
    def weight(self) -> int:
        return self._info[1]

    @property
    def condition(self) -> str:
        return self._info[2]

    @property
    def stale(self) -> bool:
        return self._info[3]

    @property
    def stamps(self) -> Stamps:
        """``(since, ready_since, stale_since)``, one tuple."""
        return self._stamps

    @property
    def since(self) -> float:
        return self._stamps[0]

    @property
    def ready_since(self) -> float:
        return self._stamps[1]

    @property
    def stale_since(self) -> float:
        return self._stamps[2]

    _NAMES = (
        "cluster", "region", "zone", "name", "v4", "v6", "healthy", "health_reason", "weight",
        "since", "condition", "ready_since", "probe", "stale", "stale_since",
    )  # fmt: skip

    def _args(self) -> tuple[Any, ...]:
        return (
            self.cluster, self.region, self.zone, self.name, self.v4, self.v6, self.healthy,
            *self._info[:2], self._stamps[0], self._info[2], self._stamps[1], self.probe,
            self._info[3], self._stamps[2],
        )  # fmt: skip

    def __repr__(self) -> str:
        pairs = zip(self._NAMES, self._args(), strict=True)
        return "Candidate(" + ", ".join(f"{n}={v!r}" for n, v in pairs) + ")"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_candidate, (*self._args()[:7], self.probe, self._info, self._stamps))


def _candidate(
    cluster: str, region: str, zone: str, name: str, v4: tuple[str, ...], v6: tuple[str, ...],
    healthy: bool, probe: ProbeView | None, info: _Info, stamps: Stamps,
) -> Candidate:
    """Unpickle: the packed tuples as they came (pickle keeps them shared)."""
    c = object.__new__(Candidate)
    put = object.__setattr__
    for n, v in zip(Candidate._NAMES[:7], (cluster, region, zone, name, v4, v6, healthy), strict=True):
        put(c, n, v)
    put(c, "probe", probe)
    put(c, "_info", info)
    put(c, "_stamps", stamps)
    return c


@dataclass(frozen=True, slots=True)
class Client:
    """Where the client is, as far as routing needs it."""

    region: str | None
    zone: str | None
    subnet: bytes = b""  # the (privacy-clamped) subnet bytes, for weighted stickiness


@dataclass(frozen=True, slots=True)
class Decision:
    tiers: tuple[tuple[Candidate, ...], ...]  # all candidates grouped, best tier first
    chosen: tuple[Candidate, ...]
    steps: tuple[str, ...]
    depends_on: Literal["nothing", "locality", "subnet"]
    empty: bool = field(default=False)  # nothing to answer (NODATA)


def _healthy(cs: Sequence[Candidate]) -> list[Candidate]:
    return [c for c in cs if c.healthy]


def locality_tiers(
    cands: Sequence[Candidate],
    client: Client,
    region_order: Callable[[str | None], Sequence[str]],
) -> list[tuple[str, tuple[Candidate, ...]]]:
    """Group candidates: same zone, same region, then regions nearest first."""
    tiers: list[tuple[str, tuple[Candidate, ...]]] = []
    used: set[int] = set()

    def take(label: str, pred: Callable[[Candidate], bool]) -> None:
        group = tuple(c for i, c in enumerate(cands) if i not in used and pred(c))
        for i, c in enumerate(cands):
            if i not in used and pred(c):
                used.add(i)
        if group:
            tiers.append((label, group))

    if client.zone:
        take(f"same zone {client.zone}", lambda c: c.zone == client.zone)
    if client.region:
        take(f"same region {client.region}", lambda c: c.region == client.region)
    for r in region_order(client.region):
        if r != client.region:
            take(f"region {r}", lambda c, r=r: c.region == r)  # type: ignore[misc]
    rest = tuple(c for i, c in enumerate(cands) if i not in used)
    if rest:
        tiers.append(("other regions", rest))
    return tiers


def _rendezvous(subnet: bytes, cluster: str, weight: int) -> float:
    """Weighted rendezvous score: the lowest wins; P(win) is proportional to weight."""
    h = hashlib.blake2b(subnet + b"|" + cluster.encode(), digest_size=8).digest()
    u = (int.from_bytes(h, "big") + 1) / (2**64 + 1)
    return -math.log(u) / weight


def decide(
    policy: Policy,
    cands: Sequence[Candidate],
    client: Client,
    region_order: Callable[[str | None], Sequence[str]],
) -> Decision:
    steps: list[str] = []
    healthy_all = _healthy(cands)
    steps.append(f"{len(cands)} candidate endpoints, {len(healthy_all)} healthy")
    cap = policy.max_answers

    if not cands:
        return Decision((), (), (*steps, "no endpoints: NODATA"), "nothing", True)

    if not healthy_all:
        if policy.fail_open:
            steps.append("nothing healthy anywhere: fail-open, answering with every endpoint")
            return Decision((tuple(cands),), tuple(cands[:cap]), tuple(steps), "nothing")
        steps.append("nothing healthy anywhere: fail-closed, NODATA")
        return Decision((tuple(cands),), (), tuple(steps), "nothing", True)

    if policy.kind == "all":
        steps.append("policy all: every healthy endpoint")
        return Decision((tuple(cands),), tuple(healthy_all[:cap]), tuple(steps), "nothing")

    if policy.kind == "failover":
        order = list(policy.failover) + sorted({c.cluster for c in cands} - set(policy.failover))
        tiers = [tuple(c for c in cands if c.cluster == name) for name in order]
        tiers = [t for t in tiers if t]
        chosen = _walk_tiers(
            [(f"cluster {t[0].cluster}", t) for t in tiers], policy, steps
        )
        return Decision(tuple(tiers), tuple(chosen[:cap]), tuple(steps), "nothing")

    if policy.kind == "weighted":
        clusters = sorted({c.cluster for c in healthy_all})
        scored = sorted(
            clusters,
            key=lambda name: _rendezvous(
                client.subnet, name, max(1, policy.weight_of(name, _cluster_weight(cands, name)))
            ),
        )
        weights = {n: policy.weight_of(n, _cluster_weight(cands, n)) for n in clusters}
        if all(w <= 0 for w in weights.values()):
            steps.append("all weights are 0: treating them as equal")
        else:
            scored = [n for n in scored if weights[n] > 0] or scored
        pick = scored[0]
        steps.append(
            "policy weighted: weights "
            + ", ".join(f"{n}={weights[n]}" for n in clusters)
            + f"; client subnet hashes to cluster {pick}"
        )
        by_weight = tuple(tuple(c for c in cands if c.cluster == n) for n in scored)
        chosen = [c for c in healthy_all if c.cluster == pick]
        return Decision(by_weight, tuple(chosen[:cap]), tuple(steps), "subnet")

    # locality
    if client.region is None and client.zone is None:
        steps.append("client locality unknown: every healthy endpoint, nearest-first order unknown")
        return Decision((tuple(cands),), tuple(healthy_all[:cap]), tuple(steps), "locality")
    labelled = locality_tiers(cands, client, region_order)
    steps.append(
        "tiers: " + "; ".join(f"{label} ({len(_healthy(t))}/{len(t)} healthy)" for label, t in labelled)
    )
    chosen = _walk_tiers(labelled, policy, steps)
    return Decision(tuple(t for _, t in labelled), tuple(chosen[:cap]), tuple(steps), "locality")


def _cluster_weight(cands: Sequence[Candidate], cluster: str) -> int:
    for c in cands:
        if c.cluster == cluster:
            return c.weight
    return 100


def _walk_tiers(
    tiers: Sequence[tuple[str, tuple[Candidate, ...]]], policy: Policy, steps: list[str]
) -> list[Candidate]:
    chosen: list[Candidate] = []
    for label, tier in tiers:
        healthy = _healthy(tier)
        if not healthy:
            steps.append(f"{label}: no healthy endpoint, next tier")
            continue
        chosen.extend(healthy)
        frac = len(healthy) / len(tier)
        if frac < policy.min_healthy_fraction:
            steps.append(
                f"{label}: {len(healthy)}/{len(tier)} healthy is below "
                f"{policy.min_healthy_fraction:.0%}, adding the next tier too"
            )
            continue
        steps.append(f"{label}: answering with its {len(healthy)} healthy endpoints")
        return chosen
    return chosen


# -- configuration ---------------------------------------------------------------


def _known_cluster(r: Reader, key: str, name: str, clusters: Collection[str] | None) -> None:
    if clusters is not None and name not in clusters:
        known = ", ".join(sorted(clusters)) or "none"
        raise r.fail(key, f"unknown cluster {name!r}; federation.clusters names: {known}")

POLICY_KEYS = frozenset(
    {
        "policy",
        "failover",
        "weights",
        "min_healthy_fraction",
        "max_answers",
        "fail_open",
        "ttl",
        "flap_window",
        "ttl_unstable",
    }
)


def policy_fields(
    raw: Any,
    where: str,
    r: Reader = NO_FILE,
    clusters: Collection[str] | None = None,
    also: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Validate one policy mapping (config or annotations) into ``Policy`` fields.

    Raises ``r.fail(key, problem)`` (a ConfigError) naming the offending key
    under ``where``; ``NO_FILE`` for annotations, whose callers catch it.
    With ``clusters`` (the config's), a ``failover`` or ``weights`` entry naming
    another cluster is an error: it would silently never match an endpoint.
    ``also``: keys the caller reads itself (a ``federation.policies`` entry's ``probe``).
    """
    if not isinstance(raw, dict):
        raise r.fail(where, "expected a mapping of policy settings")
    r.known(raw, where, set(POLICY_KEYS | also))
    out: dict[str, Any] = {}
    if "policy" in raw:
        kind = str(raw["policy"])
        if kind not in POLICIES:
            raise r.fail(f"{where}.policy", f"{kind!r} is not one of {', '.join(POLICIES)}")
        out["kind"] = kind
    if "failover" in raw:
        v = raw["failover"]
        items = [x.strip() for x in v.split(",")] if isinstance(v, str) else v
        if not isinstance(items, list | tuple) or not all(isinstance(x, str) and x for x in items):
            raise r.fail(f"{where}.failover", "expected a list of cluster names (or 'a,b')")
        items = [x.lower() for x in items]  # cluster names are read lowercased
        for i, name in enumerate(items):
            _known_cluster(r, f"{where}.failover[{i}]", name, clusters)
            if name in items[:i]:
                raise r.fail(f"{where}.failover[{i}]", f"cluster {name!r} is listed twice")
        out["failover"] = tuple(items)
    if "weights" in raw:
        v = raw["weights"]
        if isinstance(v, str):  # annotation form: "east=3,west=1"
            try:
                v = {a.strip(): int(b) for a, b in (p.split("=", 1) for p in v.split(",") if p.strip())}
            except ValueError:
                raise r.fail(f"{where}.weights", "expected 'cluster=N,cluster=N'") from None
        if not isinstance(v, dict) or not all(
            isinstance(w, int) and not isinstance(w, bool) and w >= 0 for w in v.values()
        ):
            raise r.fail(f"{where}.weights", "expected {cluster: whole number >= 0}")
        for k in v:
            _known_cluster(r, f"{where}.weights.{k}", str(k).lower(), clusters)
        out["weights"] = tuple((str(k).lower(), int(w)) for k, w in v.items())
    for name, conv, lo, hi in (
        ("max_answers", int, 1, 64),
        ("min_healthy_fraction", float, 0.0, 1.0),
    ):
        if name in raw:
            out[name] = bounded(raw[name], f"{where}.{name}", conv, lo, hi, r)
    for name, lo, hi in (("ttl", 0, 86400), ("ttl_unstable", 0, 86400)):
        if name in raw:
            out[name] = int(seconds(raw[name], f"{where}.{name}", lo, hi, r, whole=True))
    if "flap_window" in raw:
        out["flap_window"] = seconds(raw["flap_window"], f"{where}.flap_window", 0, 86400, r)
    if "fail_open" in raw:
        v = raw["fail_open"]
        if isinstance(v, str) and v.lower() in ("true", "false", "yes", "no", "1", "0"):
            v = v.lower() in ("true", "yes", "1")
        if not isinstance(v, bool):
            raise r.fail(f"{where}.fail_open", "expected true or false")
        out["fail_open"] = v
    return out


def bounded(
    value: Any, key: str, conv: Callable[[Any], Any], lo: float, hi: float, r: Reader = NO_FILE
) -> Any:
    """``conv(value)`` checked to lie in [lo, hi]; ``r.fail(key, problem)`` otherwise.

    Config files and annotations both come through here (annotations are strings)."""
    if isinstance(value, bool):
        raise r.fail(key, f"{value!r} is not a number")
    try:
        v = conv(value)
    except (TypeError, ValueError):
        raise r.fail(key, f"{value!r} is not a number") from None
    if not lo <= v <= hi:
        raise r.fail(key, f"{v} is out of range {lo}-{hi}")
    return v


def seconds(
    value: Any, key: str, lo: float, hi: float, r: Reader = NO_FILE, whole: bool = False
) -> float:
    """A duration key, read by ``Reader.duration`` (``250ms``, ``2s``, ``1m``, ``1h``
    or a number of seconds); annotations are strings, so ``"30"`` is 30 s too.
    ``whole``: a TTL, which DNS carries in whole seconds."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    v = r.duration(value, key, lo, hi)
    if whole and v != int(v):
        raise r.fail(key, f"{v:g} s is not a whole number of seconds (DNS TTLs are)")
    return v


def with_fields(base: Policy, fields: dict[str, Any]) -> Policy:
    from dataclasses import replace

    return replace(base, **fields) if fields else base
