"""The libxl migration stream v2 framing, shared by ``xl save``, ``xl restore`` and
``xl migrate`` in the stand-in.

What follows the xl save-file header (on real Xen, written by libxl and libxc; see
Xen's docs/specs/libxl-migration-stream.pandoc and libxc-migration-stream.pandoc):

- the libxl header, big-endian: ident ``LibxlFmt``, version 2, options 0;
- libxl records ``{u32 type, u32 length, body, zero padding to 8}``, little-endian:
  LIBXC_CONTEXT (1, length 0) hands the stream to libxc, then (HVM only)
  EMULATOR_CONTEXT (3) and finally END (0);
- the libxc stream after LIBXC_CONTEXT: image header (marker 0xffffffffffffffff, id
  ``XENF``, version 3, options; big-endian), domain header (type, page_shift, Xen
  4.17; little-endian), then libxc records in the same framing as libxl's. A PV
  domain: X86_PV_INFO, X86_CPUID_POLICY, X86_MSR_POLICY, STATIC_DATA_END,
  X86_PV_P2M_FRAMES, PAGE_DATA x N, X86_TSC_INFO, SHARED_INFO, X86_PV_VCPU_BASIC and
  X86_PV_VCPU_EXTENDED per vCPU, END. HVM/PVH: X86_CPUID_POLICY, X86_MSR_POLICY,
  STATIC_DATA_END, PAGE_DATA x N, X86_TSC_INFO, HVM_CONTEXT, HVM_PARAMS, END.

The stand-in's memory is QEMU's own migration stream: its bytes ride in PAGE_DATA
records laid out as libxc writes them (count, reserved, ``count`` u64 pfns of type
NOTAB, ``count`` pages of 4096 bytes; at most 1024 pages a record, libxc's
MAX_BATCH_SIZE), so a reader that parses only the framing sees real-looking records.
The last page is padded with zeros (QEMU stops reading at its own end of stream). The
other libxc records carry fixed, plausible blobs of the right shape; HVM's
EMULATOR_CONTEXT carries an empty QEMU device-state stream (the devices are in the
PAGE_DATA bytes).
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.xlstandin.qmp import QMP

PAGE_SIZE = 4096
MAX_BATCH = 1024  # libxc's MAX_BATCH_SIZE: pages per PAGE_DATA record
REC_LENGTH_MAX = 128 << 20  # libxc's REC_LENGTH_MAX

LIBXL_IDENT = 0x4C6962786C466D74  # "LibxlFmt"
LIBXL_VERSION = 2
LIBXL_HEADER = struct.Struct(">QII")
RHDR = struct.Struct("<II")

# libxl record types
LIBXL_END, LIBXC_CONTEXT, EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT = 0, 1, 2, 3
CHECKPOINT_END, CHECKPOINT_STATE = 4, 5
LIBXL_NAMES = {0: "END", 1: "LIBXC_CONTEXT", 2: "EMULATOR_XENSTORE_DATA",
               3: "EMULATOR_CONTEXT", 4: "CHECKPOINT_END", 5: "CHECKPOINT_STATE"}

# libxc (xg_sr_stream_format.h)
IHDR = struct.Struct(">QIIHHI")
DHDR = struct.Struct("<IHHII")
IHDR_MARKER, IHDR_ID, IHDR_VERSION = 0xFFFFFFFFFFFFFFFF, 0x58454E46, 3
DHDR_X86_PV, DHDR_X86_HVM = 1, 2
XEN_MAJOR, XEN_MINOR = 4, 17
XC_END, PAGE_DATA, X86_PV_INFO, X86_PV_P2M_FRAMES = 0x00, 0x01, 0x02, 0x03
X86_PV_VCPU_BASIC, X86_PV_VCPU_EXTENDED, X86_PV_VCPU_XSAVE = 0x04, 0x05, 0x06
SHARED_INFO, X86_TSC_INFO, HVM_CONTEXT, HVM_PARAMS = 0x07, 0x08, 0x09, 0x0A
TOOLSTACK, X86_PV_VCPU_MSRS, VERIFY, CHECKPOINT = 0x0B, 0x0C, 0x0D, 0x0E
CHECKPOINT_DIRTY_PFN_LIST, STATIC_DATA_END = 0x0F, 0x10
X86_CPUID_POLICY, X86_MSR_POLICY = 0x11, 0x12
REC_OPTIONAL = 0x80000000
XC_NAMES = {
    0x00: "End", 0x01: "Page data", 0x02: "x86 PV info", 0x03: "x86 PV P2M frames",
    0x04: "x86 PV vcpu basic", 0x05: "x86 PV vcpu extended", 0x06: "x86 PV vcpu xsave",
    0x07: "Shared info", 0x08: "x86 TSC info", 0x09: "HVM context", 0x0A: "HVM params",
    0x0B: "Toolstack", 0x0C: "x86 PV vcpu msrs", 0x0D: "Verify", 0x0E: "Checkpoint",
    0x0F: "Checkpoint dirty pfn list", 0x10: "Static data end", 0x11: "x86 CPUID policy",
    0x12: "x86 MSR policy"}
PFINFO_NOTAB, PFINFO_BROKEN, PFINFO_XALLOC, PFINFO_XTAB = 0x0, 0xD, 0xE, 0xF
_KNOWN_PAGE_TYPES = {0x0, 0x1, 0x2, 0x3, 0x4, 0x9, 0xA, 0xB, 0xC, 0xD, 0xE, 0xF}
PFN_MASK = 0x000FFFFFFFFFFFFF

# empty QEMU device state: QEVM magic, version 3, QEMU_VM_EOF
EMPTY_QEMU_STATE = struct.pack(">II", 0x5145564D, 3) + b"\x00"
EMULATOR_QEMU_UPSTREAM = 2


def frame(rtype: int, body: bytes) -> bytes:
    """One record: header, body, zero padding to a multiple of 8."""
    return RHDR.pack(rtype, len(body)) + body + b"\0" * (-len(body) % 8)


def _cpuid_policy() -> bytes:
    """X86_CPUID_POLICY: xen_cpuid_leaf_t {leaf, subleaf, a, b, c, d} entries."""
    leaves = [(0x0, 0xFFFFFFFF, 0xD, 0x756E6547, 0x6C65746E, 0x49656E69),
              (0x1, 0xFFFFFFFF, 0x000306C3, 0x00000800, 0xF6FA3203, 0x078BFBFF),
              (0x7, 0x0, 0x0, 0x000027AB, 0x0, 0x0),
              (0xD, 0x0, 0x7, 0x340, 0x340, 0x0),
              (0x80000000, 0xFFFFFFFF, 0x80000008, 0x0, 0x0, 0x0),
              (0x80000001, 0xFFFFFFFF, 0x0, 0x0, 0x00000121, 0x2C100800)]
    return b"".join(struct.pack("<6I", *leaf) for leaf in leaves)


def _msr_policy() -> bytes:
    """X86_MSR_POLICY: xen_msr_entry_t {idx, flags, val} entries."""
    return struct.pack("<IIQ", 0xCE, 0, 0) + struct.pack("<IIQ", 0x10A, 0, 0)


@dataclass
class Layout:
    """What the libxc records describe: the guest type, its pages, its vCPUs."""

    kind: str  # "pv", "pvh" or "hvm" (the stand-in's c_info.type)
    memory_mib: int
    vcpus: int

    @property
    def pv(self) -> bool:
        return self.kind == "pv"

    @property
    def nr_pfns(self) -> int:
        return max(1, self.memory_mib * (1 << 20) // PAGE_SIZE)


class StreamWriter:
    """Writes the libxl/libxc framing to ``fd`` (a file or the migration pipe).

    ``write`` raises OSError as the fd does (EPIPE once a migration receiver died:
    xl migrate ignores SIGPIPE); ``records`` counts what was written, by name."""

    def __init__(self, fd: int, layout: Layout) -> None:
        self.fd = fd
        self.layout = layout
        self.written = 0
        self.records: dict[str, int] = {}
        self._next_pfn = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
            self.written += n

    def _count(self, name: str) -> None:
        self.records[name] = self.records.get(name, 0) + 1

    def libxl_record(self, rtype: int, body: bytes = b"") -> None:
        self.write(frame(rtype, body))
        self._count(f"libxl {LIBXL_NAMES.get(rtype, hex(rtype))}")

    def xc_record(self, rtype: int, body: bytes = b"") -> None:
        self.write(frame(rtype, body))
        self._count(XC_NAMES.get(rtype, hex(rtype)))

    def head(self) -> None:
        """Everything libxl and libxc write before the first PAGE_DATA record (before
        the suspend in a plain save, before the live rounds in a migration)."""
        lay = self.layout
        self.write(LIBXL_HEADER.pack(LIBXL_IDENT, LIBXL_VERSION, 0))
        self.libxl_record(LIBXC_CONTEXT)
        self.write(IHDR.pack(IHDR_MARKER, IHDR_ID, IHDR_VERSION, 0, 0, 0)
                   + DHDR.pack(DHDR_X86_PV if lay.pv else DHDR_X86_HVM, 12, 0,
                               XEN_MAJOR, XEN_MINOR))
        if lay.pv:
            self.xc_record(X86_PV_INFO, struct.pack("<BB6x", 8, 4))
        self.xc_record(X86_CPUID_POLICY, _cpuid_policy())
        self.xc_record(X86_MSR_POLICY, _msr_policy())
        self.xc_record(STATIC_DATA_END)
        if lay.pv:  # the frames holding the guest's p2m: 512 entries of 8 bytes each
            frames = -(-lay.nr_pfns // 512)
            first = lay.nr_pfns - frames  # the p2m sits at the top of guest memory
            self.xc_record(X86_PV_P2M_FRAMES, struct.pack("<II", 0, lay.nr_pfns - 1)
                           + b"".join(struct.pack("<Q", first + i) for i in range(frames)))

    def page_data(self, data: bytes) -> None:
        """One PAGE_DATA record of ``len(data) // 4096`` pages (1..1024)."""
        count = len(data) // PAGE_SIZE
        assert 0 < count <= MAX_BATCH and len(data) == count * PAGE_SIZE
        nr = self.layout.nr_pfns
        pfns = b"".join(struct.pack("<Q", (self._next_pfn + i) % nr) for i in range(count))
        self._next_pfn = (self._next_pfn + count) % nr
        body = struct.pack("<II", count, 0) + pfns
        self.write(RHDR.pack(PAGE_DATA, len(body) + len(data)) + body)
        self.write(data)
        self._count(XC_NAMES[PAGE_DATA])

    def tail(self) -> None:
        """libxc's end of checkpoint and END, then libxl's emulator record and END."""
        lay = self.layout
        self.xc_record(X86_TSC_INFO, struct.pack("<IIQII", 0, 2_000_000, 0, 0, 0))
        if lay.pv:
            self.xc_record(SHARED_INFO, b"\0" * PAGE_SIZE)
            for vcpu in range(lay.vcpus):
                # vcpu_guest_context_x86_64 is 5168 bytes; the extended context 128
                self.xc_record(X86_PV_VCPU_BASIC, struct.pack("<II", vcpu, 0) + b"\0" * 5168)
                self.xc_record(X86_PV_VCPU_EXTENDED, struct.pack("<II", vcpu, 0)
                               + b"\0" * 128)
        else:
            self.xc_record(HVM_CONTEXT, b"\0" * (1024 + 512 * lay.vcpus))
            params = [(2, 0xFEFFF), (1, 0), (4, 1), (17, 0xFEFFE)]
            self.xc_record(HVM_PARAMS, struct.pack("<II", len(params), 0)
                           + b"".join(struct.pack("<QQ", i, v) for i, v in params))
        self.xc_record(XC_END)
        if lay.kind == "hvm":
            self.libxl_record(EMULATOR_CONTEXT, struct.pack("<II", EMULATOR_QEMU_UPSTREAM, 0)
                              + EMPTY_QEMU_STATE)
        self.libxl_record(LIBXL_END)


