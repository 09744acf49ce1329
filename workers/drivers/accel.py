"""Which QEMU accelerators to ask for: KVM where it can run a stock guest, else TCG."""

from __future__ import annotations

import os
from pathlib import Path


def kvm_usable() -> bool:
    """Whether /dev/kvm can run an unmodified guest kernel.

    Some sandboxes expose /dev/kvm backed by PVM (``kvm_pvm``: paravirtual, no
    hardware virtualisation), which runs only PVM-enabled guest kernels: QEMU
    opens it happily and a stock kernel then hangs in early boot (seen here).
    KVM counts as usable when /dev/kvm is accessible and, if ``kvm_pvm`` is
    loaded, ``kvm_intel`` or ``kvm_amd`` is loaded too.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    mods = Path("/sys/module")
    if (mods / "kvm_pvm").exists():
        return (mods / "kvm_intel").exists() or (mods / "kvm_amd").exists()
    return True


def accelerators(configured: list[str] | None = None) -> list[str]:
    """``configured`` if given; otherwise kvm then tcg (QEMU falls back when /dev/kvm is
    missing), or tcg alone where /dev/kvm exists but cannot run a stock kernel."""
    if configured:
        return list(configured)
    if Path("/dev/kvm").exists() and not kvm_usable():
        return ["tcg"]
    return ["kvm", "tcg"]
