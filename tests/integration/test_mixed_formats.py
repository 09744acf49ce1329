"""Domains whose disks are not all qcow2, through the real queue on real QEMU domains,
for both drivers: a qcow2 disk, a raw disk and a qcow2 disk over a raw backing file
(the README's example is a qcow2 root disk and a raw data disk).

After every step a checker compares, for every image the domain or a record names,
the format that ``qemu-img info`` finds (the test probes: its own patterns never look
like a qcow2 header) with what the records and the domain config say, that every
backing format is explicit and true, that a running QEMU opened each disk with the
config's format, that ``qemu-img check`` passes, and that every disk holds the data
the test wrote (a model: vdev -> slot -> pattern). Each scenario runs on a running
domain (live paths: QMP transaction, block-commit, memory restore) on the qemu and the
xl driver, on a shut-off one (offline paths: qemu-img create/commit/rebase), and on an
xl stub domain (xl save, qemu-img, xl restore). Domains are guestless: the test writes
through QEMU (HMP qemu-io) or, shut off, with qemu-io on the image.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid as uuidlib
from pathlib import Path
from typing import Any

import pytest

from domsnap.client import Client
from schemas.models import DiskChoice, SnapshotRecord
from tests.integration.cluster import Cluster, Domain, unique_name
from tests.integration.cluster import succeeded as _ok
from tests.integration.diskdata import CHUNK, files_under, slot
from workers.block.qmp import QMPClient

pytestmark = [pytest.mark.integration, pytest.mark.vm]

State = dict[str, dict[int, int]]  # vdev -> slot -> pattern (0: never written)
BASE_SLOT, BASE_PATTERN = 7, 0x99  # written into the raw backing file of the third disk


# ---------------------------------------------------------------- images, as the test sees them


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def probed_format(path: str) -> str:
    """The format qemu-img finds by probing (safe here: the test wrote every byte)."""
    res = _run("qemu-img", "info", "-U", "--output=json", path)
    assert res.returncode == 0, f"qemu-img info {path}: {res.stderr}"
    return str(json.loads(res.stdout)["format"])


def info(path: str, fmt: str) -> dict[str, Any]:
    res = _run("qemu-img", "info", "-U", "--output=json", "-f", fmt, path)
    assert res.returncode == 0, f"qemu-img info -f {fmt} {path}: {res.stderr}"
    data: dict[str, Any] = json.loads(res.stdout)
    return data


def _backing(data: dict[str, Any]) -> str | None:
    b = data.get("full-backing-filename") or data.get("backing-filename")
    return str(b) if b else None


def has(path: str, fmt: str, i: int, pattern: int) -> bool:
    res = _run("qemu-io", "-r", "-U", "-f", fmt, "-c",
               f"read -P 0x{pattern:02x} {slot(i)} {CHUNK}", path)
    return (res.returncode == 0 and f"read {CHUNK}/{CHUNK}" in res.stdout
            and "verification failed" not in res.stdout)


def write_offline(path: str, fmt: str, i: int, pattern: int) -> None:
    res = _run("qemu-io", "-f", fmt, "-c", f"write -P 0x{pattern:02x} {slot(i)} {CHUNK}", path)
    assert res.returncode == 0 and "wrote" in res.stdout, f"qemu-io write {path}: {res}"


def assert_data(path: str, fmt: str, want: dict[int, int], what: str) -> None:
    bad = {i: hex(p) for i, p in want.items() if not has(path, fmt, i, p)}
    assert not bad, f"{what}: {path} ({fmt}) lacks {bad}; chain {chain(path, fmt)}"


def chain(path: str, fmt: str) -> list[tuple[str, str]]:
    """(image, format) from ``path`` down, formats as each overlay's header names them;
    asserts on the way that every backing format is explicit and true."""
    out: list[tuple[str, str]] = []
    p: str | None = path
    f = fmt
    while p is not None:
        assert os.path.exists(p), f"{p} (in the chain of {path}) is missing"
        assert probed_format(p) == f, f"{p}: recorded/declared {f}, qemu-img finds " \
                                      f"{probed_format(p)}"
        out.append((p, f))
        data = info(p, f)
        p = _backing(data)
        if p is not None:
            assert data.get("backing-filename-format"), f"{out[-1][0]}: backing format implicit"
            f = str(data["backing-filename-format"])
    return out


# ---------------------------------------------------------------- the domain


def mixed_domain(cluster: Cluster, host: str, *, running: bool,
                 extra_cfg: str = "") -> Domain:
    """A guestless domain with vd[a] qcow2, vd[b] raw, vd[c] qcow2 over a raw base that
    holds BASE_PATTERN in BASE_SLOT; running or shut off, already in the inventory."""
    h = cluster.host(host)
    name = unique_name(f"mix-{h.driver}")
    va, vb, vc = h.vdevs[:3]
    a = cluster.make_disk(h, f"{name}-{va}", fmt="qcow2")
    b = cluster.make_disk(h, f"{name}-{vb}", fmt="raw")
    base = cluster.make_disk(h, f"{name}-{vc}-base", fmt="raw")
    write_offline(str(base), "raw", BASE_SLOT, BASE_PATTERN)
    c = h.images / f"{name}-{vc}.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw",
                    str(c)], check=True)
    dom_uuid = str(uuidlib.uuid4())
    cfg = h.root / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nuuid = "{dom_uuid}"\nmemory = 64\nvcpus = 1\n'
                   f'disk = [ "{a},qcow2,{va},rw",\n'
                   f'         "format=raw, vdev={vb}, access=rw, target={b}",\n'
                   f'         "{c},qcow2,{vc},rw" ]\n{extra_cfg}')
    dom = Domain(host=h, name=name, uuid=dom_uuid, disks={va: a, vb: b, vc: c})
    if h.driver == "xl":
        h.xl("create", str(cfg))
    else:
        h.cli("domain-create", str(cfg), check=True)
    cluster.wait_inventory(dom)
    if not running:
        dom.destroy()
    return dom


def active(dom: Domain) -> dict[str, tuple[str, str]]:
    """vdev -> (active image, format) as the domain config says."""
    return {d["vdev"]: (str(d["target"]), str(d["format"])) for d in dom.config()["disks"]}


def is_running(dom: Domain) -> bool:
    return dom.pid() is not None


def monitor(dom: Domain) -> Path:
    """The domain's QMP socket; a stub domain has none in dom0, so there the stand-in's
    own control socket (on the same QEMU) serves the test."""
    if dom.qmp.exists() or dom.host.driver != "xl":
        return dom.qmp
    return dom.qmp.with_name(dom.qmp.name.replace("qmp-libxl-", "standin-ctl-"))


def qmp(dom: Domain, command: str, args: dict[str, Any] | None = None) -> Any:
    with QMPClient(monitor(dom), timeout=30) as q:
        return q.execute(command, args)


def write(dom: Domain, st: State) -> None:
    """Live through QEMU while it runs, else with qemu-io on the active image."""
    if is_running(dom):
        for vdev, slots in st.items():
            for i, p in slots.items():
                for cmd in (f"write -P 0x{p:02x} {slot(i)} {CHUNK}", "flush"):
                    out = str(qmp(dom, "human-monitor-command", {
                        "command-line": f'qemu-io -d {vdev}/virtio-backend "{cmd}"'}))
                    assert "error" not in out.lower() and "fail" not in out.lower(), out
        return
    now = active(dom)
    for vdev, slots in st.items():
        for i, p in slots.items():
            write_offline(now[vdev][0], now[vdev][1], i, p)


def step(dom: Domain, k: int, pattern: int) -> State:
    """Step k overwrites slot 0 and writes its own slot k+1 (a different pattern per disk)."""
    return {v: {0: pattern ^ (j * 0x11), k + 1: pattern ^ (j * 0x11)}
            for j, v in enumerate(dom.vdevs)}


def merged(*states: State) -> State:
    out: State = {}
    for st in states:
        for vdev, slots in st.items():
            out.setdefault(vdev, {}).update(slots)
    return out


def base_state(dom: Domain, slots: int = 8) -> State:
    """Nothing written yet: zeroes, but the third disk's backing file shows through."""
    st: State = {v: dict.fromkeys(range(slots), 0) for v in dom.vdevs}
    st[dom.vdevs[2]][BASE_SLOT] = BASE_PATTERN
    return st


