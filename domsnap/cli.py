"""The ``domsnap`` command: xl-style snapshot commands, the worker, and a minimal
local toolstack for the qemu driver.

Errors print one line to stderr (``domsnap: error: ...``) and exit with the
error's code (2 bad input, 3 not found, 4 conflict, 5 refused, 6 host down, ...).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from domsnap.errors import DomsnapError, InvalidInput, NotFound, OperationFailed, from_dict

# Start-up: this module and the command modules it registers import only click, the
# stdlib and domsnap.errors at the top; settings (pydantic-settings), the client (redis,
# pydantic), Celery and the workers are imported inside the commands that use them, so
# `domsnap --help` and a short `snapshot-list` start fast (issue 11, docs/benchmarks.md).

F = TypeVar("F", bound=Callable[..., Any])


def _fail(exc: DomsnapError) -> None:
    click.echo(f"domsnap: error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


def _job_error(job: Any) -> DomsnapError:
    """The error a failed job ended with (its exit code is the command's)."""
    if job.error is None:
        return OperationFailed(f"job {job.job_id} failed")
    return from_dict(job.error.model_dump())


@contextmanager
def _as_typed(domain: str) -> Iterator[None]:
    """Not-found errors say what the user typed (a domain name), not the uuid it was
    resolved to; the uuid stays in the error's details."""
    try:
        yield
    except NotFound as exc:
        uuid = exc.details.get("domain")
        if isinstance(uuid, str) and uuid and uuid != domain and uuid in exc.message:
            exc.message = exc.message.replace(uuid, domain)
            exc.args = (exc.message,)
        raise


def _positive_seconds(_ctx: click.Context, param: click.Parameter,
                      value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value} is not a positive number of seconds",
                                 param=param)
    return value


