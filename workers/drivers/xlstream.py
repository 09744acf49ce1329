"""The framing of an xl save file / ``xl migrate`` stream, parsed incrementally (pure).

What ``xl save`` writes and ``xl migrate`` sends (Xen 4.17; ``tools/xl/xl_saverestore.c``,
``docs/specs/libxl-migration-stream.pandoc``, ``docs/specs/libxc-migration-stream.pandoc``):

1. xl's header: 32-byte magic ``Xen saved domain, xl format\\n \\0 \\r``, then u32 byte
   order (0x01020304 in the writer's order), u32 mandatory flags (1 = config is JSON,
   2 = stream v2), u32 optional flags, u32 optional-data length; the optional data is
   u32 config length + the config.
2. The libxl stream v2 header, **big-endian**: u64 ``LibxlFmt``, u32 version 2, u32
   options (bit 0 big-endian records, bit 1 legacy). Then records ``{u32 type, u32
   length, body, zero padding to 8}`` in the stream's order (little-endian here).
3. A LIBXC_CONTEXT record (type 1, length 0) is followed inline by the libxc stream:
   its image header, **big-endian** (u64 marker all ones, u32 ``XENF``, u32 version 2
   or 3, u16 options, u16 + u32 reserved), a domain header (u32 type, u16 page shift,
   u16 reserved, u32 xen major, u32 xen minor) and records of the same framing, until
   the libxc END record; the libxl records go on after it, until the libxl END.

The receiver (:mod:`workers.drivers.xlreceive`) feeds every chunk it reads to a
:class:`StreamParser` and writes the bytes to the snapshot's memory file: the parser
buffers only headers and PAGE_DATA's pfn list, never page contents, and bounds every
length before it is trusted. Errors (:class:`StreamError`) name the offset, the record
and what was expected, so a report says exactly where a stream went wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

XL_MAGIC = b"Xen saved domain, xl format\n \0 \r"
XL_BYTEORDER = 0x01020304
XL_FLAG_JSON, XL_FLAG_STREAMV2 = 1, 2
XL_HEADER = struct.Struct("<32sIIII")
MAX_CONFIG = 1 << 20  # xl's config as JSON: a few KiB; anything near 1 MiB is not one

LIBXL_IDENT = 0x4C6962786C466D74  # "LibxlFmt"
LIBXL_HEADER = struct.Struct(">QII")
LIBXL_OPT_BIG_ENDIAN, LIBXL_OPT_LEGACY = 1, 2
LIBXC_MARKER, LIBXC_ID = 0xFFFFFFFFFFFFFFFF, 0x58454E46  # "XENF"
LIBXC_HEADER = struct.Struct(">QIIHHI")
LIBXC_DOMAIN = struct.Struct("<IHHII")
RECORD = struct.Struct("<II")
REC_OPTIONAL = 0x80000000  # libxc: a record type a receiver may ignore

MiB = 1 << 20
MAX_BATCH = 4096  # pfns in one PAGE_DATA record (libxc sends at most 1024)

# libxl records: type -> (name, max body length); a fixed length where the spec has one
LIBXL_RECORDS: dict[int, tuple[str, int]] = {
    0: ("END", 0), 1: ("LIBXC_CONTEXT", 0), 2: ("EMULATOR_XENSTORE_DATA", 1 * MiB),
    3: ("EMULATOR_CONTEXT", 64 * MiB), 4: ("CHECKPOINT_END", 0), 5: ("CHECKPOINT_STATE", 4),
}
PAGE_DATA = 1
_PAGE_DATA_MAX = 8 + MAX_BATCH * 8 + MAX_BATCH * 65536
LIBXC_RECORDS: dict[int, tuple[str, int]] = {
    0: ("END", 0), 1: ("PAGE_DATA", _PAGE_DATA_MAX), 2: ("X86_PV_INFO", 8),
    3: ("X86_PV_P2M_FRAMES", 64 * MiB), 4: ("X86_PV_VCPU_BASIC", 1 * MiB),
    5: ("X86_PV_VCPU_EXTENDED", 1 * MiB), 6: ("X86_PV_VCPU_XSAVE", 1 * MiB),
    7: ("SHARED_INFO", 4096), 8: ("X86_TSC_INFO", 24), 9: ("HVM_CONTEXT", 64 * MiB),
    10: ("HVM_PARAMS", 1 * MiB), 11: ("TOOLSTACK", 1 * MiB), 12: ("X86_PV_VCPU_MSRS", 1 * MiB),
    13: ("VERIFY", 0), 14: ("CHECKPOINT", 0), 15: ("CHECKPOINT_DIRTY_PFN_LIST", 64 * MiB),
    16: ("STATIC_DATA_END", 0), 17: ("X86_CPUID_POLICY", 1 * MiB),
    18: ("X86_MSR_POLICY", 1 * MiB),
}
# records whose length is exactly the bound (the rest: at most)
_EXACT = {("libxl", 0), ("libxl", 1), ("libxl", 4), ("libxl", 5), ("libxc", 0),
          ("libxc", 2), ("libxc", 7), ("libxc", 8), ("libxc", 13), ("libxc", 14),
          ("libxc", 16)}
_OPTIONAL_MAX = 1 * MiB  # a libxc record type this parser does not know, marked optional
DOMAIN_TYPES = {1: "x86 PV", 2: "x86 HVM", 3: "x86 PVH", 4: "ARM"}

# PAGE_DATA pfn words: type in bits 60-63; BROKEN, XALLOC and XTAB carry no page
_PFN_TYPE_SHIFT = 60
_PFN_RESERVED = ((1 << 60) - 1) & ~((1 << 52) - 1)
_NO_DATA = {0xD, 0xE, 0xF}
_BAD_TYPES = {5, 6, 7, 8}


class StreamError(ValueError):
    """The stream is not what xl writes: ``offset`` of the bad field, the record (or
    header) it belongs to, and what was expected."""

    def __init__(self, offset: int, where: str, problem: str) -> None:
        self.offset = offset
        self.where = where
        self.problem = problem
        super().__init__(f"at byte {offset} ({where}): {problem}")


@dataclass(frozen=True)
class Event:
    """One element of the stream, in order: ``kind`` is ``xl-header``, ``libxl-header``,
    ``libxl-record``, ``libxc-header``, ``libxc-domain`` or ``libxc-record``; records
    carry their type name and body length; PAGE_DATA its page count."""

    kind: str
    offset: int
    name: str = ""
    length: int = 0
    pages: int = 0
    round: int = 0  # PAGE_DATA: the precopy round it belongs to (see Counts)


@dataclass
class Counts:
    """What went by: records per ``layer:NAME``, PAGE_DATA records and pages, bytes, and
    the precopy rounds told apart by the pfn order (each round sends its pfns in
    ascending order; a batch starting at or below the previous batch's last pfn starts
    a new round)."""

    records: dict[str, int] = field(default_factory=dict)
    page_data_records: int = 0
    pages: int = 0
    bytes: int = 0
    rounds: int = 0
    config_bytes: int = 0
    domain_type: str = ""


class StreamParser:
    """Feed bytes in any chunks; get the same :class:`Event` list whatever the chunking.

    ``limit``: the most bytes accepted in all (a budget); ``done`` turns true at the
    libxl END record, after which any byte is an error. :meth:`finish` checks that the
    stream did end there."""

    def __init__(self, *, limit: int | None = None) -> None:
        self.limit = limit
        self.counts = Counts()
        self.done = False
        self._buf = bytearray()
        self._need = XL_HEADER.size  # bytes to gather before ``_step`` runs
        self._skip = 0  # bytes to pass over (page contents, record bodies)
        self._pad = 0  # zero padding to check after the skipped body
        self._state = "xl-header"
        self._start = 0  # offset of what ``_buf`` holds
        self._record: tuple[str, int, str, int] = ("", 0, "", 0)  # layer, type, name, length
        self._page_size = 4096
        self._last_pfn = -1

    # ------------------------------------------------------------ input

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        view = memoryview(data)
        pos = 0
        if self.limit is not None and self.counts.bytes + len(data) > self.limit:
            raise StreamError(self.limit, self._where(),
                              f"the stream is larger than its budget of {self.limit} bytes")
        while pos < len(view):
            if self.done:
                raise StreamError(self.counts.bytes + pos, "after libxl END",
                                  f"{len(view) - pos} byte(s) follow the end of the stream")
            if self._skip:
                n = min(self._skip, len(view) - pos)
                self._skip -= n
                pos += n
                if not self._skip:
                    if self._pad:
                        self._gather_padding()
                    else:
                        self._after_record()
                continue
            take = min(self._need - len(self._buf), len(view) - pos)
            if not self._buf:
                self._start = self.counts.bytes + pos
            self._buf += view[pos:pos + take]
            pos += take
            if len(self._buf) == self._need:
                chunk = bytes(self._buf)
                self._buf.clear()
                ev = self._step(chunk)
                if ev is not None:
                    events.append(ev)
        self.counts.bytes += len(data)
        return events

    def finish(self) -> None:
        """Raise unless the stream ended with its libxl END record."""
        if not self.done:
            raise StreamError(self.counts.bytes, self._where(),
                              f"the stream ends here, truncated: expected {self._expected()}")

    # ------------------------------------------------------------ states

    def _where(self) -> str:
        if self._state in ("record", "body", "page-data", "page-pfns", "padding"):
            layer, rtype, name, length = self._record
            return f"{layer} record {name} (type {rtype}, length {length})"
        return self._state

    def _expected(self) -> str:
        if self._skip:
            return f"{self._skip} more byte(s) of {self._where()}"
        return f"{self._need - len(self._buf)} more byte(s) of {self._where()}"

    def _gather(self, state: str, size: int) -> None:
        self._state, self._need = state, size

    def _gather_padding(self) -> None:
        self._gather("padding", self._pad)
        self._pad = 0

    def _after_record(self) -> None:
        layer = self._record[0]
        self._gather(f"{layer} record header", RECORD.size)

    def _body(self, length: int, prefix: int = 0) -> None:
        """Skip what is left of a record's body, then check its padding."""
        pad = -length % 8
        self._skip = length - prefix
        self._pad = pad
        if not self._skip:
            if pad:
                self._gather_padding()
            else:
                self._after_record()
        else:
            self._state = "body"

    def _step(self, chunk: bytes) -> Event | None:
        handler = {
            "xl-header": self._xl_header, "xl-optdata": self._xl_optdata,
            "libxl-header": self._libxl_header, "libxl record header": self._record_header,
            "libxc-header": self._libxc_header, "libxc-domain": self._libxc_domain,
            "libxc record header": self._record_header, "page-data": self._page_data,
            "page-pfns": self._page_pfns, "padding": self._padding,
        }[self._state]
        return handler(chunk)

    def _fail(self, at: int, problem: str) -> StreamError:
        return StreamError(self._start + at, self._where(), problem)

    def _xl_header(self, chunk: bytes) -> Event:
        magic, order, mandatory, _optional, optlen = XL_HEADER.unpack(chunk)
        if magic != XL_MAGIC:
            raise self._fail(0, f"expected xl's magic {XL_MAGIC!r}, got {magic!r}")
        if order != XL_BYTEORDER:
            raise self._fail(32, f"expected byte order 0x{XL_BYTEORDER:08x} (little-endian),"
                                 f" got 0x{order:08x}")
        if mandatory & ~(XL_FLAG_JSON | XL_FLAG_STREAMV2) or not mandatory & XL_FLAG_STREAMV2:
            raise self._fail(36, f"expected mandatory flags with stream v2 (0x2) and no "
                                 f"others than 0x3, got 0x{mandatory:x}")
        if optlen > MAX_CONFIG + 4:
            raise self._fail(44, f"optional data of {optlen} bytes: more than the "
                                 f"{MAX_CONFIG + 4} allowed for a config")
        ev = Event("xl-header", self._start, length=optlen)
        if optlen:
            self._gather("xl-optdata", optlen)
        else:
            self._gather("libxl-header", LIBXL_HEADER.size)
        return ev

    def _xl_optdata(self, chunk: bytes) -> None:
        if len(chunk) < 4:
            raise self._fail(0, f"optional data of {len(chunk)} bytes: too short for the "
                                "u32 config length")
        (clen,) = struct.unpack_from("<I", chunk)
        if clen > len(chunk) - 4:
            raise self._fail(0, f"config length {clen} exceeds the {len(chunk) - 4} bytes "
                                "of optional data that follow it")
        self.counts.config_bytes = clen
        self._gather("libxl-header", LIBXL_HEADER.size)

    def _libxl_header(self, chunk: bytes) -> Event:
        ident, version, options = LIBXL_HEADER.unpack(chunk)
        if ident != LIBXL_IDENT:
            raise self._fail(0, f"expected the libxl stream ident 0x{LIBXL_IDENT:x} "
                                f"(LibxlFmt), got 0x{ident:x}")
        if version != 2:
            raise self._fail(8, f"expected libxl stream version 2, got {version}")
        if options:  # LIBXL_OPT_BIG_ENDIAN / LIBXL_OPT_LEGACY: not framed as read here
            raise self._fail(12, f"expected options 0 (little-endian, not legacy), got "
                                 f"0x{options:x}")
        self._record = ("libxl", 0, "", 0)
        self._after_record()
        return Event("libxl-header", self._start)

    def _libxc_header(self, chunk: bytes) -> Event:
        marker, ident, version, options, res1, res2 = LIBXC_HEADER.unpack(chunk)
        if marker != LIBXC_MARKER or ident != LIBXC_ID:
            raise self._fail(0, f"expected the libxc image header (marker all ones, id XENF)"
                                f", got marker 0x{marker:x} id 0x{ident:x}")
        if version not in (2, 3):
            raise self._fail(12, f"expected libxc stream version 2 or 3, got {version}")
        if options or res1 or res2:
            raise self._fail(16, f"expected options 0 (little-endian) and zero reserved "
                                 f"fields, got 0x{options:x}/0x{res1:x}/0x{res2:x}")
        self._gather("libxc-domain", LIBXC_DOMAIN.size)
        return Event("libxc-header", self._start, length=version)

    def _libxc_domain(self, chunk: bytes) -> Event:
        dtype, shift, res, _major, _minor = LIBXC_DOMAIN.unpack(chunk)
        if dtype not in DOMAIN_TYPES:
            raise self._fail(0, f"expected a domain type in {sorted(DOMAIN_TYPES)}, got {dtype}")
        if shift != 12 or res:
            raise self._fail(4, f"expected page shift 12 and reserved 0, got {shift}/{res}")
        self.counts.domain_type = DOMAIN_TYPES[dtype]
        self._page_size = 1 << shift
        self._record = ("libxc", 0, "", 0)
        self._after_record()
        return Event("libxc-domain", self._start, name=DOMAIN_TYPES[dtype])

    def _record_header(self, chunk: bytes) -> Event | None:
        layer = self._record[0]
        rtype, length = RECORD.unpack(chunk)
        table = LIBXL_RECORDS if layer == "libxl" else LIBXC_RECORDS
        known = table.get(rtype)
        if known is None and layer == "libxc" and rtype & REC_OPTIONAL:
            known = (f"OPTIONAL_0x{rtype:x}", _OPTIONAL_MAX)
        if known is None:
            raise self._fail(0, f"unknown {layer} record type 0x{rtype:x} (expected one of "
                                f"{sorted(table)})")
        name, bound = known
        self._record = (layer, rtype, name, length)
        self._state = "record"  # errors from here on name the record
        if (layer, rtype) in _EXACT and length != bound:
            raise self._fail(4, f"expected length {bound}, got {length}")
        if length > bound:
            raise self._fail(4, f"length {length} exceeds the {bound} bytes allowed")
        key = f"{layer}:{name}"
        self.counts.records[key] = self.counts.records.get(key, 0) + 1
        ev = Event(f"{layer}-record", self._start, name=name, length=length)
        if layer == "libxl" and rtype == 0:
            self.done = True
            self._state = "end"
        elif layer == "libxl" and rtype == 1:
            self._gather("libxc-header", LIBXC_HEADER.size)
        elif layer == "libxc" and rtype == 0:
            self._record = ("libxl", 0, "", 0)
            self._after_record()
        elif layer == "libxc" and rtype == PAGE_DATA:
            if length < 16:
                raise self._fail(4, f"PAGE_DATA of {length} bytes: expected at least 16 "
                                    "(count, reserved, one pfn)")
            self._gather("page-data", 8)
            return None  # the event comes with its page count
        else:
            self._body(length)
        return ev

    def _page_data(self, chunk: bytes) -> None:
        count, res = struct.unpack("<II", chunk)
        length = self._record[3]
        if count == 0 or count > MAX_BATCH:
            raise self._fail(0, f"PAGE_DATA count {count}: expected 1..{MAX_BATCH}")
        if res:
            raise self._fail(4, f"PAGE_DATA reserved field 0x{res:x}: expected 0")
        if 8 + 8 * count > length:
            raise self._fail(0, f"PAGE_DATA count {count} needs {8 + 8 * count} bytes of pfns"
                                f", the record has {length}")
        self._gather("page-pfns", 8 * count)

    def _page_pfns(self, chunk: bytes) -> Event:
        count = len(chunk) // 8
        length = self._record[3]
        pfns = struct.unpack(f"<{count}Q", chunk)
        pages = 0
        for i, word in enumerate(pfns):
            ptype = word >> _PFN_TYPE_SHIFT
            if word & _PFN_RESERVED or ptype in _BAD_TYPES:
                raise self._fail(8 * i, f"pfn[{i}] = 0x{word:016x}: reserved bits or an "
                                        "invalid page type")
            if ptype not in _NO_DATA:
                pages += 1
        want = 8 + 8 * count + pages * self._page_size
        if length != want:
            raise self._fail(-12, f"PAGE_DATA of {count} pfn(s), {pages} with data: expected "
                                 f"length {want}, got {length}")
        first = pfns[0] & ((1 << 52) - 1)
        if first <= self._last_pfn or self.counts.rounds == 0:
            self.counts.rounds += 1
        self._last_pfn = pfns[-1] & ((1 << 52) - 1)
        self.counts.page_data_records += 1
        self.counts.pages += pages
        start = self._start - 16  # the record header and count came before the pfns
        self._body(length, prefix=8 + 8 * count)
        return Event("libxc-record", start, name="PAGE_DATA", length=length, pages=pages,
                     round=self.counts.rounds)

    def _padding(self, chunk: bytes) -> None:
        if any(chunk):
            raise self._fail(0, f"padding {chunk.hex()}: expected zeros")
        self._after_record()