# ---------------------------------------------------------------- the checker


def check(client: Client, dom: Domain, want: State, what: str) -> None:
    """Formats, chains, QEMU's view and data: records == config == images."""
    now = active(dom)
    for vdev, (path, fmt) in now.items():
        chain(path, fmt)  # declared format true, backing formats explicit and true
        if fmt == "qcow2":
            res = _run("qemu-img", "check", "-U", "-f", "qcow2", path)
            assert res.returncode == 0, f"{what}: qemu-img check {path}: {res.stdout}{res.stderr}"
        assert_data(path, fmt, want[vdev], f"{what}: {dom.name} {vdev} (active)")
    if is_running(dom):
        opened = {}
        for dev in qmp(dom, "query-block"):
            ins = dev.get("inserted") or {}
            if ins.get("file"):
                opened[os.path.realpath(str(ins["file"]))] = str(ins["drv"])
        for vdev, (path, fmt) in now.items():
            assert opened.get(os.path.realpath(path)) == fmt, \
                f"{what}: QEMU opened {vdev} {path} as {opened.get(os.path.realpath(path))}, " \
                f"the config says {fmt}"
    for rec in client.snapshots(dom.name):
        for d in rec.disks:
            assert probed_format(d.file) == d.format, \
                f"{what}: {rec.name} {d.vdev}: record says {d.format}, {d.file} is " \
                f"{probed_format(d.file)}"
            if d.type == "internal":
                assert d.format == "qcow2" and rec.name in internal_names(d.file)
            elif d.overlay and os.path.exists(d.overlay):
                assert d.overlay_format == "qcow2" == probed_format(d.overlay), \
                    f"{what}: {rec.name} {d.vdev} overlay {d.overlay}"
                ov = info(d.overlay, "qcow2")
                if _backing(ov) == d.file:
                    assert ov.get("backing-filename-format") == d.format, \
                        f"{what}: {d.overlay} names {d.file} as {ov.get('backing-filename-format')}"


