"""Keep xl's restart paths on the images domsnap made active, and never adopt a
restart that went back to a frozen one.

What a reboot reads on Xen 4.17 (checked in the sources): the domain's ``xl create``
monitor handles a shutdown for reboot in ``handle_domain_death``
(tools/xl/xl_vmcontrol.c), whose ``reload_domain_config`` takes

1. the ``"xl"`` userdata that ``xl config-update`` stored (``main_config_update`` in
   tools/xl/xl_misc.c: ``libxl_userdata_store(ctx, domid, "xl", ...)``, xl.cfg text,
   used once and unlinked), else
2. ``libxl_retrieve_domain_configuration`` (tools/libs/light/libxl_domain.c): the
   ``"libxl-json"`` userdata libxl stored when it built the domain, merged with
   xenstore, where a non-removable disk keeps the JSON's ``pdev_path``
   (``libxl_device_disk_merge`` in libxl_disk.c; xenstore's backend ``params`` only
   decides which disks exist, and matters for removable media).

A live external snapshot, its rollback and a live merge swap a disk's image in the
device model (QMP) behind libxl's back, so the libxl-json still names the old image,
which is now the frozen backing file of the snapshot. ``xl config-update`` is xl's own,
documented way to change what a reboot rebuilds from (libxl's JSON has no public
writer for a swapped image), so :func:`push_stored_config` runs it after every change
of a running domain's config. It prints a warning ("avoid using this command when
possible") meant for configs libxl can manage itself; an image swapped through QMP is
not one of those. ``xl list -l`` keeps showing the libxl-json view until the domain is
next built (then from the pushed config).

:func:`frozen_images` is the registry's guard: a new instance of a known domain whose
disks are images in the backing chains below domsnap's active ones was rebuilt from a
stale config (a reboot before this fix, an operator's ``xl create`` of an old file):
the guest writes into a snapshot's frozen image. That view is refused, recorded in the
registry entry, and reported at every request until the domain runs on domsnap's
images again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from domsnap.errors import DomsnapError
from schemas.config import DomainConfig
from workers.block.qemu_img import QemuImg
from workers.drivers.xlparse import XlDomain, domain_config_from_libxl
from workers.drivers.xlregistry import Entry, Registry

log = logging.getLogger("domsnap.xl")

_MAX_DEPTH = 256  # a chain deeper than this is not one domsnap made


def push_stored_config(xl: Callable[..., str], registry: Registry, uuid: str, domid: int,
                       config: DomainConfig) -> None:
    """Make the running domain ``domid`` rebuild from ``config`` at its next reboot:
    ``xl config-update DOMID CFG`` with the xl.cfg domsnap would start it from (the
    uuid in it: without one, xl would give the rebuilt domain a new identity)."""
    path = registry.write_cfg(uuid, config.model_copy(update={"uuid": uuid}))
    xl("config-update", str(domid), str(path), timeout=60)


def chain_below(img: QemuImg, path: str, fmt: str) -> list[str]:
    """The backing files below ``path`` (nearest first); empty for a raw image or one
    that cannot be read (then nothing is claimed to be frozen)."""
    out: list[str] = []
    current, current_fmt = path, fmt
    while current_fmt == "qcow2" and len(out) < _MAX_DEPTH:
        try:
            backing, backing_fmt = img.backing(current, fmt=current_fmt, force_share=True)
        except DomsnapError:
            break
        if backing is None or backing in out:
            break
        out.append(backing)
        current, current_fmt = backing, backing_fmt or ""
    return out


def frozen_images(img: QemuImg, ours: DomainConfig, seen: Mapping[str, str | None]
                  ) -> dict[str, str]:
    """vdev -> image for every disk that xl runs (``seen``: vdev -> pdev_path) on an
    image in the backing chain below domsnap's active image of that disk."""
    found: dict[str, str] = {}
    for disk in ours.disks:
        theirs = seen.get(disk.vdev)
        if not theirs or not disk.target or theirs == disk.target:
            continue
        if theirs in chain_below(img, disk.target, disk.format):
            found[disk.vdev] = theirs
    return found


def divergence_note(name: str, uuid: str, domid: int, frozen: Mapping[str, str],
                    ours: DomainConfig) -> str:
    """What the registry records and every refused request quotes."""
    active = {d.vdev: d.target for d in ours.disks}
    disks = ", ".join(f"{vdev} runs on {path} instead of {active.get(vdev)}"
                      for vdev, path in sorted(frozen.items()))
    return (f"domain {name} ({uuid}, domid {domid}) was started from a stale config: {disks}; "
            "those images are frozen backing files of its snapshots' overlays, so the guest "
            "is writing into snapshots. domsnap refused to adopt that config and refuses "
            "every operation on this instance: shut it down and start it from domsnap's "
            "config (domain-config), or revert it")


def adopt(registry: Registry, img: QemuImg, dom: XlDomain) -> Entry | None:
    """The registry entry for ``dom`` as xl lists it, registering it when first seen.

    For a new instance of a known domain (another domid): domsnap's config is kept if
    it names the images xl reports (domsnap started it, or xl rebuilt it from the config
    domsnap pushed); xl's view is taken if the domain's owner re-created it from other
    images; but a view whose disks are frozen backing files of the entry's overlays is
    refused: the entry keeps domsnap's config, records the divergence and logs it as an
    error (:func:`divergence_note`)."""
    if dom.uuid is None:
        return None
    with registry.locked():
        entry = registry.find(dom.uuid)
        if entry is not None and entry.domid == dom.domid:
            return entry  # xl may name images a live external snapshot replaced: ours wins
        seen = {d.vdev: d.pdev_path for d in dom.disks}
        if entry is not None and {d.vdev: d.target for d in entry.config.disks} == seen:
            fresh = Entry(config=entry.config, domid=dom.domid)
        elif entry is not None and (frozen := frozen_images(img, entry.config, seen)):
            note = divergence_note(dom.name, dom.uuid, dom.domid, frozen, entry.config)
            log.error("%s", note)
            fresh = Entry(config=entry.config, domid=dom.domid, diverged=note)
        else:
            if entry is not None:
                log.warning("domain %s (%s) was started from a config naming other "
                            "images than domsnap's: taking xl's view", dom.name, dom.uuid)
            fresh = Entry(config=domain_config_from_libxl(dom.config), domid=dom.domid)
        registry.put(dom.uuid, fresh)
    return fresh
