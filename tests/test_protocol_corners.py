"""Protocol corners ISC's ``genreport`` probes: unknown opcodes and TSIG, fedns beside NSD.

fedns and NSD (``apt nsd``) serve ``tests/data/rich.example.test.zone``; the
same query bytes go to both and the replies must be the same bytes (the ID
and the TSIG fields echoed come from the query, so nothing differs).

- An opcode other than QUERY is read before anything else: NOTIMP, with no
  section echoed, even when the packet has no question (``genreport``'s
  opcode test sends opcode 15 with QDCOUNT 0, which fedns answered FORMERR).
- A query signed with TSIG (RFC 8945) for a key the server does not hold
  (fedns holds none) gets NOTAUTH and an unsigned TSIG record with error
  BADKEY (RFC 8945 5.2), as dnspython reads it: ``PeerBadKey``. A TSIG
  record in the wrong place or malformed gets FORMERR (RFC 8945 5.1).
"""

from __future__ import annotations

import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.tsig
import dns.tsigkeyring
import pytest
from dnsclient import make, tcp_raw, udp_raw
from servers import RICH_ORIGIN, RICH_ZONE, ServerProcess, start_nsd

pytestmark = pytest.mark.skipif(
    shutil.which("nsd") is None, reason="NSD is not installed (apt nsd)"
)

# A key neither server has: fedns holds no keys at all, NSD none by this name.
SECRET = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"
QNAME = f"www.{RICH_ORIGIN}"


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    sp = start_nsd(tmp_path_factory.mktemp("nsd"), {RICH_ORIGIN: Path(RICH_ZONE)})
    yield sp
    sp.stop()


def both(fedns: ServerProcess, nsd: ServerProcess, data: bytes, tcp: bool = False) -> bytes:
    """fedns's reply to ``data``, after checking it is NSD's reply to the same bytes."""
    send = tcp_raw if tcp else udp_raw
    ours, theirs = send(fedns.addr, data), send(nsd.addr, data)
    assert ours is not None, "fedns did not answer"
    assert ours == theirs, f"fedns {ours.hex() if ours else None}\n    NSD {theirs!r}"
    return ours


# -- opcodes ----------------------------------------------------------------------------


def test_opcode_15_without_a_question_is_notimp(
    rich_server: ServerProcess, nsd: ServerProcess
) -> None:
    q = dns.message.Message(id=0x0F0F)
    q.set_opcode(dns.opcode.Opcode.make(15))
    q.flags |= dns.flags.RD
    data = q.to_wire()
    assert struct.unpack(">H", data[4:6]) == (0,)  # QDCOUNT 0, as genreport sends it
    r = dns.message.from_wire(both(rich_server, nsd, data))
    assert r.rcode() == dns.rcode.NOTIMP
    assert r.opcode() == 15 and r.id == q.id and r.flags & dns.flags.RD
    assert (r.question, r.answer, r.authority, r.additional, r.edns) == ([], [], [], [], -1)


# NOTIFY (4) is left out: NSD answers it as a secondary would (fedns: NOTIMP).
@pytest.mark.parametrize("opcode", [1, 2, 3, 5, 6, 7, 15])
@pytest.mark.parametrize("edns", [None, 0])
def test_unknown_opcodes_answer_as_nsd(
    rich_server: ServerProcess, nsd: ServerProcess, opcode: int, edns: int | None
) -> None:
    q = make(QNAME, "A", edns=edns, qid=0x5EED)
    q.set_opcode(dns.opcode.Opcode.make(opcode))
    r = dns.message.from_wire(both(rich_server, nsd, q.to_wire()))
    assert r.rcode() == dns.rcode.NOTIMP and r.opcode() == opcode


# -- TSIG -------------------------------------------------------------------------------


def signed(
    qname: str = QNAME,
    edns: int | None = None,
    do: bool = False,
    keyname: str = "unknown-key.",
    algorithm: dns.name.Name | str = dns.tsig.HMAC_SHA256,
) -> tuple[dns.message.Message, dict[dns.name.Name, dns.tsig.Key]]:
    """A query signed by dnspython, and the client's keyring."""
    q = make(qname, "A", edns=edns, do=do)
    ring = dns.tsigkeyring.from_text({keyname: (algorithm, SECRET)})
    q.use_tsig(ring, keyname=keyname)
    return q, ring


def assert_badkey(
    reply: bytes, q: dns.message.Message, ring: dict[dns.name.Name, dns.tsig.Key]
) -> None:
    """NOTAUTH with a TSIG record saying BADKEY, as dnspython, the client, reads it."""
    assert struct.unpack(">H", reply[2:4])[0] & 0x0F == dns.rcode.NOTAUTH
    with pytest.raises(dns.tsig.PeerBadKey):
        dns.message.from_wire(reply, keyring=ring, request_mac=q.mac)


@pytest.mark.parametrize(
    "case",
    [
        {},
        {"edns": 0},
        {"edns": 0, "do": True},
        {"keyname": QNAME},  # the key's name compressed against the question's
        {"keyname": "Mixed-Case.Key."},  # echoed as NSD does: lowercased
        {"algorithm": dns.tsig.HMAC_MD5},  # an algorithm no one configured
        {"qname": "example.org."},  # outside our zones: the key is checked first
    ],
    ids=["plain", "edns", "do", "compressed-key-name", "mixed-case", "md5", "out-of-zone"],
)
def test_tsig_with_an_unknown_key_is_notauth_badkey(
    rich_server: ServerProcess, nsd: ServerProcess, case: dict[str, object]
) -> None:
    q, ring = signed(**case)  # type: ignore[arg-type]
    assert_badkey(both(rich_server, nsd, q.to_wire()), q, ring)


def test_tsig_over_tcp(rich_server: ServerProcess, nsd: ServerProcess) -> None:
    q, ring = signed(edns=0)
    assert_badkey(both(rich_server, nsd, q.to_wire(), tcp=True), q, ring)


def wire_len(name: dns.name.Name | str) -> int:
    n = dns.name.from_text(name) if isinstance(name, str) else name
    return len(n.to_wire() or b"")


def _tsig_at(q: dns.message.Message) -> int:
    """Where the TSIG record starts: after the question (these queries have no OPT)."""
    return 12 + wire_len(q.question[0].name) + 4


@pytest.mark.parametrize("fault", ["tsig-then-opt", "two-tsig", "class-in", "short", "in-answer"])
def test_misplaced_or_malformed_tsig_is_formerr(
    rich_server: ServerProcess, nsd: ServerProcess, fault: str
) -> None:
    q, _ = signed()
    data = q.to_wire()
    at = _tsig_at(q)
    tsig = data[at:]
    owner_end = at + wire_len("unknown-key.")
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    bad = {
        "tsig-then-opt": data[:10] + b"\x00\x02" + data[12:] + opt,
        "two-tsig": data[:10] + b"\x00\x02" + data[12:] + tsig,
        "class-in": data[: owner_end + 2] + b"\x00\x01" + data[owner_end + 4 :],
        "short": data[:-3],  # RDLENGTH runs past the packet
        "in-answer": data[:6] + b"\x00\x01\x00\x00\x00\x00" + data[12:],
    }[fault]
    r = dns.message.from_wire(both(rich_server, nsd, bad))
    assert r.rcode() == dns.rcode.FORMERR