def internal_names(path: str) -> list[str]:
    return [str(s["name"]) for s in info(path, "qcow2").get("snapshots", [])]


def check_frozen(rec: SnapshotRecord, want: State, what: str) -> None:
    """An external snapshot's frozen images hold exactly its state."""
    for d in rec.disks:
        if d.type == "external":
            assert_data(d.file, d.format, want[d.vdev], f"{what}: {rec.name} {d.vdev} frozen")


def restart(dom: Domain, later: State) -> None:
    """Stop and start the domain from domsnap's config (as an operator would), writing
    ``later`` while QEMU runs; a shut-off domain is started for it and stopped again."""
    was_running = is_running(dom)
    if was_running:
        dom.destroy()
    dom.start()
    write(dom, later)
    if not was_running:
        dom.destroy()


def leftovers(client: Client, dom: Domain) -> set[str]:
    """Files under the domain's snapshot dir that neither the domain nor a record needs."""
    need: set[str] = set()
    for path, fmt in active(dom).values():
        need.update(p for p, _ in chain(path, fmt))
    snapdir = dom.host.snapshots / dom.uuid
    for rec in client.snapshots(dom.name):
        need.add(str(snapdir / f"{rec.name}.json"))
        if rec.memory_file:
            need.add(rec.memory_file)
        for d in rec.disks:
            need.update(p for p, _ in chain(d.file, d.format))
            if d.overlay:
                need.add(d.overlay)
    return files_under(snapdir) - need