@dataclass
class PumpStats:
    """What a pump framed: records, payload bytes, and which record came first after
    the guest suspended (libxc's last round)."""

    records: int = 0
    qemu_bytes: int = 0
    suspend_record: int | None = None
    times: list[float] = field(default_factory=list)


class PagePump(threading.Thread):
    """Reads QEMU's outgoing migration stream from ``src`` and writes it as PAGE_DATA
    records through ``writer`` until QEMU closes its end. A batch is written when it
    is full (1024 pages) or when QEMU has gone quiet for a moment with whole pages
    buffered, as libxc flushes its batch at the end of each round; ``mark_suspend``
    ends the live rounds there. An OSError writing (the receiver died) ends the pump
    with ``error`` set and ``src`` closed, so QEMU's own writes fail too."""

    def __init__(self, src: int, writer: StreamWriter, clock: Callable[[], float]) -> None:
        super().__init__(name="xl-standin-pages", daemon=True)
        self.src = src
        self.writer = writer
        self.clock = clock
        self.stats = PumpStats()
        self.error: OSError | None = None
        self._suspend = threading.Event()
        self._buf = bytearray()

    def mark_suspend(self) -> None:
        self._suspend.set()

    def _emit(self, pages: int) -> None:
        size = pages * PAGE_SIZE
        self.writer.page_data(bytes(self._buf[:size]))
        del self._buf[:size]
        self.stats.records += 1
        self.stats.times.append(self.clock())

    def _flush_whole(self) -> None:
        while len(self._buf) >= PAGE_SIZE:
            self._emit(min(MAX_BATCH, len(self._buf) // PAGE_SIZE))

    def run(self) -> None:
        suspended = False
        try:
            while True:
                ready, _, _ = select.select([self.src], [], [], 0.05)
                if not ready:
                    self._flush_whole()  # QEMU paused between rounds: end the batch
                else:
                    chunk = os.read(self.src, 1 << 20)
                    if not chunk:
                        break
                    self.stats.qemu_bytes += len(chunk)
                    self._buf += chunk
                    while len(self._buf) >= MAX_BATCH * PAGE_SIZE:
                        self._emit(MAX_BATCH)
                if self._suspend.is_set() and not suspended:
                    suspended = True
                    self._flush_whole()
                    self.stats.suspend_record = self.stats.records
            if self._buf:
                self._buf += b"\0" * (-len(self._buf) % PAGE_SIZE)
                self._flush_whole()
        except OSError as exc:
            self.error = exc
        finally:
            os.close(self.src)


# --------------------------------------------------------------------------- reading


class StreamError(Exception):
    """The stream is corrupt or truncated; ``lines`` are libxl's/libxc's messages."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


@dataclass
class Parsed:
    """What a reader saw: the guest type, records by name, the QEMU bytes passed on."""

    guest_type: int = 0
    xen: tuple[int, int] = (0, 0)
    records: dict[str, int] = field(default_factory=dict)
    page_bytes: int = 0


class StreamReader:
    """Parses the framing from ``fd`` (after the xl header) and hands every PAGE_DATA
    payload to ``sink``. Every length is bounded (libxc's REC_LENGTH_MAX); a short
    read is a truncated stream."""

    def __init__(self, fd: int, domid: int) -> None:
        self.fd = fd
        self.domid = domid
        self.parsed = Parsed()

    def _read(self, size: int) -> bytes | None:
        data = bytearray()
        while len(data) < size:
            chunk = os.read(self.fd, min(size - len(data), 1 << 20))
            if not chunk:
                return None if not data else bytes(data)
            data += chunk
        return bytes(data)

    def _libxl_error(self, where: str, message: str) -> StreamError:
        return StreamError(f"libxl: error: libxl_stream_read.c:{where}: Domain "
                           f"{self.domid}:{message}")

    def _xc_fail(self, message: str, errno_text: str = "0 = Success") -> StreamError:
        return StreamError(f"xc: error: {message}: Internal error",
                           f"xc: error: Restore failed ({errno_text}): Internal error",
                           f"libxl: error: libxl_stream_read.c:852:"
                           f"libxl__xc_domain_restore_done: Domain {self.domid}:restoring "
                           f"domain: {errno_text.split(' = ', 1)[1]}")

    def head(self) -> tuple[int, int, int]:
        """libxl header, LIBXC_CONTEXT, image and domain headers: (type, major, minor)."""
        hdr = self._read(LIBXL_HEADER.size)
        if hdr is None or len(hdr) < LIBXL_HEADER.size:
            raise self._libxl_error("193:stream_header_done",
                                    "unexpected end of stream reading stream header")
        ident, version, options = LIBXL_HEADER.unpack(hdr)
        if ident != LIBXL_IDENT:
            raise self._libxl_error("206:stream_header_done", f"Invalid ident: expected "
                                    f"0x{LIBXL_IDENT:016x}, got 0x{ident:016x}")
        if version != LIBXL_VERSION:
            raise self._libxl_error("213:stream_header_done", f"Unexpected Version: "
                                    f"expected {LIBXL_VERSION}, got {version}")
        if options & 1:
            raise self._libxl_error("220:stream_header_done",
                                    "Unable to handle big endian streams")
        while True:
            rtype, body = self._libxl_record()
            if rtype == LIBXC_CONTEXT:
                break
            if rtype in (EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT) or rtype & REC_OPTIONAL:
                continue
            raise self._libxl_error("410:process_record", f"Unrecognised record 0x{rtype:08x}"
                                    if rtype not in LIBXL_NAMES else
                                    f"Unexpected {LIBXL_NAMES[rtype]} record before "
                                    "LIBXC_CONTEXT")
        raw = self._read(IHDR.size + DHDR.size)
        if raw is None or len(raw) < IHDR.size + DHDR.size:
            raise self._xc_fail("Failed to read Image Header from stream (0 = Success)")
        marker, ident2, ver, opts, _r1, _r2 = IHDR.unpack(raw[:IHDR.size])
        if marker != IHDR_MARKER:
            raise self._xc_fail(f"Invalid marker: Got 0x{marker:016x}")
        if ident2 != IHDR_ID:
            raise self._xc_fail(f"Invalid ID: Expected 0x{IHDR_ID:08x}, Got 0x{ident2:08x}")
        if ver < 2 or ver > 3:
            raise self._xc_fail(f"Invalid Version: Expected 2 <= ver <= 3, Got {ver}")
        if opts & 1:
            raise self._xc_fail("Unable to handle big endian streams")
        gtype, shift, _res, major, minor = DHDR.unpack(raw[IHDR.size:])
        if gtype not in (DHDR_X86_PV, DHDR_X86_HVM):
            raise self._xc_fail(f"Unsupported type 0x{gtype:08x} in Domain Header")
        if shift != 12:
            raise self._xc_fail(f"Invalid page shift {shift}. Only 12 supported")
        self.parsed.guest_type, self.parsed.xen = gtype, (major, minor)
        return gtype, major, minor

    def _libxl_record(self) -> tuple[int, bytes]:
        raw = self._read(RHDR.size)
        if raw is None or len(raw) < RHDR.size:
            raise self._libxl_error("255:record_header_done",
                                    "unexpected end of stream reading record header")
        rtype, length = RHDR.unpack(raw)
        if length > REC_LENGTH_MAX:
            raise self._libxl_error("262:record_header_done", f"Record (0x{rtype:08x}) "
                                    f"length {length:#x} exceeds max ({REC_LENGTH_MAX:#x})")
        padded = length + (-length % 8)
        body = self._read(padded) if padded else b""
        if body is None or len(body) < padded:
            raise self._libxl_error("290:record_body_done",
                                    "unexpected end of stream reading record body")
        name = f"libxl {LIBXL_NAMES.get(rtype, hex(rtype))}"
        self.parsed.records[name] = self.parsed.records.get(name, 0) + 1
        return rtype, body[:length]

    def _xc_record_header(self) -> tuple[int, int]:
        raw = self._read(RHDR.size)
        if raw is None or len(raw) < RHDR.size:
            raise self._xc_fail("Failed to read Record Header from stream (0 = Success)")
        rtype, length = RHDR.unpack(raw)
        if length > REC_LENGTH_MAX:
            raise self._xc_fail(f"Record (0x{rtype:08x}, "
                                f"{XC_NAMES.get(rtype & ~REC_OPTIONAL, 'Unknown')}) length "
                                f"{length:#x} exceeds max ({REC_LENGTH_MAX:#x})")
        return rtype, length

    def libxc_records(self, sink: Callable[[bytes], None]) -> None:
        """libxc's records up to its END; PAGE_DATA payloads go to ``sink``."""
        seen_static_end = False
        while True:
            rtype, length = self._xc_record_header()
            padded = length + (-length % 8)
            name = XC_NAMES.get(rtype & ~REC_OPTIONAL, "Unknown")
            if rtype == PAGE_DATA:
                if not seen_static_end:
                    raise self._xc_fail("No STATIC_DATA_END seen")
                self._page_data(length, padded, sink)
            else:
                body = self._read(padded) if padded else b""
                if body is None or len(body) < padded:
                    raise self._xc_fail(f"Failed to read {padded} bytes of data for record "
                                        f"(0x{rtype:08x}, {name}) (0 = Success)")
                if rtype not in XC_NAMES and not rtype & REC_OPTIONAL:
                    raise self._xc_fail(f"Unrecognised mandatory record 0x{rtype:08x}")
                if rtype == STATIC_DATA_END:
                    seen_static_end = True
            self.parsed.records[name] = self.parsed.records.get(name, 0) + 1
            if rtype == XC_END:
                return

    def _page_data(self, length: int, padded: int, sink: Callable[[bytes], None]) -> None:
        if length < 8:
            raise self._xc_fail(f"PAGE_DATA record truncated: length {length}, min 8")
        raw = self._read(8)
        if raw is None or len(raw) < 8:
            raise self._xc_fail(f"Failed to read {padded} bytes of data for record "
                                "(0x00000001, Page data) (0 = Success)")
        count, _res = struct.unpack("<II", raw)
        if count < 1:
            raise self._xc_fail("Expected at least 1 pfn in PAGE_DATA record")
        if length < 8 + count * 8:
            raise self._xc_fail(f"PAGE_DATA record (length {length}) too short to contain "
                                f"{count} pfns worth of information")
        pfns = self._read(count * 8)
        if pfns is None or len(pfns) < count * 8:
            raise self._xc_fail(f"Failed to read {padded} bytes of data for record "
                                "(0x00000001, Page data) (0 = Success)")
        with_data = 0
        for i, (entry,) in enumerate(struct.iter_unpack("<Q", pfns)):
            ptype = entry >> 60
            if ptype not in _KNOWN_PAGE_TYPES:
                raise self._xc_fail(f"Unknown type 0x{ptype << 28:x} for pfn "
                                    f"0x{entry & PFN_MASK:x} (index {i})")
            if ptype not in (PFINFO_BROKEN, PFINFO_XALLOC, PFINFO_XTAB):
                with_data += 1
        if length != 8 + 8 * count + PAGE_SIZE * with_data:
            raise self._xc_fail(f"PAGE_DATA record wrong size: length {length}, expected "
                                f"8 + {8 * count} + {PAGE_SIZE * with_data}")
        left = PAGE_SIZE * with_data + (padded - length)
        while left:
            chunk = self._read(min(left, 1 << 20))
            if chunk is None or len(chunk) < min(left, 1 << 20):
                raise self._xc_fail(f"Failed to read {padded} bytes of data for record "
                                    "(0x00000001, Page data) (0 = Success)")
            left -= len(chunk)
            sink(chunk)
            self.parsed.page_bytes += len(chunk)

    def tail(self) -> None:
        """libxl's records after libxc's END, up to libxl's END."""
        while True:
            rtype, _body = self._libxl_record()
            if rtype == LIBXL_END:
                return
            if rtype in (EMULATOR_XENSTORE_DATA, EMULATOR_CONTEXT, CHECKPOINT_END) \
                    or rtype & REC_OPTIONAL:
                continue
            raise self._libxl_error("410:process_record",
                                    f"Unrecognised record 0x{rtype:08x}")


# --------------------------------------------------------------------------- QEMU side


def start_pump(q: QMP, writer: StreamWriter, fd_name: str, *, live: bool) -> PagePump:
    """Start QEMU's migration into a pipe whose bytes a PagePump frames into
    ``writer``. ``live``: QEMU's precopy with ``pause-before-switchover``, so the
    caller sees the moment QEMU stops the vCPUs (status ``pre-switchover``) and
    resumes it with ``migrate-continue``; otherwise the caller stopped the VM."""
    q.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "pause-before-switchover", "state": live}]})
    # QEMU caps migration at 128 MiB/s by default (meant for networks); 300 ms is
    # QEMU's default downtime limit (a migration may have raised it, see migrate.py)
    q.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40, "downtime-limit": 300})
    r, w = os.pipe()
    pump = PagePump(r, writer, time.monotonic)
    try:
        q.send_fd(fd_name, w)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    pump.start()
    try:
        q.execute("migrate", {"uri": f"fd:{fd_name}"})
    except BaseException:
        with contextlib.suppress(Exception):
            q.execute("closefd", {"fdname": fd_name})  # the pump then sees EOF
        raise
    return pump
