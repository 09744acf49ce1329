"""The Xen lab's capture receiver (``lab/xen/dom0/recv.py``): its framing walk over
generated xl migration streams (xl header + config, libxl v2 records, the libxc stream
inside LIBXC_CONTEXT), run as xl runs it (stdin the stream, stdout the reply channel),
and its refusals of truncated and oversized records."""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

RECV = Path(__file__).resolve().parents[2] / "lab" / "xen" / "dom0" / "recv.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lab_recv", RECV)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


recv = load()


def rec(rtype: int, body: bytes) -> bytes:
    return struct.pack("<II", rtype, len(body)) + body + b"\0" * (-len(body) % 8)


def stream(config: bytes, libxc: list[tuple[int, bytes]], libxl_after: list[bytes]) -> bytes:
    opt = struct.pack("<I", len(config)) + config
    out: bytes = recv.XL_MAGIC + struct.pack("<IIII", 0x01020304, 3, 0, len(opt)) + opt
    out += struct.pack(">8sII", b"LibxlFmt", 2, 0) + rec(1, b"")
    out += struct.pack(">QIIHHI", 2**64 - 1, 0x58454E46, 3, 0, 0, 0)
    out += struct.pack("<IHHII", 1, 12, 0, 4, 17)
    for rtype, body in libxc:
        out += rec(rtype, body)
    out += rec(0, b"")
    for body in libxl_after:
        out += rec(2, body)
    return out + rec(0, b"")


def page_data(npages: int) -> bytes:
    return struct.pack("<II", npages, 0) + b"\0" * 8 * npages + b"\xaa" * 4096 * npages


records = st.lists(st.one_of(
    st.tuples(st.just(1), st.integers(1, 3).map(page_data)),
    st.tuples(st.sampled_from([2, 3, 4, 5, 7, 8, 16, 17, 18]), st.binary(max_size=40)),
), max_size=8)


@settings(max_examples=60, deadline=None)
@given(config=st.binary(max_size=64), libxc=records,
       after=st.lists(st.binary(max_size=20), max_size=2))
def test_walk_finds_every_record_in_order(config: bytes, libxc: list[tuple[int, bytes]],
                                          after: list[bytes],
                                          tmp_path_factory: pytest.TempPathFactory) -> None:
    data = stream(config, libxc, after)
    path = tmp_path_factory.mktemp("s") / "s.xl"
    path.write_bytes(data)
    res = recv.summarize(str(path))
    names = [(r["layer"], r["type"]) for r in res["records"]]
    want = ([("libxl", 1)] + [("libxc", t) for t, _ in libxc] + [("libxc", 0)]
            + [("libxl", 2)] * len(after) + [("libxl", 0)])
    assert names == want
    assert res["bytes"] == len(data) and res["trailing_bytes"] == 0
    assert res["xl_header"]["config_len"] == len(config)
    pages = [r["pages"] for r in res["records"] if r["layer"] == "libxc" and r["type"] == 1]
    assert pages == [struct.unpack("<I", b[:4])[0] for t, b in libxc if t == 1]
    for r in res["records"]:  # every offset points at that record's header
        assert struct.unpack("<II", data[r["offset"]:r["offset"] + 8]) == (r["type"], r["length"])


@settings(max_examples=40, deadline=None)
@given(cut=st.integers(min_value=1, max_value=400))
def test_a_truncated_stream_is_refused(cut: int,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    data = stream(b"{}", [(2, b"x" * 8), (1, page_data(1))], [])
    path = tmp_path_factory.mktemp("t") / "t.xl"
    path.write_bytes(data[:len(data) - cut])
    with pytest.raises(recv.StreamError, match="ended at offset"):
        recv.summarize(str(path))


def test_an_oversized_record_is_refused(tmp_path: Path) -> None:
    data = stream(b"{}", [], [])
    (tmp_path / "g.xl").write_bytes(data)
    at = next(r["offset"] for r in recv.summarize(str(tmp_path / "g.xl"))["records"]
              if r["layer"] == "libxc")  # the libxc END, made a huge PAGE_DATA
    bad = data[:at] + struct.pack("<II", 1, recv.MAX_BODY + 1) + data[at + 8:]
    (tmp_path / "o.xl").write_bytes(bad)
    with pytest.raises(recv.StreamError, match="claims"):
        recv.summarize(str(tmp_path / "o.xl"))


def test_not_an_xl_stream(tmp_path: Path) -> None:
    (tmp_path / "n.xl").write_bytes(b"\0" * 64)
    with pytest.raises(recv.StreamError, match="not an xl stream"):
        recv.summarize(str(tmp_path / "n.xl"))


def test_run_as_xl_runs_it_banner_capture_close_no_ready(tmp_path: Path) -> None:
    """stdin the stream, stdout the reply channel: the banner, then EOF (no "ready"); the
    file is the stream byte for byte; the argv xl appends is recorded."""
    data = stream(b'{"c_info": {}}', [(1, page_data(2)), (8, b"t" * 20)], [b"k\0v\0"])
    out, log = tmp_path / "cap.xl", tmp_path / "recv.json"
    p = subprocess.run([sys.executable, "-S", str(RECV), f"--out={out}", f"--log={log}", "--",
                        "lab", "xl", "migrate-receive"], input=data, capture_output=True,
                       timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    assert p.stdout == recv.BANNER and len(recv.BANNER) == 54
    assert out.read_bytes() == data
    assert (out.stat().st_mode & 0o777) == 0o600
    rl = json.loads(log.read_text())
    assert rl["ok"] is True and rl["argv_from_xl"] == ["lab", "xl", "migrate-receive"]
    assert rl["bytes"] == len(data) and rl["closed_at"] >= rl["libxl_end_at"]


def test_bad_banner_mode_has_the_banners_length(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-S", str(RECV), "--mode=badbanner",
                        f"--log={tmp_path / 'l.json'}", "--"], input=b"", capture_output=True,
                       timeout=60, check=False)
    assert p.returncode == 0
    assert len(p.stdout) == len(recv.BANNER) and p.stdout != recv.BANNER
