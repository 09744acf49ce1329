"""The stream parser on real bytes: the head and tail of a live capture (`xl -vvv
migrate -s` into a capture receiver) from Xen 4.17.5+72 in the nested lab
(tests/fixtures/xl/README.md), checked against the lab's own per-record summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.drivers.xlstream import StreamError, StreamParser

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "xl"
FIRST_PAGE_DATA = 3321  # offset of the first PAGE_DATA record (migrate-vvv.stream-summary.txt)
TAIL_AT = 142006441  # offset of X86_TSC_INFO, the first record after the last PAGE_DATA


def _xxd(name: str) -> bytes:
    out = bytearray()
    for line in (FIX / name).read_text().splitlines():
        if ": " in line:
            out += bytes.fromhex(line.split(": ", 1)[1][:39].replace(" ", ""))
    return bytes(out)


def _summary() -> list[tuple[int, str, str]]:
    rows = []
    for line in (FIX / "migrate-vvv.stream-summary.txt").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        offset, layer, _type, name = line.split()[:4]
        rows.append((int(offset), layer, name))
    return rows


def _records(events: list) -> list[tuple[int, str, str]]:  # type: ignore[type-arg]
    return [(e.offset, e.kind.split("-")[0], e.name) for e in events
            if e.kind in ("libxl-record", "libxc-record")]


def test_the_real_head_parses_up_to_the_first_page_data() -> None:
    head = _xxd("migrate-vvv.stream-head.hex")
    assert len(head) == 3393
    p = StreamParser()
    events = p.feed(head)
    kinds = [e.kind for e in events]
    assert kinds[:2] == ["xl-header", "libxl-header"]
    assert "libxc-header" in kinds and "libxc-domain" in kinds
    # every record before the first PAGE_DATA (whose event comes once its pfns are read:
    # the head holds only 64 bytes of its body)
    want = [r for r in _summary() if r[0] < FIRST_PAGE_DATA]
    assert _records(events) == want
    assert p.counts.domain_type and p.counts.config_bytes == 1381
    with pytest.raises(StreamError, match="truncated"):
        p.finish()  # it stops inside the first PAGE_DATA


def test_the_real_head_and_tail_make_a_stream_that_ends() -> None:
    """The head up to the first PAGE_DATA followed by the real tail is well framed: the
    parser reaches libxl END, and every record is where the lab's summary put it."""
    head = _xxd("migrate-vvv.stream-head.hex")[:FIRST_PAGE_DATA]
    tail = _xxd("migrate-vvv.stream-tail.hex")
    assert len(tail) == 142015857 - TAIL_AT
    p = StreamParser()
    events = []
    for i in range(0, len(head + tail), 997):  # an odd chunking
        events += p.feed((head + tail)[i:i + 997])
    p.finish()
    assert p.done
    summary = _summary()
    want = [r for r in summary if r[0] < FIRST_PAGE_DATA] + [
        (off - TAIL_AT + FIRST_PAGE_DATA, layer, name) for off, layer, name in summary
        if off >= TAIL_AT]
    assert _records(events) == want
    assert p.counts.page_data_records == 0


def test_a_byte_after_the_real_end_is_refused() -> None:
    head = _xxd("migrate-vvv.stream-head.hex")[:FIRST_PAGE_DATA]
    p = StreamParser()
    p.feed(head + _xxd("migrate-vvv.stream-tail.hex"))
    with pytest.raises(StreamError, match="follow the end"):
        p.feed(b"\0")
