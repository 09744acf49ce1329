"""The stand-in's ``xen.lowlevel.xs``: only ``resume_domain`` (see ../../README.md)."""

from __future__ import annotations


class xs:  # noqa: N801 - the binding's own spelling
    def resume_domain(self, dom: int) -> None:
        """xenstored forgets the domain's shutdown; the stand-in keeps none."""
