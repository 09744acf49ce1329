"""Hypervisor drivers: one interface (:mod:`workers.drivers.base`), one module each."""
