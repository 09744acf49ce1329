"""domsnap: domain (VM) snapshots for Xen dom0 and QEMU/KVM hosts.

The public surface is small: :mod:`domsnap.client` (submit, wait, list),
:mod:`domsnap.errors` (one error tree), :mod:`domsnap.settings`.
"""

from __future__ import annotations

__version__ = "0.1.0"
