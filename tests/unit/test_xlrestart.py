"""The registry's guard against a restart on stale images, and the config pushed to xl
after every change of a running domain's config (workers/drivers/xlrestart.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from schemas.config import DiskSpec, DomainConfig
from workers.block.qemu_img import QemuImg
from workers.drivers.xlparse import parse_list_long
from workers.drivers.xlregistry import Entry, Registry
from workers.drivers.xlrestart import adopt, chain_below, frozen_images, push_stored_config

UUID = "4d7dea0d-7a6f-43eb-b256-340075ce6ec9"


class FakeImg:
    """``backing()`` from a table: image -> (backing file, its format)."""

    def __init__(self, chains: dict[str, tuple[str, str]]) -> None:
        self.chains = chains

    def backing(self, path: str, *, fmt: str = "qcow2",
                force_share: bool = False) -> tuple[str | None, str | None]:
        assert force_share
        return self.chains.get(path, (None, None))


def _config(**targets: str) -> DomainConfig:
    return DomainConfig(name="domu", uuid=UUID, memory=128, disks=[
        DiskSpec(target=t, format="qcow2", vdev=v) for v, t in targets.items()])


def _listed(domid: int, **targets: str) -> str:
    import json

    return json.dumps([{"domid": domid, "config": {
        "c_info": {"type": "pv", "name": "domu", "uuid": UUID},
        "b_info": {"max_vcpus": 1, "max_memkb": 131072, "target_memkb": 131072},
        "disks": [{"pdev_path": t, "vdev": v, "backend": "qdisk", "format": "qcow2",
                   "readwrite": 1} for v, t in targets.items()]}}])


CHAINS = {"/s/o2.qcow2": ("/s/o1.qcow2", "qcow2"), "/s/o1.qcow2": ("/i/d0.qcow2", "qcow2")}


def _img() -> Any:
    return FakeImg(CHAINS)


def test_chain_below_walks_to_the_base_and_stops_at_raw() -> None:
    assert chain_below(_img(), "/s/o2.qcow2", "qcow2") == ["/s/o1.qcow2", "/i/d0.qcow2"]
    assert chain_below(_img(), "/i/d0.qcow2", "qcow2") == []
    assert chain_below(_img(), "/s/o2.qcow2", "raw") == []


def test_frozen_images_names_only_disks_that_went_down_their_chain() -> None:
    ours = _config(xvda="/s/o2.qcow2", xvdb="/i/other.qcow2")
    assert frozen_images(_img(), ours, {"xvda": "/i/d0.qcow2", "xvdb": "/i/x.qcow2"}) == {
        "xvda": "/i/d0.qcow2"}
    assert frozen_images(_img(), ours, {"xvda": "/s/o2.qcow2", "xvdb": "/i/x.qcow2"}) == {}


def test_a_reboot_onto_a_frozen_backing_file_is_refused_and_recorded(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    ours = _config(xvda="/s/o1.qcow2")
    reg.put(UUID, Entry(config=ours, domid=3))
    dom = parse_list_long(_listed(4, xvda="/i/d0.qcow2"))[0]
    entry = adopt(reg, _img(), dom)
    assert entry is not None and entry.domid == 4
    assert entry.config == ours  # domsnap's images are kept
    assert entry.diverged is not None and "/i/d0.qcow2" in entry.diverged
    assert reg.get(UUID).diverged == entry.diverged
    # the same instance again: the record stays
    assert adopt(reg, _img(), dom) == entry
    # a later instance on domsnap's images clears it
    again = adopt(reg, _img(), parse_list_long(_listed(5, xvda="/s/o1.qcow2"))[0])
    assert again is not None and again.diverged is None and again.domid == 5


def test_a_restart_on_unrelated_images_is_still_xls_view(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.put(UUID, Entry(config=_config(xvda="/s/o1.qcow2"), domid=3))
    entry = adopt(reg, _img(), parse_list_long(_listed(4, xvda="/i/new.qcow2"))[0])
    assert entry is not None and entry.diverged is None
    assert [d.target for d in entry.config.disks] == ["/i/new.qcow2"]


def test_push_stored_config_runs_config_update_with_the_uuid(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    calls: list[tuple[tuple[str, ...], float]] = []

    def xl(*args: str, timeout: float) -> str:
        calls.append((args, timeout))
        return ""

    config = _config(xvda="/s/o1.qcow2").model_copy(update={"uuid": None})
    push_stored_config(xl, reg, UUID, 7, config)
    (args, timeout), = calls
    assert args[:2] == ("config-update", "7") and timeout > 0
    text = Path(args[2]).read_text()
    assert UUID in text and "/s/o1.qcow2" in text


def test_fake_img_answers_like_the_real_one() -> None:
    import inspect

    assert list(inspect.signature(QemuImg.backing).parameters) == \
        list(inspect.signature(FakeImg.backing).parameters)