def _create(client: Client, dom: Domain, name: str, **kw: Any) -> SnapshotRecord:
    _ok(client, client.create(dom.name, name=name, disk_only=not is_running(dom), **kw))
    return client.snapshot(dom.name, name)


# ---------------------------------------------------------------- scenarios


# Both drivers live; shut off once: a shut-off domain's disks take the engine's qemu-img
# path on either driver (the xl driver is only asked to start it, which `restart` does
# in the running cases too). The xl driver's save/restore window has its own case.
CASES = [pytest.param("qemu", True, id="qemu-running"),
         pytest.param("qemu", False, id="qemu-shutoff"),
         pytest.param("xl", True, id="xl-running")]


def host_for(request: pytest.FixtureRequest, driver: str) -> str:
    name: str = request.getfixturevalue("h1" if driver == "qemu" else "x1")
    return name


@pytest.mark.parametrize(("driver", "running"), CASES)
def test_mixed_disks_through_create_revert_delete(cluster: Cluster, request: pytest.FixtureRequest,
                                                   driver: str, running: bool) -> None:
    host = host_for(request, driver)
    lifecycle(cluster, mixed_domain(cluster, host, running=running), running=running)


def test_mixed_disks_on_a_stub_domain_save_restore(cluster: Cluster, x1: str) -> None:
    """xl without a QMP socket in dom0: every live step is an xl save, qemu-img, xl
    restore, on a config that must name each new image with its real format."""
    dom = mixed_domain(cluster, x1, running=True,
                       extra_cfg="device_model_stubdomain_override = 1\n")
    assert not dom.qmp.exists()
    client = cluster.client()
    vb = dom.vdevs[1]
    a = step(dom, 0, 0xC1)
    write(dom, a)
    model = merged(base_state(dom), a)
    job = _ok(client, client.create(dom.name, name="e1", type="external", disk_only=True))
    assert job.result is not None
    assert {d["strategy"] for d in job.result["disks"]} == {"save-restore"}
    check(client, dom, model, "after e1 (restored on the overlays)")
    b = step(dom, 1, 0xC2)
    write(dom, b)
    model = merged(model, b)
    _ok(client, client.delete(dom.name, "e1"))  # merge into the raw file in a window
    assert active(dom)[vb] == (str(dom.disks[vb]), "raw")
    check(client, dom, model, "after delete e1 (restored on the raw file)")
    assert not leftovers(client, dom), leftovers(client, dom)
    dom.destroy()


