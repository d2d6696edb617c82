"""``zone.key_of``: its fast path for plain ASCII names gives the bytes DNSLabel's
path gives, and refuses what DNSLabel refuses; so does ``router.srv_target``, the
SRV targets' labels made from the cluster's and base's once. ``is_below_or_at``
walks label lengths without slicing: the same answers as walking parents."""

from __future__ import annotations

from dnslib import DNSLabel
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.dns.zone import is_below_or_at, key_of, parent
from resolver.federation.router import srv_target

names = st.one_of(
    st.text(alphabet="aZ09-_.\\", max_size=80),
    st.lists(st.text(alphabet="abcXYZ-019", min_size=0, max_size=70), max_size=5).map(".".join),
    st.sampled_from(["", ".", "..", "a..b", "a.", "a..", "é.example", "x" * 63 + ".y"]),
)


def _reference(name: str) -> bytes:
    return key_of(DNSLabel(name))  # the DNSLabel path, never the fast one


@settings(max_examples=400, deadline=None)
@given(name=names)
def test_fast_key_equals_the_dnslabel_key(name: str) -> None:
    try:
        want: bytes | type[Exception] = _reference(name)
    except Exception as e:
        want = type(e)
    try:
        got: bytes | type[Exception] = key_of(name)
    except Exception as e:
        got = type(e)
    assert got == want, name


@settings(max_examples=400, deadline=None)
@given(name=names, cluster=st.sampled_from(["east", "EU-West-1", "c0"]),
       base=st.sampled_from(["cart.shop.global.example.test.", "a.b", "svc.ns.zone"]))
def test_srv_target_equals_the_dnslabel_of_the_whole_name(name: str, cluster: str, base: str) -> None:
    try:
        want: tuple[bytes, ...] | type[Exception] = DNSLabel(f"{name}.{cluster}.{base}").label
    except Exception as e:
        want = type(e)
    try:
        suffix = DNSLabel(cluster).label + DNSLabel(base).label
        got: tuple[bytes, ...] | type[Exception] = srv_target(name, cluster, base, suffix).label
    except Exception as e:
        got = type(e)
    assert got == want, name


def _below_by_parents(key: bytes, ancestor: bytes) -> bool:
    if not key.endswith(ancestor):
        return False
    k = key
    while len(k) > len(ancestor):
        k = parent(k)
    return k == ancestor


wire_names = st.lists(st.sampled_from(["a", "b", "ab", "\x01a", "ba", "x" * 5]), max_size=4).map(
    lambda ls: key_of(".".join(ls)) if ls else b"\0"
)


@settings(max_examples=400, deadline=None)
@given(key=wire_names, ancestor=wire_names)
def test_is_below_or_at_walks_labels(key: bytes, ancestor: bytes) -> None:
    assert is_below_or_at(key, ancestor) == _below_by_parents(key, ancestor)
    assert is_below_or_at(key, key) and is_below_or_at(key, b"\0")
