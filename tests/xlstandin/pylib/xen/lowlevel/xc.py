"""The stand-in's ``xen.lowlevel.xc``: only ``domain_resume`` (see ../../README.md)."""

from __future__ import annotations

from tests.xlstandin.domains import Env, domains, wait_finalized
from tests.xlstandin.saverestore import SUSPENDED


class Error(Exception):
    """``xen.lowlevel.xc.Error``: (errno, message)."""


class xc:  # noqa: N801 - the binding's own spelling
    def domain_resume(self, dom: int, fast: int = 0) -> int:
        env = Env.from_environ()
        with env.lock():
            target = next((d for d in domains(env) if d.domid == dom), None)
            if target is None:
                raise Error(3, "No such process")
            marker = target.dir / SUSPENDED
            if not marker.exists():
                # xc_domain_resume on a domain that is not shut down for a suspend
                raise Error(22, f"Dom {dom} not suspended: (shutdown 0, reason 255)")
            with target.control() as q:
                wait_finalized(q)
                q.execute("cont")
            marker.unlink()
            target.set_state("running")
        return 0