def lifecycle(cluster: Cluster, dom: Domain, *, running: bool) -> None:
    """external, restart, internal, external, revert x2, delete internal, delete with
    merges into raw and qcow2 originals, revert, delete with a merge of the active
    overlay, restart: the checker after each step."""
    client = cluster.client()
    va, vb, vc = dom.vdevs
    model = base_state(dom)
    check(client, dom, model, "fresh")

    a = step(dom, 0, 0x11)
    write(dom, a)
    at_e1 = model = merged(model, a)
    e1 = _create(client, dom, "e1", type="external")
    assert {d.vdev: d.format for d in e1.disks} == {va: "qcow2", vb: "raw", vc: "qcow2"}
    assert {v: f for v, (_, f) in active(dom).items()} == dict.fromkeys(dom.vdevs, "qcow2")
    check(client, dom, model, "after external e1")

    # the overlay of the raw disk must be opened as qcow2 after a restart (it was
    # opened as raw, and the first write went over its qcow2 header)
    b = step(dom, 1, 0x22)
    restart(dom, b)
    at_i1 = model = merged(model, b)
    check(client, dom, model, "after restart")
    check_frozen(e1, at_e1, "after restart")

    # the raw disk's active image is a qcow2 overlay now: internal snapshots are fine
    i1 = _create(client, dom, "i1", type="internal")
    assert all(d.type == "internal" and d.format == "qcow2" for d in i1.disks)
    c = step(dom, 2, 0x33)
    write(dom, c)
    at_e2 = model = merged(model, c)
    e2 = _create(client, dom, "e2", type="external")
    assert {d.vdev: d.format for d in e2.disks} == dict.fromkeys(dom.vdevs, "qcow2")
    write(dom, step(dom, 3, 0x44))
    check(client, dom, merged(model, step(dom, 3, 0x44)), "after e2")

    # revert to the external snapshot of the raw disk: a new overlay over the raw file
    _ok(client, client.revert(dom.name, "e1"))
    assert is_running(dom) == running
    model = at_e1
    check(client, dom, model, "after revert e1")
    top, fmt = active(dom)[vb]
    assert fmt == "qcow2" and info(top, "qcow2")["backing-filename-format"] == "raw"
    assert _backing(info(top, "qcow2")) == str(dom.disks[vb])

    # a second revert (it used to fail dropping the abandoned overlays)
    _ok(client, client.revert(dom.name, "i1"))
    model = at_i1
    check(client, dom, model, "after revert i1")
    assert not leftovers(client, dom), leftovers(client, dom)

    # delete the internal snapshot, then e1: merges e1's overlays into the original
    # images (the raw one included) and renames them in e2's record
    _ok(client, client.delete(dom.name, "i1"))
    check(client, dom, model, "after delete i1")
    _ok(client, client.delete(dom.name, "e1"))
    e2 = client.snapshot(dom.name, "e2")
    assert {d.vdev: (d.file, d.format) for d in e2.disks} == {
        v: (str(p), "qcow2" if v != vb else "raw") for v, p in dom.disks.items()}
    check(client, dom, model, "after delete e1")
    check_frozen(e2, at_e2, "after delete e1")

    _ok(client, client.revert(dom.name, "e2"))
    model = at_e2
    check(client, dom, model, "after revert e2")
    assert info(active(dom)[vb][0], "qcow2")["backing-filename-format"] == "raw"
    d = step(dom, 4, 0x55)
    write(dom, d)
    model = merged(model, d)

    # delete e2: the domain's overlays are merged down into the original images (live
    # block-commit into a raw node while running; qemu-img commit shut off)
    _ok(client, client.delete(dom.name, "e2"))
    assert active(dom) == {va: (str(dom.disks[va]), "qcow2"), vb: (str(dom.disks[vb]), "raw"),
                           vc: (str(dom.disks[vc]), "qcow2")}
    check(client, dom, model, "after delete e2")
    e = step(dom, 5, 0x66)
    restart(dom, e)
    model = merged(model, e)
    check(client, dom, model, "after delete e2 and a restart")
    assert client.snapshots(dom.name) == []
    assert not leftovers(client, dom), leftovers(client, dom)