def _job_id_arg(_ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A job id as printed by domsnap (any UUID spelling is read as its canonical form)."""
    import uuid as uuidlib  # here: uuid imports platform, which start-up can do without

    try:
        return str(uuidlib.UUID(value))
    except ValueError:
        raise click.BadParameter(f"{value[:80]!r} is not a job id (a UUID)",
                                 param=param) from None


def _start_flags(running: bool, paused: bool) -> str | None:
    if running and paused:
        raise click.UsageError("--running and --paused exclude each other: give one")
    return "running" if running else "paused" if paused else None


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DomsnapError as exc:
            _fail(exc)


def _client() -> Any:
    from domsnap.client import Client
    from domsnap.settings import get_settings

    return Client(get_settings())


_configured_client = _client  # see snapshot_list: the fast read path is for this one only


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="domsnap")
def main() -> None:
    """domsnap: domain snapshots (memory + disks, or disks only) through a queue.

    Snapshot commands follow the libxl Domain Snapshot HOWTO. Settings come from
    DOMSNAP_* environment variables (DOMSNAP_REDIS_URL, DOMSNAP_STATE_DIR, ...).
    """


# ---------------------------------------------------------------- waiting


def _wait_and_print(job_id: str, *, as_json: bool, timeout: float | None,
                    render: Callable[[dict[str, Any]], str]) -> None:
    client = _client()

    def show(ev: Any) -> None:
        if not as_json:
            click.echo(f"  [{ev.step}] {ev.message}", err=True)

    try:
        job = client.wait(job_id, timeout=timeout, on_event=show)
    except KeyboardInterrupt:
        click.echo(f"domsnap: stopped waiting; job {job_id} goes on "
                   f"(follow it with: domsnap job --wait {job_id})", err=True)
        sys.exit(130)
    if as_json:
        click.echo(_dumps(job.model_dump(mode="json")))
    if job.state == "failed":
        _fail(_job_error(job))
    if not as_json:
        click.echo(render(job.result or {}))


def _submitted(job_id: str, *, no_wait: bool, as_json: bool) -> bool:
    if no_wait:
        click.echo(_dumps({"job_id": job_id}) if as_json else job_id)
        return True
    if not as_json:
        click.echo(f"job {job_id}", err=True)
    return False


_wait_opts: list[Callable[[F], F]] = [
    click.option("--no-wait", is_flag=True, help="Print the job id and return at once."),
    click.option("--timeout", type=float, default=None, callback=_positive_seconds,
                 help="Give up waiting after SECONDS."),
    click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
]


def wait_options(fn: F) -> F:
    for opt in reversed(_wait_opts):
        fn = opt(fn)
    return fn


# ---------------------------------------------------------------- snapshot commands


@main.command("snapshot-create")
@click.option("-n", "--name", help="Snapshot name (default: the epoch second; an empty "
              "name is an error).")
@click.option("--disk-only", is_flag=True, help="Disks only, no memory state.")
@click.option("-d", "--description", help="Free text kept with the snapshot.")
@click.option("--type", "snap_type", type=click.Choice(["internal", "external"]),
              help="Disk snapshot type for every disk (default internal).")
@wait_options
@click.argument("domain")
@click.argument("config_file", required=False, type=click.Path(dir_okay=False))
def snapshot_create(name: str | None, disk_only: bool, description: str | None,
                    snap_type: str | None, no_wait: bool, timeout: float | None,
                    as_json: bool, domain: str, config_file: str | None) -> None:
    """Snapshot DOMAIN (memory + all disks unless --disk-only).

    CONFIG_FILE is an xl.snapshot.cfg: name, description, memory ("yes", "no" or
    an absolute path), type (internal/external) and disk=[...] to choose disks.
    """
    from domsnap.xlcfg import load_snapshot_config

    if name is not None and not name:
        raise InvalidInput("name: an empty snapshot name was given: give a name, or leave "
                           "-n out for the epoch second", field="name")
    config = load_snapshot_config(config_file) if config_file else None
    with _as_typed(domain):
        job_id = _client().create(domain, name=name, description=description,
                                  disk_only=disk_only, type=snap_type, config=config)
    if _submitted(job_id, no_wait=no_wait, as_json=as_json):
        return

    def render(r: dict[str, Any]) -> str:
        lines = [f"snapshot {r.get('name')} created"
                 + (f", paused {r['pause_ms']:.1f} ms" if r.get("pause_ms") is not None else "")]
        if r.get("memory_bytes") is not None:
            lines.append(f"  memory: {r['memory_bytes']} bytes in {r['memory_save_ms']:.0f} ms"
                         + (f", {r['memory_strategy']}" if r.get("memory_strategy") else "")
                         + (f" ({r['memory_fallback']})" if r.get("memory_fallback") else ""))
        for d in r.get("disks", []):
            where = d.get("overlay") or d.get("file")
            lines.append(f"  {d['vdev']}: {d['type']} {where} ({d.get('size_bytes')} bytes, "
                         f"{d.get('duration_ms', 0):.1f} ms)")
        return "\n".join(lines)

    with _as_typed(domain):
        _wait_and_print(job_id, as_json=as_json, timeout=timeout, render=render)


@main.command("snapshot-list")
@click.option("-l", "--long", "long_", is_flag=True, help="Full information.")
@click.option("-n", "--name", help="Only this snapshot.")
@click.option("--limit", type=click.IntRange(min=0), default=None,
              help="At most N snapshots (default: all).")
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True,
              help="Skip the first N snapshots (in the order shown).")
@click.option("--newest-first", is_flag=True, help="Newest first (default: oldest first).")
@click.option("--json", "as_json", is_flag=True,
              help="Machine-readable output: the full records (of the page).")
@click.argument("domain")
def snapshot_list(long_: bool, name: str | None, limit: int | None, offset: int,
                  newest_first: bool, as_json: bool, domain: str) -> None:
    """List DOMAIN's snapshots in creation order (from Redis: no queue round trip).

    The short form reads only the snapshots' summaries, a page at a time with
    --limit/--offset; -l and --json read the full records of what they show.
    """
    page = None
    if not (long_ or as_json) and _client is _configured_client:
        from domsnap import fastlist  # stdlib only: no pydantic, redis-py or settings

        with _as_typed(domain):
            page = fastlist.page(domain, name=name, offset=offset, limit=limit,
                                 newest_first=newest_first)
    client: Any = None
    if page is None:
        from schemas.summary import SnapshotPage

        client = _client()
        with _as_typed(domain):
            if name is not None:
                one = client.snapshot_summary(domain, name)
                page = SnapshotPage(total=1, offset=0, current=client.current(domain),
                                    snapshots=[one])
            else:
                page = client.snapshot_page(domain, offset=offset, limit=limit,
                                            newest_first=newest_first)
    recs: dict[str, Any] = {}
    if long_ or as_json:
        with _as_typed(domain):
            got = client.snapshot_records(domain, [s.name for s in page.snapshots])
        recs = {r.name: r for r in got}
    if as_json:
        click.echo(_dumps({"current": page.current, "total": page.total,
                           "snapshots": [recs[s.name].model_dump(mode="json")
                                         for s in page.snapshots if s.name in recs]}))
        return
    _print_list(page, recs)
    shown = len(page.snapshots)
    if name is None and (page.offset or shown < page.total):
        click.echo(f"({shown} of {page.total} snapshots, from offset {page.offset})", err=True)


def _print_list(page: Any, recs: dict[str, Any]) -> None:
    click.echo(f"{'Name':<24} {'Creation Time':<20} {'State':<8} {'Disk-only':<9}")
    for s in page.snapshots:
        mark = "*" if s.name == page.current else " "
        click.echo(f"{s.name:<23}{mark} {_when(s.created_at):<20} {s.domain_state:<8} "
                   f"{'yes' if s.disk_only else 'no':<9}")
        r = recs.get(s.name)
        if r is not None:  # -l
            click.echo(f"    description: {r.description or ''}")
            click.echo(f"    memory file: {r.memory_file or '-'}")
            click.echo(f"    parent:      {r.parent or '-'}")
            if r.pause_ms is not None:
                click.echo(f"    pause:       {r.pause_ms:.1f} ms")
            if r.memory_strategy is not None:
                click.echo(f"    memory:      {r.memory_strategy}"
                           + (f" ({r.memory_fallback})" if r.memory_fallback else "")
                           + (f", {r.memory_page_records} PAGE_DATA records in "
                              f"{r.memory_rounds} round(s)" if r.memory_rounds else ""))
            for d in r.disks:
                click.echo(f"    disk {d.vdev}: {d.type} {d.format} {d.file}"
                           + (f" (overlay {d.overlay})" if d.overlay else ""))


@main.command("snapshot-revert")
@click.option("-n", "--name", required=True, help="The snapshot to revert to.")
@click.option("--running", is_flag=True, help="Leave the domain running.")
@click.option("--paused", is_flag=True, help="Leave the domain paused.")
@wait_options
@click.argument("domain")
def snapshot_revert(name: str, running: bool, paused: bool, no_wait: bool,
                    timeout: float | None, as_json: bool, domain: str) -> None:
    """Bring DOMAIN back to the exact state of snapshot NAME (memory + disks).

    A disk-only snapshot reverts the disks and leaves the domain shut off unless
    --running or --paused.
    """
    start = _start_flags(running, paused)
    with _as_typed(domain):
        job_id = _client().revert(domain, name, start)
        if _submitted(job_id, no_wait=no_wait, as_json=as_json):
            return
        _wait_and_print(job_id, as_json=as_json, timeout=timeout,
                        render=lambda r: f"reverted to {r.get('name')}; domain {r.get('state')}")


@main.command("snapshot-delete")
@click.option("-n", "--name", required=True, help="The snapshot to delete.")
@wait_options
@click.argument("domain")
def snapshot_delete(name: str, no_wait: bool, timeout: float | None, as_json: bool,
                    domain: str) -> None:
    """Delete snapshot NAME of DOMAIN: memory file, disk snapshots, records."""
    with _as_typed(domain):
        job_id = _client().delete(domain, name)
        if _submitted(job_id, no_wait=no_wait, as_json=as_json):
            return
        _wait_and_print(job_id, as_json=as_json, timeout=timeout,
                        render=lambda r: f"snapshot {r.get('name')} deleted")


@main.command("job")
@click.option("--wait", "wait_", is_flag=True,
              help="Wait for the job to end; a failed job exits with its error's code.")
@click.option("--timeout", type=float, default=None, callback=_positive_seconds,
              help="With --wait: give up after SECONDS.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.argument("job_id", callback=_job_id_arg)
def job(wait_: bool, timeout: float | None, as_json: bool, job_id: str) -> None:
    """Show a job's state and result."""
    client = _client()
    rec = client.wait(job_id, timeout=timeout) if wait_ else client.job(job_id)
    if as_json:
        click.echo(_dumps(rec.model_dump(mode="json")))
    else:
        click.echo(f"job {rec.job_id}: {rec.op} {rec.name} on "
                   f"{rec.domain_name or rec.domain} @{rec.host}: {rec.state}")
        if rec.error:
            click.echo(f"  error: {rec.error.message}")
    if wait_ and rec.state == "failed":
        sys.exit(_job_error(rec).exit_code)  # the error was printed above


@main.command("hosts")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def hosts(as_json: bool) -> None:
    """Hosts that ever published an inventory: liveness, driver, number of domains."""
    store = _client().store
    rows = []
    for h in store.hosts():
        inv = store.inventory(h)
        rows.append({"host": h, "alive": store.host_alive(h),
                     "driver": inv.driver if inv else None,
                     "domains": len(inv.domains) if inv else 0})
    if as_json:
        click.echo(_dumps(rows))
        return
    for row in rows:
        click.echo(f"{row['host']:<30} {'alive' if row['alive'] else 'DOWN':<6} "
                   f"{row['driver'] or '-':<5} {row['domains']} domain(s)")


# ---------------------------------------------------------------- worker


@main.command("worker")
@click.option("--host", help="Host name to serve (default: DOMSNAP_HOST or the hostname).")
@click.option("--driver", type=click.Choice(["qemu", "xl", "null"]),
              help="Hypervisor driver (null: no hypervisor, for benchmarks only).")
@click.option("-c", "--concurrency", type=click.IntRange(1, 256),
              help="Pool size for new requests.")
@click.option("--inflight-concurrency", type=click.IntRange(1, 256),
              help="Pool size for operations in flight.")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(host: str | None, driver: str | None, concurrency: int | None,
           inflight_concurrency: int | None, loglevel: str) -> None:
    """Run this host's worker: consumes only this host's queues."""
    from workers.runtime import run

    for key, value in (("HOST", host), ("DRIVER", driver), ("CONCURRENCY", concurrency),
                       ("INFLIGHT_CONCURRENCY", inflight_concurrency)):
        if value is not None:
            os.environ[f"DOMSNAP_{key}"] = str(value)
    from domsnap.settings import get_settings, reset_settings

    reset_settings()
    sys.exit(run(get_settings(), loglevel=loglevel))


# ---------------------------------------------------------------- local toolstack


def _local(*, qemu_only: str | None = None) -> Any:
    """This host's driver. ``qemu_only``: the command, if only the qemu driver has it
    (on a dom0, xl creates and forgets domains)."""
    from domsnap.settings import get_settings
    from workers.host import build_host

    host = build_host(get_settings())
    if qemu_only and host.driver.name != "qemu":
        raise InvalidInput(f"{qemu_only} is for the qemu driver; on a Xen dom0 use xl "
                           "(domsnap registers the domains xl runs)", field="driver")
    return host


def _unlocked(host: Any, domain: str) -> str:
    """The domain's uuid, refusing while a snapshot operation holds its lock."""
    from domsnap.errors import DomainLocked

    uuid: str = host.driver.find(domain)
    try:
        owner = host.store.lock_owner(uuid)
    except DomsnapError:
        owner = None  # no Redis: nothing can be running through the queue either
    if owner:
        raise DomainLocked(f"domain {domain} is busy: job {owner} is running a snapshot "
                           "operation on it", domain=uuid, job_id=owner)
    return uuid


def _publish(host: Any) -> None:
    from workers.runtime import publish

    try:
        publish(host, alive=False)
    except DomsnapError:
        pass  # no Redis: the worker's heartbeat will publish


@main.command("domain-create")
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.argument("cfg", type=click.Path(dir_okay=False))
def domain_create(paused: bool, cfg: str) -> None:
    """Create and start a domain from an xl.cfg-style file (qemu driver)."""
    from domsnap.xlcfg import load_domain_config

    config = load_domain_config(cfg)
    host = _local(qemu_only="domain-create")
    config = host.driver.define(config)
    try:
        host.driver.start(config.uuid, config, paused=paused)
    except BaseException:
        host.driver.undefine(config.uuid)
        raise
    _publish(host)
    click.echo(f"{config.name} {config.uuid}")


@main.command("domain-start")
@click.option("--paused", is_flag=True)
@click.argument("domain")
def domain_start(paused: bool, domain: str) -> None:
    """Start a shut-off domain from the config domsnap keeps (its current images)."""
    host = _local()
    uuid = host.driver.find(domain)
    host.driver.start(uuid, host.driver.domain_config(uuid), paused=paused)
    _publish(host)


@main.command("domain-pause")
@click.argument("domain")
def domain_pause(domain: str) -> None:
    """Pause a running domain."""
    host = _local()
    host.driver.pause(_unlocked(host, domain))
    _publish(host)


@main.command("domain-unpause")
@click.argument("domain")
def domain_unpause(domain: str) -> None:
    """Unpause a paused domain (on Xen, also resume one that a save which died left
    suspended: `xl list` shows ---ss-, and `xl unpause` cannot resume it)."""
    host = _local()
    uuid = _unlocked(host, domain)
    if not host.driver.resume_suspended(uuid):
        host.driver.unpause(uuid)
    _publish(host)


@main.command("domain-list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def domain_list(as_json: bool) -> None:
    """Domains of this host, running or shut off: name, uuid, state."""
    host = _local()
    doms = host.driver.list_domains()
    if as_json:
        click.echo(_dumps([d.model_dump(mode="json") for d in doms]))
        return
    click.echo(f"{'Name':<24} {'UUID':<36} State")
    for d in doms:
        click.echo(f"{d.name:<24} {d.uuid:<36} {d.state}")


@main.command("domain-destroy")
@click.option("--undefine", is_flag=True, help="Also forget the domain (its snapshots stay).")
@click.argument("domain")
def domain_destroy(undefine: bool, domain: str) -> None:
    """Stop a domain at once; it stays known, shut off."""
    host = _local(qemu_only="domain-destroy --undefine" if undefine else None)
    uuid = _unlocked(host, domain)
    if undefine:
        host.driver.undefine(uuid)
    else:
        host.driver.destroy(uuid)
    _publish(host)


@main.command("domain-config")
@click.option("--json", "as_json", is_flag=True, help="The parsed config as JSON.")
@click.argument("domain")
def domain_config(as_json: bool, domain: str) -> None:
    """Print the config domsnap keeps for a domain, as xl.cfg: after external
    snapshots and reverts it names the images the domain must run on (start a domain
    by hand from this, never from an older file)."""
    from domsnap.xlcfg_write import format_domain_config

    host = _local()
    cfg = host.driver.domain_config(host.driver.find(domain))
    click.echo(_dumps(cfg.model_dump(mode="json")) if as_json
               else format_domain_config(cfg).rstrip("\n"))


# the commands of other modules register on `main` when imported
from domsnap import cli_ops, cli_policy  # noqa: E402, F401, I001
