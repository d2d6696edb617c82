"""``zone.key_of``: its fast path for plain ASCII names gives the bytes DNSLabel's
path gives, and refuses what DNSLabel refuses."""

from __future__ import annotations

from dnslib import DNSLabel
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.dns.zone import key_of

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
