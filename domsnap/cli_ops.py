"""Operator commands on the main ``domsnap`` group: ``fsck``, ``job-cancel``, ``audit``;
and the audit trail of the local ``domain-*`` commands.

Registered by one import at the end of :mod:`domsnap.cli`. The ``domain-*`` commands
defined there are wrapped here (their callbacks, unchanged otherwise) so that each
start/stop/pause/... a user runs through domsnap is recorded: who (the OS user),
what, when, outcome.

fsck exit codes: 0 nothing found; 11 problems found that remain (without
``--repair``, or not safe to repair); 12 problems found and all of them repaired.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from domsnap.cli import _client, _dumps, _fail, _when, main
from domsnap.errors import Conflict, DomsnapError, from_dict

if TYPE_CHECKING:  # imported where used: the CLI starts without pydantic (domsnap/cli.py)
    from schemas.models import FsckReport

FSCK_PROBLEMS = 11
FSCK_REPAIRED = 12


# ---------------------------------------------------------------- fsck


def _fsck_local(domain: str | None, repair: bool) -> list[FsckReport]:
    import uuid as uuidlib

    from domsnap.client import os_user
    from domsnap.settings import get_settings
    from schemas.models import FsckRequest
    from workers.engine.fsck_run import run_fsck
    from workers.host import build_host

    host = build_host(get_settings())
    uuid = host.driver.find(domain) if domain else None
    req = FsckRequest(job_id=str(uuidlib.uuid4()), host=host.name, domain=uuid, repair=repair,
                      requested_by=os_user())
    return [run_fsck(host, req)]


def fsck_exit_code(reports: list[FsckReport]) -> int:
    found = [f for r in reports for f in r.findings]
    if not found:
        return 0
    return FSCK_PROBLEMS if any(not f.repaired for f in found) else FSCK_REPAIRED


def _render_fsck(reports: list[FsckReport]) -> str:
    lines = []
    for rep in reports:
        fixed = sum(1 for f in rep.findings if f.repaired)
        lines.append(f"host {rep.host}: {len(rep.domains)} domain(s) checked, "
                     f"{len(rep.findings)} problem(s)" + (f", {fixed} repaired" if rep.repair
                                                           else ""))
        for f in rep.findings:
            tail = ""
            if f.repaired:
                tail = f" [repaired: {f.action}]"
            elif f.repairable and f.action:
                tail = f" [--repair would: {f.action}]" if not rep.repair else f" [{f.action}]"
            lines.append(f"  {f.domain} {f.kind}: {f.message}{tail}")
        for uuid, why in rep.skipped.items():
            lines.append(f"  {uuid} skipped: {why}")
    return "\n".join(lines)


@main.command("fsck")
@click.option("--repair", is_flag=True, help="Fix what is safe and say what was done.")
@click.option("--host", "host", help="Check every domain of this host (through its queue).")
@click.option("--local", is_flag=True,
              help="Run here, with this host's settings, instead of through the queue.")
@click.option("--timeout", type=float, default=600.0, show_default=True,
              help="Give up waiting for a host after SECONDS.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("domain", required=False)
def fsck(repair: bool, host: str | None, local: bool, timeout: float, as_json: bool,
         domain: str | None) -> None:
    """Compare Redis records, sidecars, qcow2 snapshot tables, overlay chains, memory
    files and formats with what qemu-img says; report orphans and mismatches.

    DOMAIN: that domain, on its owning host; --host H: every domain of H; neither:
    every live host. Exit 0 clean, 11 problems remain, 12 all problems repaired.
    """
    if domain and host:
        raise click.UsageError("give DOMAIN or --host, not both")
    if local and host:
        raise click.UsageError("--local checks this host; --host is for the queue")
    reports = (_fsck_local(domain, repair) if local else
               _client().fsck(domain=domain, host=host, repair=repair, timeout=timeout))
    click.echo(_dumps([r.model_dump(mode="json") for r in reports]) if as_json
               else _render_fsck(reports))
    sys.exit(fsck_exit_code(reports))


# ---------------------------------------------------------------- job-cancel


@main.command("job-cancel")
@click.option("--no-wait", is_flag=True, help="Ask, and return without waiting for the job.")
@click.option("--timeout", type=float, default=None, help="Give up waiting after SECONDS.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("job_id")
def job_cancel(no_wait: bool, timeout: float | None, as_json: bool, job_id: str) -> None:
    """Cancel a job: a queued one never runs (a create's name is released); a running
    one stops at its next safe point, is rolled back, and its domain resumed.

    Exit 0 when the job ended cancelled; 4 when it had ended already or finished before
    it reached a safe point.
    """
    client = _client()
    job = client.cancel(job_id)
    if job.state == "running" and not no_wait:
        job = client.wait(job.job_id, timeout=timeout)
    if as_json:
        click.echo(_dumps(job.model_dump(mode="json")))
    if job.state == "succeeded":
        _fail(Conflict(f"job {job.job_id} finished before it reached a safe point: "
                       "nothing was cancelled", job_id=job.job_id))
    if job.state == "failed":
        assert job.error is not None
        if job.error.code != "cancelled":
            _fail(from_dict(job.error.model_dump()))
        if not as_json:
            click.echo(f"job {job.job_id} cancelled: {job.error.message}")
        return
    if not as_json:
        click.echo(f"job {job.job_id}: cancel requested; it stops at its next safe point")


# ---------------------------------------------------------------- audit


@main.command("audit")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True,
              help="The newest N entries.")
@click.option("--local", is_flag=True, help="This host's own log file instead of Redis.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def audit(limit: int, local: bool, as_json: bool) -> None:
    """The audit log of mutating operations: who, what, when, outcome (oldest first)."""
    if local:
        from domsnap.settings import get_settings
        from workers.hostio.auditlog import read

        entries = read(get_settings().state_dir, limit)
    else:
        entries = _client().audit(limit)
    if as_json:
        click.echo(_dumps([e.model_dump(mode="json") for e in entries]))
        return
    for e in entries:
        what = " ".join(x for x in (e.op, e.name or "", f"on {e.domain}" if e.domain else "")
                        if x)
        click.echo(f"{_when(e.ts)} {e.who:<16} {what} @{e.host or '-'}: {e.outcome}"
                   + (f" ({e.error})" if e.error else "")
                   + (f" job {e.job_id}" if e.job_id else ""))


# ---------------------------------------------------------------- audit of domain-*


def _record(op: str, outcome: str, target: str | None, error: str | None) -> None:
    from domsnap.client import os_user
    from domsnap.settings import get_settings
    from domsnap.store import Store
    from workers.engine.audit import record

    settings = get_settings()
    try:
        store: Store | None = Store.from_url(settings.redis_url, prefix=settings.key_prefix,
                                             job_ttl_s=settings.job_ttl_s)
    except DomsnapError:
        store = None
    record(settings, store, who=os_user(), op=op, outcome=outcome, domain=target, error=error)


def _audited(name: str, callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(**kwargs: Any) -> Any:
        op = "domain-undefine" if kwargs.get("undefine") else name
        target = kwargs.get("domain") or kwargs.get("cfg")
        try:
            result = callback(**kwargs)
        except DomsnapError as exc:
            _record(op, "failed", target, exc.code)
            raise
        except SystemExit as exc:
            ok = exc.code in (0, None)
            _record(op, "succeeded" if ok else "failed", target, None if ok else f"exit {exc.code}")
            raise
        _record(op, "succeeded", target, None)
        return result

    return run


for _name in ("domain-create", "domain-start", "domain-destroy", "domain-pause",
              "domain-unpause"):
    _cmd = main.commands.get(_name)
    if _cmd is not None and _cmd.callback is not None:
        _cmd.callback = _audited(_name, _cmd.callback)

__all__ = ["FSCK_PROBLEMS", "FSCK_REPAIRED", "fsck_exit_code"]