@pytest.mark.parametrize(("driver", "running"), CASES)
def test_mixed_types_in_one_snapshot(cluster: Cluster, request: pytest.FixtureRequest,
                                     driver: str, running: bool) -> None:
    """One snapshot with an internal qcow2 disk and external raw + backed disks: revert
    to it twice, then delete it (internal deleted, overlays merged into the raw file and
    into the backed qcow2), data kept at each step."""
    client = cluster.client()
    dom = mixed_domain(cluster, host_for(request, driver), running=running)
    va, vb, vc = dom.vdevs
    a = step(dom, 0, 0x77)
    write(dom, a)
    at_m = model = merged(base_state(dom), a)
    m = _create(client, dom, "m", disks=[DiskChoice(vdev=va, type="internal"),
                                         DiskChoice(vdev=vb, type="external"),
                                         DiskChoice(vdev=vc, type="external")])
    assert [(d.vdev, d.type, d.format) for d in m.disks] == [
        (va, "internal", "qcow2"), (vb, "external", "raw"), (vc, "external", "qcow2")]
    check(client, dom, model, "after create m")
    for k in (1, 2):
        write(dom, step(dom, k, 0x88 + k))
        _ok(client, client.revert(dom.name, "m"))
        check(client, dom, at_m, f"after revert {k} to m")
    b = step(dom, 3, 0xAA)
    write(dom, b)
    model = merged(at_m, b)
    _ok(client, client.delete(dom.name, "m"))
    assert internal_names(str(dom.disks[va])) == []
    assert active(dom)[vb] == (str(dom.disks[vb]), "raw")
    assert active(dom)[vc] == (str(dom.disks[vc]), "qcow2")
    check(client, dom, model, "after delete m")
    assert not leftovers(client, dom), leftovers(client, dom)
    if is_running(dom):
        dom.destroy()  # frees the CPU for the rest of the suite


def test_mixed_snapshot_record_names_true_formats_in_sidecar(cluster: Cluster,
                                                             h1: str) -> None:
    """The sidecar says what Redis says, overlay format included (each rebuilds the
    other), and ``snapshot-list --json`` shows it to a control plane."""
    client = cluster.client()
    dom = mixed_domain(cluster, h1, running=False)
    rec = _create(client, dom, "x", type="external")
    side = SnapshotRecord.model_validate_json(
        Path(dom.host.snapshots / dom.uuid / "x.json").read_text())
    assert side == rec
    out = json.loads(dom.host.cli("snapshot-list", "--json", dom.name, check=True).stdout)
    disks = {d["vdev"]: d for d in out["snapshots"][0]["disks"]}
    assert {v: (d["format"], d["overlay_format"]) for v, d in disks.items()} == {
        dom.vdevs[0]: ("qcow2", "qcow2"), dom.vdevs[1]: ("raw", "qcow2"),
        dom.vdevs[2]: ("qcow2", "qcow2")}


def strip_backing_format(path: Path) -> None:
    """Make a qcow2 image name its backing file without a format, as images made by
    QEMU before 6.1 may (qemu-img 7.2 refuses to make one): the header extension that
    holds the backing format (0xe2792aca) gets a type QEMU does not know and skips."""
    with open(path, "r+b") as fh:
        head = bytearray(fh.read(CHUNK))
        at = head.find(bytes.fromhex("e2792aca"))
        assert at > 0, f"{path} has no backing format extension"
        fh.seek(at)
        fh.write(bytes.fromhex("0d5e0d5e"))
    assert "backing-filename-format" not in info(str(path), "qcow2")


def test_implicit_backing_format_is_refused_not_guessed(cluster: Cluster, h1: str) -> None:
    """A chain domsnap would have to probe is refused with the fix in the message, and
    nothing changes; once the format is named the same delete works."""
    client = cluster.client()
    dom = mixed_domain(cluster, h1, running=False)
    vc = dom.vdevs[2]
    write(dom, step(dom, 0, 0xBB))
    model = merged(base_state(dom), step(dom, 0, 0xBB))
    _create(client, dom, "s", type="external")
    strip_backing_format(dom.disks[vc])
    snapdir = dom.host.snapshots / dom.uuid
    before = ({p: os.stat(p).st_mtime_ns for p in files_under(snapdir)},
              client.snapshots(dom.name), active(dom))
    proc = dom.host.cli("snapshot-delete", "-n", "s", dom.name)
    assert proc.returncode == 5, proc.stderr
    assert f"{dom.disks[vc]} names its backing file" in proc.stderr
    assert "without a format" in proc.stderr and "qemu-img rebase" in proc.stderr
    assert ({p: os.stat(p).st_mtime_ns for p in files_under(snapdir)},
            client.snapshots(dom.name), active(dom)) == before
    base = _backing(info(str(dom.disks[vc]), "qcow2"))
    assert base is not None
    subprocess.run(["qemu-img", "rebase", "-u", "-f", "qcow2", "-b", base, "-F", "raw",
                    str(dom.disks[vc])], check=True)
    _ok(client, client.delete(dom.name, "s"))
    check(client, dom, model, "after delete s")
    assert active(dom)[vc] == (str(dom.disks[vc]), "qcow2")


