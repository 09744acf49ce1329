"""The xl stand-in's libxl/libxc stream framing (tests/xlstandin/stream.py): what its
writer produces its reader takes back byte for byte, and the reader refuses every
truncation and corruption with libxl's/libxc's messages (generated cases)."""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.xlstandin.stream import (
    LIBXL_HEADER,
    MAX_BATCH,
    PAGE_DATA,
    PAGE_SIZE,
    Layout,
    Parsed,
    StreamError,
    StreamReader,
    StreamWriter,
)

LAYOUTS = st.builds(Layout, kind=st.sampled_from(["pv", "pvh", "hvm"]),
                    memory_mib=st.integers(1, 512), vcpus=st.integers(1, 4))
PAYLOADS = st.lists(st.integers(1, 3 * MAX_BATCH // 2), min_size=0, max_size=3)


@contextmanager
def temp_fd(data: bytes = b"") -> Iterator[int]:
    with tempfile.TemporaryFile() as fh:
        fh.write(data)
        fh.flush()
        fd = os.dup(fh.fileno())
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            yield fd
        finally:
            os.close(fd)


def write_stream(layout: Layout, batches: list[int]) -> tuple[bytes, bytes]:
    """A whole stream with PAGE_DATA batches of the given page counts (each split at
    1024 pages as the pump does): (stream, payload)."""
    payload = b"".join(bytes([i % 251]) * PAGE_SIZE for i in range(sum(batches)))
    with temp_fd() as fd:
        w = StreamWriter(fd, layout)
        w.head()
        at = 0
        for pages in batches:
            while pages:
                n = min(pages, MAX_BATCH)
                w.page_data(payload[at:at + n * PAGE_SIZE])
                at, pages = at + n * PAGE_SIZE, pages - n
        w.tail()
        os.lseek(fd, 0, os.SEEK_SET)
        data = b""
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    assert len(data) == w.written
    return data, payload


def read_stream(data: bytes) -> tuple[Parsed, bytes]:
    got = bytearray()
    with temp_fd(data) as fd:
        reader = StreamReader(fd, 7)
        reader.head()
        reader.libxc_records(got.extend)
        reader.tail()
        assert os.read(fd, 1) == b""
    return reader.parsed, bytes(got)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LAYOUTS, PAYLOADS)
def test_round_trip(layout: Layout, batches: list[int]) -> None:
    data, payload = write_stream(layout, batches)
    assert data[:8] == b"LibxlFmt" and len(data) % 8 == 0
    parsed, got = read_stream(data)
    assert got == payload
    assert parsed.guest_type == (1 if layout.kind == "pv" else 2)
    assert parsed.xen == (4, 17)
    assert parsed.records.get("Page data", 0) == sum(-(-b // MAX_BATCH) for b in batches)
    assert parsed.records["End"] == 1 and parsed.records["libxl END"] == 1
    assert parsed.records.get("libxl EMULATOR_CONTEXT", 0) == (layout.kind == "hvm")
    assert parsed.records.get("x86 PV vcpu basic", 0) == (layout.vcpus if layout.pv else 0)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LAYOUTS, PAYLOADS, st.floats(0, 1, exclude_max=True))
def test_every_truncation_is_refused(layout: Layout, batches: list[int], where: float
                                     ) -> None:
    data, _ = write_stream(layout, batches)
    cut = int(len(data) * where)
    try:
        read_stream(data[:cut])
    except StreamError as exc:
        assert exc.lines and all(line.startswith(("libxl: error:", "xc: error:"))
                                 for line in exc.lines)
    else:
        raise AssertionError(f"a stream cut at {cut} of {len(data)} was accepted")


def _offsets(data: bytes) -> list[tuple[str, int, int, int]]:
    """(layer, type, length, offset of the header) of every record in a stream."""
    out, at = [], LIBXL_HEADER.size
    layer = "libxl"
    while at < len(data):
        rtype, length = struct.unpack_from("<II", data, at)
        out.append((layer, rtype, length, at))
        at += 8 + length + (-length % 8)
        if layer == "libxl" and rtype == 1:
            layer, at = "libxc", at + 40
        elif layer == "libxc" and rtype == 0:
            layer = "libxl"
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LAYOUTS, st.integers(1, 40), st.data())
def test_corrupt_records_are_refused(layout: Layout, pages: int, data: st.DataObject) -> None:
    stream, _ = write_stream(layout, [pages])
    records = _offsets(stream)
    layer, rtype, length, at = data.draw(st.sampled_from(records))
    how = data.draw(st.sampled_from(["oversized", "shorter", "page type", "count 0"]
                                    if rtype == PAGE_DATA and layer == "libxc"
                                    else ["oversized", "unknown type"]))
    bad = bytearray(stream)
    if how == "oversized":
        struct.pack_into("<I", bad, at + 4, (128 << 20) + 8)
        expect = "exceeds max"
    elif how == "unknown type":
        struct.pack_into("<I", bad, at, 0x7000)  # a mandatory type nobody defined
        expect = "Unrecognised"
    elif how == "shorter":
        struct.pack_into("<I", bad, at + 4, length - PAGE_SIZE)
        expect = "PAGE_DATA record wrong size"
    elif how == "page type":
        bad[at + 16 + 7] = 0x50  # pfn[0] type 5: reserved
        expect = "Unknown type"
    else:
        struct.pack_into("<I", bad, at + 8, 0)
        expect = "Expected at least 1 pfn"
    try:
        read_stream(bytes(bad))
    except StreamError as exc:
        assert expect in "\n".join(exc.lines), (how, exc.lines)
    else:
        raise AssertionError(f"{how} {layer} record 0x{rtype:x} at {at} was accepted")


def test_bad_headers() -> None:
    data, _ = write_stream(Layout("pv", 4, 1), [1])
    cases = {
        "Invalid ident": b"LibxlFmX" + data[8:],
        "Unexpected Version: expected 2, got 3": data[:8] + struct.pack(">I", 3) + data[12:],
        "Unable to handle big endian streams": data[:12] + struct.pack(">I", 1) + data[16:],
        "Invalid marker": data[:24] + b"\0" * 8 + data[32:],
        "Invalid ID: Expected 0x58454e46, Got 0x58454e47":
            data[:32] + b"XENG" + data[36:],
        "Invalid page shift 13": data[:52] + b"\x0d" + data[53:],
    }
    for expect, blob in cases.items():
        try:
            read_stream(blob)
        except StreamError as exc:
            assert expect in "\n".join(exc.lines), (expect, exc.lines)
        else:
            raise AssertionError(f"{expect}: accepted")
