"""The xl stream framing parser (workers/drivers/xlstream.py): generated valid streams
parse to the same events whatever the chunking; corrupt, truncated and oversized
records fail with the offset, the record and what was expected."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.drivers import xlstream as xs

PAGE = 4096


def rec(rtype: int, body: bytes) -> bytes:
    return struct.pack("<II", rtype, len(body)) + body + b"\0" * (-len(body) % 8)


def page_data(pfns: list[int], types: list[int] | None = None) -> bytes:
    types = types or [0] * len(pfns)
    words = [p | (t << 60) for p, t in zip(pfns, types, strict=True)]
    data = b"".join(bytes([p % 251]) * PAGE for p, t in zip(pfns, types, strict=True)
                    if t not in (0xD, 0xE, 0xF))
    return rec(1, struct.pack("<II", len(pfns), 0) + struct.pack(f"<{len(pfns)}Q", *words)
               + data)


def xl_header(config: bytes, *, mandatory: int = 3) -> bytes:
    blob = config + b"\n\0"
    opt = struct.pack("<I", len(blob)) + blob
    return struct.pack("<32sIIII", xs.XL_MAGIC, xs.XL_BYTEORDER, mandatory, 0, len(opt)) + opt


LIBXL_HDR = struct.pack(">QII", xs.LIBXL_IDENT, 2, 0)
LIBXC_HDR = struct.pack(">QIIHHI", xs.LIBXC_MARKER, xs.LIBXC_ID, 3, 0, 0, 0)
DOMAIN_HDR = struct.pack("<IHHII", 1, 12, 0, 4, 17)


def stream(rounds: list[list[int]], *, config: bytes = b'{"c_info": {"name": "d"}}',
           emulator: bytes = b"") -> bytes:
    """A PV stream as xl 4.17 sends it, one PAGE_DATA per batch of each round."""
    libxc = LIBXC_HDR + DOMAIN_HDR + rec(2, struct.pack("<BBHI", 8, 4, 0, 0)) \
        + rec(17, b"\1" * 40) + rec(18, b"\2" * 24) + rec(16, b"") \
        + rec(3, struct.pack("<II", 0, 31) + b"\0" * 8)
    for batch in rounds:
        libxc += page_data(batch)
    libxc += rec(8, b"\0" * 24) + rec(7, b"\3" * PAGE) + rec(4, struct.pack("<II", 0, 0)
                                                             + b"\4" * 200) \
        + rec(5, struct.pack("<II", 0, 0) + b"\5" * 13) + rec(0, b"")
    libxl = LIBXL_HDR + rec(1, b"") + libxc
    if emulator:
        libxl += rec(3, struct.pack("<II", 2, 0) + emulator)
    return xl_header(config) + libxl + rec(0, b"")


Parsed = tuple[list[xs.Event], xs.StreamParser]


def parse(data: bytes, cuts: list[int] | None = None, *, limit: int | None = None) -> Parsed:
    p = xs.StreamParser(limit=limit)
    events: list[xs.Event] = []
    last = 0
    for cut in sorted(set(cuts or [])) + [len(data)]:
        events += p.feed(data[last:cut])
        last = cut
    p.finish()
    return events, p


batches = st.lists(st.lists(st.integers(0, 2000), min_size=1, max_size=6, unique=True)
                   .map(sorted), min_size=1, max_size=5)


@settings(max_examples=60, deadline=None)
@given(rounds=batches, data=st.data(),
       config=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=4),
       emulator=st.binary(max_size=100))
def test_any_chunking_gives_the_same_events(rounds: list[list[int]], data: st.DataObject,
                                            config: dict[str, str], emulator: bytes) -> None:
    raw = stream(rounds, config=json.dumps(config).encode(), emulator=emulator)
    whole, p1 = parse(raw)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=30))
    chunked, p2 = parse(raw, cuts)
    assert chunked == whole
    assert p1.counts == p2.counts
    assert p1.counts.page_data_records == len(rounds)
    assert p1.counts.pages == sum(len(b) for b in rounds)
    assert p1.counts.bytes == len(raw)
    assert p1.counts.records["libxl:END"] == 1 and p1.counts.records["libxc:END"] == 1
    assert [e.kind for e in whole[:4]] == ["xl-header", "libxl-header", "libxl-record",
                                           "libxc-header"]
    assert whole[-1] == xs.Event("libxl-record", len(raw) - 8, name="END")
    pd = [e for e in whole if e.name == "PAGE_DATA"]
    assert [e.pages for e in pd] == [len(b) for b in rounds]
    for e in pd:  # each event's offset is its record header
        assert struct.unpack_from("<II", raw, e.offset) == (1, e.length)


def test_rounds_are_told_apart_by_the_pfn_order() -> None:
    # round 1: pfns 0..5 in two batches; round 2 (dirty): 2, 4; round 3: 4
    _, p = parse(stream([[0, 1, 2], [3, 4, 5], [2, 4], [4]]))
    assert p.counts.rounds == 3
    assert p.counts.pages == 9
    assert p.counts.domain_type == "x86 PV"


def test_pages_without_data_count_no_bytes() -> None:
    body = page_data([1, 2, 3], [0, 0xF, 0x1])  # XTAB carries no page
    raw = stream([[0]]).replace(page_data([0]), body)
    _, p = parse(raw)
    assert p.counts.pages == 2


def expect_error(raw: bytes, *words: str, limit: int | None = None) -> xs.StreamError:
    with pytest.raises(xs.StreamError) as info:
        parse(raw, limit=limit)
    for w in words:
        assert w in str(info.value), str(info.value)
    return info.value


def test_bad_magic_and_flags() -> None:
    good = stream([[0]])
    err = expect_error(b"Xen saved domain, xl formaX" + good[27:], "magic")
    assert err.offset == 0
    expect_error(good[:32] + struct.pack("<I", 0x04030201) + good[36:], "byte order")
    err = expect_error(xl_header(b"{}", mandatory=1) + good[len(xl_header(b"{}")):],
                       "stream v2")
    assert err.offset == 36


def test_config_length_bounds() -> None:
    huge = struct.pack("<32sIIII", xs.XL_MAGIC, xs.XL_BYTEORDER, 3, 0, xs.MAX_CONFIG + 5)
    err = expect_error(huge, "optional data", "allowed")
    assert err.offset == 44
    bad = struct.pack("<32sIIII", xs.XL_MAGIC, xs.XL_BYTEORDER, 3, 0, 8) \
        + struct.pack("<I", 100) + b"abcd"
    expect_error(bad + LIBXL_HDR, "config length 100 exceeds")


def test_libxl_and_libxc_headers() -> None:
    good = stream([[0]])
    at = good.index(LIBXL_HDR)
    err = expect_error(good[:at] + struct.pack(">QII", xs.LIBXL_IDENT, 3, 0)
                       + good[at + 16:], "version 2")
    assert err.offset == at + 8 and err.where == "libxl-header"
    expect_error(good[:at] + struct.pack(">QII", xs.LIBXL_IDENT, 2, 1) + good[at + 16:],
                 "options 0")
    at = good.index(LIBXC_HDR)
    expect_error(good[:at] + LIBXC_HDR[:12] + struct.pack(">I", 9) + good[at + 16:],
                 "version 2 or 3")
    # byte order: the libxc header is big-endian; a little-endian one is refused
    expect_error(good[:at] + struct.pack("<QIIHHI", xs.LIBXC_MARKER, xs.LIBXC_ID, 3, 0, 0, 0)
                 + good[at + 24:], "XENF")
    at = good.index(DOMAIN_HDR)
    expect_error(good[:at] + struct.pack("<IHHII", 9, 12, 0, 4, 17) + good[at + 16:],
                 "domain type")


def test_unknown_and_oversized_records() -> None:
    good = stream([[0]])
    end = len(good) - 8
    err = expect_error(good[:end] + rec(9, b""), "unknown libxl record type 0x9")
    assert err.offset == end
    err = expect_error(good[:end] + struct.pack("<II", 3, 65 * xs.MiB), "exceeds")
    assert "EMULATOR_CONTEXT" in err.where and err.offset == end + 4  # the length field
    at = good.index(rec(7, b"\3" * PAGE))
    err = expect_error(good[:at] + rec(7, b"\3" * 100) + good[at + 8 + PAGE:],
                       "expected length 4096, got 100")
    assert "SHARED_INFO" in err.where
    # an optional libxc record this parser does not know is skipped
    raw = good[:at] + rec(0x80000042, b"x" * 9) + good[at:]
    _, p = parse(raw)
    assert p.counts.records["libxc:OPTIONAL_0x80000042"] == 1


def test_page_data_counts_must_match_the_length() -> None:
    good = stream([[0, 1]])
    body = page_data([0, 1])
    at = good.index(body)
    short = struct.pack("<II", 1, len(body) - 8 - PAGE) + body[8:-PAGE]
    err = expect_error(good[:at] + short + good[at + len(body):], "PAGE_DATA of 2 pfn(s)",
                       "expected length")
    assert err.offset == at + 4
    many = struct.pack("<II", 1, 24) + struct.pack("<II", xs.MAX_BATCH + 1, 0) + b"\0" * 16
    expect_error(good[:at] + many, "PAGE_DATA count")
    resv = bytearray(body)
    resv[16 + 6] = 0x10  # pfn bit 52: reserved (52..59)
    expect_error(good[:at] + bytes(resv) + good[at + len(body):], "pfn[0]", "reserved")
    huge = struct.pack("<II", 1, xs._PAGE_DATA_MAX + 8)
    expect_error(good[:at] + huge, "exceeds")


def test_padding_must_be_zero() -> None:
    good = stream([[0]])
    r = rec(5, struct.pack("<II", 0, 0) + b"\5" * 13)
    at = good.index(r)
    bad = r[:-1] + b"\1"
    expect_error(good[:at] + bad + good[at + len(r):], "padding", "expected zeros")


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(0, 10**6))
def test_truncated_anywhere_says_what_was_expected(cut: int) -> None:
    raw = stream([[0, 1], [1]])
    cut %= len(raw)
    err = expect_error(raw[:cut], "truncated: expected")
    assert err.offset == cut


def test_bytes_after_the_end_and_the_budget() -> None:
    raw = stream([[0]])
    expect_error(raw + b"\0", "follow the end")
    err = expect_error(raw, "budget", limit=len(raw) - 1)
    assert err.offset == len(raw) - 1
    parse(raw, limit=len(raw))