def test_external_snapshot_of_a_vhd_disk_is_refused_up_front(cluster: Cluster, x1: str) -> None:
    """xl runs vhd (QEMU's vpc) disks; domsnap does not put overlays on them: refused at
    planning, naming the disk, nothing made; the domain's other disks still can be."""
    h = cluster.host(x1)
    name = unique_name("mix-vhd")
    q = cluster.make_disk(h, f"{name}-xvda", fmt="qcow2")
    v = h.images / f"{name}-xvdb.vhd"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vpc", str(v), "16M"], check=True)
    dom_uuid = str(uuidlib.uuid4())
    cfg = h.root / f"{name}.cfg"
    cfg.write_text(f'name = "{name}"\nuuid = "{dom_uuid}"\nmemory = 64\n'
                   f'disk = [ "{q},qcow2,xvda,rw", "{v},vhd,xvdb,rw" ]\n')
    h.xl("create", str(cfg))
    dom = Domain(host=h, name=name, uuid=dom_uuid, disks={"xvda": q, "xvdb": v})
    cluster.wait_inventory(dom)
    client = cluster.client()
    snapdir = h.snapshots / dom_uuid
    proc = h.cli("snapshot-create", "--type", "external", "--disk-only", "-n", "e", name)
    assert proc.returncode == 5, proc.stderr
    assert "xvdb is vhd: external snapshots go on qcow2 or raw images only" in proc.stderr
    assert client.snapshots(name) == [] and not files_under(snapdir) - {str(snapdir)}
    assert active(dom) == {"xvda": (str(q), "qcow2"), "xvdb": (str(v), "vhd")}
    _ok(client, client.create(name, name="q", disk_only=True,
                              disks=[DiskChoice(vdev="xvda", type="external")]))
    rec = client.snapshot(name, "q")
    assert [(d.vdev, d.format, d.overlay_format) for d in rec.disks] == [
        ("xvda", "qcow2", "qcow2")]
    dom.destroy()


def test_revert_of_a_record_an_older_domsnap_wrote_uses_the_real_backing_format(
        cluster: Cluster, h1: str) -> None:
    """An older domsnap recorded the second external snapshot of a raw disk as raw,
    though it froze the first one's qcow2 overlay; a revert to it must still put the
    new overlay on that file as qcow2 (as raw, the guest would read a qcow2 header)."""
    client = cluster.client()
    dom = mixed_domain(cluster, h1, running=False)
    vb = dom.vdevs[1]
    a, b = step(dom, 0, 0xD1), step(dom, 1, 0xD2)
    write(dom, a)
    _create(client, dom, "e1", type="external")
    write(dom, b)
    e2 = _create(client, dom, "e2", type="external")
    old = e2.model_copy(update={"disks": [
        d.model_copy(update={"format": "raw"}) if d.vdev == vb else d for d in e2.disks]})
    client.store.put_snapshots(dom.uuid, [old])
    (dom.host.snapshots / dom.uuid / "e2.json").write_text(old.model_dump_json(indent=2))
    write(dom, step(dom, 2, 0xD3))
    _ok(client, client.revert(dom.name, "e2"))
    top, fmt = active(dom)[vb]
    assert fmt == "qcow2" and info(top, "qcow2")["backing-filename-format"] == "qcow2"
    want = merged(base_state(dom), a, b)
    for vdev, (path, f) in active(dom).items():
        chain(path, f)
        assert_data(path, f, want[vdev], f"after revert e2: {vdev}")
