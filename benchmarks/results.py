"""Writing one benchmark's marked section of RESULTS.md, leaving the others alone."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def replace_section(name: str, text: str, keep_after: str | None = None) -> None:
    """Put ``text`` between ``<!-- name:begin -->`` and ``<!-- name:end -->``.

    ``keep_after``: a marker inside the old section; it and what follows it
    (hand-written analysis) are kept after the new text.
    """
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        old, tail = rest.split(end, 1)
        kept = keep_after + old.split(keep_after, 1)[1] if keep_after and keep_after in old else ""
        doc = head + f"{begin}\n{text}{kept}{end}\n" + tail.lstrip("\n")
    else:
        doc = doc.rstrip("\n") + f"\n\n{begin}\n{text}{end}\n"
    RESULTS.write_text(doc)
